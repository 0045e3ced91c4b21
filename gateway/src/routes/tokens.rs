//! `/v1/tokens`: an owner mints, lists and revokes its tenant's tokens; an admin does the same
//! for admin tokens and may mint a tenant's first owner token. The token text is shown once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use weir_api::rest::{MintToken, Token};
use weir_api::{ErrorCode, TenantId};
use weir_store::TokenRecord;
use weir_tenants::Role;

use crate::{ApiError, ApiJson, Caller, GatewayState, ProblemField};

/// Longest a minted token lives.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn token_id(subject: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!(
        "{nanos}:{}:{subject}:{}",
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
    .bytes()
    {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("tok-{nanos:x}-{hash:016x}")
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = weir_api::rest::MintToken, responses((status = 201, body = weir_api::rest::Token), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn mint(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiJson(body): ApiJson<MintToken>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = if caller.role == Role::Admin {
        match (&body.tenant, body.role) {
            (None, Role::Admin) => None,
            (Some(text), role) if role != Role::Admin => {
                let id = TenantId::new(text.clone()).map_err(|_| ApiError::not_found("tenant"))?;
                state
                    .store
                    .tenant(&id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("tenant"))?;
                Some(id)
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "an admin token has no tenant; a tenant token names one",
                )
                .with_errors(vec![ProblemField {
                    path: "/tenant".to_owned(),
                    message: "does not fit the role".to_owned(),
                }]));
            }
        }
    } else {
        caller.require(Role::Owner)?;
        if body.role == Role::Admin || body.tenant.is_some() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "owners mint owner, developer and viewer tokens of their own tenant",
            ));
        }
        Some(caller.tenant()?.clone())
    };
    let mut errors = Vec::new();
    if body.subject.is_empty() || body.subject.len() > 256 {
        errors.push(ProblemField {
            path: "/subject".to_owned(),
            message: "must be 1 to 256 characters".to_owned(),
        });
    }
    let ttl = Duration::from_secs(body.ttl_seconds.unwrap_or(3600));
    if ttl.is_zero() || ttl > MAX_TTL {
        errors.push(ProblemField {
            path: "/ttl_seconds".to_owned(),
            message: format!("must be 1 to {}", MAX_TTL.as_secs()),
        });
    }
    if !errors.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, "invalid token request").with_errors(errors),
        );
    }
    let id = token_id(&body.subject);
    let token = state
        .issuer
        .mint(&body.subject, tenant.as_ref(), body.role, ttl, &id)
        .map_err(|e| ApiError::internal(&e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let record = TokenRecord {
        id: id.clone(),
        tenant: tenant.clone(),
        subject: body.subject.clone(),
        role: body.role,
        expires_at: now + ttl.as_secs(),
        revoked: false,
        created_at: now,
    };
    state.store.put_token(&record).await?;
    let view = Token {
        id,
        subject: body.subject,
        role: body.role,
        tenant: tenant.map(|t| t.to_string()),
        expires_at: record.expires_at,
        revoked: false,
        token: Some(token),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

fn scope(caller: &weir_tenants::Principal) -> Result<Option<TenantId>, ApiError> {
    if caller.role == Role::Admin {
        Ok(None)
    } else {
        caller.require(Role::Owner)?;
        Ok(Some(caller.tenant()?.clone()))
    }
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = Vec<weir_api::rest::Token>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = scope(&caller)?;
    let tokens: Vec<Token> = state
        .store
        .tokens(tenant.as_ref())
        .await?
        .into_iter()
        .map(|t| Token {
            id: t.id,
            subject: t.subject,
            role: t.role,
            tenant: t.tenant.map(|t| t.to_string()),
            expires_at: t.expires_at,
            revoked: t.revoked,
            token: None,
        })
        .collect();
    Ok(Json(tokens))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn revoke(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = scope(&caller)?;
    if state.store.revoke_token(tenant.as_ref(), &id).await? {
        state.revocations.revoke(&id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}
