//! Places deployments on executors and keeps them there: the deployment state machine
//! ([`DeploymentState`]), the executor pool and placement as a pure function ([`Pool`],
//! [`Placer`], [`SpreadPacker`]), executor membership with heartbeats and loss
//! ([`Membership`]), and reconciliation ([`Reconciler`], [`round`]), which is also failover: a
//! lost executor's deployments are placed again on the next round.
//!
//! It never depends on wasmtime, the executor or HTTP (checked by `tests/tests/layering.rs`):
//! the gateway drives it with typed calls and the executors are reached through a seam.
#![warn(missing_docs)]

mod lifecycle;
mod membership;
mod placement;
mod reconcile;

use std::fmt;

pub use lifecycle::{DeploymentState, Event, IllegalTransition};
pub use membership::{Membership, MembershipError};
pub use placement::{
    Candidate, Demand, DeploymentKey, ExecutorInfo, ExecutorState, LabelError, LabelRequirement,
    PlacementError, Placer, Pool, PoolError, Resources, SpreadPacker,
};
pub use reconcile::{
    Action, Desired, DesiredStore, ExecutorLink, Health, Observed, Plan, Reconciler, RoundReport,
    round,
};

/// An executor's id, unique per executor process: 1 to 128 characters of ASCII letters,
/// digits, `-`, `_`, `.` and `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutorId(String);

/// An executor id that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an executor id (1 to 128 ASCII letters, digits, '-', '_', '.', ':')")]
pub struct ExecutorIdError(pub String);

impl ExecutorId {
    /// Longest id.
    pub const MAX_LEN: usize = 128;

    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, ExecutorIdError> {
        let id = id.into();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(allowed) {
            return Err(ExecutorIdError(id));
        }
        Ok(Self(id))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed expectation is a failed test"
    )]

    use super::*;

    #[test]
    fn validates_executor_ids() {
        assert_eq!(
            ExecutorId::new("node-1:4242").unwrap().as_str(),
            "node-1:4242"
        );
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(ExecutorId::new(bad).is_err(), "{bad:?}");
        }
    }
}
