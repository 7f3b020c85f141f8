//! Error classes shared by the daemon and its clients.
//!
//! Each crate has its own `thiserror` enum that says what went wrong; every
//! such error also says which [`ErrorKind`] it is. The daemon maps a kind onto
//! exactly one gRPC code and the client maps it back, so a caller can match on
//! the class without parsing messages.

use std::fmt;

/// The class of an error, one-to-one with a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named thing does not exist.
    NotFound,
    /// The thing to create is already there.
    AlreadyExists,
    /// The request itself is malformed; retrying it unchanged will not help.
    InvalidArgument,
    /// The system is not in a state that allows the request.
    FailedPrecondition,
    /// Busy or not reachable right now; retry later.
    Unavailable,
    /// Bytes did not match their digest or size.
    DataLoss,
    /// Out of disk space (or another quota).
    ResourceExhausted,
    /// An offset or range outside the content.
    OutOfRange,
    /// The operation was cancelled.
    Cancelled,
    /// The caller may not do this.
    PermissionDenied,
    /// A bug or an unexpected failure of the machine.
    Internal,
}

impl ErrorKind {
    /// The gRPC code of this kind.
    pub fn to_code(self) -> tonic::Code {
        match self {
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::DataLoss => tonic::Code::DataLoss,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::OutOfRange => tonic::Code::OutOfRange,
            ErrorKind::Cancelled => tonic::Code::Cancelled,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The kind of a gRPC code; codes distd never sends map to `Internal`.
    pub fn from_code(code: tonic::Code) -> Self {
        match code {
            tonic::Code::NotFound => ErrorKind::NotFound,
            tonic::Code::AlreadyExists => ErrorKind::AlreadyExists,
            tonic::Code::InvalidArgument => ErrorKind::InvalidArgument,
            tonic::Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            tonic::Code::Unavailable => ErrorKind::Unavailable,
            tonic::Code::DataLoss => ErrorKind::DataLoss,
            tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            tonic::Code::OutOfRange => ErrorKind::OutOfRange,
            tonic::Code::Cancelled => ErrorKind::Cancelled,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::Internal,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DataLoss => "data loss",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Internal => "internal error",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_grpc_code() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidArgument,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unavailable,
            ErrorKind::DataLoss,
            ErrorKind::ResourceExhausted,
            ErrorKind::OutOfRange,
            ErrorKind::Cancelled,
            ErrorKind::PermissionDenied,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_code(kind.to_code()), kind);
        }
    }
}
