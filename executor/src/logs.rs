//! Modules' log lines (from `logger` and from stdout/stderr), kept per tenant.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use weir_api::TenantId;

/// Severity of a log line, as the `logger` interface names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Variable values and control flow.
    Trace,
    /// Of interest when debugging.
    Debug,
    /// Of interest when monitoring.
    Info,
    /// Hazardous situations.
    Warn,
    /// Serious errors.
    Error,
    /// Fatal errors.
    Critical,
}

/// One line of a tenant's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Whose line it is.
    pub tenant: TenantId,
    /// The node that wrote it.
    pub node: String,
    /// Its severity.
    pub level: LogLevel,
    /// The module's grouping string (`stdout`/`stderr` for captured output).
    pub context: String,
    /// The text, cut to the tenant's line limit.
    pub message: String,
    /// When it was written.
    pub at: SystemTime,
}

/// Where log lines go. Implementations keep tenants apart: a reader asks for one tenant's lines.
pub trait LogSink: Send + Sync + std::fmt::Debug {
    /// Keeps `record`.
    fn record(&self, record: LogRecord);
}

/// The embedded log: the newest lines of each tenant (up to its `max_log_lines` quota, see
/// [`set_capacity`](Self::set_capacity)), in memory, also sent to `tracing` with the tenant and
/// node as fields. Lines are numbered per tenant, so a tenant's numbers say nothing of others.
#[derive(Debug)]
pub struct MemoryLogSink {
    capacity: usize,
    tenants: Mutex<HashMap<TenantId, TenantLog>>,
    /// Where every line also goes (the durable log of `weir serve`), once set.
    forward: std::sync::OnceLock<std::sync::Arc<dyn LogSink>>,
}

#[derive(Debug)]
struct TenantLog {
    capacity: usize,
    next_seq: u64,
    lines: VecDeque<(u64, LogRecord)>,
}

impl TenantLog {
    fn trim(&mut self) {
        while self.lines.len() > self.capacity {
            self.lines.pop_front();
        }
    }
}

impl MemoryLogSink {
    /// Keeps up to `capacity` lines per tenant (unless [`set_capacity`](Self::set_capacity) says
    /// otherwise for a tenant), dropping the oldest.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tenants: Mutex::new(HashMap::new()),
            forward: std::sync::OnceLock::new(),
        }
    }

    /// Sends every line from now on to `sink` as well (once; a second call is ignored and
    /// says so with `false`).
    pub fn forward_to(&self, sink: std::sync::Arc<dyn LogSink>) -> bool {
        self.forward.set(sink).is_ok()
    }

    /// Keeps up to `capacity` lines of `tenant` from now on (its `max_log_lines` quota); older
    /// lines over the new bound go at once.
    pub fn set_capacity(&self, tenant: &TenantId, capacity: usize) {
        let mut tenants = self.lock();
        let log = tenants.entry(tenant.clone()).or_insert_with(|| TenantLog {
            capacity,
            next_seq: 1,
            lines: VecDeque::new(),
        });
        log.capacity = capacity;
        log.trim();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, TenantLog>> {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept lines of `tenant`, oldest first.
    pub fn lines(&self, tenant: &TenantId) -> Vec<LogRecord> {
        self.lines_after(tenant, 0, usize::MAX)
            .into_iter()
            .map(|(_, record)| record)
            .collect()
    }

    /// The kept lines of `tenant` with a sequence number above `after`, oldest first, each with
    /// its number (increasing per tenant, from 1, so a follower passes the last one it saw).
    pub fn lines_after(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Vec<(u64, LogRecord)> {
        self.lock()
            .get(tenant)
            .map(|log| {
                log.lines
                    .iter()
                    .filter(|(seq, _)| *seq > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a tenant's lines (the tenant was deleted).
    pub fn forget(&self, tenant: &TenantId) {
        self.lock().remove(tenant);
    }
}

impl LogSink for MemoryLogSink {
    fn record(&self, record: LogRecord) {
        tracing::debug!(
            tenant = %record.tenant,
            node = %record.node,
            level = ?record.level,
            context = %record.context,
            "{}",
            record.message
        );
        if let Some(forward) = self.forward.get() {
            forward.record(record.clone());
        }
        let mut tenants = self.lock();
        let log = tenants
            .entry(record.tenant.clone())
            .or_insert_with(|| TenantLog {
                capacity: self.capacity,
                next_seq: 1,
                lines: VecDeque::new(),
            });
        if log.capacity == 0 {
            return;
        }
        let seq = log.next_seq;
        log.next_seq += 1;
        log.lines.push_back((seq, record));
        log.trim();
    }
}

/// What a [`TenantLogQueue`] hands out: one tenant's lines, oldest first, and the
/// [`TenantLogQueue::sync`] calls queued among them, to answer once the lines are kept.
#[derive(Debug)]
pub struct LogBatch {
    /// Whose lines they are.
    pub tenant: TenantId,
    /// The lines.
    pub lines: Vec<LogRecord>,
    /// Waiting for these lines to be kept.
    pub synced: Vec<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Debug)]
enum Queued {
    Line(LogRecord),
    Sync(tokio::sync::oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Queues {
    /// Per tenant with anything queued: its entries and how many are lines.
    tenants: HashMap<TenantId, (VecDeque<Queued>, usize)>,
    /// Tenants with anything queued, in the order they are served.
    turn: VecDeque<TenantId>,
}

/// Module log lines on their way to where they are kept (a store, or the control plane), one
/// bounded queue per tenant served in turn: a tenant whose modules log faster than lines are
/// kept fills only its own share (`per_tenant` lines; beyond, its new lines are dropped and
/// counted), and another tenant's lines wait for at most one batch of each other tenant's
/// before they are taken. Entries exist only for tenants with lines queued.
#[derive(Debug)]
pub struct TenantLogQueue {
    per_tenant: usize,
    queues: Mutex<Queues>,
    ready: tokio::sync::Notify,
    dropped: std::sync::atomic::AtomicU64,
}

impl TenantLogQueue {
    /// A queue holding at most `per_tenant` lines of each tenant.
    pub fn new(per_tenant: usize) -> Self {
        Self {
            per_tenant: per_tenant.max(1),
            queues: Mutex::default(),
            ready: tokio::sync::Notify::new(),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `record`; false (dropped, counted) when its tenant's share is full.
    pub fn push(&self, record: LogRecord) -> bool {
        {
            let mut queues = self.queues();
            let Queues { tenants, turn } = &mut *queues;
            let (entries, lines) = tenants.entry(record.tenant.clone()).or_insert_with(|| {
                turn.push_back(record.tenant.clone());
                (VecDeque::new(), 0)
            });
            if *lines >= self.per_tenant {
                drop(queues);
                let dropped = self
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        tenant = %record.tenant,
                        "module log lines dropped: the tenant's share of the log queue is full"
                    );
                }
                return false;
            }
            *lines += 1;
            entries.push_back(Queued::Line(record));
        }
        self.ready.notify_one();
        true
    }

    /// Resolves once every line of `tenant` queued before the call was handed out and kept
    /// (its [`LogBatch::synced`] answered), or the queue's reader is gone. Callers bound the
    /// wait (each call queues one marker, beside the tenant's lines).
    pub async fn sync(&self, tenant: &TenantId) {
        let (answer, kept) = tokio::sync::oneshot::channel();
        {
            let mut queues = self.queues();
            let Queues { tenants, turn } = &mut *queues;
            // Queued even with no line of the tenant's waiting: the reader answers it after the
            // batch it is keeping now, which may be this tenant's.
            let (entries, _) = tenants.entry(tenant.clone()).or_insert_with(|| {
                turn.push_back(tenant.clone());
                (VecDeque::new(), 0)
            });
            entries.push_back(Queued::Sync(answer));
        }
        self.ready.notify_one();
        let _kept = kept.await;
    }

    /// Lines dropped so far because their tenant's share was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The next tenant's lines in turn, at most `max`; waits while nothing is queued.
    pub async fn next(&self, max: usize) -> LogBatch {
        loop {
            let ready = self.ready.notified();
            if let Some(batch) = self.take(max.max(1)) {
                return batch;
            }
            ready.await;
        }
    }

    fn take(&self, max: usize) -> Option<LogBatch> {
        let mut queues = self.queues();
        let Queues { tenants, turn } = &mut *queues;
        let tenant = turn.pop_front()?;
        let (entries, lines) = tenants.get_mut(&tenant)?;
        let mut batch = LogBatch {
            tenant: tenant.clone(),
            lines: Vec::new(),
            synced: Vec::new(),
        };
        while batch.lines.len() < max {
            match entries.pop_front() {
                Some(Queued::Line(line)) => {
                    *lines -= 1;
                    batch.lines.push(line);
                }
                Some(Queued::Sync(answer)) => batch.synced.push(answer),
                None => break,
            }
        }
        if entries.is_empty() {
            tenants.remove(&tenant);
        } else {
            turn.push_back(tenant);
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::panic,
        reason = "test code: a failed expectation is a failed test"
    )]

    use super::*;

    fn line(tenant: &TenantId, n: usize) -> LogRecord {
        LogRecord {
            tenant: tenant.clone(),
            node: "d/m".to_owned(),
            level: LogLevel::Info,
            context: String::new(),
            message: format!("line {n}"),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn a_chatty_tenant_fills_only_its_own_share_and_a_quiet_ones_lines_come_next() {
        let chatty = TenantId::new("chatty").unwrap();
        let quiet = TenantId::new("quiet").unwrap();
        let queue = TenantLogQueue::new(100);
        let taken = (0..10_000)
            .filter(|n| queue.push(line(&chatty, *n)))
            .count();
        assert_eq!(taken, 100, "the chatty tenant's share");
        assert_eq!(queue.dropped(), 9_900);
        // The quiet tenant's lines are all taken, however full the chatty one's share is.
        for n in 0..10 {
            assert!(queue.push(line(&quiet, n)));
        }
        // Served in turn: one batch of the chatty tenant's, then the quiet one's.
        let first = queue.next(30).await;
        assert_eq!((first.tenant.as_str(), first.lines.len()), ("chatty", 30));
        let second = queue.next(30).await;
        assert_eq!((second.tenant.as_str(), second.lines.len()), ("quiet", 10));
        assert_eq!(second.lines[0].message, "line 0");
        // Taking frees the chatty tenant's share again.
        assert!(queue.push(line(&chatty, 10_000)));
        let mut left = 0;
        while let Some(batch) = queue.take(1_000) {
            assert_eq!(batch.tenant, chatty);
            left += batch.lines.len();
        }
        assert_eq!(left, 71);
    }

    #[tokio::test]
    async fn a_sync_is_answered_once_the_lines_before_it_are_handed_out() {
        let tenant = TenantId::new("t").unwrap();
        let queue = TenantLogQueue::new(100);
        for n in 0..5 {
            queue.push(line(&tenant, n));
        }
        let waiting = queue.sync(&tenant);
        tokio::pin!(waiting);
        // Polled once: its marker is queued behind the five lines.
        tokio::select! {
            biased;
            () = &mut waiting => panic!("answered before its lines were handed out"),
            () = std::future::ready(()) => {}
        }
        let batch = queue.next(100).await;
        assert_eq!((batch.lines.len(), batch.synced.len()), (5, 1));
        for answer in batch.synced {
            answer.send(()).unwrap();
        }
        waiting.await;
    }
}
