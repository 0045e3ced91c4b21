//! Running a graph in this process on embedded defaults: the wasm engine, one dataflow worker,
//! an in-memory state store, and the event-time frontier with the source closed after the input,
//! so every window closes and the run ends. Shared by `weir run GRAPH` and `weir test`.
//!
//! Inputs are fed and outputs handed on at the same time, so a run may produce any number of
//! outputs: the deployment's output queue (`DataflowSettings::output_capacity`) bounds what
//! waits, not what a run makes. As Azure's local host app does, a `hostapp.env.list` beside the
//! graph may name a JSON schema (`TK_SCHEMA_CONFIG_PATH`) that every operator's `init` receives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir_api::graph::{OperationType, ValidatedGraph};
use weir_api::{DataItem, HlcClock, Message, TenantId};
use weir_executor::dataflow::{
    DataflowRuntime, DataflowSettings, DeadLetter, Deployment, DirectoryModules, FrontierPolicy,
    ModuleResolver, SinkOutput, SourceHandle, TenantContext, prepare,
};
use weir_executor::logs::LogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{CompiledModule, EngineConfig, ModuleSchema, OperatorEngine};
use weir_state::MemoryStateStore;
use weir_tenants::Quotas;

/// The file beside a graph that holds the local host's environment (Docker env-file syntax).
pub(crate) const HOST_ENV_FILE: &str = "hostapp.env.list";

/// The variable of [`HOST_ENV_FILE`] that names the JSON schema every operator's `init` gets.
const SCHEMA_VARIABLE: &str = "TK_SCHEMA_CONFIG_PATH";

/// The media type the schema of [`SCHEMA_VARIABLE`] is delivered with.
const SCHEMA_CONTENT_TYPE: &str = "application/schema+json";

/// How long the drain waits for an output before it looks at the feeder and the deadline again.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The local platform: one engine and one dataflow worker.
pub(crate) struct LocalPlatform {
    engine: OperatorEngine,
    runtime: DataflowRuntime,
    modules: DirectoryModules,
}

/// A graph definition read from a file, with what the local host adds from beside it.
pub(crate) struct LocalGraph {
    /// The graph.
    pub(crate) graph: ValidatedGraph,
    /// Schemas every operator's `init` receives (from [`HOST_ENV_FILE`]).
    pub(crate) schemas: Vec<ModuleSchema>,
    /// What the local host ignored, in words.
    pub(crate) warnings: Vec<String>,
}

impl LocalGraph {
    /// Reads and validates the graph at `path` and the [`HOST_ENV_FILE`] beside it, if any.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read graph {}", path.display()))?;
        let graph = weir_api::graph::parse_graph(&text)
            .with_context(|| format!("{} is not a valid graph", path.display()))?;
        let (schemas, warnings) = host_schemas(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self {
            graph,
            schemas,
            warnings,
        })
    }
}

/// The schemas and warnings of the [`HOST_ENV_FILE`] in `dir`: none when there is no such file.
///
/// The file is read as Docker's `--env-file`: `KEY=VALUE` lines, blank lines and `#` comments
/// skipped, the value taken literally. `TK_SCHEMA_CONFIG_PATH` names a JSON file, relative to
/// `dir` unless absolute, delivered as a `module-schema` named after the file, of type
/// `application/schema+json`; other variables are reported as ignored.
fn host_schemas(dir: &Path) -> anyhow::Result<(Vec<ModuleSchema>, Vec<String>)> {
    let env_file = dir.join(HOST_ENV_FILE);
    let text = match std::fs::read_to_string(&env_file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Vec::new()));
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", env_file.display()));
        }
    };
    let mut schemas = Vec::new();
    let mut warnings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            warnings.push(format!(
                "{}:{}: {line:?} takes its value from the host's environment, which weir does not pass on; ignored",
                env_file.display(),
                number + 1
            ));
            continue;
        };
        if key.trim_end() != SCHEMA_VARIABLE {
            warnings.push(format!(
                "{}:{}: {key} is not a variable weir's local host knows; ignored",
                env_file.display(),
                number + 1
            ));
            continue;
        }
        let path = dir.join(value);
        let content = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}:{}: {SCHEMA_VARIABLE} names {}, which cannot be read",
                env_file.display(),
                number + 1,
                path.display()
            )
        })?;
        serde_json::from_str::<serde_json::Value>(&content).with_context(|| {
            format!(
                "{}:{}: the schema {} is not JSON",
                env_file.display(),
                number + 1,
                path.display()
            )
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| value.to_owned());
        schemas.push(ModuleSchema {
            name,
            content_type: SCHEMA_CONTENT_TYPE.to_owned(),
            content,
        });
    }
    Ok((schemas, warnings))
}

/// The platform's modules, with the schemas the local host hands every operator.
struct HostModules<'a> {
    modules: &'a DirectoryModules,
    schemas: &'a [ModuleSchema],
}

impl ModuleResolver for HostModules<'_> {
    fn resolve(&self, reference: &str) -> Result<Arc<CompiledModule>, String> {
        self.modules.resolve(reference)
    }

    fn shared_schemas(&self) -> Vec<ModuleSchema> {
        self.schemas.to_vec()
    }
}

/// Where a run's results go, as they come: on the thread that drains the deployment, so it may
/// block (write to stdout); an error stops the run.
pub(crate) trait RunConsumer: Send + 'static {
    /// The next output, in the order the sinks produced them.
    fn output(&mut self, output: SinkOutput) -> anyhow::Result<()>;
    /// An item that failed, with why.
    fn dead_letter(&mut self, letter: DeadLetter) -> anyhow::Result<()>;
}

/// What a graph run handled.
#[derive(Debug, Default)]
pub(crate) struct RunCounts {
    /// Messages the source took.
    pub(crate) inputs: usize,
    /// Outputs handed to the consumer.
    pub(crate) outputs: usize,
    /// Dead letters handed to the consumer.
    pub(crate) dead_letters: usize,
    /// What the deployment kept but did not deliver (configuration no operation declares).
    pub(crate) warnings: Vec<String>,
}

/// One input message: its topic and payload, or why it could not be read.
pub(crate) type Input = anyhow::Result<(String, Vec<u8>)>;

impl LocalPlatform {
    /// A platform whose modules come from `modules_dir`.
    pub(crate) fn new(modules_dir: &Path) -> anyhow::Result<Self> {
        if !modules_dir.is_dir() {
            anyhow::bail!(
                "module folder {} does not exist; build the modules or pass --modules DIR",
                modules_dir.display()
            );
        }
        let engine = OperatorEngine::new(&EngineConfig {
            pooling: None,
            ..EngineConfig::default()
        })?;
        let runtime = DataflowRuntime::start(1, tokio::runtime::Handle::current())?;
        let modules = DirectoryModules::new(modules_dir, engine.clone());
        Ok(Self {
            engine,
            runtime,
            modules,
        })
    }

    /// A tenant context for a local run.
    pub(crate) fn tenant(
        name: &str,
        state: Arc<MemoryStateStore>,
        logs: Arc<dyn LogSink>,
    ) -> anyhow::Result<TenantContext> {
        let quotas = Quotas {
            // A local run holds what its windows need; its input is the user's own file.
            max_inflight_bytes: u64::MAX,
            ..Quotas::default()
        };
        Ok(TenantContext::new(
            TenantId::new(name)?,
            quotas,
            state,
            logs,
            Arc::new(MetricsRegistry::new(1000)),
            Arc::new(HlcClock::new("weir-local")),
        ))
    }

    /// Runs `graph` over `inputs`, read lazily, handing each output and dead letter to
    /// `consumer` while inputs are still fed, until the graph completes. Fails when the graph
    /// goes `timeout` without taking an input it is offered or producing anything (it is
    /// stuck; time spent waiting for the input itself, such as a terminal, does not count), or
    /// when an input cannot be read or the consumer fails. Gives the consumer back with the
    /// counts.
    pub(crate) async fn run<C: RunConsumer>(
        &self,
        graph: &LocalGraph,
        configuration: &BTreeMap<String, String>,
        tenant: &TenantContext,
        inputs: impl Iterator<Item = Input> + Send + 'static,
        timeout: Duration,
        consumer: C,
    ) -> anyhow::Result<(RunCounts, C)> {
        let settings = DataflowSettings {
            frontier: FrontierPolicy::EventTime,
            // Windows of a replay hold their messages until later input (or the end) moves
            // event time past them: the feeder waits on the channel, never on places.
            max_in_flight: Some(usize::MAX),
            ..DataflowSettings::default()
        };
        let modules = HostModules {
            modules: &self.modules,
            schemas: &graph.schemas,
        };
        let prepared = prepare(
            "local",
            &graph.graph,
            configuration,
            tenant,
            &modules,
            &self.engine,
            settings,
            "weir-local",
        )
        .await?;
        let warnings = prepared.warnings.clone();
        let deployment = self.runtime.deploy(prepared)?;
        let source = graph
            .graph
            .operations()
            .iter()
            .find(|o| o.operation_type == OperationType::Source)
            .map(|o| o.name.clone())
            .context("the graph has no source")?;
        let handle = deployment
            .source(&source)
            .context("the deployment has no source")?
            .clone();
        let clock = tenant.clock.clone();
        let (counts, consumer) = tokio::task::spawn_blocking(move || {
            drive(deployment, handle, clock, inputs, timeout, consumer)
        })
        .await??;
        Ok((RunCounts { warnings, ..counts }, consumer))
    }
}

/// Feeds the deployment from a thread of its own while this thread drains it into `consumer`.
fn drive<C: RunConsumer>(
    mut deployment: Deployment,
    handle: SourceHandle,
    clock: Arc<HlcClock>,
    inputs: impl Iterator<Item = Input> + Send,
    timeout: Duration,
    mut consumer: C,
) -> anyhow::Result<(RunCounts, C)> {
    let progress = FeedProgress::default();
    std::thread::scope(|scope| {
        let feeder = scope.spawn(|| feed(handle, &clock, inputs, &progress));
        let drained = drain(&mut deployment, feeder, &progress, timeout, &mut consumer);
        if drained.is_err() {
            // Unblocks a feeder waiting for room: it stops at its next message, and dropping the
            // deployment disconnects the intake it may be waiting on.
            progress.stop.store(true, Ordering::Release);
            drop(deployment);
        }
        drained.map(|counts| (counts, consumer))
    })
}

/// What the feeder and the drain share.
#[derive(Debug, Default)]
struct FeedProgress {
    /// Inputs the source took.
    taken: AtomicUsize,
    /// Whether the feeder is waiting for the next input (not for the graph).
    reading: AtomicBool,
    /// Set by the drain when it gives up: the feeder stops.
    stop: AtomicBool,
}

/// Sends every input to the source, waiting while its intake is full; returns when the input
/// ends (the handle is dropped then, so the source can close), fails, or `stop` is set.
fn feed(
    handle: SourceHandle,
    clock: &HlcClock,
    mut inputs: impl Iterator<Item = Input>,
    progress: &FeedProgress,
) -> anyhow::Result<()> {
    loop {
        progress.reading.store(true, Ordering::Release);
        let next = inputs.next();
        progress.reading.store(false, Ordering::Release);
        let Some(input) = next else {
            return Ok(());
        };
        if progress.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let (topic, payload) = input?;
        handle
            .send(
                DataItem::Message(Message::new(clock.now(), topic, payload)),
                |_| {},
            )
            .context("the graph stopped taking input")?;
        progress.taken.fetch_add(1, Ordering::Release);
    }
}

/// Hands outputs and dead letters to `consumer` as they come, closes the source once the feeder
/// is done, and returns when the deployment completes.
fn drain<C: RunConsumer>(
    deployment: &mut Deployment,
    feeder: std::thread::ScopedJoinHandle<'_, anyhow::Result<()>>,
    progress: &FeedProgress,
    timeout: Duration,
    consumer: &mut C,
) -> anyhow::Result<RunCounts> {
    let mut counts = RunCounts::default();
    let mut feeder = Some(feeder);
    let mut last_progress = Instant::now();
    loop {
        let before = (counts.outputs, counts.dead_letters, counts.inputs);
        hand_on(deployment, consumer, &mut counts)?;
        if feeder.as_ref().is_some_and(|f| f.is_finished()) {
            if let Some(finished) = feeder.take() {
                finished
                    .join()
                    .map_err(|_| anyhow::anyhow!("the input feeder panicked"))??;
            }
            deployment.close_sources();
        }
        counts.inputs = progress.taken.load(Ordering::Acquire);
        if feeder.is_none() && deployment.is_complete() {
            // The sinks pushed everything before they reported completion.
            hand_on(deployment, consumer, &mut counts)?;
            return Ok(counts);
        }
        let waiting_for_input = feeder.is_some() && progress.reading.load(Ordering::Acquire);
        if waiting_for_input || (counts.outputs, counts.dead_letters, counts.inputs) != before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= timeout {
            bail!(
                "the graph made no progress for {} ms ({} messages in, {} out)",
                timeout.as_millis(),
                counts.inputs,
                counts.outputs
            );
        }
        if let Some(output) = deployment.outputs().pop_timeout(DRAIN_POLL) {
            counts.outputs += 1;
            consumer.output(output)?;
            last_progress = Instant::now();
        }
    }
}

/// Hands everything waiting now to `consumer`: dead letters first, then outputs.
fn hand_on<C: RunConsumer>(
    deployment: &Deployment,
    consumer: &mut C,
    counts: &mut RunCounts,
) -> anyhow::Result<()> {
    while let Some(letter) = deployment.dead_letters().try_pop() {
        counts.dead_letters += 1;
        consumer.dead_letter(letter)?;
    }
    while let Some(output) = deployment.outputs().try_pop() {
        counts.outputs += 1;
        consumer.output(output)?;
    }
    Ok(())
}

/// The lines of `reader` that are not blank, as payloads on `topic`.
pub(crate) fn lines_as_inputs(
    reader: impl std::io::BufRead + Send + 'static,
    topic: String,
) -> impl Iterator<Item = Input> + Send + 'static {
    reader.lines().filter_map(move |line| match line {
        Ok(line) if line.trim().is_empty() => None,
        Ok(line) => Some(Ok((topic.clone(), line.into_bytes()))),
        Err(error) => Some(Err(anyhow::Error::new(error).context("cannot read input"))),
    })
}

/// The files in `paths`, each one message, read when the source wants it: `*.raw` files on
/// topic `snapshot_simulation`, others on `probe/1` (azure-compat §7.3).
pub(crate) fn files_as_inputs(paths: Vec<PathBuf>) -> impl Iterator<Item = Input> + Send + 'static {
    paths.into_iter().map(|path| {
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read input {}", path.display()))?;
        let topic = if path.extension().is_some_and(|e| e == "raw") {
            "snapshot_simulation"
        } else {
            "probe/1"
        };
        Ok((topic.to_owned(), bytes))
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        reason = "test code: a failed expectation is a failed test"
    )]

    use super::*;

    #[test]
    fn reads_the_schema_hostapp_env_list_names_relative_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(dir.path().join("schemas/s.json"), r#"{"type":"object"}"#).unwrap();
        std::fs::write(
            dir.path().join(HOST_ENV_FILE),
            "# local host\n\n  TK_SCHEMA_CONFIG_PATH=schemas/s.json\nTK_OTHER=1\nHOME\n",
        )
        .unwrap();
        let (schemas, warnings) = host_schemas(dir.path()).unwrap();
        assert_eq!(
            schemas,
            vec![ModuleSchema {
                name: "s.json".to_owned(),
                content_type: "application/schema+json".to_owned(),
                content: r#"{"type":"object"}"#.to_owned(),
            }]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains(":4: TK_OTHER is not a variable"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains(":5: \"HOME\" takes its value"),
            "{warnings:?}"
        );
    }

    #[test]
    fn no_hostapp_env_list_means_no_schemas() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_schemas(dir.path()).unwrap(), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_schema_that_is_missing_or_not_json_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(HOST_ENV_FILE),
            "TK_SCHEMA_CONFIG_PATH=absent.json\n",
        )
        .unwrap();
        let error = format!("{:#}", host_schemas(dir.path()).unwrap_err());
        assert!(
            error.contains("hostapp.env.list:1: TK_SCHEMA_CONFIG_PATH names")
                && error.contains("absent.json, which cannot be read"),
            "{error}"
        );
        std::fs::write(dir.path().join("absent.json"), "{not json").unwrap();
        let error = format!("{:#}", host_schemas(dir.path()).unwrap_err());
        assert!(error.contains("is not JSON"), "{error}");
    }
}
