//! Turning a [`ClientError`] into a one-line message that says what to do.

use distd_sdk::{ClientError, Digest, ErrorKind};

/// What to say for an error kind in a particular command.
pub type Hint<'a> = (ErrorKind, &'a str);

/// The advice for an error kind when the command gives none.
fn generic_hint(kind: ErrorKind) -> Option<&'static str> {
    match kind {
        ErrorKind::Unavailable => Some("distd is busy with it or shutting down; retry later"),
        ErrorKind::PermissionDenied => {
            Some("you may not do this: check the permissions of the socket (--socket)")
        }
        ErrorKind::ResourceExhausted => {
            Some("the store's disk is full: free space or run `distctl gc`, then retry")
        }
        ErrorKind::DataLoss => Some("the store may be damaged: run `distctl verify`"),
        ErrorKind::Internal => Some("this is a bug in distd; its log says more"),
        ErrorKind::Cancelled => Some("the operation was cancelled; retry it"),
        ErrorKind::NotFound
        | ErrorKind::AlreadyExists
        | ErrorKind::InvalidArgument
        | ErrorKind::FailedPrecondition
        | ErrorKind::OutOfRange => None,
    }
}

/// `action: daemon message: hint`. A daemon that cannot be reached is
/// reported as such, without the action (it is the same for every command).
pub fn explain(err: ClientError, action: &str, hints: &[Hint<'_>]) -> anyhow::Error {
    // The client's messages already name their cause: format them, rather
    // than wrapping, so the one error line does not repeat it.
    if matches!(err, ClientError::Connect { .. }) {
        return anyhow::anyhow!("{err}");
    }
    let kind = err.kind();
    let hint = hints
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, h)| *h)
        .or_else(|| generic_hint(kind));
    match hint {
        Some(hint) => anyhow::anyhow!("{action}: {err}: {hint}"),
        None => anyhow::anyhow!("{action}: {err}"),
    }
}

/// Like [`explain`] for calls whose errors come from a registry through
/// the daemon (pull, inspect, login): the daemon's message already says what
/// to do, so only store-side kinds (disk full, a bug) get generic advice.
pub fn explain_remote(err: ClientError, action: &str, hints: &[Hint<'_>]) -> anyhow::Error {
    let kind = err.kind();
    if hints.iter().any(|(k, _)| *k == kind)
        || matches!(kind, ErrorKind::ResourceExhausted | ErrorKind::Internal)
        || matches!(err, ClientError::Connect { .. })
    {
        return explain(err, action, hints);
    }
    anyhow::anyhow!("{action}: {err}")
}

/// Extension to explain a client result in place.
pub trait Explain<T> {
    /// Explains an error with the command's `action` and kind-specific `hints`.
    fn explain(self, action: &str, hints: &[Hint<'_>]) -> anyhow::Result<T>;
}

impl<T> Explain<T> for Result<T, ClientError> {
    fn explain(self, action: &str, hints: &[Hint<'_>]) -> anyhow::Result<T> {
        self.map_err(|e| explain(e, action, hints))
    }
}

/// Parses a digest given on the command line, with the reason when it is not one.
pub fn parse_digest(input: &str) -> anyhow::Result<Digest> {
    Digest::parse(input).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: ErrorKind, message: &str) -> ClientError {
        ClientError::Status {
            kind,
            message: message.to_owned(),
        }
    }

    #[test]
    fn specific_hints_win_over_generic_ones() {
        let err = explain(
            status(ErrorKind::DataLoss, "digest mismatch"),
            "uploading f",
            &[(
                ErrorKind::DataLoss,
                "the file does not match --expected sha256:x",
            )],
        );
        assert_eq!(
            err.to_string(),
            "uploading f: digest mismatch: the file does not match --expected sha256:x"
        );
        let err = explain(
            status(ErrorKind::ResourceExhausted, "disk full"),
            "put",
            &[],
        );
        assert!(err.to_string().contains("distctl gc"));
    }

    #[test]
    fn connection_errors_are_reported_alone() {
        let err = ClientError::Connect {
            socket: "/run/x.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let line = explain(err, "listing", &[]).to_string();
        assert!(line.starts_with("cannot reach distd at /run/x.sock: is it running?"));
    }
}
