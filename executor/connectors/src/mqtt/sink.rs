//! The MQTT sink: publishes a batch and returns once the broker acknowledged every QoS 1
//! publish of it (PUBACK), keeping each output until then and publishing it again on every new
//! connection; QoS 0 outputs count once written.
//!
//! Publishes go through rumqttc's `try_publish` within a window the sink keeps itself (at most
//! the broker's Receive Maximum, and [`WINDOW`]): `publish().await` would block once rumqttc's
//! request channel is full, also while disconnected (rumqttc#910). The sink connects with a
//! clean start: its unacknowledged outputs are its own state, not the broker's, and a new
//! session (session_present false) makes rumqttc drop what it had pending (rumqttc#863), so
//! the sink publishes them again itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, Publish, PublishProperties};

use super::config::{MAX_PACKET, MqttEndpoint, check_topic_name};
use super::connection::{Connection, Event, Plan};
use crate::ConnectorError;
use crate::message::{Outbound, expand_topic};
use crate::sink::{Rejection, SendReport, Sink};
use crate::spec::ConnectContext;

/// Most QoS 1 publishes of a sink awaiting their PUBACK.
pub const WINDOW: u16 = 100;
/// How long a sink waits before publishing again an output the broker refused for now.
const REFUSED_FOR_NOW: Duration = Duration::from_secs(1);

/// A sink publishing to one MQTT v5 broker.
#[derive(Debug)]
pub struct MqttSink {
    endpoint: Arc<MqttEndpoint>,
    topic: String,
    context: ConnectContext,
    connection: Option<Connection>,
    current: Option<Current>,
    /// Numbers `send` calls, so that events about a call that was cancelled are told apart.
    call: u64,
    /// Publishes handed to rumqttc on the current connection, awaiting their `Sent` event
    /// (which tells their packet id), in order: (call, index in its batch).
    unsent_ids: VecDeque<(u64, usize)>,
    /// QoS 1 publishes awaiting their PUBACK on the current connection, by packet id.
    in_flight: HashMap<u16, (u64, usize)>,
}

/// The connection the sink publishes on now.
#[derive(Debug)]
struct Current {
    generation: u64,
    client: AsyncClient,
    window: usize,
    max_packet: u32,
}

impl MqttSink {
    pub(crate) fn new(endpoint: MqttEndpoint, topic: String, context: ConnectContext) -> Self {
        Self {
            endpoint: Arc::new(endpoint),
            topic,
            context,
            connection: None,
            current: None,
            call: 0,
            unsent_ids: VecDeque::new(),
            in_flight: HashMap::new(),
        }
    }

    fn qos(&self) -> QoS {
        if self.endpoint.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }
}

/// Where an output of a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// To publish (again) on the current connection.
    Unsent,
    /// Handed to rumqttc on the current connection.
    Sent,
    /// Acknowledged (QoS 1) or written (QoS 0), or rejected.
    Finished,
}

#[derive(Debug)]
struct Record {
    topic: String,
    payload: Bytes,
    properties: PublishProperties,
    state: State,
}

/// Turns an output into a publish, or the reason it can never be one.
fn prepare(template: &str, output: Outbound) -> Result<Record, (&'static str, String)> {
    let topic = expand_topic(template, &output.topic);
    let topic = String::from_utf8(topic.to_vec())
        .map_err(|_| ("invalid_topic", "the topic is not UTF-8".to_owned()))?;
    check_topic_name(&topic).map_err(|why| ("invalid_topic", format!("topic {topic:?}: {why}")))?;
    let text = |bytes: Bytes, what: &str| {
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            (
                "invalid_user_property",
                format!("{what} is not UTF-8 (MQTT v5 carries UTF-8 strings)"),
            )
        })
    };
    let content_type = match output.content_type {
        Some(ct) => Some(text(ct, "the content type")?),
        None => None,
    };
    let user_properties = output
        .user_properties
        .into_iter()
        .map(|(k, v)| {
            Ok((
                text(k, "a user property name")?,
                text(v, "a user property value")?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Record {
        topic,
        payload: output.payload,
        properties: PublishProperties {
            content_type,
            user_properties,
            ..PublishProperties::default()
        },
        state: State::Unsent,
    })
}

/// Whether the broker refused a publish for good (MQTT v5 §3.4.2.1): it goes to the dead
/// letters. Other refusals (quota, unspecified errors) are tried again.
fn refused_for_good(reason: &PubAckReason) -> Option<&'static str> {
    match reason {
        PubAckReason::NotAuthorized => Some("not_authorized"),
        PubAckReason::TopicNameInvalid => Some("invalid_topic"),
        PubAckReason::PayloadFormatInvalid => Some("invalid_payload_format"),
        _ => None,
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn send(&mut self, batch: Vec<Outbound>) -> Result<SendReport, ConnectorError> {
        self.call += 1;
        let call = self.call;
        let qos = self.qos();
        let mut report = SendReport::default();
        let mut records: Vec<Record> = Vec::with_capacity(batch.len());
        for (index, output) in batch.into_iter().enumerate() {
            match prepare(&self.topic, output) {
                Ok(record) => records.push(record),
                Err((reason, detail)) => {
                    report.rejected.push(Rejection {
                        index,
                        reason: reason.to_owned(),
                        detail,
                    });
                    records.push(Record {
                        topic: String::new(),
                        payload: Bytes::new(),
                        properties: PublishProperties::default(),
                        state: State::Finished,
                    });
                }
            }
        }
        let mut left = records
            .iter()
            .filter(|r| r.state != State::Finished)
            .count();
        if left == 0 {
            return Ok(report);
        }
        if self.connection.is_none() {
            let client_id = self
                .endpoint
                .client_id
                .clone()
                .unwrap_or_else(|| sink_client_id(&self.context.client_id));
            self.connection = Some(Connection::start(Plan {
                endpoint: self.endpoint.clone(),
                context: self.context.clone(),
                client_id,
                persistent: false,
                manual_acks: false,
                outgoing_in_flight: WINDOW,
                capacity: usize::from(WINDOW) * 2 + 64,
                await_suback: false,
            }));
        }
        let mut next = 0usize;
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            // Publish what the window allows.
            if let Some(current) = &self.current
                && paused_until.is_none_or(|t| t <= tokio::time::Instant::now())
            {
                paused_until = None;
                while self.unsent_ids.len() + self.in_flight.len() < current.window {
                    let Some(index) = (next..records.len())
                        .find(|&i| records.get(i).is_some_and(|r| r.state == State::Unsent))
                    else {
                        break;
                    };
                    next = index + 1;
                    let Some(record) = records.get_mut(index) else {
                        break;
                    };
                    let mut publish = Publish::new(
                        record.topic.as_str(),
                        qos,
                        record.payload.clone(),
                        Some(record.properties.clone()),
                    );
                    publish.pkid = 1;
                    let size = publish.size();
                    if size > current.max_packet as usize {
                        report.rejected.push(Rejection {
                            index,
                            reason: "message_too_large".to_owned(),
                            detail: format!(
                                "{size} bytes; the broker takes packets of at most {} bytes",
                                current.max_packet
                            ),
                        });
                        record.state = State::Finished;
                        left -= 1;
                        continue;
                    }
                    let sent = current.client.try_publish_with_properties(
                        record.topic.as_str(),
                        qos,
                        false,
                        record.payload.clone(),
                        record.properties.clone(),
                    );
                    if sent.is_err() {
                        // The connection is going (its Lost event follows) or its channel is
                        // full: the record stays unsent.
                        next = index;
                        break;
                    }
                    record.state = State::Sent;
                    self.unsent_ids.push_back((call, index));
                }
            }
            if left == 0 {
                report.rejected.sort_by_key(|r| r.index);
                return Ok(report);
            }

            let Some(connection) = self.connection.as_mut() else {
                return Err(ConnectorError::Closed);
            };
            let event = tokio::select! {
                event = connection.events.recv() => event,
                () = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)), if paused_until.is_some() => continue,
            };
            let generation_now = self.current.as_ref().map(|c| c.generation);
            match event {
                None => return Err(ConnectorError::Closed),
                Some(Event::Connected {
                    generation,
                    client,
                    receive_maximum,
                    max_packet,
                    ..
                }) => {
                    // A new connection (always a new session): everything not acknowledged
                    // is published again on it.
                    self.unsent_ids.clear();
                    self.in_flight.clear();
                    for record in &mut records {
                        if record.state == State::Sent {
                            record.state = State::Unsent;
                        }
                    }
                    next = 0;
                    self.current = Some(Current {
                        generation,
                        client,
                        window: usize::from(receive_maximum.clamp(1, WINDOW)),
                        max_packet: max_packet.unwrap_or(MAX_PACKET),
                    });
                }
                Some(Event::Lost { generation }) => {
                    if generation_now == Some(generation) {
                        self.current = None;
                    }
                }
                Some(Event::Sent {
                    generation,
                    packet_id,
                }) if generation_now == Some(generation) => {
                    let Some((of_call, index)) = self.unsent_ids.pop_front() else {
                        continue;
                    };
                    if qos == QoS::AtMostOnce {
                        if of_call == call
                            && let Some(record) = records.get_mut(index)
                            && record.state == State::Sent
                        {
                            record.state = State::Finished;
                            left -= 1;
                        }
                    } else {
                        self.in_flight.insert(packet_id, (of_call, index));
                    }
                }
                Some(Event::PubAck {
                    generation,
                    packet_id,
                    reason,
                    reason_string,
                }) if generation_now == Some(generation) => {
                    let Some((of_call, index)) = self.in_flight.remove(&packet_id) else {
                        continue;
                    };
                    if of_call != call {
                        continue;
                    }
                    let Some(record) = records.get_mut(index) else {
                        continue;
                    };
                    if record.state != State::Sent {
                        continue;
                    }
                    match reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            record.state = State::Finished;
                            left -= 1;
                        }
                        ref other => {
                            if let Some(code) = refused_for_good(other) {
                                report.rejected.push(Rejection {
                                    index,
                                    reason: code.to_owned(),
                                    detail: format!(
                                        "the broker refused the publish: {other:?}{}",
                                        reason_string
                                            .map(|s| format!(" ({s})"))
                                            .unwrap_or_default()
                                    ),
                                });
                                record.state = State::Finished;
                                left -= 1;
                            } else {
                                tracing::debug!(
                                    ?other,
                                    "mqtt publish refused for now; publishing again"
                                );
                                record.state = State::Unsent;
                                next = next.min(index);
                                paused_until = Some(tokio::time::Instant::now() + REFUSED_FOR_NOW);
                            }
                        }
                    }
                }
                Some(Event::Collision { generation }) if generation_now == Some(generation) => {
                    // rumqttc holds a publish back until a packet id is acknowledged that
                    // may never be (a wedge, rumqttc#1014): a new connection instead.
                    connection.rebuild();
                }
                Some(Event::Refused { error }) => return Err(ConnectorError::Refused(error)),
                Some(
                    Event::Sent { .. }
                    | Event::PubAck { .. }
                    | Event::Collision { .. }
                    | Event::Publish { .. }
                    | Event::SubAck { .. }
                    | Event::UnsubAck { .. },
                ) => {}
            }
        }
    }
}

/// The sink's client id beside its source's `id`: `-sink` added to the name, before an
/// `@<tenant>` suffix (the embedded broker requires client ids to end in `@<tenant>`).
fn sink_client_id(id: &str) -> String {
    match id.rsplit_once('@') {
        Some((name, tenant)) => format!("{name}-sink@{tenant}"),
        None => format!("{id}-sink"),
    }
}
