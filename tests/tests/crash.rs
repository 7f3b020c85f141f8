//! Crashes: `kill -9` in the middle of a write, and an abort at each step of
//! a commit (failpoints). After a restart the store is consistent and the
//! interrupted work can be finished.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use distd_tests::cli::distctl_command;
use distd_tests::data::{random_bytes, sha256, sha256_file, write_random_file};
use distd_tests::rpc::{self, Ingest, WriteStream};
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl, poll_until};
use tonic::Code;

/// After `kill -9` in the middle of a Write, STAT on the same ref reports
/// what was acknowledged, writing resumes from there, and the committed
/// blob is the whole content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_resumes_after_kill_9_mid_stream() {
    let mut d = Daemon::start();
    let data = random_bytes(1, 64 * MIB);
    let digest = sha256(&data);
    let ingest = Ingest::new("resume-me").total(data.len() as u64);
    let sent = 40 * MIB;

    let acknowledged = {
        let client = d.client().await;
        let (mut stream, stat) = WriteStream::open(&client, ingest.stat()).await.unwrap();
        assert_eq!(stat.offset, 0);
        let acknowledged = stream.write_all(&ingest, 0, &data[..sent]).await.unwrap();
        assert_eq!(acknowledged, sent as u64, "every WRITE was acknowledged");
        d.kill9();
        acknowledged
    };

    d.restart();
    let client = d.client().await;
    let (mut stream, stat) = WriteStream::open(&client, ingest.stat())
        .await
        .expect("STAT of the interrupted ingest after the restart");
    let resumed = stat.offset as u64;
    assert!(
        resumed >= acknowledged && resumed <= sent as u64,
        "STAT after the restart says offset {resumed}; {acknowledged} bytes were acknowledged and {sent} sent"
    );
    stream
        .write_all(&ingest, resumed, &data[resumed as usize..])
        .await
        .expect("write the rest from the STAT offset");
    let done = stream
        .commit(&ingest.clone().expected(&digest), data.len() as u64)
        .await
        .expect("COMMIT with the expected digest after resuming");
    stream.close();
    assert_eq!(done.digest, digest);
    assert_eq!(done.offset as usize, data.len());

    let out = d.work().join("resumed.out");
    distctl(&d, args!["content", "get", &digest, "-o", &out]).success();
    assert_eq!(
        sha256_file(&out),
        digest,
        "the resumed blob has the right bytes"
    );
    rpc::assert_verify_clean(&client).await;
}

/// `distctl content put --ref R` interrupted by `kill -9` of the daemon is
/// finished by running the same put again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distctl_put_with_the_same_ref_finishes_after_kill_9() {
    let mut d = Daemon::start();
    let src = d.work().join("layer.bin");
    let size = 48 * MIB as u64;
    let digest = write_random_file(&src, size, 2);
    let fed = 24 * MIB;
    let r#ref = "interrupted-put";

    // Feed the first half through stdin and hold the pipe open, so the put
    // is certainly in the middle of its upload when the daemon dies.
    let mut put = distctl_command(&d, args!["content", "put", "--ref", r#ref, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn distctl content put -");
    let mut stdin = put.stdin.take().unwrap();
    stdin
        .write_all(&std::fs::read(&src).unwrap()[..fed])
        .expect("feed distctl's stdin");
    stdin.flush().unwrap();
    let client = d.client().await;
    let handle = tokio::runtime::Handle::current();
    poll_until(
        Duration::from_secs(60),
        "the put's ingest to receive 8 MiB",
        || {
            let ingests = tokio::task::block_in_place(|| handle.block_on(rpc::ingests(&client)))
                .expect("ListIngests");
            ingests
                .iter()
                .find(|i| i.r#ref == r#ref && i.offset >= 8 * MIB as i64)
                .map(|_| ())
        },
    );
    drop(client);
    d.kill9();
    drop(stdin);
    let interrupted = put.wait_with_output().unwrap();
    assert!(
        !interrupted.status.success(),
        "the put whose daemon was killed must fail; stderr: {}",
        String::from_utf8_lossy(&interrupted.stderr)
    );

    d.restart();
    let client = d.client().await;
    let ingests = rpc::ingests(&client).await.unwrap();
    let kept = ingests
        .iter()
        .find(|i| i.r#ref == r#ref)
        .unwrap_or_else(|| panic!("the interrupted ingest survives the restart: {ingests:#?}"));
    assert!(kept.offset >= 8 * MIB as i64 && kept.offset <= fed as i64);

    let doc = distctl(&d, args!["--json", "content", "put", "--ref", r#ref, &src])
        .success()
        .json();
    assert_eq!(doc["digest"], digest.as_str(), "{doc}");
    let info = rpc::info(&client, &digest)
        .await
        .expect("the resumed put committed");
    assert_eq!(info.size as u64, size);
    assert_eq!(sha256(&rpc::read(&client, &digest).await.unwrap()), digest);
    assert!(rpc::ingests(&client).await.unwrap().is_empty());
    rpc::assert_verify_clean(&client).await;
}

/// The daemon aborts at `failpoint` during the commit of a put; after a
/// restart without it the store verifies clean, the blob is either absent or
/// whole, and putting it again works.
async fn crash_during_commit(failpoint: &str) {
    let mut d = Daemon::start_with(DaemonOpts::with_failpoint(failpoint));
    let data = random_bytes(3, 5 * MIB + 3);
    let digest = sha256(&data);
    {
        let client = d.client().await;
        let result = rpc::put(&client, &Ingest::new("crashing"), &data).await;
        assert!(
            result.is_err(),
            "the put should lose its connection when the daemon aborts at {failpoint}: {result:?}"
        );
    }
    let status = d.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "distd did not abort at failpoint {failpoint:?}: is that name still in daemon/src/failpoint.rs?"
        )
    });
    assert!(!status.success(), "an abort is not a clean exit: {status}");

    d.opts = DaemonOpts::default();
    d.restart();
    let client = d.client().await;
    rpc::assert_verify_clean(&client).await;
    match rpc::info(&client, &digest).await {
        Ok(info) => {
            assert_eq!(
                info.size as usize,
                data.len(),
                "{failpoint}: a committed blob is whole"
            );
            let back = rpc::read(&client, &digest)
                .await
                .unwrap_or_else(|e| panic!("{failpoint}: a recorded blob must be readable: {e}"));
            assert_eq!(
                sha256(&back),
                digest,
                "{failpoint}: recorded blob has other bytes"
            );
        }
        Err(status) => assert_eq!(
            status.code(),
            Code::NotFound,
            "{failpoint}: Info is either OK or NOT_FOUND: {}",
            status.message()
        ),
    }

    let src = d.work().join("again.bin");
    std::fs::write(&src, &data).unwrap();
    let again = distctl(&d, args!["--json", "content", "put", &src]);
    if !again.status.success() {
        let line = again.failure();
        assert!(
            line.contains("already exists"),
            "{failpoint}: putting the blob again must succeed or say it exists: {line}"
        );
    }
    let info = rpc::info(&client, &digest)
        .await
        .expect("the blob is in the store");
    assert_eq!(info.size as usize, data.len());
    assert_eq!(sha256(&rpc::read(&client, &digest).await.unwrap()), digest);
    rpc::assert_verify_clean(&client).await;
    distctl(&d, args!["verify"]).success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_rename_leaves_a_consistent_store() {
    crash_during_commit("commit-before-rename").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_rename_leaves_a_consistent_store() {
    crash_during_commit("commit-after-rename").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_record_leaves_a_consistent_store() {
    crash_during_commit("commit-after-record").await;
}
