//! distd-sdk: what engines and plugin authors link to use distd.
//!
//! - [`client`]: [`Client::connect`] to the daemon's Unix socket and typed
//!   calls on its services.
//! - core types: [`Digest`] (strictly validated, safe as a file name),
//!   [`ErrorKind`] (one class per gRPC code), [`media`] types and manifest
//!   reference parsing.
//! - [`paths`]: where the daemon's socket and store live by default.
//! - [`plugin`]: [`plugin::serve`] a [`Transport`] as a transport plugin, and
//!   [`RemoteTransport`] to use one.
//!
//! The `distctl` binary (feature `cli`) is the client's first user.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod conformance;
pub mod digest;
pub mod error;
pub mod glob;
pub mod media;
pub mod paths;
pub mod plugin;
pub mod reference;
pub mod transport;

pub use client::{Client, ClientError};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use distd_proto as proto;
pub use error::ErrorKind;
pub use plugin::{PluginError, RemoteTransport};
pub use reference::{Reference, ReferenceError};
pub use transport::{
    BlobSource, ByteStream, Capabilities, Description, Descriptor, Locator, MountOutcome,
    PushProgress, Transport, TransportError, UploadSession,
};
