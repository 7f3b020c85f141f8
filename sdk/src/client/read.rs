//! Downloading a blob through `Content.Read`, streamed into any writer.

use distd_proto::distd::v1 as pb;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Client, ClientError};
use crate::digest::{Digest, Hasher};
use crate::error::ErrorKind;
use crate::media::MAX_MANIFEST_BYTES;

/// What part of a blob [`Client::read_blob_with`] reads, and whether it checks it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// First byte to read.
    pub offset: u64,
    /// Bytes to read; `None` reads to the end.
    pub size: Option<u64>,
    /// Hash what is read and fail with `DataLoss` unless it matches the
    /// digest. Only meaningful for a whole blob (offset 0, no size).
    pub verify: bool,
}

impl Client {
    /// Streams the blob `digest` from `offset` to its end into `writer`;
    /// returns the number of bytes written. `progress` is called with the
    /// bytes written so far after each chunk. The writer is flushed, not shut
    /// down.
    pub async fn read_blob<W: AsyncWrite + Unpin>(
        &self,
        digest: &Digest,
        offset: u64,
        writer: W,
        progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        let opts = ReadOptions {
            offset,
            ..ReadOptions::default()
        };
        self.read_blob_with(digest, opts, writer, progress).await
    }

    /// Streams (part of) the blob `digest` into `writer` as `opts` says;
    /// returns the number of bytes written.
    pub async fn read_blob_with<W: AsyncWrite + Unpin>(
        &self,
        digest: &Digest,
        opts: ReadOptions,
        mut writer: W,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let request = pb::ReadContentRequest {
            digest: digest.to_string(),
            offset: to_i64(opts.offset),
            size: opts.size.map_or(0, to_i64),
        };
        let mut stream = self.content().read(request).await?.into_inner();
        let mut hasher = (opts.verify && opts.offset == 0 && opts.size.is_none())
            .then(|| Hasher::new(digest.algorithm()));
        let mut written = 0u64;
        while let Some(chunk) = stream.message().await? {
            let expected_offset = opts.offset + written;
            if u64::try_from(chunk.offset).ok() != Some(expected_offset) {
                return Err(ClientError::Protocol(format!(
                    "read chunk at offset {} where {expected_offset} was expected",
                    chunk.offset
                )));
            }
            let data: &[u8] = &chunk.data;
            if let Some(h) = hasher.as_mut() {
                h.update(data);
            }
            writer
                .write_all(data)
                .await
                .map_err(|source| ClientError::Io {
                    context: format!("writing {digest}"),
                    source,
                })?;
            written += data.len() as u64;
            progress(written);
        }
        writer.flush().await.map_err(|source| ClientError::Io {
            context: format!("writing {digest}"),
            source,
        })?;
        if let Some(h) = hasher {
            let actual = h.finish();
            if &actual != digest {
                return Err(ClientError::Status {
                    kind: ErrorKind::DataLoss,
                    message: format!("blob {digest} read from distd hashes to {actual}"),
                });
            }
        }
        Ok(written)
    }

    /// Reads a small blob (a manifest, index or config) whole into memory,
    /// verified against its digest. Refuses blobs larger than
    /// [`MAX_MANIFEST_BYTES`] without reading them.
    pub async fn read_manifest(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let info = self.content_info(digest).await?;
        let size = u64::try_from(info.size).unwrap_or(u64::MAX);
        if size > MAX_MANIFEST_BYTES {
            return Err(ClientError::Status {
                kind: ErrorKind::InvalidArgument,
                message: format!(
                    "{digest} is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have"
                ),
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let opts = ReadOptions {
            verify: true,
            ..ReadOptions::default()
        };
        self.read_blob_with(digest, opts, &mut bytes, |_| {})
            .await?;
        Ok(bytes)
    }
}
