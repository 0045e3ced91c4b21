//! `weir executor --join URL --token T`: an executor process. It joins the control plane with
//! its id, capacity and labels, then heartbeats until stopped (Ctrl-C: it leaves cleanly).
//!
//! Its id is unique per process (`--id`, or `<host>-<pid>-<start time>`), and is also the node
//! id of its hybrid logical clock. Running assignments is the next step of issue 13: for now the
//! process is a member of the pool (listed, heartbeating, declared lost when it stops
//! answering) and the control plane's in-process executor runs the deployments.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use weir_api::client::Client;
use weir_api::rest::{ExecutorHeartbeat, ExecutorJoin};

/// `weir executor`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecutorArgs {
    /// The control plane's API (`http://host:port`).
    #[arg(long)]
    join: String,
    /// The executor join token (`DATA/executor-token` of `weir serve`).
    #[arg(long, env = "WEIR_EXECUTOR_TOKEN", hide_env_values = true)]
    token: String,
    /// This process's id (default: `<host>-<pid>-<start time>`), unique among live executors.
    #[arg(long)]
    id: Option<String>,
    /// Labels, `key=value` or `key`, repeated.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Dataflow workers (default: the cores).
    #[arg(long)]
    workers: Option<u32>,
    /// Linear memory offered to operator instances, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    memory_bytes: u64,
    /// Operator instance slots.
    #[arg(long, default_value_t = 1000)]
    instance_slots: u32,
}

/// `<host>-<pid>-<start time in ms, hex>`: unique per process on a host, and across hosts by
/// the host name.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect();
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let host = if host.is_empty() {
        "executor".to_owned()
    } else {
        host
    };
    format!("{host}-{}-{started:x}", std::process::id())
}

pub(crate) async fn run(args: ExecutorArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = label.split_once('=').unwrap_or((label, ""));
        labels.insert(key.to_owned(), value.to_owned());
    }
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    });
    let join = ExecutorJoin {
        id: args.id.clone().unwrap_or_else(default_id),
        workers,
        memory_bytes: args.memory_bytes,
        instance_slots: args.instance_slots,
        labels,
    };
    let client = Client::new(&args.join, Some(args.token.clone()))?;
    let joined = client
        .join_executor(&join)
        .await
        .with_context(|| format!("cannot join {}", args.join))?;
    // Tests and scripts read this line.
    println!("executor {} joined {}", join.id, args.join);
    let period = Duration::from_millis(joined.heartbeat_ms.max(10));
    let timeout = Duration::from_millis(joined.timeout_ms);
    let mut last_heard = std::time::Instant::now();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        match client
            .executor_heartbeat(&join.id, &ExecutorHeartbeat::default())
            .await
        {
            Ok(()) => last_heard = std::time::Instant::now(),
            // Declared lost or forgotten: its work went elsewhere; a new process (new id) joins.
            Err(error) if matches!(error.code(), Some("conflict" | "not_found")) => {
                anyhow::bail!(
                    "the control plane no longer counts executor {} as a member: {error}",
                    join.id
                );
            }
            // Unreachable for longer than the timeout: the control plane has declared this
            // executor lost (or is gone), so it stops too.
            Err(error) if last_heard.elapsed() > timeout => {
                anyhow::bail!(
                    "the control plane did not answer for {} ms: {error}",
                    timeout.as_millis()
                );
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed; retrying"),
        }
    }
    client
        .leave_executor(&join.id)
        .await
        .context("cannot leave the control plane")?;
    println!("executor {} left", join.id);
    Ok(std::process::ExitCode::SUCCESS)
}
