//! A fault-injecting TCP proxy between distd and a registry.
//!
//! [`FaultProxy`] listens on a free loopback port and pipes every connection
//! to the registry, understanding just enough HTTP/1.1 (request heads,
//! `Content-Length` and chunked response bodies, bodiless HEAD/1xx/204/304
//! answers) to log each request with its answer and to damage traffic as its
//! [`Fault`] says: cut connections, flip a body byte, stall, or refuse.
//! Being on loopback, distd talks plain HTTP to it. Plain std threads: one
//! accepting, two per connection.

use std::collections::{HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use self::http::{Piece, RequestParser, ResponseFramer};

mod http;

/// How long a stalled connection sleeps between looks at the fault.
const STALL_POLL: Duration = Duration::from_millis(10);
/// Read buffer of each direction.
const BUFFER: usize = 64 * 1024;

/// What the proxy does to the traffic. Byte counts are of bytes sent
/// downstream (registry → distd), headers included.
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
}

/// One request the proxy saw, with what answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// `GET`, `HEAD`, ….
    pub method: String,
    /// The request target, e.g. `/v2/test/app/blobs/sha256:…`.
    pub path: String,
    /// The answer's status; `None` when no answer (head) went downstream.
    pub status: Option<u16>,
    /// Body bytes of the answer sent downstream.
    pub body_bytes: u64,
}

impl Exchange {
    /// Whether this requests the blob or manifest `digest` (in any repository).
    pub fn targets(&self, digest: &str) -> bool {
        ["/blobs/", "/manifests/"]
            .iter()
            .any(|kind| self.path.ends_with(&format!("{kind}{digest}")))
            && self.path.starts_with("/v2/")
    }

    /// Whether a body answered it (200 or 206).
    pub fn served(&self) -> bool {
        matches!(self.status, Some(200 | 206))
    }
}

/// The proxy's bookkeeping, under one lock.
struct State {
    fault: Fault,
    /// `bytes_down` when the fault was set.
    base: u64,
    /// Bytes sent (or about to be) downstream, all connections.
    bytes_down: u64,
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
            Fault::None | Fault::FlipBodyByte { .. } => u64::MAX,
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

    /// Replaces the fault; byte limits count from now. Stalled connections
    /// carry on; refused ones stay closed, but new ones are served.
    pub fn set_fault(&self, fault: Fault) {
        let mut state = self.shared.lock();
        state.fault = fault;
        state.base = state.bytes_down;
    }

    /// Bytes sent downstream so far, all connections, headers included.
    pub fn bytes_down(&self) -> u64 {
        self.shared.lock().bytes_down
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

    fn count(&self, predicate: impl Fn(&Exchange) -> bool) -> usize {
        self.shared
            .lock()
            .exchanges
            .iter()
            .filter(|e| predicate(e))
            .count()
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
            std::thread::spawn(move || pump_up(&shared, client, server, &queue));
        }
        let shared = Arc::clone(shared);
        std::thread::spawn(move || {
            pump_down(&shared, server2, client2, &queue);
            shared.lock().conns.remove(&id);
        });
    }
}

type Queue = Mutex<VecDeque<(usize, bool)>>;

/// distd → registry: logs each request before forwarding its bytes.
fn pump_up(shared: &Shared, mut client: TcpStream, mut server: TcpStream, queue: &Queue) {
    let mut parser = RequestParser::default();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => {
                server.shutdown(Shutdown::Write).ok();
                return;
            }
            Ok(n) => n,
        };
        for (method, path) in parser.feed(&buf[..n]) {
            let is_head = method == "HEAD";
            let mut state = shared.lock();
            state.exchanges.push(Exchange {
                method,
                path,
                status: None,
                body_bytes: 0,
            });
            let index = state.exchanges.len() - 1;
            queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((index, is_head));
        }
        if server.write_all(&buf[..n]).is_err() {
            client.shutdown(Shutdown::Both).ok();
            return;
        }
    }
}

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
mod tests {
    use super::*;

    #[test]
    fn exchanges_match_blob_and_manifest_urls_of_any_repository() {
        let exchange = |path: &str| Exchange {
            method: "GET".into(),
            path: path.into(),
            status: Some(200),
            body_bytes: 1,
        };
        assert!(exchange("/v2/test/app/blobs/sha256:ab").targets("sha256:ab"));
        assert!(exchange("/v2/x/y/z/manifests/sha256:ab").targets("sha256:ab"));
        assert!(!exchange("/v2/test/app/blobs/sha256:abc").targets("sha256:ab"));
        assert!(!exchange("/v2/test/app/tags/sha256:ab").targets("sha256:ab"));
    }

    /// A tiny HTTP server answering each request on one connection with
    /// `body`, for the proxy's own tests.
    fn serve(body: Vec<u8>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut parser = RequestParser::default();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        for _ in parser.feed(&buf[..n]) {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            if conn.write_all(head.as_bytes()).is_err()
                                || conn.write_all(&body).is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        port
    }

    /// GETs `path` through the proxy on a fresh connection; returns what
    /// arrived before the connection ended.
    fn get(proxy: &FaultProxy, path: &str) -> Vec<u8> {
        let mut conn = TcpStream::connect(proxy.addr).unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        conn.read_to_end(&mut out).ok();
        out
    }

    #[test]
    fn faults_flip_cut_refuse_and_stall() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let proxy = FaultProxy::start(serve(body.clone()), Fault::FlipBodyByte { min_body: 100 });
        let got = get(&proxy, "/v2/a/blobs/sha256:00");
        let flipped = &got[got.len() - body.len()..];
        let differ: Vec<usize> = (0..body.len()).filter(|&i| flipped[i] != body[i]).collect();
        assert_eq!(differ, vec![5_000]);
        assert_eq!(flipped[5_000], body[5_000] ^ 0xff);
        assert_eq!(proxy.blob_served("sha256:00"), 1);
        assert_eq!(proxy.body_bytes("sha256:00"), 10_000);

        proxy.set_fault(Fault::CutEvery(1_000));
        assert_eq!(get(&proxy, "/x").len(), 1_000);
        assert_eq!(get(&proxy, "/x").len(), 1_000, "new connections are served");

        proxy.set_fault(Fault::RefuseAfter(1_500));
        let before = proxy.bytes_down();
        assert_eq!(get(&proxy, "/x").len(), 1_500);
        assert_eq!(get(&proxy, "/x").len(), 0, "refused");
        assert_eq!(proxy.bytes_down() - before, 1_500);

        proxy.set_fault(Fault::StallAfter(500));
        let before = proxy.bytes_down();
        std::thread::scope(|scope| {
            let stalled = scope.spawn(|| get(&proxy, "/x"));
            crate::poll_until(Duration::from_secs(10), "500 bytes downstream", || {
                (proxy.bytes_down() - before == 500).then_some(())
            });
            assert!(!stalled.is_finished(), "a stalled GET completed");
            proxy.set_fault(Fault::None);
            assert!(stalled.join().unwrap().ends_with(&body));
        });
        assert_eq!(proxy.blob_gets("sha256:00"), 1);
    }
}
