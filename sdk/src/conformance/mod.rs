//! The conformance kit: checks that a [`Transport`] honours the contract the
//! daemon relies on (the error classes of `distd.transport.v1`, offsets,
//! empty tails, absent content).
//!
//! Run it against any `&dyn Transport`: your implementation in-process, or
//! a plugin process through [`RemoteTransport`](crate::plugin::RemoteTransport)
//! to check the gRPC side as well (call its `refresh` first, so that it
//! knows the capabilities the plugin declares). Give it a [`Fixture`], an
//! image the transport holds, and it returns a [`Report`] with one
//! [`Check`] per rule. Every failure says what was expected, what came, and
//! what to fix. A transport is checked against what it declares: checks of
//! capabilities it does not declare are skipped, not failed.
//!
//! The kit keeps the fixture's blob in memory to compare ranged fetches with
//! the full one, so fixtures must be small: it refuses blobs over
//! [`MAX_FIXTURE_BYTES`] (a few KiB is plenty). Every call (a fetch
//! including the draining of its stream) gets [`CALL_TIMEOUT`], so a hanging
//! transport fails a check instead of hanging the suite.
//!
//! A plugin author's test:
//!
//! ```no_run
//! use distd_sdk::conformance::{self, Fixture};
//! use distd_sdk::{Algorithm, Descriptor, Digest, Reference, Transport, media};
//!
//! # struct MyTransport;
//! # fn missing(what: impl std::fmt::Display) -> distd_sdk::TransportError {
//! #     distd_sdk::TransportError::new(distd_sdk::ErrorKind::NotFound, format!("{what}"))
//! # }
//! # #[distd_sdk::plugin::async_trait]
//! # impl Transport for MyTransport {
//! #     fn describe(&self) -> distd_sdk::Description { distd_sdk::Description::default() }
//! #     async fn resolve(&self, r: &Reference) -> Result<Descriptor, distd_sdk::TransportError> { Err(missing(r)) }
//! #     async fn fetch(&self, _: &distd_sdk::Locator, d: &Descriptor, _: u64) -> Result<distd_sdk::ByteStream, distd_sdk::TransportError> { Err(missing(&d.digest)) }
//! #     async fn stat(&self, _: &distd_sdk::Locator, _: &Digest) -> Result<Option<u64>, distd_sdk::TransportError> { Ok(None) }
//! # }
//! # impl MyTransport { fn with_image(_: &str, _: &[u8], _: &[u8]) -> Self { MyTransport } }
//! #[tokio::test]
//! async fn my_transport_is_conformant() {
//!     // An image your backend holds: here a manifest and one layer.
//!     let layer = b"some layer bytes".to_vec();
//!     let manifest = br#"{"schemaVersion":2}"#.to_vec();
//!     let transport = MyTransport::with_image("example.test/app:1.0", &manifest, &layer);
//!
//!     let fixture = Fixture {
//!         reference: Reference::parse("example.test/app:1.0").unwrap(),
//!         manifest: Descriptor {
//!             media_type: media::OCI_MANIFEST.to_owned(),
//!             digest: Digest::of_bytes(Algorithm::Sha256, &manifest),
//!             size: manifest.len() as u64,
//!         },
//!         blob: Descriptor {
//!             media_type: media::OCI_LAYER_TAR.to_owned(),
//!             digest: Digest::of_bytes(Algorithm::Sha256, &layer),
//!             size: layer.len() as u64,
//!         },
//!     };
//!     let report = conformance::run(&transport, &fixture).await;
//!     assert!(report.passed(), "{report}");
//! }
//! # fn main() {}
//! ```
//!
//! To check the plugin's binary and the gRPC mapping too, run the same kit on
//! `RemoteTransport::new("my-plugin", socket)` (after `refresh().await`)
//! while the plugin serves on `socket`.

use std::fmt;
use std::time::Duration;

use crate::reference::Reference;
use crate::transport::{Descriptor, Locator, Transport};

mod kit;
#[cfg(test)]
mod tests;

use kit::Kit;

/// How long each call may take (a fetch: until its stream ends) before its
/// check fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest fixture blob the kit accepts: it keeps the blob in memory.
pub const MAX_FIXTURE_BYTES: u64 = 64 * 1024 * 1024;

/// An image the transport under test holds.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// A tag the transport holds (it is resolved when the transport declares
    /// `resolve`; its repository is the locator of every fetch).
    pub reference: Reference,
    /// What `reference` must resolve to; also fetched by digest.
    pub manifest: Descriptor,
    /// A blob of that image, at least 2 bytes and at most
    /// [`MAX_FIXTURE_BYTES`], available at `Locator::of(&reference)`.
    pub blob: Descriptor,
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transport did what the contract says.
    Passed,
    /// It did not: what was expected, what came, what to fix.
    Failed(String),
    /// Not checked, and why (e.g. the capability is not declared).
    Skipped(&'static str),
}

/// One rule of the contract and how the transport did on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked, e.g. `fetch honours offsets`.
    pub name: &'static str,
    /// How it went.
    pub outcome: Outcome,
}

/// The result of [`run`]: every check, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The transport's name, as it describes itself.
    pub transport: String,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed (skipped checks do not fail a report).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
    }

    /// The report if it passed, else an error that displays it.
    pub fn into_result(self) -> Result<Report, ConformanceError> {
        if self.passed() {
            Ok(self)
        } else {
            Err(ConformanceError { report: self })
        }
    }

    /// The outcome of the check called `name`, if it ran.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.outcome)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            match &check.outcome {
                Outcome::Passed => writeln!(f, "ok   {}", check.name)?,
                Outcome::Failed(why) => writeln!(f, "FAIL {}: {why}", check.name)?,
                Outcome::Skipped(why) => writeln!(f, "skip {}: {why}", check.name)?,
            }
        }
        let count =
            |is: fn(&Outcome) -> bool| self.checks.iter().filter(|c| is(&c.outcome)).count();
        write!(
            f,
            "transport {:?}: {} passed, {} failed, {} skipped",
            self.transport,
            count(|o| matches!(o, Outcome::Passed)),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Skipped(_))),
        )
    }
}

/// A report with at least one failed check.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transport {:?} does not conform to the transport contract:\n{report}", .report.transport)]
pub struct ConformanceError {
    /// The whole report.
    pub report: Report,
}

/// Names of the checks, in the order [`run`] reports them.
pub mod checks {
    /// The description has a name and declares `fetch`.
    pub const DESCRIBE: &str = "describe names the transport and declares fetch";
    /// `health` answers Ok.
    pub const HEALTH: &str = "health is ok";
    /// The fixture's tag resolves to its manifest.
    pub const RESOLVE: &str = "resolve returns the tagged manifest";
    /// A missing tag resolves to NotFound.
    pub const RESOLVE_MISSING: &str = "resolve of a missing tag is NotFound";
    /// Fetching the blob from 0 returns exactly its bytes.
    pub const FETCH_BLOB: &str = "fetch from 0 returns the blob";
    /// Fetching the manifest by digest returns exactly its bytes.
    pub const FETCH_MANIFEST: &str = "fetch returns the manifest by digest";
    /// Fetches from an offset return the tail.
    pub const FETCH_OFFSETS: &str = "fetch honours offsets";
    /// A fetch from the blob's size is an empty stream.
    pub const FETCH_AT_END: &str = "fetch at the end is an empty stream";
    /// A fetch past the blob's size is OutOfRange.
    pub const FETCH_PAST_END: &str = "fetch past the end is OutOfRange";
    /// A fetch of an absent digest is NotFound.
    pub const FETCH_MISSING: &str = "fetch of an unknown digest is NotFound";
    /// `stat` gives a present blob's size.
    pub const STAT: &str = "stat gives the blob's size";
    /// `stat` of an absent digest is None.
    pub const STAT_MISSING: &str = "stat of an unknown digest is None";
}

/// Runs every check against `transport`, each call bounded by
/// [`CALL_TIMEOUT`].
pub async fn run(transport: &dyn Transport, fixture: &Fixture) -> Report {
    run_with_timeout(transport, fixture, CALL_TIMEOUT).await
}

/// [`run`] with another bound on each call.
pub async fn run_with_timeout(
    transport: &dyn Transport,
    fixture: &Fixture,
    timeout: Duration,
) -> Report {
    let kit = Kit {
        transport,
        fixture,
        locator: Locator::of(&fixture.reference),
        timeout,
    };
    // Health first: a transport reached over a socket learns what the
    // plugin can do from it (see `RemoteTransport::health`).
    let health = judged(kit.health().await);
    let description = transport.describe();
    let caps = description.capabilities;
    let mut checks = Vec::new();
    let mut record = |name: &'static str, outcome: Outcome| checks.push(Check { name, outcome });

    record(checks::DESCRIBE, judged(kit.describe(&description)));
    record(checks::HEALTH, health);
    if caps.resolve {
        record(checks::RESOLVE, judged(kit.resolve().await));
        record(checks::RESOLVE_MISSING, judged(kit.resolve_missing().await));
    } else {
        let why = "the transport does not declare resolve";
        record(checks::RESOLVE, Outcome::Skipped(why));
        record(checks::RESOLVE_MISSING, Outcome::Skipped(why));
    }
    let full = kit.fetch_blob().await;
    let offsets = match &full {
        _ if !caps.ranged_fetch => Outcome::Skipped("the transport does not declare ranged_fetch"),
        Ok(blob) => judged(kit.fetch_offsets(blob).await),
        Err(_) => {
            Outcome::Skipped("fetch from 0 failed, so there is nothing to compare the tails with")
        }
    };
    record(checks::FETCH_BLOB, judged(full.map(drop)));
    record(checks::FETCH_MANIFEST, judged(kit.fetch_manifest().await));
    record(checks::FETCH_OFFSETS, offsets);
    record(checks::FETCH_AT_END, judged(kit.fetch_at_end().await));
    record(checks::FETCH_PAST_END, judged(kit.fetch_past_end().await));
    record(checks::FETCH_MISSING, judged(kit.fetch_missing().await));
    record(checks::STAT, judged(kit.stat().await));
    record(checks::STAT_MISSING, judged(kit.stat_missing().await));

    let transport = if description.name.is_empty() {
        "<unnamed>".to_owned()
    } else {
        description.name
    };
    Report { transport, checks }
}

fn judged(result: Result<(), String>) -> Outcome {
    match result {
        Ok(()) => Outcome::Passed,
        Err(why) => Outcome::Failed(why),
    }
}
