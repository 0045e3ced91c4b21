//! Window state of keyed deployments, per input partition, handed from one instance to the
//! next through the store (issue 13, point 5).
//!
//! A keyed deployment (`partition_key: kafka-key`) runs N instances in one Kafka consumer
//! group, so each partition, and with it each key's window, is read by one instance. When the
//! group rebalances (an instance added, stopped or killed), a partition moves. Its open windows
//! move with it through a [`PartitionCheckpoints`] store:
//!
//! 1. The owner of a partition writes a [`Checkpoint`] now and then: the open window state of
//!    that partition (opaque bytes) *together with* the input offset it covers (the next
//!    offset to read), in one atomic write. Never one without the other, so a reader never
//!    sees state that counts records the offset says are still to read (double counting), nor
//!    an offset past records the state does not hold (loss).
//! 2. The instance a partition is assigned to [`claim`](PartitionCheckpoints::claim)s it: the
//!    partition's epoch goes up by one and the answer is the last checkpoint. It loads that
//!    state and seeks the partition to the checkpoint's offset instead of the group's committed
//!    offset, so the records after the checkpoint are read again and folded once.
//! 3. A checkpoint carries the epoch of the claim it was made under; the store refuses it
//!    ([`CheckpointError::Fenced`]) once a later claim happened. A stale owner (one that has
//!    not noticed the revocation yet, or was paused and came back) can therefore never
//!    overwrite what the new owner loaded or wrote since.
//!
//! Offsets of one partition never go backwards under one epoch
//! ([`CheckpointError::OffsetRegressed`]). Keys are tenant-scoped: a partition is named by its
//! tenant, deployment, topic and number, and a backend derives its storage key from all four in
//! one place ([`partition_key`]), so no tenant reaches another's checkpoints.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use weir_api::TenantId;

/// One input partition of a deployment: whose, and which.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionId {
    /// The tenant.
    pub tenant: TenantId,
    /// The deployment (its id, not an instance's: every instance of it shares the partition).
    pub deployment: String,
    /// The Kafka topic.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
}

/// The storage key of `id` under `namespace`:
/// `<namespace>:partitions:{<len>:<tenant>}:<len>:<deployment>:<len>:<topic>:<partition>`.
/// Lengths before the variable parts keep any two partitions apart whatever their names hold;
/// the braces make the tenant a Redis Cluster hash tag (like the state keys).
pub fn partition_key(namespace: &str, id: &PartitionId) -> String {
    let tenant = id.tenant.as_str();
    format!(
        "{namespace}:partitions:{{{}:{tenant}}}:{}:{}:{}:{}:{}",
        tenant.len(),
        id.deployment.len(),
        id.deployment,
        id.topic.len(),
        id.topic,
        id.partition
    )
}

/// The open window state of one partition and the offset it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next offset to read: every record before it is folded into `state` (or in a window
    /// already emitted), none after it.
    pub offset: i64,
    /// The open windows, encoded by their owner (opaque here).
    pub state: Vec<u8>,
}

/// The right to write a partition's checkpoints, from a [`PartitionCheckpoints::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: PartitionId,
    /// The claim's epoch: 1 for the first claim, one more for each later one.
    pub epoch: u64,
}

/// Why a checkpoint or claim failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A later claim took the partition: this owner must stop and drop its windows.
    #[error("partition fenced: claimed again at epoch {current} (this lease is epoch {held})")]
    Fenced {
        /// The lease's epoch.
        held: u64,
        /// The partition's epoch now.
        current: u64,
    },
    /// The checkpoint's offset lies before the stored one.
    #[error("checkpoint offset {offset} is before the stored {stored}")]
    OffsetRegressed {
        /// The offset written.
        offset: i64,
        /// The stored offset.
        stored: i64,
    },
    /// The state is larger than the store takes.
    #[error("checkpoint state is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store did not answer in time.
    #[error("checkpoint store timed out")]
    Timeout,
    /// The store is unreachable or answered something else.
    #[error("checkpoint store unavailable: {0}")]
    Unavailable(String),
}

/// Largest checkpoint state, in bytes (a partition's open windows; bounded so one partition
/// cannot fill the store).
pub const MAX_CHECKPOINT_BYTES: usize = 8 << 20;

/// Where partitions' window state lives between owners.
#[async_trait]
pub trait PartitionCheckpoints: Send + Sync {
    /// Takes `partition` for a new owner: its epoch goes up by one (every earlier lease is
    /// fenced from now on); the lease and the last checkpoint, if any.
    async fn claim(
        &self,
        partition: &PartitionId,
    ) -> Result<(Lease, Option<Checkpoint>), CheckpointError>;

    /// Stores `checkpoint` (state and offset in one write) if `lease` is still the
    /// partition's latest claim and the offset does not go back.
    async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError>;
}

/// [`PartitionCheckpoints`] in this process (one executor, or tests).
#[derive(Debug, Default)]
pub struct MemoryPartitionCheckpoints {
    // One entry per partition ever claimed: bounded by the deployments' partitions.
    partitions: Mutex<HashMap<PartitionId, (u64, Option<Checkpoint>)>>,
}

impl MemoryPartitionCheckpoints {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PartitionCheckpoints for MemoryPartitionCheckpoints {
    async fn claim(
        &self,
        partition: &PartitionId,
    ) -> Result<(Lease, Option<Checkpoint>), CheckpointError> {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = partitions.entry(partition.clone()).or_default();
        entry.0 = entry.0.saturating_add(1);
        Ok((
            Lease {
                partition: partition.clone(),
                epoch: entry.0,
            },
            entry.1.clone(),
        ))
    }

    async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        if checkpoint.state.len() > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::TooLarge {
                len: checkpoint.state.len(),
                max: MAX_CHECKPOINT_BYTES,
            });
        }
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = partitions.entry(lease.partition.clone()).or_default();
        if entry.0 != lease.epoch {
            return Err(CheckpointError::Fenced {
                held: lease.epoch,
                current: entry.0,
            });
        }
        if let Some(stored) = &entry.1
            && checkpoint.offset < stored.offset
        {
            return Err(CheckpointError::OffsetRegressed {
                offset: checkpoint.offset,
                stored: stored.offset,
            });
        }
        entry.1 = Some(checkpoint.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_checkpoints_follow_the_protocol() {
        crate::testing::partition_conformance(&MemoryPartitionCheckpoints::new(), "mem").await;
    }

    #[test]
    fn partition_keys_are_tenant_scoped_and_length_prefixed() {
        let p = crate::testing::partition("acme", "win", "in", 3);
        assert_eq!(
            partition_key("weir", &p),
            "weir:partitions:{4:acme}:3:win:2:in:3"
        );
    }
}
