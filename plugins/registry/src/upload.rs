//! The parts of a blob upload that need no server: upload URLs, what a
//! registry's `Range` header says it holds, where a resumed upload goes on,
//! and the request body that streams one chunk of a blob.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use distd_sdk::digest::Digest;
use distd_sdk::error::ErrorKind;
use distd_sdk::transport::{ByteStream, TransportError};
use reqwest::Url;
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::Stream;

/// Resolves a `Location` header against the URL of the request it answered
/// (RFC 9110: a relative reference is relative to the request's URL). An
/// absolute location is kept as is; `/v2/…` gets the request's scheme and
/// host.
pub fn resolve_location(request_url: &str, location: &str) -> Result<String, String> {
    let base =
        Url::parse(request_url).map_err(|e| format!("bad request URL {request_url:?}: {e}"))?;
    let location = location.trim();
    if location.is_empty() {
        return Err("an empty Location".to_owned());
    }
    base.join(location)
        .map(String::from)
        .map_err(|e| format!("an unusable Location {location:?}: {e}"))
}

/// The URL that completes an upload at `location`: `digest=<digest>`
/// appended to its query (`?` or `&`), the existing query kept byte for
/// byte (Distribution signs its `_state` parameter).
pub fn with_digest(location: &str, digest: &Digest) -> Result<String, String> {
    let mut url =
        Url::parse(location).map_err(|e| format!("an unusable upload URL {location:?}: {e}"))?;
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    Ok(url.into())
}

/// What a registry's `Range` header says it holds of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Exactly this many bytes (`0-<n-1>`, n ≥ 2).
    Bytes(u64),
    /// No bytes or one: Distribution answers `0-0` for both (its end is
    /// `size - 1`, floored at 0), and an absent `Range` means nothing yet.
    AtMostOne,
}

/// Parses the `Range` of an upload's status or `PATCH` response: `0-<end>`
/// with the end inclusive, optionally prefixed `bytes=`; absent means none.
pub fn parse_held(range: Option<&str>) -> Result<Held, String> {
    let Some(range) = range else {
        return Ok(Held::AtMostOne);
    };
    let value = range.trim();
    let value = value
        .strip_prefix("bytes=")
        .or_else(|| value.strip_prefix("bytes "))
        .unwrap_or(value);
    let (start, end) = value
        .split_once('-')
        .ok_or_else(|| format!("an unparseable Range {range:?}"))?;
    let (Ok(start), Ok(end)) = (start.trim().parse::<u64>(), end.trim().parse::<u64>()) else {
        return Err(format!("an unparseable Range {range:?}"));
    };
    if start != 0 {
        return Err(format!(
            "a Range {range:?} that does not start at 0 (uploads are sequential)"
        ));
    }
    match end {
        0 => Ok(Held::AtMostOne),
        end => end
            .checked_add(1)
            .map(Held::Bytes)
            .ok_or_else(|| format!("an impossible Range {range:?}")),
    }
}

/// Where a resumed upload goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Continue the session from this offset.
    At(u64),
    /// Abandon the session and start a new upload, for this reason.
    Restart(String),
}

/// Where to continue an upload of a `size`-byte blob whose status answered
/// `range`, when distd last persisted `acknowledged` bytes for it.
///
/// The registry's count is authoritative (it may hold less than was
/// acknowledged, if a registry lost a chunk). `0-0` is ambiguous: no bytes
/// or one. It is taken as 0 only when distd had not been told of any byte
/// either (a session just opened, or one a mount returned): a chunked push
/// never leaves exactly one byte behind a location distd persisted, since
/// Distribution's locations carry a signed offset (a location older than
/// the upload's last chunk is refused, 404). Any other `0-0` (distd had
/// acknowledged bytes the registry no longer reports) restarts the upload:
/// at most one byte is lost, while guessing wrong would corrupt the blob.
pub fn resume_at(range: Option<&str>, acknowledged: u64, size: u64) -> Resume {
    match parse_held(range) {
        Err(reason) => Resume::Restart(format!("the registry reported {reason}")),
        Ok(Held::AtMostOne) if acknowledged == 0 => Resume::At(0),
        Ok(Held::AtMostOne) => Resume::Restart(format!(
            "the registry reports at most 1 byte of an upload that had {acknowledged} bytes \
             acknowledged"
        )),
        Ok(Held::Bytes(held)) if held > size => Resume::Restart(format!(
            "the registry reports {held} bytes of an upload of a {size}-byte blob"
        )),
        Ok(Held::Bytes(held)) => Resume::At(held),
    }
}

/// The upload's offset after a `PATCH` that should have brought it to
/// `expected` bytes, from the response's `Range`. A registry may keep less
/// than it was sent (it is believed: the next chunk starts there), never
/// more; a missing `Range` is taken as "all of it".
pub fn offset_after_chunk(range: Option<&str>, expected: u64) -> Result<u64, String> {
    if range.is_none() {
        return Ok(expected);
    }
    match parse_held(range)? {
        Held::AtMostOne if expected <= 1 => Ok(expected),
        Held::AtMostOne => Err(format!(
            "the registry acknowledged at most 1 byte of the {expected} sent so far"
        )),
        Held::Bytes(held) if held > expected => Err(format!(
            "the registry acknowledged {held} bytes of the {expected} sent so far"
        )),
        Held::Bytes(held) => Ok(held),
    }
}

/// The `Content-Range` of a `PATCH` sending `len` (> 0) bytes from
/// `start`: `<start>-<end>`, end inclusive, without a unit (OCI spec).
pub fn content_range(start: u64, len: u64) -> String {
    format!("{start}-{}", start + len.saturating_sub(1))
}

/// Where a [`ChunkBody`] puts a failure of the blob source, so that the
/// push reports it (rather than the HTTP error it causes) and does not
/// retry it as a network failure.
pub type SourceFailure = Arc<Mutex<Option<TransportError>>>;

/// Records `error` in `slot` (the first failure wins).
pub fn record_failure(slot: &SourceFailure, error: TransportError) {
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.get_or_insert(error);
}

/// Takes the failure recorded in `slot`, if any.
pub fn take_failure(slot: &SourceFailure) -> Option<TransportError> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

/// A request body: the first `len` bytes of a blob stream, reporting each
/// piece's size on `sent` as the HTTP client takes it. Ends with an error
/// when the stream does, or when it ends before `len` bytes.
pub struct ChunkBody {
    inner: ByteStream,
    remaining: u64,
    sent: UnboundedSender<u64>,
    failure: SourceFailure,
}

impl ChunkBody {
    /// The first `len` bytes of `inner`.
    pub fn new(
        inner: ByteStream,
        len: u64,
        sent: UnboundedSender<u64>,
        failure: SourceFailure,
    ) -> ChunkBody {
        ChunkBody {
            inner,
            remaining: len,
            sent,
            failure,
        }
    }

    fn fail(&mut self, error: TransportError) -> Poll<Option<std::io::Result<Bytes>>> {
        let io = std::io::Error::other(error.message.clone());
        record_failure(&self.failure, error);
        self.remaining = 0;
        Poll::Ready(Some(Err(io)))
    }
}

impl Stream for ChunkBody {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(mut bytes))) => {
                if bytes.len() as u64 > self.remaining {
                    let keep = usize::try_from(self.remaining).unwrap_or(usize::MAX);
                    bytes.truncate(keep);
                }
                let n = bytes.len() as u64;
                self.remaining -= n;
                // The receiver lives as long as the push; a closed one only
                // means nobody is counting any more.
                let _ = self.sent.send(n);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(error))) => self.fail(error),
            Poll::Ready(None) => {
                let remaining = self.remaining;
                self.fail(TransportError::new(
                    ErrorKind::DataLoss,
                    format!(
                        "the blob being pushed ended {remaining} bytes early in distd's store; \
                         verify the store (distctl verify) and push again"
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    #[test]
    fn locations_resolve_against_the_request() {
        let post = "http://127.0.0.1:5000/v2/a/b/blobs/uploads/";
        assert_eq!(
            resolve_location(post, "/v2/a/b/blobs/uploads/u1?_state=x%3D%3D").unwrap(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1?_state=x%3D%3D"
        );
        assert_eq!(
            resolve_location(post, "https://other:443/up/u2").unwrap(),
            "https://other/up/u2"
        );
        assert_eq!(
            resolve_location(post, "u3?x=1").unwrap(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u3?x=1"
        );
        assert!(resolve_location(post, " ").is_err());
        assert!(resolve_location("not a url", "/v2/").is_err());
    }

    #[test]
    fn the_digest_is_appended_to_the_query() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let hex = "ab".repeat(32);
        assert_eq!(
            with_digest("http://r/v2/a/blobs/uploads/u", &d).unwrap(),
            format!("http://r/v2/a/blobs/uploads/u?digest=sha256%3A{hex}")
        );
        assert_eq!(
            with_digest("http://r/v2/a/blobs/uploads/u?_state=A-b_c%3D%3D", &d).unwrap(),
            format!("http://r/v2/a/blobs/uploads/u?_state=A-b_c%3D%3D&digest=sha256%3A{hex}")
        );
        assert!(with_digest("/relative", &d).is_err());
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_held(None), Ok(Held::AtMostOne));
        assert_eq!(parse_held(Some("0-0")), Ok(Held::AtMostOne));
        assert_eq!(parse_held(Some("0-4")), Ok(Held::Bytes(5)));
        assert_eq!(parse_held(Some(" bytes=0-99 ")), Ok(Held::Bytes(100)));
        assert_eq!(parse_held(Some("bytes 0-1")), Ok(Held::Bytes(2)));
        for bad in [
            "",
            "5",
            "1-4",
            "0-x",
            "0--1",
            "a-b",
            "0-18446744073709551615",
        ] {
            assert!(parse_held(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(content_range(0, 5), "0-4");
        assert_eq!(content_range(5, 1), "5-5");
    }

    #[test]
    fn resume_trusts_the_registry_and_restarts_when_in_doubt() {
        assert_eq!(resume_at(Some("0-0"), 0, 10), Resume::At(0));
        assert_eq!(resume_at(None, 0, 10), Resume::At(0));
        assert_eq!(resume_at(Some("0-4"), 5, 10), Resume::At(5));
        // The registry holds less than distd was told: believe it.
        assert_eq!(resume_at(Some("0-2"), 5, 10), Resume::At(3));
        // Everything is there: only the closing PUT is left.
        assert_eq!(resume_at(Some("0-9"), 10, 10), Resume::At(10));
        assert!(matches!(resume_at(Some("0-0"), 5, 10), Resume::Restart(_)));
        assert!(matches!(resume_at(Some("0-10"), 5, 10), Resume::Restart(_)));
        assert!(matches!(resume_at(Some("3-9"), 5, 10), Resume::Restart(_)));
    }

    #[test]
    fn offsets_after_a_chunk() {
        assert_eq!(offset_after_chunk(Some("0-9"), 10), Ok(10));
        assert_eq!(offset_after_chunk(None, 10), Ok(10));
        assert_eq!(offset_after_chunk(Some("0-0"), 1), Ok(1));
        assert_eq!(offset_after_chunk(Some("0-4"), 10), Ok(5));
        assert!(offset_after_chunk(Some("0-0"), 10).is_err());
        assert!(offset_after_chunk(Some("0-10"), 10).is_err());
        assert!(offset_after_chunk(Some("junk"), 10).is_err());
    }

    fn pieces(data: &[u8], size: usize) -> ByteStream {
        let chunks: Vec<Result<Bytes, TransportError>> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(tokio_stream::iter(chunks))
    }

    #[tokio::test]
    async fn chunk_bodies_stop_at_their_length_and_count_what_they_yield() {
        let data: Vec<u8> = (0u8..100).collect();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let failure = SourceFailure::default();
        let mut body = ChunkBody::new(pieces(&data, 30), 45, tx, failure.clone());
        let mut out = Vec::new();
        while let Some(piece) = body.next().await {
            out.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(out, &data[..45]);
        let mut counted = 0;
        while let Ok(n) = rx.try_recv() {
            counted += n;
        }
        assert_eq!(counted, 45);
        assert!(take_failure(&failure).is_none());
    }

    #[tokio::test]
    async fn short_or_failing_sources_fail_the_body_and_say_why() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let failure = SourceFailure::default();
        let mut body = ChunkBody::new(pieces(&[1, 2, 3], 2), 10, tx.clone(), failure.clone());
        assert!(body.next().await.unwrap().is_ok());
        assert!(body.next().await.unwrap().is_ok());
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
        let e = take_failure(&failure).unwrap();
        assert_eq!(e.kind, ErrorKind::DataLoss);
        assert!(e.message.contains("7 bytes early"), "{}", e.message);

        let broken: ByteStream = Box::pin(tokio_stream::iter(vec![Err(TransportError::new(
            ErrorKind::Internal,
            "disk on fire",
        ))]));
        let mut body = ChunkBody::new(broken, 10, tx, failure.clone());
        assert!(body.next().await.unwrap().is_err());
        assert_eq!(take_failure(&failure).unwrap().message, "disk on fire");
    }
}
