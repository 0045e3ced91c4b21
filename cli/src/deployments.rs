//! Wiring: the gateway's `DeploymentRuntime` on this process's executor
//! (`weir_executor::runtime::LocalExecutor`). Each call is handed over as is; the executor's
//! typed errors become problem documents here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weir_api::TenantId;
use weir_api::rest::{DeadLetter, Executor, LogLine, MetricSeries, Usage};
use weir_connectors::EndpointSpec;
use weir_executor::runtime::{Assignment, Binding, DeadLetterJournal, LocalExecutor, RuntimeError};
use weir_gateway::{
    ApiError, DeploymentRuntime, FeedQuery, IngestMessage, OutputMessage, ProblemField,
    StartBinding, StartDeployment,
};
use weir_store::{ControlStore, StoreError};
use weir_tenants::Quotas;

/// The executor of `weir serve`, as the gateway reaches it.
#[derive(Debug)]
pub(crate) struct LocalDeployments {
    pub(crate) executor: LocalExecutor,
    /// Where usage is made durable (hours, days, totals).
    pub(crate) usage: Arc<crate::observe::UsageMeter>,
    /// Where module log lines are kept (`/v1/logs` reads them there).
    pub(crate) store: Arc<dyn ControlStore>,
    /// What writes them there.
    pub(crate) log_writer: Arc<crate::observe::StoreLogWriter>,
}

/// Dead letters kept in the control store (`/v1/deadletters` reads them there).
#[derive(Debug)]
pub(crate) struct StoreJournal(pub(crate) Arc<dyn ControlStore>);

#[async_trait]
impl DeadLetterJournal for StoreJournal {
    async fn append(
        &self,
        tenant: &TenantId,
        letters: Vec<DeadLetter>,
        max_bytes: u64,
    ) -> Result<Vec<u64>, String> {
        match self.0.append_dead_letters(tenant, letters, max_bytes).await {
            Ok(appended) => Ok(appended.seqs),
            // A deleted tenant's letters have nowhere to go: its deployments are stopping.
            Err(StoreError::NoTenant(_)) => Ok(Vec::new()),
            Err(error) => Err(error.to_string()),
        }
    }
}

fn api_error(error: RuntimeError) -> ApiError {
    let problems: Vec<ProblemField> = error
        .problems
        .into_iter()
        .map(|p| ProblemField {
            path: p.path,
            message: p.message,
        })
        .collect();
    let mut api = ApiError::new(error.code, error.message);
    if !problems.is_empty() {
        api = api.with_errors(problems);
    }
    if let Some(wait) = error.retry_after {
        api = api.with_retry_after(wait);
    }
    api
}

fn binding(start: StartBinding) -> Binding {
    Binding {
        endpoint: EndpointSpec {
            name: start.endpoint,
            kind: start.kind,
            address: start.address,
            settings: start.settings,
            secret: start.secret,
        },
        topics: start.topics,
    }
}

#[async_trait]
impl DeploymentRuntime for LocalDeployments {
    async fn start(&self, request: StartDeployment) -> Result<Vec<String>, ApiError> {
        self.executor
            .start(Assignment {
                tenant: request.tenant,
                quotas: request.quotas,
                id: request.id,
                graph: request.graph,
                modules: request.modules,
                configuration: request.configuration,
                source: binding(request.source),
                sink: binding(request.sink),
                dead_letters: request.dead_letters.map(binding),
                partition_key: request.partition_key,
            })
            .await
            .map_err(api_error)
    }

    async fn stop(&self, tenant: &TenantId, id: &str) {
        self.executor.stop(tenant, id).await;
    }

    async fn forget(&self, tenant: &TenantId, id: &str) {
        self.executor.forget(tenant, id).await;
    }

    async fn retire(&self, tenant: &TenantId, id: &str) {
        self.executor.retire(tenant, id).await;
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        id: &str,
        messages: Vec<IngestMessage>,
        wait: Option<Duration>,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        self.executor
            .ingest(tenant, id, messages, wait)
            .await
            .map_err(api_error)
    }

    async fn take_outputs(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: usize,
    ) -> Result<Vec<OutputMessage>, ApiError> {
        self.executor
            .take_outputs(tenant, id, limit)
            .await
            .map_err(api_error)
    }

    async fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
        self.executor.status(tenant, id).await
    }

    async fn running(&self) -> Vec<weir_gateway::RunningDeployment> {
        let executor = self
            .executor
            .executors()
            .await
            .into_iter()
            .next()
            .map(|e| e.id)
            .unwrap_or_default();
        self.executor
            .running()
            .await
            .into_iter()
            .map(|running| weir_gateway::RunningDeployment {
                tenant: running.tenant,
                id: running.id,
                executor: executor.clone(),
                problem: running.problem,
                starting: running.starting,
            })
            .collect()
    }

    async fn logs(&self, tenant: &TenantId, query: &FeedQuery) -> Vec<LogLine> {
        self.log_writer.synced(tenant).await;
        match self
            .store
            .module_logs(
                tenant,
                query.deployment.as_deref(),
                query.after,
                query.limit(),
                query.newest,
            )
            .await
        {
            Ok(lines) => lines
                .into_iter()
                .map(|l| LogLine {
                    seq: l.seq,
                    at_ms: l.at_ms,
                    level: l.level,
                    deployment: l.deployment,
                    node: Some(l.node),
                    message: l.message,
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, %tenant, "cannot read module log lines");
                Vec::new()
            }
        }
    }

    async fn metrics(&self, tenant: &TenantId) -> Vec<MetricSeries> {
        self.executor.metrics(tenant).await
    }

    async fn usage(&self, tenant: &TenantId) -> Usage {
        self.usage.usage(&self.executor, tenant).await
    }

    async fn executors(&self) -> Vec<Executor> {
        self.executor.executors().await
    }

    async fn cordon(&self, executor: &str, cordoned: bool) -> bool {
        self.executor.cordon(executor, cordoned)
    }

    async fn forget_tenant(&self, tenant: &TenantId) {
        self.executor.forget_tenant(tenant).await;
        self.usage.forget(tenant).await;
    }

    async fn set_quotas(&self, tenant: &TenantId, quotas: &Quotas) {
        self.executor.set_quotas(tenant, quotas);
        // A lowered `max_log_lines` drops the oldest kept lines at once.
        self.log_writer.synced(tenant).await;
        if let Err(error) = self
            .store
            .append_module_logs(tenant, Vec::new(), u64::from(quotas.max_log_lines))
            .await
        {
            tracing::warn!(%error, %tenant, "cannot trim the tenant's log lines");
        }
    }
}
