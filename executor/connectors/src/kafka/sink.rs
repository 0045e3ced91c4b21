//! The Kafka sink: the idempotent producer (unless the endpoint turns idempotence off).
//!
//! `send` enqueues the whole batch and returns only after every record's delivery report
//! (rust-rdkafka #518): each record is then either acknowledged by the broker, refused for good
//! (a [`Rejection`]: too large, an invalid topic or record, not authorised), or sent again
//! with backoff while the status says `Retrying` (the broker unreachable, a delivery timeout,
//! a topic that does not exist yet). Mapping (azure-compat section 11 rows 8 and 11): user
//! properties become headers in order, except `__key`, which becomes the record key.

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::collections::HashSet;

use super::config::topic_problem;
use super::context::{KafkaContext, OffThreadDrop};
use super::source::KEY_PROPERTY;
use super::{Backoff, KafkaTarget};
use crate::ConnectorError;
use crate::message::Outbound;
use crate::sink::{Rejection, SendReport, Sink};

/// Failed attempts of one batch after which the producer is replaced.
const REPLACE_AFTER_ATTEMPTS: u32 = 2;

/// Most topics remembered as created (a binding with `${outputTopic}` may write to many).
const MAX_CREATED_TOPICS: usize = 4096;

/// A running Kafka sink.
#[derive(Debug)]
pub(crate) struct KafkaSink {
    pub(crate) target: KafkaTarget,
    /// The context of its clients (status and egress).
    pub(crate) context: KafkaContext,
    /// The binding's topic template.
    pub(crate) topic: String,
    pub(crate) producer: Option<OffThreadDrop<FutureProducer<KafkaContext>>>,
    /// Topics this sink created or found, when the endpoint creates topics.
    pub(crate) created: HashSet<String>,
}

/// An output ready to produce.
#[derive(Debug, Clone)]
struct Record {
    index: usize,
    topic: String,
    key: Option<Bytes>,
    payload: Bytes,
    headers: OwnedHeaders,
}

/// Why a delivery failed: for good (a rejection) or for now (sent again).
enum Failure {
    Rejected {
        reason: &'static str,
        detail: String,
    },
    Transient {
        detail: String,
        fatal: bool,
    },
}

impl KafkaSink {
    async fn producer(&mut self) -> Result<FutureProducer<KafkaContext>, ConnectorError> {
        if let Some(producer) = &self.producer {
            return Ok((**producer).clone());
        }
        self.target.room_for_a_client(&self.context).await;
        let config = self.target.settings.producer_config(&self.target.context);
        let producer: FutureProducer<KafkaContext> = config
            .create_with_context(self.context.clone())
            .await
            .map_err(|e| ConnectorError::Refused(format!("the kafka producer: {e}")))?;
        self.producer = Some(OffThreadDrop::new(
            producer.clone(),
            &self.target.context.tenant,
        ));
        Ok(producer)
    }

    /// How long delivery reports may take: librdkafka fails a record after
    /// `message.timeout.ms` (the read timeout), so a report later than that is not coming.
    fn report_wait(&self) -> std::time::Duration {
        self.target
            .context
            .read_timeout
            .max(std::time::Duration::from_secs(1))
            + std::time::Duration::from_secs(5)
    }

    /// Turns an output into a record, or says why it can never be produced.
    fn prepare(&self, index: usize, output: Outbound) -> Result<Record, Rejection> {
        let reject = |reason: &str, detail: String| Rejection {
            index,
            reason: reason.to_owned(),
            detail,
        };
        let topic = crate::expand_topic(&self.topic, &output.topic);
        let topic = String::from_utf8(topic.to_vec())
            .map_err(|_| reject("invalid_topic", "the topic is not UTF-8".to_owned()))?;
        if let Some(problem) = topic_problem(&topic) {
            return Err(reject("invalid_topic", format!("{topic:?}: {problem}")));
        }
        let mut key = None;
        let mut headers = OwnedHeaders::new_with_capacity(output.user_properties.len());
        let mut size = topic.len() + output.payload.len();
        for (name, value) in &output.user_properties {
            size += name.len() + value.len();
            if name.as_ref() == KEY_PROPERTY {
                key.get_or_insert_with(|| value.clone());
                continue;
            }
            let name = std::str::from_utf8(name).map_err(|_| {
                reject(
                    "invalid_user_property",
                    "a Kafka header name must be UTF-8".to_owned(),
                )
            })?;
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_ref()),
            });
        }
        let limit = self.target.context.max_message_bytes;
        if size as u64 > limit {
            return Err(reject(
                "message_too_large",
                format!("{size} bytes; the most a message may have is {limit}"),
            ));
        }
        Ok(Record {
            index,
            topic,
            key,
            payload: output.payload,
            headers,
        })
    }

    async fn create_topics(&mut self, records: &[Record]) -> Result<(), ConnectorError> {
        let mut missing: Vec<String> = records
            .iter()
            .filter(|r| !self.created.contains(&r.topic))
            .map(|r| r.topic.clone())
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        self.target.create_topics(&missing).await?;
        if self.created.len() + missing.len() > MAX_CREATED_TOPICS {
            self.created.clear();
        }
        self.created.extend(missing);
        Ok(())
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn send(&mut self, batch: Vec<Outbound>) -> Result<SendReport, ConnectorError> {
        let mut report = SendReport::default();
        let mut records = Vec::with_capacity(batch.len());
        for (index, output) in batch.into_iter().enumerate() {
            match self.prepare(index, output) {
                Ok(record) => records.push(record),
                Err(rejection) => report.rejected.push(rejection),
            }
        }
        if self.target.settings.create_topics {
            self.create_topics(&records).await?;
        }
        let mut backoff = Backoff::default();
        let mut failed_attempts = 0_u32;
        while !records.is_empty() {
            let producer = self.producer().await?;
            let mut deliveries: Vec<(Record, Option<DeliveryFuture>, Option<Failure>)> =
                Vec::with_capacity(records.len());
            for record in records.drain(..) {
                let mut future_record = FutureRecord::to(&record.topic)
                    .payload(record.payload.as_ref())
                    .headers(record.headers.clone());
                if let Some(key) = &record.key {
                    future_record = future_record.key(key.as_ref());
                }
                match producer.send_result(future_record) {
                    Ok(delivery) => deliveries.push((record, Some(delivery), None)),
                    Err((error, _)) => {
                        let failure = classify(&error, &record.topic);
                        deliveries.push((record, None, Some(failure)));
                    }
                }
            }
            // Only the sink's own handle keeps the producer, so replacing it closes the
            // producer on a thread of its own, never here.
            drop(producer);
            // Every delivery report is awaited before anything is reported accepted. A report
            // comes within `message.timeout.ms`; one that does not (a producer wedged by a
            // fatal error keeps its queue: librdkafka #518) counts as a failure and the
            // producer is replaced.
            let reports_due = tokio::time::Instant::now() + self.report_wait();
            let mut again = Vec::new();
            let mut last_error = None;
            let mut fatal = false;
            for (record, delivery, failure) in deliveries {
                let failure = match (delivery, failure) {
                    (Some(delivery), _) => {
                        match tokio::time::timeout_at(reports_due, delivery).await {
                            Ok(Ok(Ok(_))) => None,
                            Ok(Ok(Err((error, _)))) => Some(classify(&error, &record.topic)),
                            Ok(Err(_canceled)) => Some(Failure::Transient {
                                detail: "the kafka producer stopped".to_owned(),
                                fatal: true,
                            }),
                            Err(_late) => Some(Failure::Transient {
                                detail: format!(
                                    "no delivery report for {} within {:?}",
                                    record.topic,
                                    self.report_wait()
                                ),
                                fatal: true,
                            }),
                        }
                    }
                    (None, failure) => failure,
                };
                match failure {
                    None => {}
                    Some(Failure::Rejected { reason, detail }) => report.rejected.push(Rejection {
                        index: record.index,
                        reason: reason.to_owned(),
                        detail,
                    }),
                    Some(Failure::Transient {
                        detail,
                        fatal: is_fatal,
                    }) => {
                        fatal |= is_fatal;
                        last_error = Some(detail);
                        again.push(record);
                    }
                }
            }
            if again.is_empty() {
                self.context.set_failing(false);
                self.context.connected();
                break;
            }
            let detail = last_error.unwrap_or_default();
            tracing::debug!(
                records = again.len(),
                detail,
                "kafka deliveries failed; sending again"
            );
            self.context.set_failing(true);
            self.context.retrying(&detail);
            failed_attempts += 1;
            if fatal || self.context.take_fatal() || failed_attempts >= REPLACE_AFTER_ATTEMPTS {
                // An idempotent producer with a fatal error (fenced, out of sequence) produces
                // nothing more, and one that delivered nothing for several attempts may hold
                // producer state the broker lost (a restarted broker): start anew. Its
                // undelivered records are purged as it closes.
                self.producer = None;
                failed_attempts = 0;
            }
            records = again;
            backoff.wait().await;
        }
        report.rejected.sort_by_key(|r| r.index);
        Ok(report)
    }
}

/// Whether a failed delivery can ever succeed as it is.
fn classify(error: &KafkaError, topic: &str) -> Failure {
    let code = error.rdkafka_error_code();
    let rejected = |reason: &'static str| Failure::Rejected {
        reason,
        detail: format!("{topic}: {error}"),
    };
    match code {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge) => {
            rejected("message_too_large")
        }
        Some(RDKafkaErrorCode::InvalidTopic) => rejected("invalid_topic"),
        Some(
            RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::PolicyViolation,
        ) => rejected("invalid_record"),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => rejected("not_authorized"),
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
            Failure::Transient {
                detail: format!("topic {topic} does not exist (create_topics is off)"),
                fatal: false,
            }
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => Failure::Transient {
            detail: format!("the broker did not acknowledge records for {topic} in time"),
            fatal: false,
        },
        Some(
            RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::InvalidProducerIdMapping,
        ) => Failure::Transient {
            detail: format!("the producer failed: {error}"),
            fatal: true,
        },
        _ => Failure::Transient {
            detail: format!("{topic}: {error}"),
            fatal: false,
        },
    }
}
