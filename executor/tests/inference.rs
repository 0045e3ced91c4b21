//! Inference through `wasi:nn` on the embedded tract backend, with real components built from
//! `modules/`: the snapshot module's classifier on frames it never saw, the tenant's inference
//! limits (model bytes, graphs per instance, the call deadline, the quota switch), and the
//! linking rule (only modules that import wasi-nn get it).
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
use weir_api::{DataItem, Hlc, Message, Snapshot, TenantId};
use weir_executor::logs::{LogSink, MemoryLogSink};
use weir_executor::{
    CallLimits, EngineConfig, INFERENCE_FUEL_PER_MS, InferenceConfig, InferenceLane, LiveQuotas,
    ModuleConfiguration, NodeEnv, OperatorEngine, OperatorError, OperatorInstance, OperatorKind,
};
use weir_guests::Guest;
use weir_tenants::Quotas;

fn engine() -> OperatorEngine {
    static ENGINE: OnceLock<OperatorEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| OperatorEngine::new(&EngineConfig::default()).expect("engine builds"))
        .clone()
}

struct Tenant {
    id: TenantId,
    logs: Arc<MemoryLogSink>,
    limits: CallLimits,
    engine: OperatorEngine,
    /// The tenant's turn at inference, shared by its nodes as the runtime shares it.
    lane: InferenceLane,
}

impl Tenant {
    fn new(quotas: &Quotas) -> Self {
        Self::on(engine(), quotas)
    }

    fn on(engine: OperatorEngine, quotas: &Quotas) -> Self {
        Self::named("acme", engine, quotas)
    }

    fn named(id: &str, engine: OperatorEngine, quotas: &Quotas) -> Self {
        Self {
            id: TenantId::new(id).unwrap(),
            logs: Arc::new(MemoryLogSink::new(1000)),
            limits: CallLimits::from_quotas(quotas),
            engine,
            lane: InferenceLane::default(),
        }
    }

    fn node(&self, guest: Guest, kind: OperatorKind) -> OperatorInstance {
        let module = self.engine.load(&guest.bytes()).expect("guest validates");
        let env = Arc::new(NodeEnv {
            logs: self.logs.clone() as Arc<dyn LogSink>,
            inference_lane: self.lane.clone(),
            ..NodeEnv::standalone(self.id.clone(), format!("test/{}/{kind}", guest.name()))
        });
        OperatorInstance::new(
            self.engine.clone(),
            module,
            kind,
            ModuleConfiguration::default(),
            env,
            self.limits,
        )
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

fn snapshot(frame: Vec<u8>) -> DataItem {
    DataItem::Snapshot(Snapshot {
        timestamp: Hlc::at(Duration::from_secs(1_700_000_000), "source"),
        format: Bytes::from_static(b"rgb24"),
        width: 224,
        height: 224,
        frame: Bytes::from(frame),
    })
}

fn label_of(item: &DataItem) -> String {
    let DataItem::Snapshot(snapshot) = item else {
        panic!("expected a snapshot, got {item:?}")
    };
    let value: serde_json::Value = serde_json::from_slice(&snapshot.frame).unwrap();
    value["object"]["result"].as_str().unwrap().to_owned()
}

fn message(payload: &str) -> DataItem {
    DataItem::Message(Message::new(
        Hlc::at(Duration::from_secs(1_700_000_000), "source"),
        "probe/1",
        payload.to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_classifier_holds_out_on_frames_it_never_saw() {
    // `snapshot_classifier_holds_out`: the frames come from this test's own generator (the
    // rules of modules/snapshot/model/train.py, another random source), not from training.
    let tenant = Tenant::new(&Quotas::default());
    let mut node = tenant.node(weir_guests::SNAPSHOT, OperatorKind::Map);
    let mut random = weir_guests::shapes::Random::new(0x5eed_2026);
    let per_class = 25;
    let mut hits = 0;
    let mut confusion = [[0u32; 4]; 4];
    for index in 0..per_class * 4 {
        let class = index % 4;
        let frame = weir_guests::shapes::draw(&mut random, class);
        let label = label_of(&node.map(&snapshot(frame)).await.unwrap());
        let found = weir_guests::shapes::LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or_else(|| panic!("unknown label {label}"));
        confusion[class][found] += 1;
        hits += usize::from(found == class);
    }
    let accuracy = hits as f64 / (per_class * 4) as f64;
    println!(
        "held-out accuracy on tract: {accuracy:.3} (rows: true class, columns: found) {confusion:?}"
    );
    assert!(accuracy >= 0.9, "accuracy {accuracy} {confusion:?}");
    // One instance, one model load: the instance was made once and reused.
    assert_eq!(node.stats().instantiations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_the_tenants_limit_is_refused_at_load_and_logged() {
    let quotas = Quotas {
        max_model_bytes: 1000,
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::SNAPSHOT, OperatorKind::Map);
    let mut random = weir_guests::shapes::Random::new(1);
    let error = node
        .map(&snapshot(weir_guests::shapes::draw(&mut random, 0)))
        .await
        .unwrap_err();
    let OperatorError::Rejected { message } = &error else {
        panic!("{error:?}")
    };
    assert!(message.contains("TooLarge"), "{message}");
    assert!(
        message.contains("the tenant's limit is 1000 bytes (quota `max_model_bytes`)"),
        "{message}"
    );
    let log = tenant.log_text();
    assert!(
        log.contains("wasi-nn the model is ") && log.contains("quota `max_model_bytes`"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_past_the_deadline_ends_with_deadline_and_the_executor_lives() {
    // One inference slot on this executor: the abandoned computation must give it back (it
    // stops at its next operator) for the classifier below to get it within its deadline.
    let engine = OperatorEngine::new(&EngineConfig {
        inference: InferenceConfig {
            max_concurrent: 1,
            ..InferenceConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let quotas = Quotas {
        call_timeout: Duration::from_millis(150),
        ..Quotas::default()
    };
    let tenant = Tenant::on(engine.clone(), &quotas);
    let mut node = tenant.node(weir_guests::NN_ABUSE, OperatorKind::Map);
    let error = node.map(&message("slow")).await.unwrap_err();
    assert!(matches!(error, OperatorError::Deadline { .. }), "{error:?}");
    assert_eq!(error.reason(), "deadline");
    // The node goes on with a fresh instance, and so does inference on this executor.
    assert_eq!(
        payload(&node.map(&message("after")).await.unwrap()),
        "after"
    );
    // The computation left behind would run for seconds more (24 products of 1536 x 1536):
    // the classifier gets the one slot within its deadline only if that work stopped.
    let classifier = Tenant::on(
        engine,
        &Quotas {
            call_timeout: Duration::from_secs(2),
            ..Quotas::default()
        },
    );
    let mut other = classifier.node(weir_guests::SNAPSHOT, OperatorKind::Map);
    let mut random = weir_guests::shapes::Random::new(2);
    let frame = weir_guests::shapes::draw(&mut random, 1);
    let label = label_of(&other.map(&snapshot(frame)).await.unwrap());
    assert!(
        weir_guests::shapes::LABELS.contains(&label.as_str()),
        "{label}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_inference_backlog_never_queues_another_tenants_inference() {
    // Two slots on this executor. Tenant A asks for three slow computations at once (more
    // than there are slots); tenant B then asks for one classification. B must not wait behind
    // A's backlog: A's work takes its turns in A's own lane (one slot at most), so B gets the
    // other slot and its label arrives while A's first computation still runs. With one queue
    // for all tenants, A's first two would take both slots and B would wait behind A's third.
    let engine = OperatorEngine::new(&EngineConfig {
        inference: InferenceConfig {
            max_concurrent: 2,
            ..InferenceConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let patient = Quotas {
        call_timeout: Duration::from_secs(120),
        ..Quotas::default()
    };
    let a = Tenant::named("flooder", engine.clone(), &patient);
    let b = Tenant::named("bystander", engine.clone(), &patient);
    let a_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let mut node = a.node(weir_guests::NN_ABUSE, OperatorKind::Map);
        let done = a_done.clone();
        flood.spawn(async move {
            let outcome = node.map(&message("slow")).await;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            outcome
        });
    }
    // All three of A's loads are asked for (waiting for A's turn, a slot, or running).
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.inference_asked() < 3 {
        assert!(
            Instant::now() < deadline,
            "A's three loads were never asked for"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While only A asks, A holds one slot at most: the other stays free for anyone else.
    // (Watched for a second, every 5 ms: one queue for all would show both slots taken by A's
    // loads and computes for seconds.)
    for _ in 0..200 {
        let running = engine.inference_running();
        assert!(running <= 1, "tenant A holds {running} inference slots");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut classifier = b.node(weir_guests::SNAPSHOT, OperatorKind::Map);
    let mut random = weir_guests::shapes::Random::new(3);
    let frame = weir_guests::shapes::draw(&mut random, 2);
    let label = label_of(&classifier.map(&snapshot(frame)).await.unwrap());
    assert!(
        weir_guests::shapes::LABELS.contains(&label.as_str()),
        "{label}"
    );
    // A's computations run one after another, so its second ends seconds after its first. In
    // one queue for all, A's first two would run side by side and B would take the slot the
    // first of them gives back, after both: two done. (Not `0`: under a loaded CI, B's call,
    // instantiation and model load included, can take as long as one of A's computations.)
    let done = a_done.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        done <= 1,
        "B's classification waited for {done} of A's computations"
    );
    flood.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_time_is_charged_to_the_tenants_fuel() {
    // A call that spends its time in a computation (seconds of matrix products) and next to no
    // wasm: its fuel is what the slot ran, at INFERENCE_FUEL_PER_MS. The call's wall time
    // bounds the slot's time from above; the computation is most of it.
    let quotas = Quotas {
        call_timeout: Duration::from_secs(120),
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::NN_ABUSE, OperatorKind::Map);
    node.map(&message("warm")).await.unwrap();
    let wasm_only = node.stats().fuel_used;
    let started = Instant::now();
    node.map(&message("slow")).await.unwrap();
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
    let charged = node.stats().fuel_used - wasm_only;
    let wall_fuel = took_ms * INFERENCE_FUEL_PER_MS;
    assert!(
        charged >= wall_fuel / 2,
        "the call took {took_ms} ms, mostly computing, and was charged {charged} fuel (a slot's ms is {INFERENCE_FUEL_PER_MS})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_tensors_outgrow_the_instance_memory_is_refused_at_load() {
    // slow.onnx: 24 tensors of 9 MiB (1536 x 1536 f32) besides its input.
    let quotas = Quotas {
        memory_per_instance: 32 << 20,
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::NN_ABUSE, OperatorKind::Map);
    let error = node.map(&message("slow")).await.unwrap_err();
    let OperatorError::Rejected { message } = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("the model's tensors take up to")
            && message.contains("quota `memory_per_instance`"),
        "{message}"
    );
    assert!(tenant.log_text().contains("quota `memory_per_instance`"));
}

fn payload(item: &DataItem) -> String {
    match item {
        DataItem::Message(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_contexts_count_against_the_graphs_quota() {
    // A context keeps its model loaded after its graph is dropped: without counting contexts,
    // dropping each graph and keeping its context would load models without end.
    let quotas = Quotas {
        max_graphs_per_instance: 3,
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::NN_ABUSE, OperatorKind::Map);
    let error = node.map(&message("contexts")).await.unwrap_err();
    let OperatorError::Rejected { message } = &error else {
        panic!("{error:?}")
    };
    assert!(message.starts_with("after 3 contexts: "), "{message}");
    assert!(
        message.contains("quota `max_graphs_per_instance`"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_the_host_holds_count_against_the_instance_memory() {
    // 8 tensors of 10 MiB kept by the guest are 80 MiB of the host's memory: over a 64 MiB
    // instance, although the guest's own linear memory holds one 10 MiB buffer.
    let quotas = Quotas {
        memory_per_instance: 64 << 20,
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::NN_ABUSE, OperatorKind::Map);
    node.map(&message("tensors:4:10")).await.unwrap();
    let error = node.map(&message("tensors:4:10")).await.unwrap_err();
    assert!(
        matches!(error, OperatorError::MemoryLimit { .. }),
        "{error:?}"
    );
    // The instance went with its tensors: a fresh one holds none.
    node.map(&message("tensors:4:10")).await.unwrap();
    assert_eq!(
        payload(&node.map(&message("after")).await.unwrap()),
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_quota_stops_a_loaded_model_at_its_next_compute() {
    // The classifier loads its model once and keeps it: the quota is checked at compute too.
    let quotas = Quotas::default();
    let live = Arc::new(LiveQuotas::new(quotas.clone()));
    let tenant = Tenant::new(&quotas);
    let module = tenant.engine.load(&weir_guests::SNAPSHOT.bytes()).unwrap();
    let env = Arc::new(NodeEnv {
        logs: tenant.logs.clone() as Arc<dyn LogSink>,
        quotas: Some(live.clone()),
        ..NodeEnv::standalone(tenant.id.clone(), "test/snapshot/map")
    });
    let mut node = OperatorInstance::new(
        tenant.engine.clone(),
        module,
        OperatorKind::Map,
        ModuleConfiguration::default(),
        env,
        tenant.limits,
    )
    .unwrap();
    let mut random = weir_guests::shapes::Random::new(4);
    let frame = weir_guests::shapes::draw(&mut random, 0);
    let label = label_of(&node.map(&snapshot(frame.clone())).await.unwrap());
    assert!(weir_guests::shapes::LABELS.contains(&label.as_str()));
    live.set(Quotas {
        max_model_bytes: 1_000,
        ..quotas.clone()
    });
    let error = node.map(&snapshot(frame.clone())).await.unwrap_err();
    assert!(
        format!("{error:?}").contains("quota `max_model_bytes`"),
        "{error:?}"
    );
    live.set(Quotas {
        inference: false,
        ..quotas
    });
    let error = node.map(&snapshot(frame)).await.unwrap_err();
    assert!(
        format!("{error:?}").contains("quota `inference`"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_alive_in_one_instance_are_bounded_by_the_quota() {
    let quotas = Quotas {
        max_graphs_per_instance: 3,
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::NN_ABUSE, OperatorKind::Map);
    let error = node.map(&message("hoard")).await.unwrap_err();
    let OperatorError::Rejected { message } = &error else {
        panic!("{error:?}")
    };
    assert!(message.starts_with("after 3 graphs: "), "{message}");
    assert!(
        message.contains("quota `max_graphs_per_instance`"),
        "{message}"
    );
    assert!(
        tenant
            .log_text()
            .contains("quota `max_graphs_per_instance`"),
        "{}",
        tenant.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_inference_cannot_load_a_model_even_with_the_module_uploaded() {
    // The quota was switched off after the upload: the running module's load is refused.
    let quotas = Quotas {
        inference: false,
        ..Quotas::default()
    };
    let tenant = Tenant::new(&quotas);
    let mut node = tenant.node(weir_guests::SNAPSHOT, OperatorKind::Map);
    let mut random = weir_guests::shapes::Random::new(3);
    let error = node
        .map(&snapshot(weir_guests::shapes::draw(&mut random, 2)))
        .await
        .unwrap_err();
    let OperatorError::Rejected { message } = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("Security") && message.contains("quota `inference` is false"),
        "{message}"
    );
}

#[test]
fn only_modules_that_import_wasi_nn_are_linked_with_it() {
    assert!(
        engine()
            .load(&weir_guests::SNAPSHOT.bytes())
            .unwrap()
            .imports_inference()
    );
    assert!(
        engine()
            .load(&weir_guests::NN_ABUSE.bytes())
            .unwrap()
            .imports_inference()
    );
    for guest in [
        weir_guests::FORMAT,
        weir_guests::TEMPERATURE,
        weir_guests::ECHO,
    ] {
        assert!(
            !engine().load(&guest.bytes()).unwrap().imports_inference(),
            "{}",
            guest.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_branch_and_accumulate_follow_azure() {
    let tenant = Tenant::new(&Quotas::default());
    let module = engine().load(&weir_guests::SNAPSHOT.bytes()).unwrap();
    let configured = |kind, properties: &[(&str, &str)]| {
        let env = Arc::new(NodeEnv {
            logs: tenant.logs.clone() as Arc<dyn LogSink>,
            ..NodeEnv::standalone(tenant.id.clone(), format!("test/snapshot/{kind}"))
        });
        OperatorInstance::new(
            engine(),
            module.clone(),
            kind,
            ModuleConfiguration {
                properties: properties
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                module_schemas: Vec::new(),
            },
            env,
            tenant.limits,
        )
        .unwrap()
    };
    let time = Hlc::at(Duration::from_secs(1_700_000_000), "source");
    let mut branch = configured(OperatorKind::Branch, &[("snapshot_topic", "cams/1")]);
    let on = |topic: &str| {
        DataItem::Message(Message::new(time.clone(), topic.to_owned(), b"x".to_vec()))
    };
    assert!(branch.branch(&time, &on("cams/1")).await.unwrap());
    assert!(!branch.branch(&time, &on("probe/1")).await.unwrap());
    assert!(branch.branch(&time, &snapshot(vec![0; 3])).await.unwrap());

    let mut accumulate = configured(OperatorKind::Accumulate, &[]);
    let object = |label: &str| {
        DataItem::Snapshot(Snapshot {
            timestamp: time.clone(),
            format: Bytes::from_static(b"rgb24"),
            width: 224,
            height: 224,
            frame: Bytes::from(format!(r#"{{"object":{{"result":"{label}"}}}}"#)),
        })
    };
    let staged = DataItem::Message(Message::new(time.clone(), "probe/1", Vec::new()));
    let out = accumulate
        .accumulate(
            &staged,
            &[object("circle"), object("square"), object("circle")],
        )
        .await
        .unwrap();
    assert_eq!(payload(&out), r#"{"object":{"result":"circle; square"}}"#);
}
