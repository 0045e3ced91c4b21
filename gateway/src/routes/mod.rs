//! The routes, one file per resource.

mod artifacts;
mod deployments;
mod endpoints;
mod observe;
mod state;
mod tenants;
mod tokens;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::json;
use weir_api::ErrorCode;

use crate::error::REQUEST_ID;
pub use deployments::resume_deployments;

use crate::{ApiError, GatewayState};

/// Largest request body: the largest module a tenant may upload (64 MiB by default) plus
/// headroom; each route checks its own, tenant-specific limit.
const MAX_BODY_BYTES: usize = 65 << 20;

pub(crate) fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/v1/tenants/{id}",
            get(tenants::get).delete(tenants::delete),
        )
        .route("/v1/tenants/{id}/quotas", put(tenants::set_quotas))
        .route("/v1/tenants/{id}/suspend", post(tenants::suspend))
        .route("/v1/tenants/{id}/unsuspend", post(tenants::unsuspend))
        .route("/v1/tokens", post(tokens::mint).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/v1/modules",
            post(artifacts::upload_module).get(artifacts::list_modules),
        )
        .route(
            "/v1/modules/{name}/{version}",
            get(artifacts::get_module).delete(artifacts::delete_module),
        )
        .route(
            "/v1/graphs",
            post(artifacts::upload_graph).get(artifacts::list_graphs),
        )
        .route(
            "/v1/graphs/{name}/{version}",
            get(artifacts::get_graph).delete(artifacts::delete_graph),
        )
        .route(
            "/v1/deployments",
            post(deployments::create).get(deployments::list),
        )
        .route(
            "/v1/deployments/{id}",
            get(deployments::get)
                .put(deployments::update)
                .delete(deployments::delete),
        )
        .route("/v1/deployments/{id}/ingest", post(deployments::ingest))
        .route("/v1/deployments/{id}/outputs", post(deployments::outputs))
        .route("/v1/deployments/{id}/pause", post(deployments::pause))
        .route("/v1/deployments/{id}/resume", post(deployments::resume))
        .route(
            "/v1/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route(
            "/v1/endpoints/{name}",
            get(endpoints::get).delete(endpoints::delete),
        )
        .route("/v1/logs", get(observe::logs))
        .route("/v1/deadletters", get(observe::dead_letters))
        .route("/v1/metrics", get(observe::metrics))
        .route("/v1/usage", get(observe::usage))
        .route("/v1/executors", get(observe::executors))
        .route("/v1/executors/{id}/cordon", post(observe::cordon))
        .route("/v1/executors/{id}/uncordon", post(observe::uncordon))
        .route("/v1/executors/{id}/drain", post(observe::drain))
        .route("/v1/state", get(state::list))
        .route(
            "/v1/state/{key}",
            get(state::get).put(state::put).delete(state::delete),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Gives every request an id: in the `x-request-id` header and in every problem document.
async fn request_id(request: Request, next: Next) -> Response {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let id = format!("{started:x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<GatewayState>) -> Result<impl IntoResponse, ApiError> {
    state.store.tenants().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// The caller's tenant and its quotas, once the caller has at least `needed`.
pub(crate) async fn caller_tenant(
    state: &GatewayState,
    caller: &weir_tenants::Principal,
    needed: weir_tenants::Role,
) -> Result<(weir_api::TenantId, weir_tenants::Quotas), ApiError> {
    let tenant = caller.tenant()?.clone();
    let record = state
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    // Counted before the role check: a flood of forbidden requests is still a flood.
    if state
        .limits
        .admit(&tenant, record.quotas.api_requests_per_second)
        .is_err()
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "over the tenant's {} API requests per second; retry after the advertised delay",
                record.quotas.api_requests_per_second
            ),
        ));
    }
    caller.require(needed)?;
    Ok((tenant, record.quotas))
}

/// Names of modules, graphs and their versions: safe in paths, URLs and file names.
pub(crate) fn check_name(field: &str, value: &str, errors: &mut Vec<crate::ProblemField>) {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !value.starts_with('.');
    if !ok {
        errors.push(crate::ProblemField {
            path: format!("/{field}"),
            message: format!(
                "{field} must be 1 to 128 of A-Z a-z 0-9 . - _, not starting with '.'"
            ),
        });
    }
}
