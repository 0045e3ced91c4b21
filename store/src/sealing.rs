//! Endpoint secrets sealed at rest: XChaCha20-Poly1305 (`chacha20poly1305`) with a random
//! 192-bit nonce per secret and the row's identity (tenant and endpoint name) as associated
//! data, so a sealed secret copied into another row does not open. The 256-bit key is a file
//! in the data directory, created (0600) on first start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// Bytes of a nonce, stored before the ciphertext.
const NONCE_BYTES: usize = 24;
/// Bytes of a key file.
const KEY_BYTES: usize = 32;

/// Why a secret could not be sealed or opened, or the key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or created.
    #[error("cannot load the secrets key {path}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A sealed secret does not open with this key (wrong key, or altered or moved data).
    #[error("a sealed secret does not open")]
    Open,
    /// Encryption failed.
    #[error("a secret could not be sealed")]
    Seal,
}

/// Seals and opens secrets with the data directory's key.
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

fn key_error(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Key {
        path: path.display().to_string(),
        source,
    }
}

impl Sealer {
    /// The key in `path`, created with 32 random bytes (owner-only) if it does not exist.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let key = match std::fs::read(path) {
            Ok(bytes) => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(key_error(path))?;
                Key::try_from(bytes.as_slice()).map_err(|_| {
                    key_error(path)(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("expected {KEY_BYTES} bytes, found {}", bytes.len()),
                    ))
                })?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(key_error(path))?;
                file.write_all(key.as_slice())
                    .and_then(|()| file.sync_all())
                    .map_err(key_error(path))?;
                key
            }
            Err(error) => return Err(key_error(path)(error)),
        };
        Ok(Self {
            cipher: XChaCha20Poly1305::new(&key),
        })
    }

    /// A sealer with a fresh key that lives only in memory.
    pub(crate) fn ephemeral() -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&Key::generate()),
        }
    }

    /// `secret` sealed for the row `identity`: the nonce, then the ciphertext and tag.
    pub(crate) fn seal(&self, identity: &[u8], secret: &str) -> Result<Vec<u8>, SealError> {
        let nonce = XNonce::generate();
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: identity,
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(nonce.as_slice());
        out.extend(sealed);
        Ok(out)
    }

    /// The secret `sealed` holds for the row `identity`.
    pub(crate) fn open(&self, identity: &[u8], sealed: &[u8]) -> Result<String, SealError> {
        let (nonce, ciphertext) = sealed
            .split_at_checked(NONCE_BYTES)
            .ok_or(SealError::Open)?;
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Open)?;
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: identity,
                },
            )
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map_err(|_| SealError::Open)
    }
}

/// The associated data of an endpoint's secret: its tenant and name.
pub(crate) fn endpoint_identity(tenant: &str, name: &str) -> Vec<u8> {
    format!("weir endpoint secret\0{tenant}\0{name}").into_bytes()
}
