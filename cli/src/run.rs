//! `weir run`: one operator of one module over a list of messages, in process, on embedded
//! defaults (in-memory state store, tenant `local`, default quotas). Items that fail are
//! reported as dead letters on stderr, with their reason, and the run goes on.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::json;
use weir_api::{DataItem, Hlc, Message};
use weir_executor::dataflow::{DeadLetter, SinkOutput};
use weir_executor::logs::{LogRecord, LogSink, MemoryLogSink};
use weir_executor::{
    CallLimits, EngineConfig, ModuleConfiguration, OperatorEngine, OperatorError, OperatorInstance,
    OperatorKind,
};
use weir_state::MemoryStateStore;

use crate::OutputFormat;

/// Arguments of `weir run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// A module (a wasm32-wasip2 component, `.wasm`) to run one operator of, or a graph
    /// definition (`.yaml`, `.json`) to run whole.
    module: PathBuf,
    /// For a graph: where its modules are (`<dir>/<module name>.wasm`).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    modules: PathBuf,
    /// For a module: which operator interface to call: map, filter, branch, accumulate or delay.
    #[arg(long, short = 'k', default_value = "map")]
    operator: String,
    /// A configuration value, as key=value (repeatable): handed to the module's init, or for a
    /// graph, the deployment configuration its parameters draw from.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// A file with one message payload per line; `-` (the default) reads stdin.
    #[arg(long, short = 'i', default_value = "-")]
    input: PathBuf,
    /// The topic input messages arrive on.
    #[arg(long, default_value = "probe/1")]
    topic: String,
    /// Print results as JSON lines instead of text.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

/// Prints the module's log lines as they come.
#[derive(Debug)]
struct PrintingLog {
    kept: MemoryLogSink,
}

impl LogSink for PrintingLog {
    fn record(&self, record: LogRecord) {
        eprintln!(
            "log {:?} [{}] {}",
            record.level, record.context, record.message
        );
        self.kept.record(record);
    }
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let is_graph = args
        .module
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    if is_graph {
        return run_graph(args).await;
    }
    let kind = OperatorKind::from_name(&args.operator).with_context(|| {
        format!(
            "unknown operator {:?}: use map, filter, branch, accumulate or delay",
            args.operator
        )
    })?;
    let properties = args
        .config
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--config {pair:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))?;
    let payloads = read_payloads(&args.input)?;

    let engine = OperatorEngine::new(&EngineConfig {
        pooling: None,
        ..EngineConfig::default()
    })?;
    let module = tokio::task::spawn_blocking(move || engine.load(&bytes).map(|m| (engine, m)))
        .await
        .context("module compilation panicked")?;
    let (engine, module) = module
        .with_context(|| format!("{} is not a module weir can run", args.module.display()))?;

    let logs: Arc<dyn LogSink> = Arc::new(PrintingLog {
        kept: MemoryLogSink::new(16),
    });
    let tenant =
        crate::local::LocalPlatform::tenant("local", Arc::new(MemoryStateStore::default()), logs)?;
    let env = tenant.node_env(format!("run/{kind}"));
    let configuration = ModuleConfiguration {
        properties,
        module_schemas: Vec::new(),
    };
    let mut node = OperatorInstance::new(
        engine,
        module,
        kind,
        configuration,
        env.clone(),
        CallLimits::from_quotas(&tenant.live_quotas.get()),
    )?;
    if let Err(error) = node.start().await {
        bail!("the {kind} operator did not start: {error}");
    }

    let clock = &tenant.clock;
    let items: Vec<DataItem> = payloads
        .into_iter()
        .map(|payload| DataItem::Message(Message::new(clock.now(), args.topic.clone(), payload)))
        .collect();
    let mut out = std::io::stdout().lock();
    let mut dead_letters = 0usize;
    let mut dead_letter = |index: usize, error: &OperatorError| {
        dead_letters += 1;
        eprintln!(
            "dead letter: item {} reason={} {error}",
            index + 1,
            error.reason()
        );
    };
    match kind {
        OperatorKind::Accumulate => {
            let staged = DataItem::Message(Message::new(window_start(), "", ""));
            match node.accumulate(&staged, &items).await {
                Ok(result) => print_item(&mut out, args.output, None, &result)?,
                Err(error) => dead_letter(0, &error),
            }
        }
        _ => {
            for (index, item) in items.iter().enumerate() {
                let time = item.timestamp().cloned().unwrap_or_else(|| clock.now());
                match kind {
                    OperatorKind::Map => match node.map(item).await {
                        Ok(output) => print_item(&mut out, args.output, None, &output)?,
                        Err(error) => dead_letter(index, &error),
                    },
                    OperatorKind::Filter => match node.filter(item).await {
                        Ok(true) => print_item(&mut out, args.output, None, item)?,
                        Ok(false) => {}
                        Err(error) => dead_letter(index, &error),
                    },
                    OperatorKind::Branch => match node.branch(&time, item).await {
                        Ok(arm) => print_item(
                            &mut out,
                            args.output,
                            Some(if arm { "True" } else { "False" }),
                            item,
                        )?,
                        Err(error) => dead_letter(index, &error),
                    },
                    OperatorKind::Delay => match node.delay(item, &time).await {
                        Ok(later) => print_time(&mut out, args.output, &time, &later)?,
                        Err(error) => dead_letter(index, &error),
                    },
                    OperatorKind::Accumulate => {}
                }
            }
        }
    }
    let stats = node.stats();
    eprintln!(
        "done: {} items, {} dead letters, {} instance(s), {} fuel",
        items.len(),
        dead_letters,
        stats.instantiations,
        stats.fuel_used
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `weir run GRAPH`: the whole graph over the input, on embedded defaults. The input is read as
/// the graph takes it and outputs are printed as they come, so a run of any length holds only
/// what is in flight; a `hostapp.env.list` beside the graph may name a schema for every `init`.
async fn run_graph(args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let graph = crate::local::LocalGraph::load(&args.module)?;
    for warning in &graph.warnings {
        eprintln!("warning: {warning}");
    }
    let configuration = args
        .config
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--config {pair:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()?;
    let reader: Box<dyn BufRead + Send> = if args.input.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot read input {}", args.input.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let inputs = crate::local::lines_as_inputs(reader, args.topic.clone());
    let platform = crate::local::LocalPlatform::new(&args.modules)?;
    let logs: Arc<dyn LogSink> = Arc::new(PrintingLog {
        kept: MemoryLogSink::new(16),
    });
    let tenant =
        crate::local::LocalPlatform::tenant("local", Arc::new(MemoryStateStore::default()), logs)?;
    let printer = Printer {
        out: std::io::stdout(),
        format: args.output,
    };
    let (counts, mut printer) = platform
        .run(
            &graph,
            &configuration,
            &tenant,
            inputs,
            Duration::from_secs(60),
            printer,
        )
        .await?;
    printer.out.flush().context("cannot write the outputs")?;
    for warning in &counts.warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "done: {} messages in, {} out, {} dead letters",
        counts.inputs, counts.outputs, counts.dead_letters
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Prints a graph run's outputs on stdout and its dead letters on stderr, as they come.
struct Printer {
    /// Line-buffered: each output shows as soon as it is printed.
    out: std::io::Stdout,
    format: OutputFormat,
}

impl crate::local::RunConsumer for Printer {
    fn output(&mut self, output: SinkOutput) -> anyhow::Result<()> {
        print_item(&mut self.out, self.format, None, &output.accept())
    }

    fn dead_letter(&mut self, letter: DeadLetter) -> anyhow::Result<()> {
        eprintln!(
            "dead letter: node {} reason={} {}",
            letter.node, letter.reason, letter.detail
        );
        Ok(())
    }
}

fn read_payloads(input: &PathBuf) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read input {}", input.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut payloads = Vec::new();
    for line in reader.lines() {
        let line = line.context("cannot read input")?;
        if !line.trim().is_empty() {
            payloads.push(line);
        }
    }
    Ok(payloads)
}

/// The start of the current 10-second window: the dataflow time of `weir run`'s one fold.
fn window_start() -> Hlc {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Hlc::at(Duration::from_secs(now.as_secs() / 10 * 10), "weir-run")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn print_item(
    out: &mut impl Write,
    format: OutputFormat,
    arm: Option<&str>,
    item: &DataItem,
) -> anyhow::Result<()> {
    match (format, item) {
        (OutputFormat::Text, DataItem::Message(m)) => {
            let prefix = arm.map(|a| format!("[{a}] ")).unwrap_or_default();
            writeln!(out, "{prefix}{} {}", text(&m.topic), text(&m.payload))?;
        }
        (OutputFormat::Json, DataItem::Message(m)) => {
            let properties: serde_json::Map<String, serde_json::Value> = m
                .user_properties
                .iter()
                .map(|(k, v)| (text(k), serde_json::Value::String(text(v))))
                .collect();
            let mut value = json!({
                "topic": text(&m.topic),
                "payload": text(&m.payload),
                "properties": { "user-properties": properties },
                "timestamp": m.timestamp.to_ts(),
            });
            if let (Some(arm), Some(object)) = (arm, value.as_object_mut()) {
                object.insert("arm".to_owned(), json!(arm));
            }
            writeln!(out, "{value}")?;
        }
        (_, DataItem::Bytes(bytes)) => writeln!(out, "{}", text(bytes))?,
        (_, DataItem::Snapshot(s)) => {
            writeln!(out, "snapshot {}x{} {}", s.width, s.height, text(&s.format))?
        }
    }
    Ok(())
}

fn print_time(
    out: &mut impl Write,
    format: OutputFormat,
    from: &Hlc,
    to: &Hlc,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Text => writeln!(out, "{from} -> {to}")?,
        OutputFormat::Json => {
            writeln!(out, "{}", json!({ "from": from.to_ts(), "to": to.to_ts() }))?
        }
    }
    Ok(())
}
