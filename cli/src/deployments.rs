//! The deployments of `weir serve`: the gateway's `DeploymentRuntime` on this process's
//! dataflow runtime. The HTTP source is the deployment's `SourceHandle`; the HTTP sink is a
//! bounded queue per deployment, filled by a drain task that also moves dead letters into the
//! tenant's feed. The drain stops taking outputs while the queue is full, so a deployment
//! nobody reads holds its source back instead of losing outputs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::Mutex;
use weir_api::graph::{OperationType, parse_graph};
use weir_api::rest::{DeadLetter, Executor, LogLine, MetricSeries, Usage};
use weir_api::{DataItem, ErrorCode, HlcClock, TenantId};
use weir_executor::dataflow::{
    DataflowRuntime, DataflowSettings, DeployError, Deployment, ModuleResolver, SinkOutput,
    SourceError, TenantContext, message_from_broker, prepare,
};
use weir_executor::logs::{LogLevel, MemoryLogSink};
use weir_executor::metrics::{MetricsRegistry, SeriesValue};
use weir_executor::{CompiledModule, OperatorEngine};
use weir_gateway::{
    ApiError, DeploymentRuntime, FeedQuery, IngestMessage, OutputMessage, ProblemField,
    StartDeployment,
};
use weir_state::MeteredStateStore;

/// Outputs a deployment's HTTP sink queue holds before its source is held back.
const OUTPUT_QUEUE: usize = 10_000;
/// Dead letters kept per tenant for `/v1/deadletters`.
const KEPT_DEAD_LETTERS: usize = 10_000;
/// How often a busy deployment's outputs are collected.
const DRAIN_POLL: Duration = Duration::from_millis(1);
/// How often an idle deployment's are.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The id of the one executor of `weir serve`.
const LOCAL_EXECUTOR: &str = "local";

/// A tenant's data-plane feeds and counters.
#[derive(Default)]
struct TenantFeed {
    dead_letters: std::sync::Mutex<VecDeque<DeadLetter>>,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    dead_lettered: AtomicU64,
    /// Fuel of deployments that no longer run; running ones are summed live.
    retired_fuel: AtomicU64,
}

/// An output in a deployment's HTTP sink queue, numbered so a waiting ingest takes its own.
struct Queued {
    seq: u64,
    message: OutputMessage,
}

struct Running {
    deployment: Arc<Deployment>,
    source: String,
    nodes: Vec<String>,
    outputs: Arc<std::sync::Mutex<VecDeque<Queued>>>,
    next_output: Arc<AtomicU64>,
    /// One ingest at a time, so a waiting caller's outputs are the ones its messages made.
    ingest: Mutex<()>,
    /// Wakes the drain task when messages arrive.
    wake: Arc<tokio::sync::Notify>,
    drain: tokio::task::JoinHandle<()>,
    feed: Arc<TenantFeed>,
}

impl Running {
    fn fuel(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| self.deployment.node_counters(n))
            .map(|c| c.fuel.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.drain.abort();
        self.feed
            .retired_fuel
            .fetch_add(self.fuel(), Ordering::Relaxed);
    }
}

/// Deployments running in this process.
pub(crate) struct LocalDeployments {
    engine: OperatorEngine,
    runtime: DataflowRuntime,
    workers: usize,
    state: Arc<MeteredStateStore>,
    logs: Arc<MemoryLogSink>,
    metrics: Arc<MetricsRegistry>,
    clock: Arc<HlcClock>,
    cordoned: AtomicBool,
    next_dead_letter: Arc<AtomicU64>,
    feeds: std::sync::Mutex<HashMap<TenantId, Arc<TenantFeed>>>,
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
    pub(crate) fn new(
        engine: OperatorEngine,
        workers: usize,
        state: Arc<MeteredStateStore>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            engine,
            runtime: DataflowRuntime::start(workers, tokio::runtime::Handle::current())?,
            workers,
            state,
            logs: Arc::new(MemoryLogSink::new(10_000)),
            metrics: Arc::new(MetricsRegistry::new(1_000)),
            clock: Arc::new(HlcClock::new("weir-serve")),
            cordoned: AtomicBool::new(false),
            next_dead_letter: Arc::new(AtomicU64::new(1)),
            feeds: std::sync::Mutex::new(HashMap::new()),
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

    /// The tenant's feed, if it ever deployed here: reads never create one.
    fn existing_feed(&self, tenant: &TenantId) -> Option<Arc<TenantFeed>> {
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    fn feed(&self, tenant: &TenantId) -> Arc<TenantFeed> {
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }
}

/// Modules handed over by the gateway, compiled on first use.
struct GivenModules {
    engine: OperatorEngine,
    bytes: BTreeMap<String, Vec<u8>>,
}

impl ModuleResolver for GivenModules {
    fn resolve(&self, reference: &str) -> Result<Arc<CompiledModule>, String> {
        let bytes = self
            .bytes
            .get(reference)
            .ok_or_else(|| format!("no module for {reference:?}"))?;
        self.engine.load(bytes).map_err(|e| e.to_string())
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

/// Moves a deployment's outputs into its HTTP sink queue (while there is room) and its dead
/// letters into the tenant's feed, acknowledging both.
async fn drain(
    deployment: Arc<Deployment>,
    wake: Arc<tokio::sync::Notify>,
    outputs: Arc<std::sync::Mutex<VecDeque<Queued>>>,
    next_output: Arc<AtomicU64>,
    next_dead_letter: Arc<AtomicU64>,
    feed: Arc<TenantFeed>,
) {
    let mut idle = DRAIN_POLL;
    loop {
        let mut moved = false;
        loop {
            let room = outputs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
                < OUTPUT_QUEUE;
            if !room {
                break;
            }
            let Some(output) = deployment.outputs().try_pop() else {
                break;
            };
            moved = true;
            feed.messages_out.fetch_add(1, Ordering::Relaxed);
            if let Some(message) = output_message(&output) {
                let seq = next_output.fetch_add(1, Ordering::Relaxed);
                outputs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back(Queued { seq, message });
            }
            output.accept();
        }
        while let Some(letter) = deployment.dead_letters().try_pop() {
            moved = true;
            feed.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let (topic, payload) = match &letter.input {
                DataItem::Message(m) => (text(&m.topic), text(&m.payload)),
                DataItem::Snapshot(_) => (String::new(), "<snapshot>".to_owned()),
                DataItem::Bytes(b) => (String::new(), text(b)),
            };
            let entry = DeadLetter {
                seq: next_dead_letter.fetch_add(1, Ordering::Relaxed),
                deployment: letter.deployment.clone(),
                node: letter.node.clone(),
                reason: letter.reason.clone(),
                detail: letter.detail.clone(),
                topic,
                payload,
            };
            {
                let mut letters = feed
                    .dead_letters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if letters.len() >= KEPT_DEAD_LETTERS {
                    letters.pop_front();
                }
                letters.push_back(entry);
            }
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
        let context = TenantContext {
            tenant: request.tenant.clone(),
            quotas: request.quotas.clone(),
            state: self.state.clone(),
            logs: self.logs.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        };
        let modules = GivenModules {
            engine: self.engine.clone(),
            bytes: request.modules,
        };
        let prepared = prepare(
            &request.id,
            &graph,
            &request.configuration,
            &context,
            &modules,
            &self.engine,
            DataflowSettings::default(),
            "weir-serve",
        )
        .await
        .map_err(deploy_error)?;
        let warnings = prepared.warnings.clone();
        let deployment = Arc::new(self.runtime.deploy(prepared).map_err(deploy_error)?);
        let feed = self.feed(&request.tenant);
        let outputs = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let next_output = Arc::new(AtomicU64::new(1));
        let wake = Arc::new(tokio::sync::Notify::new());
        let drain = tokio::spawn(drain(
            deployment.clone(),
            wake.clone(),
            outputs.clone(),
            next_output.clone(),
            self.next_dead_letter.clone(),
            feed.clone(),
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
            feed,
        };
        // Replacing the entry stops the previous version, now that this one runs.
        self.running
            .lock()
            .await
            .insert((request.tenant, request.id), Arc::new(running));
        Ok(warnings)
    }

    async fn stop(&self, tenant: &TenantId, id: &str) {
        self.running
            .lock()
            .await
            .remove(&(tenant.clone(), id.to_owned()));
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        id: &str,
        messages: Vec<IngestMessage>,
        wait: Option<Duration>,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        let running = self.find(tenant, id).await?;
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
        for message in messages {
            let size = message.payload.len() as u64;
            let properties = message
                .user_properties
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect();
            let item = message_from_broker(
                message.topic,
                message.payload,
                None,
                properties,
                &self.clock,
            );
            pending.fetch_add(1, Ordering::AcqRel);
            let done = pending.clone();
            let sent = source.try_send(DataItem::Message(item), move |_| {
                done.fetch_sub(1, Ordering::AcqRel);
            });
            match sent {
                Ok(()) => {
                    running.feed.messages_in.fetch_add(1, Ordering::Relaxed);
                    running.feed.bytes_in.fetch_add(size, Ordering::Relaxed);
                }
                Err(SourceError::Full) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        "the deployment's intake is full; retry",
                    ));
                }
                Err(SourceError::Closed) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "the deployment no longer takes messages",
                    ));
                }
            }
        }
        running.wake.notify_one();
        let Some(wait) = wait else {
            return Ok(Vec::new());
        };
        let deadline = Instant::now() + wait;
        while pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut queue = running
            .outputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The queue is in sequence order: this ingest's outputs are its tail.
        let start = queue.partition_point(|queued| queued.seq < first_output);
        Ok(queue
            .split_off(start)
            .into_iter()
            .map(|q| q.message)
            .collect())
    }

    async fn take_outputs(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: usize,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        let running = self.find(tenant, id).await?;
        let mut queue = running
            .outputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let take = limit.min(queue.len());
        Ok(queue.drain(..take).map(|q| q.message).collect())
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
                    }),
                ))
            })
            .collect();
        let recent: Vec<DeadLetter> = running
            .feed
            .dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .filter(|l| l.deployment == id)
            .take(10)
            .cloned()
            .collect();
        let queued = running
            .outputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
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
        let Some(feed) = self.existing_feed(tenant) else {
            return Vec::new();
        };
        let letters = feed
            .dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        letters
            .iter()
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
        let Some(feed) = self.existing_feed(tenant) else {
            return Usage {
                state_ops,
                ..Usage::default()
            };
        };
        let live_fuel: u64 = self
            .running
            .lock()
            .await
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.fuel())
            .sum();
        Usage {
            messages_in: feed.messages_in.load(Ordering::Relaxed),
            bytes_in: feed.bytes_in.load(Ordering::Relaxed),
            messages_out: feed.messages_out.load(Ordering::Relaxed),
            dead_letters: feed.dead_lettered.load(Ordering::Relaxed),
            fuel: feed.retired_fuel.load(Ordering::Relaxed) + live_fuel,
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
        self.running.lock().await.retain(|(t, _), _| t != tenant);
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
        self.logs.forget(tenant);
        self.metrics.forget(tenant);
    }
}
