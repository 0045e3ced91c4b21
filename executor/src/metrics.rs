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

/// What became of a recording that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Added to its series.
    Kept,
    /// Dropped: it would have made a new series beyond the tenant's `max_metric_series`.
    Dropped,
    /// Dropped as [`Recording::Dropped`], and the first drop since the tenant's quota was
    /// last set: the caller tells the module (in its log) that its series are capped.
    FirstDropped,
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

/// Labels sorted by key, each key once (the last value given wins, as a map built from them
/// would have it): the identity of a series under its name.
type Labels = Vec<(String, String)>;

/// The series of one metric name, all of one kind.
#[derive(Debug)]
struct Named {
    kind: Kind,
    series: HashMap<Labels, SeriesValue>,
}

#[derive(Debug, Default)]
struct TenantMetrics {
    /// The tenant's `max_metric_series` quota, when one was set.
    max_series: Option<usize>,
    /// By metric name: a recording looks its series up by `&str` and the labels it owns, so
    /// one that hits an existing series allocates nothing.
    names: HashMap<String, Named>,
    /// Series across all names.
    series: usize,
    dropped: u64,
    /// Whether a drop was reported since the quota was last set.
    told: bool,
}

/// Sorts `labels` by key and keeps the last value of a key given twice.
fn canonical(mut labels: Labels) -> Labels {
    if labels.len() > 1 {
        // Reversed, a stable sort puts the last value of a key first, and dedup keeps the first.
        labels.reverse();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        labels.dedup_by(|later, first| later.0 == first.0);
    }
    labels
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
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let metrics = tenants.entry(tenant.clone()).or_default();
        if metrics.max_series != Some(max_series) {
            metrics.max_series = Some(max_series);
            metrics.told = false;
        }
    }

    /// Records `value` for the series `name` + `labels` of `tenant`. A recording into a series
    /// that exists allocates nothing: this is on the path of every message of a module that
    /// counts its calls.
    pub fn record(
        &self,
        tenant: &TenantId,
        name: &str,
        labels: Vec<(String, String)>,
        value: MetricValue,
    ) -> Result<Recording, MetricError> {
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
        let labels = canonical(labels);
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let metrics = match tenants.get_mut(tenant) {
            Some(metrics) => metrics,
            None => tenants.entry(tenant.clone()).or_default(),
        };
        if let Some(named) = metrics.names.get(name)
            && named.kind != kind
        {
            return Err(MetricError::IncompatibleType(format!(
                "metric {name:?} is a {:?}, not a {kind:?}",
                named.kind
            )));
        }
        let max_series = metrics.max_series.unwrap_or(self.max_series);
        let series = match metrics
            .names
            .get_mut(name)
            .and_then(|named| named.series.get_mut(&labels))
        {
            Some(series) => series,
            None => {
                if metrics.series >= max_series {
                    metrics.dropped += 1;
                    if metrics.told {
                        return Ok(Recording::Dropped);
                    }
                    metrics.told = true;
                    return Ok(Recording::FirstDropped);
                }
                metrics.series += 1;
                let named = match metrics.names.get_mut(name) {
                    Some(named) => named,
                    None => metrics.names.entry(name.to_owned()).or_insert(Named {
                        kind,
                        series: HashMap::new(),
                    }),
                };
                named.series.entry(labels).or_insert(match kind {
                    Kind::Counter => SeriesValue::Counter(0),
                    Kind::HistogramF64 | Kind::HistogramU64 => SeriesValue::Histogram {
                        count: 0,
                        sum: 0.0,
                        min: f64::MAX,
                        max: f64::MIN,
                    },
                })
            }
        };
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
        Ok(Recording::Kept)
    }

    /// The tenants with series or drops, and the cap of each.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, m)| m.series > 0 || m.dropped > 0)
            .map(|(t, _)| t.clone())
            .collect()
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
            let series = m
                .names
                .iter()
                .flat_map(|(name, named)| {
                    named.series.iter().map(move |(labels, value)| {
                        (
                            (name.clone(), labels.iter().cloned().collect()),
                            value.clone(),
                        )
                    })
                })
                .collect();
            (series, m.dropped)
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
    fn labels_name_one_series_whatever_their_order_and_the_last_value_of_a_key_wins() {
        let registry = MetricsRegistry::new(10);
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let a = tenant("a");
        registry
            .record(
                &a,
                "c",
                l(&[("x", "1"), ("y", "2")]),
                MetricValue::Counter(1),
            )
            .unwrap();
        registry
            .record(
                &a,
                "c",
                l(&[("y", "2"), ("x", "1")]),
                MetricValue::Counter(1),
            )
            .unwrap();
        registry
            .record(
                &a,
                "c",
                l(&[("x", "0"), ("y", "2"), ("x", "1")]),
                MetricValue::Counter(1),
            )
            .unwrap();
        let (series, dropped) = registry.snapshot(&a);
        let key = (
            "c".to_owned(),
            l(&[("x", "1"), ("y", "2")]).into_iter().collect(),
        );
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series.get(&key), Some(&SeriesValue::Counter(3)));
        assert_eq!(dropped, 0);
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
