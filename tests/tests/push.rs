//! `distctl push` and `distctl copy` through a real distd to real registries
//! (Distribution 2.8): plain, behind htpasswd and behind token auth; a
//! second push that skips every blob; cross-repository mounts; a copy
//! between registries; and bad input that fails with one line and leaves
//! the local store alone. Every pushed image is checked with `skopeo`.

use distd_tests::certs::TestPki;
use distd_tests::oci::{self, Image};
use distd_tests::proxy::Fault;
use distd_tests::registry::{MultiArch, Registry};
use distd_tests::token_server::TokenServer;
use distd_tests::transfer::{assert_served, import, parse_events, proxy_for, push, push_ok};
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl};

/// The digests of the events of `kind`, sorted.
fn digests_of(events: &[serde_json::Value], kind: &str) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["digest"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

/// Sorted digests of these blobs.
fn sorted(blobs: &[&oci::Blob]) -> Vec<String> {
    let mut out: Vec<String> = blobs.iter().map(|b| b.digest.clone()).collect();
    out.sort();
    out
}

/// A daemon config: `[push]` chunks of `chunk_size` (e.g. `"1MiB"`), and
/// `user`:`password` for registry `host` when given.
fn config(chunk_size: &str, credentials: Option<(&str, &str, &str)>) -> DaemonOpts {
    let mut text = format!("[push]\nchunk_size = \"{chunk_size}\"\nconcurrency = 4\n");
    if let Some((host, user, password)) = credentials {
        text.push_str(&format!(
            "[registries.\"{host}\"]\nusername = \"{user}\"\npassword = \"{password}\"\n"
        ));
    }
    DaemonOpts::with_config(&text)
}

/// A push to an anonymous registry sends the config and every layer (the
/// large one in chunks) and the manifest byte for byte; pushed again, every
/// blob is skipped and no blob bytes move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_keeps_every_digest_and_a_second_push_skips_every_blob() {
    let registry = Registry::start();
    let proxy = proxy_for(&registry, Fault::None);
    let image = Image::random(301, &[3 * MIB + 5, 200_000]);
    let d = Daemon::start_with(config("1MiB", None));
    import(&d, &image, "local/app:v1");
    let target = format!("{}/test/app:v1", proxy.host());

    let events = push_ok(&d, &target, "local/app:v1", &image);
    let blobs = sorted(&[&image.config, &image.layers[0], &image.layers[1]]);
    assert_eq!(
        digests_of(&events, "blob_done"),
        sorted(&image.blobs()),
        "{events:?}"
    );
    assert_eq!(digests_of(&events, "blob_started"), blobs, "{events:?}");
    assert!(digests_of(&events, "skipped").is_empty(), "{events:?}");
    for layer in &image.layers {
        let sent = events
            .iter()
            .find(|e| e["event"] == "blob_done" && e["digest"] == layer.digest.as_str())
            .expect("a blob_done per layer");
        assert_eq!(sent["transferred"], layer.size(), "{sent}");
        assert_eq!(proxy.upload_bytes_of(&layer.digest), layer.size());
    }
    let patches = proxy.count(|e| e.method == "PATCH" && e.status == Some(202));
    let chunks = image.layers[0].size().div_ceil(MIB as u64);
    assert_eq!(patches as u64, chunks, "the big layer goes in 1 MiB chunks");
    assert_served(&registry, "test/app:v1", &image);

    let uploaded = proxy.upload_bytes();
    let again = push_ok(&d, &target, "local/app:v1", &image);
    assert_eq!(digests_of(&again, "skipped"), blobs, "{again:?}");
    assert!(digests_of(&again, "blob_started").is_empty(), "{again:?}");
    assert_eq!(proxy.upload_bytes(), uploaded, "the second push uploaded");
    assert_served(&registry, "test/app:v1", &image);
}

/// Credentials from distd's config (`[registries."HOST"]`) open a
/// registry behind htpasswd for pushing; without them the push fails with
/// one line saying to log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_behind_basic_auth_uses_the_configs_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let image = Image::random(311, &[400_000, 50_000]);
    let target = format!("{}/team/private:v1", registry.host());

    let anonymous = Daemon::start();
    import(&anonymous, &image, "local/private:v1");
    let line = push(&anonymous, &target, "local/private:v1")
        .failure()
        .to_owned();
    assert!(
        line.contains("distctl login") && line.contains(&registry.host()),
        "{line}"
    );

    let d = Daemon::start_with(config("16MiB", Some((&registry.host(), "alice", "s3cret"))));
    import(&d, &image, "local/private:v1");
    push_ok(&d, &target, "local/private:v1", &image);
    assert_served(&registry, "team/private:v1", &image);
}

/// Behind token auth, the config's credentials buy a push token; every
/// digest arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_behind_token_auth_uses_the_configs_credentials() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let tokens = TokenServer::start(&pki, "bob", "t0ken-pw");
    let registry = Registry::builder().token_auth(&tokens).start();
    let image = Image::random(321, &[2 * MIB + 1, 70_000, 10_000]);
    let target = format!("{}/team/tokened:v1", registry.host());
    let d = Daemon::start_with(config("1MiB", Some((&registry.host(), "bob", "t0ken-pw"))));
    import(&d, &image, "local/tokened:v1");

    push_ok(&d, &target, "local/tokened:v1", &image);
    assert!(
        tokens.log().iter().any(|l| l.contains("push")),
        "no push token was asked for: {:?}",
        tokens.log()
    );
    assert_served(&registry, "team/tokened:v1", &image);
}

/// Image B shares its two layers with image A, pushed before to repository
/// `a` of the same registry: pushing B to `b` mounts both from `a` (no
/// upload of their bytes) and uploads only B's own layer and config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_are_mounted_from_the_repository_they_were_pushed_to() {
    let registry = Registry::start();
    let proxy = proxy_for(&registry, Fault::None);
    let (l1, l2) = (oci::layer(3_301, MIB + 11), oci::layer(3_302, 300_000));
    let a = Image::from_layers(3_310, vec![l1.clone(), l2.clone()]);
    let own = oci::layer(3_303, 150_000);
    let b = Image::from_layers(3_320, vec![l1.clone(), l2.clone(), own.clone()]);
    let d = Daemon::start_with(config("1MiB", None));
    import(&d, &a, "local/a:v1");
    import(&d, &b, "local/b:v1");

    push_ok(&d, &format!("{}/a:v1", proxy.host()), "local/a:v1", &a);
    let (seen, uploaded) = (proxy.requests().len(), proxy.upload_bytes());
    let events = push_ok(&d, &format!("{}/b:v1", proxy.host()), "local/b:v1", &b);

    assert_eq!(
        digests_of(&events, "mounted"),
        sorted(&[&l1, &l2]),
        "{events:?}"
    );
    for mounted in events.iter().filter(|e| e["event"] == "mounted") {
        assert_eq!(mounted["from"], "a", "{mounted}");
    }
    assert_eq!(
        digests_of(&events, "blob_started"),
        sorted(&[&own, &b.config]),
        "{events:?}"
    );
    let requests = proxy.requests().split_off(seen);
    let mounts: Vec<_> = requests.iter().filter(|e| e.is_mount()).collect();
    for layer in [&l1, &l2] {
        assert!(
            mounts
                .iter()
                .any(|m| m.query("mount").as_deref() == Some(&layer.digest)
                    && m.query("from").as_deref() == Some("a")
                    && m.status == Some(201)),
            "no mount of {} from a answered 201: {mounts:?}",
            layer.digest
        );
    }
    assert_eq!(proxy.upload_bytes_of(&l1.digest), l1.size());
    assert_eq!(proxy.upload_bytes_of(&l2.digest), l2.size());
    assert_eq!(
        proxy.upload_bytes() - uploaded,
        own.size() + b.config.size(),
        "B's push uploaded more than its own layer and config: {requests:?}"
    );
    assert_served(&registry, "b:v1", &b);
    assert_served(&registry, "a:v1", &a);
}

/// `distctl copy` from a registry behind token auth to an anonymous one
/// copies a multi-platform index with both platforms: the destination
/// serves the very index and manifests, and every blob, by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_between_registries_keeps_every_digest() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let tokens = TokenServer::start(&pki, "carol", "c0py-pw");
    let source = Registry::builder().token_auth(&tokens).start();
    let destination = Registry::start();
    let multi = MultiArch::random(331, &[600_000, 40_000]);
    let layout = tempfile::tempdir().unwrap();
    multi.write_layout(layout.path(), "multi");
    source.push_index_layout(layout.path(), "src/multi:1");
    let d = Daemon::start_with(config("256KiB", Some((&source.host(), "carol", "c0py-pw"))));
    let from = format!("{}/src/multi:1", source.host());
    let to = format!("{}/dst/copied:2", destination.host());

    let copied = distctl(&d, args!["--json", "copy", &from, &to]);
    let events = parse_events(&copied.success().stdout);
    let done = events.last().expect("events");
    assert_eq!(done["event"], "done", "{events:?}");
    assert_eq!(done["name"], to.as_str());
    assert_eq!(done["target"]["digest"], multi.index.digest.as_str());

    assert!(
        destination.raw_manifest("dst/copied:2") == multi.index.bytes,
        "the copied index differs from the source's"
    );
    assert!(source.raw_manifest("src/multi:1") == multi.index.bytes);
    for image in &multi.images {
        let by_digest = format!("dst/copied@{}", image.manifest.digest);
        assert_served(&destination, &by_digest, image);
    }
}

/// The local store as `distctl` shows it: usage (without the filesystem's,
/// which other processes change) and images.
fn store_view(d: &Daemon) -> (serde_json::Value, serde_json::Value) {
    let mut usage = distctl(d, args!["--json", "df"]).success().json();
    usage
        .as_object_mut()
        .unwrap_or_else(|| panic!("df printed no object"))
        .remove("filesystem");
    let images = distctl(d, args!["--json", "images", "ls"]).success().json();
    (usage, images)
}

/// Pushing a name with no local image, to a malformed target or to a
/// registry that fails every chunk: each fails with one line saying what is
/// wrong, and the local store is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_fail_with_one_line_and_leave_the_store_alone() {
    let registry = Registry::start();
    let proxy = proxy_for(&registry, Fault::Fault500OnPatch);
    let image = Image::random(341, &[300_000, 20_000]);
    let d = Daemon::start_with(config("64KiB", None));
    import(&d, &image, "local/app:v1");
    let before = store_view(&d);

    let missing = format!("{}/test/missing:v1", proxy.host());
    let line = distctl(&d, args!["push", &missing]).failure().to_owned();
    assert!(
        line.contains("images ls") && line.contains(&missing),
        "the error should name the image and say how to list local ones: {line}"
    );
    let line = push(&d, &missing, "local/nothing:v1").failure().to_owned();
    assert!(
        line.contains("images ls") && line.contains("local/nothing:v1"),
        "{line}"
    );

    for bad in [
        format!("{}/", proxy.host()),
        format!("{}/Upper/Case:v1", proxy.host()),
        format!("{}/test/app:bad tag", proxy.host()),
        format!("{}/test/app@sha256:abc", proxy.host()),
    ] {
        let line = push(&d, &bad, "local/app:v1").failure().to_owned();
        assert!(
            line.contains(&format!("invalid image reference \"{bad}\"")),
            "a malformed target {bad:?} should be called invalid: {line}"
        );
    }
    assert_eq!(proxy.requests(), vec![], "bad input reached the registry");

    let target = format!("{}/test/app:v1", proxy.host());
    let line = push(&d, &target, "local/app:v1").failure().to_owned();
    assert!(
        line.contains(&proxy.host()) && line.contains("500"),
        "the error should name the registry and its answer: {line}"
    );
    let failed_patches = proxy.count(|e| e.method == "PATCH" && e.status == Some(500));
    assert!(
        failed_patches > 1,
        "the failing chunk was not retried: {:?}",
        proxy.requests()
    );
    assert!(
        proxy.count(|e| e.path.contains("/manifests/") && e.method == "PUT") == 0,
        "a manifest was pushed over missing blobs: {:?}",
        proxy.requests()
    );
    assert_eq!(store_view(&d), before, "a failed push changed the store");
}
