//! Framing tests: every message at any split of the stream.

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
        let seen: Vec<(&str, &str)> = seen.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
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

/// Feeds `data` in pieces of `step` bytes; returns per request its
/// method, framing, body bytes as fed (framing included) and payload.
fn requests(data: &[u8], step: usize) -> Vec<(String, Framing, Vec<u8>, u64, bool)> {
    let mut framer = RequestFramer::default();
    let mut out: Vec<(String, Framing, Vec<u8>, u64, bool)> = Vec::new();
    for chunk in data.chunks(step) {
        for part in framer.feed(chunk) {
            match part {
                Part::Head(head) => {
                    assert!(head.bytes.ends_with(b"\r\n\r\n"));
                    out.push((head.method, head.framing, Vec::new(), 0, false));
                }
                Part::Body { range, payload } => {
                    let current = out.last_mut().expect("a body after a head");
                    assert!(!current.4, "body after the end");
                    current.2.extend_from_slice(&chunk[range]);
                    current.3 += payload;
                }
                Part::End => out.last_mut().expect("an end after a head").4 = true,
                Part::Opaque(range) => panic!("{range:?} is HTTP"),
            }
        }
    }
    out
}

#[test]
fn request_bodies_by_length_or_chunks_are_framed_at_any_split() {
    let chunked_body = b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nT: 1\r\n\r\n";
    let mut stream = Vec::new();
    stream.extend_from_slice(
        b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\ncontent-length: 6\r\n\r\nabcdef",
    );
    stream.extend_from_slice(
        b"PUT /v2/a/blobs/uploads/u?digest=x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    stream.extend_from_slice(chunked_body);
    stream.extend_from_slice(b"GET /v2/ HTTP/1.1\r\n\r\n");
    stream.extend_from_slice(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    for step in [1, 2, 5, 13, stream.len()] {
        let got = requests(&stream, step);
        let want = vec![
            (
                "PATCH".to_owned(),
                Framing::Length(6),
                b"abcdef".to_vec(),
                6,
                true,
            ),
            (
                "PUT".to_owned(),
                Framing::Chunked,
                chunked_body.to_vec(),
                9,
                true,
            ),
            ("GET".to_owned(), Framing::Length(0), Vec::new(), 0, true),
            (
                "PUT".to_owned(),
                Framing::Chunked,
                b"0\r\n\r\n".to_vec(),
                0,
                true,
            ),
        ];
        assert_eq!(got, want, "step {step}");
    }
}

#[test]
fn a_connection_that_does_not_start_with_a_request_is_opaque() {
    let tls = [0x16u8, 3, 1, 0, 0xa5, b'G', b'E', b'T', b' '];
    let mut framer = RequestFramer::default();
    assert_eq!(framer.feed(&tls[..3]), vec![Part::Opaque(0..3)]);
    assert_eq!(framer.feed(&tls[3..]), vec![Part::Opaque(0..6)]);
}
