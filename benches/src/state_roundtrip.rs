//! State-store round trips per second from a module: the `enrichment` module's map
//! (`module-enrichment/map`) called through weir's host (`OperatorInstance`, the path a dataflow
//! node uses) with readings that make it do exactly one state call each:
//!
//! - `get`: a mild reading (0 ≤ min, max ≤ 100) reads `overtemp`;
//! - `set`: a cold reading (min < 0) writes `overtemp` = `false`.
//!
//! Each call is awaited before the next (one module instance, one call in flight), so the figure
//! is 1 / (wasm call + host + state round trip). Backends: in-process memory (the ceiling: no
//! I/O), SQLite (`weir serve`'s default, a file in a temporary directory) and Redis (the URL
//! given, or `WEIR_TEST_REDIS`; keys under a namespace of this run, cleared at the end). Prints
//! median, min and max of several runs, and `RESULT name=value` lines for scripts.
//!
//! ```sh
//! scripts/services start && source target/services/env
//! cargo run --release -p weir-bench --bin state-roundtrip [-- --redis URL] [MESSAGES_PER_RUN]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_api::{DataItem, Hlc, Message, TenantId};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{
    CallLimits, EngineConfig, ModuleConfiguration, NodeEnv, OperatorEngine, OperatorInstance,
    OperatorKind,
};
use weir_state::{
    MemoryStateStore, MeteredStateStore, RedisConfig, RedisStateStore, StateLimits, StateScope,
    StateStore,
};
use weir_tenants::Quotas;

/// Runs of each case; the figures are their median, min and max.
const RUNS: usize = 5;

const MILD: &str = r#"{"sensor_data":{"temperature":[{"count":1,"max":50,"min":10,"average":30,"last":30,"unit":"C"}]}}"#;
const COLD: &str = r#"{"sensor_data":{"temperature":[{"count":1,"max":5,"min":-5,"average":0,"last":0,"unit":"C"}]}}"#;

fn main() -> anyhow::Result<()> {
    let mut messages: u32 = 2_000;
    let mut redis = std::env::var("WEIR_TEST_REDIS").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--redis" {
            redis = Some(args.next().context("--redis needs a redis:// URL")?);
        } else {
            messages = arg.parse().context("MESSAGES_PER_RUN is a number")?;
        }
    }
    let redis = redis.context(
        "no Redis: pass --redis redis://HOST:PORT/ or `source target/services/env` after \
         `scripts/services start`",
    )?;
    // One tokio worker drives the Redis connection; the module runs on this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The write figure depends on Redis's persistence: say which it was.
    let persistence = runtime.block_on(async {
        let mut connection = redis::Client::open(redis.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let mut settings = Vec::new();
        for name in ["appendonly", "appendfsync", "save"] {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut connection)
                .await?;
            settings.push(format!(
                "{name}={:?}",
                pair.get(1).cloned().unwrap_or_default()
            ));
        }
        Ok::<_, redis::RedisError>(settings.join(" "))
    })?;
    let dir = tempfile::tempdir()?;
    let namespace = format!("bench-{}", std::process::id());
    let redis_store = runtime.block_on(RedisStateStore::connect(RedisConfig {
        namespace,
        node_id: "bench".to_owned(),
        ..RedisConfig::new(redis.as_str())
    }))?;
    let backends: Vec<(&str, Arc<dyn StateStore>)> = vec![
        ("memory", Arc::new(MemoryStateStore::default())),
        (
            "sqlite",
            Arc::new(weir_store::SqliteStateStore::open(
                &dir.path().join("state.db"),
            )?),
        ),
        ("redis", Arc::new(redis_store)),
    ];
    println!(
        "state-roundtrip: module enrichment (map), one state call per message, {messages} messages per run, {RUNS} runs, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "redis {} ({persistence}); sqlite in {} (weir-store's settings)",
        weir_state::masked_url(&redis),
        dir.path().display()
    );
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>10}",
        "case", "median op/s", "min op/s", "max op/s", "µs/op"
    );
    let engine = OperatorEngine::new(&EngineConfig::default())?;
    let module = engine.load(&weir_guests::ENRICHMENT.bytes())?;
    let tenant = TenantId::new("bench")?;
    let quotas = Quotas::default();
    let scope = StateScope::new(tenant.clone(), StateLimits::of(&quotas));
    for (name, backend) in &backends {
        // Counts the module's state calls: each message must have made exactly one.
        let store = Arc::new(MeteredStateStore::new(backend.clone()));
        let env = Arc::new(NodeEnv {
            tenant: tenant.clone(),
            node: "bench/enrichment/map".to_owned(),
            state: store.clone(),
            state_scope: scope.clone(),
            state_timeout_cap: Duration::from_secs(1),
            logs: Arc::new(MemoryLogSink::new(16)),
            metrics: Arc::new(MetricsRegistry::new(16)),
            max_log_line_bytes: 1024,
            quotas: None,
            inference_lane: weir_executor::InferenceLane::default(),
        });
        let mut node = OperatorInstance::new(
            engine.clone(),
            module.clone(),
            OperatorKind::Map,
            ModuleConfiguration::default(),
            env,
            CallLimits::from_quotas(&quotas),
        )?;
        runtime.block_on(node.start())?;
        for (operation, payload) in [("set", COLD), ("get", MILD)] {
            let before = store.operations(&tenant);
            let rates = runtime.block_on(runs(&mut node, payload, messages))?;
            let calls = store.operations(&tenant) - before;
            anyhow::ensure!(
                calls == u64::from(messages) * (RUNS as u64 + 1),
                "{name}: {calls} state calls for {} messages",
                u64::from(messages) * (RUNS as u64 + 1)
            );
            // The module ignores a failed call: check the writes landed.
            let kept = runtime.block_on(backend.get(&scope, b"overtemp"))?;
            anyhow::ensure!(
                kept.value.as_deref() == Some(b"false".as_slice()),
                "{name}: the module's writes did not land"
            );
            let case = format!("state_{operation}_{name}");
            let (median, min, max) = summary(rates);
            println!(
                "{case:<20} {median:>12.0} {min:>12.0} {max:>12.0} {:>10.1}",
                1e6 / median
            );
            println!("RESULT {case}_ops_per_s={median:.0}");
        }
        // What the module kept, so nothing is left on the shared Redis.
        runtime.block_on(backend.clear(&scope))?;
    }
    Ok(())
}

/// Operations per second of each run (after a warm-up run that is not counted).
async fn runs(
    node: &mut OperatorInstance,
    payload: &str,
    messages: u32,
) -> anyhow::Result<Vec<f64>> {
    let time = Hlc::at(Duration::from_secs(1_700_000_000), "bench");
    let item = DataItem::Message(Message::new(
        time,
        "sensors",
        bytes::Bytes::copy_from_slice(payload.as_bytes()),
    ));
    let mut rates = Vec::with_capacity(RUNS);
    for run in 0..=RUNS {
        let started = Instant::now();
        for _ in 0..messages {
            std::hint::black_box(node.map(&item).await?);
        }
        if run > 0 {
            rates.push(f64::from(messages) / started.elapsed().as_secs_f64());
        }
    }
    Ok(rates)
}

fn summary(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let min = rates.first().copied().unwrap_or(0.0);
    let max = rates.last().copied().unwrap_or(0.0);
    (median, min, max)
}
