//! From a validated graph, its modules and a deployment's configuration to instances that have
//! run `init`: everything that can be wrong with a deployment is found here, before any message
//! flows. Configuration follows azure-compat §11 rows 1–2; edge schemas row 9.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use weir_api::graph::{GraphContract, OperationType, ValidatedGraph};
use weir_api::{HlcClock, TenantId};
use weir_state::{StateLimits, StateScope, StateStore};
use weir_tenants::Quotas;

use super::budget::{ByteBudget, FuelBudget};
use super::{DataflowSettings, PreparedNode};
use crate::host::{LiveQuotas, NodeEnv};
use crate::logs::LogSink;
use crate::metrics::MetricsRegistry;
use crate::{
    CallLimits, CompiledModule, Contract, InferenceLane, ModuleConfiguration, ModuleSchema,
    OperatorEngine, OperatorError, OperatorInstance, OperatorKind,
};

/// Finds the compiled module an operation's `module` reference names.
pub trait ModuleResolver: Send + Sync {
    /// The module `reference` names, or why there is none.
    fn resolve(&self, reference: &str) -> Result<Arc<CompiledModule>, String>;

    /// Schemas every operation's `init` receives after those of its input edges: none, except
    /// where the host provides some, as Azure's local host app does with the file
    /// `TK_SCHEMA_CONFIG_PATH` names (azure-compat §3.2; `weir test`, `weir run`).
    fn shared_schemas(&self) -> Vec<ModuleSchema> {
        Vec::new()
    }
}

/// Modules from a directory of built components, named as `weir test` names them
/// (azure-compat §11 row 14): a reference resolves to `<dir>/<last path segment, tag removed>.wasm`,
/// so `azure-samples/explore-iot-operations/temperature:1.0.0` is `temperature.wasm`; cargo's
/// spelling (`otel_enrich.wasm` for `otel-enrich`) is tried too.
#[derive(Debug, Clone)]
pub struct DirectoryModules {
    dir: std::path::PathBuf,
    engine: OperatorEngine,
}

impl DirectoryModules {
    /// Modules in `dir`, compiled on `engine`.
    pub fn new(dir: impl Into<std::path::PathBuf>, engine: OperatorEngine) -> Self {
        Self {
            dir: dir.into(),
            engine,
        }
    }
}

impl ModuleResolver for DirectoryModules {
    fn resolve(&self, reference: &str) -> Result<Arc<CompiledModule>, String> {
        let last = reference.rsplit('/').next().unwrap_or(reference);
        let name = last.split(':').next().unwrap_or(last);
        if name.is_empty() || name.starts_with('.') {
            return Err("not a module name".to_owned());
        }
        let candidates = [
            format!("{name}.wasm"),
            format!("{}.wasm", name.replace('-', "_")),
        ];
        let path = candidates
            .iter()
            .map(|file| self.dir.join(file))
            .find(|path| path.is_file())
            .ok_or_else(|| format!("no {} in {}", candidates[0], self.dir.display()))?;
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.engine
            .load(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The tenant a deployment runs for, and the services its modules reach.
#[derive(Debug, Clone)]
pub struct TenantContext {
    /// The tenant.
    pub tenant: TenantId,
    /// Its state store.
    pub state: Arc<dyn StateStore>,
    /// Its log.
    pub logs: Arc<dyn LogSink>,
    /// Its metrics.
    pub metrics: Arc<MetricsRegistry>,
    /// The executor's clock (state-store versions); each deployment stamps messages with its
    /// own clock.
    pub clock: Arc<HlcClock>,
    /// The tenant's CPU rate budget (`fuel_per_second`), shared by its deployments.
    pub fuel: Arc<FuelBudget>,
    /// The tenant's in-flight bytes budget (`max_inflight_bytes`), shared by its deployments.
    pub in_flight_bytes: Arc<ByteBudget>,
    /// The tenant's queued-output bytes budget (`max_queued_output_bytes`), shared by its
    /// deployments' sinks: while it is spent, the tenant's operators start no call, so outputs
    /// nobody reads cannot pile up in memory.
    pub queued_output_bytes: Arc<ByteBudget>,
    /// The tenant's quotas as they change: deployments are prepared with the ones in force,
    /// and per-call limits, log line length and state limits of running nodes follow them.
    pub live_quotas: Arc<LiveQuotas>,
    /// The tenant's turn at inference on this executor, shared by its deployments.
    pub inference_lane: InferenceLane,
}

impl TenantContext {
    /// A tenant with budgets of its own, sized by `quotas`. A runtime running several
    /// deployments of a tenant hands them all the same budgets instead.
    pub fn new(
        tenant: TenantId,
        quotas: Quotas,
        state: Arc<dyn StateStore>,
        logs: Arc<dyn LogSink>,
        metrics: Arc<MetricsRegistry>,
        clock: Arc<HlcClock>,
    ) -> Self {
        Self {
            fuel: Arc::new(FuelBudget::new(quotas.fuel_per_second)),
            in_flight_bytes: Arc::new(ByteBudget::new(quotas.max_inflight_bytes)),
            queued_output_bytes: Arc::new(ByteBudget::new(quotas.max_queued_output_bytes)),
            live_quotas: Arc::new(LiveQuotas::new(quotas)),
            inference_lane: InferenceLane::default(),
            tenant,
            state,
            logs,
            metrics,
            clock,
        }
    }

    /// The tenant's state keys, bounded by its quotas.
    pub fn state_scope(&self) -> StateScope {
        StateScope::new(
            self.tenant.clone(),
            StateLimits::of(&self.live_quotas.get()),
        )
    }

    /// What the node named `node` of this tenant reaches of the host.
    pub fn node_env(&self, node: String) -> Arc<NodeEnv> {
        Arc::new(NodeEnv {
            tenant: self.tenant.clone(),
            node,
            state: self.state.clone(),
            state_scope: self.state_scope(),
            // Half the call's deadline (at most 1 s): a state store that does not answer
            // gives the module `timeout` with time left to act on it, instead of the whole
            // call ending in `deadline` first.
            state_timeout_cap: (self.live_quotas.get().call_timeout / 2)
                .min(Duration::from_secs(1)),
            logs: self.logs.clone(),
            metrics: self.metrics.clone(),
            max_log_line_bytes: usize::try_from(self.live_quotas.get().max_log_line_bytes)
                .unwrap_or(usize::MAX),
            quotas: Some(self.live_quotas.clone()),
            inference_lane: self.inference_lane.clone(),
        })
    }
}

/// One problem with a deployment, naming the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployProblem {
    /// The operation.
    pub node: String,
    /// What is wrong.
    pub message: String,
}

/// Why a deployment cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// Modules or configuration are missing or do not fit: every problem found.
    #[error("deployment cannot be built: {}", .0.iter().map(|p| format!("{}: {}", p.node, p.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<DeployProblem>),
    /// A node's `init` refused its configuration.
    #[error("node {node:?}: init returned false")]
    InitRejected {
        /// The operation.
        node: String,
    },
    /// A node's `init` failed.
    #[error("node {node:?}: {error}")]
    InitFailed {
        /// The operation.
        node: String,
        /// What happened.
        #[source]
        error: OperatorError,
    },
    /// The runtime is shutting down.
    #[error("the dataflow runtime has stopped")]
    RuntimeStopped,
}

/// A deployment whose nodes have all run `init`, ready for [`super::DataflowRuntime::deploy`].
pub struct PreparedDeployment {
    pub(crate) id: String,
    pub(crate) graph: ValidatedGraph,
    pub(crate) nodes: HashMap<usize, PreparedNode>,
    pub(crate) settings: DataflowSettings,
    pub(crate) executor_node_id: String,
    pub(crate) fuel: Arc<FuelBudget>,
    pub(crate) in_flight_bytes: Arc<ByteBudget>,
    pub(crate) queued_output_bytes: Arc<ByteBudget>,
    /// Configuration keys no operation declares: kept, not delivered (§11 row 2).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for PreparedDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedDeployment")
            .field("id", &self.id)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

fn operator_kind(operation_type: OperationType) -> Option<OperatorKind> {
    match operation_type {
        OperationType::Map => Some(OperatorKind::Map),
        OperationType::Filter => Some(OperatorKind::Filter),
        OperationType::Branch => Some(OperatorKind::Branch),
        OperationType::Accumulate => Some(OperatorKind::Accumulate),
        OperationType::Delay => Some(OperatorKind::Delay),
        OperationType::Source | OperationType::Concatenate | OperationType::Sink => None,
    }
}

/// Resolves, configures, instantiates and `init`s every node of `graph` for deployment `id`.
#[allow(
    clippy::too_many_arguments,
    reason = "each is a distinct input of a deployment"
)]
pub async fn prepare(
    id: &str,
    graph: &ValidatedGraph,
    configuration: &BTreeMap<String, String>,
    tenant: &TenantContext,
    modules: &dyn ModuleResolver,
    engine: &OperatorEngine,
    settings: DataflowSettings,
    executor_node_id: &str,
) -> Result<PreparedDeployment, DeployError> {
    let mut problems = Vec::new();
    let mut planned = Vec::new();
    let mut delivered_keys = BTreeSet::new();
    let shared_schemas = modules.shared_schemas();
    for (index, operation) in graph.operations().iter().enumerate() {
        let Some(kind) = operator_kind(operation.operation_type) else {
            continue;
        };
        let node = operation.name.clone();
        let reference = operation.module.clone().unwrap_or_default();
        let module = match modules.resolve(&reference) {
            Ok(module) => module,
            Err(reason) => {
                problems.push(DeployProblem {
                    node,
                    message: format!("cannot resolve module {reference:?}: {reason}"),
                });
                continue;
            }
        };
        if !module.operators().contains(&kind) {
            problems.push(DeployProblem {
                node,
                message: format!("module {reference:?} does not export the {kind} interface"),
            });
            continue;
        }
        let expected = match graph.contract() {
            GraphContract::Ga => Contract::Ga,
            GraphContract::Preview => Contract::Preview,
        };
        if module.contract() != expected {
            problems.push(DeployProblem {
                node,
                message: format!("the graph's apiVersion binds {expected:?} modules, but {reference:?} was built for the {:?} contract", module.contract()),
            });
            continue;
        }
        if module.imports_inference() && !tenant.live_quotas.get().inference {
            problems.push(DeployProblem {
                node,
                message: format!("module {reference:?} imports wasi:nn (inference), which the tenant's quota does not allow (quota `inference` is false)"),
            });
            continue;
        }
        let mut properties = Vec::new();
        for (key, parameter) in graph.parameters_of(&operation.name).into_iter().flatten() {
            let value = configuration
                .get(key)
                .or_else(|| configuration.get(&parameter.name))
                .cloned()
                .or_else(|| parameter.default.clone());
            delivered_keys.insert(key.clone());
            delivered_keys.insert(parameter.name.clone());
            match value {
                Some(value) => properties.push((key.clone(), value)),
                None if parameter.required => problems.push(DeployProblem {
                    node: node.clone(),
                    message: format!(
                        "required parameter {key:?} has no value in the deployment and no default"
                    ),
                }),
                None => {}
            }
        }
        let module_schemas = graph
            .inputs_of(index)
            .filter_map(|edge| {
                edge.schema_name
                    .as_deref()
                    .and_then(|name| graph.schema(name))
            })
            .map(|schema| ModuleSchema {
                name: schema.name.clone(),
                content_type: schema.format.clone(),
                content: schema.schema.clone(),
            })
            .chain(shared_schemas.iter().cloned())
            .collect();
        planned.push((
            index,
            node,
            kind,
            module,
            ModuleConfiguration {
                properties,
                module_schemas,
            },
        ));
    }
    if !problems.is_empty() {
        return Err(DeployError::Invalid(problems));
    }
    let warnings = configuration
        .keys()
        .filter(|key| !delivered_keys.contains(*key))
        .map(|key| format!("configuration key {key:?} is declared by no operation; it is kept but not delivered"))
        .collect();

    let limits = CallLimits::from_quotas(&tenant.live_quotas.get());
    let mut nodes = HashMap::new();
    for (index, node, kind, module, module_configuration) in planned {
        let env = tenant.node_env(format!("{id}/{node}"));
        let mut instance = OperatorInstance::new(
            engine.clone(),
            module,
            kind,
            module_configuration,
            env.clone(),
            limits,
        )
        .map_err(|error| DeployError::InitFailed {
            node: node.clone(),
            error,
        })?;
        match instance.start().await {
            Ok(()) => {}
            Err(OperatorError::InitRejected) => return Err(DeployError::InitRejected { node }),
            Err(error) => return Err(DeployError::InitFailed { node, error }),
        }
        nodes.insert(
            index,
            PreparedNode {
                name: node,
                kind,
                instance,
                env,
            },
        );
    }
    Ok(PreparedDeployment {
        id: id.to_owned(),
        graph: graph.clone(),
        nodes,
        settings,
        executor_node_id: executor_node_id.to_owned(),
        fuel: tenant.fuel.clone(),
        in_flight_bytes: tenant.in_flight_bytes.clone(),
        queued_output_bytes: tenant.queued_output_bytes.clone(),
        warnings,
    })
}
