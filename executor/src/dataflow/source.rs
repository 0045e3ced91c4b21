//! The in-process source: connectors (and tests) hand it messages through a [`SourceHandle`];
//! the dataflow's source operator stamps each with its dataflow time and keeps the frontier
//! moving, even when no message comes, so windows close (azure-compat §11 rows 4 and 20).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::SyncActivator;
use weir_api::{DataItem, Hlc, HlcClock, Message};
use weir_connectors::PartitionAssignment;

use super::budget::ByteBudget;
use super::envelope::{AckToken, DeadLetter, Delivery, Envelope};
use super::{DataflowSettings, DeploymentShared, FrontierPolicy};

/// Why a message (or a batch) was not taken. Nothing of a refused batch was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The intake is full (the deployment is behind): retry later; the broker keeps the message.
    #[error("the deployment's intake is full")]
    Full,
    /// The tenant's messages in flight hold its whole `max_inflight_bytes` budget: retry later.
    #[error(
        "the tenant's {limit} bytes of messages in flight are taken; retry once they are processed"
    )]
    InFlightBytes {
        /// The budget, in bytes.
        limit: u64,
    },
    /// The batch can never fit: more messages than the intake holds, or more bytes than the
    /// tenant's in-flight budget.
    #[error(
        "a batch of {messages} messages and {bytes} bytes can never fit the intake ({capacity} messages, {limit} bytes)"
    )]
    TooLarge {
        /// Messages in the batch.
        messages: usize,
        /// Their bytes.
        bytes: u64,
        /// The intake's capacity, in messages.
        capacity: usize,
        /// The tenant's in-flight budget, in bytes.
        limit: u64,
    },
    /// The deployment is gone or its source was closed.
    #[error("the deployment no longer takes messages")]
    Closed,
}

pub(crate) struct Incoming {
    item: DataItem,
    ack: Arc<AckToken>,
}

/// The places of a deployment's intake: messages its sources took that are not processed yet
/// (queued, or anywhere inside the dataflow), bounded by count (`max_in_flight`, at least
/// `intake_capacity`) and by the tenant's in-flight bytes (`max_inflight_bytes`, shared by its
/// deployments). A place is reserved before a message is taken and given back when its
/// acknowledgement fires, so every queue inside the dataflow is bounded and backpressure
/// reaches the sender. Of those, at most `intake_capacity` wait in the channel in front of the
/// source operator: a message also holds one of the channel's places from when it is taken
/// until the operator takes it from the channel, so a sender is told the intake is full when
/// the channel is, even while places of `max_in_flight` are free.
#[derive(Debug)]
pub(crate) struct Intake {
    capacity: usize,
    messages: AtomicUsize,
    /// Places of the channel in front of the source operator (`intake_capacity`).
    queue: usize,
    /// Messages taken and not yet taken from the channel by the source operator.
    queued: AtomicUsize,
    bytes: Arc<ByteBudget>,
    released: (Mutex<()>, Condvar),
    /// Wakes tasks waiting for room ([`SourceHandle::room`]).
    room: tokio::sync::Notify,
    /// Tasks waiting for room: a release wakes them only when there are.
    room_waiters: AtomicUsize,
    /// Releases so far: a sender that saw this before it found the intake full waits only if
    /// no release came since.
    releases: AtomicU64,
    /// Senders waiting for a release: a release wakes them (a system call) only when there are.
    waiters: AtomicUsize,
}

impl Intake {
    /// An intake of `capacity` places in flight, `queue` of them in the channel (at most
    /// `capacity`).
    pub(crate) fn new(capacity: usize, queue: usize, bytes: Arc<ByteBudget>) -> Self {
        Self {
            capacity,
            messages: AtomicUsize::new(0),
            queue: queue.min(capacity),
            queued: AtomicUsize::new(0),
            bytes,
            released: (Mutex::new(()), Condvar::new()),
            room: tokio::sync::Notify::new(),
            room_waiters: AtomicUsize::new(0),
            releases: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
        }
    }

    /// Reserves `messages` places in flight, as many in the channel, and `bytes` of the
    /// tenant's budget: all or none.
    fn try_reserve(&self, messages: usize, bytes: u64) -> Result<(), SourceError> {
        let limit = self.bytes.limit();
        // A batch sits in the channel whole before the operator takes any of it.
        if messages > self.queue || bytes > limit {
            return Err(SourceError::TooLarge {
                messages,
                bytes,
                capacity: self.queue,
                limit,
            });
        }
        let within = |counter: &AtomicUsize, bound: usize| {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                    taken.checked_add(messages).filter(|total| *total <= bound)
                })
                .is_ok()
        };
        if !within(&self.queued, self.queue) {
            return Err(SourceError::Full);
        }
        if !within(&self.messages, self.capacity) {
            self.queued.fetch_sub(messages, Ordering::AcqRel);
            return Err(SourceError::Full);
        }
        if !self.bytes.try_reserve(bytes) {
            self.queued.fetch_sub(messages, Ordering::AcqRel);
            self.messages.fetch_sub(messages, Ordering::AcqRel);
            return Err(SourceError::InFlightBytes { limit });
        }
        Ok(())
    }

    pub(crate) fn release(&self, messages: usize, bytes: u64) {
        self.messages.fetch_sub(messages, Ordering::AcqRel);
        self.bytes.release(bytes);
        self.wake_senders();
    }

    /// The source operator took `messages` from the channel: their places there are free.
    fn dequeued(&self, messages: usize) {
        self.queued.fetch_sub(messages, Ordering::AcqRel);
        self.wake_senders();
    }

    /// Wakes the senders waiting for room, if any: a place was given back.
    fn wake_senders(&self) {
        // Sequentially consistent with `wait_for_release`: either this sees the waiter, or the
        // waiter sees this release and does not wait.
        self.releases.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let (lock, released) = &self.released;
            // Taken so the wake-up cannot fall between a waiter's check and its wait.
            let _guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            released.notify_all();
        }
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Releases so far; pass it to [`wait_for_release`](Self::wait_for_release).
    fn releases(&self) -> u64 {
        self.releases.load(Ordering::SeqCst)
    }

    /// Waits (a thread, not a task) until a place may have been given back since `seen`
    /// releases.
    fn wait_for_release(&self, seen: u64) {
        let (lock, released) = &self.released;
        let guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if self.releases.load(Ordering::SeqCst) == seen {
            // Woken by a release; the timeout covers places given back by the tenant's other
            // deployments (its in-flight bytes are shared), which wake only their own senders.
            let _woken = released.wait_timeout(guard, Duration::from_millis(10));
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Messages in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.messages.load(Ordering::Acquire)
    }
}

/// One message offered to a source, with what to call once it is done.
pub type Offer = (DataItem, Box<dyn FnOnce(Delivery) + Send + 'static>);

/// An [`Offer`] with the Kafka partition assignment it was read under, if any.
pub type AssignedOffer = (Offer, Option<PartitionAssignment>);

/// The producer side of a deployment's source operation.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    /// Bounded by the intake: a message is sent only with a place of the channel reserved
    /// ([`Intake::try_reserve`]), so it never holds more than `intake_capacity` messages.
    sender: Sender<Incoming>,
    activator: Arc<OnceLock<SyncActivator>>,
    /// Whether the source operator has a wake-up coming that will look at the channel: a
    /// sender wakes it (an allocation and a system call in timely) only when it has none.
    woken: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    clock: Arc<HlcClock>,
    intake: Arc<Intake>,
}

/// Places of a deployment's intake held for one batch ([`SourceHandle::reserve`]).
#[must_use = "a reservation dropped unused gives its places back"]
#[derive(Debug)]
pub struct Reservation<'a> {
    handle: &'a SourceHandle,
    messages: usize,
    bytes: u64,
    used: bool,
}

impl Reservation<'_> {
    /// Offers `batch` in the reserved places, all or none (as [`SourceHandle::try_send_all`]).
    /// A batch that is not the one reserved for (another count or size) gives the places
    /// back and is offered anew.
    pub fn send_all(self, batch: Vec<Offer>) -> Result<(), SourceError> {
        self.send_all_assigned(batch.into_iter().map(|offer| (offer, None)).collect())
    }

    /// [`Reservation::send_all`] for Kafka records, each with the partition assignment it was
    /// read under (as [`SourceHandle::try_send_all_assigned`]).
    pub fn send_all_assigned(mut self, batch: Vec<AssignedOffer>) -> Result<(), SourceError> {
        if batch.len() != self.messages || assigned_bytes(&batch) != self.bytes {
            let handle = self.handle;
            drop(self);
            return handle.try_send_all_assigned(batch);
        }
        self.used = true;
        self.handle.deliver(batch)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.handle.intake.release(self.messages, self.bytes);
            self.handle.intake.dequeued(self.messages);
        }
    }
}

/// The bytes `batch` takes of the tenant's in-flight budget ([`DataItem::byte_len`] of each).
pub fn offered_bytes(batch: &[Offer]) -> u64 {
    batch.iter().map(|(item, _)| item.byte_len() as u64).sum()
}

/// [`offered_bytes`] of a batch of Kafka records with their partition assignments.
pub fn assigned_bytes(batch: &[AssignedOffer]) -> u64 {
    batch
        .iter()
        .map(|((item, _), _)| item.byte_len() as u64)
        .sum()
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
        self.try_send_all(vec![(item, Box::new(on_done))])
    }

    /// Offers every message of `batch`, all or none: when this returns an error, none was
    /// taken and no `on_done` will be called. Never blocks.
    pub fn try_send_all(&self, batch: Vec<Offer>) -> Result<(), SourceError> {
        self.try_send_all_assigned(batch.into_iter().map(|offer| (offer, None)).collect())
    }

    /// [`SourceHandle::try_send_all`] for Kafka records, each with the partition assignment
    /// it was read under (a keyed window drops what a revoked assignment gave it).
    pub fn try_send_all_assigned(&self, batch: Vec<AssignedOffer>) -> Result<(), SourceError> {
        let bytes = assigned_bytes(&batch);
        self.reserve(batch.len(), bytes)?.send_all_assigned(batch)
    }

    /// Reserves places for `messages` messages of `bytes` in all (as [`DataItem::byte_len`]
    /// counts them): all or none, never blocking. Offer them with [`Reservation::send_all`];
    /// a reservation dropped unused gives its places back. For a caller that must check
    /// something else (the tenant's message rate) after it knows the intake has room.
    pub fn reserve(&self, messages: usize, bytes: u64) -> Result<Reservation<'_>, SourceError> {
        if !self.running.load(Ordering::Acquire) {
            return Err(SourceError::Closed);
        }
        self.intake.try_reserve(messages, bytes)?;
        Ok(Reservation {
            handle: self,
            messages,
            bytes,
            used: false,
        })
    }

    /// Offers `item`, waiting while the intake is full. For threads, not async tasks.
    pub fn send(
        &self,
        item: DataItem,
        on_done: impl FnOnce(Delivery) + Send + 'static,
    ) -> Result<(), SourceError> {
        let bytes = item.byte_len() as u64;
        loop {
            if !self.running.load(Ordering::Acquire) {
                return Err(SourceError::Closed);
            }
            let seen = self.intake.releases();
            match self.intake.try_reserve(1, bytes) {
                Ok(()) => {
                    let ack = AckToken::new(
                        self.running.clone(),
                        Box::new(on_done),
                        Some((self.intake.clone(), bytes)),
                        None,
                    );
                    // Its place in the channel is reserved: this does not wait.
                    let sent = self
                        .sender
                        .send(Incoming { item, ack })
                        .map_err(|rejected| {
                            rejected.0.ack.disarm();
                            SourceError::Closed
                        });
                    self.wake();
                    return sent;
                }
                Err(SourceError::Full | SourceError::InFlightBytes { .. }) => {
                    self.intake.wait_for_release(seen);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Hands over a batch whose places are reserved.
    fn deliver(&self, batch: Vec<AssignedOffer>) -> Result<(), SourceError> {
        let mut result = Ok(());
        for ((item, on_done), assignment) in batch {
            let bytes = item.byte_len() as u64;
            let ack = AckToken::new(
                self.running.clone(),
                on_done,
                Some((self.intake.clone(), bytes)),
                assignment,
            );
            if result.is_err() {
                // The runtime went away midway: the rest is refused, silently.
                ack.disarm();
                continue;
            }
            // Never full: every message of the batch has its place in the channel reserved.
            if let Err(rejected) = self.sender.send(Incoming { item, ack }) {
                rejected.0.ack.disarm();
                result = Err(SourceError::Closed);
            }
        }
        self.wake();
        result
    }

    /// Waits (a task) until a place of the intake may have been given back, or 50 ms passed (the
    /// tenant's in-flight bytes are shared with its other deployments, whose releases do not
    /// wake this one); offer again then.
    pub async fn room(&self) {
        /// Counts a waiting task, also when its wait is cancelled.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let released = self.intake.room.notified();
        self.intake.room_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.intake.room_waiters);
        // A timeout is as good as a wake-up: the caller offers again either way.
        let _woken = tokio::time::timeout(Duration::from_millis(50), released)
            .await
            .is_ok();
    }

    /// The deployment's clock: stamp messages that arrive without a `__ts` with it (see
    /// [`message_from_broker`]).
    pub fn clock(&self) -> &HlcClock {
        &self.clock
    }

    /// Messages taken and not processed yet (queued or inside the dataflow).
    pub fn in_flight(&self) -> usize {
        self.intake.in_flight()
    }

    /// The source operator's activator, to wake it after the handle is dropped.
    pub(crate) fn activator(&self) -> Arc<OnceLock<SyncActivator>> {
        self.activator.clone()
    }

    fn wake(&self) {
        // Acquire-release with the operator's swap: a sender that finds a wake-up coming has
        // its message seen by the activation that clears the flag.
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(activator) = self.activator.get() {
            let _gone = activator.activate();
        } else {
            // Not built yet: the operator looks at the channel when it first runs.
            self.woken.store(false, Ordering::Release);
        }
    }
}

/// Builds a broker message, stamped with its `__ts` user property when present and valid,
/// else with `clock`'s reading (the deployment's clock, [`SourceHandle::clock`]). A `__ts` does
/// not move `clock` here: the source operator does that once the stamp passed the drift check,
/// so a far-future stamp never shifts anyone's time.
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
    let timestamp = stamped.unwrap_or_else(|| clock.now());
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
    max_in_flight: usize,
    running: Arc<AtomicBool>,
    clock: Arc<HlcClock>,
    bytes: Arc<ByteBudget>,
) -> (SourceHandle, Receiver<Incoming>) {
    // Bounded by the intake's places in the channel (`capacity`), not by the channel itself.
    let (sender, receiver) = std::sync::mpsc::channel();
    (
        SourceHandle {
            sender,
            activator: Arc::new(OnceLock::new()),
            woken: Arc::new(AtomicBool::new(false)),
            running,
            clock,
            intake: Arc::new(Intake::new(max_in_flight.max(capacity), capacity, bytes)),
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
    let woken = handle.woken.clone();
    let intake = handle.intake.clone();
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
        // When the pending frontier tick fires: one at a time (see below).
        let mut tick_at: Option<std::time::Instant> = None;
        if settings.frontier == FrontierPolicy::WallClock {
            activator.activate();
        }
        move |output| {
            // From here on, a sender's message is either seen below or wakes this again.
            woken.swap(false, Ordering::AcqRel);
            let Some(cap) = capability.as_mut() else {
                return;
            };
            let now = wall_millis();
            let mut batch: Vec<(u64, Envelope)> = Vec::new();
            let mut closed = false;
            let mut taken = 0;
            // Checked once per activation: the queue's lock is not for every message. A tenant
            // over its CPU share takes no new message until the rate pays its debt back.
            let throttled = shared.fuel.throttled();
            let held_back = throttled.is_some() || shared.outputs.is_over_capacity();
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
                        // Within the drift bound: the stamp may move this deployment's clock.
                        if let Some(stamp) = envelope.item.timestamp() {
                            let _advanced = shared.clock.update(stamp);
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
            if taken > 0 {
                // Their places in the channel are free: senders refused for want of one may
                // offer again.
                intake.dequeued(taken);
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
            if let Some(wait) = throttled {
                activator.activate_after(wait.min(settings.frontier_tick));
            } else if taken >= settings.batch_size {
                activator.activate();
            } else {
                match settings.frontier {
                    // One pending tick at a time: arming one on every activation (each send
                    // wakes the source) filled timely's delayed-activation heap with entries
                    // that each fired a spurious activation.
                    FrontierPolicy::WallClock => {
                        let now = std::time::Instant::now();
                        if tick_at.is_none_or(|at| at <= now) {
                            tick_at = Some(now + settings.frontier_tick);
                            activator.activate_after(settings.frontier_tick);
                        }
                    }
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
