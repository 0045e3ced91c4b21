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

/// The embedded log: the newest `capacity` lines of each tenant, in memory, also sent to
/// `tracing` with the tenant and node as fields.
#[derive(Debug)]
pub struct MemoryLogSink {
    capacity: usize,
    lines: Mutex<HashMap<TenantId, VecDeque<(u64, LogRecord)>>>,
    next_seq: std::sync::atomic::AtomicU64,
}

impl MemoryLogSink {
    /// Keeps up to `capacity` lines per tenant, dropping the oldest.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            lines: Mutex::new(HashMap::new()),
            next_seq: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The kept lines of `tenant`, oldest first.
    pub fn lines(&self, tenant: &TenantId) -> Vec<LogRecord> {
        self.lines_after(tenant, 0, usize::MAX)
            .into_iter()
            .map(|(_, record)| record)
            .collect()
    }

    /// The kept lines of `tenant` with a sequence number above `after`, oldest first, each with
    /// its number (increasing across tenants, so a follower passes the last one it saw).
    pub fn lines_after(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Vec<(u64, LogRecord)> {
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines
            .get(tenant)
            .map(|l| {
                l.iter()
                    .filter(|(seq, _)| *seq > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a tenant's lines (the tenant was deleted).
    pub fn forget(&self, tenant: &TenantId) {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
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
        let mut lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenant_lines = lines.entry(record.tenant.clone()).or_default();
        if tenant_lines.len() >= self.capacity {
            tenant_lines.pop_front();
        }
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tenant_lines.push_back((seq, record));
    }
}
