//! Per-tenant telemetry and billable usage through a real `weir serve`:
//! - metrics exported over OTLP reach the platform's collector (the rotel of
//!   `scripts/services`, `WEIR_TEST_OTLP_GRPC`/`WEIR_TEST_OTLP_LOG`) with each tenant's series
//!   under its own `weir.tenant` and nothing of another tenant's, and a tenant's `telemetry`
//!   endpoint (a second rotel this test starts, from `WEIR_TEST_ROTEL`) receives that tenant's
//!   series only;
//! - a module minting a label value per message (the hostile `chatty`) is held to its
//!   `max_metric_series` quota, in `/v1/metrics` and in the export, and told so in its log;
//! - usage counts exactly the messages a known module handled, and fuel within the measured
//!   per-message figure, before and after a graceful restart of `weir serve`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_api::client::Client;
use weir_api::rest::{CreateDeployment, CreateEndpoint, EndpointKind, IngestMessage, MintToken};
use weir_api::tenancy::{Quotas, Role};

fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: start the services with `scripts/services start` and `source \
             target/services/env` (this test needs the real service; it does not skip)"
        )
    })
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}{}", std::process::id(), nanos % 1_000_000_000)
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A second OTLP collector: rotel on free loopback ports, logging every metric it receives
/// to `log`; killed when dropped.
struct Rotel {
    child: Child,
    grpc: String,
    log: PathBuf,
}

impl Drop for Rotel {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Rotel {
    fn start(dir: &Path) -> Self {
        let binary = service("WEIR_TEST_ROTEL");
        let (grpc, http) = (free_port(), free_port());
        let log = dir.join("rotel.log");
        let child = Command::new(binary)
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{http}"),
                "--exporter",
                "blackhole",
                "--debug-log",
                "metrics",
                "--debug-log-verbosity",
                "detailed",
                "--pid-file",
            ])
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("agent.log"))
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rotel = Self {
            child,
            grpc: format!("127.0.0.1:{grpc}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&rotel.grpc).is_err() {
            assert!(Instant::now() < deadline, "rotel did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        rotel
    }
}

/// The `ResourceMetrics` blocks of a rotel debug log: (the resource's `weir.tenant`, the
/// block's text).
fn resource_blocks(log: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if line.starts_with("ResourceMetrics #") || line.starts_with("ResourceLogs #") {
            if let Some(block) = current.take() {
                blocks.push(block);
            }
            if line.starts_with("ResourceMetrics #") {
                current = Some(String::new());
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks.extend(current);
    blocks
        .into_iter()
        .filter_map(|block| {
            let tenant = block
                .lines()
                .find_map(|l| l.trim().strip_prefix("-> weir.tenant: Str("))?
                .trim_end_matches(')')
                .to_owned();
            Some((tenant, block))
        })
        .collect()
}

/// Every `weir.tenant` value of a block (the resource's and each data point's).
fn tenants_in(block: &str) -> BTreeSet<String> {
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-> weir.tenant: Str("))
        .map(|t| t.trim_end_matches(')').to_owned())
        .collect()
}

/// Every value of label `key` in a block.
fn label_values(block: &str, key: &str) -> BTreeSet<String> {
    let prefix = format!("-> {key}: Str(");
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(|t| t.trim_end_matches(')').to_owned())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn chatty_deployment(id: &str) -> CreateDeployment {
    common::http_deployment(id, "chatty")
}

async fn push_chatty(client: &Client) {
    client
        .push_module("chatty", "1.0.0", weir_guests::CHATTY.bytes())
        .await
        .unwrap();
    client
        .push_graph("chatty", "1", common::chain_graph("chatty", "chatty", 1))
        .await
        .unwrap();
}

fn roomy(allowed: &[&str]) -> Quotas {
    Quotas {
        api_requests_per_second: 100_000,
        max_deployments: 100,
        allowed_private_hosts: allowed.iter().map(|h| (*h).to_owned()).collect(),
        ..Quotas::default()
    }
}

#[tokio::test]
async fn each_tenants_series_reach_the_platform_collector_under_its_tenant_and_its_own_collector_alone()
 {
    let platform = service("WEIR_TEST_OTLP_GRPC");
    let platform_log = PathBuf::from(service("WEIR_TEST_OTLP_LOG"));
    let collector_dir = tempfile::tempdir().unwrap();
    let own = Rotel::start(collector_dir.path());
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(
        data.path(),
        &[
            "--otlp-endpoint",
            &format!("http://{platform}"),
            "--otlp-interval-ms",
            "200",
        ],
    );
    let admin = server.admin();
    let id = unique();
    let (a, b) = (format!("ota{id}"), format!("otb{id}"));
    // a: roomy, its own collector as its `telemetry` endpoint. b: max_metric_series = 5.
    let a_dev = common::tenant(&admin, &a, roomy(&["127.0.0.1"])).await;
    let a_owner = common::token(&admin, &a, Role::Owner).await;
    let b_dev = common::tenant(
        &admin,
        &b,
        Quotas {
            max_metric_series: 5,
            ..roomy(&[])
        },
    )
    .await;
    a_owner
        .create_endpoint(&CreateEndpoint {
            name: "telemetry".to_owned(),
            kind: EndpointKind::Otlp,
            address: Some(format!("http://{}", own.grpc)),
            settings: BTreeMap::new(),
            secret: None,
        })
        .await
        .unwrap();
    for (client, deployment) in [(&a_dev, "da"), (&b_dev, "db")] {
        push_chatty(client).await;
        client.deploy(&chatty_deployment(deployment)).await.unwrap();
    }
    // chatty labels its counter with the payload: a's 3 values, b's 20 (over its quota of 5).
    let a_payloads: Vec<String> = (0..3).map(|i| format!("a-secret-{id}-{i}")).collect();
    let b_payloads: Vec<String> = (0..20).map(|i| format!("b-secret-{id}-{i:02}")).collect();
    let messages = |p: &[String]| p.iter().map(IngestMessage::new).collect::<Vec<_>>();
    assert_eq!(
        a_dev
            .ingest("da", &messages(&a_payloads), true)
            .await
            .unwrap()
            .accepted,
        3
    );
    assert_eq!(
        b_dev
            .ingest("db", &messages(&b_payloads), true)
            .await
            .unwrap()
            .accepted,
        20
    );

    // b's module series are capped at 5, and the module was told in its log.
    let b_series: Vec<_> = b_dev
        .metrics()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "chatty_messages")
        .collect();
    assert_eq!(b_series.len(), 5, "{b_series:?}");
    let told = b_dev.logs(None, None).await.unwrap();
    assert!(
        told.iter()
            .any(|l| l.level == "warn" && l.message.contains("max_metric_series (5) reached")),
        "{told:?}"
    );
    // weir's own series are not the module's: they carry on beyond the module's quota.
    let b_all = b_dev.metrics().await.unwrap();
    assert!(
        b_all
            .iter()
            .any(|s| s.platform && s.name == "weir_messages_in" && s.value == 20.0),
        "{b_all:?}"
    );
    assert!(
        b_all
            .iter()
            .any(|s| s.name == "weir_call_duration_seconds" && s.count == Some(20)),
        "{b_all:?}"
    );

    // The platform collector: each tenant's resource, with its series and its tenant only.
    let wanted = |tenant: &str, deployment: &str| {
        let log = read(&platform_log);
        resource_blocks(&log).iter().any(|(t, block)| {
            t == tenant
                && block.contains("-> Name: chatty_messages")
                && block.contains("-> Name: weir_messages_in")
                && block.contains("-> Name: weir_call_duration_seconds")
                && label_values(block, "deployment").contains(deployment)
        })
    };
    eventually(
        "the platform collector has both tenants' series",
        Duration::from_secs(60),
        || async { wanted(&a, "da") && wanted(&b, "db") },
    )
    .await;
    let log = read(&platform_log);
    let mut seen = 0;
    for (tenant, block) in resource_blocks(&log) {
        let (mine, theirs, their_deployment, their_prefix) = if tenant == a {
            (&a, &b, "db", "b-secret-")
        } else if tenant == b {
            (&b, &a, "da", "a-secret-")
        } else {
            continue;
        };
        seen += 1;
        assert_eq!(
            tenants_in(&block),
            BTreeSet::from([mine.clone()]),
            "every point of {mine}'s resource carries {mine} only:\n{block}"
        );
        assert!(!block.contains(theirs.as_str()), "{block}");
        assert!(
            !label_values(&block, "deployment").contains(their_deployment),
            "{block}"
        );
        assert!(
            !label_values(&block, "payload")
                .iter()
                .any(|p| p.starts_with(their_prefix)),
            "{block}"
        );
        if tenant == b {
            // The export holds b to its quota as /v1/metrics does.
            assert!(label_values(&block, "payload").len() <= 5, "{block}");
        }
    }
    assert!(seen >= 2);

    // a's own collector: a's series, and nothing of b's.
    eventually(
        "a's collector has a's series",
        Duration::from_secs(60),
        || async {
            resource_blocks(&read(&own.log)).iter().any(|(t, block)| {
                *t == a
                    && block.contains("-> Name: chatty_messages")
                    && label_values(block, "payload").contains(&a_payloads[0])
            })
        },
    )
    .await;
    let own_log = read(&own.log);
    assert!(!own_log.contains(&b), "b's tenant reached a's collector");
    assert!(
        !own_log.contains("b-secret-"),
        "b's labels reached a's collector"
    );
    for (tenant, block) in resource_blocks(&own_log) {
        assert_eq!(tenant, a);
        assert_eq!(tenants_in(&block), BTreeSet::from([a.clone()]));
    }

    // Taking the private host away stops a's own export from the next tick on: series made
    // after the change reach the platform collector (twice over, so a whole tick passed) and
    // never a's loopback collector.
    admin.set_quotas(&a, &roomy(&[])).await.unwrap();
    for round in 0..2 {
        let marker = format!("a-revoked-{id}-{round}");
        a_dev
            .ingest("da", &messages(std::slice::from_ref(&marker)), true)
            .await
            .unwrap();
        eventually(
            "the platform collector has the series made after the change",
            Duration::from_secs(60),
            || async {
                resource_blocks(&read(&platform_log))
                    .iter()
                    .any(|(t, block)| *t == a && label_values(block, "payload").contains(&marker))
            },
        )
        .await;
    }
    assert!(
        !read(&own.log).contains(&format!("a-revoked-{id}-")),
        "a's collector on a host taken away still received its series"
    );
    drop(server);
}

/// Stops `weir serve` with SIGINT (a graceful stop: it flushes usage) and waits until it
/// exited.
fn stop_gracefully(server: &common::Server) {
    let pid = server.pid();
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Exited: gone, or a zombie until the test's `Child` reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if stat.is_empty() || state == Some('Z') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "weir serve did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn usage_counts_the_work_done_exactly_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(data.path(), &["--usage-flush-ms", "200"]);
    let admin = server.admin();
    let developer = common::tenant(&admin, "billed", roomy(&[])).await;
    let token = admin
        .mint_token(&MintToken {
            subject: "billing".to_owned(),
            role: Role::Developer,
            ttl_seconds: None,
            tenant: Some("billed".to_owned()),
        })
        .await
        .unwrap()
        .token
        .unwrap();
    push_chatty(&developer).await;
    developer.deploy(&chatty_deployment("d")).await.unwrap();
    // Payloads of one length: every call does the same work.
    let message = |i: usize| IngestMessage::new(format!("m{i:03}"));

    // The first message warms the instance up (its first call costs more); the next ten
    // measure the module's fuel per message.
    developer.ingest("d", &[message(0)], true).await.unwrap();
    let first = developer.usage().await.unwrap();
    assert_eq!((first.messages_in, first.messages_out), (1, 1));
    let ten: Vec<IngestMessage> = (1..11).map(message).collect();
    assert_eq!(
        developer.ingest("d", &ten, true).await.unwrap().accepted,
        10
    );
    let eleven = developer.usage().await.unwrap();
    assert_eq!(eleven.init_fuel, first.init_fuel, "no instance restart");
    let per_message = (eleven.fuel - first.fuel) / 10;
    assert!(per_message > 0, "{eleven:?}");

    let nine: Vec<IngestMessage> = (11..20).map(message).collect();
    assert_eq!(
        developer.ingest("d", &nine, true).await.unwrap().accepted,
        9
    );
    let before = developer.usage().await.unwrap();
    assert_eq!((before.messages_in, before.messages_out), (20, 20));
    let expected = eleven.fuel + 9 * per_message;
    assert!(
        before.fuel.abs_diff(expected) <= per_message,
        "fuel {} after 9 more messages of {per_message} each from {}",
        before.fuel,
        eleven.fuel
    );
    let bytes_per_message = first.bytes_in;
    assert_eq!(before.bytes_in, 20 * bytes_per_message);

    stop_gracefully(&server);
    drop(server);
    let server = common::serve_with(data.path(), &["--usage-flush-ms", "200"]);
    let developer = server.client(&token);
    let after = developer.usage().await.unwrap();
    // The resumed deployment ran its `init` again: new work, counted in `init_fuel` (this
    // process's) and in the total.
    assert_eq!(
        (
            after.messages_in,
            after.messages_out,
            after.bytes_in,
            after.fuel - after.init_fuel
        ),
        (
            before.messages_in,
            before.messages_out,
            before.bytes_in,
            before.fuel
        ),
        "the totals outlive the restart exactly"
    );
    let hours: Vec<_> = after
        .periods
        .iter()
        .filter(|p| p.period == "hour")
        .collect();
    let days: Vec<_> = after.periods.iter().filter(|p| p.period == "day").collect();
    assert_eq!(
        hours.iter().map(|p| p.messages_in).sum::<u64>(),
        20,
        "{:?}",
        after.periods
    );
    assert_eq!(days.iter().map(|p| p.messages_in).sum::<u64>(), 20);
    assert!(days.iter().map(|p| p.fuel).sum::<u64>() >= before.fuel);

    // The resumed deployment counts on from there.
    eventually(
        "the deployment resumed",
        Duration::from_secs(30),
        || async {
            developer
                .deployment("d")
                .await
                .is_ok_and(|d| d.runtime.is_some())
        },
    )
    .await;
    let batch: Vec<IngestMessage> = (20..25).map(message).collect();
    assert_eq!(
        developer.ingest("d", &batch, true).await.unwrap().accepted,
        5
    );
    let later = developer.usage().await.unwrap();
    assert_eq!((later.messages_in, later.messages_out), (25, 25));
    assert!(later.fuel >= before.fuel + 5 * per_message - per_message);
    eventually(
        "the flush puts the new work in the hour",
        Duration::from_secs(30),
        || async {
            developer
                .usage()
                .await
                .unwrap()
                .periods
                .iter()
                .filter(|p| p.period == "hour")
                .map(|p| p.messages_in)
                .sum::<u64>()
                == 25
        },
    )
    .await;
}

#[tokio::test]
async fn logs_follow_waits_through_a_server_restart_and_prints_each_line_once() {
    let data = tempfile::tempdir().unwrap();
    let first = common::serve(data.path());
    let address = first.address.clone();
    let admin = first.admin();
    let developer = common::tenant(&admin, "follower", roomy(&[])).await;
    let token = admin
        .mint_token(&MintToken {
            subject: "follower-logs".to_owned(),
            role: Role::Developer,
            ttl_seconds: None,
            tenant: Some("follower".to_owned()),
        })
        .await
        .unwrap()
        .token
        .unwrap();
    push_chatty(&developer).await;
    developer.deploy(&chatty_deployment("d")).await.unwrap();
    developer
        .ingest("d", &[IngestMessage::new("before")], true)
        .await
        .unwrap();

    let mut follower = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["logs", "-f", "--output", "json", "--server"])
        .arg(format!("http://{address}"))
        .args(["--token", &token])
        .env_remove("WEIR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let stderr = follower.stderr.take().unwrap();
    let (said_tx, said) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if said_tx.send(line).is_err() {
                return;
            }
        }
    });
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(value) = serde_json::from_str(&line)
                && tx.send(value).is_err()
            {
                return;
            }
        }
    });
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let wait_for = |text: &str, seen: &mut Vec<serde_json::Value>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen
            .iter()
            .any(|l| l["message"].as_str().unwrap_or("").contains(text))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {text:?}: {seen:?}"));
            seen.push(line);
        }
    };
    wait_for("before", &mut seen);

    // The server stops and comes back on the same address and data; the follower keeps going.
    stop_gracefully(&first);
    drop(first);
    // The follower meets the stopped server (and says it waits) before the next one starts.
    let waits = said
        .recv_timeout(Duration::from_secs(30))
        .expect("weir logs -f said nothing while the server was down (did it exit?)");
    assert!(waits.contains("does not answer"), "{waits}");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "weir logs -f exited"
    );
    let mut second = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--listen",
            &address,
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let lines = std::io::BufReader::new(second.stdout.take().unwrap()).lines();
        for line in lines {
            if line.unwrap().starts_with("weir listening on") {
                break;
            }
        }
    }
    // A new client: the old one's kept-alive connection went with the first server.
    let developer = Client::new(&format!("http://{address}"), Some(token.clone())).unwrap();
    developer
        .ingest("d", &[IngestMessage::new("after")], true)
        .await
        .unwrap();
    wait_for("after", &mut seen);
    let back = said.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(back.contains("answers again"), "{back}");
    follower.kill().ok();
    follower.wait().ok();
    second.kill().ok();
    second.wait().ok();
    let seqs: Vec<u64> = seen.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let mut unique_seqs = seqs.clone();
    unique_seqs.dedup();
    assert_eq!(seqs, unique_seqs, "a line printed twice: {seen:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}
