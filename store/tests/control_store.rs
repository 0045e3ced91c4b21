//! The SQLite control store on a real file: resources, tenant walls, cascading deletes,
//! persistence across reopen, and the blob store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use serde_json::json;
use weir_api::{ModuleDigest, TenantId};
use weir_store::{
    BlobStore, ControlStore, DeploymentRecord, EndpointRecord, GraphRecord, ModuleRecord,
    SqliteControlStore, StoreError, TenantRecord, TokenRecord, TokenScope,
};
use weir_tenants::{Quotas, Role};

fn tenant(id: &str) -> TenantRecord {
    TenantRecord {
        id: TenantId::new(id).unwrap(),
        display_name: id.to_uppercase(),
        quotas: Quotas::default(),
        suspended: false,
        created_at: 0,
        instance: String::new(),
    }
}

fn digest(byte: &str) -> ModuleDigest {
    ModuleDigest::from_sha256_hex(&byte.repeat(64)).unwrap()
}

fn module(tenant: &str, name: &str, version: &str) -> ModuleRecord {
    ModuleRecord {
        tenant: TenantId::new(tenant).unwrap(),
        name: name.to_owned(),
        version: version.to_owned(),
        digest: digest("a"),
        size: 1234,
        operators: vec!["map".to_owned()],
        created_at: 0,
    }
}

fn deployment(tenant: &str, id: &str) -> DeploymentRecord {
    DeploymentRecord {
        tenant: TenantId::new(tenant).unwrap(),
        id: id.to_owned(),
        spec: json!({"graph": "g@1"}),
        status: "pending".to_owned(),
        created_at: 0,
    }
}

fn id(text: &str) -> TenantId {
    TenantId::new(text).unwrap()
}

#[tokio::test]
async fn tenants_are_created_once_updated_and_listed() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    assert!(matches!(
        store.create_tenant(&tenant("acme")).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut updated = tenant("acme");
    updated.quotas.max_modules = 3;
    updated.suspended = true;
    assert!(store.update_tenant(&updated).await.unwrap());
    let read = store.tenant(&id("acme")).await.unwrap().unwrap();
    assert_eq!((read.quotas.max_modules, read.suspended), (3, true));
    assert!(!store.update_tenant(&tenant("ghost")).await.unwrap());
    store.create_tenant(&tenant("beta")).await.unwrap();
    let ids: Vec<String> = store
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(ids, ["acme", "beta"]);
}

#[tokio::test]
async fn every_query_is_walled_by_tenant() {
    let store = SqliteControlStore::in_memory().unwrap();
    for t in ["a", "b"] {
        store.create_tenant(&tenant(t)).await.unwrap();
    }
    store
        .put_module(&module("a", "temperature", "1.0.0"), &Quotas::default())
        .await
        .unwrap();
    store
        .put_graph(
            &GraphRecord {
                tenant: id("a"),
                name: "g".to_owned(),
                version: "1".to_owned(),
                digest: digest("b"),
                created_at: 0,
            },
            &Quotas::default(),
        )
        .await
        .unwrap();
    store
        .put_deployment(&deployment("a", "d1"), &Quotas::default())
        .await
        .unwrap();

    assert!(
        store
            .module(&id("b"), "temperature", "1.0.0")
            .await
            .unwrap()
            .is_none(),
        "b cannot read a's module"
    );
    assert!(store.modules(&id("b")).await.unwrap().is_empty());
    assert!(
        store
            .delete_module(&id("b"), "temperature", "1.0.0")
            .await
            .unwrap()
            .is_none(),
        "b cannot delete a's module"
    );
    assert!(store.graph(&id("b"), "g", "1").await.unwrap().is_none());
    assert!(store.deployment(&id("b"), "d1").await.unwrap().is_none());
    assert!(
        !store
            .set_deployment_status(&id("b"), "d1", "stopped", "hijack")
            .await
            .unwrap()
    );
    assert!(!store.delete_deployment(&id("b"), "d1").await.unwrap());
    assert!(
        store
            .deployment_history(&id("b"), "d1")
            .await
            .unwrap()
            .is_empty()
    );
    // The same names are free in b's space.
    store
        .put_module(&module("b", "temperature", "1.0.0"), &Quotas::default())
        .await
        .unwrap();
    store
        .put_deployment(&deployment("b", "d1"), &Quotas::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .deployment(&id("a"), "d1")
            .await
            .unwrap()
            .unwrap()
            .tenant,
        id("a")
    );
}

#[tokio::test]
async fn duplicate_versions_conflict_and_unknown_tenants_are_named() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("a")).await.unwrap();
    store
        .put_module(&module("a", "m", "1"), &Quotas::default())
        .await
        .unwrap();
    let error = store
        .put_module(&module("a", "m", "1"), &Quotas::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Conflict { what } if what == "module m@1"),
        "{error}"
    );
    store
        .put_module(&module("a", "m", "2"), &Quotas::default())
        .await
        .unwrap();
    let error = store
        .put_module(&module("nobody", "m", "1"), &Quotas::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::NoTenant(t) if t.as_str() == "nobody"),
        "{error}"
    );
}

#[tokio::test]
async fn tokens_are_revoked_only_within_their_tenant() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("a")).await.unwrap();
    store.create_tenant(&tenant("b")).await.unwrap();
    let token = |jti: &str, t: Option<&str>, role| TokenRecord {
        id: jti.to_owned(),
        tenant: t.map(id),
        subject: "s".to_owned(),
        role,
        expires_at: u64::MAX >> 2,
        revoked: false,
        created_at: 0,
    };
    store
        .put_token(&token("ta", Some("a"), Role::Owner))
        .await
        .unwrap();
    store
        .put_token(&token("root", None, Role::Admin))
        .await
        .unwrap();
    assert!(
        !store
            .revoke_token(TokenScope::Tenant(&id("b")), "ta")
            .await
            .unwrap(),
        "b cannot revoke a's token"
    );
    assert!(
        !store
            .revoke_token(TokenScope::Tenant(&id("b")), "root")
            .await
            .unwrap(),
        "nor the admin's"
    );
    assert!(store.revoked_token_ids().await.unwrap().is_empty());
    assert!(
        store
            .revoke_token(TokenScope::Tenant(&id("a")), "ta")
            .await
            .unwrap()
    );
    assert_eq!(store.revoked_token_ids().await.unwrap(), ["ta"]);
    assert_eq!(
        store.tokens(TokenScope::Platform).await.unwrap()[0].role,
        Role::Admin
    );
    assert!(store.tokens(TokenScope::Tenant(&id("a"))).await.unwrap()[0].revoked);
    assert_eq!(store.tokens(TokenScope::All).await.unwrap().len(), 2);
    assert!(
        store.revoke_token(TokenScope::All, "root").await.unwrap(),
        "the admin's view"
    );
}

#[tokio::test]
async fn deleting_a_tenant_deletes_everything_it_owns() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("gone")).await.unwrap();
    store.create_tenant(&tenant("stays")).await.unwrap();
    store
        .put_module(&module("gone", "m", "1"), &Quotas::default())
        .await
        .unwrap();
    store
        .put_module(&module("stays", "m", "1"), &Quotas::default())
        .await
        .unwrap();
    store
        .put_deployment(&deployment("gone", "d"), &Quotas::default())
        .await
        .unwrap();
    store
        .set_deployment_status(&id("gone"), "d", "running", "placed")
        .await
        .unwrap();
    let deleted = store.delete_tenant(&id("gone")).await.unwrap().unwrap();
    assert_eq!(deleted.blobs, [digest("a")], "the blobs it referenced");
    assert!(
        store.blob_referenced(&digest("a")).await.unwrap(),
        "still referenced by the tenant that stays"
    );
    assert!(store.tenant(&id("gone")).await.unwrap().is_none());
    assert!(store.modules(&id("gone")).await.unwrap().is_empty());
    assert!(store.all_deployments().await.unwrap().is_empty());
    assert!(
        store
            .deployment_history(&id("gone"), "d")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.modules(&id("stays")).await.unwrap().len(), 1);
    assert!(store.delete_tenant(&id("gone")).await.unwrap().is_none());
}

#[tokio::test]
async fn deployments_keep_their_status_history() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("a")).await.unwrap();
    store
        .put_deployment(&deployment("a", "d"), &Quotas::default())
        .await
        .unwrap();
    assert!(
        store
            .set_deployment_status(&id("a"), "d", "running", "placed on executor-1")
            .await
            .unwrap()
    );
    assert!(
        store
            .set_deployment_status(&id("a"), "d", "paused", "by owner")
            .await
            .unwrap()
    );
    let history: Vec<(String, String)> = store
        .deployment_history(&id("a"), "d")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.status, c.detail))
        .collect();
    assert_eq!(
        history,
        [
            ("pending".into(), "created".into()),
            ("running".into(), "placed on executor-1".into()),
            ("paused".into(), "by owner".into())
        ]
    );
    assert_eq!(
        store
            .deployment(&id("a"), "d")
            .await
            .unwrap()
            .unwrap()
            .status,
        "paused"
    );
}

#[tokio::test]
async fn everything_survives_a_reopen_and_migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    {
        let store = SqliteControlStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 7);
        store.create_tenant(&tenant("acme")).await.unwrap();
        store
            .put_module(&module("acme", "m", "1"), &Quotas::default())
            .await
            .unwrap();
        store
            .put_deployment(&deployment("acme", "d"), &Quotas::default())
            .await
            .unwrap();
    }
    let reopened = SqliteControlStore::open(&path).unwrap();
    assert_eq!(reopened.schema_version().unwrap(), 7);
    assert_eq!(
        reopened.modules(&id("acme")).await.unwrap(),
        vec![ModuleRecord {
            created_at: reopened.modules(&id("acme")).await.unwrap()[0].created_at,
            ..module("acme", "m", "1")
        }]
    );
    assert_eq!(
        reopened.all_deployments().await.unwrap()[0].spec,
        json!({"graph": "g@1"})
    );
}

#[tokio::test]
async fn blobs_are_stored_by_digest_and_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    let bytes = bytes::Bytes::from_static(b"\0asm component bytes");
    let first = blobs.put(bytes.clone()).await.unwrap().digest().clone();
    let again = blobs.put(bytes).await.unwrap().digest().clone();
    assert_eq!(first, again);
    let hex = first.as_str().strip_prefix("sha256:").unwrap();
    let path = dir.path().join("blobs/sha256").join(hex);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"\0asm component bytes",
        "stored under its digest"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        blobs.get(&first).await.unwrap().unwrap(),
        b"\0asm component bytes"
    );
    assert!(blobs.get(&digest("f")).await.unwrap().is_none());
    let reopened = BlobStore::open(dir.path().join("blobs")).unwrap();
    assert!(reopened.get(&first).await.unwrap().is_some());
}

#[tokio::test]
async fn a_blob_goes_with_its_last_reference_but_never_while_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteControlStore::in_memory().unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    for t in ["a", "b"] {
        store.create_tenant(&tenant(t)).await.unwrap();
    }
    let bytes = bytes::Bytes::from_static(b"shared bytes");
    let pinned = blobs.put(bytes.clone()).await.unwrap();
    let shared = pinned.digest().clone();
    assert!(
        !blobs.collect(&store, &shared).await.unwrap(),
        "pinned: its record is being written"
    );
    for t in ["a", "b"] {
        store
            .put_module(
                &ModuleRecord {
                    digest: shared.clone(),
                    ..module(t, "m", "1")
                },
                &Quotas::default(),
            )
            .await
            .unwrap();
    }
    drop(pinned);
    let released = store.delete_module(&id("a"), "m", "1").await.unwrap();
    assert_eq!(released.as_ref(), Some(&shared));
    assert!(!blobs.collect(&store, &shared).await.unwrap(), "b's module");
    assert!(blobs.get(&shared).await.unwrap().is_some());
    let deleted = store.delete_tenant(&id("b")).await.unwrap().unwrap();
    assert_eq!(deleted.blobs, std::slice::from_ref(&shared));
    assert!(
        blobs.collect(&store, &shared).await.unwrap(),
        "the last one"
    );
    assert!(blobs.get(&shared).await.unwrap().is_none());
    // A write after the collection brings the bytes back.
    let pinned = blobs.put(bytes).await.unwrap();
    assert!(blobs.get(pinned.digest()).await.unwrap().is_some());
    drop(pinned);
    // Unreferenced leftovers go at the next start's sweep.
    let swept = blobs
        .sweep(
            store
                .referenced_blobs()
                .await
                .unwrap()
                .into_iter()
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(swept, [shared]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn count_quotas_are_checked_in_the_writes_transaction() {
    let store = std::sync::Arc::new(SqliteControlStore::in_memory().unwrap());
    store.create_tenant(&tenant("a")).await.unwrap();
    let quotas = Quotas {
        max_modules: 3,
        max_graphs: 2,
        max_deployments: 1,
        ..Quotas::default()
    };
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (store, quotas) = (store.clone(), quotas.clone());
        writes.spawn(async move {
            let version = i.to_string();
            let module = store.put_module(&module("a", "m", &version), &quotas).await;
            let graph = GraphRecord {
                tenant: id("a"),
                name: "g".to_owned(),
                version: version.clone(),
                digest: digest("b"),
                created_at: 0,
            };
            let graph = store.put_graph(&graph, &quotas).await;
            let deployment = store
                .put_deployment(&deployment("a", &format!("d{i}")), &quotas)
                .await;
            [module.is_ok(), graph.is_ok(), deployment.is_ok()]
        });
    }
    let mut stored = [0; 3];
    for outcome in writes.join_all().await {
        for (count, ok) in stored.iter_mut().zip(outcome) {
            *count += usize::from(ok);
        }
    }
    assert_eq!(stored, [3, 2, 1]);
    assert!(matches!(
        store.put_module(&module("a", "m", "x"), &quotas).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    let tight = Quotas {
        max_module_total_bytes: 1234 * 3,
        ..Quotas::default()
    };
    assert!(matches!(
        store.put_module(&module("a", "m", "y"), &tight).await,
        Err(StoreError::QuotaExceeded(_))
    ));
}

#[tokio::test]
async fn tenants_get_a_new_instance_and_their_revocations_outlive_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let store = SqliteControlStore::open(&path).unwrap();
    let first = store.create_tenant(&tenant("zz")).await.unwrap();
    assert_eq!(first.instance.len(), 32);
    assert_eq!(store.tenant(&id("zz")).await.unwrap().unwrap(), first);
    let token = |jti: &str| TokenRecord {
        id: jti.to_owned(),
        tenant: Some(id("zz")),
        subject: "s".to_owned(),
        role: Role::Owner,
        expires_at: u64::MAX >> 2,
        revoked: false,
        created_at: 0,
    };
    store.put_token(&token("revoked")).await.unwrap();
    store.put_token(&token("live")).await.unwrap();
    assert!(
        store
            .revoke_token(TokenScope::Tenant(&id("zz")), "revoked")
            .await
            .unwrap()
    );
    let deleted = store.delete_tenant(&id("zz")).await.unwrap().unwrap();
    assert_eq!(deleted.tokens, ["live", "revoked"]);
    let second = store.create_tenant(&tenant("zz")).await.unwrap();
    assert_ne!(first.instance, second.instance);
    assert!(
        store
            .tokens(TokenScope::Tenant(&id("zz")))
            .await
            .unwrap()
            .is_empty()
    );
    drop(store);
    let reopened = SqliteControlStore::open(&path).unwrap();
    assert_eq!(
        reopened.revoked_token_ids().await.unwrap(),
        ["live", "revoked"],
        "every token of the deleted tenant stays revoked"
    );
}

#[tokio::test]
async fn endpoint_secrets_are_sealed_on_disk_and_open_after_a_reopen() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    const SECRET: &str = "correct-horse-battery-staple-4c7f";
    {
        let store = SqliteControlStore::open(&path).unwrap();
        store.create_tenant(&tenant("acme")).await.unwrap();
        store
            .put_endpoint(&EndpointRecord {
                tenant: id("acme"),
                name: "broker".to_owned(),
                kind: "mqtt".to_owned(),
                address: None,
                settings: Default::default(),
                secret: Some(SECRET.to_owned()),
                created_at: 0,
            })
            .await
            .unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap().path();
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "plain text in {}",
                file.display()
            );
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
        }
    }
    assert!(dir.path().join("control.key").is_file());
    let reopened = SqliteControlStore::open(&path).unwrap();
    assert_eq!(
        reopened
            .endpoint(&id("acme"), "broker")
            .await
            .unwrap()
            .unwrap()
            .secret
            .as_deref(),
        Some(SECRET),
        "connectors read the secret through the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_state_store_passes_the_state_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = weir_store::SqliteStateStore::open(&dir.path().join("state.db")).unwrap();
    weir_state::testing::conformance(&store).await;
}

#[tokio::test]
async fn state_survives_a_reopen() {
    use weir_state::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let scope = weir_state::testing::scope("keeper");
    {
        let store = weir_store::SqliteStateStore::open(&path).unwrap();
        store
            .set(
                &scope,
                b"overtemp",
                b"true",
                weir_state::SetOptions::default(),
            )
            .await
            .unwrap();
    }
    let store = weir_store::SqliteStateStore::open(&path).unwrap();
    assert_eq!(
        store
            .get(&scope, b"overtemp")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some(b"true".as_slice())
    );
}

#[tokio::test]
async fn endpoints_are_walled_by_tenant_and_deleted_with_it() {
    let store = SqliteControlStore::in_memory().unwrap();
    for t in ["acme", "globex"] {
        store.create_tenant(&tenant(t)).await.unwrap();
    }
    let endpoint = EndpointRecord {
        tenant: id("acme"),
        name: "broker".to_owned(),
        kind: "mqtt".to_owned(),
        address: Some("broker.example.com:1883".to_owned()),
        settings: [("client_id".to_owned(), "weir".to_owned())].into(),
        secret: Some("s3cret".to_owned()),
        created_at: 0,
    };
    store.put_endpoint(&endpoint).await.unwrap();
    assert!(matches!(
        store.put_endpoint(&endpoint).await,
        Err(StoreError::Conflict { .. })
    ));
    let stored = store.endpoints(&id("acme")).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].secret.as_deref(), Some("s3cret"));
    assert!(store.endpoints(&id("globex")).await.unwrap().is_empty());
    assert_eq!(
        store.endpoint(&id("acme"), "broker").await.unwrap(),
        Some(stored[0].clone())
    );
    assert_eq!(store.endpoint(&id("globex"), "broker").await.unwrap(), None);
    assert!(
        !store
            .delete_endpoint(&id("globex"), "broker")
            .await
            .unwrap()
    );
    assert!(store.delete_tenant(&id("acme")).await.unwrap().is_some());
    assert!(store.endpoints(&id("acme")).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_deployments_history_keeps_its_newest_200_changes() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("a")).await.unwrap();
    store
        .put_deployment(&deployment("a", "d"), &Quotas::default())
        .await
        .unwrap();
    for n in 0..250 {
        let status = if n % 2 == 0 { "degraded" } else { "running" };
        store
            .set_deployment_status(&id("a"), "d", status, &format!("change {n}"))
            .await
            .unwrap();
    }
    let history = store.deployment_history(&id("a"), "d").await.unwrap();
    assert_eq!(history.len(), 200);
    assert_eq!(history.first().unwrap().detail, "change 50");
    assert_eq!(history.last().unwrap().detail, "change 249");
}

#[tokio::test]
async fn revisions_are_numbered_in_order_bounded_and_go_with_their_deployment() {
    let store = SqliteControlStore::in_memory().unwrap();
    store.create_tenant(&tenant("acme")).await.unwrap();
    let revision = |outcome: &str| weir_store::RevisionRecord {
        revision: 0,
        spec: serde_json::json!({"graph": outcome}),
        graph_digest: "sha256:00".to_owned(),
        modules: [("m".to_owned(), "sha256:11".to_owned())].into(),
        at: 0,
        by: "alice".to_owned(),
        outcome: outcome.to_owned(),
        detail: String::new(),
    };
    // No deployment: nothing recorded.
    assert_eq!(
        store
            .add_revision(&id("acme"), "d", &revision("rolled_out"))
            .await
            .unwrap(),
        None
    );
    store
        .put_deployment(&deployment("acme", "d"), &Quotas::default())
        .await
        .unwrap();
    for n in 1..=25u64 {
        let outcome = if n % 2 == 0 { "failed" } else { "rolled_out" };
        assert_eq!(
            store
                .add_revision(&id("acme"), "d", &revision(outcome))
                .await
                .unwrap(),
            Some(n)
        );
    }
    let kept = store.revisions(&id("acme"), "d").await.unwrap();
    assert_eq!(kept.len(), weir_store::MAX_REVISIONS as usize);
    assert_eq!(kept.first().unwrap().revision, 6);
    assert_eq!(kept.last().unwrap().revision, 25);
    assert_eq!(kept.last().unwrap().outcome, "rolled_out");
    assert_eq!(kept.last().unwrap().by, "alice");
    assert_eq!(kept.last().unwrap().modules["m"], "sha256:11");
    assert!(store.delete_deployment(&id("acme"), "d").await.unwrap());
    store
        .put_deployment(&deployment("acme", "d"), &Quotas::default())
        .await
        .unwrap();
    assert!(store.revisions(&id("acme"), "d").await.unwrap().is_empty());
}
