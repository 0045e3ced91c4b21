//! `/v1/devices`: the credentials devices (and any other MQTT client) use to connect to weir's
//! embedded MQTT broker as the tenant. Owners create and delete them; every role of the tenant
//! lists them. weir makes the password (32 random bytes, as 64 hex digits), shows it once in the
//! answer to the create and keeps only its SHA-256 (`weir_store::ControlStore::create_device`);
//! a lost password is replaced by deleting the device and creating it again. The MQTT user name
//! is `<name>@<tenant>`, unique on the platform, so the broker learns the tenant from it
//! (`ControlStore::verify_device`). Bounded by the tenant's `max_devices`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use weir_api::ErrorCode;
use weir_api::rest::{CreateDevice, Device, DeviceCredentials};
use weir_store::DeviceRecord;
use weir_tenants::Role;

use super::{caller_tenant, check_name};
use crate::{ApiError, ApiJson, Caller, GatewayState};

fn device_view(record: DeviceRecord) -> Device {
    Device {
        username: record.username(),
        name: record.name,
        created_at: record.created_at,
    }
}

#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = weir_api::rest::CreateDevice, responses((status = 201, body = weir_api::rest::DeviceCredentials), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Owner)?;
    let mut errors = Vec::new();
    check_name("name", &body.name, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "invalid device").with_errors(errors));
    }
    let created = state
        .store
        .create_device(&tenant, &body.name, &quotas)
        .await?;
    let credentials = DeviceCredentials {
        username: created.device.username(),
        name: created.device.name,
        password: created.password,
        created_at: created.device.created_at,
    };
    // The answer holds a secret: no cache keeps it.
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(credentials),
    ))
}

#[utoipa::path(get, path = "/v1/devices", tag = "devices", responses((status = 200, body = Vec<weir_api::rest::Device>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let devices: Vec<Device> = state
        .store
        .devices(&tenant)
        .await?
        .into_iter()
        .map(device_view)
        .collect();
    Ok(Json(devices))
}

/// Deletes a device's credentials: the broker refuses them from its next connect on.
#[utoipa::path(delete, path = "/v1/devices/{name}", tag = "devices", params(("name" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Owner)?;
    if state.store.delete_device(&tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("device"))
    }
}
