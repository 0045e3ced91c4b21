//! What a tenant's deployments on one executor share, and the instance promises they were
//! admitted with.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use weir_api::ErrorCode;
use weir_api::TenantId;
use weir_api::rest::DeadLetter;
use weir_tenants::Quotas;

use super::RuntimeError;
use crate::dataflow::{ByteBudget, FuelBudget};
use crate::{InferenceLane, LiveQuotas};

/// Dead letters of a deployment kept in memory for its status (the durable record is the
/// journal's).
pub(super) const RECENT_DEAD_LETTERS: usize = 10;

/// What a tenant's deployments on this executor share: its quotas in force, its budgets (CPU
/// rate, in-flight and queued-output bytes) and usage counters.
pub(super) struct TenantShare {
    pub(super) quotas: Arc<LiveQuotas>,
    pub(super) fuel: Arc<FuelBudget>,
    pub(super) in_flight_bytes: Arc<ByteBudget>,
    pub(super) queued_output_bytes: Arc<ByteBudget>,
    pub(super) messages_in: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) messages_out: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) inference_lane: InferenceLane,
}

impl TenantShare {
    pub(super) fn new(quotas: &Quotas) -> Self {
        Self {
            quotas: Arc::new(LiveQuotas::new(quotas.clone())),
            fuel: Arc::new(FuelBudget::new(quotas.fuel_per_second)),
            in_flight_bytes: Arc::new(ByteBudget::new(quotas.max_inflight_bytes)),
            queued_output_bytes: Arc::new(ByteBudget::new(quotas.max_queued_output_bytes)),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            inference_lane: InferenceLane::default(),
        }
    }

    pub(super) fn quotas(&self) -> Arc<Quotas> {
        self.quotas.get()
    }

    /// Applies changed quotas to the budgets and the running nodes now.
    pub(super) fn apply(&self, quotas: &Quotas) {
        self.quotas.set(quotas.clone());
        self.fuel.set_rate(quotas.fuel_per_second);
        self.in_flight_bytes.set_limit(quotas.max_inflight_bytes);
        self.queued_output_bytes
            .set_limit(quotas.max_queued_output_bytes);
    }
}

/// A deployment's most recent dead letters, for its status.
#[derive(Default)]
pub(super) struct RecentLetters(Mutex<VecDeque<DeadLetter>>);

impl RecentLetters {
    fn lock(&self) -> MutexGuard<'_, VecDeque<DeadLetter>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn push(&self, letter: DeadLetter) {
        let mut recent = self.lock();
        if recent.len() >= RECENT_DEAD_LETTERS {
            recent.pop_front();
        }
        recent.push_back(letter);
    }

    /// Newest first.
    pub(super) fn newest(&self) -> Vec<DeadLetter> {
        self.lock().iter().rev().cloned().collect()
    }
}

/// The operator instances promised to running deployments, by tenant: a deployment is
/// admitted only if its tenant's deployments together need no more instances than its
/// `max_instances` quota (one per wasm node: a node has at most one live instance). The gateway
/// admits the tenants' `max_instances` together against the executor's pool, so an admitted
/// node always finds a slot and no tenant can take another's (ARCHITECTURE decision 3). Idle
/// instances are dropped all the same: an idle deployment holds its promise, not a slot.
#[derive(Default)]
pub(super) struct InstanceLedger {
    promised: Mutex<Vec<(u64, TenantId, String, usize)>>,
    next: AtomicU64,
}

/// Slots promised to one deployment, given back when it goes.
pub(super) struct InstanceReservation {
    ledger: Arc<InstanceLedger>,
    token: u64,
}

impl Drop for InstanceReservation {
    fn drop(&mut self) {
        self.ledger
            .promised
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(token, ..)| *token != self.token);
    }
}

/// Whether instance `running` of a deployment is one `starting` takes over from: the one
/// instance of a deployment (`d`) and an instance of several (`d#n`), either way. The one
/// running is retired once the new instances run (`weir_scheduler::reconcile`), as a running
/// version of the same id stops once its update runs.
fn replaced_by(running: &str, starting: &str) -> bool {
    let (deployment, index) = weir_api::scale::split_instance(running);
    let (new_deployment, new_index) = weir_api::scale::split_instance(starting);
    deployment == new_deployment && (index == 0) != (new_index == 0)
}

impl InstanceLedger {
    /// Promises `instances` slots to deployment `id` of `tenant`, or says why not. A running
    /// version of the same deployment does not count (it stops when the new one runs), so an
    /// update that needs fewer instances is always admitted; nor does the instance a scale
    /// change from one instance to several (or back) replaces ([`replaced_by`]).
    pub(super) fn reserve(
        self: &Arc<Self>,
        tenant: &TenantId,
        id: &str,
        instances: usize,
        max_instances: u32,
    ) -> Result<InstanceReservation, RuntimeError> {
        let mut promised = self.promised.lock().unwrap_or_else(PoisonError::into_inner);
        let tenants: usize = promised
            .iter()
            .filter(|(_, t, d, _)| t == tenant && d != id && !replaced_by(d, id))
            .map(|(.., n)| n)
            .sum();
        let max = usize::try_from(max_instances).unwrap_or(usize::MAX);
        if tenants + instances > max {
            return Err(RuntimeError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the deployment needs {instances} operator instances and the tenant's other deployments {tenants}; its max_instances quota is {max_instances}"
                ),
            ));
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        promised.push((token, tenant.clone(), id.to_owned(), instances));
        Ok(InstanceReservation {
            ledger: self.clone(),
            token,
        })
    }
}
