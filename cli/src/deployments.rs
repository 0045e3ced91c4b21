//! The deployments of `weir serve`: the gateway's `DeploymentRuntime` on this process's
//! dataflow runtime. The HTTP source is the deployment's `SourceHandle`; the HTTP sink is a
//! bounded queue per deployment, filled by a drain task that also moves dead letters into the
//! tenant's feed. The drain stops taking outputs while the queue is full, so a deployment
//! nobody reads holds its source back instead of losing outputs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::Mutex;
use weir_api::graph::{OperationType, parse_graph};
use weir_api::rest::{DeadLetter, Executor, LogLine, MetricSeries, Usage};
use weir_api::{DataItem, ErrorCode, HlcClock, TenantId};
use weir_executor::dataflow::{
    ByteBudget, DataflowRuntime, DataflowSettings, DeployError, Deployment, FuelBudget,
    ModuleResolver, Offer, SinkOutput, SourceError, TenantContext, message_from_broker, prepare,
};
use weir_executor::logs::{LogLevel, MemoryLogSink};
use weir_executor::metrics::{MetricsRegistry, SeriesValue};
use weir_executor::{CompiledModule, LiveQuotas, OperatorEngine};
use weir_gateway::{
    ApiError, DeploymentRuntime, FeedQuery, IngestMessage, OutputMessage, ProblemField,
    StartDeployment,
};
use weir_state::MeteredStateStore;
use weir_tenants::{MessageRates, Quotas, RateRefusal};

/// Outputs a deployment's HTTP sink queue holds before its source is held back (the bytes
/// are bounded per tenant by `max_queued_output_bytes`).
const OUTPUT_QUEUE: usize = 10_000;
/// Dead letters kept per tenant for `/v1/deadletters` (the bytes are bounded by
/// `max_dead_letter_bytes`).
const KEPT_DEAD_LETTERS: usize = 10_000;
/// Bytes of a dead letter's payload kept for reading; its original size is recorded.
const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;
/// How often a busy deployment's outputs are collected.
const DRAIN_POLL: Duration = Duration::from_millis(1);
/// How often an idle deployment's are.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The id of the one executor of `weir serve`.
const LOCAL_EXECUTOR: &str = "local";

/// A tenant's kept dead letters, numbered per tenant and bounded in count and bytes.
#[derive(Default)]
struct DeadLetterFeed {
    letters: VecDeque<(u64, DeadLetter)>,
    bytes: u64,
    next_seq: u64,
    evicted: u64,
}

impl DeadLetterFeed {
    fn letter_bytes(letter: &DeadLetter) -> u64 {
        (letter.payload.len()
            + letter.detail.len()
            + letter.topic.len()
            + letter.node.len()
            + letter.deployment.len()) as u64
    }

    /// Keeps `letter` under the next number, evicting the oldest to stay within `max_bytes`.
    fn push(&mut self, mut letter: DeadLetter, max_bytes: u64) {
        self.next_seq += 1;
        letter.seq = self.next_seq;
        let size = Self::letter_bytes(&letter);
        self.bytes += size;
        self.letters.push_back((size, letter));
        self.trim(max_bytes);
    }

    fn trim(&mut self, max_bytes: u64) {
        while self.letters.len() > KEPT_DEAD_LETTERS || self.bytes > max_bytes {
            let Some((size, _)) = self.letters.pop_front() else {
                break;
            };
            self.bytes -= size;
            self.evicted += 1;
        }
    }
}

/// What a tenant's deployments on this executor share: its quotas in force, its budgets
/// (CPU rate, in-flight and queued-output bytes), its dead-letter feed and usage counters.
struct TenantShare {
    quotas: Arc<LiveQuotas>,
    fuel: Arc<FuelBudget>,
    in_flight_bytes: Arc<ByteBudget>,
    queued_output_bytes: Arc<ByteBudget>,
    dead_letters: std::sync::Mutex<DeadLetterFeed>,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    dead_lettered: AtomicU64,
}

impl TenantShare {
    fn new(quotas: &Quotas) -> Self {
        Self {
            quotas: Arc::new(LiveQuotas::new(quotas.clone())),
            fuel: Arc::new(FuelBudget::new(quotas.fuel_per_second)),
            in_flight_bytes: Arc::new(ByteBudget::new(quotas.max_inflight_bytes)),
            queued_output_bytes: Arc::new(ByteBudget::new(quotas.max_queued_output_bytes)),
            dead_letters: std::sync::Mutex::new(DeadLetterFeed::default()),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }

    fn quotas(&self) -> Arc<Quotas> {
        self.quotas.get()
    }

    /// Applies changed quotas to the budgets and the running nodes now.
    fn apply(&self, quotas: &Quotas) {
        self.quotas.set(quotas.clone());
        self.fuel.set_rate(quotas.fuel_per_second);
        self.in_flight_bytes.set_limit(quotas.max_inflight_bytes);
        self.queued_output_bytes
            .set_limit(quotas.max_queued_output_bytes);
        self.letters().trim(quotas.max_dead_letter_bytes);
    }

    fn letters(&self) -> std::sync::MutexGuard<'_, DeadLetterFeed> {
        self.dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An output in a deployment's HTTP sink queue, numbered so a waiting ingest takes its own.
struct Queued {
    seq: u64,
    bytes: u64,
    message: OutputMessage,
}

/// A deployment's HTTP sink queue: bounded in count here and in bytes by the tenant's
/// `max_queued_output_bytes`, whose reservations it gives back as outputs are taken.
struct HttpSinkQueue {
    items: std::sync::Mutex<VecDeque<Queued>>,
    budget: Arc<ByteBudget>,
}

impl HttpSinkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the outputs numbered `first` and later.
    fn take_from(&self, first: u64) -> Vec<OutputMessage> {
        let mut queue = self.lock();
        // The queue is in sequence order: these outputs are its tail.
        let start = queue.partition_point(|queued| queued.seq < first);
        let taken = queue.split_off(start);
        drop(queue);
        self.give_back(taken)
    }

    /// Takes up to `limit` outputs from the front.
    fn take_front(&self, limit: usize) -> Vec<OutputMessage> {
        let mut queue = self.lock();
        let take = limit.min(queue.len());
        let taken: VecDeque<Queued> = queue.drain(..take).collect();
        drop(queue);
        self.give_back(taken)
    }

    fn give_back(&self, taken: VecDeque<Queued>) -> Vec<OutputMessage> {
        self.budget.release(taken.iter().map(|q| q.bytes).sum());
        taken.into_iter().map(|q| q.message).collect()
    }
}

impl Drop for HttpSinkQueue {
    fn drop(&mut self) {
        let held: u64 = self.lock().iter().map(|q| q.bytes).sum();
        self.budget.release(held);
    }
}

struct Running {
    deployment: Arc<Deployment>,
    source: String,
    nodes: Vec<String>,
    outputs: Arc<HttpSinkQueue>,
    next_output: Arc<AtomicU64>,
    /// One ingest at a time, so a waiting caller's outputs are the ones its messages made.
    ingest: Mutex<()>,
    /// Wakes the drain task when messages arrive.
    wake: Arc<tokio::sync::Notify>,
    drain: tokio::task::JoinHandle<()>,
    share: Arc<TenantShare>,
    /// The operator instances this deployment was admitted with.
    _instances: InstanceReservation,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// The operator instances promised to running deployments, by tenant: a deployment is
/// admitted only if its tenant's deployments together need no more instances than its
/// `max_instances` quota (one per wasm node: a node has at most one live instance). The gateway
/// admits the tenants' `max_instances` together against the executor's pool, so an admitted
/// node always finds a slot and no tenant can take another's (ARCHITECTURE decision 3). Idle
/// instances are dropped all the same: an idle deployment holds its promise, not a slot.
#[derive(Default)]
struct InstanceLedger {
    promised: std::sync::Mutex<Vec<(u64, TenantId, String, usize)>>,
    next: AtomicU64,
}

/// Slots promised to one deployment, given back when it goes.
struct InstanceReservation {
    ledger: Arc<InstanceLedger>,
    token: u64,
}

impl Drop for InstanceReservation {
    fn drop(&mut self) {
        self.ledger
            .promised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(token, ..)| *token != self.token);
    }
}

impl InstanceLedger {
    /// Promises `instances` slots to deployment `id` of `tenant`, or says why not. A running
    /// version of the same deployment does not count (it stops when the new one runs), so an
    /// update that needs fewer instances is always admitted.
    fn reserve(
        self: &Arc<Self>,
        tenant: &TenantId,
        id: &str,
        instances: usize,
        max_instances: u32,
    ) -> Result<InstanceReservation, ApiError> {
        let mut promised = self
            .promised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenants: usize = promised
            .iter()
            .filter(|(_, t, d, _)| t == tenant && d != id)
            .map(|(.., n)| n)
            .sum();
        let max = usize::try_from(max_instances).unwrap_or(usize::MAX);
        if tenants + instances > max {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the deployment needs {instances} operator instances and the tenant's other deployments {tenants}; its max_instances quota is {max_instances}"
                ),
            ));
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        promised.push((token, tenant.clone(), id.to_owned(), instances));
        Ok(InstanceReservation {
            ledger: self.clone(),
            token,
        })
    }
}

/// Deployments running in this process.
pub(crate) struct LocalDeployments {
    engine: OperatorEngine,
    runtime: Arc<DataflowRuntime>,
    workers: usize,
    /// Every deployment's dataflow settings.
    settings: DataflowSettings,
    instances: Arc<InstanceLedger>,
    state: Arc<MeteredStateStore>,
    logs: Arc<MemoryLogSink>,
    metrics: Arc<MetricsRegistry>,
    clock: Arc<HlcClock>,
    rates: MessageRates,
    cordoned: AtomicBool,
    shares: std::sync::Mutex<HashMap<TenantId, Arc<TenantShare>>>,
    running: Mutex<HashMap<DeploymentKey, Arc<Running>>>,
}

/// A deployment by tenant and id.
type DeploymentKey = (TenantId, String);

impl std::fmt::Debug for LocalDeployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployments").finish_non_exhaustive()
    }
}

impl LocalDeployments {
    /// Deployments on `engine`.
    pub(crate) fn new(
        engine: OperatorEngine,
        settings: DataflowSettings,
        workers: usize,
        state: Arc<MeteredStateStore>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            engine,
            runtime: Arc::new(DataflowRuntime::start(
                workers,
                tokio::runtime::Handle::current(),
            )?),
            workers,
            settings,
            instances: Arc::new(InstanceLedger::default()),
            state,
            logs: Arc::new(MemoryLogSink::new(10_000)),
            metrics: Arc::new(MetricsRegistry::new(1_000)),
            clock: Arc::new(HlcClock::new("weir-serve")),
            rates: MessageRates::default(),
            cordoned: AtomicBool::new(false),
            shares: std::sync::Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    async fn find(&self, tenant: &TenantId, id: &str) -> Result<Arc<Running>, ApiError> {
        self.running
            .lock()
            .await
            .get(&(tenant.clone(), id.to_owned()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the deployment is not running (paused, failed, or not placed yet)",
                )
            })
    }

    /// The tenant's share, if it ever deployed here: reads never create one.
    fn existing_share(&self, tenant: &TenantId) -> Option<Arc<TenantShare>> {
        self.shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    /// The tenant's share, with `quotas` in force.
    fn share(&self, tenant: &TenantId, quotas: &Quotas) -> Arc<TenantShare> {
        let share = self
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
}

/// Modules handed over by the gateway, compiled before `prepare` (off the async workers).
struct GivenModules {
    modules: BTreeMap<String, Arc<CompiledModule>>,
}

impl GivenModules {
    /// Compiles (or finds in the engine's cache) every module; on a blocking thread.
    async fn compile(
        engine: &OperatorEngine,
        bytes: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, ApiError> {
        let engine = engine.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let mut modules = BTreeMap::new();
            let mut problems = Vec::new();
            for (reference, bytes) in bytes {
                match engine.load(&bytes) {
                    Ok(module) => {
                        modules.insert(reference, module);
                    }
                    Err(error) => problems.push(ProblemField {
                        path: format!("modules[{reference:?}]"),
                        message: error.to_string(),
                    }),
                }
            }
            (modules, problems)
        })
        .await
        .map_err(|error| ApiError::internal(&error))?;
        match compiled {
            (modules, problems) if problems.is_empty() => Ok(Self { modules }),
            (_, problems) => Err(ApiError::new(
                ErrorCode::InvalidDeployment,
                "a module of the deployment does not compile",
            )
            .with_errors(problems)),
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

fn deploy_error(error: DeployError) -> ApiError {
    match error {
        DeployError::Invalid(problems) => ApiError::new(
            ErrorCode::InvalidDeployment,
            "the deployment cannot be built",
        )
        .with_errors(
            problems
                .into_iter()
                .map(|p| ProblemField {
                    path: format!("graph.operations[{}]", p.node),
                    message: p.message,
                })
                .collect(),
        ),
        DeployError::RuntimeStopped => {
            ApiError::new(ErrorCode::Unavailable, "the executor is shutting down")
        }
        other => ApiError::new(ErrorCode::InvalidDeployment, other.to_string()),
    }
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The output as the HTTP sink hands it out; the caller accepts the output only once this is
/// queued, so an acknowledged item's outputs are always readable.
fn output_message(output: &SinkOutput) -> Option<OutputMessage> {
    match &output.item {
        DataItem::Message(message) => Some(OutputMessage {
            topic: text(&message.topic),
            payload: text(&message.payload),
            user_properties: message
                .user_properties
                .iter()
                .map(|(k, v)| (text(k), text(v)))
                .collect(),
        }),
        // The HTTP sink speaks messages; anything else reaching it is counted as an output only.
        DataItem::Snapshot(_) | DataItem::Bytes(_) => None,
    }
}

/// A dead letter as the tenant reads it: the payload cut to [`DEAD_LETTER_PAYLOAD_BYTES`],
/// the input's whole size recorded.
fn dead_letter_entry(letter: &weir_executor::dataflow::DeadLetter) -> DeadLetter {
    let (topic, payload) = match &letter.input {
        DataItem::Message(m) => (text(&m.topic), &m.payload),
        DataItem::Snapshot(s) => (String::new(), &s.frame),
        DataItem::Bytes(b) => (String::new(), b),
    };
    let kept = payload.len().min(DEAD_LETTER_PAYLOAD_BYTES);
    DeadLetter {
        seq: 0,
        deployment: letter.deployment.clone(),
        node: letter.node.clone(),
        reason: letter.reason.clone(),
        detail: letter.detail.clone(),
        topic,
        payload: text(&payload.slice(..kept)),
        input_bytes: input_bytes(&letter.input),
        payload_truncated: kept < payload.len(),
        at_ms: std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The size of an input as it came in: topic, payload and user properties of a message (as
/// `max_message_bytes` counts it), the whole of anything else.
fn input_bytes(item: &DataItem) -> u64 {
    match item {
        DataItem::Message(m) => {
            let properties: usize = m
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            (m.topic.len() + m.payload.len() + properties) as u64
        }
        other => other.byte_len() as u64,
    }
}

/// Moves a deployment's outputs into its HTTP sink queue (while there is room, in count and in
/// the tenant's bytes) and its dead letters into the tenant's feed, acknowledging both.
async fn drain(
    deployment: Arc<Deployment>,
    wake: Arc<tokio::sync::Notify>,
    outputs: Arc<HttpSinkQueue>,
    next_output: Arc<AtomicU64>,
    share: Arc<TenantShare>,
) {
    let mut idle = DRAIN_POLL;
    loop {
        let mut moved = false;
        loop {
            if outputs.lock().len() >= OUTPUT_QUEUE {
                break;
            }
            let Some(mut output) = deployment.outputs().try_pop() else {
                break;
            };
            moved = true;
            share.messages_out.fetch_add(1, Ordering::Relaxed);
            // Its bytes stay counted in the tenant's queued-output budget until a reader
            // takes it (the sink counted them when it made the output).
            let bytes = output.keep_bytes();
            match output_message(&output) {
                Some(message) => {
                    let seq = next_output.fetch_add(1, Ordering::Relaxed);
                    outputs.lock().push_back(Queued {
                        seq,
                        bytes,
                        message,
                    });
                }
                None => share.queued_output_bytes.release(bytes),
            }
            // Acknowledged once queued, so a waiting ingest finds its outputs.
            output.accept();
        }
        while let Some(letter) = deployment.dead_letters().try_pop() {
            moved = true;
            share.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let entry = dead_letter_entry(&letter);
            let max_bytes = share.quotas().max_dead_letter_bytes;
            share.letters().push(entry, max_bytes);
            // Acknowledged once it is in the feed, so a waiting ingest that returns can read it.
            letter.accept();
        }
        // Busy: poll again at once. Idle: back off to `IDLE_POLL`, so idle deployments cost
        // almost nothing; an ingest wakes the drain and resets the pace.
        if moved {
            idle = DRAIN_POLL;
        } else {
            tokio::select! {
                () = wake.notified() => idle = DRAIN_POLL,
                () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_POLL),
            }
        }
    }
}

/// The operator nodes (wasm instances) of a graph.
fn wasm_nodes(graph: &weir_api::graph::ValidatedGraph) -> usize {
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

/// Turns a source's refusal into the API's answer.
fn intake_error(error: SourceError) -> ApiError {
    match error {
        SourceError::Full | SourceError::InFlightBytes { .. } => ApiError::new(
            ErrorCode::RateLimited,
            format!("{error}; nothing was taken"),
        ),
        SourceError::TooLarge { .. } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{error}; split the batch"),
        ),
        SourceError::Closed => ApiError::new(
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

#[async_trait]
impl DeploymentRuntime for LocalDeployments {
    async fn start(&self, request: StartDeployment) -> Result<Vec<String>, ApiError> {
        if self.cordoned.load(Ordering::Acquire) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "no executor takes new deployments (every executor is cordoned)",
            ));
        }
        let graph = parse_graph(&request.graph)
            .map_err(|e| ApiError::new(ErrorCode::InvalidDeployment, e.to_string()))?;
        let source = graph
            .operations()
            .iter()
            .find(|o| o.operation_type == OperationType::Source)
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidDeployment, "the graph has no source")
            })?;
        let nodes = graph.operations().iter().map(|o| o.name.clone()).collect();
        // Admitted before anything is instantiated: the slots are promised from here on.
        let instances = self.instances.reserve(
            &request.tenant,
            &request.id,
            wasm_nodes(&graph),
            request.quotas.max_instances,
        )?;
        let share = self.share(&request.tenant, &request.quotas);
        let context = TenantContext {
            fuel: share.fuel.clone(),
            in_flight_bytes: share.in_flight_bytes.clone(),
            live_quotas: share.quotas.clone(),
            queued_output_bytes: share.queued_output_bytes.clone(),
            ..TenantContext::new(
                request.tenant.clone(),
                request.quotas.clone(),
                self.state.clone(),
                self.logs.clone(),
                self.metrics.clone(),
                self.clock.clone(),
            )
        };
        let modules = GivenModules::compile(&self.engine, request.modules).await?;
        let prepared = prepare(
            &request.id,
            &graph,
            &request.configuration,
            &context,
            &modules,
            &self.engine,
            self.settings.clone(),
            "weir-serve",
        )
        .await
        .map_err(deploy_error)?;
        let warnings = prepared.warnings.clone();
        // Installing waits for the worker thread to build the dataflow: not on an async worker.
        let runtime = self.runtime.clone();
        let deployment = tokio::task::spawn_blocking(move || runtime.deploy(prepared))
            .await
            .map_err(|error| ApiError::internal(&error))?
            .map_err(deploy_error)?;
        let deployment = Arc::new(deployment);
        let outputs = Arc::new(HttpSinkQueue {
            items: std::sync::Mutex::new(VecDeque::new()),
            budget: share.queued_output_bytes.clone(),
        });
        let next_output = Arc::new(AtomicU64::new(1));
        let wake = Arc::new(tokio::sync::Notify::new());
        let drain = tokio::spawn(drain(
            deployment.clone(),
            wake.clone(),
            outputs.clone(),
            next_output.clone(),
            share.clone(),
        ));
        let running = Running {
            deployment,
            source,
            nodes,
            outputs,
            next_output,
            ingest: Mutex::new(()),
            wake,
            drain,
            share,
            _instances: instances,
        };
        // Replacing the entry stops the previous version, now that this one runs.
        let previous = self
            .running
            .lock()
            .await
            .insert((request.tenant, request.id), Arc::new(running));
        drop(previous);
        Ok(warnings)
    }

    async fn stop(&self, tenant: &TenantId, id: &str) {
        let stopped = self
            .running
            .lock()
            .await
            .remove(&(tenant.clone(), id.to_owned()));
        drop(stopped);
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        id: &str,
        messages: Vec<IngestMessage>,
        wait: Option<Duration>,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        let running = self.find(tenant, id).await?;
        let quotas = running.share.quotas();
        let _one_at_a_time = running.ingest.lock().await;
        let source = running
            .deployment
            .source(&running.source)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Unavailable, "the deployment's source is closed")
            })?;
        let first_output = running.next_output.load(Ordering::Acquire);
        let pending = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(tokio::sync::Notify::new());
        let mut batch: Vec<Offer> = Vec::with_capacity(messages.len());
        let mut bytes_in = 0;
        for message in messages {
            // The whole message counts: topic, payload and user properties.
            let size = message.byte_len();
            if size > quotas.max_message_bytes {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "a message of {size} bytes (topic, payload and properties) exceeds the limit of {}",
                        quotas.max_message_bytes
                    ),
                ));
            }
            bytes_in += size;
            let properties = message
                .user_properties
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect();
            let item = DataItem::Message(message_from_broker(
                message.topic,
                message.payload,
                None,
                properties,
                source.clock(),
            ));
            let done = pending.clone();
            let wake = finished.clone();
            batch.push((
                item,
                Box::new(move |_| {
                    done.fetch_sub(1, Ordering::AcqRel);
                    wake.notify_one();
                }),
            ));
        }
        let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        match self
            .rates
            .admit(tenant, quotas.messages_per_second_in, count)
        {
            Ok(()) => {}
            Err(RateRefusal::Wait(wait)) => {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "over the tenant's {} messages per second; nothing was taken",
                        quotas.messages_per_second_in
                    ),
                )
                .with_retry_after(wait));
            }
            Err(RateRefusal::TooMany { per_second }) => {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "a batch of {count} messages is more than the tenant's {per_second} messages per second; split the batch"
                    ),
                ));
            }
        }
        pending.fetch_add(batch.len(), Ordering::AcqRel);
        source.try_send_all(batch).map_err(intake_error)?;
        running
            .share
            .messages_in
            .fetch_add(u64::from(count), Ordering::Relaxed);
        running
            .share
            .bytes_in
            .fetch_add(bytes_in, Ordering::Relaxed);
        running.wake.notify_one();
        let Some(wait) = wait else {
            return Ok(Vec::new());
        };
        let deadline = tokio::time::Instant::now() + wait;
        while pending.load(Ordering::Acquire) > 0 {
            tokio::select! {
                () = finished.notified() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(running.outputs.take_from(first_output))
    }

    async fn take_outputs(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: usize,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        let running = self.find(tenant, id).await?;
        Ok(running.outputs.take_front(limit))
    }

    async fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
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
                        "fuel": counters.fuel.load(Ordering::Relaxed),
                        "instantiations": counters.instantiations.load(Ordering::Relaxed),
                        "live": counters.live.load(Ordering::Relaxed),
                    }),
                ))
            })
            .collect();
        let recent: Vec<DeadLetter> = running
            .share
            .letters()
            .letters
            .iter()
            .rev()
            .filter(|(_, l)| l.deployment == id)
            .take(10)
            .map(|(_, l)| l.clone())
            .collect();
        let queued = running.outputs.lock().len();
        Some(json!({
            "executor": LOCAL_EXECUTOR,
            "received": stats.received.load(Ordering::Relaxed),
            "emitted": stats.emitted.load(Ordering::Relaxed),
            "dead_lettered": stats.dead_lettered.load(Ordering::Relaxed),
            "late": stats.late.load(Ordering::Relaxed),
            "clock_drift": stats.clock_drift.load(Ordering::Relaxed),
            "delay_clamped": stats.delay_clamped.load(Ordering::Relaxed),
            "outputs_queued": queued,
            "nodes": nodes,
            "recent_dead_letters": recent,
        }))
    }

    async fn logs(&self, tenant: &TenantId, query: &FeedQuery) -> Vec<LogLine> {
        let mut lines = Vec::new();
        let mut after = query.after;
        // Filtered reads page through the kept lines until the page is full.
        loop {
            let batch = self.logs.lines_after(tenant, after, 1000);
            let Some((last, _)) = batch.last() else { break };
            after = *last;
            for (seq, record) in batch {
                let (deployment, node) = match record.node.split_once('/') {
                    Some((deployment, node)) => (Some(deployment.to_owned()), node.to_owned()),
                    None => (None, record.node.clone()),
                };
                if query.deployment.is_some() && query.deployment != deployment {
                    continue;
                }
                lines.push(LogLine {
                    seq,
                    at_ms: record
                        .at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    level: level_name(record.level).to_owned(),
                    deployment,
                    node: Some(node),
                    message: record.message,
                });
                if lines.len() >= query.limit() {
                    return lines;
                }
            }
        }
        lines
    }

    async fn dead_letters(&self, tenant: &TenantId, query: &FeedQuery) -> Vec<DeadLetter> {
        let Some(share) = self.existing_share(tenant) else {
            return Vec::new();
        };
        let feed = share.letters();
        feed.letters
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.seq > query.after)
            .filter(|l| query.deployment.as_ref().is_none_or(|d| *d == l.deployment))
            .take(query.limit())
            .cloned()
            .collect()
    }

    async fn metrics(&self, tenant: &TenantId) -> Vec<MetricSeries> {
        let (series, _dropped) = self.metrics.snapshot(tenant);
        series
            .into_iter()
            .map(|((name, labels), value)| match value {
                SeriesValue::Counter(total) => MetricSeries {
                    name,
                    kind: "counter".to_owned(),
                    labels,
                    #[expect(clippy::cast_precision_loss, reason = "exported as a float")]
                    value: total as f64,
                    count: None,
                },
                SeriesValue::Histogram { count, sum, .. } => MetricSeries {
                    name,
                    kind: "histogram".to_owned(),
                    labels,
                    value: sum,
                    count: Some(count),
                },
            })
            .collect()
    }

    async fn usage(&self, tenant: &TenantId) -> Usage {
        let state_ops = self.state.operations(tenant);
        let messages_limited = self.rates.limited(tenant);
        let Some(share) = self.existing_share(tenant) else {
            return Usage {
                state_ops,
                messages_limited,
                ..Usage::default()
            };
        };
        Usage {
            messages_in: share.messages_in.load(Ordering::Relaxed),
            bytes_in: share.bytes_in.load(Ordering::Relaxed),
            messages_limited,
            messages_out: share.messages_out.load(Ordering::Relaxed),
            dead_letters: share.dead_lettered.load(Ordering::Relaxed),
            dead_letters_evicted: share.letters().evicted,
            // Every call and `init` of the tenant's modules, charged as it ran.
            fuel: share.fuel.charged(),
            init_fuel: share.fuel.init_charged(),
            state_ops,
            ..Usage::default()
        }
    }

    async fn executors(&self) -> Vec<Executor> {
        let cordoned = self.cordoned.load(Ordering::Acquire);
        vec![Executor {
            id: LOCAL_EXECUTOR.to_owned(),
            state: if cordoned { "cordoned" } else { "ready" }.to_owned(),
            deployments: self.running.lock().await.len() as u64,
            workers: self.workers as u64,
        }]
    }

    async fn cordon(&self, executor: &str, cordoned: bool) -> bool {
        if executor != LOCAL_EXECUTOR {
            return false;
        }
        self.cordoned.store(cordoned, Ordering::Release);
        true
    }

    async fn forget_tenant(&self, tenant: &TenantId) {
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
        self.shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
        self.rates.forget(tenant);
        self.logs.forget(tenant);
        self.metrics.forget(tenant);
    }

    async fn set_quotas(&self, tenant: &TenantId, quotas: &Quotas) {
        if let Some(share) = self.existing_share(tenant) {
            self.apply_quotas(tenant, &share, quotas);
        }
    }
}
