//! Places deployments on executors and keeps them there: the executor registry, placement as a
//! pure function, the deployment state machine, reconciliation and failover.
//!
//! Empty until the scheduling work begins. It must never depend on wasmtime or the executor
//! (checked by `tests/tests/layering.rs`).
