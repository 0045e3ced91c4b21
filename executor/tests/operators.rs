//! The executor against real components built from `modules/`: every operator kind, the
//! examples' documented behaviour, the state store through the WIT, every hostile module (each
//! ends with its typed error, within its bound, and the next item on the same node succeeds),
//! module validation, the preview adapter and the walls between tenants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_api::{DataItem, Hlc, Message, TenantId};
use weir_executor::logs::{LogSink, MemoryLogSink};
use weir_executor::metrics::{MetricsRegistry, SeriesValue};
use weir_executor::{
    CallLimits, EngineConfig, ModuleConfiguration, ModuleError, NodeEnv, OperatorEngine,
    OperatorError, OperatorInstance, OperatorKind,
};
use weir_guests::Guest;
use weir_state::{MemoryStateStore, StateLimits, StateScope, StateStore};
use weir_tenants::Quotas;

fn engine() -> OperatorEngine {
    static ENGINE: OnceLock<OperatorEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| OperatorEngine::new(&EngineConfig::default()).expect("engine builds"))
        .clone()
}

/// One tenant's world: its state store, log and metrics, shared by all its nodes.
struct Tenant {
    id: TenantId,
    state: Arc<MemoryStateStore>,
    logs: Arc<MemoryLogSink>,
    metrics: Arc<MetricsRegistry>,
    limits: CallLimits,
}

impl Tenant {
    fn new(id: &str) -> Self {
        Self::sharing(
            id,
            Arc::new(MemoryStateStore::default()),
            Arc::new(MemoryLogSink::new(1000)),
            Arc::new(MetricsRegistry::new(100)),
        )
    }

    /// A tenant on the same platform services as others: isolation must come from scoping.
    fn sharing(
        id: &str,
        state: Arc<MemoryStateStore>,
        logs: Arc<MemoryLogSink>,
        metrics: Arc<MetricsRegistry>,
    ) -> Self {
        Self {
            id: TenantId::new(id).unwrap(),
            state,
            logs,
            metrics,
            limits: CallLimits::from_quotas(&Quotas::default()),
        }
    }

    fn scope(&self) -> StateScope {
        StateScope::new(
            self.id.clone(),
            StateLimits {
                max_keys: 100,
                max_bytes: 1 << 20,
                max_key_bytes: 256,
            },
        )
    }

    fn node(
        &self,
        guest: Guest,
        kind: OperatorKind,
        properties: &[(&str, &str)],
    ) -> OperatorInstance {
        let module = engine().load(&guest.bytes()).expect("guest validates");
        let env = Arc::new(NodeEnv {
            tenant: self.id.clone(),
            node: format!("test/{}/{kind}", guest.name()),
            state: self.state.clone(),
            state_scope: self.scope(),
            state_timeout_cap: Duration::from_secs(1),
            logs: self.logs.clone() as Arc<dyn LogSink>,
            metrics: self.metrics.clone(),
            max_log_line_bytes: 4096,
            quotas: None,
            inference_lane: weir_executor::InferenceLane::default(),
        });
        let configuration = ModuleConfiguration {
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            module_schemas: Vec::new(),
        };
        OperatorInstance::new(engine(), module, kind, configuration, env, self.limits)
            .expect("module exports the kind")
    }

    fn log_text(&self) -> String {
        self.logs
            .lines(&self.id)
            .iter()
            .map(|l| format!("{} {}\n", l.context, l.message))
            .collect()
    }
}

fn at(secs: u64) -> Hlc {
    Hlc::at(Duration::from_secs(secs), "source")
}

fn message(payload: &str) -> DataItem {
    DataItem::Message(Message::new(
        at(1_700_000_000),
        "probe/1",
        payload.to_owned(),
    ))
}

fn message_at(payload: &str, time: Hlc) -> DataItem {
    DataItem::Message(Message::new(time, "probe/1", payload.to_owned()))
}

fn payload(item: &DataItem) -> String {
    match item {
        DataItem::Message(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The first `staged` value of an accumulate: an empty message (azure-compat §11 row 3).
fn empty_staged() -> DataItem {
    DataItem::Message(Message::new(at(1_700_000_010), "", ""))
}

// ---- the examples' documented behaviour ----

#[tokio::test]
async fn temperature_map_converts_fahrenheit_to_the_full_celsius_struct() {
    let tenant = Tenant::new("t-map");
    let mut node = tenant.node(
        weir_guests::TEMPERATURE,
        OperatorKind::Map,
        &[("key1", "example")],
    );
    let mut input = Message::new(
        at(1_700_000_000),
        "probe/1",
        r#"{"temperature":{"value":1209,"unit":"F"}}"#,
    );
    input
        .user_properties
        .push((Bytes::from("test_property_key"), Bytes::from("old")));
    input
        .user_properties
        .push((Bytes::from("other"), Bytes::from("kept")));
    let output = node.map(&DataItem::Message(input)).await.unwrap();
    assert_eq!(
        payload(&output),
        r#"{"temperature":{"value":653.8888888888889,"count":0,"max":0.0,"min":0.0,"average":0.0,"last":0.0,"unit":"C","overtemp":false}}"#
    );
    let DataItem::Message(out) = output else {
        unreachable!()
    };
    assert_eq!(out.topic, "probe/1");
    assert_eq!(out.timestamp, at(1_700_000_000));
    assert_eq!(
        out.user_property(b"test_property_key").unwrap(),
        "new_value"
    );
    assert_eq!(out.user_property(b"other").unwrap(), "kept");
    assert!(
        tenant.log_text().contains("property key1=example"),
        "init saw its configuration"
    );
    let (series, _) = tenant.metrics.snapshot(&tenant.id);
    let fahrenheit = series.iter().find(|((name, labels), _)| {
        name == "requests" && labels.get("unit").map(String::as_str) == Some("Fahrenheit")
    });
    assert_eq!(fahrenheit.map(|(_, v)| v), Some(&SeriesValue::Counter(1)));
}

#[tokio::test]
async fn temperature_map_passes_celsius_through_and_rejects_non_json() {
    let tenant = Tenant::new("t-map-other");
    let mut node = tenant.node(weir_guests::TEMPERATURE, OperatorKind::Map, &[]);
    let celsius = r#"{"temperature":{"value":21.5,"unit":"C"}}"#;
    assert_eq!(
        payload(&node.map(&message(celsius)).await.unwrap()),
        celsius
    );
    let error = node.map(&message("not json")).await.unwrap_err();
    assert_eq!(
        error,
        OperatorError::Rejected {
            message: "Failed to parse payload as JSON".to_owned()
        }
    );
    assert_eq!(error.reason(), "operator_error");
    assert_eq!(
        payload(&node.map(&message(celsius)).await.unwrap()),
        celsius,
        "an err leaves the node usable"
    );
    assert_eq!(
        node.stats().instantiations,
        1,
        "an err does not replace the instance"
    );
}

#[tokio::test]
async fn temperature_branch_sends_temperature_to_true_and_humidity_to_false() {
    let tenant = Tenant::new("t-branch");
    let mut node = tenant.node(weir_guests::TEMPERATURE, OperatorKind::Branch, &[]);
    let time = at(1_700_000_000);
    assert!(
        node.branch(&time, &message(r#"{"temperature":{"value":1,"unit":"C"}}"#))
            .await
            .unwrap()
    );
    assert!(
        !node
            .branch(&time, &message(r#"{"humidity":{"value":40}}"#))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn temperature_filter_keeps_celsius_strictly_within_configured_bounds() {
    let tenant = Tenant::new("t-filter");
    let bounds = [
        ("temperature_lower_bound", "0"),
        ("temperature_upper_bound", "100"),
    ];
    let mut node = tenant.node(weir_guests::TEMPERATURE, OperatorKind::Filter, &bounds);
    for (reading, keep) in [
        (r#"{"temperature":{"value":50,"unit":"C"}}"#, true),
        (r#"{"temperature":{"value":100,"unit":"C"}}"#, false),
        (r#"{"temperature":{"value":-3,"unit":"C"}}"#, false),
        (r#"{"temperature":{"value":50,"unit":"F"}}"#, false),
        (r#"{"humidity":{"value":50}}"#, false),
    ] {
        assert_eq!(
            node.filter(&message(reading)).await.unwrap(),
            keep,
            "{reading}"
        );
    }
}

#[tokio::test]
async fn temperature_accumulate_folds_a_window_and_resumes_from_staged() {
    let tenant = Tenant::new("t-accumulate");
    let mut node = tenant.node(weir_guests::TEMPERATURE, OperatorKind::Accumulate, &[]);
    let first = [
        message_at(
            r#"{"temperature":{"value":10,"unit":"C"}}"#,
            at(1_700_000_001),
        ),
        message_at(
            r#"{"temperature":{"value":30,"unit":"C"}}"#,
            at(1_700_000_003),
        ),
    ];
    let staged = node.accumulate(&empty_staged(), &first).await.unwrap();
    assert_eq!(
        payload(&staged),
        r#"{"temperature":{"count":2,"max":30,"min":10,"average":20,"last":30,"unit":"C"}}"#
    );
    assert_eq!(
        staged.timestamp().unwrap().secs,
        1_700_000_003,
        "timestamp of the latest input"
    );
    let second = [message_at(
        r#"{"temperature":{"value":-4,"unit":"C"}}"#,
        at(1_700_000_002),
    )];
    let resumed = node.accumulate(&staged, &second).await.unwrap();
    assert_eq!(
        payload(&resumed),
        r#"{"temperature":{"count":3,"max":30,"min":-4,"average":12,"last":-4,"unit":"C"}}"#
    );
}

#[tokio::test]
async fn humidity_accumulate_counts_and_refuses_other_measurements() {
    let tenant = Tenant::new("t-humidity");
    let mut node = tenant.node(weir_guests::HUMIDITY, OperatorKind::Accumulate, &[]);
    let out = node
        .accumulate(&empty_staged(), &[message(r#"{"humidity":{"value":85}}"#)])
        .await
        .unwrap();
    assert_eq!(
        payload(&out),
        r#"{"humidity":{"count":1,"max":85,"min":85,"average":85,"last":85}}"#
    );
    let error = node
        .accumulate(
            &empty_staged(),
            &[message(r#"{"temperature":{"value":1,"unit":"C"}}"#)],
        )
        .await;
    assert!(
        matches!(error, Err(OperatorError::Rejected { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn window_delay_moves_items_to_the_end_of_their_ten_second_window() {
    let tenant = Tenant::new("t-window");
    let mut node = tenant.node(weir_guests::WINDOW, OperatorKind::Delay, &[]);
    let logical = Hlc {
        counter: 7,
        ..at(1_700_000_001)
    };
    let embedded = Hlc {
        nanos: 500_000_000,
        ..at(1_700_000_003)
    };
    let later = node
        .delay(&message_at("{}", embedded), &logical)
        .await
        .unwrap();
    assert_eq!(
        (later.secs, later.nanos, later.counter),
        (1_700_000_010, 0, 0)
    );
    assert_eq!(
        later.node_id, "source",
        "node id of the dataflow time is kept"
    );
    let aligned = node
        .delay(&message_at("{}", at(1_700_000_020)), &logical)
        .await
        .unwrap();
    assert_eq!(aligned.secs, 1_700_000_020, "aligned times stay");
    let bare = node
        .delay(&DataItem::Bytes(Bytes::from_static(b"x")), &logical)
        .await
        .unwrap();
    assert_eq!(bare.secs, 1_700_000_010, "bytes use the dataflow time");
}

#[tokio::test]
async fn collection_accumulate_gathers_one_window_into_sensor_data() {
    let tenant = Tenant::new("t-collection");
    let mut node = tenant.node(weir_guests::COLLECTION, OperatorKind::Accumulate, &[]);
    let inputs = [
        message(
            r#"{"temperature":{"count":1,"max":653.8888888888889,"min":653.8888888888889,"average":653.8888888888889,"last":653.8888888888889,"unit":"C"}}"#,
        ),
        message(r#"{"humidity":{"count":1,"max":85,"min":85,"average":85,"last":85}}"#),
    ];
    let out = node.accumulate(&empty_staged(), &inputs).await.unwrap();
    assert_eq!(
        payload(&out),
        r#"{"sensor_data":{"temperature":[{"count":1,"max":653.8888888888889,"min":653.8888888888889,"average":653.8888888888889,"last":653.8888888888889,"unit":"C","overtemp":false}],"humidity":[{"count":1,"max":85.0,"min":85.0,"average":85.0,"last":85.0}],"object":[]}}"#
    );
}

#[tokio::test]
async fn enrichment_flags_overtemp_and_keeps_its_state_in_the_tenant_store() {
    let tenant = Tenant::new("t-enrich");
    let mut node = tenant.node(weir_guests::ENRICHMENT, OperatorKind::Map, &[]);
    let data = r#"{"sensor_data":{"temperature":[{"count":1,"max":653.8,"min":653.8,"average":653.8,"last":653.8,"unit":"C"}],"humidity":[{"count":1,"max":85,"min":85,"average":85,"last":85}],"object":[]}}"#;
    let out = node.map(&message(data)).await.unwrap();
    assert_eq!(
        payload(&out),
        r#"{"temperature":[{"count":1,"max":653.8,"min":653.8,"average":653.8,"last":653.8,"unit":"C","overtemp":true}],"humidity":[{"count":1,"max":85.0,"min":85.0,"average":85.0,"last":85.0}],"object":[]}"#
    );
    let DataItem::Message(out) = out else {
        unreachable!()
    };
    assert_eq!(out.topic, "sensors");
    node.map(&message(data)).await.unwrap();
    let scope = tenant.scope();
    let value = |key: &'static [u8]| {
        let store = tenant.state.clone();
        let scope = scope.clone();
        async move {
            store
                .get(&scope, key)
                .await
                .unwrap()
                .value
                .map(|v| String::from_utf8(v).unwrap())
        }
    };
    assert_eq!(value(b"overtemp").await.as_deref(), Some("true"));
    assert_eq!(
        value(b"overtemp_count").await.as_deref(),
        Some("2"),
        "incremented under the fenced lock"
    );
    assert_eq!(value(b"wet_flag").await.as_deref(), Some("85"));
    assert_eq!(value(b"lock").await, None, "the lock is released with vdel");
}

// ---- hostile modules: typed error, within bound, next item succeeds ----

#[tokio::test]
async fn endless_loop_ends_with_fuel_exhausted_in_under_two_seconds() {
    let tenant = Tenant::new("t-spin-fuel");
    let mut node = tenant.node(weir_guests::SPIN_LOOP, OperatorKind::Map, &[]);
    node.start().await.unwrap();
    let started = Instant::now();
    let error = node.map(&message("spin")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        error,
        OperatorError::FuelExhausted {
            fuel: tenant.limits.fuel
        }
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        payload(&node.map(&message("after")).await.unwrap()),
        "after"
    );
    assert_eq!(
        node.stats().instantiations,
        2,
        "the poisoned instance was replaced"
    );
}

#[tokio::test]
async fn endless_loop_with_unbounded_fuel_hits_the_deadline() {
    let mut tenant = Tenant::new("t-spin-deadline");
    tenant.limits.fuel = u64::MAX;
    tenant.limits.timeout = Duration::from_millis(300);
    let mut node = tenant.node(weir_guests::SPIN_LOOP, OperatorKind::Map, &[]);
    node.start().await.unwrap();
    let started = Instant::now();
    let error = node.map(&message("spin")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        error,
        OperatorError::Deadline {
            timeout: Duration::from_millis(300)
        }
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(
        payload(&node.map(&message("after")).await.unwrap()),
        "after"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_yields_its_worker_to_other_tasks() {
    let mut tenant = Tenant::new("t-spin-yield");
    tenant.limits.fuel = u64::MAX;
    tenant.limits.timeout = Duration::from_millis(400);
    let mut node = tenant.node(weir_guests::SPIN_LOOP, OperatorKind::Map, &[]);
    node.start().await.unwrap();
    let beats = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = beats.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let error = node.map(&message("spin")).await.unwrap_err();
    heartbeat.abort();
    assert!(matches!(error, OperatorError::Deadline { .. }));
    let beats = beats.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        beats >= 5,
        "the single worker thread ran other tasks during the call: {beats} beats"
    );
}

#[tokio::test]
async fn memory_hog_stops_at_the_configured_limit() {
    let mut tenant = Tenant::new("t-hog");
    tenant.limits.memory_bytes = 32 << 20;
    let mut node = tenant.node(weir_guests::MEMORY_HOG, OperatorKind::Map, &[]);
    let started = Instant::now();
    let error = node.map(&message("hog")).await.unwrap_err();
    assert_eq!(error, OperatorError::MemoryLimit { limit: 32 << 20 });
    assert_eq!(error.reason(), "memory_limit");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        payload(&node.map(&message("after")).await.unwrap()),
        "after"
    );
}

#[tokio::test]
async fn a_trap_is_reported_with_its_backtrace_and_the_next_item_succeeds() {
    let tenant = Tenant::new("t-trap");
    let mut node = tenant.node(weir_guests::TRAP, OperatorKind::Map, &[]);
    let error = node.map(&message("trap")).await.unwrap_err();
    let OperatorError::Trap { detail } = &error else {
        panic!("expected a trap, got {error:?}")
    };
    assert!(detail.contains("unreachable"), "{detail}");
    assert!(
        detail.contains("wasm backtrace") || detail.contains("trap::"),
        "backtrace included: {detail}"
    );
    assert!(
        tenant.log_text().contains("trap requested by payload"),
        "the panic message reached the tenant log via stderr"
    );
    assert_eq!(
        payload(&node.map(&message("after")).await.unwrap()),
        "after"
    );
    let error = node.map(&message("error")).await.unwrap_err();
    assert_eq!(error.reason(), "operator_error");
    let stats = node.stats();
    assert_eq!(
        (stats.calls, stats.failures, stats.instantiations),
        (3, 2, 2)
    );
}

#[tokio::test]
async fn init_returning_false_or_trapping_fails_the_node_before_any_item() {
    let tenant = Tenant::new("t-init");
    let mut refusing = tenant.node(
        weir_guests::TRAP,
        OperatorKind::Map,
        &[("refuse_init", "true")],
    );
    assert_eq!(refusing.start().await, Err(OperatorError::InitRejected));
    let mut trapping = tenant.node(
        weir_guests::TRAP,
        OperatorKind::Map,
        &[("trap_in_init", "true")],
    );
    let error = trapping.start().await.unwrap_err();
    assert!(
        matches!(&error, OperatorError::InitFailed(inner) if matches!(**inner, OperatorError::Trap { .. })),
        "{error:?}"
    );
    assert_eq!(error.reason(), "init_failed");
}

#[tokio::test]
async fn huge_output_is_refused_over_the_message_limit() {
    let mut tenant = Tenant::new("t-huge");
    tenant.limits.max_output_bytes = 1 << 20;
    let mut node = tenant.node(weir_guests::HUGE_OUTPUT, OperatorKind::Map, &[]);
    let error = node.map(&message("huge:8")).await.unwrap_err();
    assert!(
        matches!(error, OperatorError::OutputTooLarge { size, limit: 1_048_576 } if size >= 8 << 20),
        "{error:?}"
    );
    assert_eq!(
        payload(&node.map(&message("small")).await.unwrap()),
        "small"
    );
}

#[tokio::test]
async fn host_interfaces_answer_bad_arguments_with_errors_not_traps() {
    let tenant = Tenant::new("t-abuse");
    let mut node = tenant.node(weir_guests::HOST_ABUSE, OperatorKind::Map, &[]);
    let report = payload(&node.map(&message("go")).await.unwrap());
    let line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .to_owned()
    };
    assert!(
        line("get empty key").contains("key length zero"),
        "{report}"
    );
    assert!(line("get huge key").contains("over the limit"), "{report}");
    assert!(
        line("set huge value").contains("quota exceeded"),
        "{report}"
    );
    assert!(
        line("set future fencing token").contains("too far in the future"),
        "{report}"
    );
    assert!(line("vdel missing key").contains("Ok(0)"), "{report}");
    assert!(
        line("set absurd expiry").contains("invalid expiry"),
        "{report}"
    );
    assert!(
        line("get foreign-looking key").contains("Ok(None)"),
        "{report}"
    );
    assert!(
        line("histogram on a counter name").contains("IncompatibleType"),
        "{report}"
    );
    assert!(line("histogram NaN").contains("finite"), "{report}");
    assert!(
        line("counter 10k labels").contains("at most 16 labels"),
        "{report}"
    );
    assert!(
        line("counter huge name").contains("1 to 255 bytes"),
        "{report}"
    );
    assert!(line("rpc new invoker").contains("ClientError"), "{report}");
    assert!(
        line("schema registry get").contains("NotAvailable"),
        "{report}"
    );
    let logs = tenant.logs.lines(&tenant.id);
    assert!(
        logs.iter()
            .all(|l| l.message.len() <= 4096 + 64 && l.context.len() <= 256 + 64),
        "log lines are cut to the limit"
    );
    assert_eq!(
        payload(&node.map(&message("go")).await.unwrap())
            .lines()
            .count(),
        report.lines().count(),
        "the node keeps working"
    );
}

#[tokio::test]
async fn a_module_cannot_open_sockets_or_resolve_names() {
    let tenant = Tenant::new("t-sockets");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut node = tenant.node(weir_guests::SOCKET_DIALER, OperatorKind::Map, &[]);
    let report = payload(&node.map(&message(&address)).await.unwrap());
    assert!(report.starts_with("connect denied:"), "{report}");
    assert!(report.contains("resolve denied:"), "{report}");
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing connected"
    );
}

// ---- validation ----

#[test]
fn every_guest_but_the_foreign_importer_validates_with_its_operators() {
    use OperatorKind::*;
    let expected: &[(Guest, &[OperatorKind])] = &[
        (weir_guests::TEMPERATURE, &[Map, Filter, Branch, Accumulate]),
        (weir_guests::HUMIDITY, &[Accumulate]),
        (weir_guests::WINDOW, &[Delay]),
        (weir_guests::COLLECTION, &[Accumulate]),
        (weir_guests::ENRICHMENT, &[Map]),
        (weir_guests::PREVIEW_ECHO, &[Map]),
    ];
    for (guest, kinds) in expected {
        let module = engine().load(&guest.bytes()).unwrap();
        assert_eq!(
            module.operators().iter().copied().collect::<Vec<_>>(),
            kinds.to_vec(),
            "{}",
            guest.name()
        );
    }
    for guest in weir_guests::ALL
        .into_iter()
        .filter(|g| *g != weir_guests::FOREIGN_IMPORT)
    {
        engine()
            .load(&guest.bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", guest.name()));
    }
}

#[test]
fn a_module_with_an_unsatisfiable_import_is_rejected_naming_it() {
    let error = engine()
        .load(&weir_guests::FOREIGN_IMPORT.bytes())
        .unwrap_err();
    let ModuleError::UnsupportedImports { imports } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(
        imports.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["acme:vault/secrets@1.0.0"]
    );
    assert!(
        error
            .to_string()
            .contains("acme:vault/secrets@1.0.0 (weir provides no package acme:vault)"),
        "{error}"
    );
}

#[test]
fn core_modules_random_bytes_and_empty_components_are_rejected_clearly() {
    let core = b"\0asm\x01\0\0\0";
    assert_eq!(
        weir_executor::check_header(core),
        Err(ModuleError::CoreModule)
    );
    assert_eq!(engine().load(core).unwrap_err(), ModuleError::CoreModule);
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(
        weir_executor::check_header(&random),
        Err(ModuleError::NotWasm)
    );
    assert_eq!(engine().load(&random).unwrap_err(), ModuleError::NotWasm);
    let truncated = &weir_guests::ECHO.bytes()[..1000];
    assert!(matches!(
        engine().load(truncated),
        Err(ModuleError::Invalid { .. })
    ));
    let empty_component = b"\0asm\x0d\0\x01\0";
    let error = engine().load(empty_component).unwrap_err();
    assert_eq!(error, ModuleError::NoOperators { exports: vec![] });
    assert!(error.to_string().contains("exports no operator interface"));
}

#[test]
fn loading_the_same_bytes_twice_compiles_once() {
    let first = engine().load(&weir_guests::ECHO.bytes()).unwrap();
    let second = engine().load(&weir_guests::ECHO.bytes()).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(
        first.digest(),
        &weir_executor::sha256_digest(&weir_guests::ECHO.bytes())
    );
}

// ---- preview contract ----

#[tokio::test]
async fn a_preview_module_runs_through_the_adapter() {
    let tenant = Tenant::new("t-preview");
    let module = engine().load(&weir_guests::PREVIEW_ECHO.bytes()).unwrap();
    assert_eq!(module.contract(), weir_executor::Contract::Preview);
    let mut node = tenant.node(weir_guests::PREVIEW_ECHO, OperatorKind::Map, &[("a", "1")]);
    assert_eq!(
        payload(&node.map(&message("hello")).await.unwrap()),
        "preview:hello"
    );
    assert!(
        tenant.log_text().contains("init with 1 properties"),
        "the preview logger works"
    );
    assert!(matches!(
        node.map(&message("trap")).await,
        Err(OperatorError::Trap { .. })
    ));
    assert_eq!(
        payload(&node.map(&message("again")).await.unwrap()),
        "preview:again"
    );
}

// ---- tenant walls ----

#[tokio::test]
async fn tenants_sharing_an_executor_never_see_each_others_state_logs_or_metrics() {
    let state = Arc::new(MemoryStateStore::default());
    let logs = Arc::new(MemoryLogSink::new(1000));
    let metrics = Arc::new(MetricsRegistry::new(100));
    let a = Tenant::sharing("wall-a", state.clone(), logs.clone(), metrics.clone());
    let b = Tenant::sharing("wall-b", state.clone(), logs.clone(), metrics.clone());
    let mut enrich_a = a.node(weir_guests::ENRICHMENT, OperatorKind::Map, &[]);
    let hot = r#"{"sensor_data":{"temperature":[{"count":1,"max":500,"min":500,"average":500,"last":500,"unit":"C"}]}}"#;
    enrich_a.map(&message(hot)).await.unwrap();
    assert!(
        state
            .get(&a.scope(), b"overtemp")
            .await
            .unwrap()
            .value
            .is_some()
    );
    assert_eq!(
        state.get(&b.scope(), b"overtemp").await.unwrap().value,
        None,
        "b cannot read a's key"
    );
    assert!(state.keys(&b.scope(), 100).await.unwrap().is_empty());

    // b's module reads the same key names through the WIT: it sees its own (empty) store.
    let mut abuse_b = b.node(weir_guests::HOST_ABUSE, OperatorKind::Map, &[]);
    abuse_b.map(&message("go")).await.unwrap();
    assert_eq!(
        state.get(&a.scope(), b"fenced2").await.unwrap().value,
        None,
        "b's writes stay in b"
    );

    let mut temperature_a = a.node(
        weir_guests::TEMPERATURE,
        OperatorKind::Map,
        &[("secret", "a-only")],
    );
    temperature_a
        .map(&message(r#"{"temperature":{"value":1,"unit":"F"}}"#))
        .await
        .unwrap();
    assert!(a.log_text().contains("a-only"));
    assert!(
        !b.log_text().contains("a-only"),
        "b's log holds none of a's lines"
    );
    assert!(logs.lines(&b.id).iter().all(|l| l.tenant == b.id));
    let (series_b, _) = metrics.snapshot(&b.id);
    assert!(
        series_b.keys().all(|(name, _)| name != "requests"),
        "a's metrics are not in b's"
    );
    assert!(
        metrics
            .snapshot(&a.id)
            .0
            .keys()
            .any(|(name, _)| name == "requests")
    );
}

#[test]
fn the_compile_cache_is_bounded_by_bytes_and_forgets_on_request() {
    let echo = Guest::bytes(weir_guests::ECHO);
    let trap = Guest::bytes(weir_guests::TRAP);
    let probe = OperatorEngine::new(&EngineConfig {
        pooling: None,
        ..EngineConfig::default()
    })
    .unwrap();
    let first = probe.load(&echo).unwrap();
    let one_module = probe.cached_bytes();
    assert!(one_module > 0);
    // Room for one module: loading a second evicts the least recently used.
    let engine = OperatorEngine::new(&EngineConfig {
        pooling: None,
        compile_cache_bytes: one_module + one_module / 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let echo_module = engine.load(&echo).unwrap();
    let trap_module = engine.load(&trap).unwrap();
    assert!(engine.cached(echo_module.digest()).is_none(), "evicted");
    assert!(engine.cached(trap_module.digest()).is_some());
    // A module still in use keeps working after eviction; loading it again compiles it anew.
    assert_eq!(echo_module.digest(), first.digest());
    engine.forget(trap_module.digest());
    assert!(engine.cached(trap_module.digest()).is_none());
    assert_eq!(engine.cached_bytes(), 0);
}
