//! The operators that run a module: `map`, `filter`, `branch` and `delay` (one item per call,
//! here) and `accumulate` (per dataflow time, in `accumulate.rs`). A call into wasm is a future
//! polled on the worker thread; when the guest yields (epoch tick) or waits on a host call, the
//! future's waker re-activates the operator, so the worker serves other operators meanwhile.
//! Each activation does a bounded amount of work, so one deployment cannot monopolise a worker.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_api::{DataItem, Hlc};

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
}

impl NodeContext {
    /// Sends `envelope` to the dead letters with the failure.
    pub(crate) fn dead_letter(&self, envelope: Envelope, time: u64, error: &OperatorError) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.shared.dead_letter(DeadLetter {
            deployment: self.shared.id.clone(),
            node: self.name.clone(),
            reason: error.reason().to_owned(),
            detail: error.to_string(),
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
) -> Call {
    Box::pin(async move {
        let mut results = Vec::with_capacity(items.len());
        for envelope in &items {
            let item = &envelope.item;
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
                    let Some(batch) = queue.pop_front() else {
                        break;
                    };
                    let Some(instance) = idle.take() else { break };
                    let hlc = context.hlc(batch.time);
                    in_flight = Some((
                        batch.time,
                        batch.caps,
                        start_call(kind, instance, batch.items, hlc),
                    ));
                }
                let Some((_, _, call)) = in_flight.as_mut() else {
                    break;
                };
                let Poll::Ready((instance, items, results)) = call.as_mut().poll(&mut cx) else {
                    break;
                };
                context
                    .counters
                    .fuel
                    .store(instance.stats().fuel_used, Ordering::Relaxed);
                idle = Some(instance);
                let Some((time, caps, _)) = in_flight.take() else {
                    break;
                };
                budget = budget.saturating_sub(items.len());
                emit(&context, &mut outputs, time, &caps, items, results);
                if budget == 0 {
                    if !queue.is_empty() {
                        activator.activate();
                    }
                    break;
                }
            }
        }
    });
    streams
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
