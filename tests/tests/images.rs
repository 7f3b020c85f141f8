//! Images: import and export of OCI layouts and docker archives through
//! distctl, and collection of a removed image's content.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use distd_tests::data::sha256_file;
use distd_tests::oci::{Image, layer};
use distd_tests::rpc::{self, expect_code};
use distd_tests::{Daemon, MIB, args, distctl, json_find};
use tonic::Code;

/// `distctl images ls --json` shows `name` pointing at `digest`.
fn assert_listed(d: &Daemon, name: &str, digest: &str) {
    let doc = distctl(d, args!["--json", "images", "ls"]).success().json();
    let entry = json_find(&doc, &|v| v["name"] == name)
        .unwrap_or_else(|| panic!("images ls does not show {name}: {doc}"));
    assert!(
        json_find(entry, &|v| v["digest"] == digest).is_some(),
        "images ls shows {name} with another target than {digest}: {entry}"
    );
}

/// The digests of the blobs of an OCI layout, after checking each file
/// hashes to its name.
fn layout_blobs(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(dir.join("blobs").join("sha256")).expect("blobs/sha256 exists") {
        let path = entry.unwrap().path();
        let digest = format!("sha256:{}", path.file_name().unwrap().to_string_lossy());
        assert_eq!(
            sha256_file(&path),
            digest,
            "exported blob {} is corrupt",
            path.display()
        );
        out.insert(digest);
    }
    out
}

/// Import an OCI layout, see it listed, export it as an OCI layout and as a
/// docker archive with every digest preserved, and import the archive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_export_round_trips_preserve_every_digest() {
    let d = Daemon::start();
    let client = d.client().await;
    let image = Image::random(1, &[MIB + 300, 2 * MIB, 4000]);
    let layout = d.work().join("in");
    image.write_layout(&layout, "1.0");

    let name = "registry.example.com/app:1.0";
    distctl(&d, args!["import", &layout, "--name", name]).success();
    assert_listed(&d, name, &image.manifest.digest);
    let record = rpc::image(&client, name).await.expect("Images.Get");
    let target = record.target.expect("an image has a target");
    assert_eq!(target.digest, image.manifest.digest);
    assert_eq!(target.size as u64, image.manifest.size());
    for blob in image.blobs() {
        let info = rpc::info(&client, &blob.digest)
            .await
            .unwrap_or_else(|e| panic!("imported blob {} missing: {e:?}", blob.digest));
        assert_eq!(info.size as u64, blob.size());
    }

    let oci = d.work().join("out-oci");
    distctl(&d, args!["export", name, &oci, "--format", "oci"]).success();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(oci.join("index.json")).expect("index.json exported"))
            .expect("index.json is JSON");
    assert_eq!(
        index["manifests"][0]["digest"],
        image.manifest.digest.as_str(),
        "exported index.json targets the original manifest: {index}"
    );
    assert!(oci.join("oci-layout").is_file(), "oci-layout exported");
    let expected: BTreeSet<String> = image.digests().into_iter().collect();
    assert_eq!(
        layout_blobs(&oci),
        expected,
        "exported blobs are the originals"
    );

    let archive = d.work().join("out.tar");
    distctl(
        &d,
        args!["export", name, &archive, "--format", "docker-archive"],
    )
    .success();
    let mut entries = BTreeSet::new();
    let mut tar = tar::Archive::new(fs::File::open(&archive).expect("archive written"));
    for entry in tar.entries().expect("a tar archive") {
        entries.insert(
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert!(
        entries.contains("manifest.json"),
        "a docker archive has manifest.json: {entries:?}"
    );

    let again = "registry.example.com/app:again";
    distctl(&d, args!["import", &archive, "--name", again]).success();
    let record = rpc::image(&client, again)
        .await
        .expect("Images.Get of the re-import");
    assert_eq!(
        record.target.expect("target").digest,
        image.manifest.digest,
        "re-importing the docker archive yields the same target digest"
    );
    assert_listed(&d, again, &image.manifest.digest);
    rpc::assert_verify_clean(&client).await;
}

/// Two images share a layer; removing one and collecting frees exactly its
/// own blobs and keeps the shared layer and the other image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_image_frees_exactly_its_unique_blobs() {
    let d = Daemon::start();
    let client = d.client().await;
    let shared = layer(500, 2 * MIB);
    let a = Image::from_layers(1, vec![shared.clone(), layer(501, MIB + 7)]);
    let b = Image::from_layers(2, vec![shared.clone(), layer(502, 3 * MIB)]);
    for (image, dir, name) in [(&a, "a", "example.com/a:1"), (&b, "b", "example.com/b:1")] {
        let layout = d.work().join(dir);
        image.write_layout(&layout, "1");
        distctl(&d, args!["import", &layout, "--name", name]).success();
    }
    let leases = client
        .leases()
        .list(distd_tests::pb::ListLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(
        leases.is_empty(),
        "an import leaves no lease behind: {leases:#?}"
    );
    let before = rpc::usage(&client).await.unwrap();
    assert_eq!(before.reclaimable_count, 0, "{before:?}");

    let b_digests: BTreeSet<String> = b.digests().into_iter().collect();
    let unique_a: BTreeMap<String, u64> = a
        .blobs()
        .into_iter()
        .filter(|blob| !b_digests.contains(&blob.digest))
        .map(|blob| (blob.digest.clone(), blob.size()))
        .collect();
    assert_eq!(
        unique_a.len(),
        3,
        "manifest, config and one layer are A's own"
    );
    let unique_bytes: u64 = unique_a.values().sum();

    distctl(&d, args!["images", "rm", "example.com/a:1"]).success();
    expect_code(
        rpc::image(&client, "example.com/a:1").await,
        Code::NotFound,
        "Get of a removed image",
    );
    let dry = rpc::collect(&client, true).await.unwrap();
    let would: BTreeSet<&String> = dry.removed_digests.iter().collect();
    assert_eq!(would, unique_a.keys().collect::<BTreeSet<_>>(), "dry run");

    let gc = distctl(&d, args!["--json", "gc"]).success().json();
    let removed: BTreeSet<&str> = gc["removed_digests"]
        .as_array()
        .unwrap_or_else(|| panic!("gc --json lists removed_digests: {gc}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        unique_a.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        "gc removes exactly A's own blobs"
    );
    assert_eq!(gc["removed_bytes"], unique_bytes, "{gc}");

    let after = rpc::usage(&client).await.unwrap();
    assert_eq!(after.blob_count, before.blob_count - 3, "{after:?}");
    assert_eq!(
        after.blob_bytes as u64,
        before.blob_bytes as u64 - unique_bytes,
        "{after:?}"
    );
    for digest in unique_a.keys() {
        expect_code(
            rpc::info(&client, digest).await,
            Code::NotFound,
            "A's own blob after gc",
        );
    }
    for blob in b.blobs() {
        let info = rpc::info(&client, &blob.digest)
            .await
            .unwrap_or_else(|e| panic!("B's blob {} was collected: {e:?}", blob.digest));
        assert_eq!(info.size as u64, blob.size());
    }
    rpc::info(&client, &shared.digest)
        .await
        .expect("the shared layer survives");
    rpc::assert_verify_clean(&client).await;
}
