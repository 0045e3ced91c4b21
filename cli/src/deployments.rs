//! The deployments of `weir serve`: the gateway's `DeploymentRuntime` on this process's
//! dataflow runtime. The HTTP source is the deployment's `SourceHandle`; the HTTP sink is its
//! output queue, read by `/ingest?wait=true`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::Mutex;
use weir_api::graph::{OperationType, parse_graph};
use weir_api::{DataItem, ErrorCode, HlcClock, TenantId};
use weir_executor::dataflow::{
    DataflowRuntime, DataflowSettings, DeployError, Deployment, ModuleResolver, SourceError,
    TenantContext, message_from_broker, prepare,
};
use weir_executor::logs::MemoryLogSink;
use weir_executor::metrics::MetricsRegistry;
use weir_executor::{CompiledModule, OperatorEngine};
use weir_gateway::{
    ApiError, DeploymentRuntime, IngestMessage, OutputMessage, ProblemField, StartDeployment,
};
use weir_state::StateStore;

/// Dead letters a deployment keeps for its status.
const KEPT_DEAD_LETTERS: usize = 100;

struct Running {
    deployment: Deployment,
    source: String,
    dead_letters: VecDeque<serde_json::Value>,
}

/// Deployments running in this process.
pub(crate) struct LocalDeployments {
    engine: OperatorEngine,
    runtime: DataflowRuntime,
    state: Arc<dyn StateStore>,
    logs: Arc<MemoryLogSink>,
    metrics: Arc<MetricsRegistry>,
    clock: Arc<HlcClock>,
    running: Mutex<HashMap<DeploymentKey, Arc<Mutex<Running>>>>,
}

/// A deployment by tenant and id.
type DeploymentKey = (TenantId, String);

impl std::fmt::Debug for LocalDeployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployments").finish_non_exhaustive()
    }
}

impl LocalDeployments {
    pub(crate) fn new(
        engine: OperatorEngine,
        workers: usize,
        state: Arc<dyn StateStore>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            engine,
            runtime: DataflowRuntime::start(workers, tokio::runtime::Handle::current())?,
            state,
            logs: Arc::new(MemoryLogSink::new(10_000)),
            metrics: Arc::new(MetricsRegistry::new(1_000)),
            clock: Arc::new(HlcClock::new("weir-serve")),
            running: Mutex::new(HashMap::new()),
        })
    }

    async fn find(&self, tenant: &TenantId, id: &str) -> Result<Arc<Mutex<Running>>, ApiError> {
        self.running
            .lock()
            .await
            .get(&(tenant.clone(), id.to_owned()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the deployment is not running on this executor",
                )
            })
    }
}

/// Modules handed over by the gateway, compiled on first use.
struct GivenModules {
    engine: OperatorEngine,
    bytes: BTreeMap<String, Vec<u8>>,
}

impl ModuleResolver for GivenModules {
    fn resolve(&self, reference: &str) -> Result<Arc<CompiledModule>, String> {
        let bytes = self
            .bytes
            .get(reference)
            .ok_or_else(|| format!("no module for {reference:?}"))?;
        self.engine.load(bytes).map_err(|e| e.to_string())
    }
}

fn deploy_error(error: DeployError) -> ApiError {
    match error {
        DeployError::Invalid(problems) => ApiError::new(
            ErrorCode::InvalidDeployment,
            "the deployment cannot be built",
        )
        .with_errors(
            problems
                .into_iter()
                .map(|p| ProblemField {
                    path: format!("graph.operations[{}]", p.node),
                    message: p.message,
                })
                .collect(),
        ),
        DeployError::RuntimeStopped => {
            ApiError::new(ErrorCode::Unavailable, "the executor is shutting down")
        }
        other => ApiError::new(ErrorCode::InvalidDeployment, other.to_string()),
    }
}

#[async_trait]
impl DeploymentRuntime for LocalDeployments {
    async fn start(&self, request: StartDeployment) -> Result<Vec<String>, ApiError> {
        let graph = parse_graph(&request.graph)
            .map_err(|e| ApiError::new(ErrorCode::InvalidDeployment, e.to_string()))?;
        let source = graph
            .operations()
            .iter()
            .find(|o| o.operation_type == OperationType::Source)
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidDeployment, "the graph has no source")
            })?;
        let context = TenantContext {
            tenant: request.tenant.clone(),
            quotas: request.quotas.clone(),
            state: self.state.clone(),
            logs: self.logs.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        };
        let modules = GivenModules {
            engine: self.engine.clone(),
            bytes: request.modules,
        };
        let id = format!("{}/{}", request.tenant, request.id);
        let prepared = prepare(
            &id,
            &graph,
            &request.configuration,
            &context,
            &modules,
            &self.engine,
            DataflowSettings::default(),
            "weir-serve",
        )
        .await
        .map_err(deploy_error)?;
        let warnings = prepared.warnings.clone();
        let deployment = self.runtime.deploy(prepared).map_err(deploy_error)?;
        let running = Running {
            deployment,
            source,
            dead_letters: VecDeque::new(),
        };
        self.running
            .lock()
            .await
            .insert((request.tenant, request.id), Arc::new(Mutex::new(running)));
        Ok(warnings)
    }

    async fn stop(&self, tenant: &TenantId, id: &str) {
        self.running
            .lock()
            .await
            .remove(&(tenant.clone(), id.to_owned()));
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        id: &str,
        messages: Vec<IngestMessage>,
        wait: Option<Duration>,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        let running = self.find(tenant, id).await?;
        // One ingest at a time per deployment, so a waiting caller reads its own outputs.
        let mut running = running.lock().await;
        let source = running
            .deployment
            .source(&running.source)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Unavailable, "the deployment's source is closed")
            })?;
        let pending = Arc::new(AtomicUsize::new(0));
        for message in messages {
            let properties = message
                .user_properties
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect();
            let item = message_from_broker(
                message.topic,
                message.payload,
                None,
                properties,
                &self.clock,
            );
            pending.fetch_add(1, Ordering::AcqRel);
            let done = pending.clone();
            let sent = source.try_send(DataItem::Message(item), move |_| {
                done.fetch_sub(1, Ordering::AcqRel);
            });
            match sent {
                Ok(()) => {}
                Err(SourceError::Full) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        "the deployment's intake is full; retry",
                    ));
                }
                Err(SourceError::Closed) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "the deployment no longer takes messages",
                    ));
                }
            }
        }
        let Some(wait) = wait else {
            return Ok(Vec::new());
        };
        let deadline = Instant::now() + wait;
        let mut outputs = Vec::new();
        while pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            let deployment = &running.deployment;
            let popped = deployment.outputs().try_pop();
            let letter = deployment.dead_letters().try_pop();
            if let Some(DataItem::Message(message)) =
                popped.map(weir_executor::dataflow::SinkOutput::accept)
            {
                let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
                outputs.push(OutputMessage {
                    topic: text(&message.topic),
                    payload: text(&message.payload),
                    user_properties: message
                        .user_properties
                        .iter()
                        .map(|(k, v)| (text(k), text(v)))
                        .collect(),
                });
            }
            if let Some(letter) = letter {
                let summary = json!({"node": letter.node, "reason": letter.reason, "detail": letter.detail, "time": letter.time});
                letter.accept();
                if running.dead_letters.len() >= KEPT_DEAD_LETTERS {
                    running.dead_letters.pop_front();
                }
                running.dead_letters.push_back(summary);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(outputs)
    }

    async fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
        let running = self.find(tenant, id).await.ok()?;
        let running = running.lock().await;
        let stats = running.deployment.stats();
        Some(json!({
            "received": stats.received.load(Ordering::Relaxed),
            "emitted": stats.emitted.load(Ordering::Relaxed),
            "dead_lettered": stats.dead_lettered.load(Ordering::Relaxed),
            "late": stats.late.load(Ordering::Relaxed),
            "clock_drift": stats.clock_drift.load(Ordering::Relaxed),
            "recent_dead_letters": running.dead_letters,
        }))
    }
}
