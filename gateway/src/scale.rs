//! A deployment's instances on the gateway (`instances`, `partition_key`; the rules are
//! `weir_api::scale`): the rules checked against its graph and the tenant's quotas, and the
//! status of each instance.
//!
//! A deployment with one instance runs under its own id, started by the API handler as
//! before. One with several runs as `<id>#1` … `<id>#N`: the handler stores it `pending` and
//! the reconcile loop places each instance like a deployment (preferring executors that run
//! none of its siblings), starts it, and stops instances that are no longer wanted (scaled
//! down, paused, deleted) on its next round. The deployment's status word is that of instance
//! 1; `runtime.instances` lists every instance with its executor and counters.

use weir_api::ErrorCode;
use weir_api::TenantId;
use weir_api::graph::{OperationType, parse_graph};
use weir_api::rest::{CreateDeployment, EndpointKind};
use weir_api::scale::{ScaleShape, instance_ids, problems};
use weir_tenants::Quotas;

use crate::{ApiError, GatewayState, StartDeployment};

/// Checks `spec`'s `instances` and `partition_key` against its resolved `request` (graph and
/// source) and the tenant's `quotas`: a `quota_exceeded` problem when the instances need more
/// operator instances than `max_instances`, otherwise `invalid_deployment`, each problem with
/// its JSON pointer.
pub(crate) fn check(
    spec: &CreateDeployment,
    request: &StartDeployment,
    quotas: &Quotas,
) -> Result<(), ApiError> {
    let graph = parse_graph(&request.graph)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDeployment, e.to_string()))?;
    let operations = graph.operations();
    let has_accumulate = operations
        .iter()
        .any(|operation| operation.operation_type == OperationType::Accumulate);
    let wasm_nodes = operations
        .iter()
        .filter(|operation| operation.module.is_some())
        .count();
    let source = match request.source.kind.as_str() {
        "mqtt" => EndpointKind::Mqtt,
        "kafka" => EndpointKind::Kafka,
        "otlp" => EndpointKind::Otlp,
        _ => EndpointKind::Http,
    };
    let shape = ScaleShape {
        has_accumulate,
        wasm_nodes: u32::try_from(wasm_nodes).unwrap_or(u32::MAX),
        source,
    };
    let found = problems(spec, &shape, quotas);
    if found.is_empty() {
        return Ok(());
    }
    let code = if found.iter().any(|p| p.code == ErrorCode::QuotaExceeded) {
        ErrorCode::QuotaExceeded
    } else {
        ErrorCode::InvalidDeployment
    };
    Err(
        ApiError::new(code, "the deployment's instances break a scale rule")
            .with_errors(found.into_iter().map(|p| p.field).collect()),
    )
}

/// Whether the reconcile loop, not the handler, starts `spec` (it has several instances).
pub(crate) fn placed_by_loop(spec: &CreateDeployment) -> bool {
    spec.instances > 1
}

/// Stops the instances `before` ran as that `after` keeps (the loop starts them again on the
/// new spec; their broker sessions wait for them). Instances `after` does not have keep
/// running until the loop retires them, once every instance taking over reads its input
/// (`weir_scheduler::reconcile`), so the input always has a reader.
pub(crate) async fn stop_instances(
    state: &GatewayState,
    tenant: &TenantId,
    before: &CreateDeployment,
    after: &CreateDeployment,
) {
    let kept = instance_ids(&after.id, after.instances);
    for id in instance_ids(&before.id, before.instances) {
        if kept.contains(&id) {
            state.runtime.stop(tenant, &id).await;
        }
    }
}

/// `runtime` of a deployment with several instances: `{"instances": [{"id", "executor",
/// "problem", "status"}]}`, one entry per wanted instance in order (`executor` null while it
/// runs nowhere).
pub(crate) async fn instances_status(
    state: &GatewayState,
    tenant: &TenantId,
    spec: &CreateDeployment,
) -> serde_json::Value {
    let running = state.runtime.running().await;
    let mut instances = Vec::new();
    for id in instance_ids(&spec.id, spec.instances) {
        let here = running.iter().find(|r| &r.tenant == tenant && r.id == id);
        instances.push(serde_json::json!({
            "id": id,
            "executor": here.map(|r| r.executor.clone()),
            "problem": here.and_then(|r| r.problem.clone()),
            "status": state.runtime.status(tenant, &id).await,
        }));
    }
    serde_json::json!({ "instances": instances })
}
