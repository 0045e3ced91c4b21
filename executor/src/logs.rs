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
    /// Per tenant with anything queued: its entries, how many are lines, and their bytes.
    tenants: HashMap<TenantId, TenantQueue>,
    /// Tenants with anything queued, in the order they are served.
    turn: VecDeque<TenantId>,
    /// Bytes of every line queued.
    bytes: usize,
}

#[derive(Debug, Default)]
struct TenantQueue {
    entries: VecDeque<Queued>,
    lines: usize,
    bytes: usize,
}

/// `tenant`'s queue, made (and its turn taken) if it has none.
fn queue_of<'a>(
    tenants: &'a mut HashMap<TenantId, TenantQueue>,
    turn: &mut VecDeque<TenantId>,
    tenant: &TenantId,
) -> &'a mut TenantQueue {
    tenants.entry(tenant.clone()).or_insert_with(|| {
        turn.push_back(tenant.clone());
        TenantQueue::default()
    })
}

/// What a line is counted for in a [`TenantLogQueue`]'s byte bound.
fn line_bytes(record: &LogRecord) -> usize {
    record.message.len() + record.node.len() + record.context.len() + 64
}

/// Module log lines on their way to where they are kept (a store, or the control plane), one
/// queue per tenant served in turn. Bounds: `per_tenant` lines of each tenant, and `max_bytes`
/// of lines in all. A tenant whose modules log faster than lines are kept fills only its own
/// share: past its line bound, or, when the bytes are all taken, past an even share of them,
/// its new lines are dropped (and counted); a tenant below its even share takes room from the
/// one holding the most (whose oldest lines go, counted). Another tenant's lines wait for at
/// most one batch of each other tenant's before they are taken. Entries exist only for
/// tenants with lines queued.
#[derive(Debug)]
pub struct TenantLogQueue {
    per_tenant: usize,
    max_bytes: usize,
    queues: Mutex<Queues>,
    ready: tokio::sync::Notify,
    dropped: std::sync::atomic::AtomicU64,
}

impl TenantLogQueue {
    /// A queue holding at most `per_tenant` lines of each tenant and `max_bytes` of lines in
    /// all (a line counts its text, node and context, and 64 bytes more).
    pub fn new(per_tenant: usize, max_bytes: usize) -> Self {
        Self {
            per_tenant: per_tenant.max(1),
            max_bytes: max_bytes.max(1),
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

    fn count_dropped(&self, count: u64, tenant: &TenantId) {
        let before = self
            .dropped
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let after = before + count;
        // Warned at powers of two, not for every line.
        if count > 0 && (before == 0 || after.ilog2() > before.ilog2()) {
            tracing::warn!(
                dropped = after,
                %tenant,
                "module log lines dropped: the tenant's share of the log queue is full"
            );
        }
    }

    /// Queues `record`; false (dropped, counted) when its tenant's share is full.
    pub fn push(&self, record: LogRecord) -> bool {
        let size = line_bytes(&record);
        let tenant = record.tenant.clone();
        let mut evicted: Vec<(TenantId, u64)> = Vec::new();
        let accepted = {
            let mut queues = self.queues();
            let Queues {
                tenants,
                turn,
                bytes,
            } = &mut *queues;
            let active = tenants.len() + usize::from(!tenants.contains_key(&tenant));
            let fair = self.max_bytes / active.max(1);
            let (lines_now, bytes_now) = tenants
                .get(&tenant)
                .map_or((0, 0), |queue| (queue.lines, queue.bytes));
            if lines_now >= self.per_tenant
                || (*bytes + size > self.max_bytes && bytes_now + size > fair)
                || size > self.max_bytes
            {
                false
            } else {
                // Room from the tenant holding the most, beyond its even share.
                while *bytes + size > self.max_bytes {
                    let Some((largest, queue)) = tenants
                        .iter_mut()
                        .filter(|(owner, _)| **owner != tenant)
                        .max_by_key(|(_, queue)| queue.bytes)
                    else {
                        break;
                    };
                    let Some(index) = queue
                        .entries
                        .iter()
                        .position(|entry| matches!(entry, Queued::Line(_)))
                    else {
                        break;
                    };
                    if let Some(Queued::Line(old)) = queue.entries.remove(index) {
                        let freed = line_bytes(&old);
                        queue.lines -= 1;
                        queue.bytes -= freed;
                        *bytes -= freed;
                        match evicted.iter_mut().find(|(owner, _)| owner == largest) {
                            Some((_, count)) => *count += 1,
                            None => evicted.push((largest.clone(), 1)),
                        }
                    }
                }
                let queue = queue_of(tenants, turn, &tenant);
                queue.lines += 1;
                queue.bytes += size;
                *bytes += size;
                queue.entries.push_back(Queued::Line(record));
                true
            }
        };
        for (owner, count) in &evicted {
            self.count_dropped(*count, owner);
        }
        if accepted {
            self.ready.notify_one();
        } else {
            self.count_dropped(1, &tenant);
        }
        accepted
    }

    /// Resolves once every line of `tenant` queued before the call was handed out and kept
    /// (its [`LogBatch::synced`] answered by the queue's reader). Callers bound the wait: a
    /// reader that stopped answers nothing. Each call queues one marker, beside the tenant's
    /// lines.
    pub async fn sync(&self, tenant: &TenantId) {
        let (answer, kept) = tokio::sync::oneshot::channel();
        {
            let mut queues = self.queues();
            let Queues { tenants, turn, .. } = &mut *queues;
            // Queued even with no line of the tenant's waiting: the reader answers it after the
            // batch it is keeping now, which may be this tenant's.
            queue_of(tenants, turn, tenant)
                .entries
                .push_back(Queued::Sync(answer));
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
        let Queues {
            tenants,
            turn,
            bytes,
        } = &mut *queues;
        let tenant = turn.pop_front()?;
        let queue = tenants.get_mut(&tenant)?;
        let mut batch = LogBatch {
            tenant: tenant.clone(),
            lines: Vec::new(),
            synced: Vec::new(),
        };
        while batch.lines.len() < max {
            match queue.entries.pop_front() {
                Some(Queued::Line(line)) => {
                    let size = line_bytes(&line);
                    queue.lines -= 1;
                    queue.bytes -= size;
                    *bytes -= size;
                    batch.lines.push(line);
                }
                Some(Queued::Sync(answer)) => batch.synced.push(answer),
                None => break,
            }
        }
        if queue.entries.is_empty() {
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
        let queue = TenantLogQueue::new(100, 1 << 20);
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
    async fn when_the_bytes_are_all_taken_a_quiet_tenant_takes_room_from_the_chattiest() {
        let chatty = TenantId::new("chatty").unwrap();
        let quiet = TenantId::new("quiet").unwrap();
        let one = line_bytes(&line(&chatty, 0));
        // Room for ten lines in all; up to 100 lines per tenant.
        let queue = TenantLogQueue::new(100, one * 10);
        let taken = (0..50).filter(|n| queue.push(line(&chatty, *n))).count();
        assert_eq!(taken, 10, "the bytes bound");
        // The quiet tenant gets up to its even share (5 lines), from the chatty one's oldest.
        let quiet_taken = (0..8).filter(|n| queue.push(line(&quiet, *n))).count();
        assert_eq!(quiet_taken, 5);
        assert_eq!(queue.dropped(), 40 + 5 + 3);
        let first = queue.next(100).await;
        assert_eq!(first.tenant, chatty);
        // Its five newest are left.
        assert_eq!(first.lines.len(), 5);
        assert_eq!(first.lines[0].message, "line 5");
        let second = queue.next(100).await;
        assert_eq!((second.tenant, second.lines.len()), (quiet, 5));
    }

    #[tokio::test]
    async fn a_sync_is_answered_once_the_lines_before_it_are_handed_out() {
        let tenant = TenantId::new("t").unwrap();
        let queue = TenantLogQueue::new(100, 1 << 20);
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
