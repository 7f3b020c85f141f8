//! The one mapping from store errors to gRPC statuses.

use distd_sdk::ErrorKind;

use crate::error::StoreError;

/// The gRPC status for `error`: its class picks the code, its text (which
/// says what to do) is the message.
pub fn status(error: StoreError) -> tonic::Status {
    let kind = error.kind();
    let message = match kind {
        ErrorKind::ResourceExhausted => format!(
            "{error}: the disk holding the store is full; free space (`distctl gc` removes unreferenced content) and retry: what was written stays resumable"
        ),
        ErrorKind::Internal => {
            tracing::error!(error = %error, "request failed");
            error.to_string()
        }
        _ => error.to_string(),
    };
    tonic::Status::new(kind.to_code(), message)
}
