//! The `otlp` endpoint: a sink that exports the OpenTelemetry payload of azure-compat 4.2 to
//! an OTLP collector, over gRPC or HTTP/protobuf (issue 10 point 5).
//!
//! - Address: `http://host:port` (no path: the OTLP paths `/v1/metrics` and `/v1/logs` are
//!   added for HTTP). Settings: `protocol` = `grpc` (default) or `http`; `service_name`
//!   (resource `service.name`, default `weir`). TLS (`https://`) is not built in.
//! - Each output's payload is checked and mapped by [`payload`]; one that does not conform is a
//!   [`Rejection`](crate::Rejection) with reason `invalid_otlp_payload` and the JSON path of
//!   each problem, so it goes to the dead letters instead of being dropped.
//! - The export requests are built here from the payload with the OTLP protobuf types rather
//!   than through the OpenTelemetry SDK's meter and logger: each payload entry becomes exactly
//!   one data point with its own timestamp and attributes (the SDK would aggregate entries
//!   and stamp them with its own export time), tenants need no SDK provider (and thread) each,
//!   and `send` simply awaits the collector's answer (no blocking `force_flush`).
//! - The resource carries `weir.tenant` and `weir.deployment`, so the collector can tell
//!   tenants apart.
//! - `send` returns once the collector accepted the export; while it cannot be reached (or
//!   answers with a retryable error: gRPC `UNAVAILABLE`…, HTTP 429/502/503/504) the export is
//!   sent again with backoff and the status says `Retrying`. Other refusals reject the outputs
//!   of that export with reason `otlp_refused`.
//! - Every connection, first or again, goes to an address the tenant's egress rule allowed
//!   ([`weir_api::egress::Egress::connect`]), within the connect timeout; each export has the
//!   read timeout.

mod export;
mod payload;

pub use export::MetricsExporter;
/// The OTLP protobuf types (opentelemetry-proto 0.33), for building requests
/// [`MetricsExporter`] sends.
pub use opentelemetry_proto;

use async_trait::async_trait;

use crate::ConnectorError;
use crate::registry::Connector;
use crate::sink::Sink;
use crate::source::Source;
use crate::spec::{ConnectContext, EndpointSpec, Problem, SinkSpec, SourceSpec};

/// The `otlp` connector (sink only).
#[derive(Debug, Clone, Copy, Default)]
pub struct OtlpConnector;

/// How exports travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.*.v1` services).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/metrics`, `POST /v1/logs`).
    Http,
}

/// A checked `otlp` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtlpSettings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    pub(crate) service_name: String,
}

const KNOWN_SETTINGS: &[&str] = &["protocol", "service_name"];

impl OtlpSettings {
    fn parse(endpoint: &EndpointSpec) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let address = endpoint
            .address
            .as_deref()
            .map(str::trim)
            .unwrap_or_default();
        let parsed = parse_address(address);
        if let Err(why) = &parsed {
            problems.push(Problem::new("/endpoint/address", why.clone()));
        }
        for key in endpoint.settings.keys() {
            if !KNOWN_SETTINGS.contains(&key.as_str()) {
                problems.push(Problem::new(
                    format!("/endpoint/settings/{key}"),
                    format!(
                        "unknown setting; an otlp endpoint takes {}",
                        KNOWN_SETTINGS.join(", ")
                    ),
                ));
            }
        }
        let protocol = match endpoint
            .settings
            .get("protocol")
            .map(|p| p.trim().to_ascii_lowercase())
        {
            None => Protocol::Grpc,
            Some(p) if p == "grpc" => Protocol::Grpc,
            Some(p) if p == "http" || p == "http/protobuf" => Protocol::Http,
            Some(other) => {
                problems.push(Problem::new(
                    "/endpoint/settings/protocol",
                    format!("{other:?} is not one of grpc, http"),
                ));
                Protocol::Grpc
            }
        };
        let service_name = endpoint
            .settings
            .get("service_name")
            .cloned()
            .unwrap_or_else(|| "weir".to_owned());
        if service_name.is_empty() || service_name.len() > 255 {
            problems.push(Problem::new(
                "/endpoint/settings/service_name",
                "a service name has 1 to 255 characters",
            ));
        }
        match parsed {
            Ok((host, port)) if problems.is_empty() => Ok(Self {
                host,
                port,
                protocol,
                service_name,
            }),
            _ => Err(problems),
        }
    }
}

/// `http://host:port` (a trailing `/` allowed) as host and port.
fn parse_address(address: &str) -> Result<(String, u16), String> {
    let usage = "an otlp endpoint's address is http://host:port";
    if address.starts_with("https://") {
        return Err(format!(
            "TLS to collectors is not built into this weir; {usage}"
        ));
    }
    let Some(rest) = address.strip_prefix("http://") else {
        return Err(usage.to_owned());
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!("{usage}, without a path, query or user"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6.split_once(']').ok_or_else(|| usage.to_owned())?;
        (
            host,
            port.strip_prefix(':').ok_or_else(|| usage.to_owned())?,
        )
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{usage} (the port is required)"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port from 1 to 65535"))?;
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok((host.to_owned(), port))
}

#[async_trait]
impl Connector for OtlpConnector {
    fn kind(&self) -> &'static str {
        "otlp"
    }

    fn check_source(&self, _spec: &SourceSpec) -> Vec<Problem> {
        vec![Problem::new(
            "/source/endpoint",
            "an otlp endpoint is a sink only: OpenTelemetry collectors are written to, not read from",
        )]
    }

    fn check_sink(&self, spec: &SinkSpec) -> Vec<Problem> {
        OtlpSettings::parse(&spec.endpoint)
            .err()
            .unwrap_or_default()
    }

    async fn source(
        &self,
        spec: SourceSpec,
        _context: ConnectContext,
    ) -> Result<Box<dyn Source>, ConnectorError> {
        Err(ConnectorError::Invalid(self.check_source(&spec)))
    }

    async fn sink(
        &self,
        spec: SinkSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let settings = OtlpSettings::parse(&spec.endpoint).map_err(ConnectorError::Invalid)?;
        Ok(Box::new(export::OtlpSink::new(settings, context)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, settings: &[(&str, &str)]) -> EndpointSpec {
        EndpointSpec {
            name: "o".to_owned(),
            kind: "otlp".to_owned(),
            address: Some(address.to_owned()),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            secret: None,
        }
    }

    #[test]
    fn addresses_are_http_host_port() {
        let settings = OtlpSettings::parse(&endpoint("http://collector:4317/", &[])).unwrap();
        assert_eq!((settings.host.as_str(), settings.port), ("collector", 4317));
        assert_eq!(settings.protocol, Protocol::Grpc);
        let settings =
            OtlpSettings::parse(&endpoint("http://[::1]:4318", &[("protocol", "http")])).unwrap();
        assert_eq!(
            (settings.host.as_str(), settings.protocol),
            ("::1", Protocol::Http)
        );
        for bad in [
            "collector:4317",
            "https://c:4317",
            "http://c",
            "http://c:0",
            "http://c:1/v1/metrics",
            "http://u@c:1",
        ] {
            let problems = OtlpSettings::parse(&endpoint(bad, &[])).unwrap_err();
            assert_eq!(problems[0].path, "/endpoint/address", "{bad}");
        }
        let problems =
            OtlpSettings::parse(&endpoint("http://c:1", &[("protocol", "udp"), ("x", "y")]))
                .unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/endpoint/settings/x", "/endpoint/settings/protocol"]
        );
    }
}
