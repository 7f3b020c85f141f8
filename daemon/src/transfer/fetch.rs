//! Moving one blob from a route's transports into the store: resumable from
//! the ingest's offset, handed over from a transport that fails or stalls to
//! the next one at that offset, retried with backoff, verified by the store's
//! commit, and shared between pulls that need the same blob at the same time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distd_sdk::{Descriptor, Digest, ErrorKind, TransportError};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::attempts::Attempts;
use super::error::TransferError;
use super::route::{BytesByTransport, Hop, Route};
use super::{Event, Events};
use crate::error::StoreError;
use crate::store::{IngestWriter, OpenIngest, Store};

/// Connection failures in a row, without a byte of progress, tolerated per
/// blob before giving up.
pub const MAX_RETRIES: u32 = 5;
/// First pause before a retry; doubles each time.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
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
    /// The transports that serve the image's repository, in order.
    pub route: Route,
    /// The pull's lease.
    pub lease: String,
    /// Downloads shared between pulls.
    pub inflight: Inflight,
    /// Where events go.
    pub events: Events,
    /// A transport that sends nothing for this long is given up for the blob.
    pub stall: Duration,
    /// Bytes each transport moved for this pull.
    pub moved: BytesByTransport,
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

    /// Downloads `blob` through the route's transports: the first one that
    /// can; one that fails or stalls hands over to the next at the offset
    /// the ingest holds; one whose bytes fail verification is skipped for
    /// this blob. A full round without progress backs off before the next.
    async fn download(&self, blob: &Descriptor) -> Result<(), TransferError> {
        let hops = self.route.fetchers();
        if hops.is_empty() {
            return Err(self.route.none_can("fetch blobs"));
        }
        let reference = format!("pull-{}", blob.digest);
        let mut state = Attempts::new(hops.len());
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
            let Some((index, from_zero)) = state.next_hop(&hops, offset) else {
                return Err(state.exhausted(&self.route, &hops, blob));
            };
            if offset > blob.size || (from_zero && offset > 0) {
                writer.write(0, bytes::Bytes::new()).await?;
                offset = 0;
            }
            state.starting(offset);
            let hop = &hops[index];
            self.events
                .send(Event::BlobStarted {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    transport: hop.name.clone(),
                    resume_offset: offset,
                })
                .await?;
            let streamed = self.stream_into(&mut writer, hop, blob, offset).await;
            let moved = writer.status().offset.saturating_sub(offset);
            if moved > 0 {
                hop.stats.add_bytes(moved);
                self.moved.add(&hop.name, moved);
                state.transferred += moved;
                state.contributed(index);
            }
            match streamed {
                Ok(()) => match writer.commit(None, 0, "").await {
                    Ok(_) | Err(StoreError::BlobExists(_)) => {
                        self.events
                            .send(Event::BlobDone {
                                digest: blob.digest.clone(),
                                transport: hop.name.clone(),
                                transferred: state.transferred,
                            })
                            .await?;
                        return Ok(());
                    }
                    Err(e) if e.kind() == ErrorKind::DataLoss => {
                        self.bad_bytes(&hops, &mut state, blob, e.to_string())
                            .await?;
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(Failure::Overrun) => {
                    drop(writer);
                    // An ingest that never got a byte may not exist yet.
                    match self.store.abort(&reference).await {
                        Ok(_) | Err(StoreError::IngestNotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    // Its last batch was refused, not written: it is the one.
                    state.contributed(index);
                    let detail =
                        format!("more than the {} bytes the descriptor declares", blob.size);
                    self.bad_bytes(&hops, &mut state, blob, detail).await?;
                }
                Err(Failure::Store(e)) => return Err(e.into()),
                Err(Failure::Cancelled) => return Err(TransferError::Cancelled),
                Err(Failure::Transport(e)) => {
                    drop(writer);
                    let at = offset + moved;
                    if e.kind != ErrorKind::NotFound {
                        hop.stats.add_error();
                    }
                    tracing::warn!(digest = %blob.digest, transport = %hop.name, at, error = %e, "fetch failed");
                    let message = e.message.clone();
                    if !state.failed(index, at, e) {
                        return Err(state.exhausted(&self.route, &hops, blob));
                    }
                    let Some((next, _)) = state.next_hop(&hops, at) else {
                        return Err(state.exhausted(&self.route, &hops, blob));
                    };
                    if next != index {
                        self.events
                            .send(Event::Warning(format!(
                                "{} failed on {} at byte {at}: {message}; continuing with {}",
                                hop.name, blob.digest, hops[next].name
                            )))
                            .await?;
                    }
                    tokio::time::sleep(state.pause(index, next)).await;
                }
            }
        }
    }

    /// Counts bad bytes against the transports that sent them and skips
    /// them for this blob, unless no other is left; gives up after enough
    /// whole attempts.
    async fn bad_bytes(
        &self,
        hops: &[Hop],
        state: &mut Attempts,
        blob: &Descriptor,
        detail: String,
    ) -> Result<(), TransferError> {
        state.corrupt += 1;
        let names: Vec<&str> = state
            .contributors
            .iter()
            .map(|&i| hops[i].name.as_str())
            .collect();
        let names = names.join(" and ");
        let warning = if state.inherited {
            // Part of the ingest came from an earlier pull: nobody can be
            // blamed, and the blob starts again from its first byte.
            format!(
                "{} (resumed from an earlier pull) failed verification: {detail}; fetching it again from the start",
                blob.digest
            )
        } else {
            for &i in &state.contributors {
                hops[i].stats.add_bad_blob();
            }
            format!("{names} sent bad bytes for {}: {detail}", blob.digest)
        };
        tracing::warn!(digest = %blob.digest, transports = %names, detail = %detail, "bad bytes");
        self.events.send(Event::Warning(warning)).await?;
        if state.corrupt >= MAX_CORRUPT_ATTEMPTS.max(hops.len() as u32) {
            return Err(TransferError::Corrupt {
                digest: blob.digest.to_string(),
                registry: format!("{} (through {names})", self.route.locator.registry),
                attempts: state.corrupt,
                detail,
            });
        }
        state.distrust_contributors();
        Ok(())
    }

    /// Streams the blob from `offset` into the ingest through `hop`. The
    /// network's small chunks are gathered into batches of [`WRITE_BATCH`]
    /// bytes, and the next batch is read while the last is hashed and
    /// written, so network and disk overlap. A transport silent for the
    /// stall timeout fails the attempt.
    async fn stream_into(
        &self,
        writer: &mut IngestWriter,
        hop: &Hop,
        blob: &Descriptor,
        offset: u64,
    ) -> Result<(), Failure> {
        let opened = tokio::time::timeout(
            self.stall,
            hop.transport.fetch(&self.route.locator, blob, offset),
        )
        .await
        .map_err(|_| Failure::Transport(stalled(self.stall)))?;
        let mut stream = opened.map_err(Failure::Transport)?;
        let mut position = offset;
        let (mut batch, mut end) = read_batch(&mut stream, self.stall).await;
        loop {
            let len = batch.len() as u64;
            if position + len > blob.size {
                return Err(Failure::Overrun);
            }
            let write = writer.write(position, batch);
            let next = if matches!(end, BatchEnd::More) {
                let (written, next) = tokio::join!(write, read_batch(&mut stream, self.stall));
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
                _ => return Ok(()),
            }
        }
    }
}

/// The error of a transport that went silent.
fn stalled(stall: Duration) -> TransportError {
    TransportError::new(
        ErrorKind::Unavailable,
        format!(
            "stalled: no byte for {} (`[transfer] stall_timeout`)",
            humanize(stall)
        ),
    )
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
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
    Failed(TransportError),
}

/// Reads chunks until [`WRITE_BATCH`] bytes, the end or a failure; the
/// bytes before a failure are kept, so they are written and resumed after.
async fn read_batch(
    stream: &mut distd_sdk::ByteStream,
    stall: Duration,
) -> (bytes::Bytes, BatchEnd) {
    // Room for a batch and the chunk that overflows it: never regrown.
    let mut batch = bytes::BytesMut::with_capacity(WRITE_BATCH + (64 << 10));
    loop {
        let Ok(next) = tokio::time::timeout(stall, stream.next()).await else {
            return (batch.freeze(), BatchEnd::Failed(stalled(stall)));
        };
        match next {
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
    Transport(TransportError),
    Store(StoreError),
    Overrun,
    Cancelled,
}
