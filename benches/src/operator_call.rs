//! Calls per second of a trivial `map` through weir's host (a `buffer` handle in, module-owned
//! bytes out, under fuel, epoch deadline and memory limits) against the ceiling: a raw wasmtime
//! core-module call doing the same copies (host → guest, guest copy, guest → host). Same
//! process, same machine, same run. Run in release:
//! `cargo run --release -p weir-bench --bin operator-call [-- ITERATIONS]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_api::{DataItem, Hlc, Message, TenantId};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{
    CallLimits, EngineConfig, ModuleConfiguration, NodeEnv, OperatorEngine, OperatorInstance,
    OperatorKind,
};
use weir_state::{MemoryStateStore, StateLimits, StateScope};
use weir_tenants::Quotas;

fn main() -> anyhow::Result<()> {
    let iterations: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "operator-call: {iterations} calls per case, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<44} {:>14} {:>12}", "case", "calls/s", "µs/call");
    for size in [64usize, 4096] {
        let weir = runtime.block_on(weir_map(iterations, size))?;
        let raw = weir_bench::raw_core_call(iterations, size)
            .map_err(|e| anyhow::anyhow!("raw call: {e:#}"))?;
        report(
            &format!("weir map via host, {size} B payload"),
            iterations,
            weir,
        );
        report(
            &format!("raw wasmtime core call, {size} B copy"),
            iterations,
            raw,
        );
        println!(
            "{:<44} {:>14.1}x",
            format!("ratio raw/weir at {size} B"),
            weir.as_secs_f64() / raw.as_secs_f64()
        );
    }
    Ok(())
}

fn report(case: &str, iterations: u32, took: Duration) {
    let per_call = took.as_secs_f64() / f64::from(iterations);
    println!(
        "{case:<44} {:>14.0} {:>12.3}",
        1.0 / per_call,
        per_call * 1e6
    );
}

async fn weir_map(iterations: u32, size: usize) -> anyhow::Result<Duration> {
    let engine = OperatorEngine::new(&EngineConfig::default())?;
    let module = engine.load(&weir_guests::ECHO.bytes())?;
    let quotas = Quotas::default();
    let tenant = TenantId::new("bench")?;
    let env = Arc::new(NodeEnv {
        tenant: tenant.clone(),
        node: "bench/echo/map".to_owned(),
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
    });
    let mut node = OperatorInstance::new(
        engine,
        module,
        OperatorKind::Map,
        ModuleConfiguration::default(),
        env,
        CallLimits::from_quotas(&quotas),
    )?;
    node.start().await?;
    let item = DataItem::Message(Message::new(
        Hlc::at(Duration::from_secs(1), "bench"),
        "probe/1",
        vec![b'x'; size],
    ));
    for _ in 0..1000 {
        node.map(&item).await?;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        let out = node.map(&item).await?;
        std::hint::black_box(out);
    }
    Ok(started.elapsed())
}
