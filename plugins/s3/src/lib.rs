//! `s3`: a distd transport that reads and writes a Docker Distribution
//! registry's storage (layout 2.8) in an S3 bucket directly, so a site pulls
//! from and pushes to the bucket while the registry serves the same content.
//!
//! - **resolve** follows `_manifests/tags/<tag>/current/link`, requires the
//!   revision link, and reads the manifest from blob data.
//! - **fetch** serves a blob only if the repository links it (a revision
//!   link for manifests, a `_layers` link for anything else; either is
//!   accepted): the bucket holds every repository's blobs, and this keeps a
//!   repository from reading another's.
//! - **push** writes blob data (one `PUT`, or a resumable multipart upload
//!   for blobs over the part size), then the links, never a link before the
//!   data it points to. **mount** links a blob another repository links.
//!
//! Keys are built only from validated values (digests, and repository names
//! and tags checked against the distribution grammar again before use).
//! Writes never delete: garbage collection stays the registry's job.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use bytes::Bytes;
use distd_sdk::media::{self, ContentClass};
use distd_sdk::transport::{
    BlobSource, ByteStream, Capabilities, Description, Descriptor, Locator, MountOutcome,
    PushProgress, UploadSession,
};
use distd_sdk::{Digest, ErrorKind, Reference, Transport, TransportError};

mod bucket;
mod config;
mod credentials;
mod error;
mod keys;
mod manifest;
mod push;
mod session;

pub use config::{DEFAULT_PART_SIZE, DEFAULT_REGION, S3Config};
pub use credentials::Credentials;
pub use error::S3Error;
pub use session::MIN_PART_SIZE;

use bucket::Bucket;
use keys::Layout;

/// A transport over a registry's storage in an S3 bucket.
#[derive(Debug)]
pub struct S3Transport {
    config: S3Config,
    bucket: Bucket,
}

/// Whether a repository may be served a blob.
enum Linked {
    /// Linked, with its data key and size.
    Found(object_store::path::Path, u64),
    /// Not linked: the link key the repository lacks.
    NoLink(object_store::path::Path),
    /// Linked, but the data key is missing.
    NoData(object_store::path::Path),
}

impl S3Transport {
    /// Checks `config` and sets up the client; nothing is sent until the
    /// first call ([`Transport::health`] checks the bucket and credentials).
    pub fn new(config: S3Config) -> Result<S3Transport, S3Error> {
        let root = keys::root(&config.root_directory)?;
        let (store, target) = config::build(&config)?;
        let bucket = Bucket {
            store,
            target,
            layout: Layout::new(&root),
        };
        Ok(S3Transport { config, bucket })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// Where blob `digest` is served from for `repository`: its data key
    /// and size if the repository links it and the data exists; else which
    /// of the two is missing.
    async fn linked_blob(
        &self,
        repository: &str,
        digest: &Digest,
        manifest_first: bool,
    ) -> Result<Linked, S3Error> {
        let repo = keys::repository(repository)?;
        let layout = &self.bucket.layout;
        let (layer, revision) = (
            layout.layer_link(repo, digest)?,
            layout.revision_link(repo, digest)?,
        );
        // The likelier link first: one request in the common case.
        let links = if manifest_first {
            [revision, layer]
        } else {
            [layer, revision]
        };
        let mut linked = false;
        for link in &links {
            if self.bucket.links(link, digest).await? {
                linked = true;
                break;
            }
        }
        let [likelier, _] = links;
        if !linked {
            return Ok(Linked::NoLink(likelier));
        }
        let data = self.bucket.layout.blob_data(digest)?;
        Ok(match self.bucket.head(&data).await? {
            Some(size) => Linked::Found(data, size),
            None => Linked::NoData(data),
        })
    }
}

#[async_trait::async_trait]
impl Transport for S3Transport {
    fn describe(&self) -> Description {
        Description {
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities {
                resolve: true,
                fetch: true,
                ranged_fetch: true,
                push: true,
                mount: true,
            },
            registries: self.config.registries.clone(),
        }
    }

    async fn health(&self) -> Result<(), TransportError> {
        // One list of at most one key: checks reachability, the bucket and
        // the credentials (an empty registry is healthy).
        let base = self.bucket.layout.base()?;
        self.bucket.any_under(&base).await?;
        Ok(())
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        Ok(manifest::resolve(&self.bucket, reference).await?)
    }

    async fn fetch(
        &self,
        locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let digest = &descriptor.digest;
        let manifest_first = matches!(
            media::classify(&descriptor.media_type),
            ContentClass::Manifest | ContentClass::Index
        );
        let bucket = &self.bucket.target.bucket;
        let (data, size) = match self
            .linked_blob(&locator.repository, digest, manifest_first)
            .await?
        {
            Linked::Found(data, size) => (data, size),
            Linked::NoLink(link) => {
                let message = format!(
                    "repository {} does not link blob {digest} in bucket {bucket}: no {link}",
                    locator.repository
                );
                return Err(TransportError::new(ErrorKind::NotFound, message));
            }
            Linked::NoData(data) => {
                let message = format!(
                    "repository {} links blob {digest}, but bucket {bucket} has no {data}: the registry's storage lost it",
                    locator.repository
                );
                return Err(TransportError::new(ErrorKind::NotFound, message));
            }
        };
        if offset > size {
            let message =
                format!("offset {offset} is past the end of blob {digest} of {size} bytes");
            return Err(TransportError::new(ErrorKind::OutOfRange, message));
        }
        if offset == size {
            return Ok(Box::pin(tokio_stream::empty()));
        }
        Ok(self.bucket.stream_from(&data, offset).await?)
    }

    async fn stat(
        &self,
        locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        match self.linked_blob(&locator.repository, digest, false).await? {
            Linked::Found(_, size) => Ok(Some(size)),
            Linked::NoLink(_) | Linked::NoData(_) => Ok(None),
        }
    }

    async fn mount(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        from: &str,
    ) -> Result<MountOutcome, TransportError> {
        let target = keys::repository(&locator.repository)?;
        let source = keys::repository(from)?;
        let digest = &blob.digest;
        if !self.bucket.links_layer(source, digest).await? {
            return Ok(MountOutcome::NotMounted(None));
        }
        let data = self.bucket.layout.blob_data(digest)?;
        if self.bucket.head(&data).await?.is_none() {
            return Ok(MountOutcome::NotMounted(None));
        }
        let link = self.bucket.layout.layer_link(target, digest)?;
        self.bucket.write_link(&link, digest).await?;
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
        let part_size = self.config.part_size;
        let bucket = &self.bucket;
        Ok(push::push_blob(bucket, part_size, locator, blob, source, resume, progress).await?)
    }

    async fn push_manifest(
        &self,
        locator: &Locator,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        Ok(manifest::push_manifest(&self.bucket, locator, reference, media_type, bytes).await?)
    }
}
