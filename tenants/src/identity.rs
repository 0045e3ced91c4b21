//! Who is calling: a [`Principal`] from a verified JWT.
//!
//! Tokens are verified with `jsonwebtoken` against configured keys, each bound to exactly one
//! algorithm, so a token signed with another algorithm (including `none` and the HS256-with-a-
//! public-key confusion) is refused before its signature is looked at. `exp` is required; `nbf`,
//! `iss` and `aud` are checked when present or configured. The tenant comes from the token and
//! nowhere else. Every failure is an [`AuthError`] that the API answers with `unauthenticated`,
//! without saying which check failed.

use std::collections::HashSet;
use std::fmt;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use weir_api::tenancy::Role;
use weir_api::{ErrorCode, TenantId};

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: String,
    /// The tenant, for every role but admin.
    pub tenant: Option<TenantId>,
    /// The role.
    pub role: Role,
    /// The token's id, for revocation.
    pub token_id: Option<String>,
    /// The tenant instance the token was minted for (weir's own tokens carry it): a tenant
    /// deleted and created again under the same id is another instance.
    pub tenant_instance: Option<String>,
    /// When the token was issued (`iat`), seconds since the epoch.
    pub issued_at: Option<u64>,
}

impl Principal {
    /// The principal's tenant, or `forbidden` for an admin (who acts on tenants, not as one).
    pub fn tenant(&self) -> Result<&TenantId, AuthError> {
        self.tenant.as_ref().ok_or(AuthError::Forbidden {
            needed: Role::Viewer,
        })
    }

    /// Whether the token belongs to the tenant instance `instance`, created at `created_at`
    /// (seconds since the epoch): a token naming an instance must name this one; a token
    /// without one (issued by another identity provider) must not predate the tenant.
    pub fn belongs_to(&self, instance: &str, created_at: u64) -> bool {
        match (&self.tenant_instance, self.issued_at) {
            (Some(minted_for), _) => minted_for == instance,
            (None, Some(issued_at)) => issued_at >= created_at,
            (None, None) => true,
        }
    }

    /// Passes when the role is at least `needed` within a tenant (viewer < developer < owner),
    /// or is admin when `needed` is admin.
    pub fn require(&self, needed: Role) -> Result<(), AuthError> {
        let allowed = match needed {
            Role::Admin => self.role == Role::Admin,
            tenant_role => self.role != Role::Admin && self.role.rank() >= tenant_role.rank(),
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Forbidden { needed })
        }
    }
}

/// The claims weir reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Tenant id; absent for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Role.
    pub role: Role,
    /// Expiry, seconds since the epoch. Required: optional here only so that a token without
    /// it is refused as "missing exp" rather than as malformed.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The tenant instance a weir token was minted for (see [`Principal::belongs_to`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_instance: Option<String>,
}

/// Why a request is not authenticated or not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No bearer token.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// Signed with an algorithm no configured key uses (`none` included).
    #[error("token algorithm is not accepted")]
    Algorithm,
    /// The signature does not verify with any configured key.
    #[error("token signature is invalid")]
    Signature,
    /// Past its `exp`.
    #[error("token has expired")]
    Expired,
    /// Before its `nbf`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// A required claim is missing or wrong (`exp`, `iss`, `aud`, tenant/role consistency).
    #[error("token claim {0} is missing or invalid")]
    Claim(String),
    /// Revoked.
    #[error("token has been revoked")]
    Revoked,
    /// Authenticated, but the role does not allow this.
    #[error("this needs the {needed:?} role")]
    Forbidden {
        /// The role needed.
        needed: Role,
    },
}

impl AuthError {
    /// The API code: `forbidden` for a role problem, `unauthenticated` for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden { .. } => ErrorCode::Forbidden,
            _ => ErrorCode::Unauthenticated,
        }
    }
}

/// A secret that never shows itself in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A key tokens may be verified with, and the one algorithm it verifies.
#[derive(Debug, Clone)]
pub enum VerificationKey {
    /// HS256 with a shared secret.
    Hs256(Secret),
    /// RS256 with a PEM public key.
    Rs256Pem(String),
    /// ES256 (P-256) with a PEM public key.
    Es256Pem(String),
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {algorithm} key: {detail}")]
pub struct KeyError {
    algorithm: &'static str,
    detail: String,
}

/// Tokens weir has revoked, by token id. Shared by every gateway through the control store;
/// this trait is what the verifier asks.
pub trait RevocationList: Send + Sync + fmt::Debug {
    /// Whether the token `jti` is revoked.
    fn is_revoked(&self, jti: &str) -> bool;
}

/// A revocation list in memory.
#[derive(Debug, Default)]
pub struct MemoryRevocations(RwLock<HashSet<String>>);

impl MemoryRevocations {
    /// Revokes `jti`.
    pub fn revoke(&self, jti: &str) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(jti.to_owned());
    }
}

impl RevocationList for MemoryRevocations {
    fn is_revoked(&self, jti: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(jti)
    }
}

/// Verifies tokens and turns them into principals.
pub struct JwtVerifier {
    keys: Vec<(DecodingKey, Validation)>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier accepting tokens signed by any of `keys`, with `iss`/`aud` checked when given.
    pub fn new(
        keys: &[VerificationKey],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, KeyError> {
        let mut verifiers = Vec::with_capacity(keys.len());
        for key in keys {
            let (decoding, algorithm) = match key {
                VerificationKey::Hs256(secret) => {
                    (DecodingKey::from_secret(secret.expose()), Algorithm::HS256)
                }
                VerificationKey::Rs256Pem(pem) => (
                    DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| KeyError {
                        algorithm: "RS256",
                        detail: e.to_string(),
                    })?,
                    Algorithm::RS256,
                ),
                VerificationKey::Es256Pem(pem) => (
                    DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| KeyError {
                        algorithm: "ES256",
                        detail: e.to_string(),
                    })?,
                    Algorithm::ES256,
                ),
            };
            let mut validation = Validation::new(algorithm);
            // A configured issuer or audience must be present, not merely right when present.
            let mut required = vec!["exp", "sub"];
            required.extend(issuer.map(|_| "iss"));
            required.extend(audience.map(|_| "aud"));
            validation.set_required_spec_claims(&required);
            validation.leeway = 5;
            validation.validate_nbf = true;
            match issuer {
                Some(iss) => validation.set_issuer(&[iss]),
                None => validation.iss = None,
            }
            match audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            verifiers.push((decoding, validation));
        }
        Ok(Self { keys: verifiers })
    }

    /// The principal `token` names, if it verifies with one of the keys and is not revoked.
    pub fn verify(
        &self,
        token: &str,
        revocations: &dyn RevocationList,
    ) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut last = AuthError::Algorithm;
        for (key, validation) in &self.keys {
            if !validation.algorithms.contains(&header.alg) {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return principal(data.claims, revocations),
                Err(error) => last = classify(error.kind()),
            }
        }
        Err(last)
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Claim(claim.clone()),
        ErrorKind::InvalidIssuer => AuthError::Claim("iss".to_owned()),
        ErrorKind::InvalidAudience => AuthError::Claim("aud".to_owned()),
        ErrorKind::InvalidSubject => AuthError::Claim("sub".to_owned()),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::Claim(claim.clone()),
        _ => AuthError::Malformed,
    }
}

fn principal(claims: Claims, revocations: &dyn RevocationList) -> Result<Principal, AuthError> {
    if let Some(jti) = &claims.jti
        && revocations.is_revoked(jti)
    {
        return Err(AuthError::Revoked);
    }
    let tenant = match (claims.role, claims.tenant) {
        (Role::Admin, None) => None,
        (Role::Admin, Some(_)) => {
            return Err(AuthError::Claim(
                "tenant (an admin token has none)".to_owned(),
            ));
        }
        (_, None) => return Err(AuthError::Claim("tenant".to_owned())),
        (_, Some(tenant)) => {
            Some(TenantId::new(tenant).map_err(|_| AuthError::Claim("tenant".to_owned()))?)
        }
    };
    Ok(Principal {
        subject: claims.sub,
        tenant,
        role: claims.role,
        token_id: claims.jti,
        tenant_instance: claims.tenant_instance,
        issued_at: claims.iat,
    })
}

/// Mints tokens weir itself issues (HS256 with the platform secret).
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint token: {0}")]
pub struct MintError(String);

impl TokenIssuer {
    /// An issuer signing with `secret`.
    pub fn new(secret: &Secret, issuer: Option<&str>, audience: Option<&str>) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.expose()),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
        }
    }

    /// A token for `subject` with `role` in `tenant`, valid for `ttl`, with id `jti`, bound to
    /// no tenant instance (admin tokens; see [`TokenIssuer::mint_for_instance`]).
    pub fn mint(
        &self,
        subject: &str,
        tenant: Option<&TenantId>,
        role: Role,
        ttl: Duration,
        jti: &str,
    ) -> Result<String, MintError> {
        self.mint_claims(subject, tenant.map(|t| (t, None)), role, ttl, jti)
    }

    /// A token for `subject` with `role` in the tenant `tenant` of instance `instance`: it
    /// stops working when that tenant is deleted, even if one of the same id is created again.
    pub fn mint_for_instance(
        &self,
        subject: &str,
        tenant: &TenantId,
        instance: &str,
        role: Role,
        ttl: Duration,
        jti: &str,
    ) -> Result<String, MintError> {
        self.mint_claims(subject, Some((tenant, Some(instance))), role, ttl, jti)
    }

    fn mint_claims(
        &self,
        subject: &str,
        tenant: Option<(&TenantId, Option<&str>)>,
        role: Role,
        ttl: Duration,
        jti: &str,
    ) -> Result<String, MintError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            tenant: tenant.map(|(t, _)| t.as_str().to_owned()),
            tenant_instance: tenant.and_then(|(_, i)| i.map(str::to_owned)),
            role,
            exp: Some(now.saturating_add(ttl.as_secs())),
            iat: Some(now),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Some(jti.to_owned()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| MintError(e.to_string()))
    }
}
