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
