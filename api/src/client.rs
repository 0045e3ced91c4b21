//! The typed client of weir's REST API (feature `client`): what the `weir` command and the
//! end-to-end tests use. Every call returns the API's own documents ([`crate::rest`]) or a
//! [`ClientError`] that carries the server's problem document intact.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::rest::{
    CreateDeployment, CreateDevice, CreateEndpoint, CreateTenant, DeadLetter, Deployment,
    DeploymentChanged, Device, DeviceCredentials, Endpoint, Executor, Graph, ImportArtifact,
    IngestMessage, IngestReply, LogLine, MetricSeries, MintToken, Module, Problem, StateEntry,
    StateKeys, Tenant, Token, Usage,
};
use crate::tenancy::Quotas;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with a problem document.
    #[error("{} ({}): {}", problem.code, problem.status, problem.detail)]
    Api {
        /// The document, as sent.
        problem: Box<Problem>,
        /// The server's `Retry-After` (on `429` and `503`), when it sent one in seconds.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached, or answered with something that is not weir's API.
    #[error("{0}")]
    Transport(String),
    /// An artifact's bytes are not what its digest names: never to be run.
    #[error("the artifact fetched for {expected} has the digest {got}")]
    DigestMismatch {
        /// The digest asked for.
        expected: crate::ModuleDigest,
        /// The digest of the bytes that came.
        got: crate::ModuleDigest,
    },
}

impl ClientError {
    /// The problem document, when the server sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Api { problem, .. } => Some(problem),
            Self::Transport(_) | Self::DigestMismatch { .. } => None,
        }
    }

    /// The stable code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.problem().map(|p| p.code.as_str())
    }

    /// How long the server asked to wait before retrying (`Retry-After`), when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            Self::Transport(_) | Self::DigestMismatch { .. } => None,
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(error: reqwest::Error) -> Self {
        // reqwest's Display hides the cause ("error sending request"); the chain says why.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Transport(text)
    }
}

/// A client of one weir server, acting with one bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`), with `token` if given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The same server with another token.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// The bearer token it sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The server's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(builder: RequestBuilder) -> Result<T, ClientError> {
        let response = Self::check(builder.send().await?).await?;
        Ok(response.json().await?)
    }

    async fn send_empty(builder: RequestBuilder) -> Result<(), ClientError> {
        Self::check(builder.send().await?).await.map(drop)
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await?;
        match serde_json::from_slice::<Problem>(&body) {
            Ok(problem) => Err(ClientError::Api {
                problem: Box::new(problem),
                retry_after,
            }),
            Err(_) => Err(ClientError::Transport(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::send(self.request(Method::GET, path)).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::send(self.request(Method::POST, path).json(body)).await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        Self::send_empty(self.request(Method::DELETE, path)).await
    }

    /// `GET /healthz`: whether the server answers.
    pub async fn health(&self) -> Result<(), ClientError> {
        Self::send_empty(self.request(Method::GET, "/healthz")).await
    }

    // Tenants (admin).

    /// Creates a tenant.
    pub async fn create_tenant(&self, tenant: &CreateTenant) -> Result<Tenant, ClientError> {
        self.post("/v1/tenants", tenant).await
    }

    /// Every tenant.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, ClientError> {
        self.get("/v1/tenants").await
    }

    /// One tenant.
    pub async fn tenant(&self, id: &str) -> Result<Tenant, ClientError> {
        self.get(&format!("/v1/tenants/{}", segment(id))).await
    }

    /// Changes some of a tenant's quotas: `patch` is a JSON merge patch (RFC 7396) of
    /// [`Quotas`], e.g. `{"inference": false}`; fields left out keep their values.
    pub async fn patch_quotas(
        &self,
        id: &str,
        patch: &serde_json::Value,
    ) -> Result<Tenant, ClientError> {
        Self::send(
            self.request(
                Method::PATCH,
                &format!("/v1/tenants/{}/quotas", segment(id)),
            )
            .json(patch),
        )
        .await
    }

    /// Replaces a tenant's quotas (every field; use [`patch_quotas`](Self::patch_quotas) to
    /// change some).
    pub async fn set_quotas(&self, id: &str, quotas: &Quotas) -> Result<Tenant, ClientError> {
        Self::send(
            self.request(Method::PUT, &format!("/v1/tenants/{}/quotas", segment(id)))
                .json(quotas),
        )
        .await
    }

    /// Suspends a tenant: its tokens stop working, its deployments pause.
    pub async fn suspend_tenant(&self, id: &str) -> Result<Tenant, ClientError> {
        self.post(&format!("/v1/tenants/{}/suspend", segment(id)), &())
            .await
    }

    /// Lifts a tenant's suspension: its tokens work again and the deployments the
    /// suspension paused resume.
    pub async fn unsuspend_tenant(&self, id: &str) -> Result<Tenant, ClientError> {
        self.post(&format!("/v1/tenants/{}/unsuspend", segment(id)), &())
            .await
    }

    /// Deletes a tenant and everything it owns.
    pub async fn delete_tenant(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/tenants/{}", segment(id))).await
    }

    // Tokens.

    /// Mints a token; the answer carries the token once.
    pub async fn mint_token(&self, request: &MintToken) -> Result<Token, ClientError> {
        self.post("/v1/tokens", request).await
    }

    /// The caller's tenant's tokens.
    pub async fn tokens(&self) -> Result<Vec<Token>, ClientError> {
        self.get("/v1/tokens").await
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/tokens/{}", segment(id))).await
    }

    // Modules and graphs.

    /// Uploads a module (validated and compiled before the answer).
    pub async fn push_module(
        &self,
        name: &str,
        version: &str,
        wasm: Vec<u8>,
    ) -> Result<Module, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/modules")
                .query(&[("name", name), ("version", version)])
                .header(CONTENT_TYPE, "application/wasm")
                .body(wasm),
        )
        .await
    }

    /// Imports a module from an OCI registry (validated and compiled like an upload).
    pub async fn import_module(&self, request: &ImportArtifact) -> Result<Module, ClientError> {
        self.post("/v1/modules/import", request).await
    }

    /// Imports a graph definition from an OCI registry.
    pub async fn import_graph(&self, request: &ImportArtifact) -> Result<Graph, ClientError> {
        self.post("/v1/graphs/import", request).await
    }

    /// The tenant's modules.
    pub async fn modules(&self) -> Result<Vec<Module>, ClientError> {
        self.get("/v1/modules").await
    }

    /// Deletes a module version.
    pub async fn delete_module(&self, name: &str, version: &str) -> Result<(), ClientError> {
        self.delete(&format!(
            "/v1/modules/{}/{}",
            segment(name),
            segment(version)
        ))
        .await
    }

    /// Deletes a graph version.
    pub async fn delete_graph(&self, name: &str, version: &str) -> Result<(), ClientError> {
        self.delete(&format!(
            "/v1/graphs/{}/{}",
            segment(name),
            segment(version)
        ))
        .await
    }

    /// Uploads a graph definition (YAML or JSON; every problem reported at once).
    pub async fn push_graph(
        &self,
        name: &str,
        version: &str,
        text: String,
    ) -> Result<Graph, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/graphs")
                .query(&[("name", name), ("version", version)])
                .header(CONTENT_TYPE, "application/yaml")
                .body(text),
        )
        .await
    }

    /// The tenant's graphs.
    pub async fn graphs(&self) -> Result<Vec<Graph>, ClientError> {
        self.get("/v1/graphs").await
    }

    // Endpoints.

    /// Creates an endpoint.
    pub async fn create_endpoint(
        &self,
        endpoint: &CreateEndpoint,
    ) -> Result<Endpoint, ClientError> {
        self.post("/v1/endpoints", endpoint).await
    }

    /// The tenant's endpoints.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.get("/v1/endpoints").await
    }

    /// Deletes an endpoint.
    pub async fn delete_endpoint(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/endpoints/{}", segment(name)))
            .await
    }

    // Devices.

    /// Creates credentials for a device on the embedded MQTT broker (owner); the answer
    /// carries the password once.
    pub async fn create_device(&self, name: &str) -> Result<DeviceCredentials, ClientError> {
        self.post(
            "/v1/devices",
            &CreateDevice {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// The tenant's devices (never their passwords).
    pub async fn devices(&self) -> Result<Vec<Device>, ClientError> {
        self.get("/v1/devices").await
    }

    /// Deletes a device's credentials (owner).
    pub async fn delete_device(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/devices/{}", segment(name))).await
    }

    // Deployments.

    /// Deploys a graph.
    pub async fn deploy(
        &self,
        deployment: &CreateDeployment,
    ) -> Result<DeploymentChanged, ClientError> {
        self.post("/v1/deployments", deployment).await
    }

    /// Deploys an Azure `DataflowGraph` document (YAML or JSON).
    pub async fn deploy_dataflow_graph(
        &self,
        document: String,
    ) -> Result<DeploymentChanged, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/deployments")
                .header(CONTENT_TYPE, "application/yaml")
                .body(document),
        )
        .await
    }

    /// Rolls a deployment to a new graph version or configuration.
    pub async fn update_deployment(
        &self,
        deployment: &CreateDeployment,
    ) -> Result<DeploymentChanged, ClientError> {
        Self::send(
            self.request(
                Method::PUT,
                &format!("/v1/deployments/{}", segment(&deployment.id)),
            )
            .json(deployment),
        )
        .await
    }

    /// Rolls a deployment back to an earlier revision (default: the one before the current).
    pub async fn rollback_deployment(
        &self,
        id: &str,
        revision: Option<u64>,
    ) -> Result<DeploymentChanged, ClientError> {
        self.post(
            &format!("/v1/deployments/{}/rollback", segment(id)),
            &crate::rest::RollbackDeployment { revision },
        )
        .await
    }

    /// Pauses a deployment.
    pub async fn pause(&self, id: &str) -> Result<DeploymentChanged, ClientError> {
        self.post(&format!("/v1/deployments/{}/pause", segment(id)), &())
            .await
    }

    /// Resumes a paused deployment.
    pub async fn resume(&self, id: &str) -> Result<DeploymentChanged, ClientError> {
        self.post(&format!("/v1/deployments/{}/resume", segment(id)), &())
            .await
    }

    /// The tenant's deployments.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, ClientError> {
        self.get("/v1/deployments").await
    }

    /// One deployment with its history and counters.
    pub async fn deployment(&self, id: &str) -> Result<Deployment, ClientError> {
        self.get(&format!("/v1/deployments/{}", segment(id))).await
    }

    /// Undeploys.
    pub async fn delete_deployment(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/deployments/{}", segment(id)))
            .await
    }

    /// Hands messages to an `http`-sourced deployment; with `wait`, answers with their outputs.
    pub async fn ingest(
        &self,
        id: &str,
        messages: &[IngestMessage],
        wait: bool,
    ) -> Result<IngestReply, ClientError> {
        Self::send(
            self.request(
                Method::POST,
                &format!("/v1/deployments/{}/ingest", segment(id)),
            )
            .query(&[("wait", wait)])
            .json(messages),
        )
        .await
    }

    /// Takes up to `limit` outputs waiting in an `http`-sinked deployment's queue.
    pub async fn take_outputs(&self, id: &str, limit: usize) -> Result<IngestReply, ClientError> {
        Self::send(
            self.request(
                Method::POST,
                &format!("/v1/deployments/{}/outputs", segment(id)),
            )
            .query(&[("limit", limit)]),
        )
        .await
    }

    // State.

    /// Keys of the tenant's state store.
    pub async fn state_keys(&self) -> Result<StateKeys, ClientError> {
        self.get("/v1/state").await
    }

    /// One key.
    pub async fn state_get(&self, key: &str) -> Result<StateEntry, ClientError> {
        self.get(&format!("/v1/state/{}", segment(key))).await
    }

    /// Sets a key.
    pub async fn state_set(&self, key: &str, value: Vec<u8>) -> Result<StateEntry, ClientError> {
        Self::send(
            self.request(Method::PUT, &format!("/v1/state/{}", segment(key)))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(value),
        )
        .await
    }

    /// Deletes a key.
    pub async fn state_delete(&self, key: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/state/{}", segment(key))).await
    }

    // Observability.

    /// Log lines after sequence number `after`, oldest first.
    pub async fn logs(
        &self,
        deployment: Option<&str>,
        after: Option<u64>,
    ) -> Result<Vec<LogLine>, ClientError> {
        let mut builder = self.request(Method::GET, "/v1/logs");
        if let Some(deployment) = deployment {
            builder = builder.query(&[("deployment", deployment)]);
        }
        if let Some(after) = after {
            builder = builder.query(&[("after", after)]);
        }
        Self::send(builder).await
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        deployment: Option<&str>,
    ) -> Result<Vec<DeadLetter>, ClientError> {
        let mut builder = self.request(Method::GET, "/v1/deadletters");
        if let Some(deployment) = deployment {
            builder = builder.query(&[("deployment", deployment)]);
        }
        Self::send(builder).await
    }

    /// The tenant's metric series.
    pub async fn metrics(&self) -> Result<Vec<MetricSeries>, ClientError> {
        self.get("/v1/metrics").await
    }

    /// The tenant's metrics in the Prometheus text format.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let response = Self::check(
            self.request(Method::GET, "/v1/metrics")
                .header(ACCEPT, "text/plain")
                .send()
                .await?,
        )
        .await?;
        Ok(response.text().await?)
    }

    /// What the tenant has used.
    pub async fn usage(&self) -> Result<Usage, ClientError> {
        self.get("/v1/usage").await
    }

    /// The platform's executors (admin).
    pub async fn executors(&self) -> Result<Vec<Executor>, ClientError> {
        self.get("/v1/executors").await
    }

    /// Cordons an executor: it takes no new deployments; what runs there stays (admin).
    pub async fn cordon_executor(&self, id: &str) -> Result<Executor, ClientError> {
        self.post(&format!("/v1/executors/{}/cordon", segment(id)), &())
            .await
    }

    /// Uncordons an executor (admin).
    pub async fn uncordon_executor(&self, id: &str) -> Result<Executor, ClientError> {
        self.post(&format!("/v1/executors/{}/uncordon", segment(id)), &())
            .await
    }

    /// Drains an executor: its deployments move to the others and it takes no new ones
    /// (admin).
    pub async fn drain_executor(&self, id: &str) -> Result<Executor, ClientError> {
        self.post(&format!("/v1/executors/{}/drain", segment(id)), &())
            .await
    }

    /// Joins the control plane as an executor (the client's token is the executor join
    /// token).
    pub async fn join_executor(
        &self,
        join: &crate::rest::ExecutorJoin,
    ) -> Result<crate::rest::ExecutorJoined, ClientError> {
        self.post("/v1/executors/join", join).await
    }

    /// An executor's heartbeat (the client's token is the executor's session token).
    pub async fn executor_heartbeat(
        &self,
        id: &str,
        heartbeat: &crate::rest::ExecutorHeartbeat,
    ) -> Result<(), ClientError> {
        Self::send_empty(
            self.request(Method::POST, &format!("/v1/executors/{id}/heartbeat"))
                .json(heartbeat),
        )
        .await
    }

    /// Dead letters of an executor process's deployments, kept in the control plane's journal
    /// (the client's token is the executor's session token); their sequence numbers.
    pub async fn executor_dead_letters(
        &self,
        id: &str,
        letters: &crate::rest::ExecutorDeadLetters,
    ) -> Result<crate::rest::DeadLettersKept, ClientError> {
        self.post(&format!("/v1/executors/{id}/deadletters"), letters)
            .await
    }

    /// Module log lines of an executor process's deployments, kept with the tenant's lines
    /// (the client's token is the executor's session token).
    pub async fn executor_log_lines(
        &self,
        id: &str,
        lines: &crate::rest::ExecutorLogLines,
    ) -> Result<(), ClientError> {
        Self::send_empty(
            self.request(Method::POST, &format!("/v1/executors/{id}/logs"))
                .json(lines),
        )
        .await
    }

    /// An executor's telemetry of one tenant (the client's token is the executor's session
    /// token).
    pub async fn executor_telemetry(
        &self,
        id: &str,
        telemetry: &crate::rest::ExecutorTelemetry,
    ) -> Result<(), ClientError> {
        Self::send_empty(
            self.request(Method::POST, &format!("/v1/executors/{id}/telemetry"))
                .json(telemetry),
        )
        .await
    }

    /// An executor's assignments once their revision is past `after`, or after `wait_ms` (a
    /// long poll; the client's token is the executor's session token).
    pub async fn executor_assignments(
        &self,
        id: &str,
        after: u64,
        wait_ms: u64,
    ) -> Result<crate::rest::ExecutorAssignments, ClientError> {
        self.get(&format!(
            "/v1/executors/{id}/assignments?after={after}&wait_ms={wait_ms}"
        ))
        .await
    }

    /// An artifact by its digest, for an executor (the client's token is the executor's
    /// session token), checked against the digest: bytes that do not match are an error, never
    /// returned.
    pub async fn executor_artifact(
        &self,
        id: &str,
        digest: &crate::ModuleDigest,
    ) -> Result<Vec<u8>, ClientError> {
        let response = Self::check(
            self.request(
                Method::GET,
                &format!("/v1/executors/{id}/artifacts/{digest}"),
            )
            .send()
            .await?,
        )
        .await?;
        let bytes = response.bytes().await?.to_vec();
        let got = crate::ModuleDigest::of(&bytes);
        if got != *digest {
            return Err(ClientError::DigestMismatch {
                expected: digest.clone(),
                got,
            });
        }
        Ok(bytes)
    }

    /// An executor leaves the control plane (a clean stop; the client's token is the executor's
    /// session token).
    pub async fn leave_executor(&self, id: &str) -> Result<(), ClientError> {
        Self::send_empty(self.request(Method::POST, &format!("/v1/executors/{id}/leave"))).await
    }

    /// The OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/openapi.json").await
    }

    /// Any request, answered with the status and raw body: for callers that test the API's
    /// edges (bad input, odd media types).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let mut builder = self.request(method, path).body(body);
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let response = builder.send().await?;
        let status = response.status();
        Ok((status, response.bytes().await?.to_vec()))
    }
}

/// A path segment, percent-encoded so a name can never reach another route.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Re-exported so callers of [`Client::raw`] need not depend on reqwest.
pub use reqwest::Method as HttpMethod;
pub use reqwest::StatusCode as HttpStatus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_escape_their_route() {
        assert_eq!(segment("../../tenants"), "..%2F..%2Ftenants");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(segment("ünï"), "%C3%BCn%C3%AF");
    }
}
