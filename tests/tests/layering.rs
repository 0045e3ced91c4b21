//! The dependency rules of ARCHITECTURE.md, checked on the real dependency graph: only the
//! executor (and the binaries and tests that link it) may depend on wasmtime.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

fn normal_dependency_closure(metadata: &Value, root: &str) -> BTreeSet<String> {
    let packages: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| *id)
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(packages[dep_id].to_owned()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn only_the_executor_side_depends_on_wasmtime() {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    for crate_name in [
        "weir-api",
        "weir-tenants",
        "weir-state",
        "weir-store",
        "weir-connectors",
        "weir-gateway",
        "weir-scheduler",
    ] {
        let closure = normal_dependency_closure(&metadata, crate_name);
        assert!(
            !closure.contains("wasmtime"),
            "{crate_name} depends on wasmtime"
        );
        assert!(
            !closure.contains("weir-executor"),
            "{crate_name} depends on weir-executor"
        );
    }
    assert!(normal_dependency_closure(&metadata, "weir-executor").contains("wasmtime"));
}
