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
use weir_api::rest::{
    CreateDeployment, Deployment, DeploymentChanged, DeploymentRevision, IngestReply,
    RollbackDeployment, StatusChange,
};
use weir_api::{ErrorCode, ModuleDigest, TenantId};
use weir_store::{DeploymentRecord, RevisionRecord};
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
    let (name, version) = super::dependents::module_reference(reference);
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
        revision: 0,
        partition_key: spec.partition_key,
    })
}

/// Refuses (`409 conflict`) a change of `instances` that takes away an instance of an MQTT
/// source that runs nowhere now (paused, restarting after an earlier change, or on a lost
/// executor). An instance taken away is retired: it finishes what its broker session holds and
/// ends the session. One that does not run cannot, and the broker would keep giving its session
/// a share of the input that nobody reads until the session expires. So such a change waits
/// until the instance runs again (resume, or let the earlier change finish).
async fn ends_sessions_of_running_instances(
    state: &GatewayState,
    tenant: &TenantId,
    before: &CreateDeployment,
    after: &CreateDeployment,
) -> Result<(), ApiError> {
    let kept = weir_api::scale::instance_ids(&after.id, after.instances);
    let gone: Vec<String> = weir_api::scale::instance_ids(&before.id, before.instances)
        .into_iter()
        .filter(|id| !kept.contains(id))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let source = start_binding(state, tenant, &before.source).await?;
    if source.kind != "mqtt" {
        return Ok(());
    }
    let running = state.runtime.running().await;
    let idle: Vec<&String> = gone
        .iter()
        .filter(|id| !running.iter().any(|r| r.tenant == *tenant && r.id == **id))
        .collect();
    if idle.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!(
            "instance(s) {} would go but run nowhere now (paused, restarting after an earlier change, or on a lost executor): their MQTT sessions can only be ended by running them, so change `instances` once they run (resume the deployment, or wait until it is running)",
            idle.iter()
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// Outcomes of a revision, as `DeploymentRevision.outcome` shows them.
const ROLLED_OUT: &str = "rolled_out";
const FAILED: &str = "failed";
const ROLLED_BACK: &str = "rolled_back";

/// Records a revision of a deployment: what `request` runs (nothing when it could not be
/// built), who asked, and how it went; its number.
async fn record_revision(
    state: &GatewayState,
    tenant: &TenantId,
    spec: &CreateDeployment,
    request: Option<&StartDeployment>,
    by: &str,
    outcome: &str,
    detail: &str,
) -> Result<u64, ApiError> {
    let record = RevisionRecord {
        revision: 0,
        spec: serde_json::to_value(spec).map_err(|e| ApiError::internal(&e))?,
        graph_digest: request
            .map(|r| ModuleDigest::of(r.graph.as_bytes()).to_string())
            .unwrap_or_default(),
        modules: request
            .map(|r| {
                r.modules
                    .iter()
                    .map(|(reference, bytes)| {
                        (reference.clone(), ModuleDigest::of(bytes).to_string())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        at: 0,
        by: by.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
    };
    Ok(state
        .store
        .add_revision(tenant, &spec.id, &record)
        .await?
        .unwrap_or(0))
}

/// The revision that runs now: the newest that did not fail.
fn current_revision(revisions: &[RevisionRecord]) -> Option<&RevisionRecord> {
    revisions.iter().rev().find(|r| r.outcome != FAILED)
}

/// The number the next revision of a deployment gets (the tenant's lock is held, so no
/// other revision comes in between).
async fn next_revision(state: &GatewayState, tenant: &TenantId, id: &str) -> Result<u64, ApiError> {
    Ok(state
        .store
        .revisions(tenant, id)
        .await?
        .last()
        .map_or(1, |r| r.revision + 1))
}

/// The revision a running deployment runs now, for a start by the reconcile loop (0 when it
/// has none).
pub(crate) async fn running_revision(state: &GatewayState, tenant: &TenantId, id: &str) -> u64 {
    state
        .store
        .revisions(tenant, id)
        .await
        .ok()
        .and_then(|revisions| current_revision(&revisions).map(|r| r.revision))
        .unwrap_or(0)
}

/// Swaps a running deployment to `spec` (a rolling update or a rollback) under the tenant's
/// lock: the new version starts before the old one stops; if it cannot start, the old one
/// keeps running, the revision is recorded as failed, and the error says why.
async fn roll(
    state: &GatewayState,
    caller: &Caller,
    tenant: &TenantId,
    quotas: &Quotas,
    spec: &CreateDeployment,
    pinned: Option<&RevisionRecord>,
    record: &DeploymentRecord,
) -> Result<(Vec<String>, u64, bool), ApiError> {
    let (outcome, what) = match pinned {
        Some(target) => (
            ROLLED_BACK,
            format!("rolled back to revision {}", target.revision),
        ),
        None => (
            ROLLED_OUT,
            format!(
                "updated to graph {}@{}",
                spec.graph.name, spec.graph.version
            ),
        ),
    };
    let failed = |error: ApiError| async move {
        // The first line of why (a trap's wasm backtrace follows it), bounded: the answer
        // carries the whole error.
        let why = error.to_string();
        let why: String = why
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(500)
            .collect();
        let detail = format!("{}: {why}", what_failed(pinned));
        // The revision and the reason are kept; a failure to record them is only logged,
        // the answer is the start's error.
        if let Err(record_error) =
            record_revision(state, tenant, spec, None, &caller.subject, FAILED, &detail).await
        {
            tracing::warn!(error = %record_error, "a failed revision was not recorded");
        }
        if let Err(status_error) = state
            .store
            .set_deployment_status(tenant, &spec.id, &record.status, &detail)
            .await
        {
            tracing::warn!(error = %status_error, "a failed revision's status was not recorded");
        }
        error
    };
    let mut request = match start_request(state, tenant, quotas, spec).await {
        Ok(request) => request,
        Err(error) => return Err(failed(error).await),
    };
    if let Some(target) = pinned {
        // The very module bytes the revision ran (a reference without a version would
        // otherwise resolve to the newest).
        for (reference, digest) in &target.modules {
            let digest = ModuleDigest::new(digest.clone()).map_err(|e| ApiError::internal(&e))?;
            let bytes = state
                .blobs
                .get(&digest)
                .await
                .map_err(|e| ApiError::internal(&e))?
                .ok_or_else(|| missing_artifact(target, &format!("module {reference}")))?;
            request.modules.insert(reference.clone(), bytes);
        }
    }
    if let Err(error) = crate::scale::check(spec, &request, quotas) {
        return Err(failed(error).await);
    }
    request.revision = next_revision(state, tenant, &spec.id).await?;
    let paused = !DeploymentState::from_stored(&record.status, "").wants_to_run();
    // Several instances (before or after): instances the new spec keeps stop and the reconcile
    // loop starts them on it (not a rolling swap: see the README's scale-out section); the
    // others run on until the loop retires them.
    let before: Option<CreateDeployment> = serde_json::from_value(record.spec.clone()).ok();
    if let Some(before) = &before {
        ends_sessions_of_running_instances(state, tenant, before, spec).await?;
    }
    let by_loop = crate::scale::placed_by_loop(spec)
        || before.as_ref().is_some_and(crate::scale::placed_by_loop);
    let warnings = if paused {
        Vec::new()
    } else if by_loop {
        if let Some(before) = &before {
            crate::scale::stop_instances(state, tenant, before, spec).await;
        }
        Vec::new()
    } else {
        match state.runtime.start(request.clone()).await {
            Ok(warnings) => warnings,
            Err(error) => return Err(failed(error).await),
        }
    };
    let value = serde_json::to_value(spec).map_err(|e| ApiError::internal(&e))?;
    let detail = format!("{what} by {} (was {})", caller.subject, record.status);
    let updated = if paused {
        // A paused deployment keeps its word: the new version runs when it is resumed.
        state
            .store
            .update_deployment_spec(tenant, &spec.id, &value, &detail)
            .await?
            && state
                .store
                .set_deployment_status(tenant, &spec.id, &record.status, &detail)
                .await?
    } else {
        state
            .store
            .update_deployment_spec(tenant, &spec.id, &value, &detail)
            .await?
    };
    if !updated {
        // The record is gone: the runtime must not run what the store does not have.
        state.runtime.stop(tenant, &spec.id).await;
        return Err(ApiError::not_found("deployment"));
    }
    let revision_detail = pinned
        .map(|target| format!("to revision {}", target.revision))
        .unwrap_or_default();
    let number = record_revision(
        state,
        tenant,
        spec,
        Some(&request),
        &caller.subject,
        outcome,
        &revision_detail,
    )
    .await?;
    Ok((warnings, number, by_loop && !paused))
}

fn what_failed(pinned: Option<&RevisionRecord>) -> String {
    match pinned {
        Some(target) => format!("the rollback to revision {} did not start", target.revision),
        None => "the update did not start; the previous version keeps running".to_owned(),
    }
}

/// The problem of a rollback whose artifacts were deleted.
fn missing_artifact(target: &RevisionRecord, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ArtifactMissing,
        format!(
            "revision {} cannot run again: its {what} was deleted; upload it again or roll out another version",
            target.revision
        ),
    )
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
    let mut request = start_request(&state, &tenant, &quotas, &spec).await?;
    crate::scale::check(&spec, &request, &quotas)?;
    request.revision = 1;
    // Several instances: pending until the reconcile loop places and starts each.
    let by_loop = crate::scale::placed_by_loop(&spec);
    let warnings = if enabled && !by_loop {
        state.runtime.start(request.clone()).await?
    } else {
        Vec::new()
    };
    // A new deployment: pending, then started here (or stopped at once when created paused).
    let status = if enabled && by_loop {
        DeploymentState::Pending
    } else if enabled {
        started_state(&state, &tenant, &spec.id).await?
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
    record_revision(
        &state,
        &tenant,
        &spec,
        Some(&request),
        &caller.subject,
        ROLLED_OUT,
        "",
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(DeploymentChanged {
            id: spec.id,
            status: status.to_owned(),
            warnings,
        }),
    ))
}

/// The state of a deployment the runtime has just taken a start of: running if it runs now
/// (in this process, or placed on an executor process), `pending` while the reconcile loop has
/// still to place it (executor processes, none placed yet), so the status never says
/// `running` of a deployment that runs nowhere.
async fn started_state(
    state: &GatewayState,
    tenant: &TenantId,
    id: &str,
) -> Result<DeploymentState, ApiError> {
    if state.runtime.status(tenant, id).await.is_some() {
        running_here()
    } else {
        Ok(DeploymentState::Pending)
    }
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
    let (warnings, _revision, by_loop) =
        roll(&state, &caller, &tenant, &quotas, &spec, None, &record).await?;
    Ok(Json(DeploymentChanged {
        id,
        status: changed_status(&record, by_loop)?,
        warnings,
    }))
}

/// The status a rolled deployment answers with: running, unless it was paused (then it
/// stays paused and runs the new version when resumed).
fn changed_status(record: &DeploymentRecord, by_loop: bool) -> Result<String, ApiError> {
    if !DeploymentState::from_stored(&record.status, "").wants_to_run() {
        Ok(record.status.clone())
    } else if by_loop {
        // The reconcile loop starts the instances.
        Ok(DeploymentState::Pending.status().to_owned())
    } else {
        Ok(running_here()?.status().to_owned())
    }
}

/// A rollback: the deployment runs an earlier revision again (default: the one before the
/// current), by the same rolling swap as an update. The revision's graph version and module
/// versions must still exist (`409 artifact_missing` if one was deleted); its module bytes are
/// the very ones it ran (by digest).
#[utoipa::path(post, path = "/v1/deployments/{id}/rollback", tag = "deployments", params(("id" = String, Path)), request_body(content = Option<weir_api::rest::RollbackDeployment>, description = "optional: the revision to go back to"), responses((status = 200, body = weir_api::rest::DeploymentChanged), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn rollback(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    tracing::Span::current().record("deployment", tracing::field::display(&id));
    let wanted: RollbackDeployment = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackDeployment::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(ErrorCode::InvalidRequest, format!("invalid rollback: {e}"))
        })?
    };
    let _changing = state.tenant_locks.lock(&tenant).await;
    let (record, _) = stored(&state, &tenant, &id).await?;
    let revisions = state.store.revisions(&tenant, &id).await?;
    let current = current_revision(&revisions).map(|r| r.revision);
    let target = match wanted.revision {
        Some(number) => revisions
            .iter()
            .find(|r| r.revision == number)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "deployment {id} has no revision {number} (kept: {})",
                        kept(&revisions)
                    ),
                )
            })?,
        None => revisions
            .iter()
            .rev()
            .filter(|r| r.outcome != FAILED && Some(r.revision) != current)
            .find(|r| current.is_none_or(|c| r.revision < c))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("deployment {id} has no earlier revision to roll back to"),
                )
            })?,
    };
    if target.outcome == FAILED {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "revision {} never ran (it failed); name one that did",
                target.revision
            ),
        ));
    }
    if Some(target.revision) == current {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("revision {} is the one that runs", target.revision),
        ));
    }
    let spec: CreateDeployment =
        serde_json::from_value(target.spec.clone()).map_err(|e| ApiError::internal(&e))?;
    // The artifacts must still be the tenant's: the graph version with the same digest, and
    // a module version of each recorded digest.
    match state
        .store
        .graph(&tenant, &spec.graph.name, &spec.graph.version)
        .await?
    {
        Some(graph) if graph.digest.to_string() == target.graph_digest => {}
        _ => {
            return Err(missing_artifact(
                target,
                &format!("graph {}@{}", spec.graph.name, spec.graph.version),
            ));
        }
    }
    let modules = state.store.modules(&tenant).await?;
    for (reference, digest) in &target.modules {
        if !modules.iter().any(|m| m.digest.to_string() == *digest) {
            return Err(missing_artifact(target, &format!("module {reference}")));
        }
    }
    let (warnings, _revision, by_loop) = roll(
        &state,
        &caller,
        &tenant,
        &quotas,
        &spec,
        Some(target),
        &record,
    )
    .await?;
    Ok(Json(DeploymentChanged {
        id,
        status: changed_status(&record, by_loop)?,
        warnings,
    }))
}

/// The kept revision numbers, `first..=last`.
fn kept(revisions: &[RevisionRecord]) -> String {
    match (revisions.first(), revisions.last()) {
        (Some(first), Some(last)) => format!("{}..={}", first.revision, last.revision),
        _ => "none".to_owned(),
    }
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
    let detail = format!("resumed by {}", caller.subject);
    let (status, warnings) =
        resume_stored(&state, &tenant, &quotas, &record, &spec, &detail).await?;
    Ok(Json(DeploymentChanged {
        id,
        status,
        warnings,
    }))
}

/// Resumes the stored deployment `record` (`spec`): paused or failed → pending, then started
/// here (several instances: left to the reconcile loop). Already on its way to running (the
/// scheduler may show it pending, placed or degraded): started again unless it runs. Its
/// status afterwards, with the start's warnings. The caller holds the tenant's lock.
pub(crate) async fn resume_stored(
    state: &GatewayState,
    tenant: &TenantId,
    quotas: &Quotas,
    record: &DeploymentRecord,
    spec: &CreateDeployment,
    detail: &str,
) -> Result<(String, Vec<String>), ApiError> {
    let id = &record.id;
    let mut warnings = Vec::new();
    DeploymentState::from_stored(&record.status, "")
        .apply(Event::Resume)
        .map_err(lifecycle_error)?;
    if crate::scale::placed_by_loop(spec) {
        let pending = DeploymentState::Pending.status();
        state
            .store
            .set_deployment_status(tenant, id, pending, detail)
            .await?;
        return Ok((pending.to_owned(), warnings));
    }
    let mut now = running_here()?;
    if record.status != now.status() || state.runtime.status(tenant, id).await.is_none() {
        let request = start_request(state, tenant, quotas, spec).await?;
        warnings = state.runtime.start(request).await?;
        now = started_state(state, tenant, id).await?;
        state
            .store
            .set_deployment_status(tenant, id, now.status(), detail)
            .await?;
    }
    Ok((now.status().to_owned(), warnings))
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

fn revision_view(r: RevisionRecord, current: Option<u64>) -> DeploymentRevision {
    let graph = r
        .spec
        .get("graph")
        .map(|g| {
            format!(
                "{}@{}",
                g.get("name").and_then(|v| v.as_str()).unwrap_or_default(),
                g.get("version")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    DeploymentRevision {
        current: Some(r.revision) == current,
        revision: r.revision,
        graph,
        graph_digest: r.graph_digest,
        modules: r.modules,
        at: r.at,
        by: r.by,
        outcome: r.outcome,
        detail: r.detail,
    }
}

fn deployment_view(record: DeploymentRecord) -> Result<Deployment, ApiError> {
    Ok(Deployment {
        spec: serde_json::from_value(record.spec).map_err(|e| ApiError::internal(&e))?,
        id: record.id,
        status: record.status,
        created_at: record.created_at,
        history: Vec::new(),
        runtime: None,
        revisions: Vec::new(),
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
    let revisions = state.store.revisions(&tenant, &id).await?;
    let current = current_revision(&revisions).map(|r| r.revision);
    view.revisions = revisions
        .into_iter()
        .map(|r| revision_view(r, current))
        .collect();
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
