//! The dashboard in a real browser: a real `weir serve`, tenants A and B, a running deployment
//! with an http source, and `tests/browser/dashboard.mjs` driving Debian's headless Chromium
//! through playwright-core (with axe-core), installed by `scripts/setup`. A missing browser,
//! node or npm package fails the test with what to run; it never skips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_api::rest::IngestMessage;
use weir_api::tenancy::Quotas;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An executable by name on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium (`WEIR_CHROMIUM`, else `chromium` on `PATH`), node, and the npm packages: each
/// missing one fails the test, saying what to run.
fn browser_tools() -> (PathBuf, PathBuf, PathBuf) {
    let chromium = std::env::var_os("WEIR_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .unwrap_or_else(|| {
            panic!("no chromium found (WEIR_CHROMIUM or `chromium` on PATH): run scripts/setup, which installs Debian's chromium")
        });
    let node = on_path("node")
        .unwrap_or_else(|| panic!("no node on PATH: run scripts/setup (Debian's nodejs)"));
    let modules = std::env::var_os("WEIR_BROWSER_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| repo().join("target"), PathBuf::from)
                .join("browser/node_modules")
        });
    for package in ["playwright-core/package.json", "axe-core/axe.min.js"] {
        assert!(
            modules.join(package).is_file(),
            "{} is missing: run scripts/setup (npm installs playwright-core and axe-core into target/browser)",
            modules.join(package).display()
        );
    }
    (chromium, node, modules)
}

/// Runs the browser script with `env`; its stdout, stderr and exit code, killed after `limit`.
pub fn run_script(
    node: &Path,
    args: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> (String, String, Option<i32>) {
    let mut child = Command::new(node)
        .arg(repo().join("tests/browser/dashboard.mjs"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).ok();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).ok();
        text
    });
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (out.join().unwrap(), err.join().unwrap(), code)
}

async fn deploy_temperature(client: &weir_api::client::Client, id: &str) {
    client
        .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
        .await
        .unwrap();
    let graph = std::fs::read_to_string(repo().join("tests/golden/graph-simple.yaml")).unwrap();
    client.push_graph("simple", "1", graph).await.unwrap();
    client
        .deploy(&common::http_deployment(id, "simple"))
        .await
        .unwrap();
    let reply = client
        .ingest(
            id,
            &[IngestMessage::new(
                r#"{"temperature":{"value":50,"unit":"F"}}"#,
            )],
            true,
        )
        .await
        .unwrap();
    assert_eq!(reply.accepted, 1);
}

/// Signs in, sees counters rise while messages are ingested, a dead letter appear (its HTML
/// payload as text), the graph, per-node counters and quota bars (state keys and bytes
/// written through the API, the live in-flight and queued-output budgets); pauses and resumes; tenant B
/// sees none of A's deployments; a version is rolled out and rolled back from the page and the
/// revisions table follows (a viewer sees no such controls); the admin picks a tenant; axe-core finds no serious or
/// critical violation; Tab reaches the actions. Screenshots in target/browser/screenshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser_and_keeps_tenants_apart() {
    let (chromium, node, modules) = browser_tools();
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let a = common::tenant(&admin, "tenant-a", Quotas::default()).await;
    let b = common::tenant(&admin, "tenant-b", Quotas::default()).await;
    deploy_temperature(&a, "convert").await;
    deploy_temperature(&b, "b-only").await;
    // A second version to roll out from the page.
    let graph = std::fs::read_to_string(repo().join("tests/golden/graph-simple.yaml")).unwrap();
    a.push_graph("simple", "2", graph).await.unwrap();
    let viewer = common::token(&admin, "tenant-a", weir_api::tenancy::Role::Viewer).await;

    let screenshots = modules.join("../screenshots");
    let env = vec![
        ("WEIR_URL", format!("http://{}", server.address)),
        ("WEIR_TOKEN_A", a.token().unwrap().to_owned()),
        ("WEIR_TOKEN_B", b.token().unwrap().to_owned()),
        ("WEIR_VIEWER_TOKEN_A", viewer.token().unwrap().to_owned()),
        ("WEIR_ADMIN_TOKEN", server.admin_token.clone().unwrap()),
        ("WEIR_DEPLOYMENT", "convert".to_owned()),
        ("WEIR_DEPLOYMENT_B", "b-only".to_owned()),
        ("WEIR_CHROMIUM", chromium.display().to_string()),
        ("WEIR_BROWSER_MODULES", modules.display().to_string()),
        ("WEIR_SCREENSHOTS", screenshots.display().to_string()),
    ];
    let (stdout, stderr, code) =
        tokio::task::spawn_blocking(move || run_script(&node, &[], &env, Duration::from_secs(240)))
            .await
            .unwrap();
    println!("{stdout}");
    assert_eq!(
        code,
        Some(0),
        "the browser script failed:\n{stdout}\n{stderr}"
    );
    for step in [
        "PASS served with a strict Content-Security-Policy",
        "PASS after sign-in the main heading has the focus",
        "PASS signed in as tenant A",
        "PASS counters rise while messages are ingested",
        "PASS a bad message's dead letter appears",
        "PASS axe deployment page",
        "PASS keyboard navigation reaches the actions",
        "PASS pause and resume from the page, with the keyboard: the focus moves to the enabled counterpart",
        "PASS a malformed address shows the not-found view",
        "PASS the max_instances bar counts the running deployment's",
        "PASS log lines and dead-letter bytes counted by the API",
        "PASS the state bars count the tenant's 3 keys",
        "PASS every tenant-wide budget has a bar",
        "PASS roll out from the page",
        "PASS roll back from the page",
        "PASS axe deployment page with revisions",
        "PASS a viewer sees the revisions but no roll out or roll back controls",
        "PASS quota bars",
        "PASS axe quotas page",
        "PASS axe deployments list",
        "PASS tenant B's token shows none of tenant A's deployments",
        "PASS axe admin view",
        "PASS with the tenant's streams taken",
        "PASS axe refused event stream",
        "PASS the admin picks a tenant and sees its deployments",
        "PASS a deployment deleted while its page is open",
        "DONE",
    ] {
        assert!(
            stdout.contains(step),
            "missing `{step}`:\n{stdout}\n{stderr}"
        );
    }
    for page in [
        "deployments",
        "deployment",
        "revisions",
        "quotas",
        "tenant-b",
        "too-many-tabs",
        "admin",
        "deleted",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
}

/// Reads an event stream over a plain socket until `wanted` has arrived or `limit` passed; what
/// was read.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    seen: &mut String,
    wanted: &str,
    limit: Duration,
) -> bool {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = [0u8; 8192];
    while !seen.contains(wanted) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            _ => return false,
        }
    }
    true
}

/// Opens `GET path` with `token` on a raw connection (the stream is read as it comes).
async fn open_stream(address: &str, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// The dashboard's own routes hold the tenant walls: a tenant's token names no other tenant,
/// reads no other tenant's history or graph, and its event stream carries its own deployments
/// only and ends once the token is revoked; the admin must name the tenant it watches. The
/// page is served with its Content-Security-Policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_routes_hold_the_tenant_walls_and_streams_end_on_revocation() {
    use weir_api::client::HttpMethod;
    use weir_api::rest::MintToken;
    use weir_api::tenancy::Role;

    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let a = common::tenant(&admin, "tenant-a", Quotas::default()).await;
    common::tenant(&admin, "tenant-b", Quotas::default()).await;
    deploy_temperature(&a, "convert").await;
    let minted = admin
        .mint_token(&MintToken {
            subject: "b-viewer".to_owned(),
            role: Role::Viewer,
            ttl_seconds: None,
            tenant: Some("tenant-b".to_owned()),
        })
        .await
        .unwrap();
    let b = admin.with_token(minted.token.clone().unwrap());

    let get = |client: &weir_api::client::Client, path: &str| {
        let client = client.clone();
        let path = path.to_owned();
        async move {
            let (status, body) = client
                .raw(HttpMethod::GET, &path, None, Vec::new())
                .await
                .unwrap();
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        }
    };
    // The page, with its policy.
    let page = plain_get(&server.address, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(page.contains("x-content-type-options: nosniff"), "{page}");

    // B reaches nothing of A's.
    for path in [
        "/v1/dashboard/history?deployment=convert",
        "/v1/dashboard/graph?deployment=convert",
    ] {
        let (status, body) = get(&b, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        let (status, body) = get(&a, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for path in [
        "/v1/dashboard/events?tenant=tenant-a",
        "/v1/dashboard/quotas?tenant=tenant-a",
        "/v1/dashboard/history?deployment=convert&tenant=tenant-a",
    ] {
        let (status, body) = get(&b, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("\"code\":\"forbidden\""), "{body}");
    }
    let (status, body) = get(&b, "/v1/dashboard/events?deployment=convert").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&b, "/v1/dashboard/history?what=1").await;
    assert_eq!(status, 400, "{body}");
    // The admin names the tenant it watches.
    let (status, body) = get(&admin, "/v1/dashboard/quotas").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&admin, "/v1/dashboard/quotas?tenant=nobody").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&admin, "/v1/dashboard/quotas?tenant=tenant-a").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &admin,
        "/v1/dashboard/history?deployment=convert&tenant=tenant-a",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The sampler keeps A's history (one sample every 5 s) without any page open.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(&a, "/v1/dashboard/history?deployment=convert").await;
        let history: serde_json::Value = serde_json::from_str(&body).unwrap();
        let samples = history["samples"].as_array().unwrap();
        if let Some(last) = samples.last() {
            assert_eq!(last["received"], 1, "{body}");
            assert_eq!(history["interval_ms"], 5000);
            break;
        }
        assert!(Instant::now() < deadline, "no sample after 20 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The routes are documented.
    let document = admin.openapi().await.unwrap();
    for path in [
        "/v1/dashboard/me",
        "/v1/dashboard/events",
        "/v1/dashboard/history",
        "/v1/dashboard/quotas",
        "/v1/dashboard/graph",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} is documented"
        );
    }

    // B's stream carries B's (no) deployments; A's carries A's.
    let mut seen_a = String::new();
    let mut stream_a =
        open_stream(&server.address, "/v1/dashboard/events", a.token().unwrap()).await;
    assert!(
        read_until(
            &mut stream_a,
            &mut seen_a,
            "event: deployments",
            Duration::from_secs(10)
        )
        .await,
        "{seen_a}"
    );
    assert!(
        seen_a.contains("content-type: text/event-stream"),
        "{seen_a}"
    );
    assert!(seen_a.contains(r#""id":"convert""#), "{seen_a}");
    let mut seen_b = String::new();
    let mut stream_b = open_stream(
        &server.address,
        "/v1/dashboard/events",
        &minted.token.clone().unwrap(),
    )
    .await;
    assert!(
        read_until(
            &mut stream_b,
            &mut seen_b,
            "event: deployments",
            Duration::from_secs(10)
        )
        .await,
        "{seen_b}"
    );
    assert!(seen_b.contains(r#""deployments":[]"#), "{seen_b}");
    assert!(!seen_b.contains("convert"), "{seen_b}");

    // Revoking B's token ends its stream at the next event.
    admin.revoke_token(&minted.id).await.unwrap();
    assert!(
        read_until(
            &mut stream_b,
            &mut seen_b,
            "event: end",
            Duration::from_secs(10)
        )
        .await,
        "the stream went on after the revocation: {seen_b}"
    );
    let tail = seen_b
        .rsplit("event: end")
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(!tail.contains("event: deployments"), "{seen_b}");
}

/// `GET path` on a plain connection: the status line and headers, lowercased names.
async fn plain_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    text
}
