//! The daemon's error type. Each variant says what went wrong in words a
//! person can act on, and [`StoreError::kind`] classifies it; the API layer
//! turns the class into a gRPC code in one place.

use std::time::Duration;

use distd_sdk::media::ManifestError;
use distd_sdk::{Digest, DigestError, ErrorKind};

/// Everything the store, its metadata and GC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A digest from a request is malformed.
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
    /// A request field is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A manifest, index or config could not be parsed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No blob with this digest.
    #[error("content {0} is not in the store")]
    BlobNotFound(Digest),
    /// The blob is already committed.
    #[error("content {0} already exists in the store")]
    BlobExists(Digest),
    /// Metadata names a blob whose file is gone.
    #[error(
        "content {0} is recorded but its file is missing; run `distctl verify` and pull or put it again"
    )]
    BlobFileMissing(Digest),
    /// An image's target is not in the store.
    #[error("content {0} is not in the store: write the image's content before creating the image")]
    TargetMissing(Digest),
    /// A read past the end of a blob.
    #[error("offset {offset} is past the end of {digest} ({size} bytes)")]
    OffsetPastEnd {
        /// The blob.
        digest: Digest,
        /// The requested offset.
        offset: u64,
        /// The blob's size.
        size: u64,
    },
    /// No image with this name.
    #[error("image {0:?} does not exist")]
    ImageNotFound(String),
    /// The image name is taken.
    #[error("image {0:?} already exists; update it instead")]
    ImageExists(String),
    /// No lease with this id.
    #[error("lease {0:?} does not exist (it may have expired and been collected)")]
    LeaseNotFound(String),
    /// The lease id is taken.
    #[error("lease {0:?} already exists")]
    LeaseExists(String),
    /// No ingest with this ref.
    #[error("no ingest with ref {0:?}")]
    IngestNotFound(String),
    /// Another stream is writing this ingest.
    #[error(
        "ingest {reference:?} is being written by another client (for {held:?}); retry later or abort it"
    )]
    IngestLocked {
        /// The ingest ref.
        reference: String,
        /// How long the other writer has held it.
        held: Duration,
    },
    /// A WRITE at an offset other than the ingest's current one.
    #[error(
        "ingest {reference:?} is at offset {current}, not {requested}: STAT it and resume from {current}"
    )]
    OffsetMismatch {
        /// The ingest ref.
        reference: String,
        /// Where the ingest is.
        current: u64,
        /// Where the client wrote.
        requested: u64,
    },
    /// The committed size differs from the expected total.
    #[error(
        "ingest {reference:?} holds {actual} bytes but {expected} were expected; the ingest was discarded"
    )]
    SizeMismatch {
        /// The ingest ref.
        reference: String,
        /// Expected total.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The bytes do not hash to the expected digest.
    #[error(
        "content of ingest {reference:?} hashes to {actual}, not the expected {expected}; the ingest was discarded"
    )]
    DigestMismatch {
        /// The ingest ref.
        reference: String,
        /// What the client expected.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A shared operation (a group commit) failed; each caller gets its class
    /// and message.
    #[error("{message}")]
    Group {
        /// The class of the underlying error.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }

    /// The class of the error; exhaustive so that a new variant must pick one.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidDigest(_)
            | StoreError::InvalidArgument(_)
            | StoreError::Manifest(_) => ErrorKind::InvalidArgument,
            StoreError::BlobNotFound(_)
            | StoreError::ImageNotFound(_)
            | StoreError::LeaseNotFound(_)
            | StoreError::IngestNotFound(_) => ErrorKind::NotFound,
            StoreError::BlobExists(_) | StoreError::ImageExists(_) | StoreError::LeaseExists(_) => {
                ErrorKind::AlreadyExists
            }
            StoreError::TargetMissing(_) | StoreError::OffsetMismatch { .. } => {
                ErrorKind::FailedPrecondition
            }
            StoreError::OffsetPastEnd { .. } => ErrorKind::OutOfRange,
            StoreError::IngestLocked { .. } => ErrorKind::Unavailable,
            StoreError::BlobFileMissing(_)
            | StoreError::SizeMismatch { .. }
            | StoreError::DigestMismatch { .. } => ErrorKind::DataLoss,
            StoreError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    ErrorKind::ResourceExhausted
                }
                _ => ErrorKind::Internal,
            },
            StoreError::Db(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull =>
            {
                ErrorKind::ResourceExhausted
            }
            StoreError::Group { kind, .. } => *kind,
            StoreError::Db(_) | StoreError::Task(_) => ErrorKind::Internal,
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Task(e.to_string())
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
