//! Running the real `distctl` binary against a daemon.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use crate::{Daemon, bin_path};

/// What one `distctl` run produced.
#[derive(Debug)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with everything the command printed unless it exited 0.
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert!(
            self.status.success(),
            "`{}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command exited 1 with exactly one stderr line that
    /// starts with `error: `; returns that line.
    #[track_caller]
    pub fn failure(&self) -> &str {
        assert_eq!(
            self.status.code(),
            Some(1),
            "`{}` should exit 1; it exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        let stderr = self.stderr.trim_end_matches('\n');
        assert!(
            stderr.starts_with("error: ") && !stderr.contains('\n'),
            "`{}` should print one line `error: …` on stderr, printed:\n{}",
            self.command,
            self.stderr
        );
        stderr
    }

    /// Stdout parsed as JSON (the command must have run with `--json`).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no valid JSON ({e}):\n{}\nstderr:\n{}",
                self.command, self.stdout, self.stderr
            )
        })
    }
}

/// Runs `distctl --socket <daemon's socket> ARGS…` to completion.
pub fn distctl<I, S>(daemon: &Daemon, args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    distctl_at(daemon.socket(), args)
}

/// Runs `distctl --socket SOCKET ARGS…` to completion (no daemon needed).
pub fn distctl_at<I, S>(socket: &Path, args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(bin_path("distctl"));
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DISTD_SOCKET")
        .stdin(Stdio::null());
    let line = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    CliOutput {
        command: line,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `distctl` command prepared with the daemon's socket, to spawn and
/// control by hand (e.g. to feed its stdin).
pub fn distctl_command<I, S>(daemon: &Daemon, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(bin_path("distctl"));
    command
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .env_remove("DISTD_SOCKET");
    command
}
