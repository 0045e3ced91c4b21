//! `weir executor --join URL --token T`: an executor process. It joins the control plane with
//! its id, capacity and labels (the join token admits it), then heartbeats until stopped
//! (Ctrl-C or SIGTERM: it leaves cleanly). Every call after the join carries the session token
//! the join answered with ([`Session`]).
//!
//! Its id is unique per process (`--id`, or `<host>-<pid>-<start time>`), and is also the node
//! id of its hybrid logical clock. It long-polls its assignments
//! (`GET /v1/executors/{id}/assignments`), fetches each graph and module by digest (bytes that
//! do not match the digest are refused, never run), runs them on its own `LocalExecutor` (the
//! runtime of `weir serve`), stops what is no longer assigned, and reports what runs in its
//! heartbeats. Dead letters are kept in the control plane's journal
//! (`POST /v1/executors/{id}/deadletters`), as those of `weir serve`'s own deployments are.
//! Module log lines go there too (`POST /v1/executors/{id}/logs`), and every 2 s the metric
//! series and counters of each tenant's deployments (`POST /v1/executors/{id}/telemetry`), which
//! `/v1/metrics` and `GET /v1/deployments/{id}` show. Module state is kept in
//! this process's memory, or in the Redis named by `--state`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use weir_api::client::Client;
use weir_api::rest::{
    AssignedBinding, DeadLetter, ExecutorAssignment, ExecutorDeadLetters, ExecutorHeartbeat,
    ExecutorJoin, ExecutorJoined, ExecutorLogLines, ExecutorRunning, ExecutorTelemetry, LogLine,
    RefusedGeneration, Usage,
};
use weir_api::tenancy::Quotas;
use weir_api::{ModuleDigest, TenantId};
use weir_connectors::EndpointSpec;
use weir_executor::logs::{LogRecord, LogSink, TenantLogQueue};
use weir_executor::runtime::{Assignment, Binding, DeadLetterJournal, LocalExecutor};

/// `weir executor`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecutorArgs {
    /// A configuration file (TOML): the keys of `[executor]` (and the shared ones at its top)
    /// are these flags; a flag or its environment variable (`WEIR_` and the key in capitals)
    /// overrides the file. See `weir config example`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The control plane's API (`http://host:port` or `https://…`). Required (flag,
    /// environment or file).
    #[arg(long, value_parser = join_url)]
    join: Option<String>,
    /// The executor join token (`--executor-token` or `DATA/executor-token` of `weir serve`).
    /// Required (flag, environment or file).
    #[arg(long, visible_alias = "token", hide_env_values = true)]
    executor_token: Option<String>,
    /// This process's id (default: `<host>-<pid>-<start time>`), unique among live executors.
    #[arg(long)]
    id: Option<String>,
    /// Labels, `key=value` or `key`, repeated.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Dataflow workers (default: the cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// Linear memory offered to operator instances, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    memory_bytes: u64,
    /// Operator instance slots.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    instance_slots: u32,
    /// Where tenants' module state lives: `memory` (this process alone; lost when it stops,
    /// so a deployment placed again elsewhere starts with none) or
    /// `redis://[user:password@]host:port[/db]`: the Redis (and namespace) of the control
    /// plane's `--state` and of every other executor, so a deployment keeps its state when it
    /// moves and its instances share it. Taken from `WEIR_STATE` when not given, which keeps
    /// a password out of the process list.
    #[arg(long, default_value = "memory", hide_env_values = true)]
    state: String,
    /// The first part of every Redis key weir writes (letters, digits, `-`, `_`, `.`): the
    /// control plane's `--state-namespace`.
    #[arg(long, default_value = "weir")]
    state_namespace: String,
    /// Exit (instead of waiting to join again) once the control plane has not answered for
    /// the timeout or counts this executor out: for the children of `weir serve --executors N`,
    /// which end with their server.
    #[arg(long, hide = true)]
    exit_with_control_plane: bool,
}

/// A `--join` value: an absolute `http://` or `https://` URL with a host.
fn join_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(value.to_owned()),
        _ => Err(format!(
            "the control plane's URL is http://host:port (or https://…), not {value:?}"
        )),
    }
}

/// Dead letters of this process's deployments, kept in the control plane's journal
/// (`POST /v1/executors/{id}/deadletters`): sent in requests of at most
/// [`ExecutorDeadLetters::MAX_LETTERS`] letters and [`LETTER_REQUEST_BYTES`] of JSON, each
/// sent again (backing off up to 5 s) until the control plane has kept it, so a letter is
/// never lost nor kept twice while the control plane is away; its deployment's dead-letter
/// path waits meanwhile (as in `weir serve` while its store is unavailable).
#[derive(Debug)]
struct ForwardedLetters {
    session: Session,
    id: String,
}

/// This process's client of the control plane as the member it is now: it carries the session
/// token of its latest join (a join again gives a new one, and the old one is refused), so
/// what sends for a long time reads it afresh for every request.
#[derive(Debug, Clone)]
struct Session(Arc<std::sync::RwLock<Client>>);

impl Session {
    /// The session of a join answered with `joined`, on `join`'s server. A control plane
    /// that gives no session token (an older one) takes the join token on every route.
    fn new(join: &Client, joined: &ExecutorJoined) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Self::client_of(
            join, joined,
        ))))
    }

    fn client_of(join: &Client, joined: &ExecutorJoined) -> Client {
        if joined.session_token.is_empty() {
            join.clone()
        } else {
            join.with_token(joined.session_token.clone())
        }
    }

    /// The client of the current membership.
    fn client(&self) -> Client {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Joined again: the new membership's token from now on.
    fn renew(&self, join: &Client, joined: &ExecutorJoined) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Self::client_of(join, joined);
    }
}

/// JSON bytes of letters per request: half the route's limit, so no batch is refused for size
/// (a letter's payload is cut to 64 KiB, at most 6 bytes of JSON per byte).
const LETTER_REQUEST_BYTES: usize = ExecutorDeadLetters::MAX_BODY_BYTES / 2;

impl ForwardedLetters {
    /// Sends one request's letters until the control plane keeps them; their numbers.
    async fn send(&self, tenant: &TenantId, letters: Vec<DeadLetter>) -> Vec<u64> {
        let count = letters.len();
        let report = ExecutorDeadLetters {
            tenant: tenant.clone(),
            letters,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .session
                .client()
                .executor_dead_letters(&self.id, &report)
                .await
            {
                Ok(kept) => return kept.seqs,
                Err(error) => {
                    tracing::warn!(%tenant, count, %error, "dead letters not kept by the control plane yet; sending again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl DeadLetterJournal for ForwardedLetters {
    async fn append(
        &self,
        tenant: &TenantId,
        letters: Vec<DeadLetter>,
        _max_bytes: u64,
    ) -> Result<Vec<u64>, String> {
        // The control plane applies the tenant's max_dead_letter_bytes as it knows it.
        let mut seqs = Vec::with_capacity(letters.len());
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for letter in letters {
            let bytes = serde_json::to_vec(&letter).map_or(0, |json| json.len());
            if !batch.is_empty()
                && (batch.len() == ExecutorDeadLetters::MAX_LETTERS
                    || batch_bytes + bytes > LETTER_REQUEST_BYTES)
            {
                seqs.extend(self.send(tenant, std::mem::take(&mut batch)).await);
                batch_bytes = 0;
            }
            batch_bytes += bytes;
            batch.push(letter);
        }
        if !batch.is_empty() {
            seqs.extend(self.send(tenant, batch).await);
        }
        Ok(seqs)
    }
}

/// A follower of this executor's assignments from revision 0, with the revision it carried
/// out and its reports of what it started.
fn start_follower(
    executor: &Arc<LocalExecutor>,
    client: &Client,
    id: &str,
) -> (
    Arc<AtomicU64>,
    Arc<Mutex<Reports>>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let applied = Arc::new(AtomicU64::new(0));
    let reports: Arc<Mutex<Reports>> = Arc::default();
    let following = tokio::spawn(follow(
        executor.clone(),
        client.clone(),
        id.to_owned(),
        applied.clone(),
        reports.clone(),
    ));
    (applied, reports, following)
}

/// Stops every deployment this executor runs: the control plane counts it out, so they run
/// (or will) elsewhere, and two copies of one deployment would share its broker sessions.
async fn fence(executor: &LocalExecutor) {
    for running in executor.running().await {
        executor.forget(&running.tenant, &running.id).await;
        tracing::info!(tenant = %running.tenant, deployment = %running.id, "stopped: this executor is not a member");
    }
}

/// How often an executor process reports its telemetry: series and counters, per tenant.
const TELEMETRY_PERIOD: Duration = Duration::from_secs(2);

/// Reports what `/v1/metrics` and `GET /v1/deployments/{id}` show of this process's
/// deployments (`POST /v1/executors/{id}/telemetry`): every [`TELEMETRY_PERIOD`], for each
/// tenant with series or deployments here, its series and each deployment's counters, one
/// request per tenant (each replaces the previous one, so a report not taken is only late); a
/// tenant with nothing here any more gets one empty report, which makes the control plane
/// forget it.
fn forward_telemetry(
    executor: Arc<LocalExecutor>,
    session: Session,
    id: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reported: BTreeSet<TenantId> = BTreeSet::new();
        // Each tenant's additive usage as of its last report that was taken.
        let mut taken: HashMap<TenantId, Usage> = HashMap::new();
        let mut ticker = tokio::time::interval(TELEMETRY_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let running = executor.running().await;
            let present: BTreeSet<TenantId> = executor.metric_tenants().await.into_iter().collect();
            let gone: Vec<TenantId> = reported.difference(&present).cloned().collect();
            for tenant in present.iter().chain(&gone) {
                let mut series = if present.contains(tenant) {
                    executor.metrics(tenant).await
                } else {
                    Vec::new()
                };
                series.truncate(ExecutorTelemetry::MAX_SERIES);
                let mut deployments = BTreeMap::new();
                for instance in running.iter().filter(|r| r.tenant == *tenant) {
                    if deployments.len() == ExecutorTelemetry::MAX_DEPLOYMENTS {
                        break;
                    }
                    if let Some(status) = executor.status(tenant, &instance.id).await {
                        deployments.insert(instance.id.clone(), status);
                    }
                }
                let now = executor.usage(tenant);
                let before = taken.get(tenant).cloned().unwrap_or_default();
                let report = ExecutorTelemetry {
                    tenant: tenant.clone(),
                    series,
                    deployments,
                    usage: Usage {
                        messages_in: now.messages_in.saturating_sub(before.messages_in),
                        bytes_in: now.bytes_in.saturating_sub(before.bytes_in),
                        messages_out: now.messages_out.saturating_sub(before.messages_out),
                        fuel: now.fuel.saturating_sub(before.fuel),
                        state_ops: now.state_ops.saturating_sub(before.state_ops),
                        ..now.clone()
                    },
                };
                match session.client().executor_telemetry(&id, &report).await {
                    Ok(()) => {
                        taken.insert(tenant.clone(), now);
                    }
                    Err(error) => {
                        tracing::debug!(%tenant, %error, "telemetry not taken; the next report carries its usage too");
                    }
                }
            }
            taken.retain(|tenant, _| present.contains(tenant));
            reported = present;
        }
    })
}

/// Module log lines of one tenant waiting to be handed to the control plane at most; beyond,
/// that tenant's new lines are dropped (and counted) until it takes them again.
const LOG_QUEUE_PER_TENANT: usize = 10_000;
/// Bytes of module log lines waiting at most, all tenants together; a tenant keeps an even
/// share of them however much another logs (`TenantLogQueue`).
const LOG_QUEUE_BYTES: usize = 64 << 20;

/// Module log lines of this process's deployments, handed to the control plane
/// (`POST /v1/executors/{id}/logs`) by one task in requests of one tenant's lines (at most
/// [`ExecutorLogLines::MAX_LINES`] and half the route's byte limit), so `/v1/logs` shows them
/// as it shows those of `weir serve`'s own deployments. `record` only queues (it runs inside
/// a module's call), in a queue per tenant served in turn ([`TenantLogQueue`]), so a chatty
/// tenant's lines never crowd out another's. While the control plane does not answer, a
/// request is sent again and the queues hold what comes meanwhile; a request it refuses for
/// what it is (not for being unavailable) is dropped with a warning.
#[derive(Debug)]
struct ForwardedLogs {
    queue: Arc<TenantLogQueue>,
}

impl ForwardedLogs {
    /// The sink, and its task sending to the control plane as executor `id`.
    fn start(session: Session, id: String) -> Arc<Self> {
        let queue = Arc::new(TenantLogQueue::new(LOG_QUEUE_PER_TENANT, LOG_QUEUE_BYTES));
        let lines = queue.clone();
        tokio::spawn(async move {
            loop {
                let batch = lines.next(ExecutorLogLines::MAX_LINES).await;
                let converted = batch
                    .lines
                    .into_iter()
                    .map(|record| {
                        let (deployment, node) = match record.node.split_once('/') {
                            Some((d, n)) => (Some(d.to_owned()), Some(n.to_owned())),
                            None => (None, Some(record.node.clone())),
                        };
                        LogLine {
                            seq: 0,
                            at_ms: record
                                .at
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                            level: crate::observe::level_name(record.level).to_owned(),
                            deployment,
                            node,
                            message: record.message,
                        }
                    })
                    .collect();
                for chunk in log_chunks(converted) {
                    send_log_lines(&session, &id, &batch.tenant, chunk).await;
                }
                for answer in batch.synced {
                    let _sent = answer.send(());
                }
            }
        });
        Arc::new(Self { queue })
    }
}

/// `lines` in requests of at most half the route's byte limit (a line is cut to the tenant's
/// `max_log_line_bytes` before it gets here).
fn log_chunks(lines: Vec<LogLine>) -> Vec<Vec<LogLine>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for line in lines {
        let size = serde_json::to_vec(&line).map_or(0, |json| json.len());
        if !chunk.is_empty() && bytes + size > ExecutorLogLines::MAX_BODY_BYTES / 2 {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(line);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Sends one request's lines until the control plane takes them or refuses them for what
/// they are (a problem other than `not_found`, `unauthenticated` — a session being renewed —,
/// `rate_limited` or `unavailable`).
async fn send_log_lines(session: &Session, id: &str, tenant: &TenantId, lines: Vec<LogLine>) {
    let report = ExecutorLogLines {
        tenant: tenant.clone(),
        lines,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        match session.client().executor_log_lines(id, &report).await {
            Ok(()) => return,
            Err(error)
                if error.code().is_some_and(|code| {
                    !matches!(
                        code,
                        "not_found" | "unauthenticated" | "rate_limited" | "unavailable"
                    )
                }) =>
            {
                tracing::warn!(%tenant, count = report.lines.len(), %error, "module log lines refused by the control plane; dropped");
                return;
            }
            Err(error) => {
                tracing::debug!(%tenant, %error, "module log lines not taken yet; sending again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl LogSink for ForwardedLogs {
    fn record(&self, record: LogRecord) {
        // A full share is counted and warned of by the queue.
        let _queued = self.queue.push(record);
    }
}

fn binding(assigned: AssignedBinding) -> Binding {
    Binding {
        endpoint: EndpointSpec {
            name: assigned.endpoint,
            kind: assigned.kind,
            address: assigned.address,
            settings: assigned.settings,
            secret: assigned.secret,
        },
        topics: assigned.topics,
    }
}

/// An artifact by digest, checked against it by the client.
async fn artifact(client: &Client, id: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
    let digest = ModuleDigest::new(digest.to_owned())?;
    Ok(client.executor_artifact(id, &digest).await?)
}

/// Starts one assignment: its artifacts fetched by digest, then run.
async fn start(
    executor: &LocalExecutor,
    client: &Client,
    id: &str,
    assigned: ExecutorAssignment,
) -> anyhow::Result<()> {
    let graph = String::from_utf8(artifact(client, id, &assigned.graph).await?)
        .context("the graph is not UTF-8")?;
    let mut modules = BTreeMap::new();
    for (reference, digest) in &assigned.modules {
        modules.insert(reference.clone(), artifact(client, id, digest).await?);
    }
    executor
        .start(Assignment {
            tenant: assigned.tenant,
            quotas: assigned.quotas,
            id: assigned.id,
            graph,
            modules,
            configuration: assigned.configuration,
            source: binding(assigned.source),
            sink: binding(assigned.sink),
            dead_letters: assigned.dead_letters.map(binding),
            partition_key: assigned.partition_key,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(())
}

/// How long a deployment that ran here before this membership (the control plane restarted)
/// keeps running unassigned: the control plane places every deployment again within a few
/// reconcile rounds of the executors joining it again, here or elsewhere.
const ORPHAN_GRACE: Duration = Duration::from_secs(15);

/// Follows this executor's assignments until the control plane no longer counts it a member:
/// starts what is new or changed, forgets what is gone, and publishes the revision carried out.
async fn follow(
    executor: Arc<LocalExecutor>,
    client: Client,
    id: String,
    applied: Arc<AtomicU64>,
    reports: Arc<Mutex<Reports>>,
) -> anyhow::Result<()> {
    let mut after = 0;
    let mut started: HashMap<(TenantId, String), u64> = HashMap::new();
    // Deployments running here that this membership did not start (they ran before the
    // control plane restarted), with since when they are not assigned here.
    // Between failed polls: 200 ms, doubling to 5 s while the control plane does not answer.
    const RETRY_FIRST: Duration = Duration::from_millis(200);
    const RETRY_MOST: Duration = Duration::from_secs(5);
    let mut retry = RETRY_FIRST;
    let joined_at = std::time::Instant::now();
    let mut orphans: HashMap<(TenantId, String), std::time::Instant> = executor
        .running()
        .await
        .into_iter()
        .map(|running| ((running.tenant, running.id), joined_at))
        .collect();
    // The quotas applied per tenant with assignments here.
    let mut quotas: HashMap<TenantId, Quotas> = HashMap::new();
    loop {
        // While copies from before a re-join wait for their grace, ask again every second so
        // they stop on time.
        let wait_ms = if orphans.is_empty() { 10_000 } else { 1_000 };
        let answer = match client.executor_assignments(&id, after, wait_ms).await {
            Ok(answer) => {
                retry = RETRY_FIRST;
                answer
            }
            // Not a member (now): the heartbeat loop joins again and starts a new follower.
            Err(error) if error.code() == Some("not_found") => {
                tracing::debug!(%error, "not a member; waiting to join again");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MOST);
                continue;
            }
            Err(error) => {
                // Said once per outage, not at every try.
                if retry == RETRY_FIRST {
                    tracing::warn!(%error, "assignments unavailable; asking again");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MOST);
                continue;
            }
        };
        let wanted: HashMap<(TenantId, String), u64> = answer
            .assignments
            .iter()
            .map(|a| ((a.tenant.clone(), a.id.clone()), a.generation))
            .collect();
        let gone: Vec<(TenantId, String)> = started
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            let retired = answer
                .retired
                .iter()
                .any(|r| r.tenant == key.0 && r.id == key.1);
            if retired {
                // Scaled away or deleted: it finishes its messages and ends its broker session.
                executor.retire(&key.0, &key.1).await;
                tracing::info!(tenant = %key.0, deployment = %key.1, "retired");
            } else {
                // Moved, paused or updated: its broker session stays for the next copy.
                executor.forget(&key.0, &key.1).await;
                tracing::info!(tenant = %key.0, deployment = %key.1, "unassigned: stopped");
            }
            started.remove(&key);
            reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        // What ran here before this membership (a control plane that restarted forgot where
        // things ran and places them again): a copy it does not assign here within
        // ORPHAN_GRACE runs elsewhere by then, so it stops here (its broker session stays for
        // that copy) and no deployment runs twice.
        let now = std::time::Instant::now();
        for running in executor.running().await {
            let key = (running.tenant, running.id);
            if wanted.contains_key(&key) || started.contains_key(&key) {
                orphans.remove(&key);
                continue;
            }
            let since = *orphans.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= ORPHAN_GRACE {
                executor.forget(&key.0, &key.1).await;
                orphans.remove(&key);
                tracing::info!(tenant = %key.0, deployment = %key.1, "not assigned here since the control plane came back: stopped");
            }
        }
        // Changed quotas (an admin's change, sent in every assignment of the tenant) apply to
        // what runs at once; a start below applies its own.
        let mut wanted_quotas: HashMap<TenantId, Quotas> = HashMap::new();
        for assigned in &answer.assignments {
            wanted_quotas
                .entry(assigned.tenant.clone())
                .or_insert_with(|| assigned.quotas.clone());
        }
        for (tenant, wanted) in &wanted_quotas {
            if quotas.get(tenant).is_some_and(|applied| applied != wanted) {
                executor.set_quotas(tenant, wanted);
                tracing::info!(%tenant, "the tenant's quotas changed: applied");
            }
        }
        quotas = wanted_quotas;
        for assigned in answer.assignments {
            let key = (assigned.tenant.clone(), assigned.id.clone());
            if started.get(&key) == Some(&assigned.generation) {
                continue;
            }
            let (generation, revision) = (assigned.generation, assigned.revision);
            let previous = started.insert(key.clone(), generation);
            // A deployment that runs already is swapped by a rolling update (the new version
            // starts, the old one drains and stops): `LocalExecutor::start`.
            match start(&executor, &client, &id, assigned).await {
                Ok(()) => {
                    tracing::info!(tenant = %key.0, deployment = %key.1, generation, revision, "assigned: started");
                    reports
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key, (generation, None));
                }
                Err(error) => {
                    tracing::warn!(tenant = %key.0, deployment = %key.1, generation, revision, %error, "assigned, but it did not start");
                    let mut reports = reports.lock().unwrap_or_else(PoisonError::into_inner);
                    let refused = RefusedGeneration {
                        generation,
                        error: format!("{error:#}"),
                    };
                    if let (Some(previous), Some(report)) = (previous, reports.get_mut(&key)) {
                        // The old generation keeps running: reported with why the new one
                        // did not start (the control plane assigns the old one again).
                        report.1 = Some(refused);
                        started.insert(key, previous);
                    } else {
                        // Not running at all: reported as not started, with why (the
                        // generation and its refusal alike), until it is assigned anew.
                        reports.insert(key, (generation, Some(refused)));
                    }
                }
            }
        }
        after = answer.revision;
        applied.store(after, Ordering::Release);
    }
}

/// Per deployment started here: the generation that runs, and a newer one that did not start
/// (with why), for the heartbeats.
type Reports = HashMap<(TenantId, String), (u64, Option<RefusedGeneration>)>;

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

/// What a start refuses beyond each value alone: a `--state` of the wrong shape. Also
/// `weir config check`'s (which does not ask for `join` and the token: a file may configure
/// `weir serve` alone).
pub(crate) fn start_problems(args: &ExecutorArgs) -> Vec<String> {
    if args.state == "memory" || args.state.starts_with("redis://") {
        Vec::new()
    } else {
        vec![format!(
            "--state {:?}: expected `memory` or redis://host:port[/db]",
            weir_state::masked_url(&args.state)
        )]
    }
}

pub(crate) async fn run(args: ExecutorArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(problem) = start_problems(&args).into_iter().next() {
        anyhow::bail!(problem);
    }
    let (Some(join_url), Some(token)) = (args.join.clone(), args.executor_token.clone()) else {
        anyhow::bail!(
            "weir executor needs the control plane and its join token: --join URL and \
             --executor-token T (or WEIR_JOIN and WEIR_EXECUTOR_TOKEN, or join and \
             executor_token in the [executor] section of --config)"
        );
    };
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
    // Before joining: a state store that cannot be reached fails the start, not a placement.
    let state: Arc<dyn weir_state::StateStore> = match args.state.as_str() {
        "memory" => Arc::new(weir_state::MemoryStateStore::new(join.id.clone())),
        url if url.starts_with("redis://") => {
            crate::serve::redis_state_store(url, &args.state_namespace, format!("weir@{}", join.id))
                .await?
        }
        other => anyhow::bail!(
            "--state {:?}: expected `memory` or redis://host:port[/db]",
            weir_state::masked_url(other)
        ),
    };
    // The join token admits this process; every other call carries the session token the
    // join answers with.
    let admission = Client::new(&join_url, Some(token))?;
    // A control plane that is not up yet (started after its executors, or restarting) is
    // waited for; one that refuses the join (token, id, capacity) is an error.
    let mut backoff = Duration::from_secs(1);
    let joined = loop {
        match admission.join_executor(&join).await {
            Ok(joined) => break joined,
            // A child of `weir serve --executors N` goes with its control plane instead.
            Err(error)
                if !args.exit_with_control_plane
                    && (error.code().is_none() || error.code() == Some("unavailable")) =>
            {
                eprintln!(
                    "weir executor: cannot reach {join_url} yet ({error}); trying again in {} s",
                    backoff.as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!("cannot join {join_url}")));
            }
        }
    };
    let session = Session::new(&admission, &joined);
    let engine = tokio::task::spawn_blocking(|| {
        weir_executor::OperatorEngine::new(&weir_executor::EngineConfig::default())
    })
    .await
    .context("the engine's start panicked")??;
    let executor = Arc::new(
        LocalExecutor::new(weir_executor::runtime::ExecutorConfig {
            engine,
            settings: weir_executor::dataflow::DataflowSettings::default(),
            workers: usize::try_from(workers).unwrap_or(1).max(1),
            state: Arc::new(weir_state::MeteredStateStore::new(state)),
            connectors: weir_connectors::Registry::standard(),
            journal: Arc::new(ForwardedLetters {
                session: session.clone(),
                id: join.id.clone(),
            }),
            default_broker: None,
        })
        .map_err(|e| anyhow::anyhow!("cannot start the executor: {}", e.message))?,
    );
    executor.forward_logs(ForwardedLogs::start(session.clone(), join.id.clone()));
    let telemetry = forward_telemetry(executor.clone(), session.clone(), join.id.clone());
    // Tests and scripts read this line.
    println!("executor {} joined {}", join.id, join_url);
    let (mut applied, mut reports, mut following) =
        start_follower(&executor, &session.client(), &join.id);
    let period = Duration::from_millis(joined.heartbeat_ms.max(10));
    let timeout = Duration::from_millis(joined.timeout_ms);
    let mut last_heard = std::time::Instant::now();
    // Whether this executor stopped its deployments because the control plane counts it out
    // (or could not be reached for longer than the timeout): they run elsewhere by now.
    let mut fenced = false;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = crate::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ended = &mut following => {
                return match ended {
                    Ok(Err(error)) => Err(error),
                    Ok(Ok(())) => Ok(std::process::ExitCode::SUCCESS),
                    Err(error) => Err(anyhow::anyhow!("the assignment follower failed: {error}")),
                };
            }
            _ = ticker.tick() => {}
        }
        // The revision first: what runs is read after it, so nothing it started is missed.
        let revision = applied.load(Ordering::Acquire);
        let running = executor.running().await;
        let running = {
            let reports = reports.lock().unwrap_or_else(PoisonError::into_inner);
            // Assignments that did not start at all (none of their generations runs here).
            let failed: Vec<_> = reports
                .iter()
                .filter(|(key, _)| !running.iter().any(|r| r.tenant == key.0 && r.id == key.1))
                .filter_map(|(key, (generation, refused))| {
                    let refused = refused.as_ref()?;
                    (refused.generation == *generation)
                        .then(|| (key.clone(), (*generation, refused.error.clone())))
                })
                .collect();
            running
                .into_iter()
                .map(|running| {
                    let (generation, refused) = reports
                        .get(&(running.tenant.clone(), running.id.clone()))
                        .cloned()
                        .unwrap_or_default();
                    ExecutorRunning {
                        tenant: running.tenant,
                        id: running.id,
                        problem: running.problem,
                        generation,
                        refused,
                        not_started: false,
                        starting: running.starting,
                    }
                })
                .chain(
                    failed
                        .into_iter()
                        .map(|((tenant, id), (generation, error))| ExecutorRunning {
                            tenant,
                            id,
                            problem: Some(format!("did not start: {error}")),
                            generation,
                            refused: None,
                            not_started: true,
                            starting: false,
                        }),
                )
                .collect()
        };
        match session
            .client()
            .executor_heartbeat(&join.id, &ExecutorHeartbeat { running, revision })
            .await
        {
            Ok(()) => {
                last_heard = std::time::Instant::now();
                if fenced {
                    // Still a member after all (the control plane was away, not this one):
                    // what it assigns starts again.
                    following.abort();
                    (applied, reports, following) =
                        start_follower(&executor, &session.client(), &join.id);
                    fenced = false;
                }
            }
            // Not (or no longer) a member: the control plane restarted and forgot its members
            // (`not_found`), or declared this one lost (`conflict`). Join again under the same
            // id. A control plane that just restarted places work here again (what runs goes
            // on until then and is adopted); one that declared it lost placed its deployments
            // elsewhere, so they stop here before it joins as a new member.
            // Its session refused (`unauthenticated`): another process joined under this id
            // since (this one was lost meanwhile), so it is counted out as for `conflict`.
            Err(error)
                if args.exit_with_control_plane
                    && (matches!(
                        error.code(),
                        Some("conflict" | "not_found" | "unauthenticated")
                    ) || last_heard.elapsed() > timeout) =>
            {
                anyhow::bail!("the control plane of this executor is gone: {error}");
            }
            Err(error)
                if matches!(
                    error.code(),
                    Some("conflict" | "not_found" | "unauthenticated")
                ) =>
            {
                if error.code() != Some("not_found") && !fenced {
                    tracing::warn!(%error, "the control plane declared this executor lost; its deployments stop here and it joins again");
                    // No start of the old membership's may follow the fence: its follower
                    // goes (a new one starts once joined).
                    following.abort();
                    following = tokio::spawn(std::future::pending());
                    fence(&executor).await;
                    fenced = true;
                }
                match admission.join_executor(&join).await {
                    Ok(joined) => {
                        session.renew(&admission, &joined);
                        println!("executor {} joined {} again", join.id, join_url);
                        // The new membership numbers assignments from the start.
                        following.abort();
                        (applied, reports, following) =
                            start_follower(&executor, &session.client(), &join.id);
                        last_heard = std::time::Instant::now();
                        fenced = false;
                    }
                    Err(refused) => {
                        if !fenced {
                            tracing::warn!(%error, %refused, "the control plane counts this executor out; its deployments stop here and it asks to join again");
                            following.abort();
                            following = tokio::spawn(std::future::pending());
                            fence(&executor).await;
                            fenced = true;
                        }
                    }
                }
            }
            // Unreachable for longer than the timeout: the control plane has declared this
            // executor lost and placed its deployments elsewhere (or is away), so they stop
            // here; it keeps asking, and joins again once it is answered.
            Err(error) if last_heard.elapsed() > timeout => {
                if !fenced {
                    tracing::warn!(%error, timeout_ms = timeout.as_millis(), "the control plane did not answer within the timeout; this executor's deployments stop until it joins again");
                    // Its follower goes too (a new one starts once it is a member again).
                    following.abort();
                    following = tokio::spawn(std::future::pending());
                    fence(&executor).await;
                    fenced = true;
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed; retrying"),
        }
    }
    following.abort();
    telemetry.abort();
    session
        .client()
        .leave_executor(&join.id)
        .await
        .context("cannot leave the control plane")?;
    println!("executor {} left", join.id);
    Ok(std::process::ExitCode::SUCCESS)
}
