//! A `weir serve` child process for the end-to-end benches (cold start, density): started on a
//! data directory and free loopback ports, killed when dropped, with the API client helpers and
//! the `/proc` readings the benches report. Included by each bench binary with `mod`.
#![allow(dead_code, reason = "each bench binary uses a part of these helpers")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_api::client::{Client, HttpMethod};
use weir_api::rest::{CreateDeployment, CreateTenant, GraphRef, MintToken};
use weir_api::tenancy::Role;

/// A running `weir serve`, killed (SIGKILL, as a crash would) when dropped.
pub(crate) struct Server {
    child: Child,
    /// `host:port` of the API.
    pub(crate) address: String,
    /// The admin token printed on first start.
    pub(crate) admin_token: Option<String>,
    /// What it printed before `weir listening on`.
    pub(crate) lines: Vec<String>,
    /// From spawning the process to its `weir listening on` line (deployments are resumed
    /// before it).
    pub(crate) listening_after: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

impl Server {
    /// Starts `weir serve` on `data` with `extra` arguments and waits for its API.
    pub(crate) fn start(weir: &str, data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = Command::new(weir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {weir}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut server = Self {
            child,
            address: String::new(),
            admin_token: None,
            lines: Vec::new(),
            listening_after: Duration::ZERO,
        };
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some(token) = line
                .split("admin token (shown once, valid 365 days): ")
                .nth(1)
            {
                server.admin_token = Some(token.trim().to_owned());
            }
            if let Some(address) = line.strip_prefix("weir listening on http://") {
                server.address = address.trim().to_owned();
                server.listening_after = started.elapsed();
                // Keep reading what it prints later, so a full pipe never stalls it.
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(server);
            }
            server.lines.push(line);
        }
        anyhow::bail!(
            "weir serve exited before listening; it printed {:?}",
            server.lines
        )
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client acting with `token`.
    pub(crate) fn client(&self, token: &str) -> anyhow::Result<Client> {
        Ok(Client::new(
            &format!("http://{}", self.address),
            Some(token.to_owned()),
        )?)
    }

    /// A client with the admin token of the first start.
    pub(crate) fn admin(&self) -> anyhow::Result<Client> {
        self.client(self.admin_token.as_deref().context("not a first start")?)
    }

    /// The line with the engine's compile counts (`modules: N compiled, M loaded ...`).
    pub(crate) fn compile_line(&self) -> &str {
        self.lines
            .iter()
            .find(|line| line.starts_with("modules: "))
            .map_or("", String::as_str)
    }
}

/// Creates tenant `id`, sets `quotas` (a partial quota document), and returns a client with a
/// developer token of it.
pub(crate) async fn tenant(
    admin: &Client,
    id: &str,
    quotas: &serde_json::Value,
) -> anyhow::Result<Client> {
    admin
        .create_tenant(&CreateTenant {
            id: id.to_owned(),
            display_name: None,
            quotas: None,
        })
        .await?;
    let (status, body) = admin
        .raw(
            HttpMethod::PUT,
            &format!("/v1/tenants/{id}/quotas"),
            Some("application/json"),
            serde_json::to_vec(quotas)?,
        )
        .await?;
    anyhow::ensure!(
        status.is_success(),
        "quotas: {}",
        String::from_utf8_lossy(&body)
    );
    let minted = admin
        .mint_token(&MintToken {
            subject: format!("{id}-bench"),
            role: Role::Developer,
            ttl_seconds: None,
            tenant: Some(id.to_owned()),
        })
        .await?;
    Ok(admin.with_token(minted.token.context("token text")?))
}

/// A deployment `id` of graph `name` version `version`, HTTP in and out.
pub(crate) fn deployment(id: &str, name: &str, version: &str) -> CreateDeployment {
    CreateDeployment {
        id: id.to_owned(),
        graph: GraphRef {
            name: name.to_owned(),
            version: version.to_owned(),
        },
        configuration: Default::default(),
        source: Default::default(),
        sink: Default::default(),
        dead_letters: None,
        instances: 1,
        partition_key: None,
    }
}

/// A one-map graph `name` (version 1) running `module:1.0.0`.
pub(crate) fn map_graph(name: &str, module: &str) -> String {
    format!(
        "metadata: {{$schema: s, name: {name}, version: '1'}}\nmoduleRequirements: {{apiVersion: '1.1.0', runtimeVersion: '1.1.0'}}\noperations:\n  - {{operationType: source, name: source}}\n  - {{operationType: map, name: map, module: '{module}:1.0.0'}}\n  - {{operationType: sink, name: sink}}\nconnections:\n  - {{from: {{name: source}}, to: {{name: map}}}}\n  - {{from: {{name: map}}, to: {{name: sink}}}}\n"
    )
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`, ...).
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resident KiB of the process by mapping kind, from `/proc/PID/smaps`: `[heap]`, `[stack]`,
/// anonymous mappings (`[anon]`), and files by path.
pub(crate) fn smaps_rss(pid: u32) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut by_kind = std::collections::BTreeMap::new();
    let mut current = String::from("[anon]");
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: address perms offset dev inode [path].
            let path = fields.nth(4).unwrap_or("[anon]");
            current = if path.starts_with("[stack") {
                "[stack]".to_owned()
            } else {
                path.to_owned()
            };
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *by_kind.entry(current.clone()).or_insert(0) += kib;
        }
    }
    Ok(by_kind)
}

/// The value at quantile `q` of a sorted sample (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short, sorted sample"
    )]
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

/// Milliseconds of a duration, for printing.
pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Prints a figure for the report generator: `RESULT key=value`.
pub(crate) fn result(key: &str, value: f64) {
    println!("RESULT {key}={value:.3}");
}

/// Prints what a figure measured: `DESCRIBE key=text`.
pub(crate) fn describe(key: &str, text: &str) {
    println!("DESCRIBE {key}={text}");
}
