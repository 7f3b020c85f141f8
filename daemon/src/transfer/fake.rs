//! An in-memory transport for the pipeline's unit tests: it can cut
//! connections and corrupt bytes (the end-to-end tests use a real registry).

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
/// that many bytes; `corrupt` flips a byte of every stream of that digest;
/// `stall_after` sends that many bytes of every stream, then nothing.
#[derive(Default)]
pub struct Fake {
    pub name: Option<String>,
    pub fetch_only: bool,
    pub stall_after: Option<usize>,
    /// Declares no ranged fetch (sends whole blobs only).
    pub whole_only: bool,
    /// Fails every fetch of a large blob from an offset other than 0.
    pub fail_ranged: bool,
    /// Fails every fetch of a large blob at once.
    pub fail_always: bool,
    /// Sends ten bytes more than every blob has.
    pub overrun: bool,
    pub tags: HashMap<String, Descriptor>,
    pub blobs: HashMap<Digest, Bytes>,
    pub cut_after: Option<u64>,
    pub corrupt: Option<Digest>,
    pub served: AtomicU64,
    pub fetches: Mutex<HashMap<Digest, Vec<u64>>>,
}

impl Fake {
    pub fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
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
    pub fn image(&mut self, seed: u8) -> Descriptor {
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

    pub fn fetch_count(&self, digest: &Digest) -> usize {
        self.fetches.lock().unwrap().get(digest).map_or(0, Vec::len)
    }
}

#[async_trait::async_trait]
impl Transport for Fake {
    fn describe(&self) -> Description {
        Description {
            name: self.name.clone().unwrap_or_else(|| "fake".into()),
            capabilities: Capabilities {
                resolve: !self.fetch_only,
                fetch: true,
                ranged_fetch: !self.whole_only,
                ..Default::default()
            },
            ..Default::default()
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
        let large = bytes.len() > 100_000;
        if large && (self.fail_always || (self.fail_ranged && offset > 0)) {
            return Err(TransportError::new(ErrorKind::Unavailable, "refused"));
        }
        let mut data = bytes.slice(usize::try_from(offset).unwrap()..).to_vec();
        if self.overrun {
            data.extend_from_slice(b"0123456789");
        }
        if self.corrupt.as_ref() == Some(&blob.digest) {
            data[0] ^= 0xff;
        }
        if let Some(n) = self.stall_after {
            let head = Bytes::from(data[..n.min(data.len())].to_vec());
            self.served.fetch_add(head.len() as u64, Ordering::Relaxed);
            let stream = tokio_stream::StreamExt::chain(
                tokio_stream::iter([Ok(head)]),
                tokio_stream::pending(),
            );
            return Ok(Box::pin(stream));
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

pub fn store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            ingest_expiry: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

pub async fn pull(
    puller: &Puller,
    fake: Arc<Fake>,
    reference: &str,
    options: PullOptions,
) -> (Result<Descriptor, TransferError>, Vec<Event>) {
    let locator = Locator::of(&Reference::parse(reference).unwrap());
    pull_route(puller, Route::single(locator, fake), reference, options).await
}

/// Pulls through these transports, in order.
pub fn route(reference: &str, fakes: &[Arc<Fake>]) -> Route {
    Route {
        locator: Locator::of(&Reference::parse(reference).unwrap()),
        hops: fakes
            .iter()
            .map(|fake| Hop::uncounted(Arc::clone(fake) as Arc<dyn Transport>))
            .collect(),
        left_out: Vec::new(),
    }
}

pub async fn pull_route(
    puller: &Puller,
    route: Route,
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
            route,
            &Reference::parse(reference).unwrap(),
            &options,
            Events(tx),
        )
        .await;
    (result, collector.await.unwrap())
}

pub async fn image_names(store: &Store) -> Vec<String> {
    store
        .meta()
        .run(|c| meta::images::list(c, ""))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}
