//! Crash points for tests: `DISTD_FAILPOINT=<name>` makes the daemon abort,
//! as abruptly as `kill -9`, when execution reaches the named point. This is
//! how the end-to-end tests prove that a crash at each step of a commit
//! leaves the store consistent. Unset, a check costs one atomic load.

use std::sync::OnceLock;

/// Environment variable naming the point to crash at.
pub const ENV: &str = "DISTD_FAILPOINT";

/// Commit: after the digest check and intent record, before the rename.
pub const COMMIT_BEFORE_RENAME: &str = "commit-before-rename";
/// Commit: the file is in blobs/, its row is not yet written.
pub const COMMIT_AFTER_RENAME: &str = "commit-after-rename";
/// Commit: the row is written, the ingest directory not yet removed.
pub const COMMIT_AFTER_RECORD: &str = "commit-after-record";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Aborts the process if `point` is the armed failpoint.
pub fn hit(point: &str) {
    if armed() == Some(point) {
        tracing::error!(point, "failpoint reached; aborting");
        std::process::abort();
    }
}
