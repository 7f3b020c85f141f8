//! The `Transfer` service: pulls, streamed as events.

use std::pin::Pin;
use std::sync::Arc;

use distd_proto::distd::v1 as pb;
use distd_sdk::{Descriptor, Reference, Transport};
use pb::pull_event::Event as Kind;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::signed;
use crate::transfer::platform::Platform;
use crate::transfer::{Event, Events, PullDefaults, PullOptions, Puller, TransferError};

/// Serves `Transfer` with one puller and the transport it pulls through.
pub struct TransferService {
    puller: Puller,
    transport: Arc<dyn Transport>,
    defaults: PullDefaults,
}

impl TransferService {
    /// A service pulling through `transport` with the daemon's `defaults`.
    pub fn new(puller: Puller, transport: Arc<dyn Transport>, defaults: PullDefaults) -> Self {
        TransferService {
            puller,
            transport,
            defaults,
        }
    }
}

fn descriptor(d: Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type,
        digest: d.digest.to_string(),
        size: signed(d.size),
        annotations: Default::default(),
    }
}

fn to_api(event: Event) -> pb::PullEvent {
    let kind = match event {
        Event::Resolved { target, transport } => Kind::Resolved(pb::pull_event::Resolved {
            target: Some(descriptor(target)),
            transport,
        }),
        Event::BlobStarted {
            digest,
            size,
            transport,
            resume_offset,
        } => Kind::BlobStarted(pb::pull_event::BlobStarted {
            digest: digest.to_string(),
            size: signed(size),
            transport,
            resume_offset: signed(resume_offset),
        }),
        Event::Progress { digest, bytes } => Kind::Progress(pb::pull_event::BlobProgress {
            digest: digest.to_string(),
            bytes: signed(bytes),
        }),
        Event::BlobDone {
            digest,
            transport,
            transferred,
        } => Kind::BlobDone(pb::pull_event::BlobDone {
            digest: digest.to_string(),
            transport,
            transferred: signed(transferred),
        }),
        Event::Warning(message) => Kind::Warning(message),
        Event::Done { name, target } => Kind::Done(pb::pull_event::Done {
            name,
            target: Some(descriptor(target)),
        }),
    };
    pb::PullEvent { event: Some(kind) }
}

fn transfer_status(error: TransferError) -> Status {
    let kind = error.kind();
    if kind == distd_sdk::ErrorKind::Internal {
        tracing::error!(error = %error, "pull failed");
    }
    Status::new(kind.to_code(), error.to_string())
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::transfer_server::Transfer for TransferService {
    type PullStream = PullStream;

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let request = request.into_inner();
        let reference = Reference::parse(&request.reference)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let platform = match request.platform.as_str() {
            "" => None,
            text => Some(Platform::parse(text).map_err(Status::invalid_argument)?),
        };
        let options = PullOptions {
            platform,
            all_platforms: request.all_platforms,
            ..self.defaults.options()
        };
        let (events_tx, mut events_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        let puller = self.puller.clone();
        let transport = Arc::clone(&self.transport);
        let span = tracing::info_span!("pull", reference = %reference);
        tokio::spawn(
            async move {
                let forward = out_tx.clone();
                let forwarder = tokio::spawn(async move {
                    while let Some(event) = events_rx.recv().await {
                        if forward.send(Ok(to_api(event))).await.is_err() {
                            // The client went away; dropping the receiver cancels the pull.
                            return;
                        }
                    }
                });
                let result = puller
                    .pull(transport, &reference, &options, Events(events_tx))
                    .await;
                let _ = forwarder.await;
                match result {
                    Ok(target) => tracing::info!(target = %target.digest, "pulled"),
                    Err(error) => {
                        tracing::warn!(error = %error, "pull failed");
                        let _ = out_tx.send(Err(transfer_status(error))).await;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
