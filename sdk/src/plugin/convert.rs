//! Conversions between the SDK's transport types and the messages of
//! `distd.transport.v1`, and the re-chunking of byte streams.
//!
//! Messages that come from the other side of the socket are untrusted: every
//! `*_from_pb` function validates and returns a message that says which field
//! is wrong instead of panicking.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use distd_proto::distd::transport::v1 as pb;
use tokio_stream::Stream;

use crate::digest::Digest;
use crate::transport::{
    ByteStream, Capabilities, Description, Descriptor, Locator, TransportError, UploadSession,
};

/// Largest `data` chunk either side of a plugin call sends; larger chunks
/// from a [`ByteStream`] are split (without copying) before they go out.
pub const CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) fn locator_to_pb(locator: &Locator) -> pb::Locator {
    pb::Locator {
        registry: locator.registry.clone(),
        repository: locator.repository.clone(),
    }
}

/// The locator in field `field` of a request, which must be set and name
/// both a registry and a repository.
pub(crate) fn locator_from_pb(
    locator: Option<pb::Locator>,
    field: &str,
) -> Result<Locator, String> {
    let locator = locator.ok_or_else(|| format!("{field} is missing"))?;
    if locator.registry.is_empty() {
        return Err(format!("{field}.registry is empty"));
    }
    if locator.repository.is_empty() {
        return Err(format!("{field}.repository is empty"));
    }
    Ok(Locator {
        registry: locator.registry,
        repository: locator.repository,
    })
}

pub(crate) fn descriptor_to_pb(descriptor: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.to_string(),
        size: descriptor.size,
    }
}

/// The descriptor in field `field`, which must be set with a valid digest.
pub(crate) fn descriptor_from_pb(
    descriptor: Option<pb::Descriptor>,
    field: &str,
) -> Result<Descriptor, String> {
    let descriptor = descriptor.ok_or_else(|| format!("{field} is missing"))?;
    Ok(Descriptor {
        digest: digest_from_pb(&descriptor.digest, &format!("{field}.digest"))?,
        media_type: descriptor.media_type,
        size: descriptor.size,
    })
}

/// The digest in field `field`.
pub(crate) fn digest_from_pb(digest: &str, field: &str) -> Result<Digest, String> {
    Digest::parse(digest).map_err(|e| format!("{field}: {e}"))
}

pub(crate) fn session_to_pb(session: &UploadSession) -> pb::UploadSession {
    pb::UploadSession {
        location: session.location.clone(),
        offset: session.offset,
    }
}

pub(crate) fn session_from_pb(session: pb::UploadSession) -> UploadSession {
    UploadSession {
        location: session.location,
        offset: session.offset,
    }
}

fn capabilities_to_pb(capabilities: Capabilities) -> pb::Capabilities {
    pb::Capabilities {
        resolve: capabilities.resolve,
        fetch: capabilities.fetch,
        ranged_fetch: capabilities.ranged_fetch,
        push: capabilities.push,
        mount: capabilities.mount,
    }
}

fn capabilities_from_pb(capabilities: pb::Capabilities) -> Capabilities {
    Capabilities {
        resolve: capabilities.resolve,
        fetch: capabilities.fetch,
        ranged_fetch: capabilities.ranged_fetch,
        push: capabilities.push,
        mount: capabilities.mount,
    }
}

pub(crate) fn description_to_pb(description: Description) -> pb::DescribeResponse {
    pb::DescribeResponse {
        name: description.name,
        version: description.version,
        capabilities: Some(capabilities_to_pb(description.capabilities)),
        registries: description.registries,
    }
}

/// What a plugin said about itself; a missing capabilities message means it
/// can do nothing.
pub(crate) fn description_from_pb(response: pb::DescribeResponse) -> Description {
    Description {
        name: response.name,
        version: response.version,
        capabilities: response
            .capabilities
            .map(capabilities_from_pb)
            .unwrap_or_default(),
        registries: response.registries,
    }
}

/// The gRPC status a plugin answers for `err`: its kind's code, its message.
pub(crate) fn status_of(err: TransportError) -> tonic::Status {
    tonic::Status::new(err.kind.to_code(), err.message)
}

/// A [`ByteStream`] re-cut so that no chunk exceeds [`CHUNK_BYTES`], with
/// empty chunks dropped. It ends after the first error.
pub(crate) struct Chunked {
    inner: Option<ByteStream>,
    rest: Bytes,
}

impl Chunked {
    pub(crate) fn new(inner: ByteStream) -> Self {
        Chunked {
            inner: Some(inner),
            rest: Bytes::new(),
        }
    }
}

impl Stream for Chunked {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.rest.is_empty() {
                let n = this.rest.len().min(CHUNK_BYTES);
                return Poll::Ready(Some(Ok(this.rest.split_to(n))));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(inner.as_mut().poll_next(cx)) {
                Some(Ok(bytes)) => this.rest = bytes,
                Some(Err(err)) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    this.inner = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
