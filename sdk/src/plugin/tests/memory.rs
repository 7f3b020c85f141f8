//! An in-memory [`Transport`] for the plugin tests: blobs by digest, tags by
//! `registry/repository:tag`, resumable uploads by location.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio_stream::StreamExt;

use crate::digest::{Algorithm, Digest};
use crate::error::ErrorKind;
use crate::reference::Reference;
use crate::transport::{
    BlobSource, ByteStream, Capabilities, Description, Descriptor, Locator, MountOutcome,
    PushProgress, Transport, TransportError, UploadSession,
};

/// A repository whose pushes read their source twice.
pub const TWICE: &str = "twice";

#[derive(Default)]
pub struct State {
    pub blobs: HashMap<Digest, Bytes>,
    pub tags: HashMap<String, Descriptor>,
    pub uploads: HashMap<String, Vec<u8>>,
    /// Fetches of these blobs fail after this many bytes.
    pub broken: HashMap<Digest, usize>,
    /// Errors the sources of pushes gave.
    pub push_errors: Vec<TransportError>,
    /// Why the transport is not serving, when it is not.
    pub unhealthy: Option<String>,
    next_upload: u64,
}

#[derive(Clone, Default)]
pub struct Memory(Arc<Mutex<State>>);

impl Memory {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Stores `bytes` as a blob and returns its descriptor.
    pub fn add_blob(&self, bytes: &[u8]) -> Descriptor {
        let descriptor = descriptor_of("application/octet-stream", bytes);
        self.state()
            .blobs
            .insert(descriptor.digest.clone(), Bytes::copy_from_slice(bytes));
        descriptor
    }
}

pub fn descriptor_of(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of_bytes(Algorithm::Sha256, bytes),
        size: bytes.len() as u64,
    }
}

fn not_found(what: impl std::fmt::Display) -> TransportError {
    TransportError::new(ErrorKind::NotFound, format!("{what} is not here"))
}

#[async_trait::async_trait]
impl Transport for Memory {
    fn describe(&self) -> Description {
        Description {
            name: "memory".into(),
            version: "1.2.3".into(),
            capabilities: Capabilities {
                resolve: true,
                fetch: true,
                ranged_fetch: true,
                push: true,
                mount: false,
            },
            registries: vec!["example.com".into(), "host:5000/team/*".into()],
        }
    }

    async fn health(&self) -> Result<(), TransportError> {
        match &self.state().unhealthy {
            Some(why) => Err(TransportError::new(ErrorKind::Unavailable, why.clone())),
            None => Ok(()),
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        let state = self.state();
        let found = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => state.tags.values().find(|d| &d.digest == digest),
            (None, Some(tag)) => state.tags.get(&format!("{}:{tag}", reference.name())),
            (None, None) => None,
        };
        found.cloned().ok_or_else(|| not_found(reference))
    }

    async fn fetch(
        &self,
        _locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let state = self.state();
        let bytes = state
            .blobs
            .get(&descriptor.digest)
            .ok_or_else(|| not_found(&descriptor.digest))?;
        let start = offset as usize;
        if start > bytes.len() {
            return Err(TransportError::new(
                ErrorKind::InvalidArgument,
                format!("offset {offset} is past the end"),
            ));
        }
        if let Some(&fail_at) = state.broken.get(&descriptor.digest) {
            let good = Ok(bytes.slice(start..fail_at.max(start)));
            let bad = Err(TransportError::new(ErrorKind::DataLoss, "the disk failed"));
            return Ok(Box::pin(tokio_stream::iter([good, bad])));
        }
        // One piece: the server cuts it into chunks.
        Ok(Box::pin(tokio_stream::once(Ok(bytes.slice(start..)))))
    }

    async fn stat(
        &self,
        _locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        Ok(self.state().blobs.get(digest).map(|b| b.len() as u64))
    }

    async fn mount(
        &self,
        _locator: &Locator,
        blob: &Descriptor,
        _from: &str,
    ) -> Result<MountOutcome, TransportError> {
        if self.state().blobs.contains_key(&blob.digest) {
            return Ok(MountOutcome::Mounted);
        }
        Ok(MountOutcome::NotMounted(Some(UploadSession {
            location: "mount-upload".into(),
            offset: 0,
        })))
    }

    async fn push_blob(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        source: &dyn BlobSource,
        resume: Option<UploadSession>,
        progress: &dyn PushProgress,
    ) -> Result<u64, TransportError> {
        if locator.repository == TWICE {
            let _first = source.open(0).await?;
            let _second = source.open(0).await?;
            return Ok(0);
        }
        let known = resume.and_then(|session| {
            let state = self.state();
            let offset = state.uploads.get(&session.location)?.len() as u64;
            Some((session.location, offset))
        });
        let (location, offset) = match known {
            Some(known) => known,
            None => {
                let mut state = self.state();
                state.next_upload += 1;
                let location = format!("upload-{}", state.next_upload);
                state.uploads.insert(location.clone(), Vec::new());
                drop(state);
                progress.session(&UploadSession {
                    location: location.clone(),
                    offset: 0,
                });
                (location, 0)
            }
        };
        let mut data = source.open(offset).await?;
        let mut sent = 0;
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    self.state().push_errors.push(err.clone());
                    return Err(err);
                }
            };
            let acknowledged = {
                let mut state = self.state();
                let upload = state.uploads.entry(location.clone()).or_default();
                upload.extend_from_slice(&chunk);
                upload.len() as u64
            };
            sent += chunk.len() as u64;
            progress.sent(chunk.len() as u64);
            progress.session(&UploadSession {
                location: location.clone(),
                offset: acknowledged,
            });
        }
        let mut state = self.state();
        let bytes = state.uploads.remove(&location).unwrap_or_default();
        if Digest::of_bytes(Algorithm::Sha256, &bytes) != blob.digest {
            return Err(TransportError::new(ErrorKind::DataLoss, "digest mismatch"));
        }
        state.blobs.insert(blob.digest.clone(), bytes.into());
        Ok(sent)
    }

    async fn push_manifest(
        &self,
        locator: &Locator,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        let descriptor = descriptor_of(media_type, &bytes);
        let mut state = self.state();
        state.blobs.insert(descriptor.digest.clone(), bytes);
        if Digest::parse(reference).is_err() {
            state
                .tags
                .insert(format!("{locator}:{reference}"), descriptor);
        }
        Ok(())
    }
}
