//! Shared vocabulary of weir.
//!
//! Owns the identifiers every crate passes around ([`TenantId`], [`ModuleDigest`]), the hybrid
//! logical clock ([`Hlc`], [`HlcClock`]) that orders items and versions state, the host-side data
//! model of an item ([`DataItem`]) that connectors produce and operators consume, and the stable
//! error codes ([`ErrorCode`]) the API answers with. It never knows about wasmtime or HTTP.
#![warn(missing_docs)]

mod error;
pub mod graph;
mod hlc;
mod ids;
mod item;

pub use error::{ErrorCode, ErrorDomain};
pub use hlc::{Hlc, HlcClock, HlcParseError};
pub use ids::{IdError, ModuleDigest, TenantId};
pub use item::{DataItem, Message, MessageSchema, Snapshot};
