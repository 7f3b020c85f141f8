//! The transport contract: how content moves between distd and somewhere
//! else (a registry, a bucket, peers, an external plugin).
//!
//! Small and byte-oriented on purpose: a transport resolves references,
//! streams blobs from an offset, and pushes; everything else (verification,
//! the store, retries across transports) is the daemon's job. Built-in
//! transports implement this trait directly; the daemon reaches external
//! plugins through an adapter that implements it over gRPC.

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use tokio_stream::Stream;

use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::reference::Reference;

/// Where content lives: a registry host and a repository in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locator {
    /// Registry as named in references, e.g. `docker.io`, `host:5000`.
    pub registry: String,
    /// Repository, e.g. `library/alpine`.
    pub repository: String,
}

impl Locator {
    /// The locator of a reference's repository.
    pub fn of(reference: &Reference) -> Locator {
        Locator {
            registry: reference.registry().to_owned(),
            repository: reference.repository().to_owned(),
        }
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// A piece of content a transport moves: what the OCI spec calls a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// What a transport can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Turns tags into digests (authoritative sources only).
    pub resolve: bool,
    /// Streams blobs.
    pub fetch: bool,
    /// Streams blobs from an offset (resume, segmented downloads).
    pub ranged_fetch: bool,
    /// Accepts blobs and manifests.
    pub push: bool,
    /// Mounts a blob from another repository without moving bytes.
    pub mount: bool,
}

/// A transport's name and abilities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description {
    /// Short name used in configuration and events, e.g. `registry`.
    pub name: String,
    /// The implementation's version, free-form (shown by `distctl plugins ls`).
    pub version: String,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Registries, or `host/repository` globs (`*` matches any run of
    /// characters), that the transport serves; empty means any. A transport
    /// that can `resolve` is asked for tags only on these.
    pub registries: Vec<String>,
}

impl Description {
    /// Whether the transport serves `locator` (see [`Description::registries`]).
    pub fn serves(&self, locator: &Locator) -> bool {
        self.registries.is_empty()
            || self
                .registries
                .iter()
                .any(|pattern| crate::glob::matches_locator(pattern, locator))
    }
}

/// Why a transport operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// The error's class.
    pub kind: ErrorKind,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}

impl TransportError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TransportError {
            kind,
            message: message.into(),
        }
    }
}

/// A stream of blob bytes, in order.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>;

/// Where a pushed blob's bytes come from (the daemon's store), readable from
/// any offset so an upload can continue where the destination says it is.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync {
    /// Streams the blob's bytes from `offset` to its end.
    async fn open(&self, offset: u64) -> Result<ByteStream, TransportError>;
}

/// An upload in progress at a destination. The daemon persists the latest
/// one per blob, so a retry or a restarted daemon continues it instead of
/// sending the blob again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// Where the upload continues (for a registry, its upload URL).
    pub location: String,
    /// Bytes the destination has acknowledged.
    pub offset: u64,
}

/// What a push tells the daemon as it goes.
pub trait PushProgress: Send + Sync {
    /// The destination acknowledged bytes up to `session.offset` (or opened
    /// a session): persist it to continue after a failure.
    fn session(&self, session: &UploadSession);
    /// `bytes` more bytes went out on the wire.
    fn sent(&self, bytes: u64);
}

/// How a cross-repository mount went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    /// The destination now has the blob; nothing was sent.
    Mounted,
    /// The destination did not mount it; it may have opened an upload
    /// session instead, which `push_blob` can use.
    NotMounted(Option<UploadSession>),
}

fn unsupported(what: &str) -> TransportError {
    TransportError::new(
        ErrorKind::FailedPrecondition,
        format!("this transport cannot {what}"),
    )
}

/// A way to move content. Every method is cancellable by dropping its future.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Name and capabilities.
    fn describe(&self) -> Description;

    /// Whether the transport can serve now (its backend reachable); the
    /// error says why not. Routes skip an unhealthy transport.
    async fn health(&self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Resolves `reference` (a tag, or a digest to check) to the descriptor
    /// of its manifest or index. `NotFound` when the registry has no such
    /// reference.
    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError>;

    /// Streams `descriptor`'s bytes from `offset`: an empty stream when
    /// `offset` is the size, `OutOfRange` past it, `NotFound` when absent.
    /// The bytes are not verified here: the daemon hashes everything it
    /// stores (see [`crate::conformance`] for the whole contract).
    async fn fetch(
        &self,
        locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError>;

    /// The size of blob `digest` if present, `None` when absent.
    async fn stat(&self, locator: &Locator, digest: &Digest)
    -> Result<Option<u64>, TransportError>;

    /// Asks the destination to take `blob` from repository `from` on the
    /// same registry without moving its bytes.
    async fn mount(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        from: &str,
    ) -> Result<MountOutcome, TransportError> {
        let _ = (locator, blob, from);
        Ok(MountOutcome::NotMounted(None))
    }

    /// Uploads `blob`, reading its bytes from `source`. With `resume`, asks
    /// the destination where that session stands and continues from there
    /// (a session it no longer knows starts a new upload). Reports every
    /// acknowledged offset to `progress`. Returns the bytes sent.
    async fn push_blob(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        source: &dyn BlobSource,
        resume: Option<UploadSession>,
        progress: &dyn PushProgress,
    ) -> Result<u64, TransportError> {
        let _ = (locator, blob, source, resume, progress);
        Err(unsupported("push blobs"))
    }

    /// Stores a manifest or index, byte for byte, under `reference` (a tag,
    /// or its digest). Every blob it names must be at the destination.
    async fn push_manifest(
        &self,
        locator: &Locator,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        let _ = (locator, reference, media_type, bytes);
        Err(unsupported("push manifests"))
    }
}
