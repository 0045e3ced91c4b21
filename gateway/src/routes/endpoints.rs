//! `/v1/endpoints`: where a tenant's deployments connect. Owners create and delete them;
//! secrets are write-only; an address on the platform's own network (loopback, private,
//! link-local, unspecified, in any spelling, or a name resolving to one) is refused unless an
//! admin opened that host for the tenant (`allowed_private_hosts`), by the egress rule of
//! `weir_api::egress`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use weir_api::ErrorCode;
use weir_api::egress::{Egress, EgressError};
use weir_api::rest::{CreateEndpoint, Endpoint, EndpointKind};
use weir_store::EndpointRecord;
use weir_tenants::{Quotas, Role};

use super::dependents::{Used, refuse_if_used};
use super::{caller_tenant, check_name};
use crate::{ApiError, ApiJson, Caller, GatewayState, ProblemField};

fn kind_name(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::Mqtt => "mqtt",
        EndpointKind::Kafka => "kafka",
        EndpointKind::Otlp => "otlp",
        EndpointKind::Http => "http",
    }
}

fn kind_of(name: &str) -> Option<EndpointKind> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

pub(crate) fn endpoint_view(record: EndpointRecord) -> Result<Endpoint, ApiError> {
    let kind = kind_of(&record.kind).ok_or_else(|| {
        ApiError::new(ErrorCode::Internal, "a stored endpoint has an unknown kind")
    })?;
    Ok(Endpoint {
        name: record.name,
        kind,
        address: record.address,
        settings: record.settings,
        has_secret: record.secret.is_some(),
        created_at: record.created_at,
    })
}

/// How long the create-time resolution of an endpoint's host may take.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The tenant's egress rule (`weir_api::egress`): the one rule for every connection weir makes
/// on a tenant's behalf.
pub(crate) fn egress(quotas: &Quotas) -> Egress {
    Egress::new(&quotas.allowed_private_hosts)
}

/// Problems with an endpoint's address: its shape, and whether the tenant may reach it by the
/// egress rule, on the address as written (every numeric spelling, IPv6, IPv4 in IPv6) and on
/// every address the host resolves to now. A host that does not resolve yet passes: the
/// connectors apply the same rule again when they connect.
async fn check_address(body: &CreateEndpoint, quotas: &Quotas, errors: &mut Vec<ProblemField>) {
    let problem = |message: String| ProblemField {
        path: "/address".to_owned(),
        message,
    };
    match (body.kind, &body.address) {
        (EndpointKind::Http, None) => {}
        (EndpointKind::Http, Some(_)) => errors.push(problem(
            "an http endpoint is weir's own ingest; it has no address".to_owned(),
        )),
        (_, None) => errors.push(problem("host:port is required".to_owned())),
        (kind, Some(address)) => {
            // An OTLP collector is named by URL (`http://host:port`); the rule is the same.
            let address = match kind {
                EndpointKind::Otlp => address
                    .strip_prefix("http://")
                    .or_else(|| address.strip_prefix("https://"))
                    .unwrap_or(address)
                    .trim_end_matches('/'),
                _ => address.as_str(),
            };
            let Some((host, port)) = address.rsplit_once(':') else {
                errors.push(problem(format!("expected host:port, found {address}")));
                return;
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                errors.push(problem(format!("expected host:port, found {address}")));
                return;
            }
            let Ok(port) = port.parse::<u16>() else {
                return;
            };
            let egress = egress(quotas);
            if let Err(error) = egress.check_host(host) {
                errors.push(problem(error.to_string()));
                return;
            }
            let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, egress.resolve(host, port)).await;
            if let Ok(Err(error @ EgressError::Private { .. })) = resolved {
                errors.push(problem(error.to_string()));
            }
        }
    }
}

#[utoipa::path(post, path = "/v1/endpoints", tag = "endpoints", request_body = weir_api::rest::CreateEndpoint, responses((status = 201, body = weir_api::rest::Endpoint), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Owner)?;
    let mut errors = Vec::new();
    check_name("name", &body.name, &mut errors);
    if super::deployments::BUILT_IN_ENDPOINTS.contains(&body.name.as_str()) {
        errors.push(ProblemField {
            path: "/name".to_owned(),
            message: format!("{} is a built-in endpoint", body.name),
        });
    }
    check_address(&body, &quotas, &mut errors).await;
    if body.secret.as_ref().is_some_and(|s| s.len() > 4096) {
        errors.push(ProblemField {
            path: "/secret".to_owned(),
            message: "at most 4096 bytes".to_owned(),
        });
    }
    if body.settings.len() > 64 {
        errors.push(ProblemField {
            path: "/settings".to_owned(),
            message: "at most 64 settings".to_owned(),
        });
    }
    if !errors.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, "invalid endpoint").with_errors(errors)
        );
    }
    let record = EndpointRecord {
        tenant,
        name: body.name,
        kind: kind_name(body.kind).to_owned(),
        address: body.address,
        settings: body.settings,
        secret: body.secret,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    };
    state.store.put_endpoint(&record).await?;
    Ok((StatusCode::CREATED, Json(endpoint_view(record)?)))
}

#[utoipa::path(get, path = "/v1/endpoints", tag = "endpoints", responses((status = 200, body = Vec<weir_api::rest::Endpoint>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let endpoints = state
        .store
        .endpoints(&tenant)
        .await?
        .into_iter()
        .map(endpoint_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(endpoints))
}

#[utoipa::path(get, path = "/v1/endpoints/{name}", tag = "endpoints", params(("name" = String, Path)), responses((status = 200, body = weir_api::rest::Endpoint), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let record = state
        .store
        .endpoint(&tenant, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    Ok(Json(endpoint_view(record)?))
}

#[utoipa::path(delete, path = "/v1/endpoints/{name}", tag = "endpoints", params(("name" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Owner)?;
    let _changing = state.tenant_locks.lock(&tenant).await;
    refuse_if_used(&state, &tenant, Used::Endpoint { name: &name }).await?;
    if state.store.delete_endpoint(&tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("endpoint"))
    }
}
