//! Default locations of the daemon's socket and store, shared by the daemon
//! and its clients so both find the same socket without configuration.

use std::path::PathBuf;

/// Environment variable that names the daemon's socket for clients.
pub const SOCKET_ENV: &str = "DISTD_SOCKET";

fn running_as_root() -> bool {
    // The effective uid is not in std; the owner of /proc/self is the process's
    // (effective) uid on Linux.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `$XDG_RUNTIME_DIR/distd/distd.sock`, or `/run/distd/distd.sock` as root or
/// when no runtime directory is set.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !running_as_root() && !dir.is_empty() => {
            PathBuf::from(dir).join("distd").join("distd.sock")
        }
        _ => PathBuf::from("/run/distd/distd.sock"),
    }
}

/// `$XDG_DATA_HOME/distd` (else `~/.local/share/distd`), or `/var/lib/distd`
/// as root.
pub fn default_root() -> PathBuf {
    if running_as_root() {
        return PathBuf::from("/var/lib/distd");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("distd");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/distd"),
        None => PathBuf::from("/var/lib/distd"),
    }
}

/// The socket a client should use: the explicit one, else `DISTD_SOCKET`,
/// else [`default_socket`].
pub fn client_socket(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_socket)
}
