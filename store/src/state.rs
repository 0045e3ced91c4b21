//! The tenant state store on SQLite: what modules keep through `state-store` survives a restart
//! of `weir serve`. The rules (keys, fencing, conditions, quotas) are `weir-state`'s; this file
//! only keeps the rows. Expiry runs on the wall clock.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};
use weir_api::{Hlc, HlcClock};
use weir_state::{
    DelResponse, GetResponse, SetCondition, SetOptions, SetResponse, StateError, StateScope,
    StateStore, StateUsage, check_fencing, check_key,
};

use crate::sqlite::Db;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE state (
        tenant TEXT NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        v_secs INTEGER NOT NULL,
        v_nanos INTEGER NOT NULL,
        v_counter INTEGER NOT NULL,
        v_node TEXT NOT NULL,
        expires_ms INTEGER,
        f_secs INTEGER,
        f_nanos INTEGER,
        f_counter INTEGER,
        f_node TEXT,
        PRIMARY KEY (tenant, key)
    );
"];

/// Tenant state on SQLite.
#[derive(Debug)]
pub struct SqliteStateStore {
    db: Db,
    clock: HlcClock,
}

struct Row {
    value: Vec<u8>,
    version: Hlc,
    fence: Option<Hlc>,
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StateError {
    StateError::Unavailable(Box::new(error))
}

fn wall() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    i64::try_from(wall().as_millis()).unwrap_or(i64::MAX)
}

fn hlc(secs: i64, nanos: i64, counter: i64, node: String) -> Hlc {
    Hlc {
        secs: u64::try_from(secs).unwrap_or(0),
        nanos: u32::try_from(nanos).unwrap_or(0),
        counter: u64::try_from(counter).unwrap_or(0),
        node_id: node,
    }
}

fn parts(hlc: &Hlc) -> (i64, i64, i64) {
    (
        i64::try_from(hlc.secs).unwrap_or(i64::MAX),
        i64::from(hlc.nanos),
        i64::try_from(hlc.counter).unwrap_or(i64::MAX),
    )
}

/// The live row of `key`; an expired one is deleted first.
fn live(tx: &Transaction<'_>, tenant: &str, key: &[u8]) -> rusqlite::Result<Option<Row>> {
    tx.execute(
        "DELETE FROM state WHERE tenant = ?1 AND key = ?2 AND expires_ms IS NOT NULL AND expires_ms <= ?3",
        params![tenant, key, now_ms()],
    )?;
    tx.query_row(
        "SELECT value, v_secs, v_nanos, v_counter, v_node, f_secs, f_nanos, f_counter, f_node FROM state WHERE tenant = ?1 AND key = ?2",
        params![tenant, key],
        |r| {
            let fence = match r.get::<_, Option<i64>>(5)? {
                Some(secs) => Some(hlc(secs, r.get(6)?, r.get(7)?, r.get(8)?)),
                None => None,
            };
            Ok(Row { value: r.get(0)?, version: hlc(r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?), fence })
        },
    )
    .optional()
}

impl SqliteStateStore {
    /// Opens (creating as needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<Self, crate::StoreError> {
        Ok(Self {
            db: Db::open(Some(path), MIGRATIONS)?,
            clock: HlcClock::new("weir-state"),
        })
    }

    /// A state store in memory, for tests.
    pub fn in_memory() -> Result<Self, crate::StoreError> {
        Ok(Self {
            db: Db::open(None, MIGRATIONS)?,
            clock: HlcClock::new("weir-state"),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let outcome = self
            .db
            .with(move |connection| {
                let tx = connection.transaction().map_err(crate::sqlite::database)?;
                let result = work(&tx);
                if result.is_ok() {
                    tx.commit().map_err(crate::sqlite::database)?;
                }
                Ok(result)
            })
            .await;
        outcome.map_err(unavailable)?
    }

    async fn delete(
        &self,
        scope: &StateScope,
        key: &[u8],
        expected: Option<Vec<u8>>,
        fencing: Option<Hlc>,
    ) -> Result<DelResponse, StateError> {
        check_key(scope, key)?;
        let (tenant, key) = (scope.tenant().to_string(), key.to_vec());
        let version = self.clock.now();
        self.run(move |tx| {
            let Some(row) = live(tx, &tenant, &key).map_err(unavailable)? else {
                return Ok(DelResponse {
                    deleted: 0,
                    version: None,
                });
            };
            check_fencing(row.fence.as_ref(), fencing.as_ref(), wall())?;
            if expected.is_some_and(|value| value != row.value) {
                return Ok(DelResponse {
                    deleted: -1,
                    version: None,
                });
            }
            tx.execute(
                "DELETE FROM state WHERE tenant = ?1 AND key = ?2",
                params![tenant, key],
            )
            .map_err(unavailable)?;
            Ok(DelResponse {
                deleted: 1,
                version: Some(version),
            })
        })
        .await
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn get(&self, scope: &StateScope, key: &[u8]) -> Result<GetResponse, StateError> {
        check_key(scope, key)?;
        let (tenant, key) = (scope.tenant().to_string(), key.to_vec());
        self.run(move |tx| {
            let row = live(tx, &tenant, &key).map_err(unavailable)?;
            Ok(match row {
                Some(row) => GetResponse {
                    value: Some(row.value),
                    version: Some(row.version),
                },
                None => GetResponse {
                    value: None,
                    version: None,
                },
            })
        })
        .await
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
    ) -> Result<SetResponse, StateError> {
        check_key(scope, key)?;
        let expires_ms = match options.expires {
            None => None,
            Some(ttl) if ttl.is_zero() => return Err(StateError::InvalidExpiry),
            Some(ttl) => Some(
                i64::try_from(ttl.as_millis().max(1))
                    .ok()
                    .and_then(|ms| ms.checked_add(now_ms()))
                    .ok_or(StateError::InvalidExpiry)?,
            ),
        };
        let limits = *scope.limits();
        let (tenant, key, value) = (scope.tenant().to_string(), key.to_vec(), value.to_vec());
        let version = self.clock.now();
        self.run(move |tx| {
            let existing = live(tx, &tenant, &key).map_err(unavailable)?;
            check_fencing(existing.as_ref().and_then(|r| r.fence.as_ref()), options.fencing_token.as_ref(), wall())?;
            let allowed = match (options.condition, &existing) {
                (SetCondition::Unconditional, _) | (_, None) => true,
                (SetCondition::OnlyIfDoesNotExist, Some(_)) => false,
                (SetCondition::OnlyIfEqualOrDoesNotExist, Some(row)) => row.value == value,
            };
            if !allowed {
                return Ok(SetResponse { written: false, version: None });
            }
            let (keys, bytes): (i64, i64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(length(key) + length(value)), 0) FROM state
                     WHERE tenant = ?1 AND (expires_ms IS NULL OR expires_ms > ?2)",
                    params![tenant, now_ms()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(unavailable)?;
            let old_size = existing.as_ref().map_or(0, |r| key.len() + r.value.len()) as u64;
            if existing.is_none() && u64::try_from(keys).unwrap_or(0) >= limits.max_keys {
                return Err(StateError::QuotaExceeded { what: "keys", limit: limits.max_keys });
            }
            let total = u64::try_from(bytes).unwrap_or(0) - old_size + (key.len() + value.len()) as u64;
            if total > limits.max_bytes {
                return Err(StateError::QuotaExceeded { what: "bytes", limit: limits.max_bytes });
            }
            // A fenced key stays fenced by the newest token it was written with.
            let fence = options.fencing_token.or(existing.and_then(|r| r.fence));
            let (v_secs, v_nanos, v_counter) = parts(&version);
            let fence_parts = fence.as_ref().map(parts);
            tx.execute(
                "INSERT OR REPLACE INTO state (tenant, key, value, v_secs, v_nanos, v_counter, v_node, expires_ms, f_secs, f_nanos, f_counter, f_node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    tenant,
                    key,
                    value,
                    v_secs,
                    v_nanos,
                    v_counter,
                    version.node_id,
                    expires_ms,
                    fence_parts.map(|p| p.0),
                    fence_parts.map(|p| p.1),
                    fence_parts.map(|p| p.2),
                    fence.as_ref().map(|f| f.node_id.clone()),
                ],
            )
            .map_err(unavailable)?;
            Ok(SetResponse { written: true, version: Some(version) })
        })
        .await
    }

    async fn del(
        &self,
        scope: &StateScope,
        key: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.delete(scope, key, None, fencing_token.cloned()).await
    }

    async fn vdel(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.delete(scope, key, Some(value.to_vec()), fencing_token.cloned())
            .await
    }

    async fn keys(&self, scope: &StateScope, limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        let tenant = scope.tenant().to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |tx| {
            let mut statement = tx
                .prepare("SELECT key FROM state WHERE tenant = ?1 AND (expires_ms IS NULL OR expires_ms > ?2) ORDER BY key LIMIT ?3")
                .map_err(unavailable)?;
            let rows = statement.query_map(params![tenant, now_ms(), limit], |r| r.get(0)).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<Vec<u8>>>>().map_err(unavailable)
        })
        .await
    }

    /// The count and size the quota check of `set` reads: one aggregate over the tenant's rows
    /// (the primary key's `tenant` prefix), expired rows left out.
    async fn usage(&self, scope: &StateScope) -> Result<StateUsage, StateError> {
        let tenant = scope.tenant().to_string();
        self.run(move |tx| {
            let (keys, bytes): (i64, i64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(length(key) + length(value)), 0) FROM state
                     WHERE tenant = ?1 AND (expires_ms IS NULL OR expires_ms > ?2)",
                    params![tenant, now_ms()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(unavailable)?;
            Ok(StateUsage {
                keys: u64::try_from(keys).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            })
        })
        .await
    }

    /// One statement, expired rows included.
    async fn clear(&self, scope: &StateScope) -> Result<(), StateError> {
        let tenant = scope.tenant().to_string();
        self.run(move |tx| {
            tx.execute("DELETE FROM state WHERE tenant = ?1", params![tenant])
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }
}
