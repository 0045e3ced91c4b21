//! The dashboard: a static page (HTML, CSS and one ES module, committed in `gateway/assets/`
//! and embedded in the binary) served at `/`, and the few routes it needs that the REST API
//! lacks:
//!
//! - `GET /v1/dashboard/me`: the caller's role and tenant;
//! - `GET /v1/dashboard/events`: a server-sent-events stream (`text/event-stream`, the WHATWG
//!   HTML "Server-sent events" format) of the tenant's deployments and their counters, one
//!   `deployments` event every [`EVENT_INTERVAL`];
//! - `GET /v1/dashboard/quotas`: the tenant's quotas (`/v1/usage` has what it used);
//! - `GET /v1/dashboard/graph?deployment=ID`: the operations and connections of the graph a
//!   deployment runs, as JSON (the graph text is stored as uploaded, YAML or JSON);
//! - `GET /v1/dashboard/history?deployment=ID`: a deployment's counters sampled every
//!   [`SAMPLE_INTERVAL`] over the last [`HISTORY_SAMPLES`] samples (15 minutes), so a page opened
//!   now draws the last 15 minutes.
//!
//! A tenant's token reads its own tenant only and may name none; an admin's token must name
//! one (`?tenant=ID`): the admin's view across tenants. Tokens travel in the `Authorization`
//! header only, never in a URL (the page reads the stream with `fetch`, since `EventSource`
//! cannot send headers). A stream checks its token again at every event (revoked, expired,
//! suspended or deleted: it ends) and ends after [`STREAM_LIFETIME`]; the page reconnects.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use hyper::body::Frame;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_api::scale::instance_ids;
use weir_api::{ErrorCode, TenantId};
use weir_tenants::Role;

use crate::routes::caller_tenant;
use crate::{ApiError, Caller, GatewayState};

/// How often the event stream sends the deployments' counters.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(1500);
/// How often every deployment's counters are sampled for the charts.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per deployment: 15 minutes at [`SAMPLE_INTERVAL`].
pub const HISTORY_SAMPLES: usize = 180;
/// How long one event stream lasts; the page opens the next one.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// Event streams open at once per tenant, and as many for the admin's view of each tenant
/// watched (a tenant's own streams never shut the admin out of its view).
pub const MAX_STREAMS_PER_TENANT: usize = 8;
/// Longest one event may wait for the client to take it: a client that stops reading loses
/// its stream (and frees its slot) instead of holding it past its token and its lifetime.
pub(crate) const EVENT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The page's Content-Security-Policy: its own script and style only, no inline code, no
/// frames, connections to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");

/// One embedded asset: its bytes, media type and entity tag.
struct Asset {
    body: &'static str,
    media_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, media_type: &'static str) -> Self {
        // FNV-1a over the bytes: an entity tag, not a security measure.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in body.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            body,
            media_type,
            etag: format!("\"{hash:016x}\""),
        }
    }

    /// The asset, or `304 Not Modified` for a matching `If-None-Match`; revalidated on every
    /// use (`no-cache`), so a new weir serves its new page at once.
    fn respond(&self, headers: &HeaderMap) -> Response {
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|tag| tag.trim() == self.etag));
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            ([(header::CONTENT_TYPE, self.media_type)], self.body).into_response()
        };
        let out = response.headers_mut();
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            out.insert(header::ETAG, etag);
        }
        secure(out);
        response
    }
}

/// The headers every dashboard answer carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(INDEX_HTML, "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> = LazyLock::new(|| Asset::new(STYLE_CSS, "text/css; charset=utf-8"));

/// One sample of a deployment's counters (totals since it started on this server).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// Messages taken from its source.
    pub received: u64,
    /// Messages handed to its sink.
    pub emitted: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Failed calls, all nodes together.
    pub failures: u64,
}

type Key = (TenantId, String);

/// What the dashboard routes share: the sampled history, when each deployment was seen to
/// start running, and the open streams.
#[derive(Debug, Default)]
pub(crate) struct Dashboard {
    /// When the dashboard (the server) started, in milliseconds since the epoch.
    started_ms: u64,
    /// Since when each running deployment runs, as observed at the samplings and events: a
    /// deployment running when the server started counts from the start (or its creation, if
    /// later). Bounded like `history`.
    running_since: Mutex<HashMap<Key, u64>>,
    /// Samples per stored deployment, oldest first, at most [`HISTORY_SAMPLES`] each; a
    /// deployment no longer stored loses its ring at the next sampling, so the map is bounded
    /// by the tenants' `max_deployments`.
    history: Mutex<HashMap<Key, VecDeque<Sample>>>,
    /// Open event streams per tenant watched, the tenant's own (`false`) apart from the
    /// admin's (`true`).
    streams: Mutex<HashMap<(TenantId, bool), usize>>,
    sampling: AtomicBool,
}

impl Dashboard {
    /// Starts the sampler once, on the current tokio runtime (if there is none yet, the first
    /// dashboard request starts it). It ends when the router is dropped.
    pub(crate) fn ensure_sampler(self: &Arc<Self>, state: &GatewayState) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.sampling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let dashboard = Arc::downgrade(self);
        let state = state.clone();
        tokio::spawn(sample_forever(dashboard, state));
    }

    fn new() -> Self {
        Self {
            started_ms: now_ms(),
            ..Self::default()
        }
    }

    /// Since when the deployment `key` runs (milliseconds since the epoch), if it runs;
    /// `created_s` is its creation (seconds since the epoch).
    fn running_since(&self, key: &Key, running: bool, created_s: u64) -> Option<u64> {
        let mut since = self.running_since.lock().ok()?;
        if !running {
            since.remove(key);
            return None;
        }
        // Deployments found running by the first samplings were resumed at the start.
        let settling = u64::try_from(SAMPLE_INTERVAL.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(2);
        let now = now_ms();
        let first_seen = if now < self.started_ms.saturating_add(settling) {
            self.started_ms.max(created_s.saturating_mul(1000))
        } else {
            now
        };
        Some(*since.entry(key.clone()).or_insert(first_seen))
    }

    fn samples(&self, key: &Key) -> Vec<Sample> {
        self.history
            .lock()
            .map(|h| h.get(key).map(|r| r.iter().copied().collect()))
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

async fn sample_forever(dashboard: Weak<Dashboard>, state: GatewayState) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(dashboard) = dashboard.upgrade() else {
            return;
        };
        let Ok(tenants) = state.store.tenants().await else {
            continue;
        };
        let mut fresh: HashMap<Key, Option<Sample>> = HashMap::new();
        for tenant in tenants {
            let Ok(deployments) = state.store.deployments(&tenant.id).await else {
                continue;
            };
            for deployment in deployments {
                let status = state.runtime.status(&tenant.id, &deployment.id).await;
                dashboard.running_since(
                    &(tenant.id.clone(), deployment.id.clone()),
                    deployment.status == "running" && status.is_some(),
                    deployment.created_at,
                );
                fresh.insert(
                    (tenant.id.clone(), deployment.id),
                    status.as_ref().map(sample),
                );
            }
        }
        if let Ok(mut since) = dashboard.running_since.lock() {
            since.retain(|key, _| fresh.contains_key(key));
        }
        if let Ok(mut history) = dashboard.history.lock() {
            history.retain(|key, _| fresh.contains_key(key));
            for (key, sample) in fresh {
                let ring = history.entry(key).or_default();
                if let Some(sample) = sample {
                    if ring.len() >= HISTORY_SAMPLES {
                        ring.pop_front();
                    }
                    ring.push_back(sample);
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn counter(status: &Value, name: &str) -> u64 {
    status.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// Calls that failed and live instances, all nodes of a status together.
fn node_totals(status: &Value) -> (u64, u64) {
    status
        .get("nodes")
        .and_then(Value::as_object)
        .map_or((0, 0), |nodes| {
            nodes.values().fold((0, 0), |(failures, live), node| {
                let holds = node.get("live").and_then(Value::as_bool).unwrap_or(false);
                (
                    failures + counter(node, "failures"),
                    live + u64::from(holds),
                )
            })
        })
}

/// The wasm nodes of a running deployment's status (its `nodes` are those with a module).
fn wasm_nodes(status: &Value) -> u64 {
    status
        .get("nodes")
        .and_then(Value::as_object)
        .map_or(0, |nodes| nodes.len() as u64)
}

/// A stored spec's `instances` (1 when absent or unreadable).
fn spec_instances(spec: &Value) -> u32 {
    spec.get("instances")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

fn sample(status: &Value) -> Sample {
    Sample {
        at_ms: now_ms(),
        received: counter(status, "received"),
        emitted: counter(status, "emitted"),
        dead_lettered: counter(status, "dead_lettered"),
        failures: node_totals(status).0,
    }
}

/// The dashboard's routes and assets.
/// The dashboard's page and assets added to `api` (whose routes include the documented
/// `/v1/dashboard/*` operations), with what those routes share.
pub(crate) fn attach(api: Router<GatewayState>, state: &GatewayState) -> Router<GatewayState> {
    let dashboard = Arc::new(Dashboard::new());
    dashboard.ensure_sampler(state);
    api.route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .layer(Extension(dashboard))
}

async fn index(headers: HeaderMap) -> Response {
    INDEX.respond(&headers)
}

async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}

/// `{ "role": "owner", "tenant": "acme" }` (`tenant` null for the admin).
#[utoipa::path(get, path = "/v1/dashboard/me", tag = "dashboard", description = "The token's role and tenant.", responses((status = 200, description = "`{role, tenant}`"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn me(caller: Caller) -> Json<Value> {
    Json(json!({ "role": caller.role, "tenant": caller.principal.tenant }))
}

/// Which tenant a dashboard route reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Watch {
    /// Admins only: the tenant to watch.
    #[serde(default)]
    tenant: Option<String>,
    /// History: the deployment.
    #[serde(default)]
    deployment: Option<String>,
}

/// The tenant the caller may read: its own (a tenant token naming a tenant is refused), or
/// for an admin the one it names.
async fn watched(
    state: &GatewayState,
    caller: &Caller,
    named: Option<&str>,
) -> Result<TenantId, ApiError> {
    if caller.role == Role::Admin {
        let named = named.ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "an admin names the tenant to watch: ?tenant=ID",
            )
        })?;
        let tenant = TenantId::new(named)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        state
            .store
            .tenant(&tenant)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        return Ok(tenant);
    }
    if named.is_some() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a tenant's token reads its own tenant only",
        ));
    }
    Ok(caller_tenant(state, caller, Role::Viewer)?.0)
}

/// A deployment's sampled counters over the last 15 minutes, oldest first.
#[utoipa::path(get, path = "/v1/dashboard/history", tag = "dashboard", description = "A deployment's counters sampled every 5 s over the last 15 minutes.", params(("deployment" = String, Query, description = "the deployment"), ("tenant" = Option<String>, Query, description = "admins only: the tenant watched")), responses((status = 200, description = "`{deployment, interval_ms, samples: [{at_ms, received, emitted, dead_lettered, failures}]}`"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn history(
    State(state): State<GatewayState>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    caller: Caller,
    query: Result<Query<Watch>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    dashboard.ensure_sampler(&state);
    let tenant = watched(&state, &caller, query.tenant.as_deref()).await?;
    let id = query.deployment.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "name the deployment: ?deployment=ID",
        )
    })?;
    state
        .store
        .deployment(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment"))?;
    let samples = dashboard.samples(&(tenant, id.clone()));
    Ok(Json(json!({
        "deployment": id,
        "interval_ms": u64::try_from(SAMPLE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
        "samples": samples,
    })))
}

/// An open stream of a tenant: counted while it lives.
#[derive(Debug)]
struct StreamSlot {
    dashboard: Arc<Dashboard>,
    key: (TenantId, bool),
}

impl StreamSlot {
    /// A slot of `tenant`'s own streams, or of the admin's view of it (`admin`).
    fn take(dashboard: &Arc<Dashboard>, tenant: &TenantId, admin: bool) -> Option<Self> {
        let key = (tenant.clone(), admin);
        let mut streams = dashboard.streams.lock().ok()?;
        let open = streams.entry(key.clone()).or_default();
        if *open >= MAX_STREAMS_PER_TENANT {
            return None;
        }
        *open += 1;
        Some(Self {
            dashboard: dashboard.clone(),
            key,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.dashboard.streams.lock()
            && let Some(open) = streams.get_mut(&self.key)
        {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

/// The response body of an event stream: events as the task makes them; dropping it (the
/// client went away) ends the task at its next send.
struct EventBody {
    events: tokio::sync::mpsc::Receiver<Bytes>,
    _slot: StreamSlot,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .events
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(Frame::data(data))))
    }
}

/// The tenant's deployments as the list shows them.
async fn snapshot(
    state: &GatewayState,
    dashboard: &Dashboard,
    tenant: &TenantId,
) -> Result<Value, ApiError> {
    let mut list = Vec::new();
    for record in state.store.deployments(tenant).await? {
        let status = state.runtime.status(tenant, &record.id).await;
        let since = dashboard.running_since(
            &(tenant.clone(), record.id.clone()),
            record.status == "running" && status.is_some(),
            record.created_at,
        );
        let counters = status.as_ref().map(|s| {
            let (failures, live) = node_totals(s);
            let last_error = s
                .get("recent_dead_letters")
                .and_then(Value::as_array)
                .and_then(|letters| letters.first())
                .map(|l| {
                    json!({
                        "reason": l.get("reason"),
                        "detail": l.get("detail"),
                        "at_ms": l.get("at_ms"),
                    })
                });
            json!({
                "placement": s.get("executor"),
                "received": counter(s, "received"),
                "emitted": counter(s, "emitted"),
                "dead_lettered": counter(s, "dead_lettered"),
                "failures": failures,
                "live_instances": live,
                "nodes": s.get("nodes").and_then(Value::as_object).map_or(0, serde_json::Map::len),
                "last_error": last_error,
            })
        });
        // What the `max_instances` quota counts: one operator instance per wasm node of each
        // running instance of the deployment (the executor promises them at admission, and an
        // idle instance keeps its promise), not the instances live right now.
        let instances = spec_instances(&record.spec);
        let mut operator_instances = 0;
        if instances <= 1 {
            operator_instances = status.as_ref().map_or(0, wasm_nodes);
        } else {
            for instance in instance_ids(&record.id, instances) {
                if let Some(s) = state.runtime.status(tenant, &instance).await {
                    operator_instances += wasm_nodes(&s);
                }
            }
        }
        list.push(json!({
            "id": record.id,
            "status": record.status,
            "operator_instances": operator_instances,
            "created_at": record.created_at,
            "running_since_ms": since,
            "runtime": counters,
        }));
    }
    Ok(json!({ "at_ms": now_ms(), "tenant": tenant, "deployments": list }))
}

/// Whether the bearer token of the stream's request is still good (not revoked nor expired;
/// its tenant neither suspended nor deleted; for the admin's view, the tenant still there).
async fn still_allowed(state: &GatewayState, token: &str, watched: &TenantId) -> bool {
    let Ok(principal) = state.verifier.verify(token, state.revocations.as_ref()) else {
        return false;
    };
    let Ok(Some(record)) = state.store.tenant(watched).await else {
        return false;
    };
    principal.role == Role::Admin
        || (!record.suspended && principal.belongs_to(&record.instance, record.created_at))
}

/// The event stream: `event: deployments` with the tenant's deployments and counters (JSON in
/// one `data:` line) every [`EVENT_INTERVAL`], `event: end` after [`STREAM_LIFETIME`] or when
/// the token stops being good.
#[utoipa::path(get, path = "/v1/dashboard/events", tag = "dashboard", description = "Server-sent events (text/event-stream): event deployments every 1.5 s with the tenant's deployments and counters; event end when the token stops being good or after 5 minutes.", params(("tenant" = Option<String>, Query, description = "admins only: the tenant watched")), responses((status = 200, description = "text/event-stream"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn events(
    State(state): State<GatewayState>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<Watch>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    if query.deployment.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the stream carries every deployment of the tenant; no deployment parameter",
        ));
    }
    dashboard.ensure_sampler(&state);
    let tenant = watched(&state, &caller, query.tenant.as_deref()).await?;
    // `Caller` read and verified it already.
    let token = crate::auth::bearer(&headers)
        .map(str::to_owned)
        .unwrap_or_default();
    let slot =
        StreamSlot::take(&dashboard, &tenant, caller.role == Role::Admin).ok_or_else(|| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("{MAX_STREAMS_PER_TENANT} event streams of this tenant are open already"),
            )
            .with_retry_after(EVENT_INTERVAL)
        })?;
    let (sender, events) = tokio::sync::mpsc::channel::<Bytes>(1);
    // Whether the client took the event in time; `false`: it went away or stopped reading,
    // and the stream ends (its slot with it).
    let send = move |event: Bytes| {
        let sender = sender.clone();
        async move {
            matches!(
                tokio::time::timeout(EVENT_SEND_TIMEOUT, sender.send(event)).await,
                Ok(Ok(()))
            )
        }
    };
    tokio::spawn(async move {
        let ends = tokio::time::Instant::now() + STREAM_LIFETIME;
        let mut ticks = tokio::time::interval(EVENT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let interval_ms = EVENT_INTERVAL.as_millis();
        if !send(Bytes::from(format!("retry: {interval_ms}\n\n"))).await {
            return;
        }
        loop {
            ticks.tick().await;
            if tokio::time::Instant::now() >= ends || !still_allowed(&state, &token, &tenant).await
            {
                // The client may be gone already: nothing to tell it then.
                if !send(Bytes::from_static(b"event: end\ndata: {}\n\n")).await {
                    tracing::debug!("dashboard stream closed by the client");
                }
                return;
            }
            let event = match snapshot(&state, &dashboard, &tenant).await {
                Ok(data) => format!("event: deployments\ndata: {data}\n\n"),
                Err(error) => {
                    tracing::warn!(?error, "dashboard snapshot failed");
                    continue;
                }
            };
            if !send(Bytes::from(event)).await {
                return;
            }
        }
    });
    let mut response = Response::new(axum::body::Body::new(EventBody {
        events,
        _slot: slot,
    }));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

fn parse_watch(
    query: Result<Query<Watch>, axum::extract::rejection::QueryRejection>,
) -> Result<Watch, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// The watched tenant's quotas (the fields of `weir_tenants::Quotas`).
#[utoipa::path(get, path = "/v1/dashboard/quotas", tag = "dashboard", description = "The tenant's quotas.", params(("tenant" = Option<String>, Query, description = "admins only: the tenant watched")), responses((status = 200, description = "`{tenant, quotas}`"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn quotas(
    State(state): State<GatewayState>,
    caller: Caller,
    query: Result<Query<Watch>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = parse_watch(query)?;
    let tenant = watched(&state, &caller, query.tenant.as_deref()).await?;
    let record = state
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(json!({ "tenant": tenant, "quotas": record.quotas })))
}

/// The operations and connections of the graph the deployment runs.
#[utoipa::path(get, path = "/v1/dashboard/graph", tag = "dashboard", description = "The operations and connections of the graph a deployment runs.", params(("deployment" = String, Query, description = "the deployment"), ("tenant" = Option<String>, Query, description = "admins only: the tenant watched")), responses((status = 200, description = "`{deployment, graph: {name, version}, definition: {operations, connections}}`"), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn graph(
    State(state): State<GatewayState>,
    caller: Caller,
    query: Result<Query<Watch>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = parse_watch(query)?;
    let tenant = watched(&state, &caller, query.tenant.as_deref()).await?;
    let id = query.deployment.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "name the deployment: ?deployment=ID",
        )
    })?;
    let record = state
        .store
        .deployment(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment"))?;
    let spec: weir_api::rest::CreateDeployment =
        serde_json::from_value(record.spec).map_err(|e| ApiError::internal(&e))?;
    let graph = state
        .store
        .graph(&tenant, &spec.graph.name, &spec.graph.version)
        .await?
        .ok_or_else(|| ApiError::not_found("graph"))?;
    let text = state
        .blobs
        .get(&graph.digest)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("graph"))?;
    // Parsing a graph of up to 4 MiB is work for the blocking pool.
    let definition = tokio::task::spawn_blocking(move || {
        let text = String::from_utf8_lossy(&text);
        weir_api::graph::parse_graph(&text).map(|g| {
            let d = g.definition();
            json!({ "operations": d.operations, "connections": d.connections })
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({
        "deployment": id,
        "graph": { "name": spec.graph.name, "version": spec.graph.version },
        "definition": definition,
    })))
}
