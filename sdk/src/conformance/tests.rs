//! The kit against in-memory transports with known flaws.

use std::collections::HashMap;

use bytes::Bytes;

use super::*;
use crate::digest::{Algorithm, Digest};
use crate::error::ErrorKind;
use crate::media;
use crate::transport::{ByteStream, Capabilities, Description, TransportError};

#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    IgnoresOffsets,
    InternalForMissing,
    Hangs,
}

struct Memory {
    tags: HashMap<String, Descriptor>,
    blobs: HashMap<Digest, Bytes>,
    flaw: Flaw,
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: Digest::of_bytes(Algorithm::Sha256, bytes),
        size: bytes.len() as u64,
    }
}

fn setup(flaw: Flaw) -> (Memory, Fixture) {
    let manifest = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    let layer: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let reference = Reference::parse("example.test/app:1.0").unwrap();
    let fixture = Fixture {
        reference: reference.clone(),
        manifest: descriptor(media::OCI_MANIFEST, &manifest),
        blob: descriptor(media::OCI_LAYER_TAR, &layer),
    };
    let memory = Memory {
        tags: HashMap::from([(reference.to_string(), fixture.manifest.clone())]),
        blobs: HashMap::from([
            (fixture.manifest.digest.clone(), Bytes::from(manifest)),
            (fixture.blob.digest.clone(), Bytes::from(layer)),
        ]),
        flaw,
    };
    (memory, fixture)
}

#[async_trait::async_trait]
impl Transport for Memory {
    fn describe(&self) -> Description {
        Description {
            name: "memory".to_owned(),
            version: "1".to_owned(),
            capabilities: Capabilities {
                resolve: true,
                fetch: true,
                ranged_fetch: true,
                ..Capabilities::default()
            },
            registries: vec!["example.test".to_owned()],
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        self.tags
            .get(&reference.to_string())
            .cloned()
            .ok_or_else(|| TransportError::new(ErrorKind::NotFound, "no such tag"))
    }

    async fn fetch(
        &self,
        _: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        if self.flaw == Flaw::Hangs {
            std::future::pending::<()>().await;
        }
        let Some(bytes) = self.blobs.get(&descriptor.digest) else {
            let kind = match self.flaw {
                Flaw::InternalForMissing => ErrorKind::Internal,
                _ => ErrorKind::NotFound,
            };
            return Err(TransportError::new(kind, "no such blob"));
        };
        let offset = if self.flaw == Flaw::IgnoresOffsets {
            0
        } else {
            offset
        };
        if offset > bytes.len() as u64 {
            return Err(TransportError::new(ErrorKind::OutOfRange, "past end"));
        }
        // Several chunks, to exercise reassembly.
        let chunks: Vec<Result<Bytes, TransportError>> = bytes
            .slice(offset as usize..)
            .chunks(1000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(Box::pin(tokio_stream::iter(chunks)))
    }

    async fn stat(&self, _: &Locator, digest: &Digest) -> Result<Option<u64>, TransportError> {
        Ok(self.blobs.get(digest).map(|b| b.len() as u64))
    }
}

fn failure<'a>(report: &'a Report, name: &str) -> &'a str {
    match report.outcome(name) {
        Some(Outcome::Failed(why)) => why,
        other => panic!("{name} did not fail: {other:?}\n{report}"),
    }
}

#[tokio::test]
async fn a_good_transport_passes_every_check() {
    let (memory, fixture) = setup(Flaw::None);
    let report = run(&memory, &fixture).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.transport, "memory");
    assert_eq!(report.checks.len(), 12);
    assert!(
        report.checks.iter().all(|c| c.outcome == Outcome::Passed),
        "{report}"
    );
    let shown = report.to_string();
    assert!(shown.contains("ok   fetch honours offsets\n"), "{shown}");
    assert!(report.into_result().is_ok());
}

#[tokio::test]
async fn ignoring_offsets_fails_the_offset_check_and_says_so() {
    let (memory, fixture) = setup(Flaw::IgnoresOffsets);
    let report = run(&memory, &fixture).await;
    assert!(!report.passed());
    let why = failure(&report, checks::FETCH_OFFSETS);
    assert!(why.contains("offsets are ignored"), "{why}");
    assert!(
        report
            .to_string()
            .contains("FAIL fetch honours offsets: fetching blob"),
        "{report}"
    );
    // Offset == size then sends the whole blob instead of nothing.
    failure(&report, checks::FETCH_AT_END);
    let err = report.into_result().unwrap_err();
    assert!(err.to_string().contains("\"memory\""), "{err}");
}

#[tokio::test]
async fn internal_instead_of_not_found_fails_the_missing_blob_check() {
    let (memory, fixture) = setup(Flaw::InternalForMissing);
    let report = run(&memory, &fixture).await;
    let why = failure(&report, checks::FETCH_MISSING);
    assert!(
        why.contains("internal error") && why.contains("instead of NotFound"),
        "{why}"
    );
    assert_eq!(report.failures().count(), 1, "{report}");
}

#[tokio::test]
async fn a_hanging_transport_fails_instead_of_hanging() {
    let (memory, fixture) = setup(Flaw::Hangs);
    let report = run_with_timeout(&memory, &fixture, Duration::from_millis(50)).await;
    let why = failure(&report, checks::FETCH_BLOB);
    assert!(why.contains("no complete answer"), "{why}");
    assert_eq!(
        report.outcome(checks::FETCH_OFFSETS),
        Some(&Outcome::Skipped(
            "fetch from 0 failed, so there is nothing to compare the tails with"
        ))
    );
    // Calls that do not hang still pass.
    assert_eq!(report.outcome(checks::STAT), Some(&Outcome::Passed));
}

#[tokio::test]
async fn undeclared_capabilities_are_skipped_and_oversized_fixtures_refused() {
    struct FetchOnly(Memory);
    #[async_trait::async_trait]
    impl Transport for FetchOnly {
        fn describe(&self) -> Description {
            Description {
                name: "fetch-only".to_owned(),
                capabilities: Capabilities {
                    fetch: true,
                    ..Capabilities::default()
                },
                ..Description::default()
            }
        }
        async fn resolve(&self, r: &Reference) -> Result<Descriptor, TransportError> {
            self.0.resolve(r).await
        }
        async fn fetch(
            &self,
            l: &Locator,
            d: &Descriptor,
            o: u64,
        ) -> Result<ByteStream, TransportError> {
            self.0.fetch(l, d, o).await
        }
        async fn stat(&self, l: &Locator, d: &Digest) -> Result<Option<u64>, TransportError> {
            self.0.stat(l, d).await
        }
    }
    let (memory, mut fixture) = setup(Flaw::None);
    let transport = FetchOnly(memory);
    let report = run(&transport, &fixture).await;
    assert!(report.passed(), "{report}");
    for name in [
        checks::RESOLVE,
        checks::RESOLVE_MISSING,
        checks::FETCH_OFFSETS,
    ] {
        assert!(
            matches!(report.outcome(name), Some(Outcome::Skipped(_))),
            "{report}"
        );
    }
    assert!(report.to_string().contains("skip fetch honours offsets: "));

    fixture.blob.size = MAX_FIXTURE_BYTES + 1;
    let report = run(&transport, &fixture).await;
    let why = failure(&report, checks::FETCH_BLOB);
    assert!(why.contains("accepts at most"), "{why}");
}
