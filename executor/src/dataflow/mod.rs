//! Deployments as timely dataflows.
//!
//! A [`DataflowRuntime`] runs a fixed set of worker threads, each a single-threaded timely
//! worker; every deployment is one dataflow placed on one worker, and many deployments share a
//! worker. Dataflow time is milliseconds since the Unix epoch: an item's HLC truncated to the
//! engine tick (azure-compat §11 row 20), so the items of one millisecond travel as one batch.
//! The item keeps its full HLC inside.
//!
//! The graph's operations become operators: `source` (the in-process [`SourceHandle`] intake),
//! `map`/`filter`/`branch`/`delay`/`accumulate` (wasm calls as futures, see `node`),
//! `concatenate` (and several edges into one node) as timely's concatenate, fan-out as shared
//! streams, and `sink` (the [`Deployment`]'s output queue). Items that fail go to the dead-letter
//! queue with the node and the reason; acknowledgements ride along (see `envelope`).

mod accumulate;
mod budget;
mod envelope;
mod node;
mod prepare;
mod queue;
mod sink;
mod source;
mod waker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timely::communication::Allocator;
use timely::communication::allocator::thread::Thread;
use timely::dataflow::Stream;
use timely::dataflow::operators::Concatenate;
use timely::worker::Worker;
use weir_api::HlcClock;
use weir_api::graph::{Arm, OperationType};

pub use budget::{ByteBudget, FuelBudget};
pub use envelope::{DeadLetter, Delivery, Envelope, SinkOutput};
pub use prepare::{
    DeployError, DeployProblem, DirectoryModules, ModuleResolver, PreparedDeployment,
    TenantContext, prepare,
};
pub use queue::OutputQueue;
pub use source::{
    AssignedOffer, Offer, Reservation, SourceError, SourceHandle, assigned_bytes,
    message_from_broker, offered_bytes,
};

use crate::host::NodeEnv;
use crate::{OperatorInstance, OperatorKind};

/// How a deployment's sources move time forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontierPolicy {
    /// The frontier follows the wall clock (minus the allowed lateness), every tick, with or
    /// without input: windows close on time. The default.
    WallClock,
    /// The frontier follows the latest event time seen (minus the allowed lateness) and closes
    /// when the source is closed: replays give identical results whatever the wall clock does.
    EventTime,
}

/// A deployment's dataflow settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataflowSettings {
    /// How sources move time forward.
    pub frontier: FrontierPolicy,
    /// How often an idle source moves its frontier (wall-clock policy).
    pub frontier_tick: Duration,
    /// How far behind the frontier trails: messages up to this late still get their own time.
    pub allowed_lateness: Duration,
    /// How far in the future a message's `__ts` may be before it is dead-lettered.
    pub max_clock_drift: Duration,
    /// Messages a source holds before senders are told it is full.
    pub intake_capacity: usize,
    /// Messages taken and not yet processed (queued or inside the dataflow) before senders are
    /// told the intake is full; `None`: `intake_capacity`. A larger bound is for senders that
    /// block ([`SourceHandle::send`]): event-time replays whose windows hold more messages
    /// than the intake until their input ends.
    pub max_in_flight: Option<usize>,
    /// Outputs waiting for a consumer before sources hold back.
    pub output_capacity: usize,
    /// Items per wasm call batch.
    pub batch_size: usize,
    /// Items one operator handles per activation before it yields the worker.
    pub activation_budget: usize,
    /// How long a node's instance lives without a call before it is dropped (re-created and
    /// `init`ed on the next item).
    pub instance_idle: Duration,
    /// Whether accumulates keep one window per key (the Kafka record key, user property
    /// `__key`) and time instead of one per time: set for a deployment with a
    /// `partition_key` (issue 13 point 5), whose instances each see a subset of the keys.
    pub keyed_windows: bool,
}

impl Default for DataflowSettings {
    fn default() -> Self {
        Self {
            frontier: FrontierPolicy::WallClock,
            frontier_tick: Duration::from_millis(100),
            allowed_lateness: Duration::ZERO,
            max_clock_drift: Duration::from_secs(60),
            intake_capacity: 1024,
            max_in_flight: None,
            output_capacity: 10_000,
            batch_size: 64,
            activation_budget: 256,
            instance_idle: Duration::from_secs(5),
            keyed_windows: false,
        }
    }
}

/// Counters of a deployment.
#[derive(Debug, Default)]
pub struct DeploymentStats {
    /// Messages taken from sources.
    pub received: AtomicU64,
    /// Messages older than the frontier, processed at the frontier.
    pub late: AtomicU64,
    /// Messages whose `__ts` was too far in the future (dead-lettered).
    pub clock_drift: AtomicU64,
    /// `delay` results earlier than the item's time, clamped.
    pub delay_clamped: AtomicU64,
    /// Items sent to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Items handed to sinks.
    pub emitted: AtomicU64,
}

/// Counters of one node.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Calls into the module.
    pub calls: AtomicU64,
    /// Items that failed (each one dead-lettered).
    pub failures: AtomicU64,
    /// Items the node passed on to the next (filtered-out items are not counted; a closed
    /// accumulate window counts once).
    pub emitted: AtomicU64,
    /// Fuel the node's calls and `init`s used (the tenant's metered CPU).
    pub fuel: AtomicU64,
    /// Instances created (the first included): each after a trap or an idle release.
    pub instantiations: AtomicU64,
    /// Whether the node holds a live instance now (idle nodes release theirs).
    pub live: AtomicBool,
    /// How long each call into the module took (queueing for the tenant's CPU turn excluded).
    pub call_latency: LatencyHistogram,
}

/// Upper bounds of [`LatencyHistogram`]'s buckets, in seconds (the last bucket, above 10 s,
/// has no bound): 50 µs to 10 s, roughly ×2.5 apart.
pub const LATENCY_BOUNDS_SECONDS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0,
];

/// A histogram of durations with the fixed bounds [`LATENCY_BOUNDS_SECONDS`], kept in atomics
/// (recording takes no lock and allocates nothing).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_SECONDS.len() + 1],
    /// Sum of the durations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn record(&self, duration: std::time::Duration) {
        let seconds = duration.as_secs_f64();
        let index = LATENCY_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS_SECONDS.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(
            u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The count in each bucket (one more than [`LATENCY_BOUNDS_SECONDS`]: the last is above
    /// 10 s), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let counts = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        #[expect(clippy::cast_precision_loss, reason = "exported as seconds in f64")]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (counts, sum)
    }
}

/// What a deployment's operators and its handle share.
#[derive(Debug)]
pub(crate) struct DeploymentShared {
    pub(crate) id: String,
    pub(crate) outputs: OutputQueue<SinkOutput>,
    pub(crate) dead_letters: OutputQueue<DeadLetter>,
    pub(crate) stats: DeploymentStats,
    pub(crate) nodes: BTreeMap<String, Arc<NodeCounters>>,
    /// The deployment's own hybrid logical clock: only its own messages' `__ts` move it, and
    /// only once they passed the drift check (ARCHITECTURE "Seams: Time").
    pub(crate) clock: Arc<HlcClock>,
    /// The tenant's CPU rate budget: sources hold back while it is in debt.
    pub(crate) fuel: Arc<FuelBudget>,
    /// The tenant's queued-output bytes: operators wait while it is spent.
    pub(crate) queued_output_bytes: Arc<ByteBudget>,
    /// False once the deployment stopped: operators start no further call (the worker drops
    /// the dataflow when it next takes a command, which may be a while on a busy machine).
    pub(crate) running: Arc<AtomicBool>,
    open_sinks: AtomicUsize,
    complete: AtomicBool,
}

impl DeploymentShared {
    pub(crate) fn dead_letter(&self, letter: DeadLetter) {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(deployment = %letter.deployment, node = %letter.node, reason = %letter.reason, "dead letter");
        self.dead_letters.push(letter);
    }

    pub(crate) fn sink_closed(&self) {
        if self.open_sinks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.complete.store(true, Ordering::Release);
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start dataflow worker threads: {0}")]
pub struct RuntimeError(#[source] std::io::Error);

type Command = Box<dyn FnOnce(&mut Worker) + Send>;

struct WorkerThread {
    commands: SyncSender<Option<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// The dataflow worker threads of an executor.
pub struct DataflowRuntime {
    workers: Vec<WorkerThread>,
    next: AtomicUsize,
}

impl std::fmt::Debug for DataflowRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataflowRuntime")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl DataflowRuntime {
    /// Starts `workers` worker threads. Host calls of modules (timers, state store) run on
    /// `tokio`, whose context every worker enters.
    pub fn start(workers: usize, tokio: tokio::runtime::Handle) -> Result<Self, RuntimeError> {
        let mut threads = Vec::with_capacity(workers.max(1));
        for index in 0..workers.max(1) {
            let (commands, receiver) = std::sync::mpsc::sync_channel::<Option<Command>>(64);
            let tokio = tokio.clone();
            let thread = std::thread::Builder::new()
                .name(format!("weir-dataflow-{index}"))
                .spawn(move || run_worker(&receiver, &tokio))
                .map_err(RuntimeError)?;
            threads.push(WorkerThread {
                commands,
                thread: Some(thread),
            });
        }
        Ok(Self {
            workers: threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Installs a prepared deployment on the next worker and returns its handle.
    pub fn deploy(&self, prepared: PreparedDeployment) -> Result<Deployment, DeployError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1);
        let worker = self.workers.get(index).ok_or(DeployError::RuntimeStopped)?;
        let running = Arc::new(AtomicBool::new(true));
        let settings = prepared.settings.clone();
        let sink_count = prepared
            .graph
            .operations()
            .iter()
            .filter(|o| o.operation_type == OperationType::Sink)
            .count();
        let nodes = prepared
            .nodes
            .values()
            .map(|n| (n.name.clone(), Arc::new(NodeCounters::default())))
            .collect();
        let shared = Arc::new(DeploymentShared {
            id: prepared.id.clone(),
            outputs: OutputQueue::new(settings.output_capacity),
            dead_letters: OutputQueue::new(settings.output_capacity),
            stats: DeploymentStats::default(),
            nodes,
            clock: Arc::new(HlcClock::new(prepared.executor_node_id.clone())),
            fuel: prepared.fuel.clone(),
            queued_output_bytes: prepared.queued_output_bytes.clone(),
            running: running.clone(),
            open_sinks: AtomicUsize::new(sink_count),
            complete: AtomicBool::new(sink_count == 0),
        });
        let mut sources = HashMap::new();
        let mut receivers = HashMap::new();
        for operation in prepared
            .graph
            .operations()
            .iter()
            .filter(|o| o.operation_type == OperationType::Source)
        {
            let (handle, receiver) = source::channel(
                settings.intake_capacity,
                settings.max_in_flight.unwrap_or(settings.intake_capacity),
                running.clone(),
                shared.clock.clone(),
                prepared.in_flight_bytes.clone(),
            );
            sources.insert(operation.name.clone(), handle);
            receivers.insert(operation.name.clone(), receiver);
        }
        let (built, on_built) = std::sync::mpsc::sync_channel(1);
        let handles = sources.clone();
        let install_shared = shared.clone();
        let install: Command = Box::new(move |worker: &mut Worker| {
            // The identifier `drop_dataflow` takes; `scope.index()` is the worker's index.
            let index = worker.next_dataflow_index();
            worker.dataflow::<u64, _, _>(|scope| {
                build_dataflow(scope, prepared, &handles, receivers, &install_shared);
            });
            // The deployer waits on this; if it gave up, nobody needs the index.
            let _unwanted = built.send(index);
        });
        worker
            .commands
            .send(Some(install))
            .map_err(|_| DeployError::RuntimeStopped)?;
        if let Some(thread) = &worker.thread {
            thread.thread().unpark();
        }
        let dataflow = on_built.recv().map_err(|_| DeployError::RuntimeStopped)?;
        Ok(Deployment {
            id: shared.id.clone(),
            sources,
            shared,
            running,
            worker: worker.commands.clone(),
            worker_thread: worker.thread.as_ref().map(|t| t.thread().clone()),
            dataflow,
        })
    }
}

impl Drop for DataflowRuntime {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _stopping = worker.commands.send(None);
            if let Some(thread) = worker.thread.take() {
                thread.thread().unpark();
                let _joined = thread.join();
            }
        }
    }
}

fn run_worker(commands: &Receiver<Option<Command>>, tokio: &tokio::runtime::Handle) {
    let _tokio = tokio.enter();
    let allocator = Allocator::Thread(Thread::default());
    let mut worker = Worker::new(
        timely::WorkerConfig::default(),
        allocator,
        Some(Instant::now()),
    );
    loop {
        loop {
            match commands.try_recv() {
                Ok(Some(command)) => command(&mut worker),
                Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
            }
        }
        // Parks until an operator is activated (sources, wakers, timers) or a command arrives.
        worker.step_or_park(Some(Duration::from_millis(100)));
    }
}

/// A running deployment.
pub struct Deployment {
    id: String,
    sources: HashMap<String, SourceHandle>,
    shared: Arc<DeploymentShared>,
    running: Arc<AtomicBool>,
    worker: SyncSender<Option<Command>>,
    worker_thread: Option<std::thread::Thread>,
    dataflow: usize,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("dataflow", &self.dataflow)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// The deployment's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The intake of the source operation named `name`.
    pub fn source(&self, name: &str) -> Option<&SourceHandle> {
        self.sources.get(name)
    }

    /// Closes every source: once what they took is processed, the dataflow completes.
    pub fn close_sources(&mut self) {
        let activators: Vec<_> = self
            .sources
            .drain()
            .map(|(_, handle)| handle.activator())
            .collect();
        // The senders are gone now; wake each source so it sees its input closed.
        for activator in activators {
            if let Some(activator) = activator.get() {
                let _gone = activator.activate();
            }
        }
    }

    /// The deployment's hybrid logical clock: stamps messages that arrive without a `__ts`.
    pub fn clock(&self) -> &Arc<HlcClock> {
        &self.shared.clock
    }

    /// What reached the sinks.
    pub fn outputs(&self) -> &OutputQueue<SinkOutput> {
        &self.shared.outputs
    }

    /// Items that failed, with why.
    pub fn dead_letters(&self) -> &OutputQueue<DeadLetter> {
        &self.shared.dead_letters
    }

    /// The deployment's counters.
    pub fn stats(&self) -> &DeploymentStats {
        &self.shared.stats
    }

    /// The counters of the node named `name`.
    pub fn node_counters(&self, name: &str) -> Option<&NodeCounters> {
        self.shared.nodes.get(name).map(AsRef::as_ref)
    }

    /// Whether every sink's input is complete (sources closed and everything processed).
    pub fn is_complete(&self) -> bool {
        self.shared.complete.load(Ordering::Acquire)
    }

    /// Waits until the deployment completes, up to `timeout`; whether it did.
    pub fn wait_complete(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_complete() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Deployment {
    /// Stops the dataflow now, without waiting for the last handle to go: messages in flight
    /// are abandoned (not acknowledged), so brokers redeliver them, and no operator starts
    /// another call. Dropping the deployment does the same.
    pub fn stop(&self) {
        self.running.store(false, Ordering::Release);
        let dataflow = self.dataflow;
        let _stopping = self.worker.send(Some(Box::new(move |worker: &mut Worker| {
            if worker.installed_dataflows().contains(&dataflow) {
                worker.drop_dataflow(dataflow);
            }
        })));
        if let Some(thread) = &self.worker_thread {
            thread.unpark();
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Messages still in flight are abandoned (not acknowledged), so brokers redeliver them.
        self.running.store(false, Ordering::Release);
        let dataflow = self.dataflow;
        let _stopping = self.worker.send(Some(Box::new(move |worker: &mut Worker| {
            if worker.installed_dataflows().contains(&dataflow) {
                worker.drop_dataflow(dataflow);
            }
        })));
        if let Some(thread) = &self.worker_thread {
            thread.unpark();
        }
    }
}

/// One prepared node of a deployment.
pub(crate) struct PreparedNode {
    pub(crate) name: String,
    pub(crate) kind: OperatorKind,
    pub(crate) instance: OperatorInstance,
    pub(crate) env: Arc<NodeEnv>,
}

type Streams<'scope> = HashMap<(usize, Option<Arm>), Stream<'scope, u64, Vec<Envelope>>>;

fn build_dataflow<'scope>(
    scope: timely::dataflow::Scope<'scope, u64>,
    prepared: PreparedDeployment,
    sources: &HashMap<String, SourceHandle>,
    mut receivers: HashMap<String, Receiver<source::Incoming>>,
    shared: &Arc<DeploymentShared>,
) {
    let PreparedDeployment {
        graph,
        mut nodes,
        settings,
        executor_node_id,
        ..
    } = prepared;
    let mut streams: Streams<'scope> = HashMap::new();
    for &index in graph.topological_order() {
        let Some(operation) = graph.operations().get(index) else {
            continue;
        };
        let name = operation.name.as_str();
        let inputs: Vec<Stream<'scope, u64, Vec<Envelope>>> = graph
            .inputs_of(index)
            .filter_map(|edge| streams.get(&(edge.from, edge.arm)).cloned())
            .collect();
        let input = match inputs.len() {
            0 => None,
            1 => inputs.into_iter().next(),
            _ => Some(scope.concatenate(inputs)),
        };
        match (operation.operation_type, input) {
            (OperationType::Source, _) => {
                let (Some(handle), Some(receiver)) = (sources.get(name), receivers.remove(name))
                else {
                    continue;
                };
                let stream = source::build(scope, name, handle, receiver, &settings, shared);
                streams.insert((index, None), stream);
            }
            (OperationType::Sink, Some(input)) => sink::build(input, name, shared),
            (OperationType::Concatenate, Some(input)) => {
                streams.insert((index, None), input);
            }
            (_, Some(input)) => {
                let Some(node) = nodes.remove(&index) else {
                    continue;
                };
                let counters = shared.nodes.get(&node.name).cloned().unwrap_or_default();
                let context = node::NodeContext {
                    name: node.name,
                    kind: node.kind,
                    env: node.env,
                    shared: shared.clone(),
                    settings: settings.clone(),
                    counters,
                    executor_node_id: executor_node_id.clone(),
                    fuel: shared.fuel.clone(),
                };
                if node.kind == OperatorKind::Accumulate {
                    streams.insert(
                        (index, None),
                        accumulate::accumulate(input, context, node.instance),
                    );
                } else {
                    let outputs = node::per_item(input, context, node.instance);
                    if node.kind == OperatorKind::Branch {
                        let mut outputs = outputs.into_iter();
                        if let (Some(no), Some(yes)) = (outputs.next(), outputs.next()) {
                            streams.insert((index, Some(Arm::False)), no);
                            streams.insert((index, Some(Arm::True)), yes);
                        }
                    } else if let Some(output) = outputs.into_iter().next() {
                        streams.insert((index, None), output);
                    }
                }
            }
            (_, None) => {}
        }
    }
}
