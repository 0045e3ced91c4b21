//! Module and graph bytes on local disk, by sha256 digest, reference-counted by the control
//! store's records.
//!
//! Writes go to a temporary file of their own (so identical concurrent writes never collide) that
//! is renamed into place, so a reader never sees half a blob and a crash leaves no corrupt one.
//! Every file and directory is private to the server's user (0600 / 0700). All file work and
//! hashing runs on tokio's blocking pool.
//!
//! A blob goes with its last reference: after a record that referenced it is deleted (module,
//! graph, tenant), [`BlobStore::collect`] asks the control store whether anything still does
//! and removes the file if not. A blob being written for a record not stored yet is *pinned*
//! ([`PinnedBlob`]) so a collection racing the upload of the same bytes cannot remove it; a
//! collection that saw a pin come or go in the meantime leaves the blob alone (the upload's own
//! collection, if its record was refused, removes it then).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use weir_api::ModuleDigest;

use crate::{ControlStore, StoreError};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[error("blob store: {context}")]
pub struct BlobError {
    context: String,
    #[source]
    source: std::io::Error,
}

impl BlobError {
    fn new(context: String, source: std::io::Error) -> Self {
        Self { context, source }
    }
}

/// Pins and collections in flight for one digest.
#[derive(Debug, Default)]
struct Activity {
    /// Writes whose record is not stored (or refused) yet.
    pins: usize,
    /// Collections in flight.
    collecting: usize,
    /// Bumped by every pin and unpin: a collection that sees it move leaves the blob alone.
    generation: u64,
}

type ActivityMap = Arc<Mutex<HashMap<ModuleDigest, Activity>>>;

/// Content-addressed bytes in a directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    activity: ActivityMap,
}

/// A stored blob that no collection removes until this is dropped: hold it until the record
/// that references the blob is written (or refused, then [`BlobStore::collect`] it).
#[derive(Debug)]
pub struct PinnedBlob {
    digest: ModuleDigest,
    activity: ActivityMap,
}

impl PinnedBlob {
    /// The blob's digest.
    pub fn digest(&self) -> &ModuleDigest {
        &self.digest
    }
}

impl Drop for PinnedBlob {
    fn drop(&mut self) {
        let mut activity = self.activity.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = activity.get_mut(&self.digest) {
            entry.pins = entry.pins.saturating_sub(1);
            entry.generation = entry.generation.wrapping_add(1);
            if entry.pins == 0 && entry.collecting == 0 {
                activity.remove(&self.digest);
            }
        }
    }
}

/// Creates `dir` (and parents) private to this user, and makes it private if it exists.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn blocking_error(error: tokio::task::JoinError) -> BlobError {
    BlobError::new(
        "blocking task failed".to_owned(),
        std::io::Error::other(error),
    )
}

impl BlobStore {
    /// A store in `dir` (created if missing, private to this user either way).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into();
        for path in [dir.clone(), dir.join("sha256")] {
            private_dir(&path).map_err(|source| {
                BlobError::new(format!("cannot create {}", path.display()), source)
            })?;
        }
        Ok(Self {
            dir,
            activity: Arc::default(),
        })
    }

    fn path(&self, digest: &ModuleDigest) -> PathBuf {
        // The digest is validated hex, so it cannot name anything outside the directory.
        let hex = digest.as_str().trim_start_matches("sha256:");
        self.dir.join("sha256").join(hex)
    }

    /// Stores `bytes` (storing the same bytes twice keeps one copy), pinned until the returned
    /// guard is dropped. Hashing and writing run on the blocking pool.
    pub async fn put(&self, bytes: Bytes) -> Result<PinnedBlob, BlobError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.put_blocking(&bytes))
            .await
            .map_err(blocking_error)?
    }

    fn put_blocking(&self, bytes: &[u8]) -> Result<PinnedBlob, BlobError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let digest = ModuleDigest::from_sha256_hex(&hex).map_err(|e| {
            BlobError::new(
                "a sha256 is not a digest".to_owned(),
                std::io::Error::other(e),
            )
        })?;
        {
            let mut activity = self.activity.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = activity.entry(digest.clone()).or_default();
            entry.pins += 1;
            entry.generation = entry.generation.wrapping_add(1);
        }
        // From here the pin is held: dropping it (also on error) unpins.
        let pinned = PinnedBlob {
            digest,
            activity: self.activity.clone(),
        };
        let path = self.path(&pinned.digest);
        if !path.is_file() {
            self.write_new(&hex, &path, bytes)?;
        }
        Ok(pinned)
    }

    fn write_new(&self, hex: &str, path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // A name of this write's own: identical writes in parallel never share a file.
        let temporary = self.dir.join("sha256").join(format!(
            ".{hex}.{}.{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        };
        write().map_err(|source| {
            std::fs::remove_file(&temporary).ok();
            BlobError::new(format!("cannot write {}", path.display()), source)
        })
    }

    /// The bytes stored under `digest`, if any (read on the blocking pool).
    pub async fn get(&self, digest: &ModuleDigest) -> Result<Option<Vec<u8>>, BlobError> {
        let (path, digest) = (self.path(digest), digest.clone());
        tokio::task::spawn_blocking(move || match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BlobError::new(format!("cannot read {digest}"), source)),
        })
        .await
        .map_err(blocking_error)?
    }

    /// Removes the blob `digest` if no record of `store` references it and no write of it is in
    /// flight; whether it was removed. Call it after deleting a record that referenced the blob,
    /// or when a record for a freshly written blob was refused.
    pub async fn collect(
        &self,
        store: &dyn ControlStore,
        digest: &ModuleDigest,
    ) -> Result<bool, StoreError> {
        let started = {
            let mut activity = self.activity.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = activity.entry(digest.clone()).or_default();
            entry.collecting += 1;
            entry.generation
        };
        let referenced = store.blob_referenced(digest).await;
        let (blobs, digest) = (self.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let mut activity = blobs
                .activity
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut removed = Ok(false);
            if let Some(entry) = activity.get_mut(&digest) {
                let quiet = entry.pins == 0 && entry.generation == started;
                if quiet && matches!(referenced, Ok(false)) {
                    // Removed under the lock: a write of the same bytes pins first and then
                    // finds the file gone, so it writes it again.
                    removed = match std::fs::remove_file(blobs.path(&digest)) {
                        Ok(()) => Ok(true),
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
                        Err(source) => {
                            Err(BlobError::new(format!("cannot remove {digest}"), source))
                        }
                    };
                }
                entry.collecting = entry.collecting.saturating_sub(1);
                if entry.pins == 0 && entry.collecting == 0 {
                    activity.remove(&digest);
                }
            }
            drop(activity);
            referenced?;
            removed.map_err(StoreError::from)
        })
        .await
        .map_err(|e| StoreError::Blob(blocking_error(e)))?
    }

    /// Removes every blob not in `referenced`, and temporary files of interrupted writes, and
    /// makes the blobs kept private (0600): what a server does at start, before it takes
    /// requests (so nothing is in flight). The digests removed.
    pub async fn sweep(
        &self,
        referenced: HashSet<ModuleDigest>,
    ) -> Result<Vec<ModuleDigest>, BlobError> {
        let dir = self.dir.join("sha256");
        tokio::task::spawn_blocking(move || {
            let context =
                |source| BlobError::new(format!("cannot sweep {}", dir.display()), source);
            let mut removed = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(context)? {
                let entry = entry.map_err(context)?;
                let name = entry.file_name();
                let digest = name
                    .to_str()
                    .and_then(|hex| ModuleDigest::from_sha256_hex(hex).ok());
                match digest {
                    // Blobs of older versions were created with the default mode.
                    Some(digest) if referenced.contains(&digest) => {
                        std::fs::set_permissions(
                            entry.path(),
                            std::fs::Permissions::from_mode(0o600),
                        )
                        .map_err(context)?;
                    }
                    digest => {
                        std::fs::remove_file(entry.path()).map_err(context)?;
                        removed.extend(digest);
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(blocking_error)?
    }
}
