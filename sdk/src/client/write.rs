//! Uploading a blob through `Content.Write`: one bidirectional stream that
//! STATs the ingest, WRITEs 1 MiB chunks at increasing offsets and COMMITs.
//!
//! Memory stays flat whatever the blob's size: requests go through a bounded
//! channel of [`WRITE_QUEUE`] chunks, and responses are read while requests
//! are still being sent, so neither side waits for the other.

use std::future::Future;
use std::io;
use std::io::SeekFrom;

use distd_proto::distd::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Client, ClientError};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::ErrorKind;

/// Size of the chunks a write sends.
pub const WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// How long to wait for the daemon's reason after it closed a write stream.
const STATUS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Chunks in flight between the reader of the source and the gRPC stream.
const WRITE_QUEUE: usize = 4;

/// Where [`Client::write_blob`] reads a blob from.
///
/// A source that can be positioned lets an interrupted ingest resume where the
/// daemon stopped; one that cannot (a pipe) starts the ingest again at 0.
pub trait BlobSource: AsyncRead + Unpin + Send {
    /// Positions the source so that the next read returns byte `offset` of
    /// the blob. `Ok(false)` when the source cannot be positioned.
    fn seek_to(&mut self, offset: u64) -> impl Future<Output = io::Result<bool>> + Send;
}

impl BlobSource for tokio::fs::File {
    async fn seek_to(&mut self, offset: u64) -> io::Result<bool> {
        self.seek(SeekFrom::Start(offset)).await?;
        Ok(true)
    }
}

/// A source that can be positioned with [`AsyncSeek`] (a file, a cursor),
/// counting offsets from the position it had when wrapped.
#[derive(Debug)]
pub struct Seekable<R> {
    inner: R,
    base: Option<u64>,
}

impl<R> Seekable<R> {
    /// Wraps `inner`; offset 0 of the blob is `inner`'s position at the first seek.
    pub fn new(inner: R) -> Self {
        Seekable { inner, base: None }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Seekable<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + AsyncSeek + Unpin + Send> BlobSource for Seekable<R> {
    async fn seek_to(&mut self, offset: u64) -> io::Result<bool> {
        let base = match self.base {
            Some(base) => base,
            None => {
                let here = self.inner.stream_position().await?;
                self.base = Some(here);
                here
            }
        };
        let target = base
            .checked_add(offset)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
        self.inner.seek(SeekFrom::Start(target)).await?;
        Ok(true)
    }
}

/// A source that cannot be positioned (standard input, a socket): an ingest
/// that already holds bytes is restarted at offset 0.
#[derive(Debug)]
pub struct Unseekable<R>(pub R);

impl<R: AsyncRead + Unpin> AsyncRead for Unseekable<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin + Send> BlobSource for Unseekable<R> {
    async fn seek_to(&mut self, _offset: u64) -> io::Result<bool> {
        Ok(false)
    }
}

/// What a write asks of the daemon besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Name of the ingest (1 to 512 bytes). The same ref resumes the same
    /// ingest, also after a disconnect or a daemon restart.
    pub ingest_ref: String,
    /// Digest the blob must have; checked by the daemon at commit. When it is
    /// already in the store the write ends at once with
    /// [`WriteOutcome::AlreadyExists`].
    pub expected: Option<Digest>,
    /// Size the blob must have; checked at commit.
    pub total: Option<u64>,
    /// Media type recorded with the blob; manifests, indexes and configs are
    /// parsed so that garbage collection follows their references.
    pub media_type: String,
    /// Lease protecting the ingest and the committed blob.
    pub lease_id: String,
}

/// How a successful write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The blob was written and published.
    Committed {
        /// Digest of the published blob.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// The store already held the blob; nothing was published.
    AlreadyExists(Digest),
}

impl WriteOutcome {
    /// The blob's digest, whichever way the write ended.
    pub fn digest(&self) -> &Digest {
        match self {
            WriteOutcome::Committed { digest, .. } | WriteOutcome::AlreadyExists(digest) => digest,
        }
    }
}

fn request(action: pb::WriteAction, opts: &WriteOptions, offset: u64) -> pb::WriteContentRequest {
    pb::WriteContentRequest {
        action: action as i32,
        r#ref: String::new(),
        total: opts.total.map_or(0, to_i64),
        expected: opts
            .expected
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        offset: to_i64(offset),
        data: Default::default(),
        media_type: opts.media_type.clone(),
        lease_id: opts.lease_id.clone(),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn offset_of(n: i64) -> Result<u64, ClientError> {
    u64::try_from(n).map_err(|_| ClientError::Protocol(format!("negative offset {n}")))
}

fn is_already_exists(err: &ClientError) -> bool {
    err.kind() == ErrorKind::AlreadyExists
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
async fn fill<R: AsyncRead + Unpin>(source: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl Client {
    /// Uploads the blob read from `source` as the ingest `opts.ingest_ref`,
    /// then commits it.
    ///
    /// The ingest is STATed first: when it already holds N bytes and `source`
    /// can be positioned, the upload continues at N; otherwise it restarts at
    /// 0. `progress` is called with the number of bytes the daemon holds,
    /// each time that number grows. The blob's presence in the store is a
    /// success ([`WriteOutcome::AlreadyExists`]), not an error. Without
    /// `opts.expected` the bytes are hashed on the way so the digest is known
    /// however the write ends.
    pub async fn write_blob<S: BlobSource>(
        &self,
        opts: &WriteOptions,
        mut source: S,
        mut progress: impl FnMut(u64),
    ) -> Result<WriteOutcome, ClientError> {
        if opts.ingest_ref.is_empty() || opts.ingest_ref.len() > 512 {
            return Err(ClientError::Status {
                kind: ErrorKind::InvalidArgument,
                message: format!(
                    "ingest ref {:?} must be 1 to 512 bytes long",
                    opts.ingest_ref
                ),
            });
        }
        let (tx, rx) = mpsc::channel::<pb::WriteContentRequest>(WRITE_QUEUE);
        let mut stat = request(pb::WriteAction::Stat, opts, 0);
        stat.r#ref = opts.ingest_ref.clone();
        tx.send(stat)
            .await
            .map_err(|_| ClientError::Protocol("write stream closed".into()))?;

        let already = |err: ClientError| -> Result<WriteOutcome, ClientError> {
            match (&opts.expected, is_already_exists(&err)) {
                (Some(digest), true) => Ok(WriteOutcome::AlreadyExists(digest.clone())),
                _ => Err(err),
            }
        };
        let mut inbound = match self.content().write(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return already(status.into()),
        };
        let held = match inbound.message().await {
            Ok(Some(response)) => offset_of(response.offset)?,
            Ok(None) => {
                return Err(ClientError::Protocol(
                    "write stream ended after STAT".into(),
                ));
            }
            Err(status) => return already(status.into()),
        };

        // Decide where to start. Without an expected digest the whole blob is
        // hashed locally, so a resumed prefix is read (not sent) to hash it.
        let beyond_total = opts.total.is_some_and(|total| held > total);
        let mut hasher = match &opts.expected {
            Some(_) => None,
            None => Some(Hasher::new(Algorithm::Sha256)),
        };
        let positioned = |e: io::Error| ClientError::Io {
            context: "positioning the blob to resume its upload".into(),
            source: e,
        };
        let start = if held == 0 || beyond_total || !source.seek_to(0).await.map_err(positioned)? {
            0
        } else if hasher.is_some() {
            if hash_prefix(&mut source, held, &mut hasher).await? {
                held
            } else {
                // The source is shorter than the ingest: it cannot be the
                // same blob, so start again from the beginning.
                source.seek_to(0).await.map_err(positioned)?;
                hasher = Some(Hasher::new(Algorithm::Sha256));
                0
            }
        } else {
            source.seek_to(held).await.map_err(positioned)?;
            held
        };
        progress(start);

        let mut local_digest: Option<Digest> = None;
        let outcome = {
            let sender = send_chunks(
                tx,
                opts,
                &mut source,
                start,
                held > 0,
                &mut hasher,
                &mut local_digest,
            );
            let receiver = receive(&mut inbound, &mut progress);
            tokio::pin!(sender, receiver);
            tokio::select! {
                received = &mut receiver => received,
                sent = &mut sender => match sent {
                    Ok(()) => receiver.await,
                    // The daemon closed the stream: its status says why, and
                    // arrives on the response side.
                    Err(ClientError::Protocol(closed)) => {
                        match tokio::time::timeout(STATUS_GRACE, &mut receiver).await {
                            Ok(Err(status)) => Err(status),
                            _ => Err(ClientError::Protocol(closed)),
                        }
                    }
                    Err(err) => Err(err),
                },
            }
        };
        match outcome {
            Ok((digest, size)) => {
                if let (Some(local), Some(daemon)) = (&local_digest, &digest)
                    && local.algorithm() == daemon.algorithm()
                    && local != daemon
                {
                    return Err(ClientError::Protocol(format!(
                        "distd committed {daemon} but the bytes sent hash to {local}"
                    )));
                }
                let digest = digest
                    .or_else(|| opts.expected.clone())
                    .or(local_digest)
                    .ok_or_else(|| ClientError::Protocol("COMMIT returned no digest".into()))?;
                Ok(WriteOutcome::Committed { digest, size })
            }
            Err(err) if is_already_exists(&err) => match opts.expected.clone().or(local_digest) {
                Some(digest) => Ok(WriteOutcome::AlreadyExists(digest)),
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }
}

/// Feeds the first `len` bytes of `source` to `hasher` without sending them;
/// false when the source ends first.
async fn hash_prefix<S: BlobSource>(
    source: &mut S,
    len: u64,
    hasher: &mut Option<Hasher>,
) -> Result<bool, ClientError> {
    let mut prefix = source.take(len);
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = prefix.read(&mut buf).await.map_err(|e| ClientError::Io {
            context: "reading the blob to resume its upload".into(),
            source: e,
        })?;
        if n == 0 {
            return Ok(read == len);
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        read += n as u64;
    }
}

/// Sends WRITE requests from `start` until the source ends, then COMMIT.
/// `must_write_first`: the ingest is not empty, so a restart at 0 needs a
/// WRITE at offset 0 even for an empty source.
async fn send_chunks<S: BlobSource>(
    tx: mpsc::Sender<pb::WriteContentRequest>,
    opts: &WriteOptions,
    source: &mut S,
    start: u64,
    must_write_first: bool,
    hasher: &mut Option<Hasher>,
    local_digest: &mut Option<Digest>,
) -> Result<(), ClientError> {
    let closed = || ClientError::Protocol("distd closed the write stream".into());
    let mut offset = start;
    let mut first = start == 0 && must_write_first;
    loop {
        let mut buf = vec![0u8; WRITE_CHUNK_BYTES];
        let n = fill(source, &mut buf).await.map_err(|e| ClientError::Io {
            context: "reading the blob to upload".into(),
            source: e,
        })?;
        if n == 0 && !first {
            break;
        }
        first = false;
        buf.truncate(n);
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        if n > 0 && n < WRITE_CHUNK_BYTES {
            // The last bytes ride on the COMMIT, so a small blob is a single
            // request and costs the daemon no ingest record.
            *local_digest = hasher.take().map(Hasher::finish);
            let mut commit = request(pb::WriteAction::Commit, opts, offset);
            commit.data = buf.into();
            return tx.send(commit).await.map_err(|_| closed());
        }
        let mut write = request(pb::WriteAction::Write, opts, offset);
        write.data = buf.into();
        tx.send(write).await.map_err(|_| closed())?;
        offset += n as u64;
        if n < WRITE_CHUNK_BYTES {
            break;
        }
    }
    *local_digest = hasher.take().map(Hasher::finish);
    tx.send(request(pb::WriteAction::Commit, opts, offset))
        .await
        .map_err(|_| closed())
}

/// Reads responses until the COMMIT answer; returns the digest (if the daemon
/// named one) and size of the published blob.
async fn receive(
    inbound: &mut tonic::Streaming<pb::WriteContentResponse>,
    progress: &mut impl FnMut(u64),
) -> Result<(Option<Digest>, u64), ClientError> {
    let mut last = 0;
    while let Some(response) = inbound.message().await? {
        let offset = offset_of(response.offset)?;
        if response.action == pb::WriteAction::Commit as i32 {
            progress(offset);
            let digest = if response.digest.is_empty() {
                None
            } else {
                Some(Digest::parse(&response.digest).map_err(|e| {
                    ClientError::Protocol(format!("COMMIT returned a bad digest: {e}"))
                })?)
            };
            return Ok((digest, offset));
        }
        if offset > last {
            last = offset;
            progress(offset);
        }
    }
    Err(ClientError::Protocol(
        "the write stream ended before the COMMIT was answered".into(),
    ))
}
