//! `weir serve` as an operator runs it: the real binary on a free loopback port, its printed
//! admin token, and its state surviving a kill and restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;

use common::serve;

/// One HTTP/1.1 request over a plain socket; returns the status and the body.
fn http(address: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    http_bytes(
        address,
        method,
        path,
        token,
        "application/json",
        body.as_bytes(),
    )
}

fn http_bytes(
    address: &str,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
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

/// Opens `GET /v1/dashboard/events{query}` with `token` and reads up to its first line of
/// events (`retry:`): the open stream, or the refusal's status and body.
fn event_stream(address: &str, token: &str, query: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let head = format!(
        "GET /v1/dashboard/events{query} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains("retry:") {
        let read = stream.read(&mut buffer).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        if read == 0 || (seen.contains("\r\n\r\n") && !seen.starts_with("HTTP/1.1 200")) {
            return Err(seen);
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    Ok(stream)
}

/// A tenant's event streams are bounded (8), and its own streams never use up the admin's
/// view of it.
#[test]
fn a_tenants_event_streams_are_bounded_and_never_shut_out_the_admins_view() {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path());
    let admin = server.admin_token.clone().unwrap();
    let (status, body) = http(
        &server.address,
        "POST",
        "/v1/tenants",
        &admin,
        r#"{"id": "acme"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let (status, viewer) = http(
        &server.address,
        "POST",
        "/v1/tokens",
        &admin,
        r#"{"subject": "wall", "role": "viewer", "tenant": "acme"}"#,
    );
    assert_eq!(status, 201, "{viewer}");
    let viewer = token_of(&viewer);
    let open: Vec<TcpStream> = (0..8)
        .map(|n| {
            event_stream(&server.address, &viewer, "")
                .unwrap_or_else(|refusal| panic!("stream {n} refused: {refusal}"))
        })
        .collect();
    let ninth = event_stream(&server.address, &viewer, "").expect_err("a 9th stream opened");
    assert!(ninth.starts_with("HTTP/1.1 429"), "{ninth}");
    let admins: Vec<TcpStream> = (0..8)
        .map(|n| {
            event_stream(&server.address, &admin, "?tenant=acme")
                .unwrap_or_else(|refusal| panic!("the admin's stream {n} refused: {refusal}"))
        })
        .collect();
    drop(open);
    drop(admins);
}

/// One server per data directory (a second would run every deployment again), and a stop
/// is not held up by a client that keeps a response open (a dashboard event stream lasts
/// minutes): both would leave two servers on one directory.
#[test]
fn a_data_directory_has_one_server_and_an_open_event_stream_does_not_hold_a_stop() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut first = serve(data.path());
    let admin = first.admin_token.clone().unwrap();
    let (_, err, code) = common::weir_within(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data",
            dir,
        ],
        Duration::from_secs(60),
    );
    assert_ne!(code, Some(0), "a second server started: {err}");
    assert!(err.contains("another weir serve"), "{err}");

    let (status, body) = http(
        &first.address,
        "POST",
        "/v1/tenants",
        &admin,
        r#"{"id": "acme"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let stream = event_stream(&first.address, &admin, "?tenant=acme")
        .expect("the admin's stream of acme opens");
    // The stream is open and read: the server stops anyway, within its grace (5 s).
    let status = first.terminate_within(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "weir serve still runs 30 s after SIGTERM with an event stream open"
    );
    drop(stream);
    let again = serve(data.path());
    assert_eq!(http(&again.address, "GET", "/healthz", "", "").0, 200);
}

fn token_of(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["token"].as_str().unwrap().to_owned()
}

#[test]
fn deploys_a_graph_ingests_with_wait_and_resumes_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = serve(data.path());
    let admin = first.admin_token.clone().unwrap();
    let address = first.address.clone();
    assert_eq!(
        http(&address, "POST", "/v1/tenants", &admin, r#"{"id": "acme"}"#).0,
        201
    );
    let (status, owner) = http(
        &address,
        "POST",
        "/v1/tokens",
        &admin,
        r#"{"subject": "owner", "role": "owner", "tenant": "acme"}"#,
    );
    assert_eq!(status, 201, "{owner}");
    let owner = token_of(&owner);
    let (status, developer) = http(
        &address,
        "POST",
        "/v1/tokens",
        &owner,
        r#"{"subject": "ci", "role": "developer"}"#,
    );
    assert_eq!(status, 201, "{developer}");
    let developer = token_of(&developer);

    let module = std::fs::read(weir_guests::TEMPERATURE.path()).unwrap();
    let (status, body) = http_bytes(
        &address,
        "POST",
        "/v1/modules?name=temperature&version=1.0.0",
        &developer,
        "application/wasm",
        &module,
    );
    assert_eq!(status, 201, "{body}");
    let graph = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/graph-simple.yaml"
    ))
    .unwrap();
    let (status, body) = http_bytes(
        &address,
        "POST",
        "/v1/graphs?name=simple&version=1",
        &developer,
        "application/yaml",
        &graph,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        &address,
        "POST",
        "/v1/deployments",
        &developer,
        r#"{"id": "convert", "graph": {"name": "simple", "version": "1"}}"#,
    );
    assert_eq!(status, 201, "{body}");

    let ingest = r#"[{"topic": "probe/1", "payload": "{\"temperature\":{\"value\":1209,\"unit\":\"F\"}}"}, {"payload": "not json"}]"#;
    let (status, body) = http(
        &address,
        "POST",
        "/v1/deployments/convert/ingest?wait=true",
        &developer,
        ingest,
    );
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["accepted"], 2);
    let outputs = reply["outputs"].as_array().unwrap();
    assert_eq!(
        outputs.len(),
        1,
        "the unparsable message is dead-lettered: {body}"
    );
    assert_eq!(
        outputs[0]["payload"],
        r#"{"temperature":{"value":653.8888888888889,"count":0,"max":0.0,"min":0.0,"average":0.0,"last":0.0,"unit":"C","overtemp":false}}"#
    );
    let (_, status_body) = http(&address, "GET", "/v1/deployments/convert", &developer, "");
    let deployment: serde_json::Value = serde_json::from_str(&status_body).unwrap();
    assert_eq!(deployment["runtime"]["dead_lettered"], 1, "{status_body}");
    assert_eq!(
        deployment["runtime"]["recent_dead_letters"][0]["reason"],
        "operator_error"
    );
    let (status, _) = http(
        &address,
        "GET",
        "/v1/deployments/convert",
        &owner.replace('a', "b"),
        "",
    );
    assert_eq!(status, 401);
    drop(first);

    let second = serve(data.path());
    let (status, body) = http(
        &second.address,
        "GET",
        "/v1/deployments/convert",
        &developer,
        "",
    );
    assert_eq!(status, 200, "{body}");
    let deployment: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(deployment["status"], "running");
    assert_eq!(
        deployment["history"].as_array().unwrap().last().unwrap()["detail"],
        "resumed after restart"
    );
    let again = r#"[{"payload": "{\"temperature\":{\"value\":212,\"unit\":\"F\"}}"}]"#;
    let (status, body) = http(
        &second.address,
        "POST",
        "/v1/deployments/convert/ingest?wait=true",
        &developer,
        again,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"\"value\":100.0"#), "{body}");

    // What the deployment uses is not deleted from under it (its next start would find it
    // gone); once the deployment goes, both may go.
    for path in ["/v1/modules/temperature/1.0.0", "/v1/graphs/simple/1"] {
        let (status, body) = http(&second.address, "DELETE", path, &developer, "");
        assert_eq!(status, 409, "{path}: {body}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "conflict", "{body}");
        assert!(
            problem["detail"].as_str().unwrap().contains("convert"),
            "names the deployment: {body}"
        );
    }
    let (status, _) = http(
        &second.address,
        "DELETE",
        "/v1/deployments/convert",
        &developer,
        "",
    );
    assert_eq!(status, 204);
    for path in ["/v1/modules/temperature/1.0.0", "/v1/graphs/simple/1"] {
        let (status, body) = http(&second.address, "DELETE", path, &developer, "");
        assert_eq!(status, 204, "{path}: {body}");
    }
}

#[test]
fn module_state_is_intact_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = serve(data.path());
    let admin = first.admin_token.clone().unwrap();
    let address = first.address.clone();
    assert_eq!(
        http(
            &address,
            "POST",
            "/v1/tenants",
            &admin,
            r#"{"id": "plant"}"#
        )
        .0,
        201
    );
    let (_, developer) = http(
        &address,
        "POST",
        "/v1/tokens",
        &admin,
        r#"{"subject": "dev", "role": "developer", "tenant": "plant"}"#,
    );
    let developer = token_of(&developer);
    let module = std::fs::read(weir_guests::ENRICHMENT.path()).unwrap();
    assert_eq!(
        http_bytes(
            &address,
            "POST",
            "/v1/modules?name=enrichment&version=1.0.0",
            &developer,
            "application/wasm",
            &module
        )
        .0,
        201
    );
    let graph = "metadata: {$schema: s, name: enrich, version: '1'}
moduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}
operations:
  - {operationType: source, name: source}
  - {operationType: map, name: module-enrichment/map, module: 'enrichment:1.0.0'}
  - {operationType: sink, name: sink}
connections:
  - {from: {name: source}, to: {name: module-enrichment/map}}
  - {from: {name: module-enrichment/map}, to: {name: sink}}
";
    assert_eq!(
        http_bytes(
            &address,
            "POST",
            "/v1/graphs?name=enrich&version=1",
            &developer,
            "application/yaml",
            graph.as_bytes()
        )
        .0,
        201
    );
    assert_eq!(
        http(
            &address,
            "POST",
            "/v1/deployments",
            &developer,
            r#"{"id": "enrich", "graph": {"name": "enrich", "version": "1"}}"#
        )
        .0,
        201
    );
    let hot = r#"[{"payload": "{\"sensor_data\":{\"temperature\":[{\"count\":1,\"max\":150,\"min\":150,\"average\":150,\"last\":150,\"unit\":\"C\"}]}}"}]"#;
    let mild = r#"[{"payload": "{\"sensor_data\":{\"temperature\":[{\"count\":1,\"max\":50,\"min\":10,\"average\":30,\"last\":30,\"unit\":\"C\"}]}}"}]"#;
    let (status, body) = http(
        &address,
        "POST",
        "/v1/deployments/enrich/ingest?wait=true",
        &developer,
        hot,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#"\"overtemp\":true"#),
        "a hot reading sets the flag: {body}"
    );
    drop(first);

    let second = serve(data.path());
    let (status, body) = http(
        &second.address,
        "POST",
        "/v1/deployments/enrich/ingest?wait=true",
        &developer,
        mild,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#"\"overtemp\":true"#),
        "the module read the flag it stored before the restart: {body}"
    );
    let (status, body) = http(&second.address, "GET", "/v1/state/overtemp", &developer, "");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""value":"true""#),
        "the API sees the module's state: {body}"
    );
    let (status, body) = http_bytes(
        &second.address,
        "PUT",
        "/v1/state/overtemp",
        &developer,
        "text/plain",
        b"false",
    );
    assert_eq!(status, 200, "{body}");
    let (_, body) = http(
        &second.address,
        "POST",
        "/v1/deployments/enrich/ingest?wait=true",
        &developer,
        mild,
    );
    assert!(
        body.contains(r#"\"overtemp\":false"#),
        "the module sees what the API seeded: {body}"
    );
}

/// The line `weir serve` prints after resuming deployments: how it came by its modules.
fn compile_line(server: &common::Server) -> String {
    server
        .lines
        .iter()
        .find(|line| line.starts_with("modules: "))
        .cloned()
        .unwrap_or_else(|| panic!("no compile count printed: {:?}", server.lines))
}

/// One waited ingest into deployment `id` of the echo graph: the payload comes back.
async fn echoes(client: &weir_api::client::Client, id: &str) {
    let reply = client
        .ingest(id, &[weir_api::rest::IngestMessage::new("ping")], true)
        .await
        .unwrap();
    let outputs = reply.outputs.unwrap();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0].payload, "ping");
}

/// A restart loads every module from the compile cache in the data directory and compiles
/// none (counted by the engine, printed by `weir serve`); a damaged artifact is discarded and
/// the module compiled again, and the deployments run either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_compiles_nothing_and_a_damaged_artifact_is_compiled_again() {
    let data = tempfile::tempdir().unwrap();
    let first = serve(data.path());
    let developer =
        common::tenant(&first.admin(), "acme", weir_api::tenancy::Quotas::default()).await;
    developer
        .push_module("echo", "1.0.0", weir_guests::ECHO.bytes())
        .await
        .unwrap();
    developer
        .push_graph("g", "1", common::chain_graph("g", "echo", 2))
        .await
        .unwrap();
    for id in ["one", "two"] {
        developer
            .deploy(&common::http_deployment(id, "g"))
            .await
            .unwrap();
        echoes(&developer, id).await;
    }
    let token = developer.token().unwrap().to_owned();
    drop(first);
    let artifacts: Vec<_> = std::fs::read_dir(data.path().join("artifacts"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(
        artifacts.len(),
        1,
        "one module, one artifact: {artifacts:?}"
    );

    let second = serve(data.path());
    assert!(
        second.lines.iter().any(|l| l == "resumed 2 deployment(s)"),
        "{:?}",
        second.lines
    );
    assert_eq!(
        compile_line(&second),
        "modules: 0 compiled, 1 loaded from the compile cache, 0 damaged artifact(s) discarded"
    );
    let developer = second.client(&token);
    for id in ["one", "two"] {
        echoes(&developer, id).await;
    }
    drop(second);

    // One bit of the machine code flipped: caught by the artifact's checksum.
    let mut damaged = std::fs::read(&artifacts[0]).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    std::fs::write(&artifacts[0], damaged).unwrap();
    let third = serve(data.path());
    assert_eq!(
        compile_line(&third),
        "modules: 1 compiled, 0 loaded from the compile cache, 1 damaged artifact(s) discarded"
    );
    let developer = third.client(&token);
    for id in ["one", "two"] {
        echoes(&developer, id).await;
    }
}
