//! The push pipeline: read a local image's tree, send its blobs in parallel
//! (skipped, mounted or uploaded — see `push_blob`), then its manifests byte
//! for byte, the index after its manifests and the tag last. The local store
//! is only read.

use std::collections::HashSet;
use std::sync::Arc;

use distd_sdk::media::{self, ContentClass};
use distd_sdk::{Descriptor, Digest, Locator, Reference, Transport};

use super::platform::{self, Platform};
use super::push_blob::BlobPusher;
use super::{Event, Events, TransferError};
use crate::error::StoreError;
use crate::meta;
use crate::store::Store;

/// Blobs uploaded at once by default.
pub const DEFAULT_PUSH_CONCURRENCY: usize = 4;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Push only this platform's manifest of an index.
    pub platform: Option<Platform>,
    /// Blobs sent at once.
    pub concurrency: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            platform: None,
            concurrency: DEFAULT_PUSH_CONCURRENCY,
        }
    }
}

/// What to send: blobs, then manifests in order (children before parents),
/// the last one under the tag.
#[derive(Debug, Default)]
struct Plan {
    blobs: Vec<Descriptor>,
    manifests: Vec<(Descriptor, Vec<u8>)>,
}

/// Pushes local images; one per daemon.
#[derive(Clone)]
pub struct Pusher {
    store: Store,
}

impl Pusher {
    /// A pusher reading from `store`.
    pub fn new(store: Store) -> Self {
        Pusher { store }
    }

    /// Pushes local image `source` to `target` through `transport`; returns
    /// the pushed manifest or index.
    pub async fn push(
        &self,
        transport: Arc<dyn Transport>,
        source: &str,
        target: &Reference,
        options: &PushOptions,
        events: Events,
    ) -> Result<Descriptor, TransferError> {
        let tag = target.tag().map(str::to_owned);
        let locator = Locator::of(target);
        let plan = self.plan(source, options, &events).await?;
        let Some((root, _)) = plan.manifests.last().cloned() else {
            return Err(TransferError::NotLocal {
                what: format!("local image {source} has no manifest"),
                hint: "pull or import it again",
            });
        };
        if let Some(pinned) = target.digest()
            && pinned != &root.digest
        {
            return Err(TransferError::BadManifest {
                reference: target.to_string(),
                detail: format!(
                    "the target names digest {pinned}, but {source} is {}",
                    root.digest
                ),
            });
        }
        let pusher = Arc::new(BlobPusher {
            store: self.store.clone(),
            transport: Arc::clone(&transport),
            locator: locator.clone(),
            events: events.clone(),
        });
        // Aborted uploads keep their sessions; the next push continues them.
        super::for_each_blob(plan.blobs.clone(), options.concurrency, move |blob| {
            let pusher = Arc::clone(&pusher);
            async move { pusher.push(&blob).await }
        })
        .await?;
        let registry = locator.registry.clone();
        let count = plan.manifests.len();
        for (i, (manifest, bytes)) in plan.manifests.into_iter().enumerate() {
            let last = i + 1 == count;
            let reference = match (&tag, last) {
                (Some(tag), true) => tag.clone(),
                _ => manifest.digest.to_string(),
            };
            let size = bytes.len() as u64;
            transport
                .push_manifest(&locator, &reference, &manifest.media_type, bytes.into())
                .await
                .map_err(|source| TransferError::Transport {
                    registry: registry.clone(),
                    source,
                })?;
            events
                .send(Event::BlobDone {
                    digest: manifest.digest.clone(),
                    transport: transport.describe().name,
                    transferred: size,
                })
                .await?;
        }
        let digests = plan.blobs.iter().map(|b| b.digest.to_string()).collect();
        super::record_sources(&self.store, &locator, digests).await?;
        events
            .send(Event::Done {
                name: target.to_string(),
                target: root.clone(),
                bytes_by_transport: Default::default(),
            })
            .await?;
        Ok(root)
    }

    /// Reads the local image's tree into what to send.
    async fn plan(
        &self,
        source: &str,
        options: &PushOptions,
        events: &Events,
    ) -> Result<Plan, TransferError> {
        let name = source.to_owned();
        let image = self
            .store
            .meta()
            .run(move |conn| meta::images::get(conn, &name))
            .await?
            .ok_or_else(|| TransferError::NotLocal {
                what: format!("there is no local image named {source}"),
                hint: "see `distctl images ls`, or pull or import it first",
            })?;
        let root = Descriptor {
            media_type: image.media_type.clone(),
            digest: Digest::parse(&image.digest).map_err(StoreError::from)?,
            size: u64::try_from(image.size).unwrap_or(0),
        };
        let bad = |detail: String| TransferError::BadManifest {
            reference: source.to_owned(),
            detail,
        };
        let root_bytes = self.read_local(source, &root).await?;
        let mut plan = Plan::default();
        let manifests = match media::classify(&root.media_type) {
            ContentClass::Manifest => vec![(root.clone(), root_bytes)],
            ContentClass::Index => {
                let entries =
                    platform::entries(&root_bytes, options.platform.as_ref()).map_err(bad)?;
                let mut chosen = Vec::new();
                for entry in entries {
                    let wanted = options.platform.is_none() || entry.is_match();
                    if !wanted {
                        continue;
                    }
                    let child = Descriptor {
                        media_type: entry.child.media_type.clone(),
                        digest: entry.child.digest.clone(),
                        size: entry.child.size,
                    };
                    let bytes = self.read_local(source, &child).await.map_err(|e| match e {
                        TransferError::NotLocal { .. } => TransferError::NotLocal {
                            what: format!(
                                "{source} lists platform {} ({}), which is not in the store",
                                entry.platform, child.digest
                            ),
                            hint: "pull it with --all-platforms, or push one platform with --platform",
                        },
                        other => other,
                    })?;
                    chosen.push((child, bytes));
                }
                match (&options.platform, chosen.len()) {
                    (Some(p), 0) => {
                        return Err(TransferError::NoPlatform {
                            reference: source.to_owned(),
                            platform: p.to_string(),
                            offered: "see `distctl inspect`".into(),
                        });
                    }
                    // One platform is pushed as a plain manifest under the tag.
                    (Some(_), _) => chosen.into_iter().take(1).collect(),
                    (None, _) => {
                        chosen.push((root.clone(), root_bytes));
                        chosen
                    }
                }
            }
            _ => {
                return Err(TransferError::Unsupported {
                    reference: source.to_owned(),
                    media_type: root.media_type.clone(),
                    hint: "",
                });
            }
        };
        let mut seen = HashSet::new();
        for (manifest, bytes) in &manifests {
            if media::classify(&manifest.media_type) != ContentClass::Manifest {
                continue;
            }
            let children =
                media::children(&manifest.media_type, bytes).map_err(|e| bad(e.to_string()))?;
            for child in children {
                if !seen.insert(child.digest.clone()) {
                    continue;
                }
                let foreign = media::is_non_distributable(&child.media_type);
                if self.store.info(&child.digest).await.is_err() {
                    if foreign {
                        events
                            .send(Event::Warning(format!(
                                "not pushing non-distributable layer {}: it is not in the store",
                                child.digest
                            )))
                            .await?;
                        continue;
                    }
                    return Err(TransferError::NotLocal {
                        what: format!(
                            "{source} needs blob {}, which is not in the store",
                            child.digest
                        ),
                        hint: "pull the image again to complete it",
                    });
                }
                plan.blobs.push(Descriptor {
                    media_type: child.media_type,
                    digest: child.digest,
                    size: child.size,
                });
            }
        }
        plan.manifests = manifests;
        Ok(plan)
    }

    /// A manifest or index of the local image; NOT_FOUND says to pull or
    /// import the image again.
    async fn read_local(&self, source: &str, blob: &Descriptor) -> Result<Vec<u8>, TransferError> {
        match super::read_small(&self.store, blob).await {
            Err(TransferError::Store(e)) if e.kind() == distd_sdk::ErrorKind::NotFound => {
                Err(TransferError::NotLocal {
                    what: format!(
                        "{source}'s {} {} is not in the store",
                        blob.media_type, blob.digest
                    ),
                    hint: "pull or import the image again",
                })
            }
            other => other,
        }
    }
}
