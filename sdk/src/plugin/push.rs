//! The client half of the PushBlob call: send `start`, wait for `ready`,
//! stream the source from the offset asked for while forwarding progress,
//! return the bytes the plugin sent at `done`.

use std::future::{Future, pending};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use distd_proto::distd::transport::v1 as pb;
use pb::push_blob_request::Message as PushIn;
use pb::push_blob_response::Message as PushOut;
use pb::transport_client::TransportClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use super::client::Peer;
use super::convert::{self, Chunked};
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::transport::{
    BlobSource, ByteStream, Descriptor, Locator, PushProgress, TransportError, UploadSession,
};

/// `data` messages of a push queued for the plugin.
const PUSH_QUEUE: usize = 4;

/// A spawned task, aborted when dropped.
struct Task<T>(JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Where the bytes of a push stand.
enum Pump {
    /// Not asked for yet; holds the sender of the call's messages.
    Idle(mpsc::Sender<pb::PushBlobRequest>),
    /// Being sent.
    Running(Task<Result<(), TransportError>>),
    /// All sent.
    Finished,
}

/// What happened next in a push.
enum Event {
    Reply(Result<Option<pb::PushBlobResponse>, Status>),
    Pumped(Result<Result<(), TransportError>, tokio::task::JoinError>),
}

/// Sends `data` (exactly `expected` bytes) as `data` messages on `tx`.
async fn pump(
    data: ByteStream,
    tx: mpsc::Sender<pb::PushBlobRequest>,
    expected: u64,
    digest: Digest,
) -> Result<(), TransportError> {
    let mut data = Chunked::new(data);
    let mut sent = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk: Bytes = chunk?;
        sent += chunk.len() as u64;
        if sent > expected {
            return Err(TransportError::new(
                ErrorKind::DataLoss,
                format!("the push source of {digest} has more than the {expected} bytes asked for"),
            ));
        }
        let message = pb::PushBlobRequest {
            message: Some(PushIn::Data(chunk)),
        };
        if tx.send(message).await.is_err() {
            // The call is over; its answer says why.
            return Ok(());
        }
    }
    if sent < expected {
        return Err(TransportError::new(
            ErrorKind::DataLoss,
            format!(
                "the push source of {digest} ended after {sent} of the {expected} bytes asked for"
            ),
        ));
    }
    Ok(())
}

/// Pushes `blob` to the plugin `peer` through `client` (see
/// [`crate::Transport::push_blob`]).
pub(super) async fn push_blob(
    mut client: TransportClient<Channel>,
    peer: &Peer,
    locator: &Locator,
    blob: &Descriptor,
    source: &dyn BlobSource,
    resume: Option<UploadSession>,
    progress: &dyn PushProgress,
) -> Result<u64, TransportError> {
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let start = pb::PushBlobRequest {
        message: Some(PushIn::Start(pb::push_blob_request::Start {
            locator: Some(convert::locator_to_pb(locator)),
            blob: Some(convert::descriptor_to_pb(blob)),
            resume: resume.as_ref().map(convert::session_to_pb),
        })),
    };
    tx.try_send(start)
        .map_err(|_| peer.error(ErrorKind::Internal, "cannot queue the push's start"))?;
    let mut inbound = client
        .push_blob(ReceiverStream::new(rx))
        .await
        .map_err(|s| peer.status(s))?
        .into_inner();
    let mut pump_state = Pump::Idle(tx);
    loop {
        let event = tokio::select! {
            reply = inbound.message() => Event::Reply(reply),
            pumped = async {
                match &mut pump_state {
                    Pump::Running(task) => task.await,
                    _ => pending().await,
                }
            } => Event::Pumped(pumped),
        };
        let reply = match event {
            Event::Pumped(Ok(Ok(()))) => {
                pump_state = Pump::Finished;
                continue;
            }
            Event::Pumped(Ok(Err(err))) => return Err(err),
            Event::Pumped(Err(join)) => {
                return Err(peer.error(
                    ErrorKind::Internal,
                    format_args!("sending the bytes of {} failed: {join}", blob.digest),
                ));
            }
            Event::Reply(Err(status)) => {
                // When the source failed, the plugin's complaint about the
                // bytes stopping short is not the story: the source's error is.
                if let Pump::Running(task) = &mut pump_state
                    && task.0.is_finished()
                    && let Ok(Err(err)) = task.await
                {
                    return Err(err);
                }
                return Err(peer.status(status));
            }
            Event::Reply(Ok(None)) => {
                return Err(peer.error(
                    ErrorKind::Unavailable,
                    format_args!("the push of {} ended before it was done", blob.digest),
                ));
            }
            Event::Reply(Ok(Some(reply))) => reply,
        };
        match reply.message {
            Some(PushOut::Ready(ready)) => {
                let Pump::Idle(tx) = std::mem::replace(&mut pump_state, Pump::Finished) else {
                    return Err(
                        peer.protocol(format_args!("asked twice for the bytes of {}", blob.digest))
                    );
                };
                let Some(expected) = blob.size.checked_sub(ready.offset) else {
                    return Err(peer.error(
                        ErrorKind::OutOfRange,
                        format_args!(
                            "asked for {} from offset {}, past its end ({} bytes)",
                            blob.digest, ready.offset, blob.size
                        ),
                    ));
                };
                let data = source.open(ready.offset).await?;
                let task = tokio::spawn(pump(data, tx, expected, blob.digest.clone()));
                pump_state = Pump::Running(Task(task));
            }
            Some(PushOut::Session(session)) => {
                progress.session(&convert::session_from_pb(session));
            }
            Some(PushOut::Sent(bytes)) => progress.sent(bytes),
            Some(PushOut::Done(done)) => return Ok(done.bytes_sent),
            // A message of a later protocol version.
            None => {}
        }
    }
}
