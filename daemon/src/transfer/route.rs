//! A route: the transports that serve one repository, in the order they are
//! tried. The pull pipeline asks the route's resolvers for tags and its
//! fetchers for blobs, failing over from one to the next mid-blob; the
//! plugin table (`crate::plugins`) builds routes from the configuration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use distd_sdk::{Descriptor, ErrorKind, Locator, Reference, Transport, TransportError};

use super::error::TransferError;

/// How long a transport gets to resolve a reference before the next one of
/// the route is asked (the registry transport's own retries fit in it).
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What one transport did since the daemon started, for `distctl plugins ls`.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Blob bytes it delivered into the store.
    pub bytes: AtomicU64,
    /// Failed calls (lost connections, stalls, errors other than
    /// NOT_FOUND) and blobs that failed verification.
    pub errors: AtomicU64,
    /// Blobs whose bytes from it failed verification.
    pub bad_blobs: AtomicU64,
}

impl TransportStats {
    /// Counts `n` delivered bytes.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failed call.
    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one blob that failed verification (an error too).
    pub fn add_bad_blob(&self) {
        self.bad_blobs.fetch_add(1, Ordering::Relaxed);
        self.add_error();
    }
}

/// One transport of a route.
#[derive(Clone)]
pub struct Hop {
    /// Its name in the configuration and in events.
    pub name: String,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// Its counters.
    pub stats: Arc<TransportStats>,
}

#[cfg(test)]
impl Hop {
    /// A hop over a transport no table counts.
    pub fn uncounted(transport: Arc<dyn Transport>) -> Hop {
        Hop {
            name: transport.describe().name,
            transport,
            stats: Arc::default(),
        }
    }
}

/// The transports that serve one repository, in order.
#[derive(Clone)]
pub struct Route {
    /// The repository.
    pub locator: Locator,
    /// Usable transports, first tried first.
    pub hops: Vec<Hop>,
    /// Transports of the route that were left out, and why (unhealthy,
    /// not registered): reported to the user as warnings.
    pub left_out: Vec<String>,
}

impl Route {
    /// A route of one transport.
    #[cfg(test)]
    pub fn single(locator: Locator, transport: Arc<dyn Transport>) -> Route {
        Route {
            locator,
            hops: vec![Hop::uncounted(transport)],
            left_out: Vec::new(),
        }
    }

    /// The hops that can stream blobs of this repository.
    pub fn fetchers(&self) -> Vec<Hop> {
        self.hops
            .iter()
            .filter(|hop| {
                let description = hop.transport.describe();
                description.capabilities.fetch && description.serves(&self.locator)
            })
            .cloned()
            .collect()
    }

    /// The first hop that accepts pushes for this repository.
    pub fn pusher(&self) -> Result<Hop, TransferError> {
        self.hops
            .iter()
            .find(|hop| {
                let description = hop.transport.describe();
                description.capabilities.push && description.serves(&self.locator)
            })
            .cloned()
            .ok_or_else(|| self.none_can("push"))
    }

    /// Resolves `reference` with the route's authoritative transports (those
    /// that declare `resolve` and serve the registry), in order: one that
    /// does not know the reference, or cannot be reached, hands over to the
    /// next. Returns the descriptor and the transport that resolved it.
    pub async fn resolve(&self, reference: &Reference) -> Result<(Descriptor, Hop), TransferError> {
        let resolvers: Vec<&Hop> = self
            .hops
            .iter()
            .filter(|hop| {
                let description = hop.transport.describe();
                description.capabilities.resolve && description.serves(&self.locator)
            })
            .collect();
        if resolvers.is_empty() {
            return Err(self.none_can("resolve tags"));
        }
        let mut failures = Vec::new();
        let mut last_kind = ErrorKind::NotFound;
        for hop in resolvers {
            let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, hop.transport.resolve(reference))
                .await
                .unwrap_or_else(|_| {
                    Err(TransportError::new(
                        ErrorKind::Unavailable,
                        format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs()),
                    ))
                });
            match resolved {
                Ok(descriptor) => return Ok((descriptor, hop.clone())),
                Err(e) => {
                    if e.kind != ErrorKind::NotFound {
                        hop.stats.add_error();
                    }
                    tracing::info!(transport = %hop.name, error = %e, "resolve failed; trying the next transport");
                    last_kind = e.kind;
                    failures.push((hop.name.clone(), e.message));
                }
            }
        }
        let message = if let [(_, only)] = failures.as_slice() {
            only.clone()
        } else {
            failures
                .iter()
                .map(|(name, message)| format!("{name}: {message}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(TransferError::Transport {
            registry: self.locator.registry.clone(),
            source: TransportError::new(last_kind, message),
        })
    }

    /// The error when no transport of the route can do `what`.
    pub fn none_can(&self, what: &str) -> TransferError {
        let names: Vec<&str> = self.hops.iter().map(|hop| hop.name.as_str()).collect();
        TransferError::NoTransport {
            kind: ErrorKind::FailedPrecondition,
            locator: self.locator.to_string(),
            detail: format!(
                "none of its transports [{}] can {what}{}; add one that can (e.g. \"registry\") to its [[route]]",
                names.join(", "),
                self.left_out_suffix()
            ),
        }
    }

    /// `" (left out: …)"` when transports were left out, else empty.
    pub fn left_out_suffix(&self) -> String {
        if self.left_out.is_empty() {
            String::new()
        } else {
            format!(" (left out: {})", self.left_out.join("; "))
        }
    }
}

/// Bytes each transport moved during one transfer, shared by its blobs.
#[derive(Debug, Clone, Default)]
pub struct BytesByTransport(Arc<Mutex<BTreeMap<String, u64>>>);

impl BytesByTransport {
    /// Counts `n` bytes for `transport`.
    pub fn add(&self, transport: &str, n: u64) {
        if n == 0 {
            return;
        }
        // Plain counters; a panic elsewhere cannot leave them torn.
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *table.entry(transport.to_owned()).or_default() += n;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
