//! Sending one blob: skipped when the registry has it, mounted from another
//! repository of the same registry when distd knows one that holds it, else
//! uploaded from the store — continuing the last upload session the
//! registry acknowledged (saved in SQLite, so it survives a restart), with
//! bounded retries and backoff.

use std::sync::Arc;
use std::time::Duration;

use distd_sdk::transport::{BlobSource, ByteStream, MountOutcome, PushProgress, UploadSession};
use distd_sdk::{Descriptor, Digest, ErrorKind, Locator, Transport, TransportError};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::{Event, Events, TransferError};
use crate::error::StoreError;
use crate::meta::{self, now_ms, transfers::SessionRow};
use crate::store::Store;

/// Failed attempts in a row, without progress, before a blob's push fails.
const MAX_RETRIES: u32 = 5;
/// First pause before a retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// What pushing blobs to one repository needs; shared by its tasks.
pub struct BlobPusher {
    /// The store the bytes come from.
    pub store: Store,
    /// The destination.
    pub transport: Arc<dyn Transport>,
    /// Registry and repository pushed to.
    pub locator: Locator,
    /// Where events go.
    pub events: Events,
}

impl BlobPusher {
    /// Makes sure the destination has `blob`.
    pub async fn push(&self, blob: &Descriptor) -> Result<(), TransferError> {
        let failed = |source| TransferError::Transport {
            registry: self.locator.registry.clone(),
            source,
        };
        match self.transport.stat(&self.locator, &blob.digest).await {
            Ok(Some(_)) => {
                return self
                    .events
                    .send(Event::Skipped {
                        digest: blob.digest.clone(),
                        reason: "already at the registry",
                    })
                    .await;
            }
            Ok(None) => {}
            Err(e) if permanent(&e) => return Err(failed(e)),
            // The upload will say what is wrong, or work.
            Err(e) => tracing::debug!(digest = %blob.digest, error = %e, "HEAD failed"),
        }
        let mut session = match self.mount(blob).await? {
            None => return Ok(()),
            Some(session) => session,
        };
        let saved = self.saved_session(&blob.digest).await?;
        if saved.is_some() {
            // A session with acknowledged bytes beats a fresh one from a mount.
            session = saved;
        }
        let source = StoreSource {
            store: self.store.clone(),
            digest: blob.digest.clone(),
        };
        let transport = self.transport.describe().name;
        let mut retries = 0u32;
        loop {
            let start = session.as_ref().map_or(0, |s| s.offset);
            self.events
                .send(Event::BlobStarted {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    transport: transport.clone(),
                    resume_offset: start,
                })
                .await?;
            let reporter = Reporter::start(self, &blob.digest, start);
            let result = self
                .transport
                .push_blob(&self.locator, blob, &source, session.clone(), &reporter)
                .await;
            let latest = reporter.finish().await?;
            match result {
                Ok(sent) => {
                    self.forget_session(&blob.digest).await?;
                    return self
                        .events
                        .send(Event::BlobDone {
                            digest: blob.digest.clone(),
                            transport,
                            transferred: sent,
                        })
                        .await;
                }
                // The registry no longer knows the upload (Distribution
                // drops one whose body was cut): start a new one. Only an
                // upload answers 404 here; the repository is made by the push.
                Err(e) if e.kind == ErrorKind::NotFound => {
                    tracing::warn!(digest = %blob.digest, error = %e, "upload session gone; starting over");
                    self.forget_session(&blob.digest).await?;
                    session = None;
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(failed(e));
                    }
                }
                Err(e) if permanent(&e) => return Err(failed(e)),
                Err(e) => {
                    let progressed = latest.as_ref().is_some_and(|l| l.offset > start);
                    if progressed {
                        retries = 0;
                    }
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(failed(e));
                    }
                    if latest.is_some() {
                        session = latest;
                    }
                    let pause = FIRST_BACKOFF * 2u32.pow(retries - 1);
                    tracing::warn!(digest = %blob.digest, error = %e, retry = retries, "upload failed; continuing");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Tries to mount `blob` from the repositories of this registry known to
    /// hold it. `None` when mounted; else the upload session a registry may
    /// have opened instead (a 202 to the mount).
    async fn mount(
        &self,
        blob: &Descriptor,
    ) -> Result<Option<Option<UploadSession>>, TransferError> {
        let digest = blob.digest.to_string();
        let registry = self.locator.registry.clone();
        let sources = self
            .store
            .meta()
            .run(move |conn| meta::transfers::sources(conn, &digest, &registry))
            .await?;
        for from in sources
            .into_iter()
            .filter(|repo| *repo != self.locator.repository)
        {
            match self.transport.mount(&self.locator, blob, &from).await {
                Ok(MountOutcome::Mounted) => {
                    self.events
                        .send(Event::Mounted {
                            digest: blob.digest.clone(),
                            from,
                        })
                        .await?;
                    return Ok(None);
                }
                // The registry declined and opened an upload: use it.
                Ok(MountOutcome::NotMounted(Some(session))) => return Ok(Some(Some(session))),
                Ok(MountOutcome::NotMounted(None)) => {}
                Err(e) => {
                    tracing::debug!(digest = %blob.digest, from, error = %e, "mount failed; uploading")
                }
            }
        }
        Ok(Some(None))
    }

    async fn saved_session(&self, digest: &Digest) -> Result<Option<UploadSession>, StoreError> {
        let (registry, repository, digest) = self.key(digest);
        let row = self
            .store
            .meta()
            .run(move |conn| meta::transfers::session(conn, &registry, &repository, &digest))
            .await?;
        Ok(row.map(|r| UploadSession {
            location: r.location,
            offset: r.offset,
        }))
    }

    async fn forget_session(&self, digest: &Digest) -> Result<(), StoreError> {
        let (registry, repository, digest) = self.key(digest);
        self.store
            .meta()
            .run(move |conn| meta::transfers::delete_session(conn, &registry, &repository, &digest))
            .await
    }

    fn key(&self, digest: &Digest) -> (String, String, String) {
        (
            self.locator.registry.clone(),
            self.locator.repository.clone(),
            digest.to_string(),
        )
    }
}

/// Errors no retry can fix.
fn permanent(error: &TransportError) -> bool {
    matches!(
        error.kind,
        ErrorKind::NotFound
            | ErrorKind::PermissionDenied
            | ErrorKind::InvalidArgument
            | ErrorKind::FailedPrecondition
            | ErrorKind::DataLoss
    )
}

/// A blob of the store, readable from any offset.
struct StoreSource {
    store: Store,
    digest: Digest,
}

#[async_trait::async_trait]
impl BlobSource for StoreSource {
    async fn open(&self, offset: u64) -> Result<ByteStream, TransportError> {
        let local = |e: StoreError| {
            TransportError::new(
                e.kind(),
                format!("reading {} from the store: {e}", self.digest),
            )
        };
        let chunks = self
            .store
            .read(&self.digest, offset, 0)
            .await
            .map_err(local)?;
        let digest = self.digest.clone();
        Ok(Box::pin(ReceiverStream::new(chunks).map(move |chunk| {
            chunk.map(|(_, bytes)| bytes).map_err(|e| {
                TransportError::new(e.kind(), format!("reading {digest} from the store: {e}"))
            })
        })))
    }
}

/// What the transport reports while it uploads.
enum Report {
    Session(UploadSession),
    Sent(u64),
}

/// Turns the transport's (synchronous) reports into saved sessions and
/// progress events, in order, on a task of its own.
struct Reporter {
    tx: mpsc::UnboundedSender<Report>,
    task: tokio::task::JoinHandle<Result<Option<UploadSession>, TransferError>>,
}

impl Reporter {
    fn start(pusher: &BlobPusher, digest: &Digest, start: u64) -> Reporter {
        let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
        let store = pusher.store.clone();
        let events = pusher.events.clone();
        let (registry, repository, key) = pusher.key(digest);
        let digest = digest.clone();
        let task = tokio::spawn(async move {
            let mut latest: Option<UploadSession> = None;
            let mut sent = 0u64;
            while let Some(first) = rx.recv().await {
                // Coalesce whatever queued up meanwhile.
                let mut session = None;
                let mut more = Some(first);
                while let Some(report) = more.take().or_else(|| rx.try_recv().ok()) {
                    match report {
                        Report::Session(s) => session = Some(s),
                        Report::Sent(n) => sent += n,
                    }
                }
                if let Some(session) = session {
                    let row = SessionRow {
                        location: session.location.clone(),
                        offset: session.offset,
                        updated_at: now_ms(),
                    };
                    let (registry, repository, key) =
                        (registry.clone(), repository.clone(), key.clone());
                    store
                        .meta()
                        .run(move |conn| {
                            meta::transfers::save_session(conn, &registry, &repository, &key, &row)
                        })
                        .await?;
                    latest = Some(session);
                }
                events
                    .send(Event::Progress {
                        digest: digest.clone(),
                        bytes: start + sent,
                    })
                    .await?;
            }
            Ok(latest)
        });
        Reporter { tx, task }
    }

    /// Waits for every report to be handled; the last session saved.
    async fn finish(self) -> Result<Option<UploadSession>, TransferError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| TransferError::Store(StoreError::Task(e.to_string())))?
    }
}

impl PushProgress for Reporter {
    fn session(&self, session: &UploadSession) {
        let _ = self.tx.send(Report::Session(session.clone()));
    }

    fn sent(&self, bytes: u64) {
        let _ = self.tx.send(Report::Sent(bytes));
    }
}
