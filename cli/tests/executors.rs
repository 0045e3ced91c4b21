//! Deployments on executor processes (issue 13): `weir serve --remote-executors` places each
//! deployment on one of three `weir executor` processes, which fetch its artifacts by digest
//! and run it against the test Mosquitto (`WEIR_TEST_MOSQUITTO` from `scripts/services`; the
//! test fails without it). Then one executor is killed with SIGKILL under a numbered QoS 1 load:
//! its deployment runs again on another within the bound, and every number the broker
//! acknowledged comes out (duplicates counted and printed).
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
use weir_api::rest::{CreateEndpoint, EndpointKind};
use weir_api::tenancy::Quotas;

fn service(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `scripts/services start` and `source target/services/env` \
             (this test needs the real service; it does not skip)"
        )
    })
}

/// `weir serve` placing on executor processes, with a loop fast enough for tests: a round
/// every 100 ms, heartbeats every 100 ms, lost after 1 s.
const FAST_REMOTE: [&str; 9] = [
    "--remote-executors",
    "--usage-flush-ms",
    "200",
    "--reconcile-ms",
    "100",
    "--executor-heartbeat-ms",
    "100",
    "--executor-timeout-ms",
    "1000",
];

/// `<what>-<pid>-<ms since the epoch>`: topics and namespaces no other run uses.
fn unique(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// Where `id` runs once it is `running` on an executor process (polled until `limit`).
async fn runs_on(developer: &Client, id: &str, not: Option<&str>, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let seen = developer.deployment(id).await.unwrap();
        let executor = seen
            .runtime
            .as_ref()
            .filter(|runtime| runtime["running"] == true)
            .and_then(|runtime| runtime["executor"].as_str().map(str::to_owned));
        if seen.status == "running"
            && let Some(executor) = executor
            && Some(executor.as_str()) != not
        {
            return executor;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not running on an executor process within {limit:?}: {} {:?} {:?}",
            seen.status,
            seen.runtime,
            seen.history.last()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_run_on_executor_processes_and_move_within_the_bound_when_one_is_killed() {
    let mosquitto = service("WEIR_TEST_MOSQUITTO");
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(data.path(), &FAST_REMOTE);
    let admin = server.admin();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let mut executors: HashMap<String, common::ExecutorProcess> = ["exec-a", "exec-b", "exec-c"]
        .into_iter()
        .map(|id| {
            (
                id.to_owned(),
                common::executor_process(&server.address, &token, id, &["--workers", "1"]),
            )
        })
        .collect();
    let listed = admin.executors().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|e| e.state == "ready"), "{listed:?}");

    // A deployment declares fuel_per_second / max_deployments (here 0.2 of a worker's 10^9),
    // so one executor of one worker has room for the deployment of one that is lost.
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        max_deployments: 100,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    // The assignments (bindings with their secrets) open to the join token alone.
    for caller in [&admin, &developer] {
        let refused = caller
            .executor_assignments("exec-a", 0, 0)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("unauthenticated"), "{refused}");
    }
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    common::mqtt_endpoint(&owner, "plant", &mosquitto).await;
    common::push_echo(&developer).await;
    let prefix = unique("executors");
    let topic = |id: &str, side: &str| format!("{prefix}/{id}/{side}");
    let reader = Mqtt::connect(
        &mosquitto,
        &format!("{prefix}-reader"),
        Some(&format!("{prefix}/+/out")),
    )
    .await;
    let ids = ["relay-0", "relay-1", "relay-2"];
    for id in ids {
        let created = developer
            .deploy(&common::deployment(
                id,
                "echo",
                ("plant", &topic(id, "in")),
                ("plant", &topic(id, "out")),
            ))
            .await
            .unwrap();
        // Runs nowhere yet: the reconcile loop places it (the answer never says `running`
        // of a deployment no executor has).
        assert_eq!(created.status, "pending", "{created:?}");
    }
    // Placed by the scheduler, one tenant spread over the three executors.
    let mut placed = BTreeMap::new();
    for id in ids {
        placed.insert(
            id,
            runs_on(&developer, id, None, Duration::from_secs(30)).await,
        );
    }
    let distinct: std::collections::BTreeSet<&String> = placed.values().collect();
    assert_eq!(distinct.len(), 3, "spread over the executors: {placed:?}");

    // Each runs: an input comes out on its output topic through the broker.
    let writer = Mqtt::connect(&mosquitto, &format!("{prefix}-writer"), None).await;
    for id in ids {
        writer
            .client
            .publish(
                topic(id, "in"),
                QoS::AtLeastOnce,
                false,
                format!("hello {id}"),
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        while !reader
            .payloads_on(&topic(id, "out"))
            .contains(&format!("hello {id}"))
        {
            assert!(Instant::now() < deadline, "no output of {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Their counters and series come from the executors' telemetry (every 2 s): the
    // deployment's `runtime` counts its message, `/v1/metrics` has its series, labelled with
    // the executor it runs on.
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = developer.deployment(id).await.unwrap();
            let runtime = seen.runtime.unwrap_or_default();
            if runtime["received"].as_u64() >= Some(1) && runtime["emitted"].as_u64() >= Some(1) {
                assert_eq!(runtime["executor"], placed[id].as_str(), "{runtime}");
                assert!(runtime["nodes"].is_object(), "{runtime}");
                break;
            }
            assert!(Instant::now() < deadline, "{id}: no counters: {runtime}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let series = developer.metrics().await.unwrap();
    for id in ids {
        let received = series
            .iter()
            .find(|s| {
                s.name == "weir_messages_in"
                    && s.labels.get("deployment").map(String::as_str) == Some(id)
            })
            .unwrap_or_else(|| panic!("no weir_messages_in of {id}: {series:?}"));
        assert!(received.value >= 1.0, "{received:?}");
        assert_eq!(received.labels["executor"], placed[id], "{received:?}");
    }
    // Executor processes report no live budgets: the usage leaves them out (the dashboard
    // says "not reported") rather than claim nothing is in flight.
    let usage = developer.usage().await.unwrap();
    assert_eq!(
        (usage.inflight_bytes, usage.queued_output_bytes),
        (None, None),
        "{usage:?}"
    );
    // Their messages and fuel, as the executors reported them; kept in the control store with
    // the tenant's other usage (its hours and days), so a move or a restart loses none.
    assert!(
        usage.messages_in >= 3 && usage.messages_out >= 3 && usage.fuel > 0,
        "{usage:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: u64 = developer
            .usage()
            .await
            .unwrap()
            .periods
            .iter()
            .filter(|p| p.period == "hour")
            .map(|p| p.messages_in)
            .sum();
        if stored >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "executors' usage not stored: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A fourth deployment, from relay-0's input (MQTT) to a Kafka topic on tansu, put on
    // relay-0's executor by cordoning the two others while it is placed.
    let victim = placed["relay-0"].clone();
    let kafka = service("WEIR_TEST_KAFKA");
    let kafka_endpoint = weir_connectors::EndpointSpec {
        name: "events".to_owned(),
        kind: "kafka".to_owned(),
        address: Some(kafka.clone()),
        settings: [("create_topics".to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
        secret: None,
    };
    owner
        .create_endpoint(&CreateEndpoint {
            name: "events".to_owned(),
            kind: EndpointKind::Kafka,
            address: Some(kafka.clone()),
            settings: kafka_endpoint.settings.clone(),
            secret: None,
        })
        .await
        .unwrap();
    let kafka_topic = format!("{prefix}-bridge-out");
    let kafka_reader = weir_connectors::conformance::start_source(
        &weir_connectors::kafka::KafkaConnector,
        weir_connectors::SourceSpec {
            endpoint: kafka_endpoint,
            topics: vec![kafka_topic.clone()],
        },
        weir_connectors::ConnectContext::new(
            weir_api::TenantId::new("tester").unwrap(),
            &format!("{prefix}-kafka-reader"),
            weir_api::egress::Egress::new(["127.0.0.1"]),
            1 << 20,
        ),
        100_000,
    )
    .await
    .unwrap();
    let others: Vec<String> = executors
        .keys()
        .filter(|id| **id != victim)
        .cloned()
        .collect();
    for id in &others {
        assert_eq!(admin.cordon_executor(id).await.unwrap().state, "cordoned");
    }
    developer
        .deploy(&common::deployment(
            "bridge",
            "echo",
            ("plant", &topic("relay-0", "in")),
            ("events", &kafka_topic),
        ))
        .await
        .unwrap();
    assert_eq!(
        runs_on(&developer, "bridge", None, Duration::from_secs(30)).await,
        victim,
        "cordoned executors take nothing new"
    );
    for id in &others {
        assert_eq!(admin.uncordon_executor(id).await.unwrap().state, "ready");
    }
    // Kafka's numbers, counted as they arrive (the first group join takes seconds on tansu).
    let mut kafka_counts: HashMap<String, u64> = HashMap::new();
    writer
        .client
        .publish(
            topic("relay-0", "in"),
            QoS::AtLeastOnce,
            false,
            "hello bridge",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !kafka_counts.contains_key("hello bridge") {
        assert!(Instant::now() < deadline, "no output of bridge on Kafka");
        for message in kafka_reader
            .intake
            .take(100_000, Duration::from_millis(200))
            .await
        {
            *kafka_counts
                .entry(String::from_utf8_lossy(&message.payload).into_owned())
                .or_default() += 1;
        }
    }

    // A numbered load on relay-0 and bridge; their executor is killed with SIGKILL part way.
    let total: u64 = 1_000;
    let load_topic = topic("relay-0", "in");
    let load_client = writer.client.clone();
    let acked_before = writer.acked.load(Ordering::Acquire);
    let load = tokio::spawn(async move {
        for n in 1..=total {
            load_client
                .publish(load_topic.clone(), QoS::AtLeastOnce, false, n.to_string())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.acked.load(Ordering::Acquire) < acked_before + 200 {
        assert!(
            Instant::now() < deadline,
            "the broker did not acknowledge the load"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    drop(executors.remove(&victim));
    let moved_to = runs_on(
        &developer,
        "relay-0",
        Some(&victim),
        Duration::from_secs(10),
    )
    .await;
    let took = killed_at.elapsed();
    println!(
        "relay-0: executor {victim} killed -9, running again on {moved_to} after {took:?} (bound 10 s; executor timeout 1 s)"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let bridge_to = runs_on(&developer, "bridge", Some(&victim), Duration::from_secs(10)).await;
    let took = killed_at.elapsed();
    println!("bridge: running again on {bridge_to} after {took:?} (bound 10 s)");
    assert!(took < Duration::from_secs(10), "{took:?}");
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

    // Every acknowledged number comes out; duplicates (redelivered after the kill) are counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (missing, duplicates) = loop {
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for payload in reader.payloads_on(&topic("relay-0", "out")) {
            if let Ok(n) = payload.parse::<u64>() {
                *counts.entry(n).or_default() += 1;
            }
        }
        let missing: Vec<u64> = (1..=total).filter(|n| !counts.contains_key(n)).collect();
        let duplicates: u64 = counts.values().map(|c| c - 1).sum();
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, duplicates);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "relay-0: {acknowledged} inputs acknowledged by the broker, {} lost, {duplicates} duplicates",
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost {} acknowledged inputs: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // And through Kafka: every acknowledged number reaches the topic.
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        for message in kafka_reader
            .intake
            .take(100_000, Duration::from_millis(200))
            .await
        {
            *kafka_counts
                .entry(String::from_utf8_lossy(&message.payload).into_owned())
                .or_default() += 1;
        }
        let missing: Vec<u64> = (1..=total)
            .filter(|n| !kafka_counts.contains_key(&n.to_string()))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
    };
    let duplicates: u64 = (1..=total)
        .filter_map(|n| kafka_counts.get(&n.to_string()))
        .map(|c| c - 1)
        .sum();
    println!(
        "bridge (MQTT to Kafka): {acknowledged} inputs acknowledged, {} lost, {duplicates} duplicates",
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "bridge lost {} acknowledged inputs: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // The other deployments kept running where they were.
    for id in ["relay-1", "relay-2"] {
        assert_eq!(
            runs_on(&developer, id, None, Duration::from_secs(5)).await,
            placed[id]
        );
    }

    // `weir executors drain`: relay-1 moves off its executor, which takes nothing new.
    let drained = placed["relay-1"].clone();
    let args: Vec<String> = [
        "executors",
        "drain",
        &drained,
        "--server",
        &format!("http://{}", server.address),
        "--token",
        server.admin_token.as_deref().unwrap(),
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
    assert!(stdout.contains(&format!("{drained}\tdraining")), "{stdout}");
    let moved = runs_on(
        &developer,
        "relay-1",
        Some(&drained),
        Duration::from_secs(10),
    )
    .await;
    assert_ne!(moved, victim);
    let listed = admin.executors().await.unwrap();
    let entry = listed.iter().find(|e| e.id == drained).unwrap();
    assert_eq!(
        (entry.state.as_str(), entry.deployments),
        ("draining", 0),
        "{listed:?}"
    );
    writer
        .client
        .publish(
            topic("relay-1", "in"),
            QoS::AtLeastOnce,
            false,
            "after the drain",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader
        .payloads_on(&topic("relay-1", "out"))
        .contains(&"after the drain".to_owned())
    {
        assert!(
            Instant::now() < deadline,
            "relay-1 gave no output after the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an executor process does with what a deployment gives up and keeps: a message its
/// module traps on goes to the tenant's dead letters in the control plane (reason and payload,
/// filed under the deployment; another tenant sees none of it), its module log lines go to the
/// tenant's logs there, and module state goes to the
/// Redis the control plane reads (`--state`), so a deployment placed again on another executor
/// after a `kill -9` counts on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_processs_dead_letters_are_kept_and_its_state_survives_a_move() {
    let mosquitto = service("WEIR_TEST_MOSQUITTO");
    let redis = service("WEIR_TEST_REDIS");
    let namespace = format!(
        "test-executors-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let state = ["--state", redis.as_str(), "--state-namespace", &namespace];
    let data = tempfile::tempdir().unwrap();
    let mut serve_args = FAST_REMOTE.to_vec();
    serve_args.extend(state);
    let server = common::serve_with(data.path(), &serve_args);
    let admin = server.admin();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let executor_args: Vec<&str> = ["--workers", "1"].into_iter().chain(state).collect();
    let first = common::executor_process(&server.address, &token, "keep-a", &executor_args);

    // Each deployment declares fuel_per_second / max_deployments: two fit one worker.
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        max_deployments: 100,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas.clone()).await;
    let other = common::tenant(&admin, "other", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    common::mqtt_endpoint(&owner, "plant", &mosquitto).await;
    for (name, guest) in [
        ("trap", weir_guests::TRAP),
        ("chatty", weir_guests::CHATTY),
        ("enrichment", weir_guests::ENRICHMENT),
    ] {
        developer
            .push_module(name, "1.0.0", guest.bytes())
            .await
            .unwrap();
    }
    developer
        .push_graph(
            "enrichment",
            "1",
            common::chain_graph("enrichment", "enrichment", 1),
        )
        .await
        .unwrap();
    // Traps on payload `trap` (and in `init` when configured so); logs `saw <payload>` of
    // what passes.
    developer
        .push_graph(
            "trap",
            "1",
            "metadata: {$schema: s, name: trap, version: '1'}
moduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}
operations:
  - {operationType: source, name: source}
  - {operationType: map, name: m0, module: 'trap:1.0.0'}
  - {operationType: map, name: m1, module: 'chatty:1.0.0'}
  - {operationType: sink, name: sink}
connections:
  - {from: {name: source}, to: {name: m0}}
  - {from: {name: m0}, to: {name: m1}}
  - {from: {name: m1}, to: {name: sink}}
moduleConfigurations:
  - name: m0
    parameters:
      trap_in_init:
        name: trap_in_init
"
            .to_owned(),
        )
        .await
        .unwrap();
    let prefix = format!("keep-{namespace}");
    let topic = |id: &str, side: &str| format!("{prefix}/{id}/{side}");
    for (id, graph) in [("traps", "trap"), ("enrich", "enrichment")] {
        developer
            .deploy(&common::deployment(
                id,
                graph,
                ("plant", &topic(id, "in")),
                ("plant", &topic(id, "out")),
            ))
            .await
            .unwrap();
        runs_on(&developer, id, None, Duration::from_secs(30)).await;
    }
    let reader = Mqtt::connect(
        &mosquitto,
        &format!("{prefix}-reader"),
        Some(&format!("{prefix}/+/out")),
    )
    .await;
    let writer = Mqtt::connect(&mosquitto, &format!("{prefix}-writer"), None).await;
    // The sources subscribe once running; publish until the first output shows they do.
    let hot = r#"{"sensor_data":{"temperature":[{"count":1,"max":150,"min":150,"average":150,"last":150,"unit":"C"}]}}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.payloads_on(&topic("traps", "out")).is_empty() {
        assert!(Instant::now() < deadline, "traps gave no output");
        writer
            .client
            .publish(topic("traps", "in"), QoS::AtLeastOnce, false, "fine")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writer
        .client
        .publish(topic("traps", "in"), QoS::AtLeastOnce, false, "trap")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let letter = loop {
        let letters = developer.dead_letters(Some("traps")).await.unwrap();
        if let Some(letter) = letters.into_iter().find(|l| l.payload == "trap") {
            break letter;
        }
        assert!(
            Instant::now() < deadline,
            "the trapped message is not in the tenant's dead letters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("dead letter from executor keep-a: {letter:?}");
    assert_eq!(letter.deployment, "traps");
    assert!(letter.seq > 0, "{letter:?}");
    assert!(!letter.reason.is_empty(), "{letter:?}");
    assert!(
        other.dead_letters(None).await.unwrap().is_empty(),
        "another tenant sees acme's dead letters"
    );

    // The module's log lines, written on the executor, are the tenant's to read here.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let lines = developer.logs(Some("traps"), None).await.unwrap();
        if let Some(line) = lines.into_iter().find(|l| l.message == "saw fine") {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "the module's log line is not in the tenant's logs: {:?}",
            developer.logs(None, None).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (line.level.as_str(), line.node.as_deref()),
        ("info", Some("m1")),
        "{line:?}"
    );
    assert!(
        other.logs(None, None).await.unwrap().is_empty(),
        "another tenant sees acme's log lines"
    );

    // A quota change reaches the executor process without a restart: from the next call on,
    // lines are cut to the new `max_log_line_bytes`.
    admin
        .patch_quotas("acme", &serde_json::json!({"max_log_line_bytes": 8}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        writer
            .client
            .publish(
                topic("traps", "in"),
                QoS::AtLeastOnce,
                false,
                "cut-this-line-please",
            )
            .await
            .unwrap();
        let lines = developer.logs(Some("traps"), None).await.unwrap();
        if lines
            .iter()
            .any(|l| l.message == "saw cut-… [16 bytes cut]")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lowered max_log_line_bytes did not reach the executor: {:?}",
            lines.iter().rev().take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A deployment that cannot start there (its module traps in `init`) says so, with the
    // executor's reason, instead of showing `running` or being placed again every round.
    let mut broken = common::deployment(
        "broken",
        "trap",
        ("plant", &topic("broken", "in")),
        ("plant", &topic("broken", "out")),
    );
    broken
        .configuration
        .insert("trap_in_init".to_owned(), "true".to_owned());
    developer.deploy(&broken).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = developer.deployment("broken").await.unwrap();
        if seen.status == "degraded" {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "broken is {} {:?}",
            seen.status,
            seen.history.last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let runtime = seen.runtime.clone().unwrap();
    assert_eq!(runtime["running"], false, "{runtime}");
    let reason = seen.history.last().unwrap().detail.clone();
    assert!(
        reason.contains("did not start") && reason.contains("init"),
        "{reason}"
    );
    println!("broken: {} ({reason})", seen.status);
    developer.delete_deployment("broken").await.unwrap();

    // State: a hot reading counts in the shared Redis, which the control plane reads.
    let count = || async {
        developer
            .state_get("overtemp_count")
            .await
            .ok()
            .and_then(|entry| entry.value)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count().await.as_deref() != Some("1") {
        assert!(Instant::now() < deadline, "no count: {:?}", count().await);
        if count().await.is_none() {
            writer
                .client
                .publish(topic("enrich", "in"), QoS::AtLeastOnce, false, hot)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        other.state_get("overtemp_count").await.is_err(),
        "another tenant reads acme's state"
    );
    // kill -9 the only executor; a new one takes the deployment and counts on.
    drop(first);
    let _second = common::executor_process(&server.address, &token, "keep-b", &executor_args);
    let moved = runs_on(
        &developer,
        "enrich",
        Some("keep-a"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(moved, "keep-b");
    let outputs = reader.payloads_on(&topic("enrich", "out")).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.payloads_on(&topic("enrich", "out")).len() == outputs {
        assert!(Instant::now() < deadline, "enrich gave no output on keep-b");
        writer
            .client
            .publish(topic("enrich", "in"), QoS::AtLeastOnce, false, hot)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let counted: u64 = count().await.unwrap().parse().unwrap();
    assert!(
        counted >= 2,
        "the count started over on the new executor: {counted}"
    );
}

/// A control plane that restarts (killed -9, started again on its data and address) does not
/// take its executors down: they keep asking, stop their deployments once the control plane
/// has been away longer than the timeout (it will have placed them elsewhere), join again
/// under the same id when it answers, and run what it places on them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_join_again_when_the_control_plane_restarts() {
    let mosquitto = service("WEIR_TEST_MOSQUITTO");
    let data = tempfile::tempdir().unwrap();
    let args = FAST_REMOTE;
    let server = common::serve_with(data.path(), &args);
    let address = server.address.clone();
    let admin_token = server.admin_token.clone().unwrap();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let mut executor = common::executor_process(&server.address, &token, "stay", &[]);
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        max_deployments: 100,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&server.admin(), "acme", quotas).await;
    let owner = common::token(&server.admin(), "acme", weir_api::tenancy::Role::Owner).await;
    common::mqtt_endpoint(&owner, "plant", &mosquitto).await;
    common::push_echo(&developer).await;
    let prefix = unique("rejoin");
    let (input, output) = (format!("{prefix}/in"), format!("{prefix}/out"));
    developer
        .deploy(&common::deployment(
            "relay",
            "echo",
            ("plant", &input),
            ("plant", &output),
        ))
        .await
        .unwrap();
    assert_eq!(
        runs_on(&developer, "relay", None, Duration::from_secs(30)).await,
        "stay"
    );
    let developer_token = developer.token().unwrap().to_owned();

    // kill -9 the control plane; start it again on the same data and address after more
    // than the executor timeout.
    drop(server);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = common::serve_at(data.path(), &address, &args, &[]);
    assert!(
        executor.0.try_wait().unwrap().is_none(),
        "the executor exited while its control plane was away"
    );
    let admin = server.client(&admin_token);
    let developer = server.client(&developer_token);
    assert_eq!(
        runs_on(&developer, "relay", None, Duration::from_secs(30)).await,
        "stay"
    );
    let listed = admin.executors().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.id.as_str(), e.state.as_str()))
            .collect::<Vec<_>>(),
        [("stay", "ready")]
    );
    assert!(
        executor
            .1
            .lock()
            .unwrap()
            .contains(&format!("executor stay joined http://{address} again")),
        "{:?}",
        executor.1.lock().unwrap()
    );
    // It runs again: a message goes through.
    let reader = Mqtt::connect(&mosquitto, &format!("{prefix}-reader"), Some(&output)).await;
    let writer = Mqtt::connect(&mosquitto, &format!("{prefix}-writer"), None).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.payloads_on(&output).is_empty() {
        assert!(
            Instant::now() < deadline,
            "relay gave no output after the restart"
        );
        writer
            .client
            .publish(input.clone(), QoS::AtLeastOnce, false, "after the restart")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A deployment no executor can take stays `pending` and says why (the placer's reason, not
/// only "waiting"), and runs once an executor joins; an executor of one worker takes four
/// deployments of default quotas (each reserves a worker's fuel, `--cpu-overcommit` 4), and
/// the fifth waits for room, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_no_executor_can_take_says_why_and_runs_once_one_joins() {
    let mosquitto = service("WEIR_TEST_MOSQUITTO");
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(data.path(), &FAST_REMOTE);
    let admin = server.admin();
    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    // Default quotas but the address: 20 × 10^9 fuel per second over 20 deployments.
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    common::mqtt_endpoint(&owner, "plant", &mosquitto).await;
    common::push_echo(&developer).await;
    let prefix = unique("unplaced");
    let deploy = |id: &'static str| {
        let spec = common::deployment(
            id,
            "echo",
            ("plant", &format!("{prefix}/{id}/in")),
            ("plant", &format!("{prefix}/{id}/out")),
        );
        let developer = developer.clone();
        async move { developer.deploy(&spec).await.unwrap() }
    };
    let waits_saying = |id: &'static str, reason: &'static str| {
        let developer = developer.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let seen = developer.deployment(id).await.unwrap();
                let detail = seen
                    .history
                    .last()
                    .map(|h| h.detail.clone())
                    .unwrap_or_default();
                if seen.status == "pending" && detail.contains(reason) {
                    println!("{id}: {} ({detail})", seen.status);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id} gives no reason: {} ({detail})",
                    seen.status
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    deploy("waits").await;
    waits_saying("waits", "no executor takes new deployments").await;
    let _late = common::executor_process(&server.address, &token, "late", &["--workers", "1"]);
    let executor = runs_on(&developer, "waits", None, Duration::from_secs(30)).await;
    assert_eq!(executor, "late");
    for id in ["w2", "w3", "w4"] {
        deploy(id).await;
        runs_on(&developer, id, None, Duration::from_secs(30)).await;
    }
    deploy("w5").await;
    waits_saying("w5", "no executor has room").await;
    let listed = admin.executors().await.unwrap();
    let late = listed.iter().find(|e| e.id == "late").unwrap();
    assert_eq!((late.workers, late.deployments), (1, 4), "{late:?}");
}
