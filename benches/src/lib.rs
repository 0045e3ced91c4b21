//! Shared pieces of weir's benchmark binaries: the raw wasmtime ceiling ([`raw`]), weir's host
//! path for one operator ([`WeirOperator`]) and figures.

pub mod mqtt;
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
            inference_lane: weir_executor::InferenceLane::default(),
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

/// Prints one figure in the form `scripts/bench` collects: `RESULT key=value`.
pub fn result(key: &str, value: f64) {
    println!("RESULT {key}={value}");
}

/// The `p` quantile (0..=1) of `sorted` (nearest rank), in the sample's unit; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a sorted sample"
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// `n` as a float, for rates and ratios.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
pub fn float(n: u64) -> f64 {
    n as f64
}

/// A `weir serve` child process on a fresh data directory, killed when dropped.
#[derive(Debug)]
pub struct WeirServer {
    child: std::process::Child,
    /// `host:port` of its API.
    pub address: String,
    /// `host:port` of its embedded MQTT broker.
    pub mqtt: String,
    /// The admin token it printed.
    pub admin_token: String,
    _data: tempfile::TempDir,
}

impl WeirServer {
    /// Starts `weir serve` (the binary at `weir`) on loopback ports it picks, and reads its
    /// address, broker address and admin token from its output; the rest of its output is
    /// drained on a thread so the pipe never fills.
    pub fn start(weir: &str) -> anyhow::Result<Self> {
        Self::start_with(weir, &[])
    }

    /// [`WeirServer::start`] with `extra` arguments after `weir serve`'s own.
    pub fn start_with(weir: &str, extra: &[&str]) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let data = tempfile::tempdir()?;
        let mut child = Command::new(weir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {weir}: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut server = Self {
            child,
            address: String::new(),
            mqtt: String::new(),
            admin_token: String::new(),
            _data: data,
        };
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some(token) = line
                .split("admin token (shown once, valid 365 days): ")
                .nth(1)
            {
                token.trim().clone_into(&mut server.admin_token);
            }
            if let Some(broker) = line.strip_prefix("mqtt broker listening on mqtt://") {
                broker.trim().clone_into(&mut server.mqtt);
            }
            if let Some(listening) = line.strip_prefix("weir listening on http://") {
                listening.trim().clone_into(&mut server.address);
                break;
            }
        }
        anyhow::ensure!(
            !server.address.is_empty() && !server.admin_token.is_empty(),
            "weir serve printed no address or admin token"
        );
        std::thread::spawn(move || for _line in lines {});
        Ok(server)
    }

    /// Its process id (for `perf record -p`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WeirServer {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

impl WeirServer {
    /// An API client of this server with the admin token.
    pub fn admin(&self) -> anyhow::Result<weir_api::client::Client> {
        Ok(weir_api::client::Client::new(
            &format!("http://{}", self.address),
            Some(self.admin_token.clone()),
        )?)
    }

    /// Creates tenant `bench` with quotas that do not hold a bench back (API and message
    /// rates, fuel per second, loopback endpoints allowed), pushes the `temperature` and
    /// `window` modules (version 1.0.0) and `graph` as `g` version 1, and answers a client
    /// with an owner token of the tenant.
    pub async fn bench_tenant(&self, graph: &str) -> anyhow::Result<weir_api::client::Client> {
        use weir_api::client::HttpMethod;
        use weir_api::rest::{CreateTenant, MintToken};
        let admin = self.admin()?;
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
            "max_deployments": 100,
            "max_devices": 10,
            "allowed_private_hosts": ["127.0.0.1"],
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
                role: weir_api::tenancy::Role::Owner,
                ttl_seconds: None,
                tenant: Some("bench".to_owned()),
            })
            .await?
            .token
            .ok_or_else(|| anyhow::anyhow!("the mint answer has no token"))?;
        let owner = admin.with_token(token);
        owner
            .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
            .await?;
        owner
            .push_module("window", "1.0.0", weir_guests::WINDOW.bytes())
            .await?;
        owner.push_graph("g", "1", graph.to_owned()).await?;
        Ok(owner)
    }
}

/// Waits (20 s at most) until deployment `id`'s source reports `connected`.
pub async fn wait_until_connected(
    client: &weir_api::client::Client,
    id: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deployment = client.deployment(id).await?;
        let state = deployment
            .runtime
            .as_ref()
            .and_then(|r| r.pointer("/source/connection/state"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if state == "connected" {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "deployment {id}: source {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat` (clock ticks
/// of 10 ms).
pub fn pid_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
