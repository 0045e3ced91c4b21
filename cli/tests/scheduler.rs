//! The scheduler's reconcile loop in a real `weir serve`: a deployment's status follows what its
//! executor reports, round after round, with no API call (issue 13, step 2).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_api::client::Client;
use weir_api::rest::{Binding, CreateDeployment, CreateEndpoint, EndpointKind, GraphRef};
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
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let binary = which_mosquitto();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto, installed by scripts/services) runs");
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

fn which_mosquitto() -> std::path::PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("no mosquitto binary: run scripts/setup (Debian package mosquitto)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls the deployment's status word until it is `status`; fails after `limit`.
async fn status_becomes(client: &Client, id: &str, status: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = client.deployment(id).await.unwrap();
        if seen.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} not {status} within {limit:?}: {} (history {:?})",
            seen.status,
            seen.history
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_loop_shows_a_broken_connection_as_degraded_and_its_recovery_as_running() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(data.path(), &["--reconcile-ms", "50"]);
    let admin = server.admin();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        allowed_private_hosts: vec!["127.0.0.1".to_owned()],
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "acme", quotas).await;
    let owner = common::token(&admin, "acme", weir_api::tenancy::Role::Owner).await;
    // A broker that is not there yet.
    let port = free_port();
    owner
        .create_endpoint(&CreateEndpoint {
            name: "plant".to_owned(),
            kind: EndpointKind::Mqtt,
            address: Some(format!("127.0.0.1:{port}")),
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
        .push_graph("echo", "1", common::chain_graph("echo", "echo", 1))
        .await
        .unwrap();
    let created = developer
        .deploy(&common::deployment(
            "relay",
            "echo",
            ("plant", "in"),
            ("plant", "out"),
        ))
        .await
        .unwrap();
    assert_eq!(created.status, "running");

    // Nobody calls the API: the loop sees the source retrying and says so.
    status_becomes(&developer, "relay", "degraded", Duration::from_secs(30)).await;
    let seen = developer.deployment("relay").await.unwrap();
    let last = seen.history.last().unwrap();
    assert_eq!(last.status, "degraded");
    assert!(
        last.detail.contains("connection"),
        "the reason names the connection: {last:?}"
    );

    // The broker comes; the connector reconnects on its own, and the loop records it.
    let broker_dir = tempfile::tempdir().unwrap();
    let _broker = Mosquitto::start(broker_dir.path(), port);
    status_becomes(&developer, "relay", "running", Duration::from_secs(60)).await;

    // Paused by its owner: the loop does not start it again, nor record over the pause.
    developer.pause("relay").await.unwrap();
    let executors_before = admin.executors().await.unwrap();
    assert_eq!(executors_before[0].deployments, 0);
    // Long enough for many rounds (50 ms each): the pause holds through them. Polled, not
    // slept: every read must see it paused and stopped.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let seen = developer.deployment("relay").await.unwrap();
        assert_eq!(seen.status, "paused", "{:?}", seen.history);
        assert!(seen.runtime.is_none(), "a paused deployment runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    developer.resume("relay").await.unwrap();
    status_becomes(&developer, "relay", "running", Duration::from_secs(30)).await;
}

const SIMPLE_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");

fn http_deployment(id: &str, configuration: &[(&str, &str)]) -> CreateDeployment {
    CreateDeployment {
        id: id.to_owned(),
        graph: GraphRef {
            name: "simple".to_owned(),
            version: "1".to_owned(),
        },
        configuration: configuration
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        source: Binding::default(),
        sink: Binding::default(),
        dead_letters: None,
        instances: 1,
        partition_key: None,
    }
}

/// Whether the store and the runtime agree on `id`: it runs exactly when its record exists and
/// does not say paused or failed.
async fn agree(admin: &Client, developer: &Client, id: &str) -> Result<(), String> {
    let record = match developer.deployment(id).await {
        Ok(record) => Some(record),
        Err(error) if error.code() == Some("not_found") => None,
        Err(error) => return Err(format!("read failed: {error}")),
    };
    let runs = admin.executors().await.unwrap()[0].deployments;
    let should = record
        .as_ref()
        .is_some_and(|r| r.status != "paused" && r.status != "failed");
    if runs == u64::from(should) {
        Ok(())
    } else {
        Err(format!(
            "store says {:?}, the executor runs {runs}",
            record.map(|r| (r.status, r.history))
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_racing_a_fast_reconcile_loop_leave_store_and_runtime_agreeing() {
    let data = tempfile::tempdir().unwrap();
    // A round every 5 ms: the loop's plans go stale all the time.
    let server = common::serve_with(data.path(), &["--reconcile-ms", "10"]);
    let admin = server.admin();
    let quotas = Quotas {
        api_requests_per_second: 100_000,
        ..Quotas::default()
    };
    let developer = common::tenant(&admin, "racer", quotas).await;
    developer
        .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
        .await
        .unwrap();
    developer
        .push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();
    for round in 0..12 {
        let id = "same";
        // Create, update, pause, resume and delete of one id at once, in an order that
        // changes with the round.
        let mut calls = tokio::task::JoinSet::new();
        for step in 0..5 {
            let client = developer.clone();
            let kind = (step + round) % 5;
            calls.spawn(async move {
                let outcome = match kind {
                    0 => client.deploy(&http_deployment(id, &[])).await.map(drop),
                    1 => client
                        .update_deployment(&http_deployment(id, &[("round", "two")]))
                        .await
                        .map(drop),
                    2 => client.pause(id).await.map(drop),
                    3 => client.resume(id).await.map(drop),
                    _ => client.delete_deployment(id).await.map(drop),
                };
                match outcome {
                    Ok(()) => {}
                    Err(error) => assert!(
                        matches!(error.code(), Some("not_found" | "conflict")),
                        "call {kind}: {error}"
                    ),
                }
            });
        }
        calls.join_all().await;
        // From here only the loop acts: the two must agree at every read over many rounds.
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            if let Err(problem) = agree(&admin, &developer, id).await {
                panic!("round {round}: {problem}");
            }
        }
        if developer.deployment(id).await.is_ok() {
            developer.delete_deployment(id).await.unwrap();
        }
        agree(&admin, &developer, id).await.unwrap();
    }
}

async fn executor_state(admin: &Client, id: &str) -> Option<String> {
    admin
        .executors()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.id == id)
        .map(|e| e.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_processes_join_heartbeat_and_a_killed_one_is_declared_lost_within_the_timeout() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(
        data.path(),
        &[
            "--executors",
            "2",
            "--executor-heartbeat-ms",
            "100",
            "--executor-timeout-ms",
            "1000",
            "--reconcile-ms",
            "100",
        ],
    );
    let admin = server.admin();
    // The two started by `weir serve` (the in-process executor runs nothing then).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let executors = admin.executors().await.unwrap();
        let ready = executors.iter().filter(|e| e.state == "ready").count();
        if executors.len() == 2 && ready == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{executors:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let token = std::fs::read_to_string(data.path().join("executor-token")).unwrap();
    let process =
        common::executor_process(&server.address, &token, "edge-1", &["--label", "zone=test"]);
    assert_eq!(
        executor_state(&admin, "edge-1").await.as_deref(),
        Some("ready")
    );

    // The join token is the only way in; ids are unique among live executors.
    let join = weir_api::rest::ExecutorJoin {
        id: "edge-1".to_owned(),
        workers: 1,
        memory_bytes: 1 << 30,
        instance_slots: 10,
        labels: BTreeMap::new(),
    };
    let tenant = common::tenant(&admin, "acme", Quotas::default()).await;
    let refused = tenant.join_executor(&join).await.unwrap_err();
    assert_eq!(refused.code(), Some("unauthenticated"), "{refused}");
    let executor_client =
        Client::new(&format!("http://{}", server.address), Some(token.clone())).unwrap();
    let duplicate = executor_client.join_executor(&join).await.unwrap_err();
    assert_eq!(duplicate.code(), Some("conflict"), "{duplicate}");

    // After the join, each executor acts with its own session token: the join token, a
    // tenant's token and another executor's session open none of its routes; it fetches only
    // the artifacts of its own assignments and reports only for tenants it runs.
    let probe_join = weir_api::rest::ExecutorJoin {
        id: "probe".to_owned(),
        ..join.clone()
    };
    let joined = executor_client.join_executor(&probe_join).await.unwrap();
    assert_eq!(joined.session_token.len(), 64, "{joined:?}");
    let probe = executor_client.with_token(joined.session_token.clone());
    let module = weir_guests::ECHO.bytes();
    tenant
        .push_module("echo", "1.0.0", module.clone())
        .await
        .unwrap();
    let digest = weir_api::ModuleDigest::of(&module);
    let beat = weir_api::rest::ExecutorHeartbeat::default();
    probe.executor_heartbeat("probe", &beat).await.unwrap();
    for (caller, id, what) in [
        (&executor_client, "probe", "the join token"),
        (&tenant, "probe", "a tenant's token"),
        (&probe, "edge-1", "another executor's session"),
    ] {
        let refused = caller.executor_heartbeat(id, &beat).await.unwrap_err();
        assert_eq!(refused.code(), Some("unauthenticated"), "{what}: {refused}");
        let refused = caller.executor_assignments(id, 0, 0).await.unwrap_err();
        assert_eq!(refused.code(), Some("unauthenticated"), "{what}: {refused}");
        let refused = caller.executor_artifact(id, &digest).await.unwrap_err();
        assert_eq!(refused.code(), Some("unauthenticated"), "{what}: {refused}");
    }
    let unassigned = probe.executor_artifact("probe", &digest).await.unwrap_err();
    assert_eq!(
        unassigned.code(),
        Some("not_found"),
        "a stored module no assignment of it names: {unassigned}"
    );
    let letters = weir_api::rest::ExecutorDeadLetters {
        tenant: weir_api::TenantId::new("acme").unwrap(),
        letters: Vec::new(),
    };
    let foreign = probe
        .executor_dead_letters("probe", &letters)
        .await
        .unwrap_err();
    assert_eq!(
        foreign.code(),
        Some("forbidden"),
        "a tenant it runs nothing of: {foreign}"
    );
    // Joining again gives a new session; the old token is refused from then on.
    probe.leave_executor("probe").await.unwrap();
    let gone = probe.executor_heartbeat("probe", &beat).await.unwrap_err();
    assert_eq!(gone.code(), Some("not_found"), "left: {gone}");
    let again = executor_client.join_executor(&probe_join).await.unwrap();
    assert_ne!(again.session_token, joined.session_token);
    let stale = probe.executor_heartbeat("probe", &beat).await.unwrap_err();
    assert_eq!(stale.code(), Some("unauthenticated"), "{stale}");
    let probe = executor_client.with_token(again.session_token);
    probe.executor_heartbeat("probe", &beat).await.unwrap();

    // kill -9: no leave, heartbeats stop; lost within the timeout plus a reconcile round.
    let killed_at = Instant::now();
    drop(process);
    let deadline = killed_at + Duration::from_secs(5);
    while executor_state(&admin, "edge-1").await.as_deref() != Some("lost") {
        assert!(Instant::now() < deadline, "not declared lost within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed_at.elapsed();
    println!("executor killed -9 was declared lost after {took:?} (timeout 1 s, rounds 100 ms)");
    assert!(
        took >= Duration::from_millis(900),
        "lost before the timeout passed: {took:?}"
    );
    // A lost executor does not come back under its session: its work goes elsewhere (the
    // probe stopped beating too, so it was lost with edge-1).
    let deadline = Instant::now() + Duration::from_secs(5);
    while executor_state(&admin, "probe").await.as_deref() != Some("lost") {
        assert!(Instant::now() < deadline, "probe not declared lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = probe.executor_heartbeat("probe", &beat).await.unwrap_err();
    assert_eq!(back.code(), Some("conflict"), "{back}");
    let fetch = probe.executor_artifact("probe", &digest).await.unwrap_err();
    assert_eq!(
        fetch.code(),
        Some("not_found"),
        "a lost executor fetches nothing: {fetch}"
    );
    // The others are still ready.
    let ready = admin
        .executors()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.state == "ready")
        .count();
    assert_eq!(ready, 2, "the two of weir serve");

    // One of weir serve's own killed -9 is started again (a new process, a new id).
    let victim = admin
        .executors()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.state == "ready" && e.id != "edge-1")
        .unwrap()
        .id;
    // `<host>-<pid>-<start time>`.
    let pid = victim.rsplit('-').nth(1).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let executors = admin.executors().await.unwrap();
        let ready: Vec<&str> = executors
            .iter()
            .filter(|e| e.state == "ready" && e.id != "edge-1")
            .map(|e| e.id.as_str())
            .collect();
        if ready.len() == 2 && !ready.contains(&victim.as_str()) {
            println!("executor {victim} killed -9; weir serve started another: {ready:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not started again: {executors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A process started again under the lost id (a fixed id, as systemd's `%H-%i`) joins at
    // once, as a new member.
    let _again = common::executor_process(&server.address, &token, "edge-1", &[]);
    assert_eq!(
        executor_state(&admin, "edge-1").await.as_deref(),
        Some("ready")
    );
}

/// An executor started before its control plane (as Kubernetes may start them) waits for it,
/// saying so, and joins once it answers.
#[test]
fn an_executor_started_before_its_control_plane_joins_once_it_answers() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let token = "early-executors-join-token-0123456789";
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "executor",
            "--join",
            &format!("http://{address}"),
            "--id",
            "early",
        ])
        .env("WEIR_EXECUTOR_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Killed(child);
    // Nothing listens there yet: it says it will try again.
    let mut errors = BufReader::new(stderr).lines();
    let waiting = errors
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("cannot reach"))
        .expect("the executor said nothing of waiting");
    assert!(waiting.contains("trying again"), "{waiting}");
    std::thread::spawn(move || for _ in errors {});
    let server = common::serve_at(
        data.path(),
        &address,
        &["--remote-executors", "--executor-token", token],
        &[],
    );
    let joined = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("executor early joined"));
    assert!(joined.is_some(), "it never joined {}", server.address);
    drop(child);
}
