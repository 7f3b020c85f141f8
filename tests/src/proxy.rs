//! A fault-injecting TCP proxy between distd and a registry.
//!
//! [`FaultProxy`] listens on a free loopback port and pipes every connection
//! to the registry, understanding just enough HTTP/1.1 (request heads,
//! `Content-Length` and chunked bodies both ways, bodiless HEAD/1xx/204/304
//! answers) to log each request with its answer and to damage traffic as its
//! [`Fault`] says: downloads (cut connections, flip a body byte, stall,
//! refuse) and uploads (refuse large bodies with 413, cut connections after
//! so many bytes up, fail every `PATCH`, hold `PATCH`es). Request bodies are
//! streamed, never buffered whole (except a chunked one under
//! [`Fault::RejectBodiesOver`], up to its limit). A connection that does
//! not start with a request (a TLS handshake) is piped untouched. Being on
//! loopback, distd talks plain HTTP to it. Plain std threads: one
//! accepting, two per connection.

use std::collections::{HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use self::http::{Piece, ResponseFramer};

mod http;
mod up;

/// How long a stalled connection sleeps between looks at the fault.
const STALL_POLL: Duration = Duration::from_millis(10);
/// Read buffer of each direction.
const BUFFER: usize = 64 * 1024;

/// What the proxy does to the traffic. Byte counts are of bytes sent
/// downstream (registry → distd), headers included, unless they say
/// upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything untouched.
    None,
    /// Shut a connection down (both ways) once it has carried this many
    /// bytes downstream; new connections are accepted, so clients reconnect.
    CutEvery(u64),
    /// In every response whose body (by `Content-Length`) is at least
    /// `min_body` bytes, flip (xor 0xff) the byte in the middle of the body;
    /// headers and length stay intact: a transfer that lies.
    FlipBodyByte {
        /// Smallest body damaged.
        min_body: u64,
    },
    /// Once this many bytes went downstream since the fault was set, forward
    /// nothing more (connections stay open) until the fault changes.
    StallAfter(u64),
    /// Once this many bytes went downstream since the fault was set, shut
    /// every connection down and close new ones as soon as they are accepted,
    /// until the fault changes.
    RefuseAfter(u64),
    /// Answer a request whose body (its `Content-Length`, or the total of
    /// its chunks) exceeds this many bytes with `413 Payload Too Large` and
    /// `Connection: close`, without forwarding any of it; read the rest of
    /// its body, then close the connection. (Like nginx's
    /// `client_max_body_size`.)
    RejectBodiesOver(u64),
    /// Shut a connection down (both ways) once it has carried this many
    /// bytes upstream (distd → registry, heads included), even in the middle
    /// of a request body.
    CutUploadEvery(u64),
    /// Answer every `PATCH` with `500 Internal Server Error` and
    /// `Connection: close`, without forwarding it.
    Fault500OnPatch,
    /// Forward this many `PATCH` requests (counted from when the fault was
    /// set), then hold every further `PATCH` before its head goes upstream.
    /// When the fault changes, connections holding one are closed without
    /// forwarding it: the registry never sees part of a held request.
    HoldPatchesAfter(u64),
}

/// One request the proxy saw (logged when its head arrived), with what
/// answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// `GET`, `HEAD`, ….
    pub method: String,
    /// The request target, e.g. `/v2/test/app/blobs/sha256:…`.
    pub path: String,
    /// The request's `Range` header value (e.g. `bytes=1048576-`), if any.
    pub range: Option<String>,
    /// The answer's status (the proxy's own for a request it answered);
    /// `None` when no answer (head) went downstream: the request was held,
    /// cut, or is still under way.
    pub status: Option<u16>,
    /// Body bytes of the answer sent downstream.
    pub body_bytes: u64,
    /// Body bytes of the request forwarded upstream (chunk framing
    /// excluded); 0 for a request the proxy answered itself.
    pub request_bytes: u64,
}

impl Exchange {
    /// Whether this requests the blob or manifest `digest` (in any repository).
    pub fn targets(&self, digest: &str) -> bool {
        ["/blobs/", "/manifests/"]
            .iter()
            .any(|kind| self.path.ends_with(&format!("{kind}{digest}")))
            && self.path.starts_with("/v2/")
    }

    /// The first byte a `Range: bytes=N-…` header asks for, if the request
    /// has one of that form.
    pub fn range_start(&self) -> Option<u64> {
        let range = self.range.as_deref()?.trim();
        let (unit, spec) = range.split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return None;
        }
        let (start, _) = spec.split_once('-')?;
        start.trim().parse().ok()
    }

    /// Whether a body answered it (200 or 206).
    pub fn served(&self) -> bool {
        matches!(self.status, Some(200 | 206))
    }

    /// The upload session a request to `/v2/<name>/blobs/uploads/<id>…`
    /// is about: `<id>` (empty for the `POST` that opens one).
    pub fn upload_id(&self) -> Option<&str> {
        let (_, rest) = self.path.split_once("/blobs/uploads/")?;
        self.path.starts_with("/v2/").then_some(())?;
        Some(rest.split('?').next().unwrap_or_default())
    }

    /// Whether this sends blob bytes: a `PATCH` or `PUT` of an upload.
    pub fn is_upload(&self) -> bool {
        matches!(self.method.as_str(), "PATCH" | "PUT")
            && self.upload_id().is_some_and(|id| !id.is_empty())
    }

    /// Whether this asks for a cross-repository mount
    /// (`POST …/blobs/uploads/?mount=<digest>&from=<repository>`).
    pub fn is_mount(&self) -> bool {
        self.method == "POST" && self.upload_id().is_some() && self.query("mount").is_some()
    }

    /// The value of query parameter `name`, percent-decoded (`%3A` → `:`).
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

/// `text` with `%XX` escapes decoded (bytes that are not UTF-8 replaced).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The proxy's bookkeeping, under one lock.
struct State {
    fault: Fault,
    /// `bytes_down` when the fault was set.
    base: u64,
    /// Bytes sent (or about to be) downstream, all connections.
    bytes_down: u64,
    /// Bytes forwarded upstream, all connections.
    bytes_up: u64,
    /// `PATCH`es forwarded since the fault was set.
    patches_since_fault: u64,
    exchanges: Vec<Exchange>,
    next_conn: u64,
    /// Both sockets of every open connection, to shut them down from outside.
    conns: HashMap<u64, (TcpStream, TcpStream)>,
}

impl State {
    fn since_fault(&self) -> u64 {
        self.bytes_down - self.base
    }

    fn refusing(&self) -> bool {
        matches!(self.fault, Fault::RefuseAfter(n) if self.since_fault() >= n)
    }

    fn close_all(&mut self) {
        for (client, upstream) in self.conns.values() {
            client.shutdown(Shutdown::Both).ok();
            upstream.shutdown(Shutdown::Both).ok();
        }
    }
}

/// What a connection may do with its next bytes downstream.
enum Admit {
    /// Send this many (possibly fewer than it has); they are counted.
    Forward(usize),
    /// Send nothing now; look again later.
    Stall,
    /// Shut this connection down (every connection is, already, when the
    /// fault refuses).
    Close,
}

struct Shared {
    state: Mutex<State>,
    stopped: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides about `want` bytes of a connection that already sent
    /// `conn_sent`, and counts what it admits.
    fn admit(&self, conn_sent: u64, want: usize) -> Admit {
        let mut state = self.lock();
        let limit = match state.fault {
            Fault::CutEvery(n) if conn_sent >= n => return Admit::Close,
            Fault::CutEvery(n) => n - conn_sent,
            Fault::RefuseAfter(n) if state.since_fault() >= n => {
                state.close_all();
                return Admit::Close;
            }
            Fault::RefuseAfter(n) => n - state.since_fault(),
            Fault::StallAfter(n) if state.since_fault() >= n => return Admit::Stall,
            Fault::StallAfter(n) => n - state.since_fault(),
            Fault::None
            | Fault::FlipBodyByte { .. }
            | Fault::RejectBodiesOver(_)
            | Fault::CutUploadEvery(_)
            | Fault::Fault500OnPatch
            | Fault::HoldPatchesAfter(_) => u64::MAX,
        };
        let admitted = usize::try_from(limit).map_or(want, |limit| want.min(limit));
        state.bytes_down += admitted as u64;
        Admit::Forward(admitted)
    }
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to
    /// `127.0.0.1:upstream_port`, applying `fault`.
    pub fn start(upstream_port: u16, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault,
                base: 0,
                bytes_down: 0,
                bytes_up: 0,
                patches_since_fault: 0,
                exchanges: Vec::new(),
                next_conn: 0,
                conns: HashMap::new(),
            }),
            stopped: AtomicBool::new(false),
        });
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, upstream, &shared))
        };
        FaultProxy {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`, the registry part of references through the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Replaces the fault; byte and `PATCH` limits count from now. Stalled
    /// connections carry on; refused ones stay closed, but new ones are
    /// served; those holding a `PATCH` are closed.
    pub fn set_fault(&self, fault: Fault) {
        let mut state = self.shared.lock();
        state.fault = fault;
        state.base = state.bytes_down;
        state.patches_since_fault = 0;
    }

    /// Bytes sent downstream so far, all connections, headers included.
    pub fn bytes_down(&self) -> u64 {
        self.shared.lock().bytes_down
    }

    /// Bytes forwarded upstream so far (distd → registry), all connections,
    /// heads included.
    pub fn bytes_up(&self) -> u64 {
        self.shared.lock().bytes_up
    }

    /// Request body bytes forwarded upstream by blob uploads (`PATCH` and
    /// `PUT` of `/v2/<name>/blobs/uploads/<id>`), in every repository.
    pub fn upload_bytes(&self) -> u64 {
        let state = self.shared.lock();
        state
            .exchanges
            .iter()
            .filter(|e| e.is_upload())
            .map(|e| e.request_bytes)
            .sum()
    }

    /// Request body bytes forwarded upstream by the uploads of `digest`:
    /// every `PATCH` and `PUT` of the upload sessions whose closing `PUT`
    /// names it (`?digest=`), in any repository. Bytes of a session that was
    /// never closed are not counted (the proxy cannot tell their digest).
    pub fn upload_bytes_of(&self, digest: &str) -> u64 {
        let state = self.shared.lock();
        let sessions: Vec<&str> = state
            .exchanges
            .iter()
            .filter(|e| e.is_upload() && e.query("digest").as_deref() == Some(digest))
            .filter_map(Exchange::upload_id)
            .collect();
        state
            .exchanges
            .iter()
            .filter(|e| e.is_upload() && e.upload_id().is_some_and(|id| sessions.contains(&id)))
            .map(|e| e.request_bytes)
            .sum()
    }

    /// Requests seen so far for which `predicate` holds.
    pub fn count(&self, predicate: impl Fn(&Exchange) -> bool) -> usize {
        self.shared
            .lock()
            .exchanges
            .iter()
            .filter(|e| predicate(e))
            .count()
    }

    /// Every request seen so far, in the order their heads arrived.
    pub fn requests(&self) -> Vec<Exchange> {
        self.shared.lock().exchanges.clone()
    }

    /// GET requests of the blob or manifest `digest` (`sha256:…`) in any
    /// repository, however they were answered (or not).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.count(|e| e.method == "GET" && e.targets(digest))
    }

    /// GET requests of `digest` answered with a body (200 or 206).
    pub fn blob_served(&self, digest: &str) -> usize {
        self.count(|e| e.method == "GET" && e.targets(digest) && e.served())
    }

    /// Body bytes sent downstream in answers to requests of `digest`.
    pub fn body_bytes(&self, digest: &str) -> u64 {
        let state = self.shared.lock();
        state
            .exchanges
            .iter()
            .filter(|e| e.targets(digest))
            .map(|e| e.body_bytes)
            .sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.lock().close_all();
        // Wake the blocking accept.
        TcpStream::connect(self.addr).ok();
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().ok();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.lock().refusing() {
            client.shutdown(Shutdown::Both).ok();
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            client.shutdown(Shutdown::Both).ok();
            continue;
        };
        client.set_nodelay(true).ok();
        server.set_nodelay(true).ok();
        let (Ok(client2), Ok(server2), Ok(client3), Ok(server3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let id = {
            let mut state = shared.lock();
            let id = state.next_conn;
            state.next_conn += 1;
            state.conns.insert(id, (client3, server3));
            id
        };
        // Requests' exchange ids and whether they are HEADs, oldest first.
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        {
            let (shared, queue) = (Arc::clone(shared), Arc::clone(&queue));
            std::thread::spawn(move || up::pump_up(&shared, client, server, &queue));
        }
        let shared = Arc::clone(shared);
        std::thread::spawn(move || {
            pump_down(&shared, server2, client2, &queue);
            shared.lock().conns.remove(&id);
        });
    }
}

/// Per connection: the exchange index of each forwarded request and
/// whether it is a HEAD, oldest first, for the responses to match up.
type Queue = Mutex<VecDeque<(usize, bool)>>;

/// The response being forwarded on a connection.
struct Current {
    exchange: Option<usize>,
    /// Body offset of the byte to flip.
    flip_at: Option<u64>,
}

/// registry → distd: frames responses, applies the fault, forwards.
fn pump_down(shared: &Shared, mut server: TcpStream, mut client: TcpStream, queue: &Queue) {
    let mut framer = ResponseFramer::default();
    let mut buf = vec![0u8; BUFFER];
    let mut pending: Vec<u8> = Vec::new();
    let mut conn_sent = 0u64;
    let mut current = Current {
        exchange: None,
        flip_at: None,
    };
    loop {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let k = match shared.admit(conn_sent, pending.len()) {
            Admit::Close => break,
            Admit::Stall => {
                std::thread::sleep(STALL_POLL);
                continue;
            }
            Admit::Forward(k) => k,
        };
        if pending.is_empty() {
            match server.read(&mut buf) {
                Ok(0) | Err(_) => {
                    client.shutdown(Shutdown::Write).ok();
                    return;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        }
        let chunk = &mut pending[..k];
        let mut started = Vec::new();
        let pieces = framer.feed(chunk, &mut || {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            started.push(next.map(|(index, _)| index));
            next.is_some_and(|(_, is_head)| is_head)
        });
        let mut started = started.into_iter();
        for piece in pieces {
            apply(shared, &mut current, &mut started, piece, chunk);
        }
        if client.write_all(chunk).is_err() {
            break;
        }
        conn_sent += k as u64;
        pending.drain(..k);
    }
    client.shutdown(Shutdown::Both).ok();
    server.shutdown(Shutdown::Both).ok();
}

/// Records one framed piece of `chunk` and flips its byte if due.
fn apply(
    shared: &Shared,
    current: &mut Current,
    started: &mut impl Iterator<Item = Option<usize>>,
    piece: Piece,
    chunk: &mut [u8],
) {
    let mut state = shared.lock();
    match piece {
        Piece::Head { status, body_len } => {
            current.exchange = started.next().flatten();
            current.flip_at = match (state.fault, body_len) {
                (Fault::FlipBodyByte { min_body }, Some(len)) if len > 0 && len >= min_body => {
                    Some(len / 2)
                }
                _ => None,
            };
            if let Some(index) = current.exchange {
                state.exchanges[index].status = Some(status);
            }
        }
        Piece::Body { offset, range } => {
            let len = range.len() as u64;
            if let Some(at) = current.flip_at
                && (offset..offset + len).contains(&at)
            {
                chunk[range.start + (at - offset) as usize] ^= 0xff;
            }
            if let Some(index) = current.exchange {
                state.exchanges[index].body_bytes += len;
            }
        }
    }
}

#[cfg(test)]
mod tests;
