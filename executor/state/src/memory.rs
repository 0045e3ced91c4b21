use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;
use weir_api::{Hlc, HlcClock, TenantId};

use crate::{
    DelResponse, GetResponse, SetCondition, SetOptions, SetResponse, StateError, StateLimits,
    StateScope, StateStore, StateUsage, check_fencing, check_key,
};

/// The embedded state store: per-tenant maps in this process, lost on restart. Expiry runs on
/// tokio's clock, so tests drive it with `tokio::time::pause`.
#[derive(Debug)]
pub struct MemoryStateStore {
    clock: HlcClock,
    tenants: Mutex<HashMap<TenantId, TenantState>>,
}

#[derive(Debug, Default)]
struct TenantState {
    entries: BTreeMap<Vec<u8>, Entry>,
    bytes: u64,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    version: Hlc,
    expires_at: Option<Instant>,
    fencing_token: Option<Hlc>,
}

impl Entry {
    fn size(key: &[u8], value: &[u8]) -> u64 {
        (key.len() + value.len()) as u64
    }
}

impl TenantState {
    /// The live entry under `key`; an expired one is removed first.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|entry| entry.expires_at.is_some_and(|at| at <= now));
        if expired {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(Entry::size(key, &entry.value));
        }
    }

    /// Removes every entry past its expiry, so the counts are the live keys'.
    fn reclaim(&mut self, now: Instant) {
        let mut freed = 0;
        self.entries.retain(|key, entry| {
            let live = entry.expires_at.is_none_or(|at| at > now);
            if !live {
                freed += Entry::size(key, &entry.value);
            }
            live
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    /// The refusal a write of `key` = `value` meets under `limits`, if any; `old_size` is the
    /// size of the live entry it replaces.
    fn over(
        &self,
        limits: &StateLimits,
        key: &[u8],
        value: &[u8],
        old_size: Option<u64>,
    ) -> Option<StateError> {
        if old_size.is_none() && self.entries.len() as u64 >= limits.max_keys {
            return Some(StateError::QuotaExceeded {
                what: "keys",
                limit: limits.max_keys,
            });
        }
        let bytes = self.bytes - old_size.unwrap_or(0) + Entry::size(key, value);
        (bytes > limits.max_bytes).then_some(StateError::QuotaExceeded {
            what: "bytes",
            limit: limits.max_bytes,
        })
    }
}

impl MemoryStateStore {
    /// An empty store whose versions carry `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            clock: HlcClock::new(node_id),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn wall_clock() -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl Default for MemoryStateStore {
    fn default() -> Self {
        Self::new("weir-state")
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, scope: &StateScope, key: &[u8]) -> Result<GetResponse, StateError> {
        check_key(scope, key)?;
        let mut tenants = self.tenants.lock().await;
        let Some(state) = tenants.get_mut(scope.tenant()) else {
            return Ok(GetResponse {
                value: None,
                version: None,
            });
        };
        Ok(match state.live(key, Instant::now()) {
            Some(entry) => GetResponse {
                value: Some(entry.value.clone()),
                version: Some(entry.version.clone()),
            },
            None => GetResponse {
                value: None,
                version: None,
            },
        })
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
    ) -> Result<SetResponse, StateError> {
        check_key(scope, key)?;
        let now = Instant::now();
        let expires_at = match options.expires {
            None => None,
            Some(ttl) if ttl.is_zero() => return Err(StateError::InvalidExpiry),
            Some(ttl) => Some(now.checked_add(ttl).ok_or(StateError::InvalidExpiry)?),
        };
        let mut tenants = self.tenants.lock().await;
        let state = tenants.entry(scope.tenant().clone()).or_default();
        let (old_size, old_token, allowed) = match state.live(key, now) {
            None => (None, None, true),
            Some(entry) => (
                Some(Entry::size(key, &entry.value)),
                entry.fencing_token.clone(),
                match options.condition {
                    SetCondition::Unconditional => true,
                    SetCondition::OnlyIfDoesNotExist => false,
                    SetCondition::OnlyIfEqualOrDoesNotExist => entry.value == value,
                },
            ),
        };
        check_fencing(
            old_token.as_ref(),
            options.fencing_token.as_ref(),
            Self::wall_clock(),
        )?;
        if !allowed {
            return Ok(SetResponse {
                written: false,
                version: None,
            });
        }
        // Dead keys never refuse a write: all of them are reclaimed before a refusal.
        if state.over(scope.limits(), key, value, old_size).is_some() {
            state.reclaim(now);
            if let Some(refusal) = state.over(scope.limits(), key, value, old_size) {
                return Err(refusal);
            }
        }
        let bytes = state.bytes - old_size.unwrap_or(0) + Entry::size(key, value);
        let version = self.clock.now();
        // A fenced key stays fenced by the newest token it was written with.
        let fencing_token = options.fencing_token.or(old_token);
        state.bytes = bytes;
        state.entries.insert(
            key.to_vec(),
            Entry {
                value: value.to_vec(),
                version: version.clone(),
                expires_at,
                fencing_token,
            },
        );
        Ok(SetResponse {
            written: true,
            version: Some(version),
        })
    }

    async fn del(
        &self,
        scope: &StateScope,
        key: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.delete(scope, key, None, fencing_token).await
    }

    async fn vdel(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.delete(scope, key, Some(value), fencing_token).await
    }

    async fn keys(&self, scope: &StateScope, limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        let now = Instant::now();
        let tenants = self.tenants.lock().await;
        Ok(tenants.get(scope.tenant()).map_or_else(Vec::new, |state| {
            state
                .entries
                .iter()
                .filter(|(_, entry)| entry.expires_at.is_none_or(|at| at > now))
                .map(|(key, _)| key.clone())
                .take(limit)
                .collect()
        }))
    }

    /// The tenant's counters, once its dead entries are reclaimed (one pass over its entries,
    /// which `max_state_keys` bounds).
    async fn usage(&self, scope: &StateScope) -> Result<StateUsage, StateError> {
        let mut tenants = self.tenants.lock().await;
        Ok(tenants
            .get_mut(scope.tenant())
            .map_or_else(StateUsage::default, |state| {
                state.reclaim(Instant::now());
                StateUsage {
                    keys: state.entries.len() as u64,
                    bytes: state.bytes,
                }
            }))
    }
}

impl MemoryStateStore {
    async fn delete(
        &self,
        scope: &StateScope,
        key: &[u8],
        expected: Option<&[u8]>,
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        check_key(scope, key)?;
        let mut tenants = self.tenants.lock().await;
        let Some(state) = tenants.get_mut(scope.tenant()) else {
            return Ok(DelResponse {
                deleted: 0,
                version: None,
            });
        };
        let Some(entry) = state.live(key, Instant::now()) else {
            return Ok(DelResponse {
                deleted: 0,
                version: None,
            });
        };
        check_fencing(
            entry.fencing_token.as_ref(),
            fencing_token,
            Self::wall_clock(),
        )?;
        if expected.is_some_and(|value| value != entry.value) {
            return Ok(DelResponse {
                deleted: -1,
                version: None,
            });
        }
        state.remove(key);
        Ok(DelResponse {
            deleted: 1,
            version: Some(self.clock.now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_the_conformance_suite() {
        crate::testing::conformance(&MemoryStateStore::default()).await;
    }

    /// As on Redis: a key past its expiry that nothing has touched since does not count
    /// against the quota, nor in the usage.
    #[tokio::test(start_paused = true)]
    async fn dead_keys_never_refuse_a_write_nor_count_in_usage() {
        let store = MemoryStateStore::default();
        let s = StateScope::new(
            TenantId::new("dead-keys").unwrap(),
            StateLimits {
                max_keys: 2,
                max_bytes: 100,
                max_key_bytes: 8,
            },
        );
        let short = SetOptions {
            expires: Some(Duration::from_secs(1)),
            ..SetOptions::default()
        };
        for key in [b"a".as_slice(), b"b"] {
            store.set(&s, key, b"v", short.clone()).await.unwrap();
        }
        assert!(matches!(
            store.set(&s, b"c", b"v", SetOptions::default()).await,
            Err(StateError::QuotaExceeded { what: "keys", .. })
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.usage(&s).await.unwrap(), StateUsage::default());
        for key in [b"a".as_slice(), b"b"] {
            store.set(&s, key, b"v", short.clone()).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for key in [b"c".as_slice(), b"d"] {
            store
                .set(&s, key, b"v", SetOptions::default())
                .await
                .unwrap();
        }
        assert_eq!(
            store.usage(&s).await.unwrap(),
            StateUsage { keys: 2, bytes: 4 }
        );
    }
}
