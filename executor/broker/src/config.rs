//! The broker's settings: the listener and every bound on memory a client can make it hold.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::BrokerError;

/// Settings of the embedded broker. Every field is a bound or a timeout; [`Default`] gives the
/// values `weir serve` uses. Checked by [`BrokerConfig::check`] when the broker starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Where the MQTT listener binds (plain TCP, MQTT 3.1.1 and 5.0). Default `127.0.0.1:1883`;
    /// port 0 picks a free port (see [`crate::EmbeddedBroker::local_addr`]).
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted from a client, in bytes (MQTT 5.0 Maximum Packet Size,
    /// advertised in CONNACK; a bigger packet closes the connection). Default 1 MiB.
    pub max_packet_bytes: u32,
    /// QoS 1 messages sent to one client and not yet acknowledged (its in-flight window); the
    /// smaller of this and the client's Receive Maximum applies. Also the Receive Maximum the
    /// broker advertises to clients (MQTT 5.0 section 3.2.2.3.3). Default 100, the Receive
    /// Maximum of weir's own MQTT source: a subscriber that acknowledges after its work (as
    /// weir's source does, after the outputs are published) gets at most `max_inflight`
    /// messages per round trip, so a window of 16 capped a deployment at 16 / round trip
    /// (measured in BENCHMARKS.md row 3: 6,300 msg/s at QoS 1, 2.5 ms round trips).
    pub max_inflight: u16,
    /// Messages queued for one client (connected behind its in-flight window, or offline with a
    /// persistent session). When full, a new QoS 0 message is dropped and for QoS 1 the oldest
    /// queued one is. Default 1000.
    pub max_queued_per_client: usize,
    /// Longest a session outlives its connection. MQTT 5.0 clients ask for a Session Expiry
    /// Interval and get at most this; MQTT 3.1.1 clients without Clean Session get exactly
    /// this. Sessions live in memory: a broker restart ends them. Default 2 hours.
    pub session_expiry: Duration,
    /// How long a message without its own Message Expiry Interval may wait for delivery
    /// (queued or in flight); `None` (the default) keeps it until its session ends, which is
    /// what at-least-once needs.
    pub message_expiry: Option<Duration>,
    /// Sessions (connected or kept for a reconnect) in the whole broker. A CONNECT past it is
    /// refused with Server Unavailable. Default 10,000.
    pub max_sessions: usize,
    /// Sessions of one tenant, so one tenant cannot use up [`Self::max_sessions`]. A CONNECT
    /// past it is refused with Not Authorized. Default 1,000.
    pub max_sessions_per_tenant: usize,
    /// Subscriptions of one session. Default 100.
    pub max_subscriptions_per_client: usize,
    /// Levels of a subscription filter as the client writes it (the tenant mount adds two).
    /// Default 32.
    pub max_topic_levels: usize,
    /// Topic aliases a client may set (MQTT 5.0 Topic Alias Maximum), and that the broker uses
    /// towards a client that allows them. Default 16.
    pub max_topic_aliases: u16,
    /// Longest client id, in bytes. Default 256.
    pub max_client_id_bytes: usize,
    /// Time from TCP accept to CONNACK, the login included. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time a write to a client may take before its connection is closed. Default 10 s.
    pub send_timeout: Duration,
    /// Connections in their handshake at once; more wait. Default 100.
    pub max_handshakes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            max_packet_bytes: 1024 * 1024,
            max_inflight: 100,
            max_queued_per_client: 1000,
            session_expiry: Duration::from_secs(2 * 60 * 60),
            message_expiry: None,
            max_sessions: 10_000,
            max_sessions_per_tenant: 1_000,
            max_subscriptions_per_client: 100,
            max_topic_levels: 32,
            max_topic_aliases: 16,
            max_client_id_bytes: 256,
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            max_handshakes: 100,
        }
    }
}

impl BrokerConfig {
    /// Every problem with the settings, or `Ok`. A zero bound is a problem (rmqtt reads 0 as
    /// "unlimited" for several of them), and so is a packet limit below 1 KiB.
    pub fn check(&self) -> Result<(), BrokerError> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, value: u128| {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        };
        positive("max_inflight", self.max_inflight.into());
        positive("max_queued_per_client", self.max_queued_per_client as u128);
        positive("session_expiry", self.session_expiry.as_secs().into());
        positive("max_sessions", self.max_sessions as u128);
        positive(
            "max_sessions_per_tenant",
            self.max_sessions_per_tenant as u128,
        );
        positive(
            "max_subscriptions_per_client",
            self.max_subscriptions_per_client as u128,
        );
        positive("max_topic_levels", self.max_topic_levels as u128);
        positive("max_client_id_bytes", self.max_client_id_bytes as u128);
        positive("handshake_timeout", self.handshake_timeout.as_millis());
        positive("send_timeout", self.send_timeout.as_millis());
        positive("max_handshakes", self.max_handshakes as u128);
        if let Some(expiry) = self.message_expiry {
            positive("message_expiry", expiry.as_secs().into());
        }
        if self.max_packet_bytes < 1024 {
            problems.push(format!(
                "max_packet_bytes must be at least 1024, got {}",
                self.max_packet_bytes
            ));
        }
        if isize::try_from(self.max_sessions).is_err() {
            problems.push("max_sessions is too large".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::Config(problems))
        }
    }
}
