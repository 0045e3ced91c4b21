//! The tenant-scoped state store that modules reach through `wasm-graph:processor/state-store`.
//!
//! Owns the [`StateStore`] seam and its semantics, which follow the Azure IoT Operations
//! distributed state store: `SET` with `NX`/`NEX` conditions and expiry, `GET`, `DEL`, and `VDEL`
//! (delete only if the value matches); every write gets an HLC version, and a version used as a
//! *fencing token* protects a key from writers holding an older token. Backends: [`MemoryStateStore`]
//! (in process), SQLite (`weir-store`, the embedded default of `weir serve`) and, with the
//! feature `redis`, `RedisStateStore` (shared by several executors); all pass the same
//! [`testing::conformance`] suite.
//!
//! Tenancy is in the signature: every operation takes a [`StateScope`], which names the tenant and
//! its limits, and a backend derives its storage key from the scope in exactly one place. There
//! is no operation on a bare key. This crate never knows about wasmtime or HTTP.
#![warn(missing_docs)]

mod memory;
mod metered;
pub mod partitions;
#[cfg(feature = "redis")]
mod redis_partitions;
#[cfg(feature = "redis")]
mod redis_store;
pub mod testing;

use std::time::Duration;

use async_trait::async_trait;
use weir_api::{Hlc, TenantId};

pub use memory::MemoryStateStore;
pub use metered::MeteredStateStore;
#[cfg(feature = "redis")]
pub use redis_partitions::RedisPartitionCheckpoints;
#[cfg(feature = "redis")]
pub use redis_store::{
    RECLAIM_BATCH, RedisConfig, RedisConnectError, RedisStateStore, masked_url, tenant_keys,
};

/// How far in the future a fencing token may lie; further is a forged or broken clock.
pub const MAX_FENCING_TOKEN_DRIFT: Duration = Duration::from_secs(60);

/// Whose keys an operation touches, and the limits that apply to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateScope {
    tenant: TenantId,
    limits: StateLimits,
}

impl StateScope {
    /// The keys of `tenant`, bounded by `limits`.
    pub fn new(tenant: TenantId, limits: StateLimits) -> Self {
        Self { tenant, limits }
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The limits.
    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }
}

/// Bounds on one tenant's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Keys stored at once.
    pub max_keys: u64,
    /// Bytes of keys and values stored at once.
    pub max_bytes: u64,
    /// Length of one key.
    pub max_key_bytes: u64,
}

impl StateLimits {
    /// The state bounds of a tenant's quotas.
    pub fn of(quotas: &weir_api::tenancy::Quotas) -> Self {
        Self {
            max_keys: quotas.max_state_keys,
            max_bytes: quotas.max_state_bytes,
            max_key_bytes: quotas.max_state_key_bytes,
        }
    }
}

/// When a `set` may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCondition {
    /// Always.
    #[default]
    Unconditional,
    /// Only if the key is absent (`NX`).
    OnlyIfDoesNotExist,
    /// Only if the key is absent or already holds the same value (`NEX`).
    OnlyIfEqualOrDoesNotExist,
}

/// Options of a `set`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetOptions {
    /// When the write happens.
    pub condition: SetCondition,
    /// The key disappears this long after the write.
    pub expires: Option<Duration>,
    /// A version the writer holds; the write fails if the key is fenced by a newer one.
    pub fencing_token: Option<Hlc>,
}

/// The answer to a `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResponse {
    /// The value, if the key exists.
    pub value: Option<Vec<u8>>,
    /// The version of the value's write.
    pub version: Option<Hlc>,
}

/// The answer to a `set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetResponse {
    /// Whether the value was written (false when the condition failed).
    pub written: bool,
    /// The version of the write; usable as a fencing token.
    pub version: Option<Hlc>,
}

/// The answer to a `del` or `vdel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelResponse {
    /// 1 when deleted, 0 when the key was absent, -1 when a `vdel` value did not match.
    pub deleted: i64,
    /// The version of the deletion, when something was deleted.
    pub version: Option<Hlc>,
}

/// What a tenant holds in the state store now: the figures its `max_state_keys` and
/// `max_state_bytes` quotas are checked against on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateUsage {
    /// Live keys (a key past its expiry is not counted).
    pub keys: u64,
    /// Bytes of the live keys and their values: the sum of key length plus value length, as
    /// `max_state_bytes` counts them.
    pub bytes: u64,
}

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Keys must have at least one byte.
    #[error("key length zero")]
    EmptyKey,
    /// The key is longer than the tenant's limit.
    #[error("key is {len} bytes, over the limit of {max}")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: u64,
    },
    /// The write would exceed the tenant's state quota.
    #[error("quota exceeded: state {what} limit is {limit}")]
    QuotaExceeded {
        /// `keys` or `bytes`.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The key is fenced and the request carried no fencing token.
    #[error("fencing token required")]
    FencingTokenRequired,
    /// The key is fenced by a newer token than the request's.
    #[error("fencing token lower version")]
    FencingTokenLowerVersion,
    /// The fencing token lies further in the future than clocks may drift.
    #[error("fencing token too far in the future")]
    FencingTokenInFuture,
    /// The expiry is zero or too large to represent.
    #[error("invalid expiry")]
    InvalidExpiry,
    /// The backend did not answer within the request's timeout.
    #[error("state store request timed out")]
    Timeout,
    /// The backend could not be reached or answered nonsense.
    #[error("state store backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StateError {
    /// Whether the request itself was wrong (the caller's fault), as opposed to the backend.
    pub fn is_request_error(&self) -> bool {
        !matches!(self, Self::Timeout | Self::Unavailable(_))
    }
}

/// A tenant-scoped key/value store with versions and fencing. Implementations must pass
/// [`testing::conformance`].
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The value of `key` and its version.
    async fn get(&self, scope: &StateScope, key: &[u8]) -> Result<GetResponse, StateError>;

    /// Writes `value` under `key` if `options` allow it.
    async fn set(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
    ) -> Result<SetResponse, StateError>;

    /// Deletes `key`.
    async fn del(
        &self,
        scope: &StateScope,
        key: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError>;

    /// Deletes `key` only if it holds `value`.
    async fn vdel(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError>;

    /// Up to `limit` keys of the scope, in byte order.
    async fn keys(&self, scope: &StateScope, limit: usize) -> Result<Vec<Vec<u8>>, StateError>;

    /// The scope's live keys and their bytes, as its `max_state_keys` and `max_state_bytes`
    /// quotas count them: read from the counters a backend keeps for those quotas (or from
    /// the tenant's entries), never by listing every key. Keys past their expiry are not
    /// counted (a backend may reclaim them first).
    async fn usage(&self, scope: &StateScope) -> Result<StateUsage, StateError>;

    /// Deletes every key of the scope (its tenant was deleted). Backends with a cheaper way
    /// than deleting key by key override it.
    async fn clear(&self, scope: &StateScope) -> Result<(), StateError> {
        loop {
            let keys = self.keys(scope, 1000).await?;
            if keys.is_empty() {
                return Ok(());
            }
            for key in keys {
                self.del(scope, &key, None).await?;
            }
        }
    }
}

/// Checks a key against the scope's limits; every backend calls it first.
pub fn check_key(scope: &StateScope, key: &[u8]) -> Result<(), StateError> {
    if key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    if key.len() as u64 > scope.limits.max_key_bytes {
        return Err(StateError::KeyTooLong {
            len: key.len(),
            max: scope.limits.max_key_bytes,
        });
    }
    Ok(())
}

/// Checks a request's fencing token against the token protecting a key (`None`: unfenced),
/// given the current wall-clock time; every backend applies the same rule.
pub fn check_fencing(
    stored: Option<&Hlc>,
    presented: Option<&Hlc>,
    now: Duration,
) -> Result<(), StateError> {
    if let Some(presented) = presented
        && presented.time() > now + MAX_FENCING_TOKEN_DRIFT
    {
        return Err(StateError::FencingTokenInFuture);
    }
    match (stored, presented) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(StateError::FencingTokenRequired),
        (Some(stored), Some(presented)) if presented < stored => {
            Err(StateError::FencingTokenLowerVersion)
        }
        (Some(_), Some(_)) => Ok(()),
    }
}
