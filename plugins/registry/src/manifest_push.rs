//! Pushing manifests: `PUT /v2/<name>/manifests/<reference>`, byte for
//! byte, checking the digest the registry says it stored.

use std::future::ready;

use bytes::Bytes;
use distd_sdk::digest::Digest;
use distd_sdk::error::ErrorKind;
use distd_sdk::transport::{Locator, TransportError};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::auth::Access;
use crate::client::{Http, read_small};
use crate::errors::{push_status_error, registry_errors};

/// Stores `bytes` as manifest `reference` (a tag or digest) of `locator`
/// (`PUT /v2/<name>/manifests/<reference>`), checking the digest the
/// registry says it stored.
pub async fn push_manifest(
    http: &Http,
    locator: &Locator,
    reference: &str,
    media_type: &str,
    bytes: Bytes,
) -> Result<(), TransportError> {
    let registry = locator.registry.as_str();
    let what = format!("the push of manifest {reference} to {locator}");
    let pinned = Digest::parse(reference).ok();
    if let Some(pinned) = &pinned
        && Digest::of_bytes(pinned.algorithm(), &bytes) != *pinned
    {
        return Err(TransportError::new(
            ErrorKind::InvalidArgument,
            format!("{what}: the manifest's bytes do not have the digest it is pushed under"),
        ));
    }
    let url = format!(
        "{}/v2/{}/manifests/{reference}",
        http.base_url(registry).await?,
        locator.repository
    );
    let response = http
        .send_as(registry, Access::Push(&locator.repository), &what, |c| {
            ready(Ok(c
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.clone())))
        })
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = read_small(response, registry, &what)
            .await
            .unwrap_or_default();
        let detail = registry_errors(&body).unwrap_or_default();
        return Err(match status {
            StatusCode::BAD_REQUEST if detail.contains("MANIFEST_BLOB_UNKNOWN") => {
                TransportError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "registry {registry} refused {what}: it lacks a blob the manifest \
                         names ({detail}); push the image's blobs first"
                    ),
                )
            }
            StatusCode::PAYLOAD_TOO_LARGE => TransportError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "registry {registry} refused {what}: a manifest of {} bytes is too large \
                     for it",
                    bytes.len()
                ),
            ),
            _ => push_status_error(status, registry, &locator.repository, &what, &body),
        });
    }
    let stored = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v.trim()).ok());
    if let Some(stored) = stored {
        let ours = Digest::of_bytes(stored.algorithm(), &bytes);
        if stored != ours {
            return Err(TransportError::new(
                ErrorKind::DataLoss,
                format!(
                    "registry {registry} stored {stored} for {what}, but the manifest's digest \
                     is {ours}; the bytes were changed on the way"
                ),
            ));
        }
    }
    tracing::debug!(%locator, reference, media_type, "manifest pushed");
    Ok(())
}
