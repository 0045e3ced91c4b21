//! The documents of weir's REST API (`/v1`), as the gateway writes them and the typed client
//! reads them. One definition per document, so the server and its client cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tenancy::{Quotas, Role};

/// An `application/problem+json` document (RFC 9457) with weir's stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// The stable code (`invalid_graph`, `quota_exceeded`, ...).
    pub code: String,
    /// What went wrong, for people.
    pub detail: String,
    /// The request, as `urn:weir:request:<id>`.
    pub instance: String,
    /// Every problem of a validation, each with where it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

/// One problem of a validation: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProblemField {
    /// A JSON pointer or YAML path.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// The tenant id (lowercase letters, digits, `-`).
    pub id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Quotas other than the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
}

/// A tenant, as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Its id.
    pub id: String,
    /// A name for people.
    pub display_name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Whether its tokens are refused and its deployments paused.
    pub suspended: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// Who the token is for.
    pub subject: String,
    /// What it may do.
    pub role: Role,
    /// How long it lives (default one day, at most a year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Admins only: the tenant the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A token weir minted. `token` is present once, in the answer to the mint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Token {
    /// Its id (`jti`), for revocation.
    pub id: String,
    /// Its subject.
    pub subject: String,
    /// Its role.
    pub role: Role,
    /// Its tenant; none for admin tokens.
    pub tenant: Option<String>,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The bearer token itself (mint answer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A module version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Module {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The operator interfaces it exports.
    pub operators: Vec<String>,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// A graph definition version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Graph {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>` of its text.
    pub digest: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// `POST /v1/modules/import` and `POST /v1/graphs/import`: fetch an artifact from an OCI
/// registry (as Azure's samples publish them) and keep it like an upload.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportArtifact {
    /// `registry[:port]/repository:tag` (or `@sha256:…`).
    pub reference: String,
    /// Name to keep it under (default: the repository's last segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Version to keep it under (default: the tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Speak plain HTTP to the registry (a local registry without TLS).
    #[serde(default)]
    pub insecure: bool,
}

/// The kinds of endpoint a deployment can read from or write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// An MQTT broker.
    Mqtt,
    /// A Kafka-protocol broker.
    Kafka,
    /// An OpenTelemetry collector (sink only).
    Otlp,
    /// weir's own HTTP ingest and output queue.
    Http,
}

/// `POST /v1/endpoints`. The secret is write-only: it is stored, never shown again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Its name, unique in the tenant; deployments bind to it by name.
    pub name: String,
    /// What it is.
    pub kind: EndpointKind,
    /// `host:port` of the broker or collector (not for `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Connector settings (client id, TLS on/off, ...), never secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// A password or key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// An endpoint as it is read back: whether it has a secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: EndpointKind,
    /// `host:port`, if it has one.
    pub address: Option<String>,
    /// Connector settings.
    pub settings: BTreeMap<String, String>,
    /// Whether a secret is stored.
    pub has_secret: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// A graph of the tenant's, by name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GraphRef {
    /// Graph name.
    pub name: String,
    /// Graph version.
    pub version: String,
}

/// Where a deployment reads or writes: an endpoint of the tenant's (or the built-in `http`)
/// and its topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Endpoint name; `http` is built in.
    pub endpoint: String,
    /// Topics to subscribe to (source) or the one to publish to (sink).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

impl Default for Binding {
    fn default() -> Self {
        Self {
            endpoint: "http".to_owned(),
            topics: Vec::new(),
        }
    }
}

/// `POST /v1/deployments` in weir's own form (an Azure `DataflowGraph` document is accepted
/// too), and `PUT /v1/deployments/{id}` for a rolling update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// Its id, unique in the tenant.
    pub id: String,
    /// The graph to run.
    pub graph: GraphRef,
    /// Configuration values for the graph's modules.
    #[serde(default)]
    pub configuration: BTreeMap<String, String>,
    /// Where messages come from.
    #[serde(default)]
    pub source: Binding,
    /// Where outputs go.
    #[serde(default)]
    pub sink: Binding,
    /// Where the deployment's dead letters are also published (as JSON documents, the shape
    /// of `GET /v1/deadletters` entries), besides being kept in the control store: an endpoint
    /// and its topic. None: kept only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<Binding>,
    /// How many instances run it, each on its own executor where the pool allows (default 1;
    /// see [`crate::scale`] for the rules: a graph with an `accumulate` runs as one instance
    /// unless `partition_key` is set).
    #[serde(
        default = "crate::scale::one_instance",
        skip_serializing_if = "crate::scale::is_one_instance"
    )]
    pub instances: u32,
    /// What keys a windowed deployment's input across its instances: `kafka-key` (the Kafka
    /// record key, so each key's partition, and its window, lives on one instance). None:
    /// unkeyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<crate::scale::PartitionKey>,
}

/// The answer to creating, updating, pausing or resuming a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentChanged {
    /// Its id.
    pub id: String,
    /// Its status now.
    pub status: String,
    /// Configuration keys no module declared, and similar advice.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One change of a deployment's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusChange {
    /// The new status.
    pub status: String,
    /// Why.
    pub detail: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// A deployment: what was deployed, its status and, while it runs, its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// Its id.
    pub id: String,
    /// `running`, `paused` or `failed`.
    pub status: String,
    /// What was deployed.
    pub spec: CreateDeployment,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Status changes, oldest first (single reads only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StatusChange>,
    /// Placement and per-node counters, while it runs (single reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<serde_json::Value>,
    /// Its revisions (what each create, update and rollback asked it to run, and how that
    /// went), oldest first: the newest 20 (single reads only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<DeploymentRevision>,
}

/// One revision of a deployment: what a create, update (`PUT`) or rollback asked it to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentRevision {
    /// Its number: 1 for the create, then one more for every update or rollback (failed ones
    /// included).
    pub revision: u64,
    /// The graph it runs, `name@version`.
    pub graph: String,
    /// The graph definition's digest (`sha256:...`).
    pub graph_digest: String,
    /// Module digests by the reference the graph uses.
    pub modules: std::collections::BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub at: u64,
    /// Who asked for it (the token's subject).
    pub by: String,
    /// `rolled_out` (it runs, or ran until a later revision), `failed` (it did not start;
    /// the version before it kept running) or `rolled_back` (a rollback to an earlier
    /// revision, named in `detail`).
    pub outcome: String,
    /// Why it failed, or which revision it rolled back to.
    #[serde(default)]
    pub detail: String,
    /// Whether this is the revision that runs now.
    #[serde(default)]
    pub current: bool,
}

/// The body of `POST /v1/deployments/{id}/rollback` (optional): the revision to go back to;
/// default the one before the current revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackDeployment {
    /// The revision number (see `Deployment.revisions`).
    #[serde(default)]
    pub revision: Option<u64>,
}

/// A message handed to a deployment's HTTP source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IngestMessage {
    /// The topic it arrives on (default `ingest`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The payload, as text.
    pub payload: String,
    /// User properties, in order.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub user_properties: Vec<(String, String)>,
}

impl IngestMessage {
    /// User properties one message may carry (each costs the host a resource handle and a
    /// pair of buffers, whatever its length).
    pub const MAX_USER_PROPERTIES: usize = 256;

    /// Why its topic cannot name a message, if it cannot: empty, over 65,535 bytes, or holding
    /// a wildcard (`#`, `+`) or NUL (the MQTT v5 rules for topic names, §4.7).
    pub fn topic_problem(&self) -> Option<&'static str> {
        if self.topic.is_empty() {
            Some("the topic is empty")
        } else if self.topic.len() > 65_535 {
            Some("the topic is longer than 65,535 bytes")
        } else if self.topic.contains(['#', '+']) {
            Some("a message's topic holds no wildcard (`#`, `+`)")
        } else if self.topic.contains('\0') {
            Some("the topic holds a NUL character")
        } else {
            None
        }
    }

    /// Its size as `max_message_bytes` counts it: topic, payload and user properties.
    pub fn byte_len(&self) -> u64 {
        let properties: usize = self
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        (self.topic.len() + self.payload.len() + properties) as u64
    }

    /// A message on the default topic with no properties.
    pub fn new(payload: impl Into<String>) -> Self {
        Self {
            topic: default_topic(),
            payload: payload.into(),
            user_properties: Vec::new(),
        }
    }
}

fn default_topic() -> String {
    "ingest".to_owned()
}

/// An item a deployment's HTTP sink produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputMessage {
    /// Its topic.
    pub topic: String,
    /// Its payload (lossy UTF-8).
    pub payload: String,
    /// Its user properties.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub user_properties: Vec<(String, String)>,
}

/// The answer to an ingest: how many messages were taken and, when waited for, the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestReply {
    /// Messages accepted.
    pub accepted: usize,
    /// Outputs derived from them (`?wait=true`), or taken from the output queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputMessage>>,
}

/// `GET /v1/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateKeys {
    /// Keys, in order.
    pub keys: Vec<String>,
}

/// A state entry read or written through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateEntry {
    /// The key.
    pub key: String,
    /// The value (lossy UTF-8); absent in the answer to a write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Its version (an HLC timestamp).
    pub version: Option<String>,
}

/// A line a tenant's module logged, or one weir logged about the tenant's deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// Sequence number, increasing: pass the last one seen as `after` to follow.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The deployment it came from, if known.
    pub deployment: Option<String>,
    /// The node (operation) it came from, if known.
    pub node: Option<String>,
    /// The text.
    pub message: String,
}

/// A message a node could not process, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Sequence number, increasing.
    pub seq: u64,
    /// The deployment.
    pub deployment: String,
    /// The node that failed.
    pub node: String,
    /// The stable reason (`trap`, `fuel_exhausted`, `deadline`, `memory_limit`, ...).
    pub reason: String,
    /// Details for people.
    pub detail: String,
    /// The input's topic.
    pub topic: String,
    /// The input's payload (lossy UTF-8), cut to 64 KiB: see `input_bytes`.
    pub payload: String,
    /// The size of the whole input (topic, payload and properties), in bytes.
    #[serde(default)]
    pub input_bytes: u64,
    /// Whether `payload` was cut.
    #[serde(default)]
    pub payload_truncated: bool,
    /// When the node gave it up, milliseconds since the epoch (the control store's clock at
    /// the append if the runtime left it 0).
    #[serde(default)]
    pub at_ms: u64,
}

impl DeadLetter {
    /// Bytes of an input's payload a letter keeps (64 KiB); the rest is cut and the input's
    /// whole size kept in `input_bytes`.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

    /// Its size as `max_dead_letter_bytes` counts it: payload, detail, topic, node and
    /// deployment.
    pub fn byte_len(&self) -> u64 {
        (self.payload.len()
            + self.detail.len()
            + self.topic.len()
            + self.node.len()
            + self.deployment.len()) as u64
    }
}

/// `POST /v1/devices`: credentials for a device (or any MQTT client) to connect to weir's
/// embedded broker as the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// Its name, unique in the tenant: 1 to 128 of `A-Z a-z 0-9 . - _`, starting with a letter
    /// or digit.
    pub name: String,
}

/// A device's credentials, as they are listed: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    /// Its name.
    pub name: String,
    /// The MQTT user name it connects with: `<name>@<tenant>`, unique on the platform.
    pub username: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// The answer to `POST /v1/devices`: the only time the password is shown. weir keeps only its
/// SHA-256; a lost password is replaced by deleting the device and creating it again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceCredentials {
    /// Its name.
    pub name: String,
    /// The MQTT user name: `<name>@<tenant>`.
    pub username: String,
    /// The MQTT password: 32 random bytes as 64 lowercase hex digits.
    pub password: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One metric series of the tenant's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricSeries {
    /// Its name.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Counter total or gauge value; for histograms the sum.
    pub value: f64,
    /// For histograms, the number of observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For histograms with buckets (weir's own, such as `weir_call_duration_seconds`): the
    /// count of each bucket (not cumulative) by its upper bound, the last bound `null`
    /// (+Inf). Modules' histograms keep count and sum only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<(Option<f64>, u64)>>,
    /// Whether weir measures the series (`weir_*` names: messages, errors, fuel, latency of
    /// the tenant's deployments), rather than a module recording it.
    #[serde(default)]
    pub platform: bool,
}

/// What a tenant has used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Modules stored.
    pub modules: u64,
    /// Bytes of modules stored.
    pub module_bytes: u64,
    /// Graphs stored.
    pub graphs: u64,
    /// Deployments.
    pub deployments: u64,
    /// Messages taken in by the tenant's deployments.
    pub messages_in: u64,
    /// Bytes taken in: topic, payload and user properties of each message.
    pub bytes_in: u64,
    /// Messages refused at intake by `messages_per_second_in`.
    #[serde(default)]
    pub messages_limited: u64,
    /// Messages its deployments put out.
    pub messages_out: u64,
    /// Messages dead-lettered (kept in the control store: counted across restarts).
    pub dead_letters: u64,
    /// Dead letters dropped, oldest first, to keep within `max_dead_letter_bytes` and the
    /// 10,000 letters a tenant keeps at most (counted across restarts).
    #[serde(default)]
    pub dead_letters_evicted: u64,
    /// What `init` calls used (after deploys, restarts, and after every trap) since this
    /// `weir serve` started; `fuel` includes it.
    #[serde(default)]
    pub init_fuel: u64,
    /// Fuel its operators burned.
    pub fuel: u64,
    /// State store operations (by modules and through the API).
    pub state_ops: u64,
    /// API requests made.
    pub api_requests: u64,
    /// API requests refused by the rate limit.
    pub api_requests_limited: u64,
    /// Module log lines kept (what `max_log_lines` bounds; 0 where the gateway keeps no log).
    #[serde(default)]
    pub log_lines: u64,
    /// Bytes of the dead letters kept, as `max_dead_letter_bytes` counts them.
    #[serde(default)]
    pub dead_letter_bytes: u64,
    /// Keys the tenant holds in the state store now (expired keys not counted): what
    /// `max_state_keys` bounds, checked by the state store on every write of a new key.
    #[serde(default)]
    pub state_keys: u64,
    /// Bytes the tenant holds in the state store now: each live key's length plus its value's,
    /// what `max_state_bytes` bounds, checked by the state store on every write.
    #[serde(default)]
    pub state_bytes: u64,
    /// Bytes of the messages taken in by the tenant's deployments and not yet fully processed,
    /// now (topic, payload and user properties of each): what `max_inflight_bytes` bounds,
    /// reserved at intake (an ingest over it is refused `rate_limited`) and released when the
    /// message is processed. Absent where the runtime does not report it (deployments on
    /// remote executor processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_bytes: Option<u64>,
    /// Bytes of the tenant's outputs that reached a sink and are not yet taken (by a reader
    /// of an HTTP sink, or by the sink's connector), now: what `max_queued_output_bytes`
    /// bounds (while it is spent the tenant's operators start no call). Absent where the
    /// runtime does not report it (deployments on remote executor processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_output_bytes: Option<u64>,
    /// Billable work per UTC hour (the last 48) and per UTC day (the last 31), oldest first,
    /// hours before days: kept in the control store, so they last across restarts.
    /// `messages_in`, `messages_out`, `bytes_in`, `fuel` and `state_ops` above are the totals
    /// since the tenant was created (work of the last flush interval included).
    #[serde(default)]
    pub periods: Vec<UsagePeriod>,
}

/// A tenant's billable work in one UTC hour or day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsagePeriod {
    /// `hour` or `day`.
    pub period: String,
    /// Start of the period, in milliseconds since the epoch.
    pub start_ms: u64,
    /// Messages taken in.
    pub messages_in: u64,
    /// Messages put out.
    pub messages_out: u64,
    /// Bytes taken in: topic, payload and user properties of each message.
    pub bytes_in: u64,
    /// Fuel (wasmtime fuel units) the tenant's modules burned, `init` included.
    pub fuel: u64,
    /// State store operations.
    pub state_ops: u64,
}

/// An executor of the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Executor {
    /// Its id.
    pub id: String,
    /// `ready`, `cordoned` (takes no new deployments) or `draining`.
    pub state: String,
    /// Deployments placed on it.
    pub deployments: u64,
    /// Its dataflow workers.
    pub workers: u64,
}

/// An executor process joining the control plane (`POST /v1/executors/join`, bearer: the
/// executor join token of `weir serve`, not a tenant's or admin's token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorJoin {
    /// Its id, unique per executor process (1 to 128 ASCII letters, digits, `-`, `_`, `.`,
    /// `:`); also the node id of its hybrid logical clock.
    pub id: String,
    /// Its dataflow workers.
    pub workers: u32,
    /// The linear memory it offers its deployments' operator instances, in bytes.
    pub memory_bytes: u64,
    /// Its operator instance slots (pooling allocator).
    pub instance_slots: u32,
    /// Its labels (`zone=eu-1`), matched by deployments' label requirements.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The control plane's answer to a join: how often to heartbeat, and after how long without
/// one the executor is declared lost (what it ran is then placed elsewhere, and it must join
/// again with a new id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutorJoined {
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which the executor is lost.
    pub timeout_ms: u64,
    /// The bearer token of this membership for every other `/v1/executors/{id}/…` route (64
    /// hex digits; the join token opens only the join). Joining again gives a new one.
    #[serde(default)]
    pub session_token: String,
}

/// A heartbeat (`POST /v1/executors/{id}/heartbeat`): what the executor runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorHeartbeat {
    /// The deployments it runs.
    #[serde(default)]
    pub running: Vec<ExecutorRunning>,
    /// The revision of its assignments it has carried out (started what they add, stopped
    /// what they drop): an assignment of a later revision that it does not report running yet
    /// is still starting.
    #[serde(default)]
    pub revision: u64,
}

/// Dead letters of one tenant's deployments on an executor process
/// (`POST /v1/executors/{id}/deadletters`), to be kept in the control plane's journal as the
/// ones of `weir serve`'s own deployments are. At most [`Self::MAX_LETTERS`] letters and
/// [`Self::MAX_BODY_BYTES`] of JSON per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorDeadLetters {
    /// Whose deployments gave them up.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: crate::TenantId,
    /// The letters, oldest first (`seq` is ignored: the journal numbers them).
    pub letters: Vec<DeadLetter>,
}

impl ExecutorDeadLetters {
    /// Most letters in one request.
    pub const MAX_LETTERS: usize = 256;
    /// Largest request body, in bytes (an executor sends fewer letters per request rather
    /// than more bytes).
    pub const MAX_BODY_BYTES: usize = 16 << 20;
}

/// Module log lines of one tenant's deployments on an executor process
/// (`POST /v1/executors/{id}/logs`), kept with the tenant's other lines (`/v1/logs`) under its
/// `max_log_lines`. At most [`Self::MAX_LINES`] lines and [`Self::MAX_BODY_BYTES`] of JSON per
/// request; answered `204`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorLogLines {
    /// Whose deployments wrote them.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: crate::TenantId,
    /// The lines, oldest first (`seq` is ignored: the store numbers them).
    pub lines: Vec<LogLine>,
}

impl ExecutorLogLines {
    /// Most lines in one request.
    pub const MAX_LINES: usize = 1_000;
    /// Largest request body, in bytes.
    pub const MAX_BODY_BYTES: usize = 8 << 20;
}

/// An executor's telemetry of one tenant (`POST /v1/executors/{id}/telemetry`), sent every few
/// seconds: the tenant's metric series there (module and `weir_*` series, as `/v1/metrics`
/// gives them) and each of its deployments' counters there (the `runtime` of
/// `GET /v1/deployments/{id}`), by deployment or instance id (`d#2`). Each report replaces the
/// executor's previous one of the tenant; an empty one says it runs nothing of the tenant any
/// more. At most [`Self::MAX_SERIES`] series, [`Self::MAX_DEPLOYMENTS`] deployments and
/// [`Self::MAX_BODY_BYTES`] of JSON per request; answered `204`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorTelemetry {
    /// Whose deployments these are.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: crate::TenantId,
    /// The tenant's series on this executor.
    pub series: Vec<MetricSeries>,
    /// Counters of each of the tenant's deployments on this executor, by id.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub deployments: BTreeMap<String, serde_json::Value>,
    /// What the tenant's deployments used on this executor: `messages_in`, `bytes_in`,
    /// `messages_out`, `fuel` and `state_ops` *since its previous report of the tenant that was
    /// taken* (the control plane adds them to the tenant's stored usage), `messages_limited`,
    /// `dead_letters` and `init_fuel` since the executor started.
    #[serde(default)]
    pub usage: Usage,
}

impl ExecutorTelemetry {
    /// Most series in one report (a tenant's module series are bounded by its
    /// `max_metric_series` too).
    pub const MAX_SERIES: usize = 50_000;
    /// Most deployments in one report.
    pub const MAX_DEPLOYMENTS: usize = 10_000;
    /// Largest request body, in bytes.
    pub const MAX_BODY_BYTES: usize = 16 << 20;
}

/// The answer to [`ExecutorDeadLetters`]: the sequence number each letter got in the tenant's
/// journal, in order (none when the tenant is gone: its deployments are stopping).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeadLettersKept {
    /// The letters' numbers (`DeadLetter::seq`).
    pub seqs: Vec<u64>,
}

/// What an executor process is to run (`GET /v1/executors/{id}/assignments?after=R&wait_ms=W`,
/// a long poll: answered at once when the revision is past `after`, else when it changes or
/// after `wait_ms`, at most 30,000). Everything not listed is to stop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorAssignments {
    /// Grows with every change of this executor's assignments.
    pub revision: u64,
    /// The deployments to run.
    pub assignments: Vec<ExecutorAssignment>,
    /// Instances it ran that are gone for good (scaled away), not moved, paused or deleted: it
    /// retires them (each finishes its messages and ends its broker session, so nothing is
    /// kept for it) rather than just stopping them. Listed until the executor's heartbeat
    /// shows it acted on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredDeployment>,
}

/// A deployment an executor is to retire ([`ExecutorAssignments::retired`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetiredDeployment {
    /// The tenant.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: crate::TenantId,
    /// The deployment's (or instance's) id.
    pub id: String,
}

/// One deployment assigned to an executor process: its artifacts by digest (fetched from
/// `/v1/executors/{id}/artifacts/{digest}` and checked against it) and its resolved bindings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorAssignment {
    /// The tenant.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: crate::TenantId,
    /// The deployment's id.
    pub id: String,
    /// Changes whenever what this deployment runs changes (a restart on the executor).
    pub generation: u64,
    /// The deployment's revision this assignment runs (see `Deployment.revisions`); a new
    /// revision on the same executor is swapped in by a rolling update.
    #[serde(default)]
    pub revision: u64,
    /// The tenant's quotas.
    pub quotas: crate::tenancy::Quotas,
    /// The graph definition's digest (`sha256:...`).
    pub graph: String,
    /// Module digests by the reference the graph uses.
    pub modules: std::collections::BTreeMap<String, String>,
    /// Configuration values.
    pub configuration: std::collections::BTreeMap<String, String>,
    /// Where messages come from.
    pub source: AssignedBinding,
    /// Where outputs go.
    pub sink: AssignedBinding,
    /// Where dead letters are also published, if anywhere.
    #[serde(default)]
    pub dead_letters: Option<AssignedBinding>,
    /// The deployment's partition key (`crate::scale`): its windows are kept per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<crate::scale::PartitionKey>,
}

impl std::fmt::Debug for ExecutorAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorAssignment")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A binding with its endpoint resolved, secret included (executors are trusted with the
/// connections of what they run; the join token guards the route).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AssignedBinding {
    /// The endpoint's name.
    pub endpoint: String,
    /// Its kind (`mqtt`, `kafka`, `otlp`).
    pub kind: String,
    /// `host:port`, if it has one.
    #[serde(default)]
    pub address: Option<String>,
    /// Connector settings.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// The write-only secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// Topic filters (source) or the topic (sink).
    #[serde(default)]
    pub topics: Vec<String>,
}

impl std::fmt::Debug for AssignedBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignedBinding")
            .field("endpoint", &self.endpoint)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A deployment an executor runs, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecutorRunning {
    /// The tenant.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: crate::TenantId,
    /// The deployment's id.
    pub id: String,
    /// What is wrong with it, if anything (a connection down).
    #[serde(default)]
    pub problem: Option<String>,
    /// The generation of its assignment that runs.
    #[serde(default)]
    pub generation: u64,
    /// A newer generation that did not start, and why: the one that runs kept running (a
    /// failed rolling update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedGeneration>,
    /// It does not run at all: its assignment (`generation`) did not start here, for the
    /// reason in `problem` (its module trapped in `init`, its graph cannot be built, an
    /// artifact did not match its digest). The control plane shows it `degraded` with that
    /// reason rather than placing it again and again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_started: bool,
    /// It runs, but its source does not read its input (yet): connecting (an MQTT source until
    /// its subscription is acknowledged), retrying or failed. A scaled-away sibling is retired
    /// only once every instance taking over reads its input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
}

/// An assignment's generation an executor could not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefusedGeneration {
    /// The generation.
    pub generation: u64,
    /// Why it did not start.
    pub error: String,
}
