//! The network walls against a real `weir serve`: where the platform connects on a tenant's
//! behalf (the egress rule, `weir_api::egress`: OCI imports and endpoint hosts) and what a
//! client can hold of the server (header-read and idle timeouts, the connection cap, request
//! timeouts, header size). Each wall is listed in `gateway/README.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_api::rest::{CreateEndpoint, EndpointKind, ImportArtifact};
use weir_api::tenancy::{Quotas, Role};

fn import(reference: &str) -> ImportArtifact {
    ImportArtifact {
        reference: reference.to_owned(),
        name: None,
        version: None,
        insecure: true,
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Names this machine's hosts file maps to loopback, besides `localhost`.
fn hosts_file_loopback_names() -> Vec<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let names: Vec<String> = hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            (address.starts_with("127.") || address == "::1")
                .then(|| fields.map(str::to_owned).collect::<Vec<_>>())
        })
        .flatten()
        .filter(|name| name != "localhost" && !name.contains(':'))
        .collect();
    assert!(
        !names.is_empty(),
        "this test needs a hosts-file name for loopback besides localhost"
    );
    names
}

/// Every spelling of this machine's addresses that a resolver or URL parser accepts.
fn loopback_spellings() -> Vec<String> {
    let mut hosts: Vec<String> = [
        "127.1",
        "2130706433",
        "0x7f000001",
        "017700000001",
        "0",
        "0.0.0.0",
        "127.0.0.1",
        "localhost",
    ]
    .map(str::to_owned)
    .to_vec();
    hosts.extend(hosts_file_loopback_names());
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_import_reaches_no_spelling_of_the_platforms_own_address() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let walled = common::tenant(&admin, "walled", Quotas::default()).await;
    let open = server.address.rsplit_once(':').unwrap().1.to_owned();
    let closed = closed_port().to_string();
    for host in loopback_spellings() {
        let mut answers = Vec::new();
        for port in [&open, &closed] {
            let refused = walled
                .import_module(&import(&format!("{host}:{port}/acme/module:1.0.0")))
                .await
                .unwrap_err();
            let problem = refused.problem().unwrap_or_else(|| panic!("{refused}"));
            assert_eq!(problem.code, "forbidden", "{host}:{port}: {refused}");
            answers.push(problem.detail.clone());
        }
        assert_eq!(
            answers[0], answers[1],
            "{host}: an open and a closed port answer alike"
        );
    }
    assert!(walled.modules().await.unwrap().is_empty());

    // An allowed name opens that name, not every name that reaches the same machine.
    let named = common::tenant(
        &admin,
        "named",
        Quotas {
            allowed_private_hosts: vec!["localhost".to_owned()],
            ..Quotas::default()
        },
    )
    .await;
    for host in hosts_file_loopback_names()
        .into_iter()
        .chain(["127.0.0.1".to_owned(), "127.1".to_owned()])
    {
        let refused = named
            .import_module(&import(&format!("{host}:{open}/acme/module:1.0.0")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("forbidden"), "{host}: {refused}");
    }
}

/// A registry that answers every request with `status`, `headers` and `body`, and counts the
/// requests it saw.
async fn hostile_registry(
    status: &'static str,
    headers: String,
    body: &'static str,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let headers = headers.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.ok();
                stream.shutdown().await.ok();
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_import_failures_are_generic_and_alike() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let plant = common::tenant(
        &admin,
        "plant",
        Quotas {
            allowed_private_hosts: vec!["127.0.0.1".to_owned()],
            ..Quotas::default()
        },
    )
    .await;
    let (leaky, _) = hostile_registry(
        "500 Internal Server Error",
        String::new(),
        "SECRET-INTERNAL-TEXT db=10.0.0.7",
    )
    .await;
    let open = server.address.rsplit_once(':').unwrap().1.to_owned();
    let mut answers = Vec::new();
    for port in [open, closed_port().to_string(), leaky.to_string()] {
        let failed = plant
            .import_module(&import(&format!("127.0.0.1:{port}/acme/module:1.0.0")))
            .await
            .unwrap_err();
        let problem = failed
            .problem()
            .unwrap_or_else(|| panic!("{failed}"))
            .clone();
        assert!(!problem.detail.contains("SECRET"), "{problem:?}");
        assert!(!problem.detail.contains("no such route"), "{problem:?}");
        assert!(problem.instance.starts_with("urn:weir:request:"));
        answers.push((problem.status, problem.code, problem.detail));
    }
    assert_eq!(
        answers[0], answers[1],
        "an open and a closed port answer alike"
    );
    assert_eq!(
        answers[0], answers[2],
        "what a registry says stays in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_import_follows_no_redirect_or_token_realm_to_an_unchecked_address() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    // The tenant may reach the registry by its name; the registry tries to send weir elsewhere
    // on the platform's network: to a loopback address, which the name does not open.
    let plant = common::tenant(
        &admin,
        "plant",
        Quotas {
            allowed_private_hosts: vec!["localhost".to_owned()],
            ..Quotas::default()
        },
    )
    .await;
    let (target, reached) = hostile_registry("200 OK", String::new(), "{}").await;
    let (redirecting, _) = hostile_registry(
        "307 Temporary Redirect",
        format!("location: http://127.0.0.1:{target}/v2/acme/module/manifests/1.0.0\r\n"),
        "",
    )
    .await;
    let (realm, _) = hostile_registry(
        "401 Unauthorized",
        format!(
            "www-authenticate: Bearer realm=\"http://127.0.0.1:{target}/token\",service=\"r\"\r\n"
        ),
        "",
    )
    .await;
    for port in [redirecting, realm] {
        let failed = plant
            .import_module(&import(&format!("localhost:{port}/acme/module:1.0.0")))
            .await
            .unwrap_err();
        assert_eq!(failed.code(), Some("invalid_request"), "{failed}");
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "a redirect or token realm reached an address the tenant may not reach"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_hosts_in_every_spelling_of_the_platforms_network_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    common::tenant(&admin, "acme", Quotas::default()).await;
    let owner = common::token(&admin, "acme", Role::Owner).await;
    let mut hosts = loopback_spellings();
    hosts.extend(
        [
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::]",
            "[fe80::1]",
            "169.254.169.254",
            "0xa9fea9fe",
            "10.1",
        ]
        .map(str::to_owned),
    );
    for (i, host) in hosts.iter().enumerate() {
        let refused = owner
            .create_endpoint(&CreateEndpoint {
                name: format!("broker{i}"),
                kind: EndpointKind::Mqtt,
                address: Some(format!("{host}:1883")),
                settings: Default::default(),
                secret: None,
            })
            .await
            .unwrap_err();
        let problem = refused.problem().unwrap_or_else(|| panic!("{refused}"));
        assert_eq!(problem.code, "invalid_request", "{host}: {refused}");
        assert_eq!(problem.errors[0].path, "/address", "{host}");
    }
    assert!(owner.endpoints().await.unwrap().is_empty());
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

async fn healthz(address: &str) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `request` on a fresh connection; the status, headers and body of the answer.
async fn exchange(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
                let text = String::from_utf8_lossy(&answer).into_owned();
                let length = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|l| l.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let head = text.find("\r\n\r\n").unwrap() + 4;
                if answer.len() >= head + length {
                    break;
                }
            }
        }
    })
    .await
    .expect("the server answers within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_with_partial_headers_are_capped_and_closed() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(
        data.path(),
        &[
            "--header-read-timeout-ms",
            "2000",
            "--max-connections",
            "200",
        ],
    );
    let before = open_fds(server.pid());
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(&server.address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\nx-slow: ")
            .await
            .unwrap();
        idle.push(stream);
    }
    // The cap is reached many times over; the server still answers, and holds no more
    // descriptors than the cap allows.
    assert_eq!(healthz(&server.address).await, 200);
    // Connections over the cap are closed as they are accepted; once the burst is taken, the
    // server holds no more than the cap allows.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut held = open_fds(server.pid());
    while held > before + 200 + 8 {
        assert!(
            Instant::now() < settle,
            "{held} descriptors open, {before} before"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = open_fds(server.pid());
    }

    // Every idle connection is closed by the server: the cap closed the oldest, the header-read
    // timeout the rest.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = 0;
    for mut stream in idle {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut byte = [0u8; 1];
        match tokio::time::timeout(left, stream.read(&mut byte)).await {
            Ok(Ok(_) | Err(_)) => closed += 1,
            Err(_) => break,
        }
    }
    assert_eq!(
        closed, 1000,
        "connections still open after the header-read timeout"
    );
    assert_eq!(healthz(&server.address).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_are_answered_with_a_problem_document() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(data.path(), &["--request-timeout-ms", "500"]);
    let token = server.admin_token.clone().unwrap();
    // Half a body, then silence.
    let request = format!(
        "POST /v1/tenants HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"id\":"
    );
    let started = Instant::now();
    let answer = exchange(&server.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
    assert!(answer.contains("urn:weir:request:"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(healthz(&server.address).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_heads_are_refused_and_the_server_stays_healthy() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    // A 64 KiB header: over the 32 KiB head limit. hyper answers 431 itself, without a body.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: weir\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let answer = exchange(&server.address, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A header name with a space, and a control byte in a value.
    for bad in [
        &b"GET /healthz HTTP/1.1\r\nhost: weir\r\nbad header: x\r\n\r\n"[..],
        &b"GET /healthz HTTP/1.1\r\nhost: weir\r\nx-bad: a\x01b\r\n\r\n"[..],
    ] {
        let answer = exchange(&server.address, bad).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(healthz(&server.address).await, 200);
}
