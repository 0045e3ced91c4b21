//! Rolling updates and rollback (issue 13 point 4) in a real `weir serve`, in process and on
//! `weir executor` processes, against the test Mosquitto (`WEIR_TEST_MOSQUITTO` from
//! `scripts/services`; the test fails without it), under a numbered QoS 1 load.
//!
//! Version 1 of the graph echoes a Fahrenheit reading; version 2 converts it to Celsius (the
//! `temperature` module), so every output says which version made it, and its `count` field
//! which input it came from. While 1,000 numbered inputs are published, the deployment is
//! updated from v1 to v2: every input the broker acknowledged comes out (duplicates counted
//! and printed), and the outputs switch from v1 to v2 at one point. Then a rollback brings v1
//! back, an update to a module that traps in `init` fails and leaves v1 running, and the
//! history shows every revision; a rollback to a revision whose graph was deleted is refused
//! with `artifact_missing`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;

use common::mqtt::Mqtt;
use weir_api::client::Client;
use weir_api::rest::{CreateDeployment, CreateEndpoint, EndpointKind};
use weir_api::tenancy::Quotas;

fn service(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `scripts/services start` and `source target/services/env` \
             (this test needs the real service; it does not skip)"
        )
    })
}

/// What the rolling tests read of an MQTT client's messages.
trait Outputs {
    /// The outputs so far in arrival order: (input number, version that made it: 1 for
    /// Fahrenheit, 2 for Celsius).
    fn outputs(&self, topic: &str) -> Vec<(u64, u8)>;
}

impl Outputs for Mqtt {
    fn outputs(&self, topic: &str) -> Vec<(u64, u8)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, payload)| {
                let value: serde_json::Value = serde_json::from_str(payload).ok()?;
                let reading = &value["temperature"];
                let version = match reading["unit"].as_str()? {
                    "F" => 1,
                    "C" => 2,
                    _ => return None,
                };
                Some((reading["count"].as_u64()?, version))
            })
            .collect()
    }
}

/// A numbered reading: 212 °F, `count` carrying the number.
fn reading(n: u64) -> String {
    format!(r#"{{"temperature":{{"value":212,"unit":"F","count":{n}}}}}"#)
}

/// Polls until `id` runs (status `running`, and on an executor process when `remote`).
async fn running(developer: &Client, id: &str, remote: bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = developer.deployment(id).await.unwrap();
        let placed = !remote
            || seen
                .runtime
                .as_ref()
                .is_some_and(|runtime| runtime["running"] == true);
        if seen.status == "running" && placed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not running within {limit:?}: {} {:?} {:?}",
            seen.status,
            seen.runtime,
            seen.history.last()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `reading(n)` and waits until an output of version `version` for it arrives. A
/// probe, not a counted input: published again every 2 s, since a deployment just started may
/// not have its subscription yet (a message published before it reaches no session).
async fn answers_with(writer: &Mqtt, reader: &Mqtt, topics: (&str, &str), n: u64, version: u8) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next_publish = Instant::now();
    while !reader.outputs(topics.1).contains(&(n, version)) {
        if Instant::now() >= next_publish {
            writer
                .client
                .publish(topics.0, QoS::AtLeastOnce, false, reading(n))
                .await
                .unwrap();
            next_publish = Instant::now() + Duration::from_secs(2);
        }
        assert!(
            Instant::now() < deadline,
            "no output of version {version} for input {n}: {:?}",
            reader.outputs(topics.1).last()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The graph `roll@version` of one map of `module:1.0.0`, with `extra` YAML after its
/// operations.
fn graph(version: &str, module: &str, extra: &str) -> String {
    common::chain_graph("roll", module, 1).replace("version: '1'", &format!("version: '{version}'"))
        + extra
}

fn spec(version: &str, topics: (&str, &str)) -> CreateDeployment {
    let mut spec = common::deployment("roller", "roll", ("plant", topics.0), ("plant", topics.1));
    spec.graph.version = version.to_owned();
    spec
}

async fn roll_under_load(remote: bool) {
    let mosquitto = service("WEIR_TEST_MOSQUITTO");
    let data = tempfile::tempdir().unwrap();
    let mut arguments = vec!["--reconcile-ms", "100"];
    if remote {
        arguments.extend([
            "--remote-executors",
            "--executor-heartbeat-ms",
            "100",
            "--executor-timeout-ms",
            "2000",
        ]);
    }
    let server = common::serve_with(data.path(), &arguments);
    let admin = server.admin();
    let _executors: Vec<common::ExecutorProcess> = if remote {
        let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
        ["roll-a", "roll-b"]
            .into_iter()
            .map(|id| common::executor_process(&server.address, &token, id, &["--workers", "1"]))
            .collect()
    } else {
        Vec::new()
    };
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    let viewer = common::token(&admin, "acme", weir_api::tenancy::Role::Viewer).await;
    owner
        .create_endpoint(&CreateEndpoint {
            name: "plant".to_owned(),
            kind: EndpointKind::Mqtt,
            address: Some(mosquitto.clone()),
            settings: BTreeMap::new(),
            secret: None,
        })
        .await
        .unwrap();
    developer
        .push_module("echo", "1.0.0", weir_guests::ECHO.bytes())
        .await
        .unwrap();
    developer
        .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
        .await
        .unwrap();
    developer
        .push_module("trap", "1.0.0", weir_guests::TRAP.bytes())
        .await
        .unwrap();
    developer
        .push_graph("roll", "1", graph("1", "echo", ""))
        .await
        .unwrap();
    developer
        .push_graph("roll", "2", graph("2", "temperature", ""))
        .await
        .unwrap();
    developer
        .push_graph(
            "roll",
            "3",
            graph(
                "3",
                "trap",
                "moduleConfigurations:\n  - name: m0\n    parameters:\n      trap_in_init:\n        name: trap_in_init\n",
            ),
        )
        .await
        .unwrap();
    let prefix = format!(
        "rolling-{}-{}-{}",
        if remote { "remote" } else { "local" },
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let (input, output) = (format!("{prefix}/in"), format!("{prefix}/out"));
    let topics = (input.as_str(), output.as_str());
    let reader = Mqtt::connect(&mosquitto, &format!("{prefix}-reader"), Some(&output)).await;
    let writer = Mqtt::connect(&mosquitto, &format!("{prefix}-writer"), None).await;

    developer.deploy(&spec("1", topics)).await.unwrap();
    running(&developer, "roller", remote, Duration::from_secs(30)).await;
    // The source's session is in place once an input comes out (numbers above the load's).
    answers_with(&writer, &reader, topics, 1_000_001, 1).await;

    // The numbered load; the update from v1 to v2 happens while it is published.
    let total: u64 = 1_000;
    let acked_before = writer.acked.load(Ordering::Acquire);
    let load_client = writer.client.clone();
    let load_topic = input.clone();
    let load = tokio::spawn(async move {
        for n in 1..=total {
            load_client
                .publish(load_topic.clone(), QoS::AtLeastOnce, false, reading(n))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.acked.load(Ordering::Acquire) < acked_before + 300 {
        assert!(
            Instant::now() < deadline,
            "the broker did not acknowledge the load"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A viewer may not roll a deployment.
    let refused = viewer
        .update_deployment(&spec("2", topics))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"), "{refused}");
    let started = Instant::now();
    let changed = developer
        .update_deployment(&spec("2", topics))
        .await
        .unwrap();
    println!(
        "{}: update v1 -> v2 answered after {:?}",
        if remote { "remote" } else { "in process" },
        started.elapsed()
    );
    assert_eq!(changed.status, "running");
    load.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.acked.load(Ordering::Acquire) < acked_before + total {
        assert!(
            Instant::now() < deadline,
            "the broker did not acknowledge the whole load"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acknowledged = writer.acked.load(Ordering::Acquire) - acked_before;

    // Every acknowledged input came out; duplicates are counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (outputs, missing) = loop {
        let outputs: Vec<(u64, u8)> = reader
            .outputs(&output)
            .into_iter()
            .filter(|(n, _)| (1..=total).contains(n))
            .collect();
        let seen: std::collections::HashSet<u64> = outputs.iter().map(|(n, _)| *n).collect();
        let missing: Vec<u64> = (1..=total).filter(|n| !seen.contains(n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (outputs, missing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for (n, _) in &outputs {
        *counts.entry(*n).or_default() += 1;
    }
    let duplicates: u64 = counts.values().map(|c| c - 1).sum();
    let by_v1 = outputs.iter().filter(|(_, v)| *v == 1).count();
    let by_v2 = outputs.len() - by_v1;
    println!(
        "{}: {acknowledged} inputs acknowledged by the broker, {} lost, {duplicates} duplicates; {by_v1} outputs by v1, {by_v2} by v2",
        if remote { "remote" } else { "in process" },
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost {} acknowledged inputs: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // One switch: no output of v1 after the first of v2.
    let first_v2 = outputs.iter().position(|(_, v)| *v == 2);
    let first_v2 = first_v2.expect("v2 made outputs");
    assert!(
        outputs[first_v2..].iter().all(|(_, v)| *v == 2),
        "v1 outputs after v2's first: {:?}",
        &outputs[first_v2..]
            .iter()
            .filter(|(_, v)| *v == 1)
            .take(10)
            .collect::<Vec<_>>()
    );
    assert!(
        by_v1 > 0,
        "the update came during the load: v1 made some outputs"
    );

    // Rollback (one call): v1 again.
    let refused = viewer
        .rollback_deployment("roller", None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"), "{refused}");
    let back = developer.rollback_deployment("roller", None).await.unwrap();
    assert_eq!(back.status, "running");
    answers_with(&writer, &reader, topics, 1_000_002, 1).await;
    let seen = developer.deployment("roller").await.unwrap();
    let revisions: Vec<(u64, &str, &str, bool)> = seen
        .revisions
        .iter()
        .map(|r| (r.revision, r.graph.as_str(), r.outcome.as_str(), r.current))
        .collect();
    assert_eq!(
        revisions,
        vec![
            (1, "roll@1", "rolled_out", false),
            (2, "roll@2", "rolled_out", false),
            (3, "roll@1", "rolled_back", true),
        ]
    );
    let rolled_back = &seen.revisions[2];
    assert_eq!(rolled_back.detail, "to revision 1");
    assert_eq!(rolled_back.by, "acme-Developer");
    assert_eq!(
        rolled_back.modules["echo:1.0.0"],
        weir_api::ModuleDigest::of(&weir_guests::ECHO.bytes()).to_string()
    );

    // An update whose module traps in `init`: refused with why; v1 keeps running.
    let mut trapping = spec("3", topics);
    trapping
        .configuration
        .insert("trap_in_init".to_owned(), "true".to_owned());
    let failed = developer.update_deployment(&trapping).await.unwrap_err();
    println!("the trapping update: {failed}");
    assert_eq!(failed.code(), Some("invalid_deployment"), "{failed}");
    answers_with(&writer, &reader, topics, 1_000_003, 1).await;
    let seen = developer.deployment("roller").await.unwrap();
    assert_eq!(seen.status, "running");
    assert_eq!(
        seen.spec.graph.version, "1",
        "the stored spec is still v1's"
    );
    let last = seen.revisions.last().unwrap();
    assert_eq!((last.revision, last.outcome.as_str()), (4, "failed"));
    assert!(last.detail.contains("did not start"), "{last:?}");
    assert!(seen.revisions[2].current, "revision 3 still runs");

    // A rollback to revision 2 after its graph was deleted: a clear problem, nothing changes.
    developer.delete_graph("roll", "2").await.unwrap();
    let missing = developer
        .rollback_deployment("roller", Some(2))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("artifact_missing"), "{missing}");
    assert!(missing.to_string().contains("roll@2"), "{missing}");
    let unknown = developer
        .rollback_deployment("roller", Some(99))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("not_found"), "{unknown}");
    answers_with(&writer, &reader, topics, 1_000_004, 1).await;

    // The CLI shows the same history.
    let args: Vec<String> = [
        "deployments",
        "history",
        "roller",
        "--server",
        &format!("http://{}", server.address),
        "--token",
        developer.token().unwrap(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let (stdout, stderr, code) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::weir_within(&args, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[2].starts_with("*3\troll@1\trolled_back"), "{stdout}");
    assert!(lines[3].starts_with(" 4\troll@3\tfailed"), "{stdout}");
    // When, for people: RFC 3339 in UTC, not seconds since the epoch.
    let at = lines[3].split('\t').nth(4).unwrap();
    assert!(
        at.len() == 20 && at.starts_with("20") && at.ends_with('Z') && at.contains('T'),
        "{stdout}"
    );

    // The OpenAPI document has the route and the shapes.
    let document = developer.openapi().await.unwrap();
    assert!(
        document["paths"]["/v1/deployments/{id}/rollback"]["post"].is_object(),
        "rollback is documented"
    );
    for schema in ["DeploymentRevision", "RollbackDeployment"] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "{schema} is documented"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_in_process_loses_no_acknowledged_input_and_rolls_back() {
    roll_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_on_executor_processes_loses_no_acknowledged_input_and_rolls_back() {
    roll_under_load(true).await;
}

/// A Kafka producer of the test's own: the Kafka connector's sink (a delivery report for every
/// message before `send` returns).
async fn kafka_producer(address: &str, topic: &str) -> Box<dyn weir_connectors::Sink> {
    use weir_connectors::Connector as _;
    weir_connectors::kafka::KafkaConnector
        .sink(
            weir_connectors::SinkSpec {
                endpoint: kafka_endpoint(address),
                topic: topic.to_owned(),
            },
            weir_connectors::ConnectContext::new(
                weir_api::TenantId::new("tester").unwrap(),
                &format!("{topic}-writer"),
                weir_api::egress::Egress::new(["127.0.0.1"]),
                1 << 20,
            ),
        )
        .await
        .unwrap()
}

fn kafka_endpoint(address: &str) -> weir_connectors::EndpointSpec {
    weir_connectors::EndpointSpec {
        name: "events".to_owned(),
        kind: "kafka".to_owned(),
        address: Some(address.to_owned()),
        settings: [("create_topics".to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
        secret: None,
    }
}

fn numbered(topic: &str, numbers: std::ops::RangeInclusive<u64>) -> Vec<weir_connectors::Outbound> {
    numbers
        .map(|n| weir_connectors::Outbound {
            topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
            payload: bytes::Bytes::from(reading(n)),
            content_type: None,
            user_properties: Vec::new(),
            hold: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_a_kafka_sourced_deployment_loses_no_acknowledged_input() {
    let mosquitto = service("WEIR_TEST_MOSQUITTO");
    let kafka = service("WEIR_TEST_KAFKA");
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(data.path(), &["--reconcile-ms", "100"]);
    let admin = server.admin();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    owner
        .create_endpoint(&CreateEndpoint {
            name: "plant".to_owned(),
            kind: EndpointKind::Mqtt,
            address: Some(mosquitto.clone()),
            settings: BTreeMap::new(),
            secret: None,
        })
        .await
        .unwrap();
    owner
        .create_endpoint(&CreateEndpoint {
            name: "events".to_owned(),
            kind: EndpointKind::Kafka,
            address: Some(kafka.clone()),
            settings: kafka_endpoint(&kafka).settings,
            secret: None,
        })
        .await
        .unwrap();
    developer
        .push_module("echo", "1.0.0", weir_guests::ECHO.bytes())
        .await
        .unwrap();
    developer
        .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
        .await
        .unwrap();
    developer
        .push_graph("roll", "1", graph("1", "echo", ""))
        .await
        .unwrap();
    developer
        .push_graph("roll", "2", graph("2", "temperature", ""))
        .await
        .unwrap();
    let prefix = format!(
        "rolling-kafka-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let (input, output) = (format!("{prefix}-in"), format!("{prefix}/out"));
    let reader = Mqtt::connect(&mosquitto, &format!("{prefix}-reader"), Some(&output)).await;
    let mut producer = kafka_producer(&kafka, &input).await;
    // The topic exists before the deployment subscribes; its first reading comes out.
    producer
        .send(numbered(&input, 1_000_001..=1_000_001))
        .await
        .unwrap();
    let spec = |version: &str| {
        let mut spec = common::deployment("roller", "roll", ("events", &input), ("plant", &output));
        spec.graph.version = version.to_owned();
        spec
    };
    developer.deploy(&spec("1")).await.unwrap();
    // The first group join on tansu can take a session timeout.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !reader.outputs(&output).contains(&(1_000_001, 1)) {
        assert!(Instant::now() < deadline, "no output of the first reading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1,000 numbered readings in batches of 10, each batch acknowledged by the broker; the
    // update comes after the first 300.
    let total: u64 = 1_000;
    let mut updated = None;
    for first in (1..=total).step_by(10) {
        let report = producer
            .send(numbered(&input, first..=first + 9))
            .await
            .unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        if first == 301 {
            let started = Instant::now();
            let changed = developer.update_deployment(&spec("2")).await.unwrap();
            assert_eq!(changed.status, "running");
            updated = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("kafka: update v1 -> v2 answered after {updated:?}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let (outputs, missing) = loop {
        let outputs: Vec<(u64, u8)> = reader
            .outputs(&output)
            .into_iter()
            .filter(|(n, _)| (1..=total).contains(n))
            .collect();
        let seen: std::collections::HashSet<u64> = outputs.iter().map(|(n, _)| *n).collect();
        let missing: Vec<u64> = (1..=total).filter(|n| !seen.contains(n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (outputs, missing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for (n, _) in &outputs {
        *counts.entry(*n).or_default() += 1;
    }
    let duplicates: u64 = counts.values().map(|c| c - 1).sum();
    let by_v1 = outputs.iter().filter(|(_, v)| *v == 1).count();
    println!(
        "kafka: {total} inputs acknowledged by the broker, {} lost, {duplicates} duplicates; {by_v1} outputs by v1, {} by v2",
        missing.len(),
        outputs.len() - by_v1
    );
    assert!(
        missing.is_empty(),
        "lost {} acknowledged inputs: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let first_v2 = outputs
        .iter()
        .position(|(_, v)| *v == 2)
        .expect("v2 made outputs");
    assert!(
        outputs[first_v2..].iter().all(|(_, v)| *v == 2),
        "v1 outputs after v2's first"
    );
    assert!(by_v1 > 0, "v1 made outputs before the update");
}
