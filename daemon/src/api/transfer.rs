//! The `Transfer` service: pulls, streamed as events.

use std::pin::Pin;
use std::sync::Arc;

use distd_proto::distd::v1 as pb;
use distd_sdk::{Descriptor, Locator, Reference};
use pb::transfer_event::Event as Kind;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::signed;
use crate::plugins::Router;
use crate::transfer::inspect::inspect;
use crate::transfer::platform::Platform;
use crate::transfer::{
    Event, Events, PullDefaults, PullOptions, Puller, PushOptions, Pusher, TransferError,
};
use distd_plugin_registry::RegistryTransport;

/// Serves `Transfer` with one puller and pusher, and the router that picks
/// their transports.
pub struct TransferService {
    puller: Puller,
    pusher: Pusher,
    push_defaults: PushOptions,
    /// Pulls, pushes and inspections go through the routed transports…
    router: Router,
    /// …logins are the registry transport's own business.
    registry: Arc<RegistryTransport>,
    defaults: PullDefaults,
}

impl TransferService {
    /// A service routing transfers through `router` with the daemon's
    /// `defaults`; logins go to `registry`.
    pub fn new(
        puller: Puller,
        pusher: Pusher,
        router: Router,
        registry: Arc<RegistryTransport>,
        defaults: PullDefaults,
        push_defaults: PushOptions,
    ) -> Self {
        TransferService {
            puller,
            pusher,
            push_defaults,
            router,
            registry,
            defaults,
        }
    }
}

fn parse_reference(text: &str) -> Result<Reference, Status> {
    Reference::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn parse_platform(text: &str) -> Result<Option<Platform>, Status> {
    match text {
        "" => Ok(None),
        text => Platform::parse(text)
            .map(Some)
            .map_err(Status::invalid_argument),
    }
}

/// A registry host as a reference names it: no scheme, path or spaces.
fn parse_registry(text: &str) -> Result<String, Status> {
    let host = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text)
        .trim_end_matches('/');
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !valid {
        return Err(Status::invalid_argument(format!(
            "{text:?} is not a registry host such as registry.example.com:5000"
        )));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    })
}

fn transport_status(registry: &str, error: distd_sdk::TransportError) -> Status {
    let kind = error.kind;
    let message = TransferError::Transport {
        registry: registry.to_owned(),
        source: error,
    }
    .to_string();
    Status::new(kind.to_code(), message)
}

fn descriptor(d: Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type,
        digest: d.digest.to_string(),
        size: signed(d.size),
        annotations: Default::default(),
    }
}

fn to_api(event: Event) -> pb::TransferEvent {
    let kind = match event {
        Event::Resolved { target, transport } => Kind::Resolved(pb::transfer_event::Resolved {
            target: Some(descriptor(target)),
            transport,
        }),
        Event::BlobStarted {
            digest,
            size,
            transport,
            resume_offset,
        } => Kind::BlobStarted(pb::transfer_event::BlobStarted {
            digest: digest.to_string(),
            size: signed(size),
            transport,
            resume_offset: signed(resume_offset),
        }),
        Event::Progress { digest, bytes } => Kind::Progress(pb::transfer_event::BlobProgress {
            digest: digest.to_string(),
            bytes: signed(bytes),
        }),
        Event::BlobDone {
            digest,
            transport,
            transferred,
        } => Kind::BlobDone(pb::transfer_event::BlobDone {
            digest: digest.to_string(),
            transport,
            transferred: signed(transferred),
        }),
        Event::Mounted { digest, from } => Kind::Mounted(pb::transfer_event::Mounted {
            digest: digest.to_string(),
            from,
        }),
        Event::Skipped { digest, reason } => Kind::Skipped(pb::transfer_event::Skipped {
            digest: digest.to_string(),
            reason: reason.to_owned(),
        }),
        Event::Warning(message) => Kind::Warning(message),
        Event::Done {
            name,
            target,
            bytes_by_transport,
        } => Kind::Done(pb::transfer_event::Done {
            name,
            target: Some(descriptor(target)),
            bytes_by_transport: bytes_by_transport
                .into_iter()
                .map(|(transport, bytes)| (transport, signed(bytes)))
                .collect(),
        }),
    };
    pb::TransferEvent { event: Some(kind) }
}

fn transfer_status(error: TransferError) -> Status {
    let kind = error.kind();
    if kind == distd_sdk::ErrorKind::Internal {
        tracing::error!(error = %error, "transfer failed");
    }
    Status::new(kind.to_code(), error.to_string())
}

type TransferStream = Pin<Box<dyn Stream<Item = Result<pb::TransferEvent, Status>> + Send>>;

/// Runs a transfer on a task of its own, streaming its events to the caller
/// and its error, if any, as the stream's final status. A caller that goes
/// away cancels it.
fn streamed<F, Fut>(span: tracing::Span, what: &'static str, work: F) -> TransferStream
where
    F: FnOnce(Events) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Descriptor, TransferError>> + Send + 'static,
{
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    tokio::spawn(
        async move {
            let forward = out_tx.clone();
            let forwarder = tokio::spawn(async move {
                while let Some(event) = events_rx.recv().await {
                    if forward.send(Ok(to_api(event))).await.is_err() {
                        // The client went away; dropping the receiver cancels the work.
                        return;
                    }
                }
            });
            let result = work(Events(events_tx)).await;
            let _ = forwarder.await;
            match result {
                Ok(target) => tracing::info!(target = %target.digest, "{what} done"),
                Err(error) => {
                    tracing::warn!(error = %error, "{what} failed");
                    let _ = out_tx.send(Err(transfer_status(error))).await;
                }
            }
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(out_rx))
}

#[tonic::async_trait]
impl pb::transfer_server::Transfer for TransferService {
    type PullStream = TransferStream;
    type PushStream = TransferStream;

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let request = request.into_inner();
        let reference = parse_reference(&request.reference)?;
        let platform = parse_platform(&request.platform)?;
        let options = PullOptions {
            platform,
            all_platforms: request.all_platforms,
            ..self.defaults.options()
        };
        let puller = self.puller.clone();
        let router = self.router.clone();
        let span = tracing::info_span!("pull", reference = %reference);
        Ok(Response::new(streamed(
            span,
            "pull",
            move |events| async move {
                let route = router.route(&Locator::of(&reference)).await?;
                puller.pull(route, &reference, &options, events).await
            },
        )))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let request = request.into_inner();
        if request.source.is_empty() {
            return Err(Status::invalid_argument("name the local image to push"));
        }
        let target = match request.target.as_str() {
            "" => request.source.clone(),
            target => target.to_owned(),
        };
        let target = parse_reference(&target)?;
        let options = PushOptions {
            platform: parse_platform(&request.platform)?,
            ..self.push_defaults.clone()
        };
        let pusher = self.pusher.clone();
        let router = self.router.clone();
        let source = request.source;
        let span = tracing::info_span!("push", source = %source, target = %target);
        Ok(Response::new(streamed(
            span,
            "push",
            move |events| async move {
                let route = router.route(&Locator::of(&target)).await?;
                let transport = route.pusher()?.transport;
                pusher
                    .push(transport, &source, &target, &options, events)
                    .await
            },
        )))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let request = request.into_inner();
        let reference = parse_reference(&request.reference)?;
        let platform = parse_platform(&request.platform)?;
        let route = self
            .router
            .route(&Locator::of(&reference))
            .await
            .map_err(transfer_status)?;
        let found = inspect(&route, &reference, platform)
            .instrument(tracing::info_span!("inspect", reference = %reference))
            .await
            .map_err(transfer_status)?;
        let (manifest_descriptor, manifest) = found.manifest;
        Ok(Response::new(pb::InspectResponse {
            name: found.name,
            target: Some(descriptor(found.target)),
            index: found.index.unwrap_or_default().into(),
            manifest_descriptor: Some(descriptor(manifest_descriptor)),
            manifest: manifest.into(),
            config: found.config.into(),
            platforms: found.platforms,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let request = request.into_inner();
        let registry = parse_registry(&request.registry)?;
        if request.username.is_empty() {
            return Err(Status::invalid_argument("a username is required"));
        }
        let stored_in = self
            .registry
            .login(&registry, &request.username, &request.secret)
            .instrument(tracing::info_span!("login", registry = %registry))
            .await
            .map_err(|e| transport_status(&registry, e))?;
        tracing::info!(registry = %registry, user = %request.username, stored_in = %stored_in, "logged in");
        Ok(Response::new(pb::LoginResponse { stored_in }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let registry = parse_registry(&request.into_inner().registry)?;
        let removed_from = self
            .registry
            .logout(&registry)
            .await
            .map_err(|e| transport_status(&registry, e))?;
        tracing::info!(registry = %registry, removed_from = %removed_from, "logged out");
        Ok(Response::new(pb::LogoutResponse { removed_from }))
    }
}
