//! The checks themselves: one method of [`Kit`] per rule of the contract.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_stream::StreamExt as _;

use super::{Fixture, MAX_FIXTURE_BYTES};
use crate::digest::{Digest, Hasher};
use crate::error::ErrorKind;
use crate::reference::Reference;
use crate::transport::{Descriptor, Locator, Transport, TransportError};

/// Why a fetch did not return bytes.
enum FetchFailure {
    /// `fetch` itself failed.
    Call(TransportError),
    /// The stream failed after `after` bytes.
    Stream { after: u64, error: TransportError },
    /// The stream went on past `limit` bytes.
    TooLong { limit: u64 },
    /// No answer (or no end of stream) in time.
    Timeout(Duration),
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchFailure::Call(e) => write!(f, "fetch failed with {}: {}", e.kind, e.message),
            FetchFailure::Stream { after, error } => write!(
                f,
                "the stream failed after {after} bytes with {}: {}",
                error.kind, error.message
            ),
            FetchFailure::TooLong { limit } => {
                write!(f, "the stream sent more than the {limit} bytes expected")
            }
            FetchFailure::Timeout(t) => write!(
                f,
                "no complete answer within {t:?}: the call or its stream hangs \
                 (end the stream after the last byte)"
            ),
        }
    }
}

pub(super) struct Kit<'a> {
    pub(super) transport: &'a dyn Transport,
    pub(super) fixture: &'a Fixture,
    pub(super) locator: Locator,
    pub(super) timeout: Duration,
}

impl Kit<'_> {
    async fn timed<T>(&self, what: &str, call: impl Future<Output = T>) -> Result<T, String> {
        tokio::time::timeout(self.timeout, call).await.map_err(|_| {
            format!(
                "{what} did not answer within {:?}: the transport hangs",
                self.timeout
            )
        })
    }

    /// Fetches `descriptor` from `offset` to the end, refusing more than
    /// `limit` bytes.
    async fn fetch(
        &self,
        descriptor: &Descriptor,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<u8>, FetchFailure> {
        let drain = async {
            let mut stream = self
                .transport
                .fetch(&self.locator, descriptor, offset)
                .await
                .map_err(FetchFailure::Call)?;
            let mut bytes = Vec::new();
            while let Some(item) = stream.next().await {
                let chunk = item.map_err(|error| FetchFailure::Stream {
                    after: bytes.len() as u64,
                    error,
                })?;
                if (bytes.len() + chunk.len()) as u64 > limit {
                    return Err(FetchFailure::TooLong { limit });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        tokio::time::timeout(self.timeout, drain)
            .await
            .unwrap_or(Err(FetchFailure::Timeout(self.timeout)))
    }

    pub(super) fn describe(
        &self,
        description: &crate::transport::Description,
    ) -> Result<(), String> {
        let mut problems = Vec::new();
        if description.name.is_empty() {
            problems.push(
                "the name is empty: give the transport a short name (e.g. \"oci-dir\"); \
                 events and `distctl plugins ls` show it"
                    .to_owned(),
            );
        }
        if !description.capabilities.fetch {
            problems.push(
                "capabilities.fetch is false: a transport must stream blobs; \
                 set fetch = true"
                    .to_owned(),
            );
        }
        if !description.serves(&self.locator) {
            problems.push(format!(
                "its registries {:?} do not cover the fixture's {}: the daemon would never \
                 route it there; add a pattern or pick a fixture it serves",
                description.registries, self.locator
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub(super) async fn health(&self) -> Result<(), String> {
        match self.timed("health", self.transport.health()).await? {
            Ok(()) => Ok(()),
            Err(e) => Err(format!(
                "expected Ok, got {}: {}; health must answer Ok when the backend can serve \
                 the fixture",
                e.kind, e.message
            )),
        }
    }

    pub(super) async fn resolve(&self) -> Result<(), String> {
        let reference = &self.fixture.reference;
        let got = self
            .timed("resolve", self.transport.resolve(reference))
            .await?
            .map_err(|e| {
                format!(
                    "resolving {reference} failed with {}: {}; it must resolve to {}",
                    e.kind, e.message, self.fixture.manifest.digest
                )
            })?;
        let want = &self.fixture.manifest;
        let mut wrong = Vec::new();
        if got.digest != want.digest {
            wrong.push(format!("digest {} instead of {}", got.digest, want.digest));
        }
        if got.size != want.size {
            wrong.push(format!("size {} instead of {}", got.size, want.size));
        }
        if got.media_type != want.media_type {
            wrong.push(format!(
                "media type {:?} instead of {:?}",
                got.media_type, want.media_type
            ));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{reference} resolved to {}; return the descriptor of the manifest the tag names",
                wrong.join(", ")
            ))
        }
    }

    pub(super) async fn resolve_missing(&self) -> Result<(), String> {
        let text = format!(
            "{}:distd-conformance-missing-{}",
            self.fixture.reference.name(),
            &random_digest().hex()[..16]
        );
        let missing = Reference::parse(&text)
            .map_err(|e| format!("the kit could not build a missing tag: {e}"))?;
        match self
            .timed("resolve", self.transport.resolve(&missing))
            .await?
        {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "resolving the missing tag {missing} failed with {} ({}) instead of NotFound; \
                 answer NotFound for references you do not have, so the daemon asks the next \
                 transport",
                e.kind, e.message
            )),
            Ok(d) => Err(format!(
                "the missing tag {missing} resolved to {}; answer NotFound for tags you do not \
                 have",
                d.digest
            )),
        }
    }

    /// Checks a full fetch of `descriptor` and returns its bytes.
    async fn fetch_whole(&self, descriptor: &Descriptor, what: &str) -> Result<Vec<u8>, String> {
        if descriptor.size > MAX_FIXTURE_BYTES {
            return Err(format!(
                "the fixture's {what} is {} bytes; the kit keeps it in memory and accepts at \
                 most {MAX_FIXTURE_BYTES}: pick a smaller one",
                descriptor.size
            ));
        }
        let bytes = self
            .fetch(descriptor, 0, descriptor.size)
            .await
            .map_err(|f| {
                format!(
                    "fetching {what} {} from offset 0: {f}; expected its {} bytes",
                    descriptor.digest, descriptor.size
                )
            })?;
        if bytes.len() as u64 != descriptor.size {
            return Err(format!(
                "fetching {what} {} from offset 0 gave {} bytes, expected {}; stream every \
                 byte to the end",
                descriptor.digest,
                bytes.len(),
                descriptor.size
            ));
        }
        let mut hasher = Hasher::new(descriptor.digest.algorithm());
        hasher.update(&bytes);
        let got = hasher.finish();
        if got != descriptor.digest {
            return Err(format!(
                "fetching {what} {} from offset 0 gave {} bytes that hash to {got}; serve the \
                 content stored under that digest, unaltered",
                descriptor.digest, descriptor.size
            ));
        }
        Ok(bytes)
    }

    pub(super) async fn fetch_blob(&self) -> Result<Vec<u8>, String> {
        self.fetch_whole(&self.fixture.blob, "blob").await
    }

    pub(super) async fn fetch_manifest(&self) -> Result<(), String> {
        self.fetch_whole(&self.fixture.manifest, "manifest")
            .await
            .map(drop)
    }

    pub(super) async fn fetch_offsets(&self, full: &[u8]) -> Result<(), String> {
        let blob = &self.fixture.blob;
        if blob.size < 2 {
            return Err(format!(
                "the fixture's blob is {} bytes; the kit needs at least 2 to fetch from the \
                 middle: pick a larger one",
                blob.size
            ));
        }
        for offset in [blob.size / 2, blob.size - 1] {
            let want = full.get(offset as usize..).unwrap_or_default();
            let got = self.fetch(blob, offset, blob.size).await.map_err(|f| {
                format!(
                    "fetching blob {} from offset {offset}: {f}; expected its last {} bytes",
                    blob.digest,
                    want.len()
                )
            })?;
            if got == want {
                continue;
            }
            if got.len() as u64 == blob.size && got == full {
                return Err(format!(
                    "fetching blob {} from offset {offset} returned all {} bytes from the \
                     start: offsets are ignored; skip the first `offset` bytes (or do not \
                     declare ranged_fetch)",
                    blob.digest, blob.size
                ));
            }
            return Err(format!(
                "fetching blob {} from offset {offset} returned {} bytes that are not the \
                 blob's last {}; stream exactly the bytes from `offset` to the end",
                blob.digest,
                got.len(),
                want.len()
            ));
        }
        Ok(())
    }

    pub(super) async fn fetch_at_end(&self) -> Result<(), String> {
        let blob = &self.fixture.blob;
        match self.fetch(blob, blob.size, 0).await {
            Ok(_) => Ok(()),
            Err(FetchFailure::TooLong { .. }) => Err(format!(
                "fetching blob {} from offset {} (its size) sent bytes; expected an empty \
                 stream",
                blob.digest, blob.size
            )),
            Err(f) => Err(format!(
                "fetching blob {} from offset {} (its size): {f}; expected an empty stream, \
                 not an error (a resumed download that already has every byte asks for it)",
                blob.digest, blob.size
            )),
        }
    }

    pub(super) async fn fetch_past_end(&self) -> Result<(), String> {
        let blob = &self.fixture.blob;
        let offset = blob.size + 1;
        match self.fetch(blob, offset, 0).await {
            Err(FetchFailure::Call(e) | FetchFailure::Stream { after: 0, error: e })
                if e.kind == ErrorKind::OutOfRange =>
            {
                Ok(())
            }
            Err(FetchFailure::Call(e) | FetchFailure::Stream { after: 0, error: e }) => {
                Err(format!(
                    "fetching blob {} from offset {offset}, past its {} bytes, failed with {} \
                     ({}) instead of OutOfRange; answer OutOfRange for an offset \
                     past the end",
                    blob.digest, blob.size, e.kind, e.message
                ))
            }
            Ok(_) | Err(FetchFailure::TooLong { .. }) => Err(format!(
                "fetching blob {} from offset {offset}, past its {} bytes, succeeded; expected \
                 OutOfRange",
                blob.digest, blob.size
            )),
            Err(f) => Err(format!(
                "fetching blob {} from offset {offset}, past its {} bytes: {f}; expected \
                 OutOfRange",
                blob.digest, blob.size
            )),
        }
    }

    pub(super) async fn fetch_missing(&self) -> Result<(), String> {
        let missing = Descriptor {
            digest: random_digest(),
            ..self.fixture.blob.clone()
        };
        let limit = missing.size.min(MAX_FIXTURE_BYTES);
        match self.fetch(&missing, 0, limit).await {
            Err(FetchFailure::Call(e) | FetchFailure::Stream { after: 0, error: e })
                if e.kind == ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(FetchFailure::Call(e) | FetchFailure::Stream { after: 0, error: e }) => {
                Err(format!(
                    "fetching the absent blob {} failed with {} ({}) instead of NotFound; \
                     answer NotFound for content you do not have, so the daemon asks the next \
                     transport instead of failing the pull",
                    missing.digest, e.kind, e.message
                ))
            }
            Ok(bytes) => Err(format!(
                "fetching the absent blob {} returned {} bytes and no error; expected \
                 NotFound",
                missing.digest,
                bytes.len()
            )),
            Err(f) => Err(format!(
                "fetching the absent blob {}: {f}; expected NotFound",
                missing.digest
            )),
        }
    }

    pub(super) async fn stat(&self) -> Result<(), String> {
        let blob = &self.fixture.blob;
        match self
            .timed("stat", self.transport.stat(&self.locator, &blob.digest))
            .await?
        {
            Ok(Some(size)) if size == blob.size => Ok(()),
            Ok(Some(size)) => Err(format!(
                "stat of blob {} gave size {size}, expected {}; report the stored size",
                blob.digest, blob.size
            )),
            Ok(None) => Err(format!(
                "stat of blob {} said absent, but the fixture's blob is there; expected \
                 Some({})",
                blob.digest, blob.size
            )),
            Err(e) => Err(format!(
                "stat of blob {} failed with {}: {}; expected Some({})",
                blob.digest, e.kind, e.message, blob.size
            )),
        }
    }

    pub(super) async fn stat_missing(&self) -> Result<(), String> {
        let digest = random_digest();
        match self
            .timed("stat", self.transport.stat(&self.locator, &digest))
            .await?
        {
            Ok(None) => Ok(()),
            Ok(Some(size)) => Err(format!(
                "stat of the absent blob {digest} gave size {size}; expected None"
            )),
            Err(e) => Err(format!(
                "stat of the absent blob {digest} failed with {} ({}); expected Ok(None): \
                 absence is an answer, not an error",
                e.kind, e.message
            )),
        }
    }
}

/// The sha256 of random bytes: a digest no transport holds.
fn random_digest() -> Digest {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // No OS randomness: the time and pid are unique enough for a name.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
        seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    let mut hasher = Hasher::new(crate::digest::Algorithm::Sha256);
    hasher.update(b"distd-conformance-missing:");
    hasher.update(&seed);
    hasher.finish()
}
