//! MQTT pieces the MQTT benches share: logins, the bench message, timestamps.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

/// The size of every message's payload, in bytes.
pub const PAYLOAD_BYTES: usize = 200;

/// The instant all send and receipt times count from.
pub fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since [`base`].
pub fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// How this process's clients log in to one broker.
#[derive(Debug, Clone)]
pub struct Login {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name and password, if the broker wants a login.
    pub credentials: Option<(String, String)>,
    /// What client ids end with (`@bench` on weir's broker, which wants `<name>@<tenant>`).
    pub id_suffix: String,
}

impl Login {
    /// A login to `address` (`HOST:PORT`).
    pub fn new(
        address: &str,
        credentials: Option<(String, String)>,
        id_suffix: &str,
    ) -> anyhow::Result<Self> {
        let (host, port) = address
            .rsplit_once(':')
            .with_context(|| format!("HOST:PORT, not {address}"))?;
        Ok(Self {
            host: host.to_owned(),
            port: port.parse()?,
            credentials,
            id_suffix: id_suffix.to_owned(),
        })
    }

    /// A connected client (CONNACK received) and its event loop.
    pub async fn connect(&self, name: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let mut options = MqttOptions::new(
            format!("{name}{}", self.id_suffix),
            self.host.clone(),
            self.port,
        );
        options
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_outgoing_inflight_upper_limit(1000)
            .set_receive_maximum(Some(1000))
            .set_max_packet_size(Some(1 << 20));
        // Nagle off, as weir's connector has it: with it on, a lone publish or PUBACK waits for
        // the peer's delayed ACK and the latencies measured are the kernel's ~40 ms timer.
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, mut events) = AsyncClient::new(options, 1024);
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .with_context(|| format!("{name}: no CONNACK"))??;
        Ok((client, events))
    }

    /// A client subscribed to `topic` (SUBACK received).
    pub async fn subscribe(
        &self,
        name: &str,
        topic: &str,
        qos: QoS,
    ) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let (client, mut events) = self.connect(name).await?;
        client.subscribe(topic, qos).await?;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .with_context(|| format!("{name}: no SUBACK"))??;
        Ok((client, events))
    }
}

/// QoS 0 for 0, QoS 1 otherwise.
pub fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Keeps polling an event loop until it fails or the task is aborted.
pub fn drive(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

/// A 200-byte reading stamped with `sent` (ns from [`base`]) and `seq`.
pub fn payload(sent: u64, seq: u64) -> Vec<u8> {
    let fahrenheit = 50 + seq % 100;
    let head = format!(
        r#"{{"temperature":{{"value":{fahrenheit},"unit":"F","sent":{sent},"seq":{seq},"pad":""#
    );
    let tail = r#""}}"#;
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

/// User property `t` = `sent`.
pub fn properties(sent: u64) -> PublishProperties {
    PublishProperties {
        user_properties: vec![("t".to_owned(), sent.to_string())],
        ..PublishProperties::default()
    }
}

/// Publishes `rate` messages per second for `seconds` s on `topic` (paced on a 1 ms tick, each
/// stamped with its scheduled send time); the number published.
pub async fn paced(
    publisher: &AsyncClient,
    topic: &str,
    level: u8,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<u64> {
    let total = rate * seconds;
    let start = now_ns();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut next = 0u64;
    while next < total {
        tick.tick().await;
        let elapsed = now_ns().saturating_sub(start);
        let due = (u128::from(elapsed) * u128::from(rate) / 1_000_000_000).min(u128::from(total));
        while u128::from(next) < due {
            let scheduled = start + next * 1_000_000_000 / rate;
            publisher
                .publish_with_properties(
                    topic,
                    qos(level),
                    false,
                    payload(scheduled, next),
                    properties(scheduled),
                )
                .await?;
            next += 1;
        }
    }
    Ok(total)
}
