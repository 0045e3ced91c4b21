//! Dead letters and device credentials in the SQLite control store, on real files: numbering
//! across restarts, eviction at the byte limit and the count cap, the walls between tenants,
//! the upgrade from schema 3, and device passwords (hash only, constant-time check, quota).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use weir_api::TenantId;
use weir_api::rest::DeadLetter;
use weir_store::{
    ControlStore, DeadLetterCounts, MAX_DEAD_LETTERS, SqliteControlStore, StoreError, TenantRecord,
};
use weir_tenants::Quotas;

fn id(text: &str) -> TenantId {
    TenantId::new(text).unwrap()
}

fn tenant(text: &str) -> TenantRecord {
    TenantRecord {
        id: id(text),
        display_name: text.to_owned(),
        quotas: Quotas::default(),
        suspended: false,
        created_at: 0,
        instance: String::new(),
    }
}

/// A letter of `deployment` whose `byte_len` is exactly `bytes` (at least 10): deployment
/// `d`+digits, node `n`, topic `t`, detail `x`, and the rest payload.
fn letter(deployment: &str, bytes: usize) -> DeadLetter {
    let fixed = deployment.len() + 3;
    DeadLetter {
        seq: 999,
        deployment: deployment.to_owned(),
        node: "n".to_owned(),
        reason: "trap".to_owned(),
        detail: "x".to_owned(),
        topic: "t".to_owned(),
        payload: "p".repeat(bytes - fixed),
        input_bytes: bytes as u64,
        payload_truncated: false,
        at_ms: 1_700_000_000_000,
    }
}

fn seqs(letters: &[DeadLetter]) -> Vec<u64> {
    letters.iter().map(|l| l.seq).collect()
}

async fn all(store: &SqliteControlStore, tenant: &str) -> Vec<DeadLetter> {
    store
        .dead_letters(&id(tenant), None, 0, usize::MAX, false)
        .await
        .unwrap()
}

const ROOMY: u64 = 1 << 30;

#[tokio::test]
async fn letters_keep_every_field_and_are_read_oldest_first_after_a_number() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    let mut first = letter("conv", 100);
    first.payload = "ünïcode payload".to_owned();
    first.payload_truncated = true;
    first.input_bytes = 123_456;
    let appended = store
        .append_dead_letters(
            &id("acme"),
            vec![first.clone(), letter("other", 50), letter("conv", 60)],
            ROOMY,
        )
        .await
        .unwrap();
    assert_eq!((appended.seqs, appended.evicted), (vec![1, 2, 3], 0));
    let read = all(&store, "acme").await;
    assert_eq!(
        read[0],
        DeadLetter { seq: 1, ..first },
        "every field kept, the number the store's"
    );
    assert_eq!(seqs(&read), [1, 2, 3]);
    let conv = store
        .dead_letters(&id("acme"), Some("conv"), 0, 10, false)
        .await
        .unwrap();
    assert_eq!(seqs(&conv), [1, 3]);
    let after = store
        .dead_letters(&id("acme"), None, 1, 1, false)
        .await
        .unwrap();
    assert_eq!(seqs(&after), [2], "after 1, at most 1");
    let newest = store
        .dead_letters(&id("acme"), None, 0, 2, true)
        .await
        .unwrap();
    assert_eq!(seqs(&newest), [2, 3], "the newest 2, oldest first");
    let newest_conv = store
        .dead_letters(&id("acme"), Some("conv"), 0, 1, true)
        .await
        .unwrap();
    assert_eq!(seqs(&newest_conv), [3], "the newest of one deployment");
    assert!(
        store
            .dead_letters(&id("acme"), Some("nothing"), 0, 10, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .append_dead_letters(&id("acme"), Vec::new(), ROOMY)
            .await
            .unwrap()
            .seqs,
        Vec::<u64>::new()
    );
    // A letter without a time gets the time of the append.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let untimed = DeadLetter {
        at_ms: 0,
        ..letter("conv", 20)
    };
    store
        .append_dead_letters(&id("acme"), vec![untimed], ROOMY)
        .await
        .unwrap();
    let stamped = u128::from(all(&store, "acme").await[3].at_ms);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(
        (before..=after).contains(&stamped),
        "{before} {stamped} {after}"
    );
}

#[tokio::test]
async fn numbers_and_counters_survive_a_restart_and_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    {
        let store = SqliteControlStore::open(&path).unwrap();
        store.create_tenant(&tenant("acme")).await.unwrap();
        let appended = store
            .append_dead_letters(
                &id("acme"),
                vec![letter("d", 100), letter("d", 100), letter("d", 100)],
                ROOMY,
            )
            .await
            .unwrap();
        assert_eq!(appended.seqs, [1, 2, 3]);
        // The two oldest are evicted by a lowered quota; their numbers are spent.
        assert_eq!(store.trim_dead_letters(&id("acme"), 100).await.unwrap(), 2);
        assert_eq!(seqs(&all(&store, "acme").await), [3]);
    }
    let store = SqliteControlStore::open(&path).unwrap();
    assert_eq!(
        seqs(&all(&store, "acme").await),
        [3],
        "kept across the restart"
    );
    assert_eq!(
        store.dead_letter_counts(&id("acme")).await.unwrap(),
        DeadLetterCounts {
            appended: 3,
            evicted: 2,
            kept: 1,
            kept_bytes: 100
        }
    );
    let appended = store
        .append_dead_letters(&id("acme"), vec![letter("d", 10)], ROOMY)
        .await
        .unwrap();
    assert_eq!(appended.seqs, [4], "numbering goes on where it stopped");
    // Evicting everything spends no number either.
    assert_eq!(store.trim_dead_letters(&id("acme"), 0).await.unwrap(), 2);
    assert!(all(&store, "acme").await.is_empty());
    drop(store);
    let store = SqliteControlStore::open(&path).unwrap();
    let appended = store
        .append_dead_letters(&id("acme"), vec![letter("d", 10)], ROOMY)
        .await
        .unwrap();
    assert_eq!(appended.seqs, [5]);
    assert_eq!(
        store.dead_letter_counts(&id("acme")).await.unwrap().evicted,
        4
    );
}

#[tokio::test]
async fn letters_that_fit_the_byte_limit_exactly_stay_and_one_byte_more_evicts_the_oldest() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    let t = id("acme");
    let appended = store
        .append_dead_letters(
            &t,
            vec![letter("d", 100), letter("d", 100), letter("d", 100)],
            300,
        )
        .await
        .unwrap();
    assert_eq!(appended.evicted, 0, "300 bytes in 300: all kept");
    assert_eq!(seqs(&all(&store, "acme").await), [1, 2, 3]);
    // A second call with exactly one byte more than fits.
    let mut one = letter("d", 10);
    one.payload.clear();
    one.detail.clear();
    one.topic.clear();
    one.deployment = "d".to_owned();
    one.node.clear();
    assert_eq!(one.byte_len(), 1);
    let appended = store.append_dead_letters(&t, vec![one], 300).await.unwrap();
    assert_eq!((appended.seqs, appended.evicted), (vec![4], 1));
    assert_eq!(seqs(&all(&store, "acme").await), [2, 3, 4]);
    let counts = store.dead_letter_counts(&t).await.unwrap();
    assert_eq!(
        (counts.kept, counts.kept_bytes, counts.evicted),
        (3, 201, 1)
    );
    // The limit is checked again at each call: the same bytes fit under the same limit.
    assert_eq!(store.trim_dead_letters(&t, 201).await.unwrap(), 0);
    assert_eq!(store.trim_dead_letters(&t, 200).await.unwrap(), 1);
    assert_eq!(seqs(&all(&store, "acme").await), [3, 4]);
    // A letter larger than the whole limit goes at once, with everything older.
    let appended = store
        .append_dead_letters(&t, vec![letter("d", 301)], 300)
        .await
        .unwrap();
    assert_eq!((appended.seqs, appended.evicted), (vec![5], 3));
    assert!(all(&store, "acme").await.is_empty());
    assert_eq!(store.dead_letter_counts(&t).await.unwrap().evicted, 5);
}

#[tokio::test]
async fn at_most_ten_thousand_letters_are_kept_per_tenant() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    let t = id("acme");
    let cap = usize::try_from(MAX_DEAD_LETTERS).unwrap();
    assert_eq!(cap, 10_000);
    let mut evicted = 0;
    for _ in 0..4 {
        evicted += store
            .append_dead_letters(&t, vec![letter("d", 10); cap / 4], ROOMY)
            .await
            .unwrap()
            .evicted;
    }
    assert_eq!(evicted, 0, "exactly the cap is kept");
    let appended = store
        .append_dead_letters(&t, vec![letter("d", 10)], ROOMY)
        .await
        .unwrap();
    assert_eq!((appended.seqs, appended.evicted), (vec![10_001], 1));
    let kept = all(&store, "acme").await;
    assert_eq!(kept.len(), cap);
    assert_eq!((kept[0].seq, kept[cap - 1].seq), (2, 10_001));
    // One batch larger than the cap keeps its newest.
    let appended = store
        .append_dead_letters(&t, vec![letter("d", 10); cap + 5], ROOMY)
        .await
        .unwrap();
    assert_eq!(appended.evicted, u64::try_from(cap + 5).unwrap());
    let kept = all(&store, "acme").await;
    assert_eq!(kept.len(), cap);
    assert_eq!(kept[0].seq, 10_001 + 6);
}

#[tokio::test]
async fn one_tenants_flood_never_evicts_or_shows_another_tenants_letters() {
    let store = SqliteControlStore::in_memory().unwrap();
    for t in ["flood", "quiet"] {
        store.create_tenant(&tenant(t)).await.unwrap();
    }
    let quiet = store
        .append_dead_letters(&id("quiet"), vec![letter("q", 100)], 100)
        .await
        .unwrap();
    assert_eq!(quiet.seqs, [1]);
    // The flood passes both its byte limit and the count cap many times over.
    for _ in 0..3 {
        store
            .append_dead_letters(&id("flood"), vec![letter("q", 50); 5_000], 10_000)
            .await
            .unwrap();
    }
    let flood = all(&store, "flood").await;
    assert_eq!(flood.len(), 200, "10,000 bytes of 50-byte letters");
    assert_eq!(flood[0].seq, 14_801, "numbered for the flood alone");
    let kept = all(&store, "quiet").await;
    assert_eq!(seqs(&kept), [1], "the quiet tenant keeps its letter");
    assert_eq!(
        store
            .dead_letters(&id("quiet"), Some("q"), 0, 100, false)
            .await
            .unwrap()
            .len(),
        1,
        "a deployment of the same name in another tenant adds nothing"
    );
    assert_eq!(
        store.dead_letter_counts(&id("quiet")).await.unwrap(),
        DeadLetterCounts {
            appended: 1,
            evicted: 0,
            kept: 1,
            kept_bytes: 100
        }
    );
    // A trim of one tenant touches only that tenant.
    assert_eq!(store.trim_dead_letters(&id("flood"), 0).await.unwrap(), 200);
    assert_eq!(seqs(&all(&store, "quiet").await), [1]);
    // A tenant that does not exist has no letters, and cannot be given any.
    assert!(all(&store, "ghost").await.is_empty());
    assert!(matches!(
        store
            .append_dead_letters(&id("ghost"), vec![letter("d", 10)], ROOMY)
            .await,
        Err(StoreError::NoTenant(_))
    ));
}

#[tokio::test]
async fn a_deleted_deployment_leaves_its_letters_and_a_deleted_tenant_takes_them() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    store
        .put_deployment(
            &weir_store::DeploymentRecord {
                tenant: id("acme"),
                id: "d".to_owned(),
                spec: serde_json::json!({}),
                status: "running".to_owned(),
                created_at: 0,
            },
            &Quotas::default(),
        )
        .await
        .unwrap();
    store
        .append_dead_letters(&id("acme"), vec![letter("d", 20)], ROOMY)
        .await
        .unwrap();
    assert!(store.delete_deployment(&id("acme"), "d").await.unwrap());
    assert_eq!(
        seqs(
            &store
                .dead_letters(&id("acme"), Some("d"), 0, 10, false)
                .await
                .unwrap()
        ),
        [1],
        "the evidence stays"
    );
    store
        .create_device(&id("acme"), "sensor", &Quotas::default())
        .await
        .unwrap();
    store.delete_tenant(&id("acme")).await.unwrap().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    assert!(all(&store, "acme").await.is_empty());
    assert_eq!(
        store.dead_letter_counts(&id("acme")).await.unwrap(),
        DeadLetterCounts::default(),
        "a tenant created again starts from nothing"
    );
    assert!(store.devices(&id("acme")).await.unwrap().is_empty());
    assert_eq!(
        store
            .append_dead_letters(&id("acme"), vec![letter("d", 20)], ROOMY)
            .await
            .unwrap()
            .seqs,
        [1]
    );
}

#[tokio::test]
async fn payloads_over_64_kib_are_cut_at_a_character_boundary() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    let mut long = letter("d", 10);
    // 'é' is two bytes: 64 KiB falls in the middle of one.
    long.payload = format!("a{}", "é".repeat(40_000));
    store
        .append_dead_letters(&id("acme"), vec![long], ROOMY)
        .await
        .unwrap();
    let kept = &all(&store, "acme").await[0];
    assert_eq!(kept.payload.len(), DeadLetter::MAX_PAYLOAD_BYTES - 1);
    assert!(kept.payload_truncated);
    assert_eq!(
        store
            .dead_letter_counts(&id("acme"))
            .await
            .unwrap()
            .kept_bytes,
        kept.byte_len(),
        "the kept letter is what is counted"
    );
}

#[tokio::test]
async fn a_schema_3_store_upgrades_and_its_tenants_get_the_new_quota_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    {
        let store = SqliteControlStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 7);
        store.create_tenant(&tenant("old")).await.unwrap();
    }
    // Back to what version 3 left: without the new tables, and quotas stored before
    // `max_devices` existed.
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "DROP TABLE dead_letters; DROP TABLE dead_letter_counters; DROP TABLE devices;
                 DROP TABLE usage_totals; DROP TABLE usage_periods; DROP TABLE module_logs;
                 DROP TABLE module_log_counters; DROP TABLE deployment_revisions;
                 UPDATE tenants SET quotas = json_remove(quotas, '$.max_devices');
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        let quotas: String = connection
            .query_row("SELECT quotas FROM tenants", [], |r| r.get(0))
            .unwrap();
        assert!(!quotas.contains("max_devices"));
    }
    let store = SqliteControlStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 7);
    let old = store.tenant(&id("old")).await.unwrap().unwrap();
    assert_eq!(old.quotas.max_devices, 100);
    assert_eq!(
        store
            .append_dead_letters(&id("old"), vec![letter("d", 10)], ROOMY)
            .await
            .unwrap()
            .seqs,
        [1]
    );
    store
        .create_device(&id("old"), "sensor", &old.quotas)
        .await
        .unwrap();
}

#[tokio::test]
async fn device_passwords_are_shown_once_kept_as_a_hash_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let store = SqliteControlStore::open(&path).unwrap();
    for t in ["acme", "globex", "initech"] {
        store.create_tenant(&tenant(t)).await.unwrap();
    }
    let created = store
        .create_device(&id("acme"), "sensor-1", &Quotas::default())
        .await
        .unwrap();
    assert_eq!(created.device.username(), "sensor-1@acme");
    assert_eq!(created.password.len(), 64);
    assert!(created.password.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        !format!("{created:?}").contains(&created.password),
        "Debug hides the password"
    );
    let other = store
        .create_device(&id("globex"), "sensor-1", &Quotas::default())
        .await
        .unwrap();
    assert_ne!(created.password, other.password);
    assert!(matches!(
        store
            .create_device(&id("acme"), "sensor-1", &Quotas::default())
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let password = created.password.as_str();
    assert_eq!(
        store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        Some(id("acme"))
    );
    assert_eq!(
        store
            .verify_device("sensor-1@globex", other.password.as_bytes())
            .await
            .unwrap(),
        Some(id("globex"))
    );
    // Wrong password, another tenant's password, near misses, and usernames that are not one.
    for (username, password) in [
        ("sensor-1@acme", "0".repeat(64).as_str()),
        ("sensor-1@acme", other.password.as_str()),
        ("sensor-1@globex", password),
        ("sensor-1@acme", ""),
        ("sensor-1@acme", password.get(..63).unwrap()),
        ("sensor-1@acme", format!("{password}0").as_str()),
        ("sensor-1@acme", password.to_uppercase().as_str()),
        ("sensor-1", password),
        ("sensor-1@", password),
        ("@acme", password),
        ("sensor-1@ACME", password),
        ("sensor-1@acme@acme", password),
        ("", password),
    ] {
        assert_eq!(
            store
                .verify_device(username, password.as_bytes())
                .await
                .unwrap(),
            None,
            "{username} / {password}"
        );
    }
    assert_eq!(
        store
            .verify_device("sensor-1@acme", &[0xff, 0xfe, 0x00])
            .await
            .unwrap(),
        None,
        "a password that is not text is no device's"
    );
    // Only the hash is on disk.
    drop(store);
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes())
        );
    }
    let store = SqliteControlStore::open(&path).unwrap();
    assert_eq!(
        store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        Some(id("acme")),
        "the check survives a restart"
    );
    // A suspended tenant's devices are refused; lifting the suspension lets them in again.
    let mut acme = store.tenant(&id("acme")).await.unwrap().unwrap();
    acme.suspended = true;
    store.update_tenant(&acme).await.unwrap();
    assert_eq!(
        store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        None
    );
    acme.suspended = false;
    store.update_tenant(&acme).await.unwrap();
    // Another tenant cannot delete it; its own tenant can, and then it is refused.
    assert!(
        !store
            .delete_device(&id("initech"), "sensor-1")
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        Some(id("acme"))
    );
    assert!(store.delete_device(&id("acme"), "sensor-1").await.unwrap());
    assert!(!store.delete_device(&id("acme"), "sensor-1").await.unwrap());
    assert_eq!(
        store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .verify_device("sensor-1@globex", other.password.as_bytes())
            .await
            .unwrap(),
        Some(id("globex")),
        "globex's device of the same name is untouched"
    );
}

#[tokio::test]
async fn devices_are_listed_per_tenant_and_bounded_by_max_devices() {
    let store = SqliteControlStore::in_memory().unwrap();
    for t in ["acme", "globex"] {
        store.create_tenant(&tenant(t)).await.unwrap();
    }
    let quotas = Quotas {
        max_devices: 2,
        ..Quotas::default()
    };
    for name in ["b", "a"] {
        store
            .create_device(&id("acme"), name, &quotas)
            .await
            .unwrap();
    }
    assert!(matches!(
        store.create_device(&id("acme"), "c", &quotas).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    assert!(
        matches!(
            store.create_device(&id("acme"), "a", &quotas).await,
            Err(StoreError::Conflict { .. })
        ),
        "a duplicate at the limit is a conflict"
    );
    let names: Vec<String> = store
        .devices(&id("acme"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(store.devices(&id("globex")).await.unwrap().is_empty());
    store
        .create_device(&id("globex"), "a", &quotas)
        .await
        .unwrap();
    assert!(store.delete_device(&id("acme"), "a").await.unwrap());
    store
        .create_device(&id("acme"), "c", &quotas)
        .await
        .unwrap();
    assert!(matches!(
        store.create_device(&id("ghost"), "a", &quotas).await,
        Err(StoreError::NoTenant(_))
    ));
}
