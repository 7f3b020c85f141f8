//! The push pipeline against an in-memory registry: skips, mounts, resumed
//! uploads, manifest order (the end-to-end tests use a real registry).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use distd_sdk::transport::{
    BlobSource, Capabilities, Description, MountOutcome, PushProgress, UploadSession,
};
use distd_sdk::{
    ByteStream, Descriptor, Digest, ErrorKind, Locator, Reference, Transport, TransportError,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::fake::*;
use super::*;

/// A registry in memory: blobs per repository, manifests in push order,
/// uploads in progress by location. `fail_uploads` makes that many upload
/// attempts fail after acknowledging half of what they sent.
#[derive(Default)]
struct FakeRegistry {
    blobs: Mutex<HashMap<(String, Digest), Bytes>>,
    manifests: Mutex<Vec<(String, String)>>,
    uploads: Mutex<HashMap<String, BytesMut>>,
    mounts: Mutex<Vec<(Digest, String)>>,
    resumed_from: Mutex<Vec<u64>>,
    fail_uploads: AtomicU32,
    next_upload: AtomicU32,
}

#[async_trait::async_trait]
impl Transport for FakeRegistry {
    fn describe(&self) -> Description {
        Description {
            name: "fake-registry".into(),
            capabilities: Capabilities {
                push: true,
                mount: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        Err(TransportError::new(
            ErrorKind::NotFound,
            format!("{reference}"),
        ))
    }

    async fn fetch(
        &self,
        _: &Locator,
        _: &Descriptor,
        _: u64,
    ) -> Result<ByteStream, TransportError> {
        Err(TransportError::new(ErrorKind::NotFound, "push only"))
    }

    async fn stat(
        &self,
        locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        let blobs = self.blobs.lock().unwrap();
        Ok(blobs
            .get(&(locator.repository.clone(), digest.clone()))
            .map(|b| b.len() as u64))
    }

    async fn mount(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        from: &str,
    ) -> Result<MountOutcome, TransportError> {
        let mut blobs = self.blobs.lock().unwrap();
        let Some(bytes) = blobs.get(&(from.to_owned(), blob.digest.clone())).cloned() else {
            return Ok(MountOutcome::NotMounted(None));
        };
        blobs.insert((locator.repository.clone(), blob.digest.clone()), bytes);
        self.mounts
            .lock()
            .unwrap()
            .push((blob.digest.clone(), from.to_owned()));
        Ok(MountOutcome::Mounted)
    }

    async fn push_blob(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        source: &dyn BlobSource,
        resume: Option<UploadSession>,
        progress: &dyn PushProgress,
    ) -> Result<u64, TransportError> {
        let location = match resume {
            Some(session) if self.uploads.lock().unwrap().contains_key(&session.location) => {
                session.location
            }
            _ => {
                let n = self.next_upload.fetch_add(1, Ordering::Relaxed);
                let location = format!("upload-{n}");
                self.uploads
                    .lock()
                    .unwrap()
                    .insert(location.clone(), BytesMut::new());
                progress.session(&UploadSession {
                    location: location.clone(),
                    offset: 0,
                });
                location
            }
        };
        let offset = self.uploads.lock().unwrap()[&location].len() as u64;
        self.resumed_from.lock().unwrap().push(offset);
        let mut stream = source.open(offset).await?;
        let fail = self
            .fail_uploads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let half = offset + (blob.size - offset) / 2;
        let mut sent = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let mut uploads = self.uploads.lock().unwrap();
            let upload = uploads.get_mut(&location).unwrap();
            let room = if fail {
                usize::try_from(half.saturating_sub(upload.len() as u64)).unwrap()
            } else {
                chunk.len()
            };
            let take = room.min(chunk.len());
            upload.extend_from_slice(&chunk[..take]);
            sent += take as u64;
            progress.sent(take as u64);
            let acknowledged = UploadSession {
                location: location.clone(),
                offset: upload.len() as u64,
            };
            drop(uploads);
            progress.session(&acknowledged);
            if take < chunk.len() {
                return Err(TransportError::new(
                    ErrorKind::Unavailable,
                    "connection reset",
                ));
            }
        }
        let bytes = self
            .uploads
            .lock()
            .unwrap()
            .remove(&location)
            .unwrap()
            .freeze();
        assert_eq!(
            Digest::of_bytes(distd_sdk::Algorithm::Sha256, &bytes),
            blob.digest
        );
        self.blobs
            .lock()
            .unwrap()
            .insert((locator.repository.clone(), blob.digest.clone()), bytes);
        Ok(sent)
    }

    async fn push_manifest(
        &self,
        locator: &Locator,
        reference: &str,
        _: &str,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        let digest = Digest::of_bytes(distd_sdk::Algorithm::Sha256, &bytes);
        let blobs = self.blobs.lock().unwrap();
        for child in distd_sdk::media::children(distd_sdk::media::OCI_MANIFEST, &bytes).unwrap() {
            assert!(
                blobs.contains_key(&(locator.repository.clone(), child.digest.clone())),
                "manifest pushed before its blob {}",
                child.digest
            );
        }
        drop(blobs);
        self.manifests
            .lock()
            .unwrap()
            .push((locator.repository.clone(), format!("{reference} {digest}")));
        Ok(())
    }
}

/// Pulls a fake image named `reg.test/app:v1` into `store`; returns its
/// manifest descriptor.
async fn local_image(store: &Store) -> Descriptor {
    let mut fake = Fake::default();
    let manifest = fake.image(9);
    fake.tags.insert("v1".into(), manifest.clone());
    let puller = Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL);
    pull(
        &puller,
        Arc::new(fake),
        "reg.test/app:v1",
        PullOptions::default(),
    )
    .await
    .0
    .unwrap();
    manifest
}

async fn push(
    store: &Store,
    registry: Arc<FakeRegistry>,
    source: &str,
    target: &str,
) -> (Result<Descriptor, TransferError>, Vec<Event>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    });
    let result = Pusher::new(store.clone())
        .push(
            registry,
            source,
            &Reference::parse(target).unwrap(),
            &PushOptions::default(),
            Events(tx),
        )
        .await;
    (result, collector.await.unwrap())
}

fn count(events: &[Event], pick: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| pick(e)).count()
}

#[tokio::test]
async fn blobs_go_first_the_tag_last_and_a_second_push_skips_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let manifest = local_image(&store).await;
    let registry = Arc::new(FakeRegistry::default());

    let (result, events) = push(
        &store,
        Arc::clone(&registry),
        "reg.test/app:v1",
        "dst.test/team/app:v2",
    )
    .await;
    assert_eq!(result.unwrap().digest, manifest.digest);
    assert_eq!(
        count(&events, |e| matches!(e, Event::BlobStarted { .. })),
        3
    );
    assert_eq!(
        registry.manifests.lock().unwrap().clone(),
        [("team/app".to_owned(), format!("v2 {}", manifest.digest))]
    );
    assert!(
        matches!(events.last(), Some(Event::Done { name, .. }) if name == "dst.test/team/app:v2")
    );

    let (result, events) = push(
        &store,
        Arc::clone(&registry),
        "reg.test/app:v1",
        "dst.test/team/app:v2",
    )
    .await;
    result.unwrap();
    assert_eq!(count(&events, |e| matches!(e, Event::Skipped { .. })), 3);
    assert_eq!(
        count(&events, |e| matches!(e, Event::BlobStarted { .. })),
        0
    );
}

#[tokio::test]
async fn blobs_known_in_another_repository_are_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    local_image(&store).await;
    let registry = Arc::new(FakeRegistry::default());
    push(
        &store,
        Arc::clone(&registry),
        "reg.test/app:v1",
        "dst.test/a:1",
    )
    .await
    .0
    .unwrap();

    let (result, events) = push(
        &store,
        Arc::clone(&registry),
        "reg.test/app:v1",
        "dst.test/b:1",
    )
    .await;
    result.unwrap();
    assert_eq!(
        count(
            &events,
            |e| matches!(e, Event::Mounted { from, .. } if from == "a")
        ),
        3
    );
    assert_eq!(
        count(&events, |e| matches!(e, Event::BlobStarted { .. })),
        0
    );
    assert_eq!(registry.mounts.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_failed_upload_continues_from_the_acknowledged_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    local_image(&store).await;
    let registry = Arc::new(FakeRegistry {
        fail_uploads: AtomicU32::new(3),
        ..FakeRegistry::default()
    });
    let (result, events) = push(
        &store,
        Arc::clone(&registry),
        "reg.test/app:v1",
        "dst.test/a:1",
    )
    .await;
    result.unwrap();
    let resumed: HashSet<u64> = registry
        .resumed_from
        .lock()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert!(
        resumed.iter().any(|&o| o > 0),
        "no upload resumed: {resumed:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::BlobStarted { resume_offset, .. } if *resume_offset > 0)),
        "{events:?}"
    );
    // Finished uploads leave no session behind.
    let left = store
        .meta()
        .run(|c| {
            Ok(
                c.query_row("SELECT count(*) FROM upload_sessions", [], |r| {
                    r.get::<_, i64>(0)
                })?,
            )
        })
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn pushing_an_unknown_image_is_not_found_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let registry = Arc::new(FakeRegistry::default());
    let (result, events) = push(&store, Arc::clone(&registry), "nope:1", "dst.test/a:1").await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("images ls"), "{err}");
    assert!(events.is_empty());
    assert!(registry.manifests.lock().unwrap().is_empty());
}
