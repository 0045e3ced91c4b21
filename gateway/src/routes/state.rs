//! `/v1/state`: the caller's tenant's keys in the state store modules use, for seeding and
//! inspection. Keys are UTF-8 in the API (modules may use any bytes); values are raw bytes in and
//! (lossy) UTF-8 out.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use weir_api::ErrorCode;
use weir_state::{SetOptions, StateError, StateLimits, StateScope};
use weir_tenants::Role;

use super::caller_tenant;
use crate::{ApiError, ApiQuery, Caller, GatewayState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

fn scope(state: &GatewayState, caller: &Caller, needed: Role) -> Result<StateScope, ApiError> {
    let (tenant, quotas) = caller_tenant(state, caller, needed)?;
    Ok(StateScope::new(tenant, StateLimits::of(&quotas)))
}

fn state_error(error: StateError) -> ApiError {
    match error {
        StateError::QuotaExceeded { .. } => {
            ApiError::new(ErrorCode::QuotaExceeded, error.to_string())
        }
        StateError::Timeout => ApiError::new(
            ErrorCode::Unavailable,
            "the state store did not answer in time; a write may or may not have been applied: read the key before retrying",
        ),
        StateError::Unavailable(_) => ApiError::new(
            ErrorCode::Unavailable,
            "the state store is unavailable; a write may or may not have been applied: read the key before retrying",
        ),
        other => ApiError::new(ErrorCode::InvalidRequest, other.to_string()),
    }
}

#[utoipa::path(get, path = "/v1/state", tag = "state", responses((status = 200, body = weir_api::rest::StateKeys), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = scope(&state, &caller, Role::Viewer)?;
    let keys = state
        .state
        .keys(&scope, query.limit.unwrap_or(1000).min(10_000))
        .await
        .map_err(state_error)?;
    let keys: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    Ok(Json(json!({"keys": keys})))
}

#[utoipa::path(get, path = "/v1/state/{key}", tag = "state", params(("key" = String, Path)), responses((status = 200, body = weir_api::rest::StateEntry), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = scope(&state, &caller, Role::Viewer)?;
    let found = state
        .state
        .get(&scope, key.as_bytes())
        .await
        .map_err(state_error)?;
    let value = found.value.ok_or_else(|| ApiError::not_found("key"))?;
    Ok(Json(json!({
        "key": key,
        "value": String::from_utf8_lossy(&value),
        "version": found.version.map(|v| v.to_ts()),
    })))
}

#[utoipa::path(put, path = "/v1/state/{key}", tag = "state", params(("key" = String, Path)), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, body = weir_api::rest::StateEntry), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn put(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let scope = scope(&state, &caller, Role::Developer)?;
    let written = state
        .state
        .set(&scope, key.as_bytes(), &body, SetOptions::default())
        .await
        .map_err(state_error)?;
    Ok(Json(
        json!({"key": key, "version": written.version.map(|v| v.to_ts())}),
    ))
}

#[utoipa::path(delete, path = "/v1/state/{key}", tag = "state", params(("key" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = scope(&state, &caller, Role::Developer)?;
    match state
        .state
        .del(&scope, key.as_bytes(), None)
        .await
        .map_err(state_error)?
        .deleted
    {
        1 => Ok(StatusCode::NO_CONTENT),
        _ => Err(ApiError::not_found("key")),
    }
}
