//! The MQTT source: subscribes, offers each message to the deployment's intake, and sends the
//! PUBACK of a QoS 1 message only once the executor settled it as processed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, RetainForwardRule, SubscribeReasonCode};

use super::config::MqttEndpoint;
use super::connection::{Connection, Event, Plan};
use crate::ConnectorError;
use crate::message::{Ack, Inbound};
use crate::source::{AckReceiver, Intake, IntakeRefusal, Settled, Source};
use crate::spec::ConnectContext;
use crate::status::ConnectionState;

/// Messages a source holds for its intake (with [`HOLD_BYTES`]) before it stops reading.
const HOLD_MESSAGES: usize = 1024;
/// Bytes of messages a source holds for its intake before it stops reading.
const HOLD_BYTES: u64 = 64 << 20;
/// How often PUBACKs that did not fit rumqttc's request channel are tried again.
const ACK_RETRY: Duration = Duration::from_millis(10);
/// How long a retiring source must have received and acknowledged nothing before it ends its
/// session. Messages the broker queued for the session before the UNSUBSCRIBE arrive as
/// acknowledgements free its in-flight window, a round trip each; this waits many of those.
const RETIRE_QUIET: Duration = Duration::from_millis(500);

/// A source reading topic filters from one MQTT v5 broker.
#[derive(Debug)]
pub struct MqttSource {
    endpoint: Arc<MqttEndpoint>,
    filters: Vec<String>,
    context: ConnectContext,
}

impl MqttSource {
    pub(crate) fn new(
        endpoint: MqttEndpoint,
        filters: Vec<String>,
        context: ConnectContext,
    ) -> Self {
        let filters = match &context.share_group {
            Some(group) => filters
                .iter()
                .map(|filter| shared_filter(group, filter))
                .collect(),
            None => filters,
        };
        Self {
            endpoint: Arc::new(endpoint),
            filters,
            context,
        }
    }
}

/// `filter` as a member of the shared subscription `group` subscribes it:
/// `$share/<group>/<filter>` (MQTT 5.0 §4.8.2), so the broker gives each message to one member.
/// A share name holds no `/`, `+` or `#` (each becomes `_`); a filter that is a shared one
/// already is kept as written.
fn shared_filter(group: &str, filter: &str) -> String {
    if filter.starts_with("$share/") {
        return filter.to_owned();
    }
    let name: String = group
        .chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
        .collect();
    format!("$share/{name}/{filter}")
}

/// The message a PUBACK answers: rumqttc builds the PUBACK from the packet id and QoS only.
fn ack_of(packet_id: u16) -> Publish {
    let mut publish = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
    publish.pkid = packet_id;
    publish
}

/// An incoming PUBLISH as the deployment sees it (azure-compat 4.2): topic, payload, content
/// type, user properties in order with duplicates (`__ts` among them).
fn inbound(publish: Publish, ack: Ack) -> Inbound {
    let (content_type, user_properties) = match publish.properties {
        Some(properties) => (
            properties.content_type.map(Bytes::from),
            properties
                .user_properties
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect(),
        ),
        None => (None, Vec::new()),
    };
    Inbound {
        topic: publish.topic,
        payload: publish.payload,
        content_type,
        user_properties,
        ack,
        assignment: None,
    }
}

/// The connection the source is on now.
struct Current {
    generation: u64,
    client: AsyncClient,
}

/// Where a retiring source stands (see [`MqttSource::ends_session_on_retire`]).
#[derive(Debug)]
struct Retiring {
    /// The connection its UNSUBSCRIBEs went out on, if any yet.
    generation: Option<u64>,
    /// UNSUBACKs still to come on that connection.
    unsubacks_left: usize,
    /// The last input or acknowledgement: the session is ended [`RETIRE_QUIET`] after it.
    last_activity: tokio::time::Instant,
    /// The connection a DISCONNECT went out on, and how long the broker has to close it.
    disconnecting: Option<(u64, tokio::time::Instant)>,
    /// A message arrived after that DISCONNECT was asked for: the session keeps it, so the
    /// source connects again and finishes it rather than end the session.
    late: bool,
}

impl Retiring {
    /// Unsubscribes every filter on `now`; false when rumqttc's request channel is full (then
    /// the connection is rebuilt and the next one unsubscribes).
    fn unsubscribe(&mut self, now: &Current, filters: &[Filter]) -> bool {
        self.generation = Some(now.generation);
        self.disconnecting = None;
        self.late = false;
        self.unsubacks_left = filters.len();
        self.last_activity = tokio::time::Instant::now();
        filters
            .iter()
            .all(|filter| now.client.try_unsubscribe(filter.path.clone()).is_ok())
    }

    /// Whether the broker took every UNSUBSCRIBE on the connection `current` is.
    fn unsubscribed(&self, current: Option<&Current>) -> bool {
        current.is_some_and(|c| self.generation == Some(c.generation)) && self.unsubacks_left == 0
    }
}

#[async_trait]
impl Source for MqttSource {
    /// Retiring, the source unsubscribes its filters (the broker stops choosing it among the
    /// members of its shared subscription, or stops queueing for it), goes on offering what
    /// still arrives (messages the broker queued for the session before the UNSUBSCRIBE come
    /// as acknowledgements free the in-flight window), and once every message it took is
    /// settled and acknowledged and nothing arrived for [`RETIRE_QUIET`], disconnects and ends
    /// the session: rumqttc cannot set a DISCONNECT's session expiry, so a connection with
    /// Clean Start under the same client id discards it (MQTT 5.0 §3.1.2.4), and with a
    /// session expiry of 0 its own ends as it closes.
    fn ends_session_on_retire(&self) -> bool {
        true
    }

    async fn run(
        self: Box<Self>,
        intake: Arc<dyn Intake>,
        mut acks: AckReceiver,
    ) -> Result<(), ConnectorError> {
        // Messages received and not yet taken by the intake. Receive Maximum should keep QoS 1
        // messages to `receive_maximum`, but brokers overrun it (Mosquitto 2.0.11 had over a
        // thousand unacknowledged in flight with 100 under a steady publish rate) and QoS 0 has
        // no such bound; past these limits the source stops reading, which holds the broker back
        // through TCP. The source keeps reading below them, so the connection task is never
        // stuck behind a slow deployment and a lost connection shows in the status at once.
        let hold_limit = (usize::from(self.endpoint.receive_maximum) * 4).max(HOLD_MESSAGES);
        let qos = if self.endpoint.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let client_id = self
            .endpoint
            .client_id
            .clone()
            .unwrap_or_else(|| self.context.client_id.clone());
        let plan = Plan {
            endpoint: self.endpoint.clone(),
            context: self.context.clone(),
            client_id,
            persistent: !self.endpoint.clean_start,
            manual_acks: true,
            outgoing_in_flight: 1,
            capacity: hold_limit + 64,
            // Connected once the subscription is acknowledged: the scheduler retires a
            // scaled-away sibling only when the instances taking over read their input.
            await_suback: true,
        };
        let mut connection = Connection::start(plan.clone());
        let filters: Vec<Filter> = self
            .filters
            .iter()
            .map(|path| Filter {
                path: path.clone(),
                qos,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnNewSubscribe,
            })
            .collect();
        let status = self.context.status.clone();
        let mut retire = self.context.retire.clone();

        let mut current: Option<Current> = None;
        let mut held: VecDeque<Inbound> = VecDeque::new();
        let mut held_bytes = 0u64;
        let mut unsent_acks: VecDeque<u16> = VecDeque::new();
        let mut sequence = 0u64;
        let mut oversize_warned = false;
        // Messages the intake took and has not settled yet.
        let mut offered = 0usize;
        let mut retiring: Option<Retiring> = None;

        loop {
            // Offer what is held, one message at a time (a batch is all or nothing).
            let mut waiting_for_room = false;
            while let Some(message) = held.front() {
                match intake.try_offer(vec![message.clone()]) {
                    Ok(()) => {
                        offered += 1;
                        if let Some(taken) = held.pop_front() {
                            held_bytes = held_bytes.saturating_sub(taken.byte_len());
                        }
                    }
                    Err(IntakeRefusal::Full(_)) => {
                        waiting_for_room = true;
                        break;
                    }
                    Err(IntakeRefusal::TooLarge(why)) => {
                        // One message the intake can never take: the executor dead-letters
                        // oversize messages before offering, so this should not happen. It is
                        // held (never dropped) and offered again.
                        if !oversize_warned {
                            tracing::warn!(topic = ?message.topic, %why, "an MQTT message the intake refuses as too large");
                            oversize_warned = true;
                        }
                        waiting_for_room = true;
                        break;
                    }
                    Err(IntakeRefusal::Closed) => return Ok(()),
                }
            }
            // Retiring, and everything taken is settled and acknowledged: the session ends once
            // nothing arrived for a while.
            let finished = retiring.as_ref().filter(|r| {
                r.disconnecting.is_none()
                    && r.unsubscribed(current.as_ref())
                    && held.is_empty()
                    && offered == 0
                    && unsent_acks.is_empty()
            });
            let quiet_at = finished.map(|r| r.last_activity + RETIRE_QUIET);
            let closing_by = retiring
                .as_ref()
                .and_then(|r| r.disconnecting)
                .map(|(_, by)| by);

            tokio::select! {
                settled = acks.recv() => match settled {
                    None => return Ok(()),
                    Some(Settled::Processed(Ack::Mqtt { generation, packet_id })) => {
                        offered = offered.saturating_sub(1);
                        if let Some(retiring) = &mut retiring {
                            retiring.last_activity = tokio::time::Instant::now();
                        }
                        // An ack for an older connection would acknowledge another message
                        // under a reused packet id: dropped, the broker sends it again.
                        if let Some(now) = &current
                            && now.generation == generation
                            && now.client.try_ack(&ack_of(packet_id)).is_err()
                        {
                            unsent_acks.push_back(packet_id);
                        }
                    }
                    // QoS 0 needs no ack; an abandoned message is not acknowledged, so the
                    // broker delivers it again on the next connection of this session.
                    Some(Settled::Processed(_) | Settled::Abandoned(_)) => {
                        offered = offered.saturating_sub(1);
                    }
                },
                () = retire.retired(), if retiring.is_none() => {
                    tracing::debug!(client_id = %plan.client_id, "mqtt source retiring: unsubscribing");
                    let mut state = Retiring {
                        generation: None,
                        unsubacks_left: 0,
                        last_activity: tokio::time::Instant::now(),
                        disconnecting: None,
                        late: false,
                    };
                    if let Some(now) = &current
                        && !state.unsubscribe(now, &filters)
                    {
                        connection.rebuild();
                    }
                    retiring = Some(state);
                }
                () = tokio::time::sleep_until(quiet_at.unwrap_or_else(tokio::time::Instant::now)), if quiet_at.is_some() => {
                    // Everything settled and quiet: DISCONNECT, after every PUBACK queued
                    // before it (rumqttc sends requests in order); the session ends once the
                    // broker closed this connection with nothing more sent.
                    if let (Some(retiring), Some(now)) = (&mut retiring, &current) {
                        if now.client.try_disconnect().is_ok() {
                            retiring.disconnecting = Some((
                                now.generation,
                                tokio::time::Instant::now() + plan.context.connect_timeout,
                            ));
                            retiring.late = false;
                        } else {
                            retiring.last_activity = tokio::time::Instant::now();
                        }
                    }
                }
                () = tokio::time::sleep_until(closing_by.unwrap_or_else(tokio::time::Instant::now)), if closing_by.is_some() => {
                    // The broker did not close the connection in time.
                    if retiring.as_ref().is_some_and(|r| !r.late) {
                        end_session(connection, &plan).await;
                        return Ok(());
                    }
                    if let Some(retiring) = &mut retiring {
                        retiring.disconnecting = None;
                    }
                    connection.rebuild();
                }
                event = connection.events.recv(), if held.len() < hold_limit && held_bytes < HOLD_BYTES => match event {
                    None => return Err(ConnectorError::Closed),
                    Some(Event::Connected { generation, client, session_present, .. }) => {
                        unsent_acks.clear();
                        let now = Current { generation, client };
                        tracing::debug!(generation, session_present, retiring = retiring.is_some(), "mqtt source connected");
                        if let Some(retiring) = &mut retiring {
                            // Still in the session's shared subscription: out of it first.
                            if !retiring.unsubscribe(&now, &filters) {
                                connection.rebuild();
                            }
                        } else if now.client.try_subscribe_many(filters.clone()).is_err() {
                            // Subscribing again to a filter the session has replaces it; a new
                            // session (session_present false) has none.
                            connection.rebuild();
                        }
                        current = Some(now);
                    }
                    Some(Event::Publish { generation, publish }) => {
                        if let Some(retiring) = &mut retiring {
                            retiring.last_activity = tokio::time::Instant::now();
                            if retiring.disconnecting.is_some() {
                                retiring.late = true;
                            }
                        }
                        let ack = if publish.qos == QoS::AtMostOnce {
                            sequence += 1;
                            Ack::Sequence(sequence)
                        } else {
                            Ack::Mqtt { generation, packet_id: publish.pkid }
                        };
                        let message = inbound(publish, ack);
                        held_bytes += message.byte_len();
                        held.push_back(message);
                    }
                    Some(Event::SubAck { codes, .. }) => {
                        let refused: Vec<String> = self
                            .filters
                            .iter()
                            .zip(&codes)
                            .filter(|(_, code)| !matches!(code, SubscribeReasonCode::Success(_)))
                            .map(|(filter, code)| format!("{filter}: {code:?}"))
                            .collect();
                        if retiring.is_some() {
                            // An answer to a subscribe sent before retiring: moot.
                        } else if refused.is_empty() {
                            status.set(ConnectionState::Connected);
                        } else {
                            let error = format!("the broker refused the subscription ({})", refused.join(", "));
                            status.set(ConnectionState::Failed { error: error.clone() });
                            return Err(ConnectorError::Refused(error));
                        }
                    }
                    Some(Event::UnsubAck { generation }) => {
                        if let Some(retiring) = &mut retiring
                            && retiring.generation == Some(generation)
                        {
                            retiring.unsubacks_left = retiring.unsubacks_left.saturating_sub(1);
                            retiring.last_activity = tokio::time::Instant::now();
                        }
                    }
                    Some(Event::Lost { generation }) => {
                        if let Some(retiring) = &mut retiring
                            && retiring.disconnecting.is_some_and(|(g, _)| g == generation)
                        {
                            if !retiring.late {
                                // Closed after the DISCONNECT, nothing left in the session.
                                end_session(connection, &plan).await;
                                return Ok(());
                            }
                            // A message came after all: the connection task connects again,
                            // the session sends it again, and the source finishes it first.
                            retiring.disconnecting = None;
                            retiring.late = false;
                        }
                        if current.as_ref().is_some_and(|c| c.generation == generation) {
                            current = None;
                        }
                        unsent_acks.clear();
                        // QoS 1 messages held but not offered belong to the lost connection: the
                        // session's broker sends them again, and they are offered from there
                        // (their acks would be dropped as stale). Without a session (clean
                        // start) nothing is sent again, so they are kept.
                        if !self.endpoint.clean_start {
                            held.retain(|m| !matches!(m.ack, Ack::Mqtt { generation: g, .. } if g == generation));
                            held_bytes = held.iter().map(Inbound::byte_len).sum();
                        }
                    }
                    Some(Event::Refused { error }) => return Err(ConnectorError::Refused(error)),
                    Some(Event::Sent { .. } | Event::PubAck { .. } | Event::Collision { .. }) => {}
                },
                () = intake.room(), if waiting_for_room => {}
                () = tokio::time::sleep(ACK_RETRY), if !unsent_acks.is_empty() => {
                    if let Some(now) = &current {
                        while let Some(packet_id) = unsent_acks.front() {
                            if now.client.try_ack(&ack_of(*packet_id)).is_err() {
                                break;
                            }
                            unsent_acks.pop_front();
                        }
                    } else {
                        unsent_acks.clear();
                    }
                }
            }
        }
    }
}

/// Ends a retired source's session, once its connection closed after a DISCONNECT with
/// nothing left in it: the connection task goes (before it connects the persistent session
/// again), then, for a persistent session, a connection with Clean Start under the same client
/// id discards the session (MQTT 5.0 §3.1.2.4) and, with a session expiry of 0, its own ends
/// as it closes. Bounded by the connect timeout; a broker that cannot be reached keeps the
/// session (now without subscriptions or messages) until it expires (logged).
async fn end_session(connection: Connection, plan: &Plan) {
    drop(connection);
    if !plan.persistent {
        return;
    }
    let limit = plan.context.connect_timeout;
    let mut clean = Connection::start(Plan {
        persistent: false,
        manual_acks: false,
        ..plan.clone()
    });
    let ended = tokio::time::timeout(limit, async {
        loop {
            match clean.events.recv().await {
                Some(Event::Connected { client, .. }) => {
                    // The session is discarded with the CONNACK; the DISCONNECT only ends
                    // this connection politely.
                    let _closing = client.try_disconnect();
                    return true;
                }
                Some(Event::Refused { .. }) | None => return false,
                Some(_) => {}
            }
        }
    })
    .await;
    if ended != Ok(true) {
        tracing::warn!(client_id = %plan.client_id, "the retired source's broker session could not be ended; the broker keeps it until it expires");
        return;
    }
    let _closed = tokio::time::timeout(limit, async {
        while let Some(event) = clean.events.recv().await {
            if matches!(event, Event::Lost { .. }) {
                break;
            }
        }
    })
    .await;
    tracing::debug!(client_id = %plan.client_id, "mqtt source retired: session ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_instances_subscribe_one_share_group() {
        assert_eq!(
            shared_filter("weir-t.d", "sensors/+/temp"),
            "$share/weir-t.d/sensors/+/temp"
        );
        assert_eq!(shared_filter("a/b+c#", "x/#"), "$share/a_b_c_/x/#");
        assert_eq!(shared_filter("g", "$share/mine/x"), "$share/mine/x");
    }
}
