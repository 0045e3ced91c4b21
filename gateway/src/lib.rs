//! The REST API of weir (`/v1`).
//!
//! Owns the axum [`router`]: authentication (a bearer JWT becomes the caller's
//! [`weir_tenants::Principal`]; the tenant comes from the token and nowhere else), errors as
//! `application/problem+json` with a stable `code` and the request id, and the resources built so
//! far: tenants (admin), tokens (owner), modules and graphs (upload with validation before
//! anything lands), endpoints, device credentials for the embedded MQTT broker, deployments
//! and what they report (dead letters are read from the control store). Every tenant-owned lookup goes through the caller's tenant, so another
//! tenant's resource answers 404 exactly like a missing one (the walls are listed in
//! `gateway/README.md`).
//!
//! [`serve`] runs the router on HTTP/1.1 with every resource a client can hold bounded
//! ([`ServerLimits`]). Connections made on a tenant's behalf (OCI imports) pass the egress rule of
//! `weir_api::egress`.
//!
//! It must never depend on wasmtime or the executor: module validation arrives through
//! [`ModuleValidator`], which the `weir` binary implements with the executor's engine.

mod auth;
mod dashboard;
mod egress_proxy;
mod error;
mod executors;
mod locks;
mod reconcile;
mod routes;
mod scale;
mod server;

use std::sync::Arc;

use axum::Router;
use weir_store::{BlobStore, ControlStore};
use weir_tenants::{JwtVerifier, MemoryRevocations, TokenIssuer};

pub use auth::Caller;
pub use dashboard::{
    CONTENT_SECURITY_POLICY, EVENT_INTERVAL, HISTORY_SAMPLES, MAX_STREAMS_PER_TENANT,
    SAMPLE_INTERVAL, STREAM_LIFETIME, Sample,
};
pub use error::{ApiError, ApiJson, ApiQuery};
pub use executors::{ExecutorMembership, RemoteRuntime};
pub use locks::{TenantGuard, TenantLocks};
pub use reconcile::ControlLoop;
pub use routes::{openapi, sweep_blobs};
pub use server::{ServerLimits, serve};
pub use weir_api::rest::ProblemField;
pub use weir_tenants::ApiLimits;

/// What the executor found in an uploaded module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidatedModule {
    /// The operator interfaces it exports (`map`, `filter`, ...).
    pub operators: Vec<String>,
    /// Whether it imports `wasi:nn` (inference): only tenants whose quota has `inference`
    /// may upload it.
    pub imports_inference: bool,
}

/// Checks uploaded module bytes: the executor decides what a runnable module is.
pub trait ModuleValidator: Send + Sync + std::fmt::Debug {
    /// What the module exports and imports, or why it is not a module weir can run.
    fn validate(&self, bytes: &[u8]) -> Result<ValidatedModule, String>;

    /// The bytes of `digest` are gone: no module or graph of any tenant references them any
    /// more and their blob was removed, so anything kept for them, such as a compiled
    /// artifact, may go too (a digest never seen, such as a graph's, is no error). Called off
    /// the async workers. Does nothing by default.
    fn forget(&self, digest: &weir_api::ModuleDigest) {
        let _ = digest;
    }
}

pub use weir_api::rest::{
    DeadLetter, Executor, IngestMessage, LogLine, MetricSeries, OutputMessage, Usage,
};

/// What a deployment needs to start: everything resolved from the tenant's stored artifacts.
#[derive(Debug, Clone)]
pub struct StartDeployment {
    /// The tenant.
    pub tenant: weir_api::TenantId,
    /// Its quotas.
    pub quotas: weir_tenants::Quotas,
    /// The deployment id.
    pub id: String,
    /// The graph definition text.
    pub graph: String,
    /// Module bytes by the reference the graph uses.
    pub modules: std::collections::BTreeMap<String, Vec<u8>>,
    /// Configuration values.
    pub configuration: std::collections::BTreeMap<String, String>,
    /// Where messages come from.
    pub source: StartBinding,
    /// Where outputs go.
    pub sink: StartBinding,
    /// Where dead letters are also published, if anywhere.
    pub dead_letters: Option<StartBinding>,
    /// The deployment's revision this is (0 when not known: a start by the reconcile loop
    /// of a deployment that predates revisions).
    pub revision: u64,
    /// The deployment's partition key (`weir_api::scale`): its windows are kept per key.
    pub partition_key: Option<weir_api::scale::PartitionKey>,
}

/// A deployment's binding with its endpoint resolved: the tenant's endpoint (secret unsealed,
/// for the connector only), or a built-in one (`http`; `default`, the embedded MQTT broker,
/// kind `mqtt` without an address).
#[derive(Clone, PartialEq, Eq)]
pub struct StartBinding {
    /// The endpoint's name.
    pub endpoint: String,
    /// Its kind (`http`, `mqtt`, `kafka`, `otlp`).
    pub kind: String,
    /// `host:port`, if it has one.
    pub address: Option<String>,
    /// Connector settings.
    pub settings: std::collections::BTreeMap<String, String>,
    /// The write-only secret.
    pub secret: Option<String>,
    /// Topic filters (source) or the topic (sink).
    pub topics: Vec<String>,
}

impl std::fmt::Debug for StartBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartBinding")
            .field("endpoint", &self.endpoint)
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// The operator instance slots of the platform's executors. Tenants' `max_instances` quotas
/// together may not exceed it, so each tenant's quota is a guarantee: no tenant can take the
/// slots another was promised.
#[derive(Debug, Default)]
pub struct InstancePool {
    /// Slots in the pool; `None`: not bounded (an in-process gateway without executors).
    pub slots: Option<u64>,
    /// Held while a tenant's quota is admitted and written, so two admissions cannot pass
    /// together.
    pub(crate) admitting: tokio::sync::Mutex<()>,
}

impl InstancePool {
    /// A pool of `slots` operator instance slots.
    pub fn new(slots: u64) -> Self {
        Self {
            slots: Some(slots),
            admitting: tokio::sync::Mutex::new(()),
        }
    }
}

/// Runs deployments: the executor, reached without the gateway linking it.
#[async_trait::async_trait]
pub trait DeploymentRuntime: Send + Sync + std::fmt::Debug {
    /// Starts a deployment; configuration warnings on success. A deployment of the same id
    /// that runs already is replaced only once the new one has started (a rolling update):
    /// if the new one fails, the old one keeps running.
    async fn start(&self, request: StartDeployment) -> Result<Vec<String>, ApiError>;
    /// Starts a deployment on the executor the scheduler placed it on. The default (one
    /// executor, in this process) is [`DeploymentRuntime::start`].
    async fn start_on(
        &self,
        executor: &str,
        request: StartDeployment,
    ) -> Result<Vec<String>, ApiError> {
        let _ = executor;
        self.start(request).await
    }
    /// Whether the deployment runs (or is starting) on `executor`. The default (one executor)
    /// is whether it runs at all.
    async fn runs_on(&self, tenant: &weir_api::TenantId, id: &str, executor: &str) -> bool {
        let _ = executor;
        self.status(tenant, id).await.is_some()
    }
    /// Stops a deployment (messages in flight are abandoned, not acknowledged); its accepted
    /// outputs are kept for a later start of the same id.
    async fn stop(&self, tenant: &weir_api::TenantId, id: &str);
    /// Stops a deleted deployment for good: its kept outputs go too.
    async fn forget(&self, tenant: &weir_api::TenantId, id: &str) {
        self.stop(tenant, id).await;
    }
    /// Retires an instance for good (scaled away): its kept outputs go, and rather than leave
    /// its broker session for a next copy, its source finishes the messages it took and ends
    /// the session (an MQTT session would otherwise keep receiving its share of a shared
    /// subscription, or queue for no one). Returns at once; the retirement finishes in the
    /// background. The default forgets it. (A deleted deployment is forgotten, not retired:
    /// its session expires by itself.)
    async fn retire(&self, tenant: &weir_api::TenantId, id: &str) {
        self.forget(tenant, id).await;
    }
    /// Hands messages to the deployment's HTTP source; with `wait`, returns the outputs derived
    /// from them once each message is fully processed (or the timeout passes).
    async fn ingest(
        &self,
        tenant: &weir_api::TenantId,
        id: &str,
        messages: Vec<IngestMessage>,
        wait: Option<std::time::Duration>,
    ) -> Result<Vec<OutputMessage>, ApiError>;
    /// Takes up to `limit` outputs waiting in the deployment's HTTP sink queue.
    async fn take_outputs(
        &self,
        tenant: &weir_api::TenantId,
        id: &str,
        limit: usize,
    ) -> Result<Vec<OutputMessage>, ApiError>;
    /// Counters and state of a running deployment, if it runs here.
    async fn status(&self, tenant: &weir_api::TenantId, id: &str) -> Option<serde_json::Value>;
    /// Every deployment running on the executors, for the scheduler's reconcile loop.
    async fn running(&self) -> Vec<RunningDeployment>;
    /// The tenant's log lines numbered above `after`, oldest first.
    async fn logs(&self, tenant: &weir_api::TenantId, query: &FeedQuery) -> Vec<LogLine>;
    /// The tenant's metric series.
    async fn metrics(&self, tenant: &weir_api::TenantId) -> Vec<MetricSeries>;
    /// What the tenant's deployments have used (the data-plane fields of [`Usage`]; the
    /// gateway takes `dead_letters` and `dead_letters_evicted` from the control store, and
    /// `state_keys` and `state_bytes` from the state store), with the bytes its
    /// `max_inflight_bytes` and `max_queued_output_bytes` budgets hold now
    /// (`inflight_bytes`, `queued_output_bytes`): `None` when the runtime cannot tell, which
    /// the API shows by leaving the fields out.
    async fn usage(&self, tenant: &weir_api::TenantId) -> Usage;
    /// The executors deployments run on.
    async fn executors(&self) -> Vec<Executor>;
    /// Cordons (`true`: no new deployments) or uncordons an executor; whether it exists.
    async fn cordon(&self, executor: &str, cordoned: bool) -> bool;
    /// Stops the tenant's deployments and forgets its logs, metrics and dead letters.
    async fn forget_tenant(&self, tenant: &weir_api::TenantId);
    /// Applies the tenant's changed quotas to its running deployments (rates, budgets, log
    /// and metric bounds at once; per-call limits on each deployment's next start).
    async fn set_quotas(&self, tenant: &weir_api::TenantId, quotas: &weir_tenants::Quotas);
}

/// A deployment an executor runs, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningDeployment {
    /// The tenant.
    pub tenant: weir_api::TenantId,
    /// The deployment's id.
    pub id: String,
    /// The executor it runs on.
    pub executor: String,
    /// What is wrong with it, if anything (a connection down): the scheduler shows it
    /// `degraded`.
    pub problem: Option<String>,
    /// Its source does not read its input (yet): connecting, retrying or failed, or its
    /// executor has not reported it since it was assigned.
    pub starting: bool,
}

/// Which lines of a feed (logs, dead letters) to read.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Only this deployment's.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Only those numbered above this.
    #[serde(default)]
    pub after: u64,
    /// At most this many (default and cap 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The newest `limit` of those (still returned oldest first) instead of the oldest: how a
    /// reader with more than `limit` waiting sees the latest ones.
    #[serde(default)]
    pub newest: bool,
}

impl FeedQuery {
    /// The number of lines to return.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(1000).clamp(1, 1000)
    }
}

/// What the gateway's handlers share.
#[derive(Debug, Clone)]
pub struct GatewayState {
    /// Tenants and their resources.
    pub store: Arc<dyn ControlStore>,
    /// Artifact bytes.
    pub blobs: BlobStore,
    /// Verifies bearer tokens.
    pub verifier: Arc<JwtVerifier>,
    /// Mints weir's own tokens.
    pub issuer: Arc<TokenIssuer>,
    /// Revoked token ids (loaded from the store at start, updated on revoke).
    pub revocations: Arc<MemoryRevocations>,
    /// Judges uploaded modules.
    pub validator: Arc<dyn ModuleValidator>,
    /// Runs deployments.
    pub runtime: Arc<dyn DeploymentRuntime>,
    /// The tenants' state store: the same one modules reach through `state-store`.
    pub state: Arc<dyn weir_state::StateStore>,
    /// API rate limits and request counters per tenant.
    pub limits: Arc<ApiLimits>,
    /// One lock per tenant around changes that touch both the store and the runtime.
    pub tenant_locks: Arc<TenantLocks>,
    /// The executors' operator instance pool that tenants' `max_instances` are admitted
    /// against.
    pub instance_pool: Arc<InstancePool>,
    /// Executor processes that joined over HTTP.
    pub executors: Arc<ExecutorMembership>,
}

/// The API.
pub fn router(state: GatewayState) -> Router {
    routes::router(state)
}
