//! Executor processes that join the control plane over HTTP (`weir executor --join URL --token
//! T`): `POST /v1/executors/join`, `/v1/executors/{id}/heartbeat` and `/v1/executors/{id}/leave`.
//!
//! Credentials: the executor join token of `weir serve` admits an executor (`join` only). The
//! join answers with a session token of that membership (32 random bytes, hex), and every
//! other route of `/v1/executors/{id}/…` takes only that executor's session token (compared in
//! constant time; never a tenant's or admin's token, nor the join token, nor another
//! executor's session). So an executor reads its own assignments (and the endpoint secrets in
//! them), fetches only the artifacts they name, reports dead letters, log lines and telemetry
//! only for deployments assigned to it (or that it reported running) within the last ten
//! minutes, and cannot heartbeat, leave or poll as another executor. A session ends when its executor leaves, joins again (a new token; the
//! old one is refused) or is forgotten after being lost.
//!
//! Membership (unique live ids, heartbeats, loss after the timeout) is
//! `weir_scheduler::Membership`; the reconcile loop expires it every round. Joined executors
//! are listed by `/v1/executors` (`ready` or `lost`).
//!
//! With [`RemoteRuntime`] as the gateway's runtime (`weir serve --executors N` or
//! `--remote-executors`), the scheduler places deployments on them: each placement becomes an
//! assignment the executor long-polls (`GET /v1/executors/{id}/assignments`), its graph and
//! modules named by digest; the executor reports what runs in its heartbeats.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use subtle::ConstantTimeEq;
use weir_api::ErrorCode;
use weir_api::rest::{
    AssignedBinding, DeadLettersKept, Executor, ExecutorAssignment, ExecutorAssignments,
    ExecutorDeadLetters, ExecutorHeartbeat, ExecutorJoin, ExecutorJoined, ExecutorLogLines,
    ExecutorRunning, ExecutorTelemetry, RetiredDeployment,
};
use weir_api::{ModuleDigest, TenantId};
use weir_scheduler::{ExecutorId, ExecutorInfo, Membership, MembershipError, Pool, Resources};

use crate::auth::bearer;
use crate::{ApiError, ApiJson, GatewayState};

/// The executors that joined over HTTP, and the token they join with.
pub struct ExecutorMembership {
    token: Option<String>,
    heartbeat: Duration,
    members: Mutex<(Membership, Pool)>,
    /// Each member's session (lost ones too, until forgotten); locked after `members` when
    /// both are held. One entry per member: bounded by the membership.
    sessions: Mutex<HashMap<ExecutorId, Session>>,
    /// Each live executor's latest telemetry of each tenant it runs deployments of (bounded:
    /// live members × the tenants assigned to each, each report bounded by
    /// [`ExecutorTelemetry::MAX_SERIES`]).
    telemetry: Mutex<HashMap<(ExecutorId, TenantId), ExecutorTelemetry>>,
    /// Usage the executors reported since the last flush to the control store, per tenant
    /// (bounded by the tenants); see [`Self::take_usage`].
    unflushed: Mutex<HashMap<TenantId, weir_store::UsageCounters>>,
    assigned: Mutex<Assigned>,
    /// The latest revision of any executor's assignments (long polls wait on it).
    changed: tokio::sync::watch::Sender<u64>,
    /// Deployments are placed on these executors (the runtime is a [`RemoteRuntime`]).
    places: bool,
    /// How many times its workers' fuel an executor is counted for ([`Self::cpu_overcommit`]).
    overcommit: u64,
}

/// An executor's credentials and what it may report for.
#[derive(Debug)]
struct Session {
    /// The bearer token of its current membership.
    token: String,
    /// The deployments (instance ids) it may report for, with when it last had them: assigned
    /// to it, or reported running in its heartbeats since. Kept [`REPORT_GRACE`] after that
    /// (a stopped or moved deployment's last dead letters and log lines may still be on their
    /// way), and across its re-joins. Bounded: what was assigned to it within the grace.
    recent: HashMap<(TenantId, String), Instant>,
}

/// How long after a deployment was last assigned to an executor, or last reported running
/// by it, the executor may still report for it (its last dead letters, log lines, counters).
const REPORT_GRACE: Duration = Duration::from_secs(600);

impl Session {
    /// Whether it may report for `tenant`'s deployments `ids` (instance ids; none: for the
    /// tenant, any of whose deployments it has).
    fn reports_for<'a>(
        &self,
        tenant: &TenantId,
        mut ids: impl Iterator<Item = &'a str>,
        now: Instant,
    ) -> bool {
        let recent = |key: &(TenantId, String)| {
            self.recent
                .get(key)
                .is_some_and(|at| now.saturating_duration_since(*at) <= REPORT_GRACE)
        };
        self.recent.iter().any(|((owner, _), at)| {
            owner == tenant && now.saturating_duration_since(*at) <= REPORT_GRACE
        }) && ids.all(|id| recent(&(tenant.clone(), id.to_owned())))
    }
}

/// A new session token: 32 bytes from the OS as 64 hex digits.
fn session_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(&e))?;
    Ok(hex::encode(bytes))
}

/// One executor's assignments and what it reported last.
#[derive(Debug, Default)]
struct Assignments {
    revision: u64,
    deployments: BTreeMap<(TenantId, String), ExecutorAssignment>,
    /// Its last heartbeat: the revision it carried out and what runs.
    applied: u64,
    running: Vec<ExecutorRunning>,
    /// Deployments taken off it for good, with the revision that did: listed in its
    /// assignments (`retired`) until its heartbeat shows it carried that revision out.
    retired: BTreeMap<(TenantId, String), u64>,
}

/// Every member's assignments; one entry per member (bounded by the membership), and per
/// deployment the store keeps.
#[derive(Debug, Default)]
struct Assigned {
    revision: u64,
    generation: u64,
    executors: HashMap<ExecutorId, Assignments>,
}

impl Assigned {
    /// Takes the deployment off every executor; whether it was anywhere. `retire`: it is gone
    /// for good, and its executors retire it rather than just stop it.
    fn remove(&mut self, key: &(TenantId, String), retire: bool) -> bool {
        let mut removed = false;
        let mut revision = self.revision;
        for table in self.executors.values_mut() {
            if table.deployments.remove(key).is_some() {
                revision += 1;
                table.revision = revision;
                removed = true;
                if retire {
                    table.retired.insert(key.clone(), revision);
                }
            }
        }
        self.revision = revision;
        removed
    }
}

impl std::fmt::Debug for ExecutorMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorMembership")
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl Default for ExecutorMembership {
    /// No join token: no executor process can join.
    fn default() -> Self {
        Self::new(None, Duration::from_secs(1), Duration::from_secs(10), 1024)
    }
}

/// Longest long poll of `/v1/executors/{id}/assignments`.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Most deployments one heartbeat may report.
const MAX_REPORTED: usize = 100_000;

impl ExecutorMembership {
    /// Executors join with `token` (none: joining is refused), heartbeat every `heartbeat` and
    /// are lost after `timeout` without one; at most `max_executors` at once.
    pub fn new(
        token: Option<String>,
        heartbeat: Duration,
        timeout: Duration,
        max_executors: usize,
    ) -> Self {
        Self {
            token,
            heartbeat,
            // Lost executors are listed for ten timeouts, then forgotten.
            members: Mutex::new((
                Membership::new(timeout, timeout.saturating_mul(10), max_executors),
                Pool::new(),
            )),
            sessions: Mutex::default(),
            telemetry: Mutex::default(),
            unflushed: Mutex::default(),
            assigned: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
            places: false,
            overcommit: 1,
        }
    }

    /// Counts each executor's CPU `factor` times (at least 1): a deployment reserves its
    /// declared share of fuel per second (its tenant's `fuel_per_second` over
    /// `max_deployments`), which it may use but streaming deployments mostly do not, so an
    /// executor of W workers takes deployments declaring up to `factor` × W × 10^9 fuel per
    /// second. What each tenant's modules burn stays bounded by its fuel rate; memory and
    /// instance slots are never overcommitted.
    #[must_use]
    pub fn cpu_overcommit(mut self, factor: u32) -> Self {
        self.overcommit = u64::from(factor.max(1));
        self
    }

    /// Deployments are placed on the joined executors (the gateway's runtime is a
    /// [`RemoteRuntime`] on this membership).
    #[must_use]
    pub fn placing(mut self) -> Self {
        self.places = true;
        self
    }

    /// Whether deployments are placed on the joined executors.
    pub fn places(&self) -> bool {
        self.places
    }

    /// The joined executors with their declared capacity and state, for placement.
    pub fn infos(&self) -> Vec<(ExecutorInfo, weir_scheduler::ExecutorState)> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, pool) = &*members;
        pool.executor_ids()
            .filter_map(|id| Some((pool.info(id)?.clone(), pool.state(id)?)))
            .collect()
    }

    /// Cordons (`cordoned`) or uncordons a joined executor; whether it is a live member.
    pub fn cordon(&self, id: &str, state: weir_scheduler::ExecutorState) -> bool {
        let Ok(id) = ExecutorId::new(id) else {
            return false;
        };
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        membership.is_alive(&id) && pool.set_state(&id, state).is_ok()
    }

    /// Whether `executor` is a live member.
    fn is_alive(&self, executor: &ExecutorId) -> bool {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .is_alive(executor)
    }

    fn assigned(&self) -> std::sync::MutexGuard<'_, Assigned> {
        self.assigned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, revision: u64) {
        self.changed.send_replace(revision);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutorId, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `tenant`'s deployment `id` runs on `executor`: it may report for it.
    fn admit(&self, executor: &ExecutorId, tenant: &TenantId, id: &str) {
        if let Some(session) = self.sessions().get_mut(executor) {
            session
                .recent
                .insert((tenant.clone(), id.to_owned()), Instant::now());
        }
    }

    /// After a heartbeat of `executor`: what is still assigned to it or what it reported
    /// running (among what it had) is had now; what it had longer ago than the grace goes.
    fn refresh_reports(&self, executor: &ExecutorId, now: Instant) {
        let had: Vec<(TenantId, String)> = {
            let assigned = self.assigned();
            let Some(table) = assigned.executors.get(executor) else {
                return;
            };
            table
                .deployments
                .keys()
                .cloned()
                .chain(
                    table
                        .running
                        .iter()
                        .map(|r| (r.tenant.clone(), r.id.clone())),
                )
                .collect()
        };
        if let Some(session) = self.sessions().get_mut(executor) {
            for key in had {
                // Only what it was given: a heartbeat naming others grants nothing.
                if let Some(at) = session.recent.get_mut(&key) {
                    *at = now;
                }
            }
            session
                .recent
                .retain(|_, at| now.saturating_duration_since(*at) <= REPORT_GRACE);
        }
    }

    /// Assigns a deployment to `executor` (taking it off any other).
    fn assign(&self, executor: &ExecutorId, mut assignment: ExecutorAssignment) -> bool {
        if !self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .is_alive(executor)
        {
            return false;
        }
        self.admit(executor, &assignment.tenant, &assignment.id);
        let revision = {
            let mut assigned = self.assigned();
            let key = (assignment.tenant.clone(), assignment.id.clone());
            assigned.remove(&key, false);
            for table in assigned.executors.values_mut() {
                table.retired.remove(&key);
            }
            assigned.generation += 1;
            assignment.generation = assigned.generation;
            assigned.revision += 1;
            let revision = assigned.revision;
            let table = assigned.executors.entry(executor.clone()).or_default();
            table.revision = revision;
            table.deployments.insert(key, assignment);
            revision
        };
        self.publish(revision);
        true
    }

    /// Where a deployment is assigned, and its assignment there.
    fn placement(&self, tenant: &TenantId, id: &str) -> Option<(ExecutorId, ExecutorAssignment)> {
        let key = (tenant.clone(), id.to_owned());
        self.assigned()
            .executors
            .iter()
            .find_map(|(executor, table)| {
                Some((executor.clone(), table.deployments.get(&key)?.clone()))
            })
    }

    /// Assigns a deployment to `executor` (as [`Self::assign`]); the generation it got.
    fn assign_generation(
        &self,
        executor: &ExecutorId,
        assignment: ExecutorAssignment,
    ) -> Option<u64> {
        let key = (assignment.tenant.clone(), assignment.id.clone());
        if !self.assign(executor, assignment) {
            return None;
        }
        let assigned = self.assigned();
        Some(
            assigned
                .executors
                .get(executor)?
                .deployments
                .get(&key)?
                .generation,
        )
    }

    /// Assigns `assignment` to `executor` again as it was (its generation kept: the executor
    /// runs it still), after a newer generation did not start.
    fn restore(&self, executor: &ExecutorId, assignment: ExecutorAssignment) {
        self.admit(executor, &assignment.tenant, &assignment.id);
        let revision = {
            let mut assigned = self.assigned();
            let key = (assignment.tenant.clone(), assignment.id.clone());
            assigned.remove(&key, false);
            assigned.revision += 1;
            let revision = assigned.revision;
            let table = assigned.executors.entry(executor.clone()).or_default();
            table.revision = revision;
            table.deployments.insert(key, assignment);
            revision
        };
        self.publish(revision);
    }

    /// Waits until `executor` reports generation `generation` of the deployment of `previous`
    /// running (`Ok`), or refused (`Err` with why), or `limit` passes.
    async fn await_generation(
        &self,
        executor: &ExecutorId,
        previous: &ExecutorAssignment,
        generation: u64,
        limit: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let assigned = self.assigned();
                let report = assigned.executors.get(executor).and_then(|table| {
                    table
                        .running
                        .iter()
                        .find(|r| r.tenant == previous.tenant && r.id == previous.id)
                });
                if let Some(report) = report {
                    if report.generation >= generation {
                        return Ok(());
                    }
                    if let Some(refused) = &report.refused
                        && refused.generation == generation
                    {
                        return Err(refused.error.clone());
                    }
                }
            }
            if !self
                .members
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .is_alive(executor)
            {
                return Err(format!("executor {executor} was lost during the update"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "executor {executor} did not report the new version within {} s",
                    limit.as_secs()
                ));
            }
            // A condition on heartbeats, polled with a deadline (heartbeats signal nothing).
            tokio::time::sleep(ROLL_POLL).await;
        }
    }

    /// Puts the tenant's changed `quotas` in each of its assignments (same generation: the
    /// executors apply them to what runs, without a restart).
    fn set_quotas(&self, tenant: &TenantId, quotas: &weir_api::tenancy::Quotas) {
        let revision = {
            let mut assigned = self.assigned();
            let mut revision = assigned.revision;
            for table in assigned.executors.values_mut() {
                let mut changed = false;
                for ((owner, _), assignment) in &mut table.deployments {
                    if owner == tenant && assignment.quotas != *quotas {
                        assignment.quotas = quotas.clone();
                        changed = true;
                    }
                }
                if changed {
                    revision += 1;
                    table.revision = revision;
                }
            }
            if revision == assigned.revision {
                return;
            }
            assigned.revision = revision;
            revision
        };
        self.publish(revision);
    }

    /// Takes a deployment off every executor; `retire`: for good (see
    /// [`ExecutorAssignments::retired`]).
    fn unassign(&self, tenant: &TenantId, id: &str, retire: bool) {
        let revision = {
            let mut assigned = self.assigned();
            if !assigned.remove(&(tenant.clone(), id.to_owned()), retire) {
                return;
            }
            assigned.revision
        };
        self.publish(revision);
    }

    /// Forgets the assignments and reports of executors that are no longer live members, and
    /// the sessions of those no longer members at all (left, or lost and forgotten).
    fn prune(&self) {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        self.assigned()
            .executors
            .retain(|id, _| members.0.is_alive(id));
        self.sessions().retain(|id, _| members.0.is_member(id));
        self.telemetry().retain(|(id, _), _| members.0.is_alive(id));
    }

    fn telemetry(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(ExecutorId, TenantId), ExecutorTelemetry>> {
        self.telemetry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant's series on the live executors, each labelled with its `executor` (a
    /// deployment that moved has a series on each executor it ran on while both live).
    fn series(&self, tenant: &TenantId) -> Vec<weir_api::rest::MetricSeries> {
        self.prune();
        let telemetry = self.telemetry();
        let mut all = Vec::new();
        for ((executor, owner), report) in telemetry.iter() {
            if owner != tenant {
                continue;
            }
            all.extend(report.series.iter().cloned().map(|mut series| {
                series
                    .labels
                    .insert("executor".to_owned(), executor.to_string());
                series
            }));
        }
        all
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, weir_store::UsageCounters>> {
        self.unflushed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a tenant's usage an executor reported (what it did since its last report taken).
    fn add_usage(&self, tenant: &TenantId, used: &weir_api::rest::Usage) {
        let added = weir_store::UsageCounters {
            fuel: used.fuel,
            messages_in: used.messages_in,
            messages_out: used.messages_out,
            bytes_in: used.bytes_in,
            state_ops: used.state_ops,
        };
        if added.is_zero() {
            return;
        }
        let mut unflushed = self.unflushed();
        let entry = unflushed.entry(tenant.clone()).or_default();
        *entry = entry.plus(added);
    }

    /// The usage executors reported since the last `take_usage`: the caller adds it to the
    /// control store (with its own, in one flush) and gives it back with
    /// [`Self::restore_usage`] if that fails, so none is lost or counted twice.
    pub fn take_usage(&self) -> Vec<(TenantId, weir_store::UsageCounters)> {
        self.unflushed().drain().collect()
    }

    /// Gives back usage [`Self::take_usage`] took whose flush failed.
    pub fn restore_usage(&self, usage: Vec<(TenantId, weir_store::UsageCounters)>) {
        let mut unflushed = self.unflushed();
        for (tenant, counters) in usage {
            let entry = unflushed.entry(tenant).or_default();
            *entry = entry.plus(counters);
        }
    }

    /// The tenant's usage on executor processes: what they reported that is not in the store
    /// yet (the additive fields), and the live fields of their latest reports, added up.
    fn reported_usage(&self, tenant: &TenantId) -> weir_api::rest::Usage {
        self.prune();
        let pending = self.unflushed().get(tenant).copied().unwrap_or_default();
        let mut total = weir_api::rest::Usage {
            messages_in: pending.messages_in,
            bytes_in: pending.bytes_in,
            messages_out: pending.messages_out,
            fuel: pending.fuel,
            state_ops: pending.state_ops,
            ..weir_api::rest::Usage::default()
        };
        for ((_, owner), report) in self.telemetry().iter() {
            if owner != tenant {
                continue;
            }
            let used = &report.usage;
            total.messages_limited = total.messages_limited.saturating_add(used.messages_limited);
            total.dead_letters = total.dead_letters.saturating_add(used.dead_letters);
            total.init_fuel = total.init_fuel.saturating_add(used.init_fuel);
        }
        total
    }

    /// The counters `executor` last reported of the tenant's deployment `id`.
    fn counters(
        &self,
        executor: &ExecutorId,
        tenant: &TenantId,
        id: &str,
    ) -> Option<serde_json::Value> {
        self.telemetry()
            .get(&(executor.clone(), tenant.clone()))?
            .deployments
            .get(id)
            .cloned()
    }

    /// What runs on the live executors: what each reported running among its assignments,
    /// and assignments of a revision it has not carried out yet (starting).
    fn running(&self) -> Vec<crate::RunningDeployment> {
        self.prune();
        let assigned = self.assigned();
        let mut running = Vec::new();
        for (executor, table) in &assigned.executors {
            let reported: HashMap<(&TenantId, &str), &ExecutorRunning> = table
                .running
                .iter()
                .map(|r| ((&r.tenant, r.id.as_str()), r))
                .collect();
            for (tenant, id) in table.deployments.keys() {
                let (problem, starting) = match reported.get(&(tenant, id.as_str())) {
                    Some(report) => (report.problem.clone(), report.starting),
                    None if table.applied < table.revision => (None, true),
                    None => continue,
                };
                running.push(crate::RunningDeployment {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    executor: executor.to_string(),
                    problem,
                    starting,
                });
            }
        }
        running
    }

    /// Where a deployment is assigned, what its executor reported of it in its heartbeats,
    /// and the counters of its latest telemetry there (`received`, `emitted`, `nodes`, …).
    fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
        let (executor, running, problem) = {
            let assigned = self.assigned();
            let key = (tenant.clone(), id.to_owned());
            assigned.executors.iter().find_map(|(executor, table)| {
                table.deployments.get(&key)?;
                let report = table
                    .running
                    .iter()
                    .find(|r| r.tenant == *tenant && r.id == id);
                Some((
                    executor.clone(),
                    report.is_some_and(|r| !r.not_started),
                    report.and_then(|r| r.problem.clone()),
                ))
            })?
        };
        let mut status = match self.counters(&executor, tenant, id) {
            Some(serde_json::Value::Object(counters)) => counters,
            _ => serde_json::Map::new(),
        };
        status.insert("executor".to_owned(), executor.as_str().into());
        status.insert("running".to_owned(), running.into());
        status.insert("problem".to_owned(), problem.into());
        Some(serde_json::Value::Object(status))
    }

    /// Marks lost the executors silent past the timeout at `now`; the newly lost ones.
    pub fn expire(&self, now: Instant) -> Vec<ExecutorId> {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        membership.expire(pool, now)
    }

    /// The joined executors, as `/v1/executors` lists them.
    pub fn list(&self) -> Vec<Executor> {
        let assigned: HashMap<ExecutorId, u64> = self
            .assigned()
            .executors
            .iter()
            .map(|(id, table)| (id.clone(), table.deployments.len() as u64))
            .collect();
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, pool) = &*members;
        let mut ids: Vec<&ExecutorId> = pool.executor_ids().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let state = pool.state(id)?;
                let workers = pool.info(id).map_or(0, |info| {
                    info.capacity.fuel_per_second / FUEL_PER_WORKER_SECOND / self.overcommit
                });
                Some(Executor {
                    id: id.to_string(),
                    state: state.as_str().to_owned(),
                    deployments: assigned.get(id).copied().unwrap_or(0),
                    workers,
                })
            })
            .collect()
    }

    /// The join token (`POST /v1/executors/join` only).
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this control plane takes no executor processes (no executor join token)",
            ));
        };
        let given = bearer(headers).ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthenticated, "send the executor join token")
        })?;
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "not the executor join token",
            ))
        }
    }

    /// The session token of executor `id` (every route of `/v1/executors/{id}/…` but the
    /// join). An id with no session here (never joined this control plane, left, or
    /// forgotten) is `not_found`: join again.
    fn authorize_session(&self, headers: &HeaderMap, id: &ExecutorId) -> Result<(), ApiError> {
        if self.token.is_none() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this control plane takes no executor processes (no executor join token)",
            ));
        }
        let given = bearer(headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "send the session token the join answered with",
            )
        })?;
        let sessions = self.sessions();
        let Some(session) = sessions.get(id) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("executor {id} is not registered; join again"),
            ));
        };
        if bool::from(given.as_bytes().ct_eq(session.token.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                format!("not the session token of executor {id} (each join gets a new one)"),
            ))
        }
    }

    /// Whether executor `id` may report for `tenant`'s deployments `deployments` (instance
    /// ids; see [`Session::reports_for`]).
    fn runs_for<'a>(
        &self,
        id: &ExecutorId,
        tenant: &TenantId,
        deployments: impl Iterator<Item = &'a str>,
    ) -> bool {
        self.sessions()
            .get(id)
            .is_some_and(|session| session.reports_for(tenant, deployments, Instant::now()))
    }

    /// Whether `digest` is the graph or a module of an assignment of executor `id`.
    fn assigns_artifact(&self, id: &ExecutorId, digest: &str) -> bool {
        self.assigned().executors.get(id).is_some_and(|table| {
            table
                .deployments
                .values()
                .any(|a| a.graph == digest || a.modules.values().any(|m| m == digest))
        })
    }
}

fn membership_error(error: MembershipError) -> ApiError {
    let code = match error {
        MembershipError::DuplicateId(_) | MembershipError::Lost(_) => ErrorCode::Conflict,
        MembershipError::Unknown(_) => ErrorCode::NotFound,
        MembershipError::Full(_) => ErrorCode::QuotaExceeded,
    };
    ApiError::new(code, error.to_string())
}

fn executor_id(id: String) -> Result<ExecutorId, ApiError> {
    ExecutorId::new(id).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))
}

/// An executor process joins: registered ready, heard from now.
#[utoipa::path(post, path = "/v1/executors/join", tag = "executors", request_body = weir_api::rest::ExecutorJoin, responses((status = 200, body = weir_api::rest::ExecutorJoined), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn join(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    ApiJson(join): ApiJson<ExecutorJoin>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    executors.authorize(&headers)?;
    let mut labels = BTreeMap::new();
    for (key, value) in join.labels {
        let text = if value.is_empty() {
            key.clone()
        } else {
            format!("{key}={value}")
        };
        weir_scheduler::LabelRequirement::parse(&text)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        labels.insert(key, value);
    }
    let info = ExecutorInfo {
        id: executor_id(join.id)?,
        capacity: Resources {
            fuel_per_second: u64::from(join.workers)
                .saturating_mul(FUEL_PER_WORKER_SECOND)
                .saturating_mul(executors.overcommit),
            memory_bytes: join.memory_bytes,
            instances: join.instance_slots,
        },
        labels,
    };
    let id = info.id.clone();
    let (timeout, session_token) = {
        let mut members = executors
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        let token = session_token()?;
        membership
            .join(pool, info, Instant::now())
            .map_err(membership_error)?;
        // A lost id joining again starts with nothing assigned (its work went elsewhere);
        // cleared under the membership lock, so no assignment to the new member is lost.
        executors.assigned().executors.remove(&id);
        // A new session: the previous membership's token is refused from now on.
        executors
            .sessions()
            .entry(id.clone())
            .and_modify(|session| session.token.clone_from(&token))
            .or_insert_with(|| Session {
                token: token.clone(),
                recent: HashMap::new(),
            });
        (membership.timeout(), token)
    };
    tracing::info!(executor = %id, "executor joined");
    Ok(Json(ExecutorJoined {
        heartbeat_ms: u64::try_from(executors.heartbeat.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        session_token,
    }))
}

/// The fuel per second one dataflow worker is counted for: wasmtime fuel is roughly one unit
/// per wasm instruction, and a core runs on the order of 10^9 simple instructions a second.
const FUEL_PER_WORKER_SECOND: u64 = 1_000_000_000;

/// A heartbeat: the executor is alive.
#[utoipa::path(post, path = "/v1/executors/{id}/heartbeat", tag = "executors", params(("id" = String, Path)), request_body = weir_api::rest::ExecutorHeartbeat, responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn heartbeat(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(mut report): ApiJson<ExecutorHeartbeat>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    let id = executor_id(id)?;
    executors.authorize_session(&headers, &id)?;
    executors
        .members
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .0
        .heartbeat(&id, Instant::now())
        .map_err(membership_error)?;
    report.running.truncate(MAX_REPORTED);
    {
        let mut assigned = executors.assigned();
        let table = assigned.executors.entry(id.clone()).or_default();
        table.applied = report.revision;
        table.running = report.running;
        // Retirements it carried out are done.
        table
            .retired
            .retain(|_, revision| *revision > report.revision);
    }
    executors.refresh_reports(&id, Instant::now());
    Ok(StatusCode::NO_CONTENT)
}

/// The executor stops cleanly: removed at once.
#[utoipa::path(post, path = "/v1/executors/{id}/leave", tag = "executors", params(("id" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn leave(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    let id = executor_id(id)?;
    executors.authorize_session(&headers, &id)?;
    {
        let mut members = executors
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (membership, pool) = &mut *members;
        membership.leave(pool, &id).map_err(membership_error)?;
        executors.sessions().remove(&id);
    }
    tracing::info!(executor = %id, "executor left");
    Ok(StatusCode::NO_CONTENT)
}

/// An artifact (module or graph bytes) by its digest, for a live executor: what it runs is
/// fetched by digest and checked against it before it runs (`Client::executor_artifact`).
/// Only the graph and modules of its own assignments: any other digest is `not_found`, as is
/// one that exists nowhere.
#[utoipa::path(get, path = "/v1/executors/{id}/artifacts/{digest}", tag = "executors", params(("id" = String, Path), ("digest" = String, Path)), responses((status = 200, content_type = "application/octet-stream"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn artifact(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path((id, digest)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    let id = executor_id(id)?;
    executors.authorize_session(&headers, &id)?;
    let alive = executors
        .members
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .0
        .is_alive(&id);
    if !alive {
        return Err(ApiError::not_found("executor"));
    }
    let digest = weir_api::ModuleDigest::new(digest)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    if !executors.assigns_artifact(&id, digest.as_str()) {
        return Err(ApiError::not_found("artifact"));
    }
    let bytes = state
        .blobs
        .get(&digest)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("artifact"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// The tenant a live executor reports for (`None` if it no longer exists), once the caller is
/// known by its session token, the deployments it names (instance ids) were its own within the
/// last [`REPORT_GRACE`] (else `forbidden`), and `items` (what, how many, at most) is within
/// its bound.
async fn reporting_tenant<'a>(
    state: &GatewayState,
    headers: &HeaderMap,
    id: String,
    (tenant, deployments): (&TenantId, impl Iterator<Item = &'a str>),
    (what, count, max): (&str, usize, usize),
) -> Result<Option<weir_store::TenantRecord>, ApiError> {
    let executors = &state.executors;
    let id = executor_id(id)?;
    executors.authorize_session(headers, &id)?;
    if !executors.is_alive(&id) {
        return Err(ApiError::not_found("executor"));
    }
    if !executors.runs_for(&id, tenant, deployments) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "executor {id} reports for deployments of tenant {tenant} it does not run (or did not within {} s)",
                REPORT_GRACE.as_secs()
            ),
        ));
    }
    if count > max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{count} {what} in one request; at most {max}"),
        ));
    }
    Ok(state.store.tenant(tenant).await?)
}

/// Dead letters of a live executor's deployments, kept in the tenant's journal (with the
/// tenant's `max_dead_letter_bytes`, as the control plane knows it) as those of deployments
/// in this process are: an executor process has no journal of its own, and a letter is
/// never only logged. An instance's letters (`<id>#<n>`) are filed under the deployment id,
/// the instance named in the detail. A tenant that is gone keeps nothing (`seqs` empty).
#[utoipa::path(post, path = "/v1/executors/{id}/deadletters", tag = "executors", params(("id" = String, Path)), request_body = weir_api::rest::ExecutorDeadLetters, responses((status = 200, body = weir_api::rest::DeadLettersKept), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn dead_letters(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<ExecutorDeadLetters>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(tenant) = reporting_tenant(
        &state,
        &headers,
        id,
        (
            &report.tenant,
            report.letters.iter().map(|l| l.deployment.as_str()),
        ),
        (
            "dead letters",
            report.letters.len(),
            ExecutorDeadLetters::MAX_LETTERS,
        ),
    )
    .await?
    else {
        return Ok(Json(DeadLettersKept::default()));
    };
    let letters = report
        .letters
        .into_iter()
        .map(|mut letter| {
            let (deployment, instance) = weir_api::scale::split_instance(&letter.deployment);
            if deployment.len() != letter.deployment.len() {
                letter.detail = format!("instance {instance}: {}", letter.detail);
                letter.deployment = deployment.to_owned();
            }
            letter
        })
        .collect();
    match state
        .store
        .append_dead_letters(&tenant.id, letters, tenant.quotas.max_dead_letter_bytes)
        .await
    {
        Ok(appended) => Ok(Json(DeadLettersKept {
            seqs: appended.seqs,
        })),
        Err(weir_store::StoreError::NoTenant(_)) => Ok(Json(DeadLettersKept::default())),
        Err(error) => Err(error.into()),
    }
}

/// Module log lines of a live executor's deployments, kept with the tenant's other lines under
/// its `max_log_lines` (as the control plane knows it). An instance's lines (`<id>#<n>`) are
/// filed under the deployment id, the node named `<node>#<n>`. A tenant that is gone keeps
/// nothing.
#[utoipa::path(post, path = "/v1/executors/{id}/logs", tag = "executors", params(("id" = String, Path)), request_body = weir_api::rest::ExecutorLogLines, responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn log_lines(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<ExecutorLogLines>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(tenant) = reporting_tenant(
        &state,
        &headers,
        id,
        (
            &report.tenant,
            report.lines.iter().filter_map(|l| l.deployment.as_deref()),
        ),
        ("log lines", report.lines.len(), ExecutorLogLines::MAX_LINES),
    )
    .await?
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    let lines = report
        .lines
        .into_iter()
        .map(|line| {
            let mut node = line.node.unwrap_or_default();
            let deployment = line.deployment.map(|full| {
                let (deployment, instance) = weir_api::scale::split_instance(&full);
                if deployment.len() != full.len() {
                    node = format!("{node}#{instance}");
                }
                deployment.to_owned()
            });
            weir_store::ModuleLogRecord {
                seq: 0,
                at_ms: line.at_ms,
                level: line.level,
                deployment,
                node,
                message: line.message,
            }
        })
        .collect();
    match state
        .store
        .append_module_logs(&tenant.id, lines, u64::from(tenant.quotas.max_log_lines))
        .await
    {
        Ok(()) | Err(weir_store::StoreError::NoTenant(_)) => Ok(StatusCode::NO_CONTENT),
        Err(error) => Err(error.into()),
    }
}

/// Telemetry of a live executor's deployments of one tenant: its metric series and counters
/// there, replacing its previous report of the tenant (an empty report forgets it). `/v1/metrics`
/// and `GET /v1/deployments/{id}` show them while the executor lives. A tenant's report is
/// refused beyond [`ExecutorTelemetry::MAX_SERIES`] series, its module series beyond its
/// `max_metric_series`, or beyond [`ExecutorTelemetry::MAX_DEPLOYMENTS`] deployments.
#[utoipa::path(post, path = "/v1/executors/{id}/telemetry", tag = "executors", params(("id" = String, Path)), request_body = weir_api::rest::ExecutorTelemetry, responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn telemetry(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<ExecutorTelemetry>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(tenant) = reporting_tenant(
        &state,
        &headers,
        id.clone(),
        (
            &report.tenant,
            report.deployments.keys().map(String::as_str),
        ),
        ("series", report.series.len(), ExecutorTelemetry::MAX_SERIES),
    )
    .await?
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    let module_series = report.series.iter().filter(|s| !s.platform).count();
    if module_series > usize::try_from(tenant.quotas.max_metric_series).unwrap_or(usize::MAX)
        || report.deployments.len() > ExecutorTelemetry::MAX_DEPLOYMENTS
    {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{module_series} module series (tenant's max_metric_series {}) and {} deployments (at most {}) in one report",
                tenant.quotas.max_metric_series,
                report.deployments.len(),
                ExecutorTelemetry::MAX_DEPLOYMENTS
            ),
        ));
    }
    let id = executor_id(id)?;
    state.executors.add_usage(&tenant.id, &report.usage);
    let key = (id, tenant.id);
    let mut telemetry = state.executors.telemetry();
    if report.series.is_empty() && report.deployments.is_empty() {
        telemetry.remove(&key);
    } else {
        telemetry.insert(key, report);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `/v1/executors/{id}/assignments`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignmentsQuery {
    /// Answer once the revision is past this one.
    #[serde(default)]
    after: u64,
    /// How long to wait for that, in milliseconds (at most 30,000; default 0).
    #[serde(default)]
    wait_ms: u64,
}

/// An executor's assignments (a long poll): at once when their revision is past `after`, else
/// when it changes or `wait_ms` passes. A lost or unknown executor gets `404 not_found`.
#[utoipa::path(get, path = "/v1/executors/{id}/assignments", tag = "executors", params(("id" = String, Path), ("after" = Option<u64>, Query), ("wait_ms" = Option<u64>, Query)), responses((status = 200, body = weir_api::rest::ExecutorAssignments), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn assignments(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    crate::ApiQuery(query): crate::ApiQuery<AssignmentsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let executors = &state.executors;
    let id = executor_id(id)?;
    executors.authorize_session(&headers, &id)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changed = executors.changed.subscribe();
    loop {
        let alive = executors
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .is_alive(&id);
        if !alive {
            return Err(ApiError::not_found("executor"));
        }
        {
            let assigned = executors.assigned();
            let (revision, list, retired) = assigned.executors.get(&id).map_or_else(
                || (0, Vec::new(), Vec::new()),
                |table| {
                    (
                        table.revision,
                        table.deployments.values().cloned().collect(),
                        table
                            .retired
                            .keys()
                            .map(|(tenant, id)| RetiredDeployment {
                                tenant: tenant.clone(),
                                id: id.clone(),
                            })
                            .collect(),
                    )
                },
            );
            if revision > query.after || tokio::time::Instant::now() >= deadline {
                return Ok(Json(ExecutorAssignments {
                    revision,
                    assignments: list,
                    retired,
                }));
            }
        }
        // A change of any executor's assignments wakes every poll; each checks its own.
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            continue;
        }
    }
}

/// Refuses bindings to this control plane's own endpoints (`http`, the embedded broker).
fn on_executors(request: &crate::StartDeployment) -> Result<(), ApiError> {
    for binding in [
        Some(&request.source),
        Some(&request.sink),
        request.dead_letters.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if binding.kind == "http" || (binding.endpoint == "default" && binding.address.is_none()) {
            return Err(ApiError::new(
                ErrorCode::InvalidDeployment,
                format!(
                    "endpoint {} is this control plane's own; deployments on executor processes use mqtt, kafka or otlp endpoints",
                    binding.endpoint
                ),
            ));
        }
    }
    Ok(())
}

fn assigned_binding(binding: crate::StartBinding) -> AssignedBinding {
    AssignedBinding {
        endpoint: binding.endpoint,
        kind: binding.kind,
        address: binding.address,
        settings: binding.settings,
        secret: binding.secret,
        topics: binding.topics,
    }
}

/// Longest a rolling update on an executor process is waited for: the old version's drain
/// (30 s at most) and the new one's start.
const ROLL_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the executors' reports are looked at while a rolling update is waited for.
const ROLL_POLL: Duration = Duration::from_millis(20);

/// The assignment of a start request: graph and modules by digest.
fn assignment(request: crate::StartDeployment) -> ExecutorAssignment {
    ExecutorAssignment {
        tenant: request.tenant,
        id: request.id,
        generation: 0,
        revision: request.revision,
        quotas: request.quotas,
        graph: ModuleDigest::of(request.graph.as_bytes()).to_string(),
        modules: request
            .modules
            .iter()
            .map(|(reference, bytes)| (reference.clone(), ModuleDigest::of(bytes).to_string()))
            .collect(),
        configuration: request.configuration,
        source: assigned_binding(request.source),
        sink: assigned_binding(request.sink),
        dead_letters: request.dead_letters.map(assigned_binding),
        partition_key: request.partition_key,
    }
}

/// The gateway's runtime when deployments run on executor processes: a start places an
/// assignment on the executor the scheduler chose ([`DeploymentRuntime::start_on`]); a start
/// from an API handler leaves placement to the reconcile loop's next round. Inputs over HTTP
/// (`http` bindings) and the embedded broker (`default`) are this process's: a deployment on
/// an executor process uses MQTT, Kafka or OTLP endpoints.
///
/// What executors hand in is kept in the control store (dead letters, module log lines:
/// `POST /v1/executors/{id}/deadletters` and `/logs`); `/v1/logs` and the stored usage are
/// read through the control plane's own runtime (`reader`), which reads them there.
#[derive(Debug)]
pub struct RemoteRuntime {
    members: std::sync::Arc<ExecutorMembership>,
    reader: Option<std::sync::Arc<dyn crate::DeploymentRuntime>>,
}

impl RemoteRuntime {
    /// A runtime on `members` (which must be [`ExecutorMembership::placing`]).
    pub fn new(members: std::sync::Arc<ExecutorMembership>) -> Self {
        Self {
            members,
            reader: None,
        }
    }

    /// Reads module log lines and stored usage through `reader` (the control plane's own
    /// runtime, which reads the control store); without one there are none.
    #[must_use]
    pub fn with_reader(mut self, reader: std::sync::Arc<dyn crate::DeploymentRuntime>) -> Self {
        self.reader = Some(reader);
        self
    }

    fn unsupported(what: &str) -> ApiError {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} is not available: this deployment runs on an executor process"),
        )
    }
}

#[async_trait::async_trait]
impl crate::DeploymentRuntime for RemoteRuntime {
    async fn start(&self, request: crate::StartDeployment) -> Result<Vec<String>, ApiError> {
        on_executors(&request)?;
        // Not placed yet: the reconcile loop's next round places it.
        let Some((executor, previous)) = self.members.placement(&request.tenant, &request.id)
        else {
            return Ok(Vec::new());
        };
        // Placed: a rolling update on the same executor. The new generation is assigned; the
        // executor starts it beside the old one, swaps input over and reports which
        // generation runs (or why the new one did not start: then the old one keeps running
        // and is assigned again as it was).
        let generation = self
            .members
            .assign_generation(&executor, assignment(request))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("executor {executor} is not a live member"),
                )
            })?;
        match self
            .members
            .await_generation(&executor, &previous, generation, ROLL_TIMEOUT)
            .await
        {
            Ok(()) => Ok(Vec::new()),
            Err(why) => {
                self.members.restore(&executor, previous);
                Err(ApiError::new(ErrorCode::InvalidDeployment, why))
            }
        }
    }

    async fn start_on(
        &self,
        executor: &str,
        request: crate::StartDeployment,
    ) -> Result<Vec<String>, ApiError> {
        on_executors(&request)?;
        let executor = executor_id(executor.to_owned())?;
        if self.members.assign(&executor, assignment(request)) {
            Ok(Vec::new())
        } else {
            Err(ApiError::new(
                ErrorCode::Conflict,
                format!("executor {executor} is not a live member"),
            ))
        }
    }

    async fn stop(&self, tenant: &TenantId, id: &str) {
        self.members.unassign(tenant, id, false);
    }

    async fn forget(&self, tenant: &TenantId, id: &str) {
        self.members.unassign(tenant, id, false);
    }

    async fn retire(&self, tenant: &TenantId, id: &str) {
        self.members.unassign(tenant, id, true);
    }

    async fn ingest(
        &self,
        _tenant: &TenantId,
        _id: &str,
        _messages: Vec<crate::IngestMessage>,
        _wait: Option<Duration>,
    ) -> Result<Vec<crate::OutputMessage>, ApiError> {
        Err(Self::unsupported("input over HTTP"))
    }

    async fn take_outputs(
        &self,
        _tenant: &TenantId,
        _id: &str,
        _limit: usize,
    ) -> Result<Vec<crate::OutputMessage>, ApiError> {
        Err(Self::unsupported("output over HTTP"))
    }

    async fn status(&self, tenant: &TenantId, id: &str) -> Option<serde_json::Value> {
        self.members.status(tenant, id)
    }

    async fn runs_on(&self, tenant: &TenantId, id: &str, executor: &str) -> bool {
        let key = (tenant.clone(), id.to_owned());
        self.members
            .assigned()
            .executors
            .iter()
            .any(|(at, table)| at.as_str() == executor && table.deployments.contains_key(&key))
    }

    async fn running(&self) -> Vec<crate::RunningDeployment> {
        self.members.running()
    }

    async fn logs(
        &self,
        tenant: &TenantId,
        query: &crate::FeedQuery,
    ) -> Vec<weir_api::rest::LogLine> {
        match &self.reader {
            Some(reader) => reader.logs(tenant, query).await,
            None => Vec::new(),
        }
    }

    /// What the executors last reported of the tenant ([`telemetry`]), every few seconds.
    async fn metrics(&self, tenant: &TenantId) -> Vec<weir_api::rest::MetricSeries> {
        self.members.series(tenant)
    }

    /// The stored figures read through `reader` (totals and periods, the executors' reports
    /// included once flushed: [`ExecutorMembership::take_usage`]), plus what the executors
    /// reported since the last flush ([`telemetry`]). The live budgets (`inflight_bytes`,
    /// `queued_output_bytes`) are not reported.
    async fn usage(&self, tenant: &TenantId) -> weir_api::rest::Usage {
        let stored = match &self.reader {
            Some(reader) => reader.usage(tenant).await,
            None => weir_api::rest::Usage::default(),
        };
        let reported = self.members.reported_usage(tenant);
        weir_api::rest::Usage {
            messages_in: stored.messages_in.saturating_add(reported.messages_in),
            bytes_in: stored.bytes_in.saturating_add(reported.bytes_in),
            messages_limited: stored
                .messages_limited
                .saturating_add(reported.messages_limited),
            messages_out: stored.messages_out.saturating_add(reported.messages_out),
            dead_letters: stored.dead_letters.max(reported.dead_letters),
            fuel: stored.fuel.saturating_add(reported.fuel),
            init_fuel: stored.init_fuel.saturating_add(reported.init_fuel),
            state_ops: stored.state_ops.saturating_add(reported.state_ops),
            inflight_bytes: None,
            queued_output_bytes: None,
            ..stored
        }
    }

    async fn executors(&self) -> Vec<Executor> {
        // The members are listed by `ExecutorMembership::list`.
        Vec::new()
    }

    async fn cordon(&self, executor: &str, cordoned: bool) -> bool {
        let state = if cordoned {
            weir_scheduler::ExecutorState::Cordoned
        } else {
            weir_scheduler::ExecutorState::Ready
        };
        self.members.cordon(executor, state)
    }

    async fn forget_tenant(&self, tenant: &TenantId) {
        let keys: Vec<String> = {
            let assigned = self.members.assigned();
            assigned
                .executors
                .values()
                .flat_map(|table| table.deployments.keys())
                .filter(|(t, _)| t == tenant)
                .map(|(_, id)| id.clone())
                .collect()
        };
        for id in keys {
            self.members.unassign(tenant, &id, false);
        }
        self.members
            .telemetry()
            .retain(|(_, owner), _| owner != tenant);
    }

    /// The assignments carry the quotas: each executor applies them to the tenant's running
    /// deployments as soon as it reads them.
    async fn set_quotas(&self, tenant: &TenantId, quotas: &weir_tenants::Quotas) {
        self.members.set_quotas(tenant, quotas);
    }
}
