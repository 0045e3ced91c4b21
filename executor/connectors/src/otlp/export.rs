//! Sending OTLP export requests to a collector, over gRPC or HTTP/protobuf, through the
//! egress rule.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use super::payload::{self, Telemetry};
use super::{OtlpSettings, Protocol};
use crate::ConnectorError;
use crate::kafka::Backoff;
use crate::message::Outbound;
use crate::sink::{Rejection, SendReport, Sink};
use crate::spec::ConnectContext;
use crate::status::ConnectionState;

/// Largest export request sent at once (encoded); a batch above it is split. Collectors take
/// 4 MiB gRPC messages by default.
const MAX_EXPORT_BYTES: usize = 1024 * 1024;

/// Most bytes of a collector's answer read (partial-success messages and errors are short).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The OpenTelemetry scope of everything weir exports.
const SCOPE: &str = "weir";

/// Why an export did not go through.
enum ExportError {
    /// Worth sending again (the collector unreachable, busy, or slow).
    Retry(String),
    /// The collector refused it for good.
    Refused(String),
}

/// A running OTLP sink.
pub(crate) struct OtlpSink {
    settings: OtlpSettings,
    context: ConnectContext,
    resource: Resource,
    grpc: Option<Channel>,
    http: Option<SendRequest<Full<Bytes>>>,
    /// Why the last connection attempt failed (the egress refusal, for one), for the status.
    connect_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("settings", &self.settings)
            .field("client_id", &self.context.client_id)
            .finish_non_exhaustive()
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl OtlpSink {
    pub(crate) fn new(settings: OtlpSettings, context: ConnectContext) -> Self {
        let resource = Resource {
            attributes: vec![
                string_attribute("service.name", &settings.service_name),
                string_attribute("weir.tenant", &context.tenant.to_string()),
                string_attribute("weir.deployment", &context.deployment),
            ],
            ..Default::default()
        };
        Self {
            settings,
            context,
            resource,
            grpc: None,
            http: None,
            connect_error: Arc::new(Mutex::new(None)),
        }
    }

    fn authority(&self) -> String {
        if self.settings.host.contains(':') {
            format!("[{}]:{}", self.settings.host, self.settings.port)
        } else {
            format!("{}:{}", self.settings.host, self.settings.port)
        }
    }

    fn scope() -> Option<InstrumentationScope> {
        Some(InstrumentationScope {
            name: SCOPE.to_owned(),
            ..Default::default()
        })
    }

    fn metrics_request(&self, telemetry: &[&Telemetry]) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Self::scope(),
                    metrics: telemetry
                        .iter()
                        .flat_map(|t| t.metrics.iter().cloned())
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs_request(&self, telemetry: &[&Telemetry]) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Self::scope(),
                    log_records: telemetry
                        .iter()
                        .flat_map(|t| t.logs.iter().cloned())
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Why the last connection failed, if it did.
    fn connect_error(&self) -> Option<String> {
        self.connect_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The gRPC channel; it connects (again) through the egress rule whenever it has no
    /// connection.
    fn channel(&mut self) -> Result<Channel, ExportError> {
        if let Some(channel) = &self.grpc {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.authority()))
            .map_err(|e| ExportError::Refused(format!("the collector address: {e}")))?
            .timeout(self.context.read_timeout);
        let egress = self.context.egress.clone();
        let host = self.settings.host.clone();
        let port = self.settings.port;
        let timeout = self.context.connect_timeout;
        let connect_error = self.connect_error.clone();
        let connector = tower::service_fn(move |_uri: hyper::Uri| {
            let egress = egress.clone();
            let host = host.clone();
            let connect_error = connect_error.clone();
            async move {
                let connected = egress.connect(&host, port, timeout).await;
                let mut last = connect_error.lock().unwrap_or_else(PoisonError::into_inner);
                match connected {
                    Ok(stream) => {
                        *last = None;
                        Ok(TokioIo::new(stream))
                    }
                    Err(error) => {
                        *last = Some(error.to_string());
                        Err(error)
                    }
                }
            }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        self.grpc = Some(channel.clone());
        Ok(channel)
    }

    /// An HTTP/1.1 connection to the collector: the one kept from the last export while it
    /// lasts (the caller puts it back after a good answer), else a new one.
    async fn http_sender(&mut self) -> Result<SendRequest<Full<Bytes>>, ExportError> {
        if let Some(sender) = self.http.take()
            && !sender.is_closed()
        {
            return Ok(sender);
        }
        let stream = self
            .context
            .egress
            .connect(
                &self.settings.host,
                self.settings.port,
                self.context.connect_timeout,
            )
            .await
            .map_err(|e| {
                let why = e.to_string();
                *self
                    .connect_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
                ExportError::Retry(why)
            })?;
        *self
            .connect_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let handshake = tokio::time::timeout(
            self.context.connect_timeout,
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await;
        let (sender, connection) = match handshake {
            Ok(Ok(parts)) => parts,
            Ok(Err(error)) => return Err(ExportError::Retry(format!("the collector: {error}"))),
            Err(_) => {
                return Err(ExportError::Retry(
                    "the collector did not answer in time".to_owned(),
                ));
            }
        };
        // The connection task ends when the sender is dropped or the collector closes it.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "otlp http connection ended");
            }
        });
        Ok(sender)
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<(), ExportError> {
        let mut sender = self.http_sender().await?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ExportError::Refused(format!("building the request: {e}")))?;
        let read_timeout = self.context.read_timeout;
        let answer = tokio::time::timeout(read_timeout, async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        let (status, body) = match answer {
            Err(_) => {
                return Err(ExportError::Retry(format!(
                    "the collector did not answer in {read_timeout:?}"
                )));
            }
            Ok(Err(error)) => return Err(ExportError::Retry(format!("the collector: {error}"))),
            Ok(Ok(answer)) => answer,
        };
        // The connection answered in full: keep it for the next export.
        self.http = Some(sender);
        if status.is_success() {
            return Ok(());
        }
        let text = format!(
            "the collector answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        );
        // OTLP/HTTP: 429, 502, 503 and 504 are worth retrying; other errors are final.
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(ExportError::Retry(text)),
            _ => Err(ExportError::Refused(text)),
        }
    }

    fn grpc_error(&self, status: &tonic::Status) -> ExportError {
        use tonic::Code;
        let text = match self.connect_error() {
            Some(why) if status.code() == Code::Unavailable => why,
            _ => format!("the collector: {}: {}", status.code(), status.message()),
        };
        match status.code() {
            // The request itself is wrong, or the collector takes no such data.
            Code::InvalidArgument | Code::Unimplemented | Code::FailedPrecondition => {
                ExportError::Refused(text)
            }
            _ => ExportError::Retry(text),
        }
    }

    async fn export_metrics(
        &mut self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<(), ExportError> {
        match self.settings.protocol {
            Protocol::Http => self.post("/v1/metrics", request.encode_to_vec()).await,
            Protocol::Grpc => {
                let mut client = MetricsServiceClient::new(self.channel()?);
                let answer = self.grpc_answer(client.export(request.clone())).await?;
                if let Some(partial) = answer.partial_success {
                    log_partial(partial.rejected_data_points, &partial.error_message);
                }
                Ok(())
            }
        }
    }

    /// The collector's answer to a gRPC export within the read timeout; a timeout or a
    /// status is the export's error (retried or not, as [`Self::grpc_error`] says).
    async fn grpc_answer<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ExportError> {
        match tokio::time::timeout(self.context.read_timeout, call).await {
            Err(_) => Err(ExportError::Retry(
                "the collector did not answer in time".to_owned(),
            )),
            Ok(Err(status)) => Err(self.grpc_error(&status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    async fn export_logs(&mut self, request: &ExportLogsServiceRequest) -> Result<(), ExportError> {
        match self.settings.protocol {
            Protocol::Http => self.post("/v1/logs", request.encode_to_vec()).await,
            Protocol::Grpc => {
                let mut client = LogsServiceClient::new(self.channel()?);
                let answer = self.grpc_answer(client.export(request.clone())).await?;
                if let Some(partial) = answer.partial_success {
                    log_partial(partial.rejected_log_records, &partial.error_message);
                }
                Ok(())
            }
        }
    }

    /// Exports one chunk (metrics, then logs), sending each again with backoff while the
    /// collector cannot take it. `Err` says why the collector refused it for good.
    async fn export(&mut self, telemetry: &[&Telemetry]) -> Result<(), String> {
        let metrics = self.metrics_request(telemetry);
        let logs = self.logs_request(telemetry);
        let has_metrics = telemetry.iter().any(|t| !t.metrics.is_empty());
        let has_logs = telemetry.iter().any(|t| !t.logs.is_empty());
        let mut backoff = Backoff::default();
        let mut metrics_done = !has_metrics;
        let mut logs_done = !has_logs;
        loop {
            let attempt = if metrics_done {
                self.export_logs(&logs).await.map(|()| logs_done = true)
            } else {
                self.export_metrics(&metrics)
                    .await
                    .map(|()| metrics_done = true)
            };
            match attempt {
                Ok(()) => {
                    self.context.status.set(ConnectionState::Connected);
                    if metrics_done && logs_done {
                        return Ok(());
                    }
                }
                Err(ExportError::Refused(why)) => {
                    // The collector answered: it is reachable.
                    self.context.status.set(ConnectionState::Connected);
                    return Err(why);
                }
                Err(ExportError::Retry(why)) => {
                    tracing::debug!(why, "otlp export failed; sending again");
                    self.context.status.retrying(why);
                    backoff.wait().await;
                }
            }
        }
    }
}

#[async_trait]
impl Sink for OtlpSink {
    async fn send(&mut self, batch: Vec<Outbound>) -> Result<SendReport, ConnectorError> {
        let now = now_nanos();
        let mut report = SendReport::default();
        let mut parsed: Vec<(usize, Telemetry)> = Vec::with_capacity(batch.len());
        for (index, output) in batch.into_iter().enumerate() {
            match payload::parse(&output.payload, now) {
                Ok(telemetry) => parsed.push((index, telemetry)),
                Err(invalid) => report.rejected.push(Rejection {
                    index,
                    reason: "invalid_otlp_payload".to_owned(),
                    detail: invalid.to_string(),
                }),
            }
        }
        // Split into exports of at most MAX_EXPORT_BYTES (an oversized output goes alone).
        let mut chunks: Vec<Vec<&(usize, Telemetry)>> = Vec::new();
        let mut size = 0;
        for entry in &parsed {
            let entry_size: usize = entry
                .1
                .metrics
                .iter()
                .map(prost::Message::encoded_len)
                .sum::<usize>()
                + entry
                    .1
                    .logs
                    .iter()
                    .map(prost::Message::encoded_len)
                    .sum::<usize>();
            match chunks.last_mut() {
                Some(chunk) if size + entry_size <= MAX_EXPORT_BYTES => {
                    chunk.push(entry);
                    size += entry_size;
                }
                _ => {
                    chunks.push(vec![entry]);
                    size = entry_size;
                }
            }
        }
        for chunk in chunks {
            let telemetry: Vec<&Telemetry> = chunk.iter().map(|(_, t)| t).collect();
            if let Err(why) = self.export(&telemetry).await {
                for (index, _) in chunk {
                    report.rejected.push(Rejection {
                        index: *index,
                        reason: "otlp_refused".to_owned(),
                        detail: why.clone(),
                    });
                }
            }
        }
        report.rejected.sort_by_key(|r| r.index);
        Ok(report)
    }
}

/// Logs the entries a collector accepted the export without (OTLP partial success).
fn log_partial(rejected: i64, message: &str) {
    if rejected > 0 {
        tracing::info!(
            rejected,
            message,
            "the collector rejected part of an export"
        );
    }
}

/// An OTLP metrics exporter for weir's own telemetry (a tenant's series, or the platform's):
/// the `otlp` endpoint's address, protocol and egress rule, one export request at a time,
/// sent once (no retry: the series are cumulative, so the next export carries what a failed
/// one had).
pub struct MetricsExporter {
    sink: OtlpSink,
}

impl std::fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExporter")
            .field("sink", &self.sink)
            .finish()
    }
}

impl MetricsExporter {
    /// An exporter to the `otlp` endpoint `endpoint` (its address and settings checked as the
    /// connector checks them), connecting as `context` allows.
    pub fn new(
        endpoint: &crate::spec::EndpointSpec,
        context: ConnectContext,
    ) -> Result<Self, Vec<crate::spec::Problem>> {
        let settings = OtlpSettings::parse(endpoint)?;
        Ok(Self {
            sink: OtlpSink::new(settings, context),
        })
    }

    /// The endpoint's `service_name` setting (default `weir`), for the resource.
    pub fn service_name(&self) -> &str {
        &self.sink.settings.service_name
    }

    /// Sends `request`; `Err` says why it did not arrive (the collector unreachable, slow or
    /// refusing).
    pub async fn export(&mut self, request: &ExportMetricsServiceRequest) -> Result<(), String> {
        match self.sink.export_metrics(request).await {
            Ok(()) => {
                self.sink.context.status.set(ConnectionState::Connected);
                Ok(())
            }
            Err(ExportError::Retry(why)) => {
                self.sink.context.status.retrying(why.clone());
                Err(why)
            }
            Err(ExportError::Refused(why)) => Err(why),
        }
    }
}
