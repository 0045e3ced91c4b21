//! What a connector is built from: the endpoint (a tenant's `/v1/endpoints` resource), the
//! deployment's binding, and the context of the connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weir_api::TenantId;
use weir_api::egress::Egress;

use crate::status::ConnectionStatus;

/// One problem with an endpoint or binding: a path (`/endpoint/settings/qos`,
/// `/source/topics/0`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a JSON pointer into the deployment document or the endpoint.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An endpoint as the connector sees it: the stored resource with its secret unsealed.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Its name in the tenant.
    pub name: String,
    /// Its kind (`mqtt`, `kafka`, `otlp`, `http`).
    pub kind: String,
    /// `host:port` (or a URL for `otlp`), if it has one.
    pub address: Option<String>,
    /// Connector settings, never secret.
    pub settings: BTreeMap<String, String>,
    /// The write-only secret (a password, or a PEM bundle), unsealed for the connector only.
    pub secret: Option<String>,
}

impl std::fmt::Debug for EndpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("settings", &self.settings)
            .field("secret", &self.secret.as_ref().map(|_| "<sealed>"))
            .finish()
    }
}

/// A source binding: the endpoint and the topic filters (MQTT, wildcards and `$share/<group>/`
/// allowed) or topics (Kafka) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// The endpoint.
    pub endpoint: EndpointSpec,
    /// Topics or topic filters; at least one.
    pub topics: Vec<String>,
}

/// A sink binding: the endpoint and the topic to publish to (`${outputTopic}` allowed; empty:
/// each output's own topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// The endpoint.
    pub endpoint: EndpointSpec,
    /// The topic template.
    pub topic: String,
}

/// Who a connection is for and how it may connect.
#[derive(Debug, Clone)]
pub struct ConnectContext {
    /// The tenant.
    pub tenant: TenantId,
    /// The deployment id.
    pub deployment: String,
    /// A stable name for this deployment's connections (MQTT client id, Kafka `client.id` and
    /// consumer group default): the same across restarts, so persistent sessions and committed
    /// offsets carry over.
    pub client_id: String,
    /// Set when several instances of the deployment share this input (`instances` > 1,
    /// `weir_api::scale`): the same for every instance while `client_id` differs. A Kafka
    /// source joins this consumer group (unless the endpoint's `group_id` names one), so each
    /// partition is read by one instance; an MQTT source subscribes `$share/<group>/<filter>`
    /// (MQTT 5.0 §4.8.2), so each message goes to one instance. None: the input is not shared.
    pub share_group: Option<String>,
    /// Where the tenant may connect: checked on every resolve, connect and reconnect.
    pub egress: Egress,
    /// Resolving and connecting together take at most this long (default 10 s).
    pub connect_timeout: Duration,
    /// A request with no answer for this long fails and the connection is retried (default 30 s).
    pub read_timeout: Duration,
    /// The largest message the tenant may send or receive, in bytes (`max_message_bytes`).
    pub max_message_bytes: u64,
    /// Where the connection reports its state (shown in the deployment's status); one per
    /// source or sink.
    pub status: Arc<ConnectionStatus>,
    /// Fires when the deployment instance is retired for good (a source that keeps a broker
    /// session ends it: [`crate::Source::ends_session_on_retire`]); sinks ignore it.
    pub retire: crate::RetireSignal,
}

impl ConnectContext {
    /// A context with default timeouts, a fresh status and the client id
    /// `weir-<tenant>-<deployment>`.
    pub fn new(tenant: TenantId, deployment: &str, egress: Egress, max_message_bytes: u64) -> Self {
        Self {
            client_id: format!("weir-{tenant}-{deployment}"),
            share_group: None,
            tenant,
            deployment: deployment.to_owned(),
            egress,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_message_bytes,
            status: Arc::new(ConnectionStatus::default()),
            retire: crate::RetireSignal::never(),
        }
    }
}

impl ConnectContext {
    /// The same context with a fresh status (a source's and a sink's are separate).
    pub fn with_fresh_status(&self) -> Self {
        Self {
            status: Arc::new(ConnectionStatus::default()),
            ..self.clone()
        }
    }
}
