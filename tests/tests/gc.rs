//! Garbage collection: on demand while writers work under leases, and
//! automatic by watermarks (least recently used first).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distd_tests::data::{Rng, random_bytes, sha256};
use distd_tests::oci::Image;
use distd_tests::rpc::{self, Ingest, expect_code};
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl, poll_until};
use tonic::Code;

const WRITERS: u64 = 20;
const BLOBS_PER_WRITER: u64 = 3;

/// Twenty writers, each under its own lease, commit blobs while
/// `Store.Collect` runs in a loop: nothing leased is lost. Once the leases
/// are gone, Collect removes exactly the blobs nothing references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_never_removes_leased_content_and_then_removes_exactly_the_unreferenced() {
    let d = Daemon::start();
    let client = d.client().await;

    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) || runs == 0 {
                rpc::collect(&client, false)
                    .await
                    .expect("Collect while writers work");
                runs += 1;
            }
            runs
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let lease = format!("writer-{w}");
            rpc::create_lease(&client, &lease)
                .await
                .expect("create a lease");
            let mut rng = Rng::new(w);
            let mut written = Vec::new();
            for b in 0..BLOBS_PER_WRITER {
                let size = rng.range(64 * 1024..(3 * MIB / 2) as u64) as usize;
                let data = random_bytes(1000 * w + b, size);
                let ingest = Ingest::new(format!("w{w}-b{b}")).lease(&lease);
                let done = rpc::put(&client, &ingest, &data)
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} blob {b}: {e:?}"));
                assert_eq!(done.digest, sha256(&data));
                written.push((done.digest, data.len() as u64));
            }
            (lease, written)
        }));
    }
    let mut leases = Vec::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for writer in writers {
        let (lease, written) = writer.await.expect("writer task");
        leases.push(lease);
        expected.extend(written);
    }
    stop.store(true, Ordering::Relaxed);
    let runs = collector.await.expect("collector task");
    assert!(runs >= 1);
    assert_eq!(expected.len() as u64, WRITERS * BLOBS_PER_WRITER);

    for (digest, size) in &expected {
        let info = rpc::info(&client, digest).await.unwrap_or_else(|e| {
            panic!("leased blob {digest} was lost to a concurrent Collect: {e:?}")
        });
        assert_eq!(info.size as u64, *size);
        assert_eq!(&sha256(&rpc::read(&client, digest).await.unwrap()), digest);
    }
    let usage = rpc::usage(&client).await.unwrap();
    assert_eq!(
        usage.reclaimable_count, 0,
        "leased blobs are not reclaimable: {usage:?}"
    );

    // Blobs with no lease and no image: unreferenced from the start.
    for u in 0..5u64 {
        let data = random_bytes(900_000 + u, 200_000 + u as usize * 1000);
        let done = rpc::put(&client, &Ingest::new(format!("unleased-{u}")), &data)
            .await
            .expect("put an unleased blob");
        expected.insert(done.digest, data.len() as u64);
    }
    for lease in &leases {
        rpc::delete_lease(&client, lease)
            .await
            .expect("delete a lease");
    }

    let usage = rpc::usage(&client).await.unwrap();
    let expected_bytes: u64 = expected.values().sum();
    assert_eq!(
        usage.reclaimable_count as usize,
        expected.len(),
        "{usage:?}"
    );
    assert_eq!(usage.reclaimable_bytes as u64, expected_bytes, "{usage:?}");

    let dry = rpc::collect(&client, true).await.unwrap();
    assert!(dry.dry_run);
    let collected = rpc::collect(&client, false).await.unwrap();
    let expected_digests: BTreeSet<&String> = expected.keys().collect();
    for report in [&dry, &collected] {
        let removed: BTreeSet<&String> = report.removed_digests.iter().collect();
        assert_eq!(removed, expected_digests, "dry_run={}", report.dry_run);
        assert_eq!(report.removed_digests.len(), expected.len());
        assert_eq!(report.removed_bytes as u64, expected_bytes);
    }
    for digest in expected.keys() {
        expect_code(
            rpc::info(&client, digest).await,
            Code::NotFound,
            "Info after Collect",
        );
    }
    let usage = rpc::usage(&client).await.unwrap();
    assert_eq!(usage.reclaimable_count, 0, "{usage:?}");
    assert_eq!(usage.reclaimable_bytes, 0, "{usage:?}");
    assert_eq!(usage.blob_count, 0, "{usage:?}");
    rpc::assert_verify_clean(&client).await;
}

const HIGH: u64 = 40 * MIB as u64;
const LOW: u64 = 20 * MIB as u64;

/// Above the high watermark the daemon evicts unreferenced blobs, least
/// recently used first, until usage is under the low watermark; an image's
/// and a lease's content is never evicted.
///
/// The arithmetic: protected = image (3 × 2 MiB layers + config + manifest)
/// + a 2 MiB leased blob ≈ 8 MiB. Ten 3 MiB unreferenced blobs b0..b9 bring
/// the store to ≈ 38 MiB (under high, nothing evicted); b0 and b1 are then
/// read, and a last 4 MiB blob b10 crosses the high watermark (≈ 42 MiB).
/// LRU order is b2..b9, b0, b1, b10: evicting b2..b9 leaves ≈ 18 MiB ≤ low,
/// while keeping one more 3 MiB blob would be ≈ 21 MiB > low. So exactly
/// b2..b9 go, and the recently read b0 and b1 stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_gc_evicts_least_recently_used_unreferenced_blobs() {
    let d = Daemon::start_with(DaemonOpts::with_config(
        "[gc]\nhigh_watermark = \"40MiB\"\nlow_watermark = \"20MiB\"\ncheck_interval = \"1s\"\n",
    ));
    let client = d.client().await;

    let image = Image::random(8, &[2 * MIB, 2 * MIB, 2 * MIB]);
    let layout = d.work().join("layout");
    image.write_layout(&layout, "latest");
    distctl(&d, args!["import", &layout, "--name", "example.com/kept:1"]).success();

    rpc::create_lease(&client, "pinned").await.unwrap();
    let leased = random_bytes(7000, 2 * MIB);
    let leased_digest = rpc::put(&client, &Ingest::new("leased").lease("pinned"), &leased)
        .await
        .expect("put the leased blob")
        .digest;

    let mut blobs = Vec::new();
    for i in 0..10u64 {
        let data = random_bytes(8000 + i, 3 * MIB);
        let digest = rpc::put(&client, &Ingest::new(format!("b{i}")), &data)
            .await
            .expect("put an unreferenced blob")
            .digest;
        blobs.push(digest);
    }
    let usage = rpc::usage(&client).await.unwrap();
    assert!(
        (usage.blob_bytes as u64) < HIGH,
        "the setup must stay under the high watermark before the reads: {usage:?}"
    );
    assert_eq!(
        usage.blob_count,
        5 + 1 + 10,
        "nothing was evicted under high: {usage:?}"
    );

    // Make b0 and b1 the most recently used: read them once the clock has
    // moved on from the last write (whatever the timestamps' resolution).
    let last_write = rpc::last_used(&rpc::info(&client, &blobs[9]).await.unwrap());
    poll_until(
        Duration::from_secs(5),
        "the clock to pass the last write",
        || {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            (now > Duration::new(last_write.0 as u64 + 1, last_write.1 as u32)).then_some(())
        },
    );
    for digest in &blobs[..2] {
        let out = d.work().join("read-back");
        distctl(&d, args!["content", "get", digest, "-o", &out]).success();
        let read = rpc::last_used(&rpc::info(&client, digest).await.unwrap());
        assert!(
            read > last_write,
            "reading {digest} must make it more recently used than the last write \
             ({read:?} vs {last_write:?})"
        );
    }

    let last = random_bytes(9000, 4 * MIB);
    let last_digest = rpc::put(&client, &Ingest::new("b10"), &last)
        .await
        .unwrap()
        .digest;

    let usage = poll_until(
        Duration::from_secs(30),
        "usage to fall under the low watermark",
        || {
            let handle = tokio::runtime::Handle::current();
            let usage =
                tokio::task::block_in_place(|| handle.block_on(rpc::usage(&client))).unwrap();
            ((usage.blob_bytes as u64) <= LOW).then_some(usage)
        },
    );

    for blob in image.blobs() {
        rpc::info(&client, &blob.digest)
            .await
            .unwrap_or_else(|e| panic!("image blob {} was evicted: {e:?}", blob.digest));
    }
    rpc::info(&client, &leased_digest)
        .await
        .unwrap_or_else(|e| panic!("the leased blob was evicted: {e:?}"));
    for (i, digest) in blobs.iter().enumerate() {
        let result = rpc::info(&client, digest).await;
        if i < 2 {
            result.unwrap_or_else(|e| {
                panic!("recently read b{i} was evicted before older blobs: {e:?}")
            });
        } else {
            expect_code(result, Code::NotFound, &format!("least recently used b{i}"));
        }
    }
    rpc::info(&client, &last_digest)
        .await
        .unwrap_or_else(|e| panic!("the newest blob b10 was evicted: {e:?}"));
    let protected = image.total_bytes() + leased.len() as u64;
    assert_eq!(
        usage.blob_bytes as u64,
        protected + 2 * 3 * MIB as u64 + last.len() as u64,
        "{usage:?}"
    );
    rpc::assert_verify_clean(&client).await;
}

/// Runs `Store.Collect` until `done` holds for the accumulated reports
/// (20 s at most); returns every report.
async fn collect_until(
    client: &distd_sdk::Client,
    what: &str,
    done: impl Fn(&[distd_tests::pb::CollectResponse]) -> bool,
) -> Vec<distd_tests::pb::CollectResponse> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut reports = Vec::new();
    loop {
        reports.push(rpc::collect(client, false).await.expect("Collect"));
        if done(&reports) {
            return reports;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for Collect to remove {what}: {reports:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An ingest without a lease is removed by Collect once it is older than
/// `[store] ingest_expiry`; one under a lease is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_removes_expired_ingests_but_not_leased_ones() {
    let d = Daemon::start_with(DaemonOpts::with_config("[store]\ningest_expiry = \"1s\"\n"));
    let client = d.client().await;
    rpc::create_lease(&client, "hold").await.unwrap();
    let data = random_bytes(50, 700_000);
    for ingest in [Ingest::new("abandoned"), Ingest::new("held").lease("hold")] {
        let (mut stream, _) = rpc::WriteStream::open(&client, ingest.stat())
            .await
            .unwrap();
        stream.write_all(&ingest, 0, &data).await.unwrap();
        stream.close();
    }
    let reports = collect_until(&client, "the expired ingest", |reports| {
        reports
            .iter()
            .any(|r| r.removed_ingests.iter().any(|i| i == "abandoned"))
    })
    .await;
    let removed: Vec<&String> = reports.iter().flat_map(|r| &r.removed_ingests).collect();
    assert_eq!(
        removed,
        ["abandoned"],
        "only the expired unleased ingest goes"
    );
    let bytes: i64 = reports.iter().map(|r| r.removed_ingest_bytes).sum();
    assert_eq!(bytes as usize, data.len());
    // Held is also past the expiry by now; its lease keeps it.
    let ingests = rpc::ingests(&client).await.unwrap();
    let refs: Vec<&str> = ingests.iter().map(|i| i.r#ref.as_str()).collect();
    assert_eq!(refs, ["held"], "{ingests:#?}");
    assert_eq!(ingests[0].offset as usize, data.len());
}

/// A lease that expires stops protecting its blob: Collect removes the lease
/// and the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_no_longer_protects_its_content() {
    let d = Daemon::start();
    let client = d.client().await;
    let lease = client
        .leases()
        .create(distd_tests::pb::CreateLeaseRequest {
            id: "short".to_owned(),
            expire_seconds: 2,
            labels: Default::default(),
        })
        .await
        .expect("create a lease with an expiry")
        .into_inner()
        .lease
        .unwrap();
    let expires_at = lease.expires_at.expect("an expiring lease has expires_at");
    let data = random_bytes(60, 400_000);
    let digest = rpc::put(&client, &Ingest::new("short-lived").lease("short"), &data)
        .await
        .unwrap()
        .digest;

    let first = rpc::collect(&client, false).await.unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    if now < Duration::new(expires_at.seconds as u64, expires_at.nanos as u32) {
        assert!(
            first.removed_digests.is_empty(),
            "a live lease protects its blob: {first:?}"
        );
    }
    let reports = collect_until(&client, "the expired lease's blob", |reports| {
        reports.iter().any(|r| r.removed_digests.contains(&digest))
    })
    .await;
    assert!(
        reports
            .iter()
            .chain([&first])
            .any(|r| r.removed_leases.iter().any(|l| l == "short")),
        "Collect reports the expired lease: {reports:#?}"
    );
    expect_code(
        rpc::info(&client, &digest).await,
        Code::NotFound,
        "Info of the expired lease's blob",
    );
    let leases = client
        .leases()
        .list(distd_tests::pb::ListLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(leases.is_empty(), "{leases:#?}");
}

/// `Store.Verify` is safe to run on a busy store: while blobs are committed
/// and collected around it, it reports no missing, corrupt or orphan blob
/// (a file between its commit's rename and its record, or between a
/// collection's row deletion and its unlink, is not a problem).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_no_problems_while_commits_and_collections_run() {
    let d = Daemon::start();
    let client = d.client().await;
    // A large kept blob makes each Verify take a while to re-hash.
    rpc::create_lease(&client, "big").await.unwrap();
    rpc::put(
        &client,
        &Ingest::new("big").lease("big"),
        &random_bytes(77, 24 * MIB),
    )
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..20u64 {
                    let data = random_bytes(1_000_000 + round * 100 + i, 32 * 1024);
                    rpc::put(&client, &Ingest::new(format!("churn-{round}-{i}")), &data)
                        .await
                        .expect("put unreferenced content");
                }
                rpc::collect(&client, false).await.expect("Collect");
                round += 1;
            }
            round
        })
    };
    let mut problems = Vec::new();
    for _ in 0..25 {
        let report = rpc::verify(&client).await.expect("Verify");
        problems.extend(report.problems);
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.await.expect("churn task");
    assert!(rounds >= 1);
    // Once quiet, the store is consistent: what was reported was transient.
    rpc::assert_verify_clean(&client).await;
    assert!(
        problems.is_empty(),
        "Verify reported {} problems on a consistent store while commits and \
         collections ran (first ones: {:#?})",
        problems.len(),
        &problems[..problems.len().min(3)]
    );
}
