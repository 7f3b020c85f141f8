//! The `distd.transport.v1.Transport` gRPC service over any [`Transport`]:
//! each RPC validates its request, calls the trait method and maps the
//! result back (a [`TransportError`] becomes a status with its kind's code).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use distd_proto::distd::transport::v1 as pb;
use pb::push_blob_request::Message as PushIn;
use pb::push_blob_response::Message as PushOut;
use pb::transport_server::Transport as TransportRpc;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, Chunked, status_of};
use crate::error::ErrorKind;
use crate::reference::Reference;
use crate::transport::{
    BlobSource, ByteStream, Descriptor, Locator, PushProgress, Transport, TransportError,
    UploadSession,
};

/// Responses of a push call queued for the daemon: a few, as they are small
/// and the daemon reads them as they come.
const PUSH_REPLY_QUEUE: usize = 8;

type Reply<T> = Result<Response<T>, Status>;

/// What a stream of responses of a server-streaming RPC is.
type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves a [`Transport`] as the plugin gRPC service.
pub(crate) struct Service<T> {
    transport: Arc<T>,
}

impl<T> Service<T> {
    pub(crate) fn new(transport: T) -> Self {
        Service {
            transport: Arc::new(transport),
        }
    }
}

/// INVALID_ARGUMENT for a request `rpc` cannot make sense of.
fn invalid(rpc: &str, what: String) -> Status {
    Status::invalid_argument(format!("{rpc}: {what}"))
}

#[tonic::async_trait]
impl<T: Transport + 'static> TransportRpc for Service<T> {
    async fn describe(&self, _: Request<pb::DescribeRequest>) -> Reply<pb::DescribeResponse> {
        Ok(Response::new(convert::description_to_pb(
            self.transport.describe(),
        )))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        let response = match self.transport.health().await {
            Ok(()) => pb::HealthResponse {
                serving: true,
                message: String::new(),
            },
            Err(err) => pb::HealthResponse {
                serving: false,
                message: err.message,
            },
        };
        Ok(Response::new(response))
    }

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Reply<pb::ResolveResponse> {
        let request = request.into_inner();
        let reference = Reference::parse(&request.reference)
            .map_err(|e| invalid("resolve", format!("reference: {e}")))?;
        let descriptor = self
            .transport
            .resolve(&reference)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ResolveResponse {
            descriptor: Some(convert::descriptor_to_pb(&descriptor)),
        }))
    }

    type FetchStream = ReplyStream<pb::FetchResponse>;

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Reply<Self::FetchStream> {
        let request = request.into_inner();
        let locator = convert::locator_from_pb(request.locator, "locator")
            .map_err(|e| invalid("fetch", e))?;
        let descriptor = convert::descriptor_from_pb(request.descriptor, "descriptor")
            .map_err(|e| invalid("fetch", e))?;
        let bytes = self
            .transport
            .fetch(&locator, &descriptor, request.offset)
            .await
            .map_err(status_of)?;
        let replies = Chunked::new(bytes).map(|chunk| {
            chunk
                .map(|data| pb::FetchResponse { data })
                .map_err(status_of)
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn stat(&self, request: Request<pb::StatRequest>) -> Reply<pb::StatResponse> {
        let request = request.into_inner();
        let locator =
            convert::locator_from_pb(request.locator, "locator").map_err(|e| invalid("stat", e))?;
        let digest =
            convert::digest_from_pb(&request.digest, "digest").map_err(|e| invalid("stat", e))?;
        let size = self
            .transport
            .stat(&locator, &digest)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::StatResponse {
            present: size.is_some(),
            size: size.unwrap_or(0),
        }))
    }

    async fn mount(&self, request: Request<pb::MountRequest>) -> Reply<pb::MountResponse> {
        let request = request.into_inner();
        let locator = convert::locator_from_pb(request.locator, "locator")
            .map_err(|e| invalid("mount", e))?;
        let blob =
            convert::descriptor_from_pb(request.blob, "blob").map_err(|e| invalid("mount", e))?;
        if request.from.is_empty() {
            return Err(invalid("mount", "from is empty".into()));
        }
        let outcome = self
            .transport
            .mount(&locator, &blob, &request.from)
            .await
            .map_err(status_of)?;
        Ok(Response::new(match outcome {
            crate::transport::MountOutcome::Mounted => pb::MountResponse {
                mounted: true,
                session: None,
            },
            crate::transport::MountOutcome::NotMounted(session) => pb::MountResponse {
                mounted: false,
                session: session.as_ref().map(convert::session_to_pb),
            },
        }))
    }

    type PushBlobStream = ReceiverStream<Result<pb::PushBlobResponse, Status>>;

    async fn push_blob(
        &self,
        request: Request<Streaming<pb::PushBlobRequest>>,
    ) -> Reply<Self::PushBlobStream> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            invalid(
                "push_blob",
                "the call ended before its start message".into(),
            )
        })?;
        let Some(PushIn::Start(start)) = first.message else {
            return Err(invalid(
                "push_blob",
                "the first message of a call must be start".into(),
            ));
        };
        let locator = convert::locator_from_pb(start.locator, "start.locator")
            .map_err(|e| invalid("push_blob", e))?;
        let blob = convert::descriptor_from_pb(start.blob, "start.blob")
            .map_err(|e| invalid("push_blob", e))?;
        let resume = start.resume.map(convert::session_from_pb);
        let (replies, rx) = mpsc::channel(PUSH_REPLY_QUEUE);
        let transport = Arc::clone(&self.transport);
        tokio::spawn(push_blob(
            transport, locator, blob, resume, inbound, replies,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn push_manifest(
        &self,
        request: Request<pb::PushManifestRequest>,
    ) -> Reply<pb::PushManifestResponse> {
        let request = request.into_inner();
        let locator = convert::locator_from_pb(request.locator, "locator")
            .map_err(|e| invalid("push_manifest", e))?;
        if request.reference.is_empty() {
            return Err(invalid("push_manifest", "reference is empty".into()));
        }
        self.transport
            .push_manifest(
                &locator,
                &request.reference,
                &request.media_type,
                request.manifest,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::PushManifestResponse {}))
    }
}

type ReplySender = mpsc::Sender<Result<pb::PushBlobResponse, Status>>;

fn reply(message: PushOut) -> Result<pb::PushBlobResponse, Status> {
    Ok(pb::PushBlobResponse {
        message: Some(message),
    })
}

/// Runs one push call: the transport's `push_blob` with a source reading the
/// call's `data` and a progress reporter, until it returns or the daemon
/// goes away (which drops, so cancels, the push).
async fn push_blob<T: Transport>(
    transport: Arc<T>,
    locator: Locator,
    blob: Descriptor,
    resume: Option<UploadSession>,
    inbound: Streaming<pb::PushBlobRequest>,
    replies: ReplySender,
) {
    let source = CallSource {
        inbound: Mutex::new(Some(inbound)),
        size: blob.size,
        replies: replies.clone(),
    };
    let progress = CallProgress::default();
    let push = transport.push_blob(&locator, &blob, &source, resume, &progress);
    tokio::pin!(push);
    let result = loop {
        tokio::select! {
            biased;
            result = &mut push => break result,
            () = progress.changed.notified() => {
                if progress.flush(&replies).await.is_err() {
                    return;
                }
            }
            () = replies.closed() => return,
        }
    };
    if progress.flush(&replies).await.is_err() {
        return;
    }
    let last = match result {
        Ok(bytes_sent) => reply(PushOut::Done(pb::push_blob_response::Done { bytes_sent })),
        Err(err) => Err(status_of(err)),
    };
    // The daemon may be gone already; nothing is left to tell it then.
    let _ = replies.send(last).await;
}

/// Progress not yet sent to the daemon. [`PushProgress`] is synchronous, so
/// reports are collected here and forwarded by the call's task: consecutive
/// `sent` reports add up, and only the latest session matters.
#[derive(Default)]
struct CallProgress {
    pending: Mutex<Pending>,
    changed: Notify,
}

#[derive(Default)]
struct Pending {
    session: Option<UploadSession>,
    sent: u64,
}

impl CallProgress {
    /// Sends what is pending; `Err` when the daemon went away.
    async fn flush(&self, replies: &ReplySender) -> Result<(), ()> {
        let (session, sent) = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            (pending.session.take(), std::mem::take(&mut pending.sent))
        };
        if let Some(session) = session {
            let message = PushOut::Session(convert::session_to_pb(&session));
            replies.send(reply(message)).await.map_err(|_| ())?;
        }
        if sent > 0 {
            replies
                .send(reply(PushOut::Sent(sent)))
                .await
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

impl PushProgress for CallProgress {
    fn session(&self, session: &UploadSession) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.session = Some(session.clone());
        drop(pending);
        self.changed.notify_one();
    }

    fn sent(&self, bytes: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.sent = pending.sent.saturating_add(bytes);
        drop(pending);
        self.changed.notify_one();
    }
}

/// The bytes of a push call: the first `open` asks the daemon for them from
/// its offset with `ready`; they can be read once.
struct CallSource {
    inbound: Mutex<Option<Streaming<pb::PushBlobRequest>>>,
    size: u64,
    replies: ReplySender,
}

#[async_trait::async_trait]
impl BlobSource for CallSource {
    async fn open(&self, offset: u64) -> Result<ByteStream, TransportError> {
        let inbound = self
            .inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                TransportError::new(
                    ErrorKind::Unavailable,
                    "the push source of a plugin call can be read once; \
                     the daemon retries with the last session",
                )
            })?;
        if offset > self.size {
            return Err(TransportError::new(
                ErrorKind::OutOfRange,
                format!(
                    "cannot read the pushed blob from offset {offset}: it has {} bytes",
                    self.size
                ),
            ));
        }
        let ready = PushOut::Ready(pb::push_blob_response::Ready { offset });
        self.replies.send(reply(ready)).await.map_err(|_| {
            TransportError::new(ErrorKind::Unavailable, "the daemon ended the push call")
        })?;
        Ok(Box::pin(Incoming {
            inbound: Some(inbound),
            remaining: self.size - offset,
        }))
    }
}

/// The `data` messages of a push call, checked to add up to exactly the
/// bytes asked for, so that a daemon that stops early (or a broken
/// connection) never passes for the end of the blob.
struct Incoming {
    inbound: Option<Streaming<pb::PushBlobRequest>>,
    remaining: u64,
}

impl Incoming {
    fn fail(
        &mut self,
        kind: ErrorKind,
        message: String,
    ) -> Poll<Option<Result<Bytes, TransportError>>> {
        self.inbound = None;
        Poll::Ready(Some(Err(TransportError::new(kind, message))))
    }
}

impl Stream for Incoming {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(inbound) = this.inbound.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(Pin::new(inbound).poll_next(cx)) {
                Some(Ok(pb::PushBlobRequest {
                    message: Some(PushIn::Data(data)),
                })) => {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return this.fail(
                            ErrorKind::InvalidArgument,
                            format!(
                                "the daemon sent {} bytes more than the pushed blob has",
                                len - this.remaining
                            ),
                        );
                    }
                    this.remaining -= len;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Some(Ok(_)) => {
                    return this.fail(
                        ErrorKind::InvalidArgument,
                        "the daemon sent a message other than data after start".into(),
                    );
                }
                Some(Err(status)) => {
                    return this.fail(
                        ErrorKind::Unavailable,
                        format!("the daemon's push stream broke: {}", status.message()),
                    );
                }
                None if this.remaining > 0 => {
                    let remaining = this.remaining;
                    return this.fail(
                        ErrorKind::Unavailable,
                        format!(
                            "the daemon's push stream ended {remaining} bytes before the end of the blob"
                        ),
                    );
                }
                None => {
                    this.inbound = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
