//! Turning HTTP statuses, registry error bodies and connection failures into
//! [`TransportError`]s a person can act on.

use std::error::Error as _;

use distd_sdk::error::ErrorKind;
use distd_sdk::transport::TransportError;
use reqwest::StatusCode;

/// The registry's error body, `{"errors":[{"code","message"}]}`, as one
/// line; `None` when the body is not that.
pub fn registry_errors(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = body
        .errors
        .into_iter()
        .map(|e| match (e.code, e.message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "unknown error".to_owned(),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The error for an unsuccessful `status` answering a request about `what`
/// (e.g. `manifest host/repo:tag`) at `registry`, with the body's errors.
pub fn status_error(status: StatusCode, registry: &str, what: &str, body: &[u8]) -> TransportError {
    let detail = registry_errors(body).map_or_else(String::new, |e| format!(" ({e})"));
    let (kind, message) = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => (
            ErrorKind::PermissionDenied,
            format!(
                "registry {registry} refused access to {what}: {status}{detail}; \
                 run `distctl login {registry}` with an account that may pull it"
            ),
        ),
        StatusCode::NOT_FOUND => (
            ErrorKind::NotFound,
            format!("{what} not found at registry {registry}{detail}"),
        ),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => (
            ErrorKind::Unavailable,
            format!("registry {registry} is throttling requests for {what}: {status}{detail}"),
        ),
        StatusCode::RANGE_NOT_SATISFIABLE => (
            ErrorKind::OutOfRange,
            format!(
                "registry {registry} says the requested range of {what} is past its end{detail}"
            ),
        ),
        s if s.is_server_error() => (
            ErrorKind::Unavailable,
            format!("registry {registry} failed serving {what}: {status}{detail}"),
        ),
        s if s.is_client_error() => (
            ErrorKind::InvalidArgument,
            format!("registry {registry} rejected the request for {what}: {status}{detail}"),
        ),
        _ => (
            ErrorKind::Internal,
            format!(
                "registry {registry} answered the request for {what} with unexpected {status}{detail}"
            ),
        ),
    };
    TransportError::new(kind, message)
}

/// The error for an unsuccessful `status` answering `what`, a push to
/// `repository` at `registry` (e.g. `the upload of blob sha256:… to host/repo`):
/// like [`status_error`], but saying that pushing needs an account that may
/// push, and that 413 calls for smaller chunks.
pub fn push_status_error(
    status: StatusCode,
    registry: &str,
    repository: &str,
    what: &str,
    body: &[u8],
) -> TransportError {
    let detail = registry_errors(body).map_or_else(String::new, |e| format!(" ({e})"));
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => TransportError::new(
            ErrorKind::PermissionDenied,
            format!(
                "registry {registry} refused {what}: {status}{detail}; run `distctl login \
                 {registry}` with an account that may push to {repository}"
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => TransportError::new(
            ErrorKind::FailedPrecondition,
            format!(
                "registry {registry} (or a proxy in front of it) refused {what} as too large: \
                 {status}{detail}; lower `[push] chunk_size` in distd's config"
            ),
        ),
        s if s.is_server_error() => TransportError::new(
            ErrorKind::Unavailable,
            format!("registry {registry} failed {what}: {status}{detail}"),
        ),
        _ => status_error(status, registry, what, body),
    }
}

/// Whether `error` (or one of its causes) is a TLS or certificate failure.
/// Goes by the causes' messages: reqwest does not export rustls' error type.
fn is_tls(error: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = error.source();
    while let Some(e) = source {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `error` shows the registry speaks TLS but the connection was
/// refused: a certificate it presented that is not trusted, one it wanted
/// from us, or a TLS alert it sent. Falling back to plain HTTP would be wrong.
pub fn is_tls_refusal(error: &reqwest::Error) -> bool {
    let text = chain(error).to_ascii_lowercase();
    text.contains("certificate") || text.contains("alert")
}

/// The error for a TLS connection to `registry` that failed with `detail`,
/// saying which settings make it work.
pub fn tls_error(registry: &str, what: &str, detail: &str) -> TransportError {
    TransportError::new(
        ErrorKind::Unavailable,
        format!(
            "TLS with registry {registry} failed for {what}: {detail}; if it uses a private CA, \
             set ca_file under [registries.\"{registry}\"] in distd's config or put the CA \
             in certs.d/{registry}/ca.crt of distd's certs_dir; if it wants a client \
             certificate, set client_cert and client_key there (or certs.d/{registry}/client.cert \
             and client.key)"
        ),
    )
}

/// The full chain of an error's messages, `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// The error for a request to `registry` about `what` that got no answer.
pub fn request_error(error: &reqwest::Error, registry: &str, what: &str) -> TransportError {
    let detail = chain(error);
    if is_tls(error) {
        return tls_error(registry, what, &detail);
    }
    if error.is_builder() {
        return TransportError::new(
            ErrorKind::InvalidArgument,
            format!("cannot build the request to registry {registry} for {what}: {detail}"),
        );
    }
    let how = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "is unreachable"
    } else if error.is_body() || error.is_decode() {
        "broke off the transfer"
    } else {
        "failed"
    };
    TransportError::new(
        ErrorKind::Unavailable,
        format!("registry {registry} {how} for {what}: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_with_the_registry_errors() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        let e = status_error(StatusCode::NOT_FOUND, "r:5000", "manifest r:5000/a:b", body);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(
            e.message.contains("MANIFEST_UNKNOWN: manifest unknown"),
            "{}",
            e.message
        );
        let e = status_error(StatusCode::UNAUTHORIZED, "r:5000", "x", b"");
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(e.message.contains("distctl login r:5000"));
        let e = status_error(StatusCode::BAD_GATEWAY, "r", "x", b"<html>");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("registry r"));
        assert_eq!(
            status_error(StatusCode::BAD_REQUEST, "r", "x", b"").kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(registry_errors(b"{}"), None);
        let e = push_status_error(StatusCode::FORBIDDEN, "r", "a/b", "the upload", b"");
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(
            e.message
                .contains("distctl login r` with an account that may push to a/b"),
            "{}",
            e.message
        );
        let e = push_status_error(StatusCode::PAYLOAD_TOO_LARGE, "r", "a", "x", b"");
        assert!(e.message.contains("[push] chunk_size"), "{}", e.message);
        let e = push_status_error(StatusCode::SERVICE_UNAVAILABLE, "r", "a", "the upload", b"");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("registry r failed the upload"));
        assert_eq!(
            push_status_error(StatusCode::NOT_FOUND, "r", "a", "x", b"").kind,
            ErrorKind::NotFound
        );
        assert_eq!(registry_errors(br#"{"errors":[]}"#), None);
    }
}
