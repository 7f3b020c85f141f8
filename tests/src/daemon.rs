//! A real `distd` process on a temporary root.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use distd_sdk::Client;
use rustix::process::{Pid, Signal, kill_process};

use crate::bin_path;

/// How long a daemon gets to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// Text of a config TOML passed with `--config` (none when `None`).
    pub config: Option<String>,
    /// Extra environment, e.g. `DISTD_FAILPOINT`.
    pub env: Vec<(String, String)>,
    /// Create the socket's directory (mode 0700) before starting; when false
    /// the daemon must create it itself.
    pub precreate_socket_dir: bool,
    /// Put the root on a tmpfs of this size (e.g. "24m"), mounted in a
    /// private user+mount namespace (`unshare`), to fill the disk for real.
    /// The mount lives as long as the daemon process.
    pub root_tmpfs: Option<String>,
    /// Files written before each start, at paths relative to the daemon's
    /// temporary directory (parents created), e.g. `certs.d/<host>/ca.crt`
    /// next to `config.toml`.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            config: None,
            env: Vec::new(),
            precreate_socket_dir: true,
            root_tmpfs: None,
            files: Vec::new(),
        }
    }
}

impl DaemonOpts {
    /// Options with this config file text.
    pub fn with_config(config: &str) -> Self {
        DaemonOpts {
            config: Some(config.to_owned()),
            ..DaemonOpts::default()
        }
    }

    /// Options with `DISTD_FAILPOINT=name`.
    pub fn with_failpoint(name: &str) -> Self {
        DaemonOpts {
            env: vec![("DISTD_FAILPOINT".to_owned(), name.to_owned())],
            ..DaemonOpts::default()
        }
    }
}

/// A `distd` process with its own temporary directory:
///
/// ```text
/// /tmp/dt-XXXXXX/
///   root/        --root
///   run/d.sock   --socket
///   config.toml  --config, when given
///   distd.log    the daemon's stderr, appended across restarts
///   work/        scratch space for the test's own files
/// ```
///
/// Dropping it kills the process and removes the directory (kept when
/// `DISTD_TESTS_KEEP` is set); when the test is panicking, the daemon's log
/// is printed first.
pub struct Daemon {
    dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// The options the next `restart` uses.
    pub opts: DaemonOpts,
    child: Option<Child>,
    /// Exit status of the last process, once it has been reaped.
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Starts a daemon with default options and waits until it accepts connections.
    pub fn start() -> Daemon {
        Daemon::start_with(DaemonOpts::default())
    }

    /// Starts a daemon with `opts` and waits until it accepts connections.
    pub fn start_with(opts: DaemonOpts) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("dt-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory under /tmp");
        let root = dir.path().join("root");
        let socket = dir.path().join("run").join("d.sock");
        if opts.precreate_socket_dir {
            fs::create_dir(socket.parent().unwrap()).expect("create the socket directory");
        }
        fs::create_dir(dir.path().join("work")).expect("create the work directory");
        let log = dir.path().join("distd.log");
        let mut daemon = Daemon {
            dir,
            root,
            socket,
            log,
            opts,
            child: None,
            exited: None,
        };
        daemon.spawn_and_wait();
        daemon
    }

    /// The temporary directory that holds root, socket, log and `work/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store root (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The socket (`--socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Scratch directory for the test's files (outside the root).
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// Everything the daemon has logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command that starts a daemon on this root and socket with `opts`
    /// (stderr not redirected), e.g. to start a competing second one.
    pub fn command(&self, opts: &DaemonOpts) -> Command {
        let mut command = match &opts.root_tmpfs {
            None => Command::new(bin_path("distd")),
            Some(size) => {
                fs::create_dir_all(&self.root).expect("create the root mount point");
                let mut wrapped = Command::new("unshare");
                wrapped
                    .args(["--user", "--map-root-user", "--mount", "sh", "-ec"])
                    .arg(r#"size=$1; root=$2; shift 2; mount -t tmpfs -o size="$size" tmpfs "$root"; exec "$@""#)
                    .arg("sh")
                    .arg(size)
                    .arg(&self.root)
                    .arg(bin_path("distd"));
                wrapped
            }
        };
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env_remove("DISTD_FAILPOINT")
            .env_remove("DISTD_SOCKET");
        for (relative, bytes) in &opts.files {
            let path = self.dir.path().join(relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create a daemon file's directory");
            }
            fs::write(&path, bytes)
                .unwrap_or_else(|e| panic!("write the daemon's file {}: {e}", path.display()));
        }
        if let Some(config) = &opts.config {
            let path = self.dir.path().join("config.toml");
            fs::write(&path, config).expect("write the daemon's config");
            command.arg("--config").arg(path);
        }
        for (key, value) in &opts.env {
            command.env(key, value);
        }
        command
    }

    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "a daemon is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the daemon log");
        // Files by path and size: their bytes would swamp the log.
        let files: Vec<String> = self
            .opts
            .files
            .iter()
            .map(|(path, bytes)| format!("{} ({} bytes)", path.display(), bytes.len()))
            .collect();
        let shown = DaemonOpts {
            files: Vec::new(),
            ..self.opts.clone()
        };
        writeln!(
            log,
            "---- distd start (opts: {shown:?}, files: {files:?}) ----"
        )
        .ok();
        let mut command = self.command(&self.opts.clone());
        command.stderr(Stdio::from(log));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        self.child = Some(child);
        self.exited = None;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "distd exited with {status} before accepting connections on {}\nlog:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "distd did not accept connections on {} within {START_TIMEOUT:?}\nlog:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Reaps the process if it has exited; returns its status.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        match child.try_wait().expect("wait for distd") {
            Some(status) => {
                self.exited = Some(status);
                self.child = None;
                Some(status)
            }
            None => None,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            self.exited = Some(child.wait().expect("reap distd"));
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_ref().expect("the daemon is running");
        kill_process(Pid::from_child(child), Signal::TERM).expect("send SIGTERM to distd");
        match self.wait_exit(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                self.kill9();
                panic!(
                    "distd did not exit within {STOP_TIMEOUT:?} of SIGTERM\nlog:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Starts the daemon again on the same root and socket with `self.opts`
    /// (killing a running one first).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    /// A client connected to the daemon.
    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to distd at {}: {e}\nlog:\n{}",
                self.socket.display(),
                self.log()
            )
        })
    }

    /// Lists every file (not directory) under `path`, recursively, sorted.
    pub fn files_under(path: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("DISTD_TESTS_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept the daemon's directory {}", self.dir.path().display());
        }
        if std::thread::panicking() {
            eprintln!(
                "==== distd log ({}) ====\n{}==== end of distd log ====",
                self.log.display(),
                self.log()
            );
        }
    }
}
