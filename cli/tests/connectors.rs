//! The connectors end to end (issue 10): a real `weir serve` process reading from and writing to
//! a real Mosquitto 2.0 (`scripts/services start`, then `source target/services/env`), with the
//! test's own rumqttc v5 clients publishing into the deployments' source topics and reading their
//! sink topics.
//!
//! - MQTT → temperature graph → MQTT: payload, user properties (order, duplicates), content type
//!   and `__ts` across the module, connection states in the deployment's status;
//! - at-least-once by count: 10,000 numbered QoS 1 messages through an echo graph while the
//!   broker is stopped and started (a test whose name contains `restart`: nextest runs those
//!   one at a time, `.config/nextest.toml`);
//! - a sink that is down holds back its own deployment only (measured: the other deployments'
//!   counts and latencies are printed), and loses nothing once it is up;
//! - the egress wall on endpoints (literal loopback, names resolving to it, a wall that closes
//!   after the endpoint was created);
//! - two tenants' deployments on one broker never share a session (client ids);
//! - dead letters of a message the module rejects, with the MQTT message acknowledged.
//!
//! Topics and deployment ids are unique per run: a source's persistent session on the shared
//! Mosquitto is named after its tenant and deployment id, and outlives the run (its session
//! expiry), subscriptions included.
//!
//! A test that finds no `WEIR_TEST_MOSQUITTO` (or `WEIR_TEST_MOSQUITTO_RESTART`) fails: it never
//! skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{Mutex, mpsc, watch};
use weir_api::Hlc;
use weir_api::client::Client;
use weir_api::rest::{Binding, CreateEndpoint, EndpointKind};
use weir_api::tenancy::{Quotas, Role};

/// The sample graph: Fahrenheit readings to Celsius (module `temperature:1.0.0`).
const GRAPH_SIMPLE: &str = include_str!("../../tests/golden/graph-simple.yaml");

// ---------------------------------------------------------------------------------------------
// The services.

fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: start the services with `scripts/services start` and `source \
             target/services/env` (this test needs the real service; it does not skip)"
        )
    })
}

/// `127.0.0.1:PORT` of the test Mosquitto (never restarted).
fn mosquitto() -> String {
    service("WEIR_TEST_MOSQUITTO")
}

/// `127.0.0.1:PORT` of the Mosquitto that broker-restart tests stop and start.
fn restartable_mosquitto() -> String {
    service("WEIR_TEST_MOSQUITTO_RESTART")
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the test Mosquitto is 127.0.0.1:PORT")
}

/// What the never-restarted Mosquitto logged (it logs each client id that connects).
fn mosquitto_log() -> String {
    let conf = PathBuf::from(service("WEIR_TEST_MOSQUITTO_CONF"));
    std::fs::read_to_string(conf.with_file_name("mosquitto.log")).unwrap()
}

/// Runs `scripts/services <command>` (mosquitto-stop, mosquitto-start) of the checkout that
/// started the restartable Mosquitto.
async fn services(command: &'static str) {
    let conf = PathBuf::from(service("WEIR_TEST_MOSQUITTO_RESTART_CONF"));
    let checkout = conf
        .ancestors()
        .nth(4)
        .expect("the config is under <checkout>/target/services/mosquitto-restart/")
        .to_owned();
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

/// A name no other test run uses (topics and client ids on the shared Mosquitto).
fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

// ---------------------------------------------------------------------------------------------
// weir's side: tenants, endpoints, graphs, deployments and their status.

/// Quotas that stay out of the way, with `allowed` opened in the egress wall.
fn quotas(allowed: &[&str]) -> Quotas {
    Quotas {
        api_requests_per_second: 100_000,
        max_deployments: 100,
        allowed_private_hosts: allowed.iter().map(|h| (*h).to_owned()).collect(),
        ..Quotas::default()
    }
}

/// A tenant's developer (deployments) and owner (endpoints).
struct Tenant {
    developer: Client,
    owner: Client,
}

async fn tenant(admin: &Client, id: &str, quotas: Quotas) -> Tenant {
    let developer = common::tenant(admin, id, quotas).await;
    let owner = common::token(admin, id, Role::Owner).await;
    Tenant { developer, owner }
}

fn mqtt_endpoint(name: &str, address: &str) -> CreateEndpoint {
    CreateEndpoint {
        name: name.to_owned(),
        kind: EndpointKind::Mqtt,
        address: Some(address.to_owned()),
        settings: BTreeMap::new(),
        secret: None,
    }
}

async fn push_temperature(client: &Client) {
    client
        .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
        .await
        .unwrap();
    client
        .push_graph("simple", "1", GRAPH_SIMPLE.to_owned())
        .await
        .unwrap();
}

async fn push_echo(client: &Client) {
    client
        .push_module("echo", "1.0.0", weir_guests::ECHO.bytes())
        .await
        .unwrap();
    client
        .push_graph("echo", "1", common::chain_graph("echo", "echo", 1))
        .await
        .unwrap();
}

/// The deployment's runtime status (`GET /v1/deployments/{id}`, field `runtime`).
async fn runtime(client: &Client, id: &str) -> serde_json::Value {
    client
        .deployment(id)
        .await
        .unwrap()
        .runtime
        .unwrap_or(serde_json::Value::Null)
}

fn field<'a>(runtime: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    runtime.pointer(pointer).unwrap_or(&serde_json::Value::Null)
}

/// `connecting`, `connected`, `retrying` or `failed`: the state of the deployment's `side`
/// (`source`, `sink`) connection.
fn state(runtime: &serde_json::Value, side: &str) -> String {
    field(runtime, &format!("/{side}/connection/state"))
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls `check` every 20 ms until it holds; fails after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the deployment's source is connected to its broker (and so subscribed soon).
async fn source_connected(client: &Client, id: &str) {
    eventually(
        &format!("deployment {id}'s source connects"),
        Duration::from_secs(30),
        || async { state(&runtime(client, id).await, "source") == "connected" },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The test's MQTT clients (plain rumqttc v5).

/// A message a test client received.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    payload: Bytes,
    content_type: Option<String>,
    user_properties: Vec<(String, String)>,
    /// When it arrived, in microseconds since the epoch.
    at_micros: u128,
}

impl Received {
    fn text(&self) -> String {
        String::from_utf8(self.payload.to_vec()).unwrap()
    }
}

#[derive(Debug)]
enum Seen {
    Message(Received),
    PubAck,
    SubAck,
}

/// A plain MQTT v5 client with its event loop polled in a task of its own; it reconnects after
/// a lost connection, and a `persistent` one keeps its session (and subscribes again if the
/// broker lost it).
struct Mqtt {
    client: AsyncClient,
    events: Mutex<mpsc::Receiver<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mqtt {
    async fn connect(address: &str, id: &str, persistent: bool, filter: Option<&str>) -> Self {
        Self::connect_as(address, id, None, persistent, filter).await
    }

    /// A client logging in as `login` (user name, password): a device on the embedded broker.
    async fn connect_as(
        address: &str,
        id: &str,
        login: Option<(&str, &str)>,
        persistent: bool,
        filter: Option<&str>,
    ) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port_of(address));
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        options
            .set_clean_start(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(1 << 20));
        if persistent {
            options.set_session_expiry_interval(Some(3600));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, events) = mpsc::channel(100_000);
        let resubscribe = client.clone();
        let filter_owned = filter.map(str::to_owned);
        let task = tokio::spawn(async move {
            loop {
                let seen = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        if let Some(filter) = &filter_owned
                            && !connack.session_present
                        {
                            resubscribe
                                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                                .unwrap();
                        }
                        continue;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let (content_type, user_properties) = match p.properties {
                            Some(props) => (props.content_type, props.user_properties),
                            None => (None, Vec::new()),
                        };
                        Seen::Message(Received {
                            topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                            payload: p.payload,
                            content_type,
                            user_properties,
                            at_micros: now_micros(),
                        })
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => Seen::PubAck,
                    Ok(Event::Incoming(Packet::SubAck(_))) => Seen::SubAck,
                    Ok(_) => continue,
                    // The broker is away (a restart): rumqttc reconnects on the next poll; a
                    // short pause keeps that from spinning.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.send(seen).await.is_err() {
                    return;
                }
            }
        });
        let mqtt = Self {
            client,
            events: Mutex::new(events),
            task,
        };
        if filter.is_some() {
            mqtt.wait_for(1, |s| matches!(s, Seen::SubAck)).await;
        }
        mqtt
    }

    /// Waits until `count` events matching `what` were seen (30 s); the messages seen meanwhile.
    async fn wait_for(&self, count: usize, what: impl Fn(&Seen) -> bool) -> Vec<Received> {
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

    /// Publishes at QoS 1 and waits for every PUBACK.
    async fn publish(&self, messages: Vec<(String, Bytes, PublishProperties)>) {
        let count = messages.len();
        for (topic, payload, properties) in messages {
            self.client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
                .await
                .unwrap();
        }
        self.wait_for(count, |s| matches!(s, Seen::PubAck)).await;
    }

    /// Publishes plain payloads to `topic` at QoS 1 and waits for every PUBACK.
    async fn publish_plain(&self, topic: &str, payloads: impl IntoIterator<Item = String>) {
        self.publish(
            payloads
                .into_iter()
                .map(|p| {
                    (
                        topic.to_owned(),
                        Bytes::from(p),
                        PublishProperties::default(),
                    )
                })
                .collect(),
        )
        .await;
    }

    /// The messages that arrive within `timeout`, up to `count`.
    async fn receive(&self, count: usize, timeout: Duration) -> Vec<Received> {
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

/// Numbers counted as they arrive: how often each was seen.
#[derive(Debug, Default)]
struct Tally {
    seen: HashMap<u32, u32>,
}

impl Tally {
    /// Counts the leading number of each payload (`<n>` or `<n> <anything>`).
    fn take(&mut self, messages: &[Received]) {
        for m in messages {
            let text = m.text();
            let n: u32 = text
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("an unnumbered output: {text:?}"));
            *self.seen.entry(n).or_default() += 1;
        }
    }

    fn distinct(&self) -> usize {
        self.seen.len()
    }

    fn duplicates(&self) -> u32 {
        self.seen.values().map(|c| c - 1).sum()
    }

    fn missing(&self, count: u32) -> Vec<u32> {
        (0..count).filter(|n| !self.seen.contains_key(n)).collect()
    }
}

/// What [`publish_numbers`] did.
#[derive(Debug, Default)]
struct Published {
    /// Numbers the broker acknowledged (each once).
    acknowledged: usize,
    /// Publishes rumqttc sent again on a resumed session (unacknowledged when the connection
    /// was lost).
    resent_by_session: usize,
    /// Numbers the test published again because the broker had lost the session.
    republished: usize,
    /// Connections lost.
    lost: usize,
}

/// What the publisher's event loop reports.
#[derive(Debug)]
enum PublisherEvent {
    Connected {
        session_present: bool,
    },
    /// A publish was written, with its packet id.
    Sent(u16),
    PubAck(u16),
    Lost,
}

/// Publishes `0..count` to `topic` at QoS 1, `per_second` at most, until the broker
/// acknowledged every number, across broker restarts: the client keeps a persistent session,
/// so on reconnecting rumqttc publishes again (same packet id) what the broker had not
/// acknowledged; were the session lost, the test publishes those numbers again itself.
/// `progress` counts acknowledged numbers.
///
/// Numbers are handed to rumqttc in order and rumqttc writes them in that order (a resumed
/// session's resends first, each with its packet id), so a packet id written for the first time
/// belongs to the oldest number handed over and not yet written; one written again is a resend.
async fn publish_numbers(
    address: String,
    client_id: String,
    topic: String,
    count: u32,
    per_second: u32,
    progress: watch::Sender<usize>,
) -> Published {
    const WINDOW: usize = 100;
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port_of(&address));
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(5))
        .set_outgoing_inflight_upper_limit(WINDOW as u16);
    let (client, mut eventloop) = AsyncClient::new(options, 2 * WINDOW);
    // The event loop is polled in a task of its own (a dropped poll can lose a write).
    let (tx, mut events) = mpsc::channel(10 * WINDOW);
    let polling = tokio::spawn(async move {
        loop {
            let event = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => PublisherEvent::Connected {
                    session_present: connack.session_present,
                },
                Ok(Event::Outgoing(Outgoing::Publish(packet_id))) => {
                    PublisherEvent::Sent(packet_id)
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => PublisherEvent::PubAck(ack.pkid),
                Ok(_) => continue,
                Err(_) => PublisherEvent::Lost,
            };
            let lost = matches!(event, PublisherEvent::Lost);
            if tx.send(event).await.is_err() {
                return;
            }
            if lost {
                // The broker is away: rumqttc connects again on the next poll.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut queue: VecDeque<u32> = (0..count).collect();
    // Handed to rumqttc, not written yet, oldest first.
    let mut handed: VecDeque<u32> = VecDeque::new();
    let mut in_flight: HashMap<u16, u32> = HashMap::new();
    let mut first_connection = true;
    let mut connected = false;
    let mut report = Published::default();
    let start = Instant::now();
    let mut handed_total = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    while !(queue.is_empty() && handed.is_empty() && in_flight.is_empty()) {
        let allowed = start.elapsed().as_millis() * u128::from(per_second) / 1000;
        while handed.len() + in_flight.len() < WINDOW && u128::from(handed_total) < allowed {
            let Some(n) = queue.pop_front() else { break };
            client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, n.to_string())
                .unwrap();
            handed.push_back(n);
            handed_total += 1;
        }
        let event = tokio::select! {
            event = events.recv() => event.expect("the publisher's event loop runs"),
            _ = pace.tick() => continue,
        };
        match event {
            PublisherEvent::Connected { session_present } => {
                if !session_present && !first_connection {
                    // rumqttc dropped what it had pending with the lost session.
                    let mut again: Vec<u32> = in_flight.drain().map(|(_, n)| n).collect();
                    again.extend(handed.drain(..));
                    again.sort_unstable();
                    report.republished += again.len();
                    for n in again.into_iter().rev() {
                        queue.push_front(n);
                    }
                }
                first_connection = false;
                connected = true;
            }
            PublisherEvent::Sent(packet_id) => match in_flight.entry(packet_id) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    report.resent_by_session += 1;
                }
                std::collections::hash_map::Entry::Vacant(entry) => {
                    if let Some(n) = handed.pop_front() {
                        entry.insert(n);
                    }
                }
            },
            PublisherEvent::PubAck(packet_id) => {
                if in_flight.remove(&packet_id).is_some() {
                    report.acknowledged += 1;
                    progress.send_replace(report.acknowledged);
                }
            }
            // A lost connection, or a failed attempt to connect again.
            PublisherEvent::Lost => {
                if connected {
                    report.lost += 1;
                }
                connected = false;
            }
        }
    }
    polling.abort();
    report
}

/// A loopback port nothing listens on (bound and released; the test binds it again later).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Relays every connection to `listener` to `to`, byte for byte: a broker that comes up on the
/// listener's port.
fn relay(listener: tokio::net::TcpListener, to: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _closed = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 1. MQTT → graph → MQTT.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_graph_to_mqtt_on_mosquitto() {
    let broker = mosquitto();
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    acme.owner
        .create_endpoint(&mqtt_endpoint("plant", &broker))
        .await
        .unwrap();
    push_temperature(&acme.developer).await;

    let id = unique("convert");
    let base = format!("weir-e2e/{id}");
    let input = format!("{base}/in");
    let output = format!("{base}/out");
    acme.developer
        .deploy(&common::deployment(
            &id,
            "simple",
            ("plant", &input),
            ("plant", &output),
        ))
        .await
        .unwrap();
    let reader = Mqtt::connect(&broker, &unique("convert-read"), false, Some(&output)).await;
    let publisher = Mqtt::connect(&broker, &unique("convert-pub"), false, None).await;
    source_connected(&acme.developer, &id).await;

    // A reading stamped a moment ago by a device of its own.
    let stamp = Hlc::at(
        Duration::from_millis(u64::try_from(now_micros() / 1000).unwrap()),
        "sensor-7",
    );
    let properties = vec![
        ("site".to_owned(), "north".to_owned()),
        ("tag".to_owned(), "a".to_owned()),
        ("test_property_key".to_owned(), "original".to_owned()),
        ("__ts".to_owned(), stamp.to_ts()),
        ("tag".to_owned(), "b".to_owned()),
    ];
    publisher
        .publish(vec![(
            input.clone(),
            Bytes::from_static(br#"{"temperature":{"value":1209,"unit":"F"}}"#),
            PublishProperties {
                content_type: Some("application/json".to_owned()),
                user_properties: properties,
                ..PublishProperties::default()
            },
        )])
        .await;

    let got = reader.receive(1, Duration::from_secs(30)).await;
    let message = got
        .first()
        .expect("the converted reading arrives on the sink topic");
    assert_eq!(message.topic, output);
    let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        r#"{"temperature":{"value":653.8888888888889,"count":0,"max":0.0,"min":0.0,"average":0.0,"last":0.0,"unit":"C","overtemp":false}}"#,
    )
    .unwrap();
    assert_eq!(payload, expected, "1209 °F is 653.9 °C");

    // User properties: in order, duplicates kept, the module's change applied; `__ts` is the
    // deployment's (replacing the incoming one, at the end).
    let (ts, others): (Vec<_>, Vec<_>) = message
        .user_properties
        .iter()
        .cloned()
        .partition(|(k, _)| k == "__ts");
    assert_eq!(
        others,
        [
            ("site".to_owned(), "north".to_owned()),
            ("tag".to_owned(), "a".to_owned()),
            ("test_property_key".to_owned(), "new_value".to_owned()),
            ("tag".to_owned(), "b".to_owned()),
        ],
        "{:?}",
        message.user_properties
    );
    assert_eq!(ts.len(), 1, "one __ts: {:?}", message.user_properties);
    let ts = &ts[0].1;
    let parts: Vec<&str> = ts.splitn(3, ':').collect();
    assert!(
        parts.len() == 3
            && parts[0].len() == 15
            && parts[0].bytes().all(|b| b.is_ascii_digit())
            && parts[1].len() == 5
            && parts[1].bytes().all(|b| b.is_ascii_digit())
            && !parts[2].is_empty(),
        "__ts in the {{ms:15}}:{{counter:5}}:{{node}} form: {ts:?}"
    );
    let out_stamp = Hlc::parse_ts(ts).unwrap();
    assert!(
        out_stamp.millis() >= stamp.millis(),
        "the output's __ts {ts} is after the input's {}",
        stamp.to_ts()
    );
    assert_eq!(
        message.content_type.as_deref(),
        Some("application/json"),
        "the content type crosses the module"
    );

    // Nothing else comes out.
    assert!(
        reader
            .receive(1, Duration::from_millis(500))
            .await
            .is_empty()
    );

    let status = runtime(&acme.developer, &id).await;
    assert_eq!(state(&status, "source"), "connected", "{status}");
    assert_eq!(state(&status, "sink"), "connected", "{status}");
    assert_eq!(field(&status, "/source/kind"), "mqtt", "{status}");
    assert_eq!(field(&status, "/sink/kind"), "mqtt", "{status}");
    assert_eq!(field(&status, "/received"), 1, "{status}");
    assert_eq!(field(&status, "/emitted"), 1, "{status}");
}

// ---------------------------------------------------------------------------------------------
// 2. At-least-once across a broker restart, by count.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_at_least_once_across_a_broker_restart() {
    const COUNT: u32 = 10_000;
    let broker = restartable_mosquitto();
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    acme.owner
        .create_endpoint(&mqtt_endpoint("restartable", &broker))
        .await
        .unwrap();
    push_echo(&acme.developer).await;
    let id = unique("alo");
    let base = format!("weir-e2e/{id}");
    let input = format!("{base}/in");
    let output = format!("{base}/out");
    acme.developer
        .deploy(&common::deployment(
            &id,
            "echo",
            ("restartable", &input),
            ("restartable", &output),
        ))
        .await
        .unwrap();
    // The outputs are read by a persistent session: it keeps its subscription and the messages
    // queued for it across the restart.
    let reader = Mqtt::connect(&broker, &unique("alo-read"), true, Some(&output)).await;
    source_connected(&acme.developer, &id).await;

    let (progress, acknowledged) = watch::channel(0usize);
    // Paced (2,500 a second) so that the publisher is mid-way when the broker stops.
    let publishing = tokio::spawn(publish_numbers(
        broker.clone(),
        unique("alo-pub"),
        input.clone(),
        COUNT,
        2500,
        progress,
    ));

    // The broker stops while numbers are on their way in, through the deployment and out.
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.distinct() < 1000 || *acknowledged.borrow() < 4000 {
        assert!(Instant::now() < deadline, "no flow before the restart");
        tally.take(&reader.receive(1000, Duration::from_millis(20)).await);
    }
    let before = tally.distinct();
    let published_before = *acknowledged.borrow();
    services("mosquitto-stop").await;
    eventually(
        "the deployment reports the lost broker",
        Duration::from_secs(30),
        || async {
            let status = runtime(&acme.developer, &id).await;
            state(&status, "source") == "retrying" || state(&status, "sink") == "retrying"
        },
    )
    .await;
    services("mosquitto-start").await;

    let deadline = Instant::now() + Duration::from_secs(300);
    while tally.distinct() < COUNT as usize && Instant::now() < deadline {
        tally.take(&reader.receive(1000, Duration::from_millis(200)).await);
    }
    let published = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("the publisher had every number acknowledged")
        .unwrap();
    // Duplicates still on their way.
    tally.take(&reader.receive(usize::MAX, Duration::from_secs(2)).await);
    let status = runtime(&acme.developer, &id).await;

    let missing = tally.missing(COUNT);
    println!(
        "at-least-once across a Mosquitto restart through weir serve: {} of {COUNT} numbers \
         arrived ({before} before the stop, with {published_before} acknowledged to the \
         publisher), {} missing, {} duplicates on the output topic; publisher: {} connection(s) \
         lost, {} publishes resent by its session, {} republished by the test; deployment: {} \
         received, {} emitted",
        tally.distinct(),
        missing.len(),
        tally.duplicates(),
        published.lost,
        published.resent_by_session,
        published.republished,
        field(&status, "/received"),
        field(&status, "/emitted"),
    );
    assert_eq!(published.acknowledged, COUNT as usize);
    assert!(
        missing.is_empty(),
        "{} numbers lost, the first: {:?}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    assert_eq!(state(&status, "source"), "connected", "{status}");
    assert_eq!(state(&status, "sink"), "connected", "{status}");
}

// ---------------------------------------------------------------------------------------------
// 3. A sink that is down holds back its own deployment only.

/// What one deployment moved while another was stuck.
#[derive(Debug)]
struct Flow {
    delivered: usize,
    duplicates: u32,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

impl Flow {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short list"
        )]
        let index = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[index]
    }

    fn describe(&self, label: &str, count: usize) -> String {
        format!(
            "{label}: {}/{count} delivered in {:.2} s ({} duplicates), latency p50 {:.1} ms, p99 \
             {:.1} ms, max {:.1} ms",
            self.delivered,
            self.elapsed.as_secs_f64(),
            self.duplicates,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
        )
    }
}

/// Publishes `count` numbered messages (each carrying its send time) to `input` in batches of
/// 50, while `reader` collects them from the deployment's output; every number delivered within
/// 60 s, or what arrived by then.
async fn flow(publisher: Arc<Mqtt>, input: String, reader: &Mqtt, count: u32) -> Flow {
    let start = Instant::now();
    let sending = tokio::spawn(async move {
        for first in (0..count).step_by(50) {
            let batch = (first..(first + 50).min(count))
                .map(|n| format!("{n} {}", now_micros()))
                .collect::<Vec<_>>();
            publisher.publish_plain(&input, batch).await;
        }
    });
    let mut tally = Tally::default();
    let mut latencies_ms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.distinct() < count as usize && Instant::now() < deadline {
        let got = reader.receive(100, Duration::from_millis(100)).await;
        for m in &got {
            let text = m.text();
            let sent: u128 = text.split(' ').nth(1).unwrap().parse().unwrap();
            #[expect(
                clippy::cast_precision_loss,
                reason = "microseconds of a test run as a float"
            )]
            latencies_ms.push(m.at_micros.saturating_sub(sent) as f64 / 1000.0);
        }
        tally.take(&got);
    }
    let elapsed = start.elapsed();
    sending.await.unwrap();
    Flow {
        delivered: tally.distinct(),
        duplicates: tally.duplicates(),
        elapsed,
        latencies_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_down_slows_only_its_own_deployment() {
    const STUCK: u32 = 3000;
    const FLOWING: u32 = 1000;
    let broker = mosquitto();
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    let other = tenant(&admin, "other", quotas(&["127.0.0.1"])).await;
    let down = closed_port();
    acme.owner
        .create_endpoint(&mqtt_endpoint("plant", &broker))
        .await
        .unwrap();
    acme.owner
        .create_endpoint(&mqtt_endpoint("archive", &format!("127.0.0.1:{down}")))
        .await
        .unwrap();
    other
        .owner
        .create_endpoint(&mqtt_endpoint("plant", &broker))
        .await
        .unwrap();
    for t in [&acme, &other] {
        push_echo(&t.developer).await;
    }
    let base = format!("weir-e2e/{}", unique("neighbours"));
    let topic = |d: &str, side: &str| format!("{base}/{d}/{side}");
    let (x, y, z) = (unique("x"), unique("y"), unique("z"));
    // X writes to a broker that is down; Y (same tenant) and Z (another tenant) to Mosquitto.
    acme.developer
        .deploy(&common::deployment(
            &x,
            "echo",
            ("plant", &topic("x", "in")),
            ("archive", &topic("x", "out")),
        ))
        .await
        .unwrap();
    acme.developer
        .deploy(&common::deployment(
            &y,
            "echo",
            ("plant", &topic("y", "in")),
            ("plant", &topic("y", "out")),
        ))
        .await
        .unwrap();
    other
        .developer
        .deploy(&common::deployment(
            &z,
            "echo",
            ("plant", &topic("z", "in")),
            ("plant", &topic("z", "out")),
        ))
        .await
        .unwrap();
    let x_out = Mqtt::connect(&broker, &unique("x-read"), false, Some(&topic("x", "out"))).await;
    let y_out = Mqtt::connect(&broker, &unique("y-read"), false, Some(&topic("y", "out"))).await;
    let z_out = Mqtt::connect(&broker, &unique("z-read"), false, Some(&topic("z", "out"))).await;
    let publisher = Arc::new(Mqtt::connect(&broker, &unique("n-pub"), false, None).await);
    let z_publisher = Arc::new(Mqtt::connect(&broker, &unique("z-pub"), false, None).await);
    source_connected(&acme.developer, &x).await;
    source_connected(&acme.developer, &y).await;
    source_connected(&other.developer, &z).await;

    // Before X backs up: what Y and Z do when all is well.
    let (y_quiet, z_quiet) = tokio::join!(
        flow(publisher.clone(), topic("y", "in"), &y_out, 200),
        flow(z_publisher.clone(), topic("z", "in"), &z_out, 200),
    );

    // X takes messages until the broker stops sending: its source acknowledges nothing (the
    // outputs wait for a sink that cannot connect), so Mosquitto holds the rest back once the
    // session's Receive Maximum (100, the endpoint's default) is unacknowledged.
    publisher
        .publish_plain(&topic("x", "in"), (0..STUCK).map(|n| n.to_string()))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = runtime(&acme.developer, &x).await;
        let received = field(&status, "/received").as_u64().unwrap_or_default();
        if received >= 100
            && field(&status, "/intake/in_flight").as_u64() == Some(received)
            && state(&status, "sink") == "retrying"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "X does not back up with its sink down: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let x_stuck = runtime(&acme.developer, &x).await;

    // Meanwhile Y and Z move their messages end to end.
    let (y_busy, z_busy) = tokio::join!(
        flow(publisher.clone(), topic("y", "in"), &y_out, FLOWING),
        flow(z_publisher.clone(), topic("z", "in"), &z_out, FLOWING),
    );
    let x_after = runtime(&acme.developer, &x).await;
    println!(
        "a sink that is down (deployment x, before -> after y and z moved: received {} -> {} of \
         {STUCK} published, {} in flight of {}, {} outputs waiting, sink {})",
        field(&x_stuck, "/received"),
        field(&x_after, "/received"),
        field(&x_after, "/intake/in_flight"),
        field(&x_after, "/intake/capacity"),
        field(&x_after, "/outputs_pending"),
        field(&x_after, "/sink/connection"),
    );
    println!(
        "  before x backed up: {}",
        y_quiet.describe("y (tenant acme)", 200)
    );
    println!(
        "  before x backed up: {}",
        z_quiet.describe("z (tenant other)", 200)
    );
    println!(
        "  while x is stuck:   {}",
        y_busy.describe("y (tenant acme)", FLOWING as usize)
    );
    println!(
        "  while x is stuck:   {}",
        z_busy.describe("z (tenant other)", FLOWING as usize)
    );
    for (label, flow, count) in [
        ("y before", &y_quiet, 200),
        ("z before", &z_quiet, 200),
        ("y while x is stuck", &y_busy, FLOWING),
        ("z while x is stuck", &z_busy, FLOWING),
    ] {
        assert_eq!(
            flow.delivered, count as usize,
            "{label}: every message delivered within 60 s"
        );
    }
    // X stayed stuck all along: nothing came out, nothing it took was settled, its sink is
    // retrying, and most of its messages wait at the broker.
    assert_eq!(state(&x_after, "sink"), "retrying", "{x_after}");
    let received = field(&x_after, "/received").as_u64().unwrap();
    assert_eq!(
        field(&x_after, "/intake/in_flight").as_u64(),
        Some(received),
        "{x_after}"
    );
    assert!(
        received <= field(&x_after, "/intake/capacity").as_u64().unwrap()
            && received < u64::from(STUCK),
        "{x_after}"
    );
    assert!(
        x_out
            .receive(1, Duration::from_millis(100))
            .await
            .is_empty()
    );

    // X's broker comes up (a relay to Mosquitto on the port X's sink tries): everything X held
    // back arrives.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", down))
        .await
        .unwrap();
    let _relay = relay(listener, broker.clone());
    let mut tally = Tally::default();
    let up = Instant::now();
    let deadline = up + Duration::from_secs(120);
    while tally.distinct() < STUCK as usize && Instant::now() < deadline {
        tally.take(&x_out.receive(1000, Duration::from_millis(200)).await);
    }
    tally.take(&x_out.receive(usize::MAX, Duration::from_millis(500)).await);
    let missing = tally.missing(STUCK);
    println!(
        "  x's sink up: {} of {STUCK} backed-up messages arrived in {:.1} s, {} missing, {} \
         duplicates",
        tally.distinct(),
        up.elapsed().as_secs_f64(),
        missing.len(),
        tally.duplicates(),
    );
    assert!(
        missing.is_empty(),
        "{} of x's messages lost, the first: {:?}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    let x_done = runtime(&acme.developer, &x).await;
    println!("  x after: {x_done}");
    assert_eq!(state(&x_done, "sink"), "connected", "{x_done}");
}

// ---------------------------------------------------------------------------------------------
// 4. The egress wall on endpoints.

/// Creating `address` as an mqtt endpoint is refused with a problem at `/address`.
async fn refused_at_create(owner: &Client, name: &str, address: &str) -> String {
    let error = owner
        .create_endpoint(&mqtt_endpoint(name, address))
        .await
        .expect_err(&format!("{address} is refused"));
    let problem = error.problem().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(problem.status, 400, "{problem:?}");
    assert_eq!(problem.code, "invalid_request", "{problem:?}");
    let at_address = problem
        .errors
        .iter()
        .find(|e| e.path == "/address")
        .unwrap_or_else(|| panic!("{address}: no problem at /address: {problem:?}"));
    at_address.message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_to_forbidden_hosts_are_refused() {
    let broker = mosquitto();
    let port = port_of(&broker);
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();

    // No host allowed: loopback in any spelling, and names resolving to it (`localhost`, its
    // fully qualified form, a hosts-file name), are refused when the endpoint is created.
    let walled = tenant(&admin, "walled", quotas(&[])).await;
    let hosts_file = std::fs::read_to_string("/etc/hosts").unwrap();
    let hosts_name = hosts_file
        .lines()
        .filter(|l| l.starts_with("127."))
        .flat_map(|l| l.split_whitespace().skip(1))
        .find(|name| *name != "localhost" && !name.starts_with("localhost"))
        .map(str::to_owned);
    let mut addresses = vec![
        broker.clone(),
        format!("127.1:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        format!("localhost.:{port}"),
    ];
    if let Some(name) = &hosts_name {
        addresses.push(format!("{name}:{port}"));
    }
    for (i, address) in addresses.iter().enumerate() {
        let message = refused_at_create(&walled.owner, &format!("e{i}"), address).await;
        assert!(
            message.contains("platform's own network"),
            "{address}: {message}"
        );
    }
    assert!(walled.owner.endpoints().await.unwrap().is_empty());

    // Allowing the address opens that address, not names that resolve to it.
    let opened = tenant(&admin, "opened", quotas(&["127.0.0.1"])).await;
    let message = refused_at_create(&opened.owner, "named", &format!("localhost:{port}")).await;
    assert!(message.contains("platform's own network"), "{message}");
    opened
        .owner
        .create_endpoint(&mqtt_endpoint("plant", &broker))
        .await
        .unwrap();
    push_echo(&opened.developer).await;
    let base = format!("weir-e2e/{}", unique("egress"));
    let (reached, walled_id) = (unique("reached"), unique("walled"));
    opened
        .developer
        .deploy(&common::deployment(
            &reached,
            "echo",
            ("plant", &format!("{base}/reached")),
            ("plant", &format!("{base}/out")),
        ))
        .await
        .unwrap();
    source_connected(&opened.developer, &reached).await;

    // The admin closes the wall again: the endpoint exists, but a deployment started now is
    // refused on connect, says so in its status, and never reaches the broker.
    admin.set_quotas("opened", &quotas(&[])).await.unwrap();
    opened
        .developer
        .deploy(&common::deployment(
            &walled_id,
            "echo",
            ("plant", &format!("{base}/walled")),
            ("plant", &format!("{base}/out")),
        ))
        .await
        .unwrap();
    // Refused on every attempt: polled until it tried twice, and never connected meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let status = runtime(&opened.developer, &walled_id).await;
        assert_ne!(state(&status, "source"), "connected", "{status}");
        if state(&status, "source") == "retrying"
            && field(&status, "/source/connection/attempts").as_u64() >= Some(2)
        {
            break field(&status, "/source/connection/error")
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the walled deployment reports no refusal: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("platform's own network"), "{error}");
    let log = mosquitto_log();
    assert!(
        log.contains(&format!("weir-opened.source.{reached}")),
        "the broker logs the client ids that connect"
    );
    assert!(
        !log.contains(&format!("weir-opened.source.{walled_id}")),
        "the walled deployment reached the broker"
    );
}

/// Client ids name tenant and deployment unambiguously: tenant `acme`'s deployment `x-…` and
/// tenant `acme-x`'s deployment `…` once had the same MQTT client id, so on a broker both use
/// they shared one session and `acme-x` received `acme`'s messages. Within a tenant, deployment
/// `d`'s sink and deployment `d-sink`'s source had the same id too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_one_broker_never_share_a_session() {
    let broker = mosquitto();
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    let acme_x = tenant(&admin, "acme-x", quotas(&["127.0.0.1"])).await;
    for t in [&acme, &acme_x] {
        t.owner
            .create_endpoint(&mqtt_endpoint("plant", &broker))
            .await
            .unwrap();
        push_echo(&t.developer).await;
    }
    let u = unique("s");
    let base = format!("weir-e2e/{u}");
    let path = |d: &str, side: &str| format!("{base}/{d}/{side}");
    // (tenant, deployment, topic part): the first two once had one client id, and so did the
    // sink of the third and the source of the fourth.
    let deployments = [
        (&acme, format!("x-{u}"), "acme"),
        (&acme_x, u.clone(), "acme-x"),
        (&acme, format!("{u}.d"), "d"),
        (&acme, format!("{u}.d-sink"), "d-sink"),
    ];
    let mut readers = Vec::new();
    for (_, _, part) in &deployments {
        readers
            .push(Mqtt::connect(&broker, &unique("s-read"), false, Some(&path(part, "out"))).await);
    }
    for (t, id, part) in &deployments {
        t.developer
            .deploy(&common::deployment(
                id,
                "echo",
                ("plant", &path(part, "in")),
                ("plant", &path(part, "out")),
            ))
            .await
            .unwrap();
    }
    for (t, id, _) in &deployments {
        source_connected(&t.developer, id).await;
    }
    let publisher = Mqtt::connect(&broker, &unique("s-pub"), false, None).await;
    for (_, _, part) in &deployments {
        publisher
            .publish_plain(&path(part, "in"), (0..20).map(|n| format!("{n} of {part}")))
            .await;
    }
    for ((_, id, part), reader) in deployments.iter().zip(&readers) {
        let mut messages = reader.receive(20, Duration::from_secs(10)).await;
        // And whatever else comes (another's messages would).
        messages.extend(reader.receive(1, Duration::from_millis(300)).await);
        let mut got: Vec<String> = messages.iter().map(Received::text).collect();
        got.sort_unstable();
        got.dedup();
        let mut expected: Vec<String> = (0..20).map(|n| format!("{n} of {part}")).collect();
        expected.sort_unstable();
        assert_eq!(got, expected, "deployment {id} has its own messages, only");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Dead letters over MQTT.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_carry_node_reason_and_input_over_mqtt() {
    let broker = mosquitto();
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    acme.owner
        .create_endpoint(&mqtt_endpoint("plant", &broker))
        .await
        .unwrap();
    push_temperature(&acme.developer).await;
    let id = unique("letters");
    let base = format!("weir-e2e/{id}");
    let input = format!("{base}/in");
    let output = format!("{base}/out");
    acme.developer
        .deploy(&common::deployment(
            &id,
            "simple",
            ("plant", &input),
            ("plant", &output),
        ))
        .await
        .unwrap();
    let reader = Mqtt::connect(&broker, &unique("letters-read"), false, Some(&output)).await;
    let publisher = Mqtt::connect(&broker, &unique("letters-pub"), false, None).await;
    source_connected(&acme.developer, &id).await;

    let developer = &acme.developer;
    let deployment_id = id.as_str();
    let letters_with = |payload: &'static str| async move {
        developer
            .dead_letters(Some(deployment_id))
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.payload == payload)
            .collect::<Vec<_>>()
    };
    publisher
        .publish_plain(&input, ["not json {".to_owned()])
        .await;
    eventually(
        "the rejected message is a dead letter",
        Duration::from_secs(30),
        || async { !letters_with("not json {").await.is_empty() },
    )
    .await;
    let letters = letters_with("not json {").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.deployment, id);
    assert_eq!(letter.node, "module-temperature/map", "{letter:?}");
    assert_eq!(letter.reason, "operator_error", "{letter:?}");
    assert!(
        letter.detail.contains("Failed to parse payload as JSON"),
        "{letter:?}"
    );
    assert_eq!(letter.topic, input);
    assert_eq!(
        letter.input_bytes,
        (input.len() + "not json {".len()) as u64
    );
    assert!(!letter.payload_truncated);

    // A good reading after it comes through. Its output travels broker → weir → broker →
    // reader, long after the rejected message was settled (its dead letter was recorded before
    // it was seen above) and its PUBACK handed to the source's connection.
    publisher
        .publish_plain(
            &input,
            [r#"{"temperature":{"value":212,"unit":"F"}}"#.to_owned()],
        )
        .await;
    let got = reader.receive(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the good reading's output");
    assert!(
        got[0].text().contains(r#""value":100.0"#),
        "{}",
        got[0].text()
    );

    // Paused and resumed: the source's session comes back. The rejected message was
    // acknowledged, so the broker does not send it again: a second rejected message, sent
    // after the resume, is the only new dead letter.
    developer.pause(&id).await.unwrap();
    developer.resume(&id).await.unwrap();
    source_connected(developer, &id).await;
    publisher
        .publish_plain(&input, ["still not json".to_owned()])
        .await;
    eventually(
        "the second rejected message is a dead letter",
        Duration::from_secs(30),
        || async { !letters_with("still not json").await.is_empty() },
    )
    .await;
    assert_eq!(
        letters_with("not json {").await.len(),
        1,
        "the acknowledged message was not delivered again"
    );
    let all = developer.dead_letters(Some(&id)).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let status = runtime(developer, &id).await;
    assert_eq!(field(&status, "/dead_lettered"), 1, "{status}");
}

// ---------------------------------------------------------------------------------------------
// 7. The embedded broker: MQTT -> graph -> MQTT through the `default` endpoint, and its walls
// between tenants' devices and deployments.

/// `host:port` of the embedded broker `weir serve` printed.
fn embedded_broker(server: &common::Server) -> String {
    server
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("mqtt broker listening on mqtt://"))
        .expect("weir serve printed its MQTT broker's address")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_graph_to_mqtt_on_the_embedded_broker_behind_tenant_walls() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let broker = embedded_broker(&server);
    let admin = server.admin();
    // No egress opening: the `default` endpoint is the platform's own broker.
    let acme = tenant(&admin, "acme", quotas(&[])).await;
    let umbra = tenant(&admin, "umbra", quotas(&[])).await;
    let acme_device = acme.owner.create_device("sensor").await.unwrap();
    let umbra_device = umbra.owner.create_device("prowler").await.unwrap();
    push_temperature(&acme.developer).await;
    push_echo(&umbra.developer).await;

    // acme converts its readings; umbra's deployments read with every filter that would match
    // acme's topics were there no walls, and write to umbra's HTTP output queue.
    acme.developer
        .deploy(&common::deployment(
            "convert",
            "simple",
            ("default", "sensors/temperature/raw"),
            ("default", "sensors/temperature/processed"),
        ))
        .await
        .unwrap();
    let mut prowl = common::deployment("prowl", "echo", ("default", "#"), ("http", ""));
    prowl.source.topics = vec![
        "#".to_owned(),
        "+/#".to_owned(),
        "$share/g/#".to_owned(),
        "sensors/temperature/raw".to_owned(),
    ];
    umbra.developer.deploy(&prowl).await.unwrap();
    source_connected(&acme.developer, "convert").await;
    source_connected(&umbra.developer, "prowl").await;
    // A deployment asking for the broker's own topics is refused by the broker, and says so.
    umbra
        .developer
        .deploy(&common::deployment(
            "sys",
            "echo",
            ("default", "$SYS/#"),
            ("http", ""),
        ))
        .await
        .unwrap();
    eventually(
        "the $SYS subscription is refused",
        Duration::from_secs(30),
        || async { state(&runtime(&umbra.developer, "sys").await, "source") == "failed" },
    )
    .await;

    let acme_reader = Mqtt::connect_as(
        &broker,
        "reader@acme",
        Some((&acme_device.username, &acme_device.password)),
        false,
        Some("sensors/temperature/processed"),
    )
    .await;
    let umbra_watcher = Mqtt::connect_as(
        &broker,
        "watcher@umbra",
        Some((&umbra_device.username, &umbra_device.password)),
        false,
        Some("#"),
    )
    .await;
    let acme_sensor = Mqtt::connect_as(
        &broker,
        "sensor@acme",
        Some((&acme_device.username, &acme_device.password)),
        false,
        None,
    )
    .await;
    acme_sensor
        .publish(vec![(
            "sensors/temperature/raw".to_owned(),
            Bytes::from_static(br#"{"temperature":{"value":212,"unit":"F"}}"#),
            PublishProperties {
                content_type: Some("application/json".to_owned()),
                user_properties: vec![("site".to_owned(), "north".to_owned())],
                ..PublishProperties::default()
            },
        )])
        .await;
    let got = acme_reader.receive(1, Duration::from_secs(30)).await;
    let message = got.first().expect("acme's converted reading arrives");
    assert_eq!(
        message.topic, "sensors/temperature/processed",
        "plain topics for devices"
    );
    let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(payload["temperature"]["value"], 100.0, "{payload}");
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert!(
        message
            .user_properties
            .contains(&("site".to_owned(), "north".to_owned()))
            && message.user_properties.iter().any(|(k, _)| k == "__ts"),
        "{:?}",
        message.user_properties
    );

    // umbra's own traffic flows (the positive control: umbra's clients and deployment work),
    // and umbra's publish to the same plain topic stays in umbra's space.
    let umbra_sensor = Mqtt::connect_as(
        &broker,
        "sensor@umbra",
        Some((&umbra_device.username, &umbra_device.password)),
        false,
        None,
    )
    .await;
    umbra_sensor
        .publish_plain("sensors/temperature/raw", ["umbra-own".to_owned()])
        .await;
    let mut prowled = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prowled
        .iter()
        .any(|o: &weir_api::rest::OutputMessage| o.payload == "umbra-own")
    {
        assert!(
            Instant::now() < deadline,
            "umbra's deployment reads umbra's own message within 30 s: {prowled:?}"
        );
        prowled.extend(
            umbra
                .developer
                .take_outputs("prowl", 100)
                .await
                .unwrap()
                .outputs
                .unwrap_or_default(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watched = umbra_watcher.receive(1, Duration::from_secs(30)).await;
    assert_eq!(
        watched.first().map(Received::text).as_deref(),
        Some("umbra-own")
    );

    // Nothing of acme's reached umbra: not its reading, not its converted output.
    prowled.extend(
        umbra
            .developer
            .take_outputs("prowl", 100)
            .await
            .unwrap()
            .outputs
            .unwrap_or_default(),
    );
    assert!(
        prowled.iter().all(|o| o.payload == "umbra-own"),
        "umbra's deployment read only umbra's messages: {prowled:?}"
    );
    let more = umbra_watcher.receive(10, Duration::from_millis(500)).await;
    assert!(more.is_empty(), "umbra's `#` saw acme's messages: {more:?}");
    // And umbra's publish to acme's input topic did not reach acme's deployment.
    assert!(
        acme_reader
            .receive(1, Duration::from_millis(500))
            .await
            .is_empty(),
        "umbra's message crossed into acme's graph"
    );
    let status = runtime(&acme.developer, "convert").await;
    assert_eq!(field(&status, "/received"), 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_also_published_to_the_tenants_topic() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let broker = embedded_broker(&server);
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&[])).await;
    let device = acme.owner.create_device("ops").await.unwrap();
    push_temperature(&acme.developer).await;
    let mut spec = common::deployment(
        "convert",
        "simple",
        ("default", "sensors/raw"),
        ("default", "sensors/processed"),
    );
    spec.dead_letters = Some(Binding {
        endpoint: "default".to_owned(),
        topics: vec!["ops/deadletters".to_owned()],
    });
    acme.developer.deploy(&spec).await.unwrap();
    // A dead-letter binding without a topic is refused, with the path.
    let mut topicless = spec.clone();
    topicless.id = "topicless".to_owned();
    topicless.dead_letters = Some(Binding {
        endpoint: "default".to_owned(),
        topics: Vec::new(),
    });
    let refused = acme.developer.deploy(&topicless).await.unwrap_err();
    assert_eq!(
        refused.problem().unwrap().errors[0].path,
        "/dead_letters/topics",
        "{refused:?}"
    );
    source_connected(&acme.developer, "convert").await;
    let ops = Mqtt::connect_as(
        &broker,
        "ops@acme",
        Some((&device.username, &device.password)),
        false,
        Some("ops/deadletters"),
    )
    .await;
    let sensor = Mqtt::connect_as(
        &broker,
        "sensor@acme",
        Some((&device.username, &device.password)),
        false,
        None,
    )
    .await;
    sensor
        .publish_plain("sensors/raw", ["not json".to_owned()])
        .await;
    let got = ops.receive(1, Duration::from_secs(30)).await;
    let letter = got.first().expect("the dead letter is published");
    let document: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(document["deployment"], "convert", "{document}");
    assert_eq!(document["reason"], "operator_error", "{document}");
    assert_eq!(document["payload"], "not json", "{document}");
    assert_eq!(document["topic"], "sensors/raw", "{document}");
    assert!(
        document["node"]
            .as_str()
            .unwrap()
            .starts_with("module-temperature"),
        "{document}"
    );
    assert_eq!(letter.content_type.as_deref(), Some("application/json"));
    // And it is kept, too.
    let kept = acme.developer.dead_letters(None).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
}

/// The outputs waiting in a deployment's HTTP queue.
async fn queued(client: &Client, id: &str) -> Vec<String> {
    client
        .take_outputs(id, 1000)
        .await
        .unwrap()
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.payload)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_acknowledged_to_their_source_survive_an_update_and_a_pause() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&[])).await;
    push_echo(&acme.developer).await;
    let spec = common::deployment("echo", "echo", ("http", ""), ("http", ""));
    let mut spec = spec;
    spec.source.topics.clear();
    spec.sink.topics.clear();
    acme.developer.deploy(&spec).await.unwrap();
    let emitted = |n: u64| {
        let developer = &acme.developer;
        async move {
            eventually(
                &format!("{n} outputs emitted"),
                Duration::from_secs(30),
                || async move { field(&runtime(developer, "echo").await, "/emitted") == n },
            )
            .await;
        }
    };
    // Three messages processed: their ingest is acknowledged, their outputs wait in the queue.
    let batch: Vec<_> = (0..3)
        .map(|i| weir_api::rest::IngestMessage::new(format!("before-update-{i}")))
        .collect();
    acme.developer.ingest("echo", &batch, false).await.unwrap();
    emitted(3).await;
    // A rolling update (a new configuration) replaces the dataflow; the queue carries over.
    let mut updated = spec.clone();
    updated
        .configuration
        .insert("note".to_owned(), "v2".to_owned());
    acme.developer.update_deployment(&updated).await.unwrap();
    let mut kept = queued(&acme.developer, "echo").await;
    kept.sort();
    assert_eq!(
        kept,
        ["before-update-0", "before-update-1", "before-update-2"],
        "outputs queued before the update are still there"
    );
    // The same across a pause and a resume.
    let batch: Vec<_> = (0..2)
        .map(|i| weir_api::rest::IngestMessage::new(format!("before-pause-{i}")))
        .collect();
    acme.developer.ingest("echo", &batch, false).await.unwrap();
    emitted(2).await;
    acme.developer.pause("echo").await.unwrap();
    acme.developer.resume("echo").await.unwrap();
    let mut kept = queued(&acme.developer, "echo").await;
    kept.sort();
    assert_eq!(
        kept,
        ["before-pause-0", "before-pause-1"],
        "outputs queued before the pause are still there"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Kafka -> graph -> Kafka, and MQTT -> graph -> OTLP, through `weir serve`. The test's own
// producer and consumer are weir's Kafka connector halves (the broker is real: tansu).

fn kafka_endpoint(name: &str, address: &str) -> CreateEndpoint {
    CreateEndpoint {
        name: name.to_owned(),
        kind: EndpointKind::Kafka,
        address: Some(address.to_owned()),
        settings: [("create_topics".to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
        secret: None,
    }
}

fn test_kafka_spec(address: &str) -> weir_connectors::EndpointSpec {
    weir_connectors::EndpointSpec {
        name: "test".to_owned(),
        kind: "kafka".to_owned(),
        address: Some(address.to_owned()),
        settings: [("create_topics".to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
        secret: None,
    }
}

fn test_context(label: &str) -> weir_connectors::ConnectContext {
    weir_connectors::ConnectContext::new(
        weir_api::TenantId::new("tester").unwrap(),
        &unique(label),
        weir_api::egress::Egress::new(["127.0.0.1"]),
        1 << 20,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_graph_to_kafka() {
    use weir_connectors::Connector as _;
    let broker = service("WEIR_TEST_KAFKA");
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    acme.owner
        .create_endpoint(&kafka_endpoint("events", &broker))
        .await
        .unwrap();
    push_temperature(&acme.developer).await;
    let id = unique("kconvert");
    let input = format!("{id}-in");
    let output = format!("{id}-out");
    // The test's consumer of the output topic, subscribed (and the topic created) first.
    let connector = weir_connectors::kafka::KafkaConnector;
    let reader = weir_connectors::conformance::start_source(
        &connector,
        weir_connectors::SourceSpec {
            endpoint: test_kafka_spec(&broker),
            topics: vec![output.clone()],
        },
        test_context("kreader"),
        100,
    )
    .await
    .unwrap();
    acme.developer
        .deploy(&common::deployment(
            &id,
            "simple",
            ("events", &input),
            ("events", &output),
        ))
        .await
        .unwrap();
    source_connected(&acme.developer, &id).await;
    let mut writer = connector
        .sink(
            weir_connectors::SinkSpec {
                endpoint: test_kafka_spec(&broker),
                topic: input.clone(),
            },
            test_context("kwriter"),
        )
        .await
        .unwrap();
    let mut reading = weir_connectors::Outbound::new(
        input.clone(),
        &br#"{"temperature":{"value":212,"unit":"F"}}"#[..],
    );
    reading.user_properties = vec![
        (Bytes::from_static(b"site"), Bytes::from_static(b"north")),
        (
            Bytes::from_static(b"__key"),
            Bytes::from_static(b"sensor-7"),
        ),
    ];
    let report = writer.send(vec![reading]).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");

    // The first group join takes seconds on tansu.
    let got = reader.intake.take(1, Duration::from_secs(90)).await;
    let message = got
        .first()
        .expect("the converted reading arrives on the output topic");
    assert_eq!(message.topic, output.as_bytes());
    let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(payload["temperature"]["value"], 100.0, "{payload}");
    let properties: Vec<(String, String)> = message
        .user_properties
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    assert!(
        properties.contains(&("site".to_owned(), "north".to_owned())),
        "headers become user properties and back: {properties:?}"
    );
    assert!(
        properties.contains(&("__key".to_owned(), "sensor-7".to_owned())),
        "the key crosses the graph as __key: {properties:?}"
    );
    assert!(
        properties.iter().any(|(k, _)| k == "__ts"),
        "the sink adds __ts: {properties:?}"
    );
    let status = runtime(&acme.developer, &id).await;
    assert_eq!(state(&status, "sink"), "connected", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_graph_to_otlp_reaches_the_collector() {
    let mqtt = mosquitto();
    let collector = service("WEIR_TEST_OTLP_GRPC");
    let collector_log = service("WEIR_TEST_OTLP_LOG");
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", quotas(&["127.0.0.1"])).await;
    acme.owner
        .create_endpoint(&mqtt_endpoint("plant", &mqtt))
        .await
        .unwrap();
    acme.owner
        .create_endpoint(&CreateEndpoint {
            name: "telemetry".to_owned(),
            kind: EndpointKind::Otlp,
            address: Some(format!("http://{collector}")),
            settings: BTreeMap::new(),
            secret: None,
        })
        .await
        .unwrap();
    push_echo(&acme.developer).await;
    let id = unique("otel");
    let input = format!("weir-e2e/{id}/otel");
    acme.developer
        .deploy(&common::deployment(
            &id,
            "echo",
            ("plant", &input),
            ("telemetry", ""),
        ))
        .await
        .unwrap();
    source_connected(&acme.developer, &id).await;
    let metric = format!("weir_e2e_{}", id.replace('-', "_"));
    let payload = format!(
        r#"{{"metrics":[{{"name":"{metric}","type":"f64_gauge","value":21.5,"attributes":[{{"key":"site","value":"north"}}]}}],"logs":[{{"value":"{metric} log line","level":"info"}}]}}"#
    );
    let publisher = Mqtt::connect(&mqtt, &unique("otel-pub"), false, None).await;
    publisher.publish_plain(&input, [payload]).await;
    // A payload that does not conform goes to the dead letters with the reason.
    publisher
        .publish_plain(
            &input,
            [r#"{"metrics":[{"name":"x","type":"bogus","value":1}]}"#.to_owned()],
        )
        .await;
    eventually(
        "the collector logs the metric",
        Duration::from_secs(60),
        || {
            let path = collector_log.clone();
            let metric = metric.clone();
            async move {
                std::fs::read_to_string(&path)
                    .map(|log| log.contains(&metric))
                    .unwrap_or(false)
            }
        },
    )
    .await;
    eventually(
        "the non-conforming payload is a dead letter",
        Duration::from_secs(30),
        || async {
            acme.developer
                .dead_letters(Some(&id))
                .await
                .unwrap()
                .iter()
                .any(|l| l.reason == "invalid_otlp_payload" && l.detail.contains("type"))
        },
    )
    .await;
}
