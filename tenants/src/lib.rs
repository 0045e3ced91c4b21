//! Tenants of weir and what they may consume.
//!
//! Owns identity ([`JwtVerifier`] turns a bearer token into a [`Principal`] with a [`Role`] and,
//! for every role but admin, a tenant; [`TokenIssuer`] mints weir's own tokens) and [`Quotas`]:
//! every consumable thing a tenant can use is bounded, each bound has a name here and one
//! default in `impl Default`. Rate limiting and usage metering join this crate with the gateway.
//! It never knows about wasmtime or HTTP.
#![warn(missing_docs)]

mod identity;

pub use identity::{
    AuthError, Claims, JwtVerifier, KeyError, MemoryRevocations, MintError, Principal,
    RevocationList, Secret, TokenIssuer, VerificationKey,
};
// The quota and role vocabulary lives in weir-api so the typed API client speaks it too.
pub use weir_api::tenancy::{Quotas, Role};
