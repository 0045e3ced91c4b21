//! What a tenant can see of its own running work: `/v1/logs`, `/v1/deadletters`,
//! `/v1/metrics` (JSON, or the Prometheus text format for `Accept: text/plain`) and
//! `/v1/usage`; and, for admins, `/v1/executors`. Every read takes the caller's tenant from the
//! token: there is no parameter that names a tenant.

use std::fmt::Write as _;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weir_api::rest::{MetricSeries, Usage};
use weir_tenants::Role;

use super::caller_tenant;
use crate::{ApiError, ApiQuery, Caller, FeedQuery, GatewayState};

#[utoipa::path(get, path = "/v1/logs", tag = "observability", responses((status = 200, body = Vec<weir_api::rest::LogLine>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn logs(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    Ok(Json(state.runtime.logs(&tenant, &query).await))
}

/// The tenant's dead letters from the control store, where they outlive restarts and the
/// deployments they came from: numbered above `after`, oldest first, at most `limit`, only
/// `deployment`'s if given.
#[utoipa::path(get, path = "/v1/deadletters", tag = "observability", params(("deployment" = Option<String>, Query, description = "only this deployment's"), ("after" = Option<u64>, Query, description = "only those numbered above this"), ("limit" = Option<usize>, Query, description = "at most this many (default and cap 1,000)")), responses((status = 200, body = Vec<weir_api::rest::DeadLetter>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
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
        )
        .await?;
    Ok(Json(letters))
}

/// A metric or label name as Prometheus accepts it.
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

fn prometheus_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The tenant's series in the Prometheus text exposition format (0.0.4).
fn prometheus_text(series: &[MetricSeries]) -> String {
    let mut text = String::new();
    let mut typed = std::collections::BTreeSet::new();
    for s in series {
        let name = prometheus_name(&s.name);
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{}=\"{}\"", prometheus_name(k), prometheus_label_value(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        if s.kind == "histogram" {
            // Only count and sum are kept per series: a summary without quantiles.
            if typed.insert(name.clone()) {
                writeln!(text, "# TYPE {name} summary").ok();
            }
            writeln!(text, "{name}_sum{labels} {}", s.value).ok();
            writeln!(text, "{name}_count{labels} {}", s.count.unwrap_or(0)).ok();
        } else {
            if typed.insert(name.clone()) {
                writeln!(text, "# TYPE {name} {}", s.kind).ok();
            }
            writeln!(text, "{name}{labels} {}", s.value).ok();
        }
    }
    text
}

#[utoipa::path(get, path = "/v1/metrics", tag = "observability", responses((status = 200, body = Vec<weir_api::rest::MetricSeries>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn metrics(
    State(state): State<GatewayState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let series = state.runtime.metrics(&tenant).await;
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain"));
    if wants_text {
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus_text(&series),
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
    let (tenant, _) = caller_tenant(&state, &caller, Role::Viewer)?;
    let modules = state.store.modules(&tenant).await?;
    let (requests, limited) = state.limits.counts(&tenant);
    // Dead letters are counted where they are kept: across restarts.
    let letters = state.store.dead_letter_counts(&tenant).await?;
    let usage = Usage {
        modules: modules.len() as u64,
        module_bytes: modules.iter().map(|m| m.size).sum(),
        graphs: state.store.graphs(&tenant).await?.len() as u64,
        deployments: state.store.deployments(&tenant).await?.len() as u64,
        dead_letters: letters.appended,
        dead_letters_evicted: letters.evicted,
        api_requests: requests,
        api_requests_limited: limited,
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
    Ok(Json(state.runtime.executors().await))
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
    let executor = state
        .runtime
        .executors()
        .await
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

    #[test]
    fn prometheus_text_escapes_and_types_each_family_once() {
        let series = vec![
            MetricSeries {
                name: "temp.count".to_owned(),
                kind: "counter".to_owned(),
                labels: [("node".to_owned(), "a\"b".to_owned())].into(),
                value: 3.0,
                count: None,
            },
            MetricSeries {
                name: "temp.count".to_owned(),
                kind: "counter".to_owned(),
                labels: [("node".to_owned(), "c".to_owned())].into(),
                value: 4.0,
                count: None,
            },
            MetricSeries {
                name: "latency".to_owned(),
                kind: "histogram".to_owned(),
                labels: Default::default(),
                value: 1.5,
                count: Some(2),
            },
        ];
        let text = prometheus_text(&series);
        assert_eq!(
            text,
            "# TYPE temp_count counter\ntemp_count{node=\"a\\\"b\"} 3\ntemp_count{node=\"c\"} 4\n# TYPE latency summary\nlatency_sum 1.5\nlatency_count 2\n"
        );
    }
}
