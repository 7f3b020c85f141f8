//! `distctl push` through a fault-injecting proxy in front of a real
//! registry (Distribution 2.8): a request-body limit that only chunks get
//! past, connections cut while uploading, and a daemon killed mid-push that
//! continues the upload after a restart.

use distd_tests::transfer::{assert_served, import, proxy_for, push, push_ok};
use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distd_tests::cli::distctl_command;
use distd_tests::oci::Image;
use distd_tests::proxy::Fault;
use distd_tests::registry::Registry;
use distd_tests::{Daemon, DaemonOpts, MIB, args, poll_until};

/// Daemon options with `[push]` chunks of `chunk_size` (e.g. `"4MiB"`).
fn chunks_of(chunk_size: &str) -> DaemonOpts {
    DaemonOpts::with_config(&format!(
        "[push]\nchunk_size = \"{chunk_size}\"\nconcurrency = 4\n"
    ))
}

/// Behind a proxy that refuses request bodies over 8 MiB (413), a push
/// whose 64 MiB layer would go in one request fails with one line saying
/// to lower `chunk_size`; with 4 MiB chunks the same push succeeds, no
/// request refused, the layer's bytes uploaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_limit_is_passed_with_chunks_smaller_than_it() {
    let registry = Registry::start();
    let limit = 8 * MIB as u64;
    let proxy = proxy_for(&registry, Fault::RejectBodiesOver(limit));
    let image = Image::random(401, &[64 * MIB, 100_000]);
    let big = &image.layers[0];
    let mut d = Daemon::start_with(chunks_of("64MiB"));
    import(&d, &image, "local/big:v1");
    let target = format!("{}/test/big:v1", proxy.host());

    let line = push(&d, &target, "local/big:v1").failure().to_owned();
    assert!(
        line.contains("chunk_size") && line.contains(&proxy.host()) && line.contains("413"),
        "the error should name the registry, its 413 and `chunk_size`: {line}"
    );
    let refused = proxy.count(|e| e.status == Some(413));
    assert!(refused > 0, "nothing was refused: {:?}", proxy.requests());
    assert_eq!(
        proxy.count(|e| e.path.contains("/manifests/") && e.method == "PUT"),
        0,
        "a manifest was pushed over a missing layer"
    );

    d.opts = chunks_of("4MiB");
    d.restart();
    push_ok(&d, &target, "local/big:v1", &image);
    assert_eq!(
        proxy.count(|e| e.status == Some(413)),
        refused,
        "a 4 MiB chunk was refused: {:?}",
        proxy.requests()
    );
    let chunks = proxy.count(|e| e.method == "PATCH" && e.status == Some(202)) as u64;
    assert_eq!(chunks, big.size().div_ceil(4 * MIB as u64));
    assert_eq!(proxy.upload_bytes_of(&big.digest), big.size());
    assert_served(&registry, "test/big:v1", &image);
}

/// Connections cut after every 3 MiB sent up while a 24 MiB image of
/// 512 KiB layers goes up: distd retries each broken upload, so the push
/// completes, the registry serves every digest, and the proxy carries less
/// than 1.5 times the image (a cut wastes at most the blob in flight).
///
/// Each broken blob starts over: Distribution keeps the part of a request
/// body it received before the cut, so its upload no longer matches the
/// offset signed into the session's `_state` and it refuses (and drops) the
/// session ("upload resumed at wrong offset", 404 `BLOB_UPLOAD_INVALID`).
/// For the same reason a blob of several chunks cannot get past cuts that
/// always come before its last chunk; continuing from the acknowledged
/// offset is covered by the restart test below, where no request is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cut_every_3_mib_are_retried_and_the_push_completes() {
    let registry = Registry::start();
    let proxy = proxy_for(&registry, Fault::CutUploadEvery(3 * MIB as u64));
    let image = Image::random(411, &[MIB / 2; 48]);
    let d = Daemon::start_with(chunks_of("2MiB"));
    import(&d, &image, "local/cut:v1");

    push_ok(
        &d,
        &format!("{}/test/cut:v1", proxy.host()),
        "local/cut:v1",
        &image,
    );
    let cut = proxy.count(|e| e.is_upload() && e.status.is_none());
    assert!(cut > 0, "no upload was cut: {:?}", proxy.requests());
    let (up, total) = (proxy.bytes_up(), image.total_bytes());
    assert!(
        up * 2 < total * 3,
        "the proxy carried {up} bytes up for an image of {total} ({cut} uploads cut)"
    );
    assert_served(&registry, "test/cut:v1", &image);
}

/// The events a running `distctl --json push` printed so far.
type Seen = Arc<Mutex<Vec<serde_json::Value>>>;

/// Whether `events` hold a `progress` of `digest` past `bytes`.
fn progressed_past(events: &Seen, digest: &str, bytes: u64) -> bool {
    events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|e| {
            e["event"] == "progress"
                && e["digest"] == digest
                && e["bytes"].as_u64().unwrap_or(0) > bytes
        })
}

/// distd killed with SIGKILL while a 32 MiB layer goes up in 1 MiB chunks,
/// after the registry acknowledged four of them: restarted on the same
/// root, the push continues that upload where the registry left it, so it
/// sends less than the layer, and the registry serves every digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_killed_with_the_daemon_continues_its_upload_after_a_restart() {
    const ACKED: u64 = 4;
    let registry = Registry::start();
    let proxy = proxy_for(&registry, Fault::HoldPatchesAfter(ACKED));
    let image = Image::random(421, &[32 * MIB, 200_000]);
    let big = &image.layers[0];
    let mut d = Daemon::start_with(chunks_of("1MiB"));
    import(&d, &image, "local/killed:v1");
    let target = format!("{}/test/killed:v1", proxy.host());

    let mut first = distctl_command(
        &d,
        args!["--json", "push", &target, "--from", "local/killed:v1"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("start distctl push");
    let seen: Seen = Arc::default();
    let reader = {
        let (stdout, seen) = (first.stdout.take().expect("stdout"), Arc::clone(&seen));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line) {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(event);
                }
            }
        })
    };
    // The PATCH after the last acknowledged one is held; once its bytes
    // count in a progress event, distd has saved the session the
    // acknowledgements left (it reports them in order).
    let chunk = MIB as u64;
    poll_until(
        Duration::from_secs(60),
        "4 acknowledged chunks of the big layer and the 5th under way",
        || {
            let acked = proxy.count(|e| e.method == "PATCH" && e.status == Some(202)) as u64;
            (acked == ACKED && progressed_past(&seen, &big.digest, ACKED * chunk)).then_some(())
        },
    );
    d.kill9();
    let status = first.wait().expect("wait for the first distctl");
    assert!(!status.success(), "the push survived its daemon's SIGKILL");
    reader.join().expect("the event reader");
    // Connections holding the 5th PATCH close without forwarding it.
    proxy.set_fault(Fault::None);

    d.restart();
    let uploaded = proxy.upload_bytes();
    let events = push_ok(&d, &target, "local/killed:v1", &image);
    let again = proxy.upload_bytes() - uploaded;
    assert!(
        again < big.size(),
        "the second push uploaded {again} bytes, the layer has {}",
        big.size()
    );
    let started = events
        .iter()
        .find(|e| e["event"] == "blob_started" && e["digest"] == big.digest.as_str())
        .unwrap_or_else(|| panic!("no blob_started for the big layer: {events:?}"));
    assert_eq!(
        started["resume_offset"],
        ACKED * chunk,
        "the upload should continue after the acknowledged chunks: {started}"
    );
    assert_eq!(
        proxy.upload_bytes_of(&big.digest),
        big.size(),
        "the big layer's bytes should go up once in all"
    );
    assert_served(&registry, "test/killed:v1", &image);
}
