//! The `Images` service.

use distd_proto::distd::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp};
use super::status;
use crate::error::{Result, StoreError};
use crate::meta::{self, images::ImageRow, now_ms};
use crate::store::Store;

/// Longest image name accepted.
const MAX_NAME_BYTES: usize = 1024;

/// Serves `Images` from the store's metadata.
pub struct ImagesService {
    store: Store,
}

impl ImagesService {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        ImagesService { store }
    }

    /// Checks the target is stored, then writes the row with `operation`
    /// (insert or update) in the same transaction; returns the stored row.
    async fn write(
        &self,
        row: ImageRow,
        operation: fn(&rusqlite::Connection, &ImageRow) -> Result<()>,
    ) -> Result<ImageRow> {
        self.store
            .meta()
            .run(move |conn| {
                let tx = conn.transaction()?;
                require_target(&tx, &row)?;
                operation(&tx, &row)?;
                let stored = meta::images::get(&tx, &row.name)?
                    .ok_or_else(|| StoreError::ImageNotFound(row.name.clone()))?;
                tx.commit()?;
                Ok(stored)
            })
            .await
    }
}

fn to_api(row: ImageRow) -> pb::Image {
    pb::Image {
        name: row.name,
        target: Some(pb::Descriptor {
            media_type: row.media_type,
            digest: row.digest,
            size: row.size,
            annotations: row.annotations,
        }),
        labels: row.labels,
        times: Some(pb::Times {
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
        }),
    }
}

/// Validates an image from a request into a row stamped `now`.
fn from_api(image: Option<pb::Image>, now: i64) -> Result<ImageRow> {
    let image = image.ok_or_else(|| StoreError::InvalidArgument("`image` is required".into()))?;
    convert::name("image.name", &image.name, MAX_NAME_BYTES)?;
    let target = image
        .target
        .ok_or_else(|| StoreError::InvalidArgument("`image.target` is required".into()))?;
    let digest = convert::digest("image.target.digest", &target.digest)?;
    convert::unsigned("image.target.size", target.size)?;
    if target.media_type.is_empty() {
        return Err(StoreError::InvalidArgument(
            "`image.target.media_type` is required".into(),
        ));
    }
    Ok(ImageRow {
        name: image.name,
        media_type: target.media_type,
        digest: digest.to_string(),
        size: target.size,
        annotations: target.annotations,
        labels: image.labels,
        created_at: now,
        updated_at: now,
    })
}

/// Fails with `TargetMissing` unless the target blob is committed with the
/// declared size.
fn require_target(conn: &rusqlite::Connection, row: &ImageRow) -> Result<()> {
    let digest = distd_sdk::Digest::parse(&row.digest)?;
    match meta::blobs::get(conn, &row.digest)? {
        None => Err(StoreError::TargetMissing(digest)),
        Some(blob) if blob.size != row.size => Err(StoreError::InvalidArgument(format!(
            "`image.target.size` is {} but {} holds {} bytes",
            row.size, row.digest, blob.size
        ))),
        Some(_) => Ok(()),
    }
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    async fn get(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let name = request.into_inner().name;
        let row = self
            .store
            .meta()
            .run(move |conn| meta::images::get(conn, &name)?.ok_or(StoreError::ImageNotFound(name)))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(to_api(row)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let prefix = request.into_inner().name_prefix;
        let rows = self
            .store
            .meta()
            .run(move |conn| meta::images::list(conn, &prefix))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: rows.into_iter().map(to_api).collect(),
        }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::CreateImageResponse>, Status> {
        let row = from_api(request.into_inner().image, now_ms()).map_err(status)?;
        let row = self
            .write(row, meta::images::insert)
            .await
            .map_err(status)?;
        tracing::info!(name = %row.name, target = %row.digest, "image created");
        Ok(Response::new(pb::CreateImageResponse {
            image: Some(to_api(row)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::UpdateImageResponse>, Status> {
        let row = from_api(request.into_inner().image, now_ms()).map_err(status)?;
        let row = self
            .write(row, meta::images::update)
            .await
            .map_err(status)?;
        tracing::info!(name = %row.name, target = %row.digest, "image updated");
        Ok(Response::new(pb::UpdateImageResponse {
            image: Some(to_api(row)),
        }))
    }

    async fn tag(
        &self,
        request: Request<pb::TagImageRequest>,
    ) -> Result<Response<pb::TagImageResponse>, Status> {
        let pb::TagImageRequest { source, target } = request.into_inner();
        convert::name("target", &target, MAX_NAME_BYTES).map_err(status)?;
        let now = now_ms();
        let row = self
            .store
            .meta()
            .run(move |conn| {
                let tx = conn.transaction()?;
                let mut row =
                    meta::images::get(&tx, &source)?.ok_or(StoreError::ImageNotFound(source))?;
                row.name = target;
                row.created_at = now;
                row.updated_at = now;
                meta::images::upsert(&tx, &row)?;
                let row = meta::images::get(&tx, &row.name)?
                    .ok_or_else(|| StoreError::ImageNotFound(row.name.clone()))?;
                tx.commit()?;
                Ok(row)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TagImageResponse {
            image: Some(to_api(row)),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let name = request.into_inner().name;
        let deleted = name.clone();
        self.store
            .meta()
            .run(move |conn| meta::images::delete(conn, &name))
            .await
            .map_err(status)?;
        tracing::info!(name = %deleted, "image deleted");
        Ok(Response::new(pb::DeleteImageResponse {}))
    }
}
