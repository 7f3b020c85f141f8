//! A complete transport plugin: serves blobs from `DIR/<algorithm>/<hex>`.
use std::path::PathBuf;

use distd_sdk::plugin::{self, async_trait};
use distd_sdk::{ByteStream, Capabilities, Description, Descriptor, Digest, ErrorKind};
use distd_sdk::{Locator, Reference, Transport, TransportError};

struct BlobDir(PathBuf);

impl BlobDir {
    // A parsed Digest is only lower-case hex: safe to join to a path.
    fn path(&self, digest: &Digest) -> PathBuf {
        self.0.join(digest.algorithm().name()).join(digest.hex())
    }
}

#[async_trait]
impl Transport for BlobDir {
    fn describe(&self) -> Description {
        let capabilities = Capabilities {
            fetch: true,
            ranged_fetch: true,
            ..Default::default()
        };
        Description {
            name: "blob-dir".into(),
            capabilities,
            ..Default::default()
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        Err(TransportError::new(
            ErrorKind::NotFound,
            format!("{reference}: tags are not here"),
        ))
    }

    async fn fetch(
        &self,
        _: &Locator,
        blob: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        plugin::stream_file(&self.path(&blob.digest), offset).await
    }

    async fn stat(&self, _: &Locator, digest: &Digest) -> Result<Option<u64>, TransportError> {
        match tokio::fs::metadata(self.path(digest)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TransportError::new(ErrorKind::Unavailable, e.to_string())),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: blob-dir DIR")?;
    let socket = plugin::socket_from_env().ok_or("start me from a [[plugin]] exec entry")?;
    plugin::serve(socket, BlobDir(dir.into())).await?;
    Ok(())
}
