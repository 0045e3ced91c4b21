//! The operators that run a module: `map`, `filter`, `branch` and `delay` (one item per call,
//! here) and `accumulate` (per dataflow time, in `accumulate.rs`). A call into wasm is a future
//! polled on the worker thread; when the guest yields (epoch tick) or waits on a host call, the
//! future's waker re-activates the operator, so the worker serves other operators meanwhile.
//! Each activation does a bounded amount of work, so one deployment cannot monopolise a worker.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_api::{DataItem, Hlc};

use super::budget::{ByteBudget, FuelBudget};

/// How often an operator held back by its tenant's full output queues looks again.
const OUTPUTS_POLL: Duration = Duration::from_millis(5);
use super::envelope::{DeadLetter, Envelope};
use super::waker::operator_waker;
use super::{DataflowSettings, DeploymentShared, NodeCounters};
use crate::host::NodeEnv;
use crate::logs::LogLevel;
use crate::{OperatorError, OperatorInstance, OperatorKind};

/// What one node needs to run.
pub(crate) struct NodeContext {
    pub(crate) name: String,
    pub(crate) kind: OperatorKind,
    pub(crate) env: Arc<NodeEnv>,
    pub(crate) shared: Arc<DeploymentShared>,
    pub(crate) settings: DataflowSettings,
    pub(crate) counters: Arc<NodeCounters>,
    pub(crate) executor_node_id: String,
    /// The tenant's CPU rate budget.
    pub(crate) fuel: Arc<FuelBudget>,
}

impl NodeContext {
    /// Sends `envelope` to the dead letters with the failure.
    pub(crate) fn dead_letter(&self, envelope: Envelope, time: u64, error: &OperatorError) {
        self.refuse(envelope, time, error.reason(), error.to_string());
    }

    /// Sends `envelope` to the dead letters with a reason of the runtime's own (`reason`, a
    /// stable code; `detail`, for people), counted as a failure of this node.
    pub(crate) fn refuse(&self, envelope: Envelope, time: u64, reason: &str, detail: String) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.shared.dead_letter(DeadLetter {
            deployment: self.shared.id.clone(),
            node: self.name.clone(),
            reason: reason.to_owned(),
            detail,
            input: envelope.item,
            time,
            acks: envelope.acks,
        });
    }

    /// The dataflow time `time` as the HLC `branch` and `delay` receive.
    pub(crate) fn hlc(&self, time: u64) -> Hlc {
        Hlc::at(Duration::from_millis(time), self.executor_node_id.clone())
    }
}

enum Outcome {
    Item(DataItem),
    Keep(bool),
    Arm(bool),
    Later(Hlc),
}

type CallResult = (
    OperatorInstance,
    Vec<Envelope>,
    Vec<Result<Outcome, OperatorError>>,
);
type Call = Pin<Box<dyn Future<Output = CallResult>>>;

struct Batch {
    time: u64,
    caps: Vec<Capability<u64>>,
    items: Vec<Envelope>,
}

fn start_call(
    kind: OperatorKind,
    mut instance: OperatorInstance,
    items: Vec<Envelope>,
    time: Hlc,
    meter: Meter,
) -> Call {
    Box::pin(async move {
        let mut results = Vec::with_capacity(items.len());
        let mut produced = 0;
        for envelope in &items {
            // A stopped deployment starts no further call; the rest of the batch is abandoned
            // with the dataflow.
            if !meter.running() {
                break;
            }
            // Every item waits its tenant's turn: a batch is no way around the CPU rate.
            meter.turn().await;
            if !meter.running() {
                // Settles the reservation `turn` made: nothing was used.
                meter.charge(&instance);
                break;
            }
            // Outputs of this batch are not counted until the sink has them: once they would
            // fill the tenant's output budget, the rest of the batch waits for a later call.
            if produced > 0 && meter.outputs_would_fill(produced) {
                break;
            }
            let item = &envelope.item;
            let started = Instant::now();
            results.push(match kind {
                OperatorKind::Map => instance.map(item).await.map(Outcome::Item),
                OperatorKind::Filter => instance.filter(item).await.map(Outcome::Keep),
                OperatorKind::Branch => instance.branch(&time, item).await.map(Outcome::Arm),
                OperatorKind::Delay => instance.delay(item, &time).await.map(Outcome::Later),
                OperatorKind::Accumulate => Err(OperatorError::WrongKind {
                    actual: OperatorKind::Accumulate,
                    called: kind,
                }),
            });
            meter.counters.call_latency.record(started.elapsed());
            if let Some(Ok(Outcome::Item(output))) = results.last() {
                produced += output.byte_len() as u64;
            }
            meter.charge(&instance);
        }
        (instance, items, results)
    })
}

/// The operator of a `map`, `filter`, `branch` or `delay` node. A branch has two outputs:
/// index 0 for arm "False", 1 for arm "True".
pub(crate) fn per_item<'scope>(
    input: Stream<'scope, u64, Vec<Envelope>>,
    context: NodeContext,
    instance: OperatorInstance,
) -> Vec<Stream<'scope, u64, Vec<Envelope>>> {
    let scope = input.scope();
    let ports = if context.kind == OperatorKind::Branch {
        2
    } else {
        1
    };
    let mut builder = OperatorBuilder::new(context.name.clone(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(input, Pipeline);
    let mut outputs = Vec::with_capacity(ports);
    let mut streams = Vec::with_capacity(ports);
    for _ in 0..ports {
        let (output, stream) = builder.new_output::<Vec<Envelope>>();
        outputs.push(OutputBuilder::<u64, CapacityContainerBuilder<Vec<Envelope>>>::from(output));
        streams.push(stream);
    }
    let waker = operator_waker(scope.worker().sync_activator_for(info.address.to_vec()));
    let activator = scope.activator_for(info.address);
    builder.build(move |initial_capabilities| {
        drop(initial_capabilities);
        let mut queue: VecDeque<Batch> = VecDeque::new();
        let mut in_flight: Option<(u64, Vec<Capability<u64>>, Call)> = None;
        let meter = Meter::new(&context, &instance);
        let mut idle = Some(instance);
        let kind = context.kind;
        let batch_size = context.settings.batch_size.max(1);
        move |_frontiers| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                let caps: Vec<Capability<u64>> = (0..ports)
                    .filter_map(|port| cap.retain_least(port))
                    .collect();
                let mut items = std::mem::take(data);
                while items.len() > batch_size {
                    let rest = items.split_off(batch_size);
                    queue.push_back(Batch {
                        time,
                        caps: caps.clone(),
                        items,
                    });
                    items = rest;
                }
                queue.push_back(Batch { time, caps, items });
            });
            let mut budget = context.settings.activation_budget;
            let mut cx = Context::from_waker(&waker);
            loop {
                if in_flight.is_none() {
                    if queue.is_empty() {
                        break;
                    }
                    // The tenant spent its CPU share: no new call until the rate pays it back.
                    if let Some(wait) = context.fuel.throttled() {
                        activator.activate_after(wait);
                        break;
                    }
                    let Some(batch) = queue.pop_front() else {
                        break;
                    };
                    let Some(instance) = idle.take() else { break };
                    let hlc = context.hlc(batch.time);
                    in_flight = Some((
                        batch.time,
                        batch.caps,
                        start_call(kind, instance, batch.items, hlc, meter.clone()),
                    ));
                }
                let Some((_, _, call)) = in_flight.as_mut() else {
                    break;
                };
                let Poll::Ready((instance, mut items, results)) = call.as_mut().poll(&mut cx)
                else {
                    break;
                };
                meter.charge(&instance);
                idle = Some(instance);
                let Some((time, caps, _)) = in_flight.take() else {
                    break;
                };
                budget = budget.saturating_sub(items.len());
                // A batch cut short by the output budget: the rest goes first in line, after
                // the sink has counted what this call made.
                let rest = items.split_off(results.len());
                let cut_short = !rest.is_empty();
                if cut_short {
                    queue.push_front(Batch {
                        time,
                        caps: caps.clone(),
                        items: rest,
                    });
                }
                emit(&context, &mut outputs, time, &caps, items, results);
                if cut_short {
                    activator.activate_after(OUTPUTS_POLL);
                    break;
                }
                if budget == 0 {
                    if !queue.is_empty() {
                        activator.activate();
                    }
                    break;
                }
            }
            if in_flight.is_none() && queue.is_empty() {
                meter.release_when_idle(&context, idle.as_mut(), &activator);
            }
        }
    });
    streams
}

/// Meters a node: charges its fuel to its tenant's CPU budget as each call ends, holds its
/// calls while the tenant is in debt, and releases its instance once idle. Shared between the
/// operator and its call in flight (both on the worker thread).
#[derive(Clone)]
pub(crate) struct Meter {
    fuel: Arc<FuelBudget>,
    counters: Arc<NodeCounters>,
    env: Arc<NodeEnv>,
    queued_outputs: Arc<ByteBudget>,
    state: Rc<Cell<Charged>>,
    /// Fuel reserved for the call in flight, given back when it is charged.
    reserved: Rc<Cell<u64>>,
    /// Whether the deployment still runs.
    running: Arc<std::sync::atomic::AtomicBool>,
    /// When the pending idle check fires, if one is pending: one at a time.
    idle_check_at: Rc<Cell<Option<Instant>>>,
}

/// What a node has charged so far.
#[derive(Clone, Copy, Default)]
struct Charged {
    /// Fuel of the node already charged to the tenant's budget.
    fuel: u64,
    /// Of which `init` calls used.
    init_fuel: u64,
    /// When the node last finished a call.
    last_call: Option<Instant>,
}

impl Meter {
    /// A meter that has charged what `instance` used so far (the `init` of deploy time).
    pub(crate) fn new(context: &NodeContext, instance: &OperatorInstance) -> Self {
        let meter = Self {
            fuel: context.fuel.clone(),
            counters: context.counters.clone(),
            env: context.env.clone(),
            queued_outputs: context.shared.queued_output_bytes.clone(),
            state: Rc::new(Cell::new(Charged::default())),
            reserved: Rc::new(Cell::new(0)),
            running: context.shared.running.clone(),
            idle_check_at: Rc::new(Cell::new(None)),
        };
        meter.charge(instance);
        meter
    }

    /// Whether the deployment still runs (a stopped one starts no further call).
    pub(crate) fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Waits while the tenant is over its CPU rate (the operator is woken when the wait ends),
    /// then reserves the call's whole fuel budget: calls of the tenant that start together see
    /// each other's reservations, so together they overdraw the bucket by one call at most, not
    /// by one call per node. [`charge`](Self::charge) settles it to what the call used.
    pub(crate) async fn turn(&self) {
        // At most one second's worth: a call allowed more than that (a huge fuel_per_message)
        // holds the tenant back for a second, not for its whole allowance.
        let reserve = self
            .env
            .quotas
            .as_ref()
            .map_or(0, |quotas| quotas.get().fuel_per_message)
            .min(self.fuel.rate());
        loop {
            // Outputs nobody reads fill the tenant's queued-output budget: make no more until
            // a reader takes some (a call may turn a small input into a large output).
            while self.queued_outputs.is_spent() {
                tokio::time::sleep(OUTPUTS_POLL).await;
            }
            // The throttle check and the reservation are one step (one lock per item).
            match self.fuel.reserve(reserve) {
                None => break,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        self.reserved.set(self.reserved.get() + reserve);
    }

    /// Whether `produced` bytes of outputs not yet at the sink would fill the tenant's
    /// queued-output budget.
    pub(crate) fn outputs_would_fill(&self, produced: u64) -> bool {
        self.queued_outputs.used().saturating_add(produced) >= self.queued_outputs.limit()
    }

    /// Charges what `instance` used since the last charge (calls and `init`s alike) to the
    /// tenant's CPU budget, and publishes it in the node's counters.
    pub(crate) fn charge(&self, instance: &OperatorInstance) {
        let stats = instance.stats();
        let charged = self.state.get();
        self.fuel.settle(
            self.reserved.replace(0),
            stats.fuel_used.saturating_sub(charged.fuel),
            stats.init_fuel.saturating_sub(charged.init_fuel),
        );
        self.state.set(Charged {
            fuel: stats.fuel_used,
            init_fuel: stats.init_fuel,
            last_call: Some(Instant::now()),
        });
        self.counters.fuel.store(stats.fuel_used, Ordering::Relaxed);
        self.counters
            .instantiations
            .store(stats.instantiations, Ordering::Relaxed);
        self.counters
            .live
            .store(instance.is_live(), Ordering::Relaxed);
    }

    /// Drops the live instance of a node that has had nothing to do for the deployment's
    /// `instance_idle` (ARCHITECTURE decision 3: an idle deployment holds no instance); the
    /// next item instantiates and `init`s a fresh one. Until then, looks again later.
    pub(crate) fn release_when_idle(
        &self,
        context: &NodeContext,
        instance: Option<&mut OperatorInstance>,
        activator: &timely::scheduling::Activator,
    ) {
        let charged = self.state.get();
        let (Some(instance), Some(last_call)) = (instance, charged.last_call) else {
            return;
        };
        if !instance.is_live() {
            return;
        }
        let idle_for = last_call.elapsed();
        if idle_for >= context.settings.instance_idle {
            instance.release();
            self.counters.live.store(false, Ordering::Relaxed);
            self.state.set(Charged {
                last_call: None,
                ..charged
            });
        } else {
            // One pending check at a time. Arming one on every activation pushed an entry per
            // batch into timely's delayed-activation heap, each firing a spurious activation
            // `instance_idle` later that armed another (`BinaryHeap::pop` was 8 % of a
            // windowed deployment's worker; BENCHMARKS.md row 4). A check that fires early
            // (calls came since) arms the next one for the remainder.
            let now = Instant::now();
            if self.idle_check_at.get().is_none_or(|at| at <= now) {
                let wait = context.settings.instance_idle - idle_for;
                self.idle_check_at.set(Some(now + wait));
                activator.activate_after(wait);
            }
        }
    }
}

fn emit(
    context: &NodeContext,
    outputs: &mut [OutputBuilder<u64, CapacityContainerBuilder<Vec<Envelope>>>],
    time: u64,
    caps: &[Capability<u64>],
    items: Vec<Envelope>,
    results: Vec<Result<Outcome, OperatorError>>,
) {
    let mut routed: Vec<(usize, u64, Envelope)> = Vec::with_capacity(items.len());
    for (envelope, result) in items.into_iter().zip(results) {
        context.counters.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Outcome::Item(item)) => routed.push((
                0,
                time,
                Envelope {
                    item,
                    acks: envelope.acks,
                },
            )),
            Ok(Outcome::Keep(true)) => routed.push((0, time, envelope)),
            // Dropped on purpose: its acknowledgements are released here.
            Ok(Outcome::Keep(false)) => {}
            Ok(Outcome::Arm(arm)) => routed.push((usize::from(arm), time, envelope)),
            Ok(Outcome::Later(hlc)) => {
                let mut later = u64::try_from(hlc.millis()).unwrap_or(u64::MAX);
                if later < time {
                    context
                        .shared
                        .stats
                        .delay_clamped
                        .fetch_add(1, Ordering::Relaxed);
                    context.env.log(
                        LogLevel::Warn,
                        "weir",
                        &format!("delay returned {later} ms, earlier than the item's time {time} ms; clamped"),
                    );
                    later = time;
                }
                routed.push((0, later, envelope));
            }
            Err(error) => context.dead_letter(envelope, time, &error),
        }
    }
    context
        .counters
        .emitted
        .fetch_add(routed.len() as u64, Ordering::Relaxed);
    routed.sort_by_key(|(port, at, _)| (*port, *at));
    let mut routed = routed.into_iter().peekable();
    while let Some((port, at, first)) = routed.next() {
        let (Some(output), Some(cap)) = (outputs.get_mut(port), caps.get(port)) else {
            continue;
        };
        let cap = if at == time {
            cap.clone()
        } else {
            cap.delayed(&at)
        };
        let mut handle = output.activate();
        let mut session = handle.session(&cap);
        session.give(first);
        while let Some((_, _, next)) = routed.next_if(|(p, t, _)| *p == port && *t == at) {
            session.give(next);
        }
    }
}
