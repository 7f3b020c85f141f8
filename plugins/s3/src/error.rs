//! What goes wrong talking to the bucket, and how each failure maps onto the
//! transport contract's error classes.

use std::path::PathBuf;

use distd_sdk::{ErrorKind, TransportError};

/// Why the s3 transport could not be built or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// A setting is missing or out of range.
    #[error("invalid [[s3]] configuration: {0}")]
    Config(String),
    /// The shared credentials file has no usable profile.
    #[error(
        "AWS profile {profile:?} is not usable in {}: {reason} ([[s3]] profile, or set AWS_SHARED_CREDENTIALS_FILE)",
        .file.display()
    )]
    Profile {
        /// The credentials file read.
        file: PathBuf,
        /// The profile asked for.
        profile: String,
        /// What is missing.
        reason: String,
    },
    /// object_store refused the settings.
    #[error("cannot set up the S3 client for bucket {bucket}: {source}")]
    Build {
        /// The bucket.
        bucket: String,
        /// What object_store said.
        source: object_store::Error,
    },
    /// A request about `key` failed.
    #[error("{what}: {source}")]
    Store {
        /// What was being done, naming the key.
        what: String,
        /// Its class, decided from the answer (see [`classify`]).
        kind: ErrorKind,
        /// What object_store said.
        source: object_store::Error,
    },
    /// The blob's source (the daemon's store) failed or lied.
    #[error("reading the blob to push: {0}")]
    Source(TransportError),
    /// A value read from the bucket or given by the caller is not valid.
    #[error("{message}")]
    Invalid {
        /// Its class.
        kind: ErrorKind,
        /// What is wrong and what to do.
        message: String,
    },
}

impl S3Error {
    /// The error's class in the transport contract.
    pub fn kind(&self) -> ErrorKind {
        match self {
            S3Error::Config(_) | S3Error::Profile { .. } | S3Error::Build { .. } => {
                ErrorKind::InvalidArgument
            }
            S3Error::Store { kind, .. } | S3Error::Invalid { kind, .. } => *kind,
            S3Error::Source(e) => e.kind,
        }
    }

    /// An error of `kind` saying `message`.
    pub fn invalid(kind: ErrorKind, message: impl Into<String>) -> S3Error {
        S3Error::Invalid {
            kind,
            message: message.into(),
        }
    }
}

impl From<S3Error> for TransportError {
    fn from(e: S3Error) -> TransportError {
        TransportError::new(e.kind(), e.to_string())
    }
}

/// Where requests go, for messages: the bucket and the endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The bucket's name.
    pub bucket: String,
    /// The endpoint as configured, or AWS's.
    pub endpoint: String,
}

/// The hint for refused credentials.
pub(crate) const CREDENTIALS_HINT: &str = "the bucket refused the credentials ([[s3]] \
     access_key_id / secret_access_key, or the environment's AWS_*)";

/// The class of an object_store failure. Missing buckets come back as a
/// 404 (NotFound) or a generic error whose body says `NoSuchBucket`, so the
/// text is looked at before the variant.
pub(crate) fn classify(e: &object_store::Error) -> ErrorKind {
    let text = e.to_string();
    if text.contains("NoSuchBucket") {
        return ErrorKind::FailedPrecondition;
    }
    match e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        _ if [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ]
        .iter()
        .any(|code| text.contains(code)) =>
        {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::Unavailable,
    }
}

impl Target {
    /// The error for a failed request: `what` names the operation and key.
    pub(crate) fn error(&self, what: impl Into<String>, source: object_store::Error) -> S3Error {
        let kind = classify(&source);
        let what = what.into();
        let what = match kind {
            ErrorKind::FailedPrecondition => format!(
                "{what}: no bucket {} at {} ([[s3]] bucket)",
                self.bucket, self.endpoint
            ),
            ErrorKind::PermissionDenied => format!("{what}: {CREDENTIALS_HINT}"),
            ErrorKind::Unavailable => format!(
                "{what}: bucket {} at {} is not reachable or failed",
                self.bucket, self.endpoint
            ),
            _ => what,
        };
        S3Error::Store { what, kind, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_owned().into(),
        }
    }

    #[test]
    fn failures_map_onto_the_contracts_classes() {
        let not_found = object_store::Error::NotFound {
            path: "k".into(),
            source: "NoSuchKey".into(),
        };
        assert_eq!(classify(&not_found), ErrorKind::NotFound);
        let bucket = object_store::Error::NotFound {
            path: "k".into(),
            source: "<Code>NoSuchBucket</Code>".into(),
        };
        assert_eq!(classify(&bucket), ErrorKind::FailedPrecondition);
        assert_eq!(
            classify(&generic("list: <Code>NoSuchBucket</Code>")),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            classify(&generic("<Code>InvalidAccessKeyId</Code>")),
            ErrorKind::PermissionDenied
        );
        let denied = object_store::Error::Unauthenticated {
            path: "k".into(),
            source: "401".into(),
        };
        assert_eq!(classify(&denied), ErrorKind::PermissionDenied);
        assert_eq!(
            classify(&generic("connection refused")),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn messages_name_the_key_and_the_setting() {
        let target = Target {
            bucket: "b".into(),
            endpoint: "http://s3.test".into(),
        };
        let e = target.error("reading k", generic("<Code>NoSuchBucket</Code>"));
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(
            e.to_string()
                .starts_with("reading k: no bucket b at http://s3.test ([[s3]] bucket)"),
            "{e}"
        );
        let e = TransportError::from(target.error("reading k", generic("SignatureDoesNotMatch")));
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(e.message.contains("access_key_id"), "{}", e.message);
    }
}
