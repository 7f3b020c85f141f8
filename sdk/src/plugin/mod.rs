//! Transport plugins: processes that move content for distd, spoken to over
//! the `distd.transport.v1` gRPC API on a Unix socket.
//!
//! Both halves live here:
//!
//! - for plugin authors, [`serve`] turns any [`Transport`](crate::Transport) into a server of
//!   that API. The daemon starts `exec` plugins with [`SOCKET_ENV`] set to the
//!   socket they must listen on ([`socket_from_env`]).
//! - for the daemon (and conformance tests), [`RemoteTransport`] implements
//!   [`Transport`](crate::Transport) over a plugin's socket.
//!
//! Errors cross the socket as gRPC statuses whose code is the
//! [`ErrorKind`](crate::ErrorKind) of the [`TransportError`](crate::TransportError)
//! (`NotFound` makes the daemon ask the next transport of a route,
//! `Unavailable` makes it retry and fail over). Requests with a malformed
//! digest, reference or locator are refused with `InvalidArgument` before
//! they reach the plugin's code.
//!
//! # A tiny plugin
//!
//! A read-only plugin that serves one manifest from memory:
//!
//! ```no_run
//! use std::collections::HashMap;
//!
//! use bytes::Bytes;
//! use distd_sdk::plugin::{self, async_trait};
//! use distd_sdk::{
//!     Algorithm, ByteStream, Capabilities, Description, Descriptor, Digest, ErrorKind, Locator,
//!     Reference, Transport, TransportError,
//! };
//!
//! /// Manifests and blobs by digest, manifests' descriptors by tag.
//! struct MyTransport {
//!     blobs: HashMap<Digest, Bytes>,
//!     tags: HashMap<String, Descriptor>,
//! }
//!
//! impl MyTransport {
//!     fn new() -> Self {
//!         let manifest = Bytes::from_static(br#"{"schemaVersion":2}"#);
//!         let descriptor = Descriptor {
//!             media_type: "application/vnd.oci.image.manifest.v1+json".into(),
//!             digest: Digest::of_bytes(Algorithm::Sha256, &manifest),
//!             size: manifest.len() as u64,
//!         };
//!         MyTransport {
//!             blobs: HashMap::from([(descriptor.digest.clone(), manifest)]),
//!             tags: HashMap::from([("1.0".to_owned(), descriptor)]),
//!         }
//!     }
//! }
//!
//! fn not_found(what: impl std::fmt::Display) -> TransportError {
//!     TransportError::new(ErrorKind::NotFound, format!("{what} is not here"))
//! }
//!
//! #[async_trait]
//! impl Transport for MyTransport {
//!     fn describe(&self) -> Description {
//!         Description {
//!             name: "memory".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             capabilities: Capabilities {
//!                 resolve: true,
//!                 fetch: true,
//!                 ranged_fetch: true,
//!                 ..Capabilities::default()
//!             },
//!             registries: vec!["example.com".into()],
//!         }
//!     }
//!
//!     async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
//!         match (reference.digest(), reference.tag()) {
//!             (Some(digest), _) => self
//!                 .tags
//!                 .values()
//!                 .find(|d| &d.digest == digest)
//!                 .cloned()
//!                 .ok_or_else(|| not_found(reference)),
//!             (None, Some(tag)) => self.tags.get(tag).cloned().ok_or_else(|| not_found(reference)),
//!             (None, None) => Err(not_found(reference)),
//!         }
//!     }
//!
//!     async fn fetch(
//!         &self,
//!         _locator: &Locator,
//!         descriptor: &Descriptor,
//!         offset: u64,
//!     ) -> Result<ByteStream, TransportError> {
//!         let bytes = self
//!             .blobs
//!             .get(&descriptor.digest)
//!             .ok_or_else(|| not_found(&descriptor.digest))?;
//!         let start = usize::try_from(offset)
//!             .ok()
//!             .filter(|&start| start <= bytes.len())
//!             .ok_or_else(|| {
//!                 TransportError::new(ErrorKind::OutOfRange, "offset past the end")
//!             })?;
//!         let rest = bytes.slice(start..);
//!         Ok(Box::pin(tokio_stream::once(Ok(rest))))
//!     }
//!
//!     async fn stat(
//!         &self,
//!         _locator: &Locator,
//!         digest: &Digest,
//!     ) -> Result<Option<u64>, TransportError> {
//!         Ok(self.blobs.get(digest).map(|b| b.len() as u64))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let socket = plugin::socket_from_env()
//!         .ok_or("DISTD_PLUGIN_SOCKET is not set: distd starts this plugin")?;
//!     plugin::serve(socket, MyTransport::new()).await?;
//!     Ok(())
//! }
//! ```
//!
//! The daemon side is a [`RemoteTransport`] per configured plugin:
//!
//! ```no_run
//! # async fn f() -> Result<(), distd_sdk::TransportError> {
//! use distd_sdk::Transport;
//! use distd_sdk::plugin::RemoteTransport;
//!
//! let plugin = RemoteTransport::new("memory", "/run/distd/plugins/memory.sock");
//! plugin.health().await?; // learns its capabilities too
//! assert!(plugin.describe().capabilities.fetch);
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;

mod client;
mod convert;
mod file;
mod push;
mod server;
mod service;

#[cfg(test)]
mod tests;

/// The attribute macro [`Transport`](crate::Transport) implementations need (re-exported from
/// the `async-trait` crate, so plugins need not depend on it).
pub use async_trait::async_trait;
pub use client::{CONNECT_TIMEOUT, HEALTH_TIMEOUT, RemoteTransport};
pub use convert::CHUNK_BYTES;
pub use file::stream_file;
pub use server::{PluginError, SHUTDOWN_GRACE, bind, serve, serve_with_shutdown};

/// Environment variable with which the daemon tells an `exec` plugin the
/// path of the socket it must listen on.
pub const SOCKET_ENV: &str = "DISTD_PLUGIN_SOCKET";

/// Largest gRPC message either side accepts or sends: chunks are at most
/// [`CHUNK_BYTES`] and manifests at most 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Mode of the socket [`serve`] creates: the owner and its group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// The socket path in [`SOCKET_ENV`], if set and not empty.
pub fn socket_from_env() -> Option<PathBuf> {
    std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}
