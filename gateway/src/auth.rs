//! The caller, from the `Authorization: Bearer` header: a verified token whose tenant still
//! exists (the same instance the token was minted for) and is not suspended.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use weir_store::TenantRecord;
use weir_tenants::{AuthError, Principal};

use crate::{ApiError, GatewayState};

/// The authenticated caller of a request, with its tenant's record as read while checking the
/// token, so handlers need not read it again.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who is calling.
    pub principal: Principal,
    /// The caller's tenant (none for admins): it exists and is not suspended.
    pub tenant: Option<TenantRecord>,
}

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 section 2.1), trimmed.
fn header_token(header: &axum::http::HeaderValue) -> Option<&str> {
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The bearer token of a request's headers, if it sends one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(header_token)
}

impl FromRequestParts<GatewayState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &GatewayState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let token = header_token(header).ok_or(AuthError::Malformed)?;
        let principal = state
            .verifier
            .verify(token.trim(), state.revocations.as_ref())?;
        let tenant = match &principal.tenant {
            // Tokens of deleted or suspended tenants stop working at once, and a tenant
            // created again under the same id is another instance: its predecessor's tokens
            // are not its own.
            Some(tenant) => match state.store.tenant(tenant).await? {
                Some(record)
                    if !record.suspended
                        && principal.belongs_to(&record.instance, record.created_at) =>
                {
                    Some(record)
                }
                _ => return Err(AuthError::Revoked.into()),
            },
            None => None,
        };
        Ok(Self { principal, tenant })
    }
}
