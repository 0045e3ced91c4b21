//! Running deployments on this executor: each a timely dataflow (see [`crate::dataflow`])
//! between a source and a sink connector (`weir-connectors`), with its feeds (outputs, dead
//! letters, logs, counters) and its lifecycle (start, rolling update, stop).
//!
//! [`LocalExecutor`] is the executor's interface: typed requests ([`Assignment`]) and a typed
//! error ([`RuntimeError`], a stable [`ErrorCode`] with problems), no HTTP types. The `weir`
//! binary adapts it to the gateway; the scheduler will reach it the same way from another
//! process.
//!
//! Delivery (ARCHITECTURE decision 7): a source message is acknowledged to its broker only when
//! every output derived from it was accepted by the sink (the broker acknowledged it) or its
//! dead letter was recorded in the [`DeadLetterJournal`]; messages in flight when a deployment
//! stops are abandoned, so the broker redelivers them to the next version.

mod edges;
mod tenant;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;
use weir_api::egress::Egress;
use weir_api::graph::{OperationType, ValidatedGraph, parse_graph};
use weir_api::rest::{
    DeadLetter, Executor, IngestMessage, LogLine, MetricSeries, OutputMessage, Usage,
};
use weir_api::{ErrorCode, HlcClock, TenantId};
use weir_connectors::http::{HttpIngress, HttpOutputs, HttpSink};
use weir_connectors::{
    ConnectContext, ConnectionState, ConnectionStatus, EndpointSpec, Inbound, IntakeRefusal,
    Outbound, Problem, Registry, RetireSignal, Retirement, SinkSpec, SourceSpec, ack_channel,
};
use weir_state::MeteredStateStore;
use weir_tenants::{MessageRates, Quotas, RateRefusal};

pub use edges::{DEAD_LETTER_PAYLOAD_BYTES, DeadLetterJournal};

use self::edges::{DeploymentIntake, Edges, pump_dead_letters, pump_outputs};
use self::tenant::{InstanceLedger, InstanceReservation, TenantShare};
use crate::dataflow::{
    DataflowRuntime, DataflowSettings, DeployError, Deployment, ModuleResolver, SourceHandle,
    TenantContext, prepare,
};
use crate::logs::{LogLevel, LogRecord, LogSink, MemoryLogSink};
use crate::metrics::{MetricsRegistry, SeriesValue};
use crate::{CompiledModule, OperatorEngine};

/// The id of the one executor of `weir serve`.
const LOCAL_EXECUTOR: &str = "local";

/// Why the executor did not do what was asked: a stable code (the gateway's problem `code`),
/// a message for the tenant, the problems with their paths, and when to retry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// The stable code.
    pub code: ErrorCode,
    /// What happened, for the tenant.
    pub message: String,
    /// Every problem, with its path.
    pub problems: Vec<Problem>,
    /// When a retry may succeed (rate limits).
    pub retry_after: Option<Duration>,
}

impl RuntimeError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            problems: Vec::new(),
            retry_after: None,
        }
    }

    fn with_problems(mut self, problems: Vec<Problem>) -> Self {
        self.problems = problems;
        self
    }

    fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "executor error");
        Self::new(ErrorCode::Internal, "the executor failed; see its log")
    }
}

/// Where a deployment reads or writes: the endpoint (with its secret) and the topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The endpoint; kind `http` is weir's own API, and an `mqtt` endpoint named `default`
    /// without an address is the embedded broker.
    pub endpoint: EndpointSpec,
    /// Source: topic filters; sink: the first is the topic (`${outputTopic}` allowed).
    pub topics: Vec<String>,
}

impl Binding {
    /// The built-in `http` endpoint.
    pub fn http() -> Self {
        Self {
            endpoint: EndpointSpec {
                name: "http".to_owned(),
                kind: "http".to_owned(),
                address: None,
                settings: BTreeMap::new(),
                secret: None,
            },
            topics: Vec::new(),
        }
    }
}

/// A deployment to run here.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The tenant.
    pub tenant: TenantId,
    /// Its quotas.
    pub quotas: Quotas,
    /// The deployment id.
    pub id: String,
    /// The graph definition text.
    pub graph: String,
    /// Module bytes by the reference the graph uses.
    pub modules: BTreeMap<String, Vec<u8>>,
    /// Configuration values.
    pub configuration: BTreeMap<String, String>,
    /// Where messages come from.
    pub source: Binding,
    /// Where outputs go.
    pub sink: Binding,
    /// Where dead letters are also published (JSON documents on the binding's topic), besides
    /// the journal.
    pub dead_letters: Option<Binding>,
    /// The deployment's partition key (`weir_api::scale`): when set, its accumulates keep one
    /// window per key ([`DataflowSettings::keyed_windows`]).
    pub partition_key: Option<weir_api::scale::PartitionKey>,
}

/// The embedded MQTT broker, for deployments bound to the `default` endpoint: its address and
/// the tenant's service credentials on it.
pub trait DefaultBroker: Send + Sync + std::fmt::Debug {
    /// The endpoint a deployment of `tenant` connects to (address `host:port` on loopback,
    /// username in settings, password as secret).
    fn endpoint(&self, tenant: &TenantId) -> EndpointSpec;
}

/// What an executor is built from.
#[derive(Debug)]
pub struct ExecutorConfig {
    /// The wasm engine (compile cache, pooling allocator).
    pub engine: OperatorEngine,
    /// Every deployment's dataflow settings.
    pub settings: DataflowSettings,
    /// Timely worker threads.
    pub workers: usize,
    /// The tenants' state store modules read and write.
    pub state: Arc<MeteredStateStore>,
    /// The connectors, by endpoint kind.
    pub connectors: Registry,
    /// Where dead letters are kept.
    pub journal: Arc<dyn DeadLetterJournal>,
    /// The embedded MQTT broker, if this process runs one.
    pub default_broker: Option<Arc<dyn DefaultBroker>>,
}

struct Running {
    deployment: Arc<Deployment>,
    /// The graph's source operation, whose intake the status shows.
    source_name: String,
    nodes: Vec<String>,
    source_kind: String,
    sink_kind: String,
    ingress: Option<HttpIngress>,
    outputs: Option<HttpOutputs>,
    source_status: Arc<ConnectionStatus>,
    sink_status: Arc<ConnectionStatus>,
    /// One ingest at a time, so a waiting caller's outputs are the ones its messages made.
    ingest: tokio::sync::Mutex<()>,
    edges: Arc<Edges>,
    /// The settlements' sending end: when it holds nothing, the source has taken every
    /// settlement (and sent the acknowledgements of those processed).
    acks: weir_connectors::AckSender,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Retires the source ([`LocalExecutor::retire`]), if it ends its broker session itself.
    retirement: Option<Retirement>,
    /// Becomes true when the source's task has returned.
    source_done: tokio::sync::watch::Receiver<bool>,
    /// The operator instances this deployment was admitted with.
    _instances: InstanceReservation,
}

impl Running {
    /// Stops the dataflow and its tasks now (messages in flight are abandoned).
    fn halt(&self) {
        // At once: the pumps hold the deployment until their tasks are cancelled.
        self.deployment.stop();
        for task in &self.tasks {
            task.abort();
        }
    }

    /// The first half of a hand-over (a rolling update): the intake takes nothing more, and
    /// this waits, up to `limit`, until every message it took is settled (its outputs accepted
    /// by the sink or dead-lettered) and the source has taken every settlement (sent the
    /// acknowledgements); whether it got there. What the source reads meanwhile is not
    /// acknowledged: the broker keeps it for the next version.
    async fn drain(&self, limit: Duration) -> bool {
        self.edges.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let in_flight = self
                .deployment
                .source(&self.source_name)
                .map_or(0, SourceHandle::in_flight);
            if in_flight == 0
                && !self.edges.edge_letters_pending()
                && self.acks.capacity() == self.acks.max_capacity()
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // A condition polled with a deadline: settlements come from several tasks and the
            // dataflow's worker threads, with no one signal for "all settled".
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

impl Running {
    /// Retires this instance for good. A source that ends its broker session itself (MQTT) is
    /// told to and waited for, without a limit: it finishes every message it took first, and
    /// giving up would leave them in a session no one reads (a warning after
    /// [`RETIRE_WARN`], while its broker is away or its sink refuses). Any other source is
    /// drained as in a hand-over (up to [`DRAIN_LIMIT`]). Then it stops. Whether everything
    /// it took was finished.
    async fn retire(&self, key: &DeploymentKey) -> bool {
        let finished = if let Some(retirement) = &self.retirement {
            retirement.retire();
            let mut done = self.source_done.clone();
            let waited = tokio::time::timeout(RETIRE_WARN, done.wait_for(|done| *done))
                .await
                .is_ok();
            if !waited {
                tracing::warn!(tenant = %key.0, deployment = %key.1, "still retiring after {} s: its source has not finished the messages it took (its broker or sink away?)", RETIRE_WARN.as_secs());
                // Err: the source task was stopped (a new copy of the id took over).
                let _ended = done.wait_for(|done| *done).await;
            }
            true
        } else {
            self.drain(DRAIN_LIMIT).await
        };
        self.halt();
        finished
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Longest a replaced version is given to finish the messages it took (a rolling update);
/// past it, what is left is abandoned and its brokers redeliver it to the new version.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often a draining version is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How long a retiring instance may take before it is warned of ([`Running::retire`]).
const RETIRE_WARN: Duration = Duration::from_secs(30);

/// A deployment by tenant and id.
type DeploymentKey = (TenantId, String);

/// A deployment running on an executor ([`LocalExecutor::running`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningInstance {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its id (an instance's: `<id>#<n>`, `weir_api::scale`).
    pub id: String,
    /// What is wrong with it, if anything: its source or sink connection retrying or failed.
    pub problem: Option<String>,
    /// Its source does not read its input (yet): connecting, retrying or failed (an MQTT
    /// source counts as connected once its subscription is acknowledged).
    pub starting: bool,
}

/// Deployments running in this process.
pub struct LocalExecutor {
    engine: OperatorEngine,
    runtime: Arc<DataflowRuntime>,
    workers: usize,
    settings: DataflowSettings,
    connectors: Registry,
    journal: Arc<dyn DeadLetterJournal>,
    default_broker: Option<Arc<dyn DefaultBroker>>,
    instances: Arc<InstanceLedger>,
    state: Arc<MeteredStateStore>,
    logs: Arc<MemoryLogSink>,
    metrics: Arc<MetricsRegistry>,
    clock: Arc<HlcClock>,
    rates: Arc<MessageRates>,
    cordoned: AtomicBool,
    /// Versions started so far: numbers each version's sink connections.
    versions: AtomicU64,
    shares: Mutex<HashMap<TenantId, Arc<TenantShare>>>,
    running: tokio::sync::Mutex<HashMap<DeploymentKey, Arc<Running>>>,
    /// HTTP output queues of paused deployments: outputs already acknowledged to their source
    /// wait for a reader across a pause and a resume (one per deployment the gateway keeps;
    /// dropped when it is deleted).
    parked: Mutex<HashMap<DeploymentKey, HttpOutputs>>,
    /// Instances retiring ([`LocalExecutor::retire`]), each until it has finished: a start of
    /// the same id stops it at once and takes over its broker session (with what it had not
    /// finished), so two sources never share one. One entry per deployment at most, removed
    /// by its own retirement.
    retiring: Arc<Mutex<HashMap<DeploymentKey, Arc<Running>>>>,
}

impl std::fmt::Debug for LocalExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalExecutor").finish_non_exhaustive()
    }
}

/// Modules handed over with an assignment, compiled before `prepare` (off the async workers).
struct GivenModules {
    modules: BTreeMap<String, Arc<CompiledModule>>,
}

impl GivenModules {
    /// Compiles (or finds in the engine's cache) every module; on a blocking thread.
    async fn compile(
        engine: &OperatorEngine,
        bytes: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, RuntimeError> {
        let engine = engine.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let mut modules = BTreeMap::new();
            let mut problems = Vec::new();
            for (reference, bytes) in bytes {
                match engine.load(&bytes) {
                    Ok(module) => {
                        modules.insert(reference, module);
                    }
                    Err(error) => problems.push(Problem::new(
                        format!("modules[{reference:?}]"),
                        error.to_string(),
                    )),
                }
            }
            (modules, problems)
        })
        .await
        .map_err(|error| RuntimeError::internal(&error))?;
        match compiled {
            (modules, problems) if problems.is_empty() => Ok(Self { modules }),
            (_, problems) => Err(RuntimeError::new(
                ErrorCode::InvalidDeployment,
                "a module of the deployment does not compile",
            )
            .with_problems(problems)),
        }
    }
}

impl ModuleResolver for GivenModules {
    fn resolve(&self, reference: &str) -> Result<Arc<CompiledModule>, String> {
        self.modules
            .get(reference)
            .cloned()
            .ok_or_else(|| format!("no module for {reference:?}"))
    }
}

fn deploy_error(error: DeployError) -> RuntimeError {
    match error {
        DeployError::Invalid(problems) => RuntimeError::new(
            ErrorCode::InvalidDeployment,
            "the deployment cannot be built",
        )
        .with_problems(
            problems
                .into_iter()
                .map(|p| Problem::new(format!("graph.operations[{}]", p.node), p.message))
                .collect(),
        ),
        DeployError::RuntimeStopped => {
            RuntimeError::new(ErrorCode::Unavailable, "the executor is shutting down")
        }
        other => RuntimeError::new(ErrorCode::InvalidDeployment, other.to_string()),
    }
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An output as the HTTP API hands it out.
fn output_message(output: Outbound) -> OutputMessage {
    OutputMessage {
        topic: text(&output.topic),
        payload: text(&output.payload),
        user_properties: output
            .user_properties
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect(),
    }
}

/// The operator nodes (wasm instances) of a graph.
fn wasm_nodes(graph: &ValidatedGraph) -> usize {
    graph
        .operations()
        .iter()
        .filter(|o| {
            !matches!(
                o.operation_type,
                OperationType::Source | OperationType::Sink | OperationType::Concatenate
            )
        })
        .count()
}

/// Turns an intake's refusal of an HTTP ingest into the API's answer.
fn intake_error(refusal: IntakeRefusal) -> RuntimeError {
    match refusal {
        IntakeRefusal::Full(why) => {
            RuntimeError::new(ErrorCode::RateLimited, format!("{why}; nothing was taken"))
        }
        IntakeRefusal::TooLarge(why) => RuntimeError::new(
            ErrorCode::PayloadTooLarge,
            format!("{why}; split the batch"),
        ),
        IntakeRefusal::Closed => RuntimeError::new(
            ErrorCode::Unavailable,
            "the deployment no longer takes messages",
        ),
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

fn connection_json(status: &ConnectionStatus) -> serde_json::Value {
    let (state, since) = status.get();
    let since_ms = since
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut value = serde_json::to_value(&state).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("since_ms".to_owned(), json!(since_ms));
    }
    value
}

impl LocalExecutor {
    /// An executor with its dataflow workers started on the current tokio runtime.
    pub fn new(config: ExecutorConfig) -> Result<Self, RuntimeError> {
        Ok(Self {
            runtime: Arc::new(
                DataflowRuntime::start(config.workers, tokio::runtime::Handle::current())
                    .map_err(|e| RuntimeError::internal(&e))?,
            ),
            engine: config.engine,
            workers: config.workers,
            settings: config.settings,
            connectors: config.connectors,
            journal: config.journal,
            default_broker: config.default_broker,
            instances: Arc::new(InstanceLedger::default()),
            state: config.state,
            logs: Arc::new(MemoryLogSink::new(10_000)),
            metrics: Arc::new(MetricsRegistry::new(1_000)),
            clock: Arc::new(HlcClock::new("weir-serve")),
            rates: Arc::new(MessageRates::default()),
            cordoned: AtomicBool::new(false),
            versions: AtomicU64::new(0),
            shares: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            retiring: Arc::default(),
        })
    }

    async fn find(&self, tenant: &TenantId, id: &str) -> Result<Arc<Running>, RuntimeError> {
        self.running
            .lock()
            .await
            .get(&(tenant.clone(), id.to_owned()))
            .cloned()
            .ok_or_else(|| {
                RuntimeError::new(
                    ErrorCode::Unavailable,
                    "the deployment is not running (paused, failed, or not placed yet)",
                )
            })
    }

    /// The tenant's share, if it ever deployed here: reads never create one.
    fn existing_share(&self, tenant: &TenantId) -> Option<Arc<TenantShare>> {
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    /// The tenant's share, with `quotas` in force.
    fn share(&self, tenant: &TenantId, quotas: &Quotas) -> Arc<TenantShare> {
        let share = self
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(TenantShare::new(quotas)))
            .clone();
        self.apply_quotas(tenant, &share, quotas);
        share
    }

    fn apply_quotas(&self, tenant: &TenantId, share: &TenantShare, quotas: &Quotas) {
        share.apply(quotas);
        self.logs.set_capacity(
            tenant,
            usize::try_from(quotas.max_log_lines).unwrap_or(usize::MAX),
        );
        self.metrics.set_max_series(
            tenant,
            usize::try_from(quotas.max_metric_series).unwrap_or(usize::MAX),
        );
    }

    /// The endpoint a binding names, the embedded broker filled in, and the egress rule its
    /// connections go through: the tenant's (`allowed_private_hosts`), plus the embedded
    /// broker's own loopback address for the `default` endpoint only.
    fn endpoint(
        &self,
        binding: &Binding,
        quotas: &Quotas,
        tenant: &TenantId,
    ) -> (EndpointSpec, Egress, bool) {
        let builtin = binding.endpoint.kind == "mqtt"
            && binding.endpoint.name == "default"
            && binding.endpoint.address.is_none();
        match (&self.default_broker, builtin) {
            (Some(broker), true) => {
                let endpoint = broker.endpoint(tenant);
                let host = endpoint
                    .address
                    .as_deref()
                    .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_owned()))
                    .unwrap_or_default();
                (endpoint, Egress::new([host]), true)
            }
            _ => (
                binding.endpoint.clone(),
                Egress::new(&quotas.allowed_private_hosts),
                false,
            ),
        }
    }

    /// Every problem with the bindings, by the connectors' checks, on the endpoints as they will
    /// be connected (the `default` endpoint filled in with the embedded broker).
    fn check_bindings(&self, assignment: &Assignment) -> Vec<Problem> {
        let mut problems = Vec::new();
        // The built-in `default` endpoint is checked as the embedded broker it stands for.
        let resolve = |binding: &Binding| Binding {
            endpoint: self
                .endpoint(binding, &assignment.quotas, &assignment.tenant)
                .0,
            topics: binding.topics.clone(),
        };
        let source = &resolve(&assignment.source);
        match self.connectors.get(&source.endpoint.kind) {
            None => problems.push(Problem::new(
                "/source/endpoint",
                format!(
                    "{} is a {} endpoint; this executor has connectors for {}",
                    source.endpoint.name,
                    source.endpoint.kind,
                    self.connectors.kinds().join(", ")
                ),
            )),
            Some(connector) => problems.extend(connector.check_source(&SourceSpec {
                endpoint: source.endpoint.clone(),
                topics: source.topics.clone(),
            })),
        }
        let sink = &resolve(&assignment.sink);
        match self.connectors.get(&sink.endpoint.kind) {
            None => problems.push(Problem::new(
                "/sink/endpoint",
                format!(
                    "{} is a {} endpoint; this executor has connectors for {}",
                    sink.endpoint.name,
                    sink.endpoint.kind,
                    self.connectors.kinds().join(", ")
                ),
            )),
            Some(connector) => problems.extend(connector.check_sink(&SinkSpec {
                endpoint: sink.endpoint.clone(),
                topic: sink.topics.first().cloned().unwrap_or_default(),
            })),
        }
        problems
    }

    /// Starts a deployment; configuration warnings on success. A deployment of the same id
    /// that runs already is replaced only once the new one has started (a rolling update):
    /// if the new one fails, the old one keeps running. Its HTTP output queue carries over.
    pub async fn start(&self, assignment: Assignment) -> Result<Vec<String>, RuntimeError> {
        if self.cordoned.load(Ordering::Acquire) {
            return Err(RuntimeError::new(
                ErrorCode::Unavailable,
                "no executor takes new deployments (every executor is cordoned)",
            ));
        }
        // The same id retiring (scaled away and back at once): it stops now, and this copy
        // takes over its broker session with what it had not finished.
        let retiring = self
            .retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(assignment.tenant.clone(), assignment.id.clone()));
        if let Some(retiring) = retiring {
            retiring.halt();
        }
        let graph = parse_graph(&assignment.graph)
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidDeployment, e.to_string()))?;
        let source_name = graph
            .operations()
            .iter()
            .find(|o| o.operation_type == OperationType::Source)
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                RuntimeError::new(ErrorCode::InvalidDeployment, "the graph has no source")
            })?;
        let problems = self.check_bindings(&assignment);
        if !problems.is_empty() {
            return Err(RuntimeError::new(
                ErrorCode::InvalidDeployment,
                "the deployment's bindings cannot be used",
            )
            .with_problems(problems));
        }
        let nodes = graph.operations().iter().map(|o| o.name.clone()).collect();
        let tenant = assignment.tenant.clone();
        let quotas = assignment.quotas.clone();
        // Admitted before anything is instantiated: the slots are promised from here on.
        let instances = self.instances.reserve(
            &tenant,
            &assignment.id,
            wasm_nodes(&graph),
            quotas.max_instances,
        )?;
        let share = self.share(&tenant, &quotas);
        let context = TenantContext {
            fuel: share.fuel.clone(),
            in_flight_bytes: share.in_flight_bytes.clone(),
            live_quotas: share.quotas.clone(),
            queued_output_bytes: share.queued_output_bytes.clone(),
            inference_lane: share.inference_lane.clone(),
            ..TenantContext::new(
                tenant.clone(),
                quotas.clone(),
                self.state.clone(),
                self.logs.clone(),
                self.metrics.clone(),
                self.clock.clone(),
            )
        };
        let modules = GivenModules::compile(&self.engine, assignment.modules).await?;
        let prepared = prepare(
            &assignment.id,
            &graph,
            &assignment.configuration,
            &context,
            &modules,
            &self.engine,
            DataflowSettings {
                keyed_windows: assignment.partition_key.is_some(),
                ..self.settings.clone()
            },
            "weir-serve",
        )
        .await
        .map_err(deploy_error)?;
        let warnings = prepared.warnings.clone();

        // The connectors, built before the dataflow so a refused binding leaves nothing behind.
        let (source_endpoint, source_egress, source_builtin) =
            self.endpoint(&assignment.source, &quotas, &tenant);
        let (sink_endpoint, sink_egress, sink_builtin) =
            self.endpoint(&assignment.sink, &quotas, &tenant);
        let plain = ConnectContext::new(
            tenant.clone(),
            &assignment.id,
            Egress::default(),
            quotas.max_message_bytes,
        );
        // The connections' client ids (MQTT client id and session, Kafka client.id and group)
        // name the tenant, the side and the deployment so that no two deployments share one: a
        // tenant id never contains '.', so the tenant ends at the first '.' (with '-' as the
        // separator, tenant `acme-x`'s deployment `y` and tenant `acme`'s `x-y` were one
        // session on a broker both use). The source's also names its topic filters: a
        // persistent session keeps its subscriptions, so an update to other filters starts a
        // new session instead of still receiving the old topics. The embedded broker keeps
        // client ids in the tenant's namespace: `<name>@<tenant>`.
        let filters = {
            let mut topics = assignment.source.topics.clone();
            topics.sort();
            let digest = crate::sha256_digest(topics.join("\n").as_bytes()).to_string();
            digest.chars().rev().take(8).collect::<String>()
        };
        // A sink's (and dead-letter sink's) id also names this version: during a rolling
        // update the old version's sink still publishes what it drains while the new one's is
        // connected, and two connections under one id would take it from each other. A sink
        // starts clean, so a new id loses nothing.
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let client_id = |side: &str, builtin: bool| {
            let name = match side {
                "source" => format!("source.{}.{filters}", assignment.id),
                _ => format!("{side}.{}.v{version}", assignment.id),
            };
            if builtin {
                format!("weir.{name}@{tenant}")
            } else {
                format!("weir-{tenant}.{name}")
            }
        };
        // Instance n of a deployment with several (`<id>#<n>`, weir_api::scale) shares its
        // input with its siblings: one Kafka consumer group, one MQTT share group, named like
        // a one-instance source's client id of the deployment (stable across instances).
        let (deployment, instance) = weir_api::scale::split_instance(&assignment.id);
        let (retirement, retire) = RetireSignal::pair();
        let source_context = ConnectContext {
            egress: source_egress,
            client_id: client_id("source", source_builtin),
            share_group: (instance > 0)
                .then(|| format!("weir-{tenant}.source.{deployment}.{filters}")),
            retire,
            ..plain.with_fresh_status()
        };
        let sink_context = ConnectContext {
            egress: sink_egress,
            client_id: client_id("sink", sink_builtin),
            ..plain.with_fresh_status()
        };
        let source_status = source_context.status.clone();
        let sink_status = sink_context.status.clone();
        let source_kind = source_endpoint.kind.clone();
        let sink_kind = sink_endpoint.kind.clone();
        let connector_error = |side: &str, error: weir_connectors::ConnectorError| match error {
            weir_connectors::ConnectorError::Invalid(problems) => RuntimeError::new(
                ErrorCode::InvalidDeployment,
                format!("the {side} binding cannot be used"),
            )
            .with_problems(problems),
            other => RuntimeError::new(
                ErrorCode::InvalidDeployment,
                format!("the {side} cannot be built: {other}"),
            ),
        };
        let source = self
            .connectors
            .get(&source_kind)
            .ok_or_else(|| RuntimeError::new(ErrorCode::InvalidDeployment, "no source connector"))?
            .source(
                SourceSpec {
                    endpoint: source_endpoint,
                    topics: assignment.source.topics.clone(),
                },
                source_context,
            )
            .await
            .map_err(|e| connector_error("source", e))?;
        let key = (tenant.clone(), assignment.id.clone());
        let sink_topic = assignment.sink.topics.first().cloned().unwrap_or_default();
        let sink: Box<dyn weir_connectors::Sink> = if sink_kind == "http" {
            // The queue of the running (or paused) version carries over: its outputs were
            // acknowledged to their source already.
            let previous = match self.running.lock().await.get(&key) {
                Some(running) => running.outputs.clone(),
                None => None,
            };
            let parked = self
                .parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            sink_status.set(weir_connectors::ConnectionState::Connected);
            Box::new(HttpSink::with_outputs(
                sink_topic,
                previous.or(parked).unwrap_or_default(),
            ))
        } else {
            self.connectors
                .get(&sink_kind)
                .ok_or_else(|| {
                    RuntimeError::new(ErrorCode::InvalidDeployment, "no sink connector")
                })?
                .sink(
                    SinkSpec {
                        endpoint: sink_endpoint,
                        topic: sink_topic,
                    },
                    sink_context,
                )
                .await
                .map_err(|e| connector_error("sink", e))?
        };

        let letter_sink = match &assignment.dead_letters {
            None => None,
            Some(binding) => {
                let (endpoint, egress, builtin) = self.endpoint(binding, &quotas, &tenant);
                let connector = self.connectors.get(&endpoint.kind).ok_or_else(|| {
                    RuntimeError::new(
                        ErrorCode::InvalidDeployment,
                        format!("no connector for {} endpoints", endpoint.kind),
                    )
                })?;
                let spec = SinkSpec {
                    endpoint,
                    topic: binding.topics.first().cloned().unwrap_or_default(),
                };
                let problems = connector.check_sink(&spec);
                if !problems.is_empty() {
                    return Err(RuntimeError::new(
                        ErrorCode::InvalidDeployment,
                        "the dead-letter binding cannot be used",
                    )
                    .with_problems(problems));
                }
                let context = ConnectContext {
                    egress,
                    client_id: client_id("deadletters", builtin),
                    ..plain.with_fresh_status()
                };
                Some(
                    connector
                        .sink(spec, context)
                        .await
                        .map_err(|e| connector_error("dead-letter sink", e))?,
                )
            }
        };
        // Installing waits for the worker thread to build the dataflow: not on an async worker.
        let runtime = self.runtime.clone();
        let deployment = tokio::task::spawn_blocking(move || runtime.deploy(prepared))
            .await
            .map_err(|error| RuntimeError::internal(&error))?
            .map_err(deploy_error)?;
        let deployment = Arc::new(deployment);
        let handle = deployment.source(&source_name).cloned().ok_or_else(|| {
            RuntimeError::new(
                ErrorCode::InvalidDeployment,
                "the graph's source is missing",
            )
        })?;
        let edges = Arc::new(Edges::new(tenant.clone(), assignment.id.clone(), share));
        let in_flight = self
            .settings
            .max_in_flight
            .unwrap_or(self.settings.intake_capacity);
        let (acks, settlements) = ack_channel(in_flight + 64);
        let acks_held = acks.clone();
        let ingress = source.http_ingress();
        let outputs = sink.http_outputs();
        let intake: Arc<dyn weir_connectors::Intake> = Arc::new(DeploymentIntake {
            source: handle,
            acks: acks.clone(),
            edges: edges.clone(),
            rates: if ingress.is_some() {
                None
            } else {
                Some(self.rates.clone())
            },
        });
        if let Some(ingress) = &ingress {
            ingress.attach(intake.clone());
        }
        let logs = self.logs.clone();
        let log_tenant = tenant.clone();
        let log_node = format!("{}/source", assignment.id);
        let retirement = source.ends_session_on_retire().then_some(retirement);
        let (source_finished, source_done) = tokio::sync::watch::channel(false);
        let run_source = async move {
            let ran = source.run(intake, settlements).await;
            source_finished.send_replace(true);
            if let Err(error) = ran {
                logs.record(LogRecord {
                    tenant: log_tenant,
                    node: log_node,
                    level: LogLevel::Error,
                    context: "connector".to_owned(),
                    message: format!("the source stopped: {error}"),
                    at: std::time::SystemTime::now(),
                });
            }
        };
        let output_task = tokio::spawn(pump_outputs(
            deployment.clone(),
            sink,
            edges.clone(),
            self.journal.clone(),
        ));
        let letter_task = tokio::spawn(pump_dead_letters(
            deployment.clone(),
            edges.clone(),
            self.journal.clone(),
            acks,
            letter_sink,
        ));
        let http_source = source_kind == "http";
        let mut running = Running {
            deployment,
            source_name,
            nodes,
            source_kind,
            sink_kind,
            ingress,
            outputs,
            source_status,
            sink_status,
            ingest: tokio::sync::Mutex::new(()),
            edges,
            acks: acks_held,
            tasks: vec![output_task, letter_task],
            retirement,
            source_done,
            _instances: instances,
        };
        // A rolling update: the new version is built, its modules instantiated and `init`ed,
        // its sink connected. The previous version stops taking input and finishes what it
        // took (outputs accepted, source acknowledgements sent); then it stops and the new
        // version's source starts (the same MQTT session or Kafka consumer group, so what the
        // previous version left unacknowledged is delivered to the new one). HTTP ingest has
        // no broker to keep messages: the new version takes it at once.
        let previous = self.running.lock().await.get(&key).cloned();
        if http_source {
            running.tasks.push(tokio::spawn(run_source));
            let previous = self.running.lock().await.insert(key, Arc::new(running));
            if let Some(previous) = previous {
                previous.drain(DRAIN_LIMIT).await;
                previous.halt();
            }
            return Ok(warnings);
        }
        if let Some(previous) = &previous
            && !previous.drain(DRAIN_LIMIT).await
        {
            tracing::warn!(%tenant, deployment = %assignment.id, "the previous version did not finish its messages in time; the rest is redelivered to the new one");
        }
        let mut table = self.running.lock().await;
        if let Some(previous) = table.remove(&key) {
            previous.halt();
        }
        running.tasks.push(tokio::spawn(run_source));
        table.insert(key, Arc::new(running));
        drop(table);
        Ok(warnings)
    }

    /// Stops a deployment (messages in flight are abandoned, not acknowledged: their brokers
    /// redeliver them). Its HTTP output queue is kept for a later start of the same id until
    /// [`LocalExecutor::forget`].
    pub async fn stop(&self, tenant: &TenantId, id: &str) {
        let key = (tenant.clone(), id.to_owned());
        let stopped = self.running.lock().await.remove(&key);
        if let Some(outputs) = stopped.as_ref().and_then(|r| r.outputs.clone())
            && !outputs.is_empty()
        {
            self.parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, outputs);
        }
        drop(stopped);
    }

    /// Retires a deployment instance for good (scaled away): unlike [`LocalExecutor::stop`],
    /// which leaves its broker session for the next copy, its source stops taking input,
    /// finishes every message it took, and ends its session, so the broker neither keeps a
    /// share of a shared subscription for it nor queues for it
    /// ([`weir_connectors::Source::ends_session_on_retire`]; other sources are drained). It is
    /// gone from [`LocalExecutor::running`] at once and finishes in the background
    /// ([`Running::retire`]); a start of the same id meanwhile stops it and takes its session
    /// over. Its kept outputs go too.
    pub async fn retire(&self, tenant: &TenantId, id: &str) {
        let key = (tenant.clone(), id.to_owned());
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        let running = {
            let mut table = self.running.lock().await;
            let Some(running) = table.remove(&key) else {
                return;
            };
            // Under the table's lock: a start of the same id finds it in one or the other.
            self.retiring
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone(), running.clone());
            running
        };
        let retiring = self.retiring.clone();
        tokio::spawn(async move {
            if running.retire(&key).await {
                tracing::info!(tenant = %key.0, deployment = %key.1, "retired: its messages finished and its broker session ended");
            } else {
                tracing::warn!(tenant = %key.0, deployment = %key.1, "retired, but it did not finish its messages in time: its broker redelivers them");
            }
            let mut retiring = retiring.lock().unwrap_or_else(PoisonError::into_inner);
            // Unless the same id was started and retired again meanwhile.
            if retiring
                .get(&key)
                .is_some_and(|entry| Arc::ptr_eq(entry, &running))
            {
                retiring.remove(&key);
            }
        });
    }

    /// Stops a deployment for good: its kept outputs go too.
    pub async fn forget(&self, tenant: &TenantId, id: &str) {
        self.stop(tenant, id).await;
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant.clone(), id.to_owned()));
    }

    /// Hands messages to the deployment's HTTP source; with `wait`, returns the outputs derived
    /// from them once each message is fully processed (or the timeout passes).
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        id: &str,
        messages: Vec<IngestMessage>,
        wait: Option<Duration>,
    ) -> Result<Vec<OutputMessage>, RuntimeError> {
        let running = self.find(tenant, id).await?;
        let ingress = running.ingress.clone().ok_or_else(|| {
            RuntimeError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the deployment reads from its {} endpoint, not from http ingest",
                    running.source_kind
                ),
            )
        })?;
        let quotas = running.edges.share.quotas();
        let _one_at_a_time = running.ingest.lock().await;
        let first_output = running.outputs.as_ref().map(HttpOutputs::next_seq);
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            // The whole message counts: topic, payload and user properties.
            let size = message.byte_len();
            if size > quotas.max_message_bytes {
                return Err(RuntimeError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "a message of {size} bytes (topic, payload and properties) exceeds the limit of {}",
                        quotas.max_message_bytes
                    ),
                ));
            }
            batch.push(Inbound {
                topic: Bytes::from(message.topic),
                payload: Bytes::from(message.payload),
                content_type: None,
                user_properties: message
                    .user_properties
                    .into_iter()
                    .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                    .collect(),
                ack: weir_connectors::Ack::Sequence(0),
                assignment: None,
            });
        }
        let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        match self
            .rates
            .admit(tenant, quotas.messages_per_second_in, count)
        {
            Ok(()) => {}
            Err(RateRefusal::Wait(wait)) => {
                let mut error = RuntimeError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "over the tenant's {} messages per second; nothing was taken",
                        quotas.messages_per_second_in
                    ),
                );
                error.retry_after = Some(wait);
                return Err(error);
            }
            Err(RateRefusal::TooMany { per_second }) => {
                return Err(RuntimeError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "a batch of {count} messages is more than the tenant's {per_second} messages per second; split the batch"
                    ),
                ));
            }
        }
        let receipt = ingress.offer(batch).map_err(intake_error)?;
        let Some(wait) = wait else {
            return Ok(Vec::new());
        };
        let _settled_or_timed_out = tokio::time::timeout(wait, receipt.settled()).await.is_ok();
        Ok(match (&running.outputs, first_output) {
            (Some(outputs), Some(first)) => outputs
                .take_from(first)
                .into_iter()
                .map(output_message)
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Takes up to `limit` outputs waiting in the deployment's HTTP sink queue.
    pub async fn take_outputs(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: usize,
    ) -> Result<Vec<OutputMessage>, RuntimeError> {
        let running = self.find(tenant, id).await?;
        let outputs = running.outputs.clone().ok_or_else(|| {
            RuntimeError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the deployment writes to its {} endpoint, not to the http output queue",
                    running.sink_kind
                ),
            )
        })?;
        Ok(outputs
            .take_front(limit)
            .into_iter()
            .map(output_message)
            .collect())
    }

    /// Counters, connections and recent dead letters of a running deployment, if it runs here.
    pub async fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
        let running = self.find(tenant, id).await.ok()?;
        let stats = running.deployment.stats();
        let nodes: serde_json::Map<String, serde_json::Value> = running
            .nodes
            .iter()
            .filter_map(|name| {
                let counters = running.deployment.node_counters(name)?;
                Some((
                    name.clone(),
                    json!({
                        "calls": counters.calls.load(Ordering::Relaxed),
                        "failures": counters.failures.load(Ordering::Relaxed),
                        "emitted": counters.emitted.load(Ordering::Relaxed),
                        "fuel": counters.fuel.load(Ordering::Relaxed),
                        "instantiations": counters.instantiations.load(Ordering::Relaxed),
                        "live": counters.live.load(Ordering::Relaxed),
                    }),
                ))
            })
            .collect();
        let queued = running.outputs.as_ref().map_or(0, HttpOutputs::len);
        let in_flight = running
            .deployment
            .source(&running.source_name)
            .map_or(0, crate::dataflow::SourceHandle::in_flight);
        let capacity = self
            .settings
            .max_in_flight
            .unwrap_or(self.settings.intake_capacity)
            .max(self.settings.intake_capacity);
        Some(json!({
            "executor": LOCAL_EXECUTOR,
            "received": stats.received.load(Ordering::Relaxed),
            "emitted": stats.emitted.load(Ordering::Relaxed),
            "dead_lettered": stats.dead_lettered.load(Ordering::Relaxed),
            "late": stats.late.load(Ordering::Relaxed),
            "clock_drift": stats.clock_drift.load(Ordering::Relaxed),
            "delay_clamped": stats.delay_clamped.load(Ordering::Relaxed),
            "outputs_queued": queued,
            // Messages taken from the source and not settled yet, and how many it may take: a
            // full intake holds the source back (an MQTT source is held back before, by its
            // broker, at the endpoint's receive_maximum unacknowledged messages).
            "intake": {
                "in_flight": in_flight,
                "capacity": capacity,
            },
            // Outputs waiting for the sink to take them (besides the batch it is sending).
            "outputs_pending": running.deployment.outputs().len(),
            "source": {
                "kind": running.source_kind,
                "connection": connection_json(&running.source_status),
            },
            "sink": {
                "kind": running.sink_kind,
                "connection": connection_json(&running.sink_status),
            },
            "nodes": nodes,
            "recent_dead_letters": running.edges.recent.newest(),
        }))
    }

    /// The tenant's log lines numbered above `after` (of `deployment` only, if given), oldest
    /// first, at most `limit`.
    pub fn logs(
        &self,
        tenant: &TenantId,
        deployment: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Vec<LogLine> {
        let mut lines = Vec::new();
        let mut after = after;
        // Filtered reads page through the kept lines until the page is full.
        loop {
            let batch = self.logs.lines_after(tenant, after, 1000);
            let Some((last, _)) = batch.last() else { break };
            after = *last;
            for (seq, record) in batch {
                let (owner, node) = match record.node.split_once('/') {
                    Some((owner, node)) => (Some(owner.to_owned()), node.to_owned()),
                    None => (None, record.node.clone()),
                };
                if deployment.is_some() && deployment != owner.as_deref() {
                    continue;
                }
                lines.push(LogLine {
                    seq,
                    at_ms: record
                        .at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    level: level_name(record.level).to_owned(),
                    deployment: owner,
                    node: Some(node),
                    message: record.message,
                });
                if lines.len() >= limit {
                    return lines;
                }
            }
        }
        lines
    }

    /// The tenant's metric series: its modules' (`add-to-counter`, `record-to-histogram`,
    /// capped by `max_metric_series`), then weir's own per deployment and node
    /// ([`crate::telemetry`] names them), only of the tenant's deployments running here.
    pub async fn metrics(&self, tenant: &TenantId) -> Vec<MetricSeries> {
        let (series, _dropped) = self.metrics.snapshot(tenant);
        let mut all: Vec<MetricSeries> = series
            .into_iter()
            .map(|((name, labels), value)| match value {
                SeriesValue::Counter(total) => MetricSeries {
                    name,
                    kind: "counter".to_owned(),
                    labels,
                    #[expect(clippy::cast_precision_loss, reason = "exported as a float")]
                    value: total as f64,
                    count: None,
                    buckets: None,
                    platform: false,
                },
                SeriesValue::Histogram { count, sum, .. } => MetricSeries {
                    name,
                    kind: "histogram".to_owned(),
                    labels,
                    value: sum,
                    count: Some(count),
                    buckets: None,
                    platform: false,
                },
            })
            .collect();
        let running: Vec<(String, Arc<Running>)> = self
            .running
            .lock()
            .await
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), running)| (id.clone(), running.clone()))
            .collect();
        for (id, running) in running {
            all.extend(crate::telemetry::deployment_series(
                &id,
                &running.deployment,
                &running.nodes,
                running
                    .deployment
                    .source(&running.source_name)
                    .map_or(0, crate::dataflow::SourceHandle::in_flight),
                running.outputs.as_ref().map_or(0, HttpOutputs::len)
                    + running.deployment.outputs().len(),
            ));
        }
        all
    }

    /// Sends every module log line from now on to `sink` as well (the in-memory log keeps
    /// its copy); `false` if a sink was set already.
    pub fn forward_logs(&self, sink: Arc<dyn LogSink>) -> bool {
        self.logs.forward_to(sink)
    }

    /// The tenants with metric series here: module series, or deployments running.
    pub async fn metric_tenants(&self) -> Vec<TenantId> {
        let mut tenants: std::collections::BTreeSet<TenantId> =
            self.metrics.tenants().into_iter().collect();
        tenants.extend(self.running.lock().await.keys().map(|(t, _)| t.clone()));
        tenants.into_iter().collect()
    }

    /// What the tenant's deployments used here (the data-plane fields of [`Usage`]; dead-letter
    /// evictions are the journal's), and the bytes its in-flight and queued-output budgets
    /// hold now (`inflight_bytes`, `queued_output_bytes`: zero for a tenant that never
    /// deployed here). The state store's figures (`state_keys`, `state_bytes`) are the state
    /// store's to give ([`weir_state::StateStore::usage`]), not this executor's.
    pub fn usage(&self, tenant: &TenantId) -> Usage {
        let state_ops = self.state.operations(tenant);
        let messages_limited = self.rates.limited(tenant);
        let Some(share) = self.existing_share(tenant) else {
            return Usage {
                state_ops,
                messages_limited,
                inflight_bytes: Some(0),
                queued_output_bytes: Some(0),
                ..Usage::default()
            };
        };
        Usage {
            messages_in: share.messages_in.load(Ordering::Relaxed),
            bytes_in: share.bytes_in.load(Ordering::Relaxed),
            messages_limited,
            messages_out: share.messages_out.load(Ordering::Relaxed),
            dead_letters: share.dead_lettered.load(Ordering::Relaxed),
            // Every call and `init` of the tenant's modules, charged as it ran.
            fuel: share.fuel.charged(),
            init_fuel: share.fuel.init_charged(),
            state_ops,
            inflight_bytes: Some(share.in_flight_bytes.used()),
            queued_output_bytes: Some(share.queued_output_bytes.used()),
            ..Usage::default()
        }
    }

    /// Every deployment running here: what is wrong with it if anything (its source or sink
    /// connection retrying or failed: the scheduler shows it `degraded`; a connection still
    /// connecting is not a problem yet), and whether its source does not read its input yet.
    pub async fn running(&self) -> Vec<RunningInstance> {
        let problem = |side: &str, status: &ConnectionStatus| match status.get().0 {
            ConnectionState::Retrying { error, .. } | ConnectionState::Failed { error } => {
                Some(format!("{side} connection: {error}"))
            }
            ConnectionState::Connecting | ConnectionState::Connected => None,
        };
        self.running
            .lock()
            .await
            .iter()
            .map(|((tenant, id), running)| RunningInstance {
                tenant: tenant.clone(),
                id: id.clone(),
                problem: problem("source", &running.source_status)
                    .or_else(|| problem("sink", &running.sink_status)),
                starting: running.source_status.get().0 != ConnectionState::Connected,
            })
            .collect()
    }

    /// The executors deployments run on.
    pub async fn executors(&self) -> Vec<Executor> {
        let cordoned = self.cordoned.load(Ordering::Acquire);
        vec![Executor {
            id: LOCAL_EXECUTOR.to_owned(),
            state: if cordoned { "cordoned" } else { "ready" }.to_owned(),
            deployments: self.running.lock().await.len() as u64,
            workers: self.workers as u64,
        }]
    }

    /// Cordons (`true`: no new deployments) or uncordons an executor; whether it exists.
    pub fn cordon(&self, executor: &str, cordoned: bool) -> bool {
        if executor != LOCAL_EXECUTOR {
            return false;
        }
        self.cordoned.store(cordoned, Ordering::Release);
        true
    }

    /// Stops the tenant's deployments and forgets its logs, metrics and budgets.
    pub async fn forget_tenant(&self, tenant: &TenantId) {
        let stopped: Vec<_> = {
            let mut running = self.running.lock().await;
            let ids: Vec<DeploymentKey> = running
                .keys()
                .filter(|(t, _)| t == tenant)
                .cloned()
                .collect();
            ids.iter().filter_map(|key| running.remove(key)).collect()
        };
        drop(stopped);
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(t, _), _| t != tenant);
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
        self.rates.forget(tenant);
        self.logs.forget(tenant);
        self.metrics.forget(tenant);
    }

    /// Applies the tenant's changed quotas to its running deployments (rates, budgets, log
    /// and metric bounds at once; per-call limits on each deployment's next start).
    pub fn set_quotas(&self, tenant: &TenantId, quotas: &Quotas) {
        if let Some(share) = self.existing_share(tenant) {
            self.apply_quotas(tenant, &share, quotas);
        }
    }

    /// The recent dead letters of a running deployment, newest first (the durable record is
    /// the journal's).
    pub async fn recent_dead_letters(&self, tenant: &TenantId, id: &str) -> Vec<DeadLetter> {
        match self.find(tenant, id).await {
            Ok(running) => running.edges.recent.newest(),
            Err(_) => Vec::new(),
        }
    }
}
