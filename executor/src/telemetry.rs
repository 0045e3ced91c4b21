//! weir's own metrics of a tenant's deployments, named once here, read from the counters the
//! dataflow keeps (no second bookkeeping on the message path). Every series carries the
//! `deployment` label, node series also `node`; the tenant is added where series of several
//! tenants meet (the OTLP resource and point attribute `weir.tenant`, the `tenant` label of the
//! operator's `/metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use weir_api::rest::MetricSeries;

use crate::dataflow::{Deployment, LATENCY_BOUNDS_SECONDS};

/// Messages the deployment took from its source.
pub const MESSAGES_IN: &str = "weir_messages_in";
/// Messages the deployment handed to its sink.
pub const MESSAGES_OUT: &str = "weir_messages_out";
/// Messages sent to the dead letters.
pub const DEAD_LETTERS: &str = "weir_dead_letters";
/// Errors by `kind`: `late`, `clock_drift`, `delay_clamped` (per deployment) and
/// `operator_failure` (per node).
pub const ERRORS: &str = "weir_errors";
/// Fuel (wasmtime fuel units) a node's calls and `init`s burned.
pub const FUEL: &str = "weir_fuel";
/// Instances a node made again (after a trap or an idle release): instantiations but the first.
pub const INSTANCE_RESTARTS: &str = "weir_instance_restarts";
/// Time each call into a node's module took, in seconds.
pub const CALL_DURATION: &str = "weir_call_duration_seconds";
/// Messages waiting, by `queue`: `intake` (taken from the source, not settled) and `outputs`
/// (waiting for the sink).
pub const QUEUE_DEPTH: &str = "weir_queue_depth";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[expect(clippy::cast_precision_loss, reason = "exported as a float")]
fn series(name: &str, kind: &str, labels: BTreeMap<String, String>, value: u64) -> MetricSeries {
    MetricSeries {
        name: name.to_owned(),
        kind: kind.to_owned(),
        labels,
        value: value as f64,
        count: None,
        buckets: None,
        platform: true,
    }
}

/// The series of one running deployment `id` with operator nodes `nodes`, `intake` messages
/// in flight from its source and `outputs` waiting for its sink.
pub(crate) fn deployment_series(
    id: &str,
    deployment: &Deployment,
    nodes: &[String],
    intake: usize,
    outputs: usize,
) -> Vec<MetricSeries> {
    let stats = deployment.stats();
    let d = labels(&[("deployment", id)]);
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut all = vec![
        series(MESSAGES_IN, "counter", d.clone(), load(&stats.received)),
        series(MESSAGES_OUT, "counter", d.clone(), load(&stats.emitted)),
        series(DEAD_LETTERS, "counter", d, load(&stats.dead_lettered)),
    ];
    for (kind, counter) in [
        ("late", &stats.late),
        ("clock_drift", &stats.clock_drift),
        ("delay_clamped", &stats.delay_clamped),
    ] {
        all.push(series(
            ERRORS,
            "counter",
            labels(&[("deployment", id), ("kind", kind)]),
            load(counter),
        ));
    }
    for (queue, depth) in [("intake", intake), ("outputs", outputs)] {
        all.push(series(
            QUEUE_DEPTH,
            "gauge",
            labels(&[("deployment", id), ("queue", queue)]),
            depth as u64,
        ));
    }
    for node in nodes {
        let Some(counters) = deployment.node_counters(node) else {
            continue;
        };
        let n = labels(&[("deployment", id), ("node", node)]);
        all.push(series(
            ERRORS,
            "counter",
            labels(&[
                ("deployment", id),
                ("node", node),
                ("kind", "operator_failure"),
            ]),
            load(&counters.failures),
        ));
        all.push(series(FUEL, "counter", n.clone(), load(&counters.fuel)));
        all.push(series(
            INSTANCE_RESTARTS,
            "counter",
            n.clone(),
            load(&counters.instantiations).saturating_sub(1),
        ));
        let (counts, sum) = counters.call_latency.snapshot();
        let bounds = LATENCY_BOUNDS_SECONDS.iter().copied().map(Some);
        let buckets: Vec<(Option<f64>, u64)> = bounds
            .chain(std::iter::once(None))
            .zip(counts.iter().copied())
            .collect();
        all.push(MetricSeries {
            name: CALL_DURATION.to_owned(),
            kind: "histogram".to_owned(),
            labels: n,
            value: sum,
            count: Some(counts.iter().sum()),
            buckets: Some(buckets),
            platform: true,
        });
    }
    all
}
