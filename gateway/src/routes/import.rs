//! `/v1/modules/import` and `/v1/graphs/import`: artifacts fetched from an OCI registry, in any
//! of the packagings Azure's tooling produces (azure-compat §4.4), then validated and kept exactly
//! like an upload. Every connection of the import passes the tenant's egress rule (the same as an
//! endpoint's address) through an in-process proxy, with connect and read timeouts and an
//! overall deadline; a registry that does not deliver is reported generically (details in the
//! log under the request id); a layer's declared size is checked against the tenant's quota
//! before a byte is fetched.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use weir_api::ErrorCode;
use weir_api::egress::EgressError;
use weir_api::rest::ImportArtifact;
use weir_tenants::{Quotas, Role};

use super::artifacts::{Upload, check_upload, graph_view, module_view, store_graph, store_module};
use super::caller_tenant;
use super::endpoints::egress;
use crate::egress_proxy::{EgressProxy, ProxyLimits};
use crate::error::REQUEST_ID;
use crate::{ApiError, ApiJson, Caller, GatewayState};

/// What to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Graph,
}

/// The layer that holds the artifact: the only one, or the one titled `*.wasm` / `*.yaml`.
fn artifact_layer(layers: &[OciDescriptor], kind: Kind) -> Result<&OciDescriptor, String> {
    if let [only] = layers {
        return Ok(only);
    }
    let suffixes: &[&str] = match kind {
        Kind::Module => &[".wasm"],
        Kind::Graph => &[".yaml", ".yml", ".json"],
    };
    layers
        .iter()
        .find(|layer| {
            layer
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.title"))
                .is_some_and(|title| suffixes.iter().any(|s| title.ends_with(s)))
        })
        .ok_or_else(|| {
            format!(
                "the artifact has {} layers and none is titled {}",
                layers.len(),
                suffixes.join(" or ")
            )
        })
}

/// Resolving and connecting to the registry (or a host it sends the client to).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while reading an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole import: manifest, token, redirects and layer together.
const DEADLINE: Duration = Duration::from_secs(120);

/// What the tenant learns when a registry does not deliver: the same for a closed port, a
/// silent one, an error answer or a refused redirect, so the import cannot probe a network.
/// What really happened is logged with the request id.
fn registry_failed(error: &dyn std::fmt::Display) -> ApiError {
    let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
    tracing::info!(request_id = %request_id, %error, "an OCI import failed");
    ApiError::new(
        ErrorCode::InvalidRequest,
        "the registry did not deliver the artifact; quote the request id to find out why",
    )
}

/// The host and port of a registry as an OCI reference names it (`host`, `host:port`,
/// `[v6]:port`); the port defaults to the protocol's.
fn registry_host(registry: &str, insecure: bool) -> Option<(&str, u16)> {
    let default = if insecure { 80 } else { 443 };
    let (host, port) = match registry.strip_prefix('[') {
        Some(rest) => {
            let (host, rest) = rest.split_once(']')?;
            (host, rest.strip_prefix(':'))
        }
        None => match registry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default,
    };
    Some((host, port))
}

/// Fetches the artifact's bytes, refusing hosts behind the wall and layers over `limit`.
///
/// Every connection the OCI client makes (the registry, the token realm it names, redirects)
/// goes through an [`EgressProxy`] holding the tenant's egress rule, so only checked addresses
/// are connected; the registry host is checked up front too, so a refusal is a clear
/// `forbidden` decided before any connection is tried.
async fn fetch(
    request: &ImportArtifact,
    quotas: &Quotas,
    kind: Kind,
    limit: u64,
) -> Result<(Reference, Bytes), ApiError> {
    let reference: Reference = request.reference.parse().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("not an OCI reference: {e}"),
        )
    })?;
    let registry = reference.resolve_registry().to_owned();
    let (host, port) = registry_host(&registry, request.insecure).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("not a registry host: {registry}"),
        )
    })?;
    let egress = egress(quotas);
    match tokio::time::timeout(CONNECT_TIMEOUT, egress.resolve(host, port)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error @ EgressError::Private { .. })) => {
            return Err(ApiError::new(ErrorCode::Forbidden, error.to_string()));
        }
        Ok(Err(error)) => return Err(registry_failed(&error)),
        Err(elapsed) => return Err(registry_failed(&elapsed)),
    }
    let proxy = EgressProxy::start(
        egress,
        ProxyLimits {
            connect: CONNECT_TIMEOUT,
            header_read: READ_TIMEOUT,
        },
    )
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let client = Client::new(ClientConfig {
        protocol: if request.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        http_proxy: Some(proxy.url()),
        https_proxy: Some(proxy.url()),
        no_proxy: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    });
    let pulled = tokio::time::timeout(DEADLINE, pull(&client, &reference, kind, limit)).await;
    drop(proxy);
    let error = match pulled {
        Ok(Ok(bytes)) => return Ok((reference, bytes)),
        Ok(Err(Pull::Refused(error))) => return Err(error),
        Ok(Err(Pull::Registry(error))) => error.to_string(),
        Err(elapsed) => elapsed.to_string(),
    };
    Err(registry_failed(&error))
}

/// Why a pull ended without the artifact.
enum Pull {
    /// The artifact is not acceptable (shape, size): the tenant is told why.
    Refused(ApiError),
    /// The registry did not deliver: the tenant is told generically.
    Registry(oci_client::errors::OciDistributionError),
}

async fn pull(
    client: &Client,
    reference: &Reference,
    kind: Kind,
    limit: u64,
) -> Result<Bytes, Pull> {
    let auth = RegistryAuth::Anonymous;
    let (manifest, _) = client
        .pull_image_manifest(reference, &auth)
        .await
        .map_err(Pull::Registry)?;
    let layer = artifact_layer(&manifest.layers, kind)
        .map_err(|message| Pull::Refused(ApiError::new(ErrorCode::InvalidRequest, message)))?;
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > limit {
        return Err(Pull::Refused(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the artifact's layer is {size} bytes; the limit is {limit}"),
        )));
    }
    let mut bytes = Bounded {
        bytes: Vec::with_capacity(usize::try_from(size).unwrap_or(0)),
        limit: usize::try_from(size).unwrap_or(usize::MAX),
    };
    client
        .pull_blob(reference, layer, &mut bytes)
        .await
        .map_err(Pull::Registry)?;
    Ok(Bytes::from(bytes.bytes))
}

/// A buffer that refuses bytes beyond the layer's declared size: a registry that sends more than
/// it declared cannot make weir buffer it.
struct Bounded {
    bytes: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() + data.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more than the layer's declared size",
            )));
        }
        self.bytes.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Name and version to keep the artifact under: given, or the repository's last segment and
/// the tag.
fn upload_for(request: &ImportArtifact, reference: &Reference) -> Result<Upload, ApiError> {
    let repository = reference.repository();
    let upload = Upload {
        name: request.name.clone().unwrap_or_else(|| {
            repository
                .rsplit('/')
                .next()
                .unwrap_or(repository)
                .to_owned()
        }),
        version: request
            .version
            .clone()
            .or_else(|| reference.tag().map(str::to_owned))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "the reference has no tag; pass a version",
                )
            })?,
    };
    check_upload(&upload)?;
    Ok(upload)
}

#[utoipa::path(post, path = "/v1/modules/import", tag = "modules", request_body = weir_api::rest::ImportArtifact, responses((status = 201, body = weir_api::rest::Module), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn import_module(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiJson(request): ApiJson<ImportArtifact>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    let (reference, bytes) =
        fetch(&request, &quotas, Kind::Module, quotas.max_module_bytes).await?;
    let upload = upload_for(&request, &reference)?;
    let record = store_module(&state, tenant, &quotas, upload, bytes).await?;
    Ok((StatusCode::CREATED, Json(module_view(record))))
}

#[utoipa::path(post, path = "/v1/graphs/import", tag = "graphs", request_body = weir_api::rest::ImportArtifact, responses((status = 201, body = weir_api::rest::Graph), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn import_graph(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiJson(request): ApiJson<ImportArtifact>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Developer)?;
    let (reference, bytes) = fetch(
        &request,
        &quotas,
        Kind::Graph,
        super::MAX_GRAPH_BYTES as u64,
    )
    .await?;
    let upload = upload_for(&request, &reference)?;
    let record = store_graph(&state, tenant, &quotas, upload, bytes).await?;
    Ok((StatusCode::CREATED, Json(graph_view(record))))
}
