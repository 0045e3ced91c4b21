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
        .deploy(&CreateDeployment {
            id: "relay".to_owned(),
            graph: GraphRef {
                name: "echo".to_owned(),
                version: "1".to_owned(),
            },
            configuration: BTreeMap::new(),
            source: Binding {
                endpoint: "plant".to_owned(),
                topics: vec!["in".to_owned()],
            },
            sink: Binding {
                endpoint: "plant".to_owned(),
                topics: vec!["out".to_owned()],
            },
            dead_letters: None,
        })
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
