//! The pull pipeline: resolve, store the manifest(s), fetch config and layers
//! concurrently under a lease, and write the image record last, so a failed
//! pull never leaves an image pointing at missing content. Its partial blobs
//! stay as ingests under the lease: the next pull resumes them, and GC
//! collects them once the lease expires.

mod attempts;
mod error;
mod fetch;
pub mod inspect;
pub mod platform;
mod push;
mod push_blob;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use distd_sdk::media::{self, ContentClass};
use distd_sdk::{Descriptor, Digest, Locator, Reference};
use tokio::sync::{Semaphore, mpsc};

pub use error::TransferError;
use fetch::Fetcher;
pub use fetch::Inflight;
use platform::Platform;
pub use push::{DEFAULT_PUSH_CONCURRENCY, PushOptions, Pusher};
pub use route::{BytesByTransport, Hop, Route, TransportStats};

use crate::error::StoreError;
use crate::meta::{self, images::ImageRow, leases::LeaseRow, now_ms};
use crate::store::Store;

/// How long a pull's lease protects its partial content after a failure,
/// unless `[transfer] pull_lease_ttl` says otherwise.
pub const DEFAULT_PULL_LEASE_TTL: Duration = Duration::from_secs(3600);
/// Blobs fetched at once by default.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// How long a transport may send nothing before the next one takes over,
/// unless `[transfer] stall_timeout` says otherwise.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What happens during a pull, in order per blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The reference resolved to this manifest or index.
    Resolved {
        /// Target descriptor.
        target: Descriptor,
        /// Transport that resolved it.
        transport: String,
    },
    /// A blob download starts (or resumes from `resume_offset`).
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Transport serving it.
        transport: String,
        /// Bytes already in the ingest.
        resume_offset: u64,
    },
    /// Bytes of a blob in the store so far.
    Progress {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        bytes: u64,
    },
    /// A blob is committed.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Transport that served it.
        transport: String,
        /// Bytes moved this time (less than the size after a resume).
        transferred: u64,
    },
    /// A push mounted the blob from another repository of the registry.
    Mounted {
        /// The blob.
        digest: Digest,
        /// The repository it came from.
        from: String,
    },
    /// Nothing to move for this blob.
    Skipped {
        /// The blob.
        digest: Digest,
        /// Why (already in the store, already at the registry).
        reason: &'static str,
    },
    /// Something the user should know that did not stop the transfer.
    Warning(String),
    /// The image record is written.
    Done {
        /// Image name.
        name: String,
        /// Its target.
        target: Descriptor,
        /// Blob bytes each transport moved.
        bytes_by_transport: BTreeMap<String, u64>,
    },
}

/// Where a pull's events go; a closed receiver cancels the pull.
#[derive(Clone)]
pub struct Events(pub mpsc::Sender<Event>);

impl Events {
    /// Sends an event; `Cancelled` when nobody listens any more.
    pub async fn send(&self, event: Event) -> Result<(), TransferError> {
        self.0
            .send(event)
            .await
            .map_err(|_| TransferError::Cancelled)
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index; the host's when `None`.
    pub platform: Option<Platform>,
    /// Pull every platform of an index.
    pub all_platforms: bool,
    /// Blobs fetched at once.
    pub concurrency: usize,
    /// Also fetch non-distributable (foreign) layers.
    pub include_foreign: bool,
    /// A transport silent this long on a blob hands it to the next one.
    pub stall_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            all_platforms: false,
            concurrency: DEFAULT_CONCURRENCY,
            include_foreign: false,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// The daemon's pull settings (`[transfer]`).
#[derive(Debug, Clone)]
pub struct PullDefaults {
    /// Blobs fetched at once per pull.
    pub concurrency: usize,
    /// How long a pull's lease outlives a failed pull.
    pub lease_ttl: Duration,
    /// Fetch non-distributable layers too.
    pub include_foreign: bool,
    /// See [`PullOptions::stall_timeout`].
    pub stall_timeout: Duration,
}

impl Default for PullDefaults {
    fn default() -> Self {
        PullDefaults {
            concurrency: DEFAULT_CONCURRENCY,
            lease_ttl: DEFAULT_PULL_LEASE_TTL,
            include_foreign: false,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

impl From<&crate::config::TransferConfig> for PullDefaults {
    fn from(config: &crate::config::TransferConfig) -> Self {
        PullDefaults {
            concurrency: config.concurrency,
            lease_ttl: config.pull_lease_ttl,
            include_foreign: config.include_foreign_layers,
            stall_timeout: config.stall_timeout,
        }
    }
}

impl PullDefaults {
    /// The options of a pull that asks for nothing special.
    pub fn options(&self) -> PullOptions {
        PullOptions {
            concurrency: self.concurrency,
            include_foreign: self.include_foreign,
            stall_timeout: self.stall_timeout,
            ..PullOptions::default()
        }
    }
}

/// Pulls images into a store; one per daemon, shared by all pulls.
#[derive(Clone)]
pub struct Puller {
    store: Store,
    inflight: Inflight,
    lease_ttl: Duration,
}

impl Puller {
    /// A puller over `store` whose pulls' leases last `lease_ttl`.
    pub fn new(store: Store, lease_ttl: Duration) -> Self {
        Puller {
            store,
            inflight: Inflight::default(),
            lease_ttl,
        }
    }

    /// Pulls `reference` through the transports of `route`; returns the
    /// image's target.
    pub async fn pull(
        &self,
        route: Route,
        reference: &Reference,
        options: &PullOptions,
        events: Events,
    ) -> Result<Descriptor, TransferError> {
        for left_out in &route.left_out {
            events
                .send(Event::Warning(format!("not using {left_out}")))
                .await?;
        }
        let lease = self.create_lease().await?;
        let fetcher = Fetcher {
            store: self.store.clone(),
            route,
            lease: lease.clone(),
            inflight: self.inflight.clone(),
            events,
            stall: options.stall_timeout,
            moved: BytesByTransport::default(),
        };
        // The lease's clock runs from the pull's last sign of life: renewed
        // while the pull runs, so a long pull keeps its content, and set
        // once more when it fails, so the partial content gets the whole TTL.
        let renewal = tokio::spawn(self.clone().renew(lease.clone()));
        let result = self.pull_leased(&fetcher, reference, options).await;
        renewal.abort();
        if result.is_ok() {
            // The image record roots the content now.
            self.store
                .meta()
                .run(move |conn| meta::leases::delete(conn, &lease))
                .await?;
        } else if let Err(e) = self.extend(&lease).await {
            // The pull's own error is the one to report.
            tracing::warn!(lease = %lease, error = %e, "cannot renew the failed pull's lease");
        }
        result
    }

    /// Keeps `lease` alive until aborted.
    async fn renew(self, lease: String) {
        let period = (self.lease_ttl / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = self.extend(&lease).await {
                tracing::warn!(lease = %lease, error = %e, "cannot renew the pull's lease");
            }
        }
    }

    /// Moves `lease`'s expiry to one TTL from now.
    async fn extend(&self, lease: &str) -> Result<(), StoreError> {
        let expires = now_ms().saturating_add(self.ttl_ms());
        let lease = lease.to_owned();
        self.store
            .meta()
            .run(move |conn| meta::leases::set_expiry(conn, &lease, Some(expires)))
            .await
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    async fn create_lease(&self) -> Result<String, StoreError> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|e| StoreError::Task(format!("no randomness: {e}")))?;
        let now = now_ms();
        let ttl = self.ttl_ms();
        let row = LeaseRow {
            id: format!(
                "pull-{}",
                random
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            created_at: now,
            expires_at: Some(now.saturating_add(ttl)),
            labels: [("distd.pull".to_owned(), "true".to_owned())].into(),
            resources: Vec::new(),
        };
        let id = row.id.clone();
        self.store
            .meta()
            .run(move |conn| meta::leases::insert(conn, &row))
            .await?;
        Ok(id)
    }

    async fn pull_leased(
        &self,
        fetcher: &Fetcher,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<Descriptor, TransferError> {
        let name = reference.to_string();
        let (target, resolver) = fetcher.route.resolve(reference).await?;
        fetcher
            .events
            .send(Event::Resolved {
                target: target.clone(),
                transport: resolver.name,
            })
            .await?;
        fetcher.fetch(&target).await?;
        let manifests = match media::classify(&target.media_type) {
            ContentClass::Manifest => vec![target.clone()],
            ContentClass::Index => {
                let index = read_small(&self.store, &target).await?;
                let wanted = match (&options.platform, options.all_platforms) {
                    (_, true) => None,
                    (Some(platform), false) => Some(platform.clone()),
                    (None, false) => Some(Platform::host()),
                };
                let bad = |detail: String| TransferError::BadManifest {
                    reference: name.clone(),
                    detail,
                };
                let entries = platform::entries(&index, wanted.as_ref()).map_err(bad)?;
                let chosen =
                    platform::select(entries, options.all_platforms).map_err(|offered| {
                        TransferError::NoPlatform {
                            reference: name.clone(),
                            platform: wanted
                                .map_or_else(|| "any platform".into(), |p| p.to_string()),
                            offered,
                        }
                    })?;
                chosen
                    .into_iter()
                    .map(|e| Descriptor {
                        media_type: e.child.media_type,
                        digest: e.child.digest,
                        size: e.child.size,
                    })
                    .collect()
            }
            _ => {
                return Err(TransferError::Unsupported {
                    reference: name,
                    media_type: target.media_type.clone(),
                    hint: if target.media_type.contains("manifest.v1") {
                        ": Docker schema 1 images are deprecated; push the image again with a current tool"
                    } else {
                        ""
                    },
                });
            }
        };
        let mut blobs = Vec::new();
        for manifest in &manifests {
            fetcher.fetch(manifest).await?;
            let bytes = read_small(&self.store, manifest).await?;
            let children = media::children(&manifest.media_type, &bytes).map_err(|e| {
                TransferError::BadManifest {
                    reference: name.clone(),
                    detail: e.to_string(),
                }
            })?;
            for child in children {
                let foreign = media::is_non_distributable(&child.media_type);
                if foreign && !options.include_foreign {
                    fetcher
                        .events
                        .send(Event::Warning(format!(
                            "skipping non-distributable layer {}",
                            child.digest
                        )))
                        .await?;
                    continue;
                }
                blobs.push(Descriptor {
                    media_type: child.media_type,
                    digest: child.digest,
                    size: child.size,
                });
            }
        }
        let digests: Vec<String> = blobs.iter().map(|b| b.digest.to_string()).collect();
        let shared = Arc::new(fetcher.clone());
        // Aborted downloads leave their ingests resumable.
        for_each_blob(blobs, options.concurrency, move |blob| {
            let fetcher = Arc::clone(&shared);
            async move { fetcher.fetch(&blob).await }
        })
        .await?;
        record_sources(&self.store, &fetcher.route.locator, digests).await?;
        self.record_image(&name, &target).await?;
        fetcher
            .events
            .send(Event::Done {
                name,
                target: target.clone(),
                bytes_by_transport: fetcher.moved.snapshot(),
            })
            .await?;
        Ok(target)
    }

    async fn record_image(&self, name: &str, target: &Descriptor) -> Result<(), StoreError> {
        let now = now_ms();
        let row = ImageRow {
            name: name.to_owned(),
            media_type: target.media_type.clone(),
            digest: target.digest.to_string(),
            size: i64::try_from(target.size).unwrap_or(i64::MAX),
            annotations: Default::default(),
            labels: Default::default(),
            created_at: now,
            updated_at: now,
        };
        self.store
            .meta()
            .run(move |conn| meta::images::upsert(conn, &row))
            .await
    }
}

/// Runs `work` on every blob, `concurrency` at a time, each on a task of
/// its own; the first failure wins and aborts the others (pulls keep their
/// ingests and pushes their upload sessions, so nothing is lost).
async fn for_each_blob<F, Fut>(
    blobs: Vec<Descriptor>,
    concurrency: usize,
    work: F,
) -> Result<(), TransferError>
where
    F: Fn(Descriptor) -> Fut,
    Fut: Future<Output = Result<(), TransferError>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for blob in blobs {
        let permits = Arc::clone(&permits);
        let job = work(blob);
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| TransferError::Cancelled)?;
            job.await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| StoreError::Task(e.to_string()))??;
    }
    Ok(())
}

/// Reads a manifest or index from the store, refusing one larger than
/// [`media::MAX_MANIFEST_BYTES`].
async fn read_small(store: &Store, blob: &Descriptor) -> Result<Vec<u8>, TransferError> {
    if blob.size > media::MAX_MANIFEST_BYTES {
        return Err(TransferError::BadManifest {
            reference: blob.digest.to_string(),
            detail: format!("a {} of {} bytes is too large", blob.media_type, blob.size),
        });
    }
    let mut chunks = store.read(&blob.digest, 0, 0).await?;
    let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
    while let Some(chunk) = chunks.recv().await {
        bytes.extend_from_slice(&chunk?.1);
    }
    Ok(bytes)
}

/// Remembers that `locator` holds these blobs, so a push to another
/// repository of the same registry can mount them instead of uploading.
async fn record_sources(
    store: &Store,
    locator: &Locator,
    digests: Vec<String>,
) -> Result<(), StoreError> {
    let locator = locator.clone();
    let now = now_ms();
    store
        .meta()
        .run(move |conn| {
            let tx = conn.transaction()?;
            for digest in &digests {
                meta::transfers::record_source(
                    &tx,
                    digest,
                    &locator.registry,
                    &locator.repository,
                    now,
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod push_tests;
#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod tests;
