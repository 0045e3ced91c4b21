//! [`RedisStateStore`]: tenants' state on a Redis server, shared by every executor that points
//! at it.
//!
//! # Key layout
//!
//! Every key of a tenant lies under one prefix, built in [`tenant_keys`] and nowhere else:
//! `<namespace>:state:{<len>:<tenant>}:` (the tenant id after its length in bytes, so no tenant
//! id can be read as a prefix of another; the braces make the prefix a Redis Cluster hash tag,
//! so one tenant's keys share a slot). Under it six Redis keys hold the tenant's state:
//!
//! | suffix | type | holds |
//! |---|---|---|
//! | `m` | hash | `keys` and `bytes` (the quota counters) and `clock_ms`/`clock_n` (the tenant's HLC) |
//! | `d` | hash | module key → value |
//! | `v` | hash | module key → version of its last write |
//! | `f` | hash | module key → fencing token protecting it |
//! | `x` | sorted set | module key, scored by its expiry (Unix milliseconds) |
//! | `i` | sorted set | every module key at score 0, so `ZRANGE … BYLEX` lists them in byte order |
//!
//! Executors sharing one Redis and one namespace share a tenant's keys.
//!
//! # Atomicity, versions and fencing
//!
//! Each operation is one Lua script (`EVALSHA`, reloaded on `NOSCRIPT` after a restart), so a
//! condition, its fencing check, the quota check and the write happen with nothing in between.
//! Versions are hybrid logical clock readings made inside the script from the server's `TIME`
//! and the tenant's last reading (`clock_ms`, `clock_n` in `m`): every write of a tenant gets a
//! version later than the one before, whichever executor made it, so a lock's version is a
//! fencing token no earlier holder can beat even when executors' clocks disagree. The node id
//! of a version names the executor that wrote it. Versions and fencing tokens are stored as
//! `secs(20 digits) nanos(10) counter(20) node-id`, whose byte order is [`Hlc`]'s order; the
//! scripts compare them byte by byte (Lua's `<` on strings follows the server's locale).
//!
//! # Quotas and expiry
//!
//! `keys` and `bytes` (key plus value lengths) are kept in the tenant's `m` hash and changed by
//! the same script that adds, grows, shrinks or removes a key, so they are exact. Expired keys
//! are not left to Redis's own expiry (which would free the data but not the counters): a key
//! is dead once its score in `x` is at or before the server's time, every script treats a dead
//! key as absent, and reclaims it lazily: the key the script touches at once, then up to
//! [`RECLAIM_BATCH`] of the tenant's longest-dead keys on every call, and all of them before a
//! write would be refused for quota (and before `keys` lists, and before `usage` reads the
//! counters, so usage never counts a dead key). A dead key therefore never refuses a write;
//! its bytes stay in Redis's memory until some call of its tenant reclaims it.
//!
//! # Failures and durability
//!
//! Every call is bounded by [`RedisConfig::call_timeout`]: a call past it returns
//! [`StateError::Timeout`]; a lost connection, a refused reconnect or a server error returns
//! [`StateError::Unavailable`]. Writes are never retried (a script may have run before its
//! answer was lost); the connection manager reconnects in the background. An answered write is
//! as durable as the server's persistence makes it: with `appendonly yes` and
//! `appendfsync always` Redis writes it to its append-only file before answering, so it survives
//! a crash of the server; with Redis's defaults, it may not.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use weir_api::{Hlc, TenantId};

use crate::{
    DelResponse, GetResponse, SetCondition, SetOptions, SetResponse, StateError, StateScope,
    StateStore, StateUsage, check_fencing, check_key,
};

/// Dead (expired) keys of a tenant each call reclaims, besides the one it touches.
pub const RECLAIM_BATCH: u32 = 16;

/// Where a [`RedisStateStore`] connects and how long it waits.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` (plain TCP; `rediss://` needs TLS, which
    /// weir is built without).
    pub url: String,
    /// The first part of every key (letters, digits, `-`, `_`, `.`): executors that share a
    /// namespace share tenants' state; tests use one each.
    pub namespace: String,
    /// The node id versions carry: the executor that wrote.
    pub node_id: String,
    /// Longest one operation may take, connecting included.
    pub call_timeout: Duration,
    /// Longest the first connection may take (at start-up).
    pub connect_timeout: Duration,
}

impl RedisConfig {
    /// Namespace `weir`, node id `weir-state`, calls bounded by 1 s, start-up by 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "weir".to_owned(),
            node_id: "weir-state".to_owned(),
            call_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a [`RedisStateStore`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConnectError {
    /// The URL is not a Redis URL weir can use.
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, its password masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The namespace has characters other than letters, digits, `-`, `_`, `.`, or none.
    #[error("invalid state namespace {0:?}: letters, digits, '-', '_' and '.' only")]
    InvalidNamespace(String),
    /// The server did not answer in time, or refused.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// The URL, its password masked.
        url: String,
        /// What happened.
        reason: String,
    },
}

/// Tenants' state on Redis; see the [module documentation](self) for the key layout, the
/// scripts and the quota accounting.
#[derive(Clone)]
pub struct RedisStateStore {
    connection: ConnectionManager,
    namespace: String,
    node_id: String,
    call_timeout: Duration,
    scripts: std::sync::Arc<Scripts>,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("namespace", &self.namespace)
            .field("node_id", &self.node_id)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Scripts {
    get: Script,
    set: Script,
    delete: Script,
    keys: Script,
    usage: Script,
    clear: Script,
}

/// The Redis keys of one tenant's state, in the order the scripts take them (`KEYS[1..6]`):
/// `m`, `d`, `v`, `f`, `x`, `i`. The only place a key name is made.
pub fn tenant_keys(namespace: &str, tenant: &TenantId) -> [String; 6] {
    let tenant = tenant.as_str();
    let prefix = format!("{namespace}:state:{{{}:{tenant}}}:", tenant.len());
    ["m", "d", "v", "f", "x", "i"].map(|suffix| format!("{prefix}{suffix}"))
}

/// The URL with its password, if any, masked: for error messages and logs.
pub fn masked_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let (head, rest) = url.split_at(scheme + 3);
            let (credentials, host) = rest.split_at(at - scheme - 3);
            match credentials.split_once(':') {
                Some((user, _password)) => format!("{head}{user}:***{host}"),
                None => format!("{head}***{host}"),
            }
        }
        _ => url.to_owned(),
    }
}

impl RedisStateStore {
    /// Connects to `config.url` and checks the server answers, within
    /// `config.connect_timeout`.
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisConnectError> {
        let shown = masked_url(&config.url);
        if config.namespace.is_empty()
            || !config
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(RedisConnectError::InvalidNamespace(config.namespace));
        }
        if !config.url.starts_with("redis://") {
            return Err(RedisConnectError::InvalidUrl {
                url: shown,
                reason: "expected redis://host[:port][/db] (plain TCP)".to_owned(),
            });
        }
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            RedisConnectError::InvalidUrl {
                url: shown.clone(),
                reason: e.to_string(),
            }
        })?;
        // Reconnects are bounded (a few tries, short delays): a call waiting for one gives up
        // at its own deadline anyway, and the next call starts a new reconnect.
        let attempt = config.call_timeout.min(Duration::from_secs(1));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(attempt))
            .set_response_timeout(Some(config.call_timeout))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(250));
        let unreachable = |reason: String| RedisConnectError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let connect = async {
            let mut connection = client
                .get_connection_manager_with_config(manager_config)
                .await?;
            let pong: String = redis::cmd("PING").query_async(&mut connection).await?;
            Ok::<_, redis::RedisError>((connection, pong))
        };
        let (connection, pong) = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_elapsed| {
                unreachable(format!(
                    "no answer within {} ms",
                    config.connect_timeout.as_millis()
                ))
            })?
            .map_err(|e| unreachable(e.to_string()))?;
        if pong != "PONG" {
            return Err(unreachable(format!("PING answered {pong:?}")));
        }
        Ok(Self {
            connection,
            namespace: config.namespace,
            node_id: config.node_id,
            call_timeout: config.call_timeout,
            scripts: std::sync::Arc::new(Scripts::new()),
        })
    }

    /// Partitions' window checkpoints on the same server, connection and namespace
    /// ([`crate::partitions`]).
    pub fn partition_checkpoints(&self) -> crate::RedisPartitionCheckpoints {
        crate::RedisPartitionCheckpoints::new(
            self.connection.clone(),
            self.namespace.clone(),
            self.call_timeout,
        )
    }

    /// The namespace every key of this store starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs `script` on the scope's keys with `args`, within the call timeout.
    async fn run(
        &self,
        script: &Script,
        scope: &StateScope,
        args: &[&[u8]],
    ) -> Result<Vec<Value>, StateError> {
        let mut invocation = script.prepare_invoke();
        for key in tenant_keys(&self.namespace, scope.tenant()) {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        let call = invocation.invoke_async::<Vec<Value>>(&mut connection);
        match tokio::time::timeout(self.call_timeout, call).await {
            Err(_elapsed) => Err(StateError::Timeout),
            Ok(Err(error)) if error.is_timeout() => Err(StateError::Timeout),
            Ok(Err(error)) => Err(StateError::Unavailable(Box::new(error))),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}

/// Refuses fencing tokens from too far in the future, on this executor's clock, as the other
/// backends do; the comparison with the stored token happens in the script.
fn check_token_time(token: Option<&Hlc>) -> Result<(), StateError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    check_fencing(None, token, now)
}

/// An HLC as the scripts store and compare it: byte order is [`Hlc`] order.
fn encode_hlc(hlc: &Hlc) -> Vec<u8> {
    format!(
        "{:020}{:010}{:020}{}",
        hlc.secs, hlc.nanos, hlc.counter, hlc.node_id
    )
    .into_bytes()
}

fn decode_hlc(bytes: &[u8]) -> Result<Hlc, StateError> {
    let bad = || protocol("a version that is not an encoded HLC");
    let text = std::str::from_utf8(bytes).map_err(|_utf8| bad())?;
    let field = |range: std::ops::Range<usize>| {
        text.get(range)
            .and_then(|digits| digits.parse::<u64>().ok())
            .ok_or_else(bad)
    };
    Ok(Hlc {
        secs: field(0..20)?,
        nanos: u32::try_from(field(20..30)?).map_err(|_range| bad())?,
        counter: field(30..50)?,
        node_id: text.get(50..).ok_or_else(bad)?.to_owned(),
    })
}

fn protocol(what: &str) -> StateError {
    StateError::Unavailable(format!("Redis state script answered {what}").into())
}

/// The reply's first element: the outcome tag every script answers with.
fn outcome(reply: &[Value]) -> Result<&[u8], StateError> {
    match reply.first() {
        Some(Value::BulkString(tag)) => Ok(tag),
        Some(Value::SimpleString(tag)) => Ok(tag.as_bytes()),
        _ => Err(protocol("no outcome")),
    }
}

fn bytes_at(reply: &[Value], index: usize) -> Result<Vec<u8>, StateError> {
    match reply.get(index) {
        Some(Value::BulkString(bytes)) => Ok(bytes.clone()),
        _ => Err(protocol("a missing string")),
    }
}

/// Maps a script's refusal onto the error the other backends give.
fn refusal(tag: &[u8], scope: &StateScope) -> StateError {
    let limits = scope.limits();
    match tag {
        b"fencing-token-required" => StateError::FencingTokenRequired,
        b"fencing-token-lower-version" => StateError::FencingTokenLowerVersion,
        b"quota-keys" => StateError::QuotaExceeded {
            what: "keys",
            limit: limits.max_keys,
        },
        b"quota-bytes" => StateError::QuotaExceeded {
            what: "bytes",
            limit: limits.max_bytes,
        },
        other => protocol(&format!("{:?}", String::from_utf8_lossy(other))),
    }
}

/// Milliseconds of `ttl`, rounded up (a key never dies before its time); `None` for zero or
/// for more than 2^50 ms (35,000 years), which no clock arithmetic in the scripts should meet.
fn ttl_millis(ttl: Duration) -> Option<u64> {
    if ttl.is_zero() {
        return None;
    }
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).ok().filter(|ms| *ms <= 1 << 50)
}

#[async_trait]
impl StateStore for RedisStateStore {
    async fn get(&self, scope: &StateScope, key: &[u8]) -> Result<GetResponse, StateError> {
        check_key(scope, key)?;
        let reply = self.run(&self.scripts.get, scope, &[key]).await?;
        match outcome(&reply)? {
            b"absent" => Ok(GetResponse {
                value: None,
                version: None,
            }),
            b"ok" => Ok(GetResponse {
                value: Some(bytes_at(&reply, 1)?),
                version: Some(decode_hlc(&bytes_at(&reply, 2)?)?),
            }),
            other => Err(refusal(other, scope)),
        }
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
    ) -> Result<SetResponse, StateError> {
        check_key(scope, key)?;
        let ttl = match options.expires {
            None => 0,
            Some(ttl) => ttl_millis(ttl).ok_or(StateError::InvalidExpiry)?,
        };
        check_token_time(options.fencing_token.as_ref())?;
        let condition: &[u8] = match options.condition {
            SetCondition::Unconditional => b"always",
            SetCondition::OnlyIfDoesNotExist => b"nx",
            SetCondition::OnlyIfEqualOrDoesNotExist => b"nex",
        };
        let token = options
            .fencing_token
            .as_ref()
            .map(encode_hlc)
            .unwrap_or_default();
        let limits = scope.limits();
        let (ttl, max_keys, max_bytes) = (
            ttl.to_string(),
            limits.max_keys.to_string(),
            limits.max_bytes.to_string(),
        );
        let reply = self
            .run(
                &self.scripts.set,
                scope,
                &[
                    key,
                    value,
                    condition,
                    ttl.as_bytes(),
                    &token,
                    self.node_id.as_bytes(),
                    max_keys.as_bytes(),
                    max_bytes.as_bytes(),
                ],
            )
            .await?;
        match outcome(&reply)? {
            b"written" => Ok(SetResponse {
                written: true,
                version: Some(decode_hlc(&bytes_at(&reply, 1)?)?),
            }),
            b"not-written" => Ok(SetResponse {
                written: false,
                version: None,
            }),
            other => Err(refusal(other, scope)),
        }
    }

    async fn del(
        &self,
        scope: &StateScope,
        key: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.delete(scope, key, None, fencing_token).await
    }

    async fn vdel(
        &self,
        scope: &StateScope,
        key: &[u8],
        value: &[u8],
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        self.delete(scope, key, Some(value), fencing_token).await
    }

    async fn keys(&self, scope: &StateScope, limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.to_string();
        let reply = self
            .run(&self.scripts.keys, scope, &[limit.as_bytes()])
            .await?;
        reply
            .into_iter()
            .map(|value| match value {
                Value::BulkString(key) => Ok(key),
                _ => Err(protocol("a key that is not a string")),
            })
            .collect()
    }

    /// The quota counters of the tenant's `m` hash, after reclaiming its dead keys (what a
    /// write refused for quota would reclaim anyway).
    async fn usage(&self, scope: &StateScope) -> Result<StateUsage, StateError> {
        let reply = self.run(&self.scripts.usage, scope, &[]).await?;
        let counter = |index: usize| match reply.get(index) {
            Some(Value::Int(n)) => {
                u64::try_from(*n).map_err(|_negative| protocol("a negative count"))
            }
            _ => Err(protocol("a missing count")),
        };
        Ok(StateUsage {
            keys: counter(0)?,
            bytes: counter(1)?,
        })
    }

    /// Removes the tenant's six Redis keys but its clock: later versions stay later.
    async fn clear(&self, scope: &StateScope) -> Result<(), StateError> {
        let reply = self.run(&self.scripts.clear, scope, &[]).await?;
        match outcome(&reply)? {
            b"ok" => Ok(()),
            other => Err(refusal(other, scope)),
        }
    }
}

impl RedisStateStore {
    async fn delete(
        &self,
        scope: &StateScope,
        key: &[u8],
        expected: Option<&[u8]>,
        fencing_token: Option<&Hlc>,
    ) -> Result<DelResponse, StateError> {
        check_key(scope, key)?;
        check_token_time(fencing_token)?;
        let token = fencing_token.map(encode_hlc).unwrap_or_default();
        let (mode, expected): (&[u8], &[u8]) = match expected {
            Some(value) => (b"vdel", value),
            None => (b"del", b""),
        };
        let reply = self
            .run(
                &self.scripts.delete,
                scope,
                &[key, mode, expected, &token, self.node_id.as_bytes()],
            )
            .await?;
        match outcome(&reply)? {
            b"deleted" => Ok(DelResponse {
                deleted: 1,
                version: Some(decode_hlc(&bytes_at(&reply, 1)?)?),
            }),
            b"absent" => Ok(DelResponse {
                deleted: 0,
                version: None,
            }),
            b"mismatch" => Ok(DelResponse {
                deleted: -1,
                version: None,
            }),
            other => Err(refusal(other, scope)),
        }
    }
}

/// Shared by every script: the tenant's keys, the server's clock, dead-key reclamation, the
/// tenant's HLC and byte-wise comparison.
const PRELUDE: &str = r"
local meta, data, versions, fences, expiry, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Removes `key` and returns its bytes and count to the tenant's quota.
local function forget(key)
  local value = redis.call('HGET', data, key)
  if value then
    redis.call('HDEL', data, key)
    redis.call('HDEL', versions, key)
    redis.call('HDEL', fences, key)
    redis.call('ZREM', expiry, key)
    redis.call('ZREM', index, key)
    redis.call('HINCRBY', meta, 'keys', -1)
    redis.call('HINCRBY', meta, 'bytes', -(#key + #value))
  end
end

-- Reclaims up to `limit` dead keys (all when `limit` is negative); how many it reclaimed.
local function reclaim(now, limit)
  local due
  if limit < 0 then
    due = redis.call('ZRANGEBYSCORE', expiry, '-inf', string.format('%d', now))
  else
    due = redis.call('ZRANGEBYSCORE', expiry, '-inf', string.format('%d', now), 'LIMIT', 0, limit)
  end
  for _, key in ipairs(due) do
    forget(key)
  end
  return #due
end

-- The live value of `key` (false when absent); a dead one is reclaimed first.
local function live(key, now)
  local expires = redis.call('ZSCORE', expiry, key)
  if expires and tonumber(expires) <= now then
    forget(key)
    return false
  end
  return redis.call('HGET', data, key)
end

-- The tenant's next HLC reading, encoded: later than every earlier one of the tenant.
local function next_version(now, node)
  local last = redis.call('HMGET', meta, 'clock_ms', 'clock_n')
  local ms, n = tonumber(last[1]) or 0, tonumber(last[2]) or 0
  if now > ms then
    ms, n = now, 0
  else
    n = n + 1
    if n > 99999 then
      ms, n = ms + 1, 0
    end
  end
  redis.call('HSET', meta, 'clock_ms', string.format('%d', ms), 'clock_n', string.format('%d', n))
  local secs = math.floor(ms / 1000)
  return string.format('%020d%010d%020d', secs, (ms - secs * 1000) * 1000000, n) .. node
end

-- Whether `a` sorts before `b`, byte by byte.
local function before(a, b)
  local len = math.min(#a, #b)
  for i = 1, len do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- Nil when `token` may change `key`, else the refusal.
local function fenced(key, token)
  local stored = redis.call('HGET', fences, key)
  if not stored then
    return nil
  end
  if token == '' then
    return 'fencing-token-required'
  end
  if before(token, stored) then
    return 'fencing-token-lower-version'
  end
  return nil
end
";

/// ARGV: key. Answers `{'absent'}` or `{'ok', value, version}`.
const GET: &str = r"
local key = ARGV[1]
local now = now_ms()
reclaim(now, RECLAIM_BATCH)
local value = live(key, now)
if not value then
  return {'absent'}
end
return {'ok', value, redis.call('HGET', versions, key)}
";

/// ARGV: key, value, condition (`always`/`nx`/`nex`), ttl ms (0: none), fencing token (''
/// none), node id, max keys, max bytes. Answers `{'written', version}`, `{'not-written'}` or
/// a refusal.
const SET: &str = r"
local key, value, condition, ttl, token, node = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local max_keys, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
reclaim(now, RECLAIM_BATCH)
local old = live(key, now)
if old then
  local refused = fenced(key, token)
  if refused then
    return {refused}
  end
  if condition == 'nx' or (condition == 'nex' and old ~= value) then
    return {'not-written'}
  end
end
local function over()
  local counts = redis.call('HMGET', meta, 'keys', 'bytes')
  local keys, bytes = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
  if not old and keys + 1 > max_keys then
    return 'quota-keys'
  end
  local grown = bytes + #key + #value
  if old then
    grown = grown - #key - #old
  end
  if grown > max_bytes then
    return 'quota-bytes'
  end
  return nil
end
-- Dead keys never refuse a write: all of them are reclaimed before a refusal.
if over() then
  reclaim(now, -1)
  local refused = over()
  if refused then
    return {refused}
  end
end
redis.call('HSET', data, key, value)
if old then
  redis.call('HINCRBY', meta, 'bytes', #value - #old)
else
  redis.call('HINCRBY', meta, 'keys', 1)
  redis.call('HINCRBY', meta, 'bytes', #key + #value)
  redis.call('ZADD', index, 0, key)
end
local version = next_version(now, node)
redis.call('HSET', versions, key, version)
-- A fenced key stays fenced by the newest token it was written with.
if token ~= '' then
  redis.call('HSET', fences, key, token)
end
if ttl > 0 then
  redis.call('ZADD', expiry, string.format('%d', now + ttl), key)
else
  redis.call('ZREM', expiry, key)
end
return {'written', version}
";

/// ARGV: key, mode (`del`/`vdel`), expected value (vdel), fencing token ('' none), node id.
/// Answers `{'deleted', version}`, `{'absent'}`, `{'mismatch'}` or a refusal.
const DELETE: &str = r"
local key, mode, expected, token, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
reclaim(now, RECLAIM_BATCH)
local old = live(key, now)
if not old then
  return {'absent'}
end
local refused = fenced(key, token)
if refused then
  return {refused}
end
if mode == 'vdel' and old ~= expected then
  return {'mismatch'}
end
forget(key)
return {'deleted', next_version(now, node)}
";

/// ARGV: limit. Answers up to `limit` live keys in byte order.
const KEYS: &str = r"
reclaim(now_ms(), -1)
return redis.call('ZRANGE', index, '-', '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[1]))
";

/// Answers `{keys, bytes}`: the quota counters of `m` (one `HMGET`, never a scan of the
/// tenant's keys), once the dead keys are reclaimed so they are not counted.
const USAGE: &str = r"
reclaim(now_ms(), -1)
local counts = redis.call('HMGET', meta, 'keys', 'bytes')
return {tonumber(counts[1]) or 0, tonumber(counts[2]) or 0}
";

/// Removes the tenant's state; its clock stays.
const CLEAR: &str = r"
redis.call('UNLINK', data, versions, fences, expiry, index)
redis.call('HDEL', meta, 'keys', 'bytes')
return {'ok'}
";

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| {
            Script::new(&format!(
                "local RECLAIM_BATCH = {RECLAIM_BATCH}\n{PRELUDE}\n{body}"
            ))
        };
        Self {
            get: script(GET),
            set: script(SET),
            delete: script(DELETE),
            keys: script(KEYS),
            usage: script(USAGE),
            clear: script(CLEAR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_prefixes_never_overlap() {
        let keys = |t: &str| tenant_keys("weir", &TenantId::new(t).unwrap());
        let a = keys("a");
        let ab = keys("a-b");
        assert_eq!(a[0], "weir:state:{1:a}:m");
        assert_eq!(ab[0], "weir:state:{3:a-b}:m");
        for key in &a {
            assert!(ab.iter().all(|other| !other.starts_with(key.as_str())));
        }
    }

    #[test]
    fn encoded_hlcs_sort_as_hlcs_and_round_trip() {
        let hlcs = [
            Hlc::at(Duration::from_millis(5), "b"),
            Hlc {
                counter: 1,
                ..Hlc::at(Duration::from_millis(5), "a")
            },
            Hlc::at(Duration::from_millis(5) + Duration::from_nanos(1), "a"),
            Hlc::at(Duration::from_secs(u64::MAX / 4), ""),
        ];
        for pair in hlcs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(a < b);
            assert!(encode_hlc(a) < encode_hlc(b), "{a} vs {b}");
        }
        for hlc in hlcs {
            assert_eq!(decode_hlc(&encode_hlc(&hlc)).unwrap(), hlc);
        }
    }

    #[test]
    fn ttls_round_up_and_refuse_zero() {
        assert_eq!(ttl_millis(Duration::from_nanos(1)), Some(1));
        assert_eq!(ttl_millis(Duration::from_millis(200)), Some(200));
        assert_eq!(ttl_millis(Duration::ZERO), None);
        assert_eq!(ttl_millis(Duration::from_secs(u64::MAX)), None);
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            masked_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(masked_url("redis://secret@host"), "redis://***@host");
        assert_eq!(masked_url("redis://host:1/"), "redis://host:1/");
    }
}
