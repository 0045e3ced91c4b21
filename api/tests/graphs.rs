//! Golden tests of graph parsing and validation: every file in `graphs/valid` parses, and its
//! resolved topology matches `<file>.expected`; every file in `graphs/invalid` is refused with
//! exactly the problems in `<file>.expected`. `UPDATE_GOLDEN=1 cargo test -p weir-api` rewrites
//! the expected files; review the diff before committing it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use weir_api::graph::{Arm, GraphContract, ValidatedGraph, parse_graph};

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/graphs")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no graphs in {}", dir.display());
    files
}

fn summary(graph: &ValidatedGraph) -> String {
    let ops = graph.operations();
    let mut text = format!(
        "contract: {}\n",
        match graph.contract() {
            GraphContract::Ga => "wasm-graph:processor@1.1.0",
            GraphContract::Preview => "tinykube-graph:processor@1.0.0",
        }
    );
    text.push_str("order:\n");
    for &i in graph.topological_order() {
        let op = &ops[i];
        let module = op
            .module
            .as_deref()
            .map(|m| format!(" [{m}]"))
            .unwrap_or_default();
        writeln!(
            text,
            "  {} ({}){module}",
            op.name,
            op.operation_type.as_str()
        )
        .unwrap();
    }
    text.push_str("edges:\n");
    for edge in graph.edges() {
        let arm = match edge.arm {
            Some(Arm::True) => " (True)",
            Some(Arm::False) => " (False)",
            None => "",
        };
        let schema = edge
            .schema_name
            .as_deref()
            .map(|s| format!(" schema {s}"))
            .unwrap_or_default();
        writeln!(
            text,
            "  {}{arm} -> {}{schema}",
            ops[edge.from].name, ops[edge.to].name
        )
        .unwrap();
    }
    text
}

fn compare(file: &Path, actual: &str) {
    let expected_path = PathBuf::from(format!("{}.expected", file.display()));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with UPDATE_GOLDEN=1",
            expected_path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs from its golden file",
        file.display()
    );
}

#[test]
fn valid_graphs_parse_to_their_golden_topology() {
    for file in corpus("valid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let graph = parse_graph(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        compare(&file, &summary(&graph));
    }
}

#[test]
fn invalid_graphs_report_every_golden_problem() {
    for file in corpus("invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let error = parse_graph(&text)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", file.display()));
        let problems: String = error.problems().iter().map(|p| format!("{p}\n")).collect();
        compare(&file, &problems);
    }
}

/// The official schema, vendored as a test fixture (see `tests/schema/README.md`).
fn official_schema() -> jsonschema::Validator {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema/aio-wasm-graph-config-1.0.0.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the official graph schema is needed at {}: {e}",
            path.display()
        )
    });
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn document(file: &Path) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[test]
fn the_official_schema_agrees_with_the_golden_corpus() {
    let schema = official_schema();
    for file in corpus("valid") {
        let doc = document(&file);
        if doc["moduleRequirements"].get("hostlibVersion").is_some() {
            continue; // the preview form has its own, older schema
        }
        let errors: Vec<String> = schema
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "official schema rejects {}: {errors:?}",
            file.display()
        );
    }
    for file in corpus("invalid") {
        let name = file.file_name().unwrap().to_str().unwrap();
        if name.starts_with("schema-") {
            assert!(
                !schema.is_valid(&document(&file)),
                "official schema accepts {name}, weir refuses it"
            );
        }
    }
}

#[test]
fn ten_thousand_operations_validate_quickly_and_report_each_problem() {
    let mut text = String::from(
        "metadata: {$schema: s, name: big, version: '1'}\nmoduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}\noperations:\n  - {operationType: source, name: source}\n  - {operationType: sink, name: sink}\n",
    );
    for i in 0..10_000 {
        writeln!(text, "  - {{operationType: map, name: m{i}, module: echo}}").unwrap();
    }
    text.push_str("connections:\n  - {from: {name: source}, to: {name: m0}}\n");
    for i in 1..10_000 {
        writeln!(
            text,
            "  - {{from: {{name: m{}}}, to: {{name: m{i}}}}}",
            i - 1
        )
        .unwrap();
    }
    text.push_str("  - {from: {name: m9999}, to: {name: sink}}\n");
    let graph = parse_graph(&text).unwrap();
    assert_eq!(graph.topological_order().len(), 10_002);
    let broken = text.replace(
        "{from: {name: m4999}, to: {name: m5000}}",
        "{from: {name: m4999}, to: {name: nowhere}}",
    );
    let problems = parse_graph(&broken).unwrap_err().problems();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"connections[5000].to.name"), "{paths:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("\"m5000\" has no input")),
        "{problems:?}"
    );
}
