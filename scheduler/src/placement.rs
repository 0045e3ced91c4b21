//! Placement: which executor a deployment runs on.
//!
//! [`Pool`] is the scheduler's picture of its executors: what each offers ([`Resources`],
//! labels), whether it takes new work ([`ExecutorState`]), and what is placed on it. A
//! [`Placer`] is a pure function of a pool and a [`Demand`]: no I/O, no clock, no randomness, so
//! the same pool and demand give the same executor. [`SpreadPacker`] is the one weir uses.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use weir_api::TenantId;
use weir_api::tenancy::Quotas;

use crate::ExecutorId;

/// What a deployment declares it may use, and what an executor offers. Each field is a hard
/// bound: a deployment is placed only where all three fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Fuel per second (wasmtime fuel, roughly wasm instructions): CPU.
    pub fuel_per_second: u64,
    /// Bytes of linear memory.
    pub memory_bytes: u64,
    /// Operator instances (one per wasm node of a graph; the executor's pooling-allocator
    /// slots).
    pub instances: u32,
}

impl Resources {
    /// What one deployment of a graph with `wasm_nodes` operator nodes declares under the
    /// tenant's `quotas`: one instance per node, each up to `memory_per_instance`, and an even
    /// share of the tenant's `fuel_per_second` over its `max_deployments` (the tenant's fuel
    /// budget is one bucket shared by all its deployments, so this is what one may count on).
    pub fn for_deployment(wasm_nodes: u32, quotas: &Quotas) -> Self {
        let share = quotas
            .fuel_per_second
            .div_ceil(u64::from(quotas.max_deployments.max(1)));
        Self {
            fuel_per_second: share,
            memory_bytes: u64::from(wasm_nodes).saturating_mul(quotas.memory_per_instance),
            instances: wasm_nodes,
        }
    }

    /// Whether `need` fits in `self`.
    pub fn fits(&self, need: &Self) -> bool {
        need.fuel_per_second <= self.fuel_per_second
            && need.memory_bytes <= self.memory_bytes
            && need.instances <= self.instances
    }

    fn saturating_add(self, other: Self) -> Self {
        Self {
            fuel_per_second: self.fuel_per_second.saturating_add(other.fuel_per_second),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            instances: self.instances.saturating_add(other.instances),
        }
    }

    fn saturating_sub(self, other: Self) -> Self {
        Self {
            fuel_per_second: self.fuel_per_second.saturating_sub(other.fuel_per_second),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            instances: self.instances.saturating_sub(other.instances),
        }
    }
}

/// One condition on an executor's labels, as `key=value`, `key!=value` or `key` (the label
/// exists), the forms of Kubernetes' equality-based label selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// The label is present with this value.
    Equals(String, String),
    /// The label is absent or has another value.
    NotEquals(String, String),
    /// The label is present, whatever its value.
    Exists(String),
}

/// A label requirement that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a label requirement (key=value, key!=value or key): {reason}")]
pub struct LabelError {
    /// What was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl LabelRequirement {
    /// Longest key or value.
    pub const MAX_LEN: usize = 63;

    /// Reads `key=value`, `key!=value` or `key`. Keys and values are 1 to 63 characters of
    /// ASCII letters, digits, `-`, `_`, `.` and `/` (the key), as Kubernetes allows.
    pub fn parse(text: &str) -> Result<Self, LabelError> {
        let error = |reason| LabelError {
            text: text.to_owned(),
            reason,
        };
        let check = |part: &str, slash: bool| -> Result<String, LabelError> {
            if part.is_empty() || part.len() > Self::MAX_LEN {
                return Err(error("a key or value is 1 to 63 characters"));
            }
            let allowed = |c: char| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (slash && c == '/')
            };
            if !part.chars().all(allowed) {
                return Err(error(
                    "keys and values are ASCII letters, digits, '-', '_' and '.'",
                ));
            }
            Ok(part.to_owned())
        };
        if let Some((key, value)) = text.split_once("!=") {
            return Ok(Self::NotEquals(check(key, true)?, check(value, false)?));
        }
        if let Some((key, value)) = text.split_once('=') {
            return Ok(Self::Equals(check(key, true)?, check(value, false)?));
        }
        Ok(Self::Exists(check(text, true)?))
    }

    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(key, value) => labels.get(key) == Some(value),
            Self::NotEquals(key, value) => labels.get(key) != Some(value),
            Self::Exists(key) => labels.contains_key(key),
        }
    }
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals(key, value) => write!(f, "{key}={value}"),
            Self::NotEquals(key, value) => write!(f, "{key}!={value}"),
            Self::Exists(key) => f.write_str(key),
        }
    }
}

/// Whether an executor takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorState {
    /// Takes new deployments.
    Ready,
    /// Keeps what it runs, takes nothing new.
    Cordoned,
    /// Takes nothing new; what it runs is being moved elsewhere.
    Draining,
    /// Its heartbeats stopped: what it ran must be placed again.
    Lost,
}

impl ExecutorState {
    /// The state's word in the API (`/v1/executors`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Cordoned => "cordoned",
            Self::Draining => "draining",
            Self::Lost => "lost",
        }
    }
}

/// An executor as it registered: its id, what it offers, its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorInfo {
    /// Unique per executor process.
    pub id: ExecutorId,
    /// What it offers in all.
    pub capacity: Resources,
    /// Its labels (`zone=eu-1`, `gpu`), matched by deployments' [`LabelRequirement`]s.
    pub labels: BTreeMap<String, String>,
}

/// A deployment, as the pool knows it: its tenant and its id within the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The deployment's id within the tenant.
    pub id: String,
}

#[derive(Debug)]
struct Slot {
    info: ExecutorInfo,
    state: ExecutorState,
    used: Resources,
    placed: u32,
}

/// A change to the pool it refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// An executor with this id is registered already.
    #[error("executor {0} is registered already")]
    DuplicateExecutor(ExecutorId),
    /// No executor with this id.
    #[error("no executor {0}")]
    NoExecutor(ExecutorId),
    /// The deployment is placed already (release it first).
    #[error("deployment {}/{} is placed already", .0.tenant, .0.id)]
    AlreadyPlaced(DeploymentKey),
    /// The executor lacks room for it (the pool never over-commits).
    #[error("executor {0} lacks room for the deployment")]
    NoRoom(ExecutorId),
}

/// The executors and what is placed on them. Bounded by what it is told: one entry per
/// registered executor and per placed deployment, one count per (tenant, executor) pair that
/// has a placement.
#[derive(Debug, Default)]
pub struct Pool {
    // A removed executor leaves `None`, reused by the next one, so indices stay put.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    index: HashMap<ExecutorId, usize>,
    placements: HashMap<DeploymentKey, (usize, Resources)>,
    // Per tenant: its placements per executor index (absent: none).
    tenants: HashMap<TenantId, HashMap<usize, u32>>,
    // Per deployment with several instances (`<id>#<n>` keys, `weir_api::scale`): its placed
    // instances per executor index (absent: none).
    groups: HashMap<(TenantId, String), HashMap<usize, u32>>,
}

/// The deployment an instance key belongs to, when it is one of several instances
/// (`<id>#<n>`, `weir_api::scale::split_instance`).
fn group_of(key: &DeploymentKey) -> Option<(TenantId, String)> {
    let (deployment, index) = weir_api::scale::split_instance(&key.id);
    (index > 0).then(|| (key.tenant.clone(), deployment.to_owned()))
}

fn count_down(counts: &mut HashMap<usize, u32>, at: usize) {
    if let Some(count) = counts.get_mut(&at) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&at);
        }
    }
}

/// One executor as a [`Placer`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Its registration.
    pub info: &'a ExecutorInfo,
    /// Whether it takes work.
    pub state: ExecutorState,
    /// What is free on it.
    pub free: Resources,
    /// Deployments placed on it, all tenants.
    pub placed: u32,
    /// Deployments of the demand's tenant placed on it.
    pub tenant_placed: u32,
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an executor, ready.
    pub fn add_executor(&mut self, info: ExecutorInfo) -> Result<(), PoolError> {
        if self.index.contains_key(&info.id) {
            return Err(PoolError::DuplicateExecutor(info.id));
        }
        let slot = Slot {
            info,
            state: ExecutorState::Ready,
            used: Resources::default(),
            placed: 0,
        };
        let id = slot.info.id.clone();
        let at = match self.free.pop() {
            Some(at) => {
                if let Some(entry) = self.slots.get_mut(at) {
                    *entry = Some(slot);
                }
                at
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(id, at);
        Ok(())
    }

    /// Removes an executor; the deployments that were placed on it, now placed nowhere.
    pub fn remove_executor(&mut self, id: &ExecutorId) -> Result<Vec<DeploymentKey>, PoolError> {
        let at = self
            .index
            .remove(id)
            .ok_or_else(|| PoolError::NoExecutor(id.clone()))?;
        let orphans: Vec<DeploymentKey> = self
            .placements
            .iter()
            .filter(|(_, (on, _))| *on == at)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &orphans {
            self.release(key);
        }
        if let Some(entry) = self.slots.get_mut(at) {
            *entry = None;
        }
        self.free.push(at);
        Ok(orphans)
    }

    /// Sets whether an executor takes work.
    pub fn set_state(&mut self, id: &ExecutorId, state: ExecutorState) -> Result<(), PoolError> {
        let slot = self
            .slot_mut(id)
            .ok_or_else(|| PoolError::NoExecutor(id.clone()))?;
        slot.state = state;
        Ok(())
    }

    /// An executor's registration, if it is registered.
    pub fn info(&self, id: &ExecutorId) -> Option<&ExecutorInfo> {
        self.slot(id).map(|slot| &slot.info)
    }

    /// Whether an executor takes work, if it is registered.
    pub fn state(&self, id: &ExecutorId) -> Option<ExecutorState> {
        self.slot(id).map(|slot| slot.state)
    }

    /// Records `key` as placed on `executor`, using `cost` of it. Refused when the
    /// deployment is placed already or the executor lacks room: the pool never over-commits.
    pub fn assign(
        &mut self,
        key: DeploymentKey,
        executor: &ExecutorId,
        cost: Resources,
    ) -> Result<(), PoolError> {
        if self.placements.contains_key(&key) {
            return Err(PoolError::AlreadyPlaced(key));
        }
        let at = *self
            .index
            .get(executor)
            .ok_or_else(|| PoolError::NoExecutor(executor.clone()))?;
        let slot = self
            .slots
            .get_mut(at)
            .and_then(Option::as_mut)
            .ok_or_else(|| PoolError::NoExecutor(executor.clone()))?;
        if !slot.info.capacity.saturating_sub(slot.used).fits(&cost) {
            return Err(PoolError::NoRoom(executor.clone()));
        }
        slot.used = slot.used.saturating_add(cost);
        slot.placed = slot.placed.saturating_add(1);
        *self
            .tenants
            .entry(key.tenant.clone())
            .or_default()
            .entry(at)
            .or_default() += 1;
        if let Some(group) = group_of(&key) {
            *self.groups.entry(group).or_default().entry(at).or_default() += 1;
        }
        self.placements.insert(key, (at, cost));
        Ok(())
    }

    /// Removes `key`'s placement; the executor it was on, if it was placed.
    pub fn release(&mut self, key: &DeploymentKey) -> Option<ExecutorId> {
        let (at, cost) = self.placements.remove(key)?;
        if let Some(counts) = self.tenants.get_mut(&key.tenant) {
            count_down(counts, at);
            if counts.is_empty() {
                self.tenants.remove(&key.tenant);
            }
        }
        if let Some(group) = group_of(key)
            && let Some(counts) = self.groups.get_mut(&group)
        {
            count_down(counts, at);
            if counts.is_empty() {
                self.groups.remove(&group);
            }
        }
        let slot = self.slots.get_mut(at).and_then(Option::as_mut)?;
        slot.used = slot.used.saturating_sub(cost);
        slot.placed = slot.placed.saturating_sub(1);
        Some(slot.info.id.clone())
    }

    /// Instances of `tenant`'s deployment `deployment` (keys `<deployment>#<n>`) placed on
    /// `executor`.
    pub fn siblings_on(&self, tenant: &TenantId, deployment: &str, executor: &ExecutorId) -> u32 {
        let Some(at) = self.index.get(executor) else {
            return 0;
        };
        self.groups
            .get(&(tenant.clone(), deployment.to_owned()))
            .and_then(|counts| counts.get(at))
            .copied()
            .unwrap_or(0)
    }

    /// The executor `key` is placed on.
    pub fn placement(&self, key: &DeploymentKey) -> Option<&ExecutorId> {
        let (at, _) = self.placements.get(key)?;
        self.slots
            .get(*at)
            .and_then(Option::as_ref)
            .map(|slot| &slot.info.id)
    }

    /// The deployments placed on `executor`, in key order.
    pub fn placed_on(&self, executor: &ExecutorId) -> Vec<DeploymentKey> {
        let Some(at) = self.index.get(executor) else {
            return Vec::new();
        };
        let mut keys: Vec<DeploymentKey> = self
            .placements
            .iter()
            .filter(|(_, (on, _))| on == at)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// The registered executors' ids, in no particular order.
    pub fn executor_ids(&self) -> impl Iterator<Item = &ExecutorId> {
        self.index.keys()
    }

    /// Registered executors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no executor is registered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Placed deployments.
    pub fn placed(&self) -> usize {
        self.placements.len()
    }

    /// Every registered executor as a placer sees it for a demand of `tenant`, in
    /// registration-slot order.
    pub fn candidates<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = Candidate<'a>> + 'a {
        let counts = self.tenants.get(tenant);
        self.slots.iter().enumerate().filter_map(move |(at, slot)| {
            let slot = slot.as_ref()?;
            Some(Candidate {
                info: &slot.info,
                state: slot.state,
                free: slot.info.capacity.saturating_sub(slot.used),
                placed: slot.placed,
                tenant_placed: counts.and_then(|c| c.get(&at)).copied().unwrap_or(0),
            })
        })
    }

    /// An executor as a placer sees it for a demand of `tenant`.
    pub fn candidate<'a>(&'a self, id: &ExecutorId, tenant: &TenantId) -> Option<Candidate<'a>> {
        let at = *self.index.get(id)?;
        let slot = self.slots.get(at)?.as_ref()?;
        Some(Candidate {
            info: &slot.info,
            state: slot.state,
            free: slot.info.capacity.saturating_sub(slot.used),
            placed: slot.placed,
            tenant_placed: self
                .tenants
                .get(tenant)
                .and_then(|c| c.get(&at))
                .copied()
                .unwrap_or(0),
        })
    }

    fn slot(&self, id: &ExecutorId) -> Option<&Slot> {
        let at = *self.index.get(id)?;
        self.slots.get(at)?.as_ref()
    }

    fn slot_mut(&mut self, id: &ExecutorId) -> Option<&mut Slot> {
        let at = *self.index.get(id)?;
        self.slots.get_mut(at)?.as_mut()
    }
}

/// What a deployment asks of the pool.
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    /// Its tenant (spreading counts the tenant's placements).
    pub tenant: &'a TenantId,
    /// What it declares it may use.
    pub cost: Resources,
    /// Conditions on the executor's labels, all of which must hold.
    pub labels: &'a [LabelRequirement],
    /// The deployment this demand is an instance of, when it has several
    /// (`weir_api::scale`): its instances prefer executors running none of their siblings.
    pub group: Option<&'a str>,
}

/// Why a deployment could not be placed: counts that say which condition ruled the
/// executors out, first one first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No executor takes new deployments (none registered, or all cordoned, draining or lost).
    #[error("no executor takes new deployments ({registered} registered)")]
    NoReadyExecutor {
        /// Executors registered.
        registered: usize,
    },
    /// No ready executor has the labels asked for.
    #[error("no ready executor matches the labels {labels} ({ready} ready)")]
    NoMatchingExecutor {
        /// The requirements, joined by `,`.
        labels: String,
        /// Ready executors.
        ready: usize,
    },
    /// Executors match, but none has room for the declared cost.
    #[error(
        "no executor has room for {} fuel/s, {} bytes of memory and {} instances ({matching} matching executors full)",
        .cost.fuel_per_second, .cost.memory_bytes, .cost.instances
    )]
    NoRoom {
        /// What the deployment declares.
        cost: Resources,
        /// Ready executors matching its labels.
        matching: usize,
    },
}

/// Chooses an executor for a deployment. Implementations are pure: the answer depends on the
/// pool and the demand alone.
pub trait Placer: Send + Sync + fmt::Debug {
    /// The executor `demand` should run on, or why there is none.
    fn place(&self, pool: &Pool, demand: &Demand<'_>) -> Result<ExecutorId, PlacementError>;
}

/// Spread a tenant, then pack: among ready executors with the labels and room, the one with the
/// fewest instances of the same deployment (for a deployment with several instances, so one
/// lost executor takes as few of them as possible), then the
/// fewest of the tenant's deployments (a lost executor takes as little of one tenant as
/// possible), then the tightest fit (the least room left after placing, summed over fuel,
/// memory and instances as fractions of the executor's capacity: best-fit bin packing, so
/// large executors stay free for large deployments), then the earliest registered.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpreadPacker;

fn leftover(capacity: &Resources, free: &Resources, cost: &Resources) -> f64 {
    #[allow(
        clippy::cast_precision_loss,
        reason = "a score: 52 bits of precision are plenty to rank executors"
    )]
    let fraction = |free: u64, cost: u64, capacity: u64| {
        if capacity == 0 {
            0.0
        } else {
            free.saturating_sub(cost) as f64 / capacity as f64
        }
    };
    fraction(
        free.fuel_per_second,
        cost.fuel_per_second,
        capacity.fuel_per_second,
    ) + fraction(free.memory_bytes, cost.memory_bytes, capacity.memory_bytes)
        + fraction(
            u64::from(free.instances),
            u64::from(cost.instances),
            u64::from(capacity.instances),
        )
}

impl Placer for SpreadPacker {
    fn place(&self, pool: &Pool, demand: &Demand<'_>) -> Result<ExecutorId, PlacementError> {
        let mut ready = 0;
        let mut matching = 0;
        let mut best: Option<((u32, u32), f64, &ExecutorId)> = None;
        for candidate in pool.candidates(demand.tenant) {
            if candidate.state != ExecutorState::Ready {
                continue;
            }
            ready += 1;
            if !demand
                .labels
                .iter()
                .all(|requirement| requirement.matches(&candidate.info.labels))
            {
                continue;
            }
            matching += 1;
            if !candidate.free.fits(&demand.cost) {
                continue;
            }
            let score = leftover(&candidate.info.capacity, &candidate.free, &demand.cost);
            let siblings = demand.group.map_or(0, |group| {
                pool.siblings_on(demand.tenant, group, &candidate.info.id)
            });
            let rank = (siblings, candidate.tenant_placed);
            let better = match best {
                None => true,
                Some((spread, fit, _)) => rank < spread || (rank == spread && score < fit),
            };
            if better {
                best = Some((rank, score, &candidate.info.id));
            }
        }
        if let Some((_, _, id)) = best {
            return Ok(id.clone());
        }
        if ready == 0 {
            return Err(PlacementError::NoReadyExecutor {
                registered: pool.len(),
            });
        }
        if matching == 0 {
            return Err(PlacementError::NoMatchingExecutor {
                labels: demand
                    .labels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                ready,
            });
        }
        Err(PlacementError::NoRoom {
            cost: demand.cost,
            matching,
        })
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

    use super::*;

    const GIB: u64 = 1 << 30;

    fn exec(id: &str) -> ExecutorId {
        ExecutorId::new(id).unwrap()
    }

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    fn key(tenant_id: &str, id: &str) -> DeploymentKey {
        DeploymentKey {
            tenant: tenant(tenant_id),
            id: id.to_owned(),
        }
    }

    fn info(id: &str, fuel: u64, memory: u64, instances: u32, labels: &[&str]) -> ExecutorInfo {
        ExecutorInfo {
            id: exec(id),
            capacity: Resources {
                fuel_per_second: fuel,
                memory_bytes: memory,
                instances,
            },
            labels: labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => ((*l).to_owned(), String::new()),
                })
                .collect(),
        }
    }

    fn cost(fuel: u64, memory: u64, instances: u32) -> Resources {
        Resources {
            fuel_per_second: fuel,
            memory_bytes: memory,
            instances,
        }
    }

    /// Places and records, as the scheduler does.
    fn place(
        pool: &mut Pool,
        tenant_id: &str,
        id: &str,
        need: Resources,
        labels: &[LabelRequirement],
    ) -> Result<ExecutorId, PlacementError> {
        let t = tenant(tenant_id);
        let chosen = SpreadPacker.place(
            pool,
            &Demand {
                tenant: &t,
                cost: need,
                labels,
                group: weir_api::scale::split_instance(id)
                    .1
                    .gt(&0)
                    .then(|| weir_api::scale::split_instance(id).0),
            },
        )?;
        pool.assign(key(tenant_id, id), &chosen, need).unwrap();
        Ok(chosen)
    }

    #[test]
    fn packs_the_fullest_executor_that_still_fits() {
        let mut pool = Pool::new();
        pool.add_executor(info("big", 100, 100 * GIB, 100, &[]))
            .unwrap();
        pool.add_executor(info("small", 10, 10 * GIB, 10, &[]))
            .unwrap();
        // Two tenants' first deployments: no spreading preference, so the tightest fit wins.
        assert_eq!(
            place(&mut pool, "a", "d1", cost(8, 8 * GIB, 8), &[]).unwrap(),
            exec("small")
        );
        // Does not fit in what is left of `small`.
        assert_eq!(
            place(&mut pool, "b", "d1", cost(8, 8 * GIB, 8), &[]).unwrap(),
            exec("big")
        );
        // Fits in `small` again, which is then the tighter fit.
        assert_eq!(
            place(&mut pool, "c", "d1", cost(1, GIB, 1), &[]).unwrap(),
            exec("small")
        );
    }

    #[test]
    fn instances_of_one_deployment_prefer_distinct_executors() {
        let mut pool = Pool::new();
        for id in ["e1", "e2", "e3"] {
            pool.add_executor(info(id, 100, 100 * GIB, 100, &[]))
                .unwrap();
        }
        // The tenant's other deployments crowd e2 and e3: tenant spreading alone would put
        // every instance on e1.
        for (i, on) in ["e2", "e2", "e3", "e3"].iter().enumerate() {
            pool.assign(key("a", &format!("other{i}")), &exec(on), cost(1, GIB, 1))
                .unwrap();
        }
        let mut chosen: Vec<ExecutorId> = (1..=3)
            .map(|n| place(&mut pool, "a", &format!("win#{n}"), cost(1, GIB, 1), &[]).unwrap())
            .collect();
        chosen.sort();
        assert_eq!(chosen, vec![exec("e1"), exec("e2"), exec("e3")]);
        assert_eq!(pool.siblings_on(&tenant("a"), "win", &exec("e2")), 1);
        // A fourth shares an executor with one sibling, never two.
        let fourth = place(&mut pool, "a", "win#4", cost(1, GIB, 1), &[]).unwrap();
        assert_eq!(pool.siblings_on(&tenant("a"), "win", &fourth), 2);
        // Released instances stop counting; another tenant's `win` is another deployment.
        pool.release(&key("a", "win#4"));
        assert_eq!(pool.siblings_on(&tenant("a"), "win", &fourth), 1);
        assert_eq!(pool.siblings_on(&tenant("b"), "win", &fourth), 0);
        // A deployment named like the instances' deployment is not one of them.
        pool.assign(key("a", "win"), &exec("e1"), cost(1, GIB, 1))
            .unwrap();
        assert_eq!(pool.siblings_on(&tenant("a"), "win", &exec("e1")), 1);
    }

    #[test]
    fn spreads_one_tenant_before_packing() {
        let mut pool = Pool::new();
        for id in ["e1", "e2", "e3"] {
            pool.add_executor(info(id, 100, 100 * GIB, 100, &[]))
                .unwrap();
        }
        let mut chosen: Vec<ExecutorId> = (0..3)
            .map(|i| place(&mut pool, "a", &format!("d{i}"), cost(1, GIB, 1), &[]).unwrap())
            .collect();
        chosen.sort();
        assert_eq!(chosen, vec![exec("e1"), exec("e2"), exec("e3")]);
        // A fourth goes where the tenant has one, the tightest of those.
        place(&mut pool, "a", "d3", cost(1, GIB, 1), &[]).unwrap();
        let counts: Vec<usize> = ["e1", "e2", "e3"]
            .iter()
            .map(|e| pool.placed_on(&exec(e)).len())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 4);
        assert_eq!(counts.iter().max(), Some(&2));
        // Another tenant's placements do not count against this tenant's spread.
        let busy = place(&mut pool, "b", "d0", cost(1, GIB, 1), &[]).unwrap();
        let busiest = ["e1", "e2", "e3"]
            .iter()
            .max_by_key(|e| {
                pool.placed_on(&exec(e))
                    .iter()
                    .filter(|k| k.tenant == tenant("a"))
                    .count()
            })
            .unwrap();
        assert_eq!(
            &busy,
            &exec(busiest),
            "packs onto the fullest for a new tenant"
        );
    }

    #[test]
    fn never_overcommits_any_of_fuel_memory_or_instances() {
        for (need, name) in [
            (cost(60, GIB, 1), "fuel"),
            (cost(1, 60 * GIB, 1), "memory"),
            (cost(1, GIB, 60), "instances"),
        ] {
            let mut pool = Pool::new();
            pool.add_executor(info("e1", 100, 100 * GIB, 100, &[]))
                .unwrap();
            place(&mut pool, "a", "d1", need, &[]).unwrap();
            let error = place(&mut pool, "a", "d2", need, &[]).unwrap_err();
            assert_eq!(
                error,
                PlacementError::NoRoom {
                    cost: need,
                    matching: 1
                },
                "{name}"
            );
            // The pool refuses it too, whatever a placer says.
            assert_eq!(
                pool.assign(key("a", "d2"), &exec("e1"), need),
                Err(PoolError::NoRoom(exec("e1")))
            );
            // Releasing makes room again.
            assert_eq!(pool.release(&key("a", "d1")), Some(exec("e1")));
            place(&mut pool, "a", "d2", need, &[]).unwrap();
        }
    }

    #[test]
    fn honours_label_requirements() {
        let mut pool = Pool::new();
        pool.add_executor(info("edge", 100, 100 * GIB, 100, &["zone=edge", "gpu"]))
            .unwrap();
        pool.add_executor(info("core", 100, 100 * GIB, 100, &["zone=core"]))
            .unwrap();
        let gpu = [LabelRequirement::parse("gpu").unwrap()];
        assert_eq!(
            place(&mut pool, "a", "d1", cost(1, 1, 1), &gpu).unwrap(),
            exec("edge")
        );
        let not_edge = [LabelRequirement::parse("zone!=edge").unwrap()];
        assert_eq!(
            place(&mut pool, "a", "d2", cost(1, 1, 1), &not_edge).unwrap(),
            exec("core")
        );
        let core = [LabelRequirement::parse("zone=core").unwrap()];
        assert_eq!(
            place(&mut pool, "a", "d3", cost(1, 1, 1), &core).unwrap(),
            exec("core")
        );
        let nowhere = [
            LabelRequirement::parse("zone=core").unwrap(),
            LabelRequirement::parse("gpu").unwrap(),
        ];
        assert_eq!(
            place(&mut pool, "a", "d4", cost(1, 1, 1), &nowhere).unwrap_err(),
            PlacementError::NoMatchingExecutor {
                labels: "zone=core,gpu".to_owned(),
                ready: 2
            }
        );
    }

    #[test]
    fn skips_cordoned_draining_and_lost_executors() {
        let mut pool = Pool::new();
        pool.add_executor(info("e1", 100, 100 * GIB, 100, &[]))
            .unwrap();
        for state in [
            ExecutorState::Cordoned,
            ExecutorState::Draining,
            ExecutorState::Lost,
        ] {
            pool.set_state(&exec("e1"), state).unwrap();
            assert_eq!(
                place(&mut pool, "a", "d1", cost(1, 1, 1), &[]).unwrap_err(),
                PlacementError::NoReadyExecutor { registered: 1 }
            );
        }
        pool.set_state(&exec("e1"), ExecutorState::Ready).unwrap();
        assert_eq!(
            place(&mut pool, "a", "d1", cost(1, 1, 1), &[]).unwrap(),
            exec("e1")
        );
        assert_eq!(
            Pool::new().candidates(&tenant("a")).count(),
            0,
            "an empty pool has no candidates"
        );
        assert_eq!(
            SpreadPacker
                .place(
                    &Pool::new(),
                    &Demand {
                        tenant: &tenant("a"),
                        cost: cost(1, 1, 1),
                        labels: &[],
                        group: None,
                    }
                )
                .unwrap_err()
                .to_string(),
            "no executor takes new deployments (0 registered)"
        );
    }

    #[test]
    fn removing_an_executor_returns_its_deployments_and_frees_its_slot() {
        let mut pool = Pool::new();
        pool.add_executor(info("e1", 100, 100 * GIB, 100, &[]))
            .unwrap();
        pool.add_executor(info("e2", 100, 100 * GIB, 100, &[]))
            .unwrap();
        place(&mut pool, "a", "d1", cost(1, 1, 1), &[]).unwrap();
        place(&mut pool, "a", "d2", cost(1, 1, 1), &[]).unwrap();
        place(&mut pool, "b", "d1", cost(1, 1, 1), &[]).unwrap();
        let on_e1 = pool.placed_on(&exec("e1"));
        let orphans = {
            let mut o = pool.remove_executor(&exec("e1")).unwrap();
            o.sort();
            o
        };
        assert_eq!(orphans, on_e1);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.placed(), 3 - orphans.len());
        for orphan in &orphans {
            assert_eq!(pool.placement(orphan), None);
            // Each can be placed again, on the executor that is left.
            let chosen = SpreadPacker
                .place(
                    &pool,
                    &Demand {
                        tenant: &orphan.tenant,
                        cost: cost(1, 1, 1),
                        labels: &[],
                        group: None,
                    },
                )
                .unwrap();
            assert_eq!(chosen, exec("e2"));
            pool.assign(orphan.clone(), &chosen, cost(1, 1, 1)).unwrap();
        }
        assert_eq!(pool.placed(), 3);
        // The slot is reused; the new executor starts empty.
        pool.add_executor(info("e3", 100, 100 * GIB, 100, &[]))
            .unwrap();
        assert!(pool.placed_on(&exec("e3")).is_empty());
        let candidate = pool.candidate(&exec("e3"), &tenant("a")).unwrap();
        assert_eq!(candidate.placed, 0);
        assert_eq!(candidate.tenant_placed, 0);
        assert_eq!(candidate.free, cost(100, 100 * GIB, 100));
    }

    #[test]
    fn refuses_duplicate_executors_and_double_placements() {
        let mut pool = Pool::new();
        pool.add_executor(info("e1", 100, 100, 100, &[])).unwrap();
        assert_eq!(
            pool.add_executor(info("e1", 1, 1, 1, &[])),
            Err(PoolError::DuplicateExecutor(exec("e1")))
        );
        pool.assign(key("a", "d1"), &exec("e1"), cost(1, 1, 1))
            .unwrap();
        assert_eq!(
            pool.assign(key("a", "d1"), &exec("e1"), cost(1, 1, 1)),
            Err(PoolError::AlreadyPlaced(key("a", "d1")))
        );
        assert_eq!(
            pool.assign(key("a", "d2"), &exec("nope"), cost(1, 1, 1)),
            Err(PoolError::NoExecutor(exec("nope")))
        );
        assert_eq!(pool.release(&key("a", "d9")), None);
    }

    #[test]
    fn is_deterministic() {
        let build = || {
            let mut pool = Pool::new();
            for i in 0..20 {
                pool.add_executor(info(&format!("e{i}"), 100, 100 * GIB, 50, &[]))
                    .unwrap();
            }
            let mut chosen = Vec::new();
            for i in 0..200 {
                let t = format!("t{}", i % 7);
                let need = cost(1 + i % 5, GIB * (1 + i % 3), 1 + (i % 4) as u32);
                chosen.push(place(&mut pool, &t, &format!("d{i}"), need, &[]).ok());
            }
            chosen
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn declares_the_cost_of_a_deployment_from_the_tenants_quotas() {
        let quotas = Quotas {
            fuel_per_second: 1000,
            max_deployments: 3,
            memory_per_instance: 64 << 20,
            ..Quotas::default()
        };
        assert_eq!(
            Resources::for_deployment(4, &quotas),
            Resources {
                fuel_per_second: 334,
                memory_bytes: 4 * (64 << 20),
                instances: 4,
            }
        );
        let zero = Quotas {
            max_deployments: 0,
            ..quotas
        };
        assert_eq!(Resources::for_deployment(0, &zero).fuel_per_second, 1000);
    }

    #[test]
    fn reads_label_requirements() {
        assert_eq!(
            LabelRequirement::parse("zone=eu-1").unwrap(),
            LabelRequirement::Equals("zone".to_owned(), "eu-1".to_owned())
        );
        assert_eq!(
            LabelRequirement::parse("weir.dev/zone!=eu-1").unwrap(),
            LabelRequirement::NotEquals("weir.dev/zone".to_owned(), "eu-1".to_owned())
        );
        assert_eq!(
            LabelRequirement::parse("gpu").unwrap(),
            LabelRequirement::Exists("gpu".to_owned())
        );
        for bad in ["", "=x", "zone=", "zone=a b", "zone=a/b", &"k".repeat(64)] {
            assert!(LabelRequirement::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            LabelRequirement::parse("zone!=eu").unwrap().to_string(),
            "zone!=eu"
        );
    }
}
