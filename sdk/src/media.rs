//! Media types distd understands, and reading the references a manifest,
//! index or config makes to other content (what garbage collection walks).

use crate::digest::{Digest, DigestError};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, uncompressed tar (as in `docker save`).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker layer, gzip-compressed tar.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Manifests larger than this are refused: they are JSON documents of a few
/// KiB, and parsing happens in memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// What a media type says about a blob's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentClass {
    /// An image manifest (OCI or Docker schema 2): references a config and layers.
    Manifest,
    /// An index or manifest list: references manifests.
    Index,
    /// An image config: JSON, references nothing.
    Config,
    /// Anything else: opaque bytes.
    Opaque,
}

/// Whether a layer of `media_type` is non-distributable ("foreign"): its
/// bytes live elsewhere and licences may forbid redistributing them, so
/// registries usually do not serve it and pulls and pushes skip it.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains(".foreign.")
}

/// Classifies a media type.
pub fn classify(media_type: &str) -> ContentClass {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => ContentClass::Manifest,
        OCI_INDEX | DOCKER_MANIFEST_LIST => ContentClass::Index,
        OCI_CONFIG | DOCKER_CONFIG => ContentClass::Config,
        _ => ContentClass::Opaque,
    }
}

/// Why a manifest, index or config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error(
        "{media_type} of {size} bytes is larger than the {MAX_MANIFEST_BYTES} bytes distd accepts"
    )]
    TooLarge {
        /// Declared media type.
        media_type: String,
        /// Actual size.
        size: u64,
    },
    /// Not JSON of the declared shape.
    #[error("content declared as {media_type} is not a valid document of that type: {reason}")]
    Malformed {
        /// Declared media type.
        media_type: String,
        /// What the parser said.
        reason: String,
    },
    /// A child descriptor's digest is malformed.
    #[error("content declared as {media_type} references a bad digest: {source}")]
    BadChild {
        /// Declared media type.
        media_type: String,
        /// The digest problem.
        source: DigestError,
    },
}

/// A reference from a manifest or index to another blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    /// The child's digest.
    pub digest: Digest,
    /// The child's declared size.
    pub size: u64,
    /// The child's declared media type.
    pub media_type: String,
}

/// The references a blob of `media_type` makes, read from its `bytes`.
/// Opaque content references nothing; a config is checked to be JSON.
pub fn children(media_type: &str, bytes: &[u8]) -> Result<Vec<ChildRef>, ManifestError> {
    let size = bytes.len() as u64;
    let class = classify(media_type);
    if class != ContentClass::Opaque && size > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            media_type: media_type.to_owned(),
            size,
        });
    }
    let malformed = |reason: String| ManifestError::Malformed {
        media_type: media_type.to_owned(),
        reason,
    };
    let descriptors = match class {
        ContentClass::Opaque => return Ok(Vec::new()),
        ContentClass::Config => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
            if !value.is_object() {
                return Err(malformed("a config must be a JSON object".into()));
            }
            return Ok(Vec::new());
        }
        ContentClass::Manifest => {
            let manifest = oci_spec::image::ImageManifest::from_reader(bytes)
                .map_err(|e| malformed(e.to_string()))?;
            let mut all = vec![manifest.config().clone()];
            all.extend(manifest.layers().iter().cloned());
            all
        }
        ContentClass::Index => {
            let index = oci_spec::image::ImageIndex::from_reader(bytes)
                .map_err(|e| malformed(e.to_string()))?;
            index.manifests().clone()
        }
    };
    descriptors
        .into_iter()
        .map(|d| {
            let digest =
                Digest::parse(d.digest().as_ref()).map_err(|source| ManifestError::BadChild {
                    media_type: media_type.to_owned(),
                    source,
                })?;
            Ok(ChildRef {
                digest,
                size: d.size(),
                media_type: d.media_type().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const LAYER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn oci_and_docker_foreign_layers_are_non_distributable() {
        assert!(is_non_distributable(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(is_non_distributable(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
    }

    fn manifest(layer_digest: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"{OCI_CONFIG}","digest":"{CONFIG}","size":2}},
            "layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{layer_digest}","size":5}}]}}"#
        )
    }

    #[test]
    fn a_manifest_references_its_config_and_layers() {
        let refs = children(OCI_MANIFEST, manifest(LAYER).as_bytes()).unwrap();
        let digests: Vec<String> = refs.iter().map(|r| r.digest.to_string()).collect();
        assert_eq!(digests, [CONFIG, LAYER]);
        assert_eq!(refs[1].size, 5);
    }

    #[test]
    fn an_index_references_its_manifests() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{LAYER}","size":7,
            "platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let refs = children(DOCKER_MANIFEST_LIST, index.as_bytes()).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].media_type, OCI_MANIFEST);
    }

    #[test]
    fn malformed_documents_are_refused() {
        assert!(children(OCI_MANIFEST, b"not json").is_err());
        assert!(children(OCI_CONFIG, b"[1,2]").is_err());
        // LAYER is all digits, which have no upper case: use letters.
        let upper = manifest(&format!("sha256:{}", "AB".repeat(32)));
        assert!(children(OCI_MANIFEST, upper.as_bytes()).is_err());
        assert!(children(OCI_MANIFEST, manifest("sha256:../../etc").as_bytes()).is_err());
    }

    #[test]
    fn opaque_content_references_nothing() {
        assert!(children(OCI_LAYER_GZIP, b"anything").unwrap().is_empty());
    }
}
