//! distd → registry: each request is logged, then forwarded, answered by
//! the proxy itself, held, or cut short, as the [`Fault`] says. Bodies are
//! streamed as they arrive.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;

use super::http::{Framing, Part, RequestFramer, RequestHead};
use super::{BUFFER, Exchange, Fault, Queue, STALL_POLL, Shared};

/// The status line of [`Fault::RejectBodiesOver`]'s answers.
const TOO_LARGE: &str = "413 Payload Too Large";
/// Their body.
const TOO_LARGE_BODY: &[u8] = b"request body too large\n";

/// What happens to the bytes of the request being read.
enum Current {
    /// Forwarded upstream; the request's exchange, if any.
    Forward(Option<usize>),
    /// A chunked request kept back until its size is known: its exchange,
    /// head, the raw bytes read so far and their payload.
    Buffer {
        exchange: usize,
        head: RequestHead,
        raw: Vec<u8>,
        payload: u64,
    },
    /// Answered by the proxy: read and dropped; the connection closes at
    /// its end.
    Drop,
}

/// Whether the connection goes on.
enum Flow {
    Go,
    Close,
}

/// One connection's upstream direction.
struct Up<'a> {
    shared: &'a Shared,
    client: TcpStream,
    server: TcpStream,
    queue: &'a Queue,
    /// Bytes this connection forwarded upstream.
    sent: u64,
    current: Current,
}

/// Pumps distd's requests to the registry until either side closes or the
/// fault closes the connection.
pub(super) fn pump_up(shared: &Shared, client: TcpStream, server: TcpStream, queue: &Queue) {
    let mut up = Up {
        shared,
        client,
        server,
        queue,
        sent: 0,
        current: Current::Forward(None),
    };
    let mut framer = RequestFramer::default();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match up.client.read(&mut buf) {
            Ok(0) | Err(_) => {
                up.server.shutdown(Shutdown::Write).ok();
                return;
            }
            Ok(n) => n,
        };
        for part in framer.feed(&buf[..n]) {
            let flow = match part {
                Part::Head(head) => up.head(head),
                Part::Body { range, payload } => up.body(&buf[range], payload),
                Part::End => up.end(),
                Part::Opaque(range) => up.send_up(&buf[range]).1,
            };
            if let Flow::Close = flow {
                up.client.shutdown(Shutdown::Both).ok();
                up.server.shutdown(Shutdown::Both).ok();
                return;
            }
        }
    }
}

impl Up<'_> {
    /// Logs a request whose head just arrived and decides about it.
    fn head(&mut self, head: RequestHead) -> Flow {
        let (fault, exchange) = {
            let mut state = self.shared.lock();
            state.exchanges.push(Exchange {
                method: head.method.clone(),
                path: head.path.clone(),
                range: head.range.clone(),
                status: None,
                body_bytes: 0,
                request_bytes: 0,
            });
            (state.fault, state.exchanges.len() - 1)
        };
        match (fault, head.framing) {
            (Fault::Fault500OnPatch, _) if head.method == "PATCH" => self.answer(
                exchange,
                "500 Internal Server Error",
                br#"{"errors":[{"code":"UNKNOWN","message":"injected by the test proxy"}]}"#,
            ),
            (Fault::RejectBodiesOver(limit), Framing::Length(len)) if len > limit => {
                self.answer(exchange, TOO_LARGE, TOO_LARGE_BODY)
            }
            (Fault::RejectBodiesOver(_), Framing::Chunked) => {
                self.current = Current::Buffer {
                    exchange,
                    head,
                    raw: Vec::new(),
                    payload: 0,
                };
                Flow::Go
            }
            (Fault::HoldPatchesAfter(_), _) if head.method == "PATCH" => {
                if !self.hold_patch(fault) {
                    return Flow::Close;
                }
                self.forward(exchange, &head)
            }
            _ => self.forward(exchange, &head),
        }
    }

    /// Body bytes of the current request.
    fn body(&mut self, raw: &[u8], payload: u64) -> Flow {
        match &mut self.current {
            Current::Forward(exchange) => {
                let exchange = *exchange;
                let (sent, flow) = self.send_up(raw);
                if let Some(index) = exchange {
                    let counted = if sent == raw.len() {
                        payload
                    } else {
                        payload.min(sent as u64)
                    };
                    self.shared.lock().exchanges[index].request_bytes += counted;
                }
                flow
            }
            Current::Buffer {
                exchange,
                raw: kept,
                payload: total,
                ..
            } => {
                kept.extend_from_slice(raw);
                *total += payload;
                let limit = match self.shared.lock().fault {
                    Fault::RejectBodiesOver(limit) => limit,
                    _ => u64::MAX,
                };
                if *total > limit {
                    let exchange = *exchange;
                    return self.answer(exchange, TOO_LARGE, TOO_LARGE_BODY);
                }
                Flow::Go
            }
            Current::Drop => Flow::Go,
        }
    }

    /// The current request ended.
    fn end(&mut self) -> Flow {
        match std::mem::replace(&mut self.current, Current::Forward(None)) {
            Current::Forward(_) => Flow::Go,
            Current::Buffer {
                exchange,
                head,
                raw,
                payload,
            } => {
                if let Flow::Close = self.forward(exchange, &head) {
                    return Flow::Close;
                }
                let (sent, flow) = self.send_up(&raw);
                if sent == raw.len() {
                    self.shared.lock().exchanges[exchange].request_bytes = payload;
                }
                flow
            }
            Current::Drop => Flow::Close,
        }
    }

    /// Queues the request (logged as `exchange`) for its answer and sends
    /// its head.
    fn forward(&mut self, exchange: usize, head: &RequestHead) -> Flow {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((exchange, head.method == "HEAD"));
        self.current = Current::Forward(Some(exchange));
        self.send_up(&head.bytes).1
    }

    /// Answers the request (logged as `exchange`) itself, `status` being
    /// e.g. `413 Payload Too Large`, with `Connection: close`; its body is
    /// then read and dropped.
    fn answer(&mut self, exchange: usize, status: &str, body: &[u8]) -> Flow {
        let code = status
            .split(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        {
            let mut state = self.shared.lock();
            state.exchanges[exchange].status = Some(code);
            state.exchanges[exchange].body_bytes = body.len() as u64;
        }
        self.current = Current::Drop;
        let content_type = if body.starts_with(b"{") {
            "application/json"
        } else {
            "text/plain"
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let written = self
            .client
            .write_all(response.as_bytes())
            .and_then(|()| self.client.write_all(body));
        if written.is_err() {
            return Flow::Close;
        }
        Flow::Go
    }

    /// Waits until a `PATCH` may go under [`Fault::HoldPatchesAfter`];
    /// false when the fault changed (or the proxy stopped) while it waited.
    fn hold_patch(&self, fault: Fault) -> bool {
        let Fault::HoldPatchesAfter(allowed) = fault else {
            return true;
        };
        loop {
            {
                let mut state = self.shared.lock();
                if state.fault != fault || self.shared.stopped.load(Ordering::SeqCst) {
                    return false;
                }
                if state.patches_since_fault < allowed {
                    state.patches_since_fault += 1;
                    return true;
                }
            }
            std::thread::sleep(STALL_POLL);
        }
    }

    /// Forwards what [`Fault::CutUploadEvery`] lets this connection carry of
    /// `bytes`; returns how many went, and whether to go on.
    fn send_up(&mut self, bytes: &[u8]) -> (usize, Flow) {
        let cut_at = match self.shared.lock().fault {
            Fault::CutUploadEvery(n) => Some(n),
            _ => None,
        };
        let limit = cut_at.map_or(u64::MAX, |n| n.saturating_sub(self.sent));
        let k = usize::try_from(limit).map_or(bytes.len(), |l| l.min(bytes.len()));
        if self.server.write_all(&bytes[..k]).is_err() {
            return (0, Flow::Close);
        }
        self.sent += k as u64;
        self.shared.lock().bytes_up += k as u64;
        let cut = cut_at.is_some_and(|n| self.sent >= n);
        if k < bytes.len() || cut {
            return (k, Flow::Close);
        }
        (k, Flow::Go)
    }
}
