//! The registry transport against a real registry (Distribution 2.8):
//! resolve, fetch (whole and ranged), stat, errors, Basic auth and indexes.

use distd_plugin_registry::{RegistryConfig, RegistryOptions, RegistryTransport};
use distd_sdk::digest::{Algorithm, Digest, Hasher};
use distd_sdk::error::ErrorKind;
use distd_sdk::media;
use distd_sdk::reference::Reference;
use distd_sdk::transport::{Descriptor, Locator, Transport};
use distd_tests::MIB;
use distd_tests::oci::{Blob, Image};
use distd_tests::registry::{MultiArch, Registry};
use tokio_stream::StreamExt as _;

/// Options that read no credential files of the machine running the tests.
fn hermetic() -> RegistryOptions {
    RegistryOptions {
        disable_credential_files: true,
        ..RegistryOptions::default()
    }
}

fn transport(options: RegistryOptions) -> RegistryTransport {
    RegistryTransport::new(options).expect("build the registry transport")
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("a valid reference")
}

fn descriptor(blob: &Blob) -> Descriptor {
    Descriptor {
        media_type: blob.media_type.clone(),
        digest: Digest::parse(&blob.digest).expect("a valid digest"),
        size: blob.size(),
    }
}

/// Every byte `fetch` streams for `blob` from `offset`.
async fn fetch_all(t: &RegistryTransport, locator: &Locator, blob: &Blob, offset: u64) -> Vec<u8> {
    let mut stream = t
        .fetch(locator, &descriptor(blob), offset)
        .await
        .unwrap_or_else(|e| panic!("fetch {} from {offset}: {e}", blob.digest));
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("a body chunk"));
    }
    out
}

fn sha256(bytes: &[u8]) -> String {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(bytes);
    h.finish().to_string()
}

#[tokio::test]
async fn resolve_fetch_and_stat_against_a_real_registry() {
    let registry = Registry::start();
    let image = Image::random(11, &[200_000, 2 * MIB + 17]);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), "test/app:v1");
    let t = transport(hermetic());

    let r = reference(&format!("{}/test/app:v1", registry.host()));
    let resolved = t.resolve(&r).await.expect("resolve a pushed tag");
    assert_eq!(resolved, descriptor(&image.manifest));

    // Pinned by digest: resolves to itself.
    let pinned = reference(&format!(
        "{}/test/app@{}",
        registry.host(),
        image.manifest.digest
    ));
    assert_eq!(
        t.resolve(&pinned).await.expect("resolve by digest"),
        resolved
    );

    let locator = Locator::of(&r);
    for blob in image.blobs() {
        let bytes = fetch_all(&t, &locator, blob, 0).await;
        assert_eq!(
            sha256(&bytes),
            blob.digest,
            "fetched {} intact",
            blob.media_type
        );
        assert_eq!(bytes.len() as u64, blob.size());
    }

    // Ranged fetch from the middle of the big layer returns exactly the tail.
    let big = &image.layers[1];
    let offset = big.size() / 2 + 3;
    let tail = fetch_all(&t, &locator, big, offset).await;
    assert_eq!(tail, big.bytes[offset as usize..]);
    // ... and of a manifest, through /manifests/.
    let tail = fetch_all(&t, &locator, &image.manifest, 10).await;
    assert_eq!(tail, image.manifest.bytes[10..]);
    // At the very end: nothing.
    assert!(fetch_all(&t, &locator, big, big.size()).await.is_empty());
    let past = t.fetch(&locator, &descriptor(big), big.size() + 1).await;
    assert_eq!(past.err().map(|e| e.kind), Some(ErrorKind::OutOfRange));

    let digest = Digest::parse(&big.digest).unwrap();
    assert_eq!(t.stat(&locator, &digest).await.unwrap(), Some(big.size()));
    let absent = Digest::of_bytes(Algorithm::Sha256, b"not pushed");
    assert_eq!(t.stat(&locator, &absent).await.unwrap(), None);
    let absent_blob = Blob::new(media::OCI_LAYER_TAR, b"not pushed".to_vec());
    let err = t
        .fetch(&locator, &descriptor(&absent_blob), 0)
        .await
        .err()
        .expect("absent blob");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn missing_references_are_not_found() {
    let registry = Registry::start();
    let image = Image::random(12, &[1000]);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), "test/app:v1");
    let t = transport(hermetic());
    for missing in [
        format!("{}/test/app:nope", registry.host()),
        format!("{}/test/other:v1", registry.host()),
    ] {
        let err = t
            .resolve(&reference(&missing))
            .await
            .expect_err("a missing tag");
        assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
        assert!(
            err.message.contains(&missing),
            "the message names {missing}: {err}"
        );
    }
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let registry = Registry::start();
    let host = registry.host();
    drop(registry);
    let t = transport(hermetic());
    let err = t
        .resolve(&reference(&format!("{host}/test/app:v1")))
        .await
        .expect_err("a stopped registry");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains(&host), "{err}");
}

#[tokio::test]
async fn basic_auth_from_options_and_docker_config() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let image = Image::random(13, &[5000, 70_000]);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), "private/app:v1");
    let r = reference(&format!("{}/private/app:v1", registry.host()));
    let locator = Locator::of(&r);

    let with = |user: &str, password: &str| {
        let mut options = hermetic();
        options.registries.insert(
            registry.host(),
            RegistryConfig {
                username: Some(user.into()),
                password: Some(password.into()),
                ..RegistryConfig::default()
            },
        );
        transport(options)
    };

    // Explicit credentials.
    let t = with("alice", "s3cret");
    assert_eq!(
        t.resolve(&r).await.expect("resolve with credentials"),
        descriptor(&image.manifest)
    );
    let layer = &image.layers[1];
    assert_eq!(
        fetch_all(&t, &locator, layer, 100).await,
        layer.bytes[100..]
    );

    // A config.json in a Docker config directory ($DOCKER_CONFIG).
    let docker = tempfile::tempdir().unwrap();
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#, // alice:s3cret
            registry.host()
        ),
    )
    .unwrap();
    let t = transport(RegistryOptions {
        docker_config_dir: Some(docker.path().to_owned()),
        podman_auth_file: Some(docker.path().join("none.json")),
        ..RegistryOptions::default()
    });
    assert_eq!(
        t.resolve(&r).await.expect("resolve with config.json"),
        descriptor(&image.manifest)
    );
    let digest = Digest::parse(&layer.digest).unwrap();
    assert_eq!(t.stat(&locator, &digest).await.unwrap(), Some(layer.size()));

    // Wrong and missing credentials.
    for t in [with("alice", "wrong"), transport(hermetic())] {
        let err = t.resolve(&r).await.expect_err("refused");
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
        assert!(err.message.contains("distctl login"), "{err}");
        let err = t.stat(&locator, &digest).await.expect_err("refused");
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    }
}

#[tokio::test]
async fn an_index_resolves_to_the_index() {
    let registry = Registry::start();
    let multi = MultiArch::random(20, &[3000, 40_000]);
    let layout = tempfile::tempdir().unwrap();
    multi.write_layout(layout.path(), "multi");
    registry.push_index_layout(layout.path(), "test/multi:multi");
    let t = transport(hermetic());
    let r = reference(&format!("{}/test/multi:multi", registry.host()));
    let resolved = t.resolve(&r).await.expect("resolve an index");
    assert_eq!(resolved.media_type, media::OCI_INDEX);
    assert_eq!(resolved, descriptor(&multi.index));
    let locator = Locator::of(&r);
    assert_eq!(
        fetch_all(&t, &locator, &multi.index, 0).await,
        multi.index.bytes
    );
    for image in &multi.images {
        assert_eq!(
            fetch_all(&t, &locator, &image.manifest, 0).await,
            image.manifest.bytes
        );
        let layer = &image.layers[0];
        assert_eq!(
            sha256(&fetch_all(&t, &locator, layer, 0).await),
            layer.digest
        );
    }
}
