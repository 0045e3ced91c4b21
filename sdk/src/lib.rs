//! Guest SDK for weir operators.
//!
//! Source-compatible with Azure IoT Operations' `wasm_graph_sdk` 1.1.3: a module written for
//! Azure builds against this crate when its `Cargo.toml` says
//! `wasm_graph_sdk = { package = "weir-sdk", ... }` instead of the Azure feed. It offers the same
//! paths (`macros::*_operator`, `logger`, `metrics`, `state_store`), puts the same names in scope
//! where an operator macro is used, and adds the same `.read()` helpers.
//!
//! Bindings are generated once here from weir's WIT (`wit/wasm-graph`); each operator macro
//! generates only its export and maps every import back onto these modules, so all operators
//! of one crate share one `DataModel`, one `logger`, one `state_store`.

/// Bindings of `wasm-graph:processor@1.1.0` as imported by a module.
mod bindings {
    wit_bindgen::generate!({
        path: "../wit/wasm-graph",
        world: "host",
    });
}

use bindings::wasm_graph::processor as wit;

/// The operator attribute macros: `#[map_operator]`, `#[filter_operator]`, `#[branch_operator]`,
/// `#[accumulate_operator]` and `#[delay_operator]`, each optionally `(init = "fn_name")`.
pub mod macros {
    pub use weir_sdk_macros::{
        accumulate_operator, branch_operator, delay_operator, filter_operator, map_operator,
    };
}

/// Logging to the tenant's log: `logger::log(Level::Info, "context", "message")`.
pub mod logger {
    pub use crate::wit::logger::{Level, log};
}

/// Counters and histograms recorded per tenant.
pub mod metrics {
    pub use crate::wit::metrics::{
        CounterValue, HistogramValue, Label, MetricsError, add_to_counter, record_to_histogram,
    };
}

/// The tenant's key/value state store, shared by all of its deployments.
pub mod state_store {
    pub use crate::wit::hybrid_logical_clock::{HybridLogicalClock, Timespec};
    pub use crate::wit::state_store::{del, get, set, vdel};
    pub use crate::wit::state_store_types::{
        Duration, SetConditions, SetOptions, StateStoreDelResponse, StateStoreError,
        StateStoreGetResponse, StateStoreSetResponse,
    };
}

/// The data model of `wasm-graph:processor/types`.
pub mod types {
    pub use crate::wit::types::*;
}

/// The hybrid logical clock types.
pub mod hybrid_logical_clock {
    pub use crate::wit::hybrid_logical_clock::*;
}

/// The MQTT RPC client (`command-invoker`); weir answers every call with an error for now.
pub mod command_invoker {
    pub use crate::wit::command_invoker::*;
    pub use crate::wit::rpc_types::RpcError;
}

/// The schema registry; weir answers `not-available` for now.
pub mod schema_registry {
    pub use crate::wit::schema_registry::get;
    pub use crate::wit::schema_types::*;
}

impl Default for wit::state_store_types::SetOptions {
    /// Unconditional, never expires.
    fn default() -> Self {
        Self {
            conditions: wit::state_store_types::SetConditions::Unconditional,
            expires: None,
        }
    }
}

impl wit::types::BufferOrBytes {
    /// The bytes, whether the host holds them or the module does.
    pub fn read(&self) -> Vec<u8> {
        match self {
            Self::Buffer(buffer) => buffer.read(),
            Self::Bytes(bytes) => bytes.clone(),
        }
    }
}

impl wit::types::BufferOrString {
    /// The bytes, whether the host holds them or the module does.
    pub fn read(&self) -> Vec<u8> {
        match self {
            Self::Buffer(buffer) => buffer.read(),
            Self::String(string) => string.clone().into_bytes(),
        }
    }
}

impl From<wit::hybrid_logical_clock::Timespec> for std::time::Duration {
    fn from(timespec: wit::hybrid_logical_clock::Timespec) -> Self {
        std::time::Duration::new(timespec.secs, timespec.nanos)
    }
}

impl From<std::time::Duration> for wit::hybrid_logical_clock::Timespec {
    fn from(duration: std::time::Duration) -> Self {
        Self {
            secs: duration.as_secs(),
            nanos: duration.subsec_nanos(),
        }
    }
}

/// What the operator macros put in scope of the module they are used in.
#[doc(hidden)]
pub mod __prelude {
    pub use crate::wit::hybrid_logical_clock::{HybridLogicalClock, Timespec};
    pub use crate::wit::types::{
        Buffer, BufferOrBytes, BufferOrString, DataModel, Error, InlineSchema, Message,
        MessageProperties, MessageSchema, ModuleConfiguration, ModuleSchema, Snapshot, Timestamp,
    };
    pub use std::time::Duration;
}

/// Used by the macros' expansions only.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// The generated interfaces, for the macros' `with:` mappings.
    pub mod wit {
        pub use crate::wit::*;
    }
}
