//! `/v1/deployments`: a graph of the tenant's, its configuration, and the HTTP source and sink;
//! `/ingest` hands messages to the source and, with `?wait=true`, answers with the outputs.
//!
//! The runtime follows the stored record: every change (create, update, pause, resume, delete)
//! holds the tenant's lock from its first read of the record to its last runtime call, so no
//! two changes interleave, and the `max_deployments` quota is checked again in the insert's
//! transaction.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use weir_api::dataflow_graph::DataflowGraphDocument;
use weir_api::graph::parse_graph;
use weir_api::rest::{CreateDeployment, Deployment, DeploymentChanged, IngestReply, StatusChange};
use weir_api::{ErrorCode, TenantId};
use weir_store::DeploymentRecord;
use weir_tenants::{Quotas, Role};

use weir_scheduler::{DeploymentState, Event, ExecutorId};

use super::{caller_tenant, check_name, content_type, lifecycle_error};
use crate::{
    ApiError, ApiJson, ApiQuery, Caller, GatewayState, IngestMessage, ProblemField, StartBinding,
    StartDeployment,
};

/// Longest an ingest waits for its outputs.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestQuery {
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// The module a graph reference names among the tenant's: `<…/>name[:version]`; without a
/// version, the newest.
async fn resolve_module(
    state: &GatewayState,
    tenant: &TenantId,
    reference: &str,
) -> Result<Vec<u8>, String> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let (name, version) = match last.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (last, None),
    };
    let record = match version {
        Some(version) => state
            .store
            .module(tenant, name, version)
            .await
            .map_err(|e| e.to_string())?,
        None => state
            .store
            .modules(tenant)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|m| m.name == name)
            .max_by_key(|m| m.created_at),
    }
    .ok_or_else(|| {
        format!(
            "no module {name}{} in this tenant",
            version.map(|v| format!("@{v}")).unwrap_or_default()
        )
    })?;
    state
        .blobs
        .get(&record.digest)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "module bytes are missing".to_owned())
}

/// Everything a deployment needs, from the tenant's stored graph and modules.
pub(crate) async fn start_request(
    state: &GatewayState,
    tenant: &TenantId,
    quotas: &Quotas,
    spec: &CreateDeployment,
) -> Result<StartDeployment, ApiError> {
    let graph = state
        .store
        .graph(tenant, &spec.graph.name, &spec.graph.version)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidDeployment,
                format!(
                    "no graph {}@{} in this tenant",
                    spec.graph.name, spec.graph.version
                ),
            )
        })?;
    let bytes = state
        .blobs
        .get(&graph.digest)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "graph bytes are missing"))?;
    let text = String::from_utf8(bytes).map_err(|e| ApiError::internal(&e))?;
    let validated = parse_graph(&text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDeployment, e.to_string()))?;
    let mut modules = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, operation) in validated.operations().iter().enumerate() {
        let Some(reference) = &operation.module else {
            continue;
        };
        if modules.contains_key(reference) {
            continue;
        }
        match resolve_module(state, tenant, reference).await {
            Ok(bytes) => {
                modules.insert(reference.clone(), bytes);
            }
            Err(message) => errors.push(ProblemField {
                path: format!("graph.operations[{index}].module"),
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidDeployment,
            "the graph names modules this tenant does not have",
        )
        .with_errors(errors));
    }
    Ok(StartDeployment {
        tenant: tenant.clone(),
        quotas: quotas.clone(),
        id: spec.id.clone(),
        graph: text,
        modules,
        configuration: spec.configuration.clone(),
        source: start_binding(state, tenant, &spec.source).await?,
        sink: start_binding(state, tenant, &spec.sink).await?,
        dead_letters: match &spec.dead_letters {
            Some(binding) => Some(start_binding(state, tenant, binding).await?),
            None => None,
        },
        partition_key: spec.partition_key,
    })
}

/// The deployment a request body describes: weir's own JSON document, or an Azure
/// `DataflowGraph` in JSON or YAML. The flag is `false` for a `DataflowGraph` in mode `Disabled`.
fn deployment_body(headers: &HeaderMap, body: &[u8]) -> Result<(CreateDeployment, bool), ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body is empty; send a deployment document",
        ));
    }
    let value: serde_json::Value = match content_type(headers) {
        "application/json" => serde_json::from_slice(body).map_err(|e| {
            ApiError::new(ErrorCode::InvalidRequest, format!("malformed JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "the YAML is not UTF-8"))?;
            serde_saphyr::from_str(text).map_err(|e| {
                ApiError::new(ErrorCode::InvalidRequest, format!("malformed YAML: {e}"))
            })?
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send a deployment as application/json, or a DataflowGraph as application/yaml or application/json",
            ));
        }
    };
    if DataflowGraphDocument::is_dataflow_graph(&value) {
        let document: DataflowGraphDocument = serde_json::from_value(value).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidDeployment,
                format!("not a DataflowGraph: {e}"),
            )
        })?;
        let converted = document.to_deployment().map_err(|problems| {
            ApiError::new(
                ErrorCode::InvalidDeployment,
                "the DataflowGraph cannot run on weir as written",
            )
            .with_errors(problems)
        })?;
        return Ok((converted.deployment, converted.enabled));
    }
    let spec = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("invalid deployment: {e}"),
        )
    })?;
    Ok((spec, true))
}

/// Problems with a deployment's bindings that the gateway can see: each names a built-in
/// endpoint (`http`, or `default`, the embedded MQTT broker) or an endpoint of the tenant's.
/// What the connector itself requires (topics, settings) is checked by the executor at start.
async fn check_bindings(
    state: &GatewayState,
    tenant: &TenantId,
    spec: &CreateDeployment,
) -> Result<Vec<ProblemField>, ApiError> {
    let mut errors = Vec::new();
    check_name("id", &spec.id, &mut errors);
    let bindings = [("source", Some(&spec.source)), ("sink", Some(&spec.sink))]
        .into_iter()
        .chain([("dead_letters", spec.dead_letters.as_ref())])
        .filter_map(|(field, binding)| Some((field, binding?)));
    for (field, binding) in bindings {
        if field == "dead_letters" && binding.topics.len() != 1 {
            errors.push(ProblemField {
                path: "/dead_letters/topics".to_owned(),
                message: "name the one topic dead letters are published to".to_owned(),
            });
        }
        if field == "dead_letters" && binding.endpoint == "http" {
            errors.push(ProblemField {
                path: "/dead_letters/endpoint".to_owned(),
                message: "dead letters are read at /v1/deadletters already; name a broker endpoint to publish them to".to_owned(),
            });
            continue;
        }
        if BUILT_IN_ENDPOINTS.contains(&binding.endpoint.as_str()) {
            continue;
        }
        match state.store.endpoint(tenant, &binding.endpoint).await? {
            None => errors.push(ProblemField {
                path: format!("/{field}/endpoint"),
                message: format!("no endpoint {} in this tenant", binding.endpoint),
            }),
            Some(endpoint) if field == "source" && endpoint.kind == "otlp" => {
                errors.push(ProblemField {
                    path: format!("/{field}/endpoint"),
                    message: format!(
                        "{} is an otlp endpoint; OpenTelemetry endpoints are sinks only",
                        endpoint.name
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(errors)
}

/// Endpoint names every tenant has: weir's own HTTP ingest and output queue, and the embedded
/// MQTT broker (Azure's name for the platform broker).
pub(crate) const BUILT_IN_ENDPOINTS: [&str; 2] = ["http", "default"];

/// A binding with its endpoint resolved for the executor.
async fn start_binding(
    state: &GatewayState,
    tenant: &TenantId,
    binding: &weir_api::rest::Binding,
) -> Result<StartBinding, ApiError> {
    let (kind, address, settings, secret) = match binding.endpoint.as_str() {
        "http" => ("http".to_owned(), None, BTreeMap::new(), None),
        "default" => ("mqtt".to_owned(), None, BTreeMap::new(), None),
        name => {
            let record = state.store.endpoint(tenant, name).await?.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidDeployment,
                    format!("no endpoint {name} in this tenant"),
                )
            })?;
            (record.kind, record.address, record.settings, record.secret)
        }
    };
    Ok(StartBinding {
        endpoint: binding.endpoint.clone(),
        kind,
        address,
        settings,
        secret,
        topics: binding.topics.clone(),
    })
}

#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", request_body = weir_api::rest::CreateDeployment, responses((status = 201, body = weir_api::rest::DeploymentChanged), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<GatewayState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    let (spec, enabled) = deployment_body(&headers, &body)?;
    let errors = check_bindings(&state, &tenant, &spec).await?;
    if !errors.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidDeployment, "invalid deployment").with_errors(errors),
        );
    }
    let _changing = state.tenant_locks.lock(&tenant).await;
    if state.store.deployments(&tenant).await?.len() as u64 >= u64::from(quotas.max_deployments) {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "the tenant runs {} deployments, the limit",
                quotas.max_deployments
            ),
        ));
    }
    if state.store.deployment(&tenant, &spec.id).await?.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("deployment {} exists", spec.id),
        ));
    }
    // Resolved even when paused, so a deployment that could never start is refused now.
    let request = start_request(&state, &tenant, &quotas, &spec).await?;
    crate::scale::check(&spec, &request, &quotas)?;
    // Several instances: pending until the reconcile loop places and starts each.
    let by_loop = crate::scale::placed_by_loop(&spec);
    let warnings = if enabled && !by_loop {
        state.runtime.start(request).await?
    } else {
        Vec::new()
    };
    // A new deployment: pending, then started here (or stopped at once when created paused).
    let status = if enabled && by_loop {
        DeploymentState::Pending
    } else if enabled {
        running_here()?
    } else {
        DeploymentState::Pending
            .apply(Event::Stop)
            .map_err(lifecycle_error)?
    }
    .status();
    let record = DeploymentRecord {
        tenant: tenant.clone(),
        id: spec.id.clone(),
        spec: serde_json::to_value(&spec).map_err(|e| ApiError::internal(&e))?,
        status: status.to_owned(),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    };
    if let Err(error) = state.store.put_deployment(&record, &quotas).await {
        // Under the lock no record of this id existed, so the runtime ran none before this.
        if enabled {
            state.runtime.stop(&tenant, &spec.id).await;
        }
        return Err(error.into());
    }
    Ok((
        StatusCode::CREATED,
        Json(DeploymentChanged {
            id: spec.id,
            status: status.to_owned(),
            warnings,
        }),
    ))
}

/// The state of a deployment the runtime has just started in this process: pending, placed on
/// the in-process executor, started.
fn running_here() -> Result<DeploymentState, ApiError> {
    let executor = ExecutorId::new("local").map_err(|e| ApiError::internal(&e))?;
    DeploymentState::Pending
        .apply(Event::Place(executor))
        .and_then(|placed| placed.apply(Event::Started))
        .map_err(lifecycle_error)
}

/// The stored deployment `id` of the tenant and what it runs.
async fn stored(
    state: &GatewayState,
    tenant: &TenantId,
    id: &str,
) -> Result<(DeploymentRecord, CreateDeployment), ApiError> {
    let record = state
        .store
        .deployment(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment"))?;
    let spec = serde_json::from_value(record.spec.clone()).map_err(|e| ApiError::internal(&e))?;
    Ok((record, spec))
}

/// A rolling update: the new version starts (modules resolved, instantiated, `init`ed) before
/// the old one stops; if it cannot start, the old one keeps running and the answer says why.
#[utoipa::path(put, path = "/v1/deployments/{id}", tag = "deployments", params(("id" = String, Path)), request_body = weir_api::rest::CreateDeployment, responses((status = 200, body = weir_api::rest::DeploymentChanged), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn update(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    let _changing = state.tenant_locks.lock(&tenant).await;
    let (record, _) = stored(&state, &tenant, &id).await?;
    let (spec, _) = deployment_body(&headers, &body)?;
    if spec.id != id {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the document is for deployment {}, not {id}", spec.id),
        ));
    }
    let errors = check_bindings(&state, &tenant, &spec).await?;
    if !errors.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidDeployment, "invalid deployment").with_errors(errors),
        );
    }
    let request = start_request(&state, &tenant, &quotas, &spec).await?;
    crate::scale::check(&spec, &request, &quotas)?;
    let before: Option<CreateDeployment> = serde_json::from_value(record.spec.clone()).ok();
    let by_loop = crate::scale::placed_by_loop(&spec)
        || before.as_ref().is_some_and(crate::scale::placed_by_loop);
    let warnings = if by_loop {
        // The old instances stop; the reconcile loop starts the new spec's.
        if let Some(before) = &before {
            crate::scale::stop_instances(&state, &tenant, before).await;
        }
        Vec::new()
    } else {
        state.runtime.start(request).await?
    };
    let detail = format!(
        "updated to graph {}@{} (was {})",
        spec.graph.name, spec.graph.version, record.status
    );
    let value = serde_json::to_value(&spec).map_err(|e| ApiError::internal(&e))?;
    let updated = state
        .store
        .update_deployment_spec(&tenant, &id, &value, &detail)
        .await;
    if !updated? {
        // The record is gone: the runtime must not run what the store does not have.
        state.runtime.stop(&tenant, &id).await;
        return Err(ApiError::not_found("deployment"));
    }
    let status = if by_loop {
        DeploymentState::Pending
    } else {
        running_here()?
    };
    Ok(Json(DeploymentChanged {
        id,
        status: status.status().to_owned(),
        warnings,
    }))
}

#[utoipa::path(post, path = "/v1/deployments/{id}/pause", tag = "deployments", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::DeploymentChanged), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn pause(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    let _changing = state.tenant_locks.lock(&tenant).await;
    let (record, _) = stored(&state, &tenant, &id).await?;
    let current = DeploymentState::from_stored(&record.status, "");
    let paused = current.apply(Event::Stop).map_err(lifecycle_error)?;
    if current != paused {
        state.runtime.stop(&tenant, &id).await;
        state
            .store
            .set_deployment_status(
                &tenant,
                &id,
                paused.status(),
                &format!("paused by {}", caller.subject),
            )
            .await?;
    }
    Ok(Json(DeploymentChanged {
        id,
        status: paused.status().to_owned(),
        warnings: Vec::new(),
    }))
}

#[utoipa::path(post, path = "/v1/deployments/{id}/resume", tag = "deployments", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::DeploymentChanged), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn resume(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    let _changing = state.tenant_locks.lock(&tenant).await;
    let (record, spec) = stored(&state, &tenant, &id).await?;
    let mut warnings = Vec::new();
    // Paused or failed: pending again, then started here. Already on its way to running (the
    // scheduler may show it pending, placed or degraded): started again unless it runs.
    DeploymentState::from_stored(&record.status, "")
        .apply(Event::Resume)
        .map_err(lifecycle_error)?;
    if crate::scale::placed_by_loop(&spec) {
        // Several instances: the reconcile loop places and starts each.
        let pending = DeploymentState::Pending.status();
        let detail = format!("resumed by {}", caller.subject);
        state
            .store
            .set_deployment_status(&tenant, &id, pending, &detail)
            .await?;
        return Ok(Json(DeploymentChanged {
            id,
            status: pending.to_owned(),
            warnings,
        }));
    }
    let running = running_here()?;
    if record.status != running.status() || state.runtime.status(&tenant, &id).await.is_none() {
        let request = start_request(&state, &tenant, &quotas, &spec).await?;
        warnings = state.runtime.start(request).await?;
        state
            .store
            .set_deployment_status(
                &tenant,
                &id,
                running.status(),
                &format!("resumed by {}", caller.subject),
            )
            .await?;
    }
    Ok(Json(DeploymentChanged {
        id,
        status: running.status().to_owned(),
        warnings,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// Takes outputs from the deployment's HTTP sink queue (those no waiting ingest took).
#[utoipa::path(post, path = "/v1/deployments/{id}/outputs", tag = "deployments", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::IngestReply), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn outputs(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<OutputsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    stored(&state, &tenant, &id).await?;
    let outputs = state
        .runtime
        .take_outputs(&tenant, &id, query.limit.unwrap_or(100).clamp(1, 10_000))
        .await?;
    Ok(Json(IngestReply {
        accepted: 0,
        outputs: Some(outputs),
    }))
}

fn deployment_view(record: DeploymentRecord) -> Result<Deployment, ApiError> {
    Ok(Deployment {
        spec: serde_json::from_value(record.spec).map_err(|e| ApiError::internal(&e))?,
        id: record.id,
        status: record.status,
        created_at: record.created_at,
        history: Vec::new(),
        runtime: None,
    })
}

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", responses((status = 200, body = Vec<weir_api::rest::Deployment>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let list = state
        .store
        .deployments(&tenant)
        .await?
        .into_iter()
        .map(deployment_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(list))
}

#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Deployment), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    let (record, _) = stored(&state, &tenant, &id).await?;
    let mut view = deployment_view(record)?;
    view.history = state
        .store
        .deployment_history(&tenant, &id)
        .await?
        .into_iter()
        .map(|c| StatusChange {
            status: c.status,
            detail: c.detail,
            at: c.at,
        })
        .collect();
    view.runtime = if crate::scale::placed_by_loop(&view.spec) {
        Some(crate::scale::instances_status(&state, &tenant, &view.spec).await)
    } else {
        state.runtime.status(&tenant, &id).await
    };
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/v1/deployments/{id}", tag = "deployments", params(("id" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    let _changing = state.tenant_locks.lock(&tenant).await;
    if !state.store.delete_deployment(&tenant, &id).await? {
        return Err(ApiError::not_found("deployment"));
    }
    state.runtime.forget(&tenant, &id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/deployments/{id}/ingest", tag = "deployments", params(("id" = String, Path)), request_body = Vec<weir_api::rest::IngestMessage>, responses((status = 200, body = weir_api::rest::IngestReply), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn ingest(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<IngestQuery>,
    ApiJson(messages): ApiJson<Vec<IngestMessage>>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    state
        .store
        .deployment(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment"))?;
    let topics: Vec<ProblemField> = messages
        .iter()
        .enumerate()
        .filter_map(|(index, m)| {
            m.topic_problem().map(|problem| ProblemField {
                path: format!("/{index}/topic"),
                message: problem.to_owned(),
            })
        })
        .collect();
    if !topics.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a message's topic is not a topic name",
        )
        .with_errors(topics));
    }
    if let Some((index, _)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.user_properties.len() > IngestMessage::MAX_USER_PROPERTIES)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "a message carries at most {} user properties",
                IngestMessage::MAX_USER_PROPERTIES
            ),
        )
        .with_errors(vec![ProblemField {
            path: format!("/{index}/user_properties"),
            message: "too many".to_owned(),
        }]));
    }
    // The whole message counts (topic, payload and properties), as the quota's doc says.
    if let Some(big) = messages
        .iter()
        .map(IngestMessage::byte_len)
        .find(|size| *size > quotas.max_message_bytes)
    {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "a message of {big} bytes (topic, payload and properties) exceeds the limit of {}",
                quotas.max_message_bytes
            ),
        ));
    }
    let wait = query.wait.then(|| {
        query
            .timeout_ms
            .map_or(MAX_WAIT, |ms| Duration::from_millis(ms).min(MAX_WAIT))
    });
    let count = messages.len();
    let outputs = state.runtime.ingest(&tenant, &id, messages, wait).await?;
    if wait.is_some() {
        Ok((
            StatusCode::OK,
            Json(IngestReply {
                accepted: count,
                outputs: Some(outputs),
            }),
        ))
    } else {
        Ok((
            StatusCode::ACCEPTED,
            Json(IngestReply {
                accepted: count,
                outputs: None,
            }),
        ))
    }
}
