//! The tenant walls of the embedded broker, attacked with real MQTT 5 clients (rumqttc).
//!
//! Every "receives nothing" is checked against a positive control: after the other tenant's
//! messages were acknowledged to their publisher, the watcher's own tenant publishes a control
//! message, and the watcher must receive it. The broker hands a message to its subscribers'
//! sessions before it acknowledges it, and a session delivers in order, so anything of the
//! other tenant that was routed to the watcher arrives before the control message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, LastWill, PubAckReason, PublishProperties, SubscribeReasonCode,
};
use weir_broker::EmbeddedBroker;

const GRANTED: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);

/// Asserts `watcher` received no message whose payload starts with `secret`, after receiving
/// the control message `control` (which proves the connection works and delivery caught up).
async fn nothing_of(watcher: &mut Client, secret: &str, control: &str) {
    watcher.receive(control).await;
    let leaked: Vec<String> = watcher
        .payloads()
        .into_iter()
        .filter(|payload| payload.starts_with(secret))
        .collect();
    assert!(leaked.is_empty(), "leaked across the wall: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_filter_of_one_tenant_sees_another_tenants_messages() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut beta = device(addr, "watcher@beta", "d1@beta", "pw-b1").await;
    // Filters that match everything or acme's topics, written every way a client can.
    for filter in [
        "#",
        "+/#",
        "+",
        "+/+",
        "+/+/+",
        "sensors/temp",
        "sensors/#",
        "acme/#",
        "$share/g/#",
        "$share/g/+/#",
        "$share/g/sensors/temp",
    ] {
        assert_eq!(
            beta.subscribe(filter, QoS::AtLeastOnce).await,
            GRANTED,
            "{filter}"
        );
    }
    // Filters naming the server's or the mount's space are refused outright.
    for filter in [
        "$SYS/#",
        "$SYS/brokers/+/clients/#",
        "$tenant/#",
        "$tenant/acme/#",
        "$tenant/+/#",
        "$tenant/acme/sensors/temp",
        "$share/g/$tenant/acme/#",
        "$share/g/$SYS/#",
        "$share/acme/$tenant/acme/sensors/temp",
        "$refused",
        "$",
        "$queue/#",
    ] {
        assert_eq!(
            beta.subscribe(filter, QoS::AtLeastOnce).await,
            SubscribeReasonCode::NotAuthorized,
            "{filter}"
        );
    }

    // rmqtt's `$exclusive/` and `$limit/` prefixes are not built in: invalid filters.
    for filter in ["$exclusive/#", "$limit/1/#"] {
        assert_eq!(
            beta.subscribe(filter, QoS::AtLeastOnce).await,
            SubscribeReasonCode::TopicFilterInvalid,
            "{filter}"
        );
    }

    // acme publishes on plain topics, with a topic alias, and on topics naming beta.
    let mut acme = device(addr, "pub@acme", "d1@acme", "pw-a1").await;
    let mut acme_reader = device(addr, "reader@acme", "d2@acme", "pw-a2").await;
    assert_eq!(acme_reader.subscribe("#", QoS::AtLeastOnce).await, GRANTED);
    for (topic, payload) in [
        ("sensors/temp", "acme-secret-1"),
        ("a/b/c", "acme-secret-2"),
        ("x", "acme-secret-3"),
        ("acme/x", "acme-secret-4"),
        ("beta/x", "acme-secret-5"),
    ] {
        let ack = acme.publish(topic, payload, props()).await;
        assert_eq!(ack.reason, PubAckReason::Success, "{topic}");
    }
    let alias = PublishProperties {
        topic_alias: Some(1),
        ..props()
    };
    assert_eq!(
        acme.publish("sensors/aliased", "acme-secret-6", alias.clone())
            .await
            .reason,
        PubAckReason::Success
    );
    assert_eq!(
        acme.publish("", "acme-secret-7", alias).await.reason,
        PubAckReason::Success
    );

    // acme's own reader got all of them, under the topics acme used: they were routed.
    for (payload, expected) in [
        ("acme-secret-1", "sensors/temp"),
        ("acme-secret-4", "acme/x"),
        ("acme-secret-6", "sensors/aliased"),
        ("acme-secret-7", "sensors/aliased"),
    ] {
        assert_eq!(topic(&acme_reader.receive(payload).await), expected);
    }

    let mut beta_publisher = device(addr, "pub@beta", "d2@beta", "pw-b2").await;
    beta_publisher
        .publish("sensors/temp", "beta-control", props())
        .await;
    nothing_of(&mut beta, "acme-", "beta-control").await;
    nothing_of(&mut acme_reader, "beta-", "acme-secret-5").await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_publishes_into_another_tenants_space() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut acme = device(addr, "reader@acme", "d1@acme", "pw-a1").await;
    assert_eq!(acme.subscribe("#", QoS::AtLeastOnce).await, GRANTED);

    let mut beta = device(addr, "pub@beta", "d1@beta", "pw-b1").await;
    for topic in [
        "$tenant/acme/sensors/temp",
        "$tenant/acme",
        "$SYS/brokers",
        "$refused",
        "$share/g/sensors/temp",
    ] {
        let ack = beta.publish(topic, "beta-intruder", props()).await;
        assert_eq!(ack.reason, PubAckReason::NotAuthorized, "{topic}");
        let reason = ack.properties.and_then(|p| p.reason_string);
        assert_eq!(
            reason.as_deref(),
            Some("topic outside the tenant's topic space"),
            "{topic}"
        );
    }
    // A topic alias set to a forbidden topic stays forbidden when used alone.
    let alias = PublishProperties {
        topic_alias: Some(2),
        ..props()
    };
    assert_eq!(
        beta.publish("$tenant/acme/aliased", "beta-intruder", alias.clone())
            .await
            .reason,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        beta.publish("", "beta-intruder", alias).await.reason,
        PubAckReason::NotAuthorized
    );
    // beta's plain topics are beta's, even when they look like acme's.
    for topic in [
        "sensors/temp",
        "acme/sensors/temp",
        "tenant/acme/sensors/temp",
    ] {
        let ack = beta.publish(topic, "beta-own", props()).await;
        assert_eq!(ack.reason, PubAckReason::Success, "{topic}");
    }
    // The connection is still good after the refusals.
    let mut beta_reader = device(addr, "reader@beta", "d2@beta", "pw-b2").await;
    assert_eq!(
        beta_reader
            .subscribe("sensors/temp", QoS::AtLeastOnce)
            .await,
        GRANTED
    );
    beta.publish("sensors/temp", "beta-own-2", props()).await;
    beta_reader.receive("beta-own-2").await;

    let mut acme_publisher = device(addr, "pub@acme", "d2@acme", "pw-a2").await;
    acme_publisher
        .publish("done", "acme-control", props())
        .await;
    nothing_of(&mut acme, "beta-", "acme-control").await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_messages_land_in_their_own_tenant_only() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut acme = device(addr, "reader@acme", "d1@acme", "pw-a1").await;
    assert_eq!(acme.subscribe("#", QoS::AtLeastOnce).await, GRANTED);
    let mut beta_reader = device(addr, "reader@beta", "d2@beta", "pw-b2").await;
    assert_eq!(
        beta_reader.subscribe("status/#", QoS::AtLeastOnce).await,
        GRANTED
    );

    // Wills naming another tenant's or the server's space are refused at CONNECT.
    for will_topic in ["$tenant/acme/status/dead", "$SYS/x", "$tenant/acme/#"] {
        let mut opts = options(addr, "dying@beta", Some(("d1@beta", "pw-b1")));
        opts.set_last_will(LastWill::new(
            will_topic,
            "beta-will",
            QoS::AtLeastOnce,
            false,
            None,
        ));
        let refused = try_connect(opts).await.err();
        assert_eq!(
            refused,
            Some(Ok(ConnectReturnCode::NotAuthorized)),
            "{will_topic}"
        );
    }
    // A retained will is refused (Retain Available is 0).
    let mut opts = options(addr, "dying@beta", Some(("d1@beta", "pw-b1")));
    opts.set_last_will(LastWill::new(
        "status/dead",
        "beta-will",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    assert_eq!(
        try_connect(opts).await.err(),
        Some(Ok(ConnectReturnCode::RetainNotSupported))
    );

    // A plain will goes to beta's own space when its client vanishes.
    let mut opts = options(addr, "dying@beta", Some(("d1@beta", "pw-b1")));
    opts.set_last_will(LastWill::new(
        "status/dead",
        "beta-will",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let dying = connect(opts).await;
    dying.drop_connection();
    let will = beta_reader.receive("beta-will").await;
    assert_eq!(topic(&will), "status/dead");

    let mut acme_publisher = device(addr, "pub@acme", "d2@acme", "pw-a2").await;
    acme_publisher
        .publish("done", "acme-control", props())
        .await;
    nothing_of(&mut acme, "beta-", "acme-control").await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_refused_with_a_reason() {
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut acme = device(addr, "pub@acme", "d1@acme", "pw-a1").await;
    let retain_available = acme
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.retain_available);
    assert_eq!(retain_available, Some(0));
    let ack = acme
        .publish_with("sensors/temp", "acme-retained", true, props())
        .await;
    assert_eq!(ack.reason, PubAckReason::ImplementationSpecificError);
    let reason = ack.properties.and_then(|p| p.reason_string).unwrap();
    assert!(
        reason.contains("retained messages are not supported"),
        "{reason}"
    );

    // Nobody subscribing later gets it, in either tenant.
    let mut acme_reader = device(addr, "reader@acme", "d2@acme", "pw-a2").await;
    assert_eq!(acme_reader.subscribe("#", QoS::AtLeastOnce).await, GRANTED);
    let mut beta = device(addr, "reader@beta", "d1@beta", "pw-b1").await;
    assert_eq!(beta.subscribe("#", QoS::AtLeastOnce).await, GRANTED);
    acme.publish("sensors/temp", "acme-control", props()).await;
    acme_reader.receive("acme-control").await;
    assert_eq!(acme_reader.payloads(), Vec::<String>::new());
    let mut beta_publisher = device(addr, "pub@beta", "d2@beta", "pw-b2").await;
    beta_publisher.publish("x", "beta-control", props()).await;
    nothing_of(&mut beta, "acme-", "beta-control").await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_checked_and_name_their_tenant() {
    let broker = broker().await;
    let addr = broker.local_addr();
    let refused = |id: &str, login: Option<(&str, &str)>| {
        let options = options(addr, id, login);
        async move { try_connect(options).await.err() }
    };
    use ConnectReturnCode::{BadUserNamePassword, NotAuthorized};

    // Anonymous, wrong password, unknown device, no tenant in the user name.
    assert_eq!(refused("x@acme", None).await, Some(Ok(NotAuthorized)));
    assert_eq!(
        refused("x@acme", Some(("d1@acme", "wrong"))).await,
        Some(Ok(BadUserNamePassword))
    );
    assert_eq!(
        refused("x@acme", Some(("d9@acme", "pw-a1"))).await,
        Some(Ok(BadUserNamePassword))
    );
    assert_eq!(
        refused("x@acme", Some(("d1", "pw-a1"))).await,
        Some(Ok(BadUserNamePassword))
    );
    // The directory says the device is beta's, the user name says acme: refused.
    assert_eq!(
        refused("x@acme", Some(("liar@acme", "pw-liar"))).await,
        Some(Ok(NotAuthorized))
    );
    assert_eq!(
        refused("x@beta", Some(("liar@acme", "pw-liar"))).await,
        Some(Ok(NotAuthorized))
    );
    // Client ids must carry the login's tenant: no id of another tenant, none without one,
    // no empty (server-assigned) one.
    for id in ["x@beta", "x", "acme", "@acme", "x@acme-2", ""] {
        assert_eq!(
            refused(id, Some(("d1@acme", "pw-a1"))).await,
            Some(Ok(NotAuthorized)),
            "client id {id:?}"
        );
    }
    // Nor one of weir's own client ids (a deployment's source, a service session): a device
    // would knock the deployment's session off.
    for id in ["weir.source.convert.0aca999f@acme", "$service@acme"] {
        assert_eq!(
            refused(id, Some(("d1@acme", "pw-a1"))).await,
            Some(Ok(NotAuthorized)),
            "client id {id:?}"
        );
    }

    // Service logins: valid for their own tenant only.
    let (acme_user, acme_password) = broker.service_credentials(&tenant("acme"));
    let (beta_user, beta_password) = broker.service_credentials(&tenant("beta"));
    assert_eq!(acme_user, "$service@acme");
    assert_ne!(acme_password, beta_password);
    assert_eq!(
        refused("svc@beta", Some((&beta_user, &acme_password))).await,
        Some(Ok(BadUserNamePassword))
    );
    assert_eq!(
        refused("svc@beta", Some((&acme_user, &acme_password))).await,
        Some(Ok(NotAuthorized))
    );
    assert_eq!(
        refused("svc@acme", Some((&acme_user, "00"))).await,
        Some(Ok(BadUserNamePassword))
    );
    // Another broker's (another process's) service password does not work here.
    let other = EmbeddedBroker::start(config(), devices()).await.unwrap();
    let (_, foreign) = other.service_credentials(&tenant("acme"));
    other.shutdown().await;
    assert_eq!(
        refused("svc@acme", Some((&acme_user, &foreign))).await,
        Some(Ok(BadUserNamePassword))
    );

    // A service session has acme's walls: it sees acme's messages, not beta's.
    let mut service = connect(options(
        addr,
        "deploy-1@acme",
        Some((&acme_user, &acme_password)),
    ))
    .await;
    assert_eq!(service.subscribe("#", QoS::AtLeastOnce).await, GRANTED);
    let mut beta = device(addr, "pub@beta", "d1@beta", "pw-b1").await;
    beta.publish("sensors/temp", "beta-secret", props()).await;
    let mut acme = device(addr, "pub@acme", "d1@acme", "pw-a1").await;
    acme.publish("sensors/temp", "acme-control", props()).await;
    nothing_of(&mut service, "beta-", "acme-control").await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_take_over_another_tenants_session() {
    let broker = broker().await;
    let addr = broker.local_addr();

    // acme's persistent session with a queued message.
    let mut options_a = options(addr, "shared-name@acme", Some(("d1@acme", "pw-a1")));
    options_a.set_clean_start(false);
    options_a.set_session_expiry_interval(Some(300));
    let mut acme = connect(options_a.clone()).await;
    assert_eq!(acme.subscribe("jobs/#", QoS::AtLeastOnce).await, GRANTED);
    acme.drop_connection();
    let mut acme_publisher = device(addr, "pub@acme", "d2@acme", "pw-a2").await;
    acme_publisher
        .publish("jobs/1", "acme-queued", props())
        .await;

    // beta tries the same client id, with and without its tenant changed.
    for id in ["shared-name@acme", "shared-name"] {
        let mut options_b = options(addr, id, Some(("d1@beta", "pw-b1")));
        options_b.set_clean_start(false);
        options_b.set_session_expiry_interval(Some(300));
        assert_eq!(
            try_connect(options_b).await.err(),
            Some(Ok(ConnectReturnCode::NotAuthorized)),
            "{id}"
        );
    }

    // acme's session is intact: its queued message is delivered on reconnect.
    let mut acme = connect(options_a).await;
    assert!(acme.connack.session_present);
    assert_eq!(topic(&acme.receive("acme-queued").await), "jobs/1");
    broker.shutdown().await;
}

/// An MQTT 3.1.1 client (rumqttc's v4 module): the same walls, without reason codes.
struct V3 {
    client: rumqttc::AsyncClient,
    events: tokio::sync::mpsc::Receiver<rumqttc::Event>,
    received: Vec<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl V3 {
    async fn connect(addr: std::net::SocketAddr, id: &str, user: &str, password: &str) -> Self {
        let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_credentials(user, password);
        options.set_keep_alive(std::time::Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        let (sender, events) = tokio::sync::mpsc::channel(4096);
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        let mut v3 = Self {
            client,
            events,
            received: Vec::new(),
            task,
        };
        v3.wait(|event| matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c)) if c.code == rumqttc::ConnectReturnCode::Success).then_some(()))
            .await;
        v3
    }

    async fn wait<T>(&mut self, mut take: impl FnMut(&rumqttc::Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("v3 event in time")
                .expect("v3 connection open");
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) = &event {
                self.received.push((
                    publish.topic.clone(),
                    String::from_utf8_lossy(&publish.payload).into_owned(),
                ));
            }
            if let Some(found) = take(&event) {
                return found;
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) -> rumqttc::SubscribeReasonCode {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        self.wait(|event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) => {
                ack.return_codes.first().copied()
            }
            _ => None,
        })
        .await
    }

    async fn publish(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        self.wait(|event| {
            matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await;
    }

    async fn receive(&mut self, payload: &str) -> String {
        if let Some((topic, _)) = self.received.iter().find(|(_, p)| p == payload) {
            return topic.clone();
        }
        self.wait(|event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))
                if publish.payload.as_ref() == payload.as_bytes() =>
            {
                Some(publish.topic.clone())
            }
            _ => None,
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_clients_have_the_same_walls() {
    use rumqttc::SubscribeReasonCode as V3Reason;
    let broker = broker().await;
    let addr = broker.local_addr();

    let mut beta = V3::connect(addr, "watcher@beta", "d1@beta", "pw-b1").await;
    for filter in ["#", "+/+", "sensors/temp"] {
        assert_eq!(
            beta.subscribe(filter).await,
            V3Reason::Success(rumqttc::QoS::AtLeastOnce),
            "{filter}"
        );
    }
    for filter in ["$SYS/#", "$tenant/acme/#", "$tenant/#"] {
        assert_eq!(beta.subscribe(filter).await, V3Reason::Failure, "{filter}");
    }

    let mut acme = V3::connect(addr, "pub@acme", "d1@acme", "pw-a1").await;
    let mut acme_reader = V3::connect(addr, "reader@acme", "d2@acme", "pw-a2").await;
    assert_eq!(
        acme_reader.subscribe("#").await,
        V3Reason::Success(rumqttc::QoS::AtLeastOnce)
    );
    acme.publish("sensors/temp", "acme-secret-1").await;
    // Into beta's space: acknowledged (3.1.1 has no reason codes) and dropped.
    acme.publish("$tenant/beta/sensors/temp", "acme-secret-2")
        .await;
    assert_eq!(acme_reader.receive("acme-secret-1").await, "sensors/temp");

    let mut beta_publisher = V3::connect(addr, "pub@beta", "d2@beta", "pw-b2").await;
    beta_publisher.publish("sensors/temp", "beta-control").await;
    assert_eq!(beta.receive("beta-control").await, "sensors/temp");
    let leaked: Vec<&(String, String)> = beta
        .received
        .iter()
        .filter(|(_, payload)| payload.starts_with("acme-"))
        .collect();
    assert!(leaked.is_empty(), "leaked across the wall: {leaked:?}");
    broker.shutdown().await;
}
