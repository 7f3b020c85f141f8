//! `oci-dir`: a distd transport that serves images from OCI image layout
//! directories (a USB disk, an NFS share, a pre-seeded cache on an
//! air-gapped site). It is also the template for plugin authors: a
//! [`Transport`] implementation, served by `distd_sdk::plugin::serve` in
//! `main.rs`, checked by `distd_sdk::conformance` in its tests.
//!
//! - **resolve** reads each layout's `index.json` on every call (a cache
//!   directory may be updated while the plugin runs) and matches the
//!   `org.opencontainers.image.ref.name` annotation: the full reference
//!   first (`example.test/app:1.0`), then `repository:tag` (`app:1.0`), and
//!   only if neither matched anywhere, the bare tag (`1.0`). Layouts are
//!   searched in the order given; the first match wins.
//! - **fetch** and **stat** read `<layout>/blobs/<algorithm>/<hex>`, a path
//!   built only from a validated [`Digest`]. Layouts are not per-repository,
//!   so a blob is served for any locator: content is addressed by digest and
//!   the daemon verifies every byte, so this is safe, and it lets one
//!   layout seed several repositories.

#![forbid(unsafe_code)]

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use distd_sdk::media::{self, ContentClass};
use distd_sdk::transport::{ByteStream, Capabilities, Description, Descriptor, Locator};
use distd_sdk::{Digest, ErrorKind, Reference, Transport, TransportError};
use serde_json::Value;

#[cfg(test)]
mod tests;

/// The annotation that names a manifest of an image layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Bytes per chunk of a fetch stream.
pub const CHUNK: usize = 256 * 1024;

/// Why a set of layout directories cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum OciDirError {
    /// No directory was given.
    #[error("no OCI image layout directories given: name at least one")]
    NoDirectories,
    /// A directory lacks a file every image layout has.
    #[error("{} is not an OCI image layout: {} is missing or unreadable ({source})", .dir.display(), .file.display())]
    NotALayout {
        /// The directory.
        dir: PathBuf,
        /// The file it lacks (`oci-layout` or `index.json`).
        file: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
}

/// A transport over OCI image layout directories.
#[derive(Debug, Clone)]
pub struct OciDir {
    layouts: Vec<PathBuf>,
    registries: Vec<String>,
}

impl OciDir {
    /// Serves `dirs`, each of which must contain `oci-layout` and
    /// `index.json`.
    pub fn open(dirs: Vec<PathBuf>) -> Result<OciDir, OciDirError> {
        if dirs.is_empty() {
            return Err(OciDirError::NoDirectories);
        }
        for dir in &dirs {
            for name in ["oci-layout", "index.json"] {
                let file = dir.join(name);
                if let Err(source) = std::fs::metadata(&file) {
                    let dir = dir.clone();
                    return Err(OciDirError::NotALayout { dir, file, source });
                }
            }
        }
        Ok(OciDir {
            layouts: dirs,
            registries: Vec::new(),
        })
    }

    /// Limits the registries (or `host/repository` globs) the plugin says
    /// it serves; empty, the default, means any.
    pub fn with_registries(mut self, registries: Vec<String>) -> OciDir {
        self.registries = registries;
        self
    }

    /// The layout directories, in search order.
    pub fn layouts(&self) -> &[PathBuf] {
        &self.layouts
    }

    /// NotFound for `what`, naming the directories searched.
    fn not_found(&self, what: impl std::fmt::Display) -> TransportError {
        let dirs: Vec<_> = self
            .layouts
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let message = format!("{what} is in none of the layouts {}", dirs.join(", "));
        TransportError::new(ErrorKind::NotFound, message)
    }

    /// The path and size of blob `digest` in the first layout that has it.
    async fn find_blob(&self, digest: &Digest) -> Result<Option<(PathBuf, u64)>, TransportError> {
        for layout in &self.layouts {
            let path = blob_path(layout, digest);
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => return Ok(Some((path, meta.len()))),
                Ok(_) => {}
                Err(e) if e.kind() == IoKind::NotFound => {}
                Err(e) => return Err(io_error(&path, &e)),
            }
        }
        Ok(None)
    }

    /// The manifests listed by every layout's `index.json`, read afresh.
    async fn index_entries(&self) -> Result<Vec<(Option<String>, Descriptor)>, TransportError> {
        let mut entries = Vec::new();
        for layout in &self.layouts {
            let path = layout.join("index.json");
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| io_error(&path, &e))?;
            let index: Value = serde_json::from_slice(&bytes).map_err(|e| {
                let message = format!("{} is not valid JSON: {e}", path.display());
                TransportError::new(ErrorKind::Unavailable, message)
            })?;
            let manifests = index["manifests"].as_array().map_or(&[][..], Vec::as_slice);
            // Entries without a valid digest and size are skipped.
            entries.extend(manifests.iter().filter_map(|entry| {
                let media_type = entry["mediaType"].as_str().unwrap_or(media::OCI_MANIFEST);
                let descriptor = Descriptor {
                    media_type: media_type.to_owned(),
                    digest: Digest::parse(entry["digest"].as_str()?).ok()?,
                    size: entry["size"].as_u64()?,
                };
                let name = entry["annotations"][REF_NAME].as_str().map(str::to_owned);
                Some((name, descriptor))
            }));
        }
        Ok(entries)
    }

    /// A manifest present as a blob but not listed in any index: its media
    /// type comes from the document. `None` when absent or not a manifest.
    async fn describe_blob(&self, digest: &Digest) -> Result<Option<Descriptor>, TransportError> {
        let Some((path, size)) = self.find_blob(digest).await? else {
            return Ok(None);
        };
        if size > media::MAX_MANIFEST_BYTES {
            return Ok(None);
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| io_error(&path, &e))?;
        let document: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let media_type = match document["mediaType"].as_str() {
            Some(m) if media::classify(m) != ContentClass::Opaque => m,
            _ if document["manifests"].is_array() => media::OCI_INDEX,
            _ if document["layers"].is_array() => media::OCI_MANIFEST,
            _ => return Ok(None),
        };
        let media_type = media_type.to_owned();
        Ok(Some(Descriptor {
            media_type,
            digest: digest.clone(),
            size,
        }))
    }
}

/// `<layout>/blobs/<algorithm>/<hex>`: both parts come from a validated
/// [`Digest`], so the path cannot leave the layout.
fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.algorithm().name())
        .join(digest.hex())
}

fn io_error(path: &Path, e: &std::io::Error) -> TransportError {
    let kind = match e.kind() {
        IoKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unavailable,
    };
    TransportError::new(kind, format!("{}: {e}", path.display()))
}

/// The names a manifest may be annotated with for `reference`, most
/// specific first: the full reference, `repository:tag`, the bare tag.
/// Docker Hub's official images are also matched without `library/`.
fn ref_names(reference: &Reference, tag: &str) -> [Vec<String>; 3] {
    let (registry, repository) = (reference.registry(), reference.repository());
    let mut full = vec![format!("{registry}/{repository}:{tag}")];
    let mut short = vec![format!("{repository}:{tag}")];
    if let Some(name) = repository.strip_prefix("library/")
        && registry == distd_sdk::reference::DOCKER_HUB
    {
        full.push(format!("{registry}/{name}:{tag}"));
        short.push(format!("{name}:{tag}"));
    }
    [full, short, vec![tag.to_owned()]]
}

#[distd_sdk::plugin::async_trait]
impl Transport for OciDir {
    fn describe(&self) -> Description {
        Description {
            name: "oci-dir".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities {
                resolve: true,
                fetch: true,
                ranged_fetch: true,
                ..Capabilities::default()
            },
            registries: self.registries.clone(),
        }
    }

    async fn health(&self) -> Result<(), TransportError> {
        for layout in &self.layouts {
            let path = layout.join("index.json");
            if let Err(e) = tokio::fs::metadata(&path).await {
                let message = format!(
                    "{} is gone ({e}): is the disk still mounted?",
                    path.display()
                );
                return Err(TransportError::new(ErrorKind::Unavailable, message));
            }
        }
        Ok(())
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        let entries = self.index_entries().await?;
        let found = if let Some(digest) = reference.digest() {
            match entries.into_iter().find(|(_, d)| d.digest == *digest) {
                Some((_, descriptor)) => Some(descriptor),
                None => self.describe_blob(digest).await?,
            }
        } else {
            let tag = reference.tag().unwrap_or(distd_sdk::reference::DEFAULT_TAG);
            ref_names(reference, tag).iter().find_map(|names| {
                entries
                    .iter()
                    .find(|(name, _)| name.as_ref().is_some_and(|n| names.contains(n)))
                    .map(|(_, descriptor)| descriptor.clone())
            })
        };
        found.ok_or_else(|| self.not_found(reference))
    }

    async fn fetch(
        &self,
        _locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let digest = &descriptor.digest;
        let Some((path, _)) = self.find_blob(digest).await? else {
            return Err(self.not_found(format_args!("blob {digest}")));
        };
        // It checks the offset against the size (OutOfRange past the end).
        distd_sdk::plugin::stream_file(&path, offset).await
    }

    async fn stat(
        &self,
        _locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        Ok(self.find_blob(digest).await?.map(|(_, size)| size))
    }
}
