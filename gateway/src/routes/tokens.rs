//! `/v1/tokens`: an owner mints, lists and revokes its tenant's tokens; an admin mints admin
//! tokens and tenants' tokens, lists every token (or one tenant's, `?tenant=`) and revokes any.
//! The token text is shown once. A tenant's tokens are bound to its instance: they stop when
//! it is deleted, and do not come back when a tenant of the same id is created again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use weir_api::rest::{MintToken, Token};
use weir_api::{ErrorCode, TenantId};
use weir_store::{TokenRecord, TokenScope};
use weir_tenants::Role;

use crate::{ApiError, ApiJson, ApiQuery, Caller, GatewayState, ProblemField};

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
    // The tenant and the instance of it the token is bound to.
    let tenant = if caller.role == Role::Admin {
        match (&body.tenant, body.role) {
            (None, Role::Admin) => None,
            (Some(text), role) if role != Role::Admin => {
                let id = TenantId::new(text.clone()).map_err(|_| ApiError::not_found("tenant"))?;
                let record = state
                    .store
                    .tenant(&id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("tenant"))?;
                Some((id, record.instance))
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
        let record = caller
            .tenant
            .as_ref()
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        Some((record.id.clone(), record.instance.clone()))
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
    let token = match &tenant {
        Some((tenant, instance)) => {
            state
                .issuer
                .mint_for_instance(&body.subject, tenant, instance, body.role, ttl, &id)
        }
        None => state.issuer.mint(&body.subject, None, body.role, ttl, &id),
    }
    .map_err(|e| ApiError::internal(&e))?;
    let tenant = tenant.map(|(tenant, _)| tenant);
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

/// The tokens a caller manages: an admin every token, an owner its tenant's.
fn scope(caller: &weir_tenants::Principal) -> Result<TokenScope<'_>, ApiError> {
    if caller.role == Role::Admin {
        Ok(TokenScope::All)
    } else {
        caller.require(Role::Owner)?;
        Ok(TokenScope::Tenant(caller.tenant()?))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this tenant's tokens (admin only).
    #[serde(default)]
    tenant: Option<String>,
}

/// Lists tokens (never their text): an owner its tenant's; an admin every token, or with
/// `?tenant=` one tenant's (`404` if there is no such tenant).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(("tenant" = Option<String>, Query, description = "admin only: this tenant's tokens")), responses((status = 200, body = Vec<weir_api::rest::Token>), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<GatewayState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let named = match &query.tenant {
        Some(_) if caller.role != Role::Admin => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only an admin lists another tenant's tokens; owners list their own without ?tenant",
            ));
        }
        Some(text) => {
            let id = TenantId::new(text.clone()).map_err(|_| ApiError::not_found("tenant"))?;
            state
                .store
                .tenant(&id)
                .await?
                .ok_or_else(|| ApiError::not_found("tenant"))?;
            Some(id)
        }
        None => None,
    };
    let scope = match &named {
        Some(id) => TokenScope::Tenant(id),
        None => scope(&caller)?,
    };
    let tokens: Vec<Token> = state
        .store
        .tokens(scope)
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

/// Revokes a token: an owner one of its tenant's, an admin any.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)), responses((status = 204), (status = "4XX", body = weir_api::rest::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn revoke(
    State(state): State<GatewayState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if state.store.revoke_token(scope(&caller)?, &id).await? {
        state.revocations.revoke(&id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}
