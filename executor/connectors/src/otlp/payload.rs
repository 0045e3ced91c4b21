//! The OpenTelemetry payload of azure-compat 4.2, checked and turned into OTLP data.
//!
//! ```json
//! {"metrics": [{"name": "temperature", "type": "f64_gauge", "value": 21.5,
//!               "description": "…", "unit": "Cel", "timestamp": 1700000000000000000,
//!               "attributes": [{"key": "room", "value": "a"}]}],
//!  "logs": [{"value": "door opened", "level": "info", "timestamp": 1700000000000000000,
//!            "attributes": [{"key": "door", "value": 3}]}]}
//! ```
//!
//! At least one of `metrics` and `logs`. A metric's type is `type` or `metric_type` (the
//! `otel-transform` sample writes the latter; azure-compat section 11 row 17) and one of
//! `u64_counter`, `f64_counter`, `i64_up_down_counter`, `f64_up_down_counter`, `u64_gauge`,
//! `i64_gauge`, `f64_gauge`, `f64_histogram`, `u64_histogram`; `u64` and `i64` values are whole
//! numbers and counters never go down. `timestamp` is nanoseconds since the Unix epoch
//! (arrival time when absent). A log's `value` is its body (any JSON value), `level` one of
//! `trace`, `debug`, `info`, `warn`, `error`, `fatal`. `null` stands for an absent optional
//! field; other fields are ignored.
//!
//! Each metric becomes one data point of its own: counters and up-down counters a delta `Sum`
//! (monotonic for counters), gauges a `Gauge`, histograms a delta `Histogram` of one
//! observation over the OpenTelemetry SDK's default bucket bounds. Each log becomes one
//! `LogRecord` with the OpenTelemetry severity number of its level.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
    metric, number_data_point,
};
use serde_json::Value;

/// The OpenTelemetry SDK's default explicit histogram bucket bounds.
const HISTOGRAM_BOUNDS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// Problems listed in one rejection, at most (the count of the rest is given).
const MAX_LISTED: usize = 10;

/// Deepest JSON nesting of a log body or attribute value taken.
const MAX_DEPTH: usize = 16;

/// A payload's OTLP data.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Telemetry {
    pub(crate) metrics: Vec<Metric>,
    pub(crate) logs: Vec<LogRecord>,
}

/// What is wrong with a payload: each problem with its JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) Vec<(String, String)>);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listed: Vec<String> = self
            .0
            .iter()
            .take(MAX_LISTED)
            .map(|(path, what)| {
                let path = if path.is_empty() { "/" } else { path };
                format!("{path}: {what}")
            })
            .collect();
        f.write_str(&listed.join("; "))?;
        if self.0.len() > MAX_LISTED {
            write!(f, "; and {} more", self.0.len() - MAX_LISTED)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    U64,
    I64,
    F64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    UpDownCounter,
    Gauge,
    Histogram,
}

const METRIC_TYPES: [(&str, Kind, Number); 9] = [
    ("u64_counter", Kind::Counter, Number::U64),
    ("f64_counter", Kind::Counter, Number::F64),
    ("i64_up_down_counter", Kind::UpDownCounter, Number::I64),
    ("f64_up_down_counter", Kind::UpDownCounter, Number::F64),
    ("u64_gauge", Kind::Gauge, Number::U64),
    ("i64_gauge", Kind::Gauge, Number::I64),
    ("f64_gauge", Kind::Gauge, Number::F64),
    ("f64_histogram", Kind::Histogram, Number::F64),
    ("u64_histogram", Kind::Histogram, Number::U64),
];

const LEVELS: [(&str, SeverityNumber); 6] = [
    ("trace", SeverityNumber::Trace),
    ("debug", SeverityNumber::Debug),
    ("info", SeverityNumber::Info),
    ("warn", SeverityNumber::Warn),
    ("error", SeverityNumber::Error),
    ("fatal", SeverityNumber::Fatal),
];

/// A checked number, as the metric type wants it.
#[derive(Debug, Clone, Copy)]
enum Amount {
    Int(i64),
    Double(f64),
}

impl Amount {
    fn as_f64(self) -> f64 {
        match self {
            #[allow(clippy::cast_precision_loss, reason = "histograms record f64 sums")]
            Self::Int(i) => i as f64,
            Self::Double(d) => d,
        }
    }
}

struct Checker {
    problems: Vec<(String, String)>,
    now: u64,
}

impl Checker {
    fn problem(&mut self, path: &str, what: impl Into<String>) {
        self.problems.push((path.to_owned(), what.into()));
    }
}

/// Parses `payload` as of `now` (nanoseconds since the Unix epoch, for entries without a
/// timestamp).
pub(crate) fn parse(payload: &[u8], now: u64) -> Result<Telemetry, Invalid> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        Invalid(vec![(
            String::new(),
            format!("the payload is not JSON: {e}"),
        )])
    })?;
    let mut checker = Checker {
        problems: Vec::new(),
        now,
    };
    let Value::Object(object) = &value else {
        return Err(Invalid(vec![(
            String::new(),
            "the payload is not a JSON object with \"metrics\" or \"logs\"".to_owned(),
        )]));
    };
    let metrics = present(object.get("metrics"));
    let logs = present(object.get("logs"));
    if metrics.is_none() && logs.is_none() {
        checker.problem("", "the payload has neither \"metrics\" nor \"logs\"");
    }
    let mut telemetry = Telemetry::default();
    if let Some(metrics) = metrics {
        match metrics {
            Value::Array(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    if let Some(metric) =
                        parse_metric(&mut checker, &format!("/metrics/{i}"), entry)
                    {
                        telemetry.metrics.push(metric);
                    }
                }
            }
            _ => checker.problem("/metrics", "not an array"),
        }
    }
    if let Some(logs) = logs {
        match logs {
            Value::Array(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    if let Some(log) = parse_log(&mut checker, &format!("/logs/{i}"), entry) {
                        telemetry.logs.push(log);
                    }
                }
            }
            _ => checker.problem("/logs", "not an array"),
        }
    }
    if checker.problems.is_empty() && telemetry.metrics.is_empty() && telemetry.logs.is_empty() {
        checker.problem("", "the payload has no metric and no log");
    }
    if checker.problems.is_empty() {
        Ok(telemetry)
    } else {
        Err(Invalid(checker.problems))
    }
}

/// A field's value, `null` counting as absent.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

fn optional_string(checker: &mut Checker, path: &str, value: Option<&Value>) -> String {
    match present(value) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            checker.problem(path, "not a string");
            String::new()
        }
    }
}

fn parse_metric(checker: &mut Checker, path: &str, entry: &Value) -> Option<Metric> {
    let Value::Object(fields) = entry else {
        checker.problem(path, "a metric is a JSON object");
        return None;
    };
    let start = checker.problems.len();
    let name = match present(fields.get("name")) {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) => {
            checker.problem(&format!("{path}/name"), "empty");
            String::new()
        }
        Some(_) => {
            checker.problem(&format!("{path}/name"), "not a string");
            String::new()
        }
        None => {
            checker.problem(&format!("{path}/name"), "missing");
            String::new()
        }
    };
    let kind = metric_type(checker, path, fields);
    let description = optional_string(
        checker,
        &format!("{path}/description"),
        fields.get("description"),
    );
    let unit = optional_string(checker, &format!("{path}/unit"), fields.get("unit"));
    let time = timestamp(
        checker,
        &format!("{path}/timestamp"),
        fields.get("timestamp"),
    );
    let attributes = attributes(
        checker,
        &format!("{path}/attributes"),
        fields.get("attributes"),
    );
    let value_path = format!("{path}/value");
    let amount = match (kind, present(fields.get("value"))) {
        (_, None) => {
            checker.problem(&value_path, "missing");
            None
        }
        (Some((kind, number)), Some(value)) => amount(checker, &value_path, value, kind, number),
        (None, Some(_)) => None,
    };
    if checker.problems.len() > start {
        return None;
    }
    let ((kind, _), amount) = (kind?, amount?);
    let number_point = || NumberDataPoint {
        attributes: attributes.clone(),
        start_time_unix_nano: time,
        time_unix_nano: time,
        value: Some(match amount {
            Amount::Int(i) => number_data_point::Value::AsInt(i),
            Amount::Double(d) => number_data_point::Value::AsDouble(d),
        }),
        ..Default::default()
    };
    let data = match kind {
        Kind::Counter | Kind::UpDownCounter => metric::Data::Sum(Sum {
            data_points: vec![number_point()],
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: kind == Kind::Counter,
        }),
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: vec![number_point()],
        }),
        Kind::Histogram => {
            let value = amount.as_f64();
            let bucket = HISTOGRAM_BOUNDS.partition_point(|bound| *bound < value);
            let bucket_counts = (0..=HISTOGRAM_BOUNDS.len())
                .map(|i| u64::from(i == bucket))
                .collect();
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: attributes.clone(),
                    start_time_unix_nano: time,
                    time_unix_nano: time,
                    count: 1,
                    sum: Some(value),
                    bucket_counts,
                    explicit_bounds: HISTOGRAM_BOUNDS.to_vec(),
                    min: Some(value),
                    max: Some(value),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })
        }
    };
    Some(Metric {
        name,
        description,
        unit,
        data: Some(data),
        ..Default::default()
    })
}

fn metric_type(
    checker: &mut Checker,
    path: &str,
    fields: &serde_json::Map<String, Value>,
) -> Option<(Kind, Number)> {
    let typed = present(fields.get("type"));
    let metric_typed = present(fields.get("metric_type"));
    let (field, value) = match (typed, metric_typed) {
        (Some(a), Some(b)) if a != b => {
            checker.problem(
                &format!("{path}/type"),
                "\"type\" and \"metric_type\" disagree; give one",
            );
            return None;
        }
        (Some(value), _) => ("type", value),
        (None, Some(value)) => ("metric_type", value),
        (None, None) => {
            checker.problem(
                &format!("{path}/type"),
                "missing (\"type\" or \"metric_type\")",
            );
            return None;
        }
    };
    let found = value.as_str().and_then(|name| {
        METRIC_TYPES
            .iter()
            .find(|(known, _, _)| known.eq_ignore_ascii_case(name))
    });
    match found {
        Some((_, kind, number)) => Some((*kind, *number)),
        None => {
            let names: Vec<&str> = METRIC_TYPES.iter().map(|(name, _, _)| *name).collect();
            checker.problem(
                &format!("{path}/{field}"),
                format!("{value} is not one of {}", names.join(", ")),
            );
            None
        }
    }
}

fn amount(
    checker: &mut Checker,
    path: &str,
    value: &Value,
    kind: Kind,
    number: Number,
) -> Option<Amount> {
    let Value::Number(n) = value else {
        checker.problem(path, "not a number");
        return None;
    };
    // A whole number may be written as 3 or 3.0.
    let whole = n
        .as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.3e18)
                .map(|f| {
                    #[allow(
                        clippy::cast_possible_truncation,
                        reason = "checked to be whole and in range"
                    )]
                    let whole = f as i128;
                    whole
                })
        });
    let amount = match number {
        Number::U64 => match whole.and_then(|w| i64::try_from(w).ok()) {
            Some(w) if w >= 0 => Amount::Int(w),
            // OTLP carries integers as int64: larger u64 values do not fit.
            _ => {
                checker.problem(path, "not a whole number from 0 to 9223372036854775807");
                return None;
            }
        },
        Number::I64 => match whole.and_then(|w| i64::try_from(w).ok()) {
            Some(w) => Amount::Int(w),
            None => {
                checker.problem(path, "not a whole number that fits in 64 bits");
                return None;
            }
        },
        Number::F64 => match n.as_f64() {
            Some(f) if f.is_finite() => Amount::Double(f),
            _ => {
                checker.problem(path, "not a finite number");
                return None;
            }
        },
    };
    if kind == Kind::Counter && amount.as_f64() < 0.0 {
        checker.problem(
            path,
            "a counter only goes up; use an up-down counter for negative values",
        );
        return None;
    }
    Some(amount)
}

fn timestamp(checker: &mut Checker, path: &str, value: Option<&Value>) -> u64 {
    match present(value) {
        None => checker.now,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ns) => ns,
            None => {
                checker.problem(
                    path,
                    "not a whole number of nanoseconds since the Unix epoch",
                );
                checker.now
            }
        },
        Some(_) => {
            checker.problem(path, "not a number (nanoseconds since the Unix epoch)");
            checker.now
        }
    }
}

fn attributes(checker: &mut Checker, path: &str, value: Option<&Value>) -> Vec<KeyValue> {
    let Some(value) = present(value) else {
        return Vec::new();
    };
    let Value::Array(entries) = value else {
        checker.problem(path, "not an array of {\"key\", \"value\"}");
        return Vec::new();
    };
    let mut attributes = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let entry_path = format!("{path}/{i}");
        let Value::Object(fields) = entry else {
            checker.problem(
                &entry_path,
                "an attribute is {\"key\": string, \"value\": …}",
            );
            continue;
        };
        let key = match fields.get("key") {
            Some(Value::String(key)) if !key.is_empty() => key.clone(),
            _ => {
                checker.problem(
                    &format!("{entry_path}/key"),
                    "missing or not a non-empty string",
                );
                continue;
            }
        };
        let Some(value) = present(fields.get("value")) else {
            checker.problem(&format!("{entry_path}/value"), "missing");
            continue;
        };
        match any_value(value, 0) {
            Some(value) => attributes.push(KeyValue {
                key,
                value: Some(value),
                ..Default::default()
            }),
            None => checker.problem(&format!("{entry_path}/value"), "nested too deeply"),
        }
    }
    attributes
}

/// A JSON value as an OTLP value (`None`: nested deeper than [`MAX_DEPTH`]).
fn any_value(value: &Value, depth: usize) -> Option<AnyValue> {
    if depth > MAX_DEPTH {
        return None;
    }
    let value = match value {
        Value::Null => return Some(AnyValue { value: None }),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Array(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items
                .iter()
                .map(|v| any_value(v, depth + 1))
                .collect::<Option<_>>()?,
        }),
        Value::Object(fields) => any_value::Value::KvlistValue(KeyValueList {
            values: fields
                .iter()
                .map(|(k, v)| {
                    Some(KeyValue {
                        key: k.clone(),
                        value: Some(any_value(v, depth + 1)?),
                        ..Default::default()
                    })
                })
                .collect::<Option<_>>()?,
        }),
    };
    Some(AnyValue { value: Some(value) })
}

fn parse_log(checker: &mut Checker, path: &str, entry: &Value) -> Option<LogRecord> {
    let Value::Object(fields) = entry else {
        checker.problem(path, "a log is a JSON object");
        return None;
    };
    let start = checker.problems.len();
    let body = match present(fields.get("value")) {
        Some(value) => match any_value(value, 0) {
            Some(body) => Some(body),
            None => {
                checker.problem(&format!("{path}/value"), "nested too deeply");
                None
            }
        },
        None => {
            checker.problem(&format!("{path}/value"), "missing");
            None
        }
    };
    let level = match present(fields.get("level")) {
        Some(Value::String(level)) => {
            let found = LEVELS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(level));
            if found.is_none() {
                checker.problem(
                    &format!("{path}/level"),
                    format!("{level:?} is not one of trace, debug, info, warn, error, fatal"),
                );
            }
            found.copied()
        }
        Some(_) => {
            checker.problem(&format!("{path}/level"), "not a string");
            None
        }
        None => {
            checker.problem(&format!("{path}/level"), "missing");
            None
        }
    };
    let time = timestamp(
        checker,
        &format!("{path}/timestamp"),
        fields.get("timestamp"),
    );
    let attributes = attributes(
        checker,
        &format!("{path}/attributes"),
        fields.get("attributes"),
    );
    if checker.problems.len() > start {
        return None;
    }
    let (name, severity) = level?;
    Some(LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: checker.now,
        severity_number: severity as i32,
        severity_text: name.to_ascii_uppercase(),
        body,
        attributes,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(payload: &str) -> Vec<String> {
        parse(payload.as_bytes(), 7)
            .err()
            .map(|invalid| invalid.0.into_iter().map(|(path, _)| path).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_metric_type_maps_to_its_otlp_form() {
        let payload = r#"{"metrics":[
            {"name":"a","type":"u64_counter","value":3},
            {"name":"b","metric_type":"f64_up_down_counter","value":-1.5,"unit":"m"},
            {"name":"c","type":"i64_gauge","value":-4,"timestamp":99},
            {"name":"d","type":"f64_histogram","value":30,"attributes":[{"key":"k","value":"v"}]},
            {"name":"e","metric_type":"u64_gauge","value":5.0,"description":null,"timestamp":null}
        ]}"#;
        let telemetry = parse(payload.as_bytes(), 7).unwrap();
        let data: Vec<_> = telemetry
            .metrics
            .iter()
            .map(|m| m.data.clone().unwrap())
            .collect();
        let Some(metric::Data::Sum(sum)) = data.first() else {
            panic!()
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
        assert_eq!(
            sum.data_points[0].time_unix_nano, 7,
            "arrival time without a timestamp"
        );
        let Some(metric::Data::Sum(sum)) = data.get(1) else {
            panic!()
        };
        assert!(!sum.is_monotonic);
        assert_eq!(telemetry.metrics[1].unit, "m");
        let Some(metric::Data::Gauge(gauge)) = data.get(2) else {
            panic!()
        };
        assert_eq!(gauge.data_points[0].time_unix_nano, 99);
        let Some(metric::Data::Histogram(histogram)) = data.get(3) else {
            panic!()
        };
        let point = &histogram.data_points[0];
        assert_eq!((point.count, point.sum), (1, Some(30.0)));
        // 30 falls in (25, 50]: the fifth bucket.
        assert_eq!(point.bucket_counts.iter().position(|c| *c == 1), Some(4));
        assert_eq!(point.bucket_counts.len(), HISTOGRAM_BOUNDS.len() + 1);
        assert_eq!(point.attributes[0].key, "k");
        let Some(metric::Data::Gauge(gauge)) = data.get(4) else {
            panic!()
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsInt(5))
        );
    }

    #[test]
    fn logs_carry_level_body_and_attributes() {
        let telemetry = parse(
            br#"{"logs":[{"value":"door opened","level":"WARN","timestamp":5,"attributes":[{"key":"n","value":3}]}]}"#,
            7,
        )
        .unwrap();
        let log = &telemetry.logs[0];
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.severity_text, "WARN");
        assert_eq!(log.time_unix_nano, 5);
        assert_eq!(
            log.body.clone().unwrap().value,
            Some(any_value::Value::StringValue("door opened".to_owned()))
        );
        assert_eq!(
            log.attributes[0].value.clone().unwrap().value,
            Some(any_value::Value::IntValue(3))
        );
    }

    #[test]
    fn the_sample_transform_output_is_accepted() {
        // What otel-transform writes (azure-compat section 7), with a real type.
        let payload = r#"{"metrics":[{"name":"wasm-placeholder","value":0.0,"metric_type":"f64_gauge","unit":null,"timestamp":null,"attributes":null}]}"#;
        assert!(parse(payload.as_bytes(), 1).is_ok());
    }

    #[test]
    fn problems_come_with_their_json_path() {
        assert_eq!(problems("nope"), [""]);
        assert_eq!(problems("[]"), [""]);
        assert_eq!(problems("{}"), [""]);
        assert_eq!(problems(r#"{"metrics":[]}"#), [""]);
        assert_eq!(problems(r#"{"metrics":{}}"#), ["/metrics"]);
        assert_eq!(
            problems(
                r#"{"metrics":[{"name":"a","type":"u64_counter","value":1},{"type":"gauge","value":"x"}]}"#
            ),
            ["/metrics/1/name", "/metrics/1/type"]
        );
        assert_eq!(
            problems(r#"{"metrics":[{"name":"a","metric_type":"f64_sum","value":1}]}"#),
            ["/metrics/0/metric_type"]
        );
        assert_eq!(
            problems(r#"{"metrics":[{"name":"a","type":"u64_counter","value":-1}]}"#),
            ["/metrics/0/value"]
        );
        assert_eq!(
            problems(r#"{"metrics":[{"name":"a","type":"i64_gauge","value":1.5}]}"#),
            ["/metrics/0/value"]
        );
        assert_eq!(
            problems(
                r#"{"metrics":[{"name":"a","type":"f64_counter","metric_type":"u64_counter","value":1}]}"#
            ),
            ["/metrics/0/type"]
        );
        assert_eq!(
            problems(
                r#"{"logs":[{"value":"x","level":"loud","attributes":[{"key":"","value":1},{"key":"k"}]}]}"#
            ),
            [
                "/logs/0/level",
                "/logs/0/attributes/0/key",
                "/logs/0/attributes/1/value"
            ]
        );
        assert_eq!(
            problems(r#"{"logs":[{"level":"info"}]}"#),
            ["/logs/0/value"]
        );
    }
}
