//! Tenants of weir and what they may consume.
//!
//! Owns identity ([`JwtVerifier`] turns a bearer token into a [`Principal`] with a [`Role`] and,
//! for every role but admin, a tenant; [`TokenIssuer`] mints weir's own tokens), [`Quotas`]
//! (every consumable thing a tenant can use is bounded, each bound has a name and one default in
//! `impl Default`; the type lives in `weir_api::tenancy` so the API client speaks it too), and
//! [`ApiLimits`]: each tenant's API request rate (GCRA via `governor`) and request counters.
//! It never knows about wasmtime or HTTP.
#![warn(missing_docs)]

mod identity;
mod limits;

pub use identity::{
    AuthError, Claims, JwtVerifier, KeyError, MemoryRevocations, MintError, Principal,
    RevocationList, Secret, TokenIssuer, VerificationKey,
};
pub use limits::{ApiLimits, MessageRates, RateRefusal};
// The quota and role vocabulary lives in weir-api so the typed API client speaks it too.
pub use weir_api::tenancy::{Quotas, Role};
