//! An HTTP proxy on loopback that holds a library's connections to the egress rule
//! (`weir_api::egress`), for libraries that open their own connections and take neither a
//! resolver nor an HTTP client: `oci-client` is one (0.18 builds its own `reqwest` client from
//! `ClientConfig`, which has proxies but no resolver, connector or redirect policy).
//!
//! The library is pointed at the proxy for `http` and `https`; every request it makes (the
//! registry, the token realm the registry names, every redirect) arrives here as `CONNECT
//! host:port` (TLS, tunnelled untouched, so certificates are checked against the real name) or
//! as an absolute-form `http` request. Each target is resolved and checked by the tenant's
//! [`Egress`] and connected on a checked address only; a refused or failed target answers
//! `403`/`502` without a body, which the library reports as an error the gateway does not pass
//! on. The proxy lives as long as its [`EgressProxy`]: dropping it closes the listener, every
//! connection and every tunnel.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_api::egress::Egress;

type Body = BoxBody<Bytes, hyper::Error>;

/// Limits of the proxied connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyLimits {
    /// Resolving and connecting to a target.
    pub(crate) connect: Duration,
    /// Reading a request head from the library.
    pub(crate) header_read: Duration,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub(crate) struct EgressProxy {
    address: SocketAddr,
    _stop: watch::Sender<()>,
}

impl EgressProxy {
    /// Starts a proxy on a free loopback port that admits what `egress` allows.
    pub(crate) async fn start(egress: Egress, limits: ProxyLimits) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = watch::channel(());
        let egress = Arc::new(egress);
        tokio::spawn(until_stopped(stopped.clone(), async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let egress = egress.clone();
                let stopped_conn = stopped.clone();
                tokio::spawn(until_stopped(stopped.clone(), async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(egress.clone(), limits, stopped_conn.clone(), request)
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_read)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    if let Err(error) = served {
                        tracing::debug!(%error, "egress proxy connection failed");
                    }
                }));
            }
        }));
        Ok(Self {
            address,
            _stop: stop,
        })
    }

    /// The proxy's URL, for a client's proxy settings.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// Runs `work` until it ends or the proxy is dropped.
async fn until_stopped(mut stopped: watch::Receiver<()>, work: impl Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        _ = stopped.changed() => {}
    }
}

fn answer(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

async fn handle(
    egress: Arc<Egress>,
    limits: ProxyLimits,
    stopped: watch::Receiver<()>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let default_port = if request.method() == Method::CONNECT {
        443
    } else {
        80
    };
    let target = request.uri().authority().map(|authority| {
        (
            authority.host().to_owned(),
            authority.port_u16().unwrap_or(default_port),
        )
    });
    let Some((host, port)) = target else {
        return Ok(answer(StatusCode::BAD_REQUEST));
    };
    if request.method() != Method::CONNECT && request.uri().scheme_str() != Some("http") {
        return Ok(answer(StatusCode::BAD_REQUEST));
    }
    let upstream = match egress.connect(&host, port, limits.connect).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%error, "egress proxy refused or could not reach a target");
            return Ok(answer(match error {
                weir_api::egress::EgressError::Private { .. } => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            }));
        }
    };
    if request.method() == Method::CONNECT {
        tokio::spawn(until_stopped(stopped, async move {
            let tunnelled = async {
                let upgraded = hyper::upgrade::on(request)
                    .await
                    .map_err(std::io::Error::other)?;
                let mut upstream = upstream;
                tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut upstream).await
            };
            if let Err(error) = tunnelled.await {
                tracing::debug!(%error, "egress proxy tunnel failed");
            }
        }));
        return Ok(answer(StatusCode::OK));
    }
    Ok(forward(request, upstream, &host, port, stopped)
        .await
        .unwrap_or_else(|error| {
            tracing::debug!(%error, "egress proxy request failed");
            answer(StatusCode::BAD_GATEWAY)
        }))
}

/// Sends an absolute-form request on `upstream` in origin form, without the proxy's headers.
async fn forward(
    request: Request<Incoming>,
    upstream: tokio::net::TcpStream,
    host: &str,
    port: u16,
    stopped: watch::Receiver<()>,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = request.into_parts();
    let origin_form = parts
        .uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str)
        .parse()
        .unwrap_or_default();
    parts.uri = origin_form;
    parts.headers.remove("proxy-authorization");
    parts.headers.remove("proxy-connection");
    if !parts.headers.contains_key(hyper::header::HOST) {
        let authority = if port == 80 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        if let Ok(value) = hyper::header::HeaderValue::from_str(&authority) {
            parts.headers.insert(hyper::header::HOST, value);
        }
    }
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(until_stopped(stopped, async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "egress proxy upstream connection failed");
        }
    }));
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(response.map(BodyExt::boxed))
}
