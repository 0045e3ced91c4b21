//! The embedded broker as a broker: shared subscriptions, persistent sessions with manual acks,
//! message properties, bounds and shutdown, with real MQTT 5 clients (rumqttc).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_broker::{BrokerConfig, BrokerError, EmbeddedBroker};

const GRANTED: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_hand_each_message_to_one_member() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut first = device(addr, "worker-1@acme", "d1@acme", "pw-a1").await;
    let mut second = device(addr, "worker-2@acme", "d2@acme", "pw-a2").await;
    for worker in [&mut first, &mut second] {
        assert_eq!(
            worker
                .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
                .await,
            GRANTED
        );
    }
    // Another tenant's group of the same name and filter is another group.
    let mut other = device(addr, "worker-1@beta", "d1@beta", "pw-b1").await;
    assert_eq!(
        other
            .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
            .await,
        GRANTED
    );

    let mut publisher = device(addr, "pub@acme", "d1@acme", "pw-a1").await;
    let total = 20;
    for n in 0..total {
        let ack = publisher
            .publish(&format!("jobs/{n}"), &format!("job-{n}"), props())
            .await;
        assert_eq!(ack.reason, PubAckReason::Success);
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_worker = [0usize; 2];
    while seen.len() < total {
        for (index, worker) in [&mut first, &mut second].into_iter().enumerate() {
            let taken: Vec<Publish> = worker.publishes.drain(..).collect();
            for publish in taken {
                assert!(topic(&publish).starts_with("jobs/"), "{}", topic(&publish));
                *seen
                    .entry(String::from_utf8_lossy(&publish.payload).into_owned())
                    .or_default() += 1;
                per_worker[index] += 1;
            }
        }
        if seen.len() < total {
            // Wait for at least one more message on either worker.
            let missing = total - seen.len();
            tokio::select! {
                _ = first.wait_for("a job", |c| (!c.publishes.is_empty()).then_some(())) => {}
                _ = second.wait_for("a job", |c| (!c.publishes.is_empty()).then_some(())) => {}
            }
            assert!(missing > 0);
        }
    }
    assert!(
        seen.values().all(|count| *count == 1),
        "duplicates: {seen:?}"
    );
    assert!(
        per_worker.iter().all(|count| *count > 0),
        "one worker got everything: {per_worker:?}"
    );
    println!("shared subscription: {total} jobs, per worker {per_worker:?}");

    // beta's group got none of acme's jobs.
    let mut beta_publisher = device(addr, "pub@beta", "d2@beta", "pw-b2").await;
    beta_publisher
        .publish("jobs/beta", "beta-job", props())
        .await;
    other.receive("beta-job").await;
    assert_eq!(other.payloads(), Vec::<String>::new());
    broker.shutdown().await;
}

/// The MQTT source's contract (issue 10, point 2): QoS 1, manual acks, clean start off with a
/// session expiry; what was not acked comes again after a reconnect, what was acked does not.
/// The topics start with the tenant's own name, so a mount removed twice would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_messages_come_again_after_a_reconnect() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut source = options(addr, "source@acme", Some(("d1@acme", "pw-a1")));
    source.set_clean_start(false);
    source.set_session_expiry_interval(Some(300));
    source.set_manual_acks(true);

    let mut consumer = connect(source.clone()).await;
    assert!(!consumer.connack.session_present);
    assert_eq!(
        consumer.subscribe("acme/jobs/+", QoS::AtLeastOnce).await,
        GRANTED
    );

    let mut producer = device(addr, "producer@acme", "d2@acme", "pw-a2").await;
    for n in 1..=3 {
        producer
            .publish(&format!("acme/jobs/{n}"), &format!("m{n}"), props())
            .await;
    }
    let m1 = consumer.receive("m1").await;
    consumer.receive("m2").await;
    consumer.receive("m3").await;
    assert_eq!(topic(&m1), "acme/jobs/1");
    consumer.client.ack(&m1).await.unwrap();
    // The ack is on the wire once the server answers a later request (packets go in order).
    assert_eq!(
        consumer.subscribe("acme/flush", QoS::AtLeastOnce).await,
        GRANTED
    );
    consumer.drop_connection();

    producer.publish("acme/jobs/4", "m4", props()).await;

    let mut consumer = connect(source.clone()).await;
    assert!(consumer.connack.session_present);
    let mut again = Vec::new();
    for payload in ["m2", "m3", "m4"] {
        let publish = consumer.receive(payload).await;
        let expected = format!("acme/jobs/{}", payload.trim_start_matches('m'));
        assert_eq!(topic(&publish), expected, "{payload}");
        again.push((payload, publish.dup));
        consumer.client.ack(&publish).await.unwrap();
    }
    // m2 and m3 were sent before (DUP). m4 too, if the broker had not seen the connection
    // drop yet when it came.
    assert_eq!(again.get(..2), Some(&[("m2", true), ("m3", true)][..]));
    assert_eq!(
        consumer.subscribe("acme/flush", QoS::AtLeastOnce).await,
        GRANTED
    );
    assert_eq!(consumer.payloads(), Vec::<String>::new(), "m1 came again");
    consumer.drop_connection();

    // Everything was acked: nothing comes again, the next message does.
    let mut consumer = connect(source).await;
    assert!(consumer.connack.session_present);
    producer.publish("acme/jobs/5", "m5", props()).await;
    let m5 = consumer.receive("m5").await;
    assert_eq!(topic(&m5), "acme/jobs/5");
    assert_eq!(consumer.payloads(), Vec::<String>::new());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_properties_pass_through_intact() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut reader = device(addr, "reader@acme", "d1@acme", "pw-a1").await;
    assert_eq!(
        reader.subscribe("sensors/+", QoS::AtLeastOnce).await,
        GRANTED
    );
    let mut writer = device(addr, "writer@acme", "d2@acme", "pw-a2").await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some("replies/pump-7".to_owned()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("__ts".to_owned(), "1700000000000:0:pump-7".to_owned()),
            ("k".to_owned(), "v1".to_owned()),
            ("k".to_owned(), "v2".to_owned()),
            ("a".to_owned(), "last".to_owned()),
        ],
        content_type: Some("application/json".to_owned()),
        ..props()
    };
    writer
        .publish("sensors/temp", r#"{"temperature":21.5}"#, sent.clone())
        .await;
    let received = reader.receive(r#"{"temperature":21.5}"#).await;
    assert_eq!(topic(&received), "sensors/temp");
    assert_eq!(received.qos, QoS::AtLeastOnce);
    assert!(!received.retain);
    let got = received.properties.unwrap();
    assert_eq!(got.user_properties, sent.user_properties);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(got.payload_format_indicator, sent.payload_format_indicator);
    // Message expiry is passed on with the time spent in the broker taken off.
    let expiry = got.message_expiry_interval.unwrap();
    assert!((3590..=3600).contains(&expiry), "{expiry}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_are_enforced() {
    let bounded = BrokerConfig {
        max_sessions_per_tenant: 2,
        max_subscriptions_per_client: 2,
        max_packet_bytes: 4096,
        ..config()
    };
    let broker = EmbeddedBroker::start(bounded, devices()).await.unwrap();
    let addr = broker.local_addr();

    // Sessions per tenant: the third acme session is refused; taking over one of its own
    // sessions and other tenants are not affected.
    let _first = device(addr, "one@acme", "d1@acme", "pw-a1").await;
    let mut second = device(addr, "two@acme", "d1@acme", "pw-a1").await;
    assert_eq!(
        try_connect(options(addr, "three@acme", Some(("d1@acme", "pw-a1"))))
            .await
            .err(),
        Some(Ok(ConnectReturnCode::NotAuthorized))
    );
    let _takeover = device(addr, "two@acme", "d2@acme", "pw-a2").await;
    second.wait_closed().await;
    let mut beta = device(addr, "one@beta", "d1@beta", "pw-b1").await;

    // Subscriptions per session.
    assert_eq!(beta.subscribe("a", QoS::AtLeastOnce).await, GRANTED);
    assert_eq!(beta.subscribe("b", QoS::AtLeastOnce).await, GRANTED);
    let third = beta.subscribe("c", QoS::AtLeastOnce).await;
    assert_ne!(third, GRANTED);
    println!("subscription past the limit: {third:?}");

    // A packet over max_packet_bytes ends the connection. rumqttc keeps to the size the
    // CONNACK advertised, so this client writes its packets by hand.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&connect_packet("big@beta", "d2@beta", "pw-b2"))
        .await
        .unwrap();
    let mut connack = [0u8; 2];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; usize::from(connack[1])];
    raw.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest.get(1), Some(&0x00), "CONNACK reason Success");
    // Positive control: a packet just under the limit is taken, and the connection answers.
    raw.write_all(&publish_packet("a", &[b'x'; 4000]))
        .await
        .unwrap();
    raw.write_all(&[0xC0, 0x00]).await.unwrap(); // PINGREQ
    let mut pingresp = [0u8; 2];
    raw.read_exact(&mut pingresp).await.unwrap();
    assert_eq!(pingresp, [0xD0, 0x00], "PINGRESP");
    raw.write_all(&publish_packet("a", &[b'x'; 8 * 1024]))
        .await
        .unwrap();
    // The broker answers with DISCONNECT (or just closes); either way the stream ends.
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, raw.read_to_end(&mut answer))
        .await
        .expect("connection still open after an oversized packet")
        .ok();
    println!("after an oversized packet the broker sent {answer:02x?} and closed");
    if let Some(first) = answer.first() {
        assert_eq!(*first, 0xE0, "DISCONNECT");
    }
    broker.shutdown().await;
}

/// MQTT 5 variable byte integer (section 1.5.5).
fn remaining_length(mut length: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            return;
        }
    }
}

fn string(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// CONNECT (MQTT 5.0 section 3.1) with clean start, user name and password.
fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(5);
    body.push(0x80 | 0x40 | 0x02);
    body.extend_from_slice(&30u16.to_be_bytes());
    body.push(0); // no properties
    string(client_id, &mut body);
    string(user, &mut body);
    string(password, &mut body);
    let mut packet = vec![0x10];
    remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(&body);
    packet
}

/// PUBLISH at QoS 0 (MQTT 5.0 section 3.3).
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    body.push(0); // no properties
    body.extend_from_slice(payload);
    let mut packet = vec![0x30];
    remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_clients_and_frees_the_address() {
    let broker = broker().await;
    let addr = broker.local_addr();
    let mut client = device(addr, "one@acme", "d1@acme", "pw-a1").await;
    assert_eq!(client.subscribe("#", QoS::AtLeastOnce).await, GRANTED);

    broker.shutdown().await;
    let why = client.wait_closed().await;
    println!("after shutdown: {why}");
    assert!(
        try_connect(options(addr, "two@acme", Some(("d1@acme", "pw-a1"))))
            .await
            .is_err()
    );

    // The same address again, at once.
    let again = EmbeddedBroker::start(
        BrokerConfig {
            listen: addr,
            ..config()
        },
        devices(),
    )
    .await
    .unwrap();
    assert_eq!(again.local_addr(), addr);
    let mut persistent = options(addr, "one@acme", Some(("d1@acme", "pw-a1")));
    persistent.set_clean_start(false);
    persistent.set_session_expiry_interval(Some(300));
    let client = connect(persistent).await;
    assert!(
        !client.connack.session_present,
        "sessions do not outlive the broker"
    );
    again.shutdown().await;
    // A second shutdown is harmless.
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_reported_all_at_once() {
    let bad = BrokerConfig {
        max_inflight: 0,
        max_queued_per_client: 0,
        max_packet_bytes: 10,
        message_expiry: Some(Duration::ZERO),
        ..config()
    };
    let Err(BrokerError::Config(problems)) = EmbeddedBroker::start(bad, devices()).await else {
        panic!("bad settings accepted");
    };
    assert_eq!(problems.len(), 4, "{problems:?}");

    // An address in use is a listen error naming it.
    let first = broker().await;
    let taken = BrokerConfig {
        listen: first.local_addr(),
        ..config()
    };
    let Err(error) = EmbeddedBroker::start(taken, devices()).await else {
        panic!("bound an address in use");
    };
    assert!(matches!(error, BrokerError::Listen { .. }), "{error}");
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_listener_is_loopback_1883() {
    let config = BrokerConfig::default();
    assert_eq!(config.listen.to_string(), "127.0.0.1:1883");
    assert_eq!(config.message_expiry, None);
    assert!(config.check().is_ok());
}
