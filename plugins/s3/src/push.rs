//! Pushing blobs: one `PUT` for blobs up to the part size, a resumable
//! multipart upload for larger ones, the repository's layer link last.
//!
//! Parts are held in memory one at a time (at most the part size plus one
//! chunk of the source). A multipart upload that is never completed stays
//! in the bucket until aborted: give the bucket a lifecycle rule that
//! aborts incomplete multipart uploads after a few days.

use bytes::{Bytes, BytesMut};
use distd_sdk::transport::{BlobSource, ByteStream, Descriptor, Locator, PushProgress};
use distd_sdk::{ErrorKind, Hasher, UploadSession};
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use tokio_stream::StreamExt as _;

use crate::bucket::Bucket;
use crate::error::{S3Error, classify};
use crate::keys;
use crate::session::{Multipart, part_size_for};

/// How an upload attempt failed.
enum Attempt {
    /// S3 no longer knows the resumed upload: start a new one.
    Stale(S3Error),
    /// Anything else.
    Failed(S3Error),
}

impl From<S3Error> for Attempt {
    fn from(e: S3Error) -> Attempt {
        Attempt::Failed(e)
    }
}

/// Uploads `blob` to `locator`'s repository; see
/// [`distd_sdk::Transport::push_blob`]. Returns the bytes sent.
pub(crate) async fn push_blob(
    bucket: &Bucket,
    part_size: u64,
    locator: &Locator,
    blob: &Descriptor,
    source: &dyn BlobSource,
    resume: Option<UploadSession>,
    progress: &dyn PushProgress,
) -> Result<u64, S3Error> {
    let repo = keys::repository(&locator.repository)?;
    let data = bucket.layout.blob_data(&blob.digest)?;
    let link = bucket.layout.layer_link(repo, &blob.digest)?;
    let sent = if bucket.head(&data).await? == Some(blob.size) {
        0
    } else if blob.size <= part_size {
        put_whole(bucket, &data, blob, source, progress).await?
    } else {
        let part_size = part_size_for(part_size, blob.size);
        let resume = resume.and_then(|s| Multipart::from_session(&s, blob.size));
        multipart(bucket, &data, blob, source, resume, part_size, progress).await?
    };
    // The link only once the data it points to is complete.
    bucket.write_link(&link, &blob.digest).await?;
    Ok(sent)
}

fn data_loss(blob: &Descriptor, why: String) -> S3Error {
    S3Error::invalid(
        ErrorKind::DataLoss,
        format!(
            "the source of blob {} ({} bytes) {why}",
            blob.digest, blob.size
        ),
    )
}

/// Reads the next `len` bytes of `stream` (plus whatever `carry` holds from
/// the previous read) as the chunks they came in.
async fn read_part(
    stream: &mut ByteStream,
    carry: &mut Option<Bytes>,
    len: u64,
    blob: &Descriptor,
    at: u64,
) -> Result<Vec<Bytes>, S3Error> {
    let mut chunks = Vec::new();
    let mut have = 0u64;
    while have < len {
        let chunk = match carry.take() {
            Some(chunk) => chunk,
            None => match stream.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(S3Error::Source(e)),
                None => {
                    return Err(data_loss(blob, format!("ended after {} bytes", at + have)));
                }
            },
        };
        let want = usize::try_from(len - have).unwrap_or(usize::MAX);
        let mut chunk = chunk;
        if chunk.len() > want {
            *carry = Some(chunk.split_off(want));
        }
        have += chunk.len() as u64;
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
    }
    Ok(chunks)
}

/// Checks that `stream` has nothing after the blob's last byte.
async fn expect_end(
    stream: &mut ByteStream,
    carry: Option<Bytes>,
    blob: &Descriptor,
) -> Result<(), S3Error> {
    let extra = match carry {
        Some(c) if !c.is_empty() => true,
        _ => loop {
            match stream.next().await {
                None => break false,
                Some(Ok(c)) if c.is_empty() => {}
                Some(Ok(_)) => break true,
                Some(Err(e)) => return Err(S3Error::Source(e)),
            }
        },
    };
    if extra {
        return Err(data_loss(blob, "has more bytes than its size".into()));
    }
    Ok(())
}

/// One `PUT` of the whole blob, verified against its digest first.
async fn put_whole(
    bucket: &Bucket,
    data: &Path,
    blob: &Descriptor,
    source: &dyn BlobSource,
    progress: &dyn PushProgress,
) -> Result<u64, S3Error> {
    let mut stream = source.open(0).await.map_err(S3Error::Source)?;
    let mut carry = None;
    let chunks = read_part(&mut stream, &mut carry, blob.size, blob, 0).await?;
    expect_end(&mut stream, carry, blob).await?;
    let mut whole = BytesMut::with_capacity(usize::try_from(blob.size).unwrap_or(0));
    for chunk in &chunks {
        whole.extend_from_slice(chunk);
    }
    let whole = whole.freeze();
    let got = distd_sdk::Digest::of_bytes(blob.digest.algorithm(), &whole);
    if got != blob.digest {
        return Err(data_loss(blob, format!("hashes to {got}")));
    }
    bucket.put(data, whole).await?;
    progress.sent(blob.size);
    Ok(blob.size)
}

/// A multipart upload, continuing `resume` when S3 still knows it.
async fn multipart(
    bucket: &Bucket,
    data: &Path,
    blob: &Descriptor,
    source: &dyn BlobSource,
    mut resume: Option<Multipart>,
    part_size: u64,
    progress: &dyn PushProgress,
) -> Result<u64, S3Error> {
    let mut sent = 0;
    loop {
        let resumed = resume.is_some();
        let mut upload = match resume.take() {
            Some(upload) => upload,
            None => {
                let upload_id = bucket
                    .store
                    .create_multipart(data)
                    .await
                    .map_err(|e| bucket.error("starting an upload of", data, e))?;
                let upload = Multipart {
                    upload_id,
                    part_size,
                    parts: Vec::new(),
                };
                progress.session(&upload.to_session());
                upload
            }
        };
        match upload_rest(bucket, data, blob, source, &mut upload, progress, &mut sent).await {
            Ok(()) => return Ok(sent),
            Err(Attempt::Stale(e)) if resumed => {
                // Not aborted: it is gone, or the bucket's lifecycle rule
                // collects it (an abort could destroy parts S3 does know).
                tracing::info!(
                    "upload {} of {data} is gone ({e}): starting a new one",
                    upload.upload_id
                );
            }
            Err(Attempt::Stale(e) | Attempt::Failed(e)) => return Err(e),
        }
    }
}

/// Sends the parts `upload` lacks and completes it.
async fn upload_rest(
    bucket: &Bucket,
    data: &Path,
    blob: &Descriptor,
    source: &dyn BlobSource,
    upload: &mut Multipart,
    progress: &dyn PushProgress,
    sent: &mut u64,
) -> Result<(), Attempt> {
    let mut offset = upload.offset();
    // Only a whole read can be checked against the digest.
    let mut hasher = (offset == 0).then(|| Hasher::new(blob.digest.algorithm()));
    let mut stream = source.open(offset).await.map_err(S3Error::Source)?;
    let mut carry = None;
    let mut first_request = true;
    // S3 no longer knowing a resumed upload is a 404 (NoSuchUpload); some
    // S3-compatible servers answer 500. So the first request of a resumed
    // upload failing for any reason but the credentials or the bucket
    // starts a new upload; in a real outage creating that fails too, and
    // the daemon keeps the old session.
    let stale = |first: bool, e: object_store::Error, what: &str| {
        let stale = first
            && !matches!(
                classify(&e),
                ErrorKind::PermissionDenied | ErrorKind::FailedPrecondition
            );
        let e = bucket.error(what, data, e);
        if stale {
            Attempt::Stale(e)
        } else {
            Attempt::Failed(e)
        }
    };
    while offset < blob.size {
        let len = upload.part_size.min(blob.size - offset);
        let chunks = read_part(&mut stream, &mut carry, len, blob, offset).await?;
        if let Some(hasher) = hasher.as_mut() {
            chunks.iter().for_each(|c| hasher.update(c));
        }
        let index = upload.parts.len();
        let payload: PutPayload = chunks.into_iter().collect();
        let part = bucket
            .store
            .put_part(data, &upload.upload_id, index, payload)
            .await
            .map_err(|e| stale(first_request, e, &format!("uploading part {index} of")))?;
        first_request = false;
        upload.parts.push(part.content_id);
        offset += len;
        *sent += len;
        progress.sent(len);
        progress.session(&upload.to_session());
    }
    expect_end(&mut stream, carry, blob).await?;
    if let Some(got) = hasher.map(Hasher::finish)
        && got != blob.digest
    {
        let _ = bucket.store.abort_multipart(data, &upload.upload_id).await;
        return Err(data_loss(blob, format!("hashes to {got}")).into());
    }
    let parts = upload
        .parts
        .iter()
        .map(|content_id| PartId {
            content_id: content_id.clone(),
        })
        .collect();
    bucket
        .store
        .complete_multipart(data, &upload.upload_id, parts)
        .await
        .map_err(|e| stale(first_request, e, "completing the upload of"))?;
    Ok(())
}
