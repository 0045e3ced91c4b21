//! One MQTT connection kept alive: a task that resolves the broker through the egress rule,
//! connects rumqttc to the checked address, polls its event loop and forwards what the source
//! or sink needs over a bounded channel, and reconnects with backoff after any error.
//!
//! Why a task of its own: `EventLoop::poll` is not cancel-safe (a dropped poll can lose a write;
//! rumqttc#930), and acknowledgements, pings and publishes only move while it is polled. Why a
//! fresh `EventLoop` for every connection: each connection is then a generation with its own
//! request channel, so a request meant for an older connection can never reach a newer one
//! (packet ids are per connection: rumqttc#849), and the `CollisionTimeout` wedge of a reused
//! event loop (rumqttc#1014) cannot last beyond one connection.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, Publish, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event as RumqttEvent, EventLoop, MqttOptions};
use tokio::sync::{Notify, mpsc};

use super::config::{Credentials, MqttEndpoint};
use crate::spec::ConnectContext;
use crate::status::ConnectionState;

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const HEALTHY: Duration = Duration::from_secs(10);

/// What the connection task reports, in order. `generation` counts connections from 1.
#[derive(Debug)]
pub(crate) enum Event {
    /// A new connection is up: requests for it go through `client`.
    Connected {
        generation: u64,
        client: AsyncClient,
        session_present: bool,
        /// How many QoS 1 publishes the broker takes unacknowledged (v5 Receive Maximum).
        receive_maximum: u16,
        /// The largest packet the broker takes, if it said (v5 Maximum Packet Size).
        max_packet: Option<u32>,
    },
    /// A message arrived.
    Publish { generation: u64, publish: Publish },
    /// A publish was written (QoS 0) or sent awaiting its PUBACK (QoS 1), with its packet id.
    Sent { generation: u64, packet_id: u16 },
    /// A publish waits for a packet id still in use (a collision): the connection is rebuilt.
    Collision { generation: u64 },
    /// The broker acknowledged a QoS 1 publish.
    PubAck {
        generation: u64,
        packet_id: u16,
        reason: PubAckReason,
        reason_string: Option<String>,
    },
    /// The broker answered a SUBSCRIBE.
    SubAck { codes: Vec<SubscribeReasonCode> },
    /// The broker answered an UNSUBSCRIBE of this connection.
    UnsubAck { generation: u64 },
    /// The connection was lost; the task reconnects after a backoff.
    Lost { generation: u64 },
    /// The broker refused the client for good (credentials, client id, ban): the task ended.
    Refused { error: String },
}

/// How to connect.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) endpoint: Arc<MqttEndpoint>,
    pub(crate) context: ConnectContext,
    pub(crate) client_id: String,
    /// Keep the session across connections (a source), or start clean each time (a sink).
    pub(crate) persistent: bool,
    /// Acknowledge received QoS 1 messages only when asked (a source).
    pub(crate) manual_acks: bool,
    /// Most QoS 1 publishes in flight from this client (a sink's window).
    pub(crate) outgoing_in_flight: u16,
    /// Capacity of the event channel and of rumqttc's request channel.
    pub(crate) capacity: usize,
    /// The connection is shown connected only once its user says so (a source: once the broker
    /// acknowledged its subscription, so "connected" means its input flows).
    pub(crate) await_suback: bool,
}

/// A running connection task; aborted on drop.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) events: mpsc::Receiver<Event>,
    rebuild: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Starts the connection task.
    pub(crate) fn start(plan: Plan) -> Self {
        let (tx, events) = mpsc::channel(plan.capacity.max(16));
        let rebuild = Arc::new(Notify::new());
        let task = tokio::spawn(supervise(plan, tx, rebuild.clone()));
        Self {
            events,
            rebuild,
            task,
        }
    }

    /// Drops the current connection and connects anew.
    pub(crate) fn rebuild(&self) {
        self.rebuild.notify_one();
    }
}

/// The address as rumqttc takes it: it formats `host:port` and resolves that, so an IPv6
/// address goes in brackets (and an address never reaches a resolver).
fn literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn options(plan: &Plan, address: &str, port: u16) -> MqttOptions {
    let endpoint = &plan.endpoint;
    let mut options = MqttOptions::new(plan.client_id.clone(), address, port);
    options
        .set_keep_alive(
            endpoint
                .keep_alive
                .unwrap_or(plan.context.read_timeout)
                .clamp(Duration::from_secs(5), Duration::from_secs(65_535)),
        )
        .set_clean_start(!plan.persistent)
        .set_manual_acks(plan.manual_acks)
        .set_outgoing_inflight_upper_limit(plan.outgoing_in_flight.max(1))
        // rumqttc counts this in whole seconds; the whole attempt is also bounded below.
        .set_connection_timeout(plan.context.connect_timeout.as_secs().max(1))
        .set_max_packet_size(Some(endpoint.max_packet(plan.context.max_message_bytes)));
    // Nagle's algorithm off (rumqttc leaves it on): a PUBACK or a lone publish would otherwise
    // wait for the peer's delayed ACK (~40 ms on Linux) whenever a segment is unacknowledged,
    // which caps a QoS 1 source at its Receive Maximum per 40 ms (scripts/bench row 3).
    let mut network = options.network_options();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if plan.persistent {
        options
            .set_session_expiry_interval(Some(endpoint.session_expiry_s))
            .set_receive_maximum(Some(endpoint.receive_maximum));
    }
    match &endpoint.credentials {
        Credentials::None => {}
        Credentials::Password { username, password } => {
            options.set_credentials(username.clone(), password.clone());
        }
        Credentials::Username(username)
        | Credentials::Certificate {
            username: Some(username),
            ..
        } => {
            options.set_credentials(username.clone(), String::new());
        }
        Credentials::Certificate { username: None, .. } => {}
    }
    #[cfg(feature = "mqtt-tls")]
    if let Some(ca) = &endpoint.tls {
        let client_auth = match &endpoint.credentials {
            Credentials::Certificate { chain, key, .. } => Some((chain.clone(), key.clone())),
            _ => None,
        };
        options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth,
        }));
    }
    options
}

/// Whether a refused CONNECT will be refused again as it is (MQTT v5 §3.2.2.2).
fn refused_for_good(code: ConnectReturnCode) -> bool {
    matches!(
        code,
        ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::Banned
            | ConnectReturnCode::ClientIdentifierNotValid
            | ConnectReturnCode::BadAuthenticationMethod
            | ConnectReturnCode::UnsupportedProtocolVersion
    )
}

enum Attempt {
    Up {
        client: AsyncClient,
        eventloop: Box<EventLoop>,
        session_present: bool,
        receive_maximum: u16,
        max_packet: Option<u32>,
    },
    Retry(String),
    Refused(String),
}

/// One connection attempt: resolve through the egress rule, then connect to each checked
/// address until one answers with a CONNACK, all within the connect timeout.
async fn attempt(plan: &Plan) -> Attempt {
    let endpoint = &plan.endpoint;
    let host = endpoint.host.as_str();
    let context = &plan.context;
    let deadline = tokio::time::Instant::now() + context.connect_timeout;
    let addresses = match tokio::time::timeout_at(
        deadline,
        context.egress.resolve(host, endpoint.port),
    )
    .await
    {
        Err(_) => return Attempt::Retry(format!("resolving {host} timed out")),
        Ok(Err(error)) => return Attempt::Retry(error.to_string()),
        Ok(Ok(addresses)) => addresses,
    };
    let mut last = format!("cannot connect to {host}:{}", endpoint.port);
    for address in addresses {
        // With TLS, rumqttc checks the certificate against the address it was given, so it
        // gets the name (after the check above; see the module notes of `mqtt`).
        let target = if endpoint.tls.is_some() && cfg!(feature = "mqtt-tls") {
            host.to_owned()
        } else {
            literal(address.ip())
        };
        let (client, mut eventloop) =
            AsyncClient::new(options(plan, &target, address.port()), plan.capacity);
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => {
                return Attempt::Retry(format!("connecting to {host}:{} timed out", endpoint.port));
            }
            Ok(Ok(RumqttEvent::Incoming(Packet::ConnAck(connack)))) => {
                let (receive_maximum, max_packet) = connack
                    .properties
                    .map_or((None, None), |p| (p.receive_max, p.max_packet_size));
                return Attempt::Up {
                    client,
                    eventloop: Box::new(eventloop),
                    session_present: connack.session_present,
                    // Absent, the broker takes 65,535 (v5 §3.2.2.3.3).
                    receive_maximum: receive_maximum.unwrap_or(u16::MAX),
                    max_packet,
                };
            }
            Ok(Ok(other)) => {
                last = format!(
                    "{host}:{} answered {other:?} instead of CONNACK",
                    endpoint.port
                );
            }
            Ok(Err(ConnectionError::ConnectionRefused(code))) if refused_for_good(code) => {
                return Attempt::Refused(format!(
                    "{host}:{} refused the connection: {code:?}",
                    endpoint.port
                ));
            }
            Ok(Err(error)) => {
                last = format!("cannot connect to {host}:{}: {error}", endpoint.port);
            }
        }
    }
    Attempt::Retry(last)
}

/// Maps a rumqttc event to what the source or sink needs (`None`: nothing).
fn forward(generation: u64, event: RumqttEvent) -> Option<Event> {
    match event {
        RumqttEvent::Incoming(Packet::Publish(publish)) => Some(Event::Publish {
            generation,
            publish,
        }),
        RumqttEvent::Incoming(Packet::PubAck(puback)) => Some(Event::PubAck {
            generation,
            packet_id: puback.pkid,
            reason: puback.reason,
            reason_string: puback.properties.and_then(|p| p.reason_string),
        }),
        RumqttEvent::Incoming(Packet::SubAck(suback)) => Some(Event::SubAck {
            codes: suback.return_codes,
        }),
        RumqttEvent::Incoming(Packet::UnsubAck(_)) => Some(Event::UnsubAck { generation }),
        RumqttEvent::Outgoing(Outgoing::Publish(packet_id)) => Some(Event::Sent {
            generation,
            packet_id,
        }),
        RumqttEvent::Outgoing(Outgoing::AwaitAck(_)) => Some(Event::Collision { generation }),
        _ => None,
    }
}

/// Keeps the connection: connect, forward, and after any error report `Retrying` and try again
/// with exponential backoff, until the receiver is gone.
async fn supervise(plan: Plan, tx: mpsc::Sender<Event>, rebuild: Arc<Notify>) {
    let status = plan.context.status.clone();
    let mut generation = 0u64;
    let mut backoff = MIN_BACKOFF;
    loop {
        if tx.is_closed() {
            return;
        }
        let (client, mut eventloop, session_present, receive_maximum, max_packet) =
            match attempt(&plan).await {
                Attempt::Up {
                    client,
                    eventloop,
                    session_present,
                    receive_maximum,
                    max_packet,
                } => (
                    client,
                    eventloop,
                    session_present,
                    receive_maximum,
                    max_packet,
                ),
                Attempt::Retry(error) => {
                    tracing::debug!(client_id = %plan.client_id, %error, "mqtt connect failed");
                    status.retrying(error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Attempt::Refused(error) => {
                    status.set(ConnectionState::Failed {
                        error: error.clone(),
                    });
                    let _gone = tx.send(Event::Refused { error }).await;
                    return;
                }
            };
        generation += 1;
        let since = tokio::time::Instant::now();
        if !plan.await_suback {
            status.set(ConnectionState::Connected);
        }
        let connected = Event::Connected {
            generation,
            client,
            session_present,
            receive_maximum,
            max_packet,
        };
        if tx.send(connected).await.is_err() {
            return;
        }
        let error = loop {
            // Dropping a poll here is safe: the event loop is dropped with it and the next
            // connection is a new one.
            let polled = tokio::select! {
                biased;
                () = rebuild.notified() => break "rebuilt after a packet id collision".to_owned(),
                polled = eventloop.poll() => polled,
            };
            match polled {
                Ok(event) => {
                    if let Some(event) = forward(generation, event)
                        && tx.send(event).await.is_err()
                    {
                        return;
                    }
                }
                Err(error) => break error.to_string(),
            }
        };
        tracing::debug!(client_id = %plan.client_id, %error, generation, "mqtt connection lost");
        status.retrying(format!(
            "connection to {}:{} lost: {error}",
            plan.endpoint.host, plan.endpoint.port
        ));
        if tx.send(Event::Lost { generation }).await.is_err() {
            return;
        }
        if since.elapsed() >= HEALTHY {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
