//! Thin typed wrappers over the unary and listing RPCs: they validate what
//! the client can validate (digests), and turn `tonic::Status` into
//! [`ClientError`] so callers match on [`ErrorKind`](crate::ErrorKind).

use std::collections::HashMap;
use std::time::Duration;

use distd_proto::distd::v1 as pb;

use super::{Client, ClientError};
use crate::digest::Digest;
use crate::error::ErrorKind;

impl Client {
    /// What the store records for the blob `digest`. `NotFound` when absent.
    pub async fn content_info(&self, digest: &Digest) -> Result<pb::Info, ClientError> {
        let response = self
            .content()
            .info(pb::InfoRequest {
                digest: digest.to_string(),
            })
            .await?
            .into_inner();
        response
            .info
            .ok_or_else(|| ClientError::Protocol("Info returned no info".into()))
    }

    /// Whether the blob `digest` is in the store.
    pub async fn content_exists(&self, digest: &Digest) -> Result<bool, ClientError> {
        match self.content_info(digest).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The blobs whose digest starts with `digest_prefix` and whose media
    /// type is `media_type` (empty strings match everything).
    pub async fn content_list(
        &self,
        digest_prefix: &str,
        media_type: &str,
    ) -> Result<Vec<pb::Info>, ClientError> {
        let mut stream = self
            .content()
            .list(pb::ListContentRequest {
                digest_prefix: digest_prefix.to_owned(),
                media_type: media_type.to_owned(),
            })
            .await?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(page) = stream.message().await? {
            infos.extend(page.infos);
        }
        Ok(infos)
    }

    /// Removes the blob `digest` now, referenced or not. `NotFound` when absent.
    pub async fn content_delete(&self, digest: &Digest) -> Result<(), ClientError> {
        self.content()
            .delete(pb::DeleteContentRequest {
                digest: digest.to_string(),
            })
            .await?;
        Ok(())
    }

    /// The ingests in progress.
    pub async fn content_ingests(&self) -> Result<Vec<pb::IngestStatus>, ClientError> {
        Ok(self
            .content()
            .list_ingests(pb::ListIngestsRequest {})
            .await?
            .into_inner()
            .ingests)
    }

    /// Discards the ingest `ingest_ref`. `NotFound` when there is none;
    /// `Unavailable` while a writer holds it.
    pub async fn content_abort(&self, ingest_ref: &str) -> Result<(), ClientError> {
        self.content()
            .abort(pb::AbortRequest {
                r#ref: ingest_ref.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// The image `name`. `NotFound` when absent.
    pub async fn image_get(&self, name: &str) -> Result<pb::Image, ClientError> {
        let response = self
            .images()
            .get(pb::GetImageRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        response
            .image
            .ok_or_else(|| ClientError::Protocol("Images.Get returned no image".into()))
    }

    /// The images whose names start with `name_prefix`, by name.
    pub async fn image_list(&self, name_prefix: &str) -> Result<Vec<pb::Image>, ClientError> {
        Ok(self
            .images()
            .list(pb::ListImagesRequest {
                name_prefix: name_prefix.to_owned(),
            })
            .await?
            .into_inner()
            .images)
    }

    /// Records the image `name` → `target`, or points the existing image of
    /// that name at `target`. `FailedPrecondition` when the target is not in
    /// the store: write the content first.
    pub async fn image_put(
        &self,
        name: &str,
        target: pb::Descriptor,
    ) -> Result<pb::Image, ClientError> {
        let image = pb::Image {
            name: name.to_owned(),
            target: Some(target),
            ..pb::Image::default()
        };
        let created = self
            .images()
            .create(pb::CreateImageRequest {
                image: Some(image.clone()),
            })
            .await;
        let image = match created {
            Ok(response) => response.into_inner().image,
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.images()
                    .update(pb::UpdateImageRequest { image: Some(image) })
                    .await?
                    .into_inner()
                    .image
            }
            Err(status) => return Err(status.into()),
        };
        image.ok_or_else(|| ClientError::Protocol("Images returned no image".into()))
    }

    /// Gives the target of image `source` the name `target` too.
    /// `NotFound` when `source` is absent.
    pub async fn image_tag(&self, source: &str, target: &str) -> Result<pb::Image, ClientError> {
        let response = self
            .images()
            .tag(pb::TagImageRequest {
                source: source.to_owned(),
                target: target.to_owned(),
            })
            .await?
            .into_inner();
        response
            .image
            .ok_or_else(|| ClientError::Protocol("Images.Tag returned no image".into()))
    }

    /// Removes the image `name`; its content stays until collected.
    /// `NotFound` when absent.
    pub async fn image_delete(&self, name: &str) -> Result<(), ClientError> {
        self.images()
            .delete(pb::DeleteImageRequest {
                name: name.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Starts a lease. An empty `id` gets a generated one; `expire` `None`
    /// lives until deleted. `AlreadyExists` when the id is taken.
    pub async fn lease_create(
        &self,
        id: &str,
        expire: Option<Duration>,
        labels: HashMap<String, String>,
    ) -> Result<pb::Lease, ClientError> {
        let expire_seconds = expire.map_or(0, |d| {
            // Round up: a lease asked for 500 ms must not be "no expiry".
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            i64::try_from(secs).unwrap_or(i64::MAX)
        });
        let response = self
            .leases()
            .create(pb::CreateLeaseRequest {
                id: id.to_owned(),
                expire_seconds,
                labels,
            })
            .await?
            .into_inner();
        response
            .lease
            .ok_or_else(|| ClientError::Protocol("Leases.Create returned no lease".into()))
    }

    /// Ends the lease `id`. `NotFound` when absent.
    pub async fn lease_delete(&self, id: &str) -> Result<(), ClientError> {
        self.leases()
            .delete(pb::DeleteLeaseRequest { id: id.to_owned() })
            .await?;
        Ok(())
    }

    /// The leases, expired ones included until the next collection.
    pub async fn lease_list(&self) -> Result<Vec<pb::Lease>, ClientError> {
        Ok(self
            .leases()
            .list(pb::ListLeasesRequest {})
            .await?
            .into_inner()
            .leases)
    }

    /// Puts the blob `digest` under the lease `lease_id`.
    pub async fn lease_add_content(
        &self,
        lease_id: &str,
        digest: &Digest,
    ) -> Result<(), ClientError> {
        self.leases()
            .add_resource(pb::AddLeaseResourceRequest {
                lease_id: lease_id.to_owned(),
                resource: Some(pb::LeaseResource {
                    kind: pb::LeaseResourceKind::Content as i32,
                    id: digest.to_string(),
                }),
            })
            .await?;
        Ok(())
    }

    /// What the store holds and what a collection would free.
    pub async fn store_usage(&self) -> Result<pb::UsageResponse, ClientError> {
        Ok(self.store().usage(pb::UsageRequest {}).await?.into_inner())
    }

    /// Collects garbage (or, with `dry_run`, reports what would go).
    pub async fn store_collect(&self, dry_run: bool) -> Result<pb::CollectResponse, ClientError> {
        Ok(self
            .store()
            .collect(pb::CollectRequest { dry_run })
            .await?
            .into_inner())
    }

    /// Re-hashes every blob and reports problems; changes nothing.
    pub async fn store_verify(&self) -> Result<pb::VerifyResponse, ClientError> {
        Ok(self
            .store()
            .verify(pb::VerifyRequest {})
            .await?
            .into_inner())
    }
}
