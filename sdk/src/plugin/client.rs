//! [`RemoteTransport`]: the [`Transport`] trait over a plugin's socket.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use distd_proto::distd::transport::v1 as pb;
use hyper_util::rt::TokioIo;
use pb::transport_client::TransportClient;
use tokio::net::UnixStream;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

use super::MAX_MESSAGE_BYTES;
use super::convert;
use super::push;
use crate::client::FLOW_WINDOW_BYTES;
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::reference::Reference;
use crate::transport::{
    BlobSource, ByteStream, Description, Descriptor, Locator, MountOutcome, PushProgress,
    Transport, TransportError, UploadSession,
};

/// How long connecting to a plugin's socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a whole [`Transport::health`] check of a plugin may take.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The plugin's name and socket, for error messages.
#[derive(Debug)]
pub(super) struct Peer {
    name: String,
    socket: PathBuf,
}

impl Peer {
    pub(super) fn error(&self, kind: ErrorKind, message: impl fmt::Display) -> TransportError {
        TransportError::new(kind, format!("plugin {}: {message}", self.name))
    }

    /// The error of a failed call. Statuses the plugin answered keep their
    /// class; failures of the connection itself (no socket, refused, reset)
    /// are `Unavailable` and say what happened to the socket.
    pub(super) fn status(&self, status: Status) -> TransportError {
        match status.source() {
            None => self.error(ErrorKind::from_code(status.code()), status.message()),
            Some(source) => self.unreachable(source, status.message()),
        }
    }

    fn unreachable(
        &self,
        source: &(dyn std::error::Error + 'static),
        summary: &str,
    ) -> TransportError {
        let socket = self.socket.display();
        let mut io_kind = None;
        let mut causes = vec![summary.to_owned()];
        let mut next = Some(source);
        while let Some(err) = next {
            if io_kind.is_none() {
                io_kind = err.downcast_ref::<io::Error>().map(io::Error::kind);
            }
            let text = err.to_string();
            if !causes.iter().any(|c| c.contains(&text)) {
                causes.push(text);
            }
            next = err.source();
        }
        let missing = matches!(
            std::fs::symlink_metadata(&self.socket),
            Err(e) if e.kind() == io::ErrorKind::NotFound
        );
        let message = if missing || io_kind == Some(io::ErrorKind::NotFound) {
            format!("no plugin socket at {socket}: is the plugin running?")
        } else if io_kind == Some(io::ErrorKind::ConnectionRefused) {
            format!("the plugin socket {socket} refused the connection: is the plugin running?")
        } else if io_kind == Some(io::ErrorKind::TimedOut) {
            format!("no answer on the plugin socket {socket} within {CONNECT_TIMEOUT:?}")
        } else {
            let causes: Vec<_> = causes.into_iter().filter(|c| !c.is_empty()).collect();
            format!("the connection to {socket} failed: {}", causes.join(": "))
        };
        self.error(ErrorKind::Unavailable, message)
    }

    /// The error for an answer that breaks the protocol.
    pub(super) fn protocol(&self, what: impl fmt::Display) -> TransportError {
        self.error(ErrorKind::Internal, format_args!("invalid answer: {what}"))
    }
}

/// A plugin reached over its Unix socket, as a [`Transport`].
///
/// Creating one does not connect: the connection is made on the first call
/// and remade after the plugin restarts. Statuses the plugin answers become
/// [`TransportError`]s of the same class with the message prefixed by
/// `plugin <name>: `; failures to reach the socket are `Unavailable`.
pub struct RemoteTransport {
    peer: Arc<Peer>,
    channel: OnceLock<Channel>,
    description: RwLock<Description>,
}

impl fmt::Debug for RemoteTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTransport")
            .field("name", &self.peer.name)
            .field("socket", &self.peer.socket)
            .finish_non_exhaustive()
    }
}

/// The channel to the plugin socket `socket`, connecting on first use.
/// Must be called within a Tokio runtime.
pub(crate) fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://plugin.sock")
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(FLOW_WINDOW_BYTES)
        .initial_connection_window_size(2 * FLOW_WINDOW_BYTES)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&socket)).await {
                    Ok(stream) => stream.map(TokioIo::new),
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {} timed out", socket.display()),
                    )),
                }
            }
        }))
}

impl RemoteTransport {
    /// The plugin named `name` (the daemon's name for it, which
    /// [`Transport::describe`] reports) listening on `socket`. Does not
    /// connect.
    pub fn new(name: impl Into<String>, socket: impl Into<PathBuf>) -> RemoteTransport {
        let name = name.into();
        RemoteTransport {
            description: RwLock::new(Description {
                name: name.clone(),
                ..Description::default()
            }),
            peer: Arc::new(Peer {
                name,
                socket: socket.into(),
            }),
            channel: OnceLock::new(),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.peer.name
    }

    /// The plugin's socket.
    pub fn socket(&self) -> &Path {
        &self.peer.socket
    }

    fn client(&self) -> TransportClient<Channel> {
        let channel = self.channel.get_or_init(|| channel(&self.peer.socket));
        TransportClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Asks the plugin to describe itself and keeps the answer for
    /// [`Transport::describe`]; the name stays the one given to
    /// [`RemoteTransport::new`].
    pub async fn refresh(&self) -> Result<Description, TransportError> {
        let response = self
            .client()
            .describe(pb::DescribeRequest {})
            .await
            .map_err(|s| self.peer.status(s))?;
        let mut description = convert::description_from_pb(response.into_inner());
        description.name = self.peer.name.clone();
        *self
            .description
            .write()
            .unwrap_or_else(PoisonError::into_inner) = description.clone();
        Ok(description)
    }

    async fn check_health(&self) -> Result<(), TransportError> {
        self.refresh().await?;
        let response = self
            .client()
            .health(pb::HealthRequest {})
            .await
            .map_err(|s| self.peer.status(s))?
            .into_inner();
        if response.serving {
            return Ok(());
        }
        let why = if response.message.is_empty() {
            "not serving".to_owned()
        } else {
            format!("not serving: {}", response.message)
        };
        Err(self.peer.error(ErrorKind::Unavailable, why))
    }

    fn descriptor(&self, descriptor: Option<pb::Descriptor>) -> Result<Descriptor, TransportError> {
        convert::descriptor_from_pb(descriptor, "descriptor").map_err(|e| self.peer.protocol(e))
    }
}

#[async_trait::async_trait]
impl Transport for RemoteTransport {
    fn describe(&self) -> Description {
        self.description
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn health(&self) -> Result<(), TransportError> {
        match tokio::time::timeout(HEALTH_TIMEOUT, self.check_health()).await {
            Ok(result) => result,
            Err(_) => Err(self.peer.error(
                ErrorKind::Unavailable,
                format_args!(
                    "no answer to the health check on {} within {HEALTH_TIMEOUT:?}",
                    self.peer.socket.display()
                ),
            )),
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        let response = self
            .client()
            .resolve(pb::ResolveRequest {
                reference: reference.to_string(),
            })
            .await
            .map_err(|s| self.peer.status(s))?;
        self.descriptor(response.into_inner().descriptor)
    }

    async fn fetch(
        &self,
        locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let request = pb::FetchRequest {
            locator: Some(convert::locator_to_pb(locator)),
            descriptor: Some(convert::descriptor_to_pb(descriptor)),
            offset,
        };
        let stream = self
            .client()
            .fetch(request)
            .await
            .map_err(|s| self.peer.status(s))?
            .into_inner();
        let peer = Arc::clone(&self.peer);
        let bytes = stream
            .map(move |item| item.map(|r| r.data).map_err(|s| peer.status(s)))
            .filter(|item| item.as_ref().map_or(true, |data| !data.is_empty()));
        Ok(Box::pin(bytes))
    }

    async fn stat(
        &self,
        locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        let response = self
            .client()
            .stat(pb::StatRequest {
                locator: Some(convert::locator_to_pb(locator)),
                digest: digest.to_string(),
            })
            .await
            .map_err(|s| self.peer.status(s))?
            .into_inner();
        Ok(response.present.then_some(response.size))
    }

    async fn mount(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        from: &str,
    ) -> Result<MountOutcome, TransportError> {
        let response = self
            .client()
            .mount(pb::MountRequest {
                locator: Some(convert::locator_to_pb(locator)),
                blob: Some(convert::descriptor_to_pb(blob)),
                from: from.to_owned(),
            })
            .await
            .map_err(|s| self.peer.status(s))?
            .into_inner();
        Ok(if response.mounted {
            MountOutcome::Mounted
        } else {
            MountOutcome::NotMounted(response.session.map(convert::session_from_pb))
        })
    }

    async fn push_blob(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        source: &dyn BlobSource,
        resume: Option<UploadSession>,
        progress: &dyn PushProgress,
    ) -> Result<u64, TransportError> {
        push::push_blob(
            self.client(),
            &self.peer,
            locator,
            blob,
            source,
            resume,
            progress,
        )
        .await
    }

    async fn push_manifest(
        &self,
        locator: &Locator,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        self.client()
            .push_manifest(pb::PushManifestRequest {
                locator: Some(convert::locator_to_pb(locator)),
                reference: reference.to_owned(),
                media_type: media_type.to_owned(),
                manifest: bytes,
            })
            .await
            .map_err(|s| self.peer.status(s))?;
        Ok(())
    }
}
