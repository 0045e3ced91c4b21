//! Shared vocabulary of weir.
//!
//! Owns the identifiers every crate passes around ([`TenantId`], [`ModuleDigest`]), the hybrid
//! logical clock ([`Hlc`], [`HlcClock`]) that orders items and versions state, the host-side data
//! model of an item ([`DataItem`]) that connectors produce and operators consume, and the stable
//! error codes ([`ErrorCode`]) the API answers with, tenants' roles and quotas ([`tenancy`]), and
//! the documents of the REST API ([`rest`]). It never knows about wasmtime; HTTP only behind the
//! `client` feature, which adds the typed API client ([`client`]) that the `weir` command uses. The egress rule
//! (where weir may connect on a tenant's behalf) is behind the `egress` feature ([`egress`]).
#![warn(missing_docs)]

#[cfg(feature = "client")]
pub mod client;
pub mod dataflow_graph;
#[cfg(feature = "egress")]
pub mod egress;
mod error;
pub mod graph;
mod hlc;
mod ids;
mod item;
pub mod rest;
pub mod scale;
pub mod tenancy;

pub use error::{ErrorCode, ErrorDomain};
pub use hlc::{Hlc, HlcClock, HlcParseError};
pub use ids::{IdError, ModuleDigest, TenantId};
pub use item::{DataItem, Message, MessageSchema, Snapshot};
