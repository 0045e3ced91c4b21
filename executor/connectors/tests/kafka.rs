//! The `kafka` connector against a real Kafka-protocol broker (tansu, started by
//! `scripts/services start`): the conformance suite, the key and header mapping, rejections,
//! the egress wall on bootstrap and advertised brokers, and at-least-once by count through
//! broker outages and a consumer restart.
//!
//! Needs `WEIR_TEST_KAFKA` (the shared broker) and `WEIR_TEST_TANSU` (the broker binary, for
//! tests that run a broker of their own); without them the tests fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use weir_api::TenantId;
use weir_api::egress::Egress;
use weir_connectors::conformance::{self, Broker};
use weir_connectors::kafka::KafkaConnector;
use weir_connectors::{
    Ack, ConnectContext, ConnectionState, Connector, EndpointSpec, Inbound, Outbound, SinkSpec,
    SourceSpec,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `scripts/services start` and `source target/services/env` \
             (this test needs the real service and fails without it)"
        )
    })
}

fn broker() -> String {
    env("WEIR_TEST_KAFKA")
}

/// A name no other test run uses (the shared broker keeps topics and groups while it runs).
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

fn endpoint(address: &str, settings: &[(&str, &str)]) -> EndpointSpec {
    EndpointSpec {
        name: "kafka".to_owned(),
        kind: "kafka".to_owned(),
        address: Some(address.to_owned()),
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        secret: None,
    }
}

/// The test brokers run on loopback, which a tenant may reach only when the admin allowed it.
fn loopback_allowed() -> Egress {
    Egress::new(["127.0.0.1"])
}

fn context(deployment: &str, egress: Egress) -> ConnectContext {
    let mut context = ConnectContext::new(
        TenantId::new("tenant-a").unwrap(),
        &unique(deployment),
        egress,
        1024 * 1024,
    );
    context.connect_timeout = Duration::from_secs(5);
    context.read_timeout = Duration::from_secs(10);
    context
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

async fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create().await.unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await.unwrap() {
        result.unwrap();
    }
}

/// The test's own access to the broker: a plain producer, and a consumer in a group of its
/// own that reads from the beginning.
struct KafkaBroker {
    bootstrap: String,
    producer: FutureProducer,
    consumer: tokio::sync::Mutex<Option<StreamConsumer>>,
}

impl KafkaBroker {
    async fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            producer: client_config(bootstrap).create().await.unwrap(),
            consumer: tokio::sync::Mutex::new(None),
        }
    }
}

fn to_inbound(message: &rdkafka::message::BorrowedMessage<'_>) -> Inbound {
    let mut user_properties = Vec::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            user_properties.push((
                Bytes::copy_from_slice(header.key.as_bytes()),
                Bytes::copy_from_slice(header.value.unwrap_or_default()),
            ));
        }
    }
    if let Some(key) = message.key() {
        user_properties.push((Bytes::from_static(b"__key"), Bytes::copy_from_slice(key)));
    }
    Inbound {
        topic: Bytes::copy_from_slice(message.topic().as_bytes()),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
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

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish(&self, messages: Vec<Outbound>) -> Result<(), String> {
        for message in messages {
            let topic = String::from_utf8(message.topic.to_vec()).unwrap();
            let mut headers = OwnedHeaders::new();
            let mut key = None;
            for (name, value) in &message.user_properties {
                if name.as_ref() == b"__key" {
                    key = Some(value.clone());
                    continue;
                }
                headers = headers.insert(Header {
                    key: std::str::from_utf8(name).unwrap(),
                    value: Some(value.as_ref()),
                });
            }
            let mut record = FutureRecord::to(&topic)
                .payload(message.payload.as_ref())
                .headers(headers);
            if let Some(key) = &key {
                record = record.key(key.as_ref());
            }
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| format!("publishing to {topic}: {e}"))?;
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<(), String> {
        let consumer: StreamConsumer = client_config(&self.bootstrap)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .create()
            .await
            .map_err(|e| e.to_string())?;
        consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
        *self.consumer.lock().await = Some(consumer);
        Ok(())
    }

    async fn receive(&self, count: usize, timeout: Duration) -> Vec<Inbound> {
        let consumer = self.consumer.lock().await;
        let Some(consumer) = consumer.as_ref() else {
            return Vec::new();
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut received = Vec::new();
        while received.len() < count {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => received.push(to_inbound(&message)),
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
        received
    }
}

/// Everything on the subscribed topic: the first record may take a group join (seconds, up to
/// a session timeout: librdkafka #5570), then whatever follows within 3 s.
async fn payloads(broker: &KafkaBroker) -> Vec<Bytes> {
    let mut got = broker.receive(1, Duration::from_secs(60)).await;
    got.extend(broker.receive(usize::MAX, Duration::from_secs(3)).await);
    got.into_iter().map(|m| m.payload).collect()
}

fn source_spec(address: &str, topic: &str) -> SourceSpec {
    SourceSpec {
        endpoint: endpoint(address, &[]),
        topics: vec![topic.to_owned()],
    }
}

fn sink_spec(address: &str, topic: &str, settings: &[(&str, &str)]) -> SinkSpec {
    SinkSpec {
        endpoint: endpoint(address, settings),
        topic: topic.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_delivers_records_with_their_headers_in_order() {
    let address = broker();
    let topic = unique("delivers");
    create_topics(&address, &[&topic], 1).await;
    let broker = KafkaBroker::new(&address).await;
    conformance::source_delivers(
        &KafkaConnector,
        source_spec(&address, &topic),
        context("delivers", loopback_allowed()),
        &broker,
        &topic,
        false,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_redelivers_what_was_not_processed() {
    let address = broker();
    let topic = unique("redelivers");
    create_topics(&address, &[&topic], 1).await;
    let broker = KafkaBroker::new(&address).await;
    conformance::source_redelivers_unacknowledged(
        &KafkaConnector,
        source_spec(&address, &topic),
        context("redelivers", loopback_allowed()),
        &broker,
        &topic,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_source_waits_for_room_and_loses_nothing() {
    let address = broker();
    let topic = unique("room");
    create_topics(&address, &[&topic], 1).await;
    let broker = KafkaBroker::new(&address).await;
    conformance::source_waits_for_room(
        &KafkaConnector,
        source_spec(&address, &topic),
        context("room", loopback_allowed()),
        &broker,
        &topic,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sink_publishes_records_with_their_headers() {
    let address = broker();
    let topic = unique("publishes");
    create_topics(&address, &[&topic], 1).await;
    let broker = KafkaBroker::new(&address).await;
    conformance::sink_publishes(
        &KafkaConnector,
        sink_spec(&address, &topic, &[]),
        context("publishes", loopback_allowed()),
        &broker,
        false,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sink_reports_an_unreachable_broker() {
    // A loopback port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    conformance::sink_unreachable_is_a_status(
        &KafkaConnector,
        sink_spec(&format!("127.0.0.1:{port}"), "down", &[]),
        context("unreachable", loopback_allowed()),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_creates_its_topic_only_when_asked() {
    let address = broker();
    let topic = unique("created");
    let context = context("creates", loopback_allowed());
    let mut sink = KafkaConnector
        .sink(
            sink_spec(
                &address,
                &topic,
                &[("create_topics", "true"), ("partitions", "2")],
            ),
            context,
        )
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sink.send(vec![Outbound::new("ignored", "made")]),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let admin: AdminClient<DefaultClientContext> = client_config(&address).create().await.unwrap();
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .await
        .unwrap();
    let created = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .unwrap();
    assert_eq!(created.partitions().len(), 2);
    let broker = KafkaBroker::new(&address).await;
    broker.subscribe(&topic).await.unwrap();
    let got = broker.receive(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_creates_no_topic_unless_asked() {
    let address = broker();
    let topic = unique("not-created");
    let context = context("not-creates", loopback_allowed());
    let mut sink = KafkaConnector
        .sink(sink_spec(&address, &topic, &[]), context.clone())
        .await
        .unwrap();
    let sending = tokio::spawn(async move { sink.send(vec![Outbound::new("t", "nowhere")]).await });
    wait_retrying_with(&context, &topic).await;
    assert!(
        !sending.is_finished(),
        "an output to a missing topic was reported accepted"
    );
    sending.abort();
    let admin: AdminClient<DefaultClientContext> = client_config(&address).create().await.unwrap();
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        !metadata.topics().iter().any(|t| t.name() == topic),
        "the topic was created without create_topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_says_when_its_topic_does_not_exist_and_reads_it_once_created() {
    let address = broker();
    let topic = unique("missing");
    let context = context("missing", loopback_allowed());
    let running = conformance::start_source(
        &KafkaConnector,
        source_spec(&address, &topic),
        context.clone(),
        10,
    )
    .await
    .unwrap();
    let error = wait_retrying_with(&context, "nknown topic").await;
    // It stays so while the topic is missing (broker statistics do not hide it).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        matches!(context.status.get().0, ConnectionState::Retrying { .. }),
        "{error} then {:?}",
        context.status.get().0
    );
    create_topics(&address, &[&topic], 1).await;
    let broker = KafkaBroker::new(&address).await;
    broker
        .publish(vec![Outbound::new(topic.clone(), "late")])
        .await
        .unwrap();
    let got = running.intake.take(1, Duration::from_secs(120)).await;
    assert_eq!(got.len(), 1, "the record on the created topic was not read");
    conformance::wait_connected(&context).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_travels_as_the_record_key_and_comes_back_as_user_property_key() {
    let address = broker();
    let topic = unique("keys");
    create_topics(&address, &[&topic], 1).await;
    let mut sink = KafkaConnector
        .sink(
            sink_spec(&address, &topic, &[]),
            context("keys", loopback_allowed()),
        )
        .await
        .unwrap();
    let mut output = Outbound::new("x", "keyed");
    output.user_properties = vec![
        (Bytes::from_static(b"h"), Bytes::from_static(b"1")),
        (
            Bytes::from_static(b"__key"),
            Bytes::from_static(b"device-7"),
        ),
        (
            Bytes::from_static(b"__ts"),
            Bytes::from_static(b"001700000000000:00000:n1"),
        ),
    ];
    let report = sink.send(vec![output]).await.unwrap();
    assert!(report.rejected.is_empty());

    // The broker's view: the key is the record key, not a header; `__ts` is a header.
    let reader: StreamConsumer = client_config(&address)
        .set("group.id", unique("key-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .await
        .unwrap();
    reader.subscribe(&[&topic]).unwrap();
    let record = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.key(), Some(&b"device-7"[..]));
    let headers: Vec<(String, Vec<u8>)> = record
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        headers,
        [
            ("h".to_owned(), b"1".to_vec()),
            ("__ts".to_owned(), b"001700000000000:00000:n1".to_vec())
        ]
    );
    drop(record);

    // The source's view: headers in order, then the key as `__key`.
    let context = context("keys-source", loopback_allowed());
    let running = conformance::start_source(
        &KafkaConnector,
        source_spec(&address, &topic),
        context.clone(),
        10,
    )
    .await
    .unwrap();
    let got = running.intake.take(1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content_type, None);
    assert_eq!(
        got[0].user_properties,
        [
            (Bytes::from_static(b"h"), Bytes::from_static(b"1")),
            (
                Bytes::from_static(b"__ts"),
                Bytes::from_static(b"001700000000000:00000:n1")
            ),
            (
                Bytes::from_static(b"__key"),
                Bytes::from_static(b"device-7")
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_can_never_be_produced_are_rejected_with_a_reason() {
    let address = broker();
    let topic = unique("rejects");
    create_topics(&address, &[&topic], 1).await;
    let mut context = context("rejects", loopback_allowed());
    context.max_message_bytes = 1000;
    let mut sink = KafkaConnector
        .sink(sink_spec(&address, "${outputTopic}", &[]), context)
        .await
        .unwrap();
    let report = sink
        .send(vec![
            Outbound::new(topic.clone(), vec![b'x'; 2000]),
            Outbound::new("not a topic!", "bad name"),
            Outbound::new(topic.clone(), "fine"),
        ])
        .await
        .unwrap();
    let reasons: Vec<(usize, &str)> = report
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(reasons, [(0, "message_too_large"), (1, "invalid_topic")]);
    assert!(
        report.rejected[0].detail.contains("1000"),
        "{:?}",
        report.rejected[0]
    );
    let broker = KafkaBroker::new(&address).await;
    broker.subscribe(&topic).await.unwrap();
    assert_eq!(
        payloads(&broker).await,
        [Bytes::from_static(b"fine")],
        "only the good record was produced"
    );
}

/// Waits until `status` is `Retrying` with an error containing `needle`.
async fn wait_retrying_with(context: &ConnectContext, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let (ConnectionState::Retrying { error, .. }, _) = context.status.get()
            && error.contains(needle)
        {
            return error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Retrying status with {needle:?} after 30 s: {:?}",
            context.status.get().0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_refuses_a_loopback_broker_by_address_and_by_name() {
    let address = broker();
    let port = address.rsplit_once(':').unwrap().1.to_owned();
    let topic = unique("egress");
    create_topics(&address, &[&topic], 1).await;
    for bootstrap in [address.clone(), format!("localhost:{port}")] {
        // A tenant with no allowed hosts.
        let host = bootstrap.rsplit_once(':').unwrap().0.to_owned();
        let source_context = context("egress-source", Egress::default());
        let running = conformance::start_source(
            &KafkaConnector,
            source_spec(&bootstrap, &topic),
            source_context.clone(),
            10,
        )
        .await
        .unwrap();
        let error = wait_retrying_with(&source_context, "platform's own network").await;
        assert!(error.contains(&host), "{error}");
        drop(running);

        let sink_context = context("egress-sink", Egress::default());
        let mut sink = KafkaConnector
            .sink(sink_spec(&bootstrap, &topic, &[]), sink_context.clone())
            .await
            .unwrap();
        let sending =
            tokio::spawn(async move { sink.send(vec![Outbound::new("t", "never")]).await });
        let error = wait_retrying_with(&sink_context, "platform's own network").await;
        assert!(error.contains(&host), "{error}");
        assert!(
            !sending.is_finished(),
            "a refused broker accepted an output"
        );
        sending.abort();
    }
    // Nothing reached the topic: a control record published afterwards is the first there.
    let broker = KafkaBroker::new(&address).await;
    broker
        .publish(vec![Outbound::new(topic.clone(), "control")])
        .await
        .unwrap();
    broker.subscribe(&topic).await.unwrap();
    assert_eq!(payloads(&broker).await, [Bytes::from_static(b"control")]);
}

/// A broker of the test's own (to advertise another name, or to go down and up again).
struct PrivateBroker {
    child: tokio::process::Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl PrivateBroker {
    /// tansu listening on `port`, telling clients to connect to `advertised` (`host:port`).
    async fn start(port: u16, advertised: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("tansu"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = tokio::process::Command::new(env("WEIR_TEST_TANSU"))
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_listening(port).await;
        Self { child }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _killed = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_checks_the_brokers_a_cluster_advertises() {
    let port = free_port();
    // The bootstrap address is allowed; the broker then tells clients to use `localhost`.
    let _broker = PrivateBroker::start(port, &format!("localhost:{port}")).await;
    let topic = unique("advertised");
    create_topics(&format!("127.0.0.1:{port}"), &[&topic], 1).await;

    let refused = context("advertised", loopback_allowed());
    let mut sink = KafkaConnector
        .sink(
            sink_spec(&format!("127.0.0.1:{port}"), &topic, &[]),
            refused.clone(),
        )
        .await
        .unwrap();
    let sending = tokio::spawn(async move { sink.send(vec![Outbound::new("t", "never")]).await });
    let error = wait_retrying_with(&refused, "localhost").await;
    assert!(error.contains("platform's own network"), "{error}");
    assert!(!sending.is_finished(), "an output went to a refused broker");
    sending.abort();

    // With `localhost` allowed too, the same sink delivers.
    let allowed = context("advertised-ok", Egress::new(["127.0.0.1", "localhost"]));
    let mut sink = KafkaConnector
        .sink(
            sink_spec(&format!("127.0.0.1:{port}"), &topic, &[]),
            allowed,
        )
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sink.send(vec![Outbound::new("t", "delivered")]),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(report.rejected.is_empty());
    let reader = KafkaBroker::new(&format!("127.0.0.1:{port}")).await;
    reader.subscribe(&topic).await.unwrap();
    assert_eq!(payloads(&reader).await, [Bytes::from_static(b"delivered")]);
}

/// A librdkafka client of the test's own that is never dropped on an async worker thread:
/// closing one blocks (a consumer commits and leaves its group, a producer joins its threads).
/// With the broker gone before the close, a consumer's close waited out the session timeout
/// (45 s); with the broker killed in the first milliseconds of the close, it still had not
/// returned after 200 s (librdkafka 2.12 against tansu; librdkafka #4519). A blocked worker
/// stalls the runtime, and the runtime's shutdown at the end of the test waits for it: the
/// at-least-once test once hung that way after its verdict, its reader dropped on a worker
/// by `abort` while the end of the test killed the broker.
struct ClosedOffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> ClosedOffThread<T> {
    fn new(client: T) -> Self {
        Self(Some(client))
    }

    /// Closes the client on a thread of its own and waits until it is closed (a failure, not
    /// a hang, when that takes longer than 60 s).
    async fn close(mut self, what: &str) {
        let client = self.0.take().unwrap();
        let (closed, done) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            drop(client);
            let _sent = closed.send(());
        });
        tokio::time::timeout(Duration::from_secs(60), done)
            .await
            .unwrap_or_else(|_| panic!("closing {what} did not return within 60 s"))
            .unwrap();
    }
}

impl<T: Send + 'static> std::ops::Deref for ClosedOffThread<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().unwrap()
    }
}

impl<T: Send + 'static> Drop for ClosedOffThread<T> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// A TCP relay in front of a broker that can be taken down (listener closed, every connection
/// cut: clients see connection refused, as with a stopped broker) and brought up again on the
/// same port, while the broker keeps its data.
struct Relay {
    port: u16,
    target: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Relay {
    fn new(target: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            port: free_port(),
            target,
            task: Mutex::new(None),
        })
    }

    async fn up(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "rebinding the relay: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let target = self.target;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (mut client, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        eprintln!("relay accept: {error}");
                        continue;
                    }
                };
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ended = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
        eprintln!("relay {} up", self.port);
    }

    /// Closes the listener and cuts every connection (the accept task owns them).
    fn down(&self) {
        eprintln!("relay {} down", self.port);
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_by_count_through_broker_outages_and_a_consumer_restart() {
    const COUNT: u32 = 10_000;
    // The broker is reached only through the relay: it advertises the relay's port.
    let broker_port = free_port();
    let relay = Relay::new(SocketAddr::from(([127, 0, 0, 1], broker_port)));
    let _broker = PrivateBroker::start(broker_port, &format!("127.0.0.1:{}", relay.port)).await;
    relay.up().await;
    let address = format!("127.0.0.1:{}", relay.port);
    let (input, output) = (unique("alo-in"), unique("alo-out"));
    create_topics(&address, &[&input, &output], 3).await;

    // 10,000 numbered records, spread over the partitions by key.
    let producer: FutureProducer = client_config(&address).create().await.unwrap();
    let mut deliveries = Vec::new();
    for n in 0..COUNT {
        let payload = n.to_string();
        let record = FutureRecord::to(&input).payload(&payload).key(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
    ClosedOffThread::new(producer).close("the producer").await;

    // What arrives on the output topic, counted by number.
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let reader: StreamConsumer = client_config(&address)
        .set("group.id", unique("alo-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .await
        .unwrap();
    reader.subscribe(&[&output]).unwrap();
    // The reader is handed back when told to stop, and closed off the async workers while the
    // broker is still up (a close blocks, and with the broker gone it can block for good:
    // librdkafka #4519); on every other path (a failed assert) it closes on a thread of its own.
    let reader = ClosedOffThread::new(reader);
    let (stop_reading, mut stop) = tokio::sync::oneshot::channel::<()>();
    let reading = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stop => return reader,
                    received = reader.recv() => {
                        if let Ok(message) = received {
                            let n: u32 = std::str::from_utf8(message.payload().unwrap())
                                .unwrap()
                                .parse()
                                .unwrap();
                            *seen.lock().unwrap().entry(n).or_default() += 1;
                        }
                    }
                }
            }
        })
    };

    // The pipeline: source → (forward through the sink) → settle as processed.
    let context = context("alo", loopback_allowed());
    let source_spec = source_spec(&address, &input);
    let mut running =
        conformance::start_source(&KafkaConnector, source_spec.clone(), context.clone(), 500)
            .await
            .unwrap();
    let sink_context = context.with_fresh_status();
    let mut sink = KafkaConnector
        .sink(sink_spec(&address, &output, &[]), sink_context.clone())
        .await
        .unwrap();
    let mut forwarded = 0_usize;
    let mut events = Vec::new();
    let mut outage: Option<JoinHandle<()>> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(420);
    let mut progress = tokio::time::Instant::now();
    while seen.lock().unwrap().len() < COUNT as usize {
        if progress.elapsed() > Duration::from_secs(10) {
            progress = tokio::time::Instant::now();
            eprintln!(
                "progress: {forwarded} forwarded, {} arrived, source {:?}, sink {:?}, events {events:?}",
                seen.lock().unwrap().len(),
                context.status.get().0,
                sink_context.status.get().0
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {COUNT} numbers arrived after 420 s (events: {events:?})",
            seen.lock().unwrap().len()
        );
        let batch = running.intake.take(100, Duration::from_millis(200)).await;
        if batch.is_empty() {
            continue;
        }
        let outputs: Vec<Outbound> = batch
            .iter()
            .map(|m| Outbound::new(output.clone(), m.payload.clone()))
            .collect();
        let report = {
            let sending = sink.send(outputs);
            tokio::pin!(sending);
            loop {
                match tokio::time::timeout(Duration::from_secs(10), &mut sending).await {
                    Ok(report) => break report.unwrap(),
                    Err(_) => {
                        eprintln!(
                            "progress: a send of {} is taking long; sink {:?}",
                            batch.len(),
                            sink_context.status.get().0
                        );
                    }
                }
            }
        };
        assert!(report.rejected.is_empty(), "{report:?}");
        forwarded += batch.len();

        // Outages of the broker (every connection cut, connections refused for a while).
        for (at, seconds) in [(2_500, 3), (7_500, 5)] {
            if forwarded >= at
                && !events
                    .iter()
                    .any(|e: &String| e.starts_with(&format!("outage at {at}")))
            {
                events.push(format!("outage at {at} forwarded, {seconds} s"));
                let relay = relay.clone();
                if let Some(previous) = outage.take() {
                    previous.await.unwrap();
                }
                outage = Some(tokio::spawn(async move {
                    relay.down();
                    tokio::time::sleep(Duration::from_secs(seconds)).await;
                    relay.up().await;
                }));
            }
        }
        // The consumer side restarts with this batch forwarded but not settled: it is read
        // again by the next consumer of the group (duplicates, never losses).
        if forwarded >= 5_000 && !events.iter().any(|e| e.starts_with("consumer restart")) {
            events.push(format!(
                "consumer restart at {forwarded} forwarded, {} unsettled",
                batch.len()
            ));
            drop(running);
            running = conformance::start_source(
                &KafkaConnector,
                source_spec.clone(),
                context.with_fresh_status(),
                500,
            )
            .await
            .unwrap();
            continue;
        }
        for message in &batch {
            running.intake.settle(&running.acks, message, true);
        }
    }
    if let Some(outage) = outage {
        outage.await.unwrap();
    }
    // Teardown while the broker is up, every librdkafka client closed off the async workers:
    // the test's reader with a bounded wait, before the broker is killed at the end; the
    // connector's source and sink by the connector itself (it closes them on threads of their
    // own, which the test does not wait for).
    stop_reading.send(()).unwrap();
    let reader = reading.await.unwrap();
    reader.close("the reader").await;
    drop(running);
    drop(sink);
    let seen = seen.lock().unwrap();
    let missing: Vec<u32> = (0..COUNT).filter(|n| !seen.contains_key(n)).collect();
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    println!(
        "kafka at-least-once: {COUNT} numbered records sent, {} distinct arrived, {} missing, \
         {duplicates} duplicates; {forwarded} forwarded; events: {events:?}",
        seen.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(
        events.len(),
        3,
        "every outage and the restart happened: {events:?}"
    );
}

/// Waits until `group` committed `offset` for partition 0 of `topic`.
async fn wait_committed(address: &str, group: &str, topic: &str, offset: i64) {
    let reader: StreamConsumer = client_config(address)
        .set("group.id", group)
        .create()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut partitions = rdkafka::TopicPartitionList::new();
        partitions.add_partition(topic, 0);
        let committed = reader
            .committed_offsets(partitions, Duration::from_secs(5))
            .await
            .unwrap();
        let now = committed.elements()[0].offset();
        if now == rdkafka::Offset::Offset(offset) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} committed {now:?} for {topic}, not {offset}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_record_is_read_again_and_nothing_from_it_on_is_committed() {
    let address = broker();
    let topic = unique("abandoned");
    create_topics(&address, &[&topic], 1).await;
    let broker = KafkaBroker::new(&address).await;
    let context = context("abandoned", loopback_allowed());
    let spec = source_spec(&address, &topic);
    let running = conformance::start_source(&KafkaConnector, spec.clone(), context.clone(), 10)
        .await
        .unwrap();
    broker
        .publish(conformance::sample_messages(&topic, "abandoned"))
        .await
        .unwrap();
    let first = running.intake.take(3, Duration::from_secs(60)).await;
    assert_eq!(first.len(), 3);
    // 0 processed, 1 abandoned, 2 processed: 1 and 2 come again, 0 does not.
    running.intake.settle(&running.acks, &first[0], true);
    running.intake.settle(&running.acks, &first[1], false);
    running.intake.settle(&running.acks, &first[2], true);
    let again = running.intake.take(2, Duration::from_secs(30)).await;
    let payloads: Vec<&Bytes> = again.iter().map(|m| &m.payload).collect();
    assert_eq!(payloads, [&first[1].payload, &first[2].payload]);
    for message in &again {
        running.intake.settle(&running.acks, message, true);
    }
    // The source stores offset 3 (the next record to read) and librdkafka commits it.
    wait_committed(&address, &context.client_id, &topic, 3).await;
    drop(running);
    // Everything is processed now: the group's next consumer reads nothing of it again,
    // only what comes after.
    let context = context.with_fresh_status();
    let running = conformance::start_source(&KafkaConnector, spec, context.clone(), 10)
        .await
        .unwrap();
    broker
        .publish(vec![Outbound::new(topic.clone(), "after")])
        .await
        .unwrap();
    let next = running.intake.take(1, Duration::from_secs(60)).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload, "after");
    assert!(
        running
            .intake
            .take(1, Duration::from_secs(2))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_follows_the_broker_through_a_stop_and_a_restart() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let broker = PrivateBroker::start(port, &address).await;
    let topic = unique("restart");
    create_topics(&address, &[&topic], 1).await;
    let source_context = context("restart-source", loopback_allowed());
    let running = conformance::start_source(
        &KafkaConnector,
        source_spec(&address, &topic),
        source_context.clone(),
        10,
    )
    .await
    .unwrap();
    conformance::wait_connected(&source_context).await.unwrap();
    let sink_context = context("restart-sink", loopback_allowed());
    let mut sink = KafkaConnector
        .sink(
            sink_spec(&address, &topic, &[("create_topics", "true")]),
            sink_context.clone(),
        )
        .await
        .unwrap();
    assert!(
        sink.send(vec![Outbound::new("t", "before")])
            .await
            .unwrap()
            .rejected
            .is_empty()
    );

    // The broker stops: both say so.
    drop(broker);
    wait_retrying_with(&source_context, "").await;
    let mut sending = tokio::spawn(async move {
        let report = sink.send(vec![Outbound::new("t", "across")]).await;
        (sink, report)
    });
    wait_retrying_with(&sink_context, "").await;
    assert!(!sending.is_finished());

    // It starts again on the same port (the memory engine starts empty: the test creates the
    // topic again, as an operator would): the output goes through and both are connected.
    let _broker = PrivateBroker::start(port, &address).await;
    create_topics(&address, &[&topic], 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (_sink, report) = loop {
        match tokio::time::timeout(Duration::from_secs(10), &mut sending).await {
            Ok(done) => break done.unwrap(),
            Err(_) => {
                eprintln!("progress: sink {:?}", sink_context.status.get().0);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no delivery after the restart"
                );
            }
        }
    };
    assert!(report.unwrap().rejected.is_empty());
    conformance::wait_connected(&sink_context).await.unwrap();
    conformance::wait_connected(&source_context).await.unwrap();
    drop(running);
}

/// A source and a sink stopped while their broker is down: the deployment's stop returns, and
/// the async workers stay free (closing a librdkafka client blocks, and with the broker gone a
/// consumer's close can block for good: librdkafka #4519; the connector closes its clients on
/// threads of their own). The assertion is that each stop returns, under a generous deadline.
#[test]
fn a_source_and_a_sink_stop_while_their_broker_is_down() {
    // The runtime is left in the background at the end, so a worker blocked in a close makes
    // this test fail on its deadline rather than hang in the runtime's shutdown.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(stop_a_source_and_a_sink_while_their_broker_is_down());
    }));
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn stop_a_source_and_a_sink_while_their_broker_is_down() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let broker = PrivateBroker::start(port, &address).await;
    let topic = unique("stop-down");
    create_topics(&address, &[&topic], 1).await;

    // A source in its group with a record offered and settled (an offset to commit on close),
    // and one offered and not settled.
    let source_context = context("stop-down-source", loopback_allowed());
    let source = KafkaConnector
        .source(source_spec(&address, &topic), source_context.clone())
        .await
        .unwrap();
    let intake = conformance::TestIntake::new(10);
    let (acks, receiver) = weir_connectors::ack_channel(10);
    let offered: Arc<dyn weir_connectors::Intake> = intake.clone();
    let source_task = tokio::spawn(source.run(offered, receiver));
    let sink_context = context("stop-down-sink", loopback_allowed());
    let mut sink = KafkaConnector
        .sink(sink_spec(&address, &topic, &[]), sink_context.clone())
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sink.send(vec![
            Outbound::new("t", "first"),
            Outbound::new("t", "second"),
        ]),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while taken.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source offered {} of 2 records",
            taken.len()
        );
        taken.extend(intake.take(2, Duration::from_millis(200)).await);
    }
    intake.settle(&acks, &taken[0], true);

    // The broker goes away; the sink still holds a record it could not deliver.
    drop(broker);
    wait_retrying_with(&source_context, "").await;
    let sending = tokio::spawn(async move {
        let report = sink.send(vec![Outbound::new("t", "undelivered")]).await;
        (sink, report)
    });
    wait_retrying_with(&sink_context, "").await;
    assert!(
        !sending.is_finished(),
        "a sink delivered with its broker down"
    );

    // The deployment stops: the source's acks end (its run returns and drops the consumer on
    // this runtime's worker), the pending send is abandoned and the sink dropped, on a worker.
    drop(acks);
    let stopped = tokio::time::timeout(Duration::from_secs(30), source_task).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "stopping the source with its broker down: {stopped:?}"
    );
    sending.abort();
    let dropped = tokio::time::timeout(Duration::from_secs(30), sending).await;
    assert!(
        matches!(&dropped, Ok(Err(error)) if error.is_cancelled()),
        "stopping the sink with its broker down did not return"
    );
    // Both workers still run tasks.
    let (one, two) = tokio::join!(tokio::spawn(async { 1 }), tokio::spawn(async { 2 }));
    assert_eq!((one.unwrap(), two.unwrap()), (1, 2));
}
