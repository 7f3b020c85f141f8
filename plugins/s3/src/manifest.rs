//! Manifests: resolving tags and digests through the repository's links,
//! and pushing manifests (blob data, revision link, tag links, in that
//! order, so a reader never follows a link to nothing).

use bytes::Bytes;
use distd_sdk::media::{self, ContentClass};
use distd_sdk::reference::DEFAULT_TAG;
use distd_sdk::transport::{Descriptor, Locator};
use distd_sdk::{Algorithm, Digest, ErrorKind, Reference};
use object_store::path::Path;
use serde_json::Value;

use crate::bucket::Bucket;
use crate::error::S3Error;
use crate::keys::{self, Repo};

/// Docker's signed schema 1 manifest (what a `schemaVersion: 1` document is).
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The media type of a stored manifest: its `mediaType` field, else
/// inferred from its shape (`manifests` → OCI index, `config` or `layers` →
/// OCI manifest, schema 1 → Docker's signed schema 1).
pub(crate) fn media_type_of(bytes: &[u8]) -> String {
    let document: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if let Some(declared) = document["mediaType"].as_str().filter(|m| !m.is_empty()) {
        return declared.to_owned();
    }
    let inferred = if document["manifests"].is_array() {
        media::OCI_INDEX
    } else if document["schemaVersion"].as_u64() == Some(1) {
        DOCKER_SCHEMA1_SIGNED
    } else {
        media::OCI_MANIFEST
    };
    inferred.to_owned()
}

fn not_found(message: String) -> S3Error {
    S3Error::invalid(ErrorKind::NotFound, message)
}

/// NotFound for `key` of `repo`, hinting at the root directory when the
/// repository has nothing at all.
async fn missing(bucket: &Bucket, repo: Repo<'_>, what: String, key: &Path) -> S3Error {
    let hint = match bucket.layout.repository(repo) {
        Ok(prefix) => match bucket.any_under(&prefix).await {
            Ok(false) => format!(
                " (nothing exists under {prefix}/: is root_directory right, and is {} \
                 the repository's name?)",
                repo.as_str()
            ),
            _ => String::new(),
        },
        Err(_) => String::new(),
    };
    not_found(format!("{what}: {key} does not exist{hint}"))
}

/// Resolves `reference` to its manifest's descriptor.
pub(crate) async fn resolve(bucket: &Bucket, reference: &Reference) -> Result<Descriptor, S3Error> {
    let repo = keys::repository(reference.repository())?;
    let digest = match reference.digest() {
        Some(digest) => digest.clone(),
        None => {
            let tag = keys::tag(reference.tag().unwrap_or(DEFAULT_TAG))?;
            let current = bucket.layout.tag_current(repo, tag)?;
            match bucket.read_link(&current).await? {
                Some(digest) => digest,
                None => {
                    let what = format!("no tag {reference}");
                    return Err(missing(bucket, repo, what, &current).await);
                }
            }
        }
    };
    let revision = bucket.layout.revision_link(repo, &digest)?;
    if !bucket.links(&revision, &digest).await? {
        let what = format!("{} has no manifest {digest}", repo.as_str());
        return Err(missing(bucket, repo, what, &revision).await);
    }
    let data = bucket.layout.blob_data(&digest)?;
    let Some(bytes) = bucket.read_small(&data, media::MAX_MANIFEST_BYTES).await? else {
        return Err(not_found(format!(
            "manifest {digest} of {} is linked but its data {data} is missing",
            repo.as_str()
        )));
    };
    Ok(Descriptor {
        media_type: media_type_of(&bytes),
        size: bytes.len() as u64,
        digest,
    })
}

/// Whether `repo` links child `digest` of a manifest of class `class`:
/// a layer link, or for an index's manifests a revision link.
async fn child_linked(
    bucket: &Bucket,
    repo: Repo<'_>,
    class: ContentClass,
    digest: &Digest,
) -> Result<bool, S3Error> {
    if class == ContentClass::Index && bucket.links_revision(repo, digest).await? {
        return Ok(true);
    }
    bucket.links_layer(repo, digest).await
}

/// Stores manifest `bytes` under `reference` (a tag, or its digest).
pub(crate) async fn push_manifest(
    bucket: &Bucket,
    locator: &Locator,
    reference: &str,
    media_type: &str,
    bytes: Bytes,
) -> Result<(), S3Error> {
    let repo = keys::repository(&locator.repository)?;
    let invalid = |message: String| S3Error::invalid(ErrorKind::InvalidArgument, message);
    if bytes.len() as u64 > media::MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "manifest of {} bytes is larger than the {} bytes accepted",
            bytes.len(),
            media::MAX_MANIFEST_BYTES
        )));
    }
    let algorithm = match Digest::parse(reference) {
        Ok(d) => d.algorithm(),
        Err(_) => Algorithm::Sha256,
    };
    let digest = Digest::of_bytes(algorithm, &bytes);
    let tag = if reference.contains(':') {
        let named = Digest::parse(reference).map_err(|e| invalid(e.to_string()))?;
        if named != digest {
            return Err(invalid(format!(
                "manifest pushed as {named} hashes to {digest}"
            )));
        }
        None
    } else {
        Some(keys::tag(reference)?)
    };
    let children = media::children(media_type, &bytes).map_err(|e| invalid(e.to_string()))?;
    let class = media::classify(media_type);
    for child in children {
        if media::is_non_distributable(&child.media_type) {
            continue;
        }
        if !child_linked(bucket, repo, class, &child.digest).await? {
            return Err(S3Error::invalid(
                ErrorKind::FailedPrecondition,
                format!(
                    "manifest {digest} names {} ({}), which repository {} does not link: \
                     push it first",
                    child.digest,
                    child.media_type,
                    repo.as_str()
                ),
            ));
        }
    }
    let data = bucket.layout.blob_data(&digest)?;
    if bucket.head(&data).await? != Some(bytes.len() as u64) {
        bucket.put(&data, bytes).await?;
    }
    bucket
        .write_link(&bucket.layout.revision_link(repo, &digest)?, &digest)
        .await?;
    if let Some(tag) = tag {
        bucket
            .write_link(&bucket.layout.tag_index(repo, tag, &digest)?, &digest)
            .await?;
        bucket
            .write_link(&bucket.layout.tag_current(repo, tag)?, &digest)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_come_from_the_document_or_its_shape() {
        let declared = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}"}}"#,
            media::DOCKER_MANIFEST
        );
        assert_eq!(media_type_of(declared.as_bytes()), media::DOCKER_MANIFEST);
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#),
            media::OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{},"layers":[]}"#),
            media::OCI_MANIFEST
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":1,"fsLayers":[]}"#),
            DOCKER_SCHEMA1_SIGNED
        );
        assert_eq!(media_type_of(b"not json"), media::OCI_MANIFEST);
    }
}
