//! `/v1/modules/import` and `/v1/graphs/import`: artifacts fetched from an OCI registry, in any
//! of the packagings Azure's tooling produces (azure-compat §4.4), then validated and kept exactly
//! like an upload. The registry host passes the same wall as an endpoint's address, and a
//! layer's declared size is checked against the tenant's quota before a byte is fetched.

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
use weir_api::rest::ImportArtifact;
use weir_tenants::{Quotas, Role};

use super::artifacts::{Upload, check_upload, graph_view, module_view, store_graph, store_module};
use super::caller_tenant;
use super::endpoints::check_host;
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

fn registry_error(error: &oci_client::errors::OciDistributionError) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequest,
        format!("the registry did not deliver the artifact: {error}"),
    )
}

/// Fetches the artifact's bytes, refusing hosts behind the wall and layers over `limit`.
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
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry.as_str(), |(host, _)| host);
    check_host(host, quotas).map_err(|message| ApiError::new(ErrorCode::Forbidden, message))?;
    let client = Client::new(ClientConfig {
        protocol: if request.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..ClientConfig::default()
    });
    let auth = RegistryAuth::Anonymous;
    let (manifest, _) = client
        .pull_image_manifest(&reference, &auth)
        .await
        .map_err(|e| registry_error(&e))?;
    let layer = artifact_layer(&manifest.layers, kind)
        .map_err(|message| ApiError::new(ErrorCode::InvalidRequest, message))?;
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the artifact's layer is {size} bytes; the limit is {limit}"),
        ));
    }
    let mut bytes = Bounded {
        bytes: Vec::with_capacity(usize::try_from(size).unwrap_or(0)),
        limit: usize::try_from(size).unwrap_or(usize::MAX),
    };
    client
        .pull_blob(&reference, layer, &mut bytes)
        .await
        .map_err(|e| registry_error(&e))?;
    Ok((reference, Bytes::from(bytes.bytes)))
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
