//! The walls and bounds the control store and the blob store keep, against a real `weir serve`:
//! tokens bound to one tenant instance, the admin's view of every tenant's tokens, count quotas
//! under real concurrency, blobs that go with their last reference, a private data directory
//! with secrets encrypted at rest, and ids that cannot pass for command-line options.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::path::Path;

use common::{serve, tenant, token};
use tokio::task::JoinSet;
use weir_api::client::{Client, ClientError, HttpMethod as Method};
use weir_api::rest::{
    Binding, CreateDeployment, CreateEndpoint, CreateTenant, EndpointKind, GraphRef, MintToken,
    Token,
};
use weir_api::tenancy::{Quotas, Role};

const SIMPLE_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");

/// Quotas generous on the API rate, so a test's burst of requests is not what it measures.
fn roomy() -> Quotas {
    Quotas {
        api_requests_per_second: 10_000,
        ..Quotas::default()
    }
}

fn temperature() -> Vec<u8> {
    std::fs::read(weir_guests::TEMPERATURE.path()).unwrap()
}

/// The temperature component with a custom section naming `tag` appended: a valid component
/// whose bytes (and digest) differ for every tag.
fn variant(tag: usize) -> Vec<u8> {
    let mut wasm = temperature();
    let name = b"weir-test";
    let payload = format!("variant {tag}");
    let mut body = vec![u8::try_from(name.len()).unwrap()];
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    wasm.push(0);
    wasm.push(u8::try_from(body.len()).unwrap());
    wasm.extend(body);
    wasm
}

/// The simple graph, with a description naming `tag` so its bytes differ for every tag.
fn graph(tag: usize) -> String {
    SIMPLE_GRAPH.replace(
        "description: \"weir golden graph\"",
        &format!("description: \"weir golden graph {tag}\""),
    )
}

fn deployment(id: &str, configuration: &[(&str, &str)]) -> CreateDeployment {
    CreateDeployment {
        id: id.to_owned(),
        graph: GraphRef {
            name: "simple".to_owned(),
            version: "1".to_owned(),
        },
        configuration: configuration
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        source: Binding::default(),
        sink: Binding::default(),
        dead_letters: None,
        instances: 1,
        partition_key: None,
    }
}

/// How many of `outcomes` succeeded; every other one must have failed with `expected`.
fn succeeded<T>(outcomes: Vec<Result<T, ClientError>>, expected: &str, what: &str) -> usize {
    let mut ok = 0;
    for outcome in outcomes {
        match code(&outcome).as_deref() {
            None => ok += 1,
            Some(code) if code == expected => {}
            Some(other) => panic!("{what} failed with {other}"),
        }
    }
    ok
}

fn code<T>(result: &Result<T, ClientError>) -> Option<String> {
    result
        .as_ref()
        .err()
        .map(|e| e.code().unwrap_or("no problem document").to_owned())
}

/// The files under `dir` with their sizes, recursively.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            found.extend(files(&entry.path()));
        } else {
            found.push((entry.path(), meta.len()));
        }
    }
    found
}

fn blob_bytes(data: &Path) -> u64 {
    files(&data.join("blobs"))
        .iter()
        .map(|(_, size)| size)
        .sum()
}

/// Deletes a graph version (the typed client has no call for it).
async fn delete_graph(client: &Client, name: &str, version: &str) {
    let (status, body) = client
        .raw(
            Method::DELETE,
            &format!("/v1/graphs/{name}/{version}"),
            None,
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 204, "{}", String::from_utf8_lossy(&body));
}

/// Deployments the runtime runs, on its one executor.
async fn running(admin: &Client) -> u64 {
    admin.executors().await.unwrap()[0].deployments
}

async fn mint(client: &Client, tenant: Option<&str>, subject: &str, role: Role) -> Token {
    client
        .mint_token(&MintToken {
            subject: subject.to_owned(),
            role,
            ttl_seconds: None,
            tenant: tenant.map(str::to_owned),
        })
        .await
        .unwrap()
}

async fn create_tenant(admin: &Client, id: &str) {
    admin
        .create_tenant(&CreateTenant {
            id: id.to_owned(),
            display_name: None,
            quotas: Some(roomy()),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bound_to_one_tenant_instance_and_revocations_outlive_the_tenant() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin_token = server.admin_token.clone().unwrap();
    let admin = server.admin();
    create_tenant(&admin, "zz").await;
    let first = mint(&admin, Some("zz"), "first-owner", Role::Owner).await;
    let old_owner = admin.with_token(first.token.unwrap());
    old_owner.modules().await.expect("the owner token works");
    let revoked = mint(&old_owner, None, "revoked-viewer", Role::Viewer).await;
    let revoked_client = admin.with_token(revoked.token.unwrap());
    old_owner.revoke_token(&revoked.id).await.unwrap();
    assert_eq!(
        code(&revoked_client.modules().await).as_deref(),
        Some("unauthenticated")
    );

    admin.delete_tenant("zz").await.unwrap();
    create_tenant(&admin, "zz").await;
    let unauthenticated = |what: &str, result: Option<String>| {
        assert_eq!(result.as_deref(), Some("unauthenticated"), "{what}");
    };
    unauthenticated(
        "a token of the deleted tenant reads the new one",
        code(&old_owner.modules().await),
    );
    unauthenticated(
        "a token of the deleted tenant mints for the new one",
        code(
            &old_owner
                .mint_token(&MintToken {
                    subject: "smuggled".to_owned(),
                    role: Role::Owner,
                    ttl_seconds: None,
                    tenant: None,
                })
                .await,
        ),
    );
    unauthenticated(
        "a revoked token of the deleted tenant",
        code(&revoked_client.modules().await),
    );
    let new_owner = token(&admin, "zz", Role::Owner).await;
    new_owner
        .modules()
        .await
        .expect("the new tenant's tokens work");
    assert!(
        new_owner
            .tokens()
            .await
            .unwrap()
            .iter()
            .all(|t| t.id != first.id && t.id != revoked.id),
        "the new tenant does not inherit the old one's tokens"
    );

    // A restart reloads revocations from the store: they survive the tenant's deletion.
    drop(server);
    let server = serve(data.path());
    let admin = server.client(&admin_token);
    let old_owner = admin.with_token(old_owner.token().unwrap().to_owned());
    let revoked_client = admin.with_token(revoked_client.token().unwrap().to_owned());
    unauthenticated(
        "a token of the deleted tenant, after a restart",
        code(&old_owner.modules().await),
    );
    unauthenticated(
        "a revoked token of the deleted tenant, after a restart",
        code(&revoked_client.modules().await),
    );
    let new_owner = admin.with_token(new_owner.token().unwrap().to_owned());
    new_owner
        .modules()
        .await
        .expect("the new tenant's tokens work after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_lists_and_revokes_any_tenants_tokens() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin();
    create_tenant(&admin, "zz").await;
    create_tenant(&admin, "yy").await;
    let owner = mint(&admin, Some("zz"), "zz-owner", Role::Owner).await;
    let owner_client = admin.with_token(owner.token.clone().unwrap());
    let viewer = mint(&owner_client, None, "zz-viewer", Role::Viewer).await;
    let other = mint(&admin, Some("yy"), "yy-owner", Role::Owner).await;

    let all = admin.tokens().await.unwrap();
    for id in [&owner.id, &viewer.id, &other.id] {
        assert!(all.iter().any(|t| &t.id == id), "{id} listed to the admin");
    }
    assert!(
        all.iter()
            .any(|t| t.role == Role::Admin && t.tenant.is_none())
    );
    let (status, body) = admin
        .raw(Method::GET, "/v1/tokens?tenant=zz", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    let listed: Vec<Token> = serde_json::from_slice(&body).unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![owner.id.as_str(), viewer.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "only zz's tokens");
    assert!(
        listed.iter().all(|t| t.token.is_none()),
        "never the token text"
    );
    let (status, _) = admin
        .raw(Method::GET, "/v1/tokens?tenant=nobody", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 404, "an unknown tenant");
    // The filter is the admin's: an owner naming a tenant is refused, not obeyed.
    let (status, _) = owner_client
        .raw(Method::GET, "/v1/tokens?tenant=yy", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 403);

    admin.revoke_token(&viewer.id).await.unwrap();
    let viewer_client = admin.with_token(viewer.token.unwrap());
    assert_eq!(
        code(&viewer_client.modules().await).as_deref(),
        Some("unauthenticated")
    );
    assert!(
        owner_client
            .tokens()
            .await
            .unwrap()
            .iter()
            .any(|t| t.id == viewer.id && t.revoked),
        "the owner sees the admin's revocation"
    );
    owner_client.modules().await.expect("other tokens work");
    assert_eq!(
        code(&admin.revoke_token("tok-missing").await).as_deref(),
        Some("not_found")
    );
    // Owners still revoke only their own tenant's.
    assert_eq!(
        code(&owner_client.revoke_token(&other.id).await).as_deref(),
        Some("not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_quotas_hold_under_concurrent_uploads_and_deploys() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin();
    let quotas = Quotas {
        max_modules: 3,
        max_graphs: 3,
        max_deployments: 2,
        ..roomy()
    };
    let dev = tenant(&admin, "racer", quotas).await;

    let mut uploads = JoinSet::new();
    for i in 0..12 {
        let dev = dev.clone();
        uploads.spawn(async move { dev.push_module("m", &format!("{i}"), variant(i)).await });
    }
    let stored = succeeded(uploads.join_all().await, "quota_exceeded", "an upload");
    assert_eq!(stored, 3, "uploads accepted");
    assert_eq!(dev.modules().await.unwrap().len(), 3, "modules stored");

    let mut uploads = JoinSet::new();
    for i in 0..12 {
        let dev = dev.clone();
        uploads.spawn(async move { dev.push_graph("g", &format!("{i}"), graph(i)).await });
    }
    let stored = succeeded(uploads.join_all().await, "quota_exceeded", "a graph upload");
    assert_eq!(stored, 3, "graph uploads accepted");
    assert_eq!(dev.graphs().await.unwrap().len(), 3, "graphs stored");

    // Deployments: the graph names temperature:1.0.0, so that one is among the three modules.
    let kept = dev.modules().await.unwrap();
    for module in &kept {
        dev.delete_module(&module.name, &module.version)
            .await
            .unwrap();
    }
    dev.push_module("temperature", "1.0.0", temperature())
        .await
        .unwrap();
    let graphs = dev.graphs().await.unwrap();
    delete_graph(&dev, &graphs[0].name, &graphs[0].version).await;
    dev.push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();
    let mut deploys = JoinSet::new();
    for i in 0..12 {
        let dev = dev.clone();
        deploys.spawn(async move { dev.deploy(&deployment(&format!("d{i}"), &[])).await });
    }
    let created = succeeded(deploys.join_all().await, "quota_exceeded", "a deploy");
    assert_eq!(created, 2, "deployments accepted");
    assert_eq!(dev.deployments().await.unwrap().len(), 2, "stored");
    assert_eq!(running(&admin).await, 2, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deployment_changes_leave_store_and_runtime_agreeing() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin();
    let dev = tenant(&admin, "racer", roomy()).await;
    dev.push_module("temperature", "1.0.0", temperature())
        .await
        .unwrap();
    dev.push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();

    // One id, created eight times at once: one wins, the rest conflict, and it runs.
    let mut creates = JoinSet::new();
    for _ in 0..8 {
        let dev = dev.clone();
        creates.spawn(async move { dev.deploy(&deployment("same", &[])).await });
    }
    let won = succeeded(creates.join_all().await, "conflict", "a create");
    assert_eq!(won, 1, "one create wins");
    assert_eq!(dev.deployments().await.unwrap().len(), 1);
    assert_eq!(running(&admin).await, 1, "the stored deployment runs");
    assert!(dev.deployment("same").await.unwrap().runtime.is_some());
    dev.delete_deployment("same").await.unwrap();
    assert_eq!(running(&admin).await, 0);

    // Update racing delete: whichever wins, nothing runs without its record.
    for round in 0..8 {
        let id = format!("race{round}");
        dev.deploy(&deployment(&id, &[])).await.unwrap();
        let update = deployment(&id, &[("round", "two")]);
        let (updated, deleted) =
            tokio::join!(dev.update_deployment(&update), dev.delete_deployment(&id));
        assert!(
            matches!(code(&updated).as_deref(), None | Some("not_found")),
            "{updated:?}"
        );
        assert!(
            matches!(code(&deleted).as_deref(), None | Some("not_found")),
            "{deleted:?}"
        );
        let stored = dev.deployments().await.unwrap().len() as u64;
        assert_eq!(
            running(&admin).await,
            stored,
            "round {round}: runtime = store"
        );
        if stored == 1 {
            dev.delete_deployment(&id).await.unwrap();
        }
    }
    assert_eq!(running(&admin).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_artifacts_and_tenants_free_their_blobs() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin();
    let dev = tenant(&admin, "churn", roomy()).await;
    for i in 0..6 {
        dev.push_module("m", "1", variant(i)).await.unwrap();
        dev.push_graph("g", "1", graph(i)).await.unwrap();
        dev.delete_module("m", "1").await.unwrap();
        delete_graph(&dev, "g", "1").await;
    }
    assert_eq!(
        files(&data.path().join("blobs")),
        Vec::new(),
        "upload/delete cycles leave nothing behind"
    );

    // A blob two tenants share stays until its last reference goes.
    let other = tenant(&admin, "other", roomy()).await;
    dev.push_module("shared", "1", temperature()).await.unwrap();
    dev.push_module("shared", "2", temperature()).await.unwrap();
    other
        .push_module("shared", "1", temperature())
        .await
        .unwrap();
    dev.push_module("own", "1", variant(99)).await.unwrap();
    dev.push_graph("own", "1", graph(99)).await.unwrap();
    let size = temperature().len() as u64;
    let own = variant(99).len() as u64 + graph(99).len() as u64;
    assert_eq!(blob_bytes(data.path()), size + own, "one copy per content");
    dev.delete_module("shared", "1").await.unwrap();
    assert_eq!(
        blob_bytes(data.path()),
        size + own,
        "still referenced twice"
    );
    admin.delete_tenant("churn").await.unwrap();
    assert_eq!(
        blob_bytes(data.path()),
        size,
        "deleting a tenant frees what only it referenced"
    );
    other.delete_module("shared", "1").await.unwrap();
    assert_eq!(files(&data.path().join("blobs")), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_uploads_all_succeed() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin();
    let dev = tenant(&admin, "twins", roomy()).await;
    let bytes = variant(7);
    let mut uploads = JoinSet::new();
    for i in 0..8 {
        let (dev, bytes) = (dev.clone(), bytes.clone());
        uploads.spawn(async move { dev.push_module("twin", &format!("{i}"), bytes).await });
    }
    for outcome in uploads.join_all().await {
        outcome.expect("an identical upload succeeds");
    }
    let mut graphs = JoinSet::new();
    for i in 0..8 {
        let dev = dev.clone();
        graphs.spawn(async move { dev.push_graph("twin", &format!("{i}"), graph(7)).await });
    }
    for outcome in graphs.join_all().await {
        outcome.expect("an identical graph upload succeeds");
    }
    assert_eq!(dev.modules().await.unwrap().len(), 8);
    assert_eq!(
        blob_bytes(data.path()),
        bytes.len() as u64 + graph(7).len() as u64,
        "one blob each"
    );
    // Deletes racing uploads of the same bytes never leave a record without its blob.
    let mut churn = JoinSet::new();
    for i in 0..8 {
        let (dev, bytes) = (dev.clone(), bytes.clone());
        churn.spawn(async move {
            dev.delete_module("twin", &format!("{i}")).await.unwrap();
            dev.push_module("again", &format!("{i}"), bytes)
                .await
                .unwrap();
        });
    }
    churn.join_all().await;
    dev.push_graph(
        "simple",
        "1",
        SIMPLE_GRAPH.replace("temperature:1.0.0", "again:3"),
    )
    .await
    .unwrap();
    dev.deploy(&deployment("uses-again", &[]))
        .await
        .expect("the module's bytes are there");
    assert_eq!(
        files(&data.path().join("blobs"))
            .iter()
            .filter(|(_, size)| *size == bytes.len() as u64)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_and_secrets_are_encrypted_at_rest() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let server = serve(&data);
    let admin = server.admin();
    let dev = tenant(&admin, "private", roomy()).await;
    let owner = token(&admin, "private", Role::Owner).await;
    const SECRET: &str = "hunter2-very-secret-password-9d1e";
    owner
        .create_endpoint(&CreateEndpoint {
            name: "ingest".to_owned(),
            kind: EndpointKind::Http,
            address: None,
            settings: Default::default(),
            secret: Some(SECRET.to_owned()),
        })
        .await
        .unwrap();
    dev.push_module("temperature", "1.0.0", temperature())
        .await
        .unwrap();
    dev.state_set("k", b"v".to_vec()).await.unwrap();

    let check = |data: &Path| {
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(data), 0o700, "{}", data.display());
        let mut dirs = vec![data.to_path_buf()];
        let mut seen = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    assert_eq!(mode(&path), 0o700, "{}", path.display());
                    dirs.push(path);
                } else {
                    assert_eq!(mode(&path), 0o600, "{}", path.display());
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(
                        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                        "the secret in plain text in {}",
                        path.display()
                    );
                    seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        for expected in ["control.db", "control.db-wal", "state.db"] {
            assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
        }
    };
    check(&data);
    let admin_token = server.admin_token.clone().unwrap();
    drop(server);
    // A restart reads the key back: the endpoint still has its secret.
    let server = serve(&data);
    let owner = server.client(owner.token().unwrap());
    assert!(owner.endpoints().await.unwrap()[0].has_secret);
    server.client(&admin_token).tenants().await.unwrap();
    check(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_names_start_with_a_letter_or_digit() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin();
    let created = admin
        .create_tenant(&CreateTenant {
            id: "-zz".to_owned(),
            display_name: None,
            quotas: None,
        })
        .await;
    assert_eq!(code(&created).as_deref(), Some("invalid_request"));
    let dev = tenant(&admin, "named", roomy()).await;
    let owner = token(&admin, "named", Role::Owner).await;
    for (name, version) in [("-m", "1"), ("_m", "1"), ("m", "-1"), ("m", "_1")] {
        assert_eq!(
            code(&dev.push_module(name, version, temperature()).await).as_deref(),
            Some("invalid_request"),
            "module {name}@{version}"
        );
        assert_eq!(
            code(&dev.push_graph(name, version, SIMPLE_GRAPH.to_owned()).await).as_deref(),
            Some("invalid_request"),
            "graph {name}@{version}"
        );
    }
    let endpoint = owner
        .create_endpoint(&CreateEndpoint {
            name: "-e".to_owned(),
            kind: EndpointKind::Http,
            address: None,
            settings: Default::default(),
            secret: None,
        })
        .await;
    assert_eq!(code(&endpoint).as_deref(), Some("invalid_request"));
    dev.push_module("temperature", "1.0.0", temperature())
        .await
        .unwrap();
    dev.push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();
    let deployed = dev.deploy(&deployment("-d", &[])).await;
    assert_eq!(code(&deployed).as_deref(), Some("invalid_deployment"));
    dev.deploy(&deployment("d-1", &[])).await.unwrap();
}
