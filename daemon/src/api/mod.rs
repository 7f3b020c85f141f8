//! The gRPC services on the Unix socket. Each handler validates and converts
//! its request, calls the store, and maps the error through [`status`] —
//! the one place where error classes become gRPC codes.

mod content;
mod convert;
mod images;
mod leases;
mod plugins;
mod status;
mod store;
mod transfer;

use std::future::Future;
use std::sync::Arc;

use distd_proto::distd::v1 as pb;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::store::Store;
use crate::transfer::Puller;

pub use status::status;

/// Largest gRPC message accepted: a 1 MiB chunk plus headroom.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// HTTP/2 flow-control window per stream (the connection gets twice this).
pub const FLOW_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Serves every service on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight calls.
pub async fn serve(
    store: Store,
    registry: Arc<distd_plugin_registry::RegistryTransport>,
    router: crate::plugins::Router,
    pulls: crate::transfer::PullDefaults,
    pushes: crate::transfer::PushOptions,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let content =
        pb::content_server::ContentServer::new(content::ContentService::new(store.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        // HTTP/2's 64 KiB default windows stall a local stream of 1 MiB
        // chunks on window updates; the socket is local, so open them wide.
        .initial_stream_window_size(Some(FLOW_WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * FLOW_WINDOW_BYTES))
        .add_service(content)
        .add_service(pb::images_server::ImagesServer::new(
            images::ImagesService::new(store.clone()),
        ))
        .add_service(pb::leases_server::LeasesServer::new(
            leases::LeasesService::new(store.clone()),
        ))
        .add_service(pb::store_server::StoreServer::new(
            store::StoreService::new(store.clone()),
        ))
        .add_service(pb::system_server::SystemServer::new(store::SystemService))
        .add_service(pb::transfer_server::TransferServer::new(
            transfer::TransferService::new(
                Puller::new(store.clone(), pulls.lease_ttl),
                crate::transfer::Pusher::new(store.clone()),
                router.clone(),
                registry,
                pulls,
                pushes,
            ),
        ))
        .add_service(pb::plugins_server::PluginsServer::new(
            plugins::PluginsService::new(router.plugins().clone()),
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}
