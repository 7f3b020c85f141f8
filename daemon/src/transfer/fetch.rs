//! Moving one blob from a transport into the store: resumable from the
//! ingest's offset, retried with backoff, verified by the store's commit, and
//! shared between pulls that need the same blob at the same time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distd_sdk::{Descriptor, Digest, ErrorKind, Locator, Transport};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::error::TransferError;
use super::{Event, Events};
use crate::error::StoreError;
use crate::store::{IngestWriter, OpenIngest, Store};

/// Connection failures in a row, without a byte of progress, tolerated per
/// blob before giving up.
pub const MAX_RETRIES: u32 = 5;
/// First pause before a retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Times a blob is fetched again after its bytes failed verification.
const MAX_CORRUPT_ATTEMPTS: u32 = 2;

/// Downloads in flight, by digest, so concurrent pulls share one.
#[derive(Default, Clone)]
pub struct Inflight {
    running: Arc<Mutex<HashMap<Digest, watch::Receiver<bool>>>>,
}

/// Ends a download in the table when dropped, waking its followers.
struct Leader {
    inflight: Inflight,
    digest: Digest,
    done: watch::Sender<bool>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.inflight.table().remove(&self.digest);
        let _ = self.done.send(true);
    }
}

impl Inflight {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, watch::Receiver<bool>>> {
        // Plain data; a panic elsewhere cannot leave it torn.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leads the download of `digest`, or returns the leader's signal.
    fn join(&self, digest: &Digest) -> Result<Leader, watch::Receiver<bool>> {
        let mut table = self.table();
        if let Some(running) = table.get(digest) {
            return Err(running.clone());
        }
        let (done, watcher) = watch::channel(false);
        table.insert(digest.clone(), watcher);
        Ok(Leader {
            inflight: self.clone(),
            digest: digest.clone(),
            done,
        })
    }
}

/// What a pull needs to fetch blobs; clones share the pull.
#[derive(Clone)]
pub struct Fetcher {
    /// The store.
    pub store: Store,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// Where the image lives.
    pub locator: Locator,
    /// The pull's lease.
    pub lease: String,
    /// Downloads shared between pulls.
    pub inflight: Inflight,
    /// Where events go.
    pub events: Events,
}

impl Fetcher {
    /// Brings `blob` into the store under the pull's lease, unless it is
    /// there already; a download another pull is running is waited for.
    pub async fn fetch(&self, blob: &Descriptor) -> Result<(), TransferError> {
        loop {
            if self
                .store
                .lease_existing(&blob.digest, Some(&self.lease))
                .await?
            {
                self.events
                    .send(Event::Skipped {
                        digest: blob.digest.clone(),
                        reason: "already in the store",
                    })
                    .await?;
                return Ok(());
            }
            match self.inflight.join(&blob.digest) {
                Ok(_leader) => return self.download(blob).await,
                // Another pull is downloading it: wait, then look again (if
                // that pull failed, this one tries itself).
                Err(mut running) => {
                    let _ = running.wait_for(|done| *done).await;
                }
            }
        }
    }

    async fn download(&self, blob: &Descriptor) -> Result<(), TransferError> {
        let registry = self.locator.registry.clone();
        let transport = self.transport.describe().name;
        let reference = format!("pull-{}", blob.digest);
        let mut retries = 0u32;
        let mut corrupt = 0u32;
        loop {
            let open = OpenIngest {
                reference: reference.clone(),
                expected: Some(blob.digest.clone()),
                total: blob.size,
                media_type: blob.media_type.clone(),
                lease_id: Some(self.lease.clone()),
            };
            let mut writer = match IngestWriter::open(&self.store, open).await {
                Ok(writer) => writer,
                Err(StoreError::BlobExists(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut offset = writer.status().offset;
            if offset > blob.size {
                writer.write(0, bytes::Bytes::new()).await?;
                offset = 0;
            }
            self.events
                .send(Event::BlobStarted {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    transport: transport.clone(),
                    resume_offset: offset,
                })
                .await?;
            let streamed = self.stream_into(&mut writer, blob, offset).await;
            match streamed {
                Ok(transferred) => match writer.commit(None, 0, "").await {
                    Ok(_) | Err(StoreError::BlobExists(_)) => {
                        self.events
                            .send(Event::BlobDone {
                                digest: blob.digest.clone(),
                                transport: transport.clone(),
                                transferred,
                            })
                            .await?;
                        return Ok(());
                    }
                    Err(e) if e.kind() == ErrorKind::DataLoss => {
                        corrupt += 1;
                        self.events
                            .send(Event::Warning(format!(
                                "{transport} sent bad bytes for {}: {e}",
                                blob.digest
                            )))
                            .await?;
                        if corrupt >= MAX_CORRUPT_ATTEMPTS {
                            return Err(TransferError::Corrupt {
                                digest: blob.digest.to_string(),
                                registry,
                                attempts: corrupt,
                                detail: e.to_string(),
                            });
                        }
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(Failure::Overrun) => {
                    drop(writer);
                    self.store.abort(&reference).await?;
                    corrupt += 1;
                    if corrupt >= MAX_CORRUPT_ATTEMPTS {
                        return Err(TransferError::Corrupt {
                            digest: blob.digest.to_string(),
                            registry,
                            attempts: corrupt,
                            detail: format!(
                                "more than the {} bytes the descriptor declares",
                                blob.size
                            ),
                        });
                    }
                }
                Err(Failure::Store(e)) => return Err(e.into()),
                Err(Failure::Cancelled) => return Err(TransferError::Cancelled),
                Err(Failure::Transport(e)) => {
                    // Whatever arrived is in the ingest; the next try resumes.
                    // An attempt that moved bytes restarts the count: only
                    // failures in a row without progress give up.
                    let progressed = writer.status().offset > offset;
                    drop(writer);
                    let permanent = matches!(
                        e.kind,
                        ErrorKind::NotFound
                            | ErrorKind::PermissionDenied
                            | ErrorKind::InvalidArgument
                    );
                    if progressed {
                        retries = 0;
                    }
                    retries += 1;
                    if permanent || retries > MAX_RETRIES {
                        return Err(TransferError::Transport {
                            registry,
                            source: e,
                        });
                    }
                    let pause = FIRST_BACKOFF * 2u32.pow(retries - 1);
                    tracing::warn!(digest = %blob.digest, error = %e, retry = retries, "fetch failed; resuming");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Streams the blob from `offset` into the ingest; returns bytes moved.
    /// The network's small chunks are gathered into batches of
    /// [`WRITE_BATCH`] bytes, and the next batch is read while the last is
    /// hashed and written, so network and disk overlap.
    async fn stream_into(
        &self,
        writer: &mut IngestWriter,
        blob: &Descriptor,
        offset: u64,
    ) -> Result<u64, Failure> {
        let mut stream = self
            .transport
            .fetch(&self.locator, blob, offset)
            .await
            .map_err(Failure::Transport)?;
        let mut position = offset;
        let (mut batch, mut end) = read_batch(&mut stream).await;
        loop {
            let len = batch.len() as u64;
            if position + len > blob.size {
                return Err(Failure::Overrun);
            }
            let write = writer.write(position, batch);
            let next = if matches!(end, BatchEnd::More) {
                let (written, next) = tokio::join!(write, read_batch(&mut stream));
                written.map_err(Failure::Store)?;
                Some(next)
            } else {
                write.await.map_err(Failure::Store)?;
                None
            };
            position += len;
            if len > 0 {
                self.events
                    .send(Event::Progress {
                        digest: blob.digest.clone(),
                        bytes: position,
                    })
                    .await
                    .map_err(|_| Failure::Cancelled)?;
            }
            match (end, next) {
                (BatchEnd::More, Some((next_batch, next_end))) => {
                    batch = next_batch;
                    end = next_end;
                }
                (BatchEnd::Failed(e), _) => return Err(Failure::Transport(e)),
                _ => return Ok(position - offset),
            }
        }
    }
}

/// Bytes gathered before one write to the ingest: large enough that the
/// per-write cost (a blocking-pool hop) vanishes, small enough that eight
/// streams with two batches each stay a few MiB.
const WRITE_BATCH: usize = 512 << 10;

/// Why a batch stopped growing.
enum BatchEnd {
    /// It is full; the stream goes on.
    More,
    /// The stream ended.
    Ended,
    /// The stream failed after the batch's bytes.
    Failed(distd_sdk::TransportError),
}

/// Reads chunks until [`WRITE_BATCH`] bytes, the end or a failure; the
/// bytes before a failure are kept, so they are written and resumed after.
async fn read_batch(stream: &mut distd_sdk::ByteStream) -> (bytes::Bytes, BatchEnd) {
    // Room for a batch and the chunk that overflows it: never regrown.
    let mut batch = bytes::BytesMut::with_capacity(WRITE_BATCH + (64 << 10));
    loop {
        match stream.next().await {
            None => return (batch.freeze(), BatchEnd::Ended),
            Some(Err(e)) => return (batch.freeze(), BatchEnd::Failed(e)),
            Some(Ok(chunk)) => {
                batch.extend_from_slice(&chunk);
                if batch.len() >= WRITE_BATCH {
                    return (batch.freeze(), BatchEnd::More);
                }
            }
        }
    }
}

/// How streaming one attempt ended.
enum Failure {
    Transport(distd_sdk::TransportError),
    Store(StoreError),
    Overrun,
    Cancelled,
}
