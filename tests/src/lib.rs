//! Harness shared by distd's end-to-end tests.
//!
//! Every test starts its own real `distd` process ([`Daemon`]) on a fresh
//! temporary root and socket, and talks to it through the SDK's raw gRPC
//! clients ([`rpc`]) where it needs exact status codes, or through the real
//! `distctl` binary ([`cli::distctl`]) where the behaviour under test is the
//! command line's. Tests run in parallel (nextest), so nothing is shared: each
//! daemon has its own temporary directory, removed when the daemon is dropped.
//!
//! The binaries under test are not Cargo dependencies of this crate: they are
//! found next to the test executable (`target/<profile>/`), so
//! `cargo build --workspace --bins` must run first (`test.sh` does). A missing
//! binary fails the test; nothing is ever skipped.

#![forbid(unsafe_code)]

pub mod certs;
pub mod cli;
pub mod daemon;
pub mod data;
pub mod oci;
pub mod plugins;
pub mod proxy;
pub mod registry;
pub mod rpc;
pub mod s3;
pub mod token_server;
pub mod transfer;

pub use cli::{CliOutput, distctl, distctl_at};
pub use daemon::{Daemon, DaemonOpts};
pub use distd_proto::distd::v1 as pb;

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// Path of a workspace binary built in the same profile as the running test.
///
/// The test executable is `target/<profile>/deps/<test>-<hash>`; binaries are
/// in `target/<profile>/`.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("locate the test executable");
    let deps = exe.parent().expect("the test executable has a directory");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("target/<profile> exists")
    } else {
        deps
    };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not found: run `cargo build --workspace --bins` first (test.sh does)",
        path.display()
    );
    path
}

/// Polls `condition` every 50 ms until it returns `Some`, or panics saying
/// it timed out waiting for `what` after `timeout`.
pub fn poll_until<T>(
    timeout: std::time::Duration,
    what: &str,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Arguments for [`distctl`] from values of mixed types (`&str`, `&Path`,
/// `String`, …).
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        vec![$(::std::ffi::OsStr::new(&$arg).to_owned()),*]
    };
}

/// The first JSON object under `value` (itself included, depth first) for
/// which `predicate` holds.
pub fn json_find<'a>(
    value: &'a serde_json::Value,
    predicate: &dyn Fn(&serde_json::Value) -> bool,
) -> Option<&'a serde_json::Value> {
    if predicate(value) {
        return Some(value);
    }
    match value {
        serde_json::Value::Array(items) => items.iter().find_map(|v| json_find(v, predicate)),
        serde_json::Value::Object(map) => map.values().find_map(|v| json_find(v, predicate)),
        _ => None,
    }
}
