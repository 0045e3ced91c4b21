//! The platform end to end, as a user drives it: the typed client of `weir-api` against a real
//! `weir serve` on loopback, real modules built from source, a restart in the middle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::time::Duration;

use weir_api::client::Client;
use weir_api::rest::{
    Binding, CreateDeployment, CreateEndpoint, CreateTenant, EndpointKind, GraphRef, IngestMessage,
    MintToken,
};
use weir_api::tenancy::{Quotas, Role};

const SIMPLE_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");

async fn tenant_with_developer(admin: &Client, id: &str, quotas: Option<Quotas>) -> Client {
    admin
        .create_tenant(&CreateTenant {
            id: id.to_owned(),
            display_name: None,
            quotas,
        })
        .await
        .unwrap();
    let owner = admin
        .mint_token(&MintToken {
            subject: format!("{id}-owner"),
            role: Role::Owner,
            ttl_seconds: None,
            tenant: Some(id.to_owned()),
        })
        .await
        .unwrap();
    let owner = admin.with_token(owner.token.unwrap());
    let developer = owner
        .mint_token(&MintToken {
            subject: format!("{id}-ci"),
            role: Role::Developer,
            ttl_seconds: Some(3600),
            tenant: None,
        })
        .await
        .unwrap();
    admin.with_token(developer.token.unwrap())
}

fn deployment(id: &str, graph: &str) -> CreateDeployment {
    CreateDeployment {
        id: id.to_owned(),
        graph: GraphRef {
            name: graph.to_owned(),
            version: "1".to_owned(),
        },
        configuration: Default::default(),
        source: Binding::default(),
        sink: Binding::default(),
        dead_letters: None,
        instances: 1,
        partition_key: None,
    }
}

fn fahrenheit(value: u32) -> IngestMessage {
    IngestMessage::new(format!(
        r#"{{"temperature":{{"value":{value},"unit":"F"}}}}"#
    ))
}

/// Waits until `check` passes on what `read` returns (the drain and feeds are asynchronous).
async fn eventually<T, F, Fut>(mut read: F, check: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..200 {
        let value = read().await;
        if check(&value) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    read().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_deploys_ingests_observes_and_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = common::serve(data.path());
    let admin = first.admin();
    admin.health().await.unwrap();
    let developer = tenant_with_developer(&admin, "acme", None).await;

    let module = developer
        .push_module(
            "temperature",
            "1.0.0",
            std::fs::read(weir_guests::TEMPERATURE.path()).unwrap(),
        )
        .await
        .unwrap();
    assert!(module.digest.starts_with("sha256:"));
    assert!(module.operators.contains(&"map".to_owned()), "{module:?}");
    developer
        .push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();
    let mut convert = deployment("convert", "simple");
    // A declared parameter: the map logs the properties it is given at init.
    convert
        .configuration
        .insert("key1".to_owned(), "hello".to_owned());
    let created = developer.deploy(&convert).await.unwrap();
    assert_eq!(created.status, "running");

    let reply = developer
        .ingest(
            "convert",
            &[fahrenheit(1209), IngestMessage::new("not json")],
            true,
        )
        .await
        .unwrap();
    assert_eq!(reply.accepted, 2);
    let outputs = reply.outputs.unwrap();
    assert_eq!(outputs.len(), 1, "the unparsable message is dead-lettered");
    assert_eq!(
        outputs[0].payload,
        r#"{"temperature":{"value":653.8888888888889,"count":0,"max":0.0,"min":0.0,"average":0.0,"last":0.0,"unit":"C","overtemp":false}}"#
    );
    let letters = eventually(
        || developer.dead_letters(Some("convert")),
        |l| l.as_ref().map_or(true, |l| !l.is_empty()),
    )
    .await
    .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "operator_error");
    assert_eq!(letters[0].payload, "not json");
    assert_eq!(letters[0].node, "module-temperature/map");
    assert_eq!(letters[0].deployment, "convert");

    // Ingest without waiting: the outputs wait in the HTTP sink queue.
    let reply = developer
        .ingest("convert", &[fahrenheit(212), fahrenheit(32)], false)
        .await
        .unwrap();
    assert_eq!((reply.accepted, reply.outputs), (2, None));
    let mut payloads: Vec<String> = Vec::new();
    for _ in 0..200 {
        let taken = developer.take_outputs("convert", 10).await.unwrap();
        payloads.extend(taken.outputs.unwrap().into_iter().map(|o| o.payload));
        if payloads.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(payloads.len(), 2, "{payloads:?}");
    assert!(payloads[0].contains(r#""value":100.0"#), "{payloads:?}");

    // Status, metrics, logs and usage are the tenant's own.
    let status = developer.deployment("convert").await.unwrap();
    let runtime = status.runtime.unwrap();
    assert_eq!(runtime["received"], 4);
    assert_eq!(runtime["dead_lettered"], 1);
    let map = runtime["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(name, _)| name.contains("map"))
        .unwrap()
        .1;
    assert!(map["calls"].as_u64().unwrap() >= 4, "{runtime}");
    assert!(map["fuel"].as_u64().unwrap() > 0, "{runtime}");
    let metrics = developer.metrics().await.unwrap();
    assert!(
        !metrics.is_empty(),
        "the temperature module records metrics"
    );
    let text = developer.metrics_text().await.unwrap();
    assert!(text.contains("# TYPE "), "{text}");
    let usage = developer.usage().await.unwrap();
    assert_eq!(usage.modules, 1);
    assert_eq!(usage.deployments, 1);
    assert_eq!(usage.messages_in, 4);
    assert_eq!(usage.dead_letters, 1);
    assert!(usage.fuel > 0);
    assert!(usage.api_requests > 5);
    let logs = developer.logs(Some("convert"), None).await.unwrap();
    assert!(!logs.is_empty(), "the map logs its configuration at init");
    for line in &logs {
        assert_eq!(line.deployment.as_deref(), Some("convert"));
        assert!(
            line.node
                .as_deref()
                .is_some_and(|n| n.starts_with("module-temperature/")),
            "{line:?}"
        );
    }
    let later = developer
        .logs(Some("convert"), Some(logs.last().unwrap().seq))
        .await
        .unwrap();
    assert!(
        later.iter().all(|l| l.seq > logs.last().unwrap().seq),
        "after= follows"
    );

    // Pause, resume, rolling update.
    assert_eq!(developer.pause("convert").await.unwrap().status, "paused");
    let paused = developer.ingest("convert", &[fahrenheit(50)], true).await;
    assert_eq!(
        paused.unwrap_err().code(),
        Some("unavailable"),
        "a paused deployment takes nothing"
    );
    assert_eq!(developer.resume("convert").await.unwrap().status, "running");
    let mut with_bound = deployment("convert", "simple");
    with_bound
        .configuration
        .insert("undeclared_key".to_owned(), "1".to_owned());
    let updated = developer.update_deployment(&with_bound).await.unwrap();
    assert!(
        updated
            .warnings
            .iter()
            .any(|w| w.contains("undeclared_key")),
        "{updated:?}"
    );
    let history: Vec<String> = developer
        .deployment("convert")
        .await
        .unwrap()
        .history
        .into_iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(history, ["running", "paused", "running", "running"]);

    // State written through the API survives the restart.
    let state_ops = developer.usage().await.unwrap().state_ops;
    developer
        .state_set("greeting", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(
        developer.usage().await.unwrap().state_ops,
        state_ops + 1,
        "state operations are metered"
    );
    drop(first);

    let second = common::serve(data.path());
    let developer = developer_for(&second, &developer);
    let status = developer.deployment("convert").await.unwrap();
    assert_eq!(status.status, "running");
    assert_eq!(
        status.history.last().unwrap().detail,
        "resumed after restart"
    );
    assert_eq!(
        status.spec.configuration["undeclared_key"], "1",
        "the update was kept"
    );
    let reply = developer
        .ingest("convert", &[fahrenheit(212)], true)
        .await
        .unwrap();
    assert!(
        reply.outputs.unwrap()[0]
            .payload
            .contains(r#""value":100.0"#)
    );
    assert_eq!(
        developer
            .state_get("greeting")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("hello")
    );
    developer.delete_deployment("convert").await.unwrap();
    assert_eq!(
        developer.deployment("convert").await.unwrap_err().code(),
        Some("not_found")
    );
}

/// The same token against the restarted server.
fn developer_for(server: &common::Server, old: &Client) -> Client {
    server.client(old.token().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_dataflow_graph_documents_deploy_and_endpoints_keep_their_secrets() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let developer = tenant_with_developer(&admin, "plant", None).await;
    let owner_token = admin
        .mint_token(&MintToken {
            subject: "plant-owner".to_owned(),
            role: Role::Owner,
            ttl_seconds: None,
            tenant: Some("plant".to_owned()),
        })
        .await
        .unwrap()
        .token
        .unwrap();
    let owner = admin.with_token(owner_token);
    developer
        .push_module(
            "temperature",
            "1.0.0",
            std::fs::read(weir_guests::TEMPERATURE.path()).unwrap(),
        )
        .await
        .unwrap();
    developer
        .push_graph("graph-simple", "1.0.0", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();

    // Endpoints: secrets never come back; the platform's own network is closed.
    let broker = owner
        .create_endpoint(&CreateEndpoint {
            name: "broker".to_owned(),
            kind: EndpointKind::Mqtt,
            address: Some("broker.example.com:8883".to_owned()),
            settings: [("client_id".to_owned(), "plant-1".to_owned())].into(),
            secret: Some("hunter2".to_owned()),
        })
        .await
        .unwrap();
    assert!(broker.has_secret);
    let listed = serde_json::to_string(&developer.endpoints().await.unwrap()).unwrap();
    assert!(!listed.contains("hunter2"), "{listed}");
    let (_, raw) = developer
        .raw(
            weir_api::client::HttpMethod::GET,
            "/v1/endpoints/broker",
            None,
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("hunter2"));
    for address in [
        "127.0.0.1:1883",
        "localhost:6379",
        "169.254.169.254:80",
        "[::1]:9092",
    ] {
        let refused = owner
            .create_endpoint(&CreateEndpoint {
                name: "internal".to_owned(),
                kind: EndpointKind::Kafka,
                address: Some(address.to_owned()),
                settings: Default::default(),
                secret: None,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("invalid_request"), "{address}");
    }
    let mut quotas = admin.tenant("plant").await.unwrap().quotas;
    quotas.allowed_private_hosts = vec!["127.0.0.1".to_owned()];
    admin.set_quotas("plant", &quotas).await.unwrap();
    owner
        .create_endpoint(&CreateEndpoint {
            name: "internal".to_owned(),
            kind: EndpointKind::Kafka,
            address: Some("127.0.0.1:9092".to_owned()),
            settings: Default::default(),
            secret: None,
        })
        .await
        .expect("an admin opened 127.0.0.1 for this tenant");
    let refused = developer
        .create_endpoint(&CreateEndpoint {
            name: "dev".to_owned(),
            kind: EndpointKind::Http,
            address: None,
            settings: Default::default(),
            secret: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some("forbidden"),
        "endpoints are the owner's"
    );
    owner
        .create_endpoint(&CreateEndpoint {
            name: "ingest".to_owned(),
            kind: EndpointKind::Http,
            address: None,
            settings: Default::default(),
            secret: None,
        })
        .await
        .unwrap();

    // An Azure DataflowGraph, as written for Azure, bound to the tenant's endpoints.
    let document = |source: &str, mode: &str, name: &str| {
        format!(
            "apiVersion: connectivity.iotoperations.azure.com/v1
kind: DataflowGraph
metadata:
  name: {name}
spec:
  mode: {mode}
  profileRef: default
  nodes:
    - nodeType: Source
      name: sensors
      sourceSettings:
        endpointRef: {source}
        dataSources: [sensor/temperature/raw]
    - nodeType: Graph
      name: convert
      graphSettings:
        registryEndpointRef: default
        artifact: azure-samples/explore-iot-operations/graph-simple:1.0.0
        configuration:
          - key: unit
            value: C
    - nodeType: Destination
      name: processed
      destinationSettings:
        endpointRef: ingest
        dataDestination: sensor/temperature/processed
  nodeConnections:
    - from: {{name: sensors}}
      to: {{name: convert}}
    - from: {{name: convert}}
      to: {{name: processed}}
"
        )
    };
    let refused = developer
        .deploy_dataflow_graph(document("broker", "Enabled", "azure"))
        .await
        .unwrap_err();
    let problem = refused.problem().unwrap();
    assert_eq!(problem.code, "invalid_deployment");
    // The mqtt connector checks the endpoint: its secret is a password with no user named.
    assert_eq!(
        problem.errors[0].path, "/endpoint/settings/username",
        "the endpoint's problem is named with its path: {problem:?}"
    );
    let deployed = developer
        .deploy_dataflow_graph(document("ingest", "Enabled", "azure"))
        .await
        .unwrap();
    assert_eq!(deployed.status, "running");
    let reply = developer
        .ingest("azure", &[fahrenheit(212)], true)
        .await
        .unwrap();
    assert!(
        reply.outputs.unwrap()[0]
            .payload
            .contains(r#""value":100.0"#)
    );
    let paused = developer
        .deploy_dataflow_graph(document("ingest", "Disabled", "azure-off"))
        .await
        .unwrap();
    assert_eq!(paused.status, "paused", "mode Disabled deploys paused");

    // Executors: admin only.
    let executors = admin.executors().await.unwrap();
    assert_eq!(executors.len(), 1);
    assert_eq!(executors[0].deployments, 1);
    assert_eq!(
        developer.executors().await.unwrap_err().code(),
        Some("forbidden")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let anonymous = Client::new(&format!("http://{}", server.address), None).unwrap();
    let document = anonymous.openapi().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/v1/tenants",
        "/v1/tokens",
        "/v1/modules",
        "/v1/modules/import",
        "/v1/graphs",
        "/v1/graphs/import",
        "/v1/endpoints",
        "/v1/devices",
        "/v1/devices/{name}",
        "/v1/deployments",
        "/v1/deployments/{id}/ingest",
        "/v1/state/{key}",
        "/v1/metrics",
        "/v1/logs",
        "/v1/deadletters",
        "/v1/usage",
        "/v1/executors",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
}

/// Runs the `weir` command with the config file `config`; returns exit success and stdout.
fn weir(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_CONFIG", config)
        .env_remove("WEIR_SERVER")
        .env_remove("WEIR_TOKEN")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn serve_demo_and_the_cli_commands_work_together() {
    let data = tempfile::tempdir().unwrap();
    // No --modules: the demo's module is the one embedded in the binary.
    let server = common::serve_with(data.path(), &["--demo"]);
    let line = |prefix: &str| {
        server
            .lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("--demo prints {prefix:?}: {:?}", server.lines))
            .to_owned()
    };
    let token = line("demo: developer token: ");
    let device = line("demo: device username: ");
    let password = line("demo: device password: ");
    assert_eq!(device, "thermometer@demo");
    assert!(
        server
            .lines
            .iter()
            .any(|l| l.starts_with("demo: try  weir mqtt pub --broker ")
                && l.contains(&server.mqtt_address)),
        "{:?}",
        server.lines
    );
    let config = data.path().join("cli.json");
    let url = format!("http://{}", server.address);
    let (ok, _) = weir(&config, &["login", "--server", &url, "--token", &token]);
    assert!(ok, "login");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600,
        "the saved token is the owner's only"
    );

    let (ok, out) = weir(&config, &["status", "--output", "json"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deployments: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        deployments,
        [("demo", "running"), ("demo-mqtt", "running")],
        "{out}"
    );

    // A reading published to the embedded broker comes out of demo-mqtt transformed, with the
    // publisher's user properties and content type, and a __ts: through the CLI alone.
    let login = [
        "--broker",
        server.mqtt_address.as_str(),
        "--username",
        device.as_str(),
        "--password",
        password.as_str(),
    ];
    let mut sub = vec!["mqtt", "sub"];
    sub.extend(login);
    sub.extend([
        "sensors/temperature/processed",
        "--count",
        "1",
        "--timeout-ms",
        "30000",
        "--output",
        "json",
    ]);
    let subscriber = common::Background::start(&sub);
    subscriber.wait_for_stderr("subscribed to sensors/temperature/processed", LIMIT);
    let mut publish = vec!["mqtt", "pub"];
    publish.extend(login);
    publish.extend([
        "sensors/temperature/raw",
        r#"{"temperature":{"value":212,"unit":"F"}}"#,
        "--user-property",
        "site=north",
        "--content-type",
        "application/json",
    ]);
    let (out, err, code) = common::weir_within(&publish, LIMIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        "published to sensors/temperature/raw (QoS 1, PUBACK 0x00 Success)"
    );
    let (out, err, code) = subscriber.finish(LIMIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("received 1 message(s): --count reached"),
        "{err}"
    );
    let received: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(received["topic"], "sensors/temperature/processed", "{out}");
    let reading: serde_json::Value =
        serde_json::from_str(received["payload"].as_str().unwrap()).unwrap();
    assert_eq!(reading["temperature"]["value"], 100.0, "{out}");
    assert_eq!(reading["temperature"]["unit"], "C", "{out}");
    assert_eq!(received["content_type"], "application/json", "{out}");
    let properties = received["user_properties"].as_array().unwrap();
    assert!(
        properties.contains(&serde_json::json!(["site", "north"])),
        "{out}"
    );
    assert!(properties.iter().any(|p| p[0] == "__ts"), "{out}");

    let payload = r#"{"temperature":{"value":212,"unit":"F"}}"#;
    let (ok, out) = weir(
        &config,
        &["ingest", "demo", payload, "--wait", "--output", "json"],
    );
    assert!(ok, "{out}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        reply["outputs"][0]["payload"]
            .as_str()
            .unwrap()
            .contains(r#""value":100.0"#),
        "{out}"
    );

    let humidity = weir_guests::HUMIDITY.path();
    let (ok, out) = weir(
        &config,
        &[
            "module",
            "push",
            humidity.to_str().unwrap(),
            "--version",
            "2.0.0",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("humidity@2.0.0 sha256:"), "{out}");
    let (ok, out) = weir(&config, &["module", "list", "--output", "json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let (ok, out) = weir(&config, &["state", "set", "mode", "eco"]);
    assert!(ok, "{out}");
    let (ok, out) = weir(&config, &["state", "get", "mode"]);
    assert_eq!((ok, out.trim()), (true, "eco"));
    let (ok, out) = weir(&config, &["logs", "--output", "json"]);
    assert!(ok, "{out}");

    // Errors: the server's problem, exit code 1.
    let (ok, out) = weir(
        &config,
        &[
            "deploy",
            "--id",
            "second",
            "--graph",
            "missing:1",
            "--output",
            "json",
        ],
    );
    assert!(!ok);
    let problem: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(problem["code"], "invalid_deployment");
    let (ok, out) = weir(&config, &["tenant", "list", "--output", "json"]);
    assert!(!ok);
    assert!(out.contains("\"forbidden\""), "{out}");
    let (ok, _) = weir(&config, &["status", "nonexistent"]);
    assert!(!ok);
    drop(server);

    // A second start with --demo finds the demo in place, with a new password for its device.
    let again = common::serve_with(
        data.path(),
        &[
            "--demo",
            "--modules",
            weir_guests::Guest::dir().to_str().unwrap(),
        ],
    );
    assert!(
        again
            .lines
            .iter()
            .any(|l| l.contains("tenant demo exists already")),
        "{:?}",
        again.lines
    );
    let renewed = again
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("demo: device password: "))
        .expect("a later start prints the device's new password");
    assert_ne!(renewed, password);
    let mut publish = vec!["mqtt", "pub", "--broker", again.mqtt_address.as_str()];
    publish.extend([
        "--username",
        device.as_str(),
        "--password",
        renewed,
        "sensors/temperature/raw",
        "{}",
    ]);
    let (out, err, code) = common::weir_within(&publish, LIMIT);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// How long a `weir` command of these tests may take.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn weir_mqtt_names_what_the_broker_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    tenant_with_developer(&admin, "acme", None).await;
    let owner = common::token(&admin, "acme", Role::Owner).await;
    let device = owner.create_device("probe").await.unwrap();
    let broker = server.mqtt_address.as_str();
    let mqtt = |extra: &[&str]| {
        let mut args = vec!["mqtt"];
        args.extend(extra);
        common::weir_within(&args, LIMIT)
    };

    // A wrong password: exit 1, the CONNACK named.
    let (out, err, code) = mqtt(&[
        "pub",
        "--broker",
        broker,
        "--username",
        &device.username,
        "--password",
        "wrong",
        "t",
        "x",
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("refused the login: CONNACK 0x86 Bad User Name or Password"),
        "{err}"
    );

    // The right password with another tenant's client id.
    let (_, err, code) = mqtt(&[
        "sub",
        "--broker",
        broker,
        "--username",
        &device.username,
        "--password",
        &device.password,
        "--client-id",
        "probe@other",
        "#",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("CONNACK 0x87 Not authorized"), "{err}");

    // Logged in: what the tenant wall refuses is named too.
    let login = [
        "--broker",
        broker,
        "--username",
        &device.username,
        "--password",
        &device.password,
    ];
    let publish = [&["pub"][..], &login, &["$SYS/broker", "x"]].concat();
    let (_, err, code) = mqtt(&publish);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refused the message to $SYS/broker: PUBACK 0x87 Not authorized"),
        "{err}"
    );
    let subscribe = [&["sub"][..], &login, &["$SYS/#", "--timeout-ms", "10000"]].concat();
    let (_, err, code) = mqtt(&subscribe);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refused the subscription: $SYS/#: SUBACK 0x87 Not authorized"),
        "{err}"
    );

    // --count not reached by --timeout-ms is a failure; without --count the timeout ends it.
    let subscribe = [
        &["sub"][..],
        &login,
        &["quiet/#", "--count", "1", "--timeout-ms", "300"],
    ]
    .concat();
    let (out, err, code) = mqtt(&subscribe);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(
        err.contains("received 0 of 1 message(s) within 300 ms"),
        "{err}"
    );
    let subscribe = [&["sub"][..], &login, &["quiet/#", "--timeout-ms", "300"]].concat();
    let (_, err, code) = mqtt(&subscribe);
    assert_eq!(code, Some(0), "{err}");

    // No broker there: the connection error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (_, err, code) = mqtt(&[
        "pub",
        "--broker",
        &nowhere,
        "--username",
        "a@b",
        "--password",
        "c",
        "t",
        "x",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach the MQTT broker at {nowhere}")),
        "{err}"
    );
}
