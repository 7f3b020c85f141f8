//! Reading an image at its source without storing it: the documents a
//! person wants to see before pulling (`distctl inspect`), each checked
//! against its digest.

use distd_sdk::media::{self, ContentClass};
use distd_sdk::{Descriptor, ErrorKind, Hasher, Locator, Reference, Transport, TransportError};

use super::route::Route;

/// How long one transport gets to send a whole document (at most
/// [`media::MAX_MANIFEST_BYTES`]) before the next one is asked.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
use tokio_stream::StreamExt;

use super::TransferError;
use super::platform::{self, Platform};

/// What `inspect` found.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The normalized reference.
    pub name: String,
    /// What the reference resolved to.
    pub target: Descriptor,
    /// The index's bytes when `target` is one.
    pub index: Option<Vec<u8>>,
    /// The chosen manifest and its bytes.
    pub manifest: (Descriptor, Vec<u8>),
    /// The config's bytes.
    pub config: Vec<u8>,
    /// The platforms the index offers.
    pub platforms: Vec<String>,
}

/// Resolves `reference` through the route's transports and reads its
/// manifest (for `platform`, the host's when `None`, when it is an index)
/// and config, each from the first transport that serves it whole.
pub async fn inspect(
    route: &Route,
    reference: &Reference,
    platform: Option<Platform>,
) -> Result<Inspection, TransferError> {
    let name = reference.to_string();
    let (target, _) = route.resolve(reference).await?;
    let bad = |detail: String| TransferError::BadManifest {
        reference: name.clone(),
        detail,
    };
    let top = read_document(route, &target).await?;
    let (index, manifest, platforms) = match media::classify(&target.media_type) {
        ContentClass::Manifest => (None, (target.clone(), top), Vec::new()),
        ContentClass::Index => {
            let wanted = platform.unwrap_or_else(Platform::host);
            let entries = platform::entries(&top, Some(&wanted)).map_err(bad)?;
            let platforms = entries.iter().map(|e| e.platform.clone()).collect();
            let chosen = platform::select(entries, false)
                .map_err(|offered| TransferError::NoPlatform {
                    reference: name.clone(),
                    platform: wanted.to_string(),
                    offered,
                })?
                .into_iter()
                .next()
                .ok_or_else(|| bad("the index lists no image manifest".into()))?;
            let descriptor = Descriptor {
                media_type: chosen.child.media_type,
                digest: chosen.child.digest,
                size: chosen.child.size,
            };
            let bytes = read_document(route, &descriptor).await?;
            (Some(top), (descriptor, bytes), platforms)
        }
        _ => {
            return Err(TransferError::Unsupported {
                reference: name,
                media_type: target.media_type,
                hint: "",
            });
        }
    };
    let children =
        media::children(&manifest.0.media_type, &manifest.1).map_err(|e| bad(e.to_string()))?;
    let config = children
        .into_iter()
        .next()
        .ok_or_else(|| bad("the manifest names no config".into()))?;
    let config = Descriptor {
        media_type: config.media_type,
        digest: config.digest,
        size: config.size,
    };
    let config = read_document(route, &config).await?;
    Ok(Inspection {
        name,
        target,
        index,
        manifest,
        config,
        platforms,
    })
}

/// Reads a small document (manifest, index, config) whole from the first of
/// the route's transports that serves it right.
async fn read_document(route: &Route, blob: &Descriptor) -> Result<Vec<u8>, TransferError> {
    let mut last = None;
    for hop in route.fetchers() {
        let read = read_from(hop.transport.as_ref(), &route.locator, blob);
        let read = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(TransferError::Transport {
                    registry: route.locator.registry.clone(),
                    source: TransportError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "{} did not send {} within {}s",
                            hop.name,
                            blob.digest,
                            READ_TIMEOUT.as_secs()
                        ),
                    ),
                })
            });
        match read {
            Ok(bytes) => return Ok(bytes),
            Err(e) => {
                tracing::info!(transport = %hop.name, digest = %blob.digest, error = %e, "trying the next transport");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| route.none_can("fetch blobs")))
}

/// Reads a small document whole from `transport`, refusing one larger than
/// [`media::MAX_MANIFEST_BYTES`] or not matching its digest.
async fn read_from(
    transport: &dyn Transport,
    locator: &Locator,
    blob: &Descriptor,
) -> Result<Vec<u8>, TransferError> {
    if blob.size > media::MAX_MANIFEST_BYTES {
        return Err(TransferError::BadManifest {
            reference: blob.digest.to_string(),
            detail: format!(
                "a {} of {} bytes is larger than distd reads ({} bytes)",
                blob.media_type,
                blob.size,
                media::MAX_MANIFEST_BYTES
            ),
        });
    }
    let failed = |source| TransferError::Transport {
        registry: locator.registry.clone(),
        source,
    };
    let mut stream = transport.fetch(locator, blob, 0).await.map_err(failed)?;
    let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
    let mut hasher = Hasher::new(blob.digest.algorithm());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed)?;
        if (bytes.len() + chunk.len()) as u64 > blob.size {
            break;
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    let actual = hasher.finish();
    if bytes.len() as u64 != blob.size || actual != blob.digest {
        return Err(TransferError::Corrupt {
            digest: blob.digest.to_string(),
            registry: locator.registry.clone(),
            attempts: 1,
            detail: format!("got {} bytes hashing to {actual}", bytes.len()),
        });
    }
    Ok(bytes)
}
