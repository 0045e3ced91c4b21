//! The REST API of weir (`/v1`): authentication of tenants' JWTs, resources (modules, graphs,
//! endpoints, deployments, state, metrics, logs), problem+json errors, and artifact upload with
//! validation before anything lands.
//!
//! Empty until the gateway issue: the foundation issue built what it will serve. It must never
//! depend on wasmtime or the executor; it reaches them through the scheduler's control plane
//! (checked by `tests/tests/layering.rs`).
