//! Serving a [`Transport`] on a Unix socket: binding (with stale-socket
//! handling), the gRPC server, shutdown on signals.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use distd_proto::distd::transport::v1::transport_server::TransportServer;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

use super::service::Service;
use super::{MAX_MESSAGE_BYTES, SOCKET_MODE};
use crate::client::FLOW_WINDOW_BYTES;
use crate::transport::Transport;

/// How long calls in flight may take to finish once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for an answer when checking whether a socket is in use.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a plugin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The socket's directory could not be created.
    #[error("cannot create the directory {} of the plugin socket: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Something other than a socket is at the socket path.
    #[error("{} exists and is not a socket: refusing to replace it", socket.display())]
    NotASocket {
        /// The socket path.
        socket: PathBuf,
    },
    /// Another process answers on the socket.
    #[error(
        "another process is serving on {}: stop it, or give this plugin another socket", socket.display()
    )]
    InUse {
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket path could not be examined or the stale socket removed.
    #[error("cannot replace the stale plugin socket {}: {source}", socket.display())]
    Stale {
        /// The socket path.
        socket: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot listen on the plugin socket {}: {source}", socket.display())]
    Bind {
        /// The socket path.
        socket: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The socket's mode could not be set.
    #[error("cannot set the mode of the plugin socket {}: {source}", socket.display())]
    Permissions {
        /// The socket path.
        socket: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The SIGINT or SIGTERM handler could not be installed.
    #[error("cannot handle SIGINT and SIGTERM: {source}")]
    Signals {
        /// What failed.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the plugin server on {} failed: {source}", socket.display())]
    Serve {
        /// The socket path (empty when the listener's address is unnamed).
        socket: PathBuf,
        /// What failed.
        source: tonic::transport::Error,
    },
}

/// Listens on `socket` the way [`serve`] does: creates its parent directory
/// if missing, replaces a stale socket (one nobody answers on), refuses a path
/// that is not a socket or that another process serves, and sets the mode of
/// the new socket to 0660 (owner and group may connect).
///
/// The mode is set right after `bind`, so for an instant the socket has the
/// mode the process's umask gives it; the process-wide umask is not touched,
/// as other threads may be creating files.
pub async fn bind(socket: impl AsRef<Path>) -> Result<UnixListener, PluginError> {
    let socket = socket.as_ref();
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| PluginError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    remove_stale(socket).await?;
    let listener = UnixListener::bind(socket).map_err(|source| PluginError::Bind {
        socket: socket.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| PluginError::Permissions {
            socket: socket.to_path_buf(),
            source,
        },
    )?;
    Ok(listener)
}

/// Removes the socket file at `socket` if nobody answers on it.
async fn remove_stale(socket: &Path) -> Result<(), PluginError> {
    let stale = |source| PluginError::Stale {
        socket: socket.to_path_buf(),
        source,
    };
    let metadata = match std::fs::symlink_metadata(socket) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale(e)),
    };
    if !metadata.file_type().is_socket() {
        return Err(PluginError::NotASocket {
            socket: socket.to_path_buf(),
        });
    }
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(socket)).await {
        // Connected, or a listener too busy to accept: someone is there.
        Ok(Ok(_)) | Err(_) => Err(PluginError::InUse {
            socket: socket.to_path_buf(),
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(socket) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(stale(e)),
            }
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(Err(e)) => Err(stale(e)),
    }
}

/// Serves `transport` as the `distd.transport.v1.Transport` service on
/// `socket` (see [`bind`]) until SIGINT or SIGTERM (or, for a plugin the
/// daemon started, until the daemon dies), then removes the socket file.
/// Calls in flight get [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    socket: impl AsRef<Path>,
    transport: impl Transport + 'static,
) -> Result<(), PluginError> {
    use tokio::signal::unix::{SignalKind, signal};
    let socket = socket.as_ref();
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| PluginError::Signals { source })?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|source| PluginError::Signals { source })?;
    let listener = bind(socket).await?;
    // Remember which file is ours, so that a socket another instance bound
    // meanwhile is not removed.
    let identity = std::fs::symlink_metadata(socket)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let started_by_daemon = super::socket_from_env().is_some_and(|s| s == socket);
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = orphaned(started_by_daemon) => {}
        }
    };
    let result = serve_with_shutdown(listener, transport, shutdown).await;
    let current = std::fs::symlink_metadata(socket)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if identity.is_some() && current == identity {
        // Best effort: a leftover socket is replaced as stale next time.
        let _ = std::fs::remove_file(socket);
    }
    result
}

/// Resolves when a plugin the daemon started loses its daemon (killed
/// without the chance to stop it: the plugin is reparented), so a restarted
/// daemon never finds an orphan of its predecessor; never otherwise.
async fn orphaned(started_by_daemon: bool) {
    if !started_by_daemon {
        return std::future::pending().await;
    }
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// Serves `transport` on `listener` until `shutdown` completes, then lets
/// calls in flight finish for up to [`SHUTDOWN_GRACE`]. Does not remove the
/// socket file.
pub async fn serve_with_shutdown(
    listener: UnixListener,
    transport: impl Transport + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PluginError> {
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_default();
    let service = TransportServer::new(Service::new(transport))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(FLOW_WINDOW_BYTES)
        .initial_connection_window_size(2 * FLOW_WINDOW_BYTES)
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    tokio::pin!(server);
    let result = tokio::select! {
        biased;
        result = &mut server => result,
        _ = stopped => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(result) => result,
            // Calls still running are cut short.
            Err(_) => Ok(()),
        },
    };
    result.map_err(|source| PluginError::Serve { socket, source })
}
