//! The typed client of the daemon's gRPC API on its Unix socket.

use std::path::{Path, PathBuf};

use distd_proto::distd::v1 as pb;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::ErrorKind;

mod read;
mod services;
mod write;

pub use read::ReadOptions;
pub use write::{BlobSource, Seekable, Unseekable, WRITE_CHUNK_BYTES, WriteOptions, WriteOutcome};

/// Largest gRPC message the client accepts; reads stream 1 MiB chunks.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// HTTP/2 flow-control window per stream (the connection gets twice this).
pub const FLOW_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot reach distd at {}: is it running? start it with `distd` ({source})", socket.display()
    )]
    Connect {
        /// The socket that was tried.
        socket: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Status {
        /// The error's class.
        kind: ErrorKind,
        /// The daemon's message.
        message: String,
    },
    /// A local file or stream failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The daemon's answer broke the protocol.
    #[error("unexpected answer from distd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The class of the error, to match on without reading messages.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Connect { .. } => ErrorKind::Unavailable,
            ClientError::Status { kind, .. } => *kind,
            ClientError::Io { .. } | ClientError::Protocol(_) => ErrorKind::Internal,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status {
            kind: ErrorKind::from_code(status.code()),
            message: status.message().to_owned(),
        }
    }
}

/// A connection to the daemon. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    socket: PathBuf,
}

impl Client {
    /// Connects to the daemon listening on the Unix socket `socket`.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        let socket = socket.as_ref().to_path_buf();
        // Probe first so a missing daemon is reported as such, not as a
        // transport error on the first call.
        UnixStream::connect(&socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: socket.clone(),
                source,
            })?;
        let dial = socket.clone();
        // The URI is required by the API but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://distd.sock")
            // Wide HTTP/2 windows: the 64 KiB default stalls 1 MiB chunks on
            // window updates, even over a local socket.
            .initial_stream_window_size(FLOW_WINDOW_BYTES)
            .initial_connection_window_size(2 * FLOW_WINDOW_BYTES)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let dial = dial.clone();
                async move { UnixStream::connect(dial).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| ClientError::Connect {
                socket: socket.clone(),
                source: std::io::Error::other(e),
            })?;
        Ok(Client { channel, socket })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The raw `Content` service client.
    pub fn content(&self) -> pb::content_client::ContentClient<Channel> {
        pb::content_client::ContentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The raw `Images` service client.
    pub fn images(&self) -> pb::images_client::ImagesClient<Channel> {
        pb::images_client::ImagesClient::new(self.channel.clone())
    }

    /// The raw `Leases` service client.
    pub fn leases(&self) -> pb::leases_client::LeasesClient<Channel> {
        pb::leases_client::LeasesClient::new(self.channel.clone())
    }

    /// The raw `Store` service client.
    pub fn store(&self) -> pb::store_client::StoreClient<Channel> {
        pb::store_client::StoreClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The raw `Transfer` service client.
    pub fn transfer(&self) -> pb::transfer_client::TransferClient<Channel> {
        pb::transfer_client::TransferClient::new(self.channel.clone())
    }

    /// The raw `Plugins` service client.
    pub fn plugins(&self) -> pb::plugins_client::PluginsClient<Channel> {
        pb::plugins_client::PluginsClient::new(self.channel.clone())
    }

    /// The raw `System` service client.
    pub fn system(&self) -> pb::system_client::SystemClient<Channel> {
        pb::system_client::SystemClient::new(self.channel.clone())
    }

    /// The daemon's version.
    pub async fn version(&self) -> Result<pb::VersionResponse, ClientError> {
        Ok(self
            .system()
            .version(pb::VersionRequest {})
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests;
