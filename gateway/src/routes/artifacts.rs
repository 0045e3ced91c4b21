//! `/v1/modules` and `/v1/graphs`: upload (validated before anything is stored), list, get,
//! delete — all within the caller's tenant and its quotas. The count and size quotas are
//! checked early (before a module is compiled) and again, atomically, when the record is
//! written. Bytes live in the blob store, one copy per content, pinned while their record is
//! written and collected when their last record goes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use weir_api::graph::parse_graph;
use weir_api::rest::{Graph, Module};
use weir_api::{ErrorCode, ModuleDigest};
use weir_store::{GraphRecord, ModuleRecord};
use weir_tenants::Role;

use super::dependents::{Used, refuse_if_used};
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
    let validated = tokio::task::spawn_blocking(move || validator.validate(&bytes))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|message| ApiError::new(ErrorCode::InvalidModule, message))?;
    if validated.imports_inference && !quotas.inference {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            "the module imports wasi:nn (inference), which the tenant's quota does not allow (quota `inference` is false); ask the platform's admin",
        ));
    }
    let operators = validated.operators;
    let blob = state
        .blobs
        .put(body)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let record = ModuleRecord {
        tenant,
        name: upload.name,
        version: upload.version,
        digest: blob.digest().clone(),
        size,
        operators,
        created_at: 0,
    };
    let stored = state.store.put_module(&record, quotas).await;
    drop(blob);
    if stored.is_err() {
        release_blobs(state, vec![record.digest.clone()]).await;
    }
    stored?;
    Ok(record)
}

/// Removes the blobs no module or graph references (left by a crash or an interrupted upload,
/// or by a version that did not collect them): what a server does at start, before it takes
/// requests. The number removed.
pub async fn sweep_blobs(state: &GatewayState) -> Result<usize, ApiError> {
    let referenced = state.store.referenced_blobs().await?;
    let removed = state
        .blobs
        .sweep(referenced.into_iter().collect())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(removed.len())
}

/// Collects blobs whose records were deleted (or refused): each goes if nothing references it
/// any more, and the module validator forgets what it kept for it. Failures are logged, not
/// returned: the records are gone, and a blob left behind is removed by the next start's sweep.
pub(crate) async fn release_blobs(state: &GatewayState, digests: Vec<ModuleDigest>) {
    for digest in digests {
        match state.blobs.collect(state.store.as_ref(), &digest).await {
            Ok(true) => {
                let validator = state.validator.clone();
                let forgotten = tokio::task::spawn_blocking(move || validator.forget(&digest));
                if let Err(error) = forgotten.await {
                    tracing::warn!(%error, "module validator failed to forget a module");
                }
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, %digest, "blob not collected"),
        }
    }
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
    let _changing = state.tenant_locks.lock(&tenant).await;
    refuse_if_used(
        &state,
        &tenant,
        Used::Module {
            name: &name,
            version: &version,
        },
    )
    .await?;
    let digest = state
        .store
        .delete_module(&tenant, &name, &version)
        .await?
        .ok_or_else(|| ApiError::not_found("module"))?;
    release_blobs(&state, vec![digest]).await;
    Ok(StatusCode::NO_CONTENT)
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

/// A graph's problems as one problem document.
fn graph_problems(error: weir_api::graph::GraphError) -> ApiError {
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
}

/// Validates and keeps a graph version; uploads and OCI imports both end here.
pub(crate) async fn store_graph(
    state: &GatewayState,
    tenant: weir_api::TenantId,
    quotas: &weir_tenants::Quotas,
    upload: Upload,
    body: Bytes,
) -> Result<GraphRecord, ApiError> {
    // Parsing and validating up to 4 MiB of YAML is CPU work: off the async workers.
    let text = body.clone();
    let operations = tokio::task::spawn_blocking(move || {
        let text = std::str::from_utf8(&text).map_err(|_| {
            ApiError::new(ErrorCode::InvalidGraph, "the graph definition is not UTF-8")
        })?;
        parse_graph(text)
            .map(|graph| graph.operations().len())
            .map_err(graph_problems)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    if operations as u64 > u64::from(quotas.max_nodes_per_graph) {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "the graph has {operations} operations; the limit is {}",
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
    let blob = state
        .blobs
        .put(body)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let record = GraphRecord {
        tenant,
        name: upload.name,
        version: upload.version,
        digest: blob.digest().clone(),
        created_at: 0,
    };
    let stored = state.store.put_graph(&record, quotas).await;
    drop(blob);
    if stored.is_err() {
        release_blobs(state, vec![record.digest.clone()]).await;
    }
    stored?;
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
    let _changing = state.tenant_locks.lock(&tenant).await;
    refuse_if_used(
        &state,
        &tenant,
        Used::Graph {
            name: &name,
            version: &version,
        },
    )
    .await?;
    let digest = state
        .store
        .delete_graph(&tenant, &name, &version)
        .await?
        .ok_or_else(|| ApiError::not_found("graph"))?;
    release_blobs(&state, vec![digest]).await;
    Ok(StatusCode::NO_CONTENT)
}
