//! `/v1/modules` and `/v1/graphs`: upload (validated before anything is stored), list, get,
//! delete — all within the caller's tenant and its quotas.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use weir_api::ErrorCode;
use weir_api::graph::parse_graph;
use weir_api::rest::{Graph, Module};
use weir_store::{GraphRecord, ModuleRecord};
use weir_tenants::Role;

use super::{caller_tenant, check_name, content_type};
use crate::{ApiError, ApiQuery, Caller, GatewayState, ProblemField};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upload {
    pub(crate) name: String,
    pub(crate) version: String,
}

pub(crate) fn module_view(m: ModuleRecord) -> Module {
    Module {
        name: m.name,
        version: m.version,
        digest: m.digest.to_string(),
        size: m.size,
        operators: m.operators,
        created_at: m.created_at,
    }
}

pub(crate) fn graph_view(g: GraphRecord) -> Graph {
    Graph {
        name: g.name,
        version: g.version,
        digest: g.digest.to_string(),
        created_at: g.created_at,
    }
}

pub(crate) fn check_upload(upload: &Upload) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    check_name("name", &upload.name, &mut errors);
    check_name("version", &upload.version, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::InvalidRequest, "invalid name or version").with_errors(errors))
    }
}

#[utoipa::path(post, path = "/v1/modules", tag = "modules", request_body(content = Vec<u8>, content_type = "application/wasm"), responses((status = 201, body = weir_api::rest::Module), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn upload_module(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(upload): ApiQuery<Upload>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    check_upload(&upload)?;
    if content_type(&headers) != "application/wasm" {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "upload a module as application/wasm",
        ));
    }
    let record = store_module(&state, tenant, &quotas, upload, body).await?;
    Ok((StatusCode::CREATED, Json(module_view(record))))
}

/// Validates and keeps a module version: quotas first, then the executor's judgement, then the
/// bytes and the record. Uploads and OCI imports both end here.
pub(crate) async fn store_module(
    state: &GatewayState,
    tenant: weir_api::TenantId,
    quotas: &weir_tenants::Quotas,
    upload: Upload,
    body: Bytes,
) -> Result<ModuleRecord, ApiError> {
    let size = body.len() as u64;
    if size == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidModule,
            "the module is empty",
        ));
    }
    if size > quotas.max_module_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the module is {size} bytes; the limit is {}",
                quotas.max_module_bytes
            ),
        ));
    }
    let existing = state.store.modules(&tenant).await?;
    if existing.len() as u64 >= u64::from(quotas.max_modules) {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!("the tenant has {} modules, the limit", quotas.max_modules),
        ));
    }
    let total: u64 = existing.iter().map(|m| m.size).sum();
    if total + size > quotas.max_module_total_bytes {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "modules would take {} bytes; the limit is {}",
                total + size,
                quotas.max_module_total_bytes
            ),
        ));
    }
    if existing
        .iter()
        .any(|m| m.name == upload.name && m.version == upload.version)
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("module {}@{} exists", upload.name, upload.version),
        ));
    }
    let validator = state.validator.clone();
    let bytes = body.clone();
    let operators = tokio::task::spawn_blocking(move || validator.validate(&bytes))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|message| ApiError::new(ErrorCode::InvalidModule, message))?;
    let digest = state.blobs.put(&body).map_err(|e| ApiError::internal(&e))?;
    let record = ModuleRecord {
        tenant,
        name: upload.name,
        version: upload.version,
        digest,
        size,
        operators,
        created_at: 0,
    };
    state.store.put_module(&record).await?;
    Ok(record)
}

#[utoipa::path(get, path = "/v1/modules", tag = "modules", responses((status = 200, body = Vec<weir_api::rest::Module>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list_modules(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let modules: Vec<Module> = state
        .store
        .modules(&tenant)
        .await?
        .into_iter()
        .map(module_view)
        .collect();
    Ok(Json(modules))
}

#[utoipa::path(get, path = "/v1/modules/{name}/{version}", tag = "modules", params(("name" = String, Path), ("version" = String, Path)), responses((status = 200, body = weir_api::rest::Module), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn get_module(
    State(state): State<GatewayState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let module = state
        .store
        .module(&tenant, &name, &version)
        .await?
        .ok_or_else(|| ApiError::not_found("module"))?;
    Ok(Json(module_view(module)))
}

#[utoipa::path(delete, path = "/v1/modules/{name}/{version}", tag = "modules", params(("name" = String, Path), ("version" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete_module(
    State(state): State<GatewayState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Developer)?;
    if state.store.delete_module(&tenant, &name, &version).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("module"))
    }
}

#[utoipa::path(post, path = "/v1/graphs", tag = "graphs", request_body(content = String, content_type = "application/yaml"), responses((status = 201, body = weir_api::rest::Graph), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn upload_graph(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(upload): ApiQuery<Upload>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    check_upload(&upload)?;
    if !matches!(
        content_type(&headers),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/json"
    ) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "upload a graph as application/yaml or application/json",
        ));
    }
    let record = store_graph(&state, tenant, &quotas, upload, body).await?;
    Ok((StatusCode::CREATED, Json(graph_view(record))))
}

/// Validates and keeps a graph version; uploads and OCI imports both end here.
pub(crate) async fn store_graph(
    state: &GatewayState,
    tenant: weir_api::TenantId,
    quotas: &weir_tenants::Quotas,
    upload: Upload,
    body: Bytes,
) -> Result<GraphRecord, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(ErrorCode::InvalidGraph, "the graph definition is not UTF-8"))?;
    let graph = parse_graph(text).map_err(|error| {
        let problems = error.problems();
        ApiError::new(
            ErrorCode::InvalidGraph,
            format!("the graph definition has {} problem(s)", problems.len()),
        )
        .with_errors(
            problems
                .into_iter()
                .map(|p| ProblemField {
                    path: p.path,
                    message: p.message,
                })
                .collect(),
        )
    })?;
    if graph.operations().len() as u64 > u64::from(quotas.max_nodes_per_graph) {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "the graph has {} operations; the limit is {}",
                graph.operations().len(),
                quotas.max_nodes_per_graph
            ),
        ));
    }
    let existing = state.store.graphs(&tenant).await?;
    if existing.len() as u64 >= u64::from(quotas.max_graphs) {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!("the tenant has {} graphs, the limit", quotas.max_graphs),
        ));
    }
    let digest = state.blobs.put(&body).map_err(|e| ApiError::internal(&e))?;
    let record = GraphRecord {
        tenant,
        name: upload.name,
        version: upload.version,
        digest,
        created_at: 0,
    };
    state.store.put_graph(&record).await?;
    Ok(record)
}

#[utoipa::path(get, path = "/v1/graphs", tag = "graphs", responses((status = 200, body = Vec<weir_api::rest::Graph>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list_graphs(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let graphs: Vec<Graph> = state
        .store
        .graphs(&tenant)
        .await?
        .into_iter()
        .map(graph_view)
        .collect();
    Ok(Json(graphs))
}

#[utoipa::path(get, path = "/v1/graphs/{name}/{version}", tag = "graphs", params(("name" = String, Path), ("version" = String, Path)), responses((status = 200, body = weir_api::rest::Graph), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn get_graph(
    State(state): State<GatewayState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let graph = state
        .store
        .graph(&tenant, &name, &version)
        .await?
        .ok_or_else(|| ApiError::not_found("graph"))?;
    Ok(Json(graph_view(graph)))
}

#[utoipa::path(delete, path = "/v1/graphs/{name}/{version}", tag = "graphs", params(("name" = String, Path), ("version" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete_graph(
    State(state): State<GatewayState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Developer)?;
    if state.store.delete_graph(&tenant, &name, &version).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("graph"))
    }
}
