//! The operator of an `accumulate` node: for each dataflow time t, the first staged value is an
//! empty message stamped t (azure-compat §11 row 3); batches of items at t are folded into it by
//! the module; once the input frontier passes t, the final staged value is emitted at t.
//! A batch that fails is retried one item at a time, so a bad item goes to the dead letters
//! alone and the rest of the window still produces its result.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_api::{DataItem, Message};

use super::envelope::Envelope;
use super::node::{Meter, NodeContext};
use super::waker::operator_waker;
use crate::{OperatorError, OperatorInstance};

struct Window {
    cap: Capability<u64>,
    staged: Envelope,
    folded: bool,
    pending: VecDeque<Envelope>,
    isolate: VecDeque<Envelope>,
}

type CallResult = (
    OperatorInstance,
    Vec<Envelope>,
    Result<DataItem, OperatorError>,
);
type Call = Pin<Box<dyn Future<Output = CallResult>>>;

fn start_call(mut instance: OperatorInstance, staged: DataItem, batch: Vec<Envelope>) -> Call {
    Box::pin(async move {
        let items: Vec<DataItem> = batch.iter().map(|e| e.item.clone()).collect();
        let result = instance.accumulate(&staged, &items).await;
        (instance, batch, result)
    })
}

/// The operator of an `accumulate` node.
pub(crate) fn accumulate<'scope>(
    input: Stream<'scope, u64, Vec<Envelope>>,
    context: NodeContext,
    instance: OperatorInstance,
) -> Stream<'scope, u64, Vec<Envelope>> {
    let scope = input.scope();
    let mut builder = OperatorBuilder::new(context.name.clone(), scope);
    let info = builder.operator_info();
    let mut input = builder.new_input(input, Pipeline);
    let (output, stream) = builder.new_output::<Vec<Envelope>>();
    let mut output = OutputBuilder::<u64, CapacityContainerBuilder<Vec<Envelope>>>::from(output);
    let waker = operator_waker(scope.worker().sync_activator_for(info.address.to_vec()));
    let activator = scope.activator_for(info.address);
    builder.build(move |initial_capabilities| {
        drop(initial_capabilities);
        let mut windows: BTreeMap<u64, Window> = BTreeMap::new();
        let mut in_flight: Option<(u64, Call)> = None;
        let meter = Meter::new(&context, &instance);
        let mut idle = Some(instance);
        let batch_size = context.settings.batch_size.max(1);
        move |frontiers| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                let Some(retained) = cap.retain_least(0) else {
                    return;
                };
                let window = windows.entry(time).or_insert_with(|| Window {
                    cap: retained,
                    staged: Envelope::bare(DataItem::Message(Message::new(
                        context.hlc(time),
                        "",
                        "",
                    ))),
                    folded: false,
                    pending: VecDeque::new(),
                    isolate: VecDeque::new(),
                });
                window.pending.extend(data.drain(..));
            });
            let mut budget = context.settings.activation_budget;
            let mut cx = Context::from_waker(&waker);
            loop {
                if in_flight.is_none() {
                    let next = windows
                        .iter_mut()
                        .find(|(_, w)| !w.isolate.is_empty() || !w.pending.is_empty());
                    let Some((&time, window)) = next else { break };
                    // The tenant spent its CPU share: no new call until the rate pays it back.
                    if let Some(wait) = context.fuel.throttled() {
                        activator.activate_after(wait);
                        break;
                    }
                    // The tenant's outputs nobody reads fill its queues: fold no more for now.
                    if context.shared.queued_output_bytes.is_spent() {
                        activator.activate_after(std::time::Duration::from_millis(5));
                        break;
                    }
                    let Some(instance) = idle.take() else { break };
                    let batch: Vec<Envelope> = match window.isolate.pop_front() {
                        Some(single) => vec![single],
                        None => {
                            let take = window.pending.len().min(batch_size);
                            window.pending.drain(..take).collect()
                        }
                    };
                    in_flight = Some((
                        time,
                        start_call(instance, window.staged.item.clone(), batch),
                    ));
                }
                let Some((time, call)) = in_flight.as_mut() else {
                    break;
                };
                let time = *time;
                let Poll::Ready((instance, batch, result)) = call.as_mut().poll(&mut cx) else {
                    break;
                };
                meter.charge(&instance);
                idle = Some(instance);
                in_flight = None;
                budget = budget.saturating_sub(batch.len());
                context.counters.calls.fetch_add(1, Ordering::Relaxed);
                if let Some(window) = windows.get_mut(&time) {
                    match result {
                        Ok(item) => {
                            let mut acks = std::mem::take(&mut window.staged.acks);
                            acks.extend(batch.into_iter().flat_map(|e| e.acks));
                            window.staged = Envelope { item, acks };
                            window.folded = true;
                        }
                        Err(_) if batch.len() > 1 => window.isolate.extend(batch),
                        Err(error) => {
                            for envelope in batch {
                                context.dead_letter(envelope, time, &error);
                            }
                        }
                    }
                }
                if budget == 0 {
                    activator.activate();
                    break;
                }
            }
            // Emit every window the frontier has passed and that has nothing left to fold.
            let busy = in_flight.as_ref().map(|(t, _)| *t);
            let frontier = frontiers.first().map(|f| f.frontier().to_owned());
            let complete: Vec<u64> = windows
                .iter()
                .filter(|(t, w)| {
                    Some(**t) != busy
                        && w.pending.is_empty()
                        && w.isolate.is_empty()
                        && frontier.as_ref().is_none_or(|f| !f.less_equal(t))
                })
                .map(|(t, _)| *t)
                .collect();
            for time in complete {
                let Some(window) = windows.remove(&time) else {
                    continue;
                };
                if window.folded {
                    context.counters.emitted.fetch_add(1, Ordering::Relaxed);
                    output.activate().session(&window.cap).give(window.staged);
                }
            }
            if in_flight.is_none() && windows.is_empty() {
                meter.release_when_idle(&context, idle.as_mut(), &activator);
            }
        }
    });
    stream
}
