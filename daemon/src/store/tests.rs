//! Store and GC behaviour, exercised on a real directory.

use std::time::Duration;

use bytes::Bytes;
use distd_sdk::{Algorithm, Digest, ErrorKind, media};

use super::{IngestWriter, OpenIngest, Store, StoreOptions};
use crate::gc::{self, Policy};
use crate::meta::{self, images::ImageRow, leases::LeaseRow, now_ms};

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            ingest_expiry: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

async fn put(
    store: &Store,
    reference: &str,
    bytes: &[u8],
    media_type: &str,
    lease: Option<&str>,
) -> Digest {
    let mut writer = IngestWriter::open(
        store,
        OpenIngest {
            reference: reference.into(),
            media_type: media_type.into(),
            lease_id: lease.map(str::to_owned),
            ..OpenIngest::default()
        },
    )
    .await
    .unwrap();
    writer
        .write(0, Bytes::copy_from_slice(bytes))
        .await
        .unwrap();
    writer.commit(None, bytes.len() as u64, "").await.unwrap().0
}

async fn read_all(store: &Store, digest: &Digest) -> Vec<u8> {
    let mut chunks = store.read(digest, 0, 0).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        out.extend_from_slice(&chunk.unwrap().1);
    }
    out
}

async fn lease(store: &Store, id: &str) {
    let row = LeaseRow {
        id: id.into(),
        created_at: now_ms(),
        expires_at: None,
        labels: Default::default(),
        resources: Vec::new(),
    };
    store
        .meta()
        .run(move |c| meta::leases::insert(c, &row))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_committed_blob_reads_back_and_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let digest = put(&store, "a", b"hello world", "", None).await;
    assert_eq!(digest, Digest::of_bytes(Algorithm::Sha256, b"hello world"));
    assert_eq!(read_all(&store, &digest).await, b"hello world");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(store.blob_path(&digest))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o222, 0, "blob is writable: {mode:o}");
    assert!(store.ingests().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_ingest_resumes_after_the_store_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let mut writer = IngestWriter::open(
            &store,
            OpenIngest {
                reference: "r".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        writer
            .write(0, Bytes::from_static(b"first half,"))
            .await
            .unwrap();
    }
    let store = open(dir.path());
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "r".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(writer.status().offset, 11);
    let err = writer.write(3, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    writer
        .write(11, Bytes::from_static(b" second half"))
        .await
        .unwrap();
    let expected = Digest::of_bytes(Algorithm::Sha256, b"first half, second half");
    let (digest, size) = writer.commit(Some(expected.clone()), 23, "").await.unwrap();
    assert_eq!((digest, size), (expected, 23));
}

#[tokio::test]
async fn a_wrong_digest_or_size_discards_the_ingest_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"other");
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "r".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    writer.write(0, Bytes::from_static(b"data")).await.unwrap();
    let err = writer.commit(Some(wrong), 0, "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss);
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "s".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    writer.write(0, Bytes::from_static(b"data")).await.unwrap();
    assert_eq!(
        writer.commit(None, 5, "").await.unwrap_err().kind(),
        ErrorKind::DataLoss
    );
    assert!(store.ingests().await.unwrap().is_empty());
    assert!(store.verify().await.unwrap().problems.is_empty());
    assert_eq!(
        store.meta().run(|c| meta::blobs::totals(c)).await.unwrap(),
        (0, 0)
    );
}

#[tokio::test]
async fn a_second_commit_of_the_same_digest_reports_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put(&store, "a", b"same", "", None).await;
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    writer.write(0, Bytes::from_static(b"same")).await.unwrap();
    assert_eq!(
        writer.commit(None, 0, "").await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let expected = Digest::of_bytes(Algorithm::Sha256, b"same");
    let early = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "c".into(),
            expected: Some(expected),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(early.err().unwrap().kind(), ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn a_malformed_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "m".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    writer
        .write(0, Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    let err = writer
        .commit(None, 0, media::OCI_MANIFEST)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        store
            .meta()
            .run(|c| meta::blobs::totals(c))
            .await
            .unwrap()
            .0,
        0
    );
}

fn manifest(config: &Digest, layer: &Digest) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config}","size":2}},"layers":[{{"mediaType":"{}","digest":"{layer}","size":5}}]}}"#,
        media::OCI_MANIFEST,
        media::OCI_CONFIG,
        media::OCI_LAYER_GZIP
    )
}

#[tokio::test]
async fn gc_keeps_what_images_and_leases_reach_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let config = put(&store, "c", b"{}", media::OCI_CONFIG, None).await;
    let layer = put(&store, "l", b"layer", "", None).await;
    let body = manifest(&config, &layer);
    let top = put(&store, "m", body.as_bytes(), media::OCI_MANIFEST, None).await;
    let image = ImageRow {
        name: "example/app:1".into(),
        media_type: media::OCI_MANIFEST.into(),
        digest: top.to_string(),
        size: body.len() as i64,
        annotations: Default::default(),
        labels: Default::default(),
        created_at: now_ms(),
        updated_at: now_ms(),
    };
    store
        .meta()
        .run(move |c| meta::images::insert(c, &image))
        .await
        .unwrap();
    lease(&store, "L").await;
    let leased = put(&store, "x", b"leased", "", Some("L")).await;
    let loose = put(&store, "y", b"loose", "", None).await;

    let dry = gc::collect(&store, Policy::All, true).await.unwrap();
    assert_eq!(dry.removed, vec![(loose.to_string(), 5)]);
    let report = gc::collect(&store, Policy::All, false).await.unwrap();
    assert_eq!(report.removed, vec![(loose.to_string(), 5)]);
    store.settled().await;
    assert!(!store.blob_path(&loose).exists());
    for kept in [&config, &layer, &top, &leased] {
        assert!(store.info(kept).await.is_ok(), "{kept} was collected");
    }

    store
        .meta()
        .run(|c| meta::leases::delete(c, "L"))
        .await
        .unwrap();
    store
        .meta()
        .run(|c| meta::images::delete(c, "example/app:1"))
        .await
        .unwrap();
    let report = gc::collect(&store, Policy::All, false).await.unwrap();
    assert_eq!(report.removed.len(), 4);
    store.settled().await;
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn eviction_removes_least_recently_used_unreferenced_content_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let old = put(&store, "old", &[1u8; 100], "", None).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newer = put(&store, "new", &[2u8; 100], "", None).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    read_all(&store, &old).await; // now the most recently used
    let report = gc::collect(&store, Policy::Evict { bytes: 50 }, false)
        .await
        .unwrap();
    assert_eq!(report.removed, vec![(newer.to_string(), 100)]);
    assert!(store.info(&old).await.is_ok());
}

#[tokio::test]
async fn a_commit_interrupted_after_publishing_is_recorded_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let store = open(dir.path());
        let mut writer = IngestWriter::open(
            &store,
            OpenIngest {
                reference: "r".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        writer
            .write(0, Bytes::from_static(b"payload"))
            .await
            .unwrap();
        drop(writer);
        // Replay the first half of a commit by hand: intent, then rename.
        let digest = Digest::of_bytes(Algorithm::Sha256, b"payload");
        let intent = digest.to_string();
        let row = store
            .meta()
            .run(|c| meta::ingests::get(c, "r"))
            .await
            .unwrap()
            .unwrap();
        store
            .meta()
            .run(move |c| meta::ingests::set_committing(c, "r", Some(&intent)))
            .await
            .unwrap();
        std::fs::rename(
            store.ingest_dir(&row.dir).join("data"),
            store.blob_path(&digest),
        )
        .unwrap();
        digest
    };
    let store = open(dir.path());
    assert_eq!(read_all(&store, &digest).await, b"payload");
    assert!(store.ingests().await.unwrap().is_empty());
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_are_grouped_and_each_gets_its_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every tenth writer commits the same bytes as writer 0.
            let payload = if i % 10 == 0 {
                b"shared".to_vec()
            } else {
                i.to_be_bytes().to_vec()
            };
            let mut writer = IngestWriter::open(
                &store,
                OpenIngest {
                    reference: format!("ref-{i}"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            writer.write(0, Bytes::from(payload)).await.unwrap();
            writer
                .commit(None, 0, "")
                .await
                .map(|(d, _)| d)
                .map_err(|e| e.kind())
        }));
    }
    let mut published = 0;
    let mut exists = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => published += 1,
            Err(ErrorKind::AlreadyExists) => exists += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((published, exists), (181, 19));
    assert_eq!(
        store
            .meta()
            .run(|c| meta::blobs::totals(c))
            .await
            .unwrap()
            .0,
        181
    );
    assert!(store.ingests().await.unwrap().is_empty());
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_digest_committed_again_while_its_old_file_awaits_unlinking_survives() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let digest = put(&store, "a", b"again", "", None).await;
    gc::collect(&store, Policy::All, false).await.unwrap();
    // Whether or not the background unlink has run yet, the new commit wins.
    let again = put(&store, "b", b"again", "", None).await;
    assert_eq!(again, digest);
    store.settled().await;
    assert_eq!(read_all(&store, &digest).await, b"again");
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn files_left_by_an_interrupted_collection_are_removed_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let stray = {
        let store = open(dir.path());
        let digest = put(&store, "a", b"stray", "", None).await;
        let key = digest.to_string();
        // The rows are gone but the unlink never ran: what a crash leaves.
        store
            .meta()
            .run(move |c| meta::blobs::delete(c, &key))
            .await
            .unwrap();
        store.blob_path(&digest)
    };
    assert!(stray.exists());
    let store = open(dir.path());
    assert!(!stray.exists());
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn an_expired_ingest_is_collected_only_when_no_writer_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            ingest_expiry: Duration::ZERO,
        },
    )
    .unwrap();
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "r".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    writer
        .write(0, Bytes::from_static(b"old bytes"))
        .await
        .unwrap();
    // Held by a writer: live, whatever its age.
    let report = gc::collect(&store, Policy::All, false).await.unwrap();
    assert!(report.removed_ingests.is_empty());
    drop(writer);
    let report = gc::collect(&store, Policy::All, false).await.unwrap();
    assert_eq!(report.removed_ingests, vec![("r".to_owned(), 9)]);
    // Collection finished with the directory: a new writer starts afresh.
    let mut writer = IngestWriter::open(
        &store,
        OpenIngest {
            reference: "r".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(writer.status().offset, 0);
    writer.write(0, Bytes::from_static(b"new")).await.unwrap();
    let (digest, _) = writer.commit(None, 3, "").await.unwrap();
    assert_eq!(read_all(&store, &digest).await, b"new");
}
