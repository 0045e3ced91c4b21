//! `weir serve`: the platform in one process on embedded defaults: the REST API on a loopback
//! port, the SQLite control store, blob store and tenants' state store in the data directory
//! (the state store on Redis with `--state redis://…`), modules validated by this
//! process's wasm engine, their compiled artifacts kept in `DATA/artifacts` so that a restart
//! loads them instead of compiling again. On first start it creates the data directory, a
//! signing secret, and an
//! admin token, which it prints once.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use weir_executor::dataflow::DataflowSettings;
use weir_executor::{
    ArtifactConfig, EngineConfig, InferenceBackend, InferenceConfig, OperatorEngine, PoolingConfig,
};
use weir_gateway::{GatewayState, ModuleValidator, ServerLimits, ValidatedModule, router};

use weir_store::{BlobStore, ControlStore, SqliteControlStore, TokenRecord};
use weir_tenants::{JwtVerifier, MemoryRevocations, Role, Secret, TokenIssuer, VerificationKey};

/// Arguments of `weir serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A configuration file (TOML): the keys of `[serve]` (and the shared ones at its top)
    /// are these flags; a flag or its environment variable (`WEIR_` and the key in capitals)
    /// overrides the file. See `weir config example`.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Where weir keeps its state (created on first start).
    #[arg(long, default_value = "weir-data")]
    data: PathBuf,
    /// The address the API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Create a `demo` tenant with the temperature module (embedded in weir) and the sample
    /// graph deployed twice: `demo` (HTTP in and out) and `demo-mqtt` (on the embedded broker,
    /// `sensors/temperature/raw` in, `sensors/temperature/processed` out), and a device
    /// `thermometer` (once; later starts find them and replace the device's password). Prints
    /// a developer token, the device's login and what to try.
    #[arg(long)]
    demo: bool,
    /// A directory whose `temperature.wasm` `--demo` uploads instead of the module embedded in
    /// weir.
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Operator instances alive at once on this executor, across tenants: the pool that
    /// tenants' `max_instances` quotas are admitted against.
    #[arg(long, default_value_t = 256)]
    instance_slots: u32,
    /// Milliseconds an operator instance lives without a call before it is dropped (and
    /// re-created, `init` included, on the next message).
    #[arg(long, default_value_t = 5_000)]
    instance_idle_ms: u64,
    /// Messages one deployment may have taken and not yet settled (queued, inside the dataflow,
    /// or held in a window until it closes) before its source is held back. Default: the
    /// intake's 1,024. A windowed graph holds every message of an open window, so this caps
    /// messages per window (a 10 s window at 5,000 msg/s holds 50,000: raise it for such
    /// graphs). Memory is bounded apart from this by the tenant's `max_inflight_bytes` quota,
    /// shared by its deployments.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: Option<u32>,
    /// Longest a connection may take to send a request head, and may stay idle between
    /// requests, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// Longest a request may take, its body included, in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    request_timeout_ms: u64,
    /// Most API connections open at once; at the cap a new connection closes the oldest idle
    /// one.
    #[arg(long, default_value_t = 2048)]
    max_connections: usize,
    /// The address of the embedded MQTT v5 broker (devices log in with credentials from
    /// `weir device create`; deployments reach it as the `default` endpoint). Port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// The platform's OTLP collector, `http://host:port` (gRPC; no TLS): every tenant's
    /// metrics (module and weir's own, each tenant a resource with `weir.tenant`) are exported
    /// there at every `--otlp-interval-ms`. Tenants get their own series at their own `otlp`
    /// endpoint named `telemetry`, if they create one, whether or not this is set.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Milliseconds between metric exports (platform and tenants' collectors).
    #[arg(long, default_value_t = 10_000)]
    otlp_interval_ms: u64,
    /// Milliseconds between usage flushes to the control store (a graceful stop flushes
    /// last; a killed process loses at most this much counted work).
    #[arg(long, default_value_t = 10_000)]
    usage_flush_ms: u64,
    /// Milliseconds between rounds of the scheduler's reconcile loop, which starts every
    /// stored deployment that should run and does not (at boot, after a failure of its
    /// dataflow) and stops what runs but should not (minimum 10).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    reconcile_ms: u64,
    /// Executor processes to start on this machine (`weir executor`, joining this server over
    /// HTTP with the join token in `DATA/executor-token`); 0: none, the in-process executor
    /// alone.
    #[arg(long, default_value_t = 0)]
    executors: u32,
    /// Place deployments on executor processes only (those of `--executors N`, and any that
    /// join with `weir executor --join`), never on this process; implied by `--executors` of 1
    /// or more.
    #[arg(long)]
    remote_executors: bool,
    /// Milliseconds between an executor process's heartbeats (at least 10, and less than
    /// `--executor-timeout-ms`).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    executor_heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which an executor process is declared lost (at
    /// least 10).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    executor_timeout_ms: u64,
    /// How many times its CPU an executor process is counted for when deployments are placed
    /// (1 to 64): each deployment reserves its declared share of fuel per second (its tenant's
    /// `fuel_per_second` over `max_deployments`), which streaming deployments mostly leave
    /// unused; with 4, an executor of 2 workers takes 8 deployments of default quotas. Each
    /// tenant's modules stay bounded by its own fuel rate; memory and instance slots are never
    /// overcommitted.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpu_overcommit: u32,
    /// The token executor processes join with (at least 32 characters; default: the one in
    /// `DATA/executor-token`, made on first start). Executors on other machines are given the
    /// same one.
    #[arg(long, hide_env_values = true, value_parser = join_token)]
    executor_token: Option<String>,
    /// Where tenants' module state lives: `sqlite` (embedded, `state.db` in the data
    /// directory, this executor alone) or `redis://[user:password@]host:port[/db]` (plain TCP;
    /// every executor pointed at the same Redis and namespace shares each tenant's keys).
    /// Taken from `WEIR_STATE` when not given, which keeps a password out of the process list.
    #[arg(long, default_value = "sqlite", hide_env_values = true)]
    state: String,
    /// The first part of every Redis key weir writes (letters, digits, `-`, `_`, `.`):
    /// executors that share tenants' state use the same one.
    #[arg(long, default_value = "weir")]
    state_namespace: String,
    /// Most bytes of compiled modules kept on disk in `DATA/artifacts` across restarts (the
    /// least recently used go first; a Python module takes ~40 MB, a Rust one ~0.3 MB).
    #[arg(long, default_value_t = 1 << 30)]
    compile_cache_bytes: u64,
    /// Run the ONNX graphs of modules importing `wasi:nn` on ONNX Runtime, loaded from this
    /// shared library (e.g. the `onnxruntime` wheel's `onnxruntime/capi/libonnxruntime.so.1.*`)
    /// instead of the built-in tract backend. Needs a weir built with the `onnxruntime`
    /// feature; the library is loaded at start, so a missing or unusable one stops the start.
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
}

/// The tenants' state store `--state` names, connected (Redis is asked for a `PONG` within
/// 5 s, so a wrong address fails the start instead of the first module call).
async fn state_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn weir_state::StateStore>> {
    if args.state == "sqlite" {
        return Ok(Arc::new(weir_store::SqliteStateStore::open(
            &args.data.join("state.db"),
        )?));
    }
    // Anything but `sqlite` is a Redis URL here: `start_problems` refused other kinds.
    // The node id versions carry: the host this executor runs on.
    let host = tokio::task::spawn_blocking(|| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .await?
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    let node_id = if host.is_empty() {
        "weir".to_owned()
    } else {
        format!("weir@{host}")
    };
    redis_state_store(&args.state, &args.state_namespace, node_id).await
}

/// The tenants' state store on the Redis at `url` under `namespace` (`--state redis://…` of
/// `weir serve` and `weir executor`), asked for a `PONG` within 5 s so a wrong address fails
/// the start; the versions it writes carry `node_id`.
pub(crate) async fn redis_state_store(
    url: &str,
    namespace: &str,
    node_id: String,
) -> anyhow::Result<Arc<dyn weir_state::StateStore>> {
    let config = weir_state::RedisConfig {
        namespace: namespace.to_owned(),
        node_id,
        ..weir_state::RedisConfig::new(url)
    };
    let store = weir_state::RedisStateStore::connect(config)
        .await
        .context("--state")?;
    println!(
        "tenants' state on {} (namespace {})",
        weir_state::masked_url(url),
        store.namespace()
    );
    Ok(Arc::new(store))
}

/// The graph `--demo` deploys: Fahrenheit readings to Celsius, then a range filter.
const DEMO_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");

/// The device `--demo` creates credentials for: it logs in to the embedded broker as
/// `thermometer@demo`.
const DEMO_DEVICE: &str = "thermometer";

/// Where the `demo-mqtt` deployment reads on the embedded broker (topic names as Azure IoT
/// Operations' dataflow samples use them).
const DEMO_SOURCE_TOPIC: &str = "sensors/temperature/raw";
/// Where the `demo-mqtt` deployment writes its outputs on the embedded broker.
const DEMO_SINK_TOPIC: &str = "sensors/temperature/processed";

/// The reading the printed commands send: 212 °F, which the graph turns into 100 °C.
const DEMO_READING: &str = r#"{"temperature":{"value":212,"unit":"F"}}"#;

/// Sets up the demo tenant through the API itself, as a user would: the temperature module
/// (embedded in this binary, or `--modules DIR`'s `temperature.wasm`), the sample graph deployed twice
/// (`demo` over HTTP, `demo-mqtt` on the embedded broker at `broker`), and a device credential.
/// A later start finds the tenant and only mints a new developer token and replaces the
/// device's password (weir keeps only its hash), so the printed commands work again.
async fn demo(
    address: SocketAddr,
    admin: &str,
    modules: Option<&Path>,
    broker: SocketAddr,
) -> anyhow::Result<()> {
    use weir_api::client::Client;
    use weir_api::rest::{Binding, CreateDeployment, CreateTenant, GraphRef, MintToken};
    // Read first: a missing file leaves no half-made demo behind.
    let wasm = match modules {
        Some(dir) => {
            let path = dir.join("temperature.wasm");
            let read = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(read))
                .await?
                .with_context(|| format!("--modules: cannot read {}", path.display()))?
        }
        None => weir_guests::TEMPERATURE_WASM.to_vec(),
    };
    let admin = Client::new(&format!("http://{address}"), Some(admin.to_owned()))?;
    let created = admin
        .create_tenant(&CreateTenant {
            id: "demo".to_owned(),
            display_name: Some("weir demo".to_owned()),
            quotas: None,
        })
        .await;
    let fresh = match created {
        Ok(_) => true,
        Err(error) if error.code() == Some("conflict") => {
            println!(
                "demo: tenant demo exists already (its deployments resumed if they were running)"
            );
            false
        }
        Err(error) => return Err(error.into()),
    };
    let mint = |subject: &str, role: Role, ttl_seconds: u64| {
        let admin = admin.clone();
        let request = MintToken {
            subject: subject.to_owned(),
            role,
            ttl_seconds: Some(ttl_seconds),
            tenant: Some("demo".to_owned()),
        };
        async move {
            admin
                .mint_token(&request)
                .await?
                .token
                .context("the mint answer carries the token")
        }
    };
    let token = mint("demo", Role::Developer, 30 * 24 * 3600).await?;
    let developer = admin.with_token(token.clone());
    // Device credentials are the owner's to create; this token lives for the setup only.
    let owner = admin.with_token(mint("demo-setup", Role::Owner, 300).await?);
    if fresh {
        developer.push_module("temperature", "1.0.0", wasm).await?;
        developer
            .push_graph("graph-simple", "1.0.0", DEMO_GRAPH.to_owned())
            .await?;
        let deployment = |id: &str, source: Binding, sink: Binding| CreateDeployment {
            id: id.to_owned(),
            graph: GraphRef {
                name: "graph-simple".to_owned(),
                version: "1.0.0".to_owned(),
            },
            configuration: Default::default(),
            source,
            sink,
            dead_letters: None,
            instances: 1,
            partition_key: None,
        };
        developer
            .deploy(&deployment("demo", Binding::default(), Binding::default()))
            .await?;
        let embedded = |topic: &str| Binding {
            endpoint: "default".to_owned(),
            topics: vec![topic.to_owned()],
        };
        developer
            .deploy(&deployment(
                "demo-mqtt",
                embedded(DEMO_SOURCE_TOPIC),
                embedded(DEMO_SINK_TOPIC),
            ))
            .await?;
        println!("demo: tenant demo, module temperature@1.0.0, graph graph-simple@1.0.0");
        println!("demo: deployment demo: http in, http out");
        println!(
            "demo: deployment demo-mqtt: mqtt in {DEMO_SOURCE_TOPIC}, mqtt out {DEMO_SINK_TOPIC} (endpoint default: the embedded broker)"
        );
    } else {
        match owner.delete_device(DEMO_DEVICE).await {
            Ok(()) => {}
            Err(error) if error.code() == Some("not_found") => {}
            Err(error) => return Err(error.into()),
        }
    }
    let device = owner.create_device(DEMO_DEVICE).await?;
    wait_until_connected(&developer, "demo-mqtt").await;
    println!("demo: developer token: {token}");
    println!("demo: device username: {}", device.username);
    println!("demo: device password: {}", device.password);
    println!(
        "demo: try  weir ingest demo --server http://{address} --token $TOKEN --wait '{DEMO_READING}'"
    );
    let login = format!(
        "--broker {broker} --username {} --password {}",
        device.username, device.password
    );
    println!("demo: try  weir mqtt sub {login} {DEMO_SINK_TOPIC} --count 1 &");
    println!("demo: try  weir mqtt pub {login} {DEMO_SOURCE_TOPIC} '{DEMO_READING}'");
    Ok(())
}

/// Waits (10 s at most) until deployment `id`'s source is connected to the broker (its sink
/// connects with the first output), so a reading published right after the demo's lines are
/// printed is not missed; says so if it is not.
async fn wait_until_connected(developer: &weir_api::client::Client, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut state = String::new();
    loop {
        let found = developer.deployment(id).await;
        if let Err(error) = &found
            && error.code() == Some("not_found")
        {
            println!(
                "demo: warning: deployment {id} does not exist (a data directory of an older weir?)"
            );
            return;
        }
        if let Ok(deployment) = found
            && let Some(runtime) = deployment.runtime
        {
            runtime
                .pointer("/source/connection/state")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .clone_into(&mut state);
            if state == "connected" {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "demo: warning: deployment {id}'s source is not connected to the broker yet ({state}); see weir status {id}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issuer name of weir's own tokens.
const ISSUER: &str = "weir";

#[derive(Debug)]
struct EngineValidator(OperatorEngine);

impl ModuleValidator for EngineValidator {
    fn validate(&self, bytes: &[u8]) -> Result<ValidatedModule, String> {
        let module = self.0.load(bytes).map_err(|e| e.to_string())?;
        Ok(ValidatedModule {
            operators: module
                .operators()
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            imports_inference: module.imports_inference(),
        })
    }

    fn forget(&self, digest: &weir_api::ModuleDigest) {
        self.0.forget(digest);
    }
}

/// Reads the signing secret, creating it (32 random bytes, owner-only) on first start.
fn secret(data: &Path) -> anyhow::Result<(Secret, bool)> {
    let path = data.join("secret");
    if path.is_file() {
        return Ok((
            Secret::new(std::fs::read(&path).context("cannot read the signing secret")?),
            false,
        ));
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the signing secret")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, hex.as_bytes())?;
    Ok((Secret::new(hex.into_bytes()), true))
}

/// `--executor-token`: long enough not to be guessed (32 characters, as the 32 random bytes of
/// a made one are 64).
fn join_token(text: &str) -> Result<String, String> {
    if text.chars().count() < 32 {
        return Err("a join token has at least 32 characters".to_owned());
    }
    Ok(text.to_owned())
}

/// The token executor processes join with: `--executor-token`, else `DATA/executor-token`,
/// made on first use (32 random bytes, hex, 0600).
fn executor_token(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(token) = &args.executor_token {
        return Ok(token.clone());
    }
    let data = &args.data;
    let path = data.join("executor-token");
    if path.is_file() {
        return std::fs::read_to_string(&path)
            .map(|token| token.trim().to_owned())
            .context("cannot read the executor join token");
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the executor join token")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, hex.as_bytes())?;
    Ok(hex)
}

/// `weir executor` processes started by `weir serve --executors N`, kept running by a
/// supervising thread (one that exits or is killed is started again, after a backoff that
/// doubles while they keep failing at once: 1 s up to 60 s), killed when dropped.
#[derive(Debug)]
struct LocalExecutors {
    children: Arc<Mutex<Vec<std::process::Child>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

/// How often the supervisor looks at the children.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// A child that ran this long before it ended resets the backoff.
const RAN_WELL: Duration = Duration::from_secs(30);

impl LocalExecutors {
    fn start(count: u32, address: std::net::SocketAddr, args: &ServeArgs) -> anyhow::Result<Self> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if count == 0 {
            return Ok(Self {
                children: Arc::default(),
                stop,
                supervisor: None,
            });
        }
        let weir = std::env::current_exe().context("cannot find the weir binary")?;
        let token = executor_token(args)?;
        let config = args.config.clone();
        let spawn = move || {
            let mut command = std::process::Command::new(&weir);
            command
                .args(["executor", "--join", &format!("http://{address}")])
                // They end with this server rather than wait for another.
                .arg("--exit-with-control-plane")
                .env("WEIR_EXECUTOR_TOKEN", &token)
                // Each process makes its own id (a shared one would be refused).
                .env_remove("WEIR_ID");
            // The `[executor]` section of this server's file configures them.
            if let Some(config) = &config {
                command.arg("--config").arg(config);
            }
            command
                .stdin(std::process::Stdio::null())
                // Their lines would interleave with the server's own (which scripts read);
                // `/v1/executors` lists them, and their warnings go to the shared stderr.
                .stdout(std::process::Stdio::null())
                .spawn()
        };
        let mut children = Vec::new();
        for _ in 0..count {
            children.push(spawn().context("cannot start an executor process")?);
        }
        let children = Arc::new(Mutex::new(children));
        let supervisor = {
            let children = children.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("executor-supervisor".to_owned())
                .spawn(move || supervise(&children, &stop, &spawn))
                .context("cannot start the executor supervisor")?
        };
        Ok(Self {
            children,
            stop,
            supervisor: Some(supervisor),
        })
    }
}

/// Starts again each child that ended, until `stop`.
fn supervise(
    children: &Mutex<Vec<std::process::Child>>,
    stop: &std::sync::atomic::AtomicBool,
    spawn: &dyn Fn() -> std::io::Result<std::process::Child>,
) {
    let count = children
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    // Per child: when it was started, and when it may be started again.
    let mut started = vec![std::time::Instant::now(); count];
    let mut backoff = vec![Duration::from_secs(1); count];
    let mut due: Vec<Option<std::time::Instant>> = vec![None; count];
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(SUPERVISE_EVERY);
        let mut children = children.lock().unwrap_or_else(PoisonError::into_inner);
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        for (index, child) in children.iter_mut().enumerate() {
            let (Some(since), Some(wait), Some(next)) = (
                started.get_mut(index),
                backoff.get_mut(index),
                due.get_mut(index),
            ) else {
                continue;
            };
            if next.is_none() {
                match child.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        if since.elapsed() >= RAN_WELL {
                            *wait = Duration::from_secs(1);
                        }
                        tracing::warn!(pid = child.id(), %status, retry_in_s = wait.as_secs(), "an executor process ended; starting another");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot look at an executor process");
                        continue;
                    }
                }
                *next = Some(std::time::Instant::now() + *wait);
            }
            if next.is_some_and(|at| std::time::Instant::now() >= at) {
                match spawn() {
                    Ok(fresh) => {
                        tracing::info!(pid = fresh.id(), "executor process started again");
                        *child = fresh;
                        *since = std::time::Instant::now();
                        *next = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot start an executor process; trying again");
                        *next = Some(std::time::Instant::now() + *wait);
                    }
                }
                *wait = (*wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

impl Drop for LocalExecutors {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        for child in self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            child.kill().ok();
            child.wait().ok();
        }
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.join().ok();
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// Takes the data directory for this process: one server per data directory, or a second
/// would run every deployment again beside the first, and both reconcile loops would place
/// them. The lock is the kernel's (`flock`, through [`std::fs::File::try_lock`]) on
/// `DATA/serve.lock`, which holds the owner's pid; it goes with the process however it ends.
fn lock_data_dir(data: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data.join("serve.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another weir serve (pid {}) uses the data directory {}; stop it first, or give \
                 this one a --data of its own",
                owner.trim(),
                data.display()
            )
        }
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// What a start refuses beyond each value alone (which clap's parsers check): settings that
/// cannot work together, a `--state` of the wrong shape. Also `weir config check`'s.
pub(crate) fn start_problems(args: &ServeArgs) -> Vec<String> {
    let mut problems = Vec::new();
    // An executor that beats less often than the timeout is declared lost between its beats.
    if args.executor_heartbeat_ms >= args.executor_timeout_ms {
        problems.push(format!(
            "--executor-heartbeat-ms {} must be less than --executor-timeout-ms {} (executors \
             would be declared lost between their heartbeats)",
            args.executor_heartbeat_ms, args.executor_timeout_ms
        ));
    }
    if args.state != "sqlite" && !args.state.starts_with("redis://") {
        problems.push(format!(
            "--state {:?}: expected `sqlite` or redis://host:port[/db]",
            weir_state::masked_url(&args.state)
        ));
    }
    problems
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(problem) = start_problems(&args).into_iter().next() {
        anyhow::bail!(problem);
    }
    // The data directory is the server user's alone (its files are created 0600 inside).
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.data)
            .and_then(|()| {
                std::fs::set_permissions(&args.data, std::fs::Permissions::from_mode(0o700))
            })
            .with_context(|| format!("cannot create data directory {}", args.data.display()))?;
    }
    let _one_server = lock_data_dir(&args.data)?;
    // Before the first start's admin token is minted and shown (once): a wrong `--state`
    // fails the start with nothing printed that a retry would not print again.
    let state_store = state_store(&args).await?;
    let platform_exporter = crate::observe::platform_exporter(args.otlp_endpoint.as_deref())?;
    let engine_config = EngineConfig {
        pooling: Some(PoolingConfig {
            instance_slots: args.instance_slots,
        }),
        artifacts: Some(ArtifactConfig {
            dir: args.data.join("artifacts"),
            max_bytes: args.compile_cache_bytes,
        }),
        inference: InferenceConfig {
            backend: args
                .onnxruntime
                .clone()
                .map_or(InferenceBackend::Tract, InferenceBackend::OnnxRuntime),
            ..InferenceConfig::default()
        },
        ..EngineConfig::default()
    };
    // Opening the artifact directory reads it, and an ONNX Runtime library is loaded: off the
    // async workers, and before a first start's admin token is shown (a bad library fails the
    // start with nothing printed that a retry would not print again).
    let engine = tokio::task::spawn_blocking(move || OperatorEngine::new(&engine_config))
        .await
        .context("the engine's start panicked")??;
    println!("inference: {} backend", engine.inference_backend());
    let (secret, first_start) = secret(&args.data)?;
    let store = Arc::new(SqliteControlStore::open(&args.data.join("control.db"))?);
    let blobs = BlobStore::open(args.data.join("blobs"))?;
    let issuer = Arc::new(TokenIssuer::new(&secret, Some(ISSUER), None));
    let verifier = Arc::new(JwtVerifier::new(
        &[VerificationKey::Hs256(secret)],
        Some(ISSUER),
        None,
    )?);
    let revocations = Arc::new(MemoryRevocations::default());
    for id in store.revoked_token_ids().await? {
        revocations.revoke(&id);
    }
    let mut first_admin_token = None;
    if first_start {
        let ttl = Duration::from_secs(365 * 24 * 3600);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let id = format!("admin-{now:x}");
        let token = issuer.mint("admin", None, Role::Admin, ttl, &id)?;
        store
            .put_token(&TokenRecord {
                id,
                tenant: None,
                subject: "admin".to_owned(),
                role: Role::Admin,
                expires_at: now + ttl.as_secs(),
                revoked: false,
                created_at: now,
            })
            .await?;
        println!("first start: data in {}", args.data.display());
        println!("admin token (shown once, valid 365 days): {token}");
        first_admin_token = Some(token);
    } else {
        println!("data in {}", args.data.display());
    }
    let settings = DataflowSettings {
        instance_idle: Duration::from_millis(args.instance_idle_ms),
        max_in_flight: args
            .max_in_flight
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        ..DataflowSettings::default()
    };
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // One state store for the API and the modules: what `/v1/state` seeds, modules read.
    let module_state = Arc::new(weir_state::MeteredStateStore::new(state_store));
    let broker = Arc::new(
        weir_broker::EmbeddedBroker::start(
            weir_broker::BrokerConfig {
                listen: args.mqtt_listen,
                ..weir_broker::BrokerConfig::default()
            },
            Arc::new(crate::broker::StoreDevices(store.clone())),
        )
        .await
        .with_context(|| format!("cannot start the MQTT broker on {}", args.mqtt_listen))?,
    );
    let usage = Arc::new(crate::observe::UsageMeter::new(store.clone()));
    let deployments = {
        let executor =
            weir_executor::runtime::LocalExecutor::new(weir_executor::runtime::ExecutorConfig {
                engine: engine.clone(),
                settings,
                workers,
                state: module_state.clone(),
                connectors: weir_connectors::Registry::standard(),
                journal: Arc::new(crate::deployments::StoreJournal(store.clone())),
                default_broker: Some(Arc::new(crate::broker::BrokerEndpoint(broker.clone()))),
            })
            .map_err(|e| anyhow::anyhow!("cannot start the executor: {e}"))?;
        let (log_writer, _log_task) = crate::observe::StoreLogWriter::start(store.clone());
        executor.forward_logs(log_writer.clone());
        Arc::new(crate::deployments::LocalDeployments {
            executor,
            usage: usage.clone(),
            store: store.clone(),
            log_writer,
        })
    };
    let remote = args.remote_executors || args.executors > 0;
    let members = {
        let members = weir_gateway::ExecutorMembership::new(
            Some(executor_token(&args)?),
            Duration::from_millis(args.executor_heartbeat_ms.max(10)),
            Duration::from_millis(args.executor_timeout_ms.max(10)),
            1024,
        )
        .cpu_overcommit(args.cpu_overcommit);
        Arc::new(if remote { members.placing() } else { members })
    };
    // With executor processes, deployments run there and this process only places them.
    let runtime: Arc<dyn weir_gateway::DeploymentRuntime> = if remote {
        // Logs and stored usage are read from the control store, where executors hand them.
        Arc::new(weir_gateway::RemoteRuntime::new(members.clone()).with_reader(deployments.clone()))
    } else {
        deployments.clone()
    };
    let state = GatewayState {
        store: store.clone(),
        blobs,
        verifier,
        issuer: issuer.clone(),
        revocations,
        validator: Arc::new(EngineValidator(engine.clone())),
        runtime,
        state: module_state,
        limits: Arc::default(),
        tenant_locks: Arc::default(),
        instance_pool: Arc::new(weir_gateway::InstancePool::new(u64::from(
            args.instance_slots,
        ))),
        executors: members.clone(),
    };
    let swept = weir_gateway::sweep_blobs(&state).await?;
    if swept > 0 {
        println!("removed {swept} unreferenced blob(s)");
    }
    // The scheduler's first round: every stored deployment that should run is started again.
    let control = weir_gateway::ControlLoop::new(state.clone());
    let boot = control
        .round("resumed after restart")
        .await
        .map_err(|e| anyhow::anyhow!("cannot reconcile the stored deployments: {e}"))?;
    if boot.started > 0 {
        println!("resumed {} deployment(s)", boot.started);
    }
    let counts = engine.compile_counts();
    // Tests read this line: a restart with the compile cache compiles nothing.
    println!(
        "modules: {} compiled, {} loaded from the compile cache, {} damaged artifact(s) discarded",
        counts.compiled, counts.loaded, counts.discarded
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_connections: args.max_connections,
        ..ServerLimits::default()
    };
    let server = tokio::spawn(async move {
        weir_gateway::serve(listener, router(state), limits, crate::stop_signal()).await
    });
    if args.demo {
        let admin = match &first_admin_token {
            Some(token) => token.clone(),
            None => issuer.mint(
                "demo-setup",
                None,
                Role::Admin,
                Duration::from_secs(300),
                "demo-setup",
            )?,
        };
        demo(
            address,
            &admin,
            args.modules.as_deref(),
            broker.local_addr(),
        )
        .await?;
    }
    println!("mqtt broker listening on mqtt://{}", broker.local_addr());
    // Printed last: scripts and tests wait for this line to know the API is up.
    println!("weir listening on http://{address}");
    let _executors = LocalExecutors::start(args.executors, address, &args)?;
    let _reconciler = tokio::spawn(control.run(
        Duration::from_millis(args.reconcile_ms.max(10)),
        std::future::pending(),
    ));
    let _flusher = crate::observe::spawn_usage_flusher(
        usage.clone(),
        deployments.clone(),
        members.clone(),
        Duration::from_millis(args.usage_flush_ms.max(10)),
    );
    let _exporter = crate::observe::spawn_exporter(
        store.clone(),
        deployments.clone(),
        platform_exporter,
        Duration::from_millis(args.otlp_interval_ms.max(10)),
    );
    let served = server.await.context("the API server stopped")?;
    // A graceful stop counts everything done so far.
    usage
        .flush(&deployments.executor, &members)
        .await
        .context("the last usage flush failed")?;
    println!("usage flushed");
    served.context("the API server failed")?;
    Ok(std::process::ExitCode::SUCCESS)
}
