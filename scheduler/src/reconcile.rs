//! Reconciliation: from what the control store wants ([`Desired`]) and what the executors
//! report ([`Observed`]), the actions that bring the second to the first.
//!
//! [`Reconciler::plan`] is pure (no I/O, no clock): it moves each deployment's
//! [`DeploymentState`] through the state machine, places pending deployments with its
//! [`Placer`], and answers the [`Action`]s to carry out: start a deployment on an executor,
//! stop a copy that should not run (paused, deleted, a second copy), record a changed state.
//! [`round`] reads a [`DesiredStore`] and an [`ExecutorLink`], which the platform implements on
//! its control store and executors, plans, and carries the plan out; the platform runs it at
//! boot and then on a period. The link re-checks each action against the store under the tenant's lock before it acts, so a
//! plan made from a snapshot never undoes a change the API made since.

use std::collections::{BTreeMap, BTreeSet};

use crate::lifecycle::{DeploymentState, Event};
use crate::placement::{Demand, DeploymentKey, ExecutorState, LabelRequirement, Placer, Pool};
use crate::{ExecutorId, PlacementError, Resources};

/// A deployment as the control store wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Which deployment.
    pub key: DeploymentKey,
    /// Its status word as stored (see [`DeploymentState::from_stored`]): `paused` and
    /// `failed` mean "run nowhere", every other word "run".
    pub status: String,
    /// What it declares it may use.
    pub cost: Resources,
    /// Conditions on its executor's labels.
    pub labels: Vec<LabelRequirement>,
}

/// How a running deployment is, as its executor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Runs, every connection up.
    Running,
    /// Runs, but something is wrong (what).
    Degraded(String),
}

/// A deployment an executor reports it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Which deployment.
    pub key: DeploymentKey,
    /// The executor it runs on.
    pub executor: ExecutorId,
    /// How it is.
    pub health: Health,
    /// Its source reads its input (connected; an MQTT source's subscription acknowledged). A
    /// scaled-away sibling it takes over from is retired only once it does.
    pub reading: bool,
}

/// Something to do to bring the executors to what the store wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the deployment on the executor (placed there by this plan); report the outcome
    /// with [`Reconciler::started`].
    Start {
        /// Which deployment.
        key: DeploymentKey,
        /// Where.
        executor: ExecutorId,
    },
    /// Stop the deployment on the executor: it runs where it should not.
    Stop {
        /// Which deployment.
        key: DeploymentKey,
        /// Where it runs.
        executor: ExecutorId,
        /// The store has no such deployment any more: its kept outputs go too.
        forget: bool,
    },
    /// The deployment's state changed: record it in the store.
    Record {
        /// Which deployment.
        key: DeploymentKey,
        /// Its new state.
        state: DeploymentState,
    },
}

/// What one round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Deployments that want to run but fit nowhere now, and why; they stay pending and are
    /// tried again next round.
    pub unplaced: Vec<(DeploymentKey, PlacementError)>,
}

/// The scheduler's memory between rounds: the executor pool (what is placed where) and each
/// deployment's state. One entry per deployment the store has and per registered executor.
#[derive(Debug)]
pub struct Reconciler<P> {
    placer: P,
    pool: Pool,
    states: BTreeMap<DeploymentKey, DeploymentState>,
}

impl DeploymentState {
    /// The state a stored status word stands for, before any executor reported: `paused` is
    /// stopped, `failed` is failed (with `detail`, the last recorded reason), and every other
    /// word (`pending`, `placed`, `running`, `degraded`) is pending: the store says it should
    /// run, and where it runs is known only once an executor reports it.
    pub fn from_stored(status: &str, detail: &str) -> Self {
        match status {
            "paused" => Self::Stopped,
            "failed" => Self::Failed {
                reason: detail.to_owned(),
            },
            _ => Self::Pending,
        }
    }
}

impl<P: Placer> Reconciler<P> {
    /// A reconciler with an empty pool.
    pub fn new(placer: P) -> Self {
        Self {
            placer,
            pool: Pool::new(),
            states: BTreeMap::new(),
        }
    }

    /// The executor pool (to register executors and change their state).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The executor pool, to change.
    pub fn pool_mut(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// A deployment's state as the reconciler knows it.
    pub fn state(&self, key: &DeploymentKey) -> Option<&DeploymentState> {
        self.states.get(key)
    }

    fn live(&self, executor: &ExecutorId) -> bool {
        self.pool
            .state(executor)
            .is_some_and(|state| state != ExecutorState::Lost)
    }

    /// One round: the actions that bring `observed` to `desired`.
    pub fn plan(&mut self, desired: &[Desired], observed: &[Observed]) -> Plan {
        let mut plan = Plan::default();
        // What runs where; copies on lost or unknown executors are not trusted to exist.
        let mut running: BTreeMap<&DeploymentKey, Vec<&Observed>> = BTreeMap::new();
        for seen in observed {
            if self.live(&seen.executor) {
                running.entry(&seen.key).or_default().push(seen);
            }
        }
        let wanted: BTreeSet<&DeploymentKey> = desired.iter().map(|d| &d.key).collect();
        for want in desired {
            let copies = running.remove(&want.key).unwrap_or_default();
            self.reconcile_one(want, &copies, &mut plan);
        }
        // Running, but the store has no such deployment: deleted, or an instance scaled away.
        // It is retired once every instance taking over reads its input (see `taking_over`).
        for (key, copies) in running {
            if taking_over(key, desired, observed, |executor| self.live(executor)) {
                continue;
            }
            for copy in copies {
                plan.actions.push(Action::Stop {
                    key: key.clone(),
                    executor: copy.executor.clone(),
                    forget: true,
                });
            }
        }
        let gone: Vec<DeploymentKey> = self
            .states
            .keys()
            .filter(|key| !wanted.contains(key))
            .cloned()
            .collect();
        for key in gone {
            self.states.remove(&key);
            self.pool.release(&key);
        }
        plan
    }

    fn reconcile_one(&mut self, want: &Desired, copies: &[&Observed], plan: &mut Plan) {
        let key = &want.key;
        let mark = plan.actions.len();
        let stored = DeploymentState::from_stored(&want.status, "");
        let mut state = self
            .states
            .get(key)
            .cloned()
            .unwrap_or_else(|| stored.clone());
        // The store's wish first: paused or failed (its word wins), or resumed.
        if !stored.wants_to_run() {
            if state.wants_to_run() {
                let event = match &stored {
                    DeploymentState::Failed { reason } => Event::Fail(reason.clone()),
                    _ => Event::Stop,
                };
                state = state.apply(event).unwrap_or_else(|_| stored.clone());
            }
            if state.status() != stored.status() {
                state = stored;
            }
        } else if !state.wants_to_run() {
            state = state
                .apply(Event::Resume)
                .unwrap_or(DeploymentState::Pending);
        }
        if !state.wants_to_run() {
            self.pool.release(key);
            for copy in copies {
                plan.actions.push(Action::Stop {
                    key: key.clone(),
                    executor: copy.executor.clone(),
                    forget: false,
                });
            }
        } else {
            state = self.drive(want, state, copies, plan);
        }
        // Recorded before this deployment's other actions, so a start's outcome (recorded
        // when it comes) is never overwritten by this round's older word.
        if state.status() != want.status {
            plan.actions.insert(
                mark,
                Action::Record {
                    key: key.clone(),
                    state: state.clone(),
                },
            );
        }
        self.states.insert(key.clone(), state);
    }

    /// Moves a deployment that should run towards running, given where it runs now.
    fn drive(
        &mut self,
        want: &Desired,
        mut state: DeploymentState,
        copies: &[&Observed],
        plan: &mut Plan,
    ) -> DeploymentState {
        let key = &want.key;
        // Its executor is gone, or it stopped running there by itself: place it again.
        if let Some(executor) = state.executor().cloned() {
            // A draining executor's deployments move (the placer never picks it) once another
            // executor has room; until then they run on where they are, and say so.
            let draining = self.pool.state(&executor) == Some(ExecutorState::Draining)
                && self.placer.place(&self.pool, &demand(want)).is_ok();
            let lost = !self.live(&executor) || draining;
            let vanished = !matches!(state, DeploymentState::Placed { .. })
                && !copies.iter().any(|c| c.executor == executor);
            if lost || vanished {
                self.pool.release(key);
                state = state.apply(Event::Lost).unwrap_or(DeploymentState::Pending);
            }
        }
        if state == DeploymentState::Pending {
            // A copy runs already (the control plane restarted, or the API started it): adopt
            // the first one on a live executor.
            let adoptable = copies
                .iter()
                .find(|c| self.pool.state(&c.executor) != Some(ExecutorState::Draining));
            if let Some(copy) = adoptable {
                self.pool.release(key);
                // It runs there already: adopted even past the executor's declared room
                // (then the pool does not count it, and the next placements see more room).
                if let Err(error) = self.pool.assign(key.clone(), &copy.executor, want.cost) {
                    tracing::debug!(tenant = %key.tenant, deployment = %key.id, %error, "adopted beyond its executor's room");
                }
                state = DeploymentState::Placed {
                    executor: copy.executor.clone(),
                };
            } else {
                match self.placer.place(&self.pool, &demand(want)) {
                    Ok(executor) => match self.pool.assign(key.clone(), &executor, want.cost) {
                        Ok(()) => {
                            plan.actions.push(Action::Start {
                                key: key.clone(),
                                executor: executor.clone(),
                            });
                            // Copies left on a draining executor go.
                            for copy in copies.iter().filter(|c| c.executor != executor) {
                                plan.actions.push(Action::Stop {
                                    key: key.clone(),
                                    executor: copy.executor.clone(),
                                    forget: false,
                                });
                            }
                            return state
                                .apply(Event::Place(executor))
                                .unwrap_or(DeploymentState::Pending);
                        }
                        Err(_) => {
                            plan.unplaced.push((
                                key.clone(),
                                PlacementError::NoRoom {
                                    cost: want.cost,
                                    matching: 1,
                                },
                            ));
                            return state;
                        }
                    },
                    Err(error) => {
                        plan.unplaced.push((key.clone(), error));
                        return state;
                    }
                }
            }
        }
        let Some(executor) = state.executor().cloned() else {
            return state;
        };
        // Copies anywhere else go.
        for copy in copies.iter().filter(|c| c.executor != executor) {
            plan.actions.push(Action::Stop {
                key: key.clone(),
                executor: copy.executor.clone(),
                forget: false,
            });
        }
        let Some(here) = copies.iter().find(|c| c.executor == executor) else {
            // Placed, start in flight.
            return state;
        };
        let event = match (&state, &here.health) {
            (DeploymentState::Placed { .. }, _) => Event::Started,
            (DeploymentState::Running { .. }, Health::Running) => return state,
            (_, Health::Degraded(reason)) => Event::Degrade(reason.clone()),
            (_, Health::Running) => Event::Recover,
        };
        let next = state.apply(event).unwrap_or_else(|_| state.clone());
        // A placed one that reports degraded at once: running first, then degraded.
        match (&next, &here.health) {
            (DeploymentState::Running { .. }, Health::Degraded(reason)) => next
                .apply(Event::Degrade(reason.clone()))
                .unwrap_or(next.clone()),
            _ => next,
        }
    }

    /// The outcome of an [`Action::Start`]: the deployment's new state, if it changed (to
    /// record). A failed start is `failed` with the reason and runs nowhere until resumed.
    pub fn started(
        &mut self,
        key: &DeploymentKey,
        executor: &ExecutorId,
        outcome: Result<(), String>,
    ) -> Option<DeploymentState> {
        let state = self.states.get(key)?;
        if state.executor() != Some(executor) {
            return None;
        }
        let next = match outcome {
            Ok(()) => state.apply(Event::Started).ok()?,
            Err(reason) => {
                self.pool.release(key);
                state.apply(Event::Fail(reason)).ok()?
            }
        };
        self.states.insert(key.clone(), next.clone());
        Some(next)
    }

    /// Forgets what the reconciler knows of a deployment (its placement and state), so the
    /// next round starts from the store's word: after the API changed it under the tenant's
    /// lock, for example.
    pub fn forget(&mut self, key: &DeploymentKey) {
        self.states.remove(key);
        self.pool.release(key);
    }
}

/// What placing `want` asks of the pool: its cost and labels, and its deployment when it is
/// one of several instances (spread over executors).
fn demand(want: &Desired) -> Demand<'_> {
    let (deployment, instance) = weir_api::scale::split_instance(&want.key.id);
    Demand {
        tenant: &want.key.tenant,
        cost: want.cost,
        labels: &want.labels,
        group: (instance > 0).then_some(deployment),
    }
}

/// Whether `gone` (running, not wanted) is an instance whose deployment still wants other
/// instances to run that do not all read their input yet (each with a copy on a live executor
/// whose source reads: [`Observed::reading`]; a sink problem does not hold it). Its
/// retirement waits for them: an MQTT instance that leaves its subscription before the
/// instances taking over joined theirs (one instance becoming several, or several one) would
/// leave its input with no subscriber, and the broker drops what comes meanwhile. Meanwhile
/// both read the input, so a message may be processed twice (at-least-once), never lost.
/// Siblings that cannot run (unplaceable, failed to start) keep it running.
fn taking_over(
    gone: &DeploymentKey,
    desired: &[Desired],
    observed: &[Observed],
    live: impl Fn(&ExecutorId) -> bool,
) -> bool {
    let (deployment, _) = weir_api::scale::split_instance(&gone.id);
    desired
        .iter()
        .filter(|want| {
            want.key.tenant == gone.tenant
                && weir_api::scale::split_instance(&want.key.id).0 == deployment
                && DeploymentState::from_stored(&want.status, "").wants_to_run()
        })
        .any(|sibling| {
            !observed
                .iter()
                .any(|seen| seen.key == sibling.key && seen.reading && live(&seen.executor))
        })
}

/// What the control store wants: the platform's side of a [`round`].
#[async_trait::async_trait]
pub trait DesiredStore: Send + Sync {
    /// Every deployment of every tenant, as stored.
    async fn desired(&self) -> Result<Vec<Desired>, String>;
    /// Records a deployment's new state (status word and detail), unless the store changed it
    /// since the plan was made.
    async fn record(&self, key: &DeploymentKey, state: &DeploymentState) -> Result<(), String>;
    /// Records why a deployment that wants to run fits on no executor now (it stays pending),
    /// unless the store says so already; called every round it stays unplaced. The default
    /// records nothing.
    async fn record_unplaced(
        &self,
        key: &DeploymentKey,
        reason: &PlacementError,
    ) -> Result<(), String> {
        let _ = (key, reason);
        Ok(())
    }
}

/// The executors: the platform's side of a [`round`].
#[async_trait::async_trait]
pub trait ExecutorLink: Send + Sync {
    /// What runs where.
    async fn observe(&self) -> Result<Vec<Observed>, String>;
    /// Starts a deployment on an executor if the store still wants it running: `Ok(true)` when
    /// it started, `Ok(false)` when the store no longer wants it (nothing was done), or why it
    /// did not start.
    async fn start(&self, key: &DeploymentKey, executor: &ExecutorId) -> Result<bool, String>;
    /// Stops a deployment on an executor, if the store still wants it stopped there.
    async fn stop(&self, key: &DeploymentKey, executor: &ExecutorId, forget: bool);
}

/// What one [`round`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// Deployments started.
    pub started: usize,
    /// Starts that failed (those deployments are `failed` now).
    pub failed: usize,
    /// Copies stopped.
    pub stopped: usize,
    /// Deployments that want to run but fit on no executor now.
    pub unplaced: usize,
}

/// One reconcile round: read the store and the executors, plan, act. A `placed` state is not
/// recorded when its start follows in the same round: the start's outcome (`running` or
/// `failed`) is recorded as soon as it is known.
pub async fn round<P: Placer>(
    reconciler: &tokio::sync::Mutex<Reconciler<P>>,
    store: &dyn DesiredStore,
    executors: &dyn ExecutorLink,
) -> Result<RoundReport, String> {
    let desired = store.desired().await?;
    let observed = executors.observe().await?;
    let plan = reconciler.lock().await.plan(&desired, &observed);
    let mut report = RoundReport {
        unplaced: plan.unplaced.len(),
        ..RoundReport::default()
    };
    for (key, error) in &plan.unplaced {
        tracing::debug!(tenant = %key.tenant, deployment = %key.id, %error, "not placed");
        // Only a status detail: the round goes on without it.
        if let Err(failure) = store.record_unplaced(key, error).await {
            tracing::warn!(tenant = %key.tenant, deployment = %key.id, %failure, "why it waits was not recorded");
        }
    }
    let starting: BTreeSet<DeploymentKey> = plan
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Start { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    for action in plan.actions {
        match action {
            Action::Start { key, executor } => {
                let outcome = match executors.start(&key, &executor).await {
                    Ok(true) => Ok(()),
                    // The store changed since the plan: the next round starts from its word.
                    Ok(false) => {
                        reconciler.lock().await.forget(&key);
                        continue;
                    }
                    Err(reason) => {
                        tracing::warn!(tenant = %key.tenant, deployment = %key.id, %executor, %reason, "deployment did not start");
                        Err(reason)
                    }
                };
                if outcome.is_ok() {
                    report.started += 1;
                } else {
                    report.failed += 1;
                }
                let next = reconciler.lock().await.started(&key, &executor, outcome);
                if let Some(state) = next {
                    store.record(&key, &state).await?;
                }
            }
            Action::Stop {
                key,
                executor,
                forget,
            } => {
                executors.stop(&key, &executor, forget).await;
                report.stopped += 1;
            }
            Action::Record {
                key,
                state: DeploymentState::Placed { .. },
            } if starting.contains(&key) => {}
            Action::Record { key, state } => store.record(&key, &state).await?,
        }
    }
    Ok(report)
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

    use weir_api::TenantId;

    use super::*;
    use crate::{ExecutorInfo, SpreadPacker};

    fn exec(id: &str) -> ExecutorId {
        ExecutorId::new(id).unwrap()
    }

    fn key(id: &str) -> DeploymentKey {
        DeploymentKey {
            tenant: TenantId::new("acme").unwrap(),
            id: id.to_owned(),
        }
    }

    fn unit() -> Resources {
        Resources {
            fuel_per_second: 1,
            memory_bytes: 1,
            instances: 1,
        }
    }

    fn want(id: &str, status: &str) -> Desired {
        Desired {
            key: key(id),
            status: status.to_owned(),
            cost: unit(),
            labels: Vec::new(),
        }
    }

    fn seen(id: &str, executor: &str) -> Observed {
        Observed {
            key: key(id),
            executor: exec(executor),
            health: Health::Running,
            reading: true,
        }
    }

    fn reconciler(executors: &[&str]) -> Reconciler<SpreadPacker> {
        let mut r = Reconciler::new(SpreadPacker);
        for id in executors {
            r.pool_mut()
                .add_executor(ExecutorInfo {
                    id: exec(id),
                    capacity: Resources {
                        fuel_per_second: 10,
                        memory_bytes: 10,
                        instances: 10,
                    },
                    labels: BTreeMap::new(),
                })
                .unwrap();
        }
        r
    }

    fn starts(plan: &Plan) -> Vec<(String, ExecutorId)> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { key, executor } => Some((key.id.clone(), executor.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn places_and_starts_what_should_run_and_records_it_running_once_started() {
        let mut r = reconciler(&["e1"]);
        let desired = [want("d1", "pending")];
        let plan = r.plan(&desired, &[]);
        assert_eq!(starts(&plan), vec![("d1".to_owned(), exec("e1"))]);
        assert!(plan.actions.contains(&Action::Record {
            key: key("d1"),
            state: DeploymentState::Placed {
                executor: exec("e1")
            }
        }));
        assert_eq!(
            r.started(&key("d1"), &exec("e1"), Ok(())),
            Some(DeploymentState::Running {
                executor: exec("e1")
            })
        );
        // Next round: it runs where placed; nothing to do.
        let desired = [want("d1", "running")];
        let plan = r.plan(&desired, &[seen("d1", "e1")]);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_failed_start_is_recorded_failed_and_not_retried_until_resumed() {
        let mut r = reconciler(&["e1"]);
        r.plan(&[want("d1", "pending")], &[]);
        let failed = r
            .started(&key("d1"), &exec("e1"), Err("no such module".to_owned()))
            .unwrap();
        assert_eq!(
            failed,
            DeploymentState::Failed {
                reason: "no such module".to_owned()
            }
        );
        assert_eq!(r.pool().placed(), 0, "a failed start frees its room");
        // The store now says failed: nothing starts.
        let plan = r.plan(&[want("d1", "failed")], &[]);
        assert_eq!(plan, Plan::default());
        // Resumed (the store says running again): placed and started.
        let plan = r.plan(&[want("d1", "pending")], &[]);
        assert_eq!(starts(&plan), vec![("d1".to_owned(), exec("e1"))]);
    }

    #[test]
    fn adopts_what_runs_already_and_stops_second_copies() {
        let mut r = reconciler(&["e1", "e2"]);
        let plan = r.plan(
            &[want("d1", "running")],
            &[seen("d1", "e2"), seen("d1", "e1")],
        );
        assert!(starts(&plan).is_empty());
        assert_eq!(
            plan.actions,
            vec![Action::Stop {
                key: key("d1"),
                executor: exec("e1"),
                forget: false
            }]
        );
        assert_eq!(
            r.state(&key("d1")),
            Some(&DeploymentState::Running {
                executor: exec("e2")
            })
        );
        assert_eq!(r.pool().placement(&key("d1")), Some(&exec("e2")));
    }

    #[test]
    fn a_scaled_away_instance_is_retired_only_once_the_instances_taking_over_read_their_input() {
        let mut r = reconciler(&["e1", "e2", "e3"]);
        // One instance becomes two: `d` runs, `d#1` and `d#2` are wanted.
        let wanted = [want("d#1", "pending"), want("d#2", "pending")];
        let retired = |plan: &Plan| {
            plan.actions
                .iter()
                .any(|a| matches!(a, Action::Stop { key, forget: true, .. } if key.id == "d"))
        };
        let plan = r.plan(&wanted, &[seen("d", "e1")]);
        assert!(
            !retired(&plan),
            "retired before its successors ran: {plan:?}"
        );
        let placed = starts(&plan);
        assert_eq!(placed.len(), 2);
        let on = |id: &str| {
            placed
                .iter()
                .find(|(key, _)| key == id)
                .map(|(_, executor)| executor.as_str().to_owned())
                .unwrap()
        };
        let (first, second) = (on("d#1"), on("d#2"));
        // Both run, one still subscribing.
        let mut subscribing = seen("d#2", &second);
        subscribing.reading = false;
        let plan = r.plan(
            &wanted,
            &[seen("d", "e1"), seen("d#1", &first), subscribing],
        );
        assert!(
            !retired(&plan),
            "retired before d#2 read its input: {plan:?}"
        );
        // Its source retrying does not read either.
        let retrying = Observed {
            health: Health::Degraded("source connection: refused".to_owned()),
            reading: false,
            ..seen("d#2", &second)
        };
        let plan = r.plan(&wanted, &[seen("d", "e1"), seen("d#1", &first), retrying]);
        assert!(!retired(&plan), "{plan:?}");
        // A sink problem does not hold the retirement: the input is read. Nothing else is
        // done to the instances.
        let sink_down = Observed {
            health: Health::Degraded("sink connection: refused".to_owned()),
            ..seen("d#2", &second)
        };
        let plan = r.plan(&wanted, &[seen("d", "e1"), seen("d#1", &first), sink_down]);
        assert!(retired(&plan), "{plan:?}");
        assert!(
            plan.actions
                .iter()
                .all(|a| matches!(a, Action::Record { .. })
                    || retired(&Plan {
                        actions: vec![a.clone()],
                        unplaced: Vec::new()
                    })),
            "{plan:?}"
        );
        // Both read: `d` goes for good.
        let plan = r.plan(
            &wanted,
            &[seen("d", "e1"), seen("d#1", &first), seen("d#2", &second)],
        );
        assert!(retired(&plan), "{plan:?}");
        // Another tenant's or deployment's instances never hold it back, nor paused siblings.
        let plan = r.plan(&[want("d#1", "paused")], &[seen("d", "e1")]);
        assert!(retired(&plan), "{plan:?}");
        let plan = r.plan(&[want("other#1", "pending")], &[seen("d", "e1")]);
        assert!(retired(&plan), "{plan:?}");
    }

    #[test]
    fn stops_paused_and_deleted_deployments() {
        let mut r = reconciler(&["e1"]);
        r.plan(&[want("d1", "pending")], &[]);
        r.started(&key("d1"), &exec("e1"), Ok(()));
        let plan = r.plan(&[want("d1", "paused")], &[seen("d1", "e1")]);
        assert_eq!(
            plan.actions,
            vec![Action::Stop {
                key: key("d1"),
                executor: exec("e1"),
                forget: false
            }]
        );
        assert_eq!(r.state(&key("d1")), Some(&DeploymentState::Stopped));
        assert_eq!(r.pool().placed(), 0);
        // Deleted: the store has it no more, an executor still runs it.
        let plan = r.plan(&[], &[seen("d1", "e1")]);
        assert_eq!(
            plan.actions,
            vec![Action::Stop {
                key: key("d1"),
                executor: exec("e1"),
                forget: true
            }]
        );
        assert_eq!(r.state(&key("d1")), None);
    }

    #[test]
    fn places_again_what_a_lost_executor_ran() {
        let mut r = reconciler(&["e1", "e2"]);
        let desired = [want("d1", "pending"), want("d2", "pending")];
        let plan = r.plan(&desired, &[]);
        for (id, executor) in starts(&plan) {
            r.started(&key(&id), &executor, Ok(()));
        }
        let on_e1 = r.pool().placed_on(&exec("e1"));
        assert_eq!(on_e1.len(), 1, "one tenant's two deployments are spread");
        let observed: Vec<Observed> = ["d1", "d2"]
            .iter()
            .map(|id| seen(id, r.pool().placement(&key(id)).unwrap().as_str()))
            .collect();
        r.pool_mut()
            .set_state(&exec("e1"), ExecutorState::Lost)
            .unwrap();
        // e1 still "reports" its copy: a lost executor's reports are not trusted.
        let plan = r.plan(&desired, &observed);
        let moved = &on_e1[0];
        assert_eq!(starts(&plan), vec![(moved.id.clone(), exec("e2"))]);
        assert_eq!(r.pool().placement(moved), Some(&exec("e2")));
    }

    #[test]
    fn moves_what_a_draining_executor_runs_and_stops_the_old_copy() {
        let mut r = reconciler(&["e1", "e2"]);
        r.plan(&[want("d1", "pending")], &[]);
        let first = r.pool().placement(&key("d1")).unwrap().clone();
        r.started(&key("d1"), &first, Ok(()));
        let other = if first == exec("e1") {
            exec("e2")
        } else {
            exec("e1")
        };
        r.pool_mut()
            .set_state(&first, ExecutorState::Draining)
            .unwrap();
        // The draining executor still runs it and says so: it is not adopted there again.
        let plan = r.plan(&[want("d1", "running")], &[seen("d1", first.as_str())]);
        assert_eq!(starts(&plan), vec![("d1".to_owned(), other.clone())]);
        assert!(plan.actions.contains(&Action::Stop {
            key: key("d1"),
            executor: first.clone(),
            forget: false
        }));
        assert_eq!(r.pool().placement(&key("d1")), Some(&other));
        assert!(r.pool().placed_on(&first).is_empty());
    }

    #[test]
    fn a_draining_executor_keeps_what_no_other_has_room_for_until_one_has() {
        let mut r = reconciler(&["e1"]);
        r.plan(&[want("d1", "pending")], &[]);
        r.started(&key("d1"), &exec("e1"), Ok(()));
        r.pool_mut()
            .set_state(&exec("e1"), ExecutorState::Draining)
            .unwrap();
        // Nowhere to go: it runs on, and shows running (not waiting).
        let plan = r.plan(&[want("d1", "running")], &[seen("d1", "e1")]);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(plan.unplaced.is_empty(), "{plan:?}");
        assert_eq!(
            r.state(&key("d1")),
            Some(&DeploymentState::Running {
                executor: exec("e1")
            })
        );
        // Another executor joins: it moves there.
        r.pool_mut()
            .add_executor(ExecutorInfo {
                id: exec("e2"),
                capacity: Resources {
                    fuel_per_second: 100,
                    memory_bytes: 1 << 30,
                    instances: 100,
                },
                labels: BTreeMap::new(),
            })
            .unwrap();
        let plan = r.plan(&[want("d1", "running")], &[seen("d1", "e1")]);
        assert_eq!(starts(&plan), vec![("d1".to_owned(), exec("e2"))]);
    }

    #[test]
    fn places_again_what_stopped_running_by_itself() {
        let mut r = reconciler(&["e1"]);
        r.plan(&[want("d1", "pending")], &[]);
        r.started(&key("d1"), &exec("e1"), Ok(()));
        // The executor no longer reports it (its dataflow ended, say).
        let plan = r.plan(&[want("d1", "pending")], &[]);
        assert_eq!(starts(&plan), vec![("d1".to_owned(), exec("e1"))]);
    }

    #[test]
    fn follows_health_reports_through_degraded_and_back() {
        let mut r = reconciler(&["e1"]);
        r.plan(&[want("d1", "pending")], &[]);
        r.started(&key("d1"), &exec("e1"), Ok(()));
        let degraded = Observed {
            health: Health::Degraded("sink disconnected".to_owned()),
            ..seen("d1", "e1")
        };
        let plan = r.plan(&[want("d1", "running")], &[degraded]);
        assert_eq!(
            plan.actions,
            vec![Action::Record {
                key: key("d1"),
                state: DeploymentState::Degraded {
                    executor: exec("e1"),
                    reason: "sink disconnected".to_owned()
                }
            }]
        );
        let plan = r.plan(&[want("d1", "degraded")], &[seen("d1", "e1")]);
        assert_eq!(
            plan.actions,
            vec![Action::Record {
                key: key("d1"),
                state: DeploymentState::Running {
                    executor: exec("e1")
                }
            }]
        );
    }

    #[test]
    fn leaves_unplaceable_deployments_pending_with_the_reason() {
        let mut r = reconciler(&[]);
        let plan = r.plan(&[want("d1", "pending")], &[]);
        assert!(plan.actions.is_empty());
        assert_eq!(
            plan.unplaced,
            vec![(key("d1"), PlacementError::NoReadyExecutor { registered: 0 })]
        );
        assert_eq!(r.state(&key("d1")), Some(&DeploymentState::Pending));
    }

    #[test]
    fn reads_stored_status_words() {
        assert_eq!(
            DeploymentState::from_stored("paused", "x"),
            DeploymentState::Stopped
        );
        assert_eq!(
            DeploymentState::from_stored("failed", "bad graph"),
            DeploymentState::Failed {
                reason: "bad graph".to_owned()
            }
        );
        for word in ["pending", "placed", "running", "degraded"] {
            assert_eq!(
                DeploymentState::from_stored(word, ""),
                DeploymentState::Pending
            );
        }
    }

    /// The store and executors of one in-memory platform, for [`round`]: what a round reads,
    /// starts, stops and records, in order.
    #[derive(Default)]
    struct Platform {
        statuses: std::sync::Mutex<BTreeMap<DeploymentKey, String>>,
        running: std::sync::Mutex<Vec<Observed>>,
        refuse: Option<String>,
        log: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl DesiredStore for Platform {
        async fn desired(&self) -> Result<Vec<Desired>, String> {
            Ok(self
                .statuses
                .lock()
                .unwrap()
                .iter()
                .map(|(key, status)| Desired {
                    key: key.clone(),
                    status: status.clone(),
                    cost: unit(),
                    labels: Vec::new(),
                })
                .collect())
        }
        async fn record(&self, key: &DeploymentKey, state: &DeploymentState) -> Result<(), String> {
            self.log
                .lock()
                .unwrap()
                .push(format!("record {} {}", key.id, state.status()));
            self.statuses
                .lock()
                .unwrap()
                .insert(key.clone(), state.status().to_owned());
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl ExecutorLink for Platform {
        async fn observe(&self) -> Result<Vec<Observed>, String> {
            Ok(self.running.lock().unwrap().clone())
        }
        async fn start(&self, key: &DeploymentKey, executor: &ExecutorId) -> Result<bool, String> {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {} on {executor}", key.id));
            if let Some(reason) = &self.refuse {
                return Err(reason.clone());
            }
            self.running.lock().unwrap().push(Observed {
                key: key.clone(),
                executor: executor.clone(),
                health: Health::Running,
                reading: true,
            });
            Ok(true)
        }
        async fn stop(&self, key: &DeploymentKey, executor: &ExecutorId, _forget: bool) {
            self.log
                .lock()
                .unwrap()
                .push(format!("stop {} on {executor}", key.id));
            self.running
                .lock()
                .unwrap()
                .retain(|o| !(o.key == *key && o.executor == *executor));
        }
    }

    #[tokio::test]
    async fn a_round_starts_records_the_outcome_once_and_then_rests() {
        let reconciler = tokio::sync::Mutex::new(reconciler(&["e1"]));
        let platform = Platform::default();
        platform
            .statuses
            .lock()
            .unwrap()
            .insert(key("d1"), "running".to_owned());
        let report = round(&reconciler, &platform, &platform).await.unwrap();
        assert_eq!(
            report,
            RoundReport {
                started: 1,
                ..RoundReport::default()
            }
        );
        // No `placed` word in between: the start's outcome is what is recorded.
        assert_eq!(
            *platform.log.lock().unwrap(),
            ["start d1 on e1", "record d1 running"]
        );
        let report = round(&reconciler, &platform, &platform).await.unwrap();
        assert_eq!(report, RoundReport::default());
        assert_eq!(platform.log.lock().unwrap().len(), 2, "nothing more to do");
    }

    #[tokio::test]
    async fn a_round_records_a_failed_start_with_its_reason_and_does_not_retry_it() {
        let reconciler = tokio::sync::Mutex::new(reconciler(&["e1"]));
        let platform = Platform {
            refuse: Some("no module temperature@1.0.0".to_owned()),
            ..Platform::default()
        };
        platform
            .statuses
            .lock()
            .unwrap()
            .insert(key("d1"), "running".to_owned());
        let report = round(&reconciler, &platform, &platform).await.unwrap();
        assert_eq!(report.failed, 1);
        assert_eq!(
            reconciler.lock().await.state(&key("d1")),
            Some(&DeploymentState::Failed {
                reason: "no module temperature@1.0.0".to_owned()
            })
        );
        assert_eq!(platform.statuses.lock().unwrap()[&key("d1")], "failed");
        round(&reconciler, &platform, &platform).await.unwrap();
        assert_eq!(
            *platform.log.lock().unwrap(),
            ["start d1 on e1", "record d1 failed"],
            "a failed deployment waits for its owner"
        );
    }
}
