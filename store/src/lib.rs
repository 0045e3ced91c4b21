//! The control store of weir: what the platform knows about its tenants and their resources,
//! kept across restarts.
//!
//! Owns the [`ControlStore`] seam (tenants, tokens, modules, graphs, deployments and their
//! status history, endpoints), its embedded SQLite backend ([`SqliteControlStore`]: one file in the data
//! directory, WAL, versioned migrations, a tenant's rows deleted with it), and the
//! content-addressed [`BlobStore`] for module and graph bytes (reference-counted by the records:
//! a blob goes with its last module, graph or tenant), and the tenants' state store on
//! SQLite ([`SqliteStateStore`], passing `weir_state::testing::conformance`). Every query of a tenant's
//! resource takes the tenant and filters by it: there is no way to fetch another tenant's row
//! by id. Count quotas are checked in the same transaction as the write they bound. Dead
//! letters are kept here, numbered and bounded per tenant, and the device credentials of the
//! embedded MQTT broker (only a hash of each password). Files and directories it creates are
//! private to the server's user (0600/0700, SQLite's WAL and SHM files included); endpoint
//! secrets are sealed at rest with a key kept beside the database.
//! Never knows about wasmtime or HTTP.
#![warn(missing_docs)]

mod blobs;
mod records;
mod sealing;
mod sqlite;
mod state;

use async_trait::async_trait;
use weir_api::rest::DeadLetter;
use weir_api::{ErrorCode, ModuleDigest, TenantId};
use weir_tenants::Quotas;

/// Dead letters kept per tenant whatever their bytes: a hard cap beside the tenant's
/// `max_dead_letter_bytes`, so a flood of tiny letters cannot grow the table without bound.
pub const MAX_DEAD_LETTERS: u64 = 10_000;

pub use blobs::{BlobError, BlobStore, PinnedBlob};
pub use records::{
    DeadLetterAppend, DeadLetterCounts, DeletedTenant, DeploymentRecord, DeviceRecord,
    EndpointRecord, GraphRecord, MAX_REVISIONS, ModuleLogRecord, ModuleRecord, NewDevice,
    RevisionRecord, StatusChange, TenantRecord, TokenRecord, TokenScope, UsageCounters, UsageDelta,
    UsagePeriodRecord,
};
pub use sealing::SealError;
pub use sqlite::SqliteControlStore;
pub use state::SqliteStateStore;

/// Why a control-store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A resource with the same identity exists.
    #[error("{what} already exists")]
    Conflict {
        /// Which resource.
        what: String,
    },
    /// The referenced tenant does not exist.
    #[error("no tenant {0}")]
    NoTenant(TenantId),
    /// The write would take the tenant over a count or size quota (checked in the write's own
    /// transaction, so concurrent writes cannot pass it together).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The blob store failed.
    #[error("blob store failed")]
    Blob(#[from] BlobError),
    /// A secret could not be sealed or opened, or the key not loaded.
    #[error("secret sealing failed")]
    Seal(#[from] SealError),
    /// The database failed.
    #[error("control store failed")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// The API code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Conflict { .. } => ErrorCode::Conflict,
            Self::NoTenant(_) => ErrorCode::NotFound,
            Self::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Self::Database(_) | Self::Blob(_) | Self::Seal(_) => ErrorCode::Internal,
        }
    }
}

/// What the platform keeps about tenants and their resources.
#[async_trait]
pub trait ControlStore: Send + Sync + std::fmt::Debug {
    /// Creates a tenant; `Conflict` if the id is taken. The record as stored: with a fresh
    /// `instance` (tokens are bound to it) and the store's `created_at`.
    async fn create_tenant(&self, tenant: &TenantRecord) -> Result<TenantRecord, StoreError>;
    /// The tenant `id`.
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;
    /// Every tenant.
    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    /// Replaces a tenant's quotas and suspension; whether it existed.
    async fn update_tenant(&self, tenant: &TenantRecord) -> Result<bool, StoreError>;
    /// Deletes a tenant and everything it owns, and revokes its tokens for good (the
    /// revocations outlive the tenant); what it released, or `None` if it did not exist.
    async fn delete_tenant(&self, id: &TenantId) -> Result<Option<DeletedTenant>, StoreError>;

    /// Records a minted token.
    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// The tokens in `scope`.
    async fn tokens(&self, scope: TokenScope<'_>) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes token `id` if it is in `scope`; whether it was. The revocation is kept apart
    /// from the token's record, so it survives the deletion of the token's tenant.
    async fn revoke_token(&self, scope: TokenScope<'_>, id: &str) -> Result<bool, StoreError>;
    /// Ids of every revoked token that has not expired (deleted tenants' included).
    async fn revoked_token_ids(&self) -> Result<Vec<String>, StoreError>;

    /// Whether any module or graph (of any tenant) references the blob `digest`.
    async fn blob_referenced(&self, digest: &ModuleDigest) -> Result<bool, StoreError>;
    /// Every blob a module or graph references.
    async fn referenced_blobs(&self) -> Result<Vec<ModuleDigest>, StoreError>;

    /// Records a module version; `Conflict` if `name`@`version` exists for the tenant,
    /// `QuotaExceeded` if the tenant would exceed `max_modules` or `max_module_total_bytes`
    /// (checked in the same transaction as the insert).
    async fn put_module(&self, module: &ModuleRecord, quotas: &Quotas) -> Result<(), StoreError>;
    /// The module `name`@`version` of `tenant`.
    async fn module(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError>;
    /// The modules of `tenant`.
    async fn modules(&self, tenant: &TenantId) -> Result<Vec<ModuleRecord>, StoreError>;
    /// Deletes a module version; the digest of its blob (to collect), or `None` if it did not
    /// exist.
    async fn delete_module(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleDigest>, StoreError>;

    /// Records a graph version; `Conflict` if `name`@`version` exists for the tenant,
    /// `QuotaExceeded` if the tenant would exceed `max_graphs` (checked in the insert's
    /// transaction).
    async fn put_graph(&self, graph: &GraphRecord, quotas: &Quotas) -> Result<(), StoreError>;
    /// The graph `name`@`version` of `tenant`.
    async fn graph(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<GraphRecord>, StoreError>;
    /// The graphs of `tenant`.
    async fn graphs(&self, tenant: &TenantId) -> Result<Vec<GraphRecord>, StoreError>;
    /// Deletes a graph version; the digest of its blob (to collect), or `None` if it did not
    /// exist.
    async fn delete_graph(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleDigest>, StoreError>;

    /// Records a deployment; `Conflict` if its id exists for the tenant, `QuotaExceeded` if
    /// the tenant would exceed `max_deployments` (checked in the insert's transaction).
    async fn put_deployment(
        &self,
        deployment: &DeploymentRecord,
        quotas: &Quotas,
    ) -> Result<(), StoreError>;
    /// The deployment `id` of `tenant`.
    async fn deployment(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError>;
    /// The deployments of `tenant`.
    async fn deployments(&self, tenant: &TenantId) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Every tenant's deployments: what a restarted platform resumes.
    async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Sets a deployment's status and appends it to its history; whether it existed.
    async fn set_deployment_status(
        &self,
        tenant: &TenantId,
        id: &str,
        status: &str,
        detail: &str,
    ) -> Result<bool, StoreError>;
    /// A deployment's status changes, oldest first: the newest 200 (older ones are dropped
    /// as new ones are recorded).
    async fn deployment_history(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<StatusChange>, StoreError>;
    /// Appends a revision to a deployment (its number is the next one; the given
    /// `revision` is ignored) and drops all but the newest [`MAX_REVISIONS`]; the number
    /// given, or `None` if the deployment does not exist.
    async fn add_revision(
        &self,
        tenant: &TenantId,
        id: &str,
        revision: &RevisionRecord,
    ) -> Result<Option<u64>, StoreError>;
    /// A deployment's kept revisions, oldest first.
    async fn revisions(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<RevisionRecord>, StoreError>;
    /// Deletes a deployment; whether it existed.
    async fn delete_deployment(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;
    /// Replaces what a deployment runs (a rolling update), marks it running and records why;
    /// whether it existed.
    async fn update_deployment_spec(
        &self,
        tenant: &TenantId,
        id: &str,
        spec: &serde_json::Value,
        detail: &str,
    ) -> Result<bool, StoreError>;

    /// Records an endpoint; `Conflict` if its name exists for the tenant.
    async fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), StoreError>;
    /// The endpoint `name` of `tenant`.
    async fn endpoint(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<EndpointRecord>, StoreError>;
    /// The endpoints of `tenant`.
    async fn endpoints(&self, tenant: &TenantId) -> Result<Vec<EndpointRecord>, StoreError>;
    /// Deletes an endpoint; whether it existed.
    async fn delete_endpoint(&self, tenant: &TenantId, name: &str) -> Result<bool, StoreError>;

    /// Keeps `letters` for the tenant to read, in one transaction: each gets the tenant's next
    /// number (`seq` as passed is ignored; numbers are never reused, not after eviction nor
    /// after a restart); a payload over [`DeadLetter::MAX_PAYLOAD_BYTES`] is cut (at a
    /// character boundary, `payload_truncated` set; callers cut it already); an `at_ms` of 0
    /// becomes the time of the append. Then the tenant's oldest letters are evicted until it
    /// keeps at most `max_bytes` (its `max_dead_letter_bytes`, counted by
    /// [`DeadLetter::byte_len`]) and at most [`MAX_DEAD_LETTERS`]: a letter larger than
    /// `max_bytes` is evicted at once. Evictions are counted for the tenant. `NoTenant` if the
    /// tenant does not exist (it was deleted while the letters were on their way: nothing was
    /// kept, and retrying cannot help). Callers batch: one call per batch of letters.
    async fn append_dead_letters(
        &self,
        tenant: &TenantId,
        letters: Vec<DeadLetter>,
        max_bytes: u64,
    ) -> Result<DeadLetterAppend, StoreError>;
    /// The tenant's letters numbered above `after`, oldest first, at most `limit` (the oldest
    /// `limit` of them, or the newest with `newest`); only `deployment`'s if given. A deleted deployment's letters stay (they are the evidence of
    /// what it failed to process) until they are evicted or the tenant is deleted.
    async fn dead_letters(
        &self,
        tenant: &TenantId,
        deployment: Option<&str>,
        after: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    /// The tenant's dead-letter counters (all zero for a tenant without letters).
    async fn dead_letter_counts(&self, tenant: &TenantId) -> Result<DeadLetterCounts, StoreError>;
    /// Evicts the tenant's oldest letters until it keeps at most `max_bytes` (after the admin
    /// lowered `max_dead_letter_bytes`); how many went.
    async fn trim_dead_letters(&self, tenant: &TenantId, max_bytes: u64)
    -> Result<u64, StoreError>;

    /// Creates credentials for device `name` of `tenant` with a fresh random password (the
    /// caller checked the name); `Conflict` if the tenant has a device of that name,
    /// `QuotaExceeded` past `max_devices` (checked in the insert's transaction).
    async fn create_device(
        &self,
        tenant: &TenantId,
        name: &str,
        quotas: &Quotas,
    ) -> Result<NewDevice, StoreError>;
    /// The devices of `tenant`, by name.
    async fn devices(&self, tenant: &TenantId) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Deletes a device's credentials; whether they existed.
    async fn delete_device(&self, tenant: &TenantId, name: &str) -> Result<bool, StoreError>;
    /// The tenant of the device whose MQTT user name is `username` (`<name>@<tenant>`), if
    /// `password` (the MQTT password field, binary data) is its password and the tenant is not suspended; `None` otherwise, whatever
    /// the reason (no such device, wrong password, suspended tenant). The password's SHA-256
    /// is compared in constant time.
    async fn verify_device(
        &self,
        username: &str,
        password: &[u8],
    ) -> Result<Option<TenantId>, StoreError>;

    /// Adds each delta to its tenant's total, its hour's and its (UTC) day's counters, all in
    /// one transaction (so a flush counts in full or not at all). Deltas of tenants that no
    /// longer exist are skipped. Hours older than [`USAGE_HOURS_KEPT`] and days older than
    /// [`USAGE_DAYS_KEPT`] are dropped (the totals keep counting).
    async fn add_usage(&self, deltas: Vec<UsageDelta>) -> Result<(), StoreError>;
    /// The tenant's usage: its total since it was created, and its hours and days that start
    /// at or after `since_ms`, oldest first (hours before days).
    async fn usage(
        &self,
        tenant: &TenantId,
        since_ms: u64,
    ) -> Result<(UsageCounters, Vec<UsagePeriodRecord>), StoreError>;

    /// Appends module log lines of `tenant` (their `seq` is ignored: the store numbers them,
    /// after the tenant's last number), then drops its oldest lines beyond `max_lines` (its
    /// `max_log_lines` quota; with no lines, only that). Nothing for a tenant that no longer
    /// exists.
    async fn append_module_logs(
        &self,
        tenant: &TenantId,
        lines: Vec<ModuleLogRecord>,
        max_lines: u64,
    ) -> Result<(), StoreError>;
    /// The tenant's kept log lines numbered above `after`, oldest first, at most `limit` (the
    /// oldest `limit` of them, or the newest with `newest`); only `deployment`'s if given.
    async fn module_logs(
        &self,
        tenant: &TenantId,
        deployment: Option<&str>,
        after: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<ModuleLogRecord>, StoreError>;
    /// How many log lines of the tenant are kept (what its `max_log_lines` quota bounds).
    async fn module_log_count(&self, tenant: &TenantId) -> Result<u64, StoreError>;
}

/// Hours of usage kept per tenant (31 days).
pub const USAGE_HOURS_KEPT: u64 = 31 * 24;
/// Days of usage kept per tenant.
pub const USAGE_DAYS_KEPT: u64 = 400;
