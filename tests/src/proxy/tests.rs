//! The proxy's own tests, against a tiny HTTP server.

use std::sync::atomic::AtomicU64;

use super::http::{Part, RequestFramer};
use super::*;

#[test]
fn exchanges_match_blob_and_manifest_urls_of_any_repository() {
    let exchange = |path: &str| Exchange {
        method: "GET".into(),
        path: path.into(),
        range: None,
        status: Some(200),
        body_bytes: 1,
        request_bytes: 0,
    };
    assert!(exchange("/v2/test/app/blobs/sha256:ab").targets("sha256:ab"));
    assert!(exchange("/v2/x/y/z/manifests/sha256:ab").targets("sha256:ab"));
    assert!(!exchange("/v2/test/app/blobs/sha256:abc").targets("sha256:ab"));
    assert!(!exchange("/v2/test/app/tags/sha256:ab").targets("sha256:ab"));
}

/// A tiny HTTP server answering each request on one connection with
/// `body`, for the proxy's own tests.
fn serve(body: Vec<u8>) -> u16 {
    serve_counting(body).0
}

/// Like [`serve`], answering each request once its body has arrived;
/// also returns the count of bytes it received.
fn serve_counting(body: Vec<u8>) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (body, counter) = (body.clone(), Arc::clone(&counter));
            std::thread::spawn(move || {
                let mut framer = RequestFramer::default();
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                    for part in framer.feed(&buf[..n]) {
                        if part != Part::End {
                            continue;
                        }
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
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
    (port, received)
}

/// Sends `request` through the proxy on a fresh connection; returns what
/// arrived before the connection ended.
fn send(proxy: &FaultProxy, request: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(proxy.addr).unwrap();
    // The proxy may close first (a cut): what it answered still counts.
    conn.write_all(request).ok();
    conn.shutdown(Shutdown::Write).ok();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).ok();
    out
}

/// A request with a `Content-Length` body of `len` bytes.
fn with_body(method: &str, path: &str, len: usize) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes();
    out.resize(out.len() + len, b'7');
    out
}

/// A request with a chunked body of chunks of these sizes.
fn chunked(method: &str, path: &str, chunks: &[usize]) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for &len in chunks {
        out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
        out.resize(out.len() + len, b'5');
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Status and request body bytes of every exchange from `from` on.
fn outcomes(proxy: &FaultProxy, from: usize) -> Vec<(Option<u16>, u64)> {
    proxy.requests()[from..]
        .iter()
        .map(|e| (e.status, e.request_bytes))
        .collect()
}

#[test]
fn exchanges_tell_uploads_mounts_and_their_queries() {
    let exchange = |method: &str, path: &str| Exchange {
        method: method.into(),
        path: path.into(),
        range: None,
        status: Some(202),
        body_bytes: 0,
        request_bytes: 0,
    };
    let put = exchange(
        "PUT",
        "/v2/a/b/blobs/uploads/u-1?_state=x%3D&digest=sha256%3Aab",
    );
    assert!(put.is_upload() && !put.is_mount());
    assert_eq!(put.upload_id(), Some("u-1"));
    assert_eq!(put.query("digest").as_deref(), Some("sha256:ab"));
    assert_eq!(put.query("_state").as_deref(), Some("x="));
    let mount = exchange("POST", "/v2/b/blobs/uploads/?mount=sha256%3Aab&from=a");
    assert!(mount.is_mount() && !mount.is_upload());
    assert_eq!(mount.query("from").as_deref(), Some("a"));
    assert!(!exchange("POST", "/v2/b/blobs/uploads/").is_mount());
    assert!(!exchange("PUT", "/v2/b/manifests/v1").is_upload());
}

#[test]
fn upload_faults_reject_fail_cut_and_hold() {
    let (port, received) = serve_counting(b"ok".to_vec());
    let proxy = FaultProxy::start(port, Fault::RejectBodiesOver(1_000));
    let wait_received = |bytes: u64| {
        crate::poll_until(Duration::from_secs(10), "the server's bytes", || {
            (received.load(Ordering::SeqCst) == bytes).then_some(())
        });
    };
    let fits = with_body("PUT", "/v2/a/blobs/uploads/u1?digest=sha256%3A01", 1_000);
    let chunks_fit = chunked("PATCH", "/v2/a/blobs/uploads/u2", &[600, 400]);
    assert!(send(&proxy, &fits).starts_with(b"HTTP/1.1 200 OK"));
    let refused = send(&proxy, &with_body("PATCH", "/v2/a/blobs/uploads/u2", 1_001));
    let refused = String::from_utf8_lossy(&refused);
    assert!(
        refused.starts_with("HTTP/1.1 413 Payload Too Large\r\n")
            && refused.contains("\r\nConnection: close\r\n"),
        "{refused}"
    );
    assert!(send(&proxy, &chunks_fit).starts_with(b"HTTP/1.1 200 OK"));
    let refused = send(
        &proxy,
        &chunked("PATCH", "/v2/a/blobs/uploads/u2", &[600, 401]),
    );
    assert!(refused.starts_with(b"HTTP/1.1 413 "));
    assert_eq!(
        outcomes(&proxy, 0),
        vec![
            (Some(200), 1_000),
            (Some(413), 0),
            (Some(200), 1_000),
            (Some(413), 0)
        ]
    );
    let forwarded = (fits.len() + chunks_fit.len()) as u64;
    assert_eq!(proxy.bytes_up(), forwarded);
    wait_received(forwarded);
    assert_eq!(proxy.upload_bytes(), 2_000);
    assert_eq!(proxy.upload_bytes_of("sha256:01"), 1_000);

    proxy.set_fault(Fault::Fault500OnPatch);
    let failed = send(&proxy, &with_body("PATCH", "/v2/a/blobs/uploads/u3", 10));
    assert!(failed.starts_with(b"HTTP/1.1 500 "));
    let put = with_body("PUT", "/v2/a/blobs/uploads/u3", 10);
    assert!(send(&proxy, &put).starts_with(b"HTTP/1.1 200 "));
    assert_eq!(outcomes(&proxy, 4), vec![(Some(500), 0), (Some(200), 10)]);
    let forwarded = forwarded + put.len() as u64;
    wait_received(forwarded);

    proxy.set_fault(Fault::CutUploadEvery(1_500));
    let cut = with_body("PUT", "/v2/a/blobs/uploads/u4", 4_000);
    assert!(send(&proxy, &cut).is_empty());
    assert_eq!(proxy.bytes_up(), forwarded + 1_500);
    wait_received(forwarded + 1_500);
    let head_len = (cut.len() - 4_000) as u64;
    assert_eq!(outcomes(&proxy, 6), vec![(None, 1_500 - head_len)]);
    let forwarded = forwarded + 1_500;

    proxy.set_fault(Fault::HoldPatchesAfter(1));
    let patch = with_body("PATCH", "/v2/a/blobs/uploads/u5", 100);
    assert!(send(&proxy, &patch).starts_with(b"HTTP/1.1 200 "));
    std::thread::scope(|scope| {
        let held = scope.spawn(|| send(&proxy, &patch));
        crate::poll_until(Duration::from_secs(10), "a second PATCH", || {
            (proxy.requests().len() == 9).then_some(())
        });
        assert!(!held.is_finished(), "a held PATCH was answered");
        proxy.set_fault(Fault::None);
        assert!(held.join().unwrap().is_empty(), "a held PATCH was answered");
    });
    assert_eq!(outcomes(&proxy, 7), vec![(Some(200), 100), (None, 0)]);
    assert_eq!(proxy.bytes_up(), forwarded + patch.len() as u64);
    wait_received(forwarded + patch.len() as u64);
}

/// GETs `path` through the proxy on a fresh connection; returns what
/// arrived before the connection ended (nothing when the proxy refused it,
/// maybe before the request could be written).
fn get(proxy: &FaultProxy, path: &str) -> Vec<u8> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    send(proxy, request.as_bytes())
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

#[test]
fn exchanges_record_the_range_header_of_requests() {
    let proxy = FaultProxy::start(serve(b"0123456789".to_vec()), Fault::None);
    let ranged = "GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\nrange:  bytes=1048576-\r\n\
                  Connection: close\r\n\r\n";
    assert!(send(&proxy, ranged.as_bytes()).starts_with(b"HTTP/1.1 200 OK"));
    assert!(get(&proxy, "/v2/a/blobs/sha256:00").starts_with(b"HTTP/1.1 200 OK"));
    // Two requests on one connection: each keeps its own header.
    let both = "GET /a HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\n\
                GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send(&proxy, both.as_bytes());
    crate::poll_until(Duration::from_secs(10), "four requests", || {
        (proxy.requests().len() == 4).then_some(())
    });
    let requests = proxy.requests();
    let ranges: Vec<Option<&str>> = requests.iter().map(|e| e.range.as_deref()).collect();
    assert_eq!(
        ranges,
        vec![Some("bytes=1048576-"), None, Some("bytes=5-9"), None]
    );
    let starts: Vec<Option<u64>> = requests.iter().map(Exchange::range_start).collect();
    assert_eq!(starts, vec![Some(1_048_576), None, Some(5), None]);
    let odd = Exchange {
        range: Some("items=3-".into()),
        ..requests[0].clone()
    };
    assert_eq!(odd.range_start(), None);
}
