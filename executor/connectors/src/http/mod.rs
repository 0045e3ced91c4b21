//! The built-in `http` endpoint: weir's own ingest (`POST /v1/deployments/{id}/ingest`) as a
//! source and its output queue (`GET …/outputs`, and the answer of `?wait=true`) as a sink.
//!
//! The source offers each ingested batch to the intake at once, all or nothing, so the caller
//! learns synchronously whether it was taken (and why not). The sink keeps outputs, with what
//! the executor holds for them (the tenant's queued-output bytes), until a reader takes them;
//! while the queue is full, `send` waits, which holds the deployment's source back instead of
//! losing outputs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::ConnectorError;
use crate::message::{Ack, Inbound, Outbound};
use crate::registry::Connector;
use crate::sink::{SendReport, Sink};
use crate::source::{AckReceiver, Intake, IntakeRefusal, Settled, Source};
use crate::spec::{ConnectContext, Problem, SinkSpec, SourceSpec};
use crate::status::{ConnectionState, ConnectionStatus};

/// Outputs an HTTP sink queue holds before `send` waits (the bytes are bounded per tenant by
/// `max_queued_output_bytes`, through what each output holds).
pub const OUTPUT_QUEUE: usize = 10_000;

/// The `http` connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpConnector;

#[async_trait]
impl Connector for HttpConnector {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn check_source(&self, _spec: &SourceSpec) -> Vec<Problem> {
        // Ingested messages name their own topics; the binding's topics (an Azure
        // `DataflowGraph`'s `dataSources` bound to http) are not used.
        Vec::new()
    }

    fn check_sink(&self, _spec: &SinkSpec) -> Vec<Problem> {
        Vec::new()
    }

    async fn source(
        &self,
        spec: SourceSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Source>, ConnectorError> {
        let problems = self.check_source(&spec);
        if !problems.is_empty() {
            return Err(ConnectorError::Invalid(problems));
        }
        Ok(Box::new(HttpSource::new(context.status)))
    }

    async fn sink(
        &self,
        spec: SinkSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        context.status.set(ConnectionState::Connected);
        Ok(Box::new(HttpSink::new(spec.topic)))
    }
}

/// Messages an ingest is waiting on: settled when the count reaches zero.
#[derive(Debug, Default)]
struct Pending {
    left: AtomicUsize,
    done: Notify,
}

/// A batch an ingest handed over; resolves once every message of it is settled.
#[derive(Debug)]
pub struct Receipt {
    pending: Arc<Pending>,
}

impl Receipt {
    /// Waits until every message of the batch was processed (or abandoned).
    pub async fn settled(&self) {
        loop {
            let notified = self.pending.done.notified();
            if self.pending.left.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Default)]
struct IngressInner {
    intake: OnceLock<Arc<dyn Intake>>,
    next: AtomicU64,
    /// Ingest batches by the sequence numbers of their messages still in flight (bounded by the
    /// intake: each entry is a message in flight).
    waiting: Mutex<HashMap<u64, Arc<Pending>>>,
}

/// The ingest side of an HTTP source, held by weir's API.
#[derive(Debug, Clone, Default)]
pub struct HttpIngress {
    inner: Arc<IngressInner>,
}

impl HttpIngress {
    /// Connects the ingress to the deployment's intake (done once, before the first ingest).
    pub fn attach(&self, intake: Arc<dyn Intake>) {
        let _first = self.inner.intake.set(intake);
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, Arc<Pending>>> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers ingested messages, all or nothing (their `ack` is replaced by the ingress's own
    /// numbering); the receipt resolves once all are settled.
    pub fn offer(&self, messages: Vec<Inbound>) -> Result<Receipt, IntakeRefusal> {
        let intake = self.inner.intake.get().ok_or(IntakeRefusal::Closed)?;
        let pending = Arc::new(Pending::default());
        let count = messages.len();
        let first = self.inner.next.fetch_add(count as u64, Ordering::Relaxed);
        let batch: Vec<Inbound> = messages
            .into_iter()
            .zip(first..)
            .map(|(message, seq)| Inbound {
                ack: Ack::Sequence(seq),
                assignment: None,
                ..message
            })
            .collect();
        pending.left.store(count, Ordering::Release);
        {
            let mut waiting = self.waiting();
            for seq in first..first + count as u64 {
                waiting.insert(seq, pending.clone());
            }
        }
        if let Err(refusal) = intake.try_offer(batch) {
            let mut waiting = self.waiting();
            for seq in first..first + count as u64 {
                waiting.remove(&seq);
            }
            return Err(refusal);
        }
        Ok(Receipt { pending })
    }

    fn settle(&self, settled: &Settled) {
        let (Settled::Processed(Ack::Sequence(seq)) | Settled::Abandoned(Ack::Sequence(seq))) =
            settled
        else {
            return;
        };
        let pending = self.waiting().remove(seq);
        if let Some(pending) = pending
            && pending.left.fetch_sub(1, Ordering::AcqRel) == 1
        {
            pending.done.notify_waiters();
        }
    }
}

/// The HTTP source: its messages come from [`HttpIngress::offer`].
#[derive(Debug, Default)]
pub struct HttpSource {
    ingress: HttpIngress,
    status: Arc<ConnectionStatus>,
}

impl HttpSource {
    /// A source with a fresh ingress, reporting to `status`.
    pub fn new(status: Arc<ConnectionStatus>) -> Self {
        Self {
            ingress: HttpIngress::default(),
            status,
        }
    }
}

#[async_trait]
impl Source for HttpSource {
    async fn run(
        self: Box<Self>,
        intake: Arc<dyn Intake>,
        mut acks: AckReceiver,
    ) -> Result<(), ConnectorError> {
        self.ingress.attach(intake);
        self.status.set(ConnectionState::Connected);
        while let Some(settled) = acks.recv().await {
            self.ingress.settle(&settled);
        }
        Ok(())
    }

    fn http_ingress(&self) -> Option<HttpIngress> {
        Some(self.ingress.clone())
    }
}

/// An output in an HTTP sink queue, numbered so a waiting ingest takes its own.
#[derive(Debug)]
struct Queued {
    seq: u64,
    output: Outbound,
}

#[derive(Debug, Default)]
struct OutputsInner {
    queue: Mutex<VecDeque<Queued>>,
    next: AtomicU64,
    taken: Notify,
}

/// The read side of an HTTP sink's queue, held by weir's API.
#[derive(Debug, Clone, Default)]
pub struct HttpOutputs {
    inner: Arc<OutputsInner>,
}

impl HttpOutputs {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The number the next output will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.next.load(Ordering::Acquire)
    }

    /// Outputs waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the outputs numbered `first` and later.
    pub fn take_from(&self, first: u64) -> Vec<Outbound> {
        let mut queue = self.lock();
        // The queue is in sequence order: these outputs are its tail.
        let start = queue.partition_point(|queued| queued.seq < first);
        let taken = queue.split_off(start);
        drop(queue);
        self.inner.taken.notify_waiters();
        taken.into_iter().map(|q| q.output).collect()
    }

    /// Takes up to `limit` outputs from the front.
    pub fn take_front(&self, limit: usize) -> Vec<Outbound> {
        let mut queue = self.lock();
        let take = limit.min(queue.len());
        let taken: Vec<Queued> = queue.drain(..take).collect();
        drop(queue);
        self.inner.taken.notify_waiters();
        taken.into_iter().map(|q| q.output).collect()
    }
}

/// The HTTP sink: a bounded queue read through [`HttpOutputs`].
#[derive(Debug)]
pub struct HttpSink {
    topic: String,
    outputs: HttpOutputs,
}

impl HttpSink {
    /// A sink publishing to `topic` (empty: each output's own topic), with an empty queue.
    pub fn new(topic: String) -> Self {
        Self::with_outputs(topic, HttpOutputs::default())
    }

    /// A sink filling an existing queue: the queue of a previous version of the deployment,
    /// whose outputs were acknowledged to their source already and must not be lost.
    pub fn with_outputs(topic: String, outputs: HttpOutputs) -> Self {
        Self { topic, outputs }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn send(&mut self, batch: Vec<Outbound>) -> Result<SendReport, ConnectorError> {
        for mut output in batch {
            output.topic = crate::expand_topic(&self.topic, &output.topic);
            loop {
                let taken = self.outputs.inner.taken.notified();
                {
                    let mut queue = self.outputs.lock();
                    if queue.len() < OUTPUT_QUEUE {
                        let seq = self.outputs.inner.next.fetch_add(1, Ordering::AcqRel);
                        queue.push_back(Queued { seq, output });
                        break;
                    }
                }
                taken.await;
            }
        }
        Ok(SendReport::default())
    }

    fn http_outputs(&self) -> Option<HttpOutputs> {
        Some(self.outputs.clone())
    }
}
