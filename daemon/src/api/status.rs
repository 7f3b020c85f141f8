//! The one mapping from store errors to gRPC statuses.

use crate::error::StoreError;

/// The gRPC status for `error`: its class picks the code, its text (which
/// says what to do) is the message.
pub fn status(error: StoreError) -> tonic::Status {
    let code = error.kind().to_code();
    if code == tonic::Code::Internal {
        tracing::error!(error = %error, "request failed");
    }
    tonic::Status::new(code, error.to_string())
}
