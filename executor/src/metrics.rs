//! Metrics modules record through the `metrics` interface, kept per tenant with a bound on the
//! number of series. Export (OpenTelemetry, Prometheus text) reads [`MetricsRegistry::snapshot`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use weir_api::TenantId;

/// Longest metric name or label key/value accepted.
pub const MAX_METRIC_TEXT_BYTES: usize = 255;
/// Most labels one series may carry.
pub const MAX_LABELS_PER_SERIES: usize = 16;

/// One recorded value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricValue {
    /// Add to a counter.
    Counter(u64),
    /// A histogram observation with float values.
    HistogramF64(f64),
    /// A histogram observation with integer values.
    HistogramU64(u64),
}

/// Why a recording was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The name is already used with another kind or number type.
    #[error("{0}")]
    IncompatibleType(String),
    /// The name, labels or value are out of bounds.
    #[error("{0}")]
    Invalid(String),
}

/// The state of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesValue {
    /// A counter's total.
    Counter(u64),
    /// A histogram's summary.
    Histogram {
        /// Observations.
        count: u64,
        /// Their sum.
        sum: f64,
        /// Smallest.
        min: f64,
        /// Largest.
        max: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    HistogramF64,
    HistogramU64,
}

/// A series: metric name and sorted labels.
pub type SeriesKey = (String, BTreeMap<String, String>);

#[derive(Debug, Default)]
struct TenantMetrics {
    /// The tenant's `max_metric_series` quota, when one was set.
    max_series: Option<usize>,
    kinds: HashMap<String, Kind>,
    series: HashMap<SeriesKey, SeriesValue>,
    dropped: u64,
}

/// All tenants' module metrics.
#[derive(Debug)]
pub struct MetricsRegistry {
    max_series: usize,
    tenants: Mutex<HashMap<TenantId, TenantMetrics>>,
}

impl MetricsRegistry {
    /// Keeps up to `max_series` series per tenant; recordings that would add more are counted
    /// as dropped.
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Caps `tenant`'s series at `max_series` (its `max_metric_series` quota) from now on;
    /// series it already has are kept.
    pub fn set_max_series(&self, tenant: &TenantId, max_series: usize) {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.clone())
            .or_default()
            .max_series = Some(max_series);
    }

    /// Records `value` for the series `name` + `labels` of `tenant`.
    pub fn record(
        &self,
        tenant: &TenantId,
        name: &str,
        labels: Vec<(String, String)>,
        value: MetricValue,
    ) -> Result<(), MetricError> {
        if name.is_empty() || name.len() > MAX_METRIC_TEXT_BYTES {
            return Err(MetricError::Invalid(format!(
                "metric name must be 1 to {MAX_METRIC_TEXT_BYTES} bytes"
            )));
        }
        if labels.len() > MAX_LABELS_PER_SERIES {
            return Err(MetricError::Invalid(format!(
                "at most {MAX_LABELS_PER_SERIES} labels per series, got {}",
                labels.len()
            )));
        }
        if labels
            .iter()
            .any(|(k, v)| k.len() > MAX_METRIC_TEXT_BYTES || v.len() > MAX_METRIC_TEXT_BYTES)
        {
            return Err(MetricError::Invalid(format!(
                "label keys and values must be at most {MAX_METRIC_TEXT_BYTES} bytes"
            )));
        }
        let (kind, observation) = match value {
            MetricValue::Counter(_) => (Kind::Counter, None),
            MetricValue::HistogramF64(v) if !v.is_finite() => {
                return Err(MetricError::Invalid(
                    "histogram values must be finite".to_owned(),
                ));
            }
            MetricValue::HistogramF64(v) => (Kind::HistogramF64, Some(v)),
            #[allow(clippy::cast_precision_loss, reason = "histograms summarise in f64")]
            MetricValue::HistogramU64(v) => (Kind::HistogramU64, Some(v as f64)),
        };
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let metrics = tenants.entry(tenant.clone()).or_default();
        match metrics.kinds.get(name) {
            Some(existing) if *existing != kind => {
                return Err(MetricError::IncompatibleType(format!(
                    "metric {name:?} is a {existing:?}, not a {kind:?}"
                )));
            }
            _ => {}
        }
        let key: SeriesKey = (name.to_owned(), labels.into_iter().collect());
        let max_series = metrics.max_series.unwrap_or(self.max_series);
        if !metrics.series.contains_key(&key) && metrics.series.len() >= max_series {
            metrics.dropped += 1;
            return Ok(());
        }
        metrics.kinds.insert(name.to_owned(), kind);
        let series = metrics.series.entry(key).or_insert_with(|| match kind {
            Kind::Counter => SeriesValue::Counter(0),
            Kind::HistogramF64 | Kind::HistogramU64 => SeriesValue::Histogram {
                count: 0,
                sum: 0.0,
                min: f64::MAX,
                max: f64::MIN,
            },
        });
        match (series, value, observation) {
            (SeriesValue::Counter(total), MetricValue::Counter(v), _) => {
                *total = total.saturating_add(v)
            }
            (
                SeriesValue::Histogram {
                    count,
                    sum,
                    min,
                    max,
                },
                _,
                Some(v),
            ) => {
                *count += 1;
                *sum += v;
                *min = min.min(v);
                *max = max.max(v);
            }
            _ => {}
        }
        Ok(())
    }

    /// Forgets a tenant's series (the tenant was deleted).
    pub fn forget(&self, tenant: &TenantId) {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
    }

    /// The series of `tenant`, and how many recordings were dropped at the series bound.
    pub fn snapshot(&self, tenant: &TenantId) -> (BTreeMap<SeriesKey, SeriesValue>, u64) {
        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tenants.get(tenant).map_or_else(Default::default, |m| {
            (
                m.series
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                m.dropped,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn counters_add_per_series() {
        let registry = MetricsRegistry::new(10);
        let labels = || vec![("module".to_owned(), "m".to_owned())];
        registry
            .record(&tenant("a"), "requests", labels(), MetricValue::Counter(2))
            .unwrap();
        registry
            .record(&tenant("a"), "requests", labels(), MetricValue::Counter(3))
            .unwrap();
        let (series, _) = registry.snapshot(&tenant("a"));
        assert_eq!(series.values().next(), Some(&SeriesValue::Counter(5)));
    }

    #[test]
    fn reusing_a_name_as_another_kind_is_incompatible() {
        let registry = MetricsRegistry::new(10);
        registry
            .record(&tenant("a"), "x", vec![], MetricValue::Counter(1))
            .unwrap();
        let error = registry.record(&tenant("a"), "x", vec![], MetricValue::HistogramF64(1.0));
        assert!(matches!(error, Err(MetricError::IncompatibleType(_))));
        // Another tenant's name space is its own.
        registry
            .record(&tenant("b"), "x", vec![], MetricValue::HistogramF64(1.0))
            .unwrap();
    }

    #[test]
    fn series_beyond_the_bound_are_dropped_and_counted() {
        let registry = MetricsRegistry::new(2);
        for i in 0..5 {
            let labels = vec![("i".to_owned(), i.to_string())];
            registry
                .record(&tenant("a"), "c", labels, MetricValue::Counter(1))
                .unwrap();
        }
        let (series, dropped) = registry.snapshot(&tenant("a"));
        assert_eq!((series.len(), dropped), (2, 3));
        assert!(
            registry.snapshot(&tenant("b")).0.is_empty(),
            "tenants see only their own series"
        );
        registry.set_max_series(&tenant("b"), 4);
        for i in 0..5 {
            let labels = vec![("i".to_owned(), i.to_string())];
            registry
                .record(&tenant("b"), "c", labels, MetricValue::Counter(1))
                .unwrap();
        }
        assert_eq!(registry.snapshot(&tenant("b")).0.len(), 4, "b's own quota");
        assert_eq!(registry.snapshot(&tenant("a")).0.len(), 2);
    }
}
