//! The embedded MQTT broker of `weir serve`: MQTT 3.1.1 and 5.0 over plain TCP, one topic space
//! per tenant, built on rmqtt 0.24 (dependency-notes.md, "MQTT v5 spike"; issue 10, point 3).
//!
//! # Logins
//!
//! Every client logs in with a user name `<name>@<tenant>` and a password; anonymous clients are
//! refused (CONNACK Not Authorized). Devices are checked by the [`DeviceDirectory`] given to
//! [`EmbeddedBroker::start`]; weir's own clients log in with
//! [`EmbeddedBroker::service_credentials`] (`$service@<tenant>`, a per-process secret). The
//! tenant of a session is the one its user name names, and the directory must confirm it.
//!
//! The client id must be `<name>@<tenant>` as well, for the same tenant (see
//! [`tenant_client_id`]): MQTT client ids are one namespace per broker and a CONNECT with an id
//! in use takes that session over (MQTT 5.0 section 3.1.4), so without it one tenant could
//! disconnect or inherit another's session. Empty (server-assigned) client ids are refused.
//!
//! | CONNECT                                                  | CONNACK                  |
//! |----------------------------------------------------------|--------------------------|
//! | no user name                                             | 0x87 Not Authorized      |
//! | user name names no tenant, no password, wrong password   | 0x86 Bad User Name or Password |
//! | client id not `<name>@<tenant>`                          | 0x87 Not Authorized      |
//! | a device's client id starting with `weir.` or `$` (weir's own) | 0x87 Not Authorized |
//! | will topic empty or starting with `$`                    | 0x87 Not Authorized      |
//! | will with Retain                                         | 0x9A Retain not supported (MQTT 5.0), 0x87 otherwise |
//! | directory failed or timed out, or named another tenant   | 0x87 Not Authorized      |
//! | tenant at [`BrokerConfig::max_sessions_per_tenant`]      | 0x87 Not Authorized      |
//! | broker at [`BrokerConfig::max_sessions`]                 | 0x88 Server Unavailable  |
//!
//! # Topic walls: a mount point per tenant
//!
//! Each tenant has its own topic space, transparently: a client publishes and subscribes with
//! plain topics (`sensors/temp`, `#`, `+/status`, `$share/workers/jobs/#`) and they mean "in my
//! tenant". Inside the broker every topic and filter is stored under
//! `$tenant/<tenant>/<topic as written>` ([`MOUNT_ROOT`]); the prefix is added when a PUBLISH,
//! will message, SUBSCRIBE or UNSUBSCRIBE arrives and removed when a message is delivered, like
//! EMQX and VerneMQ mount points. So `#` means "all of my tenant's topics", and no filter a
//! client can write matches another tenant's messages. weir's runtime uses the same plain
//! topics as the tenant's devices: no prefix to add.
//!
//! | a client of tenant `acme` …                       | gets                                 |
//! |---------------------------------------------------|--------------------------------------|
//! | publishes `sensors/temp`                          | stored as `$tenant/acme/sensors/temp`; `acme`'s subscribers receive `sensors/temp` |
//! | subscribes `#`, `+/#`, `+/+`, `$share/g/#`        | SUBACK granted, matching `acme`'s topics only |
//! | subscribes `$SYS/#`, `$tenant/…`, any `$…` filter | SUBACK 0x87 Not Authorized           |
//! | publishes to a topic starting with `$`            | PUBACK 0x87 Not Authorized (QoS 0: dropped) |
//! | publishes with Retain                             | PUBACK 0x83 Implementation Specific Error, reason string "retained messages are not supported…" (QoS 0: dropped); CONNACK says Retain Available 0 |
//! | uses a topic alias                                | the alias resolves to the full topic first, then it is mounted |
//! | sets a will                                       | checked at CONNECT; published into `acme`'s space |
//!
//! Topics starting with `$` are reserved for the server (MQTT 5.0 section 4.7.2), which is why a
//! mounted topic can never be mistaken for one a client wrote. Retained messages are refused
//! rather than stored: storing them per tenant needs rmqtt's retainer plugin, whose store has
//! no per-tenant bound. Every hook answers every case explicitly, because rmqtt's ACL hooks
//! allow what no hook answers (connector-pitfalls.md, "rmqtt 0.24").
//!
//! # Bounds
//!
//! Everything a client can make the broker hold is bounded by [`BrokerConfig`]: packet size,
//! in-flight window and queue per session, subscriptions per session, sessions per tenant and
//! in all, client id length, session expiry. No state is kept per tenant or per topic outside
//! rmqtt's sessions and subscription tree (tenant session counts are counted afresh at each
//! login). Sessions are in memory: they survive a client's reconnect, not a broker restart.

mod broker;
mod config;
mod hooks;
mod shared;
mod walls;

use std::fmt::Debug;

use async_trait::async_trait;
use weir_api::TenantId;

pub use broker::EmbeddedBroker;
pub use config::BrokerConfig;
pub use walls::MOUNT_ROOT;

/// Where device logins are checked: weir's control store implements it with the device
/// credentials a tenant owner creates through the API.
#[async_trait]
pub trait DeviceDirectory: Send + Sync + Debug {
    /// The tenant of the device whose user name is `username` (`<device>@<tenant>`), if
    /// `password` is its password; `Ok(None)` for an unknown user name or a wrong password.
    /// The tenant returned must be the one the user name names, or the login is refused.
    /// Called for every CONNECT except the broker's own service logins, within the handshake
    /// timeout; it must not block the async worker thread.
    ///
    /// # Errors
    /// A message for the log when the directory cannot answer; the login is refused.
    async fn verify(&self, username: &str, password: &[u8]) -> Result<Option<TenantId>, String>;
}

/// The client id `<name>@<tenant>` every client of `tenant` must use (see the crate docs).
pub fn tenant_client_id(name: &str, tenant: &TenantId) -> String {
    format!("{name}@{tenant}")
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The settings have problems; every one is listed.
    #[error("invalid MQTT broker settings: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The listener could not be bound.
    #[error("cannot listen for MQTT on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the operating system said.
        reason: String,
    },
    /// No random key for the service logins could be made.
    #[error("no random source for the MQTT service logins: {0}")]
    Random(String),
}
