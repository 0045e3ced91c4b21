//! JWT verification against real keys (test-only keys in `tests/keys/`): what is accepted, and
//! every way a token must be refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use weir_api::{ErrorCode, TenantId};
use weir_tenants::{
    AuthError, JwtVerifier, MemoryRevocations, Principal, Role, Secret, TokenIssuer,
    VerificationKey,
};

const RSA_PRIVATE: &str = include_str!("keys/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa-public.pem");
const OTHER_RSA_PRIVATE: &str = include_str!("keys/other-rsa-private.pem");
const EC_PRIVATE: &str = include_str!("keys/ec-private.pem");
const EC_PUBLIC: &str = include_str!("keys/ec-public.pem");
const SECRET: &[u8] = b"a-shared-secret-of-reasonable-length-for-hs256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut base = json!({"sub": "alice", "tenant": "acme", "role": "developer", "exp": now() + 600, "jti": "t-1"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

fn all_keys() -> JwtVerifier {
    JwtVerifier::new(
        &[
            VerificationKey::Hs256(Secret::new(SECRET)),
            VerificationKey::Rs256Pem(RSA_PUBLIC.to_owned()),
            VerificationKey::Es256Pem(EC_PUBLIC.to_owned()),
        ],
        None,
        None,
    )
    .unwrap()
}

fn verify(verifier: &JwtVerifier, token: &str) -> Result<Principal, AuthError> {
    verifier.verify(token, &MemoryRevocations::default())
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn accepts_hs256_rs256_and_es256_tokens_and_reads_the_principal() {
    let verifier = all_keys();
    let expected = Principal {
        subject: "alice".to_owned(),
        tenant: Some(TenantId::new("acme").unwrap()),
        role: Role::Developer,
        token_id: Some("t-1".to_owned()),
        tenant_instance: None,
        issued_at: None,
    };
    assert_eq!(
        verify(&verifier, &hs(&claims(json!({})))).unwrap(),
        expected
    );
    let rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        &claims(json!({})),
    );
    assert_eq!(verify(&verifier, &rs).unwrap(), expected);
    let es = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        &claims(json!({})),
    );
    assert_eq!(verify(&verifier, &es).unwrap(), expected);
}

#[test]
fn refuses_alg_none() {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims(json!({})).to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let error = verify(&all_keys(), &token).unwrap_err();
        assert!(
            matches!(error, AuthError::Malformed | AuthError::Algorithm),
            "{token}: {error:?}"
        );
        assert_eq!(error.code(), ErrorCode::Unauthenticated);
    }
}

#[test]
fn refuses_hs256_signed_with_the_rsa_public_key() {
    // The classic confusion: the public key used as an HMAC secret.
    let rs_only = JwtVerifier::new(
        &[VerificationKey::Rs256Pem(RSA_PUBLIC.to_owned())],
        None,
        None,
    )
    .unwrap();
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &claims(json!({})),
    );
    assert_eq!(verify(&rs_only, &forged).unwrap_err(), AuthError::Algorithm);
    // And an RS256 token is not accepted by an HS256-only verifier.
    let hs_only =
        JwtVerifier::new(&[VerificationKey::Hs256(Secret::new(SECRET))], None, None).unwrap();
    let rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        &claims(json!({})),
    );
    assert_eq!(verify(&hs_only, &rs).unwrap_err(), AuthError::Algorithm);
}

#[test]
fn refuses_expired_and_not_yet_valid_tokens() {
    let verifier = all_keys();
    assert_eq!(
        verify(&verifier, &hs(&claims(json!({"exp": now() - 60})))).unwrap_err(),
        AuthError::Expired
    );
    assert_eq!(
        verify(&verifier, &hs(&claims(json!({"nbf": now() + 600})))).unwrap_err(),
        AuthError::NotYetValid
    );
}

#[test]
fn refuses_tokens_signed_with_the_wrong_key() {
    let verifier = all_keys();
    let wrong_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-entirely"),
        &claims(json!({})),
    );
    assert_eq!(
        verify(&verifier, &wrong_secret).unwrap_err(),
        AuthError::Signature
    );
    let other_rsa = EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE.as_bytes()).unwrap();
    assert_eq!(
        verify(
            &verifier,
            &sign(Algorithm::RS256, &other_rsa, &claims(json!({})))
        )
        .unwrap_err(),
        AuthError::Signature
    );
    let token = hs(&claims(json!({})));
    let (rest, _) = token.rsplit_once('.').unwrap();
    let tampered = format!("{rest}.{}", b64url(b"not the signature"));
    assert_eq!(
        verify(&verifier, &tampered).unwrap_err(),
        AuthError::Signature
    );
}

#[test]
fn refuses_malformed_tokens() {
    for token in [
        "",
        "abc",
        "a.b.c",
        "a.b",
        "...",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        &"x".repeat(10_000),
    ] {
        let error = verify(&all_keys(), token).unwrap_err();
        assert!(
            matches!(error, AuthError::Malformed | AuthError::Signature),
            "{token:?}: {error:?}"
        );
    }
}

#[test]
fn requires_exp_and_checks_issuer_and_audience_when_configured() {
    assert_eq!(
        verify(&all_keys(), &hs(&claims(json!({"exp": null})))).unwrap_err(),
        AuthError::Claim("exp".to_owned())
    );
    let strict = JwtVerifier::new(
        &[VerificationKey::Hs256(Secret::new(SECRET))],
        Some("weir"),
        Some("weir-api"),
    )
    .unwrap();
    let good = hs(&claims(json!({"iss": "weir", "aud": "weir-api"})));
    assert!(verify(&strict, &good).is_ok());
    assert_eq!(
        verify(
            &strict,
            &hs(&claims(json!({"iss": "evil", "aud": "weir-api"})))
        )
        .unwrap_err(),
        AuthError::Claim("iss".to_owned())
    );
    assert_eq!(
        verify(
            &strict,
            &hs(&claims(json!({"iss": "weir", "aud": "other"})))
        )
        .unwrap_err(),
        AuthError::Claim("aud".to_owned())
    );
    assert_eq!(
        verify(&strict, &hs(&claims(json!({"aud": "weir-api"})))).unwrap_err(),
        AuthError::Claim("iss".to_owned())
    );
    assert_eq!(
        verify(&strict, &hs(&claims(json!({"iss": "weir"})))).unwrap_err(),
        AuthError::Claim("aud".to_owned())
    );
}

#[test]
fn tenant_and_role_must_agree() {
    let verifier = all_keys();
    let admin = verify(
        &verifier,
        &hs(&claims(json!({"role": "admin", "tenant": null}))),
    )
    .unwrap();
    assert_eq!((admin.role, admin.tenant), (Role::Admin, None));
    assert!(
        matches!(
            verify(&verifier, &hs(&claims(json!({"role": "admin"})))),
            Err(AuthError::Claim(_))
        ),
        "admin with a tenant"
    );
    assert!(
        matches!(
            verify(&verifier, &hs(&claims(json!({"tenant": null})))),
            Err(AuthError::Claim(_))
        ),
        "tenant role without tenant"
    );
    assert!(
        matches!(
            verify(&verifier, &hs(&claims(json!({"tenant": "../etc"})))),
            Err(AuthError::Claim(_))
        ),
        "invalid tenant id"
    );
    assert!(
        verify(&verifier, &hs(&claims(json!({"role": "root"})))).is_err(),
        "unknown role"
    );
}

#[test]
fn roles_allow_what_they_should_and_nothing_more() {
    let principal = |role| Principal {
        subject: "s".to_owned(),
        tenant: Some(TenantId::new("t").unwrap()),
        role,
        token_id: None,
        tenant_instance: None,
        issued_at: None,
    };
    let admin = Principal {
        subject: "root".to_owned(),
        tenant: None,
        role: Role::Admin,
        token_id: None,
        tenant_instance: None,
        issued_at: None,
    };
    assert!(principal(Role::Viewer).require(Role::Viewer).is_ok());
    assert!(principal(Role::Viewer).require(Role::Developer).is_err());
    assert!(principal(Role::Developer).require(Role::Developer).is_ok());
    assert!(principal(Role::Developer).require(Role::Owner).is_err());
    assert!(principal(Role::Owner).require(Role::Developer).is_ok());
    assert!(principal(Role::Owner).require(Role::Admin).is_err());
    assert!(admin.require(Role::Admin).is_ok());
    assert!(
        admin.require(Role::Viewer).is_err(),
        "an admin acts on tenants, not inside one"
    );
    assert!(admin.tenant().is_err());
    assert_eq!(
        principal(Role::Viewer)
            .require(Role::Owner)
            .unwrap_err()
            .code(),
        ErrorCode::Forbidden
    );
}

#[test]
fn minted_tokens_verify_until_revoked() {
    let secret = Secret::new(SECRET);
    let issuer = TokenIssuer::new(&secret, Some("weir"), None);
    let verifier = JwtVerifier::new(&[VerificationKey::Hs256(secret)], Some("weir"), None).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let token = issuer
        .mint(
            "ci-bot",
            Some(&tenant),
            Role::Developer,
            Duration::from_secs(300),
            "tok-42",
        )
        .unwrap();
    let revocations = MemoryRevocations::default();
    let principal = verifier.verify(&token, &revocations).unwrap();
    assert_eq!(
        (principal.tenant, principal.role),
        (Some(tenant), Role::Developer)
    );
    revocations.revoke("tok-42");
    assert_eq!(
        verifier.verify(&token, &revocations).unwrap_err(),
        AuthError::Revoked
    );
    assert_eq!(format!("{:?}", Secret::new(SECRET)), "Secret(<redacted>)");
}

#[test]
fn tokens_belong_to_the_tenant_instance_they_were_minted_for() {
    let secret = Secret::new(SECRET);
    let issuer = TokenIssuer::new(&secret, Some("weir"), None);
    let verifier = JwtVerifier::new(&[VerificationKey::Hs256(secret)], Some("weir"), None).unwrap();
    let tenant = TenantId::new("zz").unwrap();
    let token = issuer
        .mint_for_instance(
            "owner",
            &tenant,
            "first",
            Role::Owner,
            Duration::from_secs(300),
            "tok-1",
        )
        .unwrap();
    let principal = verifier
        .verify(&token, &MemoryRevocations::default())
        .unwrap();
    assert_eq!(principal.tenant_instance.as_deref(), Some("first"));
    assert!(principal.belongs_to("first", 0));
    assert!(!principal.belongs_to("second", 0), "a re-created tenant");
    // A token without an instance (another identity provider's) must not predate the tenant.
    let unbound = verify(&all_keys(), &hs(&claims(json!({"iat": 1_000})))).unwrap();
    assert!(unbound.belongs_to("any", 1_000));
    assert!(!unbound.belongs_to("any", 1_001));
}
