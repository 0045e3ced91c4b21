//! The embedded control store: one SQLite file (WAL), schema versions in `PRAGMA user_version`,
//! foreign keys so deleting a tenant deletes everything it owns. rusqlite is blocking, so each
//! call runs on tokio's blocking pool behind one connection. Writes bounded by a quota check
//! the bound in their own `IMMEDIATE` transaction. The database file is created 0600 (SQLite
//! gives its WAL and SHM files the database's mode) and deleted content is overwritten
//! (`secure_delete`).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use weir_api::rest::DeadLetter;
use weir_api::{ModuleDigest, TenantId};
use weir_tenants::{Quotas, Role};

use crate::sealing::{Sealer, endpoint_identity};
use crate::{
    ControlStore, DeadLetterAppend, DeadLetterCounts, DeletedTenant, DeploymentRecord,
    DeviceRecord, EndpointRecord, GraphRecord, MAX_DEAD_LETTERS, MAX_REVISIONS, ModuleLogRecord,
    ModuleRecord, NewDevice, RevisionRecord, StatusChange, StoreError, TenantRecord, TokenRecord,
    TokenScope, USAGE_DAYS_KEPT, USAGE_HOURS_KEPT, UsageCounters, UsageDelta, UsagePeriodRecord,
};

/// Schema versions, applied in order; never edit one that has shipped, add the next.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        quotas TEXT NOT NULL,
        suspended INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        tenant TEXT REFERENCES tenants(id) ON DELETE CASCADE,
        subject TEXT NOT NULL,
        role TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE modules (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        operators TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, name, version)
    );
    CREATE TABLE graphs (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, name, version)
    );
    CREATE TABLE deployments (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    CREATE TABLE deployment_history (
        tenant TEXT NOT NULL,
        deployment TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL,
        at INTEGER NOT NULL,
        FOREIGN KEY (tenant, deployment) REFERENCES deployments(tenant, id) ON DELETE CASCADE
    );
",
    "
    CREATE TABLE endpoints (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        address TEXT,
        settings TEXT NOT NULL,
        secret TEXT,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
    );
",
    // Tenants get an instance (tokens are bound to it); revocations move to a table of their
    // own that outlives tenants; blobs are found by digest (reference counting); endpoint
    // secrets are sealed (the plain column is emptied when the store opens).
    "
    ALTER TABLE tenants ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    UPDATE tenants SET instance = lower(hex(randomblob(16)));
    CREATE TABLE revoked_tokens (
        id TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    INSERT INTO revoked_tokens (id, expires_at) SELECT id, expires_at FROM tokens WHERE revoked = 1;
    CREATE INDEX modules_digest ON modules (digest);
    CREATE INDEX graphs_digest ON graphs (digest);
    ALTER TABLE endpoints ADD COLUMN sealed_secret BLOB;
",
    // Dead letters kept across restarts, numbered per tenant (the counters row keeps the last
    // number, so numbers are never reused, the evictions, and the letters and bytes kept, so an
    // append need not sum the table); a deployment's letters outlive it, a tenant's do not. Small columns first: eviction reads `seq` and `bytes` without the payload's pages.
    // Device credentials of the embedded MQTT broker (a SHA-256 of each password).
    "
    CREATE TABLE dead_letters (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        input_bytes INTEGER NOT NULL,
        payload_truncated INTEGER NOT NULL,
        deployment TEXT NOT NULL,
        node TEXT NOT NULL,
        reason TEXT NOT NULL,
        topic TEXT NOT NULL,
        detail TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (tenant, seq)
    );
    CREATE INDEX dead_letters_deployment ON dead_letters (tenant, deployment, seq);
    CREATE TABLE dead_letter_counters (
        tenant TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        appended INTEGER NOT NULL,
        evicted INTEGER NOT NULL,
        kept INTEGER NOT NULL,
        kept_bytes INTEGER NOT NULL
    );
    CREATE TABLE devices (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        secret_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
    );
",
    // Usage a platform bills on (a running total per tenant, and hours and days, UTC), and
    // modules' log lines kept across restarts (numbered per tenant; the counters row keeps the
    // last number so numbers are never reused after trimming).
    "
    CREATE TABLE usage_totals (
        tenant TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        fuel INTEGER NOT NULL,
        messages_in INTEGER NOT NULL,
        messages_out INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        state_ops INTEGER NOT NULL
    );
    CREATE TABLE usage_periods (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        period TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        fuel INTEGER NOT NULL,
        messages_in INTEGER NOT NULL,
        messages_out INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        state_ops INTEGER NOT NULL,
        PRIMARY KEY (tenant, period, start_ms)
    );
    CREATE TABLE module_logs (
        tenant TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        level TEXT NOT NULL,
        deployment TEXT,
        node TEXT NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (tenant, seq)
    );
    CREATE TABLE module_log_counters (
        tenant TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        last_seq INTEGER NOT NULL
    );
",
    // A deployment's history is trimmed to its newest entries on every change (the scheduler
    // records changes on its own, so they are no longer bounded by API requests).
    "
    CREATE INDEX IF NOT EXISTS deployment_history_by_deployment ON deployment_history (tenant, deployment);
",
    // A deployment's revisions (rolling updates and rollbacks): what each ran, who asked, and
    // how it went; the newest `MAX_REVISIONS` are kept.
    "
    CREATE TABLE deployment_revisions (
        tenant TEXT NOT NULL,
        deployment TEXT NOT NULL,
        revision INTEGER NOT NULL,
        spec TEXT NOT NULL,
        graph_digest TEXT NOT NULL,
        modules TEXT NOT NULL,
        at INTEGER NOT NULL,
        by TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (tenant, deployment, revision),
        FOREIGN KEY (tenant, deployment) REFERENCES deployments(tenant, id) ON DELETE CASCADE
    );
",
];

/// Status changes kept per deployment: the newest; older ones are dropped as new ones come.
pub(crate) const MAX_HISTORY: u32 = 200;

/// Drops all but the newest [`MAX_HISTORY`] status changes of a deployment.
fn trim_history(c: &rusqlite::Connection, tenant: &str, id: &str) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM deployment_history WHERE rowid IN (SELECT rowid FROM deployment_history WHERE tenant = ?1 AND deployment = ?2 ORDER BY rowid DESC LIMIT -1 OFFSET ?3)",
        params![tenant, id, MAX_HISTORY],
    )
    .map_err(database)?;
    Ok(())
}

/// Milliseconds in an hour and in a day.
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

fn add_usage_row(
    transaction: &rusqlite::Transaction<'_>,
    tenant: &str,
    period: &str,
    start_ms: u64,
    c: &UsageCounters,
) -> rusqlite::Result<usize> {
    transaction.execute(
        "INSERT INTO usage_periods (tenant, period, start_ms, fuel, messages_in, messages_out, bytes_in, state_ops)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (tenant, period, start_ms) DO UPDATE SET
           fuel = fuel + excluded.fuel, messages_in = messages_in + excluded.messages_in,
           messages_out = messages_out + excluded.messages_out,
           bytes_in = bytes_in + excluded.bytes_in, state_ops = state_ops + excluded.state_ops",
        params![
            tenant,
            period,
            to_i64(start_ms),
            to_i64(c.fuel),
            to_i64(c.messages_in),
            to_i64(c.messages_out),
            to_i64(c.bytes_in),
            to_i64(c.state_ops)
        ],
    )
}

fn usage_counters(row: &Row<'_>, first: usize) -> rusqlite::Result<UsageCounters> {
    Ok(UsageCounters {
        fuel: to_u64(row.get(first)?),
        messages_in: to_u64(row.get(first + 1)?),
        messages_out: to_u64(row.get(first + 2)?),
        bytes_in: to_u64(row.get(first + 3)?),
        state_ops: to_u64(row.get(first + 4)?),
    })
}

/// Creates `path` private to this user if missing, and makes it (and SQLite's WAL and SHM
/// files, if present) private if not.
fn private_file(path: &Path) -> Result<(), StoreError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(database)?;
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    for file in [path.to_path_buf(), with_suffix("-wal"), with_suffix("-shm")] {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(database(error));
            }
            _ => {}
        }
    }
    Ok(())
}

/// One SQLite connection used from async code: each call runs on tokio's blocking pool.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    connection: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens `path` (or memory) with WAL, foreign keys, and `migrations` applied in order.
    pub(crate) fn open(path: Option<&Path>, migrations: &[&str]) -> Result<Self, StoreError> {
        if let Some(path) = path {
            private_file(path)?;
        }
        let mut connection = match path {
            Some(path) => Connection::open(path),
            None => Connection::open_in_memory(),
        }
        .map_err(database)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA secure_delete = ON;",
            )
            .map_err(database)?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(database)?;
        let version = usize::try_from(version).unwrap_or(0);
        for (index, migration) in migrations.iter().enumerate().skip(version) {
            let transaction = connection.transaction().map_err(database)?;
            transaction.execute_batch(migration).map_err(database)?;
            transaction
                .execute_batch(&format!("PRAGMA user_version = {}", index + 1))
                .map_err(database)?;
            transaction.commit().map_err(database)?;
        }
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    pub(crate) fn schema_version(&self) -> Result<usize, StoreError> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(database)?;
        Ok(usize::try_from(version).unwrap_or(0))
    }

    pub(crate) async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&mut connection)
        })
        .await
        .map_err(database)?
    }
}

/// The control store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteControlStore {
    db: Db,
    sealer: Arc<Sealer>,
}

pub(crate) fn database(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(Box::new(error))
}

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Rows of `tenant` in `table` (one of weir's own table names, never input), inside the
/// caller's transaction.
fn rows_of(
    transaction: &rusqlite::Transaction<'_>,
    table: &'static str,
    tenant: &TenantId,
) -> Result<u64, StoreError> {
    transaction
        .query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE tenant = ?1"),
            [tenant.as_str()],
            |r| r.get(0),
        )
        .map(to_u64)
        .map_err(database)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A text column that must parse as `T`, as a rusqlite conversion error when it does not.
fn parsed<T, E: std::error::Error + Send + Sync + 'static>(
    column: usize,
    result: Result<T, E>,
) -> rusqlite::Result<T> {
    result.map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Owner => "owner",
        Role::Developer => "developer",
        Role::Viewer => "viewer",
    }
}

fn role(column: usize, text: &str) -> rusqlite::Result<Role> {
    parsed(
        column,
        serde_json::from_value(serde_json::Value::String(text.to_owned())),
    )
}

const TENANT_COLUMNS: &str = "id, display_name, quotas, suspended, created_at, instance";

fn tenant_row(row: &Row<'_>) -> rusqlite::Result<TenantRecord> {
    let quotas: String = row.get(2)?;
    Ok(TenantRecord {
        id: parsed(0, TenantId::new(row.get::<_, String>(0)?))?,
        display_name: row.get(1)?,
        quotas: parsed(2, serde_json::from_str::<Quotas>(&quotas))?,
        suspended: row.get(3)?,
        created_at: to_u64(row.get(4)?),
        instance: row.get(5)?,
    })
}

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let tenant: Option<String> = row.get(1)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        tenant: tenant.map(|t| parsed(1, TenantId::new(t))).transpose()?,
        subject: row.get(2)?,
        role: role(3, &row.get::<_, String>(3)?)?,
        expires_at: to_u64(row.get(4)?),
        revoked: row.get(5)?,
        created_at: to_u64(row.get(6)?),
    })
}

fn module_row(row: &Row<'_>) -> rusqlite::Result<ModuleRecord> {
    let operators: String = row.get(5)?;
    Ok(ModuleRecord {
        tenant: parsed(0, TenantId::new(row.get::<_, String>(0)?))?,
        name: row.get(1)?,
        version: row.get(2)?,
        digest: parsed(3, ModuleDigest::new(row.get::<_, String>(3)?))?,
        size: to_u64(row.get(4)?),
        operators: parsed(5, serde_json::from_str(&operators))?,
        created_at: to_u64(row.get(6)?),
    })
}

fn graph_row(row: &Row<'_>) -> rusqlite::Result<GraphRecord> {
    Ok(GraphRecord {
        tenant: parsed(0, TenantId::new(row.get::<_, String>(0)?))?,
        name: row.get(1)?,
        version: row.get(2)?,
        digest: parsed(3, ModuleDigest::new(row.get::<_, String>(3)?))?,
        created_at: to_u64(row.get(4)?),
    })
}

fn deployment_row(row: &Row<'_>) -> rusqlite::Result<DeploymentRecord> {
    let spec: String = row.get(2)?;
    Ok(DeploymentRecord {
        tenant: parsed(0, TenantId::new(row.get::<_, String>(0)?))?,
        id: row.get(1)?,
        spec: parsed(2, serde_json::from_str(&spec))?,
        status: row.get(3)?,
        created_at: to_u64(row.get(4)?),
    })
}

/// Maps constraint violations to their meaning.
fn write_error(
    error: rusqlite::Error,
    what: impl FnOnce() -> String,
    tenant: Option<&TenantId>,
) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &error {
        match failure.extended_code {
            rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
                return StoreError::Conflict { what: what() };
            }
            rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                if let Some(tenant) = tenant {
                    return StoreError::NoTenant(tenant.clone());
                }
            }
            _ => {}
        }
    }
    database(error)
}

impl SqliteControlStore {
    /// Opens (creating and migrating as needed) the store at `path`. Endpoint secrets are
    /// sealed with the key in the file beside it with the extension `key` (`control.db` →
    /// `control.key`), created 0600 on first open; secrets an older version kept in plain text
    /// are sealed now.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: Db::open(Some(path), MIGRATIONS)?,
            sealer: Arc::new(Sealer::load_or_create(&path.with_extension("key"))?),
        };
        store.seal_plain_secrets()?;
        Ok(store)
    }

    /// A store in memory, for tests (its sealing key lives as long as it does).
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(None, MIGRATIONS)?,
            sealer: Arc::new(Sealer::ephemeral()),
        })
    }

    /// Seals secrets kept in plain text by an older version, then truncates the WAL so no
    /// page with the plain text stays behind (`secure_delete` overwrote the old rows).
    fn seal_plain_secrets(&self) -> Result<(), StoreError> {
        let mut connection = self
            .db
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let transaction = connection.transaction().map_err(database)?;
        let plain = {
            let mut statement = transaction
                .prepare("SELECT tenant, name, secret FROM endpoints WHERE secret IS NOT NULL")
                .map_err(database)?;
            let rows = statement
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(database)?
        };
        if plain.is_empty() {
            return Ok(());
        }
        for (tenant, name, secret) in &plain {
            let sealed = self.sealer.seal(&endpoint_identity(tenant, name), secret)?;
            transaction
                .execute(
                    "UPDATE endpoints SET sealed_secret = ?3, secret = NULL WHERE tenant = ?1 AND name = ?2",
                    params![tenant, name, sealed],
                )
                .map_err(database)?;
        }
        transaction.commit().map_err(database)?;
        connection
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(database)
    }

    /// The schema version: the number of migrations applied.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        self.db.schema_version()
    }

    async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.with(move |c| work(c)).await
    }
}

#[async_trait]
impl ControlStore for SqliteControlStore {
    async fn create_tenant(&self, tenant: &TenantRecord) -> Result<TenantRecord, StoreError> {
        let t = tenant.clone();
        let quotas = serde_json::to_string(&t.quotas).map_err(database)?;
        self.with(move |c| {
            c.query_row(
                &format!("INSERT INTO tenants (id, display_name, quotas, suspended, created_at, instance) VALUES (?1, ?2, ?3, ?4, ?5, lower(hex(randomblob(16)))) RETURNING {TENANT_COLUMNS}"),
                params![t.id.as_str(), t.display_name, quotas, t.suspended, now()],
                tenant_row,
            )
            .map_err(|e| write_error(e, || format!("tenant {}", t.id), None))
        })
        .await
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let id = id.clone();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                [id.as_str()],
                tenant_row,
            )
            .optional()
            .map_err(database)
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.with(|c| {
            let mut statement = c
                .prepare(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"))
                .map_err(database)?;
            let rows = statement.query_map([], tenant_row).map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn update_tenant(&self, tenant: &TenantRecord) -> Result<bool, StoreError> {
        let t = tenant.clone();
        let quotas = serde_json::to_string(&t.quotas).map_err(database)?;
        self.with(move |c| {
            c.execute(
                "UPDATE tenants SET display_name = ?2, quotas = ?3, suspended = ?4 WHERE id = ?1",
                params![t.id.as_str(), t.display_name, quotas, t.suspended],
            )
            .map(|n| n > 0)
            .map_err(database)
        })
        .await
    }

    async fn delete_tenant(&self, id: &TenantId) -> Result<Option<DeletedTenant>, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
                    let mut statement = transaction.prepare(sql).map_err(database)?;
                    let rows = statement
                        .query_map([id.as_str()], |r| r.get::<_, String>(0))
                        .map_err(database)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
                };
                let tokens = strings("SELECT id FROM tokens WHERE tenant = ?1 ORDER BY id")?;
                let blobs = strings(
                    "SELECT digest FROM modules WHERE tenant = ?1 UNION SELECT digest FROM graphs WHERE tenant = ?1",
                )?
                .into_iter()
                .filter_map(|d| ModuleDigest::new(d).ok())
                .collect();
                // Its tokens stay revoked after the tenant (and their records) are gone.
                transaction
                    .execute(
                        "INSERT OR IGNORE INTO revoked_tokens (id, expires_at) SELECT id, expires_at FROM tokens WHERE tenant = ?1",
                        [id.as_str()],
                    )
                    .map_err(database)?;
                let deleted = transaction
                    .execute("DELETE FROM tenants WHERE id = ?1", [id.as_str()])
                    .map_err(database)?;
                transaction.commit().map_err(database)?;
                Ok((deleted > 0).then_some(DeletedTenant { tokens, blobs }))
            })
            .await
    }

    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO tokens (id, tenant, subject, role, expires_at, revoked, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.id, t.tenant.as_ref().map(TenantId::as_str), t.subject, role_text(t.role), to_i64(t.expires_at), t.revoked, now()],
            )
            .map_err(|e| write_error(e, || format!("token {}", t.id), t.tenant.as_ref()))?;
            Ok(())
        })
        .await
    }

    async fn tokens(&self, scope: TokenScope<'_>) -> Result<Vec<TokenRecord>, StoreError> {
        let (filter, tenant) = scope_filter(scope);
        self.with(move |c| {
            let mut statement = c
                .prepare(&format!(
                    "SELECT id, tenant, subject, role, expires_at, revoked, created_at FROM tokens WHERE {filter} ORDER BY created_at, id"
                ))
                .map_err(database)?;
            let rows = statement
                .query_map(params![tenant], token_row)
                .map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn revoke_token(&self, scope: TokenScope<'_>, id: &str) -> Result<bool, StoreError> {
        let (filter, tenant) = scope_filter(scope);
        let id = id.to_owned();
        self.db
            .with(move |c| {
                let transaction = c.transaction().map_err(database)?;
                let changed = transaction
                    .execute(
                        &format!("UPDATE tokens SET revoked = 1 WHERE id = ?2 AND {filter}"),
                        params![tenant, id],
                    )
                    .map_err(database)?;
                if changed > 0 {
                    transaction
                        .execute(
                            "INSERT OR IGNORE INTO revoked_tokens (id, expires_at) SELECT id, expires_at FROM tokens WHERE id = ?1",
                            [&id],
                        )
                        .map_err(database)?;
                }
                transaction.commit().map_err(database)?;
                Ok(changed > 0)
            })
            .await
    }

    async fn revoked_token_ids(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            // Expired revocations are of no use: the token is refused for its `exp` anyway.
            c.execute("DELETE FROM revoked_tokens WHERE expires_at < ?1", [now()])
                .map_err(database)?;
            let mut statement = c
                .prepare("SELECT id FROM revoked_tokens ORDER BY id")
                .map_err(database)?;
            let rows = statement.query_map([], |r| r.get(0)).map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn blob_referenced(&self, digest: &ModuleDigest) -> Result<bool, StoreError> {
        let digest = digest.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM modules WHERE digest = ?1) OR EXISTS (SELECT 1 FROM graphs WHERE digest = ?1)",
                [digest.as_str()],
                |r| r.get(0),
            )
            .map_err(database)
        })
        .await
    }

    async fn referenced_blobs(&self) -> Result<Vec<ModuleDigest>, StoreError> {
        self.with(|c| {
            let mut statement = c
                .prepare("SELECT digest FROM modules UNION SELECT digest FROM graphs")
                .map_err(database)?;
            let rows = statement
                .query_map([], |r| {
                    let digest: String = r.get(0)?;
                    parsed(0, ModuleDigest::new(digest))
                })
                .map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn put_module(&self, module: &ModuleRecord, quotas: &Quotas) -> Result<(), StoreError> {
        let m = module.clone();
        let (max_modules, max_bytes) = (quotas.max_modules, quotas.max_module_total_bytes);
        let operators = serde_json::to_string(&m.operators).map_err(database)?;
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let (count, total): (i64, i64) = transaction
                    .query_row(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM modules WHERE tenant = ?1",
                        [m.tenant.as_str()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(database)?;
                if to_u64(count) >= u64::from(max_modules) {
                    return Err(StoreError::QuotaExceeded(format!(
                        "the tenant has {max_modules} modules, the limit"
                    )));
                }
                let total = to_u64(total).saturating_add(m.size);
                if total > max_bytes {
                    return Err(StoreError::QuotaExceeded(format!(
                        "modules would take {total} bytes; the limit is {max_bytes}"
                    )));
                }
                transaction.execute(
                    "INSERT INTO modules (tenant, name, version, digest, size, operators, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![m.tenant.as_str(), m.name, m.version, m.digest.as_str(), to_i64(m.size), operators, now()],
                )
                .map_err(|e| write_error(e, || format!("module {}@{}", m.name, m.version), Some(&m.tenant)))?;
                transaction.commit().map_err(database)
            })
            .await
    }

    async fn module(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let (tenant, name, version) = (tenant.clone(), name.to_owned(), version.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT tenant, name, version, digest, size, operators, created_at FROM modules WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                params![tenant.as_str(), name, version],
                module_row,
            )
            .optional()
            .map_err(database)
        })
        .await
    }

    async fn modules(&self, tenant: &TenantId) -> Result<Vec<ModuleRecord>, StoreError> {
        let tenant = tenant.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT tenant, name, version, digest, size, operators, created_at FROM modules WHERE tenant = ?1 ORDER BY name, version")
                .map_err(database)?;
            let rows = statement.query_map([tenant.as_str()], module_row).map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn delete_module(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleDigest>, StoreError> {
        delete_versioned(self, "modules", tenant, name, version).await
    }

    async fn put_graph(&self, graph: &GraphRecord, quotas: &Quotas) -> Result<(), StoreError> {
        let g = graph.clone();
        let max_graphs = quotas.max_graphs;
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let count = rows_of(&transaction, "graphs", &g.tenant)?;
                if count >= u64::from(max_graphs) {
                    return Err(StoreError::QuotaExceeded(format!(
                        "the tenant has {max_graphs} graphs, the limit"
                    )));
                }
                transaction.execute(
                    "INSERT INTO graphs (tenant, name, version, digest, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![g.tenant.as_str(), g.name, g.version, g.digest.as_str(), now()],
                )
                .map_err(|e| write_error(e, || format!("graph {}@{}", g.name, g.version), Some(&g.tenant)))?;
                transaction.commit().map_err(database)
            })
            .await
    }

    async fn graph(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<GraphRecord>, StoreError> {
        let (tenant, name, version) = (tenant.clone(), name.to_owned(), version.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT tenant, name, version, digest, created_at FROM graphs WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                params![tenant.as_str(), name, version],
                graph_row,
            )
            .optional()
            .map_err(database)
        })
        .await
    }

    async fn graphs(&self, tenant: &TenantId) -> Result<Vec<GraphRecord>, StoreError> {
        let tenant = tenant.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT tenant, name, version, digest, created_at FROM graphs WHERE tenant = ?1 ORDER BY name, version")
                .map_err(database)?;
            let rows = statement.query_map([tenant.as_str()], graph_row).map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn delete_graph(
        &self,
        tenant: &TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleDigest>, StoreError> {
        delete_versioned(self, "graphs", tenant, name, version).await
    }

    async fn put_deployment(
        &self,
        deployment: &DeploymentRecord,
        quotas: &Quotas,
    ) -> Result<(), StoreError> {
        let d = deployment.clone();
        let max_deployments = quotas.max_deployments;
        let spec = serde_json::to_string(&d.spec).map_err(database)?;
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let count = rows_of(&transaction, "deployments", &d.tenant)?;
                let exists: bool = transaction
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM deployments WHERE tenant = ?1 AND id = ?2)",
                        params![d.tenant.as_str(), d.id],
                        |r| r.get(0),
                    )
                    .map_err(database)?;
                if !exists && count >= u64::from(max_deployments) {
                    return Err(StoreError::QuotaExceeded(format!(
                        "the tenant runs {max_deployments} deployments, the limit"
                    )));
                }
                transaction.execute(
                    "INSERT INTO deployments (tenant, id, spec, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![d.tenant.as_str(), d.id, spec, d.status, now()],
                )
                .map_err(|e| write_error(e, || format!("deployment {}", d.id), Some(&d.tenant)))?;
                transaction.execute(
                    "INSERT INTO deployment_history (tenant, deployment, status, detail, at) VALUES (?1, ?2, ?3, 'created', ?4)",
                    params![d.tenant.as_str(), d.id, d.status, now()],
                )
                .map_err(database)?;
                transaction.commit().map_err(database)
            })
            .await
    }

    async fn deployment(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT tenant, id, spec, status, created_at FROM deployments WHERE tenant = ?1 AND id = ?2",
                params![tenant.as_str(), id],
                deployment_row,
            )
            .optional()
            .map_err(database)
        })
        .await
    }

    async fn deployments(&self, tenant: &TenantId) -> Result<Vec<DeploymentRecord>, StoreError> {
        let tenant = tenant.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT tenant, id, spec, status, created_at FROM deployments WHERE tenant = ?1 ORDER BY id")
                .map_err(database)?;
            let rows = statement.query_map([tenant.as_str()], deployment_row).map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT tenant, id, spec, status, created_at FROM deployments ORDER BY tenant, id").map_err(database)?;
            let rows = statement.query_map([], deployment_row).map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn set_deployment_status(
        &self,
        tenant: &TenantId,
        id: &str,
        status: &str,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let (tenant, id, status, detail) = (
            tenant.clone(),
            id.to_owned(),
            status.to_owned(),
            detail.to_owned(),
        );
        self.with(move |c| {
            let changed = c
                .execute("UPDATE deployments SET status = ?3 WHERE tenant = ?1 AND id = ?2", params![tenant.as_str(), id, status])
                .map_err(database)?;
            if changed > 0 {
                c.execute(
                    "INSERT INTO deployment_history (tenant, deployment, status, detail, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![tenant.as_str(), id, status, detail, now()],
                )
                .map_err(database)?;
                trim_history(c, tenant.as_str(), &id)?;
            }
            Ok(changed > 0)
        })
        .await
    }

    async fn deployment_history(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT status, detail, at FROM deployment_history WHERE tenant = ?1 AND deployment = ?2 ORDER BY rowid")
                .map_err(database)?;
            let rows = statement
                .query_map(params![tenant.as_str(), id], |r| Ok(StatusChange { status: r.get(0)?, detail: r.get(1)?, at: to_u64(r.get(2)?) }))
                .map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn add_revision(
        &self,
        tenant: &TenantId,
        id: &str,
        revision: &RevisionRecord,
    ) -> Result<Option<u64>, StoreError> {
        let spec = serde_json::to_string(&revision.spec).map_err(database)?;
        let modules = serde_json::to_string(&revision.modules).map_err(database)?;
        let (tenant, id, r) = (tenant.clone(), id.to_owned(), revision.clone());
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let exists: bool = transaction
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM deployments WHERE tenant = ?1 AND id = ?2)",
                        params![tenant.as_str(), id],
                        |row| row.get(0),
                    )
                    .map_err(database)?;
                if !exists {
                    return Ok(None);
                }
                let last: i64 = transaction
                    .query_row(
                        "SELECT COALESCE(MAX(revision), 0) FROM deployment_revisions WHERE tenant = ?1 AND deployment = ?2",
                        params![tenant.as_str(), id],
                        |row| row.get(0),
                    )
                    .map_err(database)?;
                let number = last.saturating_add(1);
                transaction
                    .execute(
                        "INSERT INTO deployment_revisions (tenant, deployment, revision, spec, graph_digest, modules, at, by, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![tenant.as_str(), id, number, spec, r.graph_digest, modules, now(), r.by, r.outcome, r.detail],
                    )
                    .map_err(database)?;
                transaction
                    .execute(
                        "DELETE FROM deployment_revisions WHERE tenant = ?1 AND deployment = ?2 AND revision <= ?3",
                        params![tenant.as_str(), id, number.saturating_sub(i64::from(MAX_REVISIONS))],
                    )
                    .map_err(database)?;
                transaction.commit().map_err(database)?;
                Ok(Some(to_u64(number)))
            })
            .await
    }

    async fn revisions(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT revision, spec, graph_digest, modules, at, by, outcome, detail FROM deployment_revisions WHERE tenant = ?1 AND deployment = ?2 ORDER BY revision")
                .map_err(database)?;
            let rows = statement
                .query_map(params![tenant.as_str(), id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .map_err(database)?;
            let mut revisions = Vec::new();
            for row in rows {
                let (revision, spec, graph_digest, modules, at, by, outcome, detail) =
                    row.map_err(database)?;
                revisions.push(RevisionRecord {
                    revision: to_u64(revision),
                    spec: serde_json::from_str(&spec).map_err(database)?,
                    graph_digest,
                    modules: serde_json::from_str(&modules).map_err(database)?,
                    at: to_u64(at),
                    by,
                    outcome,
                    detail,
                });
            }
            Ok(revisions)
        })
        .await
    }

    async fn delete_deployment(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM deployments WHERE tenant = ?1 AND id = ?2",
                params![tenant.as_str(), id],
            )
            .map(|n| n > 0)
            .map_err(database)
        })
        .await
    }

    async fn update_deployment_spec(
        &self,
        tenant: &TenantId,
        id: &str,
        spec: &serde_json::Value,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let spec = serde_json::to_string(spec).map_err(database)?;
        let (tenant, id, detail) = (tenant.clone(), id.to_owned(), detail.to_owned());
        self.with(move |c| {
            let changed = c
                .execute(
                    "UPDATE deployments SET spec = ?3, status = 'running' WHERE tenant = ?1 AND id = ?2",
                    params![tenant.as_str(), id, spec],
                )
                .map_err(database)?;
            if changed > 0 {
                c.execute(
                    "INSERT INTO deployment_history (tenant, deployment, status, detail, at) VALUES (?1, ?2, 'running', ?3, ?4)",
                    params![tenant.as_str(), id, detail, now()],
                )
                .map_err(database)?;
                trim_history(c, tenant.as_str(), &id)?;
            }
            Ok(changed > 0)
        })
        .await
    }

    async fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), StoreError> {
        let e = endpoint.clone();
        let settings = serde_json::to_string(&e.settings).map_err(database)?;
        let sealed = e
            .secret
            .as_deref()
            .map(|secret| {
                self.sealer
                    .seal(&endpoint_identity(e.tenant.as_str(), &e.name), secret)
            })
            .transpose()?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO endpoints (tenant, name, kind, address, settings, sealed_secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![e.tenant.as_str(), e.name, e.kind, e.address, settings, sealed, now()],
            )
            .map_err(|err| write_error(err, || format!("endpoint {}", e.name), Some(&e.tenant)))?;
            Ok(())
        })
        .await
    }

    async fn endpoint(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        let sealer = self.sealer.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT tenant, name, kind, address, settings, sealed_secret, created_at FROM endpoints WHERE tenant = ?1 AND name = ?2",
                params![tenant.as_str(), name],
                |row| endpoint_row(&sealer, row),
            )
            .optional()
            .map_err(database)
        })
        .await
    }

    async fn endpoints(&self, tenant: &TenantId) -> Result<Vec<EndpointRecord>, StoreError> {
        let tenant = tenant.clone();
        let sealer = self.sealer.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT tenant, name, kind, address, settings, sealed_secret, created_at FROM endpoints WHERE tenant = ?1 ORDER BY name")
                .map_err(database)?;
            let rows = statement
                .query_map(params![tenant.as_str()], |row| endpoint_row(&sealer, row))
                .map_err(database)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(database)
        })
        .await
    }

    async fn delete_endpoint(&self, tenant: &TenantId, name: &str) -> Result<bool, StoreError> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM endpoints WHERE tenant = ?1 AND name = ?2",
                params![tenant.as_str(), name],
            )
            .map(|n| n > 0)
            .map_err(database)
        })
        .await
    }

    async fn append_dead_letters(
        &self,
        tenant: &TenantId,
        letters: Vec<DeadLetter>,
        max_bytes: u64,
    ) -> Result<DeadLetterAppend, StoreError> {
        if letters.is_empty() {
            return Ok(DeadLetterAppend::default());
        }
        let tenant = tenant.clone();
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let mut counts = dead_letter_counters(&transaction, &tenant)?;
                let mut seqs = Vec::with_capacity(letters.len());
                let appended_at = now_ms();
                {
                    let mut insert = transaction
                        .prepare(
                            "INSERT INTO dead_letters (tenant, seq, bytes, at_ms, input_bytes, payload_truncated, deployment, node, reason, topic, detail, payload)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        )
                        .map_err(database)?;
                    for mut letter in letters {
                        cut_payload(&mut letter);
                        if letter.at_ms == 0 {
                            letter.at_ms = appended_at;
                        }
                        let seq = counts.appended + 1;
                        let bytes = letter.byte_len();
                        insert
                            .execute(params![
                                tenant.as_str(),
                                to_i64(seq),
                                to_i64(bytes),
                                to_i64(letter.at_ms),
                                to_i64(letter.input_bytes),
                                letter.payload_truncated,
                                letter.deployment,
                                letter.node,
                                letter.reason,
                                letter.topic,
                                letter.detail,
                                letter.payload,
                            ])
                            .map_err(|e| {
                                write_error(e, || format!("dead letter {seq}"), Some(&tenant))
                            })?;
                        counts.appended = seq;
                        counts.kept += 1;
                        counts.kept_bytes += bytes;
                        seqs.push(seq);
                    }
                }
                let evicted = evict_dead_letters(&transaction, &tenant, &mut counts, max_bytes)?;
                save_dead_letter_counters(&transaction, &tenant, &counts)?;
                transaction.commit().map_err(database)?;
                Ok(DeadLetterAppend { seqs, evicted })
            })
            .await
    }

    async fn dead_letters(
        &self,
        tenant: &TenantId,
        deployment: Option<&str>,
        after: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let (tenant, deployment) = (tenant.clone(), deployment.map(str::to_owned));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c| {
            let filter = if deployment.is_some() {
                "AND deployment = ?4"
            } else {
                "AND ?4 IS NULL"
            };
            // The newest: the last `limit` by number, then put back in order.
            let order = if newest { "DESC" } else { "ASC" };
            let mut statement = c
                .prepare(&format!(
                    "SELECT * FROM (SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE tenant = ?1 AND seq > ?2 {filter} ORDER BY seq {order} LIMIT ?3) ORDER BY seq"
                ))
                .map_err(database)?;
            let rows = statement
                .query_map(
                    params![tenant.as_str(), to_i64(after), limit, deployment],
                    dead_letter_row,
                )
                .map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn dead_letter_counts(&self, tenant: &TenantId) -> Result<DeadLetterCounts, StoreError> {
        let tenant = tenant.clone();
        self.db
            .with(move |c| {
                let transaction = c.transaction().map_err(database)?;
                dead_letter_counters(&transaction, &tenant)
            })
            .await
    }

    async fn trim_dead_letters(
        &self,
        tenant: &TenantId,
        max_bytes: u64,
    ) -> Result<u64, StoreError> {
        let tenant = tenant.clone();
        self.db
            .with(move |c| {
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let mut counts = dead_letter_counters(&transaction, &tenant)?;
                let evicted = evict_dead_letters(&transaction, &tenant, &mut counts, max_bytes)?;
                if evicted > 0 {
                    save_dead_letter_counters(&transaction, &tenant, &counts)?;
                }
                transaction.commit().map_err(database)?;
                Ok(evicted)
            })
            .await
    }

    async fn create_device(
        &self,
        tenant: &TenantId,
        name: &str,
        quotas: &Quotas,
    ) -> Result<NewDevice, StoreError> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        let max_devices = quotas.max_devices;
        self.db
            .with(move |c| {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(database)?;
                let password = hex::encode(secret);
                let hash = device_secret_hash(password.as_bytes());
                let transaction = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let exists: bool = transaction
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM devices WHERE tenant = ?1 AND name = ?2)",
                        params![tenant.as_str(), name],
                        |r| r.get(0),
                    )
                    .map_err(database)?;
                if exists {
                    return Err(StoreError::Conflict {
                        what: format!("device {name}"),
                    });
                }
                if rows_of(&transaction, "devices", &tenant)? >= u64::from(max_devices) {
                    return Err(StoreError::QuotaExceeded(format!(
                        "the tenant has {max_devices} devices, the limit"
                    )));
                }
                let created_at = now();
                transaction
                    .execute(
                        "INSERT INTO devices (tenant, name, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![tenant.as_str(), name, hash.as_slice(), created_at],
                    )
                    .map_err(|e| write_error(e, || format!("device {name}"), Some(&tenant)))?;
                transaction.commit().map_err(database)?;
                Ok(NewDevice {
                    device: DeviceRecord {
                        tenant,
                        name,
                        created_at: to_u64(created_at),
                    },
                    password,
                })
            })
            .await
    }

    async fn devices(&self, tenant: &TenantId) -> Result<Vec<DeviceRecord>, StoreError> {
        let tenant = tenant.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare("SELECT name, created_at FROM devices WHERE tenant = ?1 ORDER BY name")
                .map_err(database)?;
            let rows = statement
                .query_map([tenant.as_str()], |r| {
                    Ok(DeviceRecord {
                        tenant: tenant.clone(),
                        name: r.get(0)?,
                        created_at: to_u64(r.get(1)?),
                    })
                })
                .map_err(database)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(database)
        })
        .await
    }

    async fn delete_device(&self, tenant: &TenantId, name: &str) -> Result<bool, StoreError> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM devices WHERE tenant = ?1 AND name = ?2",
                params![tenant.as_str(), name],
            )
            .map(|n| n > 0)
            .map_err(database)
        })
        .await
    }

    async fn verify_device(
        &self,
        username: &str,
        password: &[u8],
    ) -> Result<Option<TenantId>, StoreError> {
        // Tenant ids hold no `@`: the last one separates the device name from the tenant.
        let Some((name, tenant)) = username.rsplit_once('@') else {
            return Ok(None);
        };
        let Ok(tenant) = TenantId::new(tenant) else {
            return Ok(None);
        };
        let (name, password) = (name.to_owned(), password.to_vec());
        self.with(move |c| {
            let presented = device_secret_hash(&password);
            let stored: Option<Vec<u8>> = c
                .query_row(
                    "SELECT d.secret_hash FROM devices d JOIN tenants t ON t.id = d.tenant
                     WHERE d.tenant = ?1 AND d.name = ?2 AND t.suspended = 0",
                    params![tenant.as_str(), name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(database)?;
            // `ct_eq` on slices of different lengths is false (in time independent of content).
            let matches = stored.is_some_and(|stored| bool::from(stored.ct_eq(&presented[..])));
            Ok(matches.then_some(tenant))
        })
        .await
    }

    async fn add_usage(&self, deltas: Vec<UsageDelta>) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.db
            .with(move |connection| {
                let transaction = connection
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let mut newest_hour = 0;
                for delta in &deltas {
                    let tenant = delta.tenant.as_str();
                    let exists: bool = transaction
                        .query_row(
                            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?1)",
                            [tenant],
                            |r| r.get(0),
                        )
                        .map_err(database)?;
                    if !exists || delta.counters.is_zero() {
                        continue;
                    }
                    let c = &delta.counters;
                    transaction
                        .execute(
                            "INSERT INTO usage_totals (tenant, fuel, messages_in, messages_out, bytes_in, state_ops)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                             ON CONFLICT (tenant) DO UPDATE SET
                               fuel = fuel + excluded.fuel, messages_in = messages_in + excluded.messages_in,
                               messages_out = messages_out + excluded.messages_out,
                               bytes_in = bytes_in + excluded.bytes_in, state_ops = state_ops + excluded.state_ops",
                            params![
                                tenant,
                                to_i64(c.fuel),
                                to_i64(c.messages_in),
                                to_i64(c.messages_out),
                                to_i64(c.bytes_in),
                                to_i64(c.state_ops)
                            ],
                        )
                        .map_err(database)?;
                    let hour = delta.hour_start_ms - delta.hour_start_ms % HOUR_MS;
                    newest_hour = newest_hour.max(hour);
                    add_usage_row(&transaction, tenant, "hour", hour, c).map_err(database)?;
                    add_usage_row(&transaction, tenant, "day", hour - hour % DAY_MS, c)
                        .map_err(database)?;
                }
                transaction
                    .execute(
                        "DELETE FROM usage_periods WHERE (period = 'hour' AND start_ms < ?1) OR (period = 'day' AND start_ms < ?2)",
                        params![
                            to_i64(newest_hour.saturating_sub(USAGE_HOURS_KEPT * HOUR_MS)),
                            to_i64(newest_hour.saturating_sub(USAGE_DAYS_KEPT * DAY_MS))
                        ],
                    )
                    .map_err(database)?;
                transaction.commit().map_err(database)
            })
            .await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        since_ms: u64,
    ) -> Result<(UsageCounters, Vec<UsagePeriodRecord>), StoreError> {
        let tenant = tenant.to_string();
        self.with(move |connection| {
            let total = connection
                .query_row(
                    "SELECT fuel, messages_in, messages_out, bytes_in, state_ops FROM usage_totals WHERE tenant = ?1",
                    [&tenant],
                    |r| usage_counters(r, 0),
                )
                .optional()
                .map_err(database)?
                .unwrap_or_default();
            let mut statement = connection
                .prepare(
                    "SELECT period, start_ms, fuel, messages_in, messages_out, bytes_in, state_ops FROM usage_periods
                     WHERE tenant = ?1 AND start_ms >= ?2 ORDER BY period DESC, start_ms",
                )
                .map_err(database)?;
            let periods = statement
                .query_map(params![tenant, to_i64(since_ms)], |r| {
                    let period: String = r.get(0)?;
                    Ok(UsagePeriodRecord {
                        period: if period == "day" { "day" } else { "hour" },
                        start_ms: to_u64(r.get(1)?),
                        counters: usage_counters(r, 2)?,
                    })
                })
                .map_err(database)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(database)?;
            Ok((total, periods))
        })
        .await
    }

    async fn append_module_logs(
        &self,
        tenant: &TenantId,
        lines: Vec<ModuleLogRecord>,
        max_lines: u64,
    ) -> Result<(), StoreError> {
        let tenant = tenant.to_string();
        self.db
            .with(move |connection| {
                let transaction = connection
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let exists: bool = transaction
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?1)",
                        [&tenant],
                        |r| r.get(0),
                    )
                    .map_err(database)?;
                if !exists {
                    return Ok(());
                }
                let mut seq: u64 = transaction
                    .query_row(
                        "SELECT last_seq FROM module_log_counters WHERE tenant = ?1",
                        [&tenant],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()
                    .map_err(database)?
                    .map_or(0, to_u64);
                {
                    let mut insert = transaction
                        .prepare(
                            "INSERT INTO module_logs (tenant, seq, at_ms, level, deployment, node, message)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        )
                        .map_err(database)?;
                    // Only the newest `max_lines` of the batch can be kept.
                    let skip = lines
                        .len()
                        .saturating_sub(usize::try_from(max_lines).unwrap_or(usize::MAX));
                    seq += skip as u64;
                    for line in lines.iter().skip(skip) {
                        seq += 1;
                        insert
                            .execute(params![
                                tenant,
                                to_i64(seq),
                                to_i64(line.at_ms),
                                line.level,
                                line.deployment,
                                line.node,
                                line.message
                            ])
                            .map_err(database)?;
                    }
                }
                transaction
                    .execute(
                        "INSERT INTO module_log_counters (tenant, last_seq) VALUES (?1, ?2)
                         ON CONFLICT (tenant) DO UPDATE SET last_seq = excluded.last_seq",
                        params![tenant, to_i64(seq)],
                    )
                    .map_err(database)?;
                transaction
                    .execute(
                        "DELETE FROM module_logs WHERE tenant = ?1 AND seq <= ?2",
                        params![tenant, to_i64(seq.saturating_sub(max_lines))],
                    )
                    .map_err(database)?;
                transaction.commit().map_err(database)
            })
            .await
    }

    async fn module_logs(
        &self,
        tenant: &TenantId,
        deployment: Option<&str>,
        after: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<ModuleLogRecord>, StoreError> {
        let tenant = tenant.to_string();
        let deployment = deployment.map(str::to_owned);
        self.with(move |connection| {
            // The newest: the last `limit` by number, then put back in order.
            let order = if newest { "DESC" } else { "ASC" };
            let mut statement = connection
                .prepare(&format!(
                    "SELECT * FROM (SELECT seq, at_ms, level, deployment, node, message FROM module_logs
                     WHERE tenant = ?1 AND seq > ?2 AND (?3 IS NULL OR deployment = ?3)
                     ORDER BY seq {order} LIMIT ?4) ORDER BY seq"
                ))
                .map_err(database)?;
            statement
                .query_map(
                    params![
                        tenant,
                        to_i64(after),
                        deployment,
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok(ModuleLogRecord {
                            seq: to_u64(r.get(0)?),
                            at_ms: to_u64(r.get(1)?),
                            level: r.get(2)?,
                            deployment: r.get(3)?,
                            node: r.get(4)?,
                            message: r.get(5)?,
                        })
                    },
                )
                .map_err(database)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(database)
        })
        .await
    }

    async fn module_log_count(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let tenant = tenant.to_string();
        self.with(move |connection| {
            connection
                .query_row(
                    "SELECT COUNT(*) FROM module_logs WHERE tenant = ?1",
                    [&tenant],
                    |r| r.get::<_, i64>(0),
                )
                .map(to_u64)
                .map_err(database)
        })
        .await
    }
}

/// The tenant's dead-letter counters, inside the caller's transaction (zeros if it has none).
fn dead_letter_counters(
    transaction: &rusqlite::Transaction<'_>,
    tenant: &TenantId,
) -> Result<DeadLetterCounts, StoreError> {
    transaction
        .query_row(
            "SELECT appended, evicted, kept, kept_bytes FROM dead_letter_counters WHERE tenant = ?1",
            [tenant.as_str()],
            |r| {
                Ok(DeadLetterCounts {
                    appended: to_u64(r.get(0)?),
                    evicted: to_u64(r.get(1)?),
                    kept: to_u64(r.get(2)?),
                    kept_bytes: to_u64(r.get(3)?),
                })
            },
        )
        .optional()
        .map(Option::unwrap_or_default)
        .map_err(database)
}

fn save_dead_letter_counters(
    transaction: &rusqlite::Transaction<'_>,
    tenant: &TenantId,
    counts: &DeadLetterCounts,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "INSERT INTO dead_letter_counters (tenant, appended, evicted, kept, kept_bytes) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant) DO UPDATE SET appended = ?2, evicted = ?3, kept = ?4, kept_bytes = ?5",
            params![
                tenant.as_str(),
                to_i64(counts.appended),
                to_i64(counts.evicted),
                to_i64(counts.kept),
                to_i64(counts.kept_bytes)
            ],
        )
        .map(drop)
        .map_err(|e| write_error(e, || "dead-letter counters".to_owned(), Some(tenant)))
}

/// Deletes the tenant's oldest letters until `counts` is within `max_bytes` and
/// [`MAX_DEAD_LETTERS`], inside the caller's transaction; how many went (also added to
/// `counts.evicted`).
fn evict_dead_letters(
    transaction: &rusqlite::Transaction<'_>,
    tenant: &TenantId,
    counts: &mut DeadLetterCounts,
    max_bytes: u64,
) -> Result<u64, StoreError> {
    let over = |c: &DeadLetterCounts| c.kept > MAX_DEAD_LETTERS || c.kept_bytes > max_bytes;
    if !over(counts) {
        return Ok(0);
    }
    let mut evicted = 0;
    let mut last = None;
    {
        let mut statement = transaction
            .prepare("SELECT seq, bytes FROM dead_letters WHERE tenant = ?1 ORDER BY seq")
            .map_err(database)?;
        let mut rows = statement.query([tenant.as_str()]).map_err(database)?;
        while over(counts) {
            let Some(row) = rows.next().map_err(database)? else {
                // Nothing left: the counters had drifted from the rows; they agree again.
                counts.kept = 0;
                counts.kept_bytes = 0;
                break;
            };
            let seq: i64 = row.get(0).map_err(database)?;
            let bytes: i64 = row.get(1).map_err(database)?;
            counts.kept = counts.kept.saturating_sub(1);
            counts.kept_bytes = counts.kept_bytes.saturating_sub(to_u64(bytes));
            evicted += 1;
            last = Some(seq);
        }
    }
    if let Some(last) = last {
        transaction
            .execute(
                "DELETE FROM dead_letters WHERE tenant = ?1 AND seq <= ?2",
                params![tenant.as_str(), last],
            )
            .map_err(database)?;
    }
    counts.evicted += evicted;
    Ok(evicted)
}

/// Cuts a payload over [`DeadLetter::MAX_PAYLOAD_BYTES`] at the last character boundary
/// within it.
fn cut_payload(letter: &mut DeadLetter) {
    if letter.payload.len() <= DeadLetter::MAX_PAYLOAD_BYTES {
        return;
    }
    let mut end = DeadLetter::MAX_PAYLOAD_BYTES;
    while !letter.payload.is_char_boundary(end) {
        end -= 1;
    }
    letter.payload.truncate(end);
    letter.payload_truncated = true;
}

const DEAD_LETTER_COLUMNS: &str =
    "seq, deployment, node, reason, detail, topic, payload, input_bytes, payload_truncated, at_ms";

fn dead_letter_row(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        seq: to_u64(row.get(0)?),
        deployment: row.get(1)?,
        node: row.get(2)?,
        reason: row.get(3)?,
        detail: row.get(4)?,
        topic: row.get(5)?,
        payload: row.get(6)?,
        input_bytes: to_u64(row.get(7)?),
        payload_truncated: row.get(8)?,
        at_ms: to_u64(row.get(9)?),
    })
}

/// The SHA-256 of a device password. The passwords are 256 random bits made by the store, so
/// a fast hash is enough: there is no dictionary to try, and a slow KDF would only make every
/// MQTT connect cost more.
fn device_secret_hash(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// An endpoint row, its secret opened: connectors read secrets through the store.
fn endpoint_row(sealer: &Sealer, row: &Row<'_>) -> rusqlite::Result<EndpointRecord> {
    let tenant: String = row.get(0)?;
    let name: String = row.get(1)?;
    let settings: String = row.get(4)?;
    let sealed: Option<Vec<u8>> = row.get(5)?;
    let secret = sealed
        .map(|sealed| parsed(5, sealer.open(&endpoint_identity(&tenant, &name), &sealed)))
        .transpose()?;
    Ok(EndpointRecord {
        tenant: parsed(0, TenantId::new(tenant))?,
        name,
        kind: row.get(2)?,
        address: row.get(3)?,
        settings: parsed(4, serde_json::from_str(&settings))?,
        secret,
        created_at: to_u64(row.get(6)?),
    })
}

/// The filter of a token query (`?1` is the tenant) and its parameter.
fn scope_filter(scope: TokenScope<'_>) -> (&'static str, Option<String>) {
    match scope {
        TokenScope::Platform => ("tenant IS NULL AND ?1 IS NULL", None),
        TokenScope::Tenant(tenant) => ("tenant = ?1", Some(tenant.as_str().to_owned())),
        TokenScope::All => ("?1 IS NULL", None),
    }
}

/// Deletes a module or graph version (`table`); the digest it referenced.
async fn delete_versioned(
    store: &SqliteControlStore,
    table: &'static str,
    tenant: &TenantId,
    name: &str,
    version: &str,
) -> Result<Option<ModuleDigest>, StoreError> {
    let (tenant, name, version) = (tenant.clone(), name.to_owned(), version.to_owned());
    store
        .with(move |c| {
            c.query_row(
                &format!(
                    "DELETE FROM {table} WHERE tenant = ?1 AND name = ?2 AND version = ?3 RETURNING digest"
                ),
                params![tenant.as_str(), name, version],
                |r| {
                    let digest: String = r.get(0)?;
                    parsed(0, ModuleDigest::new(digest))
                },
            )
            .optional()
            .map_err(database)
        })
        .await
}
