//! Fetching from an offset: what to skip when a server answers a ranged
//! request with the whole blob, and the stream that skips it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use distd_sdk::transport::TransportError;
use tokio_stream::Stream;

/// The `Range` header value for `offset`, `None` for the whole blob.
pub fn range_header(offset: u64) -> Option<String> {
    (offset > 0).then(|| format!("bytes={offset}-"))
}

/// How many leading bytes of a response body to drop so that the stream
/// starts at `offset`, given the response's status and `Content-Range`.
///
/// A 200 is the whole blob (the server ignored `Range`): skip `offset`. A
/// 206 starts where its `Content-Range` says, at or before `offset`.
pub fn bytes_to_skip(status: u16, content_range: Option<&str>, offset: u64) -> Result<u64, String> {
    match status {
        200 => Ok(offset),
        206 => {
            let Some(range) = content_range else {
                // No Content-Range on a 206: trust that it honoured ours.
                return Ok(0);
            };
            let start = range
                .trim()
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('-'))
                .and_then(|(start, _)| start.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("unparseable Content-Range {range:?}"))?;
            if start > offset {
                return Err(format!(
                    "asked for bytes from {offset} but the server sent bytes from {start}"
                ));
            }
            Ok(offset - start)
        }
        other => Err(format!("status {other} is not a body to read")),
    }
}

/// A byte stream without its first `skip` bytes.
pub struct SkipPrefix<S> {
    inner: S,
    skip: u64,
}

impl<S> SkipPrefix<S> {
    /// Wraps `inner`, dropping its first `skip` bytes.
    pub fn new(inner: S, skip: u64) -> Self {
        SkipPrefix { inner, skip }
    }
}

impl<S> Stream for SkipPrefix<S>
where
    S: Stream<Item = Result<Bytes, TransportError>> + Unpin,
{
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => chunk,
                other => return other,
            };
            if self.skip == 0 {
                return Poll::Ready(Some(Ok(next)));
            }
            let len = next.len() as u64;
            if len <= self.skip {
                self.skip -= len;
                continue;
            }
            let start = usize::try_from(self.skip).unwrap_or(usize::MAX);
            self.skip = 0;
            return Poll::Ready(Some(Ok(next.slice(start..))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    #[test]
    fn range_headers_and_skips() {
        assert_eq!(range_header(0), None);
        assert_eq!(range_header(5).as_deref(), Some("bytes=5-"));
        assert_eq!(bytes_to_skip(200, None, 7), Ok(7));
        assert_eq!(bytes_to_skip(206, Some("bytes 7-99/100"), 7), Ok(0));
        assert_eq!(bytes_to_skip(206, Some("bytes 0-99/100"), 7), Ok(7));
        assert_eq!(bytes_to_skip(206, None, 7), Ok(0));
        assert!(bytes_to_skip(206, Some("bytes 9-99/100"), 7).is_err());
        assert!(bytes_to_skip(206, Some("items 1-2"), 7).is_err());
        assert!(bytes_to_skip(404, None, 0).is_err());
    }

    #[tokio::test]
    async fn skipping_spans_chunks() {
        let data: Vec<u8> = (0u8..100).collect();
        for skip in [0u64, 1, 9, 10, 11, 55, 99, 100, 150] {
            let chunks: Vec<Result<Bytes, TransportError>> = data
                .chunks(10)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let mut stream = SkipPrefix::new(tokio_stream::iter(chunks), skip);
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            let from = (skip as usize).min(data.len());
            assert_eq!(out, &data[from..], "skip {skip}");
        }
    }
}
