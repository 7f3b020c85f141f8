//! The bucket's few operations, with errors that name the key: reading
//! links and small objects, heads, writes, ranged reads and listing.

use bytes::Bytes;
use distd_sdk::{ByteStream, Digest, ErrorKind, TransportError};
use object_store::aws::AmazonS3;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use tokio_stream::StreamExt as _;

use crate::error::{S3Error, Target};
use crate::keys::{self, Layout, Repo};

/// Links are a digest: anything longer is not one.
const MAX_LINK_BYTES: u64 = 1024;

/// The bucket, its layout and how to name it in messages.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub store: AmazonS3,
    pub target: Target,
    pub layout: Layout,
}

impl Bucket {
    /// The error for a failed request about `key`.
    pub(crate) fn error(&self, what: &str, key: &Path, e: object_store::Error) -> S3Error {
        self.target.error(format!("{what} {key}"), e)
    }

    /// The size of `key`, `None` when absent.
    pub(crate) async fn head(&self, key: &Path) -> Result<Option<u64>, S3Error> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("checking", key, e)),
        }
    }

    /// The bytes of `key` if at most `limit`, `None` when absent.
    pub(crate) async fn read_small(
        &self,
        key: &Path,
        limit: u64,
    ) -> Result<Option<Bytes>, S3Error> {
        let result = match self.store.get_opts(key, GetOptions::default()).await {
            Ok(result) => result,
            Err(e) if crate::error::classify(&e) == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("reading", key, e)),
        };
        if result.meta.size > limit {
            return Err(S3Error::invalid(
                ErrorKind::FailedPrecondition,
                format!(
                    "{key} is {} bytes, more than the {limit} bytes accepted there",
                    result.meta.size
                ),
            ));
        }
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.error("reading", key, e))?;
        Ok(Some(bytes))
    }

    /// The digest a link names, `None` when the link is absent.
    pub(crate) async fn read_link(&self, key: &Path) -> Result<Option<Digest>, S3Error> {
        match self.read_small(key, MAX_LINK_BYTES).await? {
            Some(bytes) => keys::parse_link(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether link `key` exists and names `digest`.
    pub(crate) async fn links(&self, key: &Path, digest: &Digest) -> Result<bool, S3Error> {
        Ok(self.read_link(key).await?.as_ref() == Some(digest))
    }

    /// Whether `repo` links blob `digest` as a layer or config.
    pub(crate) async fn links_layer(
        &self,
        repo: Repo<'_>,
        digest: &Digest,
    ) -> Result<bool, S3Error> {
        self.links(&self.layout.layer_link(repo, digest)?, digest)
            .await
    }

    /// Whether `repo` links `digest` as a manifest revision.
    pub(crate) async fn links_revision(
        &self,
        repo: Repo<'_>,
        digest: &Digest,
    ) -> Result<bool, S3Error> {
        self.links(&self.layout.revision_link(repo, digest)?, digest)
            .await
    }

    /// Writes `bytes` to `key`.
    pub(crate) async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), S3Error> {
        self.store
            .put(key, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| self.error("writing", key, e))
    }

    /// Writes link `key` naming `digest`.
    pub(crate) async fn write_link(&self, key: &Path, digest: &Digest) -> Result<(), S3Error> {
        self.put(key, Bytes::from(keys::link_content(digest))).await
    }

    /// Whether anything exists under `prefix`.
    pub(crate) async fn any_under(&self, prefix: &Path) -> Result<bool, S3Error> {
        let options = PaginatedListOptions {
            max_keys: Some(1),
            ..PaginatedListOptions::default()
        };
        let under = format!("{prefix}/");
        match self.store.list_paginated(Some(&under), options).await {
            Ok(page) => Ok(!page.result.objects.is_empty()),
            Err(e) => Err(self.error("listing", prefix, e)),
        }
    }

    /// Streams `key` from `offset`, which must be below its size.
    pub(crate) async fn stream_from(&self, key: &Path, offset: u64) -> Result<ByteStream, S3Error> {
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(key, options)
            .await
            .map_err(|e| self.error("reading", key, e))?;
        let target = self.target.clone();
        let what = format!("reading {key} from offset {offset}");
        let stream = result
            .into_stream()
            .map(move |item| item.map_err(|e| TransportError::from(target.error(what.clone(), e))));
        Ok(Box::pin(stream))
    }
}
