//! Just enough HTTP/1.1 framing for the proxy: request heads (bodies by
//! `Content-Length` skipped), and response heads and bodies by
//! `Content-Length`, chunked encoding, or up to the connection's end,
//! with HEAD, 1xx, 204 and 304 answers bodiless.

use std::ops::Range;

/// A message head longer than this is not HTTP we understand.
const MAX_HEAD: usize = 64 * 1024;

/// Splits a client's byte stream into requests: yields (method, target) per
/// request head; skips `Content-Length` bodies (chunked requests are not
/// understood: distd sends none).
#[derive(Default)]
pub(super) struct RequestParser {
    head: Vec<u8>,
    body_left: u64,
}

impl RequestParser {
    /// Feeds bytes; returns the requests whose heads ended in them.
    pub(super) fn feed(&mut self, mut data: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.body_left > 0 {
                let skip =
                    usize::try_from(self.body_left).map_or(data.len(), |l| l.min(data.len()));
                self.body_left -= skip as u64;
                data = &data[skip..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if self.head.ends_with(b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.head).into_owned();
                self.head.clear();
                let mut words = head.split_ascii_whitespace();
                let method = words.next().unwrap_or_default().to_owned();
                let path = words.next().unwrap_or_default().to_owned();
                self.body_left = header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                out.push((method, path));
            } else if self.head.len() > MAX_HEAD {
                self.head.clear();
            }
        }
        out
    }
}

/// A part of the bytes fed to a [`ResponseFramer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    /// A final (non-1xx) response head ended; `body_len` is `None` when
    /// the body is chunked or runs to the connection's end.
    Head { status: u16, body_len: Option<u64> },
    /// These bytes of the fed buffer are body bytes from `offset` on
    /// (chunk framing excluded).
    Body { offset: u64, range: Range<usize> },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Head,
    Body {
        left: u64,
    },
    ChunkSize,
    ChunkData {
        left: u64,
    },
    ChunkEnd,
    Trailers,
    UntilClose,
}

/// Splits a server's byte stream into response heads and bodies.
#[derive(Default)]
pub(super) struct ResponseFramer {
    phase: Phase,
    /// The head, chunk-size line or trailers being read.
    line: Vec<u8>,
    /// Body bytes of the current response so far.
    offset: u64,
}

impl ResponseFramer {
    /// Feeds bytes. `is_head_request` is called once per final response, in
    /// order, and says whether it answers a HEAD (no body whatever the
    /// headers say).
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        is_head_request: &mut dyn FnMut() -> bool,
    ) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            match self.phase {
                Phase::Head => {
                    self.line.push(data[i]);
                    i += 1;
                    if self.line.ends_with(b"\r\n\r\n") {
                        if let Some(piece) = self.end_head(is_head_request) {
                            out.push(piece);
                        }
                    } else if self.line.len() > MAX_HEAD {
                        self.phase = Phase::UntilClose;
                    }
                }
                Phase::Body { left } | Phase::ChunkData { left } => {
                    let take =
                        usize::try_from(left).map_or(data.len() - i, |l| l.min(data.len() - i));
                    out.push(Piece::Body {
                        offset: self.offset,
                        range: i..i + take,
                    });
                    self.offset += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.phase = match (self.phase, left) {
                        (Phase::Body { .. }, 0) => Phase::Head,
                        (Phase::Body { .. }, left) => Phase::Body { left },
                        (_, 0) => Phase::ChunkEnd,
                        (_, left) => Phase::ChunkData { left },
                    };
                }
                Phase::UntilClose => {
                    out.push(Piece::Body {
                        offset: self.offset,
                        range: i..data.len(),
                    });
                    self.offset += (data.len() - i) as u64;
                    i = data.len();
                }
                Phase::ChunkSize => {
                    self.line.push(data[i]);
                    i += 1;
                    if self.line.ends_with(b"\r\n") {
                        let line = String::from_utf8_lossy(&self.line).into_owned();
                        self.line.clear();
                        let size = line.split(';').next().unwrap_or_default().trim();
                        self.phase = match u64::from_str_radix(size, 16) {
                            Ok(0) => Phase::Trailers,
                            Ok(left) => Phase::ChunkData { left },
                            Err(_) => Phase::UntilClose,
                        };
                    }
                }
                Phase::ChunkEnd => {
                    self.line.push(data[i]);
                    i += 1;
                    if self.line.len() == 2 {
                        self.line.clear();
                        self.phase = Phase::ChunkSize;
                    }
                }
                Phase::Trailers => {
                    self.line.push(data[i]);
                    i += 1;
                    if self.line == b"\r\n" || self.line.ends_with(b"\r\n\r\n") {
                        self.line.clear();
                        self.phase = Phase::Head;
                    }
                }
            }
        }
        out
    }

    /// Parses the head in `line`; sets the body's phase.
    fn end_head(&mut self, is_head_request: &mut dyn FnMut() -> bool) -> Option<Piece> {
        let head = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        self.offset = 0;
        let status: u16 = head
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 101 {
            self.phase = Phase::UntilClose;
            return None;
        }
        if (100..200).contains(&status) {
            return None;
        }
        let bodiless = is_head_request() || status == 204 || status == 304;
        let chunked = header(&head, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = header(&head, "content-length").and_then(|v| v.parse::<u64>().ok());
        let (phase, body_len) = match (bodiless, chunked, length) {
            (true, _, _) | (false, false, Some(0)) => (Phase::Head, Some(0)),
            (false, true, _) => (Phase::ChunkSize, None),
            (false, false, Some(left)) => (Phase::Body { left }, Some(left)),
            (false, false, None) => (Phase::UntilClose, None),
        };
        self.phase = phase;
        Some(Piece::Head { status, body_len })
    }
}

/// The value of the first header `name` (lower case) in `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in pieces of `step` bytes; returns heads and the body
    /// bytes per response, reassembled from the pieces' ranges.
    fn frame(data: &[u8], step: usize, heads: &[bool]) -> (Vec<Piece>, Vec<Vec<u8>>) {
        let mut framer = ResponseFramer::default();
        let mut heads = heads.iter().copied();
        let mut out = Vec::new();
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for chunk in data.chunks(step) {
            for piece in framer.feed(chunk, &mut || heads.next().unwrap_or(false)) {
                match &piece {
                    Piece::Head { .. } => {
                        bodies.push(Vec::new());
                        out.push(piece);
                    }
                    Piece::Body { offset, range } => {
                        let body = bodies.last_mut().expect("a body after a head");
                        assert_eq!(*offset as usize, body.len());
                        body.extend_from_slice(&chunk[range.clone()]);
                    }
                }
            }
        }
        (out, bodies)
    }

    fn head(status: u16, body_len: Option<u64>) -> Piece {
        Piece::Head { status, body_len }
    }

    #[test]
    fn responses_on_one_connection_are_framed_at_any_split() {
        let stream = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
            HTTP/1.1 200 OK\r\nContent-Length: 9\r\nDocker-Content-Digest: x\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 206 Partial Content\r\ncontent-length: 3\r\n\r\nabc\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n\
            HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n\
            HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}\
            HTTP/1.1 200 OK\r\n\r\nto the end";
        // The second response answers a HEAD: its Content-Length has no body.
        let heads = [false, true, false, false, false, false, false, false];
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let (pieces, bodies) = frame(stream, step, &heads);
            assert_eq!(
                pieces,
                vec![
                    head(200, Some(5)),
                    head(200, Some(0)),
                    head(204, Some(0)),
                    head(206, Some(3)),
                    head(200, None),
                    head(304, Some(0)),
                    head(404, Some(2)),
                    head(200, None),
                ],
                "step {step}"
            );
            let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            assert_eq!(
                bodies,
                vec![
                    &b"hello"[..],
                    b"",
                    b"",
                    b"abc",
                    b"wikipedia",
                    b"",
                    b"{}",
                    b"to the end"
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn requests_are_logged_and_their_bodies_skipped() {
        let stream = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\
            PUT /v2/a/blobs/uploads/1 HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET \
            HEAD /v2/a/manifests/v1 HTTP/1.1\r\n\r\n";
        for step in [1, 5, stream.len()] {
            let mut parser = RequestParser::default();
            let seen: Vec<(String, String)> =
                stream.chunks(step).flat_map(|c| parser.feed(c)).collect();
            let seen: Vec<(&str, &str)> =
                seen.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
            assert_eq!(
                seen,
                vec![
                    ("GET", "/v2/"),
                    ("PUT", "/v2/a/blobs/uploads/1"),
                    ("HEAD", "/v2/a/manifests/v1")
                ],
                "step {step}"
            );
        }
    }
}
