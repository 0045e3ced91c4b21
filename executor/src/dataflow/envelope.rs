//! What travels through a deployment's dataflow: an item plus the acknowledgement tokens of the
//! source messages it derives from. A token fires when its last holder lets go: when every
//! output derived from the message has been accepted by the sink or the dead-letter path, or the
//! item was legitimately dropped (a filter said no). Tokens still held when a deployment is torn
//! down report `Abandoned`, so the source redelivers instead of losing the message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use weir_api::DataItem;
use weir_connectors::PartitionAssignment;

use super::budget::ByteBudget;
use super::source::Intake;

/// How a source message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Everything derived from it reached the sink or the dead letters: acknowledge it.
    Processed,
    /// The deployment stopped before it was processed: do not acknowledge; redeliver.
    Abandoned,
}

type OnDone = Box<dyn FnOnce(Delivery) + Send>;

/// The acknowledgement of one source message. It also holds the message's place in its
/// deployment's intake (see `source::Intake`), given back when the token goes.
pub struct AckToken {
    on_done: Mutex<Option<OnDone>>,
    running: Arc<AtomicBool>,
    intake: Option<(Arc<Intake>, u64)>,
    /// The Kafka partition assignment the message was read under, if any.
    assignment: Option<PartitionAssignment>,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken").finish_non_exhaustive()
    }
}

impl AckToken {
    pub(crate) fn new(
        running: Arc<AtomicBool>,
        on_done: OnDone,
        intake: Option<(Arc<Intake>, u64)>,
        assignment: Option<PartitionAssignment>,
    ) -> Arc<Self> {
        Arc::new(Self {
            on_done: Mutex::new(Some(on_done)),
            running,
            intake,
            assignment,
        })
    }

    /// Makes the token silent: for a message that was never taken, or one whose partition was
    /// taken away (its next owner reads it again).
    pub(crate) fn disarm(&self) {
        let _silenced = self
            .on_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Settles the message as abandoned now (its source reads it again), whoever else holds
    /// the token.
    pub(crate) fn abandon(&self) {
        let on_done = self
            .on_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(on_done) = on_done {
            on_done(Delivery::Abandoned);
        }
    }

    /// The Kafka partition assignment the message was read under, if any.
    pub(crate) fn assignment(&self) -> Option<&PartitionAssignment> {
        self.assignment.as_ref()
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some((intake, bytes)) = self.intake.take() {
            intake.release(1, bytes);
        }
        let on_done = self
            .on_done
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(on_done) = on_done {
            let delivery = if self.running.load(Ordering::Acquire) {
                Delivery::Processed
            } else {
                Delivery::Abandoned
            };
            on_done(delivery);
        }
    }
}

/// An item in flight and the acknowledgements it carries.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The item.
    pub item: DataItem,
    /// The source messages it derives from.
    pub acks: Vec<Arc<AckToken>>,
}

impl Envelope {
    /// An item with no acknowledgement attached (e.g. an accumulate's first staged value).
    pub fn bare(item: DataItem) -> Self {
        Self {
            item,
            acks: Vec::new(),
        }
    }
}

/// An item a deployment could not process, with why and where.
#[derive(Debug)]
pub struct DeadLetter {
    /// The deployment.
    pub deployment: String,
    /// The operation that failed (or `source` for intake problems such as clock drift).
    pub node: String,
    /// The stable reason code (`trap`, `fuel_exhausted`, `clock_drift`, ...).
    pub reason: String,
    /// The failure in words.
    pub detail: String,
    /// The input that failed.
    pub input: DataItem,
    /// The dataflow time (ms since the epoch) of the input.
    pub time: u64,
    pub(crate) acks: Vec<Arc<AckToken>>,
}

/// An item that reached a sink.
#[derive(Debug)]
pub struct SinkOutput {
    /// The sink operation.
    pub sink: String,
    /// The dataflow time (ms since the epoch).
    pub time: u64,
    /// The item, with the outgoing `__ts` user property added to messages.
    pub item: DataItem,
    pub(crate) acks: Vec<Arc<AckToken>>,
    /// Its bytes in the tenant's queued-output budget, from the sink until a reader takes it.
    pub(crate) held: Option<HeldBytes>,
}

impl SinkOutput {
    /// Accepts the output: the acknowledgements it holds are released, and so are its bytes in
    /// the tenant's queued-output budget.
    pub fn accept(self) -> DataItem {
        drop(self.acks);
        drop(self.held);
        self.item
    }

    /// Takes over the output's bytes in the tenant's queued-output budget, for a queue of the
    /// caller's that keeps them counted: the caller releases them ([`ByteBudget::release`])
    /// when a reader takes the output. Call it before [`accept`](Self::accept), which then
    /// releases nothing.
    pub fn keep_bytes(&mut self) -> u64 {
        self.held.take().map_or(0, HeldBytes::keep)
    }
}

/// Bytes reserved in a budget for as long as this lives.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl HeldBytes {
    /// Counts `bytes` in `budget`, even past its limit (the item exists already).
    pub(crate) fn new(budget: Arc<ByteBudget>, bytes: u64) -> Self {
        budget.hold(bytes);
        Self { budget, bytes }
    }

    /// Leaves the bytes counted; the caller releases them later.
    fn keep(mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl DeadLetter {
    /// Accepts the dead letter: the acknowledgements it holds are released.
    pub fn accept(self) -> DataItem {
        drop(self.acks);
        self.input
    }
}
