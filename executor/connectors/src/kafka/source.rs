//! The Kafka source: a consumer in a consumer group (classic protocol) that commits a record's
//! offset only after the deployment processed it and everything before it.
//!
//! - Offsets are stored by the source (`enable.auto.offset.store=false`) and committed by
//!   librdkafka every second, on revocation and on close. Only a partition's contiguous prefix
//!   of processed records is stored ([`Ledger`]), with the offset of the next record to read
//!   (`rd_kafka_offsets_store` stores what it is given; `store_offset` would add one).
//! - An abandoned record is never stored: its partition is read again from it.
//! - Backpressure: records wait in a small buffer while the intake refuses them; when the
//!   buffer is full the assigned partitions are paused (librdkafka then fetches nothing more
//!   and resumes from the last record handed over), and the consumer keeps being polled so it
//!   stays in its group (`max.poll.interval.ms`) and serves rebalances.
//! - Each record carries its partition's current [`PartitionAssignment`] (set on receipt),
//!   revoked with the partition: a keyed window holding records of a partition taken away
//!   drops them, since the partition's next owner (maybe this consumer again) reads them again
//!   from the committed offset, which never covers a record not yet processed.
//! - Mapping (azure-compat 4.2 and section 11 row 8): topic, value as payload, headers as user
//!   properties in order, the key as user property `__key` (last); no content type.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

use super::KafkaTarget;
use super::context::{KafkaContext, OffThreadDrop};
use super::offsets::Ledger;
use crate::ConnectorError;
#[cfg(doc)]
use crate::message::PartitionAssignment;
use crate::message::{Ack, Inbound};
use crate::source::{AckReceiver, Intake, IntakeRefusal, Settled, Source};

/// Records read from Kafka and not yet taken by the intake, before the partitions are paused.
const BUFFERED: usize = 256;

/// Most records offered to the intake at once.
const MAX_OFFER: usize = 256;

/// The user property that carries a Kafka record key (azure-compat section 11 row 8).
pub(crate) const KEY_PROPERTY: &[u8] = b"__key";

/// A running Kafka source.
#[derive(Debug)]
pub(crate) struct KafkaSource {
    pub(crate) target: KafkaTarget,
    pub(crate) topics: Vec<String>,
}

type KafkaConsumer = StreamConsumer<KafkaContext>;

#[async_trait]
impl Source for KafkaSource {
    async fn run(
        self: Box<Self>,
        intake: Arc<dyn Intake>,
        acks: AckReceiver,
    ) -> Result<(), ConnectorError> {
        if self.target.settings.create_topics {
            self.target.create_topics(&self.topics).await?;
        }
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let context = self.target.kafka_context(Some(ledger.clone()));
        self.target.room_for_a_client(&context).await;
        let config = self.target.settings.consumer_config(&self.target.context);
        let consumer: KafkaConsumer = config
            .create_with_context(context.clone())
            .await
            .map_err(|e| ConnectorError::Refused(format!("the kafka consumer: {e}")))?;
        let consumer = OffThreadDrop::new(consumer, &self.target.context.tenant);
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ConnectorError::Refused(format!("subscribing to {topics:?}: {e}")))?;
        let mut running = Running {
            consumer,
            context,
            ledger,
            intake,
            buffer: VecDeque::new(),
            max_offer: MAX_OFFER,
            waiting_for_room: false,
            paused: false,
        };
        running.run(acks).await
    }
}

struct Running {
    consumer: OffThreadDrop<KafkaConsumer>,
    context: KafkaContext,
    ledger: Arc<Mutex<Ledger>>,
    intake: Arc<dyn Intake>,
    /// Records read and not yet taken by the intake, in order.
    buffer: VecDeque<Inbound>,
    /// Most records offered at once (halved when the intake says a batch can never fit).
    max_offer: usize,
    /// The intake refused a batch as full: wait for room before offering again.
    waiting_for_room: bool,
    /// The assigned partitions are paused.
    paused: bool,
}

impl Running {
    async fn run(&mut self, mut acks: AckReceiver) -> Result<(), ConnectorError> {
        loop {
            if !self.offer() {
                return Ok(());
            }
            self.pause_or_resume();
            tokio::select! {
                biased;
                settled = acks.recv() => {
                    let Some(settled) = settled else {
                        // The deployment dropped its end: nothing more will be settled.
                        return Ok(());
                    };
                    self.settle(settled).await;
                }
                () = self.intake.room(), if self.waiting_for_room => {
                    self.waiting_for_room = false;
                }
                received = self.consumer.recv() => {
                    let first = received.map(|m| to_inbound(&m));
                    self.receive(first);
                    // Take what librdkafka already holds, without waiting.
                    for _ in 0..BUFFERED {
                        if self.buffer.len() >= BUFFERED {
                            break;
                        }
                        let next = tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await;
                        let Ok(next) = next else {
                            break;
                        };
                        let next = next.map(|m| to_inbound(&m));
                        self.receive(next);
                    }
                }
            }
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn receive(&mut self, received: Result<Inbound, KafkaError>) {
        match received {
            Ok(mut inbound) => {
                if let Ack::Kafka {
                    topic, partition, ..
                } = &inbound.ack
                {
                    inbound.assignment = self.ledger().assignment(topic, *partition);
                }
                self.buffer.push_back(inbound);
                if self.context.is_failing() {
                    self.context.set_failing(false);
                }
                if self.paused {
                    // From a partition assigned since the pause: pause it as well.
                    self.set_paused(true);
                }
            }
            Err(error) => {
                tracing::debug!(%error, "kafka consumer error");
                if let KafkaError::MessageConsumption(code) = &error {
                    if matches!(
                        code,
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    ) {
                        // Held until the group assigns partitions or a record arrives.
                        self.context.set_failing(true);
                    }
                    self.context.retrying(&format!("consuming: {code}"));
                }
            }
        }
    }

    /// Offers buffered records (as many as the intake takes). Returns false once the intake
    /// is closed.
    fn offer(&mut self) -> bool {
        // Records of partitions taken away since they were read go to their next owner.
        {
            let ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            self.buffer.retain(|m| match &m.ack {
                Ack::Kafka {
                    topic, partition, ..
                } => {
                    ledger.is_assigned(topic, *partition)
                        && m.assignment.as_ref().is_none_or(|a| !a.is_revoked())
                }
                _ => false,
            });
        }
        while !self.buffer.is_empty() && !self.waiting_for_room {
            let count = self.buffer.len().min(self.max_offer);
            let batch: Vec<Inbound> = self.buffer.iter().take(count).cloned().collect();
            match self.intake.try_offer(batch) {
                Ok(()) => {
                    let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                    for message in self.buffer.drain(..count) {
                        if let Ack::Kafka {
                            topic,
                            partition,
                            offset,
                        } = &message.ack
                        {
                            ledger.offered(topic, *partition, *offset);
                        }
                    }
                }
                Err(IntakeRefusal::Full(_)) => self.waiting_for_room = true,
                Err(IntakeRefusal::TooLarge(why)) => {
                    if count > 1 {
                        self.max_offer = count / 2;
                    } else if let Some(message) = self.buffer.pop_front() {
                        // One record the deployment can never take: it is skipped (committed
                        // as if processed) rather than holding its partition up for good.
                        tracing::warn!(ack = ?message.ack, why, "a kafka record can never fit the deployment's intake; skipped");
                        self.skip(&message);
                    }
                }
                Err(IntakeRefusal::Closed) => return false,
            }
        }
        true
    }

    fn skip(&self, message: &Inbound) {
        if let Ack::Kafka {
            topic,
            partition,
            offset,
        } = &message.ack
        {
            let next = {
                let mut ledger = self.ledger();
                ledger.offered(topic, *partition, *offset);
                ledger.processed(topic, *partition, *offset)
            };
            if let Some(next) = next {
                self.store(topic, *partition, next);
            }
        }
    }

    /// Pauses the assignment while the buffer is full, resumes it once there is room.
    fn pause_or_resume(&mut self) {
        let want_paused = self.buffer.len() >= BUFFERED;
        if want_paused != self.paused {
            self.set_paused(want_paused);
        }
    }

    /// Pauses (or resumes) every partition assigned now.
    fn set_paused(&mut self, want_paused: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::debug!(%error, "reading the kafka assignment");
                return;
            }
        };
        let result = if want_paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => self.paused = want_paused,
            Err(error) => {
                tracing::debug!(%error, want_paused, "pausing or resuming kafka partitions")
            }
        }
    }

    async fn settle(&mut self, settled: Settled) {
        match settled {
            Settled::Processed(Ack::Kafka {
                topic,
                partition,
                offset,
            }) => {
                let next = self.ledger().processed(&topic, partition, offset);
                if let Some(next) = next {
                    self.store(&topic, partition, next);
                }
            }
            Settled::Abandoned(Ack::Kafka {
                topic,
                partition,
                offset,
            }) => {
                let assigned = self.ledger().abandoned(&topic, partition, offset);
                if assigned {
                    // Read it again (and everything after it): what was read after it is
                    // dropped, and nothing from it on is committed.
                    self.buffer.retain(|m| {
                        !matches!(&m.ack, Ack::Kafka { topic: t, partition: p, offset: o }
                            if *t == topic && *p == partition && *o >= offset)
                    });
                    let seek = self
                        .consumer
                        .seek(
                            &topic,
                            partition,
                            Offset::Offset(offset),
                            Timeout::After(Duration::ZERO),
                        )
                        .await;
                    if let Err(error) = seek {
                        tracing::debug!(%error, topic, partition, offset, "seeking back to an abandoned kafka record");
                    }
                }
            }
            Settled::Processed(_) | Settled::Abandoned(_) => {}
        }
    }

    /// Stores `next` as the offset to commit for the partition (librdkafka commits it within a
    /// second). A partition no longer assigned refuses it: its records are read again.
    fn store(&self, topic: &str, partition: i32, next: i64) {
        let mut offsets = TopicPartitionList::new();
        if let Err(error) = offsets.add_partition_offset(topic, partition, Offset::Offset(next)) {
            tracing::debug!(%error, "an offset to store");
            return;
        }
        if let Err(error) = self.consumer.store_offsets(&offsets) {
            tracing::debug!(%error, topic, partition, next, "storing a kafka offset (the partition was revoked)");
        }
    }
}

/// A record as the deployment receives it.
fn to_inbound(message: &BorrowedMessage<'_>) -> Inbound {
    let mut user_properties = Vec::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            user_properties.push((
                Bytes::copy_from_slice(header.key.as_bytes()),
                header.value.map(Bytes::copy_from_slice).unwrap_or_default(),
            ));
        }
    }
    if let Some(key) = message.key() {
        user_properties.push((
            Bytes::from_static(KEY_PROPERTY),
            Bytes::copy_from_slice(key),
        ));
    }
    Inbound {
        topic: Bytes::copy_from_slice(message.topic().as_bytes()),
        payload: message
            .payload()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        content_type: None,
        user_properties,
        ack: Ack::Kafka {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        },
        assignment: None,
    }
}
