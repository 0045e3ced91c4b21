//! Messages per second through a deployment: source → temperature map → temperature filter →
//! sink on one dataflow worker (two wasm calls per message), against the ceiling measured in the
//! same run: the same module's map and filter called raw (see `raw`), one after the other, on the
//! same message. With `--bytewax SCRIPT`, also runs the Bytewax peer (`benches/peer/bytewax.sh`)
//! on the same number of messages and prints the ratio. Release only:
//! `cargo run --release -p weir-bench --bin dataflow-throughput [-- MESSAGES] [--bytewax SCRIPT]`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_api::graph::parse_graph;
use weir_api::{DataItem, Hlc, HlcClock, Message, TenantId};
use weir_bench::raw::{Input, RawHost, Walls};
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

/// The dataflow worker thread's name.
const WORKER: &str = "weir-dataflow-0";

/// Messages that share one millisecond of dataflow time: connectors batch a poll's messages.
const MESSAGES_PER_MS: u64 = 100;

fn main() -> anyhow::Result<()> {
    let mut messages: u64 = 200_000;
    let mut bytewax = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--bytewax" {
            bytewax = Some(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--bytewax needs the peer script"))?,
            );
        } else {
            messages = arg.parse()?;
        }
    }
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
    let payload = weir_bench::payload();
    let base = 1_700_000_000_000u64;

    let cpu_started = weir_bench::process_cpu_time();
    let worker_started = weir_bench::named_thread_cpu_time(WORKER);
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
    let worker_cpu = weir_bench::named_thread_cpu_time(WORKER)
        .zip(worker_started)
        .map(|(end, start)| end.saturating_sub(start));
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))?;
    deployment.close_sources();
    let dead = deployment.dead_letters().len();

    let cpu = weir_bench::process_cpu_time()
        .zip(cpu_started)
        .map(|(end, start)| end.saturating_sub(start));

    // The ceiling: the same module's map then filter, raw, on the same message.
    let bytes = weir_guests::TEMPERATURE.bytes();
    let input = Input {
        secs: base / 1000,
        node_id: bytes::Bytes::from_static(b"bench"),
        topic: bytes::Bytes::from_static(b"probe/1"),
        payload: weir_bench::payload(),
    };
    let err = |e: wasmtime::Error| anyhow::anyhow!("raw call: {e:#}");
    let raw_calls = u32::try_from(messages.min(200_000))?;
    let mut raw_bare = RawHost::new(&bytes, Walls::None).map_err(err)?;
    let bare =
        weir_bench::raw::time(raw_calls, || two_calls(&mut raw_bare, &input)).map_err(err)?;
    let mut raw_walled = RawHost::new(&bytes, Walls::FuelEpochMemory).map_err(err)?;
    let walled =
        weir_bench::raw::time(raw_calls, || two_calls(&mut raw_walled, &input)).map_err(err)?;

    let per_message = took.as_secs_f64() / messages as f64;
    let weir_rate = 1.0 / per_message;
    println!(
        "dataflow-throughput: {messages} messages, {MESSAGES_PER_MS} per ms of dataflow time, 1 dataflow worker, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<56} {:>10.0} msg/s {:>8.2} µs/msg",
        "weir: source -> map -> filter -> sink (temperature)",
        weir_rate,
        per_message * 1e6
    );
    let weir_cpu_rate = cpu.map(|cpu| messages as f64 / cpu.as_secs_f64().max(1e-9));
    if let Some(rate) = weir_cpu_rate {
        println!(
            "{:<56} {:>10.0} msg/CPU-s (all threads: producer, worker, consumer)",
            "weir: per CPU second of the process", rate
        );
    }
    let worker_per_message = worker_cpu.map(|cpu| cpu.as_secs_f64() / messages as f64);
    if let Some(per) = worker_per_message {
        println!(
            "{:<56} {:>10.0} msg/s {:>8.2} µs/msg",
            "weir: per dataflow worker (its thread's CPU time)",
            1.0 / per,
            per * 1e6
        );
    }
    for (case, raw) in [
        ("raw: map + filter component calls, no walls", bare),
        (
            "raw: map + filter component calls, fuel+epoch+memory",
            walled,
        ),
    ] {
        let raw_per_message = raw.as_secs_f64() / f64::from(raw_calls);
        println!(
            "{case:<56} {:>10.0} msg/s {:>8.2} µs/msg",
            1.0 / raw_per_message,
            raw_per_message * 1e6
        );
    }
    let worker = worker_per_message.unwrap_or(per_message);
    weir_bench::result("flow_weir_msgs_per_s", weir_rate.round());
    if let Some(rate) = weir_cpu_rate {
        weir_bench::result("flow_weir_msgs_per_cpu_s", rate.round());
    }
    weir_bench::result("flow_weir_worker_msgs_per_s", (1.0 / worker).round());
    weir_bench::result(
        "flow_raw_walled_msgs_per_s",
        (f64::from(raw_calls) / walled.as_secs_f64()).round(),
    );
    weir_bench::result(
        "flow_ratio_worker_raw",
        walled.as_secs_f64() / f64::from(raw_calls) / worker,
    );
    println!(
        "{:<56} {:>10.2}   (target >= 0.50; vs no walls {:.2})",
        "ratio: weir per worker / raw two calls (same walls)",
        walled.as_secs_f64() / f64::from(raw_calls) / worker,
        bare.as_secs_f64() / f64::from(raw_calls) / worker,
    );
    println!("dead letters: {dead}");
    if let Some(script) = bytewax {
        peer(&script, messages, weir_rate, weir_cpu_rate)?;
    }
    Ok(())
}

fn two_calls(host: &mut RawHost, input: &Input) -> wasmtime::Result<bool> {
    let (topic, payload) = host.map(input)?;
    host.filter(&Input {
        topic,
        payload,
        ..input.clone()
    })
}

/// Runs the Bytewax peer (`benches/peer/bytewax.sh`) on the same number of messages and prints
/// its figures beside weir's.
fn peer(
    script: &str,
    messages: u64,
    weir_rate: f64,
    weir_cpu_rate: Option<f64>,
) -> anyhow::Result<()> {
    let output = std::process::Command::new(script)
        .arg(messages.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        anyhow::bail!("the Bytewax peer failed ({}): {text}", output.status);
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("bytewax "))
        .ok_or_else(|| anyhow::anyhow!("the Bytewax peer printed no figure: {text}"))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let &[count, wall, cpu] = fields.as_slice() else {
        anyhow::bail!("unexpected Bytewax figure: {line}");
    };
    let rate = count / wall;
    let cpu_rate = count / cpu.max(1e-9);
    weir_bench::result("flow_bytewax_msgs_per_s", rate.round());
    weir_bench::result("flow_bytewax_msgs_per_cpu_s", cpu_rate.round());
    weir_bench::result("flow_ratio_bytewax_wall", weir_rate / rate);
    if let Some(weir_cpu_rate) = weir_cpu_rate {
        weir_bench::result("flow_ratio_bytewax_cpu", weir_cpu_rate / cpu_rate);
    }
    println!(
        "{:<56} {:>10.0} msg/s {:>8.2} µs/msg",
        "bytewax 0.21: same flow in Python, 1 worker",
        rate,
        1e6 / rate
    );
    println!(
        "{:<56} {:>10.0} msg/CPU-s",
        "bytewax 0.21: per CPU second of the process", cpu_rate
    );
    println!(
        "{:<56} {:>10.1}x",
        "ratio wall clock: weir msg/s / bytewax msg/s",
        weir_rate / rate
    );
    if let Some(weir_cpu_rate) = weir_cpu_rate {
        println!(
            "{:<56} {:>10.1}x  (target >= 5x, aim 10x)",
            "ratio per core: weir msg/CPU-s / bytewax msg/CPU-s",
            weir_cpu_rate / cpu_rate
        );
    }
    Ok(())
}
