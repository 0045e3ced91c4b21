//! Shared pieces of weir's benchmark binaries: the raw wasmtime ceiling ([`raw`]), weir's host
//! path for one operator ([`WeirOperator`]) and figures.

pub mod raw;

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

/// The payload every bench sends, weir and peers alike.
pub const PAYLOAD: &[u8] = br#"{"temperature":{"value":50,"unit":"C"}}"#;

/// [`PAYLOAD`] as shared bytes.
pub fn payload() -> bytes::Bytes {
    bytes::Bytes::from_static(PAYLOAD)
}

/// Prints one line of a figure: calls per second and µs per call.
pub fn report(case: &str, iterations: u32, took: Duration) {
    let per_call = took.as_secs_f64() / f64::from(iterations);
    println!(
        "{case:<48} {:>12.0} {:>10.3}",
        1.0 / per_call,
        per_call * 1e6
    );
}

/// CPU time the calling thread has used so far, in nanoseconds, from
/// `/proc/thread-self/schedstat`; `None` where that file is not there. On a shared machine this
/// is the figure to compare: time other processes take from the core is not counted.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// CPU time of this process's thread named `name` so far, from `/proc/self/task/*/`.
pub fn named_thread_cpu_time(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(nanos));
        }
    }
    None
}

/// Measures `run` by the calling thread's CPU time (wall time where that is not available).
pub fn measure<T>(run: impl FnOnce() -> T) -> (T, Duration) {
    let wall = Instant::now();
    let cpu = thread_cpu_time();
    let value = run();
    let took = match (cpu, thread_cpu_time()) {
        (Some(start), Some(end)) => end.saturating_sub(start),
        _ => wall.elapsed(),
    };
    (value, took)
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (clock ticks
/// of 10 ms); `None` where that file is not there.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// One node's operator as a dataflow node runs it: weir's `OperatorInstance` on the default
/// engine and quotas, with in-memory state, log and metrics sinks.
#[derive(Debug)]
pub struct WeirOperator {
    node: OperatorInstance,
}

impl WeirOperator {
    /// Loads `component`, instantiates its `kind` operator and runs `init`.
    pub async fn start(component: &[u8], kind: OperatorKind) -> anyhow::Result<Self> {
        let engine = OperatorEngine::new(&EngineConfig::default())?;
        let module = engine.load(component)?;
        let quotas = Quotas::default();
        let tenant = TenantId::new("bench")?;
        let env = Arc::new(NodeEnv {
            tenant: tenant.clone(),
            node: format!("bench/temperature/{kind}"),
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
            kind,
            ModuleConfiguration::default(),
            env,
            CallLimits::from_quotas(&quotas),
        )?;
        node.start().await?;
        Ok(Self { node })
    }

    /// Calls the operator 1,000 times to warm up, then `iterations` times with the bench
    /// message (accumulate: `accumulate_items` copies of it per call); the thread CPU time the
    /// latter took (see [`measure`]).
    pub async fn time(
        &mut self,
        kind: OperatorKind,
        iterations: u32,
        accumulate_items: usize,
    ) -> anyhow::Result<Duration> {
        let time = Hlc::at(Duration::from_secs(1_700_000_000), "bench");
        let item = DataItem::Message(Message::new(time.clone(), "probe/1", payload()));
        let staged = DataItem::Message(Message::new(time.clone(), "probe/1", Vec::new()));
        let items = vec![item.clone(); accumulate_items];
        let mut wall = Instant::now();
        let mut cpu = None;
        for i in 0..1000 + iterations {
            if i == 1000 {
                wall = Instant::now();
                cpu = thread_cpu_time();
            }
            match kind {
                OperatorKind::Map => {
                    std::hint::black_box(self.node.map(&item).await?);
                }
                OperatorKind::Filter => {
                    std::hint::black_box(self.node.filter(&item).await?);
                }
                OperatorKind::Branch => {
                    std::hint::black_box(self.node.branch(&time, &item).await?);
                }
                OperatorKind::Accumulate => {
                    std::hint::black_box(self.node.accumulate(&staged, &items).await?);
                }
                OperatorKind::Delay => anyhow::bail!("temperature has no delay"),
            }
        }
        Ok(match (cpu, thread_cpu_time()) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => wall.elapsed(),
        })
    }
}
