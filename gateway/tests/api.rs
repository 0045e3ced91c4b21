//! The REST API through `router(state).oneshot(..)`, on a real SQLite store, real JWTs and the
//! real executor as module validator: problem documents, authentication, roles, uploads,
//! quotas, and the walls between tenants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use weir_api::TenantId;
use weir_executor::{EngineConfig, OperatorEngine};
use weir_gateway::{GatewayState, ModuleValidator, ValidatedModule, router};
use weir_store::{BlobStore, ControlStore, SqliteControlStore};
use weir_tenants::{JwtVerifier, MemoryRevocations, Role, Secret, TokenIssuer, VerificationKey};

#[derive(Debug)]
struct EngineValidator(OperatorEngine);

impl ModuleValidator for EngineValidator {
    fn validate(&self, bytes: &[u8]) -> Result<ValidatedModule, String> {
        let module = self.0.load(bytes).map_err(|e| e.to_string())?;
        Ok(ValidatedModule {
            operators: module
                .operators()
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            imports_inference: module.imports_inference(),
        })
    }
}

/// The gateway alone has no executor: deployments are tested through `weir serve`
/// (`cli/tests/serve.rs`).
#[derive(Debug)]
struct NoExecutor;

#[async_trait::async_trait]
impl weir_gateway::DeploymentRuntime for NoExecutor {
    async fn start(
        &self,
        _: weir_gateway::StartDeployment,
    ) -> Result<Vec<String>, weir_gateway::ApiError> {
        Err(weir_gateway::ApiError::new(
            weir_api::ErrorCode::Unavailable,
            "no executor attached",
        ))
    }
    async fn stop(&self, _: &TenantId, _: &str) {}
    async fn running(&self) -> Vec<weir_gateway::RunningDeployment> {
        Vec::new()
    }
    async fn ingest(
        &self,
        _: &TenantId,
        _: &str,
        _: Vec<weir_gateway::IngestMessage>,
        _: Option<Duration>,
    ) -> Result<Vec<weir_gateway::OutputMessage>, weir_gateway::ApiError> {
        Err(weir_gateway::ApiError::new(
            weir_api::ErrorCode::Unavailable,
            "no executor attached",
        ))
    }
    async fn take_outputs(
        &self,
        _: &TenantId,
        _: &str,
        _: usize,
    ) -> Result<Vec<weir_gateway::OutputMessage>, weir_gateway::ApiError> {
        Ok(Vec::new())
    }
    async fn status(&self, _: &TenantId, _: &str) -> Option<Value> {
        None
    }
    async fn logs(&self, _: &TenantId, _: &weir_gateway::FeedQuery) -> Vec<weir_gateway::LogLine> {
        Vec::new()
    }
    async fn metrics(&self, _: &TenantId) -> Vec<weir_gateway::MetricSeries> {
        Vec::new()
    }
    async fn usage(&self, _: &TenantId) -> weir_gateway::Usage {
        weir_gateway::Usage::default()
    }
    async fn executors(&self) -> Vec<weir_gateway::Executor> {
        Vec::new()
    }
    async fn cordon(&self, _: &str, _: bool) -> bool {
        false
    }
    async fn forget_tenant(&self, _: &TenantId) {}
    async fn set_quotas(&self, _: &TenantId, _: &weir_api::tenancy::Quotas) {}
}

struct Api {
    app: Router,
    admin: String,
    /// The store the router uses: what the runtime writes to (dead letters) and the broker
    /// asks (device passwords).
    store: Arc<SqliteControlStore>,
    _dir: Arc<tempfile::TempDir>,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    request_id: Option<String>,
    cache_control: Option<String>,
    body: Value,
}

impl Api {
    fn new() -> Self {
        Self::at(Arc::new(tempfile::tempdir().unwrap()))
    }

    /// A server on the data in `dir`: a second one on the same `dir` is the first restarted.
    fn at(dir: Arc<tempfile::TempDir>) -> Self {
        let secret = Secret::new(b"gateway-test-secret-gateway-test-secret".to_vec());
        let issuer = Arc::new(TokenIssuer::new(&secret, Some("weir"), None));
        let admin = issuer
            .mint(
                "root",
                None,
                Role::Admin,
                Duration::from_secs(600),
                "admin-1",
            )
            .unwrap();
        let store = Arc::new(SqliteControlStore::open(&dir.path().join("control.db")).unwrap());
        let state = GatewayState {
            store: store.clone(),
            blobs: BlobStore::open(dir.path().join("blobs")).unwrap(),
            verifier: Arc::new(
                JwtVerifier::new(&[VerificationKey::Hs256(secret)], Some("weir"), None).unwrap(),
            ),
            issuer,
            revocations: Arc::new(MemoryRevocations::default()),
            validator: Arc::new(EngineValidator(
                OperatorEngine::new(&EngineConfig {
                    pooling: None,
                    ..EngineConfig::default()
                })
                .unwrap(),
            )),
            runtime: Arc::new(NoExecutor),
            state: Arc::new(weir_state::MemoryStateStore::default()),
            limits: Arc::default(),
            tenant_locks: Arc::default(),
            instance_pool: Arc::default(),
            executors: Arc::default(),
        };
        Self {
            app: router(state),
            admin,
            store,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let request_id = header("x-request-id");
        let cache_control = header("cache-control");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            content_type,
            request_id,
            cache_control,
            body,
        }
    }

    async fn json(&self, method: Method, uri: &str, token: &str, body: Value) -> Reply {
        self.call(
            method,
            uri,
            Some(token),
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::GET, uri, Some(token), None, Vec::new())
            .await
    }

    /// A tenant with an owner and a developer token.
    async fn tenant(&self, id: &str) -> (String, String) {
        assert_eq!(
            self.json(Method::POST, "/v1/tenants", &self.admin, json!({"id": id}))
                .await
                .status,
            StatusCode::CREATED
        );
        let owner = self
            .json(
                Method::POST,
                "/v1/tokens",
                &self.admin,
                json!({"subject": "owner", "role": "owner", "tenant": id}),
            )
            .await;
        assert_eq!(owner.status, StatusCode::CREATED, "{:?}", owner.body);
        let owner = owner.body["token"].as_str().unwrap().to_owned();
        let developer = self
            .json(
                Method::POST,
                "/v1/tokens",
                &owner,
                json!({"subject": "dev", "role": "developer"}),
            )
            .await;
        assert_eq!(
            developer.status,
            StatusCode::CREATED,
            "{:?}",
            developer.body
        );
        (owner, developer.body["token"].as_str().unwrap().to_owned())
    }

    async fn upload(&self, token: &str, name: &str, version: &str, bytes: Vec<u8>) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/modules?name={name}&version={version}"),
            Some(token),
            Some("application/wasm"),
            bytes,
        )
        .await
    }
}

fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["code"], code, "{:?}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    let id = reply.request_id.as_deref().expect("x-request-id");
    assert_eq!(reply.body["instance"], format!("urn:weir:request:{id}"));
}

#[tokio::test]
async fn health_is_public_and_unknown_routes_are_problems() {
    let api = Api::new();
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None, vec![])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::GET, "/readyz", None, None, vec![])
            .await
            .status,
        StatusCode::OK
    );
    assert_problem(
        &api.call(Method::GET, "/v1/nothing", None, None, vec![])
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated() {
    let api = Api::new();
    assert_problem(
        &api.call(Method::GET, "/v1/modules", None, None, vec![])
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_problem(
        &api.get("/v1/modules", "not-a-jwt").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let reply = api
        .call(Method::GET, "/v1/modules", None, None, vec![])
        .await;
    assert_eq!(
        reply.body["detail"], "a valid bearer token is required",
        "no hint which check failed"
    );
}

#[tokio::test]
async fn admin_routes_refuse_tenant_tokens_and_tenant_routes_refuse_admin() {
    let api = Api::new();
    let (owner, developer) = api.tenant("acme").await;
    for token in [&owner, &developer] {
        assert_problem(
            &api.get("/v1/tenants", token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_problem(
            &api.json(Method::POST, "/v1/tenants", token, json!({"id": "evil"}))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    assert_problem(
        &api.get("/v1/modules", &api.admin).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &api.json(
            Method::POST,
            "/v1/tokens",
            &developer,
            json!({"subject": "x", "role": "owner"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &api.json(
            Method::POST,
            "/v1/tokens",
            &owner,
            json!({"subject": "x", "role": "admin"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &api.json(
            Method::POST,
            "/v1/tokens",
            &owner,
            json!({"subject": "x", "role": "owner", "tenant": "other"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn modules_are_validated_before_anything_is_stored() {
    let api = Api::new();
    let (_, developer) = api.tenant("acme").await;
    let created = api
        .upload(
            &developer,
            "temperature",
            "1.0.0",
            weir_guests::TEMPERATURE.bytes(),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(
        created.body["operators"],
        json!(["map", "filter", "branch", "accumulate"])
    );
    assert_problem(
        &api.upload(
            &developer,
            "temperature",
            "1.0.0",
            weir_guests::TEMPERATURE.bytes(),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_problem(
        &api.upload(&developer, "junk", "1", b"random bytes, not wasm".to_vec())
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_module",
    );
    let core = api
        .upload(&developer, "core", "1", b"\0asm\x01\0\0\0".to_vec())
        .await;
    assert_problem(&core, StatusCode::UNPROCESSABLE_ENTITY, "invalid_module");
    assert!(
        core.body["detail"]
            .as_str()
            .unwrap()
            .contains("wasm32-wasip2")
    );
    let foreign = api
        .upload(
            &developer,
            "foreign",
            "1",
            weir_guests::FOREIGN_IMPORT.bytes(),
        )
        .await;
    assert_problem(&foreign, StatusCode::UNPROCESSABLE_ENTITY, "invalid_module");
    assert!(
        foreign.body["detail"]
            .as_str()
            .unwrap()
            .contains("acme:vault/secrets@1.0.0")
    );
    assert_problem(
        &api.upload(&developer, "empty", "1", vec![]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_module",
    );
    let wrong_type = api
        .call(
            Method::POST,
            "/v1/modules?name=x&version=1",
            Some(&developer),
            Some("text/plain"),
            weir_guests::ECHO.bytes(),
        )
        .await;
    assert_problem(
        &wrong_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let bad_name = api
        .upload(&developer, "..%2Fetc", "1", weir_guests::ECHO.bytes())
        .await;
    assert_problem(&bad_name, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(bad_name.body["errors"][0]["path"], "/name");
    assert_problem(
        &api.call(
            Method::POST,
            "/v1/modules",
            Some(&developer),
            Some("application/wasm"),
            weir_guests::ECHO.bytes(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let listed = api.get("/v1/modules", &developer).await;
    assert_eq!(
        listed.body.as_array().unwrap().len(),
        1,
        "nothing invalid landed"
    );
}

#[tokio::test]
async fn graphs_report_every_problem() {
    let api = Api::new();
    let (_, developer) = api.tenant("acme").await;
    let valid = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/tests/graphs/valid/graph-complex.yaml"
    ))
    .unwrap();
    let created = api
        .call(
            Method::POST,
            "/v1/graphs?name=complex&version=1",
            Some(&developer),
            Some("application/yaml"),
            valid,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let invalid = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/tests/graphs/invalid/dangling-edges-and-duplicates.yaml"
    ))
    .unwrap();
    let refused = api
        .call(
            Method::POST,
            "/v1/graphs?name=bad&version=1",
            Some(&developer),
            Some("application/yaml"),
            invalid,
        )
        .await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_graph");
    let paths: Vec<&str> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 7, "{paths:?}");
    assert!(paths.contains(&"connections[1].to.name"));
}

#[tokio::test]
async fn another_tenants_resources_answer_404() {
    let api = Api::new();
    let (owner_a, developer_a) = api.tenant("tenant-a").await;
    let (owner_b, developer_b) = api.tenant("tenant-b").await;
    api.upload(&developer_a, "secret", "1", weir_guests::ECHO.bytes())
        .await;
    assert_problem(
        &api.get("/v1/modules/secret/1", &developer_b).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &api.call(
            Method::DELETE,
            "/v1/modules/secret/1",
            Some(&developer_b),
            None,
            vec![],
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(api.get("/v1/modules", &developer_b).await.body, json!([]));
    assert_eq!(
        api.get("/v1/modules/secret/1", &developer_a).await.status,
        StatusCode::OK,
        "a still has it"
    );
    let tokens_a = api.get("/v1/tokens", &owner_a).await;
    let token_id = tokens_a.body[0]["id"].as_str().unwrap().to_owned();
    assert_problem(
        &api.call(
            Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            Some(&owner_b),
            None,
            vec![],
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert!(
        api.get("/v1/tokens", &owner_b)
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["tenant"] == "tenant-b")
    );
}

#[tokio::test]
async fn revoked_suspended_and_deleted_tokens_stop_working() {
    let api = Api::new();
    let (owner, developer) = api.tenant("acme").await;
    let tokens = api.get("/v1/tokens", &owner).await;
    let developer_id = tokens
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "developer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/v1/tokens/{developer_id}"),
            Some(&owner),
            None,
            vec![]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &api.get("/v1/modules", &developer).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(api.get("/v1/modules", &owner).await.status, StatusCode::OK);
    assert_eq!(
        api.call(
            Method::POST,
            "/v1/tenants/acme/suspend",
            Some(&api.admin),
            None,
            vec![]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_problem(
        &api.get("/v1/modules", &owner).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let (owner2, _) = api.tenant("beta").await;
    assert_eq!(
        api.call(
            Method::DELETE,
            "/v1/tenants/beta",
            Some(&api.admin),
            None,
            vec![]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &api.get("/v1/modules", &owner2).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_problem(
        &api.get("/v1/tenants/beta", &api.admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn module_quotas_refuse_precisely_at_their_limit() {
    let api = Api::new();
    let (_, developer) = api.tenant("acme").await;
    let mut quotas = serde_json::to_value(weir_tenants::Quotas::default()).unwrap();
    quotas["max_modules"] = json!(2);
    quotas["max_module_bytes"] = json!(150_000);
    assert_eq!(
        api.json(Method::PUT, "/v1/tenants/acme/quotas", &api.admin, quotas)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.upload(&developer, "echo", "1", weir_guests::ECHO.bytes())
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.upload(&developer, "echo", "2", weir_guests::ECHO.bytes())
            .await
            .status,
        StatusCode::CREATED,
        "the limit itself is allowed"
    );
    assert_problem(
        &api.upload(&developer, "echo", "3", weir_guests::ECHO.bytes())
            .await,
        StatusCode::FORBIDDEN,
        "quota_exceeded",
    );
    let too_big = api
        .upload(
            &developer,
            "temperature",
            "1",
            weir_guests::TEMPERATURE.bytes(),
        )
        .await;
    assert_problem(&too_big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn a_module_importing_wasi_nn_is_refused_to_a_tenant_without_inference() {
    let api = Api::new();
    let (_, acme) = api.tenant("acme").await;
    let (_, other) = api.tenant("other").await;
    let mut quotas = serde_json::to_value(weir_tenants::Quotas::default()).unwrap();
    quotas["inference"] = json!(false);
    assert_eq!(
        api.json(Method::PUT, "/v1/tenants/acme/quotas", &api.admin, quotas)
            .await
            .status,
        StatusCode::OK
    );
    let refused = api
        .upload(&acme, "snapshot", "1", weir_guests::SNAPSHOT.bytes())
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "quota_exceeded");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("imports wasi:nn (inference)") && detail.contains("quota `inference`"),
        "{detail}"
    );
    // Nothing was kept; modules without wasi-nn still upload for this tenant.
    assert_eq!(api.get("/v1/modules", &acme).await.body, json!([]));
    assert_eq!(
        api.upload(&acme, "format", "1", weir_guests::FORMAT.bytes())
            .await
            .status,
        StatusCode::CREATED
    );
    // A tenant whose quota allows inference (the default) uploads it.
    assert_eq!(
        api.upload(&other, "snapshot", "1", weir_guests::SNAPSHOT.bytes())
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_quota_patch_changes_the_fields_it_names_and_no_other() {
    let api = Api::new();
    api.tenant("acme").await;
    let mut roomy = serde_json::to_value(weir_tenants::Quotas::default()).unwrap();
    roomy["max_instances"] = json!(40);
    roomy["max_state_keys"] = json!(77);
    let put = api
        .json(Method::PUT, "/v1/tenants/acme/quotas", &api.admin, roomy)
        .await;
    assert_eq!(put.status, StatusCode::OK);
    // One field changes; the others keep the values the PUT gave them.
    let patched = api
        .json(
            Method::PATCH,
            "/v1/tenants/acme/quotas",
            &api.admin,
            json!({"inference": false}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!(patched.body["quotas"]["inference"], json!(false));
    assert_eq!(patched.body["quotas"]["max_instances"], json!(40));
    assert_eq!(patched.body["quotas"]["max_state_keys"], json!(77));
    // null: back to the default.
    let reset = api
        .json(
            Method::PATCH,
            "/v1/tenants/acme/quotas",
            &api.admin,
            json!({"max_state_keys": null}),
        )
        .await;
    assert_eq!(
        reset.body["quotas"]["max_state_keys"],
        json!(weir_tenants::Quotas::default().max_state_keys)
    );
    assert_eq!(reset.body["quotas"]["max_instances"], json!(40));
    // A misspelt quota, a wrong type or a body that is not an object changes nothing.
    for bad in [
        json!({"max_instance": 3}),
        json!({"max_instances": "many"}),
        json!([1, 2]),
    ] {
        let refused = api
            .json(Method::PATCH, "/v1/tenants/acme/quotas", &api.admin, bad)
            .await;
        assert_problem(&refused, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let now = api.get("/v1/tenants/acme", &api.admin).await;
    assert_eq!(now.body["quotas"]["max_instances"], json!(40));
    assert_eq!(now.body["quotas"]["inference"], json!(false));
    // A tenant's own tokens cannot patch its quotas.
    let (_, member) = api.tenant("other").await;
    let refused = api
        .json(
            Method::PATCH,
            "/v1/tenants/other/quotas",
            &member,
            json!({"max_instances": 64}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
}

#[tokio::test]
async fn malformed_bodies_are_problems_not_500s() {
    let api = Api::new();
    for (body, content_type, status, code) in [
        (
            "{not json",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"id": "x", "surprise": 1}"#,
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"id": "x"}"#,
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            r#"{"id": "Not/Valid"}"#,
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let reply = api
            .call(
                Method::POST,
                "/v1/tenants",
                Some(&api.admin),
                content_type,
                body.as_bytes().to_vec(),
            )
            .await;
        assert_problem(&reply, status, code);
    }
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None, vec![])
            .await
            .status,
        StatusCode::OK
    );
}

/// Writes `key` = `value` through the state API.
async fn put_state(api: &Api, token: &str, key: &str, value: &str) -> Reply {
    api.call(
        Method::PUT,
        &format!("/v1/state/{key}"),
        Some(token),
        Some("application/octet-stream"),
        value.as_bytes().to_vec(),
    )
    .await
}

/// `state_keys` and `state_bytes` of the caller's usage.
async fn state_figures(api: &Api, token: &str) -> (Value, Value) {
    let usage = api.get("/v1/usage", token).await;
    assert_eq!(usage.status, StatusCode::OK, "{:?}", usage.body);
    (
        usage.body["state_keys"].clone(),
        usage.body["state_bytes"].clone(),
    )
}

/// `/v1/usage` counts the caller's live state keys and their bytes (key plus value) as the
/// state quotas do: writes, an overwrite and a delete through the state API move them, a write
/// refused at `max_state_keys` leaves them at the limit, and another tenant's figures are its
/// own. A runtime that reports no live budgets leaves `inflight_bytes` and
/// `queued_output_bytes` out.
#[tokio::test]
async fn usage_counts_the_callers_state_keys_and_bytes_and_no_one_elses() {
    let api = Api::new();
    let (_, developer_a) = api.tenant("usage-a").await;
    let (_, developer_b) = api.tenant("usage-b").await;
    let patched = api
        .json(
            Method::PATCH,
            "/v1/tenants/usage-a/quotas",
            &api.admin,
            json!({"max_state_keys": 4}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!(
        state_figures(&api, &developer_a).await,
        (json!(0), json!(0))
    );
    for key in ["line-1", "line-2", "line-3"] {
        assert_eq!(
            put_state(&api, &developer_a, key, "oven").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        put_state(&api, &developer_b, "b", "x").await.status,
        StatusCode::OK
    );
    // Three keys of 6 bytes, values of 4.
    assert_eq!(
        state_figures(&api, &developer_a).await,
        (json!(3), json!(30))
    );
    assert_eq!(
        put_state(&api, &developer_a, "line-1", "blast furnace")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        state_figures(&api, &developer_a).await,
        (json!(3), json!(39))
    );
    assert_eq!(
        put_state(&api, &developer_a, "line-4", "kiln").await.status,
        StatusCode::OK
    );
    assert_problem(
        &put_state(&api, &developer_a, "line-5", "kiln").await,
        StatusCode::FORBIDDEN,
        "quota_exceeded",
    );
    assert_eq!(
        state_figures(&api, &developer_a).await,
        (json!(4), json!(49))
    );
    let deleted = api
        .call(
            Method::DELETE,
            "/v1/state/line-2",
            Some(&developer_a),
            None,
            vec![],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        state_figures(&api, &developer_a).await,
        (json!(3), json!(39))
    );
    assert_eq!(
        state_figures(&api, &developer_b).await,
        (json!(1), json!(2))
    );
    let usage = api.get("/v1/usage", &developer_a).await;
    for budget in ["inflight_bytes", "queued_output_bytes"] {
        assert!(
            usage.body.get(budget).is_none(),
            "{budget} reported by a runtime that does not: {:?}",
            usage.body
        );
    }
}

#[tokio::test]
async fn state_keys_are_the_callers_tenants_only() {
    let api = Api::new();
    let (_, developer_a) = api.tenant("state-a").await;
    let (_, developer_b) = api.tenant("state-b").await;
    let put = api
        .call(
            Method::PUT,
            "/v1/state/factoryId",
            Some(&developer_a),
            Some("text/plain"),
            b"factoryA".to_vec(),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    let read = api.get("/v1/state/factoryId", &developer_a).await;
    assert_eq!(read.body["value"], "factoryA");
    assert_problem(
        &api.get("/v1/state/factoryId", &developer_b).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        api.get("/v1/state", &developer_b).await.body["keys"],
        json!([])
    );
    assert_problem(
        &api.call(
            Method::DELETE,
            "/v1/state/factoryId",
            Some(&developer_b),
            None,
            vec![],
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        api.get("/v1/state", &developer_a).await.body["keys"],
        json!(["factoryId"])
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            "/v1/state/factoryId",
            Some(&developer_a),
            None,
            vec![]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &api.get("/v1/state/factoryId", &developer_a).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

/// The temperature component with a custom section of `padding` bytes of `fill`: a valid
/// module of any size and digest.
fn padded_module(padding: usize, fill: u8) -> Vec<u8> {
    let mut wasm = weir_guests::TEMPERATURE.bytes();
    let name = b"padding";
    let mut body = vec![u8::try_from(name.len()).unwrap()];
    body.extend_from_slice(name);
    body.resize(body.len() + padding, fill);
    wasm.push(0);
    let mut size = body.len();
    loop {
        let byte = u8::try_from(size & 0x7f).unwrap();
        size >>= 7;
        if size == 0 {
            wasm.push(byte);
            break;
        }
        wasm.push(byte | 0x80);
    }
    wasm.extend(body);
    wasm
}

/// Hashing and writing an upload (and every SQLite call) happen on the blocking pool: on a
/// runtime with a single worker thread, a ticker keeps ticking while 60 MiB modules are stored.
/// Stored on the worker, each upload stalls the ticker for 130 ms or more; off it, the longest
/// pause is about 10 ms. The quietest of three uploads is judged, so a busy machine's
/// scheduling (which hits one upload, not every one) does not decide the outcome.
#[tokio::test(flavor = "current_thread")]
async fn uploads_never_stall_the_async_workers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let api = Api::new();
    let (_, developer) = api.tenant("big").await;
    let mut pauses = Vec::new();
    for round in 0..3u8 {
        let module = padded_module(60 << 20, round);
        let done = Arc::new(AtomicBool::new(false));
        let ticker = tokio::spawn({
            let done = done.clone();
            async move {
                let mut longest = Duration::ZERO;
                while !done.load(Ordering::Relaxed) {
                    let before = std::time::Instant::now();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    longest = longest.max(before.elapsed());
                }
                longest
            }
        });
        let reply = api
            .upload(&developer, "big", &round.to_string(), module)
            .await;
        done.store(true, Ordering::Relaxed);
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        pauses.push(ticker.await.unwrap());
    }
    eprintln!("longest pauses of the worker: {pauses:?}");
    let quietest = pauses.iter().min().copied().unwrap();
    assert!(
        quietest < Duration::from_millis(60),
        "the only worker thread stalled for {pauses:?}"
    );
}

impl Api {
    /// A token of `role` for the tenant of `owner`.
    async fn token(&self, owner: &str, role: &str) -> String {
        let minted = self
            .json(
                Method::POST,
                "/v1/tokens",
                owner,
                json!({"subject": role, "role": role}),
            )
            .await;
        assert_eq!(minted.status, StatusCode::CREATED, "{:?}", minted.body);
        minted.body["token"].as_str().unwrap().to_owned()
    }

    async fn delete(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::DELETE, uri, Some(token), None, vec![])
            .await
    }
}

#[tokio::test]
async fn owners_create_devices_whose_password_is_shown_once_and_works_on_the_broker() {
    let api = Api::new();
    let (owner, developer) = api.tenant("acme").await;
    let viewer = api.token(&owner, "viewer").await;
    let created = api
        .json(
            Method::POST,
            "/v1/devices",
            &owner,
            json!({"name": "sensor-1"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["name"], "sensor-1");
    assert_eq!(created.body["username"], "sensor-1@acme");
    let password = created.body["password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 64);
    assert_eq!(created.cache_control.as_deref(), Some("no-store"));
    assert!(created.body["created_at"].as_u64().unwrap() > 0);
    // What the embedded broker's authentication asks.
    assert_eq!(
        api.store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        Some(TenantId::new("acme").unwrap())
    );
    assert_eq!(
        api.store
            .verify_device("sensor-1@acme", "f".repeat(64).as_bytes())
            .await
            .unwrap(),
        None
    );
    // Listed to every role, never with the password.
    for token in [&owner, &developer, &viewer] {
        let listed = api.get("/v1/devices", token).await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_eq!(
            listed.body,
            json!([{"name": "sensor-1", "username": "sensor-1@acme", "created_at": created.body["created_at"]}])
        );
    }
    // Developers and viewers neither create nor delete; admins are not the tenant.
    for token in [&developer, &viewer, &api.admin] {
        assert_problem(
            &api.json(
                Method::POST,
                "/v1/devices",
                token,
                json!({"name": "sneaky"}),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_problem(
            &api.delete("/v1/devices/sensor-1", token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    assert_problem(
        &api.json(
            Method::POST,
            "/v1/devices",
            &owner,
            json!({"name": "sensor-1"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    for bad in ["", "-x", ".hidden", "a@b", "a/b", "a b", &"x".repeat(129)] {
        let refused = api
            .json(Method::POST, "/v1/devices", &owner, json!({"name": bad}))
            .await;
        assert_problem(&refused, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(refused.body["errors"][0]["path"], "/name", "{bad:?}");
    }
    assert_problem(
        &api.json(
            Method::POST,
            "/v1/devices",
            &owner,
            json!({"name": "x", "password": "mine"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_eq!(
        api.delete("/v1/devices/sensor-1", &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &api.delete("/v1/devices/sensor-1", &owner).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        api.store
            .verify_device("sensor-1@acme", password.as_bytes())
            .await
            .unwrap(),
        None,
        "a deleted device's password stops working"
    );
    assert_eq!(api.get("/v1/devices", &viewer).await.body, json!([]));
}

#[tokio::test]
async fn another_tenants_devices_are_invisible_and_out_of_reach() {
    let api = Api::new();
    let (owner_a, _) = api.tenant("tenant-a").await;
    let (owner_b, _) = api.tenant("tenant-b").await;
    let a = api
        .json(Method::POST, "/v1/devices", &owner_a, json!({"name": "gw"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(api.get("/v1/devices", &owner_b).await.body, json!([]));
    assert_problem(
        &api.delete("/v1/devices/gw", &owner_b).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // The same name in B is B's own device, with its own user name and password.
    let b = api
        .json(Method::POST, "/v1/devices", &owner_b, json!({"name": "gw"}))
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(b.body["username"], "gw@tenant-b");
    let (password_a, password_b) = (
        a.body["password"].as_str().unwrap(),
        b.body["password"].as_str().unwrap(),
    );
    assert_eq!(
        api.store
            .verify_device("gw@tenant-b", password_a.as_bytes())
            .await
            .unwrap(),
        None,
        "A's password does not open B's device"
    );
    assert_eq!(
        api.store
            .verify_device("gw@tenant-a", password_b.as_bytes())
            .await
            .unwrap(),
        None
    );
    // Deleting B takes its devices; A's stays.
    assert_eq!(
        api.delete("/v1/tenants/tenant-b", &api.admin).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.store
            .verify_device("gw@tenant-b", password_b.as_bytes())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        api.store
            .verify_device("gw@tenant-a", password_a.as_bytes())
            .await
            .unwrap(),
        Some(TenantId::new("tenant-a").unwrap())
    );
}

#[tokio::test]
async fn max_devices_refuses_precisely_at_its_limit() {
    let api = Api::new();
    let (owner, _) = api.tenant("acme").await;
    assert_eq!(weir_tenants::Quotas::default().max_devices, 100);
    let mut quotas = serde_json::to_value(weir_tenants::Quotas::default()).unwrap();
    quotas["max_devices"] = json!(2);
    assert_eq!(
        api.json(Method::PUT, "/v1/tenants/acme/quotas", &api.admin, quotas)
            .await
            .status,
        StatusCode::OK
    );
    for name in ["one", "two"] {
        let created = api
            .json(Method::POST, "/v1/devices", &owner, json!({"name": name}))
            .await;
        assert_eq!(
            created.status,
            StatusCode::CREATED,
            "the limit itself is allowed"
        );
    }
    assert_problem(
        &api.json(
            Method::POST,
            "/v1/devices",
            &owner,
            json!({"name": "three"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "quota_exceeded",
    );
    assert_eq!(
        api.delete("/v1/devices/one", &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.json(
            Method::POST,
            "/v1/devices",
            &owner,
            json!({"name": "three"})
        )
        .await
        .status,
        StatusCode::CREATED,
        "a deleted device frees its place"
    );
}

fn dead_letter(deployment: &str, payload: &str) -> weir_api::rest::DeadLetter {
    weir_api::rest::DeadLetter {
        seq: 0,
        deployment: deployment.to_owned(),
        node: "convert".to_owned(),
        reason: "trap".to_owned(),
        detail: "unreachable".to_owned(),
        topic: "ingest".to_owned(),
        payload: payload.to_owned(),
        input_bytes: payload.len() as u64 + 6,
        payload_truncated: false,
        at_ms: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn dead_letters_are_read_from_the_store_walled_by_tenant_and_outlive_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = Api::at(dir.clone());
    let (_, developer_a) = api.tenant("tenant-a").await;
    let (_, developer_b) = api.tenant("tenant-b").await;
    let (a, b) = (
        TenantId::new("tenant-a").unwrap(),
        TenantId::new("tenant-b").unwrap(),
    );
    let max = weir_tenants::Quotas::default().max_dead_letter_bytes;
    api.store
        .append_dead_letters(
            &a,
            vec![
                dead_letter("one", "a1"),
                dead_letter("two", "a2"),
                dead_letter("one", "a3"),
            ],
            max,
        )
        .await
        .unwrap();
    api.store
        .append_dead_letters(&b, vec![dead_letter("one", "b1")], max)
        .await
        .unwrap();
    let payloads = |reply: &Reply| -> Vec<(u64, String)> {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["seq"].as_u64().unwrap(),
                    l["payload"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pairs = |items: &[(u64, &str)]| -> Vec<(u64, String)> {
        items.iter().map(|(s, p)| (*s, (*p).to_owned())).collect()
    };
    assert_eq!(
        payloads(&api.get("/v1/deadletters", &developer_a).await),
        pairs(&[(1, "a1"), (2, "a2"), (3, "a3")])
    );
    let full = api.get("/v1/deadletters?limit=1", &developer_a).await;
    assert_eq!(
        full.body[0],
        json!({"seq": 1, "deployment": "one", "node": "convert", "reason": "trap",
               "detail": "unreachable", "topic": "ingest", "payload": "a1",
               "input_bytes": 8, "payload_truncated": false, "at_ms": 1_700_000_000_000_u64})
    );
    assert_eq!(
        payloads(
            &api.get("/v1/deadletters?deployment=one&after=1", &developer_a)
                .await
        ),
        pairs(&[(3, "a3")])
    );
    assert_eq!(
        payloads(&api.get("/v1/deadletters", &developer_b).await),
        pairs(&[(1, "b1")]),
        "B reads its own letter, numbered for B"
    );
    assert_eq!(
        payloads(
            &api.get("/v1/deadletters?deployment=two", &developer_b)
                .await
        ),
        pairs(&[])
    );
    assert_problem(
        &api.get("/v1/deadletters?tenant=tenant-a", &developer_b)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // A lowered quota evicts at once, oldest first, and usage counts it.
    let mut quotas = serde_json::to_value(weir_tenants::Quotas::default()).unwrap();
    quotas["max_dead_letter_bytes"] = json!(dead_letter("one", "a3").byte_len());
    assert_eq!(
        api.json(
            Method::PUT,
            "/v1/tenants/tenant-a/quotas",
            &api.admin,
            quotas
        )
        .await
        .status,
        StatusCode::OK
    );
    let usage = api.get("/v1/usage", &developer_a).await;
    assert_eq!(
        (
            usage.body["dead_letters"].clone(),
            usage.body["dead_letters_evicted"].clone()
        ),
        (json!(3), json!(2))
    );
    let usage_b = api.get("/v1/usage", &developer_b).await;
    assert_eq!(
        (
            usage_b.body["dead_letters"].clone(),
            usage_b.body["dead_letters_evicted"].clone()
        ),
        (json!(1), json!(0)),
        "B's letters and counters are untouched"
    );
    // The server restarts on the same data: letters, numbers and counters are all there.
    drop(api);
    let api = Api::at(dir);
    assert_eq!(
        payloads(&api.get("/v1/deadletters", &developer_a).await),
        pairs(&[(3, "a3")])
    );
    let appended = api
        .store
        .append_dead_letters(&a, vec![dead_letter("one", "a4")], max)
        .await
        .unwrap();
    assert_eq!(appended.seqs, [4], "numbering goes on after the restart");
    let usage = api.get("/v1/usage", &developer_a).await;
    assert_eq!(
        (
            usage.body["dead_letters"].clone(),
            usage.body["dead_letters_evicted"].clone()
        ),
        (json!(4), json!(2))
    );
}

#[tokio::test]
async fn an_endpoint_a_deployment_binds_to_is_not_deleted_from_under_it() {
    let api = Api::new();
    let (owner, _) = api.tenant("acme").await;
    let created = api
        .json(
            Method::POST,
            "/v1/endpoints",
            &owner,
            json!({"name": "broker", "kind": "mqtt", "address": "203.0.113.9:1883"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    // A paused deployment reading from it (the gateway alone starts nothing): resuming it
    // would look the endpoint up again.
    let tenant = TenantId::new("acme").unwrap();
    let record = weir_store::DeploymentRecord {
        tenant: tenant.clone(),
        id: "reader".to_owned(),
        spec: json!({
            "id": "reader",
            "graph": {"name": "g", "version": "1"},
            "source": {"endpoint": "broker", "topics": ["in"]},
        }),
        status: "paused".to_owned(),
        created_at: 0,
    };
    api.store
        .put_deployment(&record, &weir_tenants::Quotas::default())
        .await
        .unwrap();
    let delete = || {
        api.call(
            Method::DELETE,
            "/v1/endpoints/broker",
            Some(&owner),
            None,
            vec![],
        )
    };
    let refused = delete().await;
    assert_problem(&refused, StatusCode::CONFLICT, "conflict");
    assert!(
        refused.body["detail"].as_str().unwrap().contains("reader"),
        "{:?}",
        refused.body
    );
    assert_eq!(
        api.get("/v1/endpoints/broker", &owner).await.status,
        StatusCode::OK,
        "still there"
    );
    assert!(
        api.store
            .delete_deployment(&tenant, "reader")
            .await
            .unwrap()
    );
    let deleted = delete().await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
}
