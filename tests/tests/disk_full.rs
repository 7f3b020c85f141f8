//! A full disk, for real: the store's root is a small tmpfs.

use distd_tests::data::{sha256_file, write_random_file};
use distd_tests::rpc;
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl};

/// With the store's disk full, a put fails with one line that says the disk
/// is full and what to do; the store stays consistent, the partial upload
/// stays resumable, and once space is freed the same put finishes from where
/// it stopped with the right digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_loses_nothing() {
    let d = Daemon::start_with(DaemonOpts {
        root_tmpfs: Some("24m".into()),
        ..DaemonOpts::default()
    });
    let client = d.client().await;

    let filler = d.work().join("filler.bin");
    let filler_digest = write_random_file(&filler, 12 * MIB as u64, 1);
    distctl(&d, args!["content", "put", &filler]).success();

    let big = d.work().join("big.bin");
    let big_size = 16 * MIB as u64;
    let big_digest = write_random_file(&big, big_size, 2);
    let failed = distctl(&d, args!["content", "put", "--ref", "big-upload", &big]);
    let line = failed.failure();
    assert!(
        line.contains("full") && line.contains("distctl gc"),
        "the error should say the disk is full and how to free space: {line}"
    );

    let ingests = rpc::ingests(&client).await.expect("ListIngests");
    let partial = ingests
        .iter()
        .find(|i| i.r#ref == "big-upload")
        .unwrap_or_else(|| panic!("the partial upload should stay resumable: {ingests:?}"));
    assert!(
        partial.offset > 0 && (partial.offset as u64) < big_size,
        "partial offset {} should be within the blob",
        partial.offset
    );
    assert!(
        rpc::info(&client, &big_digest).await.is_err(),
        "nothing of the failed put may be committed"
    );
    rpc::assert_verify_clean(&client).await;

    // Free the space: the filler is unreferenced, the live ingest is kept.
    let collected = rpc::collect(&client, false).await.expect("Collect");
    assert_eq!(collected.removed_digests, vec![filler_digest.clone()]);
    assert!(collected.removed_ingests.is_empty());

    distctl(&d, args!["content", "put", "--ref", "big-upload", &big]).success();
    let out = d.work().join("big.out");
    distctl(&d, args!["content", "get", &big_digest, "-o", &out]).success();
    assert_eq!(sha256_file(&out), big_digest);
    rpc::assert_verify_clean(&client).await;
}
