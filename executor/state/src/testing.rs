//! The conformance suite every [`StateStore`] backend must pass, in-memory and Redis alike.
//! Each check is its own function so a failure names the semantic that broke.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test support: a failed expectation fails the calling test"
)]

use std::time::Duration;

use weir_api::{Hlc, TenantId};

use crate::{
    SetCondition, SetOptions, StateError, StateLimits, StateScope, StateStore, StateUsage,
};

/// Limits roomy enough that only the quota checks hit them.
pub fn roomy_limits() -> StateLimits {
    StateLimits {
        max_keys: 1_000,
        max_bytes: 1 << 20,
        max_key_bytes: 256,
    }
}

/// A scope for `tenant` with [`roomy_limits`].
pub fn scope(tenant: &str) -> StateScope {
    #[allow(clippy::expect_used, reason = "test tenants are literals")]
    StateScope::new(
        TenantId::new(tenant).expect("valid tenant id"),
        roomy_limits(),
    )
}

/// Runs every check against `store`. Panics (this is test support) naming the first failure.
pub async fn conformance(store: &dyn StateStore) {
    get_of_missing_key_is_empty(store).await;
    set_then_get_returns_value_and_version(store).await;
    versions_increase_with_every_write(store).await;
    only_if_does_not_exist_refuses_existing_key(store).await;
    only_if_equal_or_does_not_exist_allows_same_value(store).await;
    del_reports_how_many_keys_went(store).await;
    vdel_deletes_only_matching_value(store).await;
    expired_keys_disappear(store).await;
    fencing_token_protects_key_from_older_writers(store).await;
    fencing_tokens_from_the_far_future_are_refused(store).await;
    empty_and_oversized_keys_are_refused(store).await;
    key_and_byte_quotas_refuse_at_their_limit(store).await;
    tenants_never_see_each_others_keys(store).await;
    clear_removes_one_tenants_keys_only(store).await;
    usage_counts_the_scopes_live_keys_and_bytes_only(store).await;
}

async fn usage_counts_the_scopes_live_keys_and_bytes_only(store: &dyn StateStore) {
    let (s, other) = (scope("c-usage"), scope("c-usage-other"));
    let usage = |keys, bytes| StateUsage { keys, bytes };
    assert_eq!(store.usage(&s).await.unwrap(), usage(0, 0), "nothing yet");
    for key in [b"k1".as_slice(), b"k2", b"k3"] {
        store.set(&s, key, b"value", unconditional()).await.unwrap();
    }
    store
        .set(&other, b"x", b"yy", unconditional())
        .await
        .unwrap();
    // Key plus value: 2 + 5 bytes each.
    assert_eq!(store.usage(&s).await.unwrap(), usage(3, 21));
    store
        .set(&s, b"k1", b"longer value", unconditional())
        .await
        .unwrap();
    assert_eq!(store.usage(&s).await.unwrap(), usage(3, 28), "overwrite");
    store.del(&s, b"k2", None).await.unwrap();
    assert_eq!(store.usage(&s).await.unwrap(), usage(2, 21), "delete");
    store.vdel(&s, b"k3", b"other", None).await.unwrap();
    assert_eq!(
        store.usage(&s).await.unwrap(),
        usage(2, 21),
        "vdel mismatch"
    );
    let short = SetOptions {
        expires: Some(Duration::from_millis(200)),
        ..SetOptions::default()
    };
    store.set(&s, b"ttl", b"v", short).await.unwrap();
    assert_eq!(store.usage(&s).await.unwrap(), usage(3, 25), "alive");
    // An expired key leaves the figures without anything else touching it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.usage(&s).await.unwrap() != usage(2, 21) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an expired key still counted: {:?}",
            store.usage(&s).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other tenant's figures are its own.
    assert_eq!(store.usage(&other).await.unwrap(), usage(1, 3));
    store.clear(&s).await.unwrap();
    assert_eq!(store.usage(&s).await.unwrap(), usage(0, 0), "cleared");
    assert_eq!(store.usage(&other).await.unwrap(), usage(1, 3));
}

async fn clear_removes_one_tenants_keys_only(store: &dyn StateStore) {
    let (going, staying) = (scope("c-clear-going"), scope("c-clear-staying"));
    for key in [b"a".as_slice(), b"b", b"c"] {
        store.set(&going, key, b"v", unconditional()).await.unwrap();
    }
    store
        .set(&staying, b"a", b"v", unconditional())
        .await
        .unwrap();
    store.clear(&going).await.unwrap();
    assert!(store.keys(&going, 10).await.unwrap().is_empty());
    assert!(store.get(&going, b"a").await.unwrap().value.is_none());
    assert_eq!(store.keys(&staying, 10).await.unwrap(), [b"a".to_vec()]);
    // A cleared scope takes keys again.
    store
        .set(&going, b"a", b"again", unconditional())
        .await
        .unwrap();
}

fn unconditional() -> SetOptions {
    SetOptions::default()
}

async fn get_of_missing_key_is_empty(store: &dyn StateStore) {
    let got = store.get(&scope("c-missing"), b"nothing").await.unwrap();
    assert_eq!((got.value, got.version), (None, None));
}

async fn set_then_get_returns_value_and_version(store: &dyn StateStore) {
    let s = scope("c-set-get");
    let set = store.set(&s, b"k", b"v1", unconditional()).await.unwrap();
    assert!(set.written);
    let got = store.get(&s, b"k").await.unwrap();
    assert_eq!(got.value.as_deref(), Some(b"v1".as_slice()));
    assert_eq!(
        got.version, set.version,
        "get returns the version of the last write"
    );
}

async fn versions_increase_with_every_write(store: &dyn StateStore) {
    let s = scope("c-versions");
    let first = store
        .set(&s, b"k", b"a", unconditional())
        .await
        .unwrap()
        .version
        .unwrap();
    let second = store
        .set(&s, b"k", b"b", unconditional())
        .await
        .unwrap()
        .version
        .unwrap();
    assert!(second > first, "{second} is not after {first}");
}

async fn only_if_does_not_exist_refuses_existing_key(store: &dyn StateStore) {
    let s = scope("c-nx");
    let nx = || SetOptions {
        condition: SetCondition::OnlyIfDoesNotExist,
        ..SetOptions::default()
    };
    assert!(store.set(&s, b"k", b"first", nx()).await.unwrap().written);
    let second = store.set(&s, b"k", b"second", nx()).await.unwrap();
    assert!(!second.written && second.version.is_none());
    assert_eq!(
        store.get(&s, b"k").await.unwrap().value.as_deref(),
        Some(b"first".as_slice())
    );
}

async fn only_if_equal_or_does_not_exist_allows_same_value(store: &dyn StateStore) {
    let s = scope("c-nex");
    let nex = || SetOptions {
        condition: SetCondition::OnlyIfEqualOrDoesNotExist,
        ..SetOptions::default()
    };
    assert!(
        store
            .set(&s, b"lock", b"owner-a", nex())
            .await
            .unwrap()
            .written
    );
    assert!(
        store
            .set(&s, b"lock", b"owner-a", nex())
            .await
            .unwrap()
            .written,
        "same value re-acquires"
    );
    assert!(
        !store
            .set(&s, b"lock", b"owner-b", nex())
            .await
            .unwrap()
            .written,
        "other value refused"
    );
}

async fn del_reports_how_many_keys_went(store: &dyn StateStore) {
    let s = scope("c-del");
    store.set(&s, b"k", b"v", unconditional()).await.unwrap();
    assert_eq!(store.del(&s, b"k", None).await.unwrap().deleted, 1);
    assert_eq!(store.del(&s, b"k", None).await.unwrap().deleted, 0);
    assert_eq!(store.get(&s, b"k").await.unwrap().value, None);
}

async fn vdel_deletes_only_matching_value(store: &dyn StateStore) {
    let s = scope("c-vdel");
    store.set(&s, b"k", b"mine", unconditional()).await.unwrap();
    assert_eq!(
        store.vdel(&s, b"k", b"theirs", None).await.unwrap().deleted,
        -1
    );
    assert!(store.get(&s, b"k").await.unwrap().value.is_some());
    assert_eq!(
        store.vdel(&s, b"k", b"mine", None).await.unwrap().deleted,
        1
    );
    assert_eq!(
        store.vdel(&s, b"k", b"mine", None).await.unwrap().deleted,
        0
    );
}

async fn expired_keys_disappear(store: &dyn StateStore) {
    let s = scope("c-expiry");
    let options = SetOptions {
        expires: Some(Duration::from_millis(200)),
        ..SetOptions::default()
    };
    store.set(&s, b"k", b"v", options).await.unwrap();
    assert!(
        store.get(&s, b"k").await.unwrap().value.is_some(),
        "alive before expiry"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(&s, b"k").await.unwrap().value.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "key outlived its expiry by seconds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!store.keys(&s, 10).await.unwrap().contains(&b"k".to_vec()));
    let nx = SetOptions {
        condition: SetCondition::OnlyIfDoesNotExist,
        ..SetOptions::default()
    };
    assert!(
        store.set(&s, b"k", b"again", nx).await.unwrap().written,
        "an expired key is absent"
    );
    let zero = SetOptions {
        expires: Some(Duration::ZERO),
        ..SetOptions::default()
    };
    assert!(matches!(
        store.set(&s, b"z", b"v", zero).await,
        Err(StateError::InvalidExpiry)
    ));
}

async fn fencing_token_protects_key_from_older_writers(store: &dyn StateStore) {
    let s = scope("c-fencing");
    // Two lock holders, the second acquired later: its version is the newer token.
    let older = store
        .set(&s, b"lock", b"a", unconditional())
        .await
        .unwrap()
        .version
        .unwrap();
    let newer = store
        .set(&s, b"lock", b"b", unconditional())
        .await
        .unwrap()
        .version
        .unwrap();
    let fenced = |token: &Hlc| SetOptions {
        fencing_token: Some(token.clone()),
        ..SetOptions::default()
    };
    assert!(
        store
            .set(&s, b"counter", b"1", fenced(&newer))
            .await
            .unwrap()
            .written
    );
    let stale = store.set(&s, b"counter", b"2", fenced(&older)).await;
    assert!(
        matches!(stale, Err(StateError::FencingTokenLowerVersion)),
        "{stale:?}"
    );
    let unfenced = store.set(&s, b"counter", b"3", unconditional()).await;
    assert!(
        matches!(unfenced, Err(StateError::FencingTokenRequired)),
        "{unfenced:?}"
    );
    assert!(matches!(
        store.del(&s, b"counter", Some(&older)).await,
        Err(StateError::FencingTokenLowerVersion)
    ));
    assert!(matches!(
        store.vdel(&s, b"counter", b"1", None).await,
        Err(StateError::FencingTokenRequired)
    ));
    assert_eq!(
        store.get(&s, b"counter").await.unwrap().value.as_deref(),
        Some(b"1".as_slice())
    );
    assert_eq!(
        store
            .del(&s, b"counter", Some(&newer))
            .await
            .unwrap()
            .deleted,
        1
    );
}

async fn fencing_tokens_from_the_far_future_are_refused(store: &dyn StateStore) {
    let s = scope("c-fencing-future");
    let forged = Hlc::at(Duration::from_secs(u64::MAX / 4), "forger");
    let options = SetOptions {
        fencing_token: Some(forged),
        ..SetOptions::default()
    };
    let refused = store.set(&s, b"k", b"v", options).await;
    assert!(
        matches!(refused, Err(StateError::FencingTokenInFuture)),
        "{refused:?}"
    );
    assert!(
        store
            .set(&s, b"k", b"v", unconditional())
            .await
            .unwrap()
            .written,
        "key not locked"
    );
}

async fn empty_and_oversized_keys_are_refused(store: &dyn StateStore) {
    let s = scope("c-keys");
    assert!(matches!(
        store.get(&s, b"").await,
        Err(StateError::EmptyKey)
    ));
    assert!(matches!(
        store.set(&s, b"", b"v", unconditional()).await,
        Err(StateError::EmptyKey)
    ));
    let long = vec![b'k'; 257];
    assert!(matches!(
        store.get(&s, &long).await,
        Err(StateError::KeyTooLong { len: 257, max: 256 })
    ));
    assert!(matches!(
        store.del(&s, &long, None).await,
        Err(StateError::KeyTooLong { .. })
    ));
}

async fn key_and_byte_quotas_refuse_at_their_limit(store: &dyn StateStore) {
    #[allow(clippy::expect_used, reason = "literal tenant id")]
    let tenant = TenantId::new("c-quota").expect("valid tenant id");
    let s = StateScope::new(
        tenant,
        crate::StateLimits {
            max_keys: 3,
            max_bytes: 40,
            max_key_bytes: 8,
        },
    );
    for key in [b"k1", b"k2", b"k3"] {
        assert!(
            store
                .set(&s, key, b"v", unconditional())
                .await
                .unwrap()
                .written
        );
    }
    let fourth = store.set(&s, b"k4", b"v", unconditional()).await;
    assert!(
        matches!(
            fourth,
            Err(StateError::QuotaExceeded {
                what: "keys",
                limit: 3
            })
        ),
        "{fourth:?}"
    );
    assert!(
        store
            .set(&s, b"k1", b"overwrite", unconditional())
            .await
            .unwrap()
            .written,
        "overwrites need no new key"
    );
    // 3 keys of 2 bytes + values: k1=9, k2=1, k3=1 → 18 bytes; growing k2 to 30 bytes needs 47.
    let too_big = store.set(&s, b"k2", &[b'x'; 30], unconditional()).await;
    assert!(
        matches!(
            too_big,
            Err(StateError::QuotaExceeded {
                what: "bytes",
                limit: 40
            })
        ),
        "{too_big:?}"
    );
    assert_eq!(
        store.get(&s, b"k2").await.unwrap().value.as_deref(),
        Some(b"v".as_slice())
    );
    store.del(&s, b"k3", None).await.unwrap();
    assert!(
        store
            .set(&s, b"k4", b"v", unconditional())
            .await
            .unwrap()
            .written,
        "deleting frees a key"
    );
}

async fn tenants_never_see_each_others_keys(store: &dyn StateStore) {
    let (a, b) = (scope("c-tenant-a"), scope("c-tenant-b"));
    store
        .set(&a, b"secret", b"a's", unconditional())
        .await
        .unwrap();
    assert_eq!(store.get(&b, b"secret").await.unwrap().value, None);
    assert_eq!(store.del(&b, b"secret", None).await.unwrap().deleted, 0);
    assert_eq!(
        store
            .vdel(&b, b"secret", b"a's", None)
            .await
            .unwrap()
            .deleted,
        0
    );
    let nx = SetOptions {
        condition: SetCondition::OnlyIfDoesNotExist,
        ..SetOptions::default()
    };
    assert!(
        store.set(&b, b"secret", b"b's", nx).await.unwrap().written,
        "b's key is its own"
    );
    assert_eq!(
        store.get(&a, b"secret").await.unwrap().value.as_deref(),
        Some(b"a's".as_slice())
    );
    assert!(
        store
            .keys(&b, 100)
            .await
            .unwrap()
            .iter()
            .all(|k| k.as_slice() == b"secret")
    );
    // Names that look like another tenant's prefix stay inside the caller's scope.
    store
        .set(&a, b"c-tenant-b:secret", b"forged", unconditional())
        .await
        .unwrap();
    assert_eq!(
        store.get(&b, b"secret").await.unwrap().value.as_deref(),
        Some(b"b's".as_slice())
    );
}

/// A partition of `tenant`'s deployment `deployment`.
pub fn partition(
    tenant: &str,
    deployment: &str,
    topic: &str,
    number: i32,
) -> crate::partitions::PartitionId {
    #[allow(clippy::expect_used, reason = "test tenants are literals")]
    crate::partitions::PartitionId {
        tenant: TenantId::new(tenant).expect("valid tenant id"),
        deployment: deployment.to_owned(),
        topic: topic.to_owned(),
        partition: number,
    }
}

/// Runs every check of the partition checkpoint protocol against `store`; `tag` keeps the
/// partitions of one run apart from earlier runs on a shared server.
pub async fn partition_conformance(store: &dyn crate::partitions::PartitionCheckpoints, tag: &str) {
    use crate::partitions::{Checkpoint, CheckpointError, MAX_CHECKPOINT_BYTES};
    let deployment = format!("win-{tag}");
    let p = partition("tenant-a", &deployment, "in", 0);

    // First claim: epoch 1, nothing stored.
    let (first, stored) = store.claim(&p).await.unwrap();
    assert_eq!(first.epoch, 1);
    assert_eq!(stored, None);
    let one = Checkpoint {
        offset: 10,
        state: b"count=10".to_vec(),
    };
    store.checkpoint(&first, &one).await.unwrap();

    // Offsets never go back under one lease; equal is fine (nothing new read).
    let back = Checkpoint {
        offset: 9,
        state: b"count=9".to_vec(),
    };
    match store.checkpoint(&first, &back).await {
        Err(CheckpointError::OffsetRegressed {
            offset: 9,
            stored: 10,
        }) => {}
        other => panic!("an offset going back was not refused: {other:?}"),
    }
    store.checkpoint(&first, &one).await.unwrap();

    // A new owner claims: epoch 2, the checkpoint (state and offset together).
    let (second, stored) = store.claim(&p).await.unwrap();
    assert_eq!(second.epoch, 2);
    assert_eq!(stored.as_ref(), Some(&one));

    // The stale owner is fenced, and what the new owner loaded stays.
    let stale = Checkpoint {
        offset: 20,
        state: b"count=20".to_vec(),
    };
    match store.checkpoint(&first, &stale).await {
        Err(CheckpointError::Fenced {
            held: 1,
            current: 2,
        }) => {}
        other => panic!("a stale owner was not fenced: {other:?}"),
    }
    let (third, stored) = store.claim(&p).await.unwrap();
    assert_eq!(third.epoch, 3);
    assert_eq!(
        stored.as_ref(),
        Some(&one),
        "the fenced write changed the checkpoint"
    );
    assert!(matches!(
        store.checkpoint(&second, &stale).await,
        Err(CheckpointError::Fenced {
            held: 2,
            current: 3
        })
    ));
    store.checkpoint(&third, &stale).await.unwrap();

    // Too large: refused before it reaches the store.
    let huge = Checkpoint {
        offset: 21,
        state: vec![0; MAX_CHECKPOINT_BYTES + 1],
    };
    assert!(matches!(
        store.checkpoint(&third, &huge).await,
        Err(CheckpointError::TooLarge { .. })
    ));

    // Walls: another tenant's partition of the same name, another deployment, topic or
    // partition number, and names that would meet if joined without lengths, are all apart.
    for other in [
        partition("tenant-b", &deployment, "in", 0),
        partition("tenant-a", &format!("{deployment}x"), "in", 0),
        partition("tenant-a", &deployment, "in2", 0),
        partition("tenant-a", &deployment, "in", 1),
        partition("tenant-a", &format!("{deployment}:2"), "in", 0),
        partition("tenant-a", &deployment, "2:in", 0),
    ] {
        let (lease, stored) = store.claim(&other).await.unwrap();
        assert_eq!(
            (lease.epoch, stored),
            (1, None),
            "{other:?} shares a checkpoint"
        );
    }

    handoff_counts_every_record_once(store, &deployment).await;
}

/// A window counting records of one partition moves from owner A to owner B mid-stream: A
/// checkpoints every 7 records, reads 5 more past its last checkpoint and is then replaced; B
/// loads the checkpoint, reads from its offset, and the final count is exactly the number of
/// records (none lost, none counted twice); A's late checkpoint is fenced.
async fn handoff_counts_every_record_once(
    store: &dyn crate::partitions::PartitionCheckpoints,
    deployment: &str,
) {
    use crate::partitions::{Checkpoint, CheckpointError};
    let records: i64 = 100;
    let p = partition("tenant-a", deployment, "handoff", 0);
    let encode = |count: i64| count.to_string().into_bytes();
    let decode = |state: &[u8]| -> i64 { std::str::from_utf8(state).unwrap().parse().unwrap() };

    let (a, _) = store.claim(&p).await.unwrap();
    let mut count = 0;
    let mut offset = 0;
    while offset < 40 {
        count += 1;
        offset += 1;
        if offset % 7 == 0 {
            store
                .checkpoint(
                    &a,
                    &Checkpoint {
                        offset,
                        state: encode(count),
                    },
                )
                .await
                .unwrap();
        }
    }
    // A folds five more, then the group gives the partition to B.
    for _ in 0..5 {
        count += 1;
        offset += 1;
    }
    let (b, stored) = store.claim(&p).await.unwrap();
    let stored = stored.unwrap();
    assert_eq!(stored.offset, 35, "the last checkpoint A made");
    assert!(matches!(
        store
            .checkpoint(
                &a,
                &Checkpoint {
                    offset,
                    state: encode(count)
                }
            )
            .await,
        Err(CheckpointError::Fenced { .. })
    ));
    let mut count = decode(&stored.state);
    let mut offset = stored.offset;
    while offset < records {
        count += 1;
        offset += 1;
    }
    store
        .checkpoint(
            &b,
            &Checkpoint {
                offset,
                state: encode(count),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        count, records,
        "records lost or counted twice across the handoff"
    );
}
