//! `weir run` as a user runs it: the real binary over a real component.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::io::Write;
use std::path::Path;
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

/// `weir run ARGS` that gives up after `limit` (see `common::weir_within`); whether it exited 0.
fn weir_run_within(args: &[&str], limit: std::time::Duration) -> (String, String, bool) {
    let args: Vec<&str> = std::iter::once("run").chain(args.iter().copied()).collect();
    let (stdout, stderr, code) = common::weir_within(&args, limit);
    (stdout, stderr, code == Some(0))
}

/// `weir run GRAPH --modules <guests> --input FILE`, given up after `limit`.
fn run_graph(graph: &str, input: &Path, limit: std::time::Duration) -> (String, String, bool) {
    let modules = weir_guests::Guest::dir();
    weir_run_within(
        &[
            graph,
            "--modules",
            modules.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        limit,
    )
}

#[test]
fn a_graph_run_with_ten_times_more_outputs_than_the_queue_holds_completes_in_order() {
    const COUNT: usize = 100_000; // the output queue holds 10,000
    let graph = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/graph-echo.yaml"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let mut text = String::with_capacity(COUNT * 16);
    for n in 0..COUNT {
        text.push_str(&format!("{{\"n\":{n}}}\n"));
    }
    std::fs::write(&input, text).unwrap();
    let (stdout, stderr, ok) = run_graph(graph, &input, std::time::Duration::from_secs(240));
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), COUNT, "{stderr}");
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("probe/1 {{\"n\":{n}}}"),
            "output {n} out of order"
        );
    }
    assert!(
        stderr.contains(&format!(
            "done: {COUNT} messages in, {COUNT} out, 0 dead letters"
        )),
        "{stderr}"
    );
}

const SCHEMA_SCENARIO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/golden/schema-scenario"
);

/// Two schema filters in a row: each one's `init` needs a schema to start.
const TWO_SCHEMA_FILTERS: &str = r#"metadata:
  $schema: "https://www.schemastore.org/aio-wasm-graph-config-1.0.0.json"
  name: "Two schema filters"
  version: "1.0.0"
moduleRequirements:
  apiVersion: "1.1.0"
  runtimeVersion: "1.1.0"
operations:
  - { operationType: source, name: source }
  - { operationType: filter, name: first, module: filter }
  - { operationType: filter, name: second, module: filter }
  - { operationType: sink, name: sink }
connections:
  - { from: { name: source }, to: { name: first } }
  - { from: { name: first }, to: { name: second } }
  - { from: { name: second }, to: { name: sink } }
"#;

#[test]
fn every_operator_init_receives_the_schema_hostapp_env_list_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::copy(
        Path::new(SCHEMA_SCENARIO).join("tk_schema_config.json"),
        dir.path().join("schemas/reading.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hostapp.env.list"),
        "# as Azure's local host reads it\nTK_SCHEMA_CONFIG_PATH=schemas/reading.json\n",
    )
    .unwrap();
    let graph = dir.path().join("graph.yaml");
    std::fs::write(&graph, TWO_SCHEMA_FILTERS).unwrap();
    let modules = weir_guests::Guest::dir();
    let (stdout, stderr, ok) = weir_run(
        &[
            graph.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
        ],
        "{\"humidity\":175,\"temperature\":12.5}\n{\"humidity\":175.1,\"temperature\":12}\n",
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout, "probe/1 {\"humidity\":175,\"temperature\":12.5}\n",
        "{stderr}"
    );
    // Both filters started on it: each init logs the schema it validates against.
    assert_eq!(
        stderr
            .matches(
                "validating payloads against schema \"reading.json\" (application/schema+json)"
            )
            .count(),
        2,
        "{stderr}"
    );
    assert!(
        stderr.contains("done: 2 messages in, 1 out, 0 dead letters"),
        "{stderr}"
    );
}

#[test]
fn without_hostapp_env_list_the_schema_filter_refuses_to_start_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("graph.dataflow.yaml");
    std::fs::copy(
        Path::new(SCHEMA_SCENARIO).join("graph.dataflow.yaml"),
        &graph,
    )
    .unwrap();
    let modules = weir_guests::Guest::dir();
    let (stdout, stderr, ok) = weir_run(
        &[
            graph.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
        ],
        "{\"humidity\":175}\n",
    );
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("init received no schema"), "{stderr}");
    assert!(
        stderr.contains("node \"filter\": init returned false"),
        "{stderr}"
    );
}

#[test]
fn a_graph_run_warns_about_configuration_no_operation_declares() {
    let graph = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/graph-echo.yaml"
    );
    let modules = weir_guests::Guest::dir();
    let (stdout, stderr, ok) = weir_run(
        &[
            graph,
            "--modules",
            modules.to_str().unwrap(),
            "--config",
            "nobody=1",
        ],
        "{\"n\":1}\n",
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "probe/1 {\"n\":1}\n");
    assert!(
        stderr.contains("warning: configuration key \"nobody\" is declared by no operation"),
        "{stderr}"
    );
}

#[test]
fn a_window_holding_more_messages_than_the_intake_still_closes() {
    // All readings fall in one 10 s window, which holds them until the input ends: more than
    // the 1,024 messages a deployment's intake admits at once.
    const COUNT: usize = 3_000;
    let graph = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/graph-complex.yaml"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let text: String = (0..COUNT)
        .map(|n| {
            format!(
                "{{\"temperature\":{{\"value\":{},\"unit\":\"F\"}}}}\n",
                100 + n % 50
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let (stdout, stderr, ok) = run_graph(graph, &input, std::time::Duration::from_secs(120));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("done: {COUNT} messages in")),
        "{stderr}"
    );
    // One window (two if the feed straddled a window's end): every reading counted once.
    let counted: usize = stdout
        .split("\"count\":")
        .skip(1)
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(counted, COUNT, "{stdout}");
}
