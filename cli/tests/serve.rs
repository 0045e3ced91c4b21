//! `weir serve` as an operator runs it: the real binary on a free loopback port, its printed
//! admin token, and its state surviving a kill and restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `weir serve`, killed when dropped.
struct Server {
    child: Child,
    address: String,
    admin_token: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn serve(data: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The guard owns the child from here on, so a failed expectation still kills it.
    let mut server = Server {
        child,
        address: String::new(),
        admin_token: None,
    };
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("weir serve printed its address")
            .unwrap();
        if let Some(token) = line
            .split("admin token (shown once, valid 365 days): ")
            .nth(1)
        {
            server.admin_token = Some(token.trim().to_owned());
        }
        if let Some(address) = line.strip_prefix("weir listening on http://") {
            server.address = address.trim().to_owned();
            return server;
        }
    }
}

/// One HTTP/1.1 request over a plain socket; returns the status and the body.
fn http(address: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn serves_the_api_and_keeps_its_state_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = serve(data.path());
    let admin = first
        .admin_token
        .clone()
        .expect("the first start prints the admin token");
    assert_eq!(http(&first.address, "GET", "/healthz", "", "").0, 200);
    let (status, body) = http(
        &first.address,
        "POST",
        "/v1/tenants",
        &admin,
        r#"{"id": "acme"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(&first.address, "GET", "/v1/tenants", "forged", "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthenticated\""), "{body}");
    drop(first);

    let second = serve(data.path());
    assert!(
        second.admin_token.is_none(),
        "the admin token is printed on the first start only"
    );
    let (status, body) = http(&second.address, "GET", "/v1/tenants/acme", &admin, "");
    assert_eq!(
        status, 200,
        "the tenant and the signing secret survived: {body}"
    );
    let secret = data.path().join("secret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
