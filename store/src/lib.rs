//! The control store of weir: what the platform knows about its tenants and their resources,
//! kept across restarts.
//!
//! Owns the [`ControlStore`] seam (tenants, tokens, modules, graphs, deployments and their
//! status history, endpoints), its embedded SQLite backend ([`SqliteControlStore`]: one file in the data
//! directory, WAL, versioned migrations, a tenant's rows deleted with it), and the
//! content-addressed [`BlobStore`] for module and graph bytes, and the tenants' state store on
//! SQLite ([`SqliteStateStore`], passing `weir_state::testing::conformance`). Every query of a tenant's
//! resource takes the tenant and filters by it: there is no way to fetch another tenant's row
//! by id. Never knows about wasmtime or HTTP.
#![warn(missing_docs)]

mod blobs;
mod records;
mod sqlite;
mod state;

use async_trait::async_trait;
use weir_api::{ErrorCode, TenantId};

pub use blobs::{BlobError, BlobStore};
pub use records::{
    DeploymentRecord, EndpointRecord, GraphRecord, ModuleRecord, StatusChange, TenantRecord,
    TokenRecord,
};
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
            Self::Database(_) => ErrorCode::Internal,
        }
    }
}

/// What the platform keeps about tenants and their resources.
#[async_trait]
pub trait ControlStore: Send + Sync + std::fmt::Debug {
    /// Creates a tenant; `Conflict` if the id is taken.
    async fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    /// The tenant `id`.
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;
    /// Every tenant.
    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    /// Replaces a tenant's quotas and suspension; whether it existed.
    async fn update_tenant(&self, tenant: &TenantRecord) -> Result<bool, StoreError>;
    /// Deletes a tenant and everything it owns; whether it existed.
    async fn delete_tenant(&self, id: &TenantId) -> Result<bool, StoreError>;

    /// Records a minted token.
    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// The tokens of `tenant` (admin tokens: `None`).
    async fn tokens(&self, tenant: Option<&TenantId>) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes token `id` of `tenant`; whether it existed there.
    async fn revoke_token(&self, tenant: Option<&TenantId>, id: &str) -> Result<bool, StoreError>;
    /// Ids of every revoked token.
    async fn revoked_token_ids(&self) -> Result<Vec<String>, StoreError>;

    /// Records a module version; `Conflict` if `name`@`version` exists for the tenant.
    async fn put_module(&self, module: &ModuleRecord) -> Result<(), StoreError>;
    /// The module `name`@`version` of `tenant`.
    async fn module(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError>;
    /// The modules of `tenant`.
    async fn modules(&self, tenant: &TenantId) -> Result<Vec<ModuleRecord>, StoreError>;
    /// Deletes a module version; whether it existed.
    async fn delete_module(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<bool, StoreError>;

    /// Records a graph version; `Conflict` if `name`@`version` exists for the tenant.
    async fn put_graph(&self, graph: &GraphRecord) -> Result<(), StoreError>;
    /// The graph `name`@`version` of `tenant`.
    async fn graph(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<GraphRecord>, StoreError>;
    /// The graphs of `tenant`.
    async fn graphs(&self, tenant: &TenantId) -> Result<Vec<GraphRecord>, StoreError>;
    /// Deletes a graph version; whether it existed.
    async fn delete_graph(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<bool, StoreError>;

    /// Records a deployment; `Conflict` if its id exists for the tenant.
    async fn put_deployment(&self, deployment: &DeploymentRecord) -> Result<(), StoreError>;
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
    /// A deployment's status changes, oldest first.
    async fn deployment_history(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<StatusChange>, StoreError>;
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
}
