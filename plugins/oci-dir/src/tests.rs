use std::path::Path;

use distd_sdk::conformance::{self, Fixture, Outcome};
use distd_sdk::{Algorithm, Digest};
use serde_json::json;
use tokio_stream::StreamExt as _;

use super::*;

/// Writes `bytes` as a blob of the layout at `dir`; returns its descriptor.
fn put(dir: &Path, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = Digest::of_bytes(Algorithm::Sha256, bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size: bytes.len() as u64,
    }
}

fn json_of(d: &Descriptor) -> serde_json::Value {
    json!({ "mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size })
}

/// An image (config + one layer of `layer_size` bytes) whose manifest is
/// stored in `dir`, distinguished by `seed`.
fn image(dir: &Path, seed: u8, layer_size: usize) -> (Descriptor, Descriptor) {
    let layer: Vec<u8> = (0..layer_size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let layer = put(dir, media::OCI_LAYER_TAR, &layer);
    let config = put(
        dir,
        media::OCI_CONFIG,
        format!("{{\"seed\":{seed}}}").as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": json_of(&config),
        "layers": [json_of(&layer)],
    });
    let manifest = put(
        dir,
        media::OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    (manifest, layer)
}

/// Writes `oci-layout` and an `index.json` naming each manifest.
fn write_index(dir: &Path, entries: &[(&str, &Descriptor)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let manifests: Vec<_> = entries
        .iter()
        .map(|(name, d)| {
            let mut entry = json_of(d);
            entry["annotations"] = json!({ REF_NAME: name });
            entry
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).unwrap()
}

#[tokio::test]
async fn passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    // Larger than a chunk, so offsets cross chunk boundaries.
    let (manifest, layer) = image(dir.path(), 1, CHUNK + 12_345);
    write_index(dir.path(), &[("example.test/app:1.0", &manifest)]);
    let oci = OciDir::open(vec![dir.path().to_owned()]).unwrap();
    let fixture = Fixture {
        reference: reference("example.test/app:1.0"),
        manifest,
        blob: layer,
    };
    let report = conformance::run(&oci, &fixture).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.iter().all(|c| c.outcome == Outcome::Passed),
        "every capability is declared: {report}"
    );
}

#[tokio::test]
async fn passes_the_conformance_kit_over_the_plugin_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, layer) = image(dir.path(), 2, 3 * CHUNK);
    write_index(dir.path(), &[("app:1.0", &manifest)]);
    let oci = OciDir::open(vec![dir.path().to_owned()]).unwrap();
    let socket = dir.path().join("plugin.sock");
    let listener = distd_sdk::plugin::bind(&socket).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(distd_sdk::plugin::serve_with_shutdown(
        listener,
        oci,
        async move {
            let _ = stopped.await;
        },
    ));
    let remote = distd_sdk::RemoteTransport::new("oci-dir", &socket);
    remote.refresh().await.unwrap();
    let fixture = Fixture {
        reference: reference("example.test/app:1.0"),
        manifest,
        blob: layer,
    };
    let report = conformance::run(&remote, &fixture).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.iter().all(|c| c.outcome == Outcome::Passed),
        "{report}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn resolves_full_references_then_repository_tags_then_bare_tags() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (full, _) = image(first.path(), 1, 10);
    let (short, _) = image(first.path(), 2, 10);
    let (bare, _) = image(second.path(), 3, 10);
    let (hub, _) = image(second.path(), 4, 10);
    write_index(
        first.path(),
        &[
            ("1.0", &bare),
            ("example.test/app:1.0", &full),
            ("team/tool:2.0", &short),
        ],
    );
    write_index(second.path(), &[("3.0", &bare), ("alpine:3.20", &hub)]);
    let oci = OciDir::open(vec![first.path().to_owned(), second.path().to_owned()]).unwrap();

    for (text, want) in [
        // The full reference beats the bare tag "1.0" listed before it.
        ("example.test/app:1.0", &full),
        ("other.test/team/tool:2.0", &short),
        ("example.test/anything:3.0", &bare),
        ("example.test/unlisted:1.0", &bare),
        ("alpine:3.20", &hub),
        ("docker.io/library/alpine:3.20", &hub),
    ] {
        let got = oci.resolve(&reference(text)).await.unwrap();
        assert_eq!(&got, want, "{text}");
    }

    // By digest: listed in index.json, or only present as a blob.
    let (unlisted, layer) = image(second.path(), 5, 10);
    for pinned in [&full, &unlisted] {
        let text = format!("example.test/app@{}", pinned.digest);
        assert_eq!(&oci.resolve(&reference(&text)).await.unwrap(), pinned);
    }
    let not_a_manifest = format!("example.test/app@{}", layer.digest);
    let err = oci.resolve(&reference(&not_a_manifest)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);

    let err = oci
        .resolve(&reference("example.test/app:9.9"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    for part in ["example.test/app:9.9", &first.path().display().to_string()] {
        assert!(err.message.contains(part), "{err}");
    }

    // index.json is read on every resolve.
    write_index(second.path(), &[("9.9", &hub)]);
    let got = oci
        .resolve(&reference("example.test/app:9.9"))
        .await
        .unwrap();
    assert_eq!(got, hub);
}

#[tokio::test]
async fn streams_in_chunks_from_any_layout_for_any_locator() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_index(first.path(), &[]);
    let (manifest, layer) = image(second.path(), 7, 3 * CHUNK + 1);
    write_index(second.path(), &[("1", &manifest)]);
    let oci = OciDir::open(vec![first.path().to_owned(), second.path().to_owned()]).unwrap();
    let elsewhere = Locator {
        registry: "unrelated.test".to_owned(),
        repository: "x/y".to_owned(),
    };
    let mut stream = oci.fetch(&elsewhere, &layer, 0).await.unwrap();
    let (mut chunks, mut bytes) = (0, Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= CHUNK);
        bytes.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert!(chunks >= 4, "{chunks} chunks");
    assert_eq!(Digest::of_bytes(Algorithm::Sha256, &bytes), layer.digest);
    let stat = oci.stat(&elsewhere, &layer.digest).await.unwrap();
    assert_eq!(stat, Some(layer.size));

    let past = oci
        .fetch(&elsewhere, &layer, layer.size + 1)
        .await
        .err()
        .unwrap();
    assert_eq!(past.kind, ErrorKind::OutOfRange);
    assert!(past.message.contains("past the end"), "{past}");
}

#[tokio::test]
async fn refuses_directories_that_are_not_layouts_and_reports_lost_ones() {
    let dir = tempfile::tempdir().unwrap();
    let err = OciDir::open(vec![dir.path().to_owned()]).unwrap_err();
    assert!(err.to_string().contains("oci-layout"), "{err}");
    std::fs::write(dir.path().join("oci-layout"), "{}").unwrap();
    let err = OciDir::open(vec![dir.path().to_owned()]).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains(&dir.path().display().to_string()) && shown.contains("index.json"),
        "{shown}"
    );
    assert!(matches!(
        OciDir::open(vec![]),
        Err(OciDirError::NoDirectories)
    ));

    write_index(dir.path(), &[]);
    let oci = OciDir::open(vec![dir.path().to_owned()]).unwrap();
    oci.health().await.unwrap();
    std::fs::remove_file(dir.path().join("index.json")).unwrap();
    let err = oci.health().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("index.json"), "{err}");
}

#[test]
fn digests_that_could_escape_a_layout_cannot_be_requested() {
    // A fetch takes a Digest, and no Digest can hold these.
    for bad in [
        "sha256:../../etc",
        "sha256:../../../../etc/passwd",
        "sha256/../../etc:x",
        "../sha256:00",
    ] {
        assert!(Digest::parse(bad).is_err(), "{bad}");
    }
    assert!(Reference::parse("example.test/app@sha256:../../etc").is_err());
    let digest = Digest::of_bytes(Algorithm::Sha256, b"x");
    let path = blob_path(Path::new("/layout"), &digest);
    assert_eq!(path, Path::new("/layout/blobs/sha256").join(digest.hex()));
}

#[test]
fn describes_itself_with_the_registries_given() {
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path(), &[]);
    let oci = OciDir::open(vec![dir.path().to_owned()])
        .unwrap()
        .with_registries(vec!["example.test".to_owned()]);
    let description = oci.describe();
    assert_eq!(description.name, "oci-dir");
    assert_eq!(description.version, env!("CARGO_PKG_VERSION"));
    let caps = description.capabilities;
    assert!(caps.resolve && caps.fetch && caps.ranged_fetch && !caps.push);
    assert_eq!(description.registries, ["example.test"]);
}
