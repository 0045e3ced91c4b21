//! `weir test DIR`: runs golden tests laid out as Azure's `samples/wasm/tests` (azure-compat
//! §7.3, §11 row 14), in process, with no broker. Each `*.test.yaml` names a graph, an input
//! folder (`*.json` files are published to `probe/1`, `*.raw` to `snapshot_simulation`) and an
//! expected file: an object is compared with the last output, an array with all outputs in
//! order, `[]` means no output. Outputs are compared as `{topic, payload, properties}` with JSON
//! payloads parsed, after `select` (keep these dot-paths) and `ignores` (drop these). A
//! `statestore.json` beside the graph seeds the state store; a `hostapp.env.list` beside it may
//! name a JSON schema (`TK_SCHEMA_CONFIG_PATH`) that every operator's `init` receives, as with
//! Azure's local host app.
//!
//! Outputs are taken as the graph makes them and only what the comparison needs is kept (an
//! expected array's length and one more, or the last output), so a test may expect any number.
//! A test's `timeout` (ms) is how long its graph may go without taking an input or producing
//! anything before the test fails as stuck.
//!
//! The graph runs on the event-time frontier and its source is closed after the inputs, so every
//! window closes at once and "no output" is known without waiting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use weir_api::DataItem;
use weir_executor::dataflow::{DeadLetter, SinkOutput};
use weir_executor::logs::MemoryLogSink;
use weir_state::{MemoryStateStore, SetOptions, StateScope, StateStore};

use crate::local::{LocalGraph, LocalPlatform, RunConsumer, files_as_inputs};

/// Arguments of `weir test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// A folder searched for `*.test.yaml` files.
    dir: PathBuf,
    /// Where the modules are: a reference resolves to `<dir>/<last path segment, tag removed>.wasm`.
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    modules: PathBuf,
    /// Print results as JSON instead of text.
    #[arg(long, value_enum, default_value = "text")]
    output: crate::OutputFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    graph: PathBuf,
    input: PathBuf,
    expected: PathBuf,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default)]
    select: Vec<String>,
    #[serde(default)]
    ignores: Vec<String>,
}

fn default_timeout() -> u64 {
    60_000
}

/// The outcome of one test.
#[derive(Debug)]
struct Outcome {
    file: PathBuf,
    name: String,
    passed: bool,
    detail: String,
    took: Duration,
}

pub(crate) async fn run(args: TestArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut files = Vec::new();
    find_tests(&args.dir, &mut files)
        .with_context(|| format!("cannot read {}", args.dir.display()))?;
    files.sort();
    if files.is_empty() {
        bail!("no *.test.yaml files under {}", args.dir.display());
    }
    let platform = LocalPlatform::new(&args.modules)?;
    let mut outcomes = Vec::new();
    for file in files {
        let started = Instant::now();
        let (name, result) = match std::fs::read_to_string(&file)
            .context("cannot read the test")
            .and_then(|text| {
                serde_saphyr::from_str::<TestCase>(&text).context("not a test definition")
            }) {
            Ok(case) => {
                let name = case.name.clone();
                (name, run_case(&file, case, &platform).await)
            }
            Err(error) => (file.display().to_string(), Err(error)),
        };
        let (passed, detail) = match result {
            Ok(None) => (true, String::new()),
            Ok(Some(diff)) => (false, diff),
            Err(error) => (false, format!("error: {error:#}")),
        };
        outcomes.push(Outcome {
            file,
            name,
            passed,
            detail,
            took: started.elapsed(),
        });
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    match args.output {
        crate::OutputFormat::Text => {
            for outcome in &outcomes {
                let verdict = if outcome.passed { "PASS" } else { "FAIL" };
                println!(
                    "{verdict} {} ({}, {} ms)",
                    outcome.name,
                    outcome.file.display(),
                    outcome.took.as_millis()
                );
                for line in outcome.detail.lines() {
                    println!("    {line}");
                }
            }
            println!("{} passed, {failed} failed", outcomes.len() - failed);
        }
        crate::OutputFormat::Json => {
            let tests: Vec<Value> = outcomes
                .iter()
                .map(|o| json!({"name": o.name, "file": o.file.display().to_string(), "passed": o.passed, "detail": o.detail, "millis": o.took.as_millis()}))
                .collect();
            println!(
                "{}",
                json!({"passed": outcomes.len() - failed, "failed": failed, "tests": tests})
            );
        }
    }
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn find_tests(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            find_tests(&path, found)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.yaml"))
        {
            found.push(path);
        }
    }
    Ok(())
}

/// Runs one test: `Ok(None)` passed, `Ok(Some(diff))` failed.
async fn run_case(
    file: &Path,
    case: TestCase,
    platform: &LocalPlatform,
) -> anyhow::Result<Option<String>> {
    let base = file.parent().unwrap_or(Path::new("."));
    let graph_path = base.join(&case.graph);
    let graph = LocalGraph::load(&graph_path)?;

    let expected_path = base.join(&case.expected);
    let expected_text = std::fs::read_to_string(&expected_path)
        .with_context(|| format!("cannot read {}", expected_path.display()))?;
    let expected: Value = serde_json::from_str(&expected_text)
        .with_context(|| format!("{} is not JSON", expected_path.display()))?;

    let state = Arc::new(MemoryStateStore::default());
    let context =
        LocalPlatform::tenant("golden", state.clone(), Arc::new(MemoryLogSink::new(1000)))?;
    seed_state(&graph_path, &context.state_scope(), state.as_ref()).await?;

    let input_dir = base.join(&case.input);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&input_dir)
        .with_context(|| format!("cannot read input folder {}", input_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("json" | "raw")))
        .collect();
    files.sort();
    let collected = Collected {
        keep: match &expected {
            Value::Array(items) => Keep::First(items.len() + 1),
            _ => Keep::Last,
        },
        select: case.select.clone(),
        ignores: case.ignores.clone(),
        outputs: Vec::new(),
        more_outputs: 0,
        dead_letters: Vec::new(),
        more_dead_letters: 0,
    };
    let (_, collected) = platform
        .run(
            &graph,
            &BTreeMap::new(),
            &context,
            files_as_inputs(files),
            Duration::from_millis(case.timeout),
            collected,
        )
        .await?;

    let shape = |value: &Value| project(&normalise(value), &case.select, &case.ignores);
    let (want, got) = match &expected {
        Value::Array(items) => (
            Value::Array(items.iter().map(shape).collect()),
            Value::Array(collected.outputs),
        ),
        object => (
            shape(object),
            collected.outputs.last().cloned().unwrap_or(Value::Null),
        ),
    };
    if want == got {
        return Ok(None);
    }
    let mut diff = diff_lines(&want, &got);
    if collected.more_outputs > 0 {
        diff.push_str(&format!(
            "\n... and {} more outputs",
            collected.more_outputs
        ));
    }
    for line in collected.dead_letters {
        diff.push_str(&format!("\n{line}"));
    }
    if collected.more_dead_letters > 0 {
        diff.push_str(&format!(
            "\n... and {} more dead letters",
            collected.more_dead_letters
        ));
    }
    Ok(Some(diff))
}

/// Dead letters a failed test shows; more are counted.
const SHOWN_DEAD_LETTERS: usize = 20;

/// Which outputs the comparison needs.
enum Keep {
    /// The first n (an expected array: its length and one more, so a diff shows the extra).
    First(usize),
    /// Only the last (an expected object).
    Last,
}

/// What the comparison needs of a test's run, taken as outputs come: bounded by the expected
/// file, however many outputs the graph makes.
struct Collected {
    keep: Keep,
    select: Vec<String>,
    ignores: Vec<String>,
    /// Outputs as compared (`select`, `ignores` applied).
    outputs: Vec<Value>,
    more_outputs: usize,
    dead_letters: Vec<String>,
    more_dead_letters: usize,
}

impl RunConsumer for Collected {
    fn output(&mut self, output: SinkOutput) -> anyhow::Result<()> {
        let shaped = project(
            &normalise(&output_json(&output.accept())),
            &self.select,
            &self.ignores,
        );
        match self.keep {
            Keep::Last => self.outputs = vec![shaped],
            Keep::First(limit) if self.outputs.len() < limit => self.outputs.push(shaped),
            Keep::First(_) => self.more_outputs += 1,
        }
        Ok(())
    }

    fn dead_letter(&mut self, letter: DeadLetter) -> anyhow::Result<()> {
        if self.dead_letters.len() < SHOWN_DEAD_LETTERS {
            self.dead_letters.push(format!(
                "dead letter at {}: {} ({})",
                letter.node, letter.reason, letter.detail
            ));
        } else {
            self.more_dead_letters += 1;
        }
        Ok(())
    }
}

/// Seeds the state store from `statestore.json` beside the graph: a list of one-key objects.
async fn seed_state(
    graph: &Path,
    scope: &StateScope,
    store: &dyn StateStore,
) -> anyhow::Result<()> {
    let path = graph.with_file_name("statestore.json");
    if !path.is_file() {
        return Ok(());
    }
    let entries: Vec<BTreeMap<String, Value>> =
        serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{} must be a list of one-key objects", path.display()))?;
    for entry in entries {
        for (key, value) in entry {
            let value = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            store
                .set(
                    scope,
                    key.as_bytes(),
                    value.as_bytes(),
                    SetOptions::default(),
                )
                .await?;
        }
    }
    Ok(())
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An output as the runner compares it; the local sink publishes to topic `sensors`.
fn output_json(item: &DataItem) -> Value {
    match item {
        DataItem::Message(message) => {
            let properties: Map<String, Value> = message
                .user_properties
                .iter()
                .filter(|(k, _)| k.as_ref() != b"__ts")
                .map(|(k, v)| (text(k), Value::String(text(v))))
                .collect();
            json!({"topic": "sensors", "payload": text(&message.payload), "properties": {"user-properties": properties}})
        }
        DataItem::Snapshot(snapshot) => {
            json!({"topic": "sensors", "payload": text(&snapshot.frame)})
        }
        DataItem::Bytes(bytes) => json!({"topic": "sensors", "payload": text(bytes)}),
    }
}

/// Parses a JSON payload string so that formatting does not matter.
fn normalise(value: &Value) -> Value {
    let mut value = value.clone();
    let parsed = match value.get("payload") {
        Some(Value::String(payload)) => serde_json::from_str::<Value>(payload).ok(),
        _ => None,
    };
    if let (Some(parsed), Some(object)) = (parsed, value.as_object_mut()) {
        object.insert("payload".to_owned(), parsed);
    }
    value
}

/// Keeps the `select` dot-paths (all when empty), then removes the `ignores` ones.
fn project(value: &Value, select: &[String], ignores: &[String]) -> Value {
    let mut kept = if select.is_empty() {
        value.clone()
    } else {
        let mut out = Value::Object(Map::new());
        for path in select {
            if let Some(found) = get_path(value, path) {
                set_path(&mut out, path, found.clone());
            }
        }
        out
    };
    for path in ignores {
        remove_path(&mut kept, path);
    }
    kept
}

fn get_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut current = value;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        let Some(object) = current.as_object_mut() else {
            return;
        };
        if keys.peek().is_none() {
            object.insert(key.to_owned(), new);
            return;
        }
        current = object
            .entry(key.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn remove_path(value: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('.') else {
        if let Some(object) = value.as_object_mut() {
            object.remove(path);
        }
        return;
    };
    let mut current = value;
    for key in parent.split('.') {
        let Some(next) = current.get_mut(key) else {
            return;
        };
        current = next;
    }
    if let Some(object) = current.as_object_mut() {
        object.remove(last);
    }
}

/// A readable line diff of two JSON values (pretty-printed).
fn diff_lines(want: &Value, got: &Value) -> String {
    let want = serde_json::to_string_pretty(want).unwrap_or_default();
    let got = serde_json::to_string_pretty(got).unwrap_or_default();
    let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::from("expected (-) vs actual (+):");
    for i in 0..want.len().max(got.len()) {
        match (want.get(i), got.get(i)) {
            (Some(w), Some(g)) if w == g => out.push_str(&format!("\n  {w}")),
            (w, g) => {
                if let Some(w) = w {
                    out.push_str(&format!("\n- {w}"));
                }
                if let Some(g) = g {
                    out.push_str(&format!("\n+ {g}"));
                }
            }
        }
    }
    out
}
