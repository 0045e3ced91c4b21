//! `weir serve --state redis://…` against the test Redis (`scripts/services start`, then
//! `source target/services/env`): two servers (two executors, two data directories) sharing one
//! Redis share each tenant's module state and read the same state usage; a wrong `--state`
//! fails the start at once with a clear error. A test that finds no `WEIR_TEST_REDIS` fails: it never skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed expectation is a failed test"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_api::rest::{CreateDeployment, IngestMessage};
use weir_api::tenancy::Quotas;

mod common;

use common::{serve_with, tenant, weir_within};

fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS").expect(
        "WEIR_TEST_REDIS is not set: start the services with `scripts/services start` and \
         `source target/services/env` (this test needs a real Redis; it does not skip)",
    )
}

/// A namespace no other test (or earlier run) uses.
fn namespace() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-serve-{}-{nanos}", std::process::id())
}

const GRAPH: &str = "metadata: {$schema: s, name: enrich, version: '1'}
moduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}
operations:
  - {operationType: source, name: source}
  - {operationType: map, name: module-enrichment/map, module: 'enrichment:1.0.0'}
  - {operationType: sink, name: sink}
connections:
  - {from: {name: source}, to: {name: module-enrichment/map}}
  - {from: {name: module-enrichment/map}, to: {name: sink}}
";

fn reading(max: f64, min: f64) -> IngestMessage {
    serde_json::from_value(serde_json::json!({
        "payload": format!(
            r#"{{"sensor_data":{{"temperature":[{{"count":1,"max":{max},"min":{min},"average":{max},"last":{max},"unit":"C"}}]}}}}"#
        )
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_one_redis_share_a_tenants_module_state() {
    let url = redis_url();
    let ns = namespace();
    let args = ["--state", url.as_str(), "--state-namespace", ns.as_str()];
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = serve_with(data_a.path(), &args);
    let b = serve_with(data_b.path(), &args);
    assert!(
        a.lines
            .iter()
            .any(|l| l.contains("tenants' state on redis://")),
        "{:?}",
        a.lines
    );
    // The same tenant on both (each server has its own control store).
    let on_a = tenant(&a.admin(), "plant", Quotas::default()).await;
    let on_b = tenant(&b.admin(), "plant", Quotas::default()).await;
    let other_on_b = tenant(&b.admin(), "other", Quotas::default()).await;
    for client in [&on_a, &on_b] {
        client
            .push_module("enrichment", "1.0.0", weir_guests::ENRICHMENT.bytes())
            .await
            .unwrap();
        client
            .push_graph("enrich", "1", GRAPH.to_owned())
            .await
            .unwrap();
        let deployment: CreateDeployment = serde_json::from_value(serde_json::json!({
            "id": "enrich", "graph": {"name": "enrich", "version": "1"}
        }))
        .unwrap();
        client.deploy(&deployment).await.unwrap();
    }
    // A hot reading on a's executor sets the flag and counts under the lock ...
    let hot = on_a
        .ingest("enrich", &[reading(150.0, 150.0)], true)
        .await
        .unwrap();
    assert!(
        hot.outputs.unwrap()[0]
            .payload
            .contains(r#""overtemp":true"#),
        "a hot reading sets the flag"
    );
    // ... and b's executor reads it: a mild reading there comes out flagged.
    let mild = on_b
        .ingest("enrich", &[reading(50.0, 10.0)], true)
        .await
        .unwrap();
    assert!(
        mild.outputs.unwrap()[0]
            .payload
            .contains(r#""overtemp":true"#),
        "b's module read the flag a's module stored"
    );
    assert_eq!(
        on_b.state_get("overtemp_count")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("1")
    );
    // Another hot reading on b counts on from a's count.
    on_b.ingest("enrich", &[reading(150.0, 150.0)], true)
        .await
        .unwrap();
    assert_eq!(
        on_a.state_get("overtemp_count")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("2")
    );
    // Another tenant on the same Redis sees none of it.
    assert!(other_on_b.state_keys().await.unwrap().keys.is_empty());
    assert!(other_on_b.state_get("overtemp").await.is_err());
    // Both servers read the tenant's state usage from the counters in the shared Redis: the
    // keys the module wrote (its lock released), each key's bytes plus its value's.
    let keys = on_a.state_keys().await.unwrap().keys;
    let mut bytes = 0;
    for key in &keys {
        let value = on_a.state_get(key).await.unwrap().value.unwrap_or_default();
        bytes += (key.len() + value.len()) as u64;
    }
    assert!(keys.iter().any(|k| k == "overtemp_count"), "{keys:?}");
    for client in [&on_a, &on_b] {
        let usage = client.usage().await.unwrap();
        assert_eq!(
            (usage.state_keys, usage.state_bytes),
            (keys.len() as u64, bytes),
            "{usage:?}"
        );
    }
    let other = other_on_b.usage().await.unwrap();
    assert_eq!((other.state_keys, other.state_bytes), (0, 0));
}

#[test]
fn a_bad_or_unreachable_state_url_fails_the_start_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!(
        "redis://:secret@127.0.0.1:{}/",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    // A URL of the wrong kind is a configuration problem (exit 2, as `weir config check` says
    // of it); one that cannot be used is a failed start (exit 1).
    for (state, expected, exit) in [
        ("postgres://db/", "expected `sqlite` or redis://", 2),
        ("redis://127.0.0.1:notaport/", "invalid Redis URL", 1),
        (
            down.as_str(),
            "cannot reach Redis at redis://:***@127.0.0.1:",
            1,
        ),
    ] {
        let (stdout, stderr, code) = weir_within(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--data",
                data,
                "--state",
                state,
            ],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(exit), "{state}: {stdout}{stderr}");
        assert!(stderr.contains(expected), "{state}: {stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
        // Nothing was minted: the next start is still the first and shows the admin token.
        assert!(!stdout.contains("admin token"), "{stdout}");
    }
}

#[test]
fn a_bad_otlp_endpoint_fails_the_start_before_the_admin_token_is_minted() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    let (stdout, stderr, code) = weir_within(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data",
            data,
            "--otlp-endpoint",
            "collector:4317",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("--otlp-endpoint"), "{stderr}");
    assert!(!stdout.contains("admin token"), "{stdout}");
    assert!(!stdout.contains("weir listening"), "{stdout}");
}
