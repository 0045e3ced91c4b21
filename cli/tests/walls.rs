//! The API's edges against a real `weir serve`: a corpus of bad input (each answered with its
//! documented status and code, never a 500, the server healthy afterwards), every API quota at
//! its limit, and the tenant walls (each listed in `gateway/README.md`) attacked one by one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use common::{tenant, token};

use weir_api::client::{Client, HttpMethod as Method};
use weir_api::rest::{
    CreateDeployment, CreateEndpoint, EndpointKind, IngestMessage, MintToken, Problem,
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

fn graph_with_operations(count: usize) -> String {
    common::chain_graph("big", "temperature", count)
}

fn refused<T>(result: Result<T, weir_api::client::ClientError>, what: &str) {
    let code = result.err().and_then(|e| e.code().map(str::to_owned));
    assert_eq!(code.as_deref(), Some("quota_exceeded"), "{what}");
}

fn not_found<T>(result: Result<T, weir_api::client::ClientError>, what: &str) {
    let code = result.err().and_then(|e| e.code().map(str::to_owned));
    assert_eq!(code.as_deref(), Some("not_found"), "{what}");
}

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        content_type,
        body: body.into(),
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_code_and_never_a_500() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let developer = tenant(
        &admin,
        "acme",
        Quotas {
            max_module_bytes: 4 << 20,
            ..roomy()
        },
    )
    .await;
    developer
        .push_graph("no-modules", "1", SIMPLE_GRAPH.to_owned())
        .await
        .expect("graphs may name modules pushed later");

    const JSON: Option<&str> = Some("application/json");
    const WASM: Option<&str> = Some("application/wasm");
    const YAML: Option<&str> = Some("application/yaml");
    let mut random = vec![0u8; 4096];
    let mut seed: u32 = 0x2545_f491;
    for byte in &mut random {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *byte = seed.to_le_bytes()[0];
    }
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let big_graph = graph_with_operations(10_000);
    let admin_cases = vec![
        case(
            "malformed JSON",
            Method::POST,
            "/v1/tenants",
            JSON,
            "{\"id\":",
            400,
            "invalid_request",
        ),
        case(
            "unknown field",
            Method::POST,
            "/v1/tenants",
            JSON,
            r#"{"id": "x", "colour": "red"}"#,
            400,
            "invalid_request",
        ),
        case(
            "wrong content type",
            Method::POST,
            "/v1/tenants",
            Some("text/plain"),
            r#"{"id": "x"}"#,
            415,
            "unsupported_media_type",
        ),
        case(
            "no content type",
            Method::POST,
            "/v1/tenants",
            None,
            r#"{"id": "x"}"#,
            415,
            "unsupported_media_type",
        ),
        case(
            "empty body",
            Method::POST,
            "/v1/tenants",
            JSON,
            "",
            400,
            "invalid_request",
        ),
        case(
            "JSON of the wrong shape",
            Method::POST,
            "/v1/tenants",
            JSON,
            "[1, 2, 3]",
            400,
            "invalid_request",
        ),
        case(
            "unicode tenant id",
            Method::POST,
            "/v1/tenants",
            JSON,
            r#"{"id": "tënant"}"#,
            400,
            "invalid_request",
        ),
        case(
            "unknown quota",
            Method::PUT,
            "/v1/tenants/acme/quotas",
            JSON,
            r#"{"fuel_per_mesage": 1}"#,
            400,
            "invalid_request",
        ),
        case(
            "method not allowed",
            Method::PATCH,
            "/v1/tenants",
            JSON,
            "{}",
            405,
            "method_not_allowed",
        ),
        case(
            "a document over 1 MiB",
            Method::POST,
            "/v1/tenants",
            JSON,
            format!(
                r#"{{"id": "x", "display_name": "{}"}}"#,
                "a".repeat(2 << 20)
            ),
            413,
            "payload_too_large",
        ),
        case(
            "unknown route",
            Method::GET,
            "/v1/nothing-here",
            None,
            "",
            404,
            "not_found",
        ),
    ];
    let tenant_cases = vec![
        case(
            "random bytes as wasm",
            Method::POST,
            "/v1/modules?name=r&version=1",
            WASM,
            random.clone(),
            422,
            "invalid_module",
        ),
        case(
            "a core module",
            Method::POST,
            "/v1/modules?name=c&version=1",
            WASM,
            core_module,
            422,
            "invalid_module",
        ),
        case(
            "an empty module",
            Method::POST,
            "/v1/modules?name=e&version=1",
            WASM,
            "",
            422,
            "invalid_module",
        ),
        case(
            "a module as JSON",
            Method::POST,
            "/v1/modules?name=j&version=1",
            JSON,
            temperature(),
            415,
            "unsupported_media_type",
        ),
        case(
            "a module over the size quota",
            Method::POST,
            "/v1/modules?name=big&version=1",
            WASM,
            vec![0u8; 5 << 20],
            413,
            "payload_too_large",
        ),
        case(
            "a body over the global limit",
            Method::POST,
            "/v1/modules?name=huge&version=1",
            WASM,
            vec![0u8; 66 << 20],
            413,
            "payload_too_large",
        ),
        case(
            "path traversal in a name",
            Method::POST,
            "/v1/modules?name=../../etc&version=1",
            WASM,
            temperature(),
            400,
            "invalid_request",
        ),
        case(
            "unicode in a name",
            Method::POST,
            "/v1/modules?name=t%C3%ABmp&version=1",
            WASM,
            temperature(),
            400,
            "invalid_request",
        ),
        case(
            "a missing version",
            Method::POST,
            "/v1/modules?name=t",
            WASM,
            temperature(),
            400,
            "invalid_request",
        ),
        case(
            "an encoded traversal in a path",
            Method::GET,
            "/v1/modules/..%2F..%2Fsecret/1",
            None,
            "",
            404,
            "not_found",
        ),
        case(
            "malformed YAML",
            Method::POST,
            "/v1/graphs?name=g&version=1",
            YAML,
            "operations: [unclosed",
            422,
            "invalid_graph",
        ),
        case(
            "malformed JSON graph",
            Method::POST,
            "/v1/graphs?name=g&version=1",
            JSON,
            "{\"operations\": ",
            422,
            "invalid_graph",
        ),
        case(
            "a graph that is not UTF-8",
            Method::POST,
            "/v1/graphs?name=g&version=1",
            YAML,
            vec![0xff, 0xfe, 0x00],
            422,
            "invalid_graph",
        ),
        case(
            "an empty graph",
            Method::POST,
            "/v1/graphs?name=g&version=1",
            YAML,
            "",
            422,
            "invalid_graph",
        ),
        case(
            "a graph over 4 MiB",
            Method::POST,
            "/v1/graphs?name=g&version=1",
            YAML,
            format!("# {}\n", "x".repeat(5 << 20)),
            413,
            "payload_too_large",
        ),
        case(
            "a graph as text/plain",
            Method::POST,
            "/v1/graphs?name=g&version=1",
            Some("text/plain"),
            SIMPLE_GRAPH,
            415,
            "unsupported_media_type",
        ),
        case(
            "10,000 operations",
            Method::POST,
            "/v1/graphs?name=big&version=1",
            YAML,
            big_graph,
            403,
            "quota_exceeded",
        ),
        case(
            "a deployment of a graph whose modules are missing",
            Method::POST,
            "/v1/deployments",
            JSON,
            r#"{"id": "d", "graph": {"name": "no-modules", "version": "1"}}"#,
            422,
            "invalid_deployment",
        ),
        case(
            "a deployment of a missing graph",
            Method::POST,
            "/v1/deployments",
            JSON,
            r#"{"id": "d", "graph": {"name": "nope", "version": "1"}}"#,
            422,
            "invalid_deployment",
        ),
        case(
            "a deployment with an unknown field",
            Method::POST,
            "/v1/deployments",
            JSON,
            r#"{"id": "d", "graph": {"name": "g", "version": "1"}, "replicas": 3}"#,
            400,
            "invalid_request",
        ),
        case(
            "a deployment as text/plain",
            Method::POST,
            "/v1/deployments",
            Some("text/plain"),
            "{}",
            415,
            "unsupported_media_type",
        ),
        case(
            "an empty deployment",
            Method::POST,
            "/v1/deployments",
            JSON,
            "",
            400,
            "invalid_request",
        ),
        case(
            "a DataflowGraph with no nodes",
            Method::POST,
            "/v1/deployments",
            YAML,
            "kind: DataflowGraph\nmetadata: {name: x}\nspec: {nodes: []}\n",
            422,
            "invalid_deployment",
        ),
        case(
            "a deployment id with a slash",
            Method::POST,
            "/v1/deployments",
            JSON,
            r#"{"id": "a/b", "graph": {"name": "no-modules", "version": "1"}}"#,
            422,
            "invalid_deployment",
        ),
        case(
            "ingest of the wrong shape",
            Method::POST,
            "/v1/deployments/d/ingest",
            JSON,
            r#"{"payload": "x"}"#,
            400,
            "invalid_request",
        ),
        case(
            "ingest with a bad query",
            Method::POST,
            "/v1/deployments/d/ingest?wait=maybe",
            JSON,
            "[]",
            400,
            "invalid_request",
        ),
        case(
            "an endpoint of an unknown kind",
            Method::POST,
            "/v1/endpoints",
            JSON,
            r#"{"name": "e", "kind": "smtp"}"#,
            400,
            "invalid_request",
        ),
        case(
            "a state key over the limit",
            Method::PUT,
            &format!("/v1/state/{}", "k".repeat(2000)),
            Some("text/plain"),
            "v",
            400,
            "invalid_request",
        ),
        case(
            "a feed query with an unknown parameter",
            Method::GET,
            "/v1/logs?tenant=other",
            None,
            "",
            400,
            "invalid_request",
        ),
    ];
    let owner = token(&admin, "acme", Role::Owner).await;
    for (client, cases) in [(&admin, admin_cases), (&owner, tenant_cases)] {
        for case in cases {
            // A fresh connection per case: the server closes one whose body it refused unread.
            let fresh = Client::new(client.base(), client.token().map(str::to_owned)).unwrap();
            let (status, body) = fresh
                .raw(
                    case.method.clone(),
                    &case.path,
                    case.content_type,
                    case.body,
                )
                .await
                .unwrap();
            let problem: Problem = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "{}: not a problem document ({e}): {status} {}",
                    case.what,
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(
                (status.as_u16(), problem.code.as_str()),
                (case.status, case.code),
                "{}: {problem:?}",
                case.what
            );
            assert_eq!(problem.status, case.status, "{}", case.what);
            assert!(!problem.detail.is_empty(), "{}", case.what);
            assert!(problem.instance.starts_with("urn:weir:request:"));
        }
    }
    admin.health().await.expect("still healthy");
    assert_eq!(
        developer.modules().await.unwrap().len(),
        0,
        "nothing bad landed"
    );
    assert_eq!(developer.graphs().await.unwrap().len(), 1);
    developer
        .push_module("temperature", "1.0.0", temperature())
        .await
        .expect("good input still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_quota_refuses_precisely_at_its_limit() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let module = temperature();
    let size = module.len() as u64;
    let developer = tenant(
        &admin,
        "tight",
        Quotas {
            max_modules: 3,
            max_module_bytes: size,
            max_module_total_bytes: 2 * size + size / 2,
            max_graphs: 2,
            max_deployments: 1,
            max_nodes_per_graph: 5,
            max_message_bytes: 64,
            max_state_keys: 2,
            ..roomy()
        },
    )
    .await;

    // Module size: exactly the limit passes, one byte more does not.
    let mut bigger = module.clone();
    bigger.push(0);
    let too_big = developer.push_module("big", "1", bigger).await.unwrap_err();
    assert_eq!(too_big.code(), Some("payload_too_large"));
    developer
        .push_module("t", "1", module.clone())
        .await
        .unwrap();
    developer
        .push_module("t", "2", module.clone())
        .await
        .unwrap();
    // Total bytes: a third copy would pass 2.5 × its size.
    refused(
        developer.push_module("t", "3", module.clone()).await,
        "total module bytes",
    );
    // Module count: with room in bytes, the fourth module is over the count.
    let mut quotas = admin.tenant("tight").await.unwrap().quotas;
    quotas.max_module_total_bytes = 100 * size;
    admin.set_quotas("tight", &quotas).await.unwrap();
    developer
        .push_module("t", "3", module.clone())
        .await
        .unwrap();
    refused(
        developer.push_module("t", "4", module.clone()).await,
        "module count",
    );

    // Nodes per graph: 5 operations pass, 6 do not.
    let five = graph_with_operations(3);
    let six = graph_with_operations(4);
    refused(
        developer.push_graph("six", "1", six).await,
        "nodes per graph",
    );
    developer.push_graph("five", "1", five).await.unwrap();
    developer
        .push_graph(
            "simple",
            "1",
            SIMPLE_GRAPH.replace("temperature:1.0.0", "t:1"),
        )
        .await
        .unwrap();
    refused(
        developer
            .push_graph("third", "1", SIMPLE_GRAPH.to_owned())
            .await,
        "graph count",
    );

    // Deployments.
    let deploy = simple_deployment;
    developer.deploy(&deploy("one")).await.unwrap();
    refused(developer.deploy(&deploy("two")).await, "deployment count");

    // Message size at ingest counts topic, payload and properties: 64 bytes pass, 65 do not.
    let sized = |payload: usize| IngestMessage {
        topic: "t/1".to_owned(),
        payload: "x".repeat(payload),
        user_properties: vec![("k".to_owned(), "vv".to_owned())],
    };
    developer.ingest("one", &[sized(58)], false).await.unwrap();
    let over = developer
        .ingest("one", &[sized(59)], false)
        .await
        .unwrap_err();
    assert_eq!(over.code(), Some("payload_too_large"));

    // State keys.
    developer.state_set("a", b"1".to_vec()).await.unwrap();
    developer.state_set("b", b"2".to_vec()).await.unwrap();
    developer
        .state_set("a", b"3".to_vec())
        .await
        .expect("overwriting a key adds none");
    refused(developer.state_set("c", b"4".to_vec()).await, "state keys");

    // API requests per second: the burst is the rate; the next request is refused with
    // Retry-After, and counted.
    let limited = tenant(
        &admin,
        "limited",
        Quotas {
            api_requests_per_second: 5,
            ..Quotas::default()
        },
    )
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let (status, body) = limited
            .raw(Method::GET, "/v1/modules", None, Vec::new())
            .await
            .unwrap();
        if status.as_u16() == 429 {
            let problem: Problem = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem.code, "rate_limited");
            retry_after = Some(());
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    assert!(retry_after.is_some());
    let mut quotas = admin.tenant("limited").await.unwrap().quotas;
    quotas.api_requests_per_second = 10_000;
    admin.set_quotas("limited", &quotas).await.unwrap();
    let usage = limited.usage().await.unwrap();
    assert_eq!(usage.api_requests_limited, 1, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_walls_hold_against_a_real_server() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", roomy()).await;
    let acme_owner = token(&admin, "acme", Role::Owner).await;
    let acme_viewer = token(&admin, "acme", Role::Viewer).await;
    let globex = tenant(&admin, "globex", roomy()).await;
    let globex_owner = token(&admin, "globex", Role::Owner).await;

    // acme's resources: module, graph, endpoint, a running deployment with a dead letter, logs,
    // metrics, a state key.
    acme.push_module("temperature", "1.0.0", temperature())
        .await
        .unwrap();
    acme.push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();
    acme_owner
        .create_endpoint(&CreateEndpoint {
            name: "broker".to_owned(),
            kind: EndpointKind::Mqtt,
            address: Some("broker.example.com:1883".to_owned()),
            settings: Default::default(),
            secret: Some("acme-secret".to_owned()),
        })
        .await
        .unwrap();
    acme.deploy(&simple_deployment("convert")).await.unwrap();
    acme.ingest(
        "convert",
        &[
            IngestMessage::new(r#"{"temperature":{"value":212,"unit":"F"}}"#),
            IngestMessage::new("acme-private-payload"),
        ],
        true,
    )
    .await
    .unwrap();
    acme.state_set("acme-key", b"acme-value".to_vec())
        .await
        .unwrap();
    let acme_token_id = acme_owner.tokens().await.unwrap()[0].id.clone();

    // Wall: another tenant's resource answers 404, exactly like a missing one.
    not_found(globex.deployment("convert").await, "get deployment");
    not_found(
        globex.deployment("no-such-deployment").await,
        "missing deployment",
    );
    not_found(
        globex.delete_deployment("convert").await,
        "delete deployment",
    );
    not_found(globex.pause("convert").await, "pause");
    not_found(globex.resume("convert").await, "resume");
    not_found(globex.take_outputs("convert", 10).await, "outputs");
    not_found(
        globex
            .ingest("convert", &[IngestMessage::new("x")], true)
            .await,
        "ingest",
    );
    not_found(
        globex
            .update_deployment(&simple_deployment("convert"))
            .await,
        "update",
    );
    not_found(globex.delete_module("temperature", "1.0.0").await, "module");
    not_found(globex.state_get("acme-key").await, "state key");
    not_found(globex.state_delete("acme-key").await, "state delete");
    not_found(globex_owner.delete_endpoint("broker").await, "endpoint");
    not_found(globex_owner.revoke_token(&acme_token_id).await, "token");
    for path in [
        "/v1/modules/temperature/1.0.0",
        "/v1/graphs/simple/1",
        "/v1/endpoints/broker",
    ] {
        let (status, _) = globex
            .raw(Method::GET, path, None, Vec::new())
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 404, "{path}");
    }
    // globex deploying acme's graph by name: not found in its own tenant.
    let stolen = globex
        .deploy(&simple_deployment("stolen"))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Some("invalid_deployment"));

    // Wall: lists and feeds are the caller's only.
    assert!(globex.modules().await.unwrap().is_empty());
    assert!(globex.graphs().await.unwrap().is_empty());
    assert!(globex.endpoints().await.unwrap().is_empty());
    assert!(globex.deployments().await.unwrap().is_empty());
    assert!(globex.state_keys().await.unwrap().keys.is_empty());
    assert!(globex.dead_letters(None).await.unwrap().is_empty());
    assert!(
        globex
            .dead_letters(Some("convert"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(globex.logs(None, None).await.unwrap().is_empty());
    assert!(globex.metrics().await.unwrap().is_empty());
    assert!(!globex.metrics_text().await.unwrap().contains("# TYPE"));
    let usage = globex.usage().await.unwrap();
    assert_eq!((usage.messages_in, usage.modules, usage.fuel), (0, 0, 0));
    // The state store's figures are the caller's too: acme's key counts for acme only.
    assert_eq!((usage.state_keys, usage.state_bytes), (0, 0), "{usage:?}");
    let acme_usage = acme.usage().await.unwrap();
    assert_eq!(
        (acme_usage.state_keys, acme_usage.state_bytes),
        (1, ("acme-key".len() + "acme-value".len()) as u64),
        "{acme_usage:?}"
    );
    assert!(
        globex_owner
            .tokens()
            .await
            .unwrap()
            .iter()
            .all(|t| t.tenant.as_deref() == Some("globex"))
    );
    let letters = acme.dead_letters(None).await.unwrap();
    assert_eq!(
        letters[0].payload, "acme-private-payload",
        "acme sees its own"
    );
    assert!(!acme.metrics().await.unwrap().is_empty());

    // Wall: roles. Admin routes refuse tenant tokens; tenant routes refuse the admin; viewers
    // only read; developers do not manage tokens or endpoints.
    for result in [
        acme_owner.tenants().await.map(drop),
        acme_owner.executors().await.map(drop),
        acme_owner.delete_tenant("globex").await,
    ] {
        assert_eq!(result.unwrap_err().code(), Some("forbidden"));
    }
    assert_eq!(admin.modules().await.unwrap_err().code(), Some("forbidden"));
    assert_eq!(
        acme_viewer
            .push_module("v", "1", temperature())
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    assert_eq!(
        acme_viewer
            .state_set("k", b"v".to_vec())
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    acme_viewer.deployments().await.expect("viewers read");
    assert_eq!(acme.tokens().await.unwrap_err().code(), Some("forbidden"));
    let minted_admin = acme_owner
        .mint_token(&MintToken {
            subject: "escalate".to_owned(),
            role: Role::Admin,
            ttl_seconds: None,
            tenant: None,
        })
        .await
        .unwrap_err();
    assert_eq!(minted_admin.code(), Some("forbidden"));
    let other_tenant = acme_owner
        .mint_token(&MintToken {
            subject: "cross".to_owned(),
            role: Role::Developer,
            ttl_seconds: None,
            tenant: Some("globex".to_owned()),
        })
        .await
        .unwrap_err();
    assert_eq!(other_tenant.code(), Some("forbidden"));

    // Wall: revoked tokens, and tokens of suspended or deleted tenants, stop at once.
    let doomed = acme_owner
        .mint_token(&MintToken {
            subject: "doomed".to_owned(),
            role: Role::Viewer,
            ttl_seconds: None,
            tenant: None,
        })
        .await
        .unwrap();
    let doomed_client = acme_owner.with_token(doomed.token.unwrap());
    doomed_client
        .deployments()
        .await
        .expect("valid until revoked");
    acme_owner.revoke_token(&doomed.id).await.unwrap();
    let listed = acme_owner.tokens().await.unwrap();
    assert!(listed.iter().any(|t| t.id == doomed.id && t.revoked));
    assert_eq!(
        doomed_client.deployments().await.unwrap_err().code(),
        Some("unauthenticated"),
        "the revoked token stopped"
    );
    acme_viewer
        .deployments()
        .await
        .expect("revoking one token leaves the others");
    admin.suspend_tenant("globex").await.unwrap();
    assert_eq!(
        globex.modules().await.unwrap_err().code(),
        Some("unauthenticated")
    );
    admin.delete_tenant("acme").await.unwrap();
    assert_eq!(
        acme.modules().await.unwrap_err().code(),
        Some("unauthenticated")
    );

    // Wall: deleting a tenant takes its state, logs, metrics and dead letters with it; a new
    // tenant of the same name starts empty.
    let reborn = tenant(&admin, "acme", roomy()).await;
    assert!(reborn.state_keys().await.unwrap().keys.is_empty());
    assert!(reborn.dead_letters(None).await.unwrap().is_empty());
    assert!(reborn.metrics().await.unwrap().is_empty());
    assert!(reborn.logs(None, None).await.unwrap().is_empty());
    assert!(reborn.deployments().await.unwrap().is_empty());
    let usage = reborn.usage().await.unwrap();
    assert_eq!(
        (usage.messages_in, usage.dead_letters, usage.fuel),
        (0, 0, 0),
        "{usage:?}"
    );
    assert!(
        usage.state_ops <= 1,
        "only the reborn tenant's own read: {usage:?}"
    );
    assert_eq!(
        (usage.state_keys, usage.state_bytes),
        (0, 0),
        "the deleted tenant's state went with it: {usage:?}"
    );
    assert_eq!(
        admin.executors().await.unwrap()[0].deployments,
        0,
        "acme's deployment stopped"
    );
}

/// A deployment of the simple graph on the built-in HTTP source and sink.
fn simple_deployment(id: &str) -> CreateDeployment {
    common::http_deployment(id, "simple")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifting_a_suspension_resumes_what_it_paused_and_nothing_the_tenant_paused() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let acme = tenant(&admin, "acme", roomy()).await;
    acme.push_module("temperature", "1.0.0", temperature())
        .await
        .unwrap();
    acme.push_graph("simple", "1", SIMPLE_GRAPH.to_owned())
        .await
        .unwrap();
    for id in ["serving", "held"] {
        acme.deploy(&simple_deployment(id)).await.unwrap();
    }
    acme.pause("held").await.unwrap();

    admin.suspend_tenant("acme").await.unwrap();
    assert_eq!(
        acme.deployments().await.unwrap_err().code(),
        Some("unauthenticated"),
        "the tenant's tokens stop while suspended"
    );
    let lifted = admin.unsuspend_tenant("acme").await.unwrap();
    assert!(!lifted.suspended);
    // The tenant's token works again; what the suspension paused runs and answers.
    let serving = acme.deployment("serving").await.unwrap();
    assert_eq!(serving.status, "running");
    let changes: Vec<(&str, &str)> = serving
        .history
        .iter()
        .rev()
        .take(2)
        .map(|c| (c.status.as_str(), c.detail.as_str()))
        .collect();
    assert_eq!(
        changes,
        [
            ("running", "tenant unsuspended"),
            ("paused", "tenant suspended")
        ]
    );
    let reply = acme
        .ingest(
            "serving",
            &[IngestMessage::new(
                r#"{"temperature":{"value":212,"unit":"F"}}"#,
            )],
            true,
        )
        .await
        .unwrap();
    assert_eq!(reply.outputs.map(|o| o.len()), Some(1));
    // What the tenant paused itself stays paused.
    assert_eq!(acme.deployment("held").await.unwrap().status, "paused");
    // Lifting a suspension that is not there changes nothing.
    admin.unsuspend_tenant("acme").await.unwrap();
    assert_eq!(acme.deployment("held").await.unwrap().status, "paused");
}
