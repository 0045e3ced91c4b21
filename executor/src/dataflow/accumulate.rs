//! The operator of an `accumulate` node: for each dataflow time t, the first staged value is an
//! empty message stamped t (azure-compat §11 row 3); batches of items at t are folded into it by
//! the module; once the input frontier passes t, the final staged value is emitted at t.
//! A batch that fails is retried one item at a time, so a bad item goes to the dead letters
//! alone and the rest of the window still produces its result.
//!
//! Keyed windows ([`DataflowSettings::keyed_windows`], a deployment with a `partition_key`,
//! issue 13 point 5): a window is one time *and one key*, the message's `__key` user property
//! (the Kafka record key). An item without one goes to the dead letters (`missing_key`): folded
//! under no key it would make one partial window on each instance that read such items. Its
//! staged value starts with that `__key` and its result carries it (added if the module's
//! result lacks it), so every key's window is folded and emitted on its own: the instances of a
//! keyed deployment, each reading some partitions, emit the same windows as one instance
//! reading them all.
//!
//! A keyed window also follows its Kafka partition's assignment (`PartitionAssignment`,
//! carried by each record's acknowledgement): once the consumer group takes the partition
//! away, the window forgets what it folded from it (those records' acknowledgements are
//! silenced) and starts over, because the partition's next owner, this instance again or
//! another, reads those records again from the committed offset, which never covers a record
//! whose window was not emitted yet. So a rebalance neither loses a record of an open window
//! nor counts it twice.
//!
//! [`DataflowSettings::keyed_windows`]: super::DataflowSettings::keyed_windows

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use weir_api::{DataItem, Message};
use weir_connectors::PartitionAssignment;

use super::envelope::Envelope;
use super::node::{Meter, NodeContext};
use super::waker::operator_waker;
use crate::{OperatorError, OperatorInstance};

/// The user property that carries a message's key (the Kafka record key, azure-compat
/// section 11 row 8).
const KEY_PROPERTY: &[u8] = b"__key";

/// The dead-letter reason of a record without a key in a keyed window.
const MISSING_KEY: &str = "missing_key";
const MISSING_KEY_DETAIL: &str = "a keyed deployment (partition_key) keeps one window per key, and this record has no key \
     (Kafka record key, user property __key): produce every record with a key, or keep __key \
     through the operators before the accumulate";

/// A window: its dataflow time and, for keyed windows, its key.
type WindowId = (u64, Option<Bytes>);

/// The key of `item` (its last `__key` user property), if it is a message with one.
fn key_of(item: &DataItem) -> Option<Bytes> {
    match item {
        DataItem::Message(message) => message_key(message),
        _ => None,
    }
}

/// The last `__key` user property of `message`.
fn message_key(message: &Message) -> Option<Bytes> {
    message
        .user_properties
        .iter()
        .rev()
        .find(|(name, _)| name.as_ref() == KEY_PROPERTY)
        .map(|(_, value)| value.clone())
}

/// A window's first staged value: an empty message at its time, with its key if it has one.
fn initial(context: &NodeContext, id: &WindowId) -> DataItem {
    let mut staged = Message::new(context.hlc(id.0), "", "");
    if let Some(key) = &id.1 {
        staged
            .user_properties
            .push((Bytes::from_static(KEY_PROPERTY), key.clone()));
    }
    DataItem::Message(staged)
}

/// `item` with `key` as its `__key` user property, unless it has one already.
fn with_key(mut item: DataItem, key: &Bytes) -> DataItem {
    if let DataItem::Message(message) = &mut item
        && message_key(message).is_none()
    {
        message
            .user_properties
            .push((Bytes::from_static(KEY_PROPERTY), key.clone()));
    }
    item
}

struct Window {
    cap: Capability<u64>,
    staged: Envelope,
    folded: bool,
    pending: VecDeque<Envelope>,
    isolate: VecDeque<Envelope>,
    /// The partition assignments its records were read under (keyed windows; one, unless
    /// the producer put a key in several partitions or the partition moved).
    assignments: Vec<PartitionAssignment>,
}

impl Window {
    fn remember_assignments(&mut self, envelope: &Envelope) {
        for assignment in envelope.acks.iter().filter_map(|ack| ack.assignment()) {
            if !self.assignments.contains(assignment) {
                self.assignments.push(assignment.clone());
            }
        }
    }

    fn holds_revoked(&self) -> bool {
        self.assignments.iter().any(PartitionAssignment::is_revoked)
    }

    /// Forgets what the window holds from revoked partition assignments: their records'
    /// acknowledgements are silenced (the partition's next owner reads them again); if any
    /// was folded, the window starts over from `initial` and the other records folded into it
    /// are abandoned (their source reads them again too).
    fn drop_revoked(&mut self, initial: DataItem) {
        let revoked = |envelope: &Envelope| {
            envelope.acks.iter().any(|ack| {
                ack.assignment()
                    .is_some_and(PartitionAssignment::is_revoked)
            })
        };
        let release = |envelope: &Envelope| {
            for ack in &envelope.acks {
                if ack
                    .assignment()
                    .is_some_and(PartitionAssignment::is_revoked)
                {
                    ack.disarm();
                } else {
                    ack.abandon();
                }
            }
        };
        if revoked(&self.staged) {
            release(&self.staged);
            self.staged = Envelope::bare(initial);
            self.folded = false;
        }
        for queue in [&mut self.pending, &mut self.isolate] {
            queue.retain(|envelope| {
                let keep = !revoked(envelope);
                if !keep {
                    release(envelope);
                }
                keep
            });
        }
        self.assignments.retain(|a| !a.is_revoked());
    }
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
        let mut windows: BTreeMap<WindowId, Window> = BTreeMap::new();
        let mut in_flight: Option<(WindowId, Call)> = None;
        let keyed = context.settings.keyed_windows;
        // Every partition assignment some open keyed window holds records of (few: the
        // partitions this instance reads, times the rebalances during a window).
        let mut assignments: Vec<PartitionAssignment> = Vec::new();
        let meter = Meter::new(&context, &instance);
        let mut idle = Some(instance);
        let batch_size = context.settings.batch_size.max(1);
        move |frontiers| {
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                let Some(retained) = cap.retain_least(0) else {
                    return;
                };
                for envelope in data.drain(..) {
                    let key = if keyed {
                        let Some(key) = key_of(&envelope.item) else {
                            // Folded under no key, it would land in a partial window on
                            // whichever instance read it.
                            context.refuse(envelope, time, MISSING_KEY, MISSING_KEY_DETAIL.to_owned());
                            continue;
                        };
                        Some(key)
                    } else {
                        None
                    };
                    let id = (time, key);
                    let window = windows.entry(id.clone()).or_insert_with(|| Window {
                        cap: retained.clone(),
                        staged: Envelope::bare(initial(&context, &id)),
                        folded: false,
                        pending: VecDeque::new(),
                        isolate: VecDeque::new(),
                        assignments: Vec::new(),
                    });
                    if keyed {
                        window.remember_assignments(&envelope);
                        for assignment in &window.assignments {
                            if !assignments.contains(assignment) {
                                assignments.push(assignment.clone());
                            }
                        }
                    }
                    window.pending.push_back(envelope);
                }
            });
            // A partition taken away: its keyed windows forget what they hold from it (not
            // the one being folded now; it is looked at again once its call returns).
            if assignments.iter().any(PartitionAssignment::is_revoked) {
                let busy = in_flight.as_ref().map(|(id, _)| id.clone());
                let mut skipped = false;
                for (id, window) in &mut windows {
                    if !window.holds_revoked() {
                        continue;
                    }
                    if Some(id) == busy.as_ref() {
                        skipped = true;
                        continue;
                    }
                    tracing::debug!(node = %context.name, time = id.0, "a keyed window's partition was revoked: its records are read again by the partition's next owner");
                    window.drop_revoked(initial(&context, id));
                }
                if !skipped {
                    assignments.retain(|a| !a.is_revoked());
                }
            }
            let mut budget = context.settings.activation_budget;
            let mut cx = Context::from_waker(&waker);
            loop {
                if in_flight.is_none() {
                    let next = windows
                        .iter_mut()
                        .find(|(_, w)| !w.isolate.is_empty() || !w.pending.is_empty());
                    let Some((id, window)) = next else { break };
                    let id = id.clone();
                    if window.holds_revoked() {
                        // Revoked since the sweep above: start over before folding more.
                        window.drop_revoked(initial(&context, &id));
                        continue;
                    }
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
                    in_flight = Some((id, start_call(instance, window.staged.item.clone(), batch)));
                }
                let Some((id, call)) = in_flight.as_mut() else {
                    break;
                };
                let id = id.clone();
                let Poll::Ready((instance, batch, result)) = call.as_mut().poll(&mut cx) else {
                    break;
                };
                meter.charge(&instance);
                idle = Some(instance);
                in_flight = None;
                budget = budget.saturating_sub(batch.len());
                context.counters.calls.fetch_add(1, Ordering::Relaxed);
                if let Some(window) = windows.get_mut(&id) {
                    let time = id.0;
                    match result {
                        Ok(item) => {
                            let item = match &id.1 {
                                Some(key) => with_key(item, key),
                                None => item,
                            };
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
            let busy = in_flight.as_ref().map(|(id, _)| id);
            let frontier = frontiers.first().map(|f| f.frontier().to_owned());
            let complete: Vec<WindowId> = windows
                .iter()
                .filter(|(id, w)| {
                    Some(*id) != busy
                        && !w.holds_revoked()
                        && w.pending.is_empty()
                        && w.isolate.is_empty()
                        && frontier.as_ref().is_none_or(|f| !f.less_equal(&id.0))
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in complete {
                let Some(window) = windows.remove(&id) else {
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
