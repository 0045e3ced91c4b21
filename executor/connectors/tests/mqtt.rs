//! The `mqtt` connector against a real Mosquitto 2.0 (`scripts/services start`, then
//! `source target/services/env`): the conformance suite, at-least-once by count across a broker
//! restart, the egress wall, shared subscriptions and the checks' paths.
//!
//! A test that finds no `WEIR_TEST_MOSQUITTO` fails: it never skips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{Mutex, mpsc};
use weir_api::TenantId;
use weir_api::egress::Egress;
use weir_connectors::conformance::{self, Broker, TestIntake};
use weir_connectors::mqtt::MqttConnector;
use weir_connectors::{
    ConnectContext, ConnectionState, Connector, EndpointSpec, Inbound, Outbound, SinkSpec,
    SourceSpec,
};

// ---------------------------------------------------------------------------------------------
// The broker under test and plain rumqttc clients of the test's own.

/// `127.0.0.1:PORT` of the test Mosquitto.
fn mosquitto() -> String {
    std::env::var("WEIR_TEST_MOSQUITTO").expect(
        "WEIR_TEST_MOSQUITTO is not set: start the services with `scripts/services start` and \
         `source target/services/env` (this test needs a real Mosquitto; it does not skip)",
    )
}

/// `127.0.0.1:PORT` of the Mosquitto that the broker-restart test stops and starts (its own, so
/// tests running beside it are not disturbed).
fn restartable_mosquitto() -> String {
    std::env::var("WEIR_TEST_MOSQUITTO_RESTART").expect(
        "WEIR_TEST_MOSQUITTO_RESTART is not set: start the services with `scripts/services \
         start` and `source target/services/env` (this test needs a real Mosquitto)",
    )
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the test Mosquitto is 127.0.0.1:PORT")
}

fn mosquitto_port() -> u16 {
    port_of(&mosquitto())
}

/// The checkout whose `scripts/services` started the restartable Mosquitto (its config lives
/// in `<checkout>/target/services/mosquitto-restart/`).
fn services_checkout() -> PathBuf {
    let conf = std::env::var("WEIR_TEST_MOSQUITTO_RESTART_CONF").expect(
        "WEIR_TEST_MOSQUITTO_RESTART_CONF is not set: start the services with \
         `scripts/services start`",
    );
    PathBuf::from(conf)
        .ancestors()
        .nth(4)
        .expect("the config is under <checkout>/target/services/mosquitto-restart/")
        .to_owned()
}

fn mosquitto_log() -> String {
    let conf = PathBuf::from(std::env::var("WEIR_TEST_MOSQUITTO_CONF").unwrap());
    std::fs::read_to_string(conf.with_file_name("mosquitto.log")).unwrap_or_default()
}

/// Runs `scripts/services <command>` (mosquitto-stop, mosquitto-start).
async fn services(command: &'static str) {
    let checkout = services_checkout();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(checkout.join("scripts/services"))
            .arg(command)
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "scripts/services {command}: {status}");
}

/// A name no other test run uses.
fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

fn endpoint(address: &str, settings: &[(&str, &str)]) -> EndpointSpec {
    EndpointSpec {
        name: "broker".to_owned(),
        kind: "mqtt".to_owned(),
        address: Some(address.to_owned()),
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        secret: None,
    }
}

fn context(deployment: &str, egress: Egress) -> ConnectContext {
    let mut context =
        ConnectContext::new(TenantId::new("acme").unwrap(), deployment, egress, 1 << 20);
    context.connect_timeout = Duration::from_secs(3);
    context
}

fn loopback() -> Egress {
    Egress::new(["127.0.0.1"])
}

/// What a plain client saw.
#[derive(Debug)]
enum Seen {
    Message(Inbound),
    PubAck,
    SubAck,
}

/// A plain rumqttc v5 client, its event loop polled in a task of its own.
struct Plain {
    client: AsyncClient,
    events: Mutex<mpsc::Receiver<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Plain {
    /// Connects; a `persistent` client keeps its session (and subscribes `filter` again when
    /// the broker lost it).
    async fn connect(id: &str, persistent: bool, filter: Option<&str>) -> Self {
        Self::connect_to(mosquitto_port(), id, persistent, filter).await
    }

    async fn connect_to(port: u16, id: &str, persistent: bool, filter: Option<&str>) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_clean_start(!persistent)
            .set_max_packet_size(Some(1 << 20));
        if persistent {
            options.set_session_expiry_interval(Some(3600));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, events) = mpsc::channel(100_000);
        let resubscribe = client.clone();
        let subscribes = filter.is_some();
        let filter = filter.map(str::to_owned);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        if let Some(filter) = &filter
                            && !connack.session_present
                        {
                            resubscribe
                                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                                .unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let (content_type, user_properties) = match p.properties {
                            Some(props) => (
                                props.content_type.map(Bytes::from),
                                props
                                    .user_properties
                                    .into_iter()
                                    .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                                    .collect(),
                            ),
                            None => (None, Vec::new()),
                        };
                        let message = Inbound {
                            topic: p.topic,
                            payload: p.payload,
                            content_type,
                            user_properties,
                            ack: weir_connectors::Ack::Sequence(0),
                            assignment: None,
                        };
                        if tx.send(Seen::Message(message)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if tx.send(Seen::PubAck).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if tx.send(Seen::SubAck).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // The broker is restarting: try again shortly (rumqttc reconnects on the
                    // next poll).
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let plain = Self {
            client,
            events: Mutex::new(events),
            task,
        };
        if subscribes {
            plain.wait_for(1, |s| matches!(s, Seen::SubAck)).await;
        }
        plain
    }

    /// Waits until `count` events matching `what` were seen (30 s), returning the messages
    /// seen meanwhile.
    async fn wait_for(&self, count: usize, what: impl Fn(&Seen) -> bool) -> Vec<Inbound> {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        let mut messages = Vec::new();
        while seen < count {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("{seen} of {count} awaited events in 30 s"))
                .unwrap();
            if what(&event) {
                seen += 1;
            }
            if let Seen::Message(m) = event {
                messages.push(m);
            }
        }
        messages
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK.
    async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.wait_for(1, |s| matches!(s, Seen::SubAck)).await;
    }

    /// Publishes at QoS 1 and waits for every PUBACK.
    async fn publish(&self, messages: Vec<Outbound>) {
        let count = messages.len();
        for m in messages {
            let properties = PublishProperties {
                content_type: m
                    .content_type
                    .map(|c| String::from_utf8(c.to_vec()).unwrap()),
                user_properties: m
                    .user_properties
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8(k.to_vec()).unwrap(),
                            String::from_utf8(v.to_vec()).unwrap(),
                        )
                    })
                    .collect(),
                ..PublishProperties::default()
            };
            self.client
                .publish_with_properties(
                    String::from_utf8(m.topic.to_vec()).unwrap(),
                    QoS::AtLeastOnce,
                    false,
                    m.payload,
                    properties,
                )
                .await
                .unwrap();
        }
        self.wait_for(count, |s| matches!(s, Seen::PubAck)).await;
    }

    /// The messages that arrive within `timeout`, up to `count`.
    async fn receive(&self, count: usize, timeout: Duration) -> Vec<Inbound> {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut messages = Vec::new();
        while messages.len() < count {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Seen::Message(m))) => messages.push(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        messages
    }
}

/// The conformance suite's access to Mosquitto: one plain client publishes, another reads.
struct Mosquitto {
    publisher: Plain,
    reader: Plain,
}

impl Mosquitto {
    async fn new() -> Self {
        Self {
            publisher: Plain::connect(&unique("conf-pub"), false, None).await,
            reader: Plain::connect(&unique("conf-read"), false, None).await,
        }
    }
}

#[async_trait]
impl Broker for Mosquitto {
    async fn publish(&self, messages: Vec<Outbound>) -> Result<(), String> {
        self.publisher.publish(messages).await;
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<(), String> {
        self.reader.subscribe(topic).await;
        Ok(())
    }

    async fn receive(&self, count: usize, timeout: Duration) -> Vec<Inbound> {
        self.reader.receive(count, timeout).await
    }
}

fn source_spec(topics: &[&str]) -> SourceSpec {
    source_spec_at(&mosquitto(), topics)
}

fn source_spec_at(address: &str, topics: &[&str]) -> SourceSpec {
    SourceSpec {
        endpoint: endpoint(address, &[]),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn sink_spec(topic: &str) -> SinkSpec {
    sink_spec_at(&mosquitto(), topic)
}

fn sink_spec_at(address: &str, topic: &str) -> SinkSpec {
    SinkSpec {
        endpoint: endpoint(address, &[]),
        topic: topic.to_owned(),
    }
}

/// Waits until `condition` holds, polling every 20 ms, or fails after `timeout`.
async fn until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_delivers() {
    let topic = format!("weir-test/{}", unique("delivers"));
    let broker = Mosquitto::new().await;
    conformance::source_delivers(
        &MqttConnector,
        source_spec(&[&topic]),
        context(&unique("delivers"), loopback()),
        &broker,
        &topic,
        true,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_delivers_through_wildcards() {
    let base = format!("weir-test/{}", unique("wild"));
    let topic = format!("{base}/a/b");
    let broker = Mosquitto::new().await;
    for filter in [format!("{base}/+/b"), format!("{base}/#")] {
        conformance::source_delivers(
            &MqttConnector,
            source_spec(&[&filter]),
            context(&unique("wild"), loopback()),
            &broker,
            &topic,
            true,
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_redelivers_unacknowledged() {
    let topic = format!("weir-test/{}", unique("redeliver"));
    let broker = Mosquitto::new().await;
    conformance::source_redelivers_unacknowledged(
        &MqttConnector,
        source_spec(&[&topic]),
        context(&unique("redeliver"), loopback()),
        &broker,
        &topic,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_waits_for_room() {
    let topic = format!("weir-test/{}", unique("room"));
    let broker = Mosquitto::new().await;
    conformance::source_waits_for_room(
        &MqttConnector,
        source_spec(&[&topic]),
        context(&unique("room"), loopback()),
        &broker,
        &topic,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sink_publishes() {
    let topic = format!("weir-test/{}", unique("sink"));
    let broker = Mosquitto::new().await;
    conformance::sink_publishes(
        &MqttConnector,
        sink_spec(&topic),
        context(&unique("sink"), loopback()),
        &broker,
        true,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sink_unreachable_is_a_status() {
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let spec = SinkSpec {
        endpoint: endpoint(&closed.to_string(), &[]),
        topic: "weir-test/down".to_owned(),
    };
    conformance::sink_unreachable_is_a_status(
        &MqttConnector,
        spec,
        context(&unique("down"), loopback()),
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Mapping: `__ts`, duplicate user properties and the output topic template.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_keeps_ts_properties_in_order_and_expands_the_output_topic() {
    let base = format!("weir-test/{}", unique("map"));
    let reader = Plain::connect(&unique("map-read"), false, None).await;
    reader.subscribe(&format!("{base}/#")).await;
    let mut sink = MqttConnector
        .sink(
            sink_spec(&format!("{base}/out/${{outputTopic}}")),
            context(&unique("map"), loopback()),
        )
        .await
        .unwrap();
    let mut output = Outbound::new("sensors/1", "{\"t\":1}");
    output.content_type = Some(Bytes::from_static(b"application/json"));
    output.user_properties = vec![
        (
            Bytes::from_static(b"__ts"),
            Bytes::from_static(b"001758255553528:00000:n1"),
        ),
        (Bytes::from_static(b"k"), Bytes::from_static(b"v1")),
        (Bytes::from_static(b"k"), Bytes::from_static(b"v2")),
    ];
    let expected = output.user_properties.clone();
    let report = sink.send(vec![output]).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let got = reader.receive(1, Duration::from_secs(10)).await;
    let message = got.first().expect("the output reached the broker");
    assert_eq!(message.topic, format!("{base}/out/sensors/1"));
    assert_eq!(message.user_properties, expected);
    assert_eq!(
        message.content_type.as_deref(),
        Some(&b"application/json"[..])
    );

    // An output that can never be published is rejected with its reason, not retried.
    let mut bad = Outbound::new("x", "y");
    bad.user_properties = vec![(Bytes::from_static(b"k"), Bytes::from_static(b"\xff"))];
    let report = sink.send(vec![bad]).await.unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].reason, "invalid_user_property");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_keeps_ts_and_property_order() {
    let topic = format!("weir-test/{}", unique("ts"));
    let publisher = Plain::connect(&unique("ts-pub"), false, None).await;
    let context = context(&unique("ts"), loopback());
    let running =
        conformance::start_source(&MqttConnector, source_spec(&[&topic]), context.clone(), 10)
            .await
            .unwrap();
    conformance::wait_connected(&context).await.unwrap();
    let mut message = Outbound::new(topic.clone(), "1");
    message.user_properties = vec![
        (Bytes::from_static(b"b"), Bytes::from_static(b"1")),
        (
            Bytes::from_static(b"__ts"),
            Bytes::from_static(b"1758255553528:0:df"),
        ),
        (Bytes::from_static(b"b"), Bytes::from_static(b"2")),
    ];
    let expected = message.user_properties.clone();
    publisher.publish(vec![message]).await;
    let got = running.intake.take(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].user_properties, expected);
    assert!(matches!(
        got[0].ack,
        weir_connectors::Ack::Mqtt { generation: 1, .. }
    ));
    running.intake.settle(&running.acks, &got[0], true);
}

// ---------------------------------------------------------------------------------------------
// The egress wall.

async fn refused(address: &str, egress: Egress) -> String {
    let deployment = unique("egress");
    let context = context(&deployment, egress);
    let spec = SourceSpec {
        endpoint: endpoint(address, &[]),
        topics: vec!["weir-test/egress".to_owned()],
    };
    let _running = conformance::start_source(&MqttConnector, spec, context.clone(), 10)
        .await
        .unwrap();
    let mut error = String::new();
    until(
        "the source reports the refusal",
        Duration::from_secs(10),
        || match context.status.get().0 {
            ConnectionState::Retrying { error: e, .. } | ConnectionState::Failed { error: e } => {
                error = e;
                true
            }
            ConnectionState::Connected => panic!("{address} connected through the egress wall"),
            ConnectionState::Connecting => false,
        },
    )
    .await;
    // Several attempts, none of which reached the broker.
    until("a second attempt", Duration::from_secs(10), || {
        matches!(context.status.get().0, ConnectionState::Retrying { attempts, .. } if attempts >= 2)
    })
    .await;
    assert!(
        !mosquitto_log().contains(&context.client_id),
        "the broker saw a connection from {}",
        context.client_id
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_wall_refuses_loopback_unless_allowed() {
    let port = mosquitto_port();
    let error = refused(&format!("127.0.0.1:{port}"), Egress::default()).await;
    assert!(error.contains("platform's own network"), "{error}");
    // Other spellings of loopback, and a name resolving to it.
    for address in [format!("127.1:{port}"), format!("2130706433:{port}")] {
        let error = refused(&address, Egress::default()).await;
        assert!(
            error.contains("platform's own network"),
            "{address}: {error}"
        );
    }
    let error = refused(&format!("localhost:{port}"), Egress::default()).await;
    assert!(error.contains("platform's own network"), "{error}");
    // Allowing the address does not allow a name: the admin allows the name itself.
    let error = refused(&format!("localhost:{port}"), loopback()).await;
    assert!(error.contains("platform's own network"), "{error}");

    // Allowed: it connects.
    let context = context(&unique("egress-ok"), loopback());
    let spec = SourceSpec {
        endpoint: endpoint(&format!("127.0.0.1:{port}"), &[]),
        topics: vec!["weir-test/egress".to_owned()],
    };
    let _running = conformance::start_source(&MqttConnector, spec, context.clone(), 10)
        .await
        .unwrap();
    conformance::wait_connected(&context).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_exactly_one_source() {
    let topic = format!("weir-test/{}", unique("shared"));
    let filter = format!("$share/{}/{topic}", unique("g"));
    let publisher = Plain::connect(&unique("shared-pub"), false, None).await;
    let contexts = [
        context(&unique("shared-a"), loopback()),
        context(&unique("shared-b"), loopback()),
    ];
    let mut sources = Vec::new();
    for context in &contexts {
        sources.push(
            conformance::start_source(
                &MqttConnector,
                source_spec(&[&filter]),
                context.clone(),
                1000,
            )
            .await
            .unwrap(),
        );
        conformance::wait_connected(context).await.unwrap();
    }
    // Both subscriptions are in place once each source took a message of its own.
    let count = 100;
    publisher
        .publish(
            (0..count)
                .map(|n| Outbound::new(topic.clone(), n.to_string()))
                .collect(),
        )
        .await;
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut total = 0;
    while total < count && tokio::time::Instant::now() < deadline {
        for (i, running) in sources.iter().enumerate() {
            for message in running.intake.take(count, Duration::from_millis(50)).await {
                running.intake.settle(&running.acks, &message, true);
                seen.entry(String::from_utf8(message.payload.to_vec()).unwrap())
                    .or_default()
                    .push(i);
                total += 1;
            }
        }
    }
    // Nothing more arrives.
    for running in &sources {
        assert!(
            running
                .intake
                .take(1, Duration::from_millis(500))
                .await
                .is_empty()
        );
    }
    assert_eq!(seen.len(), count, "every message arrived");
    assert!(
        seen.values().all(|v| v.len() == 1),
        "each message to exactly one source"
    );
    let to_first = seen.values().filter(|v| v[0] == 0).count();
    println!("shared subscription: {to_first} of {count} to the first source");
    assert!(
        to_first > 0 && to_first < count,
        "both sources took a share: {to_first}"
    );
}

// ---------------------------------------------------------------------------------------------
// Checks.

#[test]
fn checks_report_every_problem_with_its_path() {
    let spec = SourceSpec {
        endpoint: endpoint("host:99999", &[("qos", "2"), ("tls", "sometimes")]),
        topics: vec![
            "ok/+".to_owned(),
            "bad/#/x".to_owned(),
            "$share//x".to_owned(),
        ],
    };
    let paths: Vec<String> = MqttConnector
        .check_source(&spec)
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/endpoint/settings/tls",
            "/endpoint/address",
            "/endpoint/settings/qos",
            "/source/topics/1",
            "/source/topics/2"
        ]
    );
    let sink = SinkSpec {
        endpoint: endpoint("host:1883", &[]),
        topic: "out/+/${outputTopic}".to_owned(),
    };
    let paths: Vec<String> = MqttConnector
        .check_sink(&sink)
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert_eq!(paths, ["/sink/topic"]);
    assert!(MqttConnector.check_source(&source_spec_plain()).is_empty());
    assert!(
        weir_connectors::Registry::standard().get("mqtt").is_some(),
        "mqtt is registered"
    );
}

fn source_spec_plain() -> SourceSpec {
    SourceSpec {
        endpoint: endpoint("broker.example:1883", &[("session_expiry_s", "60")]),
        topics: vec!["$share/g/a/#".to_owned(), "a/+/c".to_owned()],
    }
}

// ---------------------------------------------------------------------------------------------
// At-least-once across a broker restart, by count.

fn take(messages: Vec<Inbound>, received: &mut HashMap<u32, u32>) {
    take_into(&messages, received);
}

fn take_into(messages: &[Inbound], received: &mut HashMap<u32, u32>) {
    for m in messages {
        let n: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        *received.entry(n).or_default() += 1;
    }
}

/// Both broker-restart checks, one after the other: they stop and start the same Mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_lose_nothing() {
    let broker = restartable_mosquitto();
    acks_of_an_older_connection_are_dropped(&broker).await;
    at_least_once_across_a_broker_restart(&broker).await;
}

/// Packet ids are per connection, so an ack for a message of an older connection could
/// acknowledge another message of the new one (rumqttc#849): the source drops such acks, and the
/// broker sends the message again.
async fn acks_of_an_older_connection_are_dropped(broker: &str) {
    let port = port_of(broker);
    let topic = format!("weir-test/{}", unique("stale"));
    let publisher = Plain::connect_to(port, &unique("stale-pub"), false, None).await;
    let context = context(&unique("stale"), loopback());
    let first = conformance::start_source(
        &MqttConnector,
        source_spec_at(broker, &[&topic]),
        context.clone(),
        10,
    )
    .await
    .unwrap();
    conformance::wait_connected(&context).await.unwrap();
    publisher
        .publish(
            (0..3)
                .map(|n| Outbound::new(topic.clone(), n.to_string()))
                .collect(),
        )
        .await;
    let older = first.intake.take(3, Duration::from_secs(10)).await;
    assert_eq!(older.len(), 3);
    assert!(
        older
            .iter()
            .all(|m| matches!(m.ack, weir_connectors::Ack::Mqtt { generation: 1, .. }))
    );
    drop(publisher);

    services("mosquitto-stop").await;
    services("mosquitto-start").await;
    // The session brings the three again on the second connection.
    let newer = first.intake.take(3, Duration::from_secs(30)).await;
    assert_eq!(newer.len(), 3, "redelivered on the new connection");
    assert!(
        newer
            .iter()
            .all(|m| matches!(m.ack, weir_connectors::Ack::Mqtt { generation: 2, .. }))
    );
    // Settled on the older connection, after it was lost: dropped, not sent as PUBACKs of the
    // new connection's packets.
    for message in &older {
        first.intake.settle(&first.acks, message, true);
    }
    // A fourth message, published after those settlements, reaches the source only after it
    // had them waiting (its loop takes the settlements in microseconds, a message takes a
    // round trip through the broker).
    let publisher = Plain::connect_to(port, &unique("stale-pub"), false, None).await;
    publisher
        .publish(vec![Outbound::new(topic.clone(), "3")])
        .await;
    assert_eq!(first.intake.take(1, Duration::from_secs(10)).await.len(), 1);
    drop(first);

    // Nothing was acknowledged: the next source of the session gets all three again.
    let context = context.with_fresh_status();
    let second = conformance::start_source(
        &MqttConnector,
        source_spec_at(broker, &[&topic]),
        context.clone(),
        10,
    )
    .await
    .unwrap();
    let again = second.intake.take(4, Duration::from_secs(30)).await;
    let mut payloads: Vec<&[u8]> = again.iter().map(|m| m.payload.as_ref()).collect();
    payloads.sort_unstable();
    assert_eq!(payloads, [&b"0"[..], b"1", b"2", b"3"], "all sent again");
    for message in &again {
        second.intake.settle(&second.acks, message, true);
    }
}

async fn at_least_once_across_a_broker_restart(broker: &str) {
    const COUNT: u32 = 10_000;
    let base = format!("weir-test/{}", unique("alo"));
    let input = format!("{base}/in");
    let output = format!("{base}/out");
    let broker = broker.to_owned();
    let port = port_of(&broker);

    // The output is read by a persistent session: it keeps its subscription and queued
    // messages across the restart.
    let reader = Plain::connect_to(port, &unique("alo-read"), true, Some(&output)).await;
    // And the input, to tell the publisher's duplicates from the deployment's.
    let input_reader = Plain::connect_to(port, &unique("alo-read-in"), true, Some(&input)).await;

    // The deployment: an MQTT source whose messages go through an MQTT sink and are settled as
    // processed only once the sink returned.
    let source_context = context(&unique("alo-src"), loopback());
    let running = conformance::start_source(
        &MqttConnector,
        source_spec_at(&broker, &[&input]),
        source_context.clone(),
        200,
    )
    .await
    .unwrap();
    conformance::wait_connected(&source_context).await.unwrap();
    let mut forward = MqttConnector
        .sink(
            sink_spec_at(&broker, &output),
            context(&unique("alo-fwd"), loopback()),
        )
        .await
        .unwrap();
    let intake: Arc<TestIntake> = running.intake.clone();
    let acks = running.acks.clone();
    // How often the source offered each number (a second time: the broker sent it again).
    let offered: Arc<std::sync::Mutex<HashMap<u32, u32>>> = Arc::default();
    let offered_count = offered.clone();
    let forwarder = tokio::spawn(async move {
        loop {
            let taken = intake.take(100, Duration::from_millis(20)).await;
            if taken.is_empty() {
                continue;
            }
            take_into(&taken, &mut offered_count.lock().unwrap());
            let batch = taken
                .iter()
                .map(|m| Outbound {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    content_type: m.content_type.clone(),
                    user_properties: m.user_properties.clone(),
                    hold: None,
                })
                .collect();
            let report = forward.send(batch).await.unwrap();
            assert!(report.rejected.is_empty(), "{report:?}");
            for message in &taken {
                intake.settle(&acks, message, true);
            }
        }
    });

    // The input: numbered QoS 1 messages, published through the connector's sink (it keeps
    // each until its PUBACK, across the restart), half before the restart, half during it.
    let publisher_context = context(&unique("alo-pub"), loopback());
    let mut publisher = MqttConnector
        .sink(sink_spec_at(&broker, &input), publisher_context.clone())
        .await
        .unwrap();
    let (halfway_tx, halfway) = tokio::sync::oneshot::channel::<()>();
    let (go_on_tx, go_on) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        let mut halfway_tx = Some(halfway_tx);
        let mut go_on = Some(go_on);
        for first in (0..COUNT).step_by(100) {
            if first == COUNT / 2 {
                halfway_tx.take().unwrap().send(()).unwrap();
                go_on.take().unwrap().await.unwrap();
            }
            let batch = (first..first + 100)
                .map(|n| Outbound::new(Bytes::new(), n.to_string()))
                .collect();
            let report = publisher.send(batch).await.unwrap();
            assert!(report.rejected.is_empty());
        }
    });

    let mut received: HashMap<u32, u32> = HashMap::new();

    halfway.await.unwrap();
    // Some of the first half went through; then the broker stops (SIGTERM: it saves its
    // sessions) while messages are in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while received.len() < 1000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no flow before the restart"
        );
        let got = reader.receive(1000, Duration::from_millis(100)).await;
        take(got, &mut received);
    }
    let before = received.len();
    services("mosquitto-stop").await;
    go_on_tx.send(()).unwrap();
    // (The source may be holding messages its intake has no room for, and not reading, so its
    // status may only change once the deployment moves again; the publisher's shows the outage.)
    until(
        "the publisher reports the lost broker",
        Duration::from_secs(30),
        || {
            matches!(
                publisher_context.status.get().0,
                ConnectionState::Retrying { .. }
            )
        },
    )
    .await;
    services("mosquitto-start").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while received.len() < COUNT as usize && tokio::time::Instant::now() < deadline {
        let got = reader.receive(1000, Duration::from_millis(200)).await;
        take(got, &mut received);
    }
    publishing.await.unwrap();
    // Whatever duplicates are still on their way.
    let got = reader.receive(usize::MAX, Duration::from_secs(2)).await;
    take(got, &mut received);
    forwarder.abort();

    let missing: Vec<u32> = (0..COUNT).filter(|n| !received.contains_key(n)).collect();
    let duplicates: u32 = received.values().map(|c| c - 1).sum();
    let offered_again: u32 = offered.lock().unwrap().values().map(|c| c - 1).sum();
    let mut inputs = HashMap::new();
    take(
        input_reader
            .receive(usize::MAX, Duration::from_secs(2))
            .await,
        &mut inputs,
    );
    let published_again: u32 = inputs.values().map(|c| c - 1).sum();
    println!(
        "at-least-once across a Mosquitto restart: {} of {COUNT} numbers arrived ({before} before \
         the restart), {} missing, {duplicates} duplicates on the output topic ({offered_again} \
         numbers offered again by the source; {published_again} published again by the test's \
         publisher, of {} read back from the input)",
        received.len(),
        missing.len(),
        inputs.len(),
    );
    assert!(
        missing.is_empty(),
        "{} numbers lost, the first: {:?}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
}
