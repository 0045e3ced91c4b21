//! The scheduler's reconcile loop on this gateway's control store and runtime: the store's
//! deployments are the desired state, the runtime's running deployments the actual one
//! (`weir_scheduler::round` does the rest).
//!
//! Every action takes the tenant's lock (the one the deployment handlers hold) and reads the
//! record again before it acts, so a plan made from a snapshot never undoes what the API did
//! since: a start of a deployment deleted or paused meanwhile does nothing, a stop of one
//! created or resumed meanwhile does nothing, and a state is not recorded over a pause.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use weir_api::TenantId;
use weir_api::graph::parse_graph;
use weir_api::rest::CreateDeployment;
use weir_api::scale::{instance_ids, is_instance, recording_instance, split_instance};
use weir_scheduler::{
    DeploymentKey, DeploymentState, Desired, DesiredStore, ExecutorId, ExecutorInfo, ExecutorLink,
    ExecutorState, Health, Observed, PlacementError, Reconciler, Resources, RoundReport,
    SpreadPacker,
};
use weir_tenants::Quotas;

use crate::GatewayState;
use crate::routes::{running_revision, start_request};

/// A stored spec's `instances` (1 when it cannot be read).
fn instances_of(spec: &serde_json::Value) -> u32 {
    spec.get("instances")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

/// The desired state: the control store's deployments.
struct StoreDesired {
    state: GatewayState,
    /// The detail recorded with a deployment this loop started (`resumed after restart` at
    /// boot).
    started: &'static str,
    nodes: Arc<Mutex<NodeCounts>>,
    /// Why each unplaced deployment waits, as last recorded (so it is recorded once, not
    /// every round); an entry per deployment the store has at most, dropped once it is placed.
    waiting: Arc<Mutex<HashMap<DeploymentKey, (String, std::time::Instant)>>>,
}

/// How long a recorded reason for waiting is trusted before the history is read again.
const WAITING_RECHECK: Duration = Duration::from_secs(30);

/// The status detail of a deployment no executor runs yet; an unplaced one adds why.
const WAITING: &str = "waiting for an executor";

/// Wasm nodes per (tenant, graph, version), read once: one entry per graph version a stored
/// deployment uses (pruned every round).
type NodeCounts = HashMap<(TenantId, String, String), u32>;

impl std::fmt::Debug for StoreDesired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreDesired").finish_non_exhaustive()
    }
}

impl StoreDesired {
    /// The wasm nodes of the tenant's graph `name@version` (0 if it cannot be read: the start
    /// says why).
    async fn wasm_nodes(&self, tenant: &TenantId, name: &str, version: &str) -> u32 {
        let key = (tenant.clone(), name.to_owned(), version.to_owned());
        if let Some(nodes) = self
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return *nodes;
        }
        let Ok(Some(graph)) = self.state.store.graph(tenant, name, version).await else {
            return 0;
        };
        let Ok(Some(bytes)) = self.state.blobs.get(&graph.digest).await else {
            return 0;
        };
        let nodes = String::from_utf8(bytes)
            .ok()
            .and_then(|text| parse_graph(&text).ok())
            .map_or(0, |graph| {
                let count = graph
                    .operations()
                    .iter()
                    .filter(|operation| operation.module.is_some())
                    .count();
                u32::try_from(count).unwrap_or(u32::MAX)
            });
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, nodes);
        nodes
    }

    fn detail(&self, state: &DeploymentState) -> String {
        match state {
            DeploymentState::Pending => WAITING.to_owned(),
            DeploymentState::Placed { executor } => format!("placed on executor {executor}"),
            DeploymentState::Running { .. } => self.started.to_owned(),
            DeploymentState::Degraded { reason, .. } | DeploymentState::Failed { reason } => {
                reason.clone()
            }
            DeploymentState::Stopped => "stopped".to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl DesiredStore for StoreDesired {
    async fn desired(&self) -> Result<Vec<Desired>, String> {
        let records = self
            .state
            .store
            .all_deployments()
            .await
            .map_err(|e| e.to_string())?;
        let mut quotas: BTreeMap<TenantId, Quotas> = BTreeMap::new();
        let mut used = HashSet::new();
        // A suspended tenant's deployments run nowhere, whatever their word.
        let mut suspended = HashSet::new();
        let mut desired = Vec::with_capacity(records.len());
        for record in records {
            let Ok(spec) = serde_json::from_value::<CreateDeployment>(record.spec) else {
                continue;
            };
            if !quotas.contains_key(&record.tenant) {
                // A tenant deleted since the list: its deployments go with it.
                let Some(tenant) = self
                    .state
                    .store
                    .tenant(&record.tenant)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    continue;
                };
                quotas.insert(record.tenant.clone(), tenant.quotas);
                if tenant.suspended {
                    suspended.insert(record.tenant.clone());
                }
            }
            let Some(tenant_quotas) = quotas.get(&record.tenant) else {
                continue;
            };
            let nodes = self
                .wasm_nodes(&record.tenant, &spec.graph.name, &spec.graph.version)
                .await;
            used.insert((
                record.tenant.clone(),
                spec.graph.name.clone(),
                spec.graph.version.clone(),
            ));
            let status = if suspended.contains(&record.tenant) {
                "paused".to_owned()
            } else {
                record.status
            };
            // One entry per instance (`<id>#<n>` when there are several: weir_api::scale).
            for id in instance_ids(&record.id, spec.instances) {
                desired.push(Desired {
                    cost: Resources::for_deployment(nodes, tenant_quotas),
                    key: DeploymentKey {
                        tenant: record.tenant.clone(),
                        id,
                    },
                    status: status.clone(),
                    labels: Vec::new(),
                });
            }
        }
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| used.contains(key));
        let keys: HashSet<&DeploymentKey> = desired.iter().map(|d| &d.key).collect();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| keys.contains(key));
        Ok(desired)
    }

    async fn record_unplaced(
        &self,
        key: &DeploymentKey,
        reason: &PlacementError,
    ) -> Result<(), String> {
        let detail = format!("{WAITING}: {reason}");
        let waiting = || self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // Recorded lately: not read again (the API may have written another detail since, so
        // the history is looked at again after a while).
        if waiting()
            .get(key)
            .is_some_and(|(said, at)| *said == detail && at.elapsed() < WAITING_RECHECK)
        {
            return Ok(());
        }
        let (id, instance) = split_instance(&key.id);
        let _changing = self.state.tenant_locks.lock(&key.tenant).await;
        let Some(record) = self
            .state
            .store
            .deployment(&key.tenant, id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        // Only a pending word gets the reason, and of several instances, the one that speaks
        // for the deployment.
        if record.status == "pending" && instance == recording_instance(instances_of(&record.spec))
        {
            let said = self
                .state
                .store
                .deployment_history(&key.tenant, id)
                .await
                .map_err(|e| e.to_string())?
                .pop()
                .is_some_and(|last| last.status == "pending" && last.detail == detail);
            if !said {
                self.state
                    .store
                    .set_deployment_status(&key.tenant, id, "pending", &detail)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        waiting().insert(key.clone(), (detail, std::time::Instant::now()));
        Ok(())
    }

    async fn record(&self, key: &DeploymentKey, state: &DeploymentState) -> Result<(), String> {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        let _changing = self.state.tenant_locks.lock(&key.tenant).await;
        let (id, instance) = split_instance(&key.id);
        let Some(record) = self
            .state
            .store
            .deployment(&key.tenant, id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        // Paused (or marked failed) by the API since the plan: its word stands.
        if !DeploymentState::from_stored(&record.status, "").wants_to_run() {
            return Ok(());
        }
        // Of several instances, one speaks for the deployment (the others show in its
        // `runtime.instances`).
        let instances = instances_of(&record.spec);
        if instance != recording_instance(instances) {
            return Ok(());
        }
        self.state
            .store
            .set_deployment_status(&key.tenant, id, state.status(), &self.detail(state))
            .await
            .map(|_existed| ())
            .map_err(|e| e.to_string())
    }
}

/// The actual state: the runtime's deployments.
struct RuntimeLink {
    state: GatewayState,
}

impl std::fmt::Debug for RuntimeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeLink").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl ExecutorLink for RuntimeLink {
    async fn observe(&self) -> Result<Vec<Observed>, String> {
        let running = self.state.runtime.running().await;
        Ok(running
            .into_iter()
            .filter_map(|deployment| {
                Some(Observed {
                    executor: ExecutorId::new(deployment.executor).ok()?,
                    key: DeploymentKey {
                        tenant: deployment.tenant,
                        id: deployment.id,
                    },
                    reading: !deployment.starting,
                    health: match deployment.problem {
                        Some(problem) => Health::Degraded(problem),
                        None => Health::Running,
                    },
                })
            })
            .collect())
    }

    async fn start(&self, key: &DeploymentKey, executor: &ExecutorId) -> Result<bool, String> {
        let state = &self.state;
        let _changing = state.tenant_locks.lock(&key.tenant).await;
        let (id, instance) = split_instance(&key.id);
        let record = match state.store.deployment(&key.tenant, id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(false),
            Err(error) => return Err(error.to_string()),
        };
        if !DeploymentState::from_stored(&record.status, "").wants_to_run()
            || !is_instance(instances_of(&record.spec), instance)
        {
            return Ok(false);
        }
        // Started by the API since the plan.
        if state
            .runtime
            .runs_on(&key.tenant, &key.id, executor.as_str())
            .await
        {
            return Ok(true);
        }
        let tenant = match state.store.tenant(&key.tenant).await {
            Ok(Some(tenant)) => tenant,
            Ok(None) => return Ok(false),
            Err(error) => return Err(error.to_string()),
        };
        let spec: CreateDeployment =
            serde_json::from_value(record.spec).map_err(|e| e.to_string())?;
        let mut request = start_request(state, &key.tenant, &tenant.quotas, &spec)
            .await
            .map_err(|e| e.to_string())?;
        request.revision = running_revision(state, &key.tenant, &spec.id).await;
        // The instance runs under its own id (the deployment's for a single instance).
        request.id.clone_from(&key.id);
        state
            .runtime
            .start_on(executor.as_str(), request)
            .await
            .map(|_warnings| true)
            .map_err(|e| e.to_string())
    }

    async fn stop(&self, key: &DeploymentKey, _executor: &ExecutorId, forget: bool) {
        let state = &self.state;
        let _changing = state.tenant_locks.lock(&key.tenant).await;
        let (id, instance) = split_instance(&key.id);
        match state.store.deployment(&key.tenant, id).await {
            Ok(None) => state.runtime.forget(&key.tenant, &key.id).await,
            // An instance the deployment no longer has (scaled, or one instance became
            // several): retired, so its broker session ends with it (the loop asks only once
            // the instances taking over read their input).
            Ok(Some(record)) if !is_instance(instances_of(&record.spec), instance) => {
                state.runtime.retire(&key.tenant, &key.id).await;
            }
            Ok(Some(record))
                if !forget && !DeploymentState::from_stored(&record.status, "").wants_to_run() =>
            {
                state.runtime.stop(&key.tenant, &key.id).await;
            }
            // Created or resumed since the plan: it should run.
            Ok(Some(_)) => {}
            Err(error) => {
                tracing::warn!(tenant = %key.tenant, deployment = %key.id, %error, "stop skipped: the store cannot be read");
            }
        }
    }
}

/// The scheduler's reconcile loop on this gateway: it drives the runtime to the control
/// store's deployments on every round (`weir_scheduler::round`), at boot and then every
/// period, replacing the one-off resume at start.
#[derive(Debug, Clone)]
pub struct ControlLoop {
    reconciler: Arc<tokio::sync::Mutex<Reconciler<SpreadPacker>>>,
    state: GatewayState,
    nodes: Arc<Mutex<NodeCounts>>,
    waiting: Arc<Mutex<HashMap<DeploymentKey, (String, std::time::Instant)>>>,
}

impl ControlLoop {
    /// A loop on `state`'s store and runtime, its pool empty until the first round.
    pub fn new(state: GatewayState) -> Self {
        Self {
            reconciler: Arc::new(tokio::sync::Mutex::new(Reconciler::new(SpreadPacker))),
            state,
            nodes: Arc::default(),
            waiting: Arc::default(),
        }
    }

    /// Brings the pool up to the runtime's executors: new ones registered, gone ones removed,
    /// cordons followed. The in-process executor declares no capacity of its own (the
    /// gateway's admission of `max_instances` against the instance pool bounds it), so it is
    /// registered with all the room there is.
    async fn refresh_pool(&self) {
        let executors = self.state.runtime.executors().await;
        let members = if self.state.executors.places() {
            self.state.executors.infos()
        } else {
            Vec::new()
        };
        let mut reconciler = self.reconciler.lock().await;
        let pool = reconciler.pool_mut();
        let mut present = HashSet::new();
        // Executor processes, with the capacity they declared.
        for (info, wanted) in members {
            let id = info.id.clone();
            // A lost id that joined again is a new member: its capacity and labels may differ.
            if pool.info(&id).is_some_and(|known| *known != info)
                && let Err(error) = pool.remove_executor(&id)
            {
                tracing::warn!(%error, "executor not replaced");
            }
            if pool.state(&id).is_none()
                && let Err(error) = pool.add_executor(info)
            {
                tracing::warn!(%error, "executor not registered");
            }
            if pool.state(&id) != Some(wanted)
                && let Err(error) = pool.set_state(&id, wanted)
            {
                tracing::warn!(%error, "executor state not changed");
            }
            present.insert(id);
        }
        for executor in executors {
            let Ok(id) = ExecutorId::new(executor.id) else {
                continue;
            };
            if pool.state(&id).is_none() {
                let info = ExecutorInfo {
                    id: id.clone(),
                    capacity: Resources {
                        fuel_per_second: u64::MAX,
                        memory_bytes: u64::MAX,
                        instances: u32::MAX,
                    },
                    labels: BTreeMap::new(),
                };
                if let Err(error) = pool.add_executor(info) {
                    tracing::warn!(%error, "executor not registered");
                }
            }
            let wanted = match executor.state.as_str() {
                "cordoned" => ExecutorState::Cordoned,
                "draining" => ExecutorState::Draining,
                "lost" => ExecutorState::Lost,
                _ => ExecutorState::Ready,
            };
            if pool.state(&id) != Some(wanted)
                && let Err(error) = pool.set_state(&id, wanted)
            {
                tracing::warn!(%error, "executor state not changed");
            }
            present.insert(id);
        }
        let gone: Vec<ExecutorId> = pool
            .executor_ids()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            // What it ran is placed again next round.
            if let Err(error) = pool.remove_executor(&id) {
                tracing::warn!(%error, "executor not removed");
            }
        }
    }

    /// One round now; `started` is the detail recorded with each deployment it starts.
    pub async fn round(&self, started: &'static str) -> Result<RoundReport, String> {
        for lost in self.state.executors.expire(std::time::Instant::now()) {
            tracing::warn!(executor = %lost, "executor lost: no heartbeat within the timeout");
        }
        self.refresh_pool().await;
        let store = StoreDesired {
            state: self.state.clone(),
            started,
            nodes: self.nodes.clone(),
            waiting: self.waiting.clone(),
        };
        let link = RuntimeLink {
            state: self.state.clone(),
        };
        weir_scheduler::round(&self.reconciler, &store, &link).await
    }

    /// Runs a round every `period` until `shutdown` resolves.
    pub async fn run(self, period: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            match self.round("started again by the scheduler").await {
                Ok(report) if report.started + report.failed + report.stopped > 0 => {
                    tracing::info!(
                        started = report.started,
                        failed = report.failed,
                        stopped = report.stopped,
                        unplaced = report.unplaced,
                        "reconciled"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reconcile round skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code: a failed expectation is a failed test"
    )]

    //! The guards of the loop's actions: each re-reads the record under the tenant's lock, so a
    //! plan made before an API change never undoes it. The runtime here is a set of running
    //! ids (the real one needs wasmtime, which this crate must not link); the store is the real
    //! SQLite control store.

    use std::collections::BTreeSet;

    use weir_api::rest::{IngestMessage, OutputMessage};
    use weir_store::{BlobStore, ControlStore, DeploymentRecord, SqliteControlStore, TenantRecord};
    use weir_tenants::{JwtVerifier, MemoryRevocations, Secret, TokenIssuer, VerificationKey};

    use super::*;
    use crate::{ApiError, DeploymentRuntime, FeedQuery, ModuleValidator, RunningDeployment};

    #[derive(Debug, Default)]
    struct RunningSet(Mutex<BTreeSet<(TenantId, String)>>);

    impl RunningSet {
        fn has(&self, tenant: &TenantId, id: &str) -> bool {
            self.0
                .lock()
                .unwrap()
                .contains(&(tenant.clone(), id.to_owned()))
        }
    }

    #[async_trait::async_trait]
    impl DeploymentRuntime for RunningSet {
        async fn start(&self, request: crate::StartDeployment) -> Result<Vec<String>, ApiError> {
            self.0.lock().unwrap().insert((request.tenant, request.id));
            Ok(Vec::new())
        }
        async fn stop(&self, tenant: &TenantId, id: &str) {
            self.0
                .lock()
                .unwrap()
                .remove(&(tenant.clone(), id.to_owned()));
        }
        async fn ingest(
            &self,
            _: &TenantId,
            _: &str,
            _: Vec<IngestMessage>,
            _: Option<Duration>,
        ) -> Result<Vec<OutputMessage>, ApiError> {
            Ok(Vec::new())
        }
        async fn take_outputs(
            &self,
            _: &TenantId,
            _: &str,
            _: usize,
        ) -> Result<Vec<OutputMessage>, ApiError> {
            Ok(Vec::new())
        }
        async fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
            self.has(tenant, id).then(|| serde_json::json!({}))
        }
        async fn running(&self) -> Vec<RunningDeployment> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(tenant, id)| RunningDeployment {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    executor: "local".to_owned(),
                    problem: None,
                    starting: false,
                })
                .collect()
        }
        async fn logs(&self, _: &TenantId, _: &FeedQuery) -> Vec<weir_api::rest::LogLine> {
            Vec::new()
        }
        async fn metrics(&self, _: &TenantId) -> Vec<weir_api::rest::MetricSeries> {
            Vec::new()
        }
        async fn usage(&self, _: &TenantId) -> weir_api::rest::Usage {
            weir_api::rest::Usage::default()
        }
        async fn executors(&self) -> Vec<weir_api::rest::Executor> {
            Vec::new()
        }
        async fn cordon(&self, _: &str, _: bool) -> bool {
            false
        }
        async fn forget_tenant(&self, _: &TenantId) {}
        async fn set_quotas(&self, _: &TenantId, _: &Quotas) {}
    }

    #[derive(Debug)]
    struct NoModules;

    impl ModuleValidator for NoModules {
        fn validate(&self, _: &[u8]) -> Result<crate::ValidatedModule, String> {
            Err("no modules here".to_owned())
        }
    }

    struct Fixture {
        state: GatewayState,
        runtime: Arc<RunningSet>,
        tenant: TenantId,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"reconcile-test-secret-reconcile-test".to_vec());
        let store = Arc::new(SqliteControlStore::in_memory().unwrap());
        let runtime = Arc::new(RunningSet::default());
        let tenant = TenantId::new("acme").unwrap();
        store
            .create_tenant(&TenantRecord {
                id: tenant.clone(),
                display_name: "acme".to_owned(),
                quotas: Quotas::default(),
                suspended: false,
                created_at: 0,
                instance: String::new(),
            })
            .await
            .unwrap();
        let state = GatewayState {
            store,
            blobs: BlobStore::open(dir.path().join("blobs")).unwrap(),
            verifier: Arc::new(
                JwtVerifier::new(&[VerificationKey::Hs256(secret.clone())], None, None).unwrap(),
            ),
            issuer: Arc::new(TokenIssuer::new(&secret, None, None)),
            revocations: Arc::new(MemoryRevocations::default()),
            validator: Arc::new(NoModules),
            runtime: runtime.clone(),
            state: Arc::new(weir_state::MemoryStateStore::default()),
            limits: Arc::default(),
            tenant_locks: Arc::default(),
            instance_pool: Arc::default(),
            executors: Arc::default(),
        };
        Fixture {
            state,
            runtime,
            tenant,
            _dir: dir,
        }
    }

    impl Fixture {
        async fn put(&self, id: &str, status: &str) {
            self.state
                .store
                .put_deployment(
                    &DeploymentRecord {
                        tenant: self.tenant.clone(),
                        id: id.to_owned(),
                        spec: serde_json::json!({}),
                        status: status.to_owned(),
                        created_at: 0,
                    },
                    &Quotas::default(),
                )
                .await
                .unwrap();
        }

        fn key(&self, id: &str) -> DeploymentKey {
            DeploymentKey {
                tenant: self.tenant.clone(),
                id: id.to_owned(),
            }
        }

        fn link(&self) -> RuntimeLink {
            RuntimeLink {
                state: self.state.clone(),
            }
        }
    }

    fn local() -> ExecutorId {
        ExecutorId::new("local").unwrap()
    }

    #[tokio::test]
    async fn a_stale_stop_never_stops_what_the_store_wants_running() {
        let f = fixture().await;
        // The plan saw it running with no record (deleted); the API created it since.
        f.runtime
            .0
            .lock()
            .unwrap()
            .insert((f.tenant.clone(), "d1".to_owned()));
        f.put("d1", "running").await;
        f.link().stop(&f.key("d1"), &local(), true).await;
        assert!(f.runtime.has(&f.tenant, "d1"), "created since the plan");
        // The plan saw it paused; the API resumed it since.
        f.link().stop(&f.key("d1"), &local(), false).await;
        assert!(f.runtime.has(&f.tenant, "d1"), "resumed since the plan");
        // Paused now: the stop goes through.
        f.state
            .store
            .set_deployment_status(&f.tenant, "d1", "paused", "test")
            .await
            .unwrap();
        f.link().stop(&f.key("d1"), &local(), false).await;
        assert!(!f.runtime.has(&f.tenant, "d1"));
        // Deleted: a copy still running goes.
        f.runtime
            .0
            .lock()
            .unwrap()
            .insert((f.tenant.clone(), "d2".to_owned()));
        f.link().stop(&f.key("d2"), &local(), true).await;
        assert!(!f.runtime.has(&f.tenant, "d2"));
    }

    #[tokio::test]
    async fn a_stale_start_never_starts_what_the_store_no_longer_wants() {
        let f = fixture().await;
        // Deleted since the plan.
        assert_eq!(f.link().start(&f.key("gone"), &local()).await, Ok(false));
        // Paused since the plan.
        f.put("d1", "paused").await;
        assert_eq!(f.link().start(&f.key("d1"), &local()).await, Ok(false));
        assert!(!f.runtime.has(&f.tenant, "d1"));
        // Started by the API since the plan: nothing to do, it runs.
        f.put("d2", "running").await;
        f.runtime
            .0
            .lock()
            .unwrap()
            .insert((f.tenant.clone(), "d2".to_owned()));
        assert_eq!(f.link().start(&f.key("d2"), &local()).await, Ok(true));
    }

    #[tokio::test]
    async fn a_state_is_not_recorded_over_a_pause() {
        let f = fixture().await;
        f.put("d1", "paused").await;
        let store = StoreDesired {
            state: f.state.clone(),
            started: "started",
            nodes: Arc::default(),
            waiting: Arc::default(),
        };
        store
            .record(
                &f.key("d1"),
                &DeploymentState::Running { executor: local() },
            )
            .await
            .unwrap();
        let record = f
            .state
            .store
            .deployment(&f.tenant, "d1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, "paused");
        // Wanted running: recorded.
        f.put("d2", "running").await;
        store
            .record(
                &f.key("d2"),
                &DeploymentState::Degraded {
                    executor: local(),
                    reason: "sink connection: refused".to_owned(),
                },
            )
            .await
            .unwrap();
        let history = f
            .state
            .store
            .deployment_history(&f.tenant, "d2")
            .await
            .unwrap();
        let last = history.last().unwrap();
        assert_eq!(
            (last.status.as_str(), last.detail.as_str()),
            ("degraded", "sink connection: refused")
        );
    }
}
