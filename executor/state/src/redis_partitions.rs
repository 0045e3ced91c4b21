//! [`RedisPartitionCheckpoints`]: partitions' window state on the Redis server the executors
//! share (see [`crate::partitions`] for the protocol).
//!
//! One hash per partition under [`partition_key`]: `epoch` (the number of claims), `offset`
//! and `state` (the last checkpoint). A claim is `HINCRBY epoch` and a read of the checkpoint
//! in one Lua script; a checkpoint compares the lease's epoch with `epoch` and the offset with
//! the stored one and writes `offset` and `state` together, in one script, so nothing runs
//! between the fencing check and the write. Offsets are compared as Lua numbers (exact below
//! 2^53, which Kafka offsets stay under). Calls are bounded by the store's call timeout and
//! never retried (a script may have run before its answer was lost).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::partitions::{
    Checkpoint, CheckpointError, Lease, MAX_CHECKPOINT_BYTES, PartitionCheckpoints, PartitionId,
    partition_key,
};

const CLAIM: &str = r"
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local offset = redis.call('HGET', KEYS[1], 'offset')
if offset then
  return {epoch, offset, redis.call('HGET', KEYS[1], 'state')}
end
return {epoch}
";

const CHECKPOINT: &str = r"
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if epoch ~= tonumber(ARGV[1]) then
  return {'fenced', epoch}
end
local stored = redis.call('HGET', KEYS[1], 'offset')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return {'regressed', stored}
end
redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'state', ARGV[3])
return {'ok'}
";

/// Partitions' checkpoints on Redis; made by `RedisStateStore::partition_checkpoints`, on
/// its connection and namespace.
#[derive(Clone)]
pub struct RedisPartitionCheckpoints {
    connection: ConnectionManager,
    namespace: String,
    call_timeout: Duration,
    claim: std::sync::Arc<Script>,
    checkpoint: std::sync::Arc<Script>,
}

impl std::fmt::Debug for RedisPartitionCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPartitionCheckpoints")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisPartitionCheckpoints {
    pub(crate) fn new(
        connection: ConnectionManager,
        namespace: String,
        call_timeout: Duration,
    ) -> Self {
        Self {
            connection,
            namespace,
            call_timeout,
            claim: std::sync::Arc::new(Script::new(CLAIM)),
            checkpoint: std::sync::Arc::new(Script::new(CHECKPOINT)),
        }
    }

    async fn run(
        &self,
        script: &Script,
        partition: &PartitionId,
        args: &[&[u8]],
    ) -> Result<Vec<Value>, CheckpointError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(partition_key(&self.namespace, partition));
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        let call = invocation.invoke_async::<Vec<Value>>(&mut connection);
        match tokio::time::timeout(self.call_timeout, call).await {
            Err(_elapsed) => Err(CheckpointError::Timeout),
            Ok(Err(error)) if error.is_timeout() => Err(CheckpointError::Timeout),
            Ok(Err(error)) => Err(CheckpointError::Unavailable(error.to_string())),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}

fn protocol(what: &str) -> CheckpointError {
    CheckpointError::Unavailable(format!("the checkpoint script answered {what}"))
}

fn integer(value: Option<&Value>) -> Result<i64, CheckpointError> {
    match value {
        Some(Value::Int(n)) => Ok(*n),
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| protocol("a number that is not one")),
        _ => Err(protocol("no number")),
    }
}

fn epoch_of(value: Option<&Value>) -> Result<u64, CheckpointError> {
    u64::try_from(integer(value)?).map_err(|_negative| protocol("a negative epoch"))
}

#[async_trait]
impl PartitionCheckpoints for RedisPartitionCheckpoints {
    async fn claim(
        &self,
        partition: &PartitionId,
    ) -> Result<(Lease, Option<Checkpoint>), CheckpointError> {
        let reply = self.run(&self.claim, partition, &[]).await?;
        let epoch = epoch_of(reply.first())?;
        let checkpoint = if reply.len() >= 3 {
            let state = match reply.get(2) {
                Some(Value::BulkString(bytes)) => bytes.clone(),
                Some(Value::Nil) | None => Vec::new(),
                Some(_) => return Err(protocol("a state that is not a string")),
            };
            Some(Checkpoint {
                offset: integer(reply.get(1))?,
                state,
            })
        } else {
            None
        };
        Ok((
            Lease {
                partition: partition.clone(),
                epoch,
            },
            checkpoint,
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
        let epoch = lease.epoch.to_string();
        let offset = checkpoint.offset.to_string();
        let reply = self
            .run(
                &self.checkpoint,
                &lease.partition,
                &[epoch.as_bytes(), offset.as_bytes(), &checkpoint.state],
            )
            .await?;
        let tag = match reply.first() {
            Some(Value::BulkString(tag)) => tag.as_slice(),
            Some(Value::SimpleString(tag)) => tag.as_bytes(),
            _ => return Err(protocol("no outcome")),
        };
        match tag {
            b"ok" => Ok(()),
            b"fenced" => Err(CheckpointError::Fenced {
                held: lease.epoch,
                current: epoch_of(reply.get(1))?,
            }),
            b"regressed" => Err(CheckpointError::OffsetRegressed {
                offset: checkpoint.offset,
                stored: integer(reply.get(1))?,
            }),
            _ => Err(protocol("an unknown outcome")),
        }
    }
}
