//! `RedisStateStore` against a real Redis 7 (`scripts/services start`, then
//! `source target/services/env`): the conformance suite, executors sharing a tenant's keys, the
//! quota counters under expiry and the usage read from them, the lock pattern of the enrichment
//! module under contention with fencing, calls bounded when the server is gone or silent, and
//! no acknowledged write lost when the server crashes mid-stream.
//!
//! Tests share one server (`WEIR_TEST_REDIS`) and keep apart by namespace, one per test; the
//! restart test crashes its own (`WEIR_TEST_REDIS_RESTART`). A test that finds no Redis fails:
//! it never skips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use weir_api::TenantId;
use weir_state::testing::{conformance, scope};
use weir_state::{
    RedisConfig, RedisConnectError, RedisStateStore, SetCondition, SetOptions, StateError,
    StateLimits, StateScope, StateStore, tenant_keys,
};

/// `redis://127.0.0.1:PORT/` of the shared test Redis.
fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS").expect(
        "WEIR_TEST_REDIS is not set: start the services with `scripts/services start` and \
         `source target/services/env` (this test needs a real Redis; it does not skip)",
    )
}

/// The Redis the restart test crashes (its own, so tests beside it are not disturbed).
fn restartable_redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS_RESTART").expect(
        "WEIR_TEST_REDIS_RESTART is not set: start the services with `scripts/services start` \
         and `source target/services/env` (this test needs a real Redis; it does not skip)",
    )
}

/// A namespace no other test (or earlier run) uses.
fn namespace(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{test}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(url: &str, namespace: &str, node: &str) -> RedisConfig {
    RedisConfig {
        namespace: namespace.to_owned(),
        node_id: node.to_owned(),
        ..RedisConfig::new(url)
    }
}

async fn store(namespace: &str) -> RedisStateStore {
    RedisStateStore::connect(config(&redis_url(), namespace, "test"))
        .await
        .unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The tenant's quota counters as the scripts keep them, and what the data hash really holds.
async fn counters(url: &str, namespace: &str, scope: &StateScope) -> ((u64, u64), (u64, u64)) {
    let [meta, data, ..] = tenant_keys(namespace, scope.tenant());
    let mut connection = raw(url).await;
    let (keys, bytes): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(&meta)
        .arg("keys")
        .arg("bytes")
        .query_async(&mut connection)
        .await
        .unwrap();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = connection.hgetall(&data).await.unwrap();
    let real_bytes = entries
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    (
        (keys.unwrap_or(0), bytes.unwrap_or(0)),
        (entries.len() as u64, real_bytes),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_partition_checkpoints_follow_the_protocol_and_fence_a_stale_owner() {
    let namespace = namespace("partitions");
    let checkpoints = store(&namespace).await.partition_checkpoints();
    weir_state::testing::partition_conformance(&checkpoints, &namespace).await;
}

/// Owners racing for one partition through two executors' connections: every claim gets its
/// own epoch, and only the last claimant's checkpoints land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_leave_only_the_last_owner_writing() {
    use weir_state::partitions::{Checkpoint, CheckpointError, PartitionCheckpoints};
    let namespace = namespace("partition-race");
    let one = store(&namespace).await.partition_checkpoints();
    let two = store(&namespace).await.partition_checkpoints();
    let p = weir_state::testing::partition("tenant-a", "win", "in", 0);
    let mut tasks = JoinSet::new();
    for (i, checkpoints) in [one.clone(), two.clone()]
        .into_iter()
        .cycle()
        .take(20)
        .enumerate()
    {
        let p = p.clone();
        tasks.spawn(async move { (i, checkpoints.claim(&p).await.unwrap().0) });
    }
    let mut leases = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        leases.push(joined.unwrap().1);
    }
    let mut epochs: Vec<u64> = leases.iter().map(|l| l.epoch).collect();
    epochs.sort_unstable();
    assert_eq!(
        epochs,
        (1..=20).collect::<Vec<_>>(),
        "epochs are unique and gapless"
    );
    let mut written = 0;
    for lease in &leases {
        let checkpoint = Checkpoint {
            offset: i64::try_from(lease.epoch).unwrap(),
            state: lease.epoch.to_string().into_bytes(),
        };
        match one.checkpoint(lease, &checkpoint).await {
            Ok(()) => {
                written += 1;
                assert_eq!(lease.epoch, 20);
            }
            Err(CheckpointError::Fenced { current: 20, .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(written, 1);
    let (_, stored) = two.claim(&p).await.unwrap();
    assert_eq!(stored.unwrap().state, b"20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_conformance_suite() {
    conformance(&store(&namespace("conformance")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_sharing_a_redis_share_a_tenants_keys_and_nothing_across_namespaces() {
    let ns = namespace("shared");
    let url = redis_url();
    let a = RedisStateStore::connect(config(&url, &ns, "executor-a"))
        .await
        .unwrap();
    let b = RedisStateStore::connect(config(&url, &ns, "executor-b"))
        .await
        .unwrap();
    let other = store(&namespace("shared-other")).await;
    let s = scope("shared");
    let written = a
        .set(&s, b"k", b"from a", SetOptions::default())
        .await
        .unwrap();
    assert_eq!(written.version.as_ref().unwrap().node_id, "executor-a");
    let seen = b.get(&s, b"k").await.unwrap();
    assert_eq!(seen.value.as_deref(), Some(b"from a".as_slice()));
    assert_eq!(seen.version, written.version);
    // One clock per tenant in Redis: b's next write is later than a's, whatever the hosts' clocks.
    let next = b
        .set(&s, b"k", b"from b", SetOptions::default())
        .await
        .unwrap();
    assert!(next.version > written.version);
    assert_eq!(other.get(&s, b"k").await.unwrap().value, None);
    assert!(other.keys(&s, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counters_stay_exact_and_expired_keys_give_their_room_back() {
    let ns = namespace("quota");
    let url = redis_url();
    let store = store(&ns).await;
    let s = StateScope::new(
        TenantId::new("quota").unwrap(),
        StateLimits {
            max_keys: 4,
            max_bytes: 64,
            max_key_bytes: 16,
        },
    );
    let short = SetOptions {
        expires: Some(Duration::from_millis(100)),
        ..SetOptions::default()
    };
    for key in [b"a1".as_slice(), b"a2", b"a3", b"a4"] {
        store
            .set(&s, key, b"0123456789", short.clone())
            .await
            .unwrap();
    }
    assert_eq!(counters(&url, &ns, &s).await.0, (4, 48));
    assert!(matches!(
        store.set(&s, b"b1", b"v", SetOptions::default()).await,
        Err(StateError::QuotaExceeded { what: "keys", .. })
    ));
    // Wait until Redis's clock has passed the expiry (the keys read as absent), without any
    // write in between.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get(&s, b"a4").await.unwrap().value.is_some() {
        assert!(Instant::now() < deadline, "a4 outlived its expiry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Four dead keys no longer count: four new keys fit, and the counters are the real sizes.
    for key in [b"b1".as_slice(), b"b2", b"b3", b"b4"] {
        store
            .set(&s, key, b"v", SetOptions::default())
            .await
            .unwrap();
    }
    let (kept, real) = counters(&url, &ns, &s).await;
    assert_eq!(kept, (4, 12));
    assert_eq!(kept, real);
    // A churn of overwrites, growths, deletes and refusals keeps them exact.
    for round in 0..50_u8 {
        let key = [b'c', b'0' + round % 6];
        let value = vec![b'x'; usize::from(round % 20)];
        let _refused_or_written = store.set(&s, &key, &value, SetOptions::default()).await;
        if round % 3 == 0 {
            store
                .del(&s, &[b'b', b'1' + round % 4], None)
                .await
                .unwrap();
        }
        if round % 7 == 0 {
            store.vdel(&s, &key, &value, None).await.unwrap();
        }
        let (kept, real) = counters(&url, &ns, &s).await;
        assert_eq!(kept, real, "round {round}");
        assert!(kept.0 <= 4 && kept.1 <= 64, "round {round}: {kept:?}");
        let usage = store.usage(&s).await.unwrap();
        assert_eq!((usage.keys, usage.bytes), kept, "round {round}: usage");
    }
    store.clear(&s).await.unwrap();
    assert_eq!(counters(&url, &ns, &s).await, ((0, 0), (0, 0)));
    assert!(store.keys(&s, 10).await.unwrap().is_empty());
}

/// `usage` is the tenant's quota counters: N keys written are N keys and their bytes, a delete
/// takes one off, the same tenant reads the same figures through another executor, and another
/// tenant's figures (same namespace) or the same tenant's in another namespace stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reads_the_tenants_quota_counters_and_no_one_elses() {
    let ns = namespace("usage");
    let url = redis_url();
    let a = RedisStateStore::connect(config(&url, &ns, "executor-a"))
        .await
        .unwrap();
    let b = RedisStateStore::connect(config(&url, &ns, "executor-b"))
        .await
        .unwrap();
    let elsewhere = store(&namespace("usage-elsewhere")).await;
    let (mine, theirs) = (scope("usage-mine"), scope("usage-theirs"));
    let value = [b'v'; 100];
    for n in 0..10_u8 {
        a.set(&mine, &[b'k', b'0' + n], &value, SetOptions::default())
            .await
            .unwrap();
    }
    b.set(&theirs, b"key", b"val", SetOptions::default())
        .await
        .unwrap();
    let usage = |store: &RedisStateStore, s: &StateScope| {
        let (store, s) = (store.clone(), s.clone());
        async move {
            let usage = store.usage(&s).await.unwrap();
            (usage.keys, usage.bytes)
        }
    };
    assert_eq!(usage(&a, &mine).await, (10, 10 * 102));
    assert_eq!(usage(&b, &mine).await, (10, 10 * 102), "another executor");
    assert_eq!(counters(&url, &ns, &mine).await.0, (10, 10 * 102));
    b.del(&mine, b"k3", None).await.unwrap();
    assert_eq!(usage(&a, &mine).await, (9, 9 * 102));
    assert_eq!(usage(&a, &theirs).await, (1, 6), "the other tenant's own");
    assert_eq!(usage(&elsewhere, &mine).await, (0, 0), "another namespace");
    a.clear(&mine).await.unwrap();
    assert_eq!(usage(&b, &mine).await, (0, 0));
    assert_eq!(usage(&b, &theirs).await, (1, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_an_unreachable_server_fails_fast_at_connect() {
    let bad = RedisStateStore::connect(RedisConfig::new("http://127.0.0.1:1/")).await;
    assert!(
        matches!(bad, Err(RedisConnectError::InvalidUrl { .. })),
        "{bad:?}"
    );
    let bad =
        RedisStateStore::connect(RedisConfig::new("redis://user:pw@127.0.0.1:notaport/")).await;
    let Err(RedisConnectError::InvalidUrl { url, .. }) = bad else {
        panic!("{bad:?}");
    };
    assert!(!url.contains("pw"), "{url}");
    let bad = RedisStateStore::connect(RedisConfig {
        namespace: "a:b".to_owned(),
        ..RedisConfig::new(redis_url())
    })
    .await;
    assert!(matches!(bad, Err(RedisConnectError::InvalidNamespace(_))));
    // A port nothing listens on: refused at once, retried a few times, then an error.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let started = Instant::now();
    let down = RedisStateStore::connect(RedisConfig {
        connect_timeout: Duration::from_secs(3),
        ..RedisConfig::new(format!("redis://127.0.0.1:{port}/"))
    })
    .await;
    assert!(
        matches!(down, Err(RedisConnectError::Unreachable { .. })),
        "{down:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A TCP relay in front of the shared Redis that the test can cut and restore on the same port,
/// or turn into a black hole (accepts, never answers).
struct Relay {
    port: u16,
    tasks: JoinSet<()>,
}

#[derive(Clone, Copy)]
enum Mode {
    Forward,
    BlackHole,
}

impl Relay {
    async fn start(port: u16, mode: Mode) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                connections.spawn(async move {
                    match mode {
                        Mode::Forward => {
                            let mut outbound =
                                tokio::net::TcpStream::connect(&target).await.unwrap();
                            let _closed =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Mode::BlackHole => {
                            // Hold the connection open and read nothing.
                            std::future::pending::<()>().await;
                            drop(inbound);
                        }
                    }
                });
            }
        });
        Self { port, tasks }
    }

    /// Closes the listener and every relayed connection.
    async fn cut(mut self) -> u16 {
        self.tasks.shutdown().await;
        self.port
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_return_within_their_deadline_when_redis_is_gone_or_silent_and_recover() {
    let call_timeout = Duration::from_millis(500);
    let slack = Duration::from_secs(2);
    let relay = Relay::start(0, Mode::Forward).await;
    let ns = namespace("deadline");
    let store = RedisStateStore::connect(RedisConfig {
        call_timeout,
        ..config(&format!("redis://127.0.0.1:{}/", relay.port), &ns, "test")
    })
    .await
    .unwrap();
    let s = scope("deadline");
    store
        .set(&s, b"k", b"v", SetOptions::default())
        .await
        .unwrap();
    // Gone: connections reset, reconnects refused.
    let port = relay.cut().await;
    for _ in 0..5 {
        let started = Instant::now();
        let failed = store.get(&s, b"k").await;
        assert!(
            matches!(
                failed,
                Err(StateError::Timeout | StateError::Unavailable(_))
            ),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < call_timeout + slack,
            "{:?}",
            started.elapsed()
        );
    }
    // Silent: connections accepted, nothing answered.
    let hole = Relay::start(port, Mode::BlackHole).await;
    for _ in 0..3 {
        let started = Instant::now();
        let failed = store.set(&s, b"k", b"w", SetOptions::default()).await;
        assert!(
            matches!(
                failed,
                Err(StateError::Timeout | StateError::Unavailable(_))
            ),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < call_timeout + slack,
            "{:?}",
            started.elapsed()
        );
    }
    hole.cut().await;
    // Back: the store reconnects by itself (a few calls may still fail while it does).
    let _relay = Relay::start(port, Mode::Forward).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.get(&s, b"k").await {
            Ok(got) => {
                assert_eq!(got.value.as_deref(), Some(b"v".as_slice()));
                break;
            }
            Err(error) => {
                assert!(!error.is_request_error(), "{error:?}");
                assert!(Instant::now() < deadline, "no reconnect: {error:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_loses_no_acknowledged_write() {
    let url = restartable_redis_url();
    let services = std::env::var("WEIR_TEST_SERVICES").expect(
        "WEIR_TEST_SERVICES is not set: start the services with `scripts/services start` and \
         `source target/services/env`",
    );
    let ns = namespace("restart");
    let store = RedisStateStore::connect(config(&url, &ns, "writer"))
        .await
        .unwrap();
    let s = scope("restart");
    let mut acknowledged = Vec::new();
    let mut failed = 0_u32;
    let mut crash: Option<tokio::task::JoinHandle<std::process::Output>> = None;
    let mut acknowledged_after_restart = 0_u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0_u32.. {
        assert!(Instant::now() < deadline, "the stream did not resume");
        let key = format!("k{i}");
        let value = format!("v{i}");
        match store
            .set(&s, key.as_bytes(), value.as_bytes(), SetOptions::default())
            .await
        {
            Ok(written) => {
                assert!(written.written);
                acknowledged.push((key, value));
                if crash
                    .as_ref()
                    .is_some_and(tokio::task::JoinHandle::is_finished)
                {
                    acknowledged_after_restart += 1;
                }
            }
            Err(error) => {
                assert!(!error.is_request_error(), "{error:?}");
                failed += 1;
            }
        }
        // Crash Redis (SIGKILL) while the stream runs, then start it again on its files.
        if i == 200 {
            let services = services.clone();
            crash = Some(tokio::task::spawn_blocking(move || {
                std::process::Command::new(services)
                    .args(["restart", "redis"])
                    .output()
                    .unwrap()
            }));
        }
        if acknowledged_after_restart >= 200 {
            break;
        }
    }
    let crashed = crash.unwrap().await.unwrap();
    assert!(
        crashed.status.success(),
        "{}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    // A fresh client: nothing read comes from the old connection.
    let reader = RedisStateStore::connect(config(&url, &ns, "reader"))
        .await
        .unwrap();
    for (key, value) in &acknowledged {
        let got = reader.get(&s, key.as_bytes()).await.unwrap();
        assert_eq!(
            got.value.as_deref(),
            Some(value.as_bytes()),
            "acknowledged write of {key} lost ({failed} calls failed during the crash)"
        );
    }
    let (kept, real) = counters(&url, &ns, &s).await;
    assert_eq!(kept, real);
    assert!(kept.0 >= acknowledged.len() as u64);
    println!(
        "{} writes acknowledged, {failed} failed while Redis was down",
        acknowledged.len()
    );
}

/// The enrichment module's lock pattern (`set lock OWNER NEX expires 10 s`, read the counter,
/// write it fenced by the lock's version, `vdel lock OWNER`) run by one executor.
async fn locked_increment(
    store: &RedisStateStore,
    s: &StateScope,
    owner: &[u8],
    holders: &AtomicUsize,
) -> bool {
    let lock = SetOptions {
        condition: SetCondition::OnlyIfEqualOrDoesNotExist,
        expires: Some(Duration::from_secs(10)),
        fencing_token: None,
    };
    let acquired = store.set(s, b"lock", owner, lock).await.unwrap();
    if !acquired.written {
        return false;
    }
    let before = holders.fetch_add(1, Ordering::SeqCst);
    assert_eq!(before, 0, "two executors hold the lock at once");
    let count = store
        .get(s, b"overtemp_count")
        .await
        .unwrap()
        .value
        .map_or(0, |v| String::from_utf8(v).unwrap().parse::<u64>().unwrap());
    // Yield while holding: the other executor keeps trying meanwhile.
    tokio::task::yield_now().await;
    let written = store
        .set(
            s,
            b"overtemp_count",
            (count + 1).to_string().as_bytes(),
            SetOptions {
                fencing_token: acquired.version,
                ..SetOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(written.written);
    holders.fetch_sub(1, Ordering::SeqCst);
    assert_eq!(
        store.vdel(s, b"lock", owner, None).await.unwrap().deleted,
        1
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_contending_for_the_lock_hold_it_one_at_a_time() {
    let ns = namespace("lock");
    let url = redis_url();
    let s = scope("lock");
    let holders = Arc::new(AtomicUsize::new(0));
    let mut executors = JoinSet::new();
    for owner in ["executor-a", "executor-b"] {
        let store = RedisStateStore::connect(config(&url, &ns, owner))
            .await
            .unwrap();
        let (s, holders) = (s.clone(), holders.clone());
        executors.spawn(async move {
            let mut increments = 0_u64;
            let mut tries = 0_u64;
            while increments < 100 {
                tries += 1;
                if locked_increment(&store, &s, owner.as_bytes(), &holders).await {
                    increments += 1;
                }
            }
            (increments, tries)
        });
    }
    let mut total = 0;
    let mut contended = 0;
    while let Some(done) = executors.join_next().await {
        let (increments, tries) = done.unwrap();
        total += increments;
        contended += tries - increments;
    }
    let store = store(&ns).await;
    let count = store
        .get(&s, b"overtemp_count")
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(
        String::from_utf8(count).unwrap(),
        total.to_string(),
        "lost updates"
    );
    println!("{total} increments, {contended} refused acquisitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_holders_write_with_an_older_fencing_token_is_refused() {
    let ns = namespace("stale");
    let url = redis_url();
    let s = scope("stale");
    let a = RedisStateStore::connect(config(&url, &ns, "executor-a"))
        .await
        .unwrap();
    let b = RedisStateStore::connect(config(&url, &ns, "executor-b"))
        .await
        .unwrap();
    let lock = |expires| SetOptions {
        condition: SetCondition::OnlyIfEqualOrDoesNotExist,
        expires: Some(expires),
        fencing_token: None,
    };
    // a takes the lock and writes under it, then stalls past the lock's expiry.
    let a_lock = a
        .set(&s, b"lock", b"executor-a", lock(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(a_lock.written);
    let fenced = |token| SetOptions {
        fencing_token: token,
        ..SetOptions::default()
    };
    assert!(
        a.set(&s, b"overtemp_count", b"1", fenced(a_lock.version.clone()))
            .await
            .unwrap()
            .written
    );
    assert!(
        !b.set(&s, b"lock", b"executor-b", lock(Duration::from_secs(10)))
            .await
            .unwrap()
            .written,
        "a still holds the lock"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let b_lock = loop {
        let taken = b
            .set(&s, b"lock", b"executor-b", lock(Duration::from_secs(10)))
            .await
            .unwrap();
        if taken.written {
            break taken;
        }
        assert!(Instant::now() < deadline, "a's lock never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(b_lock.version > a_lock.version);
    assert!(
        b.set(&s, b"overtemp_count", b"2", fenced(b_lock.version.clone()))
            .await
            .unwrap()
            .written
    );
    // a wakes up and writes with its old token: refused, b's value stays.
    let stale = a
        .set(&s, b"overtemp_count", b"99", fenced(a_lock.version.clone()))
        .await;
    assert!(
        matches!(stale, Err(StateError::FencingTokenLowerVersion)),
        "{stale:?}"
    );
    assert!(matches!(
        a.del(&s, b"overtemp_count", a_lock.version.as_ref()).await,
        Err(StateError::FencingTokenLowerVersion)
    ));
    // Its vdel of the lock finds b's value: nothing deleted.
    assert_eq!(
        a.vdel(&s, b"lock", b"executor-a", None)
            .await
            .unwrap()
            .deleted,
        -1
    );
    assert_eq!(
        b.get(&s, b"overtemp_count").await.unwrap().value.as_deref(),
        Some(b"2".as_slice())
    );
}
