//! The S3-direct transport end to end: a real S3-compatible server
//! (`moto_server`), a real registry (Distribution 2.8) storing into the
//! same bucket, and a real distd reading and writing that bucket in
//! Distribution's layout (`[[s3]]`): pulls with the registry stopped,
//! pushes the registry then serves, blobs a repository does not link,
//! multipart uploads, downloads resumed with `Range`, and clear failures
//! (refused credentials, a missing bucket, a deleted object) that leave the
//! store alone.
//!
//! Every test has its own moto, bucket, registry and daemon.

use distd_tests::oci::{self, Blob, Image};
use distd_tests::proxy::{Exchange, Fault, FaultProxy};
use distd_tests::registry::{Registry, layout_blob_digests};
use distd_tests::s3::{RegistryLayout, S3Server, UNCHECKED_AUTHORIZATION, http};
use distd_tests::transfer::{assert_pulled, assert_served, import, of_kind, parse_events, push_ok};
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl, pb, plugins};
use serde_json::{Value, json};
use tonic::Code;

/// The bucket every test's registry stores into.
const BUCKET: &str = "registry";
/// Distribution's `rootdirectory` in it.
const ROOT: &str = "/root1";
/// The transport's name in the daemon's config.
const S3: &str = "s3";

/// `text` as a TOML basic string (JSON's escapes are TOML's).
fn toml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string")
}

/// How a test's daemon reaches the bucket.
struct S3Settings<'a> {
    /// The S3 endpoint (moto, or a proxy in front of it).
    endpoint: String,
    bucket: &'a str,
    /// `(access_key_id, secret_access_key)`.
    keys: (&'a str, &'a str),
    /// The registry whose bucket it is (`127.0.0.1:PORT`).
    registry: String,
    /// The route's transports for that registry, in order.
    transports: &'a [&'a str],
}

impl S3Settings<'_> {
    /// The daemon config: one `[[s3]]` entry with 5 MiB parts and a route
    /// sending the registry's repositories to `transports`.
    fn config(&self) -> String {
        let transports: Vec<String> = self.transports.iter().map(|t| toml_str(t)).collect();
        format!(
            "[[s3]]\nname = {}\nbucket = {}\nregion = \"us-east-1\"\nendpoint = {}\n\
             root_directory = {}\npath_style = true\naccess_key_id = {}\n\
             secret_access_key = {}\nregistries = [{}]\npart_size = \"5MiB\"\n\
             [[route]]\nmatch = {}\ntransports = [{}]\n",
            toml_str(S3),
            toml_str(self.bucket),
            toml_str(&self.endpoint),
            toml_str(ROOT),
            toml_str(self.keys.0),
            toml_str(self.keys.1),
            toml_str(&self.registry),
            toml_str(&format!("{}/*", self.registry)),
            transports.join(", ")
        )
    }

    /// A daemon with [`S3Settings::config`].
    fn daemon(&self) -> Daemon {
        Daemon::start_with(DaemonOpts::with_config(&self.config()))
    }
}

/// moto with bucket [`BUCKET`], and a registry storing into it.
fn moto_and_registry() -> (S3Server, Registry) {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let registry = Registry::builder().s3(&s3.endpoint(), BUCKET, ROOT).start();
    (s3, registry)
}

/// Settings reaching `s3` directly with moto's default keys, for
/// `registry`'s repositories through `transports`.
fn settings<'a>(s3: &S3Server, registry: &Registry, transports: &'a [&'a str]) -> S3Settings<'a> {
    S3Settings {
        endpoint: s3.endpoint(),
        bucket: BUCKET,
        keys: ("test", "test"),
        registry: registry.host(),
        transports,
    }
}

/// Pushes `image` to `registry` as `repo_tag` with skopeo.
fn push_with_skopeo(registry: &Registry, image: &Image, repo_tag: &str) {
    let layout = tempfile::tempdir().expect("a layout directory");
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), repo_tag);
}

/// `distctl --json pull NAME`.
fn pull(d: &Daemon, name: &str) -> distd_tests::CliOutput {
    distctl(d, args!["--json", "pull", name])
}

/// The last event, which must be `done`.
fn done(events: &[Value]) -> &Value {
    let last = events.last().expect("events");
    assert_eq!(last["event"], "done", "{events:#?}");
    last
}

/// Panics unless the done event's `bytes_by_transport` names the s3
/// transport alone, with at least the config's and layers' bytes.
fn assert_only_s3(events: &[Value], image: &Image) {
    let by_transport = &done(events)["bytes_by_transport"];
    let names: Vec<&String> = by_transport
        .as_object()
        .unwrap_or_else(|| panic!("no bytes_by_transport object: {by_transport}"))
        .keys()
        .collect();
    assert_eq!(names, vec![S3], "{by_transport}");
    let content: u64 = image.blobs()[1..].iter().map(|b| b.size()).sum();
    assert!(
        by_transport[S3].as_u64().unwrap_or(0) >= content,
        "s3 moved fewer bytes than the config and layers hold ({content}): {by_transport}"
    );
}

/// Panics unless `distctl verify` finds no problem.
fn assert_verify_clean(d: &Daemon) {
    let verify = distctl(d, args!["--json", "verify"]).success().json();
    assert_eq!(verify["problems"], json!([]), "{verify}");
}

/// Panics unless the store has no image and verifies clean.
fn assert_no_image(d: &Daemon) {
    let images = distctl(d, args!["--json", "images", "ls"]).success().json();
    assert_eq!(images, json!([]), "a failed pull left an image");
    assert_verify_clean(d);
}

/// The status a pull of `name` through the raw gRPC API ends with; panics
/// if it succeeds.
async fn pull_status(d: &Daemon, name: &str) -> tonic::Status {
    let client = d.client().await;
    let request = pb::PullRequest {
        reference: name.to_owned(),
        ..pb::PullRequest::default()
    };
    let mut stream = match client.transfer().pull(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => return status,
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the pull of {name} succeeded"),
            Err(status) => return status,
        }
    }
}

/// The requests `proxy` saw for S3 key `key` of [`BUCKET`] (any query).
fn requests_of(proxy: &FaultProxy, key: &str) -> Vec<Exchange> {
    let path = format!("/{BUCKET}/{key}");
    proxy
        .requests()
        .into_iter()
        .filter(|e| e.path.split('?').next() == Some(path.as_str()))
        .collect()
}

/// The harness itself: moto starts, a bucket is made, a registry on it
/// serves what skopeo pushed, the bucket holds Distribution's keys for it,
/// and a registry stopped and started again still serves it.
#[test]
fn the_harness_runs_a_registry_on_a_moto_bucket() {
    let (s3, mut registry) = moto_and_registry();
    let image = Image::random(11, &[300_000, 20_000]);
    push_with_skopeo(&registry, &image, "team/app:v1");

    let layout = RegistryLayout::new(ROOT);
    let keys = s3.list_keys(BUCKET, layout.base());
    for blob in image.blobs() {
        assert!(
            keys.contains(&layout.blob_data(&blob.digest)),
            "no data key for {}: {keys:#?}",
            blob.digest
        );
        let stored = s3
            .get_key(BUCKET, &layout.blob_data(&blob.digest))
            .expect("the blob's data");
        assert!(stored == blob.bytes, "{} stored wrong", blob.digest);
    }
    for blob in [&image.config, &image.layers[0], &image.layers[1]] {
        assert!(
            keys.contains(&layout.layer_link("team/app", &blob.digest)),
            "{keys:#?}"
        );
    }
    assert!(keys.contains(&layout.revision_link("team/app", &image.manifest.digest)));
    assert!(keys.contains(&layout.tag_index_link("team/app", "v1", &image.manifest.digest)));
    let current = s3
        .get_key(BUCKET, &layout.tag_current_link("team/app", "v1"))
        .expect("the tag's current link");
    assert_eq!(current, image.manifest.digest.as_bytes());

    registry.stop();
    assert!(!registry.is_running());
    let extra = format!("{}/extra", layout.base());
    s3.put_key(BUCKET, &extra, b"x");
    assert_eq!(s3.get_key(BUCKET, &extra).as_deref(), Some(&b"x"[..]));
    s3.delete_key(BUCKET, &extra);
    assert_eq!(s3.get_key(BUCKET, &extra), None);
    // The fault proxy fronts moto too, recording ranged GETs.
    let proxy = FaultProxy::start(s3.port(), Fault::None);
    let proxy_port: u16 = proxy
        .host()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("the proxy's port");
    let data_key = layout.blob_data(&image.layers[0].digest);
    let ranged = http(
        proxy_port,
        "GET",
        &format!("/{BUCKET}/{data_key}"),
        &[
            ("Range", "bytes=1000-"),
            ("Authorization", UNCHECKED_AUTHORIZATION),
        ],
        b"",
    )
    .expect("a ranged GET through the proxy");
    assert_eq!(ranged.status, 206);
    assert!(ranged.body == image.layers[0].bytes[1000..]);
    let seen = requests_of(&proxy, &data_key);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].range_start(), Some(1000));
    assert_eq!(seen[0].body_bytes, image.layers[0].size() - 1000);

    registry.restart();
    assert!(registry.raw_manifest("team/app:v1") == image.manifest.bytes);
    assert_eq!(registry.list_tags("team/app"), vec!["v1".to_owned()]);
    let back = tempfile::tempdir().expect("a layout directory");
    registry.pull_layout("team/app:v1", back.path(), "back");
    assert_eq!(layout_blob_digests(back.path()), image.digests());
}

/// An image skopeo pushed through the registry is pulled from the bucket
/// with the registry stopped: every digest as pushed, every byte from the
/// s3 transport, which `plugins ls` shows healthy with what it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_pushed_image_is_pulled_from_the_bucket_with_the_registry_stopped() {
    let (s3, mut registry) = moto_and_registry();
    let image = Image::random(21, &[2 * MIB + 3, 150_000]);
    push_with_skopeo(&registry, &image, "team/app:v1");
    let name = format!("{}/team/app:v1", registry.host());
    registry.stop();
    let d = settings(&s3, &registry, &[S3]).daemon();

    let events = parse_events(&pull(&d, &name).success().stdout);
    assert_eq!(
        done(&events)["target"]["digest"],
        image.manifest.digest.as_str()
    );
    assert_only_s3(&events, &image);
    for started in of_kind(&events, "blob_started") {
        assert_eq!(started["transport"], S3, "{started}");
    }
    assert_pulled(&d, &name, &image).await;

    let listed = plugins::get(&d, S3);
    assert_eq!(listed["healthy"], true, "{listed}");
    assert_eq!(listed["kind"], "builtin", "{listed}");
    assert_eq!(listed["capabilities"]["push"], true, "{listed}");
    let layer_bytes: u64 = image.layers.iter().map(Blob::size).sum();
    let served = listed["bytes_served"].as_u64().unwrap_or(0);
    assert!(served >= layer_bytes, "{listed}");
    assert_eq!(listed["errors"], 0, "{listed}");
}

/// An image imported into distd and pushed through the s3 transport (the
/// registry stopped) is then served by the registry started on the bucket:
/// the very manifest, every blob by digest, and the tag listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_distd_pushes_to_the_bucket_is_served_by_the_registry() {
    let (s3, mut registry) = moto_and_registry();
    let image = Image::random(31, &[MIB + 17, 90_000, 4_000]);
    registry.stop();
    let d = settings(&s3, &registry, &[S3]).daemon();
    import(&d, &image, "local/app:v1");
    let target = format!("{}/team/pushed:v1", registry.host());

    push_ok(&d, &target, "local/app:v1", &image);
    let layout = RegistryLayout::new(ROOT);
    let keys = s3.list_keys(BUCKET, layout.base());
    assert!(
        keys.contains(&layout.tag_current_link("team/pushed", "v1")),
        "the push wrote no tag: {keys:#?}"
    );

    registry.restart();
    assert_served(&registry, "team/pushed:v1", &image);
    assert_eq!(registry.list_tags("team/pushed"), vec!["v1".to_owned()]);
    let by_digest = format!("team/pushed@{}", image.manifest.digest);
    assert!(registry.raw_manifest(&by_digest) == image.manifest.bytes);
}

/// Repository B's manifest, written straight into the bucket, names a layer
/// whose data the bucket holds (repository A's) but that B does not link:
/// the pull of B fails with NotFound naming the missing `_layers` link, and
/// leaves no image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_the_repository_does_not_link_is_not_pulled() {
    let (s3, mut registry) = moto_and_registry();
    let shared = oci::layer(4_101, 400_000);
    let a = Image::from_layers(4_110, vec![shared.clone(), oci::layer(4_102, 30_000)]);
    push_with_skopeo(&registry, &a, "team/a:v1");
    registry.stop();
    let own = oci::layer(4_103, 50_000);
    let b = Image::from_layers(4_120, vec![shared.clone(), own.clone()]);
    let layout = RegistryLayout::new(ROOT);
    let link = |digest: &str| digest.as_bytes().to_vec();
    // B as Distribution would store it, but for the link of the shared layer.
    for blob in [&b.manifest, &b.config, &own] {
        s3.put_key(BUCKET, &layout.blob_data(&blob.digest), &blob.bytes);
    }
    for blob in [&b.config, &own] {
        s3.put_key(
            BUCKET,
            &layout.layer_link("team/b", &blob.digest),
            &link(&blob.digest),
        );
    }
    let manifest = &b.manifest.digest;
    s3.put_key(
        BUCKET,
        &layout.revision_link("team/b", manifest),
        &link(manifest),
    );
    s3.put_key(
        BUCKET,
        &layout.tag_index_link("team/b", "v1", manifest),
        &link(manifest),
    );
    s3.put_key(
        BUCKET,
        &layout.tag_current_link("team/b", "v1"),
        &link(manifest),
    );
    assert!(
        s3.get_key(BUCKET, &layout.blob_data(&shared.digest))
            .is_some()
    );
    let d = settings(&s3, &registry, &[S3]).daemon();
    let name = format!("{}/team/b:v1", registry.host());

    let status = pull_status(&d, &name).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let missing = layout.layer_link("team/b", &shared.digest);
    let line = pull(&d, &name).failure().to_owned();
    for message in [status.message(), line.as_str()] {
        assert!(
            message.contains(&missing),
            "the error should name the missing link {missing}: {message}"
        );
    }
    assert_no_image(&d);

    // A itself, which links the layer, pulls.
    let name_a = format!("{}/team/a:v1", registry.host());
    pull(&d, &name_a).success();
    assert_pulled(&d, &name_a, &a).await;
}

/// A 12 MiB layer goes to the bucket as a multipart upload of 5 MiB parts
/// (the registry then serves it), and comes back into a second daemon
/// through connections cut every MiB: each cut download resumes with a
/// ranged GET from where it broke off, and every digest arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_layer_pushes_and_a_cut_download_resumes_with_range() {
    let (s3, mut registry) = moto_and_registry();
    registry.stop();
    let image = Image::random(51, &[12 * MIB, 200_000]);
    let big = &image.layers[0];
    let layout = RegistryLayout::new(ROOT);
    let data_key = layout.blob_data(&big.digest);
    let part = 5 * MIB as u64;

    let up = FaultProxy::start(s3.port(), Fault::None);
    let mut pushing = settings(&s3, &registry, &[S3]);
    pushing.endpoint = format!("http://{}", up.host());
    let pusher = pushing.daemon();
    import(&pusher, &image, "local/big:v1");
    let target = format!("{}/team/big:v1", registry.host());
    push_ok(&pusher, &target, "local/big:v1", &image);

    let parts: Vec<Exchange> = requests_of(&up, &data_key)
        .into_iter()
        .filter(|e| e.method == "PUT" && e.query("partNumber").is_some())
        .collect();
    assert_eq!(
        parts.len() as u64,
        big.size().div_ceil(part),
        "the big layer should go in 5 MiB parts: {:#?}",
        requests_of(&up, &data_key)
    );
    assert!(parts.iter().all(|e| e.status == Some(200)), "{parts:#?}");
    assert_eq!(
        parts.iter().map(|e| e.request_bytes).sum::<u64>(),
        big.size()
    );
    let stored = s3.get_key(BUCKET, &data_key).expect("the big layer's data");
    assert!(stored == big.bytes, "the assembled upload differs");
    registry.restart();
    assert_served(&registry, "team/big:v1", &image);
    registry.stop();

    let down = FaultProxy::start(s3.port(), Fault::CutEvery(MIB as u64));
    let mut pulling = settings(&s3, &registry, &[S3]);
    pulling.endpoint = format!("http://{}", down.host());
    let puller = pulling.daemon();
    let events = parse_events(&pull(&puller, &target).success().stdout);
    assert_only_s3(&events, &image);
    assert_pulled(&puller, &target, &image).await;

    let gets: Vec<Exchange> = requests_of(&down, &data_key)
        .into_iter()
        .filter(|e| e.method == "GET")
        .collect();
    let from_start = gets
        .iter()
        .filter(|e| e.range_start().unwrap_or(0) == 0)
        .count();
    assert_eq!(
        from_start, 1,
        "the big layer was downloaded from byte 0 more than once: {gets:#?}"
    );
    let resumed: Vec<&Exchange> = gets
        .iter()
        .filter(|e| e.range_start().unwrap_or(0) > 0 && e.status == Some(206))
        .collect();
    assert!(
        resumed.len() as u64 >= big.size() / MIB as u64 - 1,
        "the cut download did not resume with ranged GETs: {gets:#?}"
    );
    let body: u64 = gets.iter().map(|e| e.body_bytes).sum();
    assert!(
        body * 10 < big.size() * 13,
        "{body} bytes went down for a layer of {}: resumes restarted",
        big.size()
    );
    let resumed_starts: Vec<&Value> = of_kind(&events, "blob_started")
        .into_iter()
        .filter(|e| e["digest"] == big.digest.as_str())
        .filter(|e| e["resume_offset"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert!(
        !resumed_starts.is_empty(),
        "no blob_started of the big layer resumed at an offset: {events:#?}"
    );
    for started in resumed_starts {
        assert_eq!(started["transport"], S3, "{started}");
    }
}

/// A bucket that does not exist fails the pull with one line naming it and
/// the setting, a layer whose data was deleted underneath the registry fails
/// it with NotFound naming the key, and credentials the bucket refuses (a
/// wrong secret, an unknown key id: moto made to check them) fail it naming
/// the credential settings. None leaves an image, and the store verifies
/// clean; the daemon that failed on the deleted layer pulls another image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_a_deleted_object_and_refused_credentials_fail_clearly() {
    let (mut s3, mut registry) = moto_and_registry();
    let image = Image::random(61, &[300_000, 40_000]);
    push_with_skopeo(&registry, &image, "team/app:v1");
    let other = Image::random(62, &[250_000]);
    push_with_skopeo(&registry, &other, "team/other:v1");
    registry.stop();
    let layout = RegistryLayout::new(ROOT);
    let deleted = layout.blob_data(&other.layers[0].digest);
    s3.delete_key(BUCKET, &deleted);
    let name = format!("{}/team/app:v1", registry.host());

    let mut missing = settings(&s3, &registry, &[S3]);
    missing.bucket = "missing-one";
    let d = missing.daemon();
    let line = pull(&d, &name).failure().to_owned();
    assert!(
        line.contains("missing-one") && line.replace("missing-one", "").contains("bucket"),
        "the error should name the missing bucket and the setting: {line}"
    );
    assert!(
        !line.contains("access_key_id"),
        "a missing bucket is not a credentials problem: {line}"
    );
    assert_no_image(&d);

    let d = settings(&s3, &registry, &[S3]).daemon();
    let other_name = format!("{}/team/other:v1", registry.host());
    let status = pull_status(&d, &other_name).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let line = pull(&d, &other_name).failure().to_owned();
    for message in [status.message(), line.as_str()] {
        assert!(
            message.contains(&deleted),
            "the error should name the deleted key {deleted}: {message}"
        );
    }
    assert_no_image(&d);
    pull(&d, &name).success();
    assert_pulled(&d, &name, &image).await;

    let keys = s3.require_auth();
    let secret = keys.secret_access_key.clone() + "-wrong";
    let wrong_secret = (keys.access_key_id.as_str(), secret.as_str());
    for wrong in [wrong_secret, ("AKIAUNKNOWNKEY000000", "whatever")] {
        let mut refused = settings(&s3, &registry, &[S3]);
        refused.keys = wrong;
        let d = refused.daemon();
        let line = pull(&d, &name).failure().to_owned();
        assert!(
            line.contains("access_key_id") && line.contains("secret_access_key"),
            "the error should name the credential settings: {line}"
        );
        assert_no_image(&d);
        let listed = plugins::get(&d, S3);
        assert_eq!(listed["healthy"], false, "{listed}");
        let status = listed["status"].as_str().unwrap_or_default();
        assert!(status.contains("access_key_id"), "{listed}");
    }
}
