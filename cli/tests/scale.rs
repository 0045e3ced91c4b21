//! Scale-out of one deployment (issue 13, point 5): `instances` and `partition_key` are checked
//! with clear problems, and a stateless deployment's instances run on distinct executor
//! processes and share their MQTT input (each message processed once), also after one of them
//! is killed -9.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use weir_api::client::Client;
use weir_api::rest::{CreateDeployment, CreateEndpoint, EndpointKind};
use weir_api::scale::PartitionKey;
use weir_api::tenancy::Quotas;

/// A Mosquitto of this test's own on `port` (loopback, anonymous, no persistence), killed
/// when dropped.
struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

impl Mosquitto {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
            ),
        )
        .unwrap();
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("no mosquitto binary: run scripts/services start (Debian package mosquitto)");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A graph `name` of one accumulate of `module`.
fn accumulate_graph(name: &str, module: &str) -> String {
    format!(
        "metadata: {{$schema: s, name: {name}, version: '1'}}\nmoduleRequirements: {{apiVersion: '1.1.0', runtimeVersion: '1.1.0'}}\noperations:\n  - {{operationType: source, name: source}}\n  - {{operationType: accumulate, name: acc, module: '{module}:1.0.0'}}\n  - {{operationType: sink, name: sink}}\nconnections:\n  - {{from: {{name: source}}, to: {{name: acc}}}}\n  - {{from: {{name: acc}}, to: {{name: sink}}}}\n"
    )
}

fn scaled(
    id: &str,
    graph: &str,
    source: (&str, &str),
    sink: (&str, &str),
    instances: u32,
    key: Option<PartitionKey>,
) -> CreateDeployment {
    CreateDeployment {
        instances,
        partition_key: key,
        ..common::deployment(id, graph, source, sink)
    }
}

async fn endpoint(owner: &Client, name: &str, kind: EndpointKind, address: &str) {
    owner
        .create_endpoint(&CreateEndpoint {
            name: name.to_owned(),
            kind,
            address: Some(address.to_owned()),
            settings: BTreeMap::new(),
            secret: None,
        })
        .await
        .unwrap();
}

/// The refusal of `spec`: its code and problem paths.
async fn refused(client: &Client, spec: &CreateDeployment) -> (String, Vec<String>, String) {
    let error = client.deploy(spec).await.unwrap_err();
    let problem = error.problem().unwrap();
    (
        problem.code.clone(),
        problem.errors.iter().map(|e| e.path.clone()).collect(),
        problem
            .errors
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_partition_keys_are_checked_with_clear_problems() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        max_instances: 4,
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    // Never connected to: every refusal comes before a start.
    endpoint(&owner, "plant", EndpointKind::Mqtt, "127.0.0.1:9").await;
    endpoint(&owner, "log", EndpointKind::Kafka, "127.0.0.1:9").await;
    for (name, bytes) in [
        ("echo", weir_guests::ECHO.bytes()),
        ("temperature", weir_guests::TEMPERATURE.bytes()),
    ] {
        developer.push_module(name, "1.0.0", bytes).await.unwrap();
    }
    developer
        .push_graph("echo", "1", common::chain_graph("echo", "echo", 1))
        .await
        .unwrap();
    developer
        .push_graph("window", "1", accumulate_graph("window", "temperature"))
        .await
        .unwrap();

    let cases = [
        // An accumulate, unkeyed, over several instances: the rule is named.
        (
            scaled("w", "window", ("plant", "in"), ("plant", "out"), 3, None),
            "invalid_deployment",
            "/partition_key",
            "accumulate",
        ),
        // kafka-key needs a Kafka source: MQTT has no key affinity.
        (
            scaled(
                "w",
                "window",
                ("plant", "in"),
                ("plant", "out"),
                3,
                Some(PartitionKey::KafkaKey),
            ),
            "invalid_deployment",
            "/partition_key",
            "kafka source",
        ),
        // The http source feeds one instance.
        (
            scaled("e", "echo", ("http", "in"), ("http", "out"), 2, None),
            "invalid_deployment",
            "/instances",
            "mqtt or kafka",
        ),
        // 5 instances of one wasm node each: 5 operator instances, the quota is 4.
        (
            scaled("e", "echo", ("plant", "in"), ("plant", "out"), 5, None),
            "quota_exceeded",
            "/instances",
            "max_instances quota is 4",
        ),
        (
            scaled("e", "echo", ("plant", "in"), ("plant", "out"), 0, None),
            "invalid_deployment",
            "/instances",
            "1 to 64",
        ),
    ];
    for (spec, code, path, words) in cases {
        let (got_code, paths, messages) = refused(&developer, &spec).await;
        println!(
            "refused {} x{}: {got_code} {paths:?}: {messages}",
            spec.id, spec.instances
        );
        assert_eq!(got_code, code, "{messages}");
        assert_eq!(paths, [path], "{messages}");
        assert!(messages.contains(words), "{messages}");
    }
    assert!(developer.deployments().await.unwrap().is_empty());

    // Keyed over Kafka, the window may scale out; one instance of it needs no key.
    let keyed = scaled(
        "w",
        "window",
        ("log", "in"),
        ("plant", "out"),
        3,
        Some(PartitionKey::KafkaKey),
    );
    assert_eq!(developer.deploy(&keyed).await.unwrap().status, "pending");
    let stored = developer.deployment("w").await.unwrap();
    assert_eq!(stored.spec.instances, 3);
    assert_eq!(stored.spec.partition_key, Some(PartitionKey::KafkaKey));
    let single = scaled("w1", "window", ("plant", "in"), ("plant", "out"), 1, None);
    developer.deploy(&single).await.unwrap();
    // The in-process executor runs all three instances (its broker is not there: they retry).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let placed = placements(&developer, "w").await;
        if placed.len() == 3 && placed.iter().all(Option::is_some) {
            println!("in-process instances on {placed:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not placed: {placed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paused: every instance stops; resumed: all three run again.
    let running_instances = |admin: Client| async move {
        admin
            .executors()
            .await
            .unwrap()
            .iter()
            .map(|e| e.deployments)
            .sum::<u64>()
    };
    developer.pause("w").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_instances(admin.clone()).await != 1 {
        assert!(Instant::now() < deadline, "paused instances still run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(developer.resume("w").await.unwrap().status, "pending");
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_instances(admin.clone()).await != 4 {
        assert!(Instant::now() < deadline, "resumed instances do not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deleted: every instance stops.
    developer.delete_deployment("w").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = admin.executors().await.unwrap();
        let left: u64 = running.iter().map(|e| e.deployments).sum();
        if left == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instances left running: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscriber on `port` to `filter`: every payload it receives, in a channel.
async fn subscriber(port: u16, id: &str, filter: &str) -> (AsyncClient, mpsc::Receiver<String>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let (tx, rx) = mpsc::channel(100_000);
    let (subscribed_tx, mut subscribed) = mpsc::channel(4);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx
                        .send(String::from_utf8_lossy(&p.payload).into_owned())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_tx.try_send(()).ok();
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
        .await
        .unwrap()
        .unwrap();
    (client, rx)
}

/// Where each instance of `id` runs now (`runtime.instances[].executor`), in instance order.
async fn placements(client: &Client, id: &str) -> Vec<Option<String>> {
    let seen = client.deployment(id).await.unwrap();
    let Some(runtime) = seen.runtime else {
        return Vec::new();
    };
    match runtime["instances"].as_array() {
        Some(instances) => instances
            .iter()
            .map(|i| i["executor"].as_str().map(str::to_owned))
            .collect(),
        // One instance: where it runs.
        None => vec![runtime["executor"].as_str().map(str::to_owned)],
    }
}

/// Publishes `numbers` (QoS 1) and collects outputs until every one came back or `limit`
/// passed; prints and returns (distinct numbers seen, duplicates).
async fn round_trip(
    publisher: &AsyncClient,
    outputs: &mut mpsc::Receiver<String>,
    numbers: std::ops::Range<u32>,
    limit: Duration,
) -> (BTreeSet<u32>, usize) {
    for n in numbers.clone() {
        publisher
            .publish("in", QoS::AtLeastOnce, false, format!("n{n}"))
            .await
            .unwrap();
    }
    let wanted: BTreeSet<u32> = numbers.collect();
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + limit;
    while !wanted.is_subset(&seen) && Instant::now() < deadline {
        let Ok(Some(payload)) =
            tokio::time::timeout(Duration::from_millis(200), outputs.recv()).await
        else {
            continue;
        };
        if let Some(n) = payload
            .strip_prefix('n')
            .and_then(|n| n.parse::<u32>().ok())
            && !seen.insert(n)
        {
            duplicates += 1;
        }
    }
    // A short drain for late duplicates.
    let drain = Instant::now() + Duration::from_millis(500);
    while Instant::now() < drain {
        if let Ok(Some(payload)) =
            tokio::time::timeout(Duration::from_millis(100), outputs.recv()).await
            && let Some(n) = payload
                .strip_prefix('n')
                .and_then(|n| n.parse::<u32>().ok())
            && !seen.insert(n)
        {
            duplicates += 1;
        }
    }
    let got = wanted.intersection(&seen).count();
    println!(
        "published {} numbered messages: {got} came back, {} missing, {duplicates} duplicates",
        wanted.len(),
        wanted.len() - got
    );
    (wanted.intersection(&seen).copied().collect(), duplicates)
}

/// Publishes probes until three came back (the source subscribed), then drains the outputs.
async fn probe(publisher: &AsyncClient, outputs: &mut mpsc::Receiver<String>, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probes = 0u32;
    let mut answered = 0;
    while answered < 3 {
        assert!(Instant::now() < deadline, "no probe came back");
        publisher
            .publish(
                "in",
                QoS::AtLeastOnce,
                false,
                format!("probe-{tag}{probes}"),
            )
            .await
            .unwrap();
        probes += 1;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), outputs.recv()).await
        {
            answered += 1;
        }
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), outputs.recv()).await {
    }
}

/// A control plane with executor processes `edge-1` to `edge-3` beside this test's own
/// Mosquitto, tenant `acme` with its MQTT endpoint `plant` on it and the `echo` graph.
struct MqttPool {
    _data: tempfile::TempDir,
    _broker: Mosquitto,
    port: u16,
    server: common::Server,
    executors: BTreeMap<String, common::ExecutorProcess>,
    developer: Client,
}

async fn mqtt_pool() -> MqttPool {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start(data.path(), port);
    let server = common::serve_with(
        data.path(),
        &[
            "--remote-executors",
            "--executor-heartbeat-ms",
            "100",
            "--executor-timeout-ms",
            "1000",
            "--reconcile-ms",
            "100",
        ],
    );
    let admin = server.admin();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let executors: BTreeMap<String, common::ExecutorProcess> = ["edge-1", "edge-2", "edge-3"]
        .into_iter()
        .map(|id| {
            (
                id.to_owned(),
                common::executor_process(&server.address, &token, id, &[]),
            )
        })
        .collect();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    endpoint(
        &owner,
        "plant",
        EndpointKind::Mqtt,
        &format!("127.0.0.1:{port}"),
    )
    .await;
    common::push_echo(&developer).await;
    MqttPool {
        _data: data,
        _broker: broker,
        port,
        server,
        executors,
        developer,
    }
}

/// A QoS 1 publisher on `port`, its event loop polled on a task.
fn publisher(port: u16, id: &str) -> AsyncClient {
    let (publisher, mut publisher_loop) =
        AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 10_000);
    tokio::spawn(async move {
        loop {
            if publisher_loop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_deployments_instances_spread_over_executors_and_share_mqtt_input() {
    let MqttPool {
        port,
        server,
        mut executors,
        developer,
        // Bound, not left to `..`: the data directory and the broker live as long as the test.
        _data: _data_dir,
        _broker: _mosquitto,
    } = mqtt_pool().await;
    let admin = server.admin();
    let created = developer.deploy(&relay(3)).await.unwrap();
    assert_eq!(created.status, "pending");

    // Three instances on three executors.
    let deadline = Instant::now() + Duration::from_secs(30);
    let placed = loop {
        let placed = placements(&developer, "relay").await;
        if placed.len() == 3 && placed.iter().all(Option::is_some) {
            break placed.into_iter().flatten().collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "not placed: {placed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("instances placed on {placed:?}");
    let distinct: BTreeSet<&String> = placed.iter().collect();
    assert_eq!(distinct.len(), 3, "{placed:?}");
    let seen = developer.deployment("relay").await.unwrap();
    println!("status {}: {}", seen.status, seen.runtime.unwrap());

    let (_outputs_client, mut outputs) = subscriber(port, "test-out", "out").await;
    let publisher = publisher(port, "test-in");
    // Until every instance has subscribed, a message may find no member: probe until answers
    // come back, then count.
    probe(&publisher, &mut outputs, "a").await;

    // Each message once: three unshared subscribers would give every message three times.
    let (came, duplicates) =
        round_trip(&publisher, &mut outputs, 0..300, Duration::from_secs(60)).await;
    assert_eq!(came.len(), 300, "lost messages");
    assert_eq!(
        duplicates, 0,
        "a message was processed by more than one instance"
    );

    // kill -9 one executor: its instance runs again on another, beside a sibling.
    let victim = placed[1].clone();
    let killed_at = Instant::now();
    drop(executors.remove(&victim));
    let deadline = killed_at + Duration::from_secs(30);
    let after = loop {
        let now = placements(&developer, "relay").await;
        if now.len() == 3 && now.iter().all(|p| p.as_ref().is_some_and(|e| *e != victim)) {
            break now.into_iter().flatten().collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "not placed again: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "executor {victim} killed -9; instances placed again on {after:?} after {:?}",
        killed_at.elapsed()
    );
    let distinct: BTreeSet<&String> = after.iter().collect();
    assert_eq!(distinct.len(), 2, "{after:?}");
    // The moved instance subscribes again; messages published meanwhile reach the others.
    let (came, duplicates) = round_trip(
        &publisher,
        &mut outputs,
        1000..1300,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(came.len(), 300, "lost messages after the kill");
    assert_eq!(duplicates, 0);

    // Scaled down to one instance (same id as a one-instance deployment): the others stop.
    developer.update_deployment(&relay(1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: Vec<String> = admin
            .executors()
            .await
            .unwrap()
            .into_iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let status = developer.deployment("relay").await.unwrap();
        if status.status == "running"
            && status
                .runtime
                .as_ref()
                .and_then(|r| r.get("executor"))
                .is_some()
            && assigned_total(&admin).await == 1
        {
            println!("scaled to one instance: {}", status.runtime.unwrap());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not scaled down: {status:?} {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probe(&publisher, &mut outputs, "c").await;
    let (came, duplicates) = round_trip(
        &publisher,
        &mut outputs,
        2000..2100,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(came.len(), 100);
    assert_eq!(duplicates, 0, "a scaled-away instance still ran");
}

/// `relay`: the `echo` graph from `plant`'s `in` to its `out`, as `instances` instances.
fn relay(instances: u32) -> CreateDeployment {
    scaled(
        "relay",
        "echo",
        ("plant", "in"),
        ("plant", "out"),
        instances,
        None,
    )
}

/// Deployments (instances) assigned to the executors, all together.
async fn assigned_total(admin: &Client) -> u64 {
    admin
        .executors()
        .await
        .unwrap()
        .iter()
        .map(|e| e.deployments)
        .sum()
}

/// Scales `relay` to `instances` and waits until they all run and every instance scaled away
/// was retired (taken off its executor).
async fn scale_relay(admin: &Client, developer: &Client, instances: u32) {
    developer
        .update_deployment(&relay(instances))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let placed = placements(developer, "relay").await;
        let total = assigned_total(admin).await;
        if placed.len() == instances as usize
            && placed.iter().all(Option::is_some)
            && total == u64::from(instances)
        {
            println!("scaled to {instances}: on {placed:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not scaled to {instances}: {placed:?}, {total} assigned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads numbered outputs (`n<number>`) until every one of `wanted` came or `limit` passed;
/// (distinct wanted numbers seen, duplicates, numbers outside `wanted` that came).
async fn collect(
    outputs: &mut mpsc::Receiver<String>,
    wanted: &BTreeSet<u32>,
    limit: Duration,
) -> (BTreeSet<u32>, usize, Vec<u32>) {
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    let mut strays = Vec::new();
    let deadline = Instant::now() + limit;
    while !wanted.is_subset(&seen) && Instant::now() < deadline {
        let Ok(Some(payload)) =
            tokio::time::timeout(Duration::from_millis(200), outputs.recv()).await
        else {
            continue;
        };
        let Some(n) = payload
            .strip_prefix('n')
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !wanted.contains(&n) {
            strays.push(n);
        } else if !seen.insert(n) {
            duplicates += 1;
        }
    }
    (seen, duplicates, strays)
}

/// Issue 13 H1: an instance scaled away (or the one instance of a deployment that became
/// several) ends its MQTT session when it is retired, after the instances taking over joined
/// the input, so under load nothing is lost, the retired session takes no share of the shared
/// subscription any more, and nothing queued for it comes back later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_an_mqtt_deployment_under_load_loses_nothing_and_leaves_no_session_behind() {
    let MqttPool {
        port,
        server,
        developer,
        executors: _executors,
        // Bound, not left to `..`: the data directory and the broker live as long as the test.
        _data: _data_dir,
        _broker: _mosquitto,
    } = mqtt_pool().await;
    let admin = server.admin();
    developer.deploy(&relay(1)).await.unwrap();
    let (_outputs_client, mut outputs) = subscriber(port, "test-out", "out").await;
    let publisher = publisher(port, "test-in");
    probe(&publisher, &mut outputs, "a").await;

    // Numbered messages every 2 ms while the deployment goes from one instance to three, and
    // from three to two.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load_publisher = publisher.clone();
    let load = tokio::spawn(async move {
        let mut n = 0u32;
        while !*stopped.borrow() {
            load_publisher
                .publish("in", QoS::AtLeastOnce, false, format!("n{n}"))
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });
    scale_relay(&admin, &developer, 3).await;
    scale_relay(&admin, &developer, 2).await;
    stop.send_replace(true);
    let published = load.await.unwrap();
    let wanted: BTreeSet<u32> = (0..published).collect();
    let (seen, duplicates, _) = collect(&mut outputs, &wanted, Duration::from_secs(60)).await;
    println!(
        "under load, 1 -> 3 -> 2 instances: published {published}, {} came back, {} lost, {duplicates} duplicates",
        seen.len(),
        wanted.len() - seen.len()
    );
    assert_eq!(seen.len(), wanted.len(), "messages lost while scaling");

    // Two instances now: the retired third takes no share (every third message went to it).
    probe(&publisher, &mut outputs, "b").await;
    let (came, _) = round_trip(
        &publisher,
        &mut outputs,
        100_000..100_300,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(came.len(), 300, "a retired instance still took its share");

    // Back to one instance, under the id whose session was ended when it became three:
    // nothing published before comes again.
    scale_relay(&admin, &developer, 1).await;
    probe(&publisher, &mut outputs, "c").await;
    for n in 200_000..200_100 {
        publisher
            .publish("in", QoS::AtLeastOnce, false, format!("n{n}"))
            .await
            .unwrap();
    }
    let wanted: BTreeSet<u32> = (200_000..200_100).collect();
    let (seen, duplicates, strays) = collect(&mut outputs, &wanted, Duration::from_secs(60)).await;
    println!(
        "one instance again: {} of 100 came back, {duplicates} duplicates, {} earlier messages came again",
        seen.len(),
        strays.len()
    );
    assert_eq!(seen.len(), 100);
    assert!(
        strays.is_empty(),
        "a retired session was kept and replayed {} earlier messages: {:?}",
        strays.len(),
        &strays[..strays.len().min(20)]
    );

    // An instance that runs nowhere cannot end its session: taking it away waits until it
    // runs (here: paused at one instance, going to three would leave `relay`'s session
    // taking a share nobody reads).
    developer.pause("relay").await.unwrap();
    let refused = developer.update_deployment(&relay(3)).await.unwrap_err();
    assert_eq!(refused.code(), Some("conflict"), "{refused}");
    assert!(refused.to_string().contains("run nowhere"), "{refused}");
    developer.resume("relay").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while developer.deployment("relay").await.unwrap().status != "running" {
        assert!(
            Instant::now() < deadline,
            "not running again after the resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scale_relay(&admin, &developer, 3).await;
}

fn kafka_spec(address: &str, partitions: &str) -> weir_connectors::EndpointSpec {
    weir_connectors::EndpointSpec {
        name: "test".to_owned(),
        kind: "kafka".to_owned(),
        address: Some(address.to_owned()),
        settings: [
            ("create_topics".to_owned(), "true".to_owned()),
            ("partitions".to_owned(), partitions.to_owned()),
        ]
        .into_iter()
        .collect(),
        secret: None,
    }
}

fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

fn test_context(label: &str) -> weir_connectors::ConnectContext {
    weir_connectors::ConnectContext::new(
        weir_api::TenantId::new("tester").unwrap(),
        &unique(label),
        weir_api::egress::Egress::new(["127.0.0.1"]),
        1 << 20,
    )
}

/// Numbers of `n<k>` payloads among `messages`, into `seen`; duplicates counted.
fn count_numbers(messages: &[weir_connectors::Inbound], seen: &mut BTreeSet<u32>) -> usize {
    let mut duplicates = 0;
    for message in messages {
        let text = String::from_utf8_lossy(&message.payload);
        if let Some(n) = text.strip_prefix('n').and_then(|n| n.parse::<u32>().ok())
            && !seen.insert(n)
        {
            duplicates += 1;
        }
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_deployments_instances_share_a_kafka_topic_through_one_consumer_group() {
    use weir_connectors::Connector as _;
    let broker = std::env::var("WEIR_TEST_KAFKA").expect(
        "WEIR_TEST_KAFKA is not set: `scripts/services start` and `source target/services/env` \
         (this test needs the tansu broker; it does not skip)",
    );
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(
        data.path(),
        &[
            "--remote-executors",
            "--executor-heartbeat-ms",
            "100",
            "--executor-timeout-ms",
            "1000",
            "--reconcile-ms",
            "100",
        ],
    );
    let admin = server.admin();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let _executors: Vec<common::ExecutorProcess> = ["k-1", "k-2", "k-3"]
        .into_iter()
        .map(|id| common::executor_process(&server.address, &token, id, &[]))
        .collect();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    owner
        .create_endpoint(&CreateEndpoint {
            name: "events".to_owned(),
            kind: EndpointKind::Kafka,
            address: Some(broker.clone()),
            settings: [("create_topics".to_owned(), "true".to_owned())]
                .into_iter()
                .collect(),
            secret: None,
        })
        .await
        .unwrap();
    developer
        .push_module("echo", "1.0.0", weir_guests::ECHO.bytes())
        .await
        .unwrap();
    developer
        .push_graph("echo", "1", common::chain_graph("echo", "echo", 1))
        .await
        .unwrap();
    let id = unique("krelay");
    let input = format!("{id}-in");
    let output = format!("{id}-out");
    let connector = weir_connectors::kafka::KafkaConnector;
    // The input topic with three partitions (records spread by key), the output read by the
    // test, both before the deployment starts.
    let mut writer = connector
        .sink(
            weir_connectors::SinkSpec {
                endpoint: kafka_spec(&broker, "3"),
                topic: input.clone(),
            },
            test_context("kwriter"),
        )
        .await
        .unwrap();
    let reader = weir_connectors::conformance::start_source(
        &connector,
        weir_connectors::SourceSpec {
            endpoint: kafka_spec(&broker, "1"),
            topics: vec![output.clone()],
        },
        test_context("kreader"),
        10_000,
    )
    .await
    .unwrap();
    let record = |text: String, key: String| {
        let mut out = weir_connectors::Outbound::new(input.clone(), text.into_bytes());
        out.user_properties = vec![(
            bytes::Bytes::from_static(b"__key"),
            bytes::Bytes::from(key.into_bytes()),
        )];
        out
    };
    let report = writer
        .send(vec![record("probe-0".to_owned(), "k0".to_owned())])
        .await
        .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");

    developer
        .deploy(&scaled(
            "relay",
            "echo",
            ("events", &input),
            ("events", &output),
            3,
            None,
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let placed = loop {
        let placed = placements(&developer, "relay").await;
        if placed.len() == 3 && placed.iter().all(Option::is_some) {
            break placed.into_iter().flatten().collect::<BTreeSet<_>>();
        }
        assert!(Instant::now() < deadline, "not placed: {placed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(placed.len(), 3, "{placed:?}");
    // The group's first joins take seconds on tansu: the probe comes back once one member
    // reads its partition.
    let probe = reader.intake.take(1, Duration::from_secs(120)).await;
    assert_eq!(probe.len(), 1, "the probe never came back");

    let numbered: Vec<weir_connectors::Outbound> = (0..300)
        .map(|n| record(format!("n{n}"), format!("k{}", n % 12)))
        .collect();
    let report = writer.send(numbered).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    let mut outputs = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 300 && Instant::now() < deadline {
        let got = reader.intake.take(300, Duration::from_secs(1)).await;
        outputs += got.len();
        duplicates += count_numbers(&got, &mut seen);
    }
    // Late copies (a rebalance while the group settled re-reads uncommitted records).
    let late = reader.intake.take(10_000, Duration::from_secs(2)).await;
    outputs += late.len();
    duplicates += count_numbers(&late, &mut seen);
    println!(
        "kafka: 300 keyed records over 3 partitions, 3 instances on {placed:?}: {} came back, {} missing, {duplicates} duplicates ({outputs} outputs)",
        seen.len(),
        300 - seen.len()
    );
    assert_eq!(seen.len(), 300, "records lost");
    // Three groups (no sharing) would give every record three times: 600 duplicates.
    assert!(
        duplicates < 300,
        "{duplicates} duplicates: the instances did not share the input"
    );
}

/// A graph `name`: a 10 s tumbling window (`window`) and temperature statistics per window
/// (`temperature`'s accumulate).
fn window_graph(name: &str) -> String {
    format!(
        "metadata: {{$schema: s, name: {name}, version: '1'}}\nmoduleRequirements: {{apiVersion: '1.1.0', runtimeVersion: '1.1.0'}}\noperations:\n  - {{operationType: source, name: source}}\n  - {{operationType: delay, name: window, module: 'window:1.0.0'}}\n  - {{operationType: accumulate, name: stats, module: 'temperature:1.0.0'}}\n  - {{operationType: sink, name: sink}}\nconnections:\n  - {{from: {{name: source}}, to: {{name: window}}}}\n  - {{from: {{name: window}}, to: {{name: stats}}}}\n  - {{from: {{name: stats}}, to: {{name: sink}}}}\n"
    )
}

/// Window results read back: `(window end in ms, key) -> every payload emitted for it`.
type WindowResults = BTreeMap<(u64, String), Vec<String>>;

/// Adds `messages` (window results) to `results`. A result's window is the one its largest
/// reading (`max`, the readings are numbered) was sent in, `window_of`; probes have none.
/// (Its `__ts` is no help: the executor's clock, which incoming `__ts` values move forward.)
fn window_results(
    messages: &[weir_connectors::Inbound],
    window_of: &BTreeMap<u64, u64>,
    results: &mut WindowResults,
) {
    for message in messages {
        let property = |name: &[u8]| {
            message
                .user_properties
                .iter()
                .rev()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let key = property(b"__key").expect("a keyed window result carries its key");
        if key == "probe" {
            continue;
        }
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let max = value["temperature"]["max"].as_u64().unwrap();
        let end = window_of[&max];
        results.entry((end, key)).or_default().push(payload);
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Issue 13's Done-when: a keyed windowed deployment over 3 instances (3 executor processes,
/// a 3-partition tansu topic) gives the same window results as one instance on the same
/// input, also when one of its executors is killed -9 while the windows are open (the group
/// rebalances; the killed instance is placed again elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_windowed_deployment_over_three_instances_matches_one_instance_across_a_rebalance()
{
    use weir_connectors::Connector as _;
    let broker = std::env::var("WEIR_TEST_KAFKA").expect(
        "WEIR_TEST_KAFKA is not set: `scripts/services start` and `source target/services/env` \
         (this test needs the tansu broker; it does not skip)",
    );
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(
        data.path(),
        &[
            "--remote-executors",
            "--executor-heartbeat-ms",
            "100",
            "--executor-timeout-ms",
            "1000",
            "--reconcile-ms",
            "100",
        ],
    );
    let admin = server.admin();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let mut executors: BTreeMap<String, common::ExecutorProcess> = ["w-1", "w-2", "w-3"]
        .into_iter()
        .map(|id| {
            (
                id.to_owned(),
                common::executor_process(&server.address, &token, id, &[]),
            )
        })
        .collect();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    owner
        .create_endpoint(&CreateEndpoint {
            name: "events".to_owned(),
            kind: EndpointKind::Kafka,
            address: Some(broker.clone()),
            settings: [
                ("create_topics".to_owned(), "true".to_owned()),
                // A killed member's partitions move after 6 s, not librdkafka's 45 s.
                ("session_timeout_ms".to_owned(), "6000".to_owned()),
            ]
            .into_iter()
            .collect(),
            secret: None,
        })
        .await
        .unwrap();
    for (name, guest) in [
        ("window", weir_guests::WINDOW),
        ("temperature", weir_guests::TEMPERATURE),
    ] {
        developer
            .push_module(name, "1.0.0", guest.bytes())
            .await
            .unwrap();
    }
    developer
        .push_graph("windows", "1", window_graph("windows"))
        .await
        .unwrap();
    let id = unique("kwin");
    let input = format!("{id}-in");
    let connector = weir_connectors::kafka::KafkaConnector;
    let mut writer = connector
        .sink(
            weir_connectors::SinkSpec {
                endpoint: kafka_spec(&broker, "3"),
                topic: input.clone(),
            },
            test_context("kwwriter"),
        )
        .await
        .unwrap();
    let mut readers = Vec::new();
    for side in ["three", "one"] {
        readers.push(
            weir_connectors::conformance::start_source(
                &connector,
                weir_connectors::SourceSpec {
                    endpoint: kafka_spec(&broker, "1"),
                    topics: vec![format!("{id}-{side}")],
                },
                test_context(&format!("kwreader-{side}")),
                100_000,
            )
            .await
            .unwrap(),
        );
    }
    // A reading at `ms` (event time, `__ts`) of key `key`.
    let reading = |key: &str, ms: u64, value: u64| {
        let mut out = weir_connectors::Outbound::new(
            input.clone(),
            format!(r#"{{"temperature":{{"value":{value},"unit":"C"}}}}"#).into_bytes(),
        );
        out.user_properties = vec![
            (
                bytes::Bytes::from_static(b"__key"),
                bytes::Bytes::from(key.to_owned().into_bytes()),
            ),
            (
                bytes::Bytes::from_static(b"__ts"),
                bytes::Bytes::from(format!("{ms:0>15}:00000:test").into_bytes()),
            ),
        ];
        out
    };
    // The topic exists (three partitions) before the deployments start.
    let report = writer
        .send(vec![reading("probe", now_ms(), 0)])
        .await
        .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");

    for (name, instances) in [("three", 3), ("one", 1)] {
        developer
            .deploy(&scaled(
                name,
                "windows",
                ("events", &input),
                ("events", &format!("{id}-{name}")),
                instances,
                Some(PartitionKey::KafkaKey),
            ))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (three, one) = loop {
        let three = placements(&developer, "three").await;
        let one = placements(&developer, "one").await;
        if three.len() == 3
            && three.iter().all(Option::is_some)
            && one.first().is_some_and(Option::is_some)
        {
            break (
                three.into_iter().flatten().collect::<Vec<_>>(),
                one.into_iter().flatten().collect::<Vec<_>>(),
            );
        }
        assert!(Instant::now() < deadline, "not placed: {three:?} {one:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("3 instances on {three:?}, 1 instance on {one:?}");
    assert_eq!(three.iter().collect::<BTreeSet<_>>().len(), 3, "{three:?}");

    // Both consume once a probe's window comes back from each (the groups' first joins take
    // seconds on tansu; a window closes at most 10 s after its probe).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut probed = [false, false];
    let mut probes = 1u64;
    while !probed.iter().all(|p| *p) {
        assert!(
            Instant::now() < deadline,
            "no probe window came back: {probed:?}"
        );
        writer
            .send(vec![reading("probe", now_ms(), probes)])
            .await
            .unwrap();
        probes += 1;
        for (reader, probed) in readers.iter().zip(probed.iter_mut()) {
            if !reader
                .intake
                .take(10, Duration::from_millis(500))
                .await
                .is_empty()
            {
                *probed = true;
            }
        }
    }
    for reader in &readers {
        reader.intake.take(10_000, Duration::from_millis(500)).await;
    }

    // 12 keys, 300 numbered readings over three 10 s windows that end 30 s to 60 s from now:
    // far enough for the rebalance below to settle before the first closes, near enough for
    // the executors' 60 s clock-drift bound.
    let start = (now_ms() + 25_000).div_ceil(10_000) * 10_000;
    let readings: Vec<(String, u64, u64)> = (0..300u64)
        .map(|n| (format!("k{}", n % 12), start + n * 100 + 1, n))
        .collect();
    let mut expected: BTreeMap<(u64, String), (u64, u64)> = BTreeMap::new();
    let window_of: BTreeMap<u64, u64> = readings
        .iter()
        .map(|(_, ms, value)| (*value, ms.div_ceil(10_000) * 10_000))
        .collect();
    for (key, ms, value) in &readings {
        let entry = expected
            .entry((ms.div_ceil(10_000) * 10_000, key.clone()))
            .or_insert((0, 0));
        entry.0 += 1;
        entry.1 += value;
    }
    let (first, last) = readings.split_at(200);
    let to_send = |part: &[(String, u64, u64)]| {
        part.iter()
            .map(|(key, ms, value)| reading(key, *ms, *value))
            .collect::<Vec<_>>()
    };
    let report = writer.send(to_send(first)).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");

    // Mid-stream, kill -9 an executor of the three instances (not the one instance's).
    let victim = three
        .iter()
        .find(|e| !one.contains(e))
        .cloned()
        .expect("an executor without the one instance");
    let killed_at = Instant::now();
    drop(executors.remove(&victim));
    let deadline = killed_at + Duration::from_secs(30);
    let after = loop {
        let now = placements(&developer, "three").await;
        if now.len() == 3 && now.iter().all(|p| p.as_ref().is_some_and(|e| *e != victim)) {
            break now.into_iter().flatten().collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "not placed again: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "executor {victim} killed -9 after 200 of 300 readings; instances placed again on {after:?} after {:?}",
        killed_at.elapsed()
    );
    // The last window's readings, once their event times are within the drift bound.
    let latest = last.iter().map(|r| r.1).max().unwrap();
    while now_ms() + 50_000 < latest {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = writer.send(to_send(last)).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");

    // Every window closes by `start + 30 s` (wall clock); collect until each side has every
    // window and key, then a little longer for duplicates.
    let mut results = [WindowResults::new(), WindowResults::new()];
    let complete = |results: &WindowResults| {
        expected
            .keys()
            .all(|k| results.get(k).is_some_and(|v| !v.is_empty()))
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(complete(&results[0]) && complete(&results[1])) && Instant::now() < deadline {
        for (reader, results) in readers.iter().zip(results.iter_mut()) {
            let got = reader.intake.take(1_000, Duration::from_millis(250)).await;
            window_results(&got, &window_of, results);
        }
    }
    for (reader, results) in readers.iter().zip(results.iter_mut()) {
        let got = reader.intake.take(10_000, Duration::from_secs(3)).await;
        window_results(&got, &window_of, results);
    }
    for (side, results) in ["3 instances", "1 instance"].iter().zip(&results) {
        let duplicates: usize = results.values().map(|v| v.len().saturating_sub(1)).sum();
        let counted: u64 = results
            .values()
            .filter_map(|v| v.first())
            .map(|p| {
                let value: serde_json::Value = serde_json::from_str(p).unwrap();
                value["temperature"]["count"].as_u64().unwrap()
            })
            .sum();
        let windows: BTreeSet<u64> = results.keys().map(|(w, _)| *w).collect();
        let keys: BTreeSet<&String> = results.keys().map(|(_, k)| k).collect();
        println!(
            "{side}: {} window results ({} windows x {} keys), {counted} readings counted of 300, {duplicates} duplicate results",
            results.len(),
            windows.len(),
            keys.len()
        );
    }
    // Each side: every window and key once (an identical repeat would be a duplicate
    // delivery, a different one a window counted wrong), with the expected count and sum.
    for (side, results) in ["3 instances", "1 instance"].iter().zip(&results) {
        assert_eq!(
            results.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{side}: windows and keys"
        );
        for (window, payloads) in results {
            let distinct: BTreeSet<&String> = payloads.iter().collect();
            assert_eq!(
                distinct.len(),
                1,
                "{side}: {window:?} differs: {payloads:?}"
            );
            let value: serde_json::Value = serde_json::from_str(&payloads[0]).unwrap();
            let (count, sum) = expected[window];
            assert_eq!(
                value["temperature"]["count"].as_u64(),
                Some(count),
                "{side}: {window:?} {value}"
            );
            let average = value["temperature"]["average"].as_f64().unwrap();
            #[allow(clippy::cast_precision_loss, reason = "small test numbers")]
            let want = sum as f64 / count as f64;
            assert!(
                (average - want).abs() < 1e-6,
                "{side}: {window:?} average {average}, want {want}"
            );
        }
    }
    let firsts = |results: &WindowResults| {
        results
            .iter()
            .map(|(k, v)| (k.clone(), v[0].clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        firsts(&results[0]),
        firsts(&results[1]),
        "3 instances and 1 instance give the same window results"
    );
}
