//! `weir test` as a user runs it: the shipped golden suite passes; a wrong expectation fails
//! with exit code 1 and a readable diff.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden");

fn weir_test(dir: &Path, extra: &[&str]) -> (String, String, Option<i32>) {
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("test")
        .arg(dir)
        .arg("--modules")
        .arg(weir_guests::Guest::dir())
        .args(extra)
        .output()
        .unwrap();
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
        output.status.code(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn the_shipped_golden_suite_passes() {
    let (stdout, stderr, code) = weir_test(Path::new(GOLDEN), &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("PASS Complex pipeline - temperature accumulation per window"),
        "{stdout}"
    );
    // The same graph, with its snapshot arm (wasi-nn), with and without an image: the image's
    // label reaches the enrichment output.
    for name in [
        "Complex pipeline - temperature and humidity in one window",
        "Complex pipeline - temperature, humidity and an image classified through wasi-nn",
    ] {
        assert!(stdout.contains(&format!("PASS {name}")), "{stdout}");
    }
    // The schema of the scenario's hostapp.env.list reaches the filter's init.
    for name in [
        "Schema filter - a reading that fits the schema passes",
        "Schema filter - a fractional humidity is filtered out",
        "Schema filter - only the fitting reading of four comes out",
    ] {
        assert!(stdout.contains(&format!("PASS {name}")), "{stdout}");
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff_and_exit_code_one() {
    let dir = std::env::temp_dir().join(format!("weir-golden-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    copy_dir(Path::new(GOLDEN), &dir);
    let expected: PathBuf = dir.join("t01-simple-temp-conversion/expected/expected.json");
    let text = std::fs::read_to_string(&expected)
        .unwrap()
        .replace("653.8888888888889", "654");
    std::fs::write(&expected, text).unwrap();
    let (stdout, _, code) = weir_test(&dir, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL Simple graph - Fahrenheit to Celsius"),
        "{stdout}"
    );
    assert!(stdout.contains("-       \"value\": 654"), "{stdout}");
    assert!(
        stdout.contains("+       \"value\": 653.8888888888889"),
        "{stdout}"
    );
    assert!(stdout.contains("8 passed, 1 failed"), "{stdout}");
    let (json, _, code) = weir_test(&dir, &["--output", "json"]);
    assert_eq!(code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(8), Some(1))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_test_expecting_more_outputs_than_the_queue_holds_completes() {
    const COUNT: usize = 12_000; // the output queue holds 10,000
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("t-many");
    std::fs::create_dir_all(case.join("input")).unwrap();
    std::fs::create_dir_all(case.join("expected")).unwrap();
    std::fs::copy(
        Path::new(GOLDEN).join("graph-echo.yaml"),
        dir.path().join("graph-echo.yaml"),
    )
    .unwrap();
    let mut expected = Vec::with_capacity(COUNT);
    for n in 0..COUNT {
        std::fs::write(
            case.join(format!("input/m{n:05}.json")),
            format!("{{\"n\":{n}}}"),
        )
        .unwrap();
        expected.push(serde_json::json!({"topic": "sensors", "payload": format!("{{\"n\":{n}}}")}));
    }
    std::fs::write(
        case.join("expected/expected.json"),
        serde_json::to_string(&expected).unwrap(),
    )
    .unwrap();
    std::fs::write(
        case.join("t-many.test.yaml"),
        "name: \"Echo - twelve thousand outputs in order\"\ngraph: \"../graph-echo.yaml\"\ninput: \"./input\"\nexpected: \"./expected/expected.json\"\nselect: [\"topic\", \"payload\"]\n",
    )
    .unwrap();
    let (stdout, stderr, code) = weir_test_within(dir.path(), Duration::from_secs(240));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("PASS Echo - twelve thousand outputs in order"),
        "{stdout}"
    );
}

/// `weir test DIR --modules <guests>` that gives up after `limit` (see `common::weir_within`).
fn weir_test_within(dir: &Path, limit: Duration) -> (String, String, Option<i32>) {
    let modules = weir_guests::Guest::dir();
    common::weir_within(
        &[
            "test",
            dir.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
        ],
        limit,
    )
}
