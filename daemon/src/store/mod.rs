//! The content store: verified blobs on disk plus their metadata.
//!
//! Layout under the root:
//!
//! ```text
//! distd.lock               held (flock) while a daemon uses the root
//! meta.db                  SQLite metadata (see `meta`)
//! blobs/<alg>/<hex>        committed blobs, read-only, named by digest
//! ingest/<sha256(ref)>/data  bytes of an ingest in progress
//! ```
//!
//! Lifecycle of content: an ingest is opened under a client-chosen ref and
//! written sequentially; its offset is the length of its data file, so it
//! survives a daemon restart. Commit verifies size and digest, fsyncs the
//! file, records the intent, renames the file into `blobs/`, fsyncs the
//! directory, and only then records the blob. Recovery finishes or undoes an
//! interrupted commit, so metadata never names a missing or partial file.
//! Publishing (rename + record), deletion and GC's sweep hold one lock, so a
//! sweep never unlinks a file a concurrent commit has just published.

mod ingest;
mod locks;
mod publish;
mod read;
mod reclaim;
mod recover;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use distd_sdk::{Algorithm, Digest};
use tokio::sync::{Mutex, Notify};

use crate::error::{Result, StoreError};
use crate::meta::{self, Meta};

pub use ingest::{IngestStatus, IngestWriter, OpenIngest};
pub use locks::{IngestGuard, IngestLocks};
pub use verify::ProblemKind;

/// Handle to the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    meta: Meta,
    locks: IngestLocks,
    /// Held while publishing a group of blobs, deleting one, or sweeping.
    publish: Mutex<()>,
    /// Files of swept blobs waiting to be unlinked.
    doomed: reclaim::Doomed,
    /// Commits waiting for the next group publish.
    pending: std::sync::Mutex<Vec<publish::Pending>>,
    ingest_expiry: Duration,
    /// Woken after each commit (the watermark collector listens).
    committed: Notify,
    /// Keeps the root's lock file locked for the store's lifetime.
    _lock_file: std::fs::File,
}

/// Store settings from the configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long an unleased ingest survives without a write.
    pub ingest_expiry: Duration,
}

impl Store {
    /// Opens the store at `root`, creating it if needed, taking its lock and
    /// recovering from an interrupted run.
    pub fn open(root: &Path, options: StoreOptions) -> Result<Store> {
        create_private_dir(root)?;
        let lock_file = lock_root(root)?;
        for alg in Algorithm::ALL {
            create_private_dir(&root.join("blobs").join(alg.name()))?;
        }
        create_private_dir(&root.join("ingest"))?;
        let meta = Meta::open(&root.join("meta.db"))?;
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                meta,
                locks: IngestLocks::default(),
                publish: Mutex::new(()),
                pending: std::sync::Mutex::new(Vec::new()),
                doomed: reclaim::Doomed::default(),
                ingest_expiry: options.ingest_expiry,
                committed: Notify::new(),
                _lock_file: lock_file,
            }),
        };
        recover::recover(&store)?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The metadata database.
    pub fn meta(&self) -> &Meta {
        &self.inner.meta
    }

    /// Per-ref ingest locks.
    pub fn locks(&self) -> &IngestLocks {
        &self.inner.locks
    }

    /// The lock publishing, deletion and sweeping hold.
    pub fn publish_lock(&self) -> &Mutex<()> {
        &self.inner.publish
    }

    /// How long an unleased ingest survives without a write.
    pub fn ingest_expiry(&self) -> Duration {
        self.inner.ingest_expiry
    }

    /// Notified after every commit.
    pub fn committed(&self) -> &Notify {
        &self.inner.committed
    }

    /// Where the blob with `digest` lives. Safe: a [`Digest`] is validated hex.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner
            .root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// The directory of blobs of one algorithm.
    pub fn blob_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.inner.root.join("blobs").join(algorithm.name())
    }

    /// The directory holding ingest `dir_name` (a hex name the store chose).
    pub fn ingest_dir(&self, dir_name: &str) -> PathBuf {
        self.inner.root.join("ingest").join(dir_name)
    }

    /// The directory holding all ingests.
    pub fn ingest_root(&self) -> PathBuf {
        self.inner.root.join("ingest")
    }

    /// Removes a blob now, row first, then file. `BlobNotFound` when absent.
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        let _publish = self.inner.publish.lock().await;
        let key = digest.to_string();
        let existed = self
            .meta()
            .run(move |conn| meta::blobs::delete(conn, &key))
            .await?;
        if !existed {
            return Err(StoreError::BlobNotFound(digest.clone()));
        }
        remove_file_if_present(&self.blob_path(digest))
    }

    /// What the store records of a blob, with the digests it references.
    pub async fn info(&self, digest: &Digest) -> Result<(meta::blobs::BlobRow, Vec<String>)> {
        let key = digest.to_string();
        let found = self
            .meta()
            .run(move |conn| {
                let Some(row) = meta::blobs::get(conn, &key)? else {
                    return Ok(None);
                };
                let children = meta::blobs::children(conn, &key)?;
                Ok(Some((row, children)))
            })
            .await?;
        found.ok_or_else(|| StoreError::BlobNotFound(digest.clone()))
    }
}

/// Creates `dir` (and parents) and makes it private (0700) if this call
/// created it; an existing directory keeps the mode its owner chose.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io(format!(
            "creating directory {}",
            dir.display()
        )))
}

fn lock_root(root: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = root.join("distd.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io(format!(
            "opening lock file {}",
            path.display()
        )))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(StoreError::InvalidArgument(format!(
                "the store at {} is in use by another distd{who}; stop it or choose another --root",
                root.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::io(format!("locking {}", path.display()))(e));
        }
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(StoreError::io(format!("writing {}", path.display())))?;
    Ok(file)
}

/// Every file under blobs/, as (`algorithm:name`, path). The name is not
/// validated: a stray file is reported or removed by the caller, never opened
/// as a blob.
pub fn blob_files(store: &Store) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for algorithm in Algorithm::ALL {
        let dir = store.blob_dir(algorithm);
        let listing = StoreError::io(format!("listing {}", dir.display()));
        let entries = std::fs::read_dir(&dir).map_err(listing)?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", dir.display())))?;
            let name = format!(
                "{}:{}",
                algorithm.name(),
                entry.file_name().to_string_lossy()
            );
            files.push((name, entry.path()));
        }
    }
    Ok(files)
}

/// fsyncs a directory so a rename or creation inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!(
            "syncing directory {}",
            dir.display()
        )))
}

/// Removes a file; a file that is already gone is not an error.
pub fn remove_file_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
    }
}

/// Removes a directory tree; one that is already gone is not an error.
pub fn remove_dir_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests;
