//! The commands that talk to a weir server through the typed client: `login`, `tenant`,
//! `token`, `module`, `graph`, `device`, `deploy`, `status`, `ingest`, `logs`, `state`. The
//! server and token come from `--server`/`--token`, `WEIR_SERVER`/`WEIR_TOKEN`, or what
//! `weir login` saved (`$WEIR_CONFIG`, else `~/.config/weir/config.json`, owner-only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_api::client::{Client, ClientError};
use weir_api::rest::{Binding, CreateDeployment, CreateTenant, GraphRef, IngestMessage, MintToken};
use weir_api::tenancy::Role;

use crate::OutputFormat;

/// Where the server is and who we are.
#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// The server, e.g. http://127.0.0.1:8080 (default: what `weir login` saved).
    #[arg(long, env = "WEIR_SERVER", global = true)]
    server: Option<String>,
    /// The bearer token (default: what `weir login` saved).
    #[arg(long, env = "WEIR_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// How results are printed.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: OutputFormat,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    server: String,
    token: String,
}

fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither WEIR_CONFIG, XDG_CONFIG_HOME nor HOME is set")?;
    Ok(base.join("weir").join("config.json"))
}

fn load_saved() -> Option<Saved> {
    let path = config_path().ok()?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn save(saved: &Saved) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(&serde_json::to_vec_pretty(saved)?)?;
    Ok(path)
}

impl Connection {
    fn client(&self) -> anyhow::Result<Client> {
        let saved = load_saved();
        let server = self
            .server
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.server.clone()))
            .context("no server: pass --server, set WEIR_SERVER, or run `weir login`")?;
        let token = self.token.clone().or_else(|| saved.map(|s| s.token));
        Ok(Client::new(&server, token)?)
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TenantArgs {
    #[command(subcommand)]
    command: TenantCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum TenantCommand {
    /// Create a tenant (admin).
    Create {
        /// Its id.
        id: String,
        /// A name for people.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List tenants (admin).
    List,
    /// Show a tenant with its quotas (admin).
    Get {
        /// Its id.
        id: String,
    },
    /// Suspend a tenant: its tokens stop, its deployments pause (admin).
    Suspend {
        /// Its id.
        id: String,
    },
    /// Lift a tenant's suspension: its tokens work again, the deployments the suspension
    /// paused resume (admin).
    Unsuspend {
        /// Its id.
        id: String,
    },
    /// Delete a tenant and everything it owns (admin).
    Delete {
        /// Its id.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExecutorsArgs {
    #[command(subcommand)]
    command: ExecutorsCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum ExecutorsCommand {
    /// List the executors with their state and deployments.
    List,
    /// Take no new deployments; what runs there stays.
    Cordon {
        /// The executor's id.
        id: String,
    },
    /// Take new deployments again.
    Uncordon {
        /// The executor's id.
        id: String,
    },
    /// Move the executor's deployments to the others and take no new ones.
    Drain {
        /// The executor's id.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeploymentsArgs {
    #[command(subcommand)]
    command: DeploymentsCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum DeploymentsCommand {
    /// A deployment's revisions, oldest first (the newest 20 are kept).
    History {
        /// The deployment.
        id: String,
    },
    /// Run an earlier revision again, by a rolling update (default: the one before the
    /// current).
    Rollback {
        /// The deployment.
        id: String,
        /// The revision to go back to.
        #[arg(long)]
        revision: Option<u64>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Mint a token; it is printed once.
    Mint {
        /// Who it is for.
        #[arg(long)]
        subject: String,
        /// owner, developer or viewer (admin for admins).
        #[arg(long)]
        role: String,
        /// Lifetime in seconds (default one hour).
        #[arg(long)]
        ttl: Option<u64>,
        /// Admins only: the tenant it is for.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List tokens.
    List,
    /// Revoke a token by id.
    Revoke {
        /// Its id.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ArtifactArgs {
    #[command(subcommand)]
    command: ArtifactCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum ArtifactCommand {
    /// Upload a file; the server validates it before keeping it.
    Push {
        /// The file (a `.wasm` component, or a graph definition in YAML).
        file: PathBuf,
        /// Name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Version.
        #[arg(long, default_value = "1.0.0")]
        version: String,
    },
    /// Fetch from an OCI registry (as Azure's samples publish them) and keep it like an upload.
    Import {
        /// `registry[:port]/repository:tag`.
        reference: String,
        /// Name (default: the repository's last segment).
        #[arg(long)]
        name: Option<String>,
        /// Version (default: the tag).
        #[arg(long)]
        version: Option<String>,
        /// Plain HTTP to the registry (a local registry without TLS).
        #[arg(long)]
        insecure: bool,
    },
    /// List what the tenant has.
    List,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum DeviceCommand {
    /// Create credentials for a device on the embedded MQTT broker (owner); the password is
    /// printed once.
    Create {
        /// Its name (letters, digits, `.`, `-`, `_`); it connects as NAME@TENANT.
        name: String,
    },
    /// List the tenant's devices.
    List,
    /// Delete a device's credentials (owner).
    Delete {
        /// Its name.
        name: String,
    },
}

fn import_request(
    reference: String,
    name: Option<String>,
    version: Option<String>,
    insecure: bool,
) -> weir_api::rest::ImportArtifact {
    weir_api::rest::ImportArtifact {
        reference,
        name,
        version,
        insecure,
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeployArgs {
    /// A deployment document (JSON) or an Azure DataflowGraph (YAML or JSON); or use --id/--graph.
    file: Option<PathBuf>,
    /// Deployment id.
    #[arg(long)]
    id: Option<String>,
    /// The graph, NAME:VERSION.
    #[arg(long)]
    graph: Option<String>,
    /// Configuration, KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    configuration: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// A deployment; without one, every deployment of the tenant.
    id: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// The deployment.
    id: String,
    /// Payloads, one message each.
    #[arg(required = true)]
    payloads: Vec<String>,
    /// The topic they arrive on.
    #[arg(long, default_value = "ingest")]
    topic: String,
    /// Wait for the outputs and print them.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// Only this deployment's lines.
    #[arg(long)]
    deployment: Option<String>,
    /// Keep printing new lines.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum StateCommand {
    /// List keys.
    List,
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
}

/// Prints `value` as JSON, or as `text` for people.
fn print<T: Serialize>(output: OutputFormat, value: &T, text: impl FnOnce(&T) -> String) {
    match output {
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
        OutputFormat::Text => {
            let text = text(value);
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }
}

/// Reports a failed call: the server's problem in full, and exit code 1.
fn failed(output: OutputFormat, error: &ClientError) -> ExitCode {
    match (output, error.problem()) {
        (OutputFormat::Json, Some(problem)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(problem).unwrap_or_default()
            );
        }
        (_, Some(problem)) => {
            eprintln!(
                "error: {} ({}): {}",
                problem.code, problem.status, problem.detail
            );
            for field in &problem.errors {
                eprintln!("  {}: {}", field.path, field.message);
            }
        }
        (_, None) => eprintln!("error: {error}"),
    }
    ExitCode::FAILURE
}

macro_rules! call {
    ($output:expr, $call:expr) => {
        match $call.await {
            Ok(value) => value,
            Err(error) => return Ok(failed($output, &error)),
        }
    };
}

pub(crate) async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let token = client
        .token()
        .context("pass the token to keep with --token or WEIR_TOKEN")?
        .to_owned();
    call!(args.connection.output, client.health());
    let path = save(&Saved {
        server: client.base().to_owned(),
        token,
    })?;
    print(
        args.connection.output,
        &serde_json::json!({"server": client.base(), "config": path}),
        |_| {
            format!(
                "logged in to {}; saved in {}",
                client.base(),
                path.display()
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn tenant(args: TenantArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    let line = |t: &weir_api::rest::Tenant| {
        format!(
            "{}\t{}{}",
            t.id,
            t.display_name,
            if t.suspended { "\t(suspended)" } else { "" }
        )
    };
    match args.command {
        TenantCommand::Create { id, display_name } => {
            let tenant = call!(
                output,
                client.create_tenant(&CreateTenant {
                    id,
                    display_name,
                    quotas: None,
                })
            );
            print(output, &tenant, |t| format!("created tenant {}", t.id));
        }
        TenantCommand::List => {
            let tenants = call!(output, client.tenants());
            print(output, &tenants, |ts| {
                ts.iter().map(line).collect::<Vec<_>>().join("\n")
            });
        }
        TenantCommand::Get { id } => {
            let tenant = call!(output, client.tenant(&id));
            print(output, &tenant, |t| {
                format!(
                    "{}\n{}",
                    line(t),
                    serde_json::to_string_pretty(&t.quotas).unwrap_or_default()
                )
            });
        }
        TenantCommand::Suspend { id } => {
            let tenant = call!(output, client.suspend_tenant(&id));
            print(output, &tenant, |t| format!("suspended {}", t.id));
        }
        TenantCommand::Unsuspend { id } => {
            let tenant = call!(output, client.unsuspend_tenant(&id));
            print(output, &tenant, |t| format!("unsuspended {}", t.id));
        }
        TenantCommand::Delete { id } => {
            call!(output, client.delete_tenant(&id));
            print(output, &serde_json::json!({"deleted": id}), |_| {
                format!("deleted tenant {id} and everything it owned")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn executors(args: ExecutorsArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    let line = |e: &weir_api::rest::Executor| {
        format!(
            "{}\t{}\t{} deployment(s)\t{} worker(s)",
            e.id, e.state, e.deployments, e.workers
        )
    };
    let executor = match args.command {
        ExecutorsCommand::List => {
            let executors = call!(output, client.executors());
            print(output, &executors, |es| {
                es.iter().map(line).collect::<Vec<_>>().join("\n")
            });
            return Ok(ExitCode::SUCCESS);
        }
        ExecutorsCommand::Cordon { id } => call!(output, client.cordon_executor(&id)),
        ExecutorsCommand::Uncordon { id } => call!(output, client.uncordon_executor(&id)),
        ExecutorsCommand::Drain { id } => call!(output, client.drain_executor(&id)),
    };
    print(output, &executor, line);
    Ok(ExitCode::SUCCESS)
}

/// A time the API gives in seconds since the epoch, for people: RFC 3339 in UTC
/// (`2026-12-01T09:47:29Z`). `--json` keeps the API's number.
fn when(at: u64) -> String {
    rfc3339(at.saturating_mul(1000), chrono::SecondsFormat::Secs).unwrap_or_else(|| at.to_string())
}

/// A time the API gives in milliseconds since the epoch, for people: RFC 3339 in UTC with
/// milliseconds (`2026-12-01T09:47:29.123Z`).
fn when_ms(at_ms: u64) -> String {
    rfc3339(at_ms, chrono::SecondsFormat::Millis).unwrap_or_else(|| at_ms.to_string())
}

fn rfc3339(at_ms: u64, format: chrono::SecondsFormat) -> Option<String> {
    let at = chrono::DateTime::from_timestamp_millis(i64::try_from(at_ms).ok()?)?;
    Some(at.to_rfc3339_opts(format, true))
}

/// One line per revision: number, graph, outcome, who, when (`*` marks the current one).
fn revision_lines(revisions: &[weir_api::rest::DeploymentRevision]) -> String {
    revisions
        .iter()
        .map(|r| {
            format!(
                "{}{}\t{}\t{}\t{}\t{}{}",
                if r.current { "*" } else { " " },
                r.revision,
                r.graph,
                r.outcome,
                r.by,
                when(r.at),
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!("\t{}", r.detail)
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) async fn deployments(args: DeploymentsArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.command {
        DeploymentsCommand::History { id } => {
            let deployment = call!(output, client.deployment(&id));
            print(output, &deployment.revisions, |revisions| {
                revision_lines(revisions)
            });
        }
        DeploymentsCommand::Rollback { id, revision } => {
            let changed = call!(output, client.rollback_deployment(&id, revision));
            print(output, &changed, |c| {
                format!("deployment {} rolled back; it is {}", c.id, c.status)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.command {
        TokenCommand::Mint {
            subject,
            role,
            ttl,
            tenant,
        } => {
            let role: Role = serde_json::from_value(serde_json::Value::String(role.clone()))
                .with_context(|| {
                    format!("unknown role {role}: admin, owner, developer or viewer")
                })?;
            let token = call!(
                output,
                client.mint_token(&MintToken {
                    subject,
                    role,
                    ttl_seconds: ttl,
                    tenant,
                })
            );
            print(output, &token, |t| t.token.clone().unwrap_or_default());
        }
        TokenCommand::List => {
            let tokens = call!(output, client.tokens());
            print(output, &tokens, |ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{}\t{}\t{:?}{}",
                            t.id,
                            t.subject,
                            t.role,
                            if t.revoked { "\t(revoked)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        TokenCommand::Revoke { id } => {
            call!(output, client.revoke_token(&id));
            print(output, &serde_json::json!({"revoked": id}), |_| {
                format!("revoked {id}")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn device(args: DeviceArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.command {
        DeviceCommand::Create { name } => {
            let credentials = call!(output, client.create_device(&name));
            print(output, &credentials, |c| {
                format!("username {}\npassword {}", c.username, c.password)
            });
            if output == OutputFormat::Text {
                eprintln!("the password is shown only now: weir keeps only its hash");
            }
        }
        DeviceCommand::List => {
            let devices = call!(output, client.devices());
            print(output, &devices, |ds| {
                ds.iter()
                    .map(|d| format!("{}\t{}\t{}", d.name, d.username, when(d.created_at)))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        DeviceCommand::Delete { name } => {
            call!(output, client.delete_device(&name));
            print(output, &serde_json::json!({"deleted": name}), |_| {
                format!("deleted device {name}")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn module_line(m: &weir_api::rest::Module) -> String {
    format!(
        "{}@{} {} exports {}",
        m.name,
        m.version,
        m.digest,
        m.operators.join(", ")
    )
}

fn graph_line(g: &weir_api::rest::Graph) -> String {
    format!("{}@{} {}", g.name, g.version, g.digest)
}

fn default_name(file: &Path) -> anyhow::Result<String> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .context("cannot take a name from the file name; pass --name")
}

pub(crate) async fn module(args: ArtifactArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.command {
        ArtifactCommand::Push {
            file,
            name,
            version,
        } => {
            let name = name.map_or_else(|| default_name(&file), Ok)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            if output == OutputFormat::Text {
                eprintln!(
                    "uploading {} ({} KiB); the server validates and compiles it...",
                    file.display(),
                    bytes.len() / 1024
                );
            }
            let module = call!(output, client.push_module(&name, &version, bytes));
            print(output, &module, module_line);
        }
        ArtifactCommand::Import {
            reference,
            name,
            version,
            insecure,
        } => {
            let request = import_request(reference, name, version, insecure);
            let module = call!(output, client.import_module(&request));
            print(output, &module, module_line);
        }
        ArtifactCommand::List => {
            let modules = call!(output, client.modules());
            print(output, &modules, |ms| {
                ms.iter()
                    .map(|m| format!("{}@{}\t{}\t{} B", m.name, m.version, m.digest, m.size))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn graph(args: ArtifactArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.command {
        ArtifactCommand::Push {
            file,
            name,
            version,
        } => {
            let name = name.map_or_else(|| default_name(&file), Ok)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let graph = call!(output, client.push_graph(&name, &version, text));
            print(output, &graph, graph_line);
        }
        ArtifactCommand::Import {
            reference,
            name,
            version,
            insecure,
        } => {
            let request = import_request(reference, name, version, insecure);
            let graph = call!(output, client.import_graph(&request));
            print(output, &graph, graph_line);
        }
        ArtifactCommand::List => {
            let graphs = call!(output, client.graphs());
            print(output, &graphs, |gs| {
                gs.iter()
                    .map(|g| format!("{}@{}\t{}", g.name, g.version, g.digest))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    let changed = match (&args.file, &args.id, &args.graph) {
        (Some(file), None, None) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            match serde_json::from_str::<CreateDeployment>(&text) {
                Ok(spec) => call!(output, client.deploy(&spec)),
                // Anything else goes as YAML: a DataflowGraph, or a mistake the server names.
                Err(_) => call!(output, client.deploy_dataflow_graph(text)),
            }
        }
        (None, Some(id), Some(graph)) => {
            let (name, version) = graph
                .split_once(':')
                .context("--graph takes NAME:VERSION")?;
            let mut configuration = BTreeMap::new();
            for pair in &args.configuration {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--config takes KEY=VALUE, not {pair}"))?;
                configuration.insert(key.to_owned(), value.to_owned());
            }
            call!(
                output,
                client.deploy(&CreateDeployment {
                    id: id.clone(),
                    graph: GraphRef {
                        name: name.to_owned(),
                        version: version.to_owned(),
                    },
                    configuration,
                    source: Binding::default(),
                    sink: Binding::default(),
                    dead_letters: None,
                    instances: 1,
                    partition_key: None,
                })
            )
        }
        _ => anyhow::bail!("pass a deployment file, or --id and --graph"),
    };
    print(output, &changed, |c| {
        let mut text = format!("deployment {} is {}", c.id, c.status);
        for warning in &c.warnings {
            text.push_str(&format!("\nwarning: {warning}"));
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.id {
        Some(id) => {
            let deployment = call!(output, client.deployment(&id));
            print(output, &deployment, |d| {
                let mut text = format!(
                    "{}\t{}\tgraph {}@{}",
                    d.id, d.status, d.spec.graph.name, d.spec.graph.version
                );
                if let Some(runtime) = &d.runtime {
                    text.push_str(&format!(
                        "\nreceived {}  emitted {}  dead-lettered {}  late {}",
                        runtime["received"],
                        runtime["emitted"],
                        runtime["dead_lettered"],
                        runtime["late"]
                    ));
                }
                for change in &d.history {
                    text.push_str(&format!(
                        "\n  {}  {}: {}",
                        when(change.at),
                        change.status,
                        change.detail
                    ));
                }
                if !d.revisions.is_empty() {
                    text.push_str("\nrevisions:\n");
                    text.push_str(&revision_lines(&d.revisions));
                }
                text
            });
        }
        None => {
            let deployments = call!(output, client.deployments());
            print(output, &deployments, |ds| {
                ds.iter()
                    .map(|d| {
                        format!(
                            "{}\t{}\t{}@{}",
                            d.id, d.status, d.spec.graph.name, d.spec.graph.version
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    let messages: Vec<IngestMessage> = args
        .payloads
        .into_iter()
        .map(|payload| IngestMessage {
            topic: args.topic.clone(),
            ..IngestMessage::new(payload)
        })
        .collect();
    let reply = call!(output, client.ingest(&args.id, &messages, args.wait));
    print(output, &reply, |r| match &r.outputs {
        Some(outputs) => outputs
            .iter()
            .map(|o| format!("{}\t{}", o.topic, o.payload))
            .collect::<Vec<_>>()
            .join("\n"),
        None => format!("accepted {}", r.accepted),
    });
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    let mut after = None;
    // While following, a server that stops answering (restarting, say) is waited for: the
    // cursor is kept, so no line is printed twice or skipped when it is back.
    let mut waiting = false;
    loop {
        let lines = match client.logs(args.deployment.as_deref(), after).await {
            Ok(lines) => lines,
            Err(ClientError::Transport(reason)) if args.follow => {
                if !waiting {
                    eprintln!(
                        "weir logs: the server does not answer ({reason}); trying again every second"
                    );
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Ok(failed(output, &error)),
        };
        if waiting {
            eprintln!("weir logs: the server answers again");
            waiting = false;
        }
        if let Some(last) = lines.last() {
            after = Some(last.seq);
        }
        for line in &lines {
            match output {
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string(line).unwrap_or_default());
                }
                OutputFormat::Text => println!(
                    "{} {:<5} {}/{}: {}",
                    when_ms(line.at_ms),
                    line.level,
                    line.deployment.as_deref().unwrap_or("-"),
                    line.node.as_deref().unwrap_or("-"),
                    line.message
                ),
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) async fn state(args: StateArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let output = args.connection.output;
    match args.command {
        StateCommand::List => {
            let keys = call!(output, client.state_keys());
            print(output, &keys, |k| k.keys.join("\n"));
        }
        StateCommand::Get { key } => {
            let entry = call!(output, client.state_get(&key));
            print(output, &entry, |e| e.value.clone().unwrap_or_default());
        }
        StateCommand::Set { key, value } => {
            let entry = call!(output, client.state_set(&key, value.into_bytes()));
            print(output, &entry, |e| format!("set {}", e.key));
        }
        StateCommand::Delete { key } => {
            call!(output, client.state_delete(&key));
            print(output, &serde_json::json!({"deleted": key}), |_| {
                format!("deleted {key}")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
