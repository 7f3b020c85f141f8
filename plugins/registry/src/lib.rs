//! The `registry` transport: a client of the OCI distribution API.
//!
//! Resolves tags with `HEAD /v2/<repo>/manifests/<ref>`, streams manifests
//! and blobs from any offset (`Range`, with a fallback for servers that
//! ignore it), and authenticates anonymously, with Basic auth or with bearer
//! tokens, taking credentials from [`RegistryOptions`], Docker's
//! `config.json` and podman's `auth.json`. Pushes blobs (in one `PUT`, or in
//! resumable chunks of [`RegistryOptions::push_chunk_size`]) and manifests,
//! and mounts blobs across repositories.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod client;
pub mod credentials;
mod errors;
mod login;
mod manifest_push;
pub mod options;
mod push;
mod range;
mod tls;
mod upload;

use bytes::Bytes;
use distd_sdk::digest::{Algorithm, Digest, Hasher};
use distd_sdk::error::ErrorKind;
use distd_sdk::media::{self, ContentClass, MAX_MANIFEST_BYTES};
use distd_sdk::reference::Reference;
use distd_sdk::transport::{
    BlobSource, ByteStream, Capabilities, Description, Descriptor, Locator, MountOutcome,
    PushProgress, Transport, TransportError, UploadSession,
};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Response, StatusCode};
use tokio_stream::StreamExt as _;

pub use credentials::{Basic, Credentials};
pub use options::{DEFAULT_PUSH_CHUNK_SIZE, RegistryConfig, RegistryOptions};

use client::{Http, read_small};
use errors::{request_error, status_error};

/// The manifest media types asked for, best first.
pub const MANIFEST_ACCEPT: [&str; 4] = [
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
];

/// Docker's schema 1 media types, which distd refuses.
const SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The `Accept` header of manifest requests.
pub fn manifest_accept() -> String {
    MANIFEST_ACCEPT.join(", ")
}

/// The registry transport.
pub struct RegistryTransport {
    http: Http,
    /// Blobs larger than this are pushed in chunks of this size.
    chunk_size: u64,
}

impl RegistryTransport {
    /// A transport with `options`, looking credentials up in the options
    /// and then in Docker's and podman's files.
    pub fn new(options: RegistryOptions) -> Result<RegistryTransport, TransportError> {
        let credentials = Credentials::from_options(&options);
        Self::with_credentials(options, credentials)
    }

    /// A transport with `options` and its own credential lookup.
    pub fn with_credentials(
        options: RegistryOptions,
        credentials: Credentials,
    ) -> Result<RegistryTransport, TransportError> {
        Ok(RegistryTransport {
            chunk_size: options.chunk_size(),
            http: Http::new(options, credentials)?,
        })
    }

    /// Checks `username`/`secret` against `registry` and stores them in the
    /// Docker config.json (or credential helper) this transport reads;
    /// returns where they went. `PermissionDenied` when the registry refuses
    /// them.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        secret: &str,
    ) -> Result<String, TransportError> {
        let basic = Basic {
            username: username.to_owned(),
            password: secret.to_owned(),
        };
        self.http.check_login(registry, &basic).await?;
        let stored = login::store(self.http.credentials(), registry, &basic).await?;
        self.http.forget(registry);
        Ok(stored)
    }

    /// Removes `registry`'s stored credentials; returns where they were.
    pub async fn logout(&self, registry: &str) -> Result<String, TransportError> {
        let removed = login::erase(self.http.credentials(), registry).await?;
        self.http.forget(registry);
        Ok(removed)
    }

    async fn url(
        &self,
        locator: &Locator,
        kind: &str,
        target: &str,
    ) -> Result<String, TransportError> {
        Ok(format!(
            "{}/v2/{}/{kind}/{target}",
            self.http.base_url(&locator.registry).await?,
            locator.repository
        ))
    }

    /// GETs a manifest whose HEAD said too little; returns its bytes and
    /// media type.
    async fn get_manifest(
        &self,
        locator: &Locator,
        target: &str,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), TransportError> {
        let url = self.url(locator, "manifests", target).await?;
        let accept = manifest_accept();
        let response = self
            .http
            .send(&locator.registry, &locator.repository, what, |c| {
                c.get(&url).header(ACCEPT, &accept)
            })
            .await?;
        let response = check(response, &locator.registry, what).await?;
        let content_type = media_type_of(&response);
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| request_error(&e, &locator.registry, what))?;
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(TransportError::new(
                    ErrorKind::FailedPrecondition,
                    format!("{what} is larger than the {MAX_MANIFEST_BYTES} bytes distd accepts"),
                ));
            }
        }
        Ok((body, content_type))
    }
}

/// The response if successful, else the error its status and body say.
async fn check(response: Response, registry: &str, what: &str) -> Result<Response, TransportError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_small(response, registry, what)
        .await
        .unwrap_or_default();
    Err(status_error(status, registry, what, &body))
}

/// The media type of a response, without parameters.
fn media_type_of(response: &Response) -> Option<String> {
    let value = response.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next().unwrap_or(value).trim();
    (!media_type.is_empty()).then(|| media_type.to_owned())
}

fn header_u64(response: &Response, name: reqwest::header::HeaderName) -> Option<u64> {
    response
        .headers()
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn refuse_schema1(media_type: &str, what: &str) -> Result<(), TransportError> {
    if SCHEMA1.contains(&media_type) {
        return Err(TransportError::new(
            ErrorKind::FailedPrecondition,
            format!(
                "{what} is a Docker schema 1 manifest ({media_type}), which distd does not \
                 support; push the image again with a current client to convert it"
            ),
        ));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Transport for RegistryTransport {
    fn describe(&self) -> Description {
        Description {
            name: "registry".to_owned(),
            capabilities: Capabilities {
                resolve: true,
                fetch: true,
                ranged_fetch: true,
                push: true,
                mount: true,
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
            registries: Vec::new(),
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        let locator = Locator::of(reference);
        let pinned = reference.digest();
        let target = match (pinned, reference.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => {
                return Err(TransportError::new(
                    ErrorKind::InvalidArgument,
                    format!("reference {reference} has neither tag nor digest"),
                ));
            }
        };
        let what = format!("manifest {reference}");
        let url = self.url(&locator, "manifests", &target).await?;
        let accept = manifest_accept();
        let response = self
            .http
            .send(&locator.registry, &locator.repository, &what, |c| {
                c.head(&url).header(ACCEPT, &accept)
            })
            .await?;
        let response = check(response, &locator.registry, &what).await?;
        let media_type = media_type_of(&response);
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let size = header_u64(&response, CONTENT_LENGTH);
        if let Some(media_type) = &media_type {
            refuse_schema1(media_type, &what)?;
        }
        let known = media_type
            .as_deref()
            .is_some_and(|m| media::classify(m) != ContentClass::Opaque);
        let descriptor = match (digest, size, media_type) {
            (Some(digest), Some(size), Some(media_type)) if known && size > 0 => Descriptor {
                media_type,
                digest,
                size,
            },
            (_, _, media_type) => {
                tracing::debug!(%reference, "HEAD said too little; fetching the manifest");
                let (body, content_type) = self.get_manifest(&locator, &target, &what).await?;
                let algorithm = pinned.map_or(Algorithm::Sha256, Digest::algorithm);
                let mut hasher = Hasher::new(algorithm);
                hasher.update(&body);
                let declared = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        if v["schemaVersion"] == 1 {
                            return Some(SCHEMA1[0].to_owned());
                        }
                        v["mediaType"].as_str().map(str::to_owned)
                    });
                let media_type = content_type
                    .filter(|m| {
                        media::classify(m) != ContentClass::Opaque || SCHEMA1.contains(&m.as_str())
                    })
                    .or(declared)
                    .or(media_type)
                    .ok_or_else(|| {
                        TransportError::new(
                            ErrorKind::FailedPrecondition,
                            format!("{what} has no media type distd understands"),
                        )
                    })?;
                refuse_schema1(&media_type, &what)?;
                Descriptor {
                    media_type,
                    digest: hasher.finish(),
                    size: body.len() as u64,
                }
            }
        };
        if let Some(pinned) = pinned
            && *pinned != descriptor.digest
        {
            return Err(TransportError::new(
                ErrorKind::DataLoss,
                format!(
                    "registry {} served {} for {reference}, whose digest is pinned",
                    locator.registry, descriptor.digest
                ),
            ));
        }
        tracing::debug!(%reference, digest = %descriptor.digest, media_type = %descriptor.media_type, "resolved");
        Ok(descriptor)
    }

    async fn fetch(
        &self,
        locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let is_manifest = matches!(
            media::classify(&descriptor.media_type),
            ContentClass::Manifest | ContentClass::Index
        );
        let (kind, noun) = if is_manifest {
            ("manifests", "manifest")
        } else {
            ("blobs", "blob")
        };
        let what = format!("{noun} {} in {locator}", descriptor.digest);
        if offset > descriptor.size {
            return Err(TransportError::new(
                ErrorKind::OutOfRange,
                format!(
                    "offset {offset} is past the end of {what} ({} bytes)",
                    descriptor.size
                ),
            ));
        }
        if offset == descriptor.size && offset > 0 {
            return Ok(Box::pin(tokio_stream::empty()));
        }
        let url = self
            .url(locator, kind, &descriptor.digest.to_string())
            .await?;
        let range = range::range_header(offset);
        let response = self
            .http
            .send(&locator.registry, &locator.repository, &what, |c| {
                let mut request = c.get(&url);
                if is_manifest {
                    request = request.header(ACCEPT, &descriptor.media_type);
                }
                if let Some(range) = &range {
                    request = request.header(RANGE, range);
                }
                request
            })
            .await?;
        let response = check(response, &locator.registry, &what).await?;
        let content_range = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status();
        let skip = match status {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                range::bytes_to_skip(status.as_u16(), content_range.as_deref(), offset)
            }
            other => Err(format!("unexpected status {other}")),
        }
        .map_err(|reason| {
            TransportError::new(
                ErrorKind::Unavailable,
                format!(
                    "registry {} answered a ranged request for {what} wrongly: {reason}",
                    locator.registry
                ),
            )
        })?;
        if skip > 0 {
            tracing::debug!(%what, skip, "registry ignored Range; skipping the prefix");
        }
        let registry = locator.registry.clone();
        let body = response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| request_error(&e, &registry, &what)));
        Ok(Box::pin(range::SkipPrefix::new(Box::pin(body), skip)))
    }

    async fn stat(
        &self,
        locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        let what = format!("blob {digest} in {locator}");
        let url = self.url(locator, "blobs", &digest.to_string()).await?;
        let response = self
            .http
            .send(&locator.registry, &locator.repository, &what, |c| {
                c.head(&url)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = check(response, &locator.registry, &what).await?;
        header_u64(&response, CONTENT_LENGTH)
            .map(Some)
            .ok_or_else(|| {
                TransportError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "registry {} did not say the size of {what}",
                        locator.registry
                    ),
                )
            })
    }

    async fn mount(
        &self,
        locator: &Locator,
        blob: &Descriptor,
        from: &str,
    ) -> Result<MountOutcome, TransportError> {
        push::mount(&self.http, locator, blob, from).await
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
            &self.http,
            self.chunk_size,
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
        manifest_push::push_manifest(&self.http, locator, reference, media_type, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_every_manifest_type_and_no_schema1() {
        let accept = manifest_accept();
        for m in [
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            media::DOCKER_MANIFEST_LIST,
            media::DOCKER_MANIFEST,
        ] {
            assert!(accept.contains(m), "{accept} lacks {m}");
        }
        assert!(!accept.contains("distribution.manifest.v1+"));
        assert!(
            refuse_schema1(SCHEMA1[1], "m").is_err_and(|e| e.kind == ErrorKind::FailedPrecondition)
        );
        assert!(refuse_schema1(media::OCI_MANIFEST, "m").is_ok());
    }

    #[tokio::test]
    async fn docker_hub_urls_use_its_api_host_over_https() {
        let t = RegistryTransport::new(RegistryOptions {
            disable_credential_files: true,
            ..RegistryOptions::default()
        })
        .unwrap();
        let hub = Locator {
            registry: "docker.io".into(),
            repository: "library/alpine".into(),
        };
        assert_eq!(
            t.url(&hub, "manifests", "latest").await.unwrap(),
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
        );
    }
}
