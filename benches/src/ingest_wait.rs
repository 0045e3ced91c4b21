//! Row 5 of the benchmark report (issue 11): serverless request/response, `POST
//! /v1/deployments/{id}/ingest?wait=true`, against a plain axum handler doing the same JSON
//! work natively, in the same run.
//!
//! weir side: the given `weir serve` (release) binary, tenant `bench` with the `temperature`
//! module and the graph `source → map (°F→°C) → filter (range) → sink` deployed on HTTP in and
//! out; each request carries one reading in °F and waits for its output.
//!
//! Native side: an axum 0.8 server in this process (same tokio runtime as the clients) whose
//! handler takes the same body (`[IngestMessage]`), parses each payload as the module does
//! (serde, `{"temperature":{"value":…,"unit":"F"|"C"}}`), converts °F to °C and re-serialises,
//! rewrites user property `test_property_key`, keeps readings strictly between -40 and 3422 °C,
//! and answers `IngestReply` with the outputs: the module's work without the platform (no auth,
//! no quota, no wasm, no dataflow).
//!
//! Both are driven by the same client (weir's typed client, reqwest, HTTP/1.1 keep-alive) with
//! `CONCURRENCY` requests in flight for `REQUESTS` requests in all, after a warm-up. Prints
//! `RESULT ingest_{weir,native}_{rps,p50_ms,p99_ms}` and `RESULT ingest_rps_ratio` (weir /
//! native).
//!
//! ```sh
//! target/release/ingest-wait --weir target/release/weir [--requests 5000] [--concurrency 4]
//! ```

use std::time::Instant;

use anyhow::Context;
use axum::Json;
use serde::{Deserialize, Serialize};
use weir_api::client::{Client, HttpMethod};
use weir_api::rest::{
    CreateDeployment, CreateTenant, GraphRef, IngestMessage, IngestReply, MintToken, OutputMessage,
};
use weir_api::tenancy::Role;
use weir_bench::{WeirServer, float, percentile, result};

/// The graph of the weir side: no window, two wasm calls per message.
const GRAPH: &str = "metadata: {$schema: s, name: g, version: '1'}\nmoduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}\noperations:\n  - {operationType: source, name: source}\n  - {operationType: map, name: map, module: 'temperature:1.0.0'}\n  - {operationType: filter, name: filter, module: 'temperature:1.0.0'}\n  - {operationType: sink, name: sink}\nconnections:\n  - {from: {name: source}, to: {name: map}}\n  - {from: {name: map}, to: {name: filter}}\n  - {from: {name: filter}, to: {name: sink}}\n";

#[derive(Serialize, Deserialize)]
enum Measurement {
    #[serde(rename = "temperature")]
    Temperature(Temperature),
}

#[derive(Serialize, Deserialize)]
struct Temperature {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    unit: String,
}

/// The module's map and filter, natively.
async fn native(Json(messages): Json<Vec<IngestMessage>>) -> Json<IngestReply> {
    let accepted = messages.len();
    let mut outputs = Vec::with_capacity(accepted);
    for mut message in messages {
        let Ok(Measurement::Temperature(mut temperature)) =
            serde_json::from_str::<Measurement>(&message.payload)
        else {
            continue;
        };
        if temperature.unit == "F" {
            let fahrenheit = temperature.value.unwrap_or_default();
            temperature.value = Some((fahrenheit - 32.0) * 5.0 / 9.0);
            "C".clone_into(&mut temperature.unit);
            let Ok(payload) = serde_json::to_string(&Measurement::Temperature(temperature)) else {
                continue;
            };
            message.payload = payload;
        }
        for (key, value) in &mut message.user_properties {
            if key == "test_property_key" {
                "new_value".clone_into(value);
            }
        }
        // The filter parses the payload again, as the module's filter does.
        let Ok(Measurement::Temperature(temperature)) =
            serde_json::from_str::<Measurement>(&message.payload)
        else {
            continue;
        };
        let keep = temperature.unit == "C"
            && temperature
                .value
                .is_some_and(|value| -40.0 < value && value < 3422.0);
        if keep {
            outputs.push(OutputMessage {
                topic: message.topic,
                payload: message.payload,
                user_properties: message.user_properties,
            });
        }
    }
    Json(IngestReply {
        accepted,
        outputs: Some(outputs),
    })
}

/// Sends `requests` requests to `path`, `concurrency` at a time; (requests/s, sorted µs).
async fn drive(
    client: &Client,
    path: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, Vec<u64>)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, path) = (client.clone(), path.to_owned());
        let share = requests / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let body = serde_json::to_vec(&[IngestMessage {
                    topic: "sensors/temperature/raw".to_owned(),
                    payload: format!(
                        r#"{{"temperature":{{"value":{},"unit":"F"}}}}"#,
                        50 + (i + worker) % 100
                    ),
                    user_properties: vec![("test_property_key".to_owned(), "v".to_owned())],
                }])?;
                let sent = Instant::now();
                let (status, reply) = client
                    .raw(HttpMethod::POST, &path, Some("application/json"), body)
                    .await?;
                anyhow::ensure!(
                    status.is_success(),
                    "{path}: {status} {}",
                    String::from_utf8_lossy(&reply)
                );
                let reply: IngestReply = serde_json::from_slice(&reply)?;
                anyhow::ensure!(
                    reply.outputs.is_some_and(|o| o.len() == 1),
                    "{path}: the output is missing"
                );
                latencies.push(u64::try_from(sent.elapsed().as_micros())?);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for task in tasks {
        all.extend(task.await??);
    }
    let took = started.elapsed();
    all.sort_unstable();
    Ok((float(all.len() as u64) / took.as_secs_f64(), all))
}

fn report(side: &str, rps: f64, sorted: &[u64]) {
    result(&format!("ingest_{side}_rps"), rps.round());
    result(
        &format!("ingest_{side}_p50_ms"),
        float(percentile(sorted, 0.5)) / 1000.0,
    );
    result(
        &format!("ingest_{side}_p99_ms"),
        float(percentile(sorted, 0.99)) / 1000.0,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut weir = String::from("target/release/weir");
    let (mut requests, mut concurrency) = (5_000usize, 4usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--weir" => weir = value()?,
            "--requests" => requests = value()?.parse()?,
            "--concurrency" => concurrency = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let server = WeirServer::start(&weir)?;
    let admin = Client::new(
        &format!("http://{}", server.address),
        Some(server.admin_token.clone()),
    )?;
    admin
        .create_tenant(&CreateTenant {
            id: "bench".to_owned(),
            display_name: None,
            quotas: None,
        })
        .await?;
    let quotas = serde_json::json!({
        "api_requests_per_second": 1_000_000,
        "messages_per_second_in": 1_000_000,
        "fuel_per_second": 1_000_000_000_000_u64,
        "max_deployments": 10,
    });
    let (status, body) = admin
        .raw(
            HttpMethod::PUT,
            "/v1/tenants/bench/quotas",
            Some("application/json"),
            serde_json::to_vec(&quotas)?,
        )
        .await?;
    anyhow::ensure!(
        status.is_success(),
        "quotas: {}",
        String::from_utf8_lossy(&body)
    );
    let token = admin
        .mint_token(&MintToken {
            subject: "bench".to_owned(),
            role: Role::Developer,
            ttl_seconds: None,
            tenant: Some("bench".to_owned()),
        })
        .await?
        .token
        .context("token text")?;
    let developer = admin.with_token(token);
    developer
        .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
        .await?;
    developer.push_graph("g", "1", GRAPH.to_owned()).await?;
    developer
        .deploy(&CreateDeployment {
            id: "i".to_owned(),
            graph: GraphRef {
                name: "g".to_owned(),
                version: "1".to_owned(),
            },
            configuration: Default::default(),
            source: Default::default(),
            sink: Default::default(),
            dead_letters: None,
            instances: 1,
            partition_key: None,
        })
        .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let native_address = listener.local_addr()?;
    let app = axum::Router::new().route("/ingest", axum::routing::post(native));
    let native_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let native_client = Client::new(&format!("http://{native_address}"), None)?;

    println!(
        "ingest-wait: weir {weir}; {requests} requests, {concurrency} in flight, one °F reading each"
    );
    let weir_path = "/v1/deployments/i/ingest?wait=true";
    // Warm up both (instances, connections), then measure weir, native, weir again, native
    // again, keeping each side's better run so a burst of other load hurts neither alone.
    drive(&developer, weir_path, 200, concurrency).await?;
    drive(&native_client, "/ingest", 200, concurrency).await?;
    let mut weir_best: Option<(f64, Vec<u64>)> = None;
    let mut native_best: Option<(f64, Vec<u64>)> = None;
    for _ in 0..2 {
        let run = drive(&developer, weir_path, requests / 2, concurrency).await?;
        if weir_best.as_ref().is_none_or(|best| run.0 > best.0) {
            weir_best = Some(run);
        }
        let run = drive(&native_client, "/ingest", requests / 2, concurrency).await?;
        if native_best.as_ref().is_none_or(|best| run.0 > best.0) {
            native_best = Some(run);
        }
    }
    let (weir_rps, weir_latencies) = weir_best.context("no weir run")?;
    let (native_rps, native_latencies) = native_best.context("no native run")?;
    report("weir", weir_rps, &weir_latencies);
    report("native", native_rps, &native_latencies);
    result("ingest_rps_ratio", weir_rps / native_rps.max(1e-9));
    native_server.abort();
    drop(server);
    Ok(())
}
