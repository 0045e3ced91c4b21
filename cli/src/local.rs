//! Running a graph in this process on embedded defaults: the wasm engine, one dataflow worker,
//! an in-memory state store, and the event-time frontier with the source closed after the input,
//! so every window closes and the run ends. Shared by `weir run GRAPH` and `weir test`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use weir_api::graph::{OperationType, ValidatedGraph};
use weir_api::{DataItem, HlcClock, Message, TenantId};
use weir_executor::dataflow::{
    DataflowRuntime, DataflowSettings, DeadLetter, DirectoryModules, FrontierPolicy, SinkOutput,
    TenantContext, prepare,
};
use weir_executor::logs::LogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{EngineConfig, OperatorEngine};
use weir_state::MemoryStateStore;
use weir_tenants::Quotas;

/// The local platform: one engine and one dataflow worker.
pub(crate) struct LocalPlatform {
    engine: OperatorEngine,
    runtime: DataflowRuntime,
    modules: DirectoryModules,
}

/// What a graph run produced.
pub(crate) struct GraphRun {
    pub(crate) outputs: Vec<SinkOutput>,
    pub(crate) dead_letters: Vec<DeadLetter>,
    pub(crate) warnings: Vec<String>,
}

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
        Ok(TenantContext::new(
            TenantId::new(name)?,
            Quotas::default(),
            state,
            logs,
            Arc::new(MetricsRegistry::new(1000)),
            Arc::new(HlcClock::new("weir-local")),
        ))
    }

    /// Runs `graph` over `inputs` (topic, payload) until it completes or `timeout` passes.
    pub(crate) async fn run(
        &self,
        graph: &ValidatedGraph,
        configuration: &BTreeMap<String, String>,
        tenant: &TenantContext,
        inputs: Vec<(String, Vec<u8>)>,
        timeout: Duration,
    ) -> anyhow::Result<GraphRun> {
        let settings = DataflowSettings {
            frontier: FrontierPolicy::EventTime,
            ..DataflowSettings::default()
        };
        let prepared = prepare(
            "local",
            graph,
            configuration,
            tenant,
            &self.modules,
            &self.engine,
            settings,
            "weir-local",
        )
        .await?;
        let warnings = prepared.warnings.clone();
        let mut deployment = self.runtime.deploy(prepared)?;
        let source = graph
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
        tokio::task::spawn_blocking(move || {
            for (topic, payload) in inputs {
                handle.send(
                    DataItem::Message(Message::new(clock.now(), topic, payload)),
                    |_| {},
                )?;
            }
            Ok::<_, weir_executor::dataflow::SourceError>(())
        })
        .await??;
        deployment.close_sources();
        let (done, deployment) =
            tokio::task::spawn_blocking(move || (deployment.wait_complete(timeout), deployment))
                .await?;
        if !done {
            anyhow::bail!("the graph did not finish within {} ms", timeout.as_millis());
        }
        Ok(GraphRun {
            outputs: deployment.outputs().drain(),
            dead_letters: deployment.dead_letters().drain(),
            warnings,
        })
    }
}
