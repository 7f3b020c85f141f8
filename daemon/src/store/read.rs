//! Reading blobs as a stream of chunks, from a blocking thread, so a reader
//! never holds more than a few chunks in memory.

use std::io::{Read, Seek, SeekFrom};

use distd_sdk::Digest;
use tokio::sync::mpsc;

use super::Store;
use crate::error::{Result, StoreError};
use crate::meta::{self, now_ms};

/// Bytes per chunk sent to a reader.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the consumer.
const READ_AHEAD: usize = 4;

/// Chunks of a blob: `(offset, bytes)` in order, or the error that ended the read.
pub type ReadChunks = mpsc::Receiver<Result<(u64, bytes::Bytes)>>;

impl Store {
    /// Streams `length` bytes (0 = to the end) of blob `digest` from `offset`.
    /// `BlobNotFound` when absent, `OffsetPastEnd` past its end,
    /// `BlobFileMissing` when its file is gone.
    pub async fn read(&self, digest: &Digest, offset: u64, length: u64) -> Result<ReadChunks> {
        let key = digest.to_string();
        let row = self
            .meta()
            .run(move |conn| {
                let row = meta::blobs::get(conn, &key)?;
                if row.is_some() {
                    meta::blobs::touch(conn, &key, now_ms())?;
                }
                Ok(row)
            })
            .await?
            .ok_or_else(|| StoreError::BlobNotFound(digest.clone()))?;
        let size = u64::try_from(row.size).unwrap_or(0);
        if offset > size {
            return Err(StoreError::OffsetPastEnd {
                digest: digest.clone(),
                offset,
                size,
            });
        }
        let end = if length == 0 {
            size
        } else {
            size.min(offset.saturating_add(length))
        };
        let path = self.blob_path(digest);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Collected since the row was read, or really lost?
                let key = digest.to_string();
                let recorded = self.meta().run(move |c| meta::blobs::get(c, &key)).await?;
                return Err(match recorded {
                    Some(_) => StoreError::BlobFileMissing(digest.clone()),
                    None => StoreError::BlobNotFound(digest.clone()),
                });
            }
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
        };
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let context = format!("reading {}", path.display());
            if let Err(e) = file.seek(SeekFrom::Start(offset)) {
                let _ = tx.blocking_send(Err(StoreError::io(context)(e)));
                return;
            }
            let mut position = offset;
            while position < end {
                let want =
                    usize::try_from(end - position).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
                let mut buf = vec![0u8; want];
                let outcome = file
                    .read_exact(&mut buf)
                    .map_err(StoreError::io(context.clone()));
                let failed = outcome.is_err();
                let message = outcome.map(|()| (position, bytes::Bytes::from(buf)));
                // A failed send means the reader went away: stop reading.
                if tx.blocking_send(message).is_err() || failed {
                    return;
                }
                position += want as u64;
            }
        });
        Ok(rx)
    }
}
