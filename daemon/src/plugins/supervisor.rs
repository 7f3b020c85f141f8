//! Plugins the daemon runs itself (`exec`): started with their socket path,
//! their stderr turned into log lines, restarted with backoff when they
//! exit, and stopped (SIGTERM, then SIGKILL) with the daemon.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// First pause before a restart; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the backoff: the plugin was healthy.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// How long a plugin gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A plugin process the daemon keeps running.
#[derive(Debug)]
pub struct Supervised {
    /// Its pid while running, else 0.
    pid: AtomicU32,
    /// Times it was restarted.
    restarts: AtomicU32,
    /// When the current process started.
    started: Mutex<Instant>,
    /// Turned true to stop it for good.
    stop: watch::Sender<bool>,
    /// Turned true when the supervising task has ended.
    ended: watch::Receiver<bool>,
}

impl Supervised {
    /// Its pid while running, else 0.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Times it was restarted after exiting.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Whether it is running and started less than `within` ago: it may
    /// not listen yet.
    pub fn starting(&self, within: Duration) -> bool {
        self.pid() != 0
            && self
                .started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                < within
    }

    /// Asks the process to stop (see [`Supervised::stop`]) without waiting.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops the process (SIGTERM, SIGKILL after a grace period) and its
    /// restarts, and waits for both.
    pub async fn stop(&self) {
        self.request_stop();
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }
}

/// Starts `argv` as plugin `name` listening on `socket`, and keeps it
/// running until [`Supervised::stop`].
pub fn start(name: &str, argv: &[String], socket: &Path) -> Arc<Supervised> {
    let (stop, stop_rx) = watch::channel(false);
    let (ended_tx, ended) = watch::channel(false);
    let process = Arc::new(Supervised {
        pid: AtomicU32::new(0),
        restarts: AtomicU32::new(0),
        started: Mutex::new(Instant::now()),
        stop,
        ended,
    });
    let keeper = Keeper {
        name: name.to_owned(),
        argv: argv.to_vec(),
        socket: socket.to_owned(),
        process: Arc::clone(&process),
        stop: stop_rx,
    };
    tokio::spawn(async move {
        keeper.run().await;
        let _ = ended_tx.send(true);
    });
    process
}

struct Keeper {
    name: String,
    argv: Vec<String>,
    socket: PathBuf,
    process: Arc<Supervised>,
    stop: watch::Receiver<bool>,
}

impl Keeper {
    async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            match self.spawn() {
                Ok(child) => {
                    if self.watch(child).await {
                        return;
                    }
                    if started.elapsed() >= STABLE_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                }
                Err(e) => {
                    tracing::error!(plugin = %self.name, program = %self.argv[0], error = %e, "cannot start the plugin; check `exec` in its [[plugin]] entry");
                }
            }
            tracing::info!(plugin = %self.name, in_ms = backoff.as_millis() as u64, "restarting the plugin");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = self.stop.wait_for(|stop| *stop) => return,
            }
            self.process.restarts.fetch_add(1, Ordering::Relaxed);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        if let Some(dir) = self.socket.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        // A socket left by an earlier process (or a daemon killed before it
        // could stop its plugins) must not answer for the new one.
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = self.socket.to_string_lossy();
        let args = self.argv[1..]
            .iter()
            .map(|a| a.replace("{socket}", &socket));
        let mut child = Command::new(&self.argv[0])
            .args(args)
            .env(distd_sdk::plugin::SOCKET_ENV, &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        *self
            .process
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.process.pid.store(pid, Ordering::Relaxed);
        tracing::info!(plugin = %self.name, pid, socket = %self.socket.display(), "plugin started");
        if let Some(stderr) = child.stderr.take() {
            let name = self.name.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(plugin = %name, "{line}");
                }
            });
        }
        Ok(child)
    }

    /// Waits for the child to exit (false) or for a stop (true, after
    /// stopping the child).
    async fn watch(&mut self, mut child: Child) -> bool {
        let stopping = tokio::select! {
            status = child.wait() => {
                self.process.pid.store(0, Ordering::Relaxed);
                match status {
                    Ok(status) => tracing::warn!(plugin = %self.name, %status, "plugin exited"),
                    Err(e) => tracing::warn!(plugin = %self.name, error = %e, "lost track of the plugin"),
                }
                return false;
            }
            _ = self.stop.wait_for(|stop| *stop) => true,
        };
        if let Some(pid) = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(plugin = %self.name, "plugin ignored SIGTERM; killing it");
            let _ = child.kill().await;
        }
        self.process.pid.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!(plugin = %self.name, "plugin stopped");
        stopping
    }
}
