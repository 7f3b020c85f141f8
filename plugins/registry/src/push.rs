//! Pushing blobs: uploads (monolithic or chunked, resumable) and
//! cross-repository mounts, per the OCI distribution spec.
//!
//! A redirect (307/308) of a `PUT` or `PATCH` is not followed: reqwest
//! follows those only for bodies it can replay, and a streamed chunk is not
//! one. Distribution never redirects uploads; a registry that does gets an
//! error saying so.

use std::future::ready;
use std::sync::Arc;

use distd_sdk::error::ErrorKind;
use distd_sdk::transport::{
    BlobSource, Descriptor, Locator, MountOutcome, PushProgress, TransportError, UploadSession,
};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Client, Method, Response, StatusCode};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::auth::Access;
use crate::client::{Http, read_small};
use crate::errors::push_status_error;
use crate::upload::{
    ChunkBody, Resume, SourceFailure, offset_after_chunk, record_failure, resolve_location,
    resume_at, take_failure, with_digest,
};

const OCTET_STREAM: &str = "application/octet-stream";

/// What to do after a failed upload request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Ask the registry where the upload stands and go on from there.
    Status,
    /// Start a new upload (the session is gone or its bytes are suspect).
    Restart,
    /// Give up: retrying would fail the same way.
    None,
}

/// A failed upload request and what may get past it.
struct Failed {
    error: TransportError,
    recovery: Recovery,
}

impl Failed {
    fn fatal(error: TransportError) -> Failed {
        Failed {
            error,
            recovery: Recovery::None,
        }
    }
}

/// One `push_blob` call.
struct Push<'a> {
    http: &'a Http,
    locator: &'a Locator,
    blob: &'a Descriptor,
    chunk_size: u64,
    progress: &'a dyn PushProgress,
    /// `the upload of blob <digest> to <locator>`, for messages.
    what: String,
    /// Clones go into request bodies, which report the bytes they yield.
    sent_tx: UnboundedSender<u64>,
    sent_rx: UnboundedReceiver<u64>,
    /// Bytes that went out so far.
    sent: u64,
}

/// Uploads `blob` from `source` to `locator`, continuing `resume` if the
/// registry still knows it; see [`distd_sdk::transport::Transport::push_blob`].
/// After one failure that a status query or a new upload may get past, it
/// tries once more; a second failure is returned (the daemon retries with
/// the last session reported to `progress`).
pub async fn push_blob(
    http: &Http,
    chunk_size: u64,
    locator: &Locator,
    blob: &Descriptor,
    source: &dyn BlobSource,
    resume: Option<UploadSession>,
    progress: &dyn PushProgress,
) -> Result<u64, TransportError> {
    let (sent_tx, sent_rx) = unbounded_channel();
    let mut push = Push {
        http,
        locator,
        blob,
        chunk_size: chunk_size.max(1),
        progress,
        what: format!("the upload of blob {} to {locator}", blob.digest),
        sent_tx,
        sent_rx,
        sent: 0,
    };
    let resumed = match &resume {
        Some(session) => push.status(session).await?,
        None => None,
    };
    let mut session = match resumed {
        Some(session) => session,
        // A session that is gone may have been completed (by a push whose
        // answer was lost): no need to send the blob again then.
        None if resume.is_some() && push.exists().await? => {
            tracing::debug!(digest = %blob.digest, %locator, "the registry has the blob already");
            return Ok(0);
        }
        None => push.start().await?,
    };
    let mut retried = false;
    loop {
        let failed = match push.upload(&mut session, source).await {
            Ok(()) => {
                tracing::debug!(digest = %blob.digest, %locator, sent = push.sent, "blob pushed");
                return Ok(push.sent);
            }
            Err(failed) => failed,
        };
        if retried || failed.recovery == Recovery::None {
            return Err(failed.error);
        }
        retried = true;
        tracing::warn!(
            digest = %blob.digest, %locator, error = %failed.error, recovery = ?failed.recovery,
            "blob upload failed; trying once more"
        );
        match push.recover(&session, failed.recovery).await {
            Ok(Some(next)) => session = next,
            Ok(None) => return Ok(push.sent),
            Err(e) => {
                tracing::debug!(error = %e, "could not recover the upload");
                return Err(failed.error);
            }
        }
    }
}

impl Push<'_> {
    fn registry(&self) -> &str {
        &self.locator.registry
    }

    fn access(&self) -> Access<'_> {
        Access::Push(&self.locator.repository)
    }

    /// The error for an unsuccessful response.
    async fn status_error(&self, response: Response) -> TransportError {
        let status = response.status();
        let body = read_small(response, self.registry(), &self.what)
            .await
            .unwrap_or_default();
        push_status_error(
            status,
            self.registry(),
            &self.locator.repository,
            &self.what,
            &body,
        )
    }

    /// The upload session a response's `Location` names.
    fn location(&self, response: &Response, request_url: &str) -> Result<String, TransportError> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| "no Location".to_owned())
            .and_then(|l| resolve_location(request_url, l));
        location.map_err(|reason| {
            TransportError::new(
                ErrorKind::Unavailable,
                format!(
                    "registry {} answered {} with {reason}",
                    self.registry(),
                    self.what
                ),
            )
        })
    }

    /// Opens an upload session (`POST /v2/<name>/blobs/uploads/`).
    async fn start(&mut self) -> Result<UploadSession, TransportError> {
        let url = format!(
            "{}/v2/{}/blobs/uploads/",
            self.http.base_url(self.registry()).await?,
            self.locator.repository
        );
        let response = self
            .http
            .send_as(self.registry(), self.access(), &self.what, |c| {
                ready(Ok(c.post(&url).header(CONTENT_LENGTH, 0)))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(response).await);
        }
        let session = UploadSession {
            location: self.location(&response, &url)?,
            offset: 0,
        };
        tracing::debug!(digest = %self.blob.digest, location = %session.location, "upload started");
        self.progress.session(&session);
        Ok(session)
    }

    /// Where `session` stands (`GET <location>`); `None` when the registry
    /// no longer knows it or its state is unusable, so a new upload starts.
    async fn status(
        &mut self,
        session: &UploadSession,
    ) -> Result<Option<UploadSession>, TransportError> {
        let base = self.http.base_url(self.registry()).await?;
        let url = match resolve_location(&base, &session.location) {
            Ok(url) => url,
            Err(reason) => {
                tracing::warn!(digest = %self.blob.digest, %reason, "cannot resume the upload; starting over");
                return Ok(None);
            }
        };
        let response = self
            .http
            .send_as(self.registry(), self.access(), &self.what, |c| {
                ready(Ok(c.get(&url)))
            })
            .await?;
        let status = response.status();
        // 404 is what the spec says of a session the registry does not know
        // (expired, completed, or a Distribution location older than the
        // upload's last chunk); some registries say 400 or 410 instead.
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::GONE
        ) {
            tracing::info!(digest = %self.blob.digest, %status, "the registry no longer knows the upload session; starting over");
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(response).await);
        }
        let range = response.headers().get(RANGE).and_then(|v| v.to_str().ok());
        match resume_at(range, session.offset, self.blob.size) {
            Resume::At(offset) => {
                // Distribution hands out a fresh location with each answer.
                let location = if response.headers().contains_key(LOCATION) {
                    self.location(&response, &url)?
                } else {
                    url.clone()
                };
                let session = UploadSession { location, offset };
                tracing::debug!(digest = %self.blob.digest, offset, "resuming upload");
                self.progress.session(&session);
                Ok(Some(session))
            }
            Resume::Restart(reason) => {
                tracing::warn!(digest = %self.blob.digest, %reason, "not resuming the upload; starting over");
                Ok(None)
            }
        }
    }

    /// After a failure: done if the blob is there after all, else the
    /// session to go on with.
    async fn recover(
        &mut self,
        session: &UploadSession,
        recovery: Recovery,
    ) -> Result<Option<UploadSession>, TransportError> {
        if self.exists().await? {
            tracing::debug!(digest = %self.blob.digest, "the registry has the blob after all");
            return Ok(None);
        }
        let resumed = match recovery {
            Recovery::Status => self.status(session).await?,
            Recovery::Restart | Recovery::None => None,
        };
        match resumed {
            Some(session) => Ok(Some(session)),
            None => self.start().await.map(Some),
        }
    }

    /// Whether the registry has the blob, with its size.
    async fn exists(&self) -> Result<bool, TransportError> {
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.http.base_url(self.registry()).await?,
            self.locator.repository,
            self.blob.digest
        );
        let response = self
            .http
            .send_as(self.registry(), self.access(), &self.what, |c| {
                ready(Ok(c.head(&url)))
            })
            .await?;
        if !response.status().is_success() {
            return Ok(false);
        }
        let size = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok(size == Some(self.blob.size))
    }

    /// Sends the rest of the blob from `session.offset` and completes the
    /// upload, updating `session` as chunks are acknowledged.
    async fn upload(
        &mut self,
        session: &mut UploadSession,
        source: &dyn BlobSource,
    ) -> Result<(), Failed> {
        let size = self.blob.size;
        if session.offset == 0 && size <= self.chunk_size {
            let url = with_digest(&session.location, &self.blob.digest)
                .map_err(|r| Failed::fatal(TransportError::new(ErrorKind::Unavailable, r)))?;
            let response = self
                .request(Method::PUT, &url, 0, size, false, source)
                .await?;
            return self.completed(response).await;
        }
        while session.offset < size {
            let start = session.offset;
            let len = (size - start).min(self.chunk_size);
            let response = self
                .request(Method::PATCH, &session.location, start, len, true, source)
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.failure(response, false).await);
            }
            let location = self
                .location(&response, &session.location)
                .map_err(|error| Failed {
                    error,
                    recovery: Recovery::Restart,
                })?;
            let range = response.headers().get(RANGE).and_then(|v| v.to_str().ok());
            let offset = offset_after_chunk(range, start + len).map_err(|reason| Failed {
                error: TransportError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "registry {} answered a chunk of {} wrongly: {reason}",
                        self.registry(),
                        self.what
                    ),
                ),
                recovery: Recovery::Restart,
            })?;
            if offset < start + len {
                tracing::warn!(digest = %self.blob.digest, offset, expected = start + len, "the registry kept part of a chunk");
            }
            *session = UploadSession { location, offset };
            self.progress.session(session);
        }
        let url = with_digest(&session.location, &self.blob.digest)
            .map_err(|r| Failed::fatal(TransportError::new(ErrorKind::Unavailable, r)))?;
        let response = self
            .request(Method::PUT, &url, size, 0, false, source)
            .await?;
        self.completed(response).await
    }

    /// Checks the answer to the `PUT` that completes the upload.
    async fn completed(&self, response: Response) -> Result<(), Failed> {
        if !response.status().is_success() {
            return Err(self.failure(response, true).await);
        }
        let stored = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned());
        match stored {
            Some(stored) if stored != self.blob.digest.to_string() => {
                Err(Failed::fatal(TransportError::new(
                    ErrorKind::DataLoss,
                    format!(
                        "registry {} stored {stored} for {}; the bytes were changed on the way",
                        self.registry(),
                        self.what
                    ),
                )))
            }
            _ => Ok(()),
        }
    }

    /// The failure an unsuccessful `PATCH` or (`closing`) `PUT` is.
    async fn failure(&self, response: Response, closing: bool) -> Failed {
        let status = response.status();
        if matches!(
            status,
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        ) {
            let to = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("elsewhere");
            return Failed::fatal(TransportError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "registry {} redirected {} to {to}; distd does not follow redirects of \
                     streamed uploads",
                    self.registry(),
                    self.what
                ),
            ));
        }
        let recovery = match status {
            // The session is gone (Distribution: expired, or a location
            // older than the upload's state), or out of step with us.
            StatusCode::NOT_FOUND | StatusCode::RANGE_NOT_SATISFIABLE => Recovery::Restart,
            // DIGEST_INVALID or SIZE_INVALID: Distribution drops the upload.
            StatusCode::BAD_REQUEST if closing => Recovery::Restart,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Recovery::Status,
            s if s.is_server_error() => Recovery::Status,
            _ => Recovery::None,
        };
        Failed {
            error: self.status_error(response).await,
            recovery,
        }
    }

    /// Sends a `PATCH` or `PUT` to `url` whose body is `len` bytes of the
    /// blob from `start`, streamed from `source`; `chunk` adds the
    /// `Content-Range` of a `PATCH`. Reports bytes to the progress as they
    /// go. A failure to connect or of the body is a [`Failed`].
    async fn request(
        &mut self,
        method: Method,
        url: &str,
        start: u64,
        len: u64,
        chunk: bool,
        source: &dyn BlobSource,
    ) -> Result<Response, Failed> {
        let failure = SourceFailure::default();
        let (failure_ref, tx) = (&failure, &self.sent_tx);
        let build = move |c: Client| {
            let method = method.clone();
            async move {
                let mut request = c
                    .request(method, url)
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_LENGTH, len);
                if chunk {
                    request =
                        request.header(CONTENT_RANGE, crate::upload::content_range(start, len));
                }
                if len == 0 {
                    return Ok(request);
                }
                let stream = match source.open(start).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        record_failure(failure_ref, e.clone());
                        return Err(e);
                    }
                };
                let body = ChunkBody::new(stream, len, tx.clone(), Arc::clone(failure_ref));
                Ok(request.body(reqwest::Body::wrap_stream(body)))
            }
        };
        let send = self.http.send_as(
            &self.locator.registry,
            Access::Push(&self.locator.repository),
            &self.what,
            build,
        );
        let result = metered(&mut self.sent_rx, &mut self.sent, self.progress, send).await;
        if let Some(error) = take_failure(&failure) {
            return Err(Failed::fatal(error));
        }
        result.map_err(|error| Failed {
            error,
            recovery: Recovery::Status,
        })
    }
}

/// Runs `fut`, passing the byte counts request bodies report on `rx` to
/// `progress` (and adding them to `total`) as they come.
async fn metered<T>(
    rx: &mut UnboundedReceiver<u64>,
    total: &mut u64,
    progress: &dyn PushProgress,
    fut: impl Future<Output = T>,
) -> T {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => {
                while let Ok(n) = rx.try_recv() {
                    *total += n;
                    progress.sent(n);
                }
                return out;
            }
            // The push holds a sender, so this never ends while it waits.
            Some(n) = rx.recv() => {
                *total += n;
                progress.sent(n);
            }
        }
    }
}

/// Asks the registry to mount `blob` from repository `from` into
/// `locator`'s (`POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<from>`).
/// A registry that will not (or a token that may not read `from`) leaves
/// it `NotMounted`, with the upload session the registry opened if any.
pub async fn mount(
    http: &Http,
    locator: &Locator,
    blob: &Descriptor,
    from: &str,
) -> Result<MountOutcome, TransportError> {
    let registry = locator.registry.as_str();
    let what = format!(
        "the mount of blob {} from {from} into {locator}",
        blob.digest
    );
    let base = http.base_url(registry).await?;
    let url = format!("{base}/v2/{}/blobs/uploads/", locator.repository);
    let access = Access::Mount {
        repository: &locator.repository,
        from,
    };
    let digest = blob.digest.to_string();
    let response = http
        .send_as(registry, access, &what, |c| {
            ready(Ok(c
                .post(&url)
                .query(&[("mount", digest.as_str()), ("from", from)])
                .header(CONTENT_LENGTH, 0)))
        })
        .await?;
    match response.status() {
        StatusCode::CREATED => {
            tracing::debug!(digest = %blob.digest, %locator, from, "blob mounted");
            Ok(MountOutcome::Mounted)
        }
        StatusCode::ACCEPTED => {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| resolve_location(&url, l).ok());
            tracing::debug!(digest = %blob.digest, %locator, from, "blob not mounted");
            Ok(MountOutcome::NotMounted(location.map(|location| {
                UploadSession {
                    location,
                    offset: 0,
                }
            })))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            // Most likely no right to read `from`; pushing will say if it
            // is the destination that is closed.
            tracing::debug!(digest = %blob.digest, %locator, from, status = %response.status(), "mount refused");
            Ok(MountOutcome::NotMounted(None))
        }
        status => {
            let body = read_small(response, registry, &what)
                .await
                .unwrap_or_default();
            Err(push_status_error(
                status,
                registry,
                &locator.repository,
                &what,
                &body,
            ))
        }
    }
}
