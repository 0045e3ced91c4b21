//! The in-process source: connectors (and tests) hand it messages through a [`SourceHandle`];
//! the dataflow's source operator stamps each with its dataflow time and keeps the frontier
//! moving, even when no message comes, so windows close (azure-compat §11 rows 4 and 20).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::SyncActivator;
use weir_api::{DataItem, Hlc, HlcClock, Message};

use super::envelope::{AckToken, DeadLetter, Delivery, Envelope};
use super::{DataflowSettings, DeploymentShared, FrontierPolicy};

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The intake is full (the deployment is behind): retry later; the broker keeps the message.
    #[error("the deployment's intake is full")]
    Full,
    /// The deployment is gone or its source was closed.
    #[error("the deployment no longer takes messages")]
    Closed,
}

pub(crate) struct Incoming {
    item: DataItem,
    ack: Arc<AckToken>,
}

/// The producer side of a deployment's source operation.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    sender: SyncSender<Incoming>,
    activator: Arc<OnceLock<SyncActivator>>,
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("item", &self.item)
            .finish_non_exhaustive()
    }
}

impl SourceHandle {
    /// Offers `item`; `on_done` is called once with how it ended (acknowledge the broker on
    /// [`Delivery::Processed`]). Never blocks.
    pub fn try_send(
        &self,
        item: DataItem,
        on_done: impl FnOnce(Delivery) + Send + 'static,
    ) -> Result<(), SourceError> {
        if !self.running.load(Ordering::Acquire) {
            return Err(SourceError::Closed);
        }
        let ack = AckToken::new(self.running.clone(), Box::new(on_done));
        match self.sender.try_send(Incoming { item, ack }) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            // Not taken: the caller hears it from the error, not from the token.
            Err(TrySendError::Full(rejected)) => {
                rejected.ack.disarm();
                Err(SourceError::Full)
            }
            Err(TrySendError::Disconnected(rejected)) => {
                rejected.ack.disarm();
                Err(SourceError::Closed)
            }
        }
    }

    /// Offers `item`, waiting while the intake is full. For threads, not async tasks.
    pub fn send(
        &self,
        item: DataItem,
        on_done: impl FnOnce(Delivery) + Send + 'static,
    ) -> Result<(), SourceError> {
        if !self.running.load(Ordering::Acquire) {
            return Err(SourceError::Closed);
        }
        let ack = AckToken::new(self.running.clone(), Box::new(on_done));
        let result = self
            .sender
            .send(Incoming { item, ack })
            .map_err(|rejected| {
                rejected.0.ack.disarm();
                SourceError::Closed
            });
        self.wake();
        result
    }

    /// The source operator's activator, to wake it after the handle is dropped.
    pub(crate) fn activator(&self) -> Arc<OnceLock<SyncActivator>> {
        self.activator.clone()
    }

    fn wake(&self) {
        if let Some(activator) = self.activator.get() {
            let _gone = activator.activate();
        }
    }
}

/// Builds a broker message, stamped with its `__ts` user property when present and valid,
/// else with `clock`'s reading.
pub fn message_from_broker(
    topic: impl Into<Bytes>,
    payload: impl Into<Bytes>,
    content_type: Option<Bytes>,
    user_properties: Vec<(Bytes, Bytes)>,
    clock: &HlcClock,
) -> Message {
    let stamped = user_properties
        .iter()
        .find(|(k, _)| k.as_ref() == b"__ts")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|text| Hlc::parse_ts(text).ok());
    let timestamp = match stamped {
        Some(remote) => {
            let _advanced = clock.update(&remote);
            remote
        }
        None => clock.now(),
    };
    Message {
        timestamp,
        topic: topic.into(),
        content_type,
        payload: payload.into(),
        user_properties,
        schema: None,
    }
}

fn wall_millis() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

/// The dataflow time of an item: its embedded HLC truncated to the millisecond.
pub(crate) fn dataflow_time(item: &DataItem) -> Option<u64> {
    item.timestamp()
        .map(|hlc| u64::try_from(hlc.millis()).unwrap_or(u64::MAX))
}

pub(crate) fn channel(
    capacity: usize,
    running: Arc<AtomicBool>,
) -> (SourceHandle, Receiver<Incoming>) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
    (
        SourceHandle {
            sender,
            activator: Arc::new(OnceLock::new()),
            running,
        },
        receiver,
    )
}

/// The source operator of operation `name`.
pub(crate) fn build<'scope>(
    scope: Scope<'scope, u64>,
    name: &str,
    handle: &SourceHandle,
    receiver: Receiver<Incoming>,
    settings: &DataflowSettings,
    shared: &Arc<DeploymentShared>,
) -> Stream<'scope, u64, Vec<Envelope>> {
    let slot = handle.activator.clone();
    let settings = settings.clone();
    let shared = shared.clone();
    let node = name.to_owned();
    source(scope, name, move |capability, info| {
        let _already_set = slot.set(scope.worker().sync_activator_for(info.address.to_vec()));
        let activator = scope.activator_for(info.address);
        let lateness = u64::try_from(settings.allowed_lateness.as_millis()).unwrap_or(u64::MAX);
        let drift = u64::try_from(settings.max_clock_drift.as_millis()).unwrap_or(u64::MAX);
        let mut capability = Some(capability);
        let max_seen = Rc::new(Cell::new(0u64));
        if settings.frontier == FrontierPolicy::WallClock {
            activator.activate();
        }
        move |output| {
            let Some(cap) = capability.as_mut() else {
                return;
            };
            let now = wall_millis();
            let mut batch: Vec<(u64, Envelope)> = Vec::new();
            let mut closed = false;
            let mut taken = 0;
            // Checked once per activation: the queue's lock is not for every message.
            let held_back = shared.outputs.is_over_capacity();
            while !held_back && taken < settings.batch_size {
                match receiver.try_recv() {
                    Ok(Incoming { item, ack }) => {
                        taken += 1;
                        shared.stats.received.fetch_add(1, Ordering::Relaxed);
                        let envelope = Envelope {
                            item,
                            acks: vec![ack],
                        };
                        let Some(time) = dataflow_time(&envelope.item) else {
                            batch.push((*cap.time(), envelope));
                            continue;
                        };
                        if time > now.saturating_add(drift) {
                            shared.stats.clock_drift.fetch_add(1, Ordering::Relaxed);
                            shared.dead_letter(DeadLetter {
                                deployment: shared.id.clone(),
                                node: node.clone(),
                                reason: "clock_drift".to_owned(),
                                detail: format!("__ts is {} ms ahead of this executor's clock, over the {drift} ms allowed", time - now),
                                input: envelope.item,
                                time,
                                acks: envelope.acks,
                            });
                            continue;
                        }
                        max_seen.set(max_seen.get().max(time));
                        if time < *cap.time() {
                            // Older than the frontier: processed at the frontier, and counted.
                            shared.stats.late.fetch_add(1, Ordering::Relaxed);
                            batch.push((*cap.time(), envelope));
                        } else {
                            batch.push((time, envelope));
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            batch.sort_by_key(|(time, _)| *time);
            let mut items = batch.into_iter().peekable();
            while let Some((time, first)) = items.next() {
                let at = cap.delayed(&time);
                let mut session = output.session(&at);
                session.give(first);
                while let Some((_, next)) = items.next_if(|(t, _)| *t == time) {
                    session.give(next);
                }
            }
            if closed {
                capability = None;
                return;
            }
            let frontier = match settings.frontier {
                FrontierPolicy::WallClock => now.saturating_sub(lateness),
                FrontierPolicy::EventTime => max_seen.get().saturating_sub(lateness),
            };
            if frontier > *cap.time() {
                cap.downgrade(&frontier);
            }
            // A full batch means more may be waiting; every send also wakes the operator.
            if taken >= settings.batch_size {
                activator.activate();
            } else {
                match settings.frontier {
                    FrontierPolicy::WallClock => activator.activate_after(settings.frontier_tick),
                    // Held back by consumers: look again soon.
                    FrontierPolicy::EventTime if held_back => {
                        activator.activate_after(Duration::from_millis(5));
                    }
                    FrontierPolicy::EventTime => {}
                }
            }
        }
    })
}
