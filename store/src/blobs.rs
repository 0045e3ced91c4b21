//! Module and graph bytes on local disk, by sha256 digest. Writes go to a temporary file that is
//! renamed into place, so a reader never sees half a blob and a crash leaves no corrupt one.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use weir_api::ModuleDigest;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[error("blob store: {context}")]
pub struct BlobError {
    context: String,
    #[source]
    source: std::io::Error,
}

/// Content-addressed bytes in a directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("sha256")).map_err(|source| BlobError {
            context: format!("cannot create {}", dir.display()),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, digest: &ModuleDigest) -> PathBuf {
        // The digest is validated hex, so it cannot name anything outside the directory.
        let hex = digest.as_str().trim_start_matches("sha256:");
        self.dir.join("sha256").join(hex)
    }

    /// Stores `bytes` and returns their digest (storing the same bytes twice is a no-op).
    pub fn put(&self, bytes: &[u8]) -> Result<ModuleDigest, BlobError> {
        let hex = hex::encode(Sha256::digest(bytes));
        #[allow(
            clippy::expect_used,
            reason = "hex of a sha256 is always a valid digest"
        )]
        let digest = ModuleDigest::from_sha256_hex(&hex).expect("sha256 hex is a valid digest");
        let path = self.path(&digest);
        if path.is_file() {
            return Ok(digest);
        }
        let temporary = self
            .dir
            .join(format!("sha256/.{hex}.{}", std::process::id()));
        let write = |path: &Path| -> std::io::Result<()> {
            let mut file = std::fs::File::create(path)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        write(&temporary)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| BlobError {
                context: format!("cannot write {}", path.display()),
                source,
            })?;
        Ok(digest)
    }

    /// The bytes stored under `digest`, if any.
    pub fn get(&self, digest: &ModuleDigest) -> Result<Option<Vec<u8>>, BlobError> {
        match std::fs::read(self.path(digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BlobError {
                context: format!("cannot read {digest}"),
                source,
            }),
        }
    }
}
