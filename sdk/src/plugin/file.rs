//! Streaming a file from an offset: what most plugins that serve content
//! from a disk (a layout directory, a cache, a mounted share) need for
//! `fetch`, with the contract's error classes.

use std::io::ErrorKind as IoKind;
use std::path::Path;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::ErrorKind;
use crate::transport::{ByteStream, TransportError};

/// Bytes read per chunk.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the consumer.
const READ_AHEAD: usize = 4;

/// Streams `path` from `offset` to its end, a few chunks ahead of the
/// consumer (dropping the stream stops the reading). `NotFound` when the
/// file does not exist, `OutOfRange` when `offset` is past its end,
/// `PermissionDenied` when it cannot be read, `Unavailable` for other I/O
/// errors; each message names the file.
pub async fn stream_file(path: &Path, offset: u64) -> Result<ByteStream, TransportError> {
    let failed = |e: std::io::Error| {
        let kind = match e.kind() {
            IoKind::NotFound => ErrorKind::NotFound,
            IoKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unavailable,
        };
        TransportError::new(kind, format!("{}: {e}", path.display()))
    };
    let mut file = tokio::fs::File::open(path).await.map_err(failed)?;
    let size = file.metadata().await.map_err(failed)?.len();
    if offset > size {
        return Err(TransportError::new(
            ErrorKind::OutOfRange,
            format!(
                "offset {offset} is past the end of {} ({size} bytes)",
                path.display()
            ),
        ));
    }
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(failed)?;
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let display = path.display().to_string();
    tokio::spawn(async move {
        let mut buffer = vec![0; CHUNK];
        loop {
            let item = match file.read(&mut buffer).await {
                Ok(0) => return,
                Ok(n) => Ok(Bytes::copy_from_slice(&buffer[..n])),
                Err(e) => Err(TransportError::new(
                    ErrorKind::Unavailable,
                    format!("reading {display}: {e}"),
                )),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    async fn read_all(path: &Path, offset: u64) -> Result<Vec<u8>, TransportError> {
        let mut stream = stream_file(path, offset).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes)
    }

    #[tokio::test]
    async fn streams_from_an_offset_with_the_contracts_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_all(&path, 0).await.unwrap(), data);
        assert_eq!(read_all(&path, 300_001).await.unwrap(), data[300_001..]);
        assert!(read_all(&path, 600_000).await.unwrap().is_empty());
        let past = read_all(&path, 600_001).await.unwrap_err();
        assert_eq!(past.kind, ErrorKind::OutOfRange);
        let missing = read_all(&dir.path().join("nope"), 0).await.unwrap_err();
        assert_eq!(missing.kind, ErrorKind::NotFound);
        assert!(missing.message.contains("nope"), "{missing}");
    }
}
