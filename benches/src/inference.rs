//! Image classification through `wasi:nn` on one worker, per inference backend: the `snapshot`
//! module's map (`modules/snapshot`: a 224x224 RGB24 frame normalised into a 1x3x224x224 f32
//! tensor in the guest, the embedded CNN run by the host's backend, argmax and label in the
//! guest) called through weir's host (`OperatorInstance`, default quotas) one call after
//! another on a current-thread runtime: each call's wall-clock latency, inferences per second
//! and p50/p99. Backends: tract (built in) and, with `--onnxruntime PATH`, ONNX Runtime loaded
//! from that library. Frames: the four classes in turn, drawn once before timing.
//!
//! Run in release: `cargo run --release -p weir-bench --bin inference -- [--onnxruntime PATH] [CALLS]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_api::{DataItem, Hlc, Snapshot, TenantId};
use weir_bench::{float, percentile, result};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{
    CallLimits, EngineConfig, InferenceBackend, InferenceConfig, ModuleConfiguration, NodeEnv,
    OperatorEngine, OperatorInstance, OperatorKind,
};
use weir_guests::shapes;
use weir_state::{MemoryStateStore, StateLimits, StateScope};
use weir_tenants::Quotas;

const WARM_UP: usize = 20;

fn main() -> anyhow::Result<()> {
    let mut calls: usize = 500;
    let mut backends = vec![InferenceBackend::Tract];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--onnxruntime" => {
                let path = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--onnxruntime needs the library's path"))?;
                backends.push(InferenceBackend::OnnxRuntime(PathBuf::from(path)));
            }
            _ => calls = arg.parse()?,
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut random = shapes::Random::new(11);
    let frames: Vec<DataItem> = (0..4)
        .map(|class| {
            DataItem::Snapshot(Snapshot {
                timestamp: Hlc::at(Duration::from_secs(1_700_000_000), "bench"),
                format: Bytes::from_static(b"rgb24"),
                width: 224,
                height: 224,
                frame: Bytes::from(shapes::draw(&mut random, class)),
            })
        })
        .collect();
    println!(
        "inference: module snapshot (224x224 RGB24 -> CNN -> label), {calls} calls per backend after {WARM_UP} to warm up, one worker, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<14} {:>14} {:>10} {:>10} {:>10}",
        "backend", "inferences/s", "p50 ms", "p99 ms", "max ms"
    );
    for backend in backends {
        let engine = OperatorEngine::new(&EngineConfig {
            inference: InferenceConfig {
                backend,
                ..InferenceConfig::default()
            },
            ..EngineConfig::default()
        })?;
        let name = engine.inference_backend();
        let mut node = classifier(&engine)?;
        let latencies = runtime.block_on(async {
            for frame in frames.iter().cycle().take(WARM_UP) {
                node.map(frame).await?;
            }
            let mut latencies = Vec::with_capacity(calls);
            for frame in frames.iter().cycle().take(calls) {
                let started = Instant::now();
                std::hint::black_box(node.map(frame).await?);
                latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            anyhow::Ok(latencies)
        })?;
        let total: u64 = latencies.iter().sum();
        let mut sorted = latencies;
        sorted.sort_unstable();
        let per_second = float(sorted.len() as u64) / (float(total) / 1e9);
        let ms = |nanos: u64| float(nanos) / 1e6;
        let (p50, p99, max) = (
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or_default()),
        );
        println!("{name:<14} {per_second:>14.1} {p50:>10.3} {p99:>10.3} {max:>10.3}");
        result(&format!("inference_{name}_per_s"), per_second);
        result(&format!("inference_{name}_p50_ms"), p50);
        result(&format!("inference_{name}_p99_ms"), p99);
    }
    Ok(())
}

fn classifier(engine: &OperatorEngine) -> anyhow::Result<OperatorInstance> {
    let module = engine.load(&weir_guests::SNAPSHOT.bytes())?;
    let tenant = TenantId::new("bench")?;
    let env = Arc::new(NodeEnv {
        tenant: tenant.clone(),
        node: "bench/snapshot/map".to_owned(),
        state: Arc::new(MemoryStateStore::default()),
        state_scope: StateScope::new(
            tenant,
            StateLimits {
                max_keys: 1,
                max_bytes: 1,
                max_key_bytes: 1,
            },
        ),
        state_timeout_cap: Duration::from_secs(1),
        logs: Arc::new(MemoryLogSink::new(16)),
        metrics: Arc::new(MetricsRegistry::new(16)),
        max_log_line_bytes: 1024,
        quotas: None,
        inference_lane: weir_executor::InferenceLane::default(),
    });
    Ok(OperatorInstance::new(
        engine.clone(),
        module,
        OperatorKind::Map,
        ModuleConfiguration::default(),
        env,
        CallLimits::from_quotas(&Quotas::default()),
    )?)
}
