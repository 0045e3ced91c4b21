//! Executor processes that join the control plane over HTTP (`weir executor --join URL --token
//! T`): `POST /v1/executors/join`, `/v1/executors/{id}/heartbeat` and `/v1/executors/{id}/leave`,
//! authenticated by the executor join token of `weir serve` (compared in constant time; never a
//! tenant's or admin's token, and a tenant's token is refused here).
//!
//! Membership (unique live ids, heartbeats, loss after the timeout) is
//! `weir_scheduler::Membership`; the reconcile loop expires it every round. Joined executors
//! are listed by `/v1/executors` (`ready` or `lost`). They are not placed on yet: assignments
//! to executor processes are the next step of issue 13, so until then their pool here tracks
//! membership only and the in-process executor runs every deployment.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use subtle::ConstantTimeEq;
use weir_api::ErrorCode;
use weir_api::rest::{Executor, ExecutorHeartbeat, ExecutorJoin, ExecutorJoined};
use weir_scheduler::{ExecutorId, ExecutorInfo, Membership, MembershipError, Pool, Resources};

use crate::{ApiError, ApiJson, GatewayState};

/// The executors that joined over HTTP, and the token they join with.
pub struct ExecutorMembership {
    token: Option<String>,
    heartbeat: Duration,
    members: Mutex<(Membership, Pool)>,
}

impl std::fmt::Debug for ExecutorMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorMembership")
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl Default for ExecutorMembership {
    /// No join token: no executor process can join.
    fn default() -> Self {
        Self::new(None, Duration::from_secs(1), Duration::from_secs(10), 1024)
    }
}

impl ExecutorMembership {
    /// Executors join with `token` (none: joining is refused), heartbeat every `heartbeat` and
    /// are lost after `timeout` without one; at most `max_executors` at once.
    pub fn new(
        token: Option<String>,
        heartbeat: Duration,
        timeout: Duration,
        max_executors: usize,
    ) -> Self {
        Self {
            token,
            heartbeat,
            // Lost executors are listed for ten timeouts, then forgotten.
            members: Mutex::new((
                Membership::new(timeout, timeout.saturating_mul(10), max_executors),
                Pool::new(),
            )),
        }
    }

    /// Marks lost the executors silent past the timeout at `now`; the newly lost ones.
    pub fn expire(&self, now: Instant) -> Vec<ExecutorId> {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        membership.expire(pool, now)
    }

    /// The joined executors, as `/v1/executors` lists them.
    pub fn list(&self) -> Vec<Executor> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, pool) = &*members;
        let mut ids: Vec<&ExecutorId> = pool.executor_ids().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let state = pool.state(id)?;
                let workers = pool.info(id).map_or(0, |info| {
                    info.capacity.fuel_per_second / FUEL_PER_WORKER_SECOND
                });
                Some(Executor {
                    id: id.to_string(),
                    state: state.as_str().to_owned(),
                    deployments: pool.placed_on(id).len() as u64,
                    workers,
                })
            })
            .collect()
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this control plane takes no executor processes (no executor join token)",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Unauthenticated, "send the executor join token")
            })?;
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "not the executor join token",
            ))
        }
    }
}

fn membership_error(error: MembershipError) -> ApiError {
    let code = match error {
        MembershipError::DuplicateId(_) | MembershipError::Lost(_) => ErrorCode::Conflict,
        MembershipError::Unknown(_) => ErrorCode::NotFound,
        MembershipError::Full(_) => ErrorCode::QuotaExceeded,
    };
    ApiError::new(code, error.to_string())
}

fn executor_id(id: String) -> Result<ExecutorId, ApiError> {
    ExecutorId::new(id).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))
}

/// An executor process joins: registered ready, heard from now.
#[utoipa::path(post, path = "/v1/executors/join", tag = "executors", request_body = weir_api::rest::ExecutorJoin, responses((status = 200, body = weir_api::rest::ExecutorJoined), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn join(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    ApiJson(join): ApiJson<ExecutorJoin>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    executors.authorize(&headers)?;
    let mut labels = BTreeMap::new();
    for (key, value) in join.labels {
        let text = if value.is_empty() {
            key.clone()
        } else {
            format!("{key}={value}")
        };
        weir_scheduler::LabelRequirement::parse(&text)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        labels.insert(key, value);
    }
    let info = ExecutorInfo {
        id: executor_id(join.id)?,
        capacity: Resources {
            fuel_per_second: u64::from(join.workers).saturating_mul(FUEL_PER_WORKER_SECOND),
            memory_bytes: join.memory_bytes,
            instances: join.instance_slots,
        },
        labels,
    };
    let id = info.id.clone();
    let timeout = {
        let mut members = executors
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        membership
            .join(pool, info, Instant::now())
            .map_err(membership_error)?;
        membership.timeout()
    };
    tracing::info!(executor = %id, "executor joined");
    Ok(Json(ExecutorJoined {
        heartbeat_ms: u64::try_from(executors.heartbeat.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }))
}

/// The fuel per second one dataflow worker is counted for: wasmtime fuel is roughly one unit
/// per wasm instruction, and a core runs on the order of 10^9 simple instructions a second.
const FUEL_PER_WORKER_SECOND: u64 = 1_000_000_000;

/// A heartbeat: the executor is alive.
#[utoipa::path(post, path = "/v1/executors/{id}/heartbeat", tag = "executors", params(("id" = String, Path)), request_body = weir_api::rest::ExecutorHeartbeat, responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn heartbeat(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(_report): ApiJson<ExecutorHeartbeat>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    executors.authorize(&headers)?;
    let id = executor_id(id)?;
    executors
        .members
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .0
        .heartbeat(&id, Instant::now())
        .map_err(membership_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The executor stops cleanly: removed at once.
#[utoipa::path(post, path = "/v1/executors/{id}/leave", tag = "executors", params(("id" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn leave(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    executors.authorize(&headers)?;
    let id = executor_id(id)?;
    {
        let mut members = executors
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        membership.leave(pool, &id).map_err(membership_error)?;
    }
    tracing::info!(executor = %id, "executor left");
    Ok(StatusCode::NO_CONTENT)
}

/// An artifact (module or graph bytes) by its digest, for a live executor: what it runs is
/// fetched by digest and checked against it before it runs (`Client::executor_artifact`).
/// Executors run every tenant's code, so any stored digest is theirs to fetch; nobody else's
/// token opens this route.
#[utoipa::path(get, path = "/v1/executors/{id}/artifacts/{digest}", tag = "executors", params(("id" = String, Path), ("digest" = String, Path)), responses((status = 200, content_type = "application/octet-stream"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn artifact(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path((id, digest)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    executors.authorize(&headers)?;
    let id = executor_id(id)?;
    let alive = executors
        .members
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .0
        .is_alive(&id);
    if !alive {
        return Err(ApiError::not_found("executor"));
    }
    let digest = weir_api::ModuleDigest::new(digest)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let bytes = state
        .blobs
        .get(&digest)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("artifact"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}
