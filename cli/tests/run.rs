//! `weir run` as a user runs it: the real binary over a real component.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::io::Write;
use std::process::{Command, Stdio};

fn weir_run(args: &[&str], input: &str) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
        output.status.success(),
    )
}

#[test]
fn runs_the_temperature_map_over_stdin_and_prints_outputs() {
    let module = weir_guests::TEMPERATURE.path();
    let input = "{\"temperature\":{\"value\":1209,\"unit\":\"F\"}}\nnot json\n{\"humidity\":{\"value\":40}}\n";
    let (stdout, stderr, ok) = weir_run(
        &[
            module.to_str().unwrap(),
            "--operator",
            "map",
            "--output",
            "json",
        ],
        input,
    );
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(
        lines[0]["payload"],
        r#"{"temperature":{"value":653.8888888888889,"count":0,"max":0.0,"min":0.0,"average":0.0,"last":0.0,"unit":"C","overtemp":false}}"#
    );
    assert_eq!(lines[1]["payload"], r#"{"humidity":{"value":40}}"#);
    assert!(
        stderr.contains("dead letter: item 2 reason=operator_error"),
        "{stderr}"
    );
    assert!(stderr.contains("done: 3 items, 1 dead letters"), "{stderr}");
}

#[test]
fn refuses_a_module_that_is_not_a_component_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("weir-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (_, stderr, ok) = weir_run(&[core.to_str().unwrap()], "");
    assert!(!ok);
    assert!(stderr.contains("not a module weir can run"), "{stderr}");
    assert!(stderr.contains("wasm32-wasip2"), "{stderr}");
}

#[test]
fn runs_a_whole_graph_and_reports_dead_letters() {
    let graph = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/graph-complex.yaml"
    );
    let modules = weir_guests::Guest::dir();
    let input = "{\"temperature\":{\"value\":1209,\"unit\":\"F\"}}\n{\"humidity\":{\"value\":85}}\nnot json\n";
    let (stdout, stderr, ok) = weir_run(
        &[
            graph,
            "--modules",
            modules.to_str().unwrap(),
            "--output",
            "json",
        ],
        input,
    );
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one window: {stdout}");
    assert_eq!(
        lines[0]["payload"],
        r#"{"temperature":[{"count":1,"max":653.8888888888889,"min":653.8888888888889,"average":653.8888888888889,"last":653.8888888888889,"unit":"C","overtemp":true}],"humidity":[{"count":1,"max":85.0,"min":85.0,"average":85.0,"last":85.0}],"object":[]}"#
    );
    assert!(
        stderr.contains("dead letter: node module-temperature/branch reason=operator_error"),
        "{stderr}"
    );
    assert!(
        stderr.contains("done: 3 messages in, 1 out, 1 dead letters"),
        "{stderr}"
    );
}
