//! The HTTP server in front of the [`router`](crate::router): HTTP/1.1 on hyper with every
//! resource a client can hold bounded.
//!
//! - **Header-read and idle timeout**: a connection that does not deliver a complete request
//!   head within [`ServerLimits::header_read_timeout`] is closed; hyper starts the same timer
//!   again when a keep-alive connection goes idle, so it is the idle timeout too.
//! - **Connection cap**: at most [`ServerLimits::max_connections`] open connections. A new
//!   connection at the cap closes the oldest idle one (no request in flight: waiting for, or in
//!   the middle of, a request head), so a flood of idle connections cannot lock out `/healthz`
//!   or anyone else; if every connection is busy, the new one is answered `503` with a problem
//!   document and closed. The file descriptors the server holds stay bounded by the cap.
//! - **Request timeout**: a request (reading its body included) that takes longer than
//!   [`ServerLimits::request_timeout`] is answered `503 unavailable`, a problem document with
//!   the request id.
//! - **Header size**: a request head over [`ServerLimits::max_header_bytes`] is answered `431`
//!   and the connection closed; a head hyper cannot parse (bad bytes in a header) is answered
//!   `400`. hyper writes those two answers itself, before any service sees the request, and they
//!   have no body: they are the only answers of weir that are not problem documents.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The bounds of the server. Defaults: 10 s header read, 120 s per request, 2,048
/// connections, 32 KiB request head.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Longest a connection may take to deliver a request head, and longest a keep-alive
    /// connection may stay idle.
    pub header_read_timeout: Duration,
    /// Longest a request may take, from its head to its answer (its body included).
    pub request_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// After a stop is asked, how long requests in flight may take to finish before their
    /// connections are closed: a long answer (a dashboard event stream, a slow download) must
    /// not keep a stopping server alive past a service manager's stop timeout.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            max_connections: 2048,
            max_header_bytes: 32 << 10,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The request timeout, handed to the router's request-id layer, which answers a request over
/// it with a problem document (so the answer carries the request id).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDeadline(pub(crate) Duration);

/// An open connection: whether a request is in flight, and how to close it.
#[derive(Debug)]
struct Tracked {
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

/// Open connections by age (ids grow).
type Open = Arc<Mutex<BTreeMap<u64, Tracked>>>;

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets requests in flight finish, and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let open: Open = Arc::default();
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors or a connection reset before accept: back off
                    // briefly rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(tracked) = admit(&open, next_id, limits.max_connections) else {
            tasks.spawn(refuse(stream));
            continue;
        };
        let id = next_id;
        next_id += 1;
        tasks.spawn(connection(
            stream,
            router.clone(),
            limits,
            (id, tracked, open.clone()),
            stopping.clone(),
        ));
    }
    drop(listener);
    stop.send_replace(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Registers a new connection, closing the oldest idle one at the cap; `None` if every
/// connection is busy.
fn admit(open: &Open, id: u64, cap: usize) -> Option<(Arc<AtomicUsize>, Arc<Notify>)> {
    let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
    if open.len() >= cap.max(1) {
        let idle = open
            .iter()
            .find(|(_, t)| t.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id)?;
        if let Some(evicted) = open.remove(&idle) {
            evicted.close.notify_one();
        }
    }
    let tracked = Tracked {
        busy: Arc::default(),
        close: Arc::default(),
    };
    let handles = (tracked.busy.clone(), tracked.close.clone());
    open.insert(id, tracked);
    Some(handles)
}

/// The answer to a connection over the cap while every connection is busy.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"type":"https://weir.dev/problems/unavailable","title":"Service Unavailable","status":503,"code":"unavailable","detail":"the server is at its connection limit; retry after the advertised delay","instance":"urn:weir:request:"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if let Ok(Err(error)) = written {
        tracing::debug!(%error, "answering a connection over the cap failed");
    }
}

/// Completes once the server stops (or its stop signal is gone).
async fn stop_requested(stopping: &mut watch::Receiver<bool>) {
    let _stopped = stopping.wait_for(|stop| *stop).await.is_ok();
}

/// Decrements a connection's in-flight count when a request's handling ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ServerLimits,
    (id, (busy, close), open): (u64, (Arc<AtomicUsize>, Arc<Notify>), Open),
    mut stopping: watch::Receiver<bool>,
) {
    let deadline = RequestDeadline(limits.request_timeout);
    let in_flight = busy.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(deadline);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(in_flight.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(guard);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = close.notified() => Ok(()),
        () = stop_requested(&mut stopping) => {
            served.as_mut().graceful_shutdown();
            // Past the grace the connection is dropped, its request with it.
            tokio::time::timeout(limits.shutdown_grace, served)
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
    open.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}
