//! Deployments as timely dataflows, over real components: graph semantics, time (frontier,
//! windows, late and future messages, delay clamping), failure containment, acknowledgements.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_api::graph::parse_graph;
use weir_api::{DataItem, Hlc, HlcClock, Message, TenantId};
use weir_executor::dataflow::{
    DataflowRuntime, DataflowSettings, Delivery, DeployError, Deployment, DirectoryModules,
    FrontierPolicy, SinkOutput, TenantContext, prepare,
};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{EngineConfig, OperatorEngine};
use weir_state::MemoryStateStore;
use weir_tenants::Quotas;

struct Fixture {
    tokio: tokio::runtime::Runtime,
    runtime: DataflowRuntime,
    engine: OperatorEngine,
    logs: Arc<MemoryLogSink>,
    tenant: TenantContext,
}

impl Fixture {
    fn new() -> Self {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let runtime = DataflowRuntime::start(1, tokio.handle().clone()).unwrap();
        let engine = OperatorEngine::new(&EngineConfig::default()).unwrap();
        let logs = Arc::new(MemoryLogSink::new(1000));
        let tenant = TenantContext::new(
            TenantId::new("dataflow").unwrap(),
            Quotas::default(),
            Arc::new(MemoryStateStore::default()),
            logs.clone(),
            Arc::new(MetricsRegistry::new(100)),
            Arc::new(HlcClock::new("executor-test")),
        );
        Self {
            tokio,
            runtime,
            engine,
            logs,
            tenant,
        }
    }

    fn try_deploy(
        &self,
        yaml: &str,
        configuration: &[(&str, &str)],
        settings: DataflowSettings,
    ) -> Result<Deployment, DeployError> {
        let graph = parse_graph(yaml).unwrap();
        let configuration: BTreeMap<String, String> = configuration
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let modules = DirectoryModules::new(weir_guests::Guest::dir(), self.engine.clone());
        let prepared = self.tokio.block_on(prepare(
            "test-deployment",
            &graph,
            &configuration,
            &self.tenant,
            &modules,
            &self.engine,
            settings,
            "executor-test",
        ))?;
        self.runtime.deploy(prepared)
    }

    /// Gives the tenant `quotas`: for the deployments prepared next and the nodes running.
    fn set_quotas(&self, quotas: Quotas) {
        self.tenant.live_quotas.set(quotas);
    }

    fn deploy(&self, yaml: &str, settings: DataflowSettings) -> Deployment {
        self.try_deploy(yaml, &[], settings).unwrap()
    }
}

fn event_time() -> DataflowSettings {
    DataflowSettings {
        frontier: FrontierPolicy::EventTime,
        ..DataflowSettings::default()
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn message_at(millis: u64, payload: &str) -> DataItem {
    DataItem::Message(Message::new(
        Hlc::at(Duration::from_millis(millis), "sensor"),
        "probe/1",
        payload.to_owned(),
    ))
}

type Deliveries = Arc<Mutex<Vec<Delivery>>>;

fn send(deployment: &Deployment, item: DataItem) -> Deliveries {
    let deliveries: Deliveries = Arc::default();
    let record = deliveries.clone();
    deployment
        .source("source")
        .unwrap()
        .send(item, move |d| record.lock().unwrap().push(d))
        .unwrap();
    deliveries
}

fn payload(output: &SinkOutput) -> String {
    match &output.item {
        DataItem::Message(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn graph(body: &str) -> String {
    format!(
        "metadata: {{$schema: s, name: test, version: '1'}}\nmoduleRequirements: {{apiVersion: '1.1.0', runtimeVersion: '1.1.0'}}\n{body}"
    )
}

/// A map that spins on payload `spin` until fuel or the deadline stops it.
const SPINNER: &str = "
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: spin, module: spin_loop }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: spin } }
  - { from: { name: spin }, to: { name: sink } }
";

/// The complex pipeline of azure-compat §3.3 without the snapshot (inference) arm.
const COMPLEX: &str = "
operations:
  - { operationType: source, name: source }
  - { operationType: delay, name: module-window/delay, module: 'azure-samples/explore-iot-operations/window:1.0.0' }
  - { operationType: branch, name: module-temperature/branch, module: 'azure-samples/explore-iot-operations/temperature:1.0.0' }
  - { operationType: map, name: module-temperature/map, module: 'azure-samples/explore-iot-operations/temperature:1.0.0' }
  - { operationType: filter, name: module-temperature/filter, module: 'azure-samples/explore-iot-operations/temperature:1.0.0' }
  - { operationType: accumulate, name: module-temperature/accumulate, module: 'azure-samples/explore-iot-operations/temperature:1.0.0' }
  - { operationType: accumulate, name: module-humidity/accumulate, module: 'azure-samples/explore-iot-operations/humidity:1.0.0' }
  - { operationType: concatenate, name: concatenate1 }
  - { operationType: accumulate, name: module-collection/accumulate, module: 'azure-samples/explore-iot-operations/collection:1.0.0' }
  - { operationType: map, name: module-enrichment/map, module: 'azure-samples/explore-iot-operations/enrichment:1.0.0' }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: module-window/delay } }
  - { from: { name: module-window/delay }, to: { name: module-temperature/branch } }
  - { from: { name: module-temperature/branch, arm: 'True' }, to: { name: module-temperature/map } }
  - { from: { name: module-temperature/branch, arm: 'False' }, to: { name: module-humidity/accumulate } }
  - { from: { name: module-temperature/map }, to: { name: module-temperature/filter } }
  - { from: { name: module-temperature/filter }, to: { name: module-temperature/accumulate } }
  - { from: { name: module-temperature/accumulate }, to: { name: concatenate1 } }
  - { from: { name: module-humidity/accumulate }, to: { name: concatenate1 } }
  - { from: { name: concatenate1 }, to: { name: module-collection/accumulate } }
  - { from: { name: module-collection/accumulate }, to: { name: module-enrichment/map } }
  - { from: { name: module-enrichment/map }, to: { name: sink } }
";

#[test]
fn a_simple_graph_converts_and_acknowledges_after_the_sink_accepts() {
    let fixture = Fixture::new();
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/tests/graphs/valid/graph-simple.yaml"
    ))
    .unwrap();
    let mut deployment = fixture.deploy(&yaml, event_time());
    let at = 1_700_000_000_123;
    let deliveries = send(
        &deployment,
        message_at(at, r#"{"temperature":{"value":1209,"unit":"F"}}"#),
    );
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(10)));
    let output = deployment.outputs().try_pop().expect("one output");
    assert_eq!(
        payload(&output),
        r#"{"temperature":{"value":653.8888888888889,"count":0,"max":0.0,"min":0.0,"average":0.0,"last":0.0,"unit":"C","overtemp":false}}"#
    );
    assert_eq!(output.time, at);
    let DataItem::Message(message) = &output.item else {
        unreachable!()
    };
    // The outgoing `__ts` is a reading of the deployment's own HLC: at or after the item's
    // time, from this executor (azure-compat §11 row 11).
    let stamp = weir_api::Hlc::parse_ts(
        std::str::from_utf8(message.user_property(b"__ts").unwrap()).unwrap(),
    )
    .unwrap();
    assert!(stamp.millis() >= 1_700_000_000_123, "{stamp}");
    assert_eq!(stamp.node_id, "executor-test");
    assert!(
        deliveries.lock().unwrap().is_empty(),
        "not acknowledged before the sink's consumer accepted"
    );
    output.accept();
    assert_eq!(*deliveries.lock().unwrap(), [Delivery::Processed]);
}

#[test]
fn the_complex_pipeline_emits_its_window_without_further_input() {
    let fixture = Fixture::new();
    let deployment = fixture.deploy(&graph(COMPLEX), DataflowSettings::default());
    let now = now_ms();
    send(
        &deployment,
        message_at(now, r#"{"temperature":{"value":1209,"unit":"F"}}"#),
    );
    send(&deployment, message_at(now, r#"{"humidity":{"value":85}}"#));
    // The window ends at the next 10 s boundary; the wall-clock frontier closes it.
    let output = deployment
        .outputs()
        .pop_timeout(Duration::from_secs(15))
        .expect("the window closed on its own");
    assert_eq!(output.time % 10_000, 0, "emitted at the window's end");
    assert_eq!(
        payload(&output),
        r#"{"temperature":[{"count":1,"max":653.8888888888889,"min":653.8888888888889,"average":653.8888888888889,"last":653.8888888888889,"unit":"C","overtemp":true}],"humidity":[{"count":1,"max":85.0,"min":85.0,"average":85.0,"last":85.0}],"object":[]}"#
    );
    assert!(
        deployment
            .outputs()
            .pop_timeout(Duration::from_millis(300))
            .is_none(),
        "one result per window"
    );
    assert!(deployment.dead_letters().is_empty());
}

/// An output as compared across replays: time, topic, payload, user properties.
type Observed = (u64, String, String, Vec<(String, String)>);

fn replay(fixture: &Fixture) -> Vec<Observed> {
    let mut deployment = fixture.deploy(&graph(COMPLEX), event_time());
    let base = 1_700_000_000_000; // a window boundary
    let inputs = [
        (base + 1_000, r#"{"temperature":{"value":100,"unit":"F"}}"#),
        (base + 2_000, r#"{"humidity":{"value":40}}"#),
        (base + 3_000, r#"{"temperature":{"value":212,"unit":"F"}}"#),
        (base + 12_000, r#"{"temperature":{"value":50,"unit":"F"}}"#),
        (base + 15_000, r#"{"humidity":{"value":90}}"#),
    ];
    for (at, body) in inputs {
        send(&deployment, message_at(at, body));
    }
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(20)));
    deployment
        .outputs()
        .drain()
        .into_iter()
        .map(|output| {
            let time = output.time;
            let DataItem::Message(m) = output.accept() else {
                panic!("message expected")
            };
            let text = |b: &bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
            (
                time,
                text(&m.topic),
                text(&m.payload),
                m.user_properties
                    .iter()
                    .map(|(k, v)| (text(k), text(v)))
                    .collect(),
            )
        })
        .collect()
}

/// The outputs without their outgoing `__ts` (a reading of the deployment's clock, which
/// differs run to run), after checking those stamps are distinct and increasing.
fn without_stamps(outputs: Vec<Observed>) -> Vec<Observed> {
    let stamps: Vec<weir_api::Hlc> = outputs
        .iter()
        .map(|(.., properties)| {
            let (_, ts) = properties.iter().find(|(k, _)| k == "__ts").unwrap();
            weir_api::Hlc::parse_ts(ts).unwrap()
        })
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "outgoing stamps must increase: {stamps:?}"
    );
    outputs
        .into_iter()
        .map(|(time, topic, payload, properties)| {
            let kept = properties
                .into_iter()
                .filter(|(k, _)| k != "__ts")
                .collect();
            (time, topic, payload, kept)
        })
        .collect()
}

#[test]
fn replaying_the_same_timestamped_input_gives_identical_outputs() {
    let fixture = Fixture::new();
    let first = without_stamps(replay(&fixture));
    let second = without_stamps(replay(&fixture));
    assert_eq!(first.len(), 2, "two windows: {first:?}");
    assert_eq!(first, second);
    assert!(
        first[0].2.contains(r#""humidity":[{"count":1,"max":40.0"#),
        "{:?}",
        first[0]
    );
}

#[test]
fn a_trap_in_a_window_dead_letters_that_message_and_the_window_still_closes() {
    let fixture = Fixture::new();
    let yaml = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: delay, name: window, module: window }
  - { operationType: accumulate, name: stats, module: temperature }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: window } }
  - { from: { name: window }, to: { name: stats } }
  - { from: { name: stats }, to: { name: sink } }
",
    );
    let mut deployment = fixture.deploy(&yaml, event_time());
    let base = 1_700_000_000_000;
    let good = send(
        &deployment,
        message_at(base + 1, r#"{"temperature":{"value":10,"unit":"C"}}"#),
    );
    let bad = send(
        &deployment,
        message_at(base + 2, r#"{"temperature":{"unit":"C"}}"#),
    );
    send(
        &deployment,
        message_at(base + 3, r#"{"temperature":{"value":30,"unit":"C"}}"#),
    );
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(10)));
    let outputs = deployment.outputs().drain();
    assert_eq!(outputs.len(), 1);
    assert_eq!(
        payload(&outputs[0]),
        r#"{"temperature":{"count":2,"max":30,"min":10,"average":20,"last":30,"unit":"C"}}"#
    );
    let letters = deployment.dead_letters().drain();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].node.as_str(), letters[0].reason.as_str()),
        ("stats", "trap")
    );
    let DataItem::Message(input) = &letters[0].input else {
        panic!()
    };
    assert_eq!(input.payload, r#"{"temperature":{"unit":"C"}}"#);
    assert!(bad.lock().unwrap().is_empty() && good.lock().unwrap().is_empty());
    drop(letters);
    assert_eq!(
        *bad.lock().unwrap(),
        [Delivery::Processed],
        "a dead letter accepted is a processed message"
    );
    drop(outputs);
    assert_eq!(*good.lock().unwrap(), [Delivery::Processed]);
}

const ECHO_GRAPH: &str = "
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: echo, module: echo }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: echo } }
  - { from: { name: echo }, to: { name: sink } }
";

#[test]
fn a_late_message_is_processed_at_the_frontier_and_counted() {
    let fixture = Fixture::new();
    let mut deployment = fixture.deploy(&graph(ECHO_GRAPH), event_time());
    let base = 1_700_000_010_000;
    send(&deployment, message_at(base, "on time"));
    let first = deployment
        .outputs()
        .pop_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(first.time, base);
    send(&deployment, message_at(base - 5_000, "late"));
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(5)));
    let late = deployment.outputs().try_pop().unwrap();
    assert_eq!((payload(&late).as_str(), late.time), ("late", base));
    assert_eq!(deployment.stats().late.load(Ordering::Relaxed), 1);
}

#[test]
fn a_ts_too_far_in_the_future_goes_to_the_dead_letters_as_clock_drift() {
    let fixture = Fixture::new();
    let mut deployment = fixture.deploy(&graph(ECHO_GRAPH), event_time());
    let deliveries = send(
        &deployment,
        message_at(now_ms() + 120_000, "from the future"),
    );
    send(&deployment, message_at(now_ms(), "now"));
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(5)));
    let letter = deployment.dead_letters().try_pop().unwrap();
    assert_eq!(
        (letter.node.as_str(), letter.reason.as_str()),
        ("source", "clock_drift")
    );
    assert_eq!(deployment.stats().clock_drift.load(Ordering::Relaxed), 1);
    assert_eq!(deployment.outputs().drain().len(), 1);
    letter.accept();
    assert_eq!(*deliveries.lock().unwrap(), [Delivery::Processed]);
}

#[test]
fn a_delay_returning_an_earlier_time_is_clamped_logged_and_counted() {
    let fixture = Fixture::new();
    let yaml = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: delay, name: rewind, module: rewind }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: rewind } }
  - { from: { name: rewind }, to: { name: sink } }
",
    );
    let mut deployment = fixture.deploy(&yaml, event_time());
    let at = 1_700_000_000_500;
    send(&deployment, message_at(at, "x"));
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(5)));
    assert_eq!(deployment.outputs().try_pop().unwrap().time, at);
    assert_eq!(deployment.stats().delay_clamped.load(Ordering::Relaxed), 1);
    let log: Vec<String> = fixture
        .logs
        .lines(&fixture.tenant.tenant)
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(log.iter().any(|l| l.contains("clamped")), "{log:?}");
}

#[test]
fn init_returning_false_fails_the_deployment_naming_the_node() {
    let fixture = Fixture::new();
    let yaml = graph(
        "
moduleConfigurations:
  - name: picky
    parameters:
      refuse_init: { name: refuse_init, default: 'true' }
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: picky, module: trap }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: picky } }
  - { from: { name: picky }, to: { name: sink } }
",
    );
    let error = fixture.try_deploy(&yaml, &[], event_time()).unwrap_err();
    assert!(
        matches!(&error, DeployError::InitRejected { node } if node == "picky"),
        "{error}"
    );
    assert!(
        fixture
            .try_deploy(&yaml, &[("refuse_init", "false")], event_time())
            .is_ok(),
        "configuration overrides the default"
    );
}

#[test]
fn a_required_parameter_without_a_value_fails_the_deployment_naming_node_and_key() {
    let fixture = Fixture::new();
    let yaml = graph(
        "
moduleConfigurations:
  - name: bounds
    parameters:
      temperature_upper_bound: { name: temperature_upper_bound, required: true }
      temperature_lower_bound: { name: temperature_lower_bound, default: '-10' }
operations:
  - { operationType: source, name: source }
  - { operationType: filter, name: bounds, module: 'temperature:1.0.0' }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: bounds } }
  - { from: { name: bounds }, to: { name: sink } }
",
    );
    let error = fixture
        .try_deploy(&yaml, &[("unrelated", "x")], event_time())
        .unwrap_err();
    let DeployError::Invalid(problems) = &error else {
        panic!("{error}")
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].node, "bounds");
    assert!(
        problems[0].message.contains("\"temperature_upper_bound\""),
        "{}",
        problems[0].message
    );
    let mut deployment = fixture
        .try_deploy(&yaml, &[("temperature_upper_bound", "25")], event_time())
        .unwrap();
    send(
        &deployment,
        message_at(
            1_700_000_000_000,
            r#"{"temperature":{"value":20,"unit":"C"}}"#,
        ),
    );
    send(
        &deployment,
        message_at(
            1_700_000_000_000,
            r#"{"temperature":{"value":30,"unit":"C"}}"#,
        ),
    );
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(5)));
    assert_eq!(
        deployment.outputs().drain().len(),
        1,
        "the configured bound applies"
    );
}

#[test]
fn a_missing_module_is_refused_with_every_problem() {
    let fixture = Fixture::new();
    let yaml = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: a, module: 'nowhere:1.0.0' }
  - { operationType: accumulate, name: b, module: echo }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: a } }
  - { from: { name: a }, to: { name: b } }
  - { from: { name: b }, to: { name: sink } }
",
    );
    let DeployError::Invalid(problems) = fixture.try_deploy(&yaml, &[], event_time()).unwrap_err()
    else {
        panic!()
    };
    let nodes: Vec<&str> = problems.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes, ["a", "b"]);
    assert!(
        problems[1]
            .message
            .contains("does not export the accumulate interface")
    );
}

#[test]
fn filtered_messages_are_acknowledged_and_undeployed_ones_are_abandoned() {
    let fixture = Fixture::new();
    let filter = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: filter, name: f, module: temperature }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: f } }
  - { from: { name: f }, to: { name: sink } }
",
    );
    let mut deployment = fixture.deploy(&filter, event_time());
    let dropped = send(
        &deployment,
        message_at(1_700_000_000_000, r#"{"humidity":{"value":1}}"#),
    );
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(5)));
    assert_eq!(*dropped.lock().unwrap(), [Delivery::Processed]);

    // A window that has not closed yet holds its message; undeploying abandons it.
    let windowed = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: delay, name: window, module: window }
  - { operationType: accumulate, name: stats, module: temperature }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: window } }
  - { from: { name: window }, to: { name: stats } }
  - { from: { name: stats }, to: { name: sink } }
",
    );
    let deployment = fixture.deploy(&windowed, DataflowSettings::default());
    let held = send(
        &deployment,
        message_at(now_ms(), r#"{"temperature":{"value":1,"unit":"C"}}"#),
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(deployment);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        *held.lock().unwrap(),
        [Delivery::Abandoned],
        "not acknowledged: the broker redelivers it"
    );
}

#[test]
fn a_spinning_deployment_does_not_starve_another_on_the_same_worker() {
    let fixture = Fixture::new();
    fixture.set_quotas(Quotas {
        fuel_per_message: u64::MAX,
        call_timeout: Duration::from_millis(400),
        ..Quotas::default()
    });
    let spinner = graph(SPINNER);
    let spinning = fixture.deploy(&spinner, DataflowSettings::default());
    let neighbour = fixture.deploy(&graph(ECHO_GRAPH), DataflowSettings::default());
    for _ in 0..3 {
        send(&spinning, message_at(now_ms(), "spin"));
    }
    std::thread::sleep(Duration::from_millis(50));
    let started = std::time::Instant::now();
    send(&neighbour, message_at(now_ms(), "hello"));
    let output = neighbour
        .outputs()
        .pop_timeout(Duration::from_secs(5))
        .expect("the neighbour ran");
    assert_eq!(payload(&output), "hello");
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "served while the spinner ran: {:?}",
        started.elapsed()
    );
    let letter = spinning
        .dead_letters()
        .pop_timeout(Duration::from_secs(5))
        .expect("the spinner hit its deadline");
    assert_eq!(letter.reason, "deadline");
}

#[test]
fn a_preview_graph_runs_preview_modules() {
    let fixture = Fixture::new();
    let yaml = "
moduleRequirements: { apiVersion: '0.2.0', hostlibVersion: '0.2.0' }
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: echo, module: 'preview-echo:1.0.0' }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: echo } }
  - { from: { name: echo }, to: { name: sink } }
";
    let mut deployment = fixture.deploy(yaml, event_time());
    send(&deployment, message_at(1_700_000_000_000, "old"));
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(5)));
    assert_eq!(
        payload(&deployment.outputs().try_pop().unwrap()),
        "preview:old"
    );
    let ga_module_in_preview_graph = yaml.replace("preview-echo:1.0.0", "echo");
    let DeployError::Invalid(problems) = fixture
        .try_deploy(&ga_module_in_preview_graph, &[], event_time())
        .unwrap_err()
    else {
        panic!()
    };
    assert!(
        problems[0].message.contains("binds Preview modules"),
        "{}",
        problems[0].message
    );
}

#[test]
fn dropping_a_deployment_stops_exactly_its_dataflow_and_abandons_its_queued_work() {
    let fixture = Fixture::new();
    fixture.set_quotas(Quotas {
        fuel_per_message: 50_000_000,
        ..Quotas::default()
    });
    let spinner = graph(SPINNER);
    // All three share the one worker; the first installed is its dataflow 0.
    let first = fixture.deploy(&graph(ECHO_GRAPH), DataflowSettings::default());
    let spinning = fixture.deploy(&spinner, DataflowSettings::default());
    let third = fixture.deploy(&graph(ECHO_GRAPH), DataflowSettings::default());
    let queued: Vec<Deliveries> = (0..50)
        .map(|_| send(&spinning, message_at(now_ms(), "spin")))
        .collect();
    let dropped_at = std::time::Instant::now();
    drop(spinning);
    let deadline = dropped_at + Duration::from_secs(5);
    while queued.iter().any(|d| d.lock().unwrap().is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "queued work still runs after the drop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let abandoned = queued
        .iter()
        .filter(|d| *d.lock().unwrap() == [Delivery::Abandoned])
        .count();
    assert!(abandoned >= 45, "only {abandoned} of 50 abandoned");
    for (name, deployment) in [("first", &first), ("third", &third)] {
        send(deployment, message_at(now_ms(), name));
        let output = deployment
            .outputs()
            .pop_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{name} stopped with its neighbour"));
        assert_eq!(payload(&output), name);
    }
    // The dropped dataflow is gone, not merely muted: its queued spins never ran.
    let charged = fixture.tenant.fuel.charged();
    assert!(
        charged <= 5 * 50_000_000,
        "{charged} fuel: queued spins still ran"
    );
    for (name, deployment) in [("first", &first), ("third", &third)] {
        send(deployment, message_at(now_ms(), name));
        let output = deployment
            .outputs()
            .pop_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{name} stopped with its neighbour"));
        assert_eq!(payload(&output), name);
    }
}

#[test]
fn one_bad_item_in_a_batched_call_dead_letters_only_itself() {
    let fixture = Fixture::new();
    let yaml = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: map, name: map, module: temperature }
  - { operationType: filter, name: filter, module: temperature }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: map } }
  - { from: { name: map }, to: { name: filter } }
  - { from: { name: filter }, to: { name: sink } }
",
    );
    let mut deployment = fixture.deploy(&yaml, event_time());
    // 40 messages of one millisecond, offered at once: one timely batch, one call batch per node.
    let at = 1_700_000_000_000;
    let payloads: Vec<String> = (0..40)
        .map(|i| match i {
            // The map refuses it (not JSON): an operator error.
            7 => "not json".to_owned(),
            // The map traps on it (a Fahrenheit reading without a value): its instance is
            // replaced in the middle of the batch.
            20 => r#"{"temperature":{"unit":"F"}}"#.to_owned(),
            // The filter drops it (above the upper bound).
            30 => r#"{"temperature":{"value":5000,"unit":"C"}}"#.to_owned(),
            i => format!(r#"{{"temperature":{{"value":{i},"unit":"C"}}}}"#),
        })
        .collect();
    let deliveries: Vec<Deliveries> = payloads.iter().map(|_| Arc::default()).collect();
    let batch: Vec<weir_executor::dataflow::Offer> = payloads
        .iter()
        .zip(&deliveries)
        .map(|(payload, record)| {
            let record = record.clone();
            let on_done: Box<dyn FnOnce(Delivery) + Send> =
                Box::new(move |d| record.lock().unwrap().push(d));
            (message_at(at, payload), on_done)
        })
        .collect();
    deployment
        .source("source")
        .unwrap()
        .try_send_all(batch)
        .unwrap();
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(30)));

    let outputs = deployment.outputs().drain();
    let expected: Vec<String> = (0..40)
        .filter(|i| ![7, 20, 30].contains(i))
        .map(|i| format!(r#"{{"temperature":{{"value":{i},"unit":"C"}}}}"#))
        .collect();
    assert_eq!(outputs.iter().map(payload).collect::<Vec<_>>(), expected);
    let letters = deployment.dead_letters().drain();
    let seen: Vec<(&str, &str, String)> = letters
        .iter()
        .map(|l| {
            let DataItem::Message(m) = &l.input else {
                panic!("a message was dead-lettered as {:?}", l.input)
            };
            (
                l.node.as_str(),
                l.reason.as_str(),
                String::from_utf8(m.payload.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("map", "operator_error", payloads[7].clone()),
            ("map", "trap", payloads[20].clone()),
        ]
    );
    let map = deployment.node_counters("map").unwrap();
    assert_eq!(map.calls.load(Ordering::Relaxed), 40);
    assert_eq!(map.failures.load(Ordering::Relaxed), 2);
    assert_eq!(
        map.instantiations.load(Ordering::Relaxed),
        2,
        "the trap replaced the instance once"
    );
    assert_eq!(
        deployment
            .node_counters("filter")
            .unwrap()
            .calls
            .load(Ordering::Relaxed),
        38
    );
    drop(outputs);
    drop(letters);
    for (i, delivered) in deliveries.iter().enumerate() {
        assert_eq!(
            *delivered.lock().unwrap(),
            [Delivery::Processed],
            "message {i} is acknowledged once"
        );
    }
}

/// `max_in_flight` far above `intake_capacity` (`weir serve --max-in-flight`): while the sink
/// takes nothing, the channel in front of the source fills long before the intake's places
/// run out. A non-blocking sender (a connector) must be told "full" then, and every message it
/// offered must come out once the sink takes again: none taken and then dropped.
#[test]
fn a_full_source_queue_under_a_large_max_in_flight_refuses_and_loses_nothing() {
    let fixture = Fixture::new();
    let settings = DataflowSettings {
        intake_capacity: 16,
        max_in_flight: Some(4096),
        output_capacity: 8,
        ..DataflowSettings::default()
    };
    let deployment = fixture.deploy(&graph(ECHO_GRAPH), settings);
    let source = deployment.source("source").unwrap();
    let total = 400;
    let deliveries: Vec<Deliveries> = (0..total).map(|_| Arc::default()).collect();
    let offer = |i: usize| {
        let record = deliveries[i].clone();
        source.try_send(message_at(now_ms(), &format!("m{i}")), move |d| {
            record.lock().unwrap().push(d);
        })
    };
    // The sink is "down": nothing is taken from the outputs, so the source holds back and its
    // channel fills. The intake (4096 places) is far from full when that happens.
    let mut next = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match offer(next) {
            Ok(()) => next += 1,
            Err(weir_executor::dataflow::SourceError::Full) => break,
            Err(other) => panic!("message {next} refused with {other:?} while the sink is down"),
        }
        assert!(
            next < total,
            "all {total} taken while the sink took nothing"
        );
        assert!(std::time::Instant::now() < deadline, "never refused");
    }
    assert!(next >= 16, "refused after only {next} messages");
    assert!(
        source.in_flight() < 4096,
        "the intake itself filled: {} in flight",
        source.in_flight()
    );
    // The sink comes back: a consumer accepts every output while the rest is offered, waiting
    // for room whenever the source is full.
    let outputs = deployment.outputs();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {total} outputs after the sink came back ({next} offered)",
            seen.len()
        );
        while let Some(output) = outputs.try_pop() {
            seen.push(payload(&output));
            output.accept();
        }
        if next < total {
            match offer(next) {
                Ok(()) => next += 1,
                Err(weir_executor::dataflow::SourceError::Full) => {
                    fixture.tokio.block_on(source.room());
                }
                Err(other) => panic!("message {next} refused with {other:?}"),
            }
        } else if let Some(output) = outputs.pop_timeout(Duration::from_millis(100)) {
            seen.push(payload(&output));
            output.accept();
        }
    }
    seen.sort_by_key(|p| p.strip_prefix('m').unwrap().parse::<usize>().unwrap());
    let expected: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected, "every message once");
    for (i, delivered) in deliveries.iter().enumerate() {
        assert_eq!(
            *delivered.lock().unwrap(),
            [Delivery::Processed],
            "message {i} is acknowledged once"
        );
    }
    assert_eq!(source.in_flight(), 0);
}

/// A reservation holds its places until it is used or dropped: a caller that reserves, then
/// finds another reason to refuse (the tenant's message rate), gives the places back whole.
#[test]
fn an_unused_reservation_gives_its_places_back() {
    let fixture = Fixture::new();
    let settings = DataflowSettings {
        intake_capacity: 8,
        ..DataflowSettings::default()
    };
    let deployment = fixture.deploy(&graph(ECHO_GRAPH), settings);
    let source = deployment.source("source").unwrap();
    let held = source.reserve(8, 8 * 64).expect("an empty intake has room");
    let refused = source.try_send(message_at(now_ms(), "m-over"), |_| {});
    assert!(
        matches!(refused, Err(weir_executor::dataflow::SourceError::Full)),
        "a place was free beside a reservation of all of them: {refused:?}"
    );
    drop(held);
    assert_eq!(source.in_flight(), 0, "the dropped reservation kept places");
    let delivered: Deliveries = Arc::default();
    for i in 0..8 {
        let record = delivered.clone();
        source
            .try_send(message_at(now_ms(), &format!("m{i}")), move |d| {
                record.lock().unwrap().push(d);
            })
            .expect("every place is free again");
    }
    let outputs = deployment.outputs();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen < 8 {
        assert!(std::time::Instant::now() < deadline, "{seen} of 8 outputs");
        match outputs.try_pop() {
            Some(output) => {
                output.accept();
                seen += 1;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A message at `millis` with Kafka record key `key` (user property `__key`).
fn keyed_message_at(millis: u64, key: &str, payload: &str) -> DataItem {
    let DataItem::Message(mut message) = message_at(millis, payload) else {
        unreachable!()
    };
    message
        .user_properties
        .push(("__key".into(), key.to_owned().into()));
    DataItem::Message(message)
}

/// A 10 s window and the temperature statistics, windows kept per key (`__key`), on event
/// time.
fn deploy_keyed_windows(fixture: &Fixture) -> Deployment {
    let yaml = graph(
        "
operations:
  - { operationType: source, name: source }
  - { operationType: delay, name: window, module: window }
  - { operationType: accumulate, name: stats, module: temperature }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: window } }
  - { from: { name: window }, to: { name: stats } }
  - { from: { name: stats }, to: { name: sink } }
",
    );
    fixture.deploy(
        &yaml,
        DataflowSettings {
            keyed_windows: true,
            ..event_time()
        },
    )
}

/// The window results of `inputs` (time, key, temperature) through a 10 s window and the
/// temperature statistics, keyed: `(window end in ms, __key) -> payload`.
fn keyed_windows(
    fixture: &Fixture,
    inputs: &[(u64, &str, i64)],
) -> BTreeMap<(u64, String), String> {
    let mut deployment = deploy_keyed_windows(fixture);
    for (millis, key, value) in inputs {
        send(
            &deployment,
            keyed_message_at(
                *millis,
                key,
                &format!(r#"{{"temperature":{{"value":{value},"unit":"C"}}}}"#),
            ),
        );
    }
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(10)));
    let mut results = BTreeMap::new();
    for output in deployment.outputs().drain() {
        let DataItem::Message(message) = &output.item else {
            panic!("expected a message")
        };
        let keys: Vec<_> = message
            .user_properties
            .iter()
            .filter(|(k, _)| k.as_ref() == b"__key")
            .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
            .collect();
        assert_eq!(keys.len(), 1, "each keyed result carries its key once");
        // The module stamps its result with its last input's time: the window it ends is the
        // next multiple of 10 s.
        let end = u64::try_from(message.timestamp.millis())
            .unwrap()
            .div_ceil(10_000)
            * 10_000;
        let previous = results.insert((end, keys[0].clone()), payload(&output));
        assert!(previous.is_none(), "one result per window and key");
    }
    results
}

#[test]
fn keyed_windows_fold_each_key_apart_and_split_inputs_give_the_same_results() {
    let fixture = Fixture::new();
    let base = 1_700_000_000_000;
    // Two keys over three 10 s windows, interleaved.
    let inputs: Vec<(u64, &str, i64)> = (0..30)
        .map(|i| {
            let key = if i % 2 == 0 { "a" } else { "b" };
            (base + i * 1_000 + 1, key, i64::try_from(i).unwrap())
        })
        .collect();
    let together = keyed_windows(&fixture, &inputs);
    assert_eq!(together.len(), 6, "3 windows x 2 keys: {together:?}");
    assert_eq!(
        together[&(base + 10_000, "a".to_owned())],
        r#"{"temperature":{"count":5,"max":8,"min":0,"average":4,"last":8,"unit":"C"}}"#
    );
    // Each key alone (as on two instances, one partition each): the very same results.
    let a: Vec<_> = inputs.iter().copied().filter(|i| i.1 == "a").collect();
    let b: Vec<_> = inputs.iter().copied().filter(|i| i.1 == "b").collect();
    let mut split = keyed_windows(&fixture, &a);
    split.extend(keyed_windows(&fixture, &b));
    assert_eq!(split, together);
}

#[test]
fn a_keyed_window_forgets_the_records_of_a_revoked_partition_assignment() {
    use weir_connectors::PartitionAssignment;
    let fixture = Fixture::new();
    let mut deployment = deploy_keyed_windows(&fixture);
    let base = 1_700_000_000_000;
    let send_under = |assignment: &PartitionAssignment, values: std::ops::Range<u64>| {
        let deliveries: Vec<Deliveries> = values.clone().map(|_| Arc::default()).collect();
        let batch = values
            .zip(&deliveries)
            .map(|(value, record)| {
                let record = record.clone();
                let on_done: Box<dyn FnOnce(Delivery) + Send> =
                    Box::new(move |d| record.lock().unwrap().push(d));
                let item = keyed_message_at(
                    base + value * 100 + 1,
                    "k",
                    &format!(r#"{{"temperature":{{"value":{value},"unit":"C"}}}}"#),
                );
                ((item, on_done), Some(assignment.clone()))
            })
            .collect();
        deployment
            .source("source")
            .unwrap()
            .try_send_all_assigned(batch)
            .unwrap();
        deliveries
    };
    // Records 0..3 read under a first assignment of the partition, which is then revoked;
    // its next assignment reads them again (from the committed offset) and then 3..5.
    let first = PartitionAssignment::new();
    let old = send_under(&first, 0..3);
    first.revoke();
    let second = PartitionAssignment::new();
    let new = send_under(&second, 0..5);
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(10)));
    let outputs = deployment.outputs().drain();
    assert_eq!(outputs.len(), 1);
    assert_eq!(
        payload(&outputs[0]),
        r#"{"temperature":{"count":5,"max":4,"min":0,"average":2,"last":4,"unit":"C"}}"#,
        "each record counted once"
    );
    drop(outputs);
    for record in &new {
        assert_eq!(*record.lock().unwrap(), [Delivery::Processed]);
    }
    for record in &old {
        assert!(
            record.lock().unwrap().is_empty(),
            "the revoked assignment's records are neither acknowledged nor abandoned"
        );
    }
}

#[test]
fn a_keyed_window_sends_a_record_without_a_key_to_the_dead_letters() {
    let fixture = Fixture::new();
    let mut deployment = deploy_keyed_windows(&fixture);
    let base = 1_700_000_000_000;
    send(
        &deployment,
        keyed_message_at(base + 1, "k", r#"{"temperature":{"value":4,"unit":"C"}}"#),
    );
    let unkeyed = send(
        &deployment,
        message_at(base + 2, r#"{"temperature":{"value":90,"unit":"C"}}"#),
    );
    deployment.close_sources();
    assert!(deployment.wait_complete(Duration::from_secs(10)));
    let letters = deployment.dead_letters().drain();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].node.as_str(), letters[0].reason.as_str()),
        ("stats", "missing_key")
    );
    assert!(letters[0].detail.contains("__key"), "{}", letters[0].detail);
    // The keyed record's window holds it alone.
    let outputs = deployment.outputs().drain();
    assert_eq!(outputs.len(), 1);
    assert!(
        payload(&outputs[0]).contains(r#""count":1"#),
        "{}",
        payload(&outputs[0])
    );
    // Nothing is lost: the dead letter, once taken, settles the record as processed.
    assert!(unkeyed.lock().unwrap().is_empty());
    drop(letters);
    assert_eq!(*unkeyed.lock().unwrap(), [Delivery::Processed]);
}
