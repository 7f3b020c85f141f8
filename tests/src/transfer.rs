//! Helpers the transfer tests share: the events `distctl --json` pull, push
//! and copy print, importing a local image, pushing it and checking what a
//! registry serves, and a fault proxy in front of a registry.

use crate::cli::CliOutput;
use crate::oci::Image;
use crate::proxy::{Fault, FaultProxy};
use crate::registry::{Registry, layout_blob_digests};
use crate::{Daemon, args, distctl, rpc};

/// The events `distctl --json push` (or `copy`) printed, one JSON object
/// per line.
pub fn parse_events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
        })
        .collect()
}

/// The events of `kind`.
pub fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Imports `image` into `d` as the local image `name`.
pub fn import(d: &Daemon, image: &Image, name: &str) {
    let layout = d
        .work()
        .join(format!("layout-{}", &image.manifest.hex()[..16]));
    image.write_layout(&layout, "v1");
    distctl(d, args!["import", &layout, "--name", name]).success();
}

/// Pushes with [`push`]; panics unless it succeeded and its last event is
/// `done` naming `target` and `image`'s manifest; returns the events.
pub fn push_ok(d: &Daemon, target: &str, local: &str, image: &Image) -> Vec<serde_json::Value> {
    let events = parse_events(&push(d, target, local).success().stdout);
    let done = events.last().expect("events");
    assert_eq!(done["event"], "done", "{events:?}");
    assert_eq!(done["name"], target, "{done}");
    assert_eq!(done["target"]["digest"], image.manifest.digest.as_str());
    assert_eq!(done["target"]["size"], image.manifest.size());
    events
}

/// Asserts `registry` serves `image` as `repo_ref`: the very manifest bytes,
/// and every blob with its digest (copied back with skopeo).
pub fn assert_served(registry: &Registry, repo_ref: &str, image: &Image) {
    assert!(
        registry.raw_manifest(repo_ref) == image.manifest.bytes,
        "the registry's manifest of {repo_ref} differs from the image's"
    );
    let back = tempfile::tempdir().expect("a layout directory");
    registry.pull_layout(repo_ref, back.path(), "back");
    assert_eq!(layout_blob_digests(back.path()), image.digests());
}

/// A proxy in front of `registry`.
pub fn proxy_for(registry: &Registry, fault: Fault) -> FaultProxy {
    let host = registry.host();
    let port = host
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in the registry's host {host}"));
    FaultProxy::start(port, fault)
}

/// `distctl --json push TARGET --from LOCAL`.
pub fn push(d: &Daemon, target: &str, local: &str) -> CliOutput {
    distctl(d, args!["--json", "push", target, "--from", local])
}

/// Panics unless the store holds every blob of `image` with its bytes, the
/// store verifies clean, and `images ls` names `name` with the image's
/// manifest as target.
pub async fn assert_pulled(d: &Daemon, name: &str, image: &Image) {
    let client = d.client().await;
    for blob in image.blobs() {
        let stored = rpc::read(&client, &blob.digest)
            .await
            .unwrap_or_else(|s| panic!("{} {} not stored: {s}", blob.media_type, blob.digest));
        assert!(
            stored == blob.bytes,
            "the stored {} {} differs from the image's",
            blob.media_type,
            blob.digest
        );
    }
    let verify = distctl(d, args!["--json", "verify"]).success().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    let images = distctl(d, args!["--json", "images", "ls"]).success().json();
    let listed = images
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("images ls does not list {name}: {images}"));
    assert_eq!(
        listed["target"]["digest"],
        image.manifest.digest.as_str(),
        "{listed}"
    );
}
