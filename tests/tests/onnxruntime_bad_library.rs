//! A file that is not ONNX Runtime, given as its library, stops the engine's start with an
//! error naming it; `ort` panics in that case, and the panic must not escape (nor wait for a
//! guest's `load`). Its own test binary: `ort` takes its library path once per process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed expectation is a failed test"
)]

use weir_executor::{EngineConfig, InferenceBackend, InferenceConfig, OperatorEngine};

#[test]
fn a_file_that_is_not_onnxruntime_is_a_start_error_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("weir-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("libonnxruntime.so.1.32.0");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let error = OperatorEngine::new(&EngineConfig {
        pooling: None,
        inference: InferenceConfig {
            backend: InferenceBackend::OnnxRuntime(fake.clone()),
            ..InferenceConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap_err()
    .to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        error.contains("cannot load the ONNX Runtime library")
            && error.contains(&fake.display().to_string()),
        "{error}"
    );
}
