//! Why a transfer failed.

use distd_sdk::{ErrorKind, TransportError};

use crate::error::StoreError;

/// Everything a pull can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transport failed (after retries, where retrying made sense).
    #[error("{}", transport_message(registry, source))]
    Transport {
        /// Registry (or other source) that failed.
        registry: String,
        /// What it said.
        source: TransportError,
    },
    /// The source kept sending bytes that do not match the digest.
    #[error(
        "{digest} from {registry} does not match its digest ({detail}); it was fetched {attempts} times and nothing was stored"
    )]
    Corrupt {
        /// The blob.
        digest: String,
        /// Where it came from.
        registry: String,
        /// Attempts made.
        attempts: u32,
        /// The last mismatch.
        detail: String,
    },
    /// No manifest of an index matches the wanted platform.
    #[error(
        "{reference} has no image for {platform}: {offered}; choose one with --platform or pull --all-platforms"
    )]
    NoPlatform {
        /// The reference pulled.
        reference: String,
        /// What was wanted.
        platform: String,
        /// What the index offers.
        offered: String,
    },
    /// A manifest or index could not be understood.
    #[error("{reference}: {detail}")]
    BadManifest {
        /// The reference pulled.
        reference: String,
        /// What is wrong.
        detail: String,
    },
    /// A media type distd cannot pull.
    #[error("{reference} is a {media_type}, which distd cannot pull{hint}")]
    Unsupported {
        /// The reference pulled.
        reference: String,
        /// Its media type.
        media_type: String,
        /// What to do instead, if anything.
        hint: &'static str,
    },
    /// What a push needs is not in the local store.
    #[error("{what}; {hint}")]
    NotLocal {
        /// What is missing.
        what: String,
        /// What to do.
        hint: &'static str,
    },
    /// No transport of the route can do what is needed.
    #[error("no transport can serve {locator}: {detail}")]
    NoTransport {
        /// Unavailable when transports are missing or unhealthy,
        /// FailedPrecondition when the route cannot do it at all.
        kind: ErrorKind,
        /// The repository.
        locator: String,
        /// Which transports were tried or left out, and what to do.
        detail: String,
    },
    /// The caller went away.
    #[error("the pull was cancelled")]
    Cancelled,
}

/// The transport's message, prefixed with the registry unless it names it.
fn transport_message(registry: &str, source: &TransportError) -> String {
    if source.message.contains(registry) {
        source.message.clone()
    } else {
        format!("{registry}: {}", source.message)
    }
}

impl TransferError {
    /// The class of the error; exhaustive so a new variant must pick one.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransferError::Store(e) => e.kind(),
            TransferError::Transport { source, .. } => source.kind,
            TransferError::Corrupt { .. } => ErrorKind::DataLoss,
            TransferError::NoPlatform { .. } => ErrorKind::NotFound,
            TransferError::BadManifest { .. } => ErrorKind::InvalidArgument,
            TransferError::Unsupported { .. } => ErrorKind::FailedPrecondition,
            TransferError::NotLocal { .. } => ErrorKind::NotFound,
            TransferError::NoTransport { kind, .. } => *kind,
            TransferError::Cancelled => ErrorKind::Cancelled,
        }
    }
}
