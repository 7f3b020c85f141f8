//! The pull pipeline against the in-memory transport (the end-to-end tests
//! use a real registry).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use distd_sdk::{Descriptor, ErrorKind, media};

use super::fake::*;
use super::*;

#[tokio::test]
async fn a_pull_stores_every_blob_and_writes_the_image_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fake = Fake::default();
    let manifest = fake.image(1);
    fake.tags.insert("1.0".into(), manifest.clone());
    let digests: Vec<Digest> = fake.blobs.keys().cloned().collect();
    let (result, events) = pull(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        Arc::new(fake),
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    assert_eq!(result.unwrap(), manifest);
    for digest in &digests {
        assert!(store.info(digest).await.is_ok(), "{digest} missing");
    }
    assert_eq!(image_names(&store).await, ["reg.test/app:1.0"]);
    assert!(matches!(events.first(), Some(Event::Resolved { .. })));
    assert!(matches!(events.last(), Some(Event::Done { .. })));
    // The pull's lease is gone; the image alone keeps the content.
    assert!(
        store
            .meta()
            .run(|c| meta::leases::list(c))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_cut_connection_resumes_from_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fake = Fake {
        cut_after: Some(200_000),
        ..Fake::default()
    };
    let manifest = fake.image(2);
    fake.tags.insert("latest".into(), manifest);
    let total: u64 = fake.blobs.values().map(|b| b.len() as u64).sum();
    let fake = Arc::new(fake);
    let (result, events) = pull(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        Arc::clone(&fake),
        "reg.test/app",
        PullOptions::default(),
    )
    .await;
    result.unwrap();
    let resumed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::BlobStarted { resume_offset, .. } if *resume_offset > 0 => Some(*resume_offset),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, [200_000, 200_000]);
    let served = fake.served.load(Ordering::Relaxed);
    assert!(
        served < total * 13 / 10,
        "served {served} of {total}: resume restarted"
    );
}

#[tokio::test]
async fn bad_bytes_are_refused_twice_and_leave_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fake = Fake::default();
    let manifest = fake.image(3);
    fake.tags.insert("latest".into(), manifest);
    let layer = fake
        .blobs
        .iter()
        .find(|(_, b)| b.len() > 1000)
        .map(|(d, _)| d.clone())
        .unwrap();
    fake.corrupt = Some(layer.clone());
    let fake = Arc::new(fake);
    let (result, events) = pull(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        Arc::clone(&fake),
        "reg.test/app",
        PullOptions::default(),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss);
    assert!(
        err.to_string().contains(&layer.to_string()) && err.to_string().contains("reg.test"),
        "{err}"
    );
    assert_eq!(fake.fetch_count(&layer), 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Warning(w) if w.contains("bad bytes")))
    );
    assert!(image_names(&store).await.is_empty());
    assert!(store.info(&layer).await.is_err());
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_share_each_download() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fake = Fake::default();
    let manifest = fake.image(4);
    fake.tags.insert("latest".into(), manifest);
    let fake = Arc::new(fake);
    let puller = Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL);
    let pulls: Vec<_> = (0..8)
        .map(|i| {
            let (puller, fake) = (puller.clone(), Arc::clone(&fake));
            tokio::spawn(async move {
                pull(
                    &puller,
                    fake,
                    &format!("reg.test/app{i}:latest"),
                    PullOptions::default(),
                )
                .await
                .0
            })
        })
        .collect();
    for pull in pulls {
        pull.await.unwrap().unwrap();
    }
    for digest in fake.blobs.keys() {
        assert_eq!(
            fake.fetch_count(digest),
            1,
            "{digest} was fetched more than once"
        );
    }
    assert_eq!(image_names(&store).await.len(), 8);
}

#[tokio::test]
async fn an_index_pulls_the_wanted_platform_or_says_what_it_offers() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fake = Fake::default();
    let amd = fake.image(5);
    let arm = fake.image(6);
    let entry = |d: &Descriptor, arch: &str| {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
            d.media_type, d.digest, d.size
        )
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{}]}}"#,
        media::OCI_INDEX,
        entry(&amd, "amd64"),
        entry(&arm, "arm64")
    );
    let index = fake.add(media::OCI_INDEX, index.into_bytes());
    fake.tags.insert("multi".into(), index);
    let fake = Arc::new(fake);
    let puller = Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL);

    let arm64 = PullOptions {
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..PullOptions::default()
    };
    pull(&puller, Arc::clone(&fake), "reg.test/app:multi", arm64)
        .await
        .0
        .unwrap();
    assert!(store.info(&arm.digest).await.is_ok());
    assert!(store.info(&amd.digest).await.is_err());

    let riscv = PullOptions {
        platform: Some(Platform::parse("linux/riscv64").unwrap()),
        ..PullOptions::default()
    };
    let err = pull(&puller, Arc::clone(&fake), "reg.test/app:multi", riscv)
        .await
        .0
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains("linux/amd64, linux/arm64"),
        "{err}"
    );

    let all = PullOptions {
        all_platforms: true,
        ..PullOptions::default()
    };
    pull(&puller, fake, "reg.test/app:multi", all)
        .await
        .0
        .unwrap();
    assert!(store.info(&amd.digest).await.is_ok());
}

/// A non-distributable layer is skipped with a warning, and the image is
/// still recorded; `include_foreign` fetches it.
#[tokio::test]
async fn foreign_layers_are_skipped_unless_included() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fake = Fake::default();
    let config = fake.add(media::OCI_CONFIG, b"{}".to_vec());
    let foreign = fake.add(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        vec![7; 1000],
    );
    let plain = fake.add(media::OCI_LAYER_GZIP, vec![8; 1000]);
    let desc = |d: &Descriptor| {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
            d.media_type, d.digest, d.size
        )
    };
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{},{}]}}"#,
        media::OCI_MANIFEST,
        desc(&config),
        desc(&foreign),
        desc(&plain)
    );
    let manifest = fake.add(media::OCI_MANIFEST, manifest.into_bytes());
    fake.tags.insert("win".into(), manifest);
    let fake = Arc::new(fake);
    let puller = Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL);

    let (result, events) = pull(
        &puller,
        Arc::clone(&fake),
        "reg.test/app:win",
        PullOptions::default(),
    )
    .await;
    result.unwrap();
    assert!(store.info(&plain.digest).await.is_ok());
    assert!(store.info(&foreign.digest).await.is_err());
    assert_eq!(fake.fetch_count(&foreign.digest), 0);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Warning(w) if w.contains(&foreign.digest.to_string()))),
        "{events:?}"
    );
    assert_eq!(image_names(&store).await, ["reg.test/app:win"]);

    let include = PullOptions {
        include_foreign: true,
        ..PullOptions::default()
    };
    pull(&puller, Arc::clone(&fake), "reg.test/app:win", include)
        .await
        .0
        .unwrap();
    assert!(store.info(&foreign.digest).await.is_ok());
}
