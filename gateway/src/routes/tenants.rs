//! `/v1/tenants`: the platform operator's (admin) view of tenants.

use std::time::{SystemTime, UNIX_EPOCH};
use weir_scheduler::{DeploymentState, Event};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::ApiJson;
use weir_api::rest::{CreateTenant, Tenant};
use weir_api::{ErrorCode, TenantId};
use weir_store::TenantRecord;
use weir_tenants::{Quotas, Role};

use crate::{ApiError, Caller, GatewayState, ProblemField};

fn tenant_view(record: TenantRecord) -> Tenant {
    Tenant {
        id: record.id.to_string(),
        display_name: record.display_name,
        quotas: record.quotas,
        suspended: record.suspended,
        created_at: record.created_at,
    }
}

fn tenant_id(text: &str) -> Result<TenantId, ApiError> {
    // A malformed id cannot exist: not found, like any other absent tenant.
    TenantId::new(text).map_err(|_| ApiError::not_found("tenant"))
}

/// The tenant `id`, for an admin caller.
async fn admin_load(
    state: &GatewayState,
    caller: &weir_tenants::Principal,
    id: &str,
) -> Result<TenantRecord, ApiError> {
    caller.require(Role::Admin)?;
    state
        .store
        .tenant(&tenant_id(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = weir_api::rest::CreateTenant, responses((status = 201, body = weir_api::rest::Tenant), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let id = TenantId::new(body.id.clone()).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest, "invalid tenant id").with_errors(vec![
            ProblemField {
                path: "/id".to_owned(),
                message: e.to_string(),
            },
        ])
    })?;
    let record = TenantRecord {
        display_name: body.display_name.unwrap_or_else(|| id.to_string()),
        id,
        quotas: body.quotas.unwrap_or_default(),
        suspended: false,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        // The store gives each tenant its own instance.
        instance: String::new(),
    };
    let _admitting = state.instance_pool.admitting.lock().await;
    admit_instances(&state, &record.id, record.quotas.max_instances).await?;
    let record = state.store.create_tenant(&record).await?;
    Ok((StatusCode::CREATED, Json(tenant_view(record))))
}

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", responses((status = 200, body = Vec<weir_api::rest::Tenant>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let tenants: Vec<Tenant> = state
        .store
        .tenants()
        .await?
        .into_iter()
        .map(tenant_view)
        .collect();
    Ok(Json(tenants))
}

#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Tenant), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record = admin_load(&state, &caller, &id).await?;
    Ok(Json(tenant_view(record)))
}

#[utoipa::path(put, path = "/v1/tenants/{id}/quotas", tag = "tenants", params(("id" = String, Path)), request_body = weir_api::tenancy::Quotas, responses((status = 200, body = weir_api::rest::Tenant), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn set_quotas(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(quotas): ApiJson<Quotas>,
) -> Result<impl IntoResponse, ApiError> {
    let _admitting = state.instance_pool.admitting.lock().await;
    let record = admin_load(&state, &caller, &id).await?;
    apply_quotas(&state, record, quotas).await
}

/// Changes some of a tenant's quotas: the body is a JSON merge patch (RFC 7396) of `Quotas`,
/// e.g. `{"inference": false}`; fields left out keep their values, a field set to `null` goes
/// back to its default. A field that is not a quota, or a value of the wrong type, is
/// `invalid_request` and nothing changes. (A `PUT` replaces them all: fields it leaves out take
/// their defaults.)
#[utoipa::path(patch, path = "/v1/tenants/{id}/quotas", tag = "tenants", params(("id" = String, Path)), request_body(content = Object, description = "a JSON merge patch (RFC 7396) of Quotas"), responses((status = 200, body = weir_api::rest::Tenant), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn patch_quotas(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<serde_json::Value>,
) -> Result<impl IntoResponse, ApiError> {
    // Read, merged and written under the lock quota changes take: two patches never lose one.
    let _admitting = state.instance_pool.admitting.lock().await;
    let record = admin_load(&state, &caller, &id).await?;
    let serde_json::Value::Object(changes) = patch else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a quota patch is a JSON object of the quotas to change, e.g. {\"inference\": false}",
        ));
    };
    let mut merged = serde_json::to_value(&record.quotas).map_err(|e| ApiError::internal(&e))?;
    if let serde_json::Value::Object(fields) = &mut merged {
        for (name, value) in changes {
            if value.is_null() {
                fields.remove(&name);
            } else {
                fields.insert(name, value);
            }
        }
    }
    let quotas: Quotas = serde_json::from_value(merged).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the quota patch does not fit the quotas: {e}"),
        )
    })?;
    apply_quotas(&state, record, quotas).await
}

/// Stores `quotas` as `record`'s, once the instance pool admits them, and applies them to the
/// tenant's dead letters and running deployments at once. The caller holds the pool's
/// `admitting` lock.
async fn apply_quotas(
    state: &GatewayState,
    mut record: TenantRecord,
    quotas: Quotas,
) -> Result<Json<Tenant>, ApiError> {
    admit_instances(state, &record.id, quotas.max_instances).await?;
    record.quotas = quotas;
    state.store.update_tenant(&record).await?;
    // Kept dead letters follow a lowered bound at once, the oldest first (counted as evicted).
    state
        .store
        .trim_dead_letters(&record.id, record.quotas.max_dead_letter_bytes)
        .await?;
    // Running deployments follow at once (rates, budgets, log and metric bounds).
    state.runtime.set_quotas(&record.id, &record.quotas).await;
    Ok(Json(tenant_view(record)))
}

/// The status detail of a deployment a suspension paused (an unsuspend resumes those).
const SUSPENDED: &str = "tenant suspended";

/// Suspends a tenant: its tokens stop at once (see `Caller`) and its deployments are paused.
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Tenant), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn suspend(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let mut record = admin_load(&state, &caller, &id).await?;
    let _changing = state.tenant_locks.lock(&record.id).await;
    record.suspended = true;
    state.store.update_tenant(&record).await?;
    for deployment in state.store.deployments(&record.id).await? {
        state.runtime.stop(&record.id, &deployment.id).await;
        // Every deployment on its way to running (pending, placed, running, degraded) stops.
        let current = DeploymentState::from_stored(&deployment.status, "");
        if current.wants_to_run() {
            let paused = current.apply(Event::Stop).map_err(super::lifecycle_error)?;
            state
                .store
                .set_deployment_status(&record.id, &deployment.id, paused.status(), SUSPENDED)
                .await?;
        }
    }
    Ok(Json(tenant_view(record)))
}

/// Lifts a suspension: the tenant's tokens work again and the deployments the suspension
/// paused are resumed (those the tenant had paused itself stay paused). A deployment that
/// cannot start again stays paused, its detail saying why; the unsuspend still succeeds.
#[utoipa::path(post, path = "/v1/tenants/{id}/unsuspend", tag = "tenants", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Tenant), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn unsuspend(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let mut record = admin_load(&state, &caller, &id).await?;
    let _changing = state.tenant_locks.lock(&record.id).await;
    let was_suspended = record.suspended;
    record.suspended = false;
    state.store.update_tenant(&record).await?;
    if !was_suspended {
        return Ok(Json(tenant_view(record)));
    }
    let paused = DeploymentState::Stopped.status();
    for deployment in state.store.deployments(&record.id).await? {
        if deployment.status != paused {
            continue;
        }
        // Paused by the suspension: its newest status change says so.
        let history = state
            .store
            .deployment_history(&record.id, &deployment.id)
            .await?;
        if history.last().is_none_or(|c| c.detail != SUSPENDED) {
            continue;
        }
        let resumed = match serde_json::from_value(deployment.spec.clone()) {
            Ok(spec) => {
                super::deployments::resume_stored(
                    &state,
                    &record.id,
                    &record.quotas,
                    &deployment,
                    &spec,
                    "tenant unsuspended",
                )
                .await
            }
            Err(error) => Err(ApiError::internal(&error)),
        };
        if let Err(error) = resumed {
            tracing::warn!(tenant = %record.id, deployment = %deployment.id, %error, "a deployment did not resume after the unsuspend");
            state
                .store
                .set_deployment_status(
                    &record.id,
                    &deployment.id,
                    paused,
                    &format!("tenant unsuspended; resuming failed: {error}"),
                )
                .await?;
        }
    }
    Ok(Json(tenant_view(record)))
}

/// Deletes a tenant with everything it owns: rows (cascade: dead letters and device
/// credentials too), running deployments, module state, logs, metrics and counters, the blobs
/// only it referenced; its tokens are revoked for good.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record = admin_load(&state, &caller, &id).await?;
    // No deployment of the tenant starts while it goes.
    let _changing = state.tenant_locks.lock(&record.id).await;
    // Deployments stop first, so no module writes state while it is cleared.
    state.runtime.forget_tenant(&record.id).await;
    let scope = weir_state::StateScope::new(
        record.id.clone(),
        weir_state::StateLimits::of(&record.quotas),
    );
    state
        .state
        .clear(&scope)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    state.limits.forget(&record.id);
    let deleted = state
        .store
        .delete_tenant(&record.id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    for token in &deleted.tokens {
        state.revocations.revoke(token);
    }
    super::artifacts::release_blobs(&state, deleted.blobs).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Admits `tenant`'s `max_instances` against the executors' pool: with the other tenants'
/// quotas it must fit, so every tenant's quota is a promise the pool can keep.
async fn admit_instances(
    state: &GatewayState,
    tenant: &TenantId,
    max_instances: u32,
) -> Result<(), ApiError> {
    let Some(slots) = state.instance_pool.slots else {
        return Ok(());
    };
    let others: u64 = state
        .store
        .tenants()
        .await?
        .iter()
        .filter(|t| t.id != *tenant)
        .map(|t| u64::from(t.quotas.max_instances))
        .sum();
    let wanted = u64::from(max_instances);
    if others + wanted > slots {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "the executors have {slots} operator instance slots and other tenants are promised {others}; {wanted} more do not fit (lower a tenant's max_instances, or add executor capacity)"
            ),
        )
        .with_errors(vec![ProblemField {
            path: "/quotas/max_instances".to_owned(),
            message: format!("at most {} here", slots.saturating_sub(others)),
        }]));
    }
    Ok(())
}
