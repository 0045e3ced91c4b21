//! The snapshot module on both inference backends: tract (built in) and ONNX Runtime, loaded
//! from the `onnxruntime` wheel that `scripts/services start` installs
//! (`WEIR_TEST_ONNXRUNTIME`). The same module must give the same label for every frame on
//! both. Without `WEIR_TEST_ONNXRUNTIME` the test fails: the services script provides it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_api::{DataItem, Hlc, Snapshot, TenantId};
use weir_executor::logs::{LogSink, MemoryLogSink};
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{
    CallLimits, EngineConfig, InferenceBackend, InferenceConfig, ModuleConfiguration, NodeEnv,
    OperatorEngine, OperatorInstance, OperatorKind,
};
use weir_guests::shapes;
use weir_state::{MemoryStateStore, StateLimits, StateScope};
use weir_tenants::Quotas;

fn onnxruntime_library() -> PathBuf {
    let Ok(path) = std::env::var("WEIR_TEST_ONNXRUNTIME") else {
        panic!(
            "WEIR_TEST_ONNXRUNTIME is not set: run `scripts/services start` and \
             `source target/services/env` (it installs the onnxruntime wheel)"
        )
    };
    PathBuf::from(path)
}

fn engine(backend: InferenceBackend) -> OperatorEngine {
    OperatorEngine::new(&EngineConfig {
        pooling: None,
        inference: InferenceConfig {
            backend,
            ..InferenceConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap_or_else(|error| panic!("{error}"))
}

fn classifier(engine: &OperatorEngine, logs: &Arc<MemoryLogSink>) -> OperatorInstance {
    let tenant = TenantId::new("acme").unwrap();
    let module = engine.load(&weir_guests::SNAPSHOT.bytes()).unwrap();
    let env = Arc::new(NodeEnv {
        tenant: tenant.clone(),
        node: format!("test/snapshot/map/{}", engine.inference_backend()),
        state: Arc::new(MemoryStateStore::default()),
        state_scope: StateScope::new(
            tenant,
            StateLimits {
                max_keys: 10,
                max_bytes: 1 << 16,
                max_key_bytes: 256,
            },
        ),
        state_timeout_cap: Duration::from_secs(1),
        logs: logs.clone() as Arc<dyn LogSink>,
        metrics: Arc::new(MetricsRegistry::new(100)),
        max_log_line_bytes: 4096,
        quotas: None,
        inference_lane: weir_executor::InferenceLane::default(),
    });
    OperatorInstance::new(
        engine.clone(),
        module,
        OperatorKind::Map,
        ModuleConfiguration::default(),
        env,
        CallLimits::from_quotas(&Quotas::default()),
    )
    .unwrap()
}

fn label_of(item: &DataItem) -> String {
    let DataItem::Snapshot(snapshot) = item else {
        panic!("expected a snapshot, got {item:?}")
    };
    let value: serde_json::Value = serde_json::from_slice(&snapshot.frame).unwrap();
    value["object"]["result"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_give_the_same_label_for_every_frame() {
    let library = onnxruntime_library();
    let engines = [
        engine(InferenceBackend::Tract),
        engine(InferenceBackend::OnnxRuntime(library.clone())),
    ];
    let logs = Arc::new(MemoryLogSink::new(100));
    let mut nodes: Vec<_> = engines.iter().map(|e| classifier(e, &logs)).collect();
    let mut random = shapes::Random::new(0xb0_7e5);
    let mut right = 0;
    let frames = 40;
    for index in 0..frames {
        let class = index % 4;
        let item = DataItem::Snapshot(Snapshot {
            timestamp: Hlc::at(Duration::from_secs(1_700_000_000), "source"),
            format: Bytes::from_static(b"rgb24"),
            width: 224,
            height: 224,
            frame: Bytes::from(shapes::draw(&mut random, class)),
        });
        let mut labels = Vec::new();
        for node in &mut nodes {
            labels.push(label_of(&node.map(&item).await.unwrap()));
        }
        assert_eq!(labels[0], labels[1], "frame {index} (class {class})");
        right += usize::from(labels[0] == shapes::LABELS[class]);
    }
    println!(
        "backends ran: {} and {} ({}); same label on all {frames} frames, {right} right",
        engines[0].inference_backend(),
        engines[1].inference_backend(),
        library.display()
    );
    assert!(right * 10 >= frames * 9, "{right} of {frames} right");
}

#[test]
fn a_missing_onnxruntime_library_is_a_clear_start_error() {
    let error = OperatorEngine::new(&EngineConfig {
        pooling: None,
        inference: InferenceConfig {
            backend: InferenceBackend::OnnxRuntime(PathBuf::from(
                "/nonexistent/libonnxruntime.so.1",
            )),
            ..InferenceConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("/nonexistent/libonnxruntime.so.1 does not exist"),
        "{error}"
    );
}
