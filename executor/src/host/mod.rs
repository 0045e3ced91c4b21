//! What a running operator instance sees of the host: the store data ([`HostState`]), the
//! per-node environment ([`NodeEnv`]: tenant, state scope, log and metrics sinks) and the
//! implementations of every imported interface, for both contracts.

mod interfaces;
pub(crate) mod nn;
mod output;
pub(crate) mod rpc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, format_err};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use weir_api::TenantId;
use weir_state::{StateLimits, StateScope, StateStore};
use weir_tenants::Quotas;

use crate::logs::{LogLevel, LogRecord, LogSink};
use crate::metrics::MetricsRegistry;

pub(crate) use interfaces::{ga as ga_data, preview as preview_data};

/// Bytes the host holds for a guest: the `buffer` resource. Cloning shares the bytes, so minting a
/// handle per call copies nothing until the guest calls `read`.
#[derive(Debug, Clone)]
pub struct HostBuffer(pub(crate) Bytes);

/// Everything an operator node's host calls need, shared by its successive instances.
#[derive(Debug)]
pub struct NodeEnv {
    /// The tenant that owns the node.
    pub tenant: TenantId,
    /// The node, e.g. `my-deployment/module-temperature/map`: the context of its log lines.
    pub node: String,
    /// The tenant's state store and the scope that confines the node to the tenant's keys.
    pub state: Arc<dyn StateStore>,
    /// The scope of every state operation this node makes.
    pub state_scope: StateScope,
    /// Longest a state call may take, whatever timeout the guest asks for.
    pub state_timeout_cap: Duration,
    /// Where the node's log lines (and its stdout/stderr) go.
    pub logs: Arc<dyn LogSink>,
    /// Where its metrics go.
    pub metrics: Arc<MetricsRegistry>,
    /// Longest log line kept; longer lines are cut.
    pub max_log_line_bytes: usize,
    /// The tenant's quotas as they change while the node runs: when set, they replace
    /// `state_scope`'s limits, `max_log_line_bytes` and the per-call limits from the next
    /// call, log line or state operation on.
    pub quotas: Option<Arc<LiveQuotas>>,
    /// The tenant's turn at inference on this executor, shared by all of the tenant's nodes
    /// here (see [`InferenceLane`](crate::InferenceLane)).
    pub inference_lane: crate::InferenceLane,
}

/// A tenant's quotas, swapped whole when an admin changes them; every node of the tenant's
/// running deployments reads them.
#[derive(Debug)]
pub struct LiveQuotas(std::sync::RwLock<Arc<Quotas>>);

impl LiveQuotas {
    /// Starts with `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self(std::sync::RwLock::new(Arc::new(quotas)))
    }

    /// The quotas in force.
    pub fn get(&self) -> Arc<Quotas> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `quotas` in force.
    pub fn set(&self, quotas: Quotas) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(quotas);
    }
}

impl NodeEnv {
    /// The scope of the node's next state operation, with the limits in force.
    pub(crate) fn scope(&self) -> std::borrow::Cow<'_, StateScope> {
        match &self.quotas {
            Some(quotas) => std::borrow::Cow::Owned(StateScope::new(
                self.tenant.clone(),
                StateLimits::of(&quotas.get()),
            )),
            None => std::borrow::Cow::Borrowed(&self.state_scope),
        }
    }

    /// The longest log line kept now.
    pub(crate) fn log_line_bytes(&self) -> usize {
        self.quotas.as_ref().map_or(self.max_log_line_bytes, |q| {
            usize::try_from(q.get().max_log_line_bytes).unwrap_or(usize::MAX)
        })
    }

    /// Writes a log line of this node to its tenant's log.
    pub(crate) fn log(&self, level: LogLevel, context: &str, message: &str) {
        self.logs.record(LogRecord {
            tenant: self.tenant.clone(),
            node: self.node.clone(),
            level,
            context: truncate(context, 256),
            message: truncate(message, self.log_line_bytes()),
            at: std::time::SystemTime::now(),
        });
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [{} bytes cut]",
        text.get(..end).unwrap_or_default(),
        text.len() - end
    )
}

/// The data of one store: one live operator instance.
pub(crate) struct HostState {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) env: Arc<NodeEnv>,
    pub(crate) memory_limit: usize,
    pub(crate) memory_limit_hit: bool,
    pub(crate) deadline: Instant,
    pub(crate) deadline_hit: bool,
    /// Inference (`wasi:nn`): the backend, the tenant's limits and the graphs loaded.
    pub(crate) nn: nn::NnState,
    /// The last HLC node id handed to the guest, as bytes: items of one stream carry the same
    /// node id, so lowering one costs a compare, not an allocation.
    node_id: Option<(String, Bytes)>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("node", &self.env.node)
            .finish_non_exhaustive()
    }
}

/// Longest table (e.g. function table) an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl HostState {
    pub(crate) fn new(
        env: Arc<NodeEnv>,
        memory_limit: usize,
        inference: Arc<crate::inference::Inference>,
    ) -> Self {
        let wasi = WasiCtx::builder()
            // Nothing leaves the sandbox: no sockets, no name lookup, no preopens, no env.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .stdout(output::GuestOutput::new(env.clone(), "stdout"))
            .stderr(output::GuestOutput::new(env.clone(), "stderr"))
            .build();
        Self {
            table: ResourceTable::new(),
            wasi,
            env,
            memory_limit,
            memory_limit_hit: false,
            deadline: Instant::now(),
            deadline_hit: false,
            nn: nn::NnState::new(inference),
            node_id: None,
        }
    }

    /// `node_id` as shared bytes, reusing the last ones when it is the same.
    pub(crate) fn node_id_bytes(&mut self, node_id: &str) -> Bytes {
        match &self.node_id {
            Some((text, bytes)) if text == node_id => bytes.clone(),
            _ => {
                let bytes = Bytes::copy_from_slice(node_id.as_bytes());
                self.node_id = Some((node_id.to_owned(), bytes.clone()));
                bytes
            }
        }
    }

    pub(crate) fn buffer(
        &mut self,
        bytes: &Bytes,
    ) -> wasmtime::Result<wasmtime::component::Resource<HostBuffer>> {
        Ok(self.table.push(HostBuffer(bytes.clone()))?)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            // Trapping (rather than failing `memory.grow`) lets the host tell a memory-limit
            // stop from a guest bug; the flag makes that typed, not a string match.
            self.memory_limit_hit = true;
            return Err(format_err!(
                "memory limit of {} bytes reached growing to {desired} bytes",
                self.memory_limit
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
