//! `distctl pull` through a real distd from a real registry (Distribution 2.8).

use distd_tests::oci::Image;
use distd_tests::registry::{MultiArch, Registry};
use distd_tests::rpc;
use distd_tests::transfer::{of_kind, parse_events};
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl};

/// A pull stores the manifest, config and every layer with their digests,
/// names the image last, and a second pull moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_a_real_registry_stores_every_blob_then_the_image() {
    let registry = Registry::start();
    let image = Image::random(21, &[300_000, 3 * MIB + 5]);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), "test/app:v1");
    let d = Daemon::start();
    let client = d.client().await;

    let name = format!("{}/test/app:v1", registry.host());
    let pulled = distctl(&d, args!["--json", "pull", &name]);
    let events = parse_events(&pulled.success().stdout);
    assert_eq!(
        events.first().map(|e| &e["event"]),
        Some(&"resolved".into()),
        "{events:?}"
    );
    let done = events.last().expect("events");
    assert_eq!(done["event"], "done");
    assert_eq!(done["name"], name.as_str());
    assert_eq!(done["target"]["digest"], image.manifest.digest.as_str());
    assert_eq!(of_kind(&events, "blob_done").len(), image.blobs().len());

    for blob in image.blobs() {
        let info = rpc::info(&client, &blob.digest)
            .await
            .unwrap_or_else(|s| panic!("{}: {s}", blob.digest));
        assert_eq!(info.size as u64, blob.size());
        assert_eq!(
            rpc::read(&client, &blob.digest).await.expect("read"),
            blob.bytes
        );
    }
    let listed = distctl(&d, args!["--json", "images", "ls"])
        .success()
        .json();
    assert!(listed.to_string().contains(&name), "{listed}");
    rpc::assert_verify_clean(&client).await;
    // The pull's lease ended with it: the image alone keeps the content.
    let usage = rpc::usage(&client).await.expect("Usage");
    assert_eq!(usage.reclaimable_count, 0);
    assert_eq!(usage.referenced_count as usize, image.blobs().len());

    let again = distctl(&d, args!["--json", "pull", &name]);
    let again = parse_events(&again.success().stdout);
    assert!(
        of_kind(&again, "blob_started").is_empty(),
        "a second pull moved bytes: {again:?}"
    );
}

/// From a multi-platform index, `--platform` pulls that platform only and
/// `--all-platforms` pulls all; an absent platform is an error naming the
/// platforms on offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platforms_of_a_multi_arch_image() {
    let registry = Registry::start();
    let multi = MultiArch::random(31, &[100_000]);
    let layout = tempfile::tempdir().unwrap();
    multi.write_layout(layout.path(), "multi");
    registry.push_index_layout(layout.path(), "test/multi:1");
    let d = Daemon::start();
    let client = d.client().await;
    let name = format!("{}/test/multi:1", registry.host());
    let (amd64, arm64) = (&multi.images[0], &multi.images[1]);

    distctl(&d, args!["pull", "--platform", "linux/arm64", &name]).success();
    for blob in arm64.blobs() {
        assert!(
            rpc::info(&client, &blob.digest).await.is_ok(),
            "arm64 {} missing",
            blob.media_type
        );
    }
    assert!(
        rpc::info(&client, &amd64.layers[0].digest).await.is_err(),
        "amd64 layer pulled"
    );

    let line = distctl(&d, args!["pull", "--platform", "linux/s390x", &name])
        .failure()
        .to_owned();
    assert!(
        line.contains("linux/amd64") && line.contains("linux/arm64"),
        "{line}"
    );

    distctl(&d, args!["pull", "--all-platforms", &name]).success();
    for blob in amd64.blobs() {
        assert!(
            rpc::info(&client, &blob.digest).await.is_ok(),
            "amd64 {} missing",
            blob.media_type
        );
    }
    rpc::assert_verify_clean(&client).await;
}

/// Credentials from distd's config open a registry behind htpasswd; wrong
/// ones fail with one line that says to log in, and leave no image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_from_the_config() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let image = Image::random(41, &[50_000]);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), "test/private:v1");
    let name = format!("{}/test/private:v1", registry.host());
    let config = |password: &str| {
        format!(
            "[registries.\"{}\"]\nusername = \"alice\"\npassword = \"{password}\"\n",
            registry.host()
        )
    };

    let wrong = Daemon::start_with(DaemonOpts::with_config(&config("wrong")));
    let line = distctl(&wrong, args!["pull", &name]).failure().to_owned();
    assert!(line.contains("distctl login"), "{line}");
    let images = distctl(&wrong, args!["--json", "images", "ls"])
        .success()
        .json();
    assert!(!images.to_string().contains("private"), "{images}");

    let right = Daemon::start_with(DaemonOpts::with_config(&config("s3cret")));
    distctl(&right, args!["pull", &name]).success();
    let client = right.client().await;
    for blob in image.blobs() {
        assert!(rpc::info(&client, &blob.digest).await.is_ok());
    }
}
