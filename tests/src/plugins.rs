//! Transport plugins for the plugin tests: plugin processes the test runs
//! itself on a socket of its own, and what `distctl plugins ls` says about
//! a daemon's transports.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, args, bin_path, distctl, poll_until};

/// How long a plugin process gets to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`wait_for`] polls `plugins ls`.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A plugin process started by the test (not by a daemon), listening on its
/// own socket; dropping it kills and reaps the process.
pub struct PluginProcess {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl PluginProcess {
    /// Runs the workspace binary `bin` with `args` (which must make it
    /// listen on `socket`), its stderr going to `<socket>.log`, and waits
    /// until the socket accepts connections.
    pub fn start(bin: &str, args: Vec<OsString>, socket: &Path) -> PluginProcess {
        let log = socket.with_extension("log");
        let stderr = File::create(&log)
            .unwrap_or_else(|e| panic!("create the plugin's log {}: {e}", log.display()));
        let mut command = Command::new(bin_path(bin));
        command
            .args(args)
            .env_remove(distd_sdk::plugin::SOCKET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let mut plugin = PluginProcess {
            child: Some(child),
            socket: socket.to_owned(),
            log,
        };
        poll_until(
            LISTEN_TIMEOUT,
            &format!("{bin} to listen on {}", socket.display()),
            || {
                if let Some(child) = plugin.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("{bin} exited with {status}:\n{}", plugin.log());
                }
                UnixStream::connect(&plugin.socket).is_ok().then_some(())
            },
        );
        plugin
    }

    /// `distd-oci-dir --socket SOCKET DIR`.
    pub fn oci_dir(socket: &Path, dir: &Path) -> PluginProcess {
        PluginProcess::start("distd-oci-dir", args!["--socket", socket, dir], socket)
    }

    /// `distd-test-plugin --mode MODE --socket SOCKET DIR`.
    pub fn test_plugin(mode: &str, socket: &Path, dir: &Path) -> PluginProcess {
        let args = args!["--mode", mode, "--socket", socket, dir];
        PluginProcess::start("distd-test-plugin", args, socket)
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What it wrote on stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        if std::thread::panicking() {
            eprintln!(
                "==== plugin log ({}) ====\n{}==== end of plugin log ====",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Every transport `distctl --json plugins ls` lists.
pub fn list(d: &Daemon) -> Vec<serde_json::Value> {
    let listed = distctl(d, args!["--json", "plugins", "ls"])
        .success()
        .json();
    listed["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("plugins ls printed no \"plugins\" array: {listed}"))
        .clone()
}

/// The transport `name` as `distctl --json plugins ls` lists it, if listed.
pub fn find(d: &Daemon, name: &str) -> Option<serde_json::Value> {
    list(d).into_iter().find(|p| p["name"] == name)
}

/// The transport `name` as `distctl --json plugins ls` lists it; panics
/// when it is not listed.
pub fn get(d: &Daemon, name: &str) -> serde_json::Value {
    find(d, name).unwrap_or_else(|| panic!("plugins ls does not list {name:?}: {:?}", list(d)))
}

/// Polls `plugins ls` until transport `name` is listed and satisfies
/// `condition` (described by `what`, e.g. "healthy"); returns its entry.
pub fn wait_for(
    d: &Daemon,
    name: &str,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let entry = find(d, name);
        if let Some(entry) = &entry
            && condition(entry)
        {
            return entry.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT_TIMEOUT:?} waiting for plugin {name:?} to be {what}; \
             plugins ls last listed it as {entry:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
