//! Runs tenants' WebAssembly operator components.
//!
//! Owns the wasmtime engine ([`OperatorEngine`]: component model, pooling allocator, fuel, epoch
//! interruption with async yielding), module validation and the compile cache by digest
//! ([`CompiledModule`]), the host side of the `wasm-graph:processor@1.1.0` contract (and of the
//! preview `tinykube-graph:processor@1.0.0`, through an adapter), and one graph node's operator
//! under per-call limits ([`OperatorInstance`]). A faulty module fails the call it is in, with a
//! typed [`OperatorError`]; it never takes the executor down.
//!
//! Never knows about HTTP: the gateway reaches it through the scheduler.

mod artifacts;
mod bindings;
pub mod dataflow;
mod engine;
mod host;
mod inference;
pub mod logs;
pub mod metrics;
mod module;
mod operator;
pub mod runtime;
pub mod telemetry;

pub use engine::{
    ArtifactConfig, CompileCounts, EngineConfig, EngineError, OperatorEngine, PoolingConfig,
};
pub use host::{HostBuffer, LiveQuotas, NodeEnv};
pub use inference::{
    INFERENCE_FUEL_PER_MS, InferenceBackend, InferenceConfig, InferenceLane, InferenceSetupError,
    TractBackend,
};
pub use module::{
    CompiledModule, Contract, ModuleError, OperatorKind, UnsupportedImport, check_header,
    sha256_digest,
};
pub use operator::{
    CallLimits, InvalidOutput, ModuleConfiguration, ModuleSchema, OperatorError, OperatorInstance,
    OperatorStats,
};
