//! Compiled components kept on disk across restarts: wasmtime's serialized artifacts, one file
//! per module digest, so a restarted executor loads its modules in milliseconds instead of
//! compiling them again (seconds for a Python module).
//!
//! A file is `<module sha256 hex>.<engine hash>.cwasm` in the artifact directory:
//!
//! | bytes | what |
//! |---|---|
//! | 0..8 | the magic `weirart1` |
//! | 8..40 | sha256 of the rest of the file |
//! | 40.. | `Component::serialize` of the module, by an engine of that engine hash |
//!
//! The engine hash is a sha256 over wasmtime's `Engine::precompile_compatibility_hash` (target,
//! compiler flags, tunables, wasm features and wasmtime's own version) and this format's
//! version: an engine built differently never looks at another's files, and files of other
//! engine hashes are deleted when the directory is opened (they can never be loaded again).
//!
//! Files are written to a temporary name, synced, then renamed into place, so a reader sees a
//! whole file or none. A file that fails any check on load (short, wrong magic, checksum,
//! wasmtime's own compatibility check) is deleted and the module compiled again: a damaged
//! cache costs a compile, never a crash.
//!
//! Bounded: the files' total size stays under a byte cap, the least recently used (by file
//! modification time, refreshed on every load) go first. All calls do file I/O: run them off
//! the async workers.

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;
use weir_api::ModuleDigest;

/// The first bytes of every artifact file (format version 2: the checksum binds the module
/// digest and engine hash, see [`ArtifactStore::checksum`]).
const MAGIC: &[u8; 8] = b"weirart2";
/// Bytes before the serialized component: magic and checksum.
const HEADER: usize = 8 + 32;
/// Extension of artifact files.
const EXTENSION: &str = "cwasm";

/// Feeds `std::hash::Hash` output into sha256, whose value (unlike `DefaultHasher`'s) is the
/// same in every build.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Only the full digest is used (`engine_hash`).
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The name part that ties a file to the engine configuration: 16 hex digits of a sha256 over
/// wasmtime's compatibility hash and this file format.
fn engine_hash(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.write(MAGIC);
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    let digest = hasher.0.finalize();
    hex::encode(digest.get(..8).unwrap_or_default())
}

/// What the directory holds: file sizes and last use, by module digest hex.
#[derive(Debug)]
struct Entry {
    bytes: u64,
    used: SystemTime,
}

/// The artifact directory of one engine configuration.
#[derive(Debug)]
pub(crate) struct ArtifactStore {
    dir: PathBuf,
    engine_hash: String,
    capacity: u64,
    bytes: u64,
    entries: HashMap<String, Entry>,
}

/// Why an artifact could not be used; the caller compiles instead.
#[derive(Debug)]
pub(crate) enum Miss {
    /// No file for this digest.
    Absent,
    /// A file was there but failed a check; it was deleted.
    Discarded,
}

impl ArtifactStore {
    /// Opens (creating, owner-only) `dir`, deletes files of other engine configurations and
    /// stray temporary files, and evicts down to `capacity` bytes.
    pub(crate) fn open(dir: &Path, capacity: u64, engine: &Engine) -> std::io::Result<Self> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut store = Self {
            dir: dir.to_owned(),
            engine_hash: engine_hash(engine),
            capacity,
            bytes: 0,
            entries: HashMap::new(),
        };
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let metadata = entry.metadata()?;
            match store.digest_of(&name) {
                Some(digest) if metadata.is_file() => {
                    store.bytes += metadata.len();
                    store.entries.insert(
                        digest,
                        Entry {
                            bytes: metadata.len(),
                            used: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        },
                    );
                }
                // Another engine configuration's artifact, or a temporary file of a write that
                // never finished: nothing will ever read it.
                _ if metadata.is_file() => {
                    tracing::debug!(file = %name, "removing a stale compiled artifact");
                    let _gone = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        store.evict(None);
        Ok(store)
    }

    /// The module digest hex of an artifact file name of this engine configuration.
    fn digest_of(&self, name: &str) -> Option<String> {
        let stem = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
        let (digest, engine) = stem.split_once('.')?;
        (engine == self.engine_hash
            && digest.len() == 64
            && digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| digest.to_owned())
    }

    fn hex(digest: &ModuleDigest) -> &str {
        digest
            .as_str()
            .strip_prefix("sha256:")
            .unwrap_or(digest.as_str())
    }

    fn path(&self, hex: &str) -> PathBuf {
        self.dir
            .join(format!("{hex}.{}.{EXTENSION}", self.engine_hash))
    }

    /// Total bytes of the files kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Files kept.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The component of `digest` from its file, if there is one that passes every check. A
    /// file that fails one is deleted.
    pub(crate) fn load(
        &mut self,
        engine: &Engine,
        digest: &ModuleDigest,
    ) -> Result<Component, Miss> {
        let hex = Self::hex(digest).to_owned();
        if !self.entries.contains_key(&hex) {
            return Err(Miss::Absent);
        }
        let path = self.path(&hex);
        match self.read(engine, &hex, &path) {
            Ok(component) => {
                let now = SystemTime::now();
                // Refresh the file's time, which is its place in the eviction order across
                // restarts; failing to is harmless.
                let _touched = File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.set_modified(now));
                if let Some(entry) = self.entries.get_mut(&hex) {
                    entry.used = now;
                }
                Ok(component)
            }
            Err(why) => {
                tracing::warn!(file = %path.display(), %why, "discarding a compiled artifact; the module is compiled again");
                self.remove_hex(&hex);
                Err(Miss::Discarded)
            }
        }
    }

    /// The sha256 that binds an artifact to what it claims to be: over the module digest hex,
    /// the engine hash and the serialized bytes. A file copied or renamed onto another
    /// module's name fails it, so one module's code never runs under another's digest.
    fn checksum(&self, hex: &str, serialized: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(hex.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.engine_hash.as_bytes());
        hasher.update(b"\0");
        hasher.update(serialized);
        hasher.finalize().into()
    }

    fn read(&self, engine: &Engine, hex: &str, path: &Path) -> Result<Component, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let (header, artifact) = bytes
            .split_at_checked(HEADER)
            .ok_or_else(|| format!("{} bytes, shorter than the header", bytes.len()))?;
        let (magic, checksum) = header.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err("not a weir artifact (magic)".to_owned());
        }
        if self.checksum(hex, artifact).as_slice() != checksum {
            return Err(
                "checksum mismatch: the file was damaged or is another module's".to_owned(),
            );
        }
        // SAFETY: `Component::deserialize` trusts its input to be a component serialized by a
        // compatible wasmtime engine; arbitrary bytes could be executed as machine code. These
        // bytes are exactly those weir itself serialized: the file sits in the executor's own
        // data directory (created 0700, written by no one else), under a name carrying the
        // module's sha256 and the hash of this engine's configuration (wasmtime's
        // `precompile_compatibility_hash`, which covers wasmtime's version), it was written
        // whole (temporary file, fsync, rename), and the sha256 just checked (over the module
        // digest, the engine hash and the bytes) proves its bytes are the ones
        // `Component::serialize` returned for this very module and engine. The checksum is not
        // a signature: whoever can write the data directory can also replace weir's binary,
        // so that writer is trusted. wasmtime then checks its own
        // header (version, target, compiler flags and features) and refuses a mismatch with
        // an error, which the caller turns into a recompile.
        #[allow(
            unsafe_code,
            reason = "deserializing weir's own checksummed artifact; see the SAFETY comment"
        )]
        let component = unsafe { Component::deserialize(engine, artifact) };
        component.map_err(|e| format!("wasmtime refused it: {e:#}"))
    }

    /// Writes the serialized `component` of `digest` (temporary file, fsync, rename), then
    /// evicts the least recently used others while over the cap. An artifact larger than the
    /// whole cap is not kept.
    pub(crate) fn store(&mut self, digest: &ModuleDigest, component: &Component) {
        let hex = Self::hex(digest).to_owned();
        let serialized = match component.serialize() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "cannot serialize a compiled module; it is not kept on disk");
                return;
            }
        };
        let size = (HEADER + serialized.len()) as u64;
        if size > self.capacity {
            return;
        }
        let path = self.path(&hex);
        let checksum = self.checksum(&hex, &serialized);
        if let Err(error) = Self::write(&path, &checksum, &serialized) {
            tracing::warn!(file = %path.display(), %error, "cannot write a compiled artifact; the module stays compiled in memory only");
            return;
        }
        if let Some(old) = self.entries.insert(
            hex.clone(),
            Entry {
                bytes: size,
                used: SystemTime::now(),
            },
        ) {
            self.bytes -= old.bytes;
        }
        self.bytes += size;
        self.evict(Some(&hex));
    }

    fn write(path: &Path, checksum: &[u8; 32], serialized: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // A temporary name no reader looks at (no `.cwasm` suffix): `open` deletes leftovers.
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let written = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| {
                file.write_all(MAGIC)?;
                file.write_all(checksum)?;
                file.write_all(serialized)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        if written.is_err() {
            let _gone = std::fs::remove_file(&temporary);
        }
        written
    }

    /// Deletes the artifact of `digest`, if any (its module is gone).
    pub(crate) fn remove(&mut self, digest: &ModuleDigest) {
        let hex = Self::hex(digest).to_owned();
        self.remove_hex(&hex);
    }

    fn remove_hex(&mut self, hex: &str) {
        if let Some(entry) = self.entries.remove(hex) {
            self.bytes -= entry.bytes;
        }
        let path = self.path(hex);
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), %error, "cannot delete a compiled artifact");
        }
    }

    /// Deletes the least recently used files, never `keep`, until the total fits the cap.
    fn evict(&mut self, keep: Option<&str>) {
        while self.bytes > self.capacity {
            let oldest = self
                .entries
                .iter()
                .filter(|(hex, _)| Some(hex.as_str()) != keep)
                .min_by_key(|(_, entry)| entry.used)
                .map(|(hex, _)| hex.clone());
            let Some(oldest) = oldest else { break };
            self.remove_hex(&oldest);
        }
    }
}
