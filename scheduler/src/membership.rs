//! Executor membership: which executors have joined, when each was last heard from, and which
//! are lost (no heartbeat within the timeout).
//!
//! Pure: every call takes the time `now` (a monotonic [`Instant`]), so the timeout logic is
//! tested without waiting. The platform calls [`Membership::join`] when an executor registers,
//! [`Membership::heartbeat`] on each heartbeat, and [`Membership::expire`] on every reconcile
//! round; the executors it returns are marked [`ExecutorState::Lost`] in the pool, and the next
//! plan places what they ran elsewhere (the bound on failover is the heartbeat timeout plus one
//! reconcile period).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ExecutorId;
use crate::placement::{ExecutorInfo, ExecutorState, Pool};

/// A heartbeat or join refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Another live executor has this id: executor ids are unique per process.
    #[error("executor {0} is registered and alive; every executor process needs its own id")]
    DuplicateId(ExecutorId),
    /// No executor with this id has joined (or it was lost and forgotten): join again.
    #[error("executor {0} is not registered; join again")]
    Unknown(ExecutorId),
    /// This executor was declared lost; what it ran is placed elsewhere. It must join again
    /// (with a new id) and take only what it is assigned then.
    #[error("executor {0} was declared lost; join again with a new id")]
    Lost(ExecutorId),
    /// As many executors as the bound have joined.
    #[error("the pool holds {0} executors, the limit")]
    Full(usize),
}

#[derive(Debug)]
struct Member {
    last_seen: Instant,
    lost: bool,
}

/// The executors that joined and when each was last heard from. Bounded by
/// [`Membership::max_executors`]; a lost executor is forgotten once [`Membership::forget_after`]
/// has passed since it was last heard from.
#[derive(Debug)]
pub struct Membership {
    timeout: Duration,
    forget_after: Duration,
    max_executors: usize,
    members: HashMap<ExecutorId, Member>,
}

impl Membership {
    /// Executors are lost after `timeout` without a heartbeat; lost ones are forgotten
    /// `forget_after` after their last heartbeat; at most `max_executors` are members at once.
    pub fn new(timeout: Duration, forget_after: Duration, max_executors: usize) -> Self {
        Self {
            timeout,
            forget_after: forget_after.max(timeout),
            max_executors,
            members: HashMap::new(),
        }
    }

    /// The heartbeat timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bound on members.
    pub fn max_executors(&self) -> usize {
        self.max_executors
    }

    /// An executor joins: registered in `pool` (ready) and heard from `now`. An id that is
    /// alive already is refused. An id that was declared lost joins as a new member with
    /// nothing placed on it: its work went elsewhere, and whatever process it was stopped what
    /// it ran when its heartbeats were refused (a restarted process under a fixed id, such as
    /// systemd's `%H-%i`, comes back at once rather than after the lost entry is forgotten).
    pub fn join(
        &mut self,
        pool: &mut Pool,
        info: ExecutorInfo,
        now: Instant,
    ) -> Result<(), MembershipError> {
        match self.members.get(&info.id) {
            Some(member) if member.lost => {
                self.members.remove(&info.id);
                if let Err(error) = pool.remove_executor(&info.id) {
                    tracing::debug!(%error, "lost executor not in the pool");
                }
            }
            Some(_) => return Err(MembershipError::DuplicateId(info.id)),
            None => {}
        }
        if self.members.len() >= self.max_executors {
            return Err(MembershipError::Full(self.max_executors));
        }
        let id = info.id.clone();
        pool.add_executor(info)
            .map_err(|_| MembershipError::DuplicateId(id.clone()))?;
        self.members.insert(
            id,
            Member {
                last_seen: now,
                lost: false,
            },
        );
        Ok(())
    }

    /// A heartbeat from `id` at `now`.
    pub fn heartbeat(&mut self, id: &ExecutorId, now: Instant) -> Result<(), MembershipError> {
        let member = self
            .members
            .get_mut(id)
            .ok_or_else(|| MembershipError::Unknown(id.clone()))?;
        if member.lost {
            return Err(MembershipError::Lost(id.clone()));
        }
        member.last_seen = member.last_seen.max(now);
        Ok(())
    }

    /// Marks lost (in `pool` too) every executor not heard from within the timeout at `now`,
    /// and removes from `pool` those lost for longer than `forget_after`. The newly lost ones.
    pub fn expire(&mut self, pool: &mut Pool, now: Instant) -> Vec<ExecutorId> {
        let mut lost = Vec::new();
        let mut forgotten = Vec::new();
        for (id, member) in &mut self.members {
            let silent = now.saturating_duration_since(member.last_seen);
            if !member.lost && silent > self.timeout {
                member.lost = true;
                lost.push(id.clone());
            }
            if member.lost && silent > self.forget_after {
                forgotten.push(id.clone());
            }
        }
        for id in &lost {
            if let Err(error) = pool.set_state(id, ExecutorState::Lost) {
                tracing::warn!(%error, "lost executor not in the pool");
            }
        }
        for id in forgotten {
            self.members.remove(&id);
            if let Err(error) = pool.remove_executor(&id) {
                tracing::debug!(%error, "forgotten executor not in the pool");
            }
        }
        lost.sort();
        lost
    }

    /// An executor leaves on its own (a clean shutdown): removed at once; what it ran is
    /// placed elsewhere on the next round.
    pub fn leave(&mut self, pool: &mut Pool, id: &ExecutorId) -> Result<(), MembershipError> {
        self.members
            .remove(id)
            .ok_or_else(|| MembershipError::Unknown(id.clone()))?;
        if let Err(error) = pool.remove_executor(id) {
            tracing::debug!(%error, "leaving executor not in the pool");
        }
        Ok(())
    }

    /// Whether `id` is a member and not lost.
    pub fn is_alive(&self, id: &ExecutorId) -> bool {
        self.members.get(id).is_some_and(|member| !member.lost)
    }

    /// Whether `id` is a member, lost or not (a lost one is known until it is forgotten).
    pub fn is_member(&self, id: &ExecutorId) -> bool {
        self.members.contains_key(id)
    }

    /// Members, lost ones included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no executor is a member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
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

    use std::collections::BTreeMap;

    use weir_api::TenantId;

    use super::*;
    use crate::{
        DeploymentKey, DeploymentState, Desired, Observed, Reconciler, Resources, SpreadPacker,
    };

    fn exec(id: &str) -> ExecutorId {
        ExecutorId::new(id).unwrap()
    }

    fn info(id: &str) -> ExecutorInfo {
        ExecutorInfo {
            id: exec(id),
            capacity: Resources {
                fuel_per_second: 100,
                memory_bytes: 100,
                instances: 100,
            },
            labels: BTreeMap::new(),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn an_executor_silent_past_the_timeout_is_lost_once() {
        let start = Instant::now();
        let mut pool = Pool::new();
        let mut members = Membership::new(TIMEOUT, Duration::from_secs(60), 10);
        members.join(&mut pool, info("e1"), start).unwrap();
        members.join(&mut pool, info("e2"), start).unwrap();
        members
            .heartbeat(&exec("e2"), start + Duration::from_secs(4))
            .unwrap();
        assert!(
            members.expire(&mut pool, start + TIMEOUT).is_empty(),
            "not past it yet"
        );
        assert_eq!(
            members.expire(&mut pool, start + Duration::from_secs(6)),
            vec![exec("e1")]
        );
        assert_eq!(pool.state(&exec("e1")), Some(ExecutorState::Lost));
        assert_eq!(pool.state(&exec("e2")), Some(ExecutorState::Ready));
        assert!(
            members
                .expire(&mut pool, start + Duration::from_secs(7))
                .is_empty(),
            "reported lost once"
        );
        // A lost executor's heartbeats are refused: its work is going elsewhere.
        assert_eq!(
            members.heartbeat(&exec("e1"), start + Duration::from_secs(8)),
            Err(MembershipError::Lost(exec("e1")))
        );
        // Forgotten after forget_after: gone from the pool.
        members.expire(&mut pool, start + Duration::from_secs(61));
        assert_eq!(pool.state(&exec("e1")), None);
        assert!(!members.is_alive(&exec("e1")));
    }

    #[test]
    fn a_lost_id_joins_again_as_a_new_member_with_nothing_placed() {
        let start = Instant::now();
        let mut pool = Pool::new();
        let mut members = Membership::new(TIMEOUT, Duration::from_secs(60), 10);
        members.join(&mut pool, info("e1"), start).unwrap();
        let key = DeploymentKey {
            tenant: weir_api::TenantId::new("t").unwrap(),
            id: "d".to_owned(),
        };
        pool.assign(key.clone(), &exec("e1"), Resources::default())
            .unwrap();
        members.expire(&mut pool, start + Duration::from_secs(6));
        assert!(!members.is_alive(&exec("e1")));
        // A process restarted under the same fixed id, before the lost entry is forgotten.
        members
            .join(&mut pool, info("e1"), start + Duration::from_secs(8))
            .unwrap();
        assert!(members.is_alive(&exec("e1")));
        assert_eq!(pool.state(&exec("e1")), Some(ExecutorState::Ready));
        assert_eq!(pool.placement(&key), None, "its old placements are gone");
        members
            .heartbeat(&exec("e1"), start + Duration::from_secs(9))
            .unwrap();
    }

    #[test]
    fn ids_are_unique_among_live_executors_and_membership_is_bounded() {
        let now = Instant::now();
        let mut pool = Pool::new();
        let mut members = Membership::new(TIMEOUT, TIMEOUT, 2);
        members.join(&mut pool, info("e1"), now).unwrap();
        assert_eq!(
            members.join(&mut pool, info("e1"), now),
            Err(MembershipError::DuplicateId(exec("e1")))
        );
        members.join(&mut pool, info("e2"), now).unwrap();
        assert_eq!(
            members.join(&mut pool, info("e3"), now),
            Err(MembershipError::Full(2))
        );
        assert_eq!(
            members.heartbeat(&exec("e9"), now),
            Err(MembershipError::Unknown(exec("e9")))
        );
        members.leave(&mut pool, &exec("e2")).unwrap();
        assert_eq!(pool.len(), 1);
        members.join(&mut pool, info("e3"), now).unwrap();
    }

    #[test]
    fn a_lost_executors_deployments_are_placed_again_on_the_next_round() {
        let start = Instant::now();
        let mut reconciler = Reconciler::new(SpreadPacker);
        let mut members = Membership::new(TIMEOUT, Duration::from_secs(60), 10);
        for id in ["e1", "e2", "e3"] {
            members
                .join(reconciler.pool_mut(), info(id), start)
                .unwrap();
        }
        let tenant = TenantId::new("acme").unwrap();
        let desired: Vec<Desired> = (0..6)
            .map(|i| Desired {
                key: DeploymentKey {
                    tenant: tenant.clone(),
                    id: format!("d{i}"),
                },
                status: "running".to_owned(),
                cost: Resources {
                    fuel_per_second: 1,
                    memory_bytes: 1,
                    instances: 1,
                },
                labels: Vec::new(),
            })
            .collect();
        let plan = reconciler.plan(&desired, &[]);
        let mut observed = Vec::new();
        for action in plan.actions {
            if let crate::Action::Start { key, executor } = action {
                reconciler.started(&key, &executor, Ok(()));
                observed.push(Observed {
                    key,
                    executor,
                    health: crate::Health::Running,
                    reading: true,
                });
            }
        }
        assert_eq!(observed.len(), 6);
        // e1 stops heartbeating; the others go on.
        let later = start + Duration::from_secs(6);
        for id in ["e2", "e3"] {
            members.heartbeat(&exec(id), later).unwrap();
        }
        assert_eq!(
            members.expire(reconciler.pool_mut(), later),
            vec![exec("e1")]
        );
        let on_e1: Vec<_> = observed
            .iter()
            .filter(|o| o.executor == exec("e1"))
            .map(|o| o.key.clone())
            .collect();
        assert_eq!(on_e1.len(), 2, "spread: two of six on each");
        let plan = reconciler.plan(&desired, &observed);
        let moved: Vec<_> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                crate::Action::Start { key, executor } => {
                    assert_ne!(executor, &exec("e1"));
                    Some(key.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(moved, on_e1);
        for key in &on_e1 {
            assert!(matches!(
                reconciler.state(key),
                Some(DeploymentState::Placed { .. })
            ));
        }
    }
}
