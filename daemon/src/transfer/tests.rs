//! The pipeline against an in-memory transport that can cut connections and
//! corrupt bytes (the end-to-end tests use a real registry).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use distd_sdk::transport::{Capabilities, Description};
use distd_sdk::{
    Algorithm, ByteStream, Descriptor, Digest, ErrorKind, Locator, Reference, Transport,
    TransportError, media,
};

use super::*;
use crate::store::StoreOptions;

/// Serves blobs from memory. `cut_after` cuts each blob's first stream after
/// that many bytes; `corrupt` flips a byte of every stream of that digest.
#[derive(Default)]
struct Fake {
    tags: HashMap<String, Descriptor>,
    blobs: HashMap<Digest, Bytes>,
    cut_after: Option<u64>,
    corrupt: Option<Digest>,
    served: AtomicU64,
    fetches: Mutex<HashMap<Digest, Vec<u64>>>,
}

impl Fake {
    fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
        let digest = Digest::of_bytes(Algorithm::Sha256, &bytes);
        let descriptor = Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.clone(),
            size: bytes.len() as u64,
        };
        self.blobs.insert(digest, Bytes::from(bytes));
        descriptor
    }

    /// An image of a config and two layers; returns its manifest descriptor.
    fn image(&mut self, seed: u8) -> Descriptor {
        let config = self.add(
            media::OCI_CONFIG,
            format!("{{\"seed\":{seed}}}").into_bytes(),
        );
        let layers: Vec<Descriptor> = (0..2u8)
            .map(|i| {
                self.add(
                    media::OCI_LAYER_GZIP,
                    vec![seed.wrapping_add(i); 300_000 + usize::from(i) * 7],
                )
            })
            .collect();
        let desc = |d: &Descriptor| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
                d.media_type, d.digest, d.size
            )
        };
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
            media::OCI_MANIFEST,
            desc(&config),
            layers.iter().map(desc).collect::<Vec<_>>().join(",")
        );
        self.add(media::OCI_MANIFEST, manifest.into_bytes())
    }

    fn fetch_count(&self, digest: &Digest) -> usize {
        self.fetches.lock().unwrap().get(digest).map_or(0, Vec::len)
    }
}

#[async_trait::async_trait]
impl Transport for Fake {
    fn describe(&self) -> Description {
        Description {
            name: "fake".into(),
            capabilities: Capabilities {
                resolve: true,
                fetch: true,
                ranged_fetch: true,
                ..Default::default()
            },
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        let tag = reference.tag().unwrap_or_default();
        self.tags.get(tag).cloned().ok_or_else(|| {
            TransportError::new(ErrorKind::NotFound, format!("{reference} not found"))
        })
    }

    async fn fetch(
        &self,
        _: &Locator,
        blob: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let first = {
            let mut fetches = self.fetches.lock().unwrap();
            let seen = fetches.entry(blob.digest.clone()).or_default();
            seen.push(offset);
            seen.len() == 1
        };
        // Let concurrent pulls pile up on the same download.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let bytes = self
            .blobs
            .get(&blob.digest)
            .cloned()
            .ok_or_else(|| TransportError::new(ErrorKind::NotFound, "no blob"))?;
        let mut data = bytes.slice(usize::try_from(offset).unwrap()..).to_vec();
        if self.corrupt.as_ref() == Some(&blob.digest) {
            data[0] ^= 0xff;
        }
        let cut = self.cut_after.filter(|_| first && data.len() > 100_000);
        let chunks: Vec<Result<Bytes, TransportError>> = match cut {
            Some(n) => vec![
                Ok(Bytes::from(data[..usize::try_from(n).unwrap()].to_vec())),
                Err(TransportError::new(
                    ErrorKind::Unavailable,
                    "connection reset",
                )),
            ],
            None => data
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect(),
        };
        let served: u64 = chunks
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(|c| c.len() as u64)
            .sum();
        self.served.fetch_add(served, Ordering::Relaxed);
        Ok(Box::pin(tokio_stream::iter(chunks)))
    }

    async fn stat(&self, _: &Locator, digest: &Digest) -> Result<Option<u64>, TransportError> {
        Ok(self.blobs.get(digest).map(|b| b.len() as u64))
    }
}

fn store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            ingest_expiry: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

async fn pull(
    puller: &Puller,
    fake: Arc<Fake>,
    reference: &str,
    options: PullOptions,
) -> (Result<Descriptor, TransferError>, Vec<Event>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    });
    let result = puller
        .pull(
            fake,
            &Reference::parse(reference).unwrap(),
            &options,
            Events(tx),
        )
        .await;
    (result, collector.await.unwrap())
}

async fn image_names(store: &Store) -> Vec<String> {
    store
        .meta()
        .run(|c| meta::images::list(c, ""))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

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
