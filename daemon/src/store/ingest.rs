//! Ingests: resumable, verified writes that end in a published blob.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

use distd_sdk::{Algorithm, Digest, Hasher, media};
use tokio::task::spawn_blocking;

use super::locks::IngestGuard;
use super::publish::PublishJob;
use super::{Store, remove_dir_if_present};
use crate::error::{Result, StoreError};
use crate::meta::{self, ingests::IngestRow, now_ms};

/// Longest ingest ref accepted.
pub const MAX_REF_BYTES: usize = 512;

/// How often (ms) a writer records its activity, so that a live ingest is not
/// mistaken for an abandoned one. Recording is a metadata transaction, too
/// costly for every chunk.
const TOUCH_INTERVAL_MS: i64 = 10_000;

/// What the client says when it opens an ingest.
#[derive(Debug, Clone, Default)]
pub struct OpenIngest {
    /// The client-chosen ref.
    pub reference: String,
    /// Expected digest, if known.
    pub expected: Option<Digest>,
    /// Expected size; 0 when unknown.
    pub total: u64,
    /// Media type to record.
    pub media_type: String,
    /// Lease that protects the ingest and the blob.
    pub lease_id: Option<String>,
}

/// An ingest's progress.
#[derive(Debug, Clone)]
pub struct IngestStatus {
    /// The ref.
    pub reference: String,
    /// Bytes on disk.
    pub offset: u64,
    /// Expected total (0 = unknown).
    pub total: u64,
    /// Expected digest, if any.
    pub expected: Option<String>,
    /// Media type.
    pub media_type: String,
    /// ms.
    pub started_at: i64,
    /// ms.
    pub updated_at: i64,
}

/// The file and running hash of an ingest; moved to blocking threads for I/O.
struct Sink {
    file: File,
    hasher: Hasher,
    /// Where the bytes whose writeback has not been started begin.
    unflushed_from: u64,
}

/// Bytes of an ingest left dirty before their writeback is started.
const WRITEBACK_BYTES: u64 = 8 << 20;

impl Sink {
    /// Starts (without waiting for) the writeback of the bytes written since
    /// the last call, once there are [`WRITEBACK_BYTES`] of them, so the
    /// disk works while the network does and the commit's fsync only has
    /// the tail left. `POSIX_FADV_DONTNEED` on dirty pages starts their
    /// writeback and leaves them cached (only clean pages are dropped).
    fn start_writeback(&mut self, end: u64) {
        let len = end.saturating_sub(self.unflushed_from);
        if len < WRITEBACK_BYTES {
            return;
        }
        let advised = rustix::fs::fadvise(
            &self.file,
            self.unflushed_from,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
        if let Err(e) = advised {
            tracing::debug!(error = %e, "could not start an ingest's writeback");
        }
        self.unflushed_from = end;
    }
}

/// An open ingest held by one writer. Dropping it leaves the ingest on disk,
/// resumable.
pub struct IngestWriter {
    store: Store,
    row: IngestRow,
    lease_id: Option<String>,
    data_path: PathBuf,
    sink: Option<Sink>,
    offset: u64,
    last_touch: i64,
    /// Whether the metadata has this ingest's row as the writer sees it.
    persisted: bool,
    _guard: IngestGuard,
}

fn validate_ref(reference: &str) -> Result<()> {
    if reference.is_empty() || reference.len() > MAX_REF_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "an ingest ref must be 1 to {MAX_REF_BYTES} bytes long"
        )));
    }
    if reference.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(
            "an ingest ref must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// The directory name of a ref: the hex of its sha256, so nothing a client
/// chooses is ever joined to a path.
fn dir_name(reference: &str) -> String {
    Digest::of_bytes(Algorithm::Sha256, reference.as_bytes())
        .hex()
        .to_owned()
}

/// Re-reads what an ingest holds on disk to rebuild its running hash.
fn open_sink(path: &PathBuf, algorithm: Algorithm) -> Result<(Sink, u64)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(StoreError::io(format!(
            "opening ingest file {}",
            path.display()
        )))?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(StoreError::io(format!(
            "reading ingest file {}",
            path.display()
        )))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let sink = Sink {
        file,
        hasher,
        unflushed_from: offset,
    };
    Ok((sink, offset))
}

impl IngestWriter {
    /// Opens (or resumes) the ingest `open.reference`. `BlobExists` when
    /// `expected` names a blob the store already has (after putting it under
    /// the lease, so the caller may rely on it); `IngestLocked` when another
    /// writer holds the ref.
    pub async fn open(store: &Store, open: OpenIngest) -> Result<IngestWriter> {
        validate_ref(&open.reference)?;
        let guard = store.locks().acquire(&open.reference)?;
        let now = now_ms();
        if let Some(lease) = open.lease_id.clone() {
            store
                .meta()
                .run(move |conn| meta::leases::require_live(conn, &lease, now))
                .await?;
        }
        if let Some(expected) = &open.expected
            && store
                .lease_existing(expected, open.lease_id.as_deref())
                .await?
        {
            return Err(StoreError::BlobExists(expected.clone()));
        }
        let dir = dir_name(&open.reference);
        let request = open.clone();
        let mut row = store
            .meta()
            .run(move |conn| {
                Ok(
                    meta::ingests::get(conn, &request.reference)?.unwrap_or(IngestRow {
                        reference: request.reference.clone(),
                        dir,
                        expected: None,
                        total: 0,
                        media_type: String::new(),
                        started_at: now,
                        updated_at: now,
                        committing: None,
                    }),
                )
            })
            .await?;
        if let Some(expected) = &open.expected {
            row.expected = Some(expected.to_string());
        }
        if open.total > 0 {
            row.total = i64::try_from(open.total).unwrap_or(i64::MAX);
        }
        if !open.media_type.is_empty() {
            row.media_type = open.media_type.clone();
        }
        row.updated_at = now;
        let dir_path = store.ingest_dir(&row.dir);
        super::create_private_dir(&dir_path)?;
        let data_path = dir_path.join("data");
        let algorithm = hash_algorithm(&row);
        let path = data_path.clone();
        let (sink, offset) = spawn_blocking(move || open_sink(&path, algorithm)).await??;
        Ok(IngestWriter {
            store: store.clone(),
            row,
            lease_id: open.lease_id,
            data_path,
            sink: Some(sink),
            offset,
            last_touch: now,
            // Recorded (again, with what this stream said) at the first write.
            persisted: false,
            _guard: guard,
        })
    }

    /// Records the ingest (and its lease hold) before its first bytes land,
    /// so that a restart finds it. A single-request write-and-commit skips
    /// this: its record is made by the publish itself.
    async fn persist(&mut self) -> Result<()> {
        if self.persisted {
            return Ok(());
        }
        let row = self.row.clone();
        let lease = self.lease_id.clone();
        self.store
            .meta()
            .run(move |conn| {
                let tx = conn.transaction()?;
                if let Some(lease) = &lease {
                    meta::leases::add_resource(
                        &tx,
                        lease,
                        meta::leases::KIND_INGEST,
                        &row.reference,
                    )?;
                }
                meta::ingests::upsert(&tx, &row)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.persisted = true;
        Ok(())
    }

    /// The ingest's progress.
    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            reference: self.row.reference.clone(),
            offset: self.offset,
            total: u64::try_from(self.row.total).unwrap_or(0),
            expected: self.row.expected.clone(),
            media_type: self.row.media_type.clone(),
            started_at: self.row.started_at,
            updated_at: self.last_touch,
        }
    }

    /// Appends `data` at `offset`, which must be the current offset; offset 0
    /// on a non-empty ingest starts it over. On a failed write (disk full)
    /// the file is cut back to the last whole chunk, so it stays resumable.
    pub async fn write(&mut self, offset: u64, data: bytes::Bytes) -> Result<u64> {
        self.persist().await?;
        self.append(offset, data).await
    }

    /// Like [`IngestWriter::write`], for the last bytes before a commit:
    /// an ingest that was never recorded stays unrecorded, so a blob sent in
    /// one request costs no metadata transaction of its own.
    pub async fn write_final(&mut self, offset: u64, data: bytes::Bytes) -> Result<u64> {
        self.append(offset, data).await
    }

    async fn append(&mut self, offset: u64, data: bytes::Bytes) -> Result<u64> {
        if offset != self.offset {
            if offset == 0 {
                self.restart().await?;
            } else {
                return Err(StoreError::OffsetMismatch {
                    reference: self.row.reference.clone(),
                    current: self.offset,
                    requested: offset,
                });
            }
        }
        if data.is_empty() {
            return Ok(self.offset);
        }
        let mut sink = self.take_sink()?;
        let start = self.offset;
        let path = self.data_path.clone();
        let (sink, written) = spawn_blocking(move || {
            let written = match sink.file.write_all(&data) {
                Ok(()) => {
                    sink.hasher.update(&data);
                    sink.start_writeback(start + data.len() as u64);
                    Ok(data.len() as u64)
                }
                Err(e) => {
                    // Keep the file equal to what the hasher has seen.
                    let _ = sink.file.set_len(start);
                    Err(StoreError::io(format!(
                        "writing ingest file {}",
                        path.display()
                    ))(e))
                }
            };
            (sink, written)
        })
        .await?;
        self.sink = Some(sink);
        self.offset += written?;
        self.touch_if_due().await?;
        Ok(self.offset)
    }

    async fn restart(&mut self) -> Result<()> {
        let mut sink = self.take_sink()?;
        let algorithm = hash_algorithm(&self.row);
        let path = self.data_path.clone();
        let (sink, result) = spawn_blocking(move || {
            let result = sink
                .file
                .set_len(0)
                .map_err(StoreError::io(format!("truncating {}", path.display())));
            sink.hasher = Hasher::new(algorithm);
            sink.unflushed_from = 0;
            (sink, result)
        })
        .await?;
        self.sink = Some(sink);
        result?;
        self.offset = 0;
        Ok(())
    }

    fn take_sink(&mut self) -> Result<Sink> {
        self.sink
            .take()
            .ok_or_else(|| StoreError::Task("ingest writer used after a failed operation".into()))
    }

    async fn touch_if_due(&mut self) -> Result<()> {
        let now = now_ms();
        if !self.persisted || now - self.last_touch < TOUCH_INTERVAL_MS {
            return Ok(());
        }
        self.last_touch = now;
        let reference = self.row.reference.clone();
        self.store
            .meta()
            .run(move |conn| meta::ingests::touch(conn, &reference, now))
            .await
    }

    /// Verifies and publishes the ingest as a blob; returns its digest and
    /// size. Size or digest mismatches, and manifests that do not parse,
    /// discard the ingest. `BlobExists` when another writer published the
    /// same digest first.
    pub async fn commit(
        mut self,
        expected: Option<Digest>,
        total: u64,
        media_type: &str,
    ) -> Result<(Digest, u64)> {
        if let Some(expected) = expected {
            self.row.expected = Some(expected.to_string());
        }
        if total > 0 {
            self.row.total = i64::try_from(total).unwrap_or(i64::MAX);
        }
        if !media_type.is_empty() {
            self.row.media_type = media_type.to_owned();
        }
        let sink = self.take_sink()?;
        let algorithm = hash_algorithm(&self.row);
        let path = self.data_path.clone();
        let structured = media::classify(&self.row.media_type) != media::ContentClass::Opaque;
        let (digest, children) =
            spawn_blocking(move || finish(sink, &path, algorithm, structured)).await??;
        let checked = self.check(&digest).and_then(|()| {
            media::children(&self.row.media_type, &children).map_err(StoreError::from)
        });
        let children = match checked {
            Ok(children) => children,
            Err(e) => {
                self.discard().await?;
                return Err(e);
            }
        };
        let children: Vec<String> = children.iter().map(|c| c.digest.to_string()).collect();
        self.publish(digest, children).await
    }

    fn check(&self, actual: &Digest) -> Result<()> {
        let total = u64::try_from(self.row.total).unwrap_or(0);
        if total > 0 && total != self.offset {
            return Err(StoreError::SizeMismatch {
                reference: self.row.reference.clone(),
                expected: total,
                actual: self.offset,
            });
        }
        if let Some(expected) = &self.row.expected {
            let expected = Digest::parse(expected)?;
            if &expected != actual {
                return Err(StoreError::DigestMismatch {
                    reference: self.row.reference.clone(),
                    expected,
                    actual: actual.clone(),
                });
            }
        }
        Ok(())
    }

    async fn discard(&self) -> Result<()> {
        let reference = self.row.reference.clone();
        self.store
            .meta()
            .run(move |conn| meta::ingests::delete(conn, &reference).map(drop))
            .await?;
        remove_dir_if_present(&self.store.ingest_dir(&self.row.dir))
    }

    async fn publish(self, digest: Digest, children: Vec<String>) -> Result<(Digest, u64)> {
        let job = PublishJob {
            reference: self.row.reference.clone(),
            dir: self.row.dir.clone(),
            data_path: self.data_path.clone(),
            digest: digest.clone(),
            size: self.offset,
            media_type: self.row.media_type.clone(),
            children,
            lease_id: self.lease_id.clone(),
            unrecorded: (!self.persisted).then(|| self.row.clone()),
        };
        self.store.publish(job).await?;
        Ok((digest, self.offset))
    }
}

/// The algorithm to hash an ingest with: the expected digest's, else sha256.
fn hash_algorithm(row: &IngestRow) -> Algorithm {
    row.expected
        .as_deref()
        .and_then(|e| Digest::parse(e).ok())
        .map_or(Algorithm::Sha256, |d| d.algorithm())
}

/// fsyncs the ingest and returns its digest and, for `structured` content
/// (manifests, indexes, configs), its bytes. Those are bounded by
/// `MAX_MANIFEST_BYTES`; a larger one is refused by the parser by size alone.
fn finish(
    sink: Sink,
    path: &PathBuf,
    algorithm: Algorithm,
    structured: bool,
) -> Result<(Digest, Vec<u8>)> {
    let Sink { file, hasher, .. } = sink;
    file.sync_all()
        .map_err(StoreError::io(format!("syncing {}", path.display())))?;
    let digest = hasher.finish();
    // The hasher may have been started before `expected` named another algorithm.
    let digest = if digest.algorithm() == algorithm {
        digest
    } else {
        rehash(path, algorithm)?
    };
    if !structured {
        return Ok((digest, Vec::new()));
    }
    let len = file
        .metadata()
        .map_err(StoreError::io(format!("reading {}", path.display())))?
        .len();
    let mut head = Vec::new();
    if len <= media::MAX_MANIFEST_BYTES {
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut head))
            .map_err(StoreError::io(format!("reading {}", path.display())))?;
    } else {
        head.resize(
            usize::try_from(media::MAX_MANIFEST_BYTES + 1).unwrap_or(usize::MAX),
            0,
        );
    }
    Ok((digest, head))
}

/// Hashes a whole file.
pub fn rehash(path: &PathBuf, algorithm: Algorithm) -> Result<Digest> {
    let mut file =
        File::open(path).map_err(StoreError::io(format!("opening {}", path.display())))?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(StoreError::io(format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

impl Store {
    /// True when `digest` is committed; then it is also put under `lease`,
    /// so a writer told "already exists" can rely on the content staying.
    pub async fn lease_existing(&self, digest: &Digest, lease: Option<&str>) -> Result<bool> {
        let key = digest.to_string();
        let lease = lease.map(str::to_owned);
        self.meta()
            .run(move |conn| {
                if meta::blobs::get(conn, &key)?.is_none() {
                    return Ok(false);
                }
                if let Some(lease) = lease {
                    meta::leases::add_resource(conn, &lease, meta::leases::KIND_CONTENT, &key)?;
                }
                Ok(true)
            })
            .await
    }

    /// The ingests in progress.
    pub async fn ingests(&self) -> Result<Vec<IngestStatus>> {
        let rows = self.meta().run(|conn| meta::ingests::list(conn)).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let offset = std::fs::metadata(self.ingest_dir(&row.dir).join("data"))
                    .map(|m| m.len())
                    .unwrap_or(0);
                IngestStatus {
                    reference: row.reference,
                    offset,
                    total: u64::try_from(row.total).unwrap_or(0),
                    expected: row.expected,
                    media_type: row.media_type,
                    started_at: row.started_at,
                    updated_at: row.updated_at,
                }
            })
            .collect())
    }

    /// Discards an ingest. `IngestLocked` when a writer holds it.
    pub async fn abort(&self, reference: &str) -> Result<()> {
        let _guard = self.locks().acquire(reference)?;
        let key = reference.to_owned();
        let row = self
            .meta()
            .run(move |conn| {
                let row = meta::ingests::get(conn, &key)?;
                meta::ingests::delete(conn, &key)?;
                Ok(row)
            })
            .await?;
        let row = row.ok_or_else(|| StoreError::IngestNotFound(reference.to_owned()))?;
        remove_dir_if_present(&self.ingest_dir(&row.dir))
    }
}
