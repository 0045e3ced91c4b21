//! The edges of a running deployment: the intake its source offers to, the pump that hands
//! its outputs to its sink, and the one that records its dead letters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use weir_api::rest::DeadLetter;
use weir_api::{DataItem, TenantId};
use weir_connectors::{Ack, AckSender, Inbound, Intake, IntakeRefusal, Outbound, Settled, Sink};
use weir_tenants::{MessageRates, RateRefusal};

use super::tenant::{RecentLetters, TenantShare};
use crate::dataflow::message_from_broker;
use crate::dataflow::{ByteBudget, Delivery, Deployment, Offer, SourceError, SourceHandle};

/// Bytes of a dead letter's payload kept for reading; its original size is recorded.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;
/// How often a busy deployment's outputs are collected.
const DRAIN_POLL: Duration = Duration::from_millis(1);
/// How often an idle deployment's are.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Messages refused at the edge (too large) waiting to be recorded as dead letters before the
/// source is held back.
const EDGE_LETTERS: usize = 64;
/// Dead letters recorded per journal call.
const JOURNAL_BATCH: usize = 256;

/// Where dead letters are kept for good: the control store in `weir serve`. Appending is the
/// point of no return: a letter is accepted (its source message acknowledged) only after it.
#[async_trait]
pub trait DeadLetterJournal: Send + Sync + std::fmt::Debug {
    /// Keeps `letters` of `tenant`, numbering them, evicting the tenant's oldest beyond
    /// `max_bytes` (its `max_dead_letter_bytes`); the numbers given, in order. An error means
    /// nothing was kept: the caller retries.
    async fn append(
        &self,
        tenant: &TenantId,
        letters: Vec<DeadLetter>,
        max_bytes: u64,
    ) -> Result<Vec<u64>, String>;
}

/// A dead letter whose input never entered the dataflow (refused at the edge), with the
/// acknowledgement of its source message.
struct EdgeLetter {
    letter: DeadLetter,
    ack: Ack,
}

/// What the intake and the pumps of one deployment share.
pub(super) struct Edges {
    pub(super) tenant: TenantId,
    pub(super) deployment: String,
    pub(super) share: Arc<TenantShare>,
    pub(super) recent: RecentLetters,
    edge_letters: Mutex<VecDeque<EdgeLetter>>,
    pub(super) wake: tokio::sync::Notify,
    /// Set when a new version takes over (a rolling update): the intake takes nothing more,
    /// so what this version took can finish and be acknowledged before it stops.
    pub(super) draining: AtomicBool,
}

impl Edges {
    pub(super) fn new(tenant: TenantId, deployment: String, share: Arc<TenantShare>) -> Self {
        Self {
            tenant,
            deployment,
            share,
            recent: RecentLetters::default(),
            edge_letters: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    /// Whether messages refused at the edge still wait to be recorded as dead letters (their
    /// source acknowledgements with them).
    pub(super) fn edge_letters_pending(&self) -> bool {
        !self
            .edge_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// The intake a deployment's source offers to: its dataflow source, the tenant's message rate
/// and size limits, and the settlement channel back to the source.
pub(super) struct DeploymentIntake {
    pub(super) source: SourceHandle,
    pub(super) acks: AckSender,
    pub(super) edges: Arc<Edges>,
    /// The tenant's `messages_per_second_in`; `None` when the caller admitted the messages
    /// already (HTTP ingest answers a refusal itself, with `Retry-After`).
    pub(super) rates: Option<Arc<MessageRates>>,
}

impl std::fmt::Debug for DeploymentIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentIntake")
            .field("deployment", &self.edges.deployment)
            .finish_non_exhaustive()
    }
}

/// The refusal a source sees for the dataflow's.
pub(super) fn refusal(error: SourceError) -> IntakeRefusal {
    match error {
        SourceError::Full | SourceError::InFlightBytes { .. } => {
            IntakeRefusal::Full(error.to_string())
        }
        SourceError::TooLarge { .. } => IntakeRefusal::TooLarge(error.to_string()),
        SourceError::Closed => IntakeRefusal::Closed,
    }
}

#[async_trait]
impl Intake for DeploymentIntake {
    fn try_offer(&self, batch: Vec<Inbound>) -> Result<(), IntakeRefusal> {
        if self.edges.draining.load(Ordering::Acquire) {
            // The broker keeps the message (unacknowledged) for the version taking over.
            return Err(IntakeRefusal::Full(
                "the deployment is handing over to its new version".to_owned(),
            ));
        }
        let quotas = self.edges.share.quotas();
        // A message over the tenant's size limit can never be processed: it goes to the dead
        // letters (and is acknowledged once recorded) instead of blocking its source.
        let (fits, too_large): (Vec<Inbound>, Vec<Inbound>) = batch
            .into_iter()
            .partition(|m| m.byte_len() <= quotas.max_message_bytes);
        if !too_large.is_empty() {
            let mut edge = self
                .edges
                .edge_letters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if edge.len() + too_large.len() > EDGE_LETTERS.max(too_large.len()) {
                return Err(IntakeRefusal::Full(
                    "oversized messages are waiting to be dead-lettered".to_owned(),
                ));
            }
            for message in too_large {
                let detail = format!(
                    "a message of {} bytes (topic, payload and properties) exceeds the tenant's max_message_bytes of {}",
                    message.byte_len(),
                    quotas.max_message_bytes
                );
                let letter = edge_letter(&self.edges.deployment, &message, detail);
                edge.push_back(EdgeLetter {
                    letter,
                    ack: message.ack,
                });
            }
            drop(edge);
            self.edges.wake.notify_one();
            if fits.is_empty() {
                return Ok(());
            }
        }
        let count = u32::try_from(fits.len()).unwrap_or(u32::MAX);
        let bytes: u64 = fits.iter().map(Inbound::byte_len).sum();
        let offers: Vec<(Offer, Option<weir_connectors::PartitionAssignment>)> = fits
            .into_iter()
            .map(|message| {
                let item = DataItem::Message(message_from_broker(
                    message.topic,
                    message.payload,
                    message.content_type,
                    message.user_properties,
                    self.source.clock(),
                ));
                let acks = self.acks.clone();
                let ack = message.ack;
                let assignment = message.assignment;
                let on_done: Box<dyn FnOnce(Delivery) + Send> = Box::new(move |delivery| {
                    let settled = match delivery {
                        Delivery::Processed => Settled::Processed(ack),
                        Delivery::Abandoned => Settled::Abandoned(ack),
                    };
                    // The channel holds every message in flight; a stopped source is gone.
                    let _sent_or_gone = acks.try_send(settled);
                });
                ((item, on_done), assignment)
            })
            .collect();
        // The intake's places first, then the tenant's rate: a batch the intake refuses
        // spends none of the rate (a source retrying a full intake would otherwise use it up).
        let reservation = self
            .source
            .reserve(offers.len(), crate::dataflow::assigned_bytes(&offers))
            .map_err(refusal)?;
        if let Some(rates) = &self.rates {
            match rates.admit(&self.edges.tenant, quotas.messages_per_second_in, count) {
                Ok(()) => {}
                Err(RateRefusal::Wait(wait)) => {
                    return Err(IntakeRefusal::Full(format!(
                        "over the tenant's {} messages per second (retry in {} ms)",
                        quotas.messages_per_second_in,
                        wait.as_millis()
                    )));
                }
                Err(RateRefusal::TooMany { per_second }) => {
                    return Err(IntakeRefusal::TooLarge(format!(
                        "a batch of {count} messages is more than the tenant's {per_second} messages per second"
                    )));
                }
            }
        }
        reservation.send_all_assigned(offers).map_err(refusal)?;
        let share = &self.edges.share;
        share
            .messages_in
            .fetch_add(u64::from(count), Ordering::Relaxed);
        share.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        self.edges.wake.notify_one();
        Ok(())
    }

    async fn room(&self) {
        self.source.room().await;
    }
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cut(payload: &Bytes) -> (String, bool) {
    let kept = payload.len().min(DEAD_LETTER_PAYLOAD_BYTES);
    (text(&payload.slice(..kept)), kept < payload.len())
}

/// A dead letter for a message refused at the edge.
fn edge_letter(deployment: &str, message: &Inbound, detail: String) -> DeadLetter {
    let (payload, payload_truncated) = cut(&message.payload);
    DeadLetter {
        seq: 0,
        deployment: deployment.to_owned(),
        node: "source".to_owned(),
        reason: "message_too_large".to_owned(),
        detail,
        topic: text(&message.topic),
        payload,
        input_bytes: message.byte_len(),
        payload_truncated,
        at_ms: 0,
    }
}

/// A dead letter as the tenant reads it: the payload cut to [`DEAD_LETTER_PAYLOAD_BYTES`],
/// the input's whole size recorded.
fn dead_letter_entry(letter: &crate::dataflow::DeadLetter) -> DeadLetter {
    let (topic, payload) = match &letter.input {
        DataItem::Message(m) => (text(&m.topic), &m.payload),
        DataItem::Snapshot(s) => (String::new(), &s.frame),
        DataItem::Bytes(b) => (String::new(), b),
    };
    let (payload, payload_truncated) = cut(payload);
    DeadLetter {
        seq: 0,
        deployment: letter.deployment.clone(),
        node: letter.node.clone(),
        reason: letter.reason.clone(),
        detail: letter.detail.clone(),
        topic,
        payload,
        input_bytes: input_bytes(&letter.input),
        payload_truncated,
        at_ms: 0,
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

/// Gives an output's queued bytes back to the tenant's budget when the sink lets it go.
struct HeldOutput {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl Drop for HeldOutput {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Waits for work: at once when busy; else until the pump's queue has a push (`pushed`) or the
/// edges a wake-up, polling as a fallback, backing off to [`IDLE_POLL`] when idle (so idle
/// deployments cost almost nothing); a wake-up resets the pace.
async fn idle_wait(
    wake: &tokio::sync::Notify,
    pushed: impl Future<Output = ()>,
    idle: &mut Duration,
    moved: bool,
) {
    if moved {
        *idle = DRAIN_POLL;
        tokio::task::yield_now().await;
        return;
    }
    tokio::select! {
        () = pushed => *idle = DRAIN_POLL,
        () = wake.notified() => *idle = DRAIN_POLL,
        () = tokio::time::sleep(*idle) => *idle = (*idle * 2).min(IDLE_POLL),
    }
}

/// Hands a deployment's outputs to its sink in batches and accepts them (settling their source
/// messages) once the sink took them; outputs the sink rejects for good go to the dead
/// letters first. While the sink waits (its broker is down, its queue full), outputs stay in
/// the deployment's bounded output queue and its source is held back: no other deployment
/// waits.
pub(super) async fn pump_outputs(
    deployment: Arc<Deployment>,
    mut sink: Box<dyn Sink>,
    edges: Arc<Edges>,
    journal: Arc<dyn DeadLetterJournal>,
) {
    let mut idle = DRAIN_POLL;
    loop {
        let mut taken = Vec::new();
        let max = sink.max_batch().max(1);
        while taken.len() < max {
            let Some(output) = deployment.outputs().try_pop() else {
                break;
            };
            taken.push(output);
        }
        if taken.is_empty() {
            idle_wait(&edges.wake, deployment.outputs().pushed(), &mut idle, false).await;
            continue;
        }
        let batch: Vec<Outbound> = taken
            .iter_mut()
            .map(|output| {
                // Its bytes stay counted in the tenant's queued-output budget until the sink
                // lets it go (the HTTP queue: until a reader takes it).
                let hold = HeldOutput {
                    budget: edges.share.queued_output_bytes.clone(),
                    bytes: output.keep_bytes(),
                };
                let mut outbound = match &output.item {
                    DataItem::Message(m) => Outbound {
                        topic: m.topic.clone(),
                        payload: m.payload.clone(),
                        content_type: m.content_type.clone(),
                        user_properties: m.user_properties.clone(),
                        hold: None,
                    },
                    DataItem::Snapshot(s) => Outbound::new(Bytes::new(), s.frame.clone()),
                    DataItem::Bytes(b) => Outbound::new(Bytes::new(), b.clone()),
                };
                outbound.hold = Some(Box::new(hold));
                outbound
            })
            .collect();
        let report = match sink.send(batch).await {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(tenant = %edges.tenant, deployment = %edges.deployment, %error, "the sink stopped");
                // The outputs stay unaccepted: their source messages are redelivered when the
                // deployment starts again.
                return;
            }
        };
        let mut letters = Vec::new();
        for rejection in &report.rejected {
            if let Some(output) = taken.get(rejection.index) {
                let (topic, payload) = match &output.item {
                    DataItem::Message(m) => (text(&m.topic), &m.payload),
                    DataItem::Snapshot(s) => (String::new(), &s.frame),
                    DataItem::Bytes(b) => (String::new(), b),
                };
                let (payload, payload_truncated) = cut(payload);
                letters.push(DeadLetter {
                    seq: 0,
                    deployment: edges.deployment.clone(),
                    node: output.sink.clone(),
                    reason: rejection.reason.clone(),
                    detail: rejection.detail.clone(),
                    topic,
                    payload,
                    input_bytes: input_bytes(&output.item),
                    payload_truncated,
                    at_ms: 0,
                });
            }
        }
        if !letters.is_empty() {
            let _kept = record(&edges, journal.as_ref(), letters).await;
        }
        let accepted = taken.len() - report.rejected.len().min(taken.len());
        edges
            .share
            .messages_out
            .fetch_add(accepted as u64, Ordering::Relaxed);
        for output in taken {
            output.accept();
        }
        idle_wait(&edges.wake, std::future::ready(()), &mut idle, true).await;
    }
}

/// Records `letters` in the journal, retrying (with backoff) until it keeps them: a dead
/// letter is never dropped.
async fn record(
    edges: &Edges,
    journal: &dyn DeadLetterJournal,
    mut letters: Vec<DeadLetter>,
) -> Vec<DeadLetter> {
    let mut backoff = Duration::from_millis(50);
    let count = letters.len() as u64;
    // One time for the kept and the published copy.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for letter in &mut letters {
        if letter.at_ms == 0 {
            letter.at_ms = now;
        }
    }
    loop {
        let max_bytes = edges.share.quotas().max_dead_letter_bytes;
        match journal
            .append(&edges.tenant, letters.clone(), max_bytes)
            .await
        {
            Ok(seqs) => {
                for (letter, seq) in letters.iter_mut().zip(seqs) {
                    letter.seq = seq;
                }
                break;
            }
            Err(error) => {
                tracing::warn!(tenant = %edges.tenant, deployment = %edges.deployment, %error, "dead letters not recorded yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    edges
        .share
        .dead_lettered
        .fetch_add(count, Ordering::Relaxed);
    for letter in &letters {
        edges.recent.push(letter.clone());
    }
    letters
}

/// Publishes dead letters (as kept: numbered and stamped) as JSON documents to the deployment's
/// dead-letter topic before they are accepted (so a letter is settled only once published); waits while the
/// broker is away, like any sink. A letter the broker refuses for good is logged; it is still
/// kept in the journal.
async fn publish_letters(sink: &mut dyn Sink, edges: &Edges, letters: &[DeadLetter]) {
    let batch: Vec<Outbound> = letters
        .iter()
        .map(|letter| {
            let mut document = serde_json::to_vec(letter).unwrap_or_default();
            document.shrink_to_fit();
            let mut outbound = Outbound::new(Bytes::new(), document);
            outbound.content_type = Some(Bytes::from_static(b"application/json"));
            outbound.user_properties = vec![
                (
                    Bytes::from_static(b"weir-deployment"),
                    Bytes::from(letter.deployment.clone()),
                ),
                (
                    Bytes::from_static(b"weir-reason"),
                    Bytes::from(letter.reason.clone()),
                ),
            ];
            outbound
        })
        .collect();
    match sink.send(batch).await {
        Ok(report) => {
            for rejected in report.rejected {
                tracing::warn!(tenant = %edges.tenant, deployment = %edges.deployment, reason = %rejected.reason, detail = %rejected.detail, "a dead letter was not published");
            }
        }
        Err(error) => {
            tracing::warn!(tenant = %edges.tenant, deployment = %edges.deployment, %error, "the dead-letter sink stopped");
        }
    }
}

/// Records a deployment's dead letters (from its operators, and messages refused at its edge)
/// in the journal and only then accepts them, settling their source messages.
pub(super) async fn pump_dead_letters(
    deployment: Arc<Deployment>,
    edges: Arc<Edges>,
    journal: Arc<dyn DeadLetterJournal>,
    acks: AckSender,
    mut publish: Option<Box<dyn Sink>>,
) {
    let mut idle = DRAIN_POLL;
    loop {
        let mut taken = Vec::new();
        while taken.len() < JOURNAL_BATCH {
            let Some(letter) = deployment.dead_letters().try_pop() else {
                break;
            };
            taken.push(letter);
        }
        let edge: Vec<EdgeLetter> = {
            let mut queue = edges
                .edge_letters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue.drain(..).collect()
        };
        if taken.is_empty() && edge.is_empty() {
            idle_wait(
                &edges.wake,
                deployment.dead_letters().pushed(),
                &mut idle,
                false,
            )
            .await;
            continue;
        }
        let letters: Vec<DeadLetter> = taken
            .iter()
            .map(dead_letter_entry)
            .chain(edge.iter().map(|e| e.letter.clone()))
            .collect();
        // Kept first (numbered), then published with the same number and time, then settled.
        let letters = record(&edges, journal.as_ref(), letters).await;
        if let Some(sink) = publish.as_mut() {
            publish_letters(sink.as_mut(), &edges, &letters).await;
        }
        for letter in taken {
            letter.accept();
        }
        for letter in edge {
            let _sent_or_gone = acks.try_send(Settled::Processed(letter.ack));
        }
        idle_wait(&edges.wake, std::future::ready(()), &mut idle, true).await;
    }
}
