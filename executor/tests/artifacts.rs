//! The on-disk compile cache: a second engine on the same artifact directory loads what the
//! first compiled (and the loaded module runs), a damaged or foreign file is discarded and the
//! module compiled again, the byte cap holds, and `forget` deletes the file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_api::{DataItem, Hlc, Message, TenantId};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{
    ArtifactConfig, CallLimits, CompileCounts, EngineConfig, ModuleConfiguration, NodeEnv,
    OperatorEngine, OperatorInstance, OperatorKind,
};
use weir_state::{MemoryStateStore, StateLimits, StateScope};
use weir_tenants::Quotas;

fn cached_engine(dir: &Path, max_bytes: u64) -> OperatorEngine {
    OperatorEngine::new(&EngineConfig {
        pooling: None,
        artifacts: Some(ArtifactConfig {
            dir: dir.to_owned(),
            max_bytes,
        }),
        ..EngineConfig::default()
    })
    .unwrap()
}

fn counts(compiled: u64, loaded: u64, discarded: u64) -> CompileCounts {
    CompileCounts {
        compiled,
        loaded,
        discarded,
    }
}

/// The artifact files in `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Runs the echo module's map once on `engine`: the payload comes back.
async fn echo_runs(engine: &OperatorEngine) {
    let module = engine.load(&weir_guests::ECHO.bytes()).unwrap();
    let tenant = TenantId::new("artifacts").unwrap();
    let env = Arc::new(NodeEnv {
        tenant: tenant.clone(),
        node: "artifacts/echo".to_owned(),
        state: Arc::new(MemoryStateStore::default()),
        state_scope: StateScope::new(
            tenant,
            StateLimits {
                max_keys: 1,
                max_bytes: 1,
                max_key_bytes: 1,
            },
        ),
        state_timeout_cap: Duration::from_secs(1),
        logs: Arc::new(MemoryLogSink::new(16)),
        metrics: Arc::new(MetricsRegistry::new(16)),
        max_log_line_bytes: 1024,
        quotas: None,
        inference_lane: weir_executor::InferenceLane::default(),
    });
    let mut node = OperatorInstance::new(
        engine.clone(),
        module,
        OperatorKind::Map,
        ModuleConfiguration::default(),
        env,
        CallLimits::from_quotas(&Quotas::default()),
    )
    .unwrap();
    node.start().await.unwrap();
    let time = Hlc::at(Duration::from_secs(1_700_000_000), "test");
    let item = DataItem::Message(Message::new(time, "t", Bytes::from_static(b"hello")));
    let out = node.map(&item).await.unwrap();
    let DataItem::Message(out) = out else {
        panic!("echo returned {out:?}")
    };
    assert_eq!(out.payload.as_ref(), b"hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_engine_loads_what_the_last_one_compiled_and_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let first = cached_engine(dir.path(), 1 << 30);
    echo_runs(&first).await;
    assert_eq!(first.compile_counts(), counts(1, 0, 0));
    assert_eq!(files(dir.path()).len(), 1, "one artifact written");
    drop(first);

    let second = cached_engine(dir.path(), 1 << 30);
    echo_runs(&second).await;
    assert_eq!(
        second.compile_counts(),
        counts(0, 1, 0),
        "the restarted engine compiled nothing"
    );
    // Within one engine the module stays in memory: no second load either.
    second.load(&weir_guests::ECHO.bytes()).unwrap();
    assert_eq!(second.compile_counts(), counts(0, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_artifact_is_discarded_and_the_module_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    cached_engine(dir.path(), 1 << 30)
        .load(&weir_guests::ECHO.bytes())
        .unwrap();
    let [file] = files(dir.path()).try_into().unwrap();
    let whole = std::fs::read(&file).unwrap();

    // One bit flipped in the middle of the machine code (wasmtime's own header check would
    // not see it), a truncated file, and a file of garbage: each is discarded, never loaded.
    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let damages: [(&str, Vec<u8>); 3] = [
        ("a flipped bit", flipped),
        ("a truncated file", whole[..whole.len() / 3].to_vec()),
        ("garbage", b"not an artifact at all".to_vec()),
    ];
    for (what, damaged) in damages {
        std::fs::write(&file, &damaged).unwrap();
        let engine = cached_engine(dir.path(), 1 << 30);
        echo_runs(&engine).await;
        assert_eq!(
            engine.compile_counts(),
            counts(1, 0, 1),
            "{what}: discarded and compiled again"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            whole,
            "{what}: the artifact was written anew"
        );
        drop(engine);
        let next = cached_engine(dir.path(), 1 << 30);
        next.load(&weir_guests::ECHO.bytes()).unwrap();
        assert_eq!(
            next.compile_counts(),
            counts(0, 1, 0),
            "{what}: loaded again"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_modules_artifact_under_this_modules_name_is_discarded_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = cached_engine(dir.path(), 1 << 30);
    engine.load(&weir_guests::ECHO.bytes()).unwrap();
    engine.load(&weir_guests::TEMPERATURE.bytes()).unwrap();
    drop(engine);
    let echo_hex = weir_executor::sha256_digest(&weir_guests::ECHO.bytes());
    let echo_hex = echo_hex.as_str().trim_start_matches("sha256:");
    let temperature_hex = weir_executor::sha256_digest(&weir_guests::TEMPERATURE.bytes());
    let temperature_hex = temperature_hex.as_str().trim_start_matches("sha256:");
    let name_of = |hex: &str| {
        files(dir.path())
            .into_iter()
            .find(|f| f.file_name().unwrap().to_str().unwrap().starts_with(hex))
            .unwrap()
    };
    // A restored backup or a careless copy: temperature's artifact put under echo's name.
    std::fs::copy(name_of(temperature_hex), name_of(echo_hex)).unwrap();

    let engine = cached_engine(dir.path(), 1 << 30);
    // echo still echoes: the swapped file was refused and echo compiled again.
    echo_runs(&engine).await;
    assert_eq!(engine.compile_counts(), counts(1, 0, 1));
}

#[test]
fn files_of_another_engine_configuration_and_stray_temporaries_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    cached_engine(dir.path(), 1 << 30)
        .load(&weir_guests::ECHO.bytes())
        .unwrap();
    let [file] = files(dir.path()).try_into().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    let (digest, _) = name.split_once('.').unwrap();
    let foreign = dir.path().join(format!("{digest}.00000000deadbeef.cwasm"));
    let temporary = dir.path().join(format!("{digest}.0123456789abcdef.tmp42"));
    std::fs::copy(&file, &foreign).unwrap();
    std::fs::write(&temporary, b"half written").unwrap();

    let engine = cached_engine(dir.path(), 1 << 30);
    assert_eq!(
        files(dir.path()),
        vec![file],
        "only this engine's artifact is left"
    );
    engine.load(&weir_guests::ECHO.bytes()).unwrap();
    assert_eq!(engine.compile_counts(), counts(0, 1, 0));
}

#[test]
fn the_byte_cap_holds_and_forget_deletes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let probe = cached_engine(dir.path(), 1 << 30);
    let mut sizes = Vec::new();
    for guest in [weir_guests::ECHO, weir_guests::TEMPERATURE] {
        probe.load(&guest.bytes()).unwrap();
        sizes.push(probe.artifact_usage().1);
        probe.forget(&weir_executor::sha256_digest(&guest.bytes()));
        assert_eq!(probe.artifact_usage(), (0, 0), "forget deleted the file");
        assert!(files(dir.path()).is_empty());
    }
    drop(probe);

    // Room for either module but not both: the second compiled evicts the first (least
    // recently used).
    let cap = sizes.iter().max().unwrap() + sizes.iter().min().unwrap() / 2;
    let engine = cached_engine(dir.path(), cap);
    engine.load(&weir_guests::ECHO.bytes()).unwrap();
    engine.load(&weir_guests::TEMPERATURE.bytes()).unwrap();
    let (count, bytes) = engine.artifact_usage();
    assert!(bytes <= cap, "{bytes} bytes on disk over the cap of {cap}");
    assert_eq!(count, 1);
    assert_eq!(files(dir.path()).len(), 1);
    let kept = files(dir.path())[0].clone();
    let temperature = weir_executor::sha256_digest(&weir_guests::TEMPERATURE.bytes());
    assert!(
        kept.to_str()
            .unwrap()
            .contains(temperature.as_str().trim_start_matches("sha256:")),
        "the most recent module is the one kept: {kept:?}"
    );
}
