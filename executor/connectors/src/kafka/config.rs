//! The typed settings of a `kafka` endpoint, checked without I/O, and the librdkafka
//! configuration built from them.
//!
//! Settings (all optional; unknown keys are problems, so a typo is not silently ignored):
//!
//! | key | values | default |
//! |---|---|---|
//! | `group_id` | consumer group of a source | the deployment's share group when its instances share the input (`ConnectContext::share_group`), else its client id |
//! | `auto_offset_reset` | `earliest`, `latest`: where a group with no committed offset starts | `earliest` |
//! | `create_topics` | `true`, `false`: create missing topics through the admin API | `false` |
//! | `partitions` | 1–10000, for created topics | `1` |
//! | `replication_factor` | 1–32767, for created topics | `1` |
//! | `security_protocol` | `plaintext`, `sasl_plaintext` | `plaintext`, or `sasl_plaintext` with a `sasl_mechanism` |
//! | `sasl_mechanism` | `PLAIN` | none |
//! | `username` | the SASL user name (the password is the endpoint's secret) | none |
//! | `acks` | `all`, `1`, `0` (sink) | `all` |
//! | `idempotence` | `true`, `false` (sink; `true` needs `acks=all`) | `true` |
//! | `compression` | `none`, `gzip`, `snappy`, `lz4` (sink) | `none` |
//! | `session_timeout_ms` | 1000–3600000 (source): how long the group waits for a member that stopped heartbeating (a killed instance) before its partitions move; the broker's `group.min.session.timeout.ms`/`group.max.session.timeout.ms` bound it | `45000` (librdkafka's) |
//!
//! TLS (`ssl`, `sasl_ssl`) and the SCRAM, GSSAPI and OAUTHBEARER mechanisms need librdkafka built
//! with OpenSSL, Cyrus SASL or curl, which this build leaves out: they are refused with a
//! problem that says so, never accepted and then failing at connect time.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::spec::{ConnectContext, EndpointSpec, Problem};

/// Settings a `kafka` endpoint accepts.
const KNOWN_SETTINGS: &[&str] = &[
    "group_id",
    "auto_offset_reset",
    "create_topics",
    "partitions",
    "replication_factor",
    "security_protocol",
    "sasl_mechanism",
    "username",
    "acks",
    "idempotence",
    "compression",
    "session_timeout_ms",
];

/// Longest Kafka topic name (Kafka's `Topic.MAX_NAME_LENGTH`).
pub(crate) const MAX_TOPIC_LEN: usize = 249;

/// Longest consumer group id weir accepts (Kafka itself has no limit; this keeps ids sane).
const MAX_GROUP_ID_LEN: usize = 255;

/// Most bytes a consumer fetches in one request (librdkafka `fetch.max.bytes`), unless one
/// message of the tenant's `max_message_bytes` needs more.
const FETCH_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Largest value librdkafka accepts for `message.max.bytes` and `fetch.max.bytes`.
const LIBRDKAFKA_MAX_BYTES: u64 = 1_000_000_000;

/// How often librdkafka reports broker states (the connection status comes from them).
pub(crate) const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// Where a group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetReset {
    Earliest,
    Latest,
}

/// How the client authenticates.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Security {
    /// No authentication, plain TCP.
    Plaintext,
    /// SASL/PLAIN over plain TCP (RFC 4616; the password crosses the network in the clear).
    SaslPlain { username: String, password: String },
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plaintext => f.write_str("Plaintext"),
            Self::SaslPlain { username, .. } => f
                .debug_struct("SaslPlain")
                .field("username", username)
                .field("password", &"<sealed>")
                .finish(),
        }
    }
}

/// Which broker acknowledgement a produce waits for (Kafka `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acks {
    All,
    Leader,
    None,
}

/// A bootstrap broker as written: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// A `kafka` endpoint's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaSettings {
    pub(crate) bootstrap: Vec<Broker>,
    pub(crate) group_id: Option<String>,
    pub(crate) offset_reset: OffsetReset,
    pub(crate) create_topics: bool,
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i32,
    pub(crate) security: Security,
    pub(crate) acks: Acks,
    pub(crate) idempotence: bool,
    pub(crate) compression: &'static str,
    pub(crate) session_timeout_ms: Option<i32>,
}

impl KafkaSettings {
    /// Parses and checks `endpoint`, returning every problem with its path.
    pub(crate) fn parse(endpoint: &EndpointSpec) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let bootstrap = parse_bootstrap(endpoint.address.as_deref(), &mut problems);
        let settings = &endpoint.settings;
        for key in settings.keys() {
            if !KNOWN_SETTINGS.contains(&key.as_str()) {
                problems.push(Problem::new(
                    setting_path(key),
                    format!(
                        "unknown setting; a kafka endpoint takes {}",
                        KNOWN_SETTINGS.join(", ")
                    ),
                ));
            }
        }
        let group_id = settings.get("group_id").cloned();
        if let Some(group) = &group_id
            && (group.is_empty()
                || group.len() > MAX_GROUP_ID_LEN
                || group.chars().any(char::is_control))
        {
            problems.push(Problem::new(
                setting_path("group_id"),
                format!("a group id has 1 to {MAX_GROUP_ID_LEN} characters, none of them control characters"),
            ));
        }
        let offset_reset = choice(
            settings,
            "auto_offset_reset",
            &[
                ("earliest", OffsetReset::Earliest),
                ("latest", OffsetReset::Latest),
            ],
            OffsetReset::Earliest,
            &mut problems,
        );
        let create_topics = boolean(settings, "create_topics", false, &mut problems);
        let partitions = integer(settings, "partitions", 1, 1..=10_000, &mut problems);
        let replication_factor =
            integer(settings, "replication_factor", 1, 1..=32_767, &mut problems);
        let security = security(endpoint, &mut problems);
        let acks = choice(
            settings,
            "acks",
            &[
                ("all", Acks::All),
                ("-1", Acks::All),
                ("1", Acks::Leader),
                ("0", Acks::None),
            ],
            Acks::All,
            &mut problems,
        );
        let idempotence = boolean(settings, "idempotence", true, &mut problems);
        if idempotence && acks != Acks::All {
            problems.push(Problem::new(
                setting_path("acks"),
                "the idempotent producer needs acks=all; set idempotence=false to use fewer acks",
            ));
        }
        let compression = choice(
            settings,
            "compression",
            &[
                ("none", "none"),
                ("gzip", "gzip"),
                ("snappy", "snappy"),
                ("lz4", "lz4"),
            ],
            "none",
            &mut problems,
        );
        let session_timeout_ms = settings.contains_key("session_timeout_ms").then(|| {
            integer(
                settings,
                "session_timeout_ms",
                45_000,
                1_000..=3_600_000,
                &mut problems,
            )
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            bootstrap,
            group_id,
            offset_reset,
            create_topics,
            partitions,
            replication_factor,
            security,
            acks,
            idempotence,
            compression,
            session_timeout_ms,
        })
    }

    /// `bootstrap.servers` as librdkafka takes it.
    fn bootstrap_servers(&self) -> String {
        self.bootstrap
            .iter()
            .map(|b| {
                if b.host.contains(':') {
                    format!("[{}]:{}", b.host, b.port)
                } else {
                    format!("{}:{}", b.host, b.port)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What every client (consumer, producer, admin) of this endpoint shares: brokers,
    /// timeouts from the context, authentication, status reporting.
    pub(crate) fn common_config(&self, context: &ConnectContext) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("client.id", &context.client_id)
            .set(
                "socket.connection.setup.timeout.ms",
                millis(context.connect_timeout).max(1000).to_string(),
            )
            .set(
                "socket.timeout.ms",
                millis(context.read_timeout).max(10).to_string(),
            )
            .set("socket.keepalive.enable", "true")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "10000")
            .set(
                "statistics.interval.ms",
                millis(STATISTICS_INTERVAL).to_string(),
            )
            // Connection closes are reported through the error callback already.
            .set("log.connection.close", "false")
            // Topics are created only when the endpoint asks (through the admin API), never
            // by a broker as a side effect of a metadata request.
            .set("allow.auto.create.topics", "false")
            // A topic created after the deployment (or re-created) is found within seconds,
            // not after librdkafka's default five minutes.
            .set("topic.metadata.refresh.interval.ms", "10000")
            // Our resolve hook checks every address; do not let librdkafka re-resolve the
            // bootstrap list into canonical names behind it.
            .set("client.dns.lookup", "use_all_dns_ips");
        match &self.security {
            Security::Plaintext => {
                config.set("security.protocol", "plaintext");
            }
            Security::SaslPlain { username, password } => {
                config
                    .set("security.protocol", "sasl_plaintext")
                    .set("sasl.mechanisms", "PLAIN")
                    .set("sasl.username", username)
                    .set("sasl.password", password);
            }
        }
        config
    }

    /// A consumer in `group` that stores offsets only when told to (at-least-once: stored
    /// offsets are committed every second, and on revocation and close).
    pub(crate) fn consumer_config(&self, context: &ConnectContext) -> ClientConfig {
        let mut config = self.common_config(context);
        let message_max = message_max_bytes(context.max_message_bytes);
        let fetch_max = FETCH_MAX_BYTES.max(message_max);
        let group = self
            .group_id
            .clone()
            .or_else(|| context.share_group.clone())
            .unwrap_or_else(|| context.client_id.clone());
        config
            .set("group.id", group)
            // The classic group protocol: tansu 0.6 has no KIP-848 ConsumerGroupHeartbeat.
            .set("group.protocol", "classic")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            )
            .set("message.max.bytes", message_max.to_string())
            .set("fetch.max.bytes", fetch_max.to_string())
            .set("receive.message.max.bytes", (fetch_max + 512).to_string())
            .set(
                "queued.max.messages.kbytes",
                (fetch_max.saturating_mul(2) / 1024).to_string(),
            );
        if let Some(session) = self.session_timeout_ms {
            // Heartbeats a third of the session apart, as Kafka's defaults are (3 s of 10 s).
            config
                .set("session.timeout.ms", session.to_string())
                .set("heartbeat.interval.ms", (session / 3).max(1).to_string());
        }
        config
    }

    /// The idempotent producer (unless turned off): acks, ordering and retries as
    /// librdkafka sets them for idempotence; a delivery gives up after `read_timeout` (the
    /// sink then reports the broker as unreachable and sends again).
    pub(crate) fn producer_config(&self, context: &ConnectContext) -> ClientConfig {
        let mut config = self.common_config(context);
        config
            .set(
                "enable.idempotence",
                if self.idempotence { "true" } else { "false" },
            )
            .set(
                "acks",
                match self.acks {
                    Acks::All => "all",
                    Acks::Leader => "1",
                    Acks::None => "0",
                },
            )
            .set("compression.codec", self.compression)
            .set("linger.ms", "5")
            .set(
                "message.max.bytes",
                message_max_bytes(context.max_message_bytes).to_string(),
            )
            .set(
                "message.timeout.ms",
                millis(context.read_timeout).max(1000).to_string(),
            );
        config
    }
}

/// librdkafka's `message.max.bytes` for a tenant's `max_message_bytes`: room for the record
/// overhead, within librdkafka's range.
fn message_max_bytes(max_message_bytes: u64) -> u64 {
    max_message_bytes
        .saturating_add(64 * 1024)
        .clamp(1000, LIBRDKAFKA_MAX_BYTES)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn setting_path(key: &str) -> String {
    format!("/endpoint/settings/{key}")
}

fn parse_bootstrap(address: Option<&str>, problems: &mut Vec<Problem>) -> Vec<Broker> {
    let path = "/endpoint/address";
    let Some(address) = address.map(str::trim).filter(|a| !a.is_empty()) else {
        problems.push(Problem::new(
            path,
            "a kafka endpoint needs its bootstrap brokers: host:port[,host:port]",
        ));
        return Vec::new();
    };
    let mut brokers = Vec::new();
    for entry in address.split(',').map(str::trim) {
        match parse_host_port(entry) {
            Some(broker) => brokers.push(broker),
            None => problems.push(Problem::new(
                path,
                format!("{entry:?} is not host:port (a port from 1 to 65535; IPv6 in brackets)"),
            )),
        }
    }
    brokers
}

fn parse_host_port(entry: &str) -> Option<Broker> {
    if entry.contains("://") {
        return None;
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        (host, rest.strip_prefix(':')?)
    } else {
        let (host, port) = entry.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    valid_host.then(|| Broker {
        host: host.to_owned(),
        port,
    })
}

fn choice<T: Copy>(
    settings: &BTreeMap<String, String>,
    key: &str,
    options: &[(&str, T)],
    default: T,
    problems: &mut Vec<Problem>,
) -> T {
    let Some(value) = settings.get(key) else {
        return default;
    };
    if let Some((_, chosen)) = options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value.trim()))
    {
        return *chosen;
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    problems.push(Problem::new(
        setting_path(key),
        format!("{value:?} is not one of {}", names.join(", ")),
    ));
    default
}

fn boolean(
    settings: &BTreeMap<String, String>,
    key: &str,
    default: bool,
    problems: &mut Vec<Problem>,
) -> bool {
    choice(
        settings,
        key,
        &[("true", true), ("false", false)],
        default,
        problems,
    )
}

fn integer(
    settings: &BTreeMap<String, String>,
    key: &str,
    default: i32,
    range: std::ops::RangeInclusive<i32>,
    problems: &mut Vec<Problem>,
) -> i32 {
    let Some(value) = settings.get(key) else {
        return default;
    };
    match value.trim().parse::<i32>() {
        Ok(n) if range.contains(&n) => n,
        _ => {
            problems.push(Problem::new(
                setting_path(key),
                format!(
                    "{value:?} is not a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
    }
}

fn security(endpoint: &EndpointSpec, problems: &mut Vec<Problem>) -> Security {
    let settings = &endpoint.settings;
    let mechanism = settings
        .get("sasl_mechanism")
        .map(|m| m.trim().to_ascii_uppercase());
    let protocol = settings
        .get("security_protocol")
        .map(|p| p.trim().to_ascii_lowercase());
    let sasl = match protocol.as_deref() {
        None => mechanism.is_some(),
        Some("plaintext") => false,
        Some("sasl_plaintext") => true,
        Some(tls @ ("ssl" | "sasl_ssl")) => {
            problems.push(Problem::new(
                setting_path("security_protocol"),
                format!(
                    "{tls} needs TLS, which this weir build's Kafka client leaves out; use plaintext or sasl_plaintext"
                ),
            ));
            return Security::Plaintext;
        }
        Some(other) => {
            problems.push(Problem::new(
                setting_path("security_protocol"),
                format!("{other:?} is not one of plaintext, sasl_plaintext"),
            ));
            return Security::Plaintext;
        }
    };
    if !sasl {
        if mechanism.is_some() {
            problems.push(Problem::new(
                setting_path("sasl_mechanism"),
                "a SASL mechanism needs security_protocol=sasl_plaintext",
            ));
        }
        return Security::Plaintext;
    }
    match mechanism.as_deref() {
        Some("PLAIN") | None => {}
        Some(other @ ("SCRAM-SHA-256" | "SCRAM-SHA-512" | "GSSAPI" | "OAUTHBEARER")) => {
            problems.push(Problem::new(
                setting_path("sasl_mechanism"),
                format!("{other} is not built into this weir build's Kafka client; use PLAIN"),
            ));
        }
        Some(other) => problems.push(Problem::new(
            setting_path("sasl_mechanism"),
            format!("{other:?} is not a SASL mechanism weir supports (PLAIN)"),
        )),
    }
    let username = settings.get("username").cloned().unwrap_or_default();
    if username.is_empty() {
        problems.push(Problem::new(
            setting_path("username"),
            "SASL needs a user name",
        ));
    }
    let password = endpoint.secret.clone().unwrap_or_default();
    if password.is_empty() {
        problems.push(Problem::new(
            "/endpoint/secret",
            "SASL needs the password as the endpoint's secret",
        ));
    }
    Security::SaslPlain { username, password }
}

/// Problems with `topic` as a Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Some(format!("a Kafka topic has 1 to {MAX_TOPIC_LEN} characters"));
    }
    if topic == "." || topic == ".." {
        return Some("a Kafka topic cannot be \".\" or \"..\"".to_owned());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "{c:?} is not allowed in a Kafka topic (letters, digits, '.', '_' and '-')"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, settings: &[(&str, &str)], secret: Option<&str>) -> EndpointSpec {
        EndpointSpec {
            name: "k".to_owned(),
            kind: "kafka".to_owned(),
            address: Some(address.to_owned()),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            secret: secret.map(str::to_owned),
        }
    }

    fn paths(result: Result<KafkaSettings, Vec<Problem>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn instances_sharing_input_join_one_group_with_their_own_client_ids() {
        let settings = KafkaSettings::parse(&endpoint("b1:9092", &[], None)).unwrap();
        let tenant = weir_api::TenantId::new("t").unwrap();
        let egress = weir_api::egress::Egress::new(["127.0.0.1"]);
        let alone = ConnectContext::new(tenant.clone(), "d", egress.clone(), 1024);
        let config = settings.consumer_config(&alone);
        assert_eq!(config.get("group.id"), Some("weir-t-d"));
        let mut groups = Vec::new();
        for n in 1..=2 {
            let mut instance =
                ConnectContext::new(tenant.clone(), &format!("d#{n}"), egress.clone(), 1024);
            instance.share_group = Some("weir-t.d".to_owned());
            let config = settings.consumer_config(&instance);
            assert_eq!(
                config.get("client.id"),
                Some(format!("weir-t-d#{n}").as_str())
            );
            groups.push(config.get("group.id").map(str::to_owned));
        }
        assert_eq!(
            groups,
            [Some("weir-t.d".to_owned()), Some("weir-t.d".to_owned())]
        );
        // An explicit group_id wins.
        let named = KafkaSettings::parse(&endpoint("b1:9092", &[("group_id", "g")], None)).unwrap();
        let mut instance = ConnectContext::new(tenant, "d#1", egress, 1024);
        instance.share_group = Some("weir-t.d".to_owned());
        assert_eq!(named.consumer_config(&instance).get("group.id"), Some("g"));
    }

    #[test]
    fn defaults_are_plaintext_earliest_idempotent() {
        let settings = KafkaSettings::parse(&endpoint("b1:9092, [::1]:9093", &[], None)).unwrap();
        assert_eq!(settings.bootstrap.len(), 2);
        assert_eq!(settings.bootstrap_servers(), "b1:9092,[::1]:9093");
        assert_eq!(settings.offset_reset, OffsetReset::Earliest);
        assert_eq!(settings.security, Security::Plaintext);
        assert!(settings.idempotence);
        assert_eq!(settings.acks, Acks::All);
        assert!(!settings.create_topics);
        assert_eq!(settings.session_timeout_ms, None);
    }

    #[test]
    fn a_session_timeout_sets_the_heartbeat_to_a_third_of_it() {
        let settings = KafkaSettings::parse(&endpoint(
            "b1:9092",
            &[("session_timeout_ms", "6000")],
            None,
        ))
        .unwrap();
        let context = ConnectContext::new(
            weir_api::TenantId::new("t").unwrap(),
            "d",
            weir_api::egress::Egress::default(),
            1 << 20,
        );
        let config = settings.consumer_config(&context);
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("2000"));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let result = KafkaSettings::parse(&endpoint(
            "b1,http://x:1,b2:0",
            &[
                ("auto_offset_reset", "middle"),
                ("partitions", "0"),
                ("security_protocol", "ssl"),
                ("acks", "1"),
                ("grop_id", "typo"),
                ("session_timeout_ms", "10"),
            ],
            None,
        ));
        let paths = paths(result);
        for expected in [
            "/endpoint/address",
            "/endpoint/settings/auto_offset_reset",
            "/endpoint/settings/partitions",
            "/endpoint/settings/security_protocol",
            "/endpoint/settings/acks",
            "/endpoint/settings/grop_id",
            "/endpoint/settings/session_timeout_ms",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} in {paths:?}"
            );
        }
        assert_eq!(
            paths.iter().filter(|p| *p == "/endpoint/address").count(),
            3
        );
    }

    #[test]
    fn sasl_plain_needs_a_user_and_a_secret_and_scram_is_refused() {
        let missing = paths(KafkaSettings::parse(&endpoint(
            "b:1",
            &[("sasl_mechanism", "PLAIN")],
            None,
        )));
        assert!(missing.contains(&"/endpoint/settings/username".to_owned()));
        assert!(missing.contains(&"/endpoint/secret".to_owned()));
        let ok = KafkaSettings::parse(&endpoint(
            "b:1",
            &[("sasl_mechanism", "plain"), ("username", "u")],
            Some("pw"),
        ))
        .unwrap();
        assert_eq!(
            ok.security,
            Security::SaslPlain {
                username: "u".to_owned(),
                password: "pw".to_owned()
            }
        );
        assert!(
            !format!("{ok:?}").contains("pw"),
            "the password is not in Debug"
        );
        let scram = paths(KafkaSettings::parse(&endpoint(
            "b:1",
            &[("sasl_mechanism", "SCRAM-SHA-256"), ("username", "u")],
            Some("pw"),
        )));
        assert_eq!(scram, ["/endpoint/settings/sasl_mechanism"]);
    }

    #[test]
    fn topic_names_follow_kafka() {
        assert!(topic_problem("orders.v1_a-b").is_none());
        assert!(topic_problem("").is_some());
        assert!(topic_problem("..").is_some());
        assert!(topic_problem("a/b").is_some());
        assert!(topic_problem(&"x".repeat(250)).is_some());
    }
}
