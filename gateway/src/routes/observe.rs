//! What a tenant can see of its own running work: `/v1/logs`, `/v1/deadletters`,
//! `/v1/metrics` (JSON, or the Prometheus text format for `Accept: text/plain`) and
//! `/v1/usage`; and, for admins, `/v1/executors`. Every read takes the caller's tenant from the
//! token: there is no parameter that names a tenant.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weir_api::ErrorCode;
use weir_api::rest::{MetricSeries, Usage};
use weir_tenants::Role;

use super::caller_tenant;
use crate::{ApiError, ApiQuery, Caller, FeedQuery, GatewayState};

/// The tenant's kept module log lines: numbered above `after`, oldest first, at most `limit`
/// (the oldest, or with `newest=true` the newest), only `deployment`'s if given.
#[utoipa::path(get, path = "/v1/logs", tag = "observability", params(("deployment" = Option<String>, Query, description = "only this deployment's"), ("after" = Option<u64>, Query, description = "only those numbered above this"), ("limit" = Option<usize>, Query, description = "at most this many (default and cap 1,000)"), ("newest" = Option<bool>, Query, description = "true: the newest `limit` instead of the oldest (still oldest first)")), responses((status = 200, body = Vec<weir_api::rest::LogLine>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn logs(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    Ok(Json(state.runtime.logs(&tenant, &query).await))
}

/// The tenant's dead letters from the control store, where they outlive restarts and the
/// deployments they came from: numbered above `after`, oldest first, at most `limit` (the
/// oldest, or with `newest=true` the newest), only `deployment`'s if given.
#[utoipa::path(get, path = "/v1/deadletters", tag = "observability", params(("deployment" = Option<String>, Query, description = "only this deployment's"), ("after" = Option<u64>, Query, description = "only those numbered above this"), ("limit" = Option<usize>, Query, description = "at most this many (default and cap 1,000)"), ("newest" = Option<bool>, Query, description = "true: the newest `limit` instead of the oldest (still oldest first)")), responses((status = 200, body = Vec<weir_api::rest::DeadLetter>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn dead_letters(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let letters = state
        .store
        .dead_letters(
            &tenant,
            query.deployment.as_deref(),
            query.after,
            query.limit(),
            query.newest,
        )
        .await?;
    Ok(Json(letters))
}

/// A metric or label name as Prometheus accepts it: characters other than `[A-Za-z0-9_]`
/// become `_`, and a leading digit gets a `_` before it.
fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label value escaped as the exposition formats require (`\`, `"`, newline):
/// prometheus-client writes label values as given.
#[derive(Debug, Clone)]
struct Escaped(String);

impl prometheus_client::encoding::EncodeLabelValue for Escaped {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Series to encode, each with the extra labels it gets (the tenant, for the operator's
/// view): a [`prometheus_client`] collector over a snapshot.
#[derive(Debug)]
struct Snapshot(Vec<(Vec<(String, String)>, MetricSeries)>);

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        // One family per name (and kind): the formats allow each once.
        let mut families: std::collections::BTreeMap<(String, &str), Vec<usize>> =
            std::collections::BTreeMap::new();
        for (index, (_, s)) in self.0.iter().enumerate() {
            families
                .entry((prometheus_name(&s.name), s.kind.as_str()))
                .or_default()
                .push(index);
        }
        let mut seen = std::collections::BTreeSet::new();
        for ((name, kind), members) in &families {
            // A module that used one name with two kinds: the first kind wins.
            if !seen.insert(name.clone()) {
                continue;
            }
            let metric_type = match *kind {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                _ => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(name, "", None, metric_type)?;
            for index in members {
                let Some((extra, s)) = self.0.get(*index) else {
                    continue;
                };
                let labels: Vec<(String, Escaped)> = extra
                    .iter()
                    .map(|(k, v)| (k, v))
                    .chain(s.labels.iter())
                    .map(|(k, v)| (prometheus_name(k), Escaped(v.clone())))
                    .collect();
                let mut metric = family.encode_family(&labels)?;
                match metric_type {
                    MetricType::Counter => {
                        metric
                            .encode_counter::<Vec<(String, Escaped)>, f64, f64>(&s.value, None)?;
                    }
                    MetricType::Gauge => metric.encode_gauge(&s.value)?,
                    _ => {
                        let count = s.count.unwrap_or(0);
                        // Counts by upper bound (prometheus-client makes them cumulative);
                        // modules' histograms have the +Inf bucket only.
                        let buckets: Vec<(f64, u64)> = match &s.buckets {
                            Some(buckets) => buckets
                                .iter()
                                .map(|(bound, n)| (bound.unwrap_or(f64::INFINITY), *n))
                                .collect(),
                            None => vec![(f64::INFINITY, count)],
                        };
                        metric.encode_histogram::<Vec<(String, Escaped)>>(
                            s.value, count, &buckets, None,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Series in the OpenMetrics text format (1.0.0), which Prometheus scrapes; encoded by
/// prometheus-client. Counters get the `_total` suffix the format requires.
fn prometheus_text(series: Vec<(Vec<(String, String)>, MetricSeries)>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Snapshot(series)));
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(%error, "encoding metrics failed");
    }
    text
}

/// The OpenMetrics text media type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain") || v.contains("openmetrics"))
}

/// weir's own series of every tenant (messages, errors, dead letters, fuel, restarts, call
/// latency, queue depth per deployment and node), each with a `tenant` label, in the
/// OpenMetrics text format: for the platform's operator (admins only). Modules' own series
/// stay with their tenants (`/v1/metrics`, their `telemetry` endpoint).
pub(crate) async fn platform_metrics(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let mut all = Vec::new();
    for tenant in state.store.tenants().await? {
        let tenant_label = vec![("tenant".to_owned(), tenant.id.to_string())];
        all.extend(
            state
                .runtime
                .metrics(&tenant.id)
                .await
                .into_iter()
                .filter(|s| s.platform)
                .map(|s| (tenant_label.clone(), s)),
        );
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, OPENMETRICS)],
        prometheus_text(all),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/metrics", tag = "observability", responses((status = 200, body = Vec<weir_api::rest::MetricSeries>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn metrics(
    State(state): State<GatewayState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let series = state.runtime.metrics(&tenant).await;
    if wants_text(&headers) {
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS)],
            prometheus_text(series.into_iter().map(|s| (Vec::new(), s)).collect()),
        )
            .into_response())
    } else {
        Ok(Json(series).into_response())
    }
}

#[utoipa::path(get, path = "/v1/usage", tag = "observability", responses((status = 200, body = weir_api::rest::Usage), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn usage(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, quotas) = caller_tenant(&state, &caller, Role::Viewer)?;
    let modules = state.store.modules(&tenant).await?;
    let (requests, limited) = state.limits.counts(&tenant);
    // Dead letters are counted where they are kept: across restarts.
    let letters = state.store.dead_letter_counts(&tenant).await?;
    // What the state store holds for the tenant now, as its state quotas count it.
    let stored = state
        .state
        .usage(&weir_state::StateScope::new(
            tenant.clone(),
            weir_state::StateLimits::of(&quotas),
        ))
        .await
        .map_err(|error| {
            tracing::warn!(%error, %tenant, "cannot read the tenant's state usage");
            ApiError::new(
                ErrorCode::Unavailable,
                "the state store did not answer, so the tenant's state usage is unknown; retry later",
            )
        })?;
    let usage = Usage {
        modules: modules.len() as u64,
        module_bytes: modules.iter().map(|m| m.size).sum(),
        graphs: state.store.graphs(&tenant).await?.len() as u64,
        deployments: state.store.deployments(&tenant).await?.len() as u64,
        dead_letters: letters.appended,
        dead_letters_evicted: letters.evicted,
        api_requests: requests,
        api_requests_limited: limited,
        log_lines: state.store.module_log_count(&tenant).await?,
        dead_letter_bytes: letters.kept_bytes,
        state_keys: stored.keys,
        state_bytes: stored.bytes,
        ..state.runtime.usage(&tenant).await
    };
    Ok(Json(usage))
}

#[utoipa::path(get, path = "/v1/executors", tag = "executors", responses((status = 200, body = Vec<weir_api::rest::Executor>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn executors(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    let mut executors = state.runtime.executors().await;
    executors.extend(state.executors.list());
    Ok(Json(executors))
}

async fn set_cordon(
    state: &GatewayState,
    caller: &weir_tenants::Principal,
    id: &str,
    cordoned: bool,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    if !state.runtime.cordon(id, cordoned).await {
        return Err(ApiError::not_found("executor"));
    }
    listed(state, id).await
}

/// The executor `id` as `/v1/executors` lists it.
async fn listed(state: &GatewayState, id: &str) -> Result<Response, ApiError> {
    let mut executors = state.runtime.executors().await;
    executors.extend(state.executors.list());
    let executor = executors
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| ApiError::not_found("executor"))?;
    Ok(Json(executor).into_response())
}

#[utoipa::path(post, path = "/v1/executors/{id}/cordon", tag = "executors", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Executor), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn cordon(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_cordon(&state, &caller, &id, true).await
}

#[utoipa::path(post, path = "/v1/executors/{id}/uncordon", tag = "executors", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Executor), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn uncordon(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_cordon(&state, &caller, &id, false).await
}

/// Draining moves an executor's deployments elsewhere. With one executor there is nowhere to
/// move them: the executor is cordoned and its deployments keep running, which the answer says.
#[utoipa::path(post, path = "/v1/executors/{id}/drain", tag = "executors", params(("id" = String, Path)), responses((status = 200, body = weir_api::rest::Executor), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn drain(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    // An executor process: draining moves its deployments to the others on the next rounds,
    // so some other executor must take new work (else nothing would move, and nothing says so).
    if state.executors.places() {
        let infos = state.executors.infos();
        if infos.iter().any(|(info, _)| info.id.as_str() == id) {
            let others_ready = infos.iter().any(|(info, executor_state)| {
                info.id.as_str() != id && *executor_state == weir_scheduler::ExecutorState::Ready
            });
            if !others_ready {
                return Err(ApiError::new(
                    weir_api::ErrorCode::Conflict,
                    format!(
                        "no other executor is ready (the others are cordoned, draining or lost): {id}'s deployments would have nowhere to go; uncordon one, or cordon {id} to stop new placements"
                    ),
                ));
            }
        }
        if state
            .executors
            .cordon(&id, weir_scheduler::ExecutorState::Draining)
        {
            return listed(&state, &id).await;
        }
    }
    let executors = state.runtime.executors().await;
    if !executors.iter().any(|e| e.id == id) {
        return Err(ApiError::not_found("executor"));
    }
    if executors.len() == 1 {
        return Err(ApiError::new(
            weir_api::ErrorCode::Conflict,
            "this is the only executor: its deployments have nowhere to go; cordon it to stop new placements",
        ));
    }
    set_cordon(&state, &caller, &id, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, kind: &str, labels: &[(&str, &str)], value: f64) -> MetricSeries {
        MetricSeries {
            name: name.to_owned(),
            kind: kind.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            count: None,
            buckets: None,
            platform: false,
        }
    }

    #[test]
    fn openmetrics_text_escapes_and_types_each_family_once() {
        let mut latency = series("latency", "histogram", &[], 1.5);
        latency.count = Some(2);
        let mut call = series(
            "weir_call_duration_seconds",
            "histogram",
            &[("node", "n")],
            0.5,
        );
        call.count = Some(3);
        call.buckets = Some(vec![(Some(0.1), 1), (Some(1.0), 2), (None, 0)]);
        let text = prometheus_text(
            vec![
                series("temp.count", "counter", &[("node", "a\"b\\c\nd")], 3.0),
                series("temp.count", "counter", &[("node", "c")], 4.0),
                latency,
                call,
            ]
            .into_iter()
            .map(|s| (vec![("tenant".to_owned(), "t".to_owned())], s))
            .collect(),
        );
        assert_eq!(
            text.matches("# TYPE temp_count counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("temp_count_total{tenant=\"t\",node=\"a\\\"b\\\\c\\nd\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("temp_count_total{tenant=\"t\",node=\"c\"} 4.0"),
            "{text}"
        );
        assert!(text.contains("# TYPE latency histogram"), "{text}");
        assert!(text.contains("latency_count{tenant=\"t\"} 2"), "{text}");
        assert!(
            text.contains(
                "weir_call_duration_seconds_bucket{le=\"1.0\",tenant=\"t\",node=\"n\"} 3"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
