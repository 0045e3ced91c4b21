//! The typed configuration of an `mqtt` endpoint and binding, parsed from the spec by a pure
//! check that reports every problem with its path.
//!
//! Endpoint (`/endpoint/...`):
//! - `address`: `host:port` (`[v6]:port`); the port defaults to 1883 (8883 with TLS).
//! - `settings` (all optional; an unknown key is a problem, so a typo is not silently ignored):
//!   - `qos`: `0` or `1` (default `1`): the subscription's QoS, or the QoS a sink publishes at.
//!   - `clean_start`: `true`/`false` (default `false`): a source's session starts afresh on every
//!     connect. Off, the broker keeps the session (subscriptions, unacknowledged and queued QoS 1
//!     messages) across reconnects for `session_expiry_s`. A sink always starts clean: it keeps
//!     its unacknowledged outputs itself and publishes them again on every new connection.
//!   - `session_expiry_s`: seconds the broker keeps a source's session after a disconnect
//!     (MQTT v5 §3.1.2.11.2; default 3600, at least 1: 0 would end the session at each
//!     disconnect and lose QoS 1 messages across reconnects; rumqttc#853).
//!   - `keep_alive_s`: seconds between PINGREQs, 5 to 65535 (default: the context's read
//!     timeout, 30 s; rumqttc needs ≥ 5). A broker that stops answering is noticed when a
//!     PINGRESP is missing at the next PINGREQ, so within twice this.
//!   - `receive_maximum`: QoS 1 messages the broker may have in flight to a source, 1 to 65535
//!     (default 100, v5 §3.1.2.11.3): a source acknowledges only what the deployment settled, so
//!     this is how far the broker runs ahead of a slow deployment.
//!   - `max_packet_bytes`: the largest packet a source accepts (v5 §3.1.2.11.4), at most the
//!     tenant's `max_message_bytes` plus header room (the default).
//!   - `tls`: `on`/`off` (default `off`). TLS needs the cargo feature `mqtt-tls` (off by default:
//!     its TLS stack costs minutes of build) and the setting `ca_certificate` (PEM).
//!   - `username`: the MQTT user name; the endpoint's secret is then the password.
//!   - `client_id`: overrides the client id (default: the deployment's stable
//!     `ConnectContext::client_id`; a sink adds `-sink`, before an `@<tenant>` suffix). Two connections with one id take the
//!     session from each other, so an override is for one deployment only.
//! - `secret`: the password (with `username`), or a PEM bundle with a client certificate chain
//!   and its private key (with `tls`): client-certificate authentication.
//!
//! Source (`/source/topics/<i>`): MQTT v5 topic filters (§4.7: `+` a whole level, `#` the whole
//! last level), `$share/<group>/<filter>` shared subscriptions (§4.8.2). Sink (`/sink/topic`):
//! a topic name (no wildcards), `${outputTopic}` allowed (azure-compat section 11 row 11), empty
//! for each output's own topic.

use std::time::Duration;

use crate::spec::{EndpointSpec, Problem};

/// The largest MQTT packet (v5 §1.5.5: a remaining length of at most 268,435,455 bytes).
pub(crate) const MAX_PACKET: u32 = 268_435_455;
/// Room for the fixed and variable headers beyond a message's own bytes.
const HEADER_ROOM: u64 = 4096;

/// The settings an `mqtt` endpoint takes.
const SETTINGS: &[&str] = &[
    "qos",
    "clean_start",
    "session_expiry_s",
    "keep_alive_s",
    "receive_maximum",
    "max_packet_bytes",
    "tls",
    "ca_certificate",
    "username",
    "client_id",
];

/// How a connection authenticates.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// None (anonymous).
    None,
    /// MQTT user name and password (v5 §3.1.3.5, §3.1.3.6).
    Password { username: String, password: String },
    /// A user name only.
    Username(String),
    /// A TLS client certificate chain and its private key, PEM.
    #[cfg_attr(
        not(feature = "mqtt-tls"),
        allow(dead_code, reason = "built with mqtt-tls")
    )]
    Certificate {
        username: Option<String>,
        chain: Vec<u8>,
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Password { .. } => "Password(<sealed>)",
            Self::Username(_) => "Username",
            Self::Certificate { .. } => "Certificate(<sealed>)",
        })
    }
}

/// An `mqtt` endpoint, checked.
#[derive(Debug, Clone)]
pub(crate) struct MqttEndpoint {
    /// The host as the tenant wrote it (a name or an address), resolved through the egress rule
    /// on every connect.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// 0 or 1.
    pub(crate) qos: u8,
    pub(crate) clean_start: bool,
    pub(crate) session_expiry_s: u32,
    /// The setting, if any (else the context's read timeout).
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) receive_maximum: u16,
    pub(crate) max_packet_bytes: Option<u32>,
    #[cfg_attr(
        not(feature = "mqtt-tls"),
        allow(dead_code, reason = "built with mqtt-tls")
    )]
    pub(crate) tls: Option<Vec<u8>>,
    pub(crate) credentials: Credentials,
    pub(crate) client_id: Option<String>,
}

impl MqttEndpoint {
    /// The largest packet a connection accepts from the broker: the setting, or the tenant's
    /// largest message with room for headers, within MQTT's own limit.
    pub(crate) fn max_packet(&self, max_message_bytes: u64) -> u32 {
        let default =
            u32::try_from(max_message_bytes.saturating_add(HEADER_ROOM)).unwrap_or(MAX_PACKET);
        self.max_packet_bytes
            .unwrap_or(default)
            .clamp(64, MAX_PACKET)
    }
}

fn setting_path(key: &str) -> String {
    format!("/endpoint/settings/{key}")
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn parse_number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    problems: &mut Vec<Problem>,
    key: &str,
    value: &str,
    min: T,
    max: T,
) -> Option<T> {
    match value.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Some(n),
        _ => {
            problems.push(Problem::new(
                setting_path(key),
                format!("must be a whole number from {min} to {max}"),
            ));
            None
        }
    }
}

/// `host:port` with the port optional (`default_port`); an IPv6 address in brackets.
fn parse_address(address: &str, default_port: u16) -> Result<(String, u16), String> {
    let address = address.trim();
    if address.contains("://") {
        return Err("write host:port without a scheme (mqtt://, tcp://…)".to_owned());
    }
    if address.is_empty() {
        return Err("the broker's host:port is missing".to_owned());
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address needs its closing ]".to_owned())?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err("expected :port after the IPv6 address".to_owned()),
        };
        (host.to_owned(), port)
    } else {
        match address.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("write an IPv6 address in brackets: [::1]:1883".to_owned());
            }
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (address.to_owned(), None),
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("{port:?} is not a port (1 to 65535)")),
        },
    };
    Ok((host, port))
}

/// The PEM blocks of `bundle` whose label contains `label`, in order, each with its armour.
fn pem_blocks(bundle: &str, label: &str) -> Vec<u8> {
    let mut out = String::new();
    let mut rest = bundle;
    while let Some((_, after)) = rest.split_once("-----BEGIN ") {
        let Some((name, _)) = after.split_once("-----") else {
            break;
        };
        let end = format!("-----END {name}-----");
        let Some((body, tail)) = after.split_once(end.as_str()) else {
            break;
        };
        if name.contains(label) {
            out.push_str("-----BEGIN ");
            out.push_str(body);
            out.push_str(&end);
            out.push('\n');
        }
        rest = tail;
    }
    out.into_bytes()
}

/// Parses and checks an `mqtt` endpoint: every problem, with its path.
pub(crate) fn parse_endpoint(endpoint: &EndpointSpec) -> Result<MqttEndpoint, Vec<Problem>> {
    let mut problems = Vec::new();
    let settings = &endpoint.settings;
    for key in settings.keys() {
        if !SETTINGS.contains(&key.as_str()) {
            problems.push(Problem::new(
                setting_path(key),
                format!(
                    "unknown setting; an mqtt endpoint takes {}",
                    SETTINGS.join(", ")
                ),
            ));
        }
    }
    let get = |key: &str| settings.get(key).map(String::as_str);

    let tls = match get("tls").map(|v| (v, parse_bool(v))) {
        None => false,
        Some((_, Some(on))) => on,
        Some((_, None)) => {
            problems.push(Problem::new(setting_path("tls"), "must be on or off"));
            false
        }
    };
    let ca = get("ca_certificate").map(|pem| pem_blocks(pem, "CERTIFICATE"));
    let tls_config = if tls {
        if !cfg!(feature = "mqtt-tls") {
            problems.push(Problem::new(
                setting_path("tls"),
                "tls is not built in this build; enable the cargo feature mqtt-tls",
            ));
        }
        match &ca {
            Some(ca) if !ca.is_empty() => Some(ca.clone()),
            Some(_) => {
                problems.push(Problem::new(
                    setting_path("ca_certificate"),
                    "holds no PEM CERTIFICATE block",
                ));
                None
            }
            None => {
                problems.push(Problem::new(
                    setting_path("ca_certificate"),
                    "tls needs the broker's CA certificate (PEM)",
                ));
                None
            }
        }
    } else {
        if ca.is_some() {
            problems.push(Problem::new(
                setting_path("ca_certificate"),
                "only used with tls on",
            ));
        }
        None
    };

    let (host, port) = match endpoint.address.as_deref() {
        None => {
            problems.push(Problem::new(
                "/endpoint/address",
                "the broker's host:port is missing",
            ));
            (String::new(), 0)
        }
        Some(address) => match parse_address(address, if tls { 8883 } else { 1883 }) {
            Ok(parsed) => parsed,
            Err(message) => {
                problems.push(Problem::new("/endpoint/address", message));
                (String::new(), 0)
            }
        },
    };

    let qos = match get("qos") {
        None => 1,
        Some(v) => match v.trim() {
            "0" => 0,
            "1" => 1,
            "2" => {
                problems.push(Problem::new(
                    setting_path("qos"),
                    "QoS 2 is not supported; use 0 or 1",
                ));
                1
            }
            _ => {
                problems.push(Problem::new(setting_path("qos"), "must be 0 or 1"));
                1
            }
        },
    };
    let clean_start = match get("clean_start").map(parse_bool) {
        None => false,
        Some(Some(b)) => b,
        Some(None) => {
            problems.push(Problem::new(
                setting_path("clean_start"),
                "must be true or false",
            ));
            false
        }
    };
    let session_expiry_s = get("session_expiry_s")
        .and_then(|v| parse_number(&mut problems, "session_expiry_s", v, 1u32, u32::MAX))
        .unwrap_or(3600);
    let keep_alive_s = get("keep_alive_s")
        .and_then(|v| parse_number(&mut problems, "keep_alive_s", v, 5u16, u16::MAX));
    let receive_maximum = get("receive_maximum")
        .and_then(|v| parse_number(&mut problems, "receive_maximum", v, 1u16, u16::MAX))
        .unwrap_or(100);
    let max_packet_bytes = get("max_packet_bytes")
        .and_then(|v| parse_number(&mut problems, "max_packet_bytes", v, 64u32, MAX_PACKET));

    let username = get("username").map(str::to_owned);
    if let Some(name) = &username
        && (name.is_empty() || name.len() > 65_535 || name.contains('\0'))
    {
        problems.push(Problem::new(
            setting_path("username"),
            "must be 1 to 65535 bytes without NUL",
        ));
    }
    let client_id = get("client_id").map(str::to_owned);
    if let Some(id) = &client_id
        && (id.is_empty()
            || id.len() > 256
            || id.starts_with(char::is_whitespace)
            || id.chars().any(char::is_control))
    {
        problems.push(Problem::new(
            setting_path("client_id"),
            "must be 1 to 256 bytes, not starting with a space, without control characters",
        ));
    }

    let credentials = match endpoint.secret.as_deref() {
        Some(secret) if secret.contains("-----BEGIN ") => {
            let chain = pem_blocks(secret, "CERTIFICATE");
            let key = pem_blocks(secret, "PRIVATE KEY");
            if !tls {
                problems.push(Problem::new(
                    "/endpoint/secret",
                    "a client certificate needs tls on",
                ));
            }
            if chain.is_empty() || key.is_empty() {
                problems.push(Problem::new(
                    "/endpoint/secret",
                    "a PEM secret must hold the client certificate chain and its private key",
                ));
            }
            Credentials::Certificate {
                username,
                chain,
                key,
            }
        }
        Some(password) => match username {
            Some(username) => Credentials::Password {
                username,
                password: password.to_owned(),
            },
            None => {
                problems.push(Problem::new(
                    setting_path("username"),
                    "the secret is a password: name the user it belongs to",
                ));
                Credentials::None
            }
        },
        None => username.map_or(Credentials::None, Credentials::Username),
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(MqttEndpoint {
        host,
        port,
        qos,
        clean_start,
        session_expiry_s,
        keep_alive: keep_alive_s.map(|s| Duration::from_secs(u64::from(s))),
        receive_maximum,
        max_packet_bytes,
        tls: tls_config,
        credentials,
        client_id,
    })
}

/// Why `filter` is not an MQTT v5 topic filter (§4.7.1, §4.7.3; shared subscriptions §4.8.2).
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    if let Some(shared) = filter.strip_prefix("$share/") {
        let Some((group, inner)) = shared.split_once('/') else {
            return Err("a shared subscription is $share/<group>/<filter>".to_owned());
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(
                "the share group of $share/<group>/<filter> must be non-empty, without + or #"
                    .to_owned(),
            );
        }
        return check_plain_filter(inner);
    }
    check_plain_filter(filter)
}

fn check_plain_filter(filter: &str) -> Result<(), String> {
    check_common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len().saturating_sub(1);
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err("# must be the whole last level of a filter".to_owned());
        }
        if level.contains('+') && *level != "+" {
            return Err("+ must be a whole level of a filter".to_owned());
        }
    }
    Ok(())
}

fn check_common(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if topic.len() > 65_535 {
        return Err("longer than 65535 bytes".to_owned());
    }
    if topic.contains('\0') {
        return Err("contains NUL".to_owned());
    }
    Ok(())
}

/// Why `topic` is not an MQTT topic name to publish to (§4.7: no wildcards).
pub(crate) fn check_topic_name(topic: &str) -> Result<(), String> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err("a topic to publish to has no wildcards (+, #)".to_owned());
    }
    Ok(())
}

/// Why a sink's topic template cannot work: a topic name, possibly with `${outputTopic}`.
pub(crate) fn check_topic_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Ok(());
    }
    check_topic_name(&template.replace("${outputTopic}", "t"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::BTreeMap;

    use super::*;

    fn endpoint(address: &str, settings: &[(&str, &str)], secret: Option<&str>) -> EndpointSpec {
        EndpointSpec {
            name: "e".to_owned(),
            kind: "mqtt".to_owned(),
            address: Some(address.to_owned()),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            secret: secret.map(str::to_owned),
        }
    }

    fn paths(result: Result<MqttEndpoint, Vec<Problem>>) -> Vec<String> {
        result.err().unwrap().into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn defaults_and_settings_parse() {
        let e = parse_endpoint(&endpoint("broker.example:1884", &[], None)).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.qos),
            ("broker.example", 1884, 1)
        );
        assert!(!e.clean_start);
        assert_eq!(e.session_expiry_s, 3600);
        assert_eq!(e.receive_maximum, 100);
        let e = parse_endpoint(&endpoint(
            "[::1]",
            &[
                ("qos", "0"),
                ("clean_start", "true"),
                ("session_expiry_s", "10"),
                ("keep_alive_s", "5"),
                ("username", "u"),
                ("client_id", "c"),
                ("max_packet_bytes", "1000"),
            ],
            Some("pw"),
        ))
        .unwrap();
        assert_eq!((e.host.as_str(), e.port, e.qos), ("::1", 1883, 0));
        assert_eq!(
            e.credentials,
            Credentials::Password {
                username: "u".to_owned(),
                password: "pw".to_owned()
            }
        );
        assert_eq!(e.max_packet(1 << 20), 1000);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let found = paths(parse_endpoint(&endpoint(
            "mqtt://x:1883",
            &[
                ("qos", "2"),
                ("keep_alive_s", "1"),
                ("session_expiry_s", "0"),
                ("colour", "red"),
                ("clean_start", "maybe"),
            ],
            Some("pw"),
        )));
        for path in [
            "/endpoint/address",
            "/endpoint/settings/qos",
            "/endpoint/settings/keep_alive_s",
            "/endpoint/settings/session_expiry_s",
            "/endpoint/settings/colour",
            "/endpoint/settings/clean_start",
            "/endpoint/settings/username",
        ] {
            assert!(found.iter().any(|p| p == path), "{path} in {found:?}");
        }
        for bad in ["::1:1883", "host:0", "host:x", "", "a b:1", "[::1"] {
            assert!(parse_address(bad, 1883).is_err(), "{bad}");
        }
    }

    #[test]
    #[cfg(not(feature = "mqtt-tls"))]
    fn tls_is_a_clear_error_without_the_feature() {
        let problems = parse_endpoint(&endpoint(
            "h:8883",
            &[
                ("tls", "on"),
                (
                    "ca_certificate",
                    "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
                ),
            ],
            None,
        ))
        .err()
        .unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.path == "/endpoint/settings/tls" && p.message.contains("mqtt-tls"))
        );
    }

    #[test]
    fn pem_bundles_split_into_chain_and_key() {
        let bundle = "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                      -----BEGIN PRIVATE KEY-----\nKKK\n-----END PRIVATE KEY-----\n";
        let chain = String::from_utf8(pem_blocks(bundle, "CERTIFICATE")).unwrap();
        let key = String::from_utf8(pem_blocks(bundle, "PRIVATE KEY")).unwrap();
        assert_eq!(
            chain,
            "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            key,
            "-----BEGIN PRIVATE KEY-----\nKKK\n-----END PRIVATE KEY-----\n"
        );
    }

    #[test]
    fn topic_filters_follow_mqtt_v5() {
        for good in [
            "a/b",
            "#",
            "+",
            "a/+/c",
            "a/#",
            "+/+/#",
            "/",
            "$share/g/a/#",
            "$share/g/+",
            "$SYS/#",
        ] {
            assert!(check_filter(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "+a",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "$share/g/a/#/b",
            "a\0b",
        ] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_name("a/b").is_ok());
        assert!(check_topic_name("a/+").is_err());
        assert!(check_topic_template("out/${outputTopic}").is_ok());
        assert!(check_topic_template("").is_ok());
        assert!(check_topic_template("out/#").is_err());
    }
}
