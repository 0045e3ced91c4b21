//! `weir serve`: the platform in one process on embedded defaults: the REST API on a loopback
//! port, the SQLite control store, blob store and tenants' state store in the data directory, modules validated by this
//! process's wasm engine. On first start it creates the data directory, a signing secret, and an
//! admin token, which it prints once.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use weir_executor::dataflow::DataflowSettings;
use weir_executor::{EngineConfig, OperatorEngine, PoolingConfig};
use weir_gateway::{GatewayState, ModuleValidator, ServerLimits, router};

use weir_store::{BlobStore, ControlStore, SqliteControlStore, TokenRecord};
use weir_tenants::{JwtVerifier, MemoryRevocations, Role, Secret, TokenIssuer, VerificationKey};

/// Arguments of `weir serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Where weir keeps its state (created on first start).
    #[arg(long, default_value = "weir-data")]
    data: PathBuf,
    /// The address the API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Create a `demo` tenant with the temperature module and the sample graph deployed as
    /// `demo` (once; later starts find it), and print a developer token and what to try.
    #[arg(long)]
    demo: bool,
    /// Where `--demo` finds `temperature.wasm` (built by `scripts/demo`).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    modules: PathBuf,
    /// Operator instances alive at once on this executor, across tenants: the pool that
    /// tenants' `max_instances` quotas are admitted against.
    #[arg(long, default_value_t = 256)]
    instance_slots: u32,
    /// Milliseconds an operator instance lives without a call before it is dropped (and
    /// re-created, `init` included, on the next message).
    #[arg(long, default_value_t = 5_000)]
    instance_idle_ms: u64,
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
}

/// The graph `--demo` deploys: Fahrenheit readings to Celsius, then a range filter.
const DEMO_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");

/// Sets up the demo tenant through the API itself, as a user would.
async fn demo(address: SocketAddr, admin: &str, modules: &Path) -> anyhow::Result<()> {
    use weir_api::client::Client;
    use weir_api::rest::{Binding, CreateDeployment, CreateTenant, GraphRef, MintToken};
    let admin = Client::new(&format!("http://{address}"), Some(admin.to_owned()))?;
    let created = admin
        .create_tenant(&CreateTenant {
            id: "demo".to_owned(),
            display_name: Some("weir demo".to_owned()),
            quotas: None,
        })
        .await;
    match created {
        Ok(_) => {}
        Err(error) if error.code() == Some("conflict") => {
            println!(
                "demo: tenant demo exists already (deployment demo resumed if it was running)"
            );
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    }
    let token = admin
        .mint_token(&MintToken {
            subject: "demo".to_owned(),
            role: Role::Developer,
            ttl_seconds: Some(30 * 24 * 3600),
            tenant: Some("demo".to_owned()),
        })
        .await?
        .token
        .context("the mint answer carries the token")?;
    let developer = admin.with_token(token.clone());
    let wasm_path = modules.join("temperature.wasm");
    let wasm = std::fs::read(&wasm_path).with_context(|| {
        format!(
            "--demo needs {} (scripts/demo builds it, or pass --modules DIR)",
            wasm_path.display()
        )
    })?;
    developer.push_module("temperature", "1.0.0", wasm).await?;
    developer
        .push_graph("graph-simple", "1.0.0", DEMO_GRAPH.to_owned())
        .await?;
    developer
        .deploy(&CreateDeployment {
            id: "demo".to_owned(),
            graph: GraphRef {
                name: "graph-simple".to_owned(),
                version: "1.0.0".to_owned(),
            },
            configuration: Default::default(),
            source: Binding::default(),
            sink: Binding::default(),
            dead_letters: None,
        })
        .await?;
    println!(
        "demo: tenant demo, module temperature@1.0.0, graph graph-simple@1.0.0, deployment demo (http in, http out)"
    );
    println!("demo: developer token: {token}");
    println!(
        "demo: try  weir ingest demo --server http://{address} --token $TOKEN --wait '{{\"temperature\":{{\"value\":212,\"unit\":\"F\"}}}}'"
    );
    Ok(())
}

/// Issuer name of weir's own tokens.
const ISSUER: &str = "weir";

#[derive(Debug)]
struct EngineValidator(OperatorEngine);

impl ModuleValidator for EngineValidator {
    fn validate(&self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let module = self.0.load(bytes).map_err(|e| e.to_string())?;
        Ok(module
            .operators()
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect())
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

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
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
    let engine = OperatorEngine::new(&EngineConfig {
        pooling: Some(PoolingConfig {
            instance_slots: args.instance_slots,
        }),
        ..EngineConfig::default()
    })?;
    let settings = DataflowSettings {
        instance_idle: Duration::from_millis(args.instance_idle_ms),
        ..DataflowSettings::default()
    };
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // One state store for the API and the modules: what `/v1/state` seeds, modules read.
    let module_state = Arc::new(weir_state::MeteredStateStore::new(Arc::new(
        weir_store::SqliteStateStore::open(&args.data.join("state.db"))?,
    )));
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
    let state = GatewayState {
        store: store.clone(),
        blobs,
        verifier,
        issuer: issuer.clone(),
        revocations,
        validator: Arc::new(EngineValidator(engine.clone())),
        runtime: {
            let executor = weir_executor::runtime::LocalExecutor::new(
                weir_executor::runtime::ExecutorConfig {
                    engine,
                    settings,
                    workers,
                    state: module_state.clone(),
                    connectors: weir_connectors::Registry::standard(),
                    journal: Arc::new(crate::deployments::StoreJournal(store.clone())),
                    default_broker: Some(Arc::new(crate::broker::BrokerEndpoint(broker.clone()))),
                },
            )
            .map_err(|e| anyhow::anyhow!("cannot start the executor: {e}"))?;
            Arc::new(crate::deployments::LocalDeployments {
                executor,
                store: store.clone(),
            })
        },
        state: module_state,
        limits: Arc::default(),
        tenant_locks: Arc::default(),
        instance_pool: Arc::new(weir_gateway::InstancePool::new(u64::from(
            args.instance_slots,
        ))),
    };
    let swept = weir_gateway::sweep_blobs(&state).await?;
    if swept > 0 {
        println!("removed {swept} unreferenced blob(s)");
    }
    let resumed = weir_gateway::resume_deployments(&state).await?;
    if resumed > 0 {
        println!("resumed {resumed} deployment(s)");
    }
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
        weir_gateway::serve(listener, router(state), limits, async {
            let _signal = tokio::signal::ctrl_c().await;
        })
        .await
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
        demo(address, &admin, &args.modules).await?;
    }
    println!("mqtt broker listening on mqtt://{}", broker.local_addr());
    // Printed last: scripts and tests wait for this line to know the API is up.
    println!("weir listening on http://{address}");
    server
        .await
        .context("the API server stopped")?
        .context("the API server failed")?;
    Ok(std::process::ExitCode::SUCCESS)
}
