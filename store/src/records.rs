use weir_api::{ModuleDigest, TenantId};
use weir_tenants::{Quotas, Role};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Its id.
    pub id: TenantId,
    /// A name for people.
    pub display_name: String,
    /// Its quotas (the defaults unless an admin changed them).
    pub quotas: Quotas,
    /// A suspended tenant's tokens are refused and its deployments paused.
    pub suspended: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// This incarnation of the tenant id, set by the store when the tenant is created: tokens
    /// minted for it carry it, so a tenant deleted and created again does not inherit them.
    pub instance: String,
}

/// What deleting a tenant released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedTenant {
    /// Ids of its tokens, all revoked now.
    pub tokens: Vec<String>,
    /// The blobs its modules and graphs referenced (collect them: other tenants may share some).
    pub blobs: Vec<ModuleDigest>,
}

/// Which tokens a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope<'a> {
    /// The platform's own (admin) tokens.
    Platform,
    /// One tenant's.
    Tenant(&'a TenantId),
    /// Every token: the admin's view.
    All,
}

/// A token weir minted (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token id (`jti`).
    pub id: String,
    /// Its tenant; `None` for admin tokens.
    pub tenant: Option<TenantId>,
    /// Its subject.
    pub subject: String,
    /// Its role.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// A module version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRecord {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The digest of its bytes (the blob store key).
    pub digest: ModuleDigest,
    /// Its size in bytes.
    pub size: u64,
    /// The operator interfaces it exports.
    pub operators: Vec<String>,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// A graph definition version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRecord {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The digest of its text (the blob store key).
    pub digest: ModuleDigest,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its id, unique within the tenant.
    pub id: String,
    /// What was deployed: graph, configuration, bindings (the API's document).
    pub spec: serde_json::Value,
    /// Its current status.
    pub status: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// One revision of a deployment: what one create, update or rollback asked it to run, and
/// how that went. Revisions are numbered from 1 per deployment, in order; the newest
/// [`MAX_REVISIONS`] are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    /// Its number (assigned by the store).
    pub revision: u64,
    /// What it runs: the API's deployment document.
    pub spec: serde_json::Value,
    /// The graph's digest (`sha256:...`).
    pub graph_digest: String,
    /// Module digests by the reference the graph uses.
    pub modules: std::collections::BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub at: u64,
    /// Who asked for it (the token's subject).
    pub by: String,
    /// `rolled_out`, `failed` or `rolled_back`.
    pub outcome: String,
    /// Why it failed, or which revision it rolled back to.
    pub detail: String,
}

/// Revisions kept per deployment: the newest; older ones are dropped as new ones come.
pub const MAX_REVISIONS: u32 = 20;

/// One change of a deployment's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The new status.
    pub status: String,
    /// Why.
    pub detail: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// An endpoint of a tenant: where deployments connect. The secret is kept for connectors and
/// never returned by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its name, unique in the tenant.
    pub name: String,
    /// `mqtt`, `kafka`, `otlp` or `http`.
    pub kind: String,
    /// `host:port`, if it has one.
    pub address: Option<String>,
    /// Connector settings.
    pub settings: std::collections::BTreeMap<String, String>,
    /// A password or key.
    pub secret: Option<String>,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// What [`crate::ControlStore::append_dead_letters`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterAppend {
    /// The numbers given to the letters, in the order they were passed.
    pub seqs: Vec<u64>,
    /// Letters of the tenant evicted (oldest first, possibly some of these) to keep it within
    /// its bounds.
    pub evicted: u64,
}

/// A tenant's dead-letter counters, kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterCounts {
    /// Letters ever appended (the last number given).
    pub appended: u64,
    /// Letters evicted to keep the tenant within `max_dead_letter_bytes` and
    /// [`crate::MAX_DEAD_LETTERS`].
    pub evicted: u64,
    /// Letters kept now.
    pub kept: u64,
    /// Bytes of the letters kept now, as `max_dead_letter_bytes` counts them.
    pub kept_bytes: u64,
}

/// A device's credentials for the embedded MQTT broker (the password is never stored: only
/// its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its name, unique in the tenant.
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

impl DeviceRecord {
    /// The MQTT user name it connects with: `<name>@<tenant>`. Tenant ids hold no `@`, so the
    /// last `@` separates the two, and the user name is unique on the platform.
    pub fn username(&self) -> String {
        format!("{}@{}", self.name, self.tenant)
    }
}

/// A device just created, with the password it was given: the only time the password exists
/// outside the device.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The device.
    pub device: DeviceRecord,
    /// 32 random bytes as 64 lowercase hex digits.
    pub password: String,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("device", &self.device)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Billable work of a tenant: what [`crate::ControlStore::add_usage`] adds and
/// [`crate::ControlStore::usage`] reads back, per hour, per day or in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounters {
    /// Fuel (wasmtime fuel units) the tenant's modules burned, `init` included.
    pub fuel: u64,
    /// Messages its deployments took in.
    pub messages_in: u64,
    /// Messages its deployments put out.
    pub messages_out: u64,
    /// Bytes taken in (topic, payload and user properties of each message).
    pub bytes_in: u64,
    /// State store operations (by modules and through the API).
    pub state_ops: u64,
}

impl UsageCounters {
    /// Field by field `self + other`, saturating.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            fuel: self.fuel.saturating_add(other.fuel),
            messages_in: self.messages_in.saturating_add(other.messages_in),
            messages_out: self.messages_out.saturating_add(other.messages_out),
            bytes_in: self.bytes_in.saturating_add(other.bytes_in),
            state_ops: self.state_ops.saturating_add(other.state_ops),
        }
    }

    /// Field by field `self - earlier`, saturating at zero (a counter that went back, after
    /// its tenant was forgotten and made again, counts from zero).
    #[must_use]
    pub fn since(self, earlier: Self) -> Self {
        Self {
            fuel: self.fuel.saturating_sub(earlier.fuel),
            messages_in: self.messages_in.saturating_sub(earlier.messages_in),
            messages_out: self.messages_out.saturating_sub(earlier.messages_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            state_ops: self.state_ops.saturating_sub(earlier.state_ops),
        }
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// Usage of one tenant to add, counted in the hour starting at `hour_start_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// Whose usage.
    pub tenant: TenantId,
    /// Start of the UTC hour it was counted in, in milliseconds since the epoch (a multiple of
    /// 3,600,000).
    pub hour_start_ms: u64,
    /// The work done.
    pub counters: UsageCounters,
}

/// A tenant's usage in one hour or one day (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePeriodRecord {
    /// `hour` or `day`.
    pub period: &'static str,
    /// Start of the period, in milliseconds since the epoch.
    pub start_ms: u64,
    /// The work done in it.
    pub counters: UsageCounters,
}

/// A module's log line as kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLogRecord {
    /// Its number, increasing per tenant from 1 (given by the store).
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// `trace`, `debug`, `info`, `warn`, `error` or `critical`.
    pub level: String,
    /// The deployment it came from, if known.
    pub deployment: Option<String>,
    /// The node that wrote it.
    pub node: String,
    /// The text.
    pub message: String,
}
