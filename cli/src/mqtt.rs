//! `weir mqtt pub` and `weir mqtt sub`: a quick check of an MQTT v5 broker from the command line,
//! weir's embedded one (`weir serve --mqtt-listen`) or any other, over plain TCP.
//!
//! On weir's broker a device logs in as `<device>@<tenant>` with the password
//! `weir device create` printed, and its client id must be `<name>@<tenant>` of the same tenant
//! (weir-broker's crate docs); the default client id `weir-cli-<pid>@<tenant>` takes the tenant
//! from the user name. Topics are plain: the broker keeps each tenant's in its own space.
//!
//! Failures are errors (exit code 1) that name what the broker said, by the MQTT 5.0 reason
//! code and name (section 3.2.2.2 CONNACK, 3.4.2.1 PUBACK, 3.9.3 SUBACK, 3.14.2.1 DISCONNECT).

use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, Packet, PubAckReason, Publish, PublishProperties,
    SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use tokio::time::Instant;

use crate::OutputFormat;

/// Largest packet the CLI takes from the broker (rumqttc's default is 10 KiB); weir's broker
/// allows 1 MiB by default.
const MAX_PACKET_BYTES: u32 = 16 << 20;

/// Arguments of `weir mqtt`.
#[derive(Debug, clap::Args)]
pub(crate) struct MqttArgs {
    #[command(subcommand)]
    command: MqttCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MqttCommand {
    /// Publish one message; at QoS 1 wait for the broker's PUBACK.
    Pub(PubArgs),
    /// Subscribe and print each message as `TOPIC PAYLOAD`, one a line.
    Sub(SubArgs),
}

/// Where the broker is and who we are on it.
#[derive(Debug, clap::Args)]
struct Login {
    /// The broker, HOST:PORT (plain TCP; weir's embedded broker by default).
    #[arg(long, env = "WEIR_MQTT_BROKER", default_value = "127.0.0.1:1883")]
    broker: String,
    /// The user name: `<device>@<tenant>` on weir's broker (from `weir device create`).
    #[arg(long, env = "WEIR_MQTT_USERNAME")]
    username: String,
    /// The password (from `weir device create`).
    #[arg(long, env = "WEIR_MQTT_PASSWORD", hide_env_values = true)]
    password: String,
    /// The client id (default: `weir-cli-<pid>@<tenant>`, the tenant taken from the user name
    /// after its last `@`).
    #[arg(long)]
    client_id: Option<String>,
    /// How long the broker may take to accept the connection (TCP connect and CONNACK), in
    /// milliseconds.
    #[arg(long, default_value_t = 5_000)]
    connect_timeout_ms: u64,
    /// How results are printed.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

/// Arguments of `weir mqtt pub`.
#[derive(Debug, clap::Args)]
struct PubArgs {
    /// The topic (plain; on weir's broker it is in your tenant's space).
    topic: String,
    /// The payload, as given (UTF-8).
    payload: String,
    /// A user property, KEY=VALUE (repeatable; order and repeated keys are kept).
    #[arg(long = "user-property", value_name = "KEY=VALUE")]
    user_properties: Vec<String>,
    /// The content type (e.g. application/json).
    #[arg(long)]
    content_type: Option<String>,
    /// 0 (at most once, nothing to wait for) or 1 (at least once, wait for the PUBACK).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    #[command(flatten)]
    login: Login,
}

/// Arguments of `weir mqtt sub`.
#[derive(Debug, clap::Args)]
struct SubArgs {
    /// Topic filters (`+` and `#` wildcards, `$share/<group>/…`).
    #[arg(required = true)]
    filters: Vec<String>,
    /// Stop after this many messages (exit 0); fewer by `--timeout-ms` is an error.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many milliseconds: exit 0 without `--count`, 1 if `--count` messages
    /// did not arrive by then. Without it, run until interrupted or `--count` is reached.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// The subscription's maximum QoS: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    #[command(flatten)]
    login: Login,
}

/// Runs `weir mqtt …`.
pub(crate) async fn mqtt(args: MqttArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        MqttCommand::Pub(args) => publish(args).await,
        MqttCommand::Sub(args) => subscribe(args).await,
    }
}

fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The client id weir's broker takes from a client of `username`'s tenant: `weir-cli-<pid>@<tenant>`.
fn default_client_id(username: &str) -> String {
    let pid = std::process::id();
    match username.rsplit_once('@') {
        Some((_, tenant)) => format!("weir-cli-{pid}@{tenant}"),
        None => format!("weir-cli-{pid}"),
    }
}

/// A connected client and its event loop, polled by the caller.
struct Session {
    client: AsyncClient,
    events: EventLoop,
    broker: String,
}

impl Login {
    /// Connects and waits for a CONNACK that accepts the login.
    async fn connect(&self) -> anyhow::Result<Session> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .with_context(|| format!("--broker takes HOST:PORT, not {}", self.broker))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // Resolved here so a name that does not resolve is named as such, not as a timeout.
        let resolved = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve the broker {}", self.broker))?
            .next()
            .with_context(|| format!("the broker {} resolves to no address", self.broker))?;
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id(&self.username));
        let mut options = MqttOptions::new(client_id, resolved.ip().to_string(), port);
        let timeout = Duration::from_millis(self.connect_timeout_ms);
        options
            .set_credentials(self.username.clone(), self.password.clone())
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(Some(MAX_PACKET_BYTES))
            // rumqttc's own limit (whole seconds) stays behind ours.
            .set_connection_timeout(timeout.as_secs().saturating_add(1));
        let (client, mut events) = AsyncClient::new(options, 16);
        let broker = self.broker.clone();
        let connected = tokio::time::timeout(timeout, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(error),
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => Ok(Session {
                client,
                events,
                broker,
            }),
            Ok(Err(error)) => Err(connection_error(&broker, &error)),
            Err(_) => bail!(
                "no answer from the MQTT broker at {broker} within {} ms (is it running, and is \
                 that its address?)",
                self.connect_timeout_ms
            ),
        }
    }
}

impl Session {
    /// Sends DISCONNECT (normal disconnection) and waits a moment for it to be written.
    async fn disconnect(mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let _done = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match self.events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// The next event; a lost connection is an error naming why.
    async fn next(&mut self) -> anyhow::Result<Event> {
        self.events
            .poll()
            .await
            .map_err(|error| connection_error(&self.broker, &error))
    }
}

/// What went wrong with the connection, in the broker's words where it gave any.
fn connection_error(broker: &str, error: &ConnectionError) -> anyhow::Error {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let (value, name) = connack_reason(*code);
            let hint = match code {
                ConnectReturnCode::BadUserNamePassword => {
                    "; on weir's broker the user name is <device>@<tenant> and the password the \
                     one `weir device create` printed"
                }
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::ClientIdentifierNotValid => {
                    "; on weir's broker the client id must be <name>@<tenant> of the user name's \
                     tenant"
                }
                _ => "",
            };
            anyhow::anyhow!(
                "the MQTT broker at {broker} refused the login: CONNACK {value:#04x} {name}{hint}"
            )
        }
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => anyhow::anyhow!(
            "the MQTT broker at {broker} closed the connection: DISCONNECT {:#04x} {reason_code:?}{}",
            *reason_code as u8,
            reason_string
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        ConnectionError::Io(io) => {
            anyhow::anyhow!("cannot reach the MQTT broker at {broker}: {io}")
        }
        other => anyhow::anyhow!("the connection to the MQTT broker at {broker} failed: {other}"),
    }
}

/// The CONNACK reason code and its name in MQTT 5.0 section 3.2.2.2.
fn connack_reason(code: ConnectReturnCode) -> (u8, &'static str) {
    use ConnectReturnCode as C;
    match code {
        C::Success => (0x00, "Success"),
        // MQTT 3.1.1 codes, as rumqttc names them.
        C::RefusedProtocolVersion => (0x01, "Unacceptable Protocol Version"),
        C::BadClientId => (0x02, "Identifier Rejected"),
        C::ServiceUnavailable => (0x03, "Server Unavailable"),
        C::UnspecifiedError => (0x80, "Unspecified error"),
        C::MalformedPacket => (0x81, "Malformed Packet"),
        C::ProtocolError => (0x82, "Protocol Error"),
        C::ImplementationSpecificError => (0x83, "Implementation specific error"),
        C::UnsupportedProtocolVersion => (0x84, "Unsupported Protocol Version"),
        C::ClientIdentifierNotValid => (0x85, "Client Identifier not valid"),
        C::BadUserNamePassword => (0x86, "Bad User Name or Password"),
        C::NotAuthorized => (0x87, "Not authorized"),
        C::ServerUnavailable => (0x88, "Server unavailable"),
        C::ServerBusy => (0x89, "Server busy"),
        C::Banned => (0x8A, "Banned"),
        C::BadAuthenticationMethod => (0x8C, "Bad authentication method"),
        C::TopicNameInvalid => (0x90, "Topic Name invalid"),
        C::PacketTooLarge => (0x95, "Packet too large"),
        C::QuotaExceeded => (0x97, "Quota exceeded"),
        C::PayloadFormatInvalid => (0x99, "Payload format invalid"),
        C::RetainNotSupported => (0x9A, "Retain not supported"),
        C::QoSNotSupported => (0x9B, "QoS not supported"),
        C::UseAnotherServer => (0x9C, "Use another server"),
        C::ServerMoved => (0x9D, "Server moved"),
        C::ConnectionRateExceeded => (0x9F, "Connection rate exceeded"),
    }
}

/// The PUBACK reason code and its name in MQTT 5.0 section 3.4.2.1.
fn puback_reason(reason: PubAckReason) -> (u8, &'static str) {
    use PubAckReason as P;
    match reason {
        P::Success => (0x00, "Success"),
        P::NoMatchingSubscribers => (0x10, "No matching subscribers"),
        P::UnspecifiedError => (0x80, "Unspecified error"),
        P::ImplementationSpecificError => (0x83, "Implementation specific error"),
        P::NotAuthorized => (0x87, "Not authorized"),
        P::TopicNameInvalid => (0x90, "Topic Name invalid"),
        P::PacketIdentifierInUse => (0x91, "Packet Identifier in use"),
        P::QuotaExceeded => (0x97, "Quota exceeded"),
        P::PayloadFormatInvalid => (0x99, "Payload format invalid"),
    }
}

/// The SUBACK reason code and its name in MQTT 5.0 section 3.9.3.
fn suback_reason(code: SubscribeReasonCode) -> (u8, &'static str) {
    use SubscribeReasonCode as S;
    match code {
        S::Success(QoS::AtMostOnce) => (0x00, "Granted QoS 0"),
        S::Success(QoS::AtLeastOnce) => (0x01, "Granted QoS 1"),
        S::Success(QoS::ExactlyOnce) => (0x02, "Granted QoS 2"),
        S::Failure | S::Unspecified => (0x80, "Unspecified error"),
        S::ImplementationSpecific => (0x83, "Implementation specific error"),
        S::NotAuthorized => (0x87, "Not authorized"),
        S::TopicFilterInvalid => (0x8F, "Topic Filter invalid"),
        S::PkidInUse => (0x91, "Packet Identifier in use"),
        S::QuotaExceeded => (0x97, "Quota exceeded"),
        S::SharedSubscriptionsNotSupported => (0x9E, "Shared Subscriptions not supported"),
        S::SubscriptionIdNotSupported => (0xA1, "Subscription Identifiers not supported"),
        S::WildcardSubscriptionsNotSupported => (0xA2, "Wildcard Subscriptions not supported"),
    }
}

fn user_property(pair: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = pair
        .split_once('=')
        .with_context(|| format!("--user-property takes KEY=VALUE, not {pair}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

async fn publish(args: PubArgs) -> anyhow::Result<ExitCode> {
    let user_properties = args
        .user_properties
        .iter()
        .map(|p| user_property(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let properties = PublishProperties {
        user_properties,
        content_type: args.content_type.clone(),
        ..PublishProperties::default()
    };
    let qos = qos(args.qos);
    let mut session = args.login.connect().await?;
    session
        .client
        .try_publish_with_properties(
            args.topic.clone(),
            qos,
            false,
            args.payload.clone().into_bytes(),
            properties,
        )
        .context("cannot queue the message")?;
    // QoS 0: done once the PUBLISH is written; QoS 1: once the broker's PUBACK says so.
    let acked = loop {
        match session.next().await? {
            Event::Outgoing(Outgoing::Publish(_)) if qos == QoS::AtMostOnce => break None,
            Event::Incoming(Packet::PubAck(ack)) => break Some(ack),
            _ => {}
        }
    };
    session.disconnect().await;
    let reason = acked.as_ref().map(|ack| {
        let (code, name) = puback_reason(ack.reason);
        let detail = ack
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.clone());
        (code, name, detail)
    });
    if let Some((code, name, detail)) = &reason
        && *code >= 0x80
    {
        bail!(
            "the MQTT broker at {} refused the message to {}: PUBACK {code:#04x} {name}{}",
            args.login.broker,
            args.topic,
            detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    match args.login.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "topic": args.topic,
                "qos": args.qos,
                "puback": reason.as_ref().map(|(code, name, _)| serde_json::json!({"code": code, "reason": name})),
            })
        ),
        OutputFormat::Text => match &reason {
            Some((code, name, _)) => println!(
                "published to {} (QoS 1, PUBACK {code:#04x} {name})",
                args.topic
            ),
            None => println!("published to {} (QoS 0)", args.topic),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// One received message as `--output json` prints it: one JSON object a line.
fn message_json(publish: &Publish) -> serde_json::Value {
    let mut value = serde_json::json!({
        "topic": String::from_utf8_lossy(&publish.topic),
        "qos": publish.qos as u8,
    });
    if let Some(object) = value.as_object_mut() {
        match std::str::from_utf8(&publish.payload) {
            Ok(text) => object.insert("payload".to_owned(), text.into()),
            Err(_) => object.insert(
                "payload_hex".to_owned(),
                hex::encode(&publish.payload).into(),
            ),
        };
        let properties = publish.properties.as_ref();
        object.insert(
            "content_type".to_owned(),
            properties.and_then(|p| p.content_type.clone()).into(),
        );
        object.insert(
            "user_properties".to_owned(),
            properties
                .map(|p| {
                    p.user_properties
                        .iter()
                        .map(|(k, v)| serde_json::json!([k, v]))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into(),
        );
    }
    value
}

async fn subscribe(args: SubArgs) -> anyhow::Result<ExitCode> {
    let deadline = args
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut session = args.login.connect().await?;
    let qos = qos(args.qos);
    session
        .client
        .try_subscribe_many(
            args.filters
                .iter()
                .map(|filter| Filter::new(filter.clone(), qos)),
        )
        .context("cannot queue the subscription")?;
    let mut received: u64 = 0;
    let mut subscribed = false;
    loop {
        if args.count.is_some_and(|count| received >= count) {
            session.disconnect().await;
            eprintln!("received {received} message(s): --count reached");
            return Ok(ExitCode::SUCCESS);
        }
        let event = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, session.next()).await {
                Ok(event) => event?,
                Err(_) => {
                    session.disconnect().await;
                    let ms = args.timeout_ms.unwrap_or_default();
                    if let Some(count) = args.count {
                        bail!("received {received} of {count} message(s) within {ms} ms");
                    }
                    eprintln!("received {received} message(s) in {ms} ms: --timeout-ms reached");
                    return Ok(ExitCode::SUCCESS);
                }
            },
            None => session.next().await?,
        };
        match event {
            Event::Incoming(Packet::SubAck(ack)) if !subscribed => {
                let mut refused = Vec::new();
                for (filter, code) in args.filters.iter().zip(&ack.return_codes) {
                    let (value, name) = suback_reason(*code);
                    if value >= 0x80 {
                        refused.push(format!("{filter}: SUBACK {value:#04x} {name}"));
                    } else {
                        // Scripts wait for this line before they publish.
                        eprintln!("subscribed to {filter} ({name})");
                    }
                }
                if !refused.is_empty() {
                    session.disconnect().await;
                    bail!(
                        "the MQTT broker at {} refused the subscription: {}",
                        args.login.broker,
                        refused.join("; ")
                    );
                }
                subscribed = true;
            }
            Event::Incoming(Packet::Publish(publish)) => {
                received += 1;
                match args.login.output {
                    OutputFormat::Json => println!("{}", message_json(&publish)),
                    OutputFormat::Text => println!(
                        "{} {}",
                        String::from_utf8_lossy(&publish.topic),
                        String::from_utf8_lossy(&publish.payload)
                    ),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_client_id_names_the_user_names_tenant() {
        let id = default_client_id("thermometer@demo");
        assert!(id.starts_with("weir-cli-") && id.ends_with("@demo"), "{id}");
        // The tenant is after the last `@`, as weir's broker reads it.
        assert!(default_client_id("a@b@acme").ends_with("@acme"));
    }

    #[test]
    fn user_properties_are_key_equals_value() {
        assert_eq!(
            user_property("site=north=1").ok(),
            Some(("site".to_owned(), "north=1".to_owned()))
        );
        assert!(user_property("site").is_err());
    }
}
