//! Messages per second through a deployment: source → temperature map → temperature filter →
//! sink on one dataflow worker (two wasm calls per message), against the raw wasmtime call
//! ceiling measured in the same run. Release only:
//! `cargo run --release -p weir-bench --bin dataflow-throughput [-- MESSAGES]`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_api::graph::parse_graph;
use weir_api::{DataItem, Hlc, HlcClock, Message, TenantId};
use weir_executor::dataflow::{
    DataflowRuntime, DataflowSettings, DirectoryModules, FrontierPolicy, TenantContext, prepare,
};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{EngineConfig, OperatorEngine};
use weir_state::MemoryStateStore;
use weir_tenants::Quotas;

const GRAPH: &str = "
metadata: {$schema: s, name: bench, version: '1'}
moduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: map, module: temperature }
  - { operationType: filter, name: filter, module: temperature }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: map } }
  - { from: { name: map }, to: { name: filter } }
  - { from: { name: filter }, to: { name: sink } }
";

/// Messages that share one millisecond of dataflow time: connectors batch a poll's messages.
const MESSAGES_PER_MS: u64 = 100;

fn main() -> anyhow::Result<()> {
    let messages: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let runtime = DataflowRuntime::start(1, tokio.handle().clone())?;
    let engine = OperatorEngine::new(&EngineConfig::default())?;
    let tenant = TenantContext::new(
        TenantId::new("bench")?,
        Quotas::default(),
        Arc::new(MemoryStateStore::default()),
        Arc::new(MemoryLogSink::new(16)),
        Arc::new(MetricsRegistry::new(100)),
        Arc::new(HlcClock::new("bench")),
    );
    let graph = parse_graph(GRAPH)?;
    let modules = DirectoryModules::new(weir_guests::Guest::dir(), engine.clone());
    let settings = DataflowSettings {
        frontier: FrontierPolicy::EventTime,
        ..DataflowSettings::default()
    };
    let prepared = tokio.block_on(prepare(
        "bench",
        &graph,
        &BTreeMap::new(),
        &tenant,
        &modules,
        &engine,
        settings,
        "bench",
    ))?;
    let mut deployment = runtime.deploy(prepared)?;
    let source = deployment
        .source("source")
        .ok_or_else(|| anyhow::anyhow!("no source"))?
        .clone();
    let payload = bytes::Bytes::from_static(br#"{"temperature":{"value":50,"unit":"C"}}"#);
    let base = 1_700_000_000_000u64;

    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        for i in 0..messages {
            let at = Hlc::at(Duration::from_millis(base + i / MESSAGES_PER_MS), "bench");
            let item = DataItem::Message(Message::new(at, "probe/1", payload.clone()));
            if source.send(item, |_| {}).is_err() {
                return;
            }
        }
    });
    let mut received = 0u64;
    while received < messages {
        match deployment.outputs().pop_timeout(Duration::from_secs(30)) {
            Some(output) => {
                output.accept();
                received += 1;
            }
            None => anyhow::bail!("stalled after {received} outputs"),
        }
    }
    let took = started.elapsed();
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))?;
    deployment.close_sources();
    let dead = deployment.dead_letters().len();

    let raw_calls = 200_000;
    let raw =
        weir_bench::raw_core_call(raw_calls, 64).map_err(|e| anyhow::anyhow!("raw call: {e:#}"))?;
    let per_message = took.as_secs_f64() / messages as f64;
    let raw_per_call = raw.as_secs_f64() / f64::from(raw_calls);
    println!(
        "dataflow-throughput: {messages} messages, {MESSAGES_PER_MS} per ms of dataflow time, 1 worker, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<52} {:>12.0} msg/s {:>9.2} µs/msg",
        "source -> map -> filter -> sink (temperature)",
        1.0 / per_message,
        per_message * 1e6
    );
    println!(
        "{:<52} {:>12.0} calls/s",
        "  wasm calls through the dataflow (2 per message)",
        2.0 / per_message
    );
    println!(
        "{:<52} {:>12.0} calls/s {:>7.3} µs/call",
        "raw wasmtime core call, 64 B (ceiling)",
        1.0 / raw_per_call,
        raw_per_call * 1e6
    );
    println!(
        "{:<52} {:>12.1}x",
        "ratio: raw call rate / dataflow wasm call rate",
        (per_message / 2.0) / raw_per_call
    );
    println!("dead letters: {dead}");
    Ok(())
}
