//! Just enough HTTP/1.1 framing for the proxy: requests (heads, and bodies
//! by `Content-Length` or chunked encoding), and response heads and bodies
//! by `Content-Length`, chunked encoding, or up to the connection's end,
//! with HEAD, 1xx, 204 and 304 answers bodiless.

use std::ops::Range;

/// A message head longer than this is not HTTP we understand.
const MAX_HEAD: usize = 64 * 1024;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `Content-Length` bytes (0 when the head has neither header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestHead {
    /// `GET`, `PATCH`, ….
    pub(super) method: String,
    /// The request target.
    pub(super) path: String,
    /// The head's bytes, up to and including the blank line.
    pub(super) bytes: Vec<u8>,
    /// How its body is delimited.
    pub(super) framing: Framing,
    /// The value of its `Range` header, if any.
    pub(super) range: Option<String>,
}

/// A part of the bytes fed to a [`RequestFramer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    /// A request head ended (its bytes are in the head: the framer keeps a
    /// head's bytes until it is complete).
    Head(RequestHead),
    /// These bytes of the fed buffer belong to the current request's body,
    /// chunk framing included; `payload` of them are body bytes proper.
    Body { range: Range<usize>, payload: u64 },
    /// The current request (body included) ended.
    End,
    /// These bytes of the fed buffer are not HTTP (e.g. a TLS handshake,
    /// which the registry answers with a 400 that tells distd to talk plain
    /// HTTP): nor is anything after them on the connection.
    Opaque(Range<usize>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RequestPhase {
    #[default]
    Head,
    Length {
        left: u64,
    },
    Chunked,
    /// A chunked body we could not parse: the rest of the connection.
    UntilClose,
    /// Not HTTP: the rest of the connection.
    Opaque,
}

/// Splits a client's byte stream into request heads and bodies.
#[derive(Default)]
pub(super) struct RequestFramer {
    phase: RequestPhase,
    head: Vec<u8>,
    chunked: Chunked,
}

impl RequestFramer {
    /// Feeds bytes; returns the parts they hold, in order.
    pub(super) fn feed(&mut self, data: &[u8]) -> Vec<Part> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            match self.phase {
                RequestPhase::Head if self.head.is_empty() && !starts_request(data[i]) => {
                    self.phase = RequestPhase::Opaque;
                }
                RequestPhase::Opaque => {
                    out.push(Part::Opaque(i..data.len()));
                    i = data.len();
                }
                RequestPhase::Head => {
                    self.head.push(data[i]);
                    i += 1;
                    if self.head.ends_with(b"\r\n\r\n") {
                        let head = self.end_head();
                        out.push(Part::Head(head));
                        if self.phase == RequestPhase::Head {
                            out.push(Part::End);
                        }
                    } else if self.head.len() > MAX_HEAD {
                        self.head.clear();
                    }
                }
                RequestPhase::Length { left } => {
                    let take =
                        usize::try_from(left).map_or(data.len() - i, |l| l.min(data.len() - i));
                    out.push(Part::Body {
                        range: i..i + take,
                        payload: take as u64,
                    });
                    i += take;
                    let left = left - take as u64;
                    if left == 0 {
                        out.push(Part::End);
                        self.phase = RequestPhase::Head;
                    } else {
                        self.phase = RequestPhase::Length { left };
                    }
                }
                RequestPhase::Chunked => {
                    let start = i;
                    let mut payload = 0;
                    while i < data.len() && !self.chunked.ended() {
                        if let Some(range) = self.chunked.step(data, &mut i) {
                            payload += range.len() as u64;
                        }
                    }
                    out.push(Part::Body {
                        range: start..i,
                        payload,
                    });
                    match self.chunked.phase {
                        ChunkPhase::Done => {
                            out.push(Part::End);
                            self.phase = RequestPhase::Head;
                        }
                        ChunkPhase::Bad => self.phase = RequestPhase::UntilClose,
                        _ => {}
                    }
                }
                RequestPhase::UntilClose => {
                    out.push(Part::Body {
                        range: i..data.len(),
                        payload: (data.len() - i) as u64,
                    });
                    i = data.len();
                }
            }
        }
        out
    }

    /// Parses the head being read; sets the body's phase.
    fn end_head(&mut self) -> RequestHead {
        let bytes = std::mem::take(&mut self.head);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut words = text.split_ascii_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default().to_owned();
        let chunked = header(&text, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let framing = if chunked {
            Framing::Chunked
        } else {
            Framing::Length(
                header(&text, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )
        };
        self.phase = match framing {
            Framing::Length(0) => RequestPhase::Head,
            Framing::Length(left) => RequestPhase::Length { left },
            Framing::Chunked => {
                self.chunked = Chunked::default();
                RequestPhase::Chunked
            }
        };
        let range = header(&text, "range").map(str::to_owned);
        RequestHead {
            method,
            path,
            bytes,
            framing,
            range,
        }
    }
}

/// Whether `byte` may start a request: a method's first letter, or the CRLF
/// a client may send between requests.
fn starts_request(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte == b'\r' || byte == b'\n'
}

/// Splits a client's byte stream into requests: yields (method, target) per
/// request head, skipping bodies (by `Content-Length` or chunked).
#[cfg(test)]
#[derive(Default)]
pub(super) struct RequestParser {
    framer: RequestFramer,
}

#[cfg(test)]
impl RequestParser {
    /// Feeds bytes; returns the requests whose heads ended in them.
    pub(super) fn feed(&mut self, data: &[u8]) -> Vec<(String, String)> {
        self.framer
            .feed(data)
            .into_iter()
            .filter_map(|part| match part {
                Part::Head(head) => Some((head.method, head.path)),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    /// Reading a chunk-size line.
    #[default]
    Size,
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    /// The last chunk and trailers were read.
    Done,
    /// A chunk-size line that is not one.
    Bad,
}

/// Decodes one chunked body (RFC 9112 §7.1) fed in pieces.
#[derive(Default)]
struct Chunked {
    phase: ChunkPhase,
    /// The chunk-size line, chunk end or trailers being read.
    line: Vec<u8>,
}

impl Chunked {
    /// Whether the body ended (well or badly): `step` takes no more bytes.
    fn ended(&self) -> bool {
        matches!(self.phase, ChunkPhase::Done | ChunkPhase::Bad)
    }

    /// Consumes bytes of `data` from `*i` (at least one, unless ended);
    /// returns the range of chunk data among them, if any.
    fn step(&mut self, data: &[u8], i: &mut usize) -> Option<Range<usize>> {
        match self.phase {
            ChunkPhase::Data { left } => {
                let take =
                    usize::try_from(left).map_or(data.len() - *i, |l| l.min(data.len() - *i));
                let range = *i..*i + take;
                *i += take;
                let left = left - take as u64;
                self.phase = if left == 0 {
                    ChunkPhase::DataEnd
                } else {
                    ChunkPhase::Data { left }
                };
                return Some(range);
            }
            ChunkPhase::Done | ChunkPhase::Bad => return None,
            ChunkPhase::Size | ChunkPhase::DataEnd | ChunkPhase::Trailers => {}
        }
        self.line.push(data[*i]);
        *i += 1;
        match self.phase {
            ChunkPhase::Size if self.line.ends_with(b"\r\n") => {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                let size = line.split(';').next().unwrap_or_default().trim();
                self.phase = match u64::from_str_radix(size, 16) {
                    Ok(0) => ChunkPhase::Trailers,
                    Ok(left) => ChunkPhase::Data { left },
                    Err(_) => ChunkPhase::Bad,
                };
            }
            ChunkPhase::Size if self.line.len() > MAX_HEAD => self.phase = ChunkPhase::Bad,
            ChunkPhase::DataEnd if self.line.len() == 2 => {
                self.line.clear();
                self.phase = ChunkPhase::Size;
            }
            ChunkPhase::Trailers if self.line == b"\r\n" || self.line.ends_with(b"\r\n\r\n") => {
                self.line.clear();
                self.phase = ChunkPhase::Done;
            }
            ChunkPhase::Trailers if self.line.len() > MAX_HEAD => self.phase = ChunkPhase::Bad,
            _ => {}
        }
        None
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
    Chunked,
    UntilClose,
}

/// Splits a server's byte stream into response heads and bodies.
#[derive(Default)]
pub(super) struct ResponseFramer {
    phase: Phase,
    /// The head being read.
    line: Vec<u8>,
    /// The chunked body being read.
    chunked: Chunked,
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
                Phase::Body { left } => {
                    let take =
                        usize::try_from(left).map_or(data.len() - i, |l| l.min(data.len() - i));
                    out.push(Piece::Body {
                        offset: self.offset,
                        range: i..i + take,
                    });
                    self.offset += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.phase = if left == 0 {
                        Phase::Head
                    } else {
                        Phase::Body { left }
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
                Phase::Chunked => {
                    if let Some(range) = self.chunked.step(data, &mut i) {
                        let len = range.len() as u64;
                        out.push(Piece::Body {
                            offset: self.offset,
                            range,
                        });
                        self.offset += len;
                    }
                    match self.chunked.phase {
                        ChunkPhase::Done => self.phase = Phase::Head,
                        ChunkPhase::Bad => self.phase = Phase::UntilClose,
                        _ => {}
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
            (false, true, _) => {
                self.chunked = Chunked::default();
                (Phase::Chunked, None)
            }
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
mod tests;
