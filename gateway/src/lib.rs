//! The REST API of weir (`/v1`).
//!
//! Owns the axum [`router`]: authentication (a bearer JWT becomes the caller's
//! [`weir_tenants::Principal`]; the tenant comes from the token and nowhere else), errors as
//! `application/problem+json` with a stable `code` and the request id, and the resources built so
//! far: tenants (admin), tokens (owner), modules and graphs (upload with validation before
//! anything lands). Every tenant-owned lookup goes through the caller's tenant, so another
//! tenant's resource answers 404 exactly like a missing one (the walls are listed in
//! `gateway/README.md`).
//!
//! It must never depend on wasmtime or the executor: module validation arrives through
//! [`ModuleValidator`], which the `weir` binary implements with the executor's engine.

mod auth;
mod error;
mod routes;

use std::sync::Arc;

use axum::Router;
use weir_store::{BlobStore, ControlStore};
use weir_tenants::{JwtVerifier, MemoryRevocations, TokenIssuer};

pub use auth::Caller;
pub use error::{ApiError, ApiJson, ApiQuery, ProblemField};

/// Checks uploaded module bytes: the executor decides what a runnable module is.
pub trait ModuleValidator: Send + Sync + std::fmt::Debug {
    /// The operator interfaces the module exports, or why it is not a module weir can run.
    fn validate(&self, bytes: &[u8]) -> Result<Vec<String>, String>;
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
}

/// The API.
pub fn router(state: GatewayState) -> Router {
    routes::router(state)
}
