use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty or longer than its limit.
    #[error("{kind} must be 1 to {max} characters long, got {len}")]
    Length {
        /// Which identifier.
        kind: &'static str,
        /// The limit.
        max: usize,
        /// The length given.
        len: usize,
    },
    /// The identifier holds a character outside its alphabet.
    #[error("{kind} may contain only {allowed}, found {found:?}")]
    Character {
        /// Which identifier.
        kind: &'static str,
        /// The alphabet, in words.
        allowed: &'static str,
        /// The first character outside it.
        found: char,
    },
}

/// A tenant: the unit of isolation. Every state key, metric series, log line and artifact is
/// scoped by one. Lowercase ASCII letters, digits and `-`, 1 to 63 characters, starting with a
/// letter or digit, so it is safe in topic names, key prefixes, file names and command lines.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    const MAX_LEN: usize = 63;

    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(IdError::Length {
                kind: "tenant id",
                max: Self::MAX_LEN,
                len: id.len(),
            });
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        // The first character is a letter or digit, so an id is never taken for an option
        // (`-x`) by a command it is passed to.
        if let Some(found) = id
            .chars()
            .enumerate()
            .find(|(index, c)| !(allowed(*c) || (*index > 0 && *c == '-')))
            .map(|(_, c)| c)
        {
            return Err(IdError::Character {
                kind: "tenant id",
                allowed: "lowercase letters, digits and '-', starting with a letter or digit",
                found,
            });
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sha256 of a module's bytes, as `sha256:<64 hex digits>`: modules are stored, compiled
/// and cached by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleDigest(String);

impl ModuleDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(format!("sha256:{hex}"))
    }

    /// Whether `bytes` are what this digest names: what an executor checks before it runs an
    /// artifact it fetched.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }

    /// The digest of `sha256` hex digits.
    pub fn from_sha256_hex(hex: &str) -> Result<Self, IdError> {
        Self::new(format!("sha256:{hex}"))
    }

    /// Validates `sha256:<64 lowercase hex digits>`.
    pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
        let text = text.into();
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(IdError::Character {
                kind: "module digest",
                allowed: "'sha256:' followed by hex digits",
                found: text.chars().next().unwrap_or(' '),
            });
        };
        if hex.len() != 64 {
            return Err(IdError::Length {
                kind: "module digest hex",
                max: 64,
                len: hex.len(),
            });
        }
        if let Some(found) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(IdError::Character {
                kind: "module digest",
                allowed: "lowercase hex digits",
                found,
            });
        }
        Ok(Self(text))
    }

    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModuleDigest {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ModuleDigest> for String {
    fn from(digest: ModuleDigest) -> Self {
        digest.0
    }
}

impl fmt::Display for ModuleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_matches_exactly_the_bytes_it_names() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let abc = ModuleDigest::of(b"abc");
        assert_eq!(
            abc.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(abc.matches(b"abc"));
        assert!(!abc.matches(b"abd"));
        assert!(!abc.matches(b""));
    }

    #[test]
    fn accepts_plain_tenant_ids() {
        assert_eq!(TenantId::new("acme-01").unwrap().as_str(), "acme-01");
        assert_eq!(TenantId::new("0-a-").unwrap().as_str(), "0-a-");
    }

    #[test]
    fn rejects_tenant_ids_that_could_escape_a_prefix() {
        for bad in [
            "",
            "a/b",
            "A",
            "a:b",
            "..",
            "a b",
            "ä",
            "-zz",
            "-",
            "--help",
            &"x".repeat(64),
        ] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digest_requires_sha256_hex() {
        let hex = "ab".repeat(32);
        assert!(ModuleDigest::from_sha256_hex(&hex).is_ok());
        assert!(ModuleDigest::from_sha256_hex("abc").is_err());
        assert!(ModuleDigest::new(format!("md5:{hex}")).is_err());
        assert!(ModuleDigest::from_sha256_hex(&"AB".repeat(32)).is_err());
    }
}
