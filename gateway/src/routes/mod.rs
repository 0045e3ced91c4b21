//! The routes, one file per resource.

mod artifacts;
mod dependents;
mod deployments;
mod devices;
mod endpoints;
mod import;
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
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_api::ErrorCode;

use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::error::REQUEST_ID;
pub use artifacts::sweep_blobs;
pub(crate) use deployments::{running_revision, start_request};

use crate::{ApiError, GatewayState};

/// Largest request body: the largest module a tenant may upload (64 MiB by default) plus
/// headroom; each route checks its own, tenant-specific limit.
const MAX_BODY_BYTES: usize = 65 << 20;

/// The documented API: each route is registered together with its OpenAPI operation.
fn api() -> OpenApiRouter<GatewayState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(document(routes!(tenants::create, tenants::list)))
        .routes(routes!(tenants::get, tenants::delete))
        .routes(document(routes!(
            tenants::set_quotas,
            tenants::patch_quotas
        )))
        .routes(routes!(tenants::suspend))
        .routes(routes!(tenants::unsuspend))
        .routes(document(routes!(tokens::mint, tokens::list)))
        .routes(routes!(tokens::revoke))
        .routes(routes!(artifacts::upload_module, artifacts::list_modules))
        .routes(routes!(artifacts::get_module, artifacts::delete_module))
        .routes(document(routes!(import::import_module)))
        .routes(document(routes!(import::import_graph)))
        .routes(graph(routes!(
            artifacts::upload_graph,
            artifacts::list_graphs
        )))
        .routes(routes!(artifacts::get_graph, artifacts::delete_graph))
        .routes(document(routes!(endpoints::create, endpoints::list)))
        .routes(routes!(endpoints::get, endpoints::delete))
        .routes(document(routes!(devices::create, devices::list)))
        .routes(routes!(devices::delete))
        .routes(document(routes!(deployments::create, deployments::list)))
        .routes(document(routes!(
            deployments::get,
            deployments::update,
            deployments::delete
        )))
        .routes(routes!(deployments::ingest))
        .routes(routes!(deployments::outputs))
        .routes(routes!(deployments::pause))
        .routes(routes!(deployments::resume))
        .routes(routes!(deployments::rollback))
        .routes(routes!(state::list))
        .routes(routes!(state::get, state::put, state::delete))
        .routes(routes!(observe::logs))
        .routes(routes!(observe::dead_letters))
        .routes(routes!(observe::metrics))
        .routes(routes!(observe::usage))
        .routes(routes!(observe::executors))
        .routes(routes!(crate::executors::join))
        .routes(routes!(crate::executors::heartbeat))
        .routes(routes!(crate::executors::leave))
        .routes(routes!(crate::executors::artifact))
        .routes(routes!(crate::executors::assignments))
        .routes(executor_report(
            routes!(crate::executors::dead_letters),
            weir_api::rest::ExecutorDeadLetters::MAX_BODY_BYTES,
        ))
        .routes(executor_report(
            routes!(crate::executors::log_lines),
            weir_api::rest::ExecutorLogLines::MAX_BODY_BYTES,
        ))
        .routes(executor_report(
            routes!(crate::executors::telemetry),
            weir_api::rest::ExecutorTelemetry::MAX_BODY_BYTES,
        ))
        .routes(routes!(observe::cordon))
        .routes(routes!(observe::uncordon))
        .routes(routes!(observe::drain))
        // The dashboard's own reads (`gateway/src/dashboard`).
        .routes(routes!(crate::dashboard::me))
        .routes(routes!(crate::dashboard::events))
        .routes(routes!(crate::dashboard::history))
        .routes(routes!(crate::dashboard::quotas))
        .routes(routes!(crate::dashboard::graph))
}

/// Largest JSON or YAML document (tenant, token, endpoint, deployment, import request).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Largest graph definition.
pub(crate) const MAX_GRAPH_BYTES: usize = 4 << 20;

type Routes = utoipa_axum::router::UtoipaMethodRouter<GatewayState>;

/// Routes whose bodies are small documents: refused early rather than buffered up to the
/// module-sized global limit.
fn document((schemas, paths, router): Routes) -> Routes {
    (
        schemas,
        paths,
        router.layer(DefaultBodyLimit::max(MAX_DOCUMENT_BYTES)),
    )
}

/// An executor's report (dead letters, log lines, telemetry): bodies up to `max_bytes`.
fn executor_report((schemas, paths, router): Routes, max_bytes: usize) -> Routes {
    (
        schemas,
        paths,
        router.layer(DefaultBodyLimit::max(max_bytes)),
    )
}

fn graph((schemas, paths, router): Routes) -> Routes {
    (
        schemas,
        paths,
        router.layer(DefaultBodyLimit::max(MAX_GRAPH_BYTES)),
    )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "weir",
        description = "The REST API of weir: tenants, modules, graphs, endpoints, devices, deployments, state and what they report. Errors are application/problem+json with a stable code."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the API, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

pub(crate) fn router(state: GatewayState) -> Router {
    let (api, document) = api().split_for_parts();
    let document = Arc::new(document);
    // The dashboard: its page at `/` and what its routes share (`gateway/src/dashboard`).
    let api = crate::dashboard::attach(api, &state);
    api.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(observe::platform_metrics))
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_id))
        // Outermost last: a client's id kept if well-formed (else replaced), one made if
        // missing (tower-http's SetRequestId), the request's span carrying it, and the id
        // echoed on every response (PropagateRequestId).
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(middleware::from_fn(drop_odd_request_id))
        .with_state(state)
}

/// The span of one request: method, path and request id now; `tenant` (and `deployment` on
/// deployment routes) recorded once the handler knows them.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
        tenant = tracing::field::Empty,
        deployment = tracing::field::Empty,
    )
}

const X_REQUEST_ID: &str = "x-request-id";

/// Longest request id a client may give.
const MAX_REQUEST_ID: usize = 64;

/// Removes a client's `x-request-id` unless it is 1 to 64 of `A-Z a-z 0-9 - _ .` (ids go into
/// logs and problem documents), so a new one is made.
async fn drop_odd_request_id(mut request: Request, next: Next) -> Response {
    let odd = request.headers().get(X_REQUEST_ID).is_some_and(|v| {
        v.is_empty()
            || v.len() > MAX_REQUEST_ID
            || !v
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if odd {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    next.run(request).await
}

/// Request ids weir makes: microseconds since the epoch and a counter, in hex.
#[derive(Debug, Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let id = format!("{started:x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Scopes the request's id (set by the layers outside) for problem documents; holds the
/// request to the server's request timeout ([`crate::server`]) when one is set.
async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let deadline = request
        .extensions()
        .get::<crate::server::RequestDeadline>()
        .map(|d| d.0);
    let mut response = REQUEST_ID
        .scope(id.clone(), async {
            let handled = async { as_problem(next.run(request).await).await };
            match deadline {
                None => handled.await,
                Some(limit) => tokio::time::timeout(limit, handled)
                    .await
                    .unwrap_or_else(|_| {
                        ApiError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "the request took longer than the server's {} ms",
                                limit.as_millis()
                            ),
                        )
                        .into_response()
                    }),
            }
        })
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Turns an error answer that is not a problem document (axum's own rejections: body over the
/// limit, bad path encoding, method not allowed) into one, so every error has a `code`.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let code = match status.as_u16() {
        400 => ErrorCode::InvalidRequest,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_owned();
    let detail = if detail.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        detail
    };
    ApiError::new(code, detail).into_response()
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<GatewayState>) -> Result<impl IntoResponse, ApiError> {
    state.store.tenants().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// The caller's tenant and its quotas, once the caller has at least `needed` and is within the
/// tenant's API rate.
pub(crate) fn caller_tenant(
    state: &GatewayState,
    caller: &crate::Caller,
    needed: weir_tenants::Role,
) -> Result<(weir_api::TenantId, weir_tenants::Quotas), ApiError> {
    let tenant = caller.tenant()?.clone();
    tracing::Span::current().record("tenant", tracing::field::display(&tenant));
    // `Caller` read the record while checking the token; it is there for every tenant principal.
    let record = caller
        .tenant
        .as_ref()
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    // Counted before the role check: a flood of forbidden requests is still a flood.
    if let Err(wait) = state
        .limits
        .admit(&tenant, record.quotas.api_requests_per_second)
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "over the tenant's {} API requests per second; retry after the advertised delay",
                record.quotas.api_requests_per_second
            ),
        )
        .with_retry_after(wait));
    }
    caller.require(needed)?;
    Ok((tenant, record.quotas.clone()))
}

/// The media type of a request body, without parameters (`; charset=…`).
pub(crate) fn content_type(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or("", |v| v.split(';').next().unwrap_or("").trim())
}

/// Names of modules, graphs, their versions, endpoints and deployment ids: safe in paths,
/// URLs and file names, and never mistaken for a command-line option or a hidden file (the
/// first character is a letter or digit, as for tenant ids).
pub(crate) fn check_name(field: &str, value: &str, errors: &mut Vec<crate::ProblemField>) {
    let ok = value.len() <= 128
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        errors.push(crate::ProblemField {
            path: format!("/{field}"),
            message: format!(
                "{field} must be 1 to 128 of A-Z a-z 0-9 . - _, starting with a letter or digit"
            ),
        });
    }
}

/// A lifecycle event the deployment's state refuses (`weir_scheduler::DeploymentState`), as a
/// `409 conflict`.
pub(crate) fn lifecycle_error(error: weir_scheduler::IllegalTransition) -> ApiError {
    ApiError::new(ErrorCode::Conflict, error.to_string())
}
