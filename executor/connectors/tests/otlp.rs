//! The `otlp` sink against a real OpenTelemetry collector (rotel, started by
//! `scripts/services start` with its debug log of what it receives): exports over gRPC and
//! HTTP/protobuf, rejections with the JSON path of the problem, the tenant in the resource,
//! the egress wall and an unreachable collector.
//!
//! Needs `WEIR_TEST_OTLP_GRPC`, `WEIR_TEST_OTLP_HTTP` and `WEIR_TEST_OTLP_LOG`; without them
//! the tests fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_api::TenantId;
use weir_api::egress::Egress;
use weir_connectors::otlp::OtlpConnector;
use weir_connectors::{
    ConnectContext, ConnectionState, Connector, EndpointSpec, Outbound, SinkSpec, SourceSpec,
    conformance,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `scripts/services start` and `source target/services/env` \
             (this test needs the real collector and fails without it)"
        )
    })
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

fn spec(address: &str, protocol: &str) -> SinkSpec {
    SinkSpec {
        endpoint: EndpointSpec {
            name: "collector".to_owned(),
            kind: "otlp".to_owned(),
            address: Some(address.to_owned()),
            settings: [("protocol".to_owned(), protocol.to_owned())]
                .into_iter()
                .collect(),
            secret: None,
        },
        topic: String::new(),
    }
}

fn context(tenant: &str, deployment: &str, egress: Egress) -> ConnectContext {
    let mut context = ConnectContext::new(
        TenantId::new(tenant).unwrap(),
        deployment,
        egress,
        1024 * 1024,
    );
    context.connect_timeout = Duration::from_secs(5);
    context.read_timeout = Duration::from_secs(10);
    context
}

/// The collector runs on loopback, which a tenant may reach only when the admin allowed it.
fn loopback_allowed() -> Egress {
    Egress::new(["127.0.0.1"])
}

/// A payload with a counter (`type`), a gauge (`metric_type`), a histogram and a log, each
/// named with `tag`.
fn payload(tag: &str) -> String {
    serde_json::json!({
        "metrics": [
            {"name": format!("{tag}_counter"), "type": "u64_counter", "value": 3,
             "description": "how many", "attributes": [{"key": "room", "value": "a"}]},
            {"name": format!("{tag}_gauge"), "metric_type": "f64_gauge", "value": 21.5,
             "unit": "Cel", "timestamp": 1_700_000_000_000_000_000_u64},
            {"name": format!("{tag}_histogram"), "type": "f64_histogram", "value": 30.0}
        ],
        "logs": [
            {"value": format!("{tag}_log opened"), "level": "warn",
             "attributes": [{"key": "door", "value": 3}]}
        ]
    })
    .to_string()
}

/// Waits until the collector's debug log holds every one of `needles`.
async fn wait_logged(needles: &[String]) {
    let path = env("WEIR_TEST_OTLP_LOG");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        let missing: Vec<&String> = needles
            .iter()
            .filter(|n| !log.contains(n.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector's log ({path}) lacks {missing:?} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exports_to_the_collector(address: &str, protocol: &str) {
    let tag = unique(&format!("weir_{protocol}"));
    let deployment = unique("dep");
    let mut sink = OtlpConnector
        .sink(
            spec(&format!("http://{address}"), protocol),
            context("tenant-a", &deployment, loopback_allowed()),
        )
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sink.send(vec![Outbound::new("sensors", payload(&tag))]),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    // rotel's detailed debug log: metric descriptors, the log body and the resource.
    wait_logged(&[
        format!("-> Name: {tag}_counter"),
        format!("-> Name: {tag}_gauge"),
        format!("-> Name: {tag}_histogram"),
        format!("Body: Str({tag}_log opened)"),
        format!("-> weir.deployment: Str({deployment})"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_a_counter_a_gauge_a_histogram_and_a_log_over_grpc() {
    exports_to_the_collector(&env("WEIR_TEST_OTLP_GRPC"), "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_a_counter_a_gauge_a_histogram_and_a_log_over_http() {
    exports_to_the_collector(&env("WEIR_TEST_OTLP_HTTP"), "http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_names_the_tenant_and_the_deployment() {
    let tag = unique("weir_resource");
    let tenant = "tenant-resource";
    let deployment = unique("resource-dep");
    let mut sink = OtlpConnector
        .sink(
            spec(&format!("http://{}", env("WEIR_TEST_OTLP_GRPC")), "grpc"),
            context(tenant, &deployment, loopback_allowed()),
        )
        .await
        .unwrap();
    let report = sink
        .send(vec![Outbound::new("sensors", payload(&tag))])
        .await
        .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    wait_logged(&[
        format!("-> weir.tenant: Str({tenant})"),
        format!("-> weir.deployment: Str({deployment})"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_conform_is_rejected_with_the_path_of_the_problem() {
    let tag = unique("weir_mixed");
    let mut sink = OtlpConnector
        .sink(
            spec(&format!("http://{}", env("WEIR_TEST_OTLP_HTTP")), "http"),
            context("tenant-a", "rejects", loopback_allowed()),
        )
        .await
        .unwrap();
    let report = sink
        .send(vec![
            Outbound::new(
                "sensors",
                r#"{"metrics":[{"name":"ok","type":"u64_counter","value":1},{"name":"bad","type":"u64_sum","value":1}]}"#,
            ),
            Outbound::new("sensors", "temperature 21"),
            Outbound::new("sensors", payload(&tag)),
            Outbound::new("sensors", r#"{"logs":[{"value":"x","level":"loud"}]}"#),
        ])
        .await
        .unwrap();
    let rejected: Vec<(usize, &str)> = report
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            (0, "invalid_otlp_payload"),
            (1, "invalid_otlp_payload"),
            (3, "invalid_otlp_payload")
        ]
    );
    assert!(
        report.rejected[0].detail.contains("/metrics/1/type")
            && report.rejected[0].detail.contains("u64_sum"),
        "{}",
        report.rejected[0].detail
    );
    assert!(
        report.rejected[1].detail.contains("not JSON"),
        "{}",
        report.rejected[1].detail
    );
    assert!(
        report.rejected[2].detail.contains("/logs/0/level"),
        "{}",
        report.rejected[2].detail
    );
    // The conforming one went through.
    wait_logged(&[format!("-> Name: {tag}_counter")]).await;
}

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
async fn egress_refuses_a_collector_on_loopback_by_address_and_by_name() {
    for protocol in ["grpc", "http"] {
        let address = env(if protocol == "grpc" {
            "WEIR_TEST_OTLP_GRPC"
        } else {
            "WEIR_TEST_OTLP_HTTP"
        });
        let port = address.rsplit_once(':').unwrap().1.to_owned();
        for host in ["127.0.0.1", "localhost"] {
            let tag = unique("weir_refused");
            let context = context("tenant-a", "egress", Egress::default());
            let mut sink = OtlpConnector
                .sink(
                    spec(&format!("http://{host}:{port}"), protocol),
                    context.clone(),
                )
                .await
                .unwrap();
            let payload = payload(&tag);
            let sending =
                tokio::spawn(async move { sink.send(vec![Outbound::new("t", payload)]).await });
            let error = wait_retrying_with(&context, "platform's own network").await;
            assert!(error.contains(host), "{error}");
            assert!(!sending.is_finished(), "a refused collector took an export");
            sending.abort();
            let log = tokio::fs::read_to_string(env("WEIR_TEST_OTLP_LOG"))
                .await
                .unwrap();
            assert!(
                !log.contains(&tag),
                "the refused export reached the collector"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_a_status_and_the_export_waits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for protocol in ["grpc", "http"] {
        let context = context("tenant-a", "unreachable", loopback_allowed());
        // The suite's check (its sample payloads are not OTLP payloads, so they may also come
        // back rejected: either way nothing is reported accepted).
        conformance::sink_unreachable_is_a_status(
            &OtlpConnector,
            spec(&format!("http://127.0.0.1:{port}"), protocol),
            context.with_fresh_status(),
        )
        .await
        .unwrap();
        // With a conforming payload: retrying, never accepted.
        let mut sink = OtlpConnector
            .sink(
                spec(&format!("http://127.0.0.1:{port}"), protocol),
                context.clone(),
            )
            .await
            .unwrap();
        let payload = payload("weir_unreachable");
        let sending =
            tokio::spawn(async move { sink.send(vec![Outbound::new("t", payload)]).await });
        wait_retrying_with(&context, "").await;
        assert!(
            !sending.is_finished(),
            "an export to nowhere was reported accepted"
        );
        sending.abort();
    }
}

#[tokio::test]
async fn an_otlp_endpoint_is_a_sink_only() {
    let spec = SourceSpec {
        endpoint: spec("http://collector:4317", "grpc").endpoint,
        topics: vec!["t".to_owned()],
    };
    let problems = OtlpConnector.check_source(&spec);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("sink only"), "{problems:?}");
    let built = OtlpConnector
        .source(spec, context("tenant-a", "source", Egress::default()))
        .await;
    assert!(built.is_err());
}
