//! What `weir serve` keeps and sends of its tenants' work: usage counters flushed to the
//! control store (hours, days, totals: billable across restarts), module log lines written to
//! the control store (bounded per tenant by `max_log_lines`), and metrics exported over OTLP
//! to the platform's collector (`--otlp-endpoint`) and to each tenant's own (its `otlp`
//! endpoint named [`TELEMETRY_ENDPOINT`]).
//!
//! Bounds: one flusher task, one log writer task fed by a bounded channel (lines beyond it are
//! counted and dropped, never queued without bound), one exporter task for all tenants (no
//! OpenTelemetry SDK provider, hence no thread, per tenant: the requests are built from the
//! executor's snapshots with the OTLP protobuf types, as the `otlp` connector does). SQLite
//! work runs on tokio's blocking pool (the store's own `spawn_blocking`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_api::TenantId;
use weir_api::egress::Egress;
use weir_api::rest::{MetricSeries, Usage, UsagePeriod};
use weir_connectors::otlp::MetricsExporter;
use weir_connectors::otlp::opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_connectors::otlp::opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value,
};
use weir_connectors::otlp::opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use weir_connectors::otlp::opentelemetry_proto::tonic::resource::v1::Resource;
use weir_connectors::{ConnectContext, EndpointSpec};
use weir_executor::logs::{LogLevel, LogRecord, LogSink, TenantLogQueue};
use weir_executor::runtime::LocalExecutor;
use weir_store::{ControlStore, ModuleLogRecord, UsageCounters, UsageDelta};

/// The name of the tenant endpoint (of kind `otlp`) that receives the tenant's own metrics:
/// a tenant that creates an `otlp` endpoint called `telemetry` gets its series (module and
/// platform, only its own) exported there at every export interval, through its egress rule.
pub(crate) const TELEMETRY_ENDPOINT: &str = "telemetry";

/// Hours and days `/v1/usage` lists.
const USAGE_HOURS_SHOWN: u64 = 48;
const USAGE_DAYS_SHOWN: u64 = 31;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn counters(usage: &Usage) -> UsageCounters {
    UsageCounters {
        fuel: usage.fuel,
        messages_in: usage.messages_in,
        messages_out: usage.messages_out,
        bytes_in: usage.bytes_in,
        state_ops: usage.state_ops,
    }
}

/// Usage made durable: the executor counts in memory from its start; every flush adds what
/// was counted since the last flush to the control store (in one transaction), so totals,
/// hours and days add up across restarts. A graceful stop flushes last. Work counted after the
/// last flush of a process that is killed (SIGKILL, power loss) is lost: at most one flush
/// interval.
#[derive(Debug)]
pub(crate) struct UsageMeter {
    store: Arc<dyn ControlStore>,
    /// The executor's counters as of the last flush, per tenant. Guarded by the async lock so
    /// a reader never sees the store and this map out of step.
    flushed: tokio::sync::Mutex<HashMap<TenantId, UsageCounters>>,
}

impl UsageMeter {
    pub(crate) fn new(store: Arc<dyn ControlStore>) -> Self {
        Self {
            store,
            flushed: tokio::sync::Mutex::default(),
        }
    }

    /// Adds every tenant's work since the last flush to the store, in the current hour: this
    /// process's executor's and what executor processes reported (`reported`).
    pub(crate) async fn flush(
        &self,
        executor: &LocalExecutor,
        reported: &weir_gateway::ExecutorMembership,
    ) -> anyhow::Result<()> {
        let mut flushed = self.flushed.lock().await;
        let hour_start_ms = now_ms();
        let mut deltas = Vec::new();
        let mut now = Vec::new();
        for tenant in self.store.tenants().await? {
            let current = counters(&executor.usage(&tenant.id));
            let before = flushed.get(&tenant.id).copied().unwrap_or_default();
            let delta = current.since(before);
            if !delta.is_zero() {
                deltas.push(UsageDelta {
                    tenant: tenant.id.clone(),
                    hour_start_ms,
                    counters: delta,
                });
            }
            now.push((tenant.id, current));
        }
        let remote = reported.take_usage();
        deltas.extend(remote.iter().map(|(tenant, counters)| UsageDelta {
            tenant: tenant.clone(),
            hour_start_ms,
            counters: *counters,
        }));
        if let Err(error) = self.store.add_usage(deltas).await {
            reported.restore_usage(remote);
            return Err(error.into());
        }
        flushed.extend(now);
        Ok(())
    }

    /// The executor's counters of a forgotten tenant start again from zero.
    pub(crate) async fn forget(&self, tenant: &TenantId) {
        self.flushed.lock().await.remove(tenant);
    }

    /// The tenant's usage: totals since it was created (stored plus not yet flushed), its
    /// hours and days from the store, and the executor's other fields as they are.
    pub(crate) async fn usage(&self, executor: &LocalExecutor, tenant: &TenantId) -> Usage {
        let flushed = self.flushed.lock().await;
        let live = executor.usage(tenant);
        let unflushed = counters(&live).since(flushed.get(tenant).copied().unwrap_or_default());
        let since = now_ms().saturating_sub(USAGE_DAYS_SHOWN * 24 * 3_600_000);
        let (stored, periods) = match self.store.usage(tenant, since).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, %tenant, "cannot read usage from the store");
                Default::default()
            }
        };
        drop(flushed);
        let total = stored.plus(unflushed);
        let hours_since = now_ms().saturating_sub(USAGE_HOURS_SHOWN * 3_600_000);
        Usage {
            messages_in: total.messages_in,
            bytes_in: total.bytes_in,
            messages_out: total.messages_out,
            fuel: total.fuel,
            state_ops: total.state_ops,
            periods: periods
                .into_iter()
                .filter(|p| p.period == "day" || p.start_ms >= hours_since)
                .map(|p| UsagePeriod {
                    period: p.period.to_owned(),
                    start_ms: p.start_ms,
                    messages_in: p.counters.messages_in,
                    messages_out: p.counters.messages_out,
                    bytes_in: p.counters.bytes_in,
                    fuel: p.counters.fuel,
                    state_ops: p.counters.state_ops,
                })
                .collect(),
            ..live
        }
    }
}

/// Flushes usage every `interval` until the process ends.
pub(crate) fn spawn_usage_flusher(
    meter: Arc<UsageMeter>,
    deployments: Arc<crate::deployments::LocalDeployments>,
    reported: Arc<weir_gateway::ExecutorMembership>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = meter.flush(&deployments.executor, &reported).await {
                tracing::warn!(%error, "usage flush failed; the next flush adds it");
            }
        }
    })
}

/// Lines of one tenant waiting for the log writer at most; beyond, that tenant's new lines are
/// dropped (and counted).
const LOG_QUEUE_PER_TENANT: usize = 10_000;
/// Bytes of module log lines waiting at most, all tenants together; a tenant keeps an even
/// share of them however much another logs (`TenantLogQueue`).
const LOG_QUEUE_BYTES: usize = 64 << 20;
/// Lines the writer takes per batch.
const LOG_BATCH: usize = 1_000;

/// Module log lines to the control store: `record` only queues (it runs inside a module's
/// call) in a queue per tenant served in turn ([`TenantLogQueue`]: a chatty tenant fills only
/// its own share), and one task writes each tenant's batch, trimmed to its `max_log_lines`.
#[derive(Debug)]
pub(crate) struct StoreLogWriter {
    queue: Arc<TenantLogQueue>,
}

impl StoreLogWriter {
    /// The writer, and its task writing to `store`.
    pub(crate) fn start(store: Arc<dyn ControlStore>) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let queue = Arc::new(TenantLogQueue::new(LOG_QUEUE_PER_TENANT, LOG_QUEUE_BYTES));
        let lines = queue.clone();
        let task = tokio::spawn(async move {
            loop {
                let batch = lines.next(LOG_BATCH).await;
                let tenant = &batch.tenant;
                let records: Vec<ModuleLogRecord> = batch
                    .lines
                    .into_iter()
                    .map(|record| {
                        let (deployment, node) = match record.node.split_once('/') {
                            Some((d, n)) => (Some(d.to_owned()), n.to_owned()),
                            None => (None, record.node.clone()),
                        };
                        ModuleLogRecord {
                            seq: 0,
                            at_ms: record
                                .at
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                            level: level_name(record.level).to_owned(),
                            deployment,
                            node,
                            message: record.message,
                        }
                    })
                    .collect();
                if !records.is_empty() {
                    match store.tenant(tenant).await {
                        Ok(Some(record)) => {
                            let max = u64::from(record.quotas.max_log_lines);
                            if let Err(error) = store.append_module_logs(tenant, records, max).await
                            {
                                tracing::warn!(%error, %tenant, "cannot keep module log lines");
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%error, %tenant, "cannot read the tenant's quotas; its log lines are dropped");
                        }
                    }
                }
                for answer in batch.synced {
                    let _sent = answer.send(());
                }
            }
        });
        (Arc::new(Self { queue }), task)
    }

    /// Waits (1 s at most) until every line of `tenant` recorded before the call is in the
    /// store, so a reader sees the lines a module wrote before it asked.
    pub(crate) async fn synced(&self, tenant: &TenantId) {
        if tokio::time::timeout(Duration::from_secs(1), self.queue.sync(tenant))
            .await
            .is_err()
        {
            tracing::debug!(%tenant, "the log writer is behind; reading what it wrote so far");
        }
    }
}

impl LogSink for StoreLogWriter {
    fn record(&self, record: LogRecord) {
        // A full share is counted and warned of by the queue.
        let _queued = self.queue.push(record);
    }
}

pub(crate) fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
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

/// The tenant attribute of every resource and data point weir exports.
pub(crate) const TENANT_ATTRIBUTE: &str = "weir.tenant";

/// One tenant's series as an OTLP resource: `service.name` and `weir.tenant` on the
/// resource, `weir.tenant` and the series' labels on every data point; counters as
/// cumulative monotonic sums from `start_nanos`, gauges as gauges, histograms as cumulative
/// histograms (explicit bounds for weir's own, count and sum only for modules').
pub(crate) fn resource_metrics(
    tenant: &TenantId,
    service_name: &str,
    series: &[MetricSeries],
    start_nanos: u64,
    now_nanos: u64,
) -> ResourceMetrics {
    let tenant_text = tenant.to_string();
    let mut metrics: Vec<Metric> = Vec::new();
    for s in series {
        let mut attributes = vec![string_attribute(TENANT_ATTRIBUTE, &tenant_text)];
        attributes.extend(s.labels.iter().map(|(k, v)| string_attribute(k, v)));
        let data = match s.kind.as_str() {
            "histogram" => {
                let (bounds, counts) = match &s.buckets {
                    Some(buckets) => (
                        buckets.iter().filter_map(|(b, _)| *b).collect(),
                        buckets.iter().map(|(_, c)| *c).collect(),
                    ),
                    None => (Vec::new(), vec![s.count.unwrap_or(0)]),
                };
                metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes,
                        start_time_unix_nano: start_nanos,
                        time_unix_nano: now_nanos,
                        count: s.count.unwrap_or(0),
                        sum: Some(s.value),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })
            }
            kind => {
                let point = NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start_nanos,
                    time_unix_nano: now_nanos,
                    value: Some(number_data_point::Value::AsDouble(s.value)),
                    ..Default::default()
                };
                if kind == "gauge" {
                    metric::Data::Gauge(Gauge {
                        data_points: vec![point],
                    })
                } else {
                    metric::Data::Sum(Sum {
                        data_points: vec![point],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                }
            }
        };
        // Points of one name and kind go under one metric.
        let same = metrics.iter_mut().find(|m| {
            m.name == s.name
                && matches!(
                    (&m.data, &data),
                    (Some(metric::Data::Sum(_)), metric::Data::Sum(_))
                        | (Some(metric::Data::Gauge(_)), metric::Data::Gauge(_))
                        | (Some(metric::Data::Histogram(_)), metric::Data::Histogram(_))
                )
        });
        match (same.and_then(|m| m.data.as_mut()), data) {
            (Some(metric::Data::Sum(sum)), metric::Data::Sum(more)) => {
                sum.data_points.extend(more.data_points);
            }
            (Some(metric::Data::Gauge(gauge)), metric::Data::Gauge(more)) => {
                gauge.data_points.extend(more.data_points);
            }
            (Some(metric::Data::Histogram(histogram)), metric::Data::Histogram(more)) => {
                histogram.data_points.extend(more.data_points);
            }
            (_, data) => metrics.push(Metric {
                name: s.name.clone(),
                data: Some(data),
                ..Default::default()
            }),
        }
    }
    ResourceMetrics {
        resource: Some(Resource {
            attributes: vec![
                string_attribute("service.name", service_name),
                string_attribute(TENANT_ATTRIBUTE, &tenant_text),
            ],
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: "weir".to_owned(),
                ..Default::default()
            }),
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Tenants per platform export request (each a resource), so one request stays small.
const TENANTS_PER_REQUEST: usize = 50;

/// A tenant's exporter and the endpoint it was made for (made again when the endpoint
/// changes).
struct TenantExporter {
    endpoint: EndpointSpec,
    /// The egress rule and size bound it was built under: a quota change (a private host
    /// taken away) builds it anew at the next tick.
    allowed_private_hosts: Vec<String>,
    max_message_bytes: u64,
    exporter: MetricsExporter,
}

/// The platform collector's exporter `--otlp-endpoint` names (`http://host:port`), checked
/// before the server starts so a wrong address ends the start with the reason.
pub(crate) fn platform_exporter(address: Option<&str>) -> anyhow::Result<Option<MetricsExporter>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let endpoint = EndpointSpec {
        name: "platform".to_owned(),
        kind: "otlp".to_owned(),
        address: Some(address.to_owned()),
        settings: Default::default(),
        secret: None,
    };
    // The operator named this host: it is the one private address the exporter may reach.
    let host = address
        .trim_start_matches("http://")
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_owned();
    let context = ConnectContext::new(
        TenantId::new("weir").map_err(|e| anyhow::anyhow!("{e}"))?,
        "platform",
        Egress::new([host]),
        u64::MAX,
    );
    let exporter = MetricsExporter::new(&endpoint, context).map_err(|problems| {
        let reasons: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
        anyhow::anyhow!("--otlp-endpoint: {}", reasons.join("; "))
    })?;
    Ok(Some(exporter))
}

/// Exports every tenant's series at every tick: all tenants to the platform collector (if
/// `--otlp-endpoint` names one), and each tenant's own to its `telemetry` endpoint (if it has
/// one), one request after the other, each within the exporter's timeouts.
pub(crate) fn spawn_exporter(
    store: Arc<dyn ControlStore>,
    deployments: Arc<crate::deployments::LocalDeployments>,
    platform: Option<MetricsExporter>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut platform = platform;
    let start_nanos = now_nanos();
    tokio::spawn(async move {
        let tenants_exporters: Mutex<HashMap<TenantId, TenantExporter>> = Mutex::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let executor = &deployments.executor;
            let mut resources = Vec::new();
            for tenant in executor.metric_tenants().await {
                let series = executor.metrics(&tenant).await;
                if series.is_empty() {
                    continue;
                }
                let now = now_nanos();
                export_to_tenant(
                    &store,
                    &tenants_exporters,
                    &tenant,
                    &series,
                    start_nanos,
                    now,
                )
                .await;
                if platform.is_some() {
                    resources.push(resource_metrics(&tenant, "weir", &series, start_nanos, now));
                }
            }
            if let Some(exporter) = platform.as_mut() {
                for chunk in resources.chunks(TENANTS_PER_REQUEST) {
                    let request = ExportMetricsServiceRequest {
                        resource_metrics: chunk.to_vec(),
                    };
                    if let Err(why) = exporter.export(&request).await {
                        tracing::warn!(
                            why,
                            "platform metrics export failed; the next one carries the totals"
                        );
                    }
                }
            }
        }
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn export_to_tenant(
    store: &Arc<dyn ControlStore>,
    exporters: &Mutex<HashMap<TenantId, TenantExporter>>,
    tenant: &TenantId,
    series: &[MetricSeries],
    start_nanos: u64,
    now: u64,
) {
    let found = match store.endpoint(tenant, TELEMETRY_ENDPOINT).await {
        Ok(found) => found.filter(|e| e.kind == "otlp"),
        Err(error) => {
            tracing::warn!(%error, %tenant, "cannot read the tenant's telemetry endpoint");
            return;
        }
    };
    let Some(record) = found else {
        exporters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
        return;
    };
    let quotas = match store.tenant(tenant).await {
        Ok(Some(t)) => t.quotas,
        _ => return,
    };
    let endpoint = EndpointSpec {
        name: record.name,
        kind: record.kind,
        address: record.address,
        settings: record.settings,
        secret: record.secret,
    };
    // Taken out while it exports (the map's lock is not held across the await).
    let kept = exporters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(tenant)
        .filter(|e| {
            e.endpoint == endpoint
                && e.allowed_private_hosts == quotas.allowed_private_hosts
                && e.max_message_bytes == quotas.max_message_bytes
        });
    let mut entry = match kept {
        Some(entry) => entry,
        None => {
            let context = ConnectContext::new(
                tenant.clone(),
                TELEMETRY_ENDPOINT,
                Egress::new(&quotas.allowed_private_hosts),
                quotas.max_message_bytes,
            );
            match MetricsExporter::new(&endpoint, context) {
                Ok(exporter) => TenantExporter {
                    endpoint,
                    allowed_private_hosts: quotas.allowed_private_hosts.clone(),
                    max_message_bytes: quotas.max_message_bytes,
                    exporter,
                },
                Err(problems) => {
                    tracing::warn!(%tenant, ?problems, "the tenant's telemetry endpoint is not usable");
                    return;
                }
            }
        }
    };
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![resource_metrics(
            tenant,
            entry.exporter.service_name(),
            series,
            start_nanos,
            now,
        )],
    };
    if let Err(why) = entry.exporter.export(&request).await {
        tracing::info!(%tenant, why, "tenant metrics export failed; the next one carries the totals");
    }
    exporters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(tenant.clone(), entry);
}
