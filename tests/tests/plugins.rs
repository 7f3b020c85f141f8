//! Transport plugins end to end: `distd-oci-dir` and the misbehaving
//! `distd-test-plugin` run by the daemon (`exec`) or by the test (`socket`),
//! routes that fail over from a plugin to a real registry (Distribution 2.8)
//! mid-blob, bad bytes, restarts, a missing socket, registration at run
//! time, and the SDK's conformance kit against real transports.
//!
//! Every test has its own daemon, registry and directories (nextest runs
//! each test in a process of its own, so nothing could be shared anyway).

use std::path::Path;

use distd_plugin_registry::{RegistryOptions, RegistryTransport};
use distd_sdk::conformance::{self, Fixture, Outcome, checks};
use distd_sdk::plugin::RemoteTransport;
use distd_sdk::{Descriptor, Digest, Reference, Transport};
use distd_tests::oci::{Blob, Image};
use distd_tests::plugins::{self, PluginProcess};
use distd_tests::proxy::Fault;
use distd_tests::registry::Registry;
use distd_tests::transfer::{assert_pulled, of_kind, parse_events, proxy_for};
use distd_tests::{Daemon, DaemonOpts, MIB, args, bin_path, distctl};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

/// Where the failover test's plugin dies: after this many bytes of a blob.
const DIE_AFTER: u64 = 1024 * 1024;

/// `text` as a TOML basic string (JSON's escapes are TOML's).
fn toml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string")
}

/// A `[[plugin]]` entry the daemon starts: `exec = argv`.
fn exec_plugin(name: &str, argv: &[String]) -> String {
    let argv: Vec<String> = argv.iter().map(|a| toml_str(a)).collect();
    format!(
        "[[plugin]]\nname = {}\nexec = [{}]\n",
        toml_str(name),
        argv.join(", ")
    )
}

/// A `[[route]]` entry.
fn route(pattern: &str, transports: &[&str]) -> String {
    let transports: Vec<String> = transports.iter().map(|t| toml_str(t)).collect();
    format!(
        "[[route]]\nmatch = {}\ntransports = [{}]\n",
        toml_str(pattern),
        transports.join(", ")
    )
}

/// The command line of workspace binary `bin` with `args`.
fn argv(bin: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![bin_path(bin).display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// `path` as a `&str` (test paths are UTF-8).
fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A new temporary directory holding an OCI layout of `image` tagged `tag`.
fn layout_of(image: &Image, tag: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a layout directory");
    image.write_layout(dir.path(), tag);
    dir
}

/// Pushes `image` to `registry` as `repo_tag`.
fn push(registry: &Registry, image: &Image, repo_tag: &str) {
    let layout = layout_of(image, "v1");
    registry.push_layout(layout.path(), repo_tag);
}

/// A daemon with this config text.
fn daemon(config: &str) -> Daemon {
    Daemon::start_with(DaemonOpts::with_config(config))
}

/// The `(transport, resume_offset)` of every `blob_started` event of `digest`.
fn starts_of(events: &[Value], digest: &str) -> Vec<(String, u64)> {
    of_kind(events, "blob_started")
        .into_iter()
        .filter(|e| e["digest"] == digest)
        .map(|e| {
            (
                e["transport"].as_str().unwrap_or_default().to_owned(),
                e["resume_offset"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// The last event, which must be `done`.
fn done(events: &[Value]) -> &Value {
    let last = events.last().expect("events");
    assert_eq!(last["event"], "done", "{events:#?}");
    last
}

/// A `u64` field of a `plugins ls` entry.
fn count(entry: &Value, field: &str) -> u64 {
    entry[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {entry}"))
}

/// A pull through `oci-dir`, run by the daemon, of an image that exists
/// only in an OCI layout: no registry involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_dir_run_by_the_daemon_serves_a_pull_without_any_registry() {
    let image = Image::random(101, &[200_000, 3 * MIB + 11]);
    let layout = layout_of(&image, "1.0");
    let config = exec_plugin("oci-dir", &argv("distd-oci-dir", &[utf8(layout.path())]))
        + &route("airgap.test/*", &["oci-dir"]);
    let d = daemon(&config);
    let name = "airgap.test/app:1.0";

    let pulled = distctl(&d, args!["pull", name]);
    let stdout = &pulled.success().stdout;
    assert!(stdout.contains(&image.manifest.digest), "{stdout}");
    assert!(stdout.contains("from oci-dir"), "{stdout}");
    assert!(!stdout.contains("from registry"), "{stdout}");
    assert_pulled(&d, name, &image).await;

    let oci_dir = plugins::get(&d, "oci-dir");
    assert_eq!(oci_dir["kind"], "exec", "{oci_dir}");
    assert_eq!(oci_dir["healthy"], true, "{oci_dir}");
    let layer_bytes: u64 = image.layers.iter().map(Blob::size).sum();
    assert!(count(&oci_dir, "bytes_served") >= layer_bytes, "{oci_dir}");
    assert_eq!(count(&oci_dir, "errors"), 0, "{oci_dir}");
}

/// A plugin that dies 1 MiB into the big layer: the registry, next on the
/// route, continues that blob from byte 1048576 with a `Range` request,
/// and the pull completes with bytes from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_dying_mid_blob_hands_over_to_the_registry_at_its_offset() {
    let registry = Registry::start();
    let image = Image::random(201, &[4 * MIB, 60_000]);
    let big = &image.layers[0];
    push(&registry, &image, "test/app:v1");
    let layout = layout_of(&image, "v1");
    let proxy = proxy_for(&registry, Fault::None);
    let die_after = DIE_AFTER.to_string();
    let flaky = argv(
        "distd-test-plugin",
        &[
            "--mode",
            "die-after",
            "--bytes",
            &die_after,
            "--name",
            "flaky",
            utf8(layout.path()),
        ],
    );
    let config = "[transfer]\nstall_timeout = \"5s\"\n".to_owned()
        + &exec_plugin("flaky", &flaky)
        + &route(&format!("{}/*", proxy.host()), &["flaky", "registry"]);
    let d = daemon(&config);
    let name = format!("{}/test/app:v1", proxy.host());

    let events = parse_events(&distctl(&d, args!["--json", "pull", &name]).success().stdout);
    assert_eq!(
        starts_of(&events, &big.digest),
        vec![("flaky".to_owned(), 0), ("registry".to_owned(), DIE_AFTER)],
        "{events:#?}"
    );
    let warned = of_kind(&events, "warning").into_iter().any(|w| {
        let message = w["message"].as_str().unwrap_or_default();
        message.contains("flaky") && message.contains(&big.digest) && message.contains("registry")
    });
    assert!(warned, "no warning about the handover: {events:#?}");
    let by_transport = &done(&events)["bytes_by_transport"];
    let from_flaky = by_transport["flaky"].as_u64().unwrap_or(0);
    let from_registry = by_transport["registry"].as_u64().unwrap_or(0);
    assert!(from_flaky >= DIE_AFTER, "{by_transport}");
    assert!(from_registry >= big.size() - DIE_AFTER, "{by_transport}");

    let big_gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|e| e.method == "GET" && e.targets(&big.digest))
        .collect();
    assert!(
        big_gets
            .iter()
            .any(|e| e.range_start() == Some(DIE_AFTER) && e.served()),
        "no GET of the big layer ranged from byte {DIE_AFTER}: {big_gets:?}"
    );
    assert_eq!(
        proxy.body_bytes(&big.digest),
        big.size() - DIE_AFTER,
        "the registry sent more of the big layer than the plugin had left: {big_gets:?}"
    );
    assert_pulled(&d, &name, &image).await;
}

/// A plugin that flips a byte of every blob: each blob fails verification,
/// is fetched again from the registry, and the pull ends with the right
/// image; the plugin's bad blobs are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_from_a_plugin_are_refetched_from_the_registry_and_counted() {
    let registry = Registry::start();
    let image = Image::random(301, &[1_500_000, 40_000]);
    push(&registry, &image, "test/app:v1");
    let layout = layout_of(&image, "v1");
    let liar = argv(
        "distd-test-plugin",
        &[
            "--mode",
            "wrong-bytes",
            "--name",
            "liar",
            utf8(layout.path()),
        ],
    );
    let config = exec_plugin("liar", &liar)
        + &route(&format!("{}/*", registry.host()), &["liar", "registry"]);
    let d = daemon(&config);
    let name = format!("{}/test/app:v1", registry.host());

    let events = parse_events(&distctl(&d, args!["--json", "pull", &name]).success().stdout);
    assert_eq!(
        done(&events)["target"]["digest"],
        image.manifest.digest.as_str()
    );
    // Each blob came from the liar first, then whole from the registry.
    for blob in image.blobs() {
        assert_eq!(
            starts_of(&events, &blob.digest),
            vec![("liar".to_owned(), 0), ("registry".to_owned(), 0)],
            "{events:#?}"
        );
    }
    let from_registry = done(&events)["bytes_by_transport"]["registry"].as_u64();
    assert_eq!(from_registry, Some(image.total_bytes()), "{events:#?}");
    assert_pulled(&d, &name, &image).await;

    let liar = plugins::get(&d, "liar");
    assert!(count(&liar, "bad_blobs") >= 1, "{liar}");
    assert!(count(&liar, "errors") >= 1, "{liar}");
}

/// `oci-dir` killed with SIGKILL is started again (new pid, a restart
/// counted, healthy), and pulls go through the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_exec_plugin_is_restarted_and_serves_again() {
    let image = Image::random(401, &[300_000]);
    let layout = layout_of(&image, "1.0");
    let config = exec_plugin("oci-dir", &argv("distd-oci-dir", &[utf8(layout.path())]))
        + &route("airgap.test/*", &["oci-dir"]);
    let d = daemon(&config);

    let first = plugins::wait_for(&d, "oci-dir", "healthy with a pid", |p| {
        p["healthy"] == true && p["pid"].as_u64().is_some_and(|pid| pid > 0)
    });
    let old_pid = count(&first, "pid");
    let pid = i32::try_from(old_pid)
        .ok()
        .and_then(Pid::from_raw)
        .unwrap_or_else(|| panic!("not a pid: {first}"));
    kill_process(pid, Signal::KILL).expect("SIGKILL the plugin");

    let restarted = plugins::wait_for(&d, "oci-dir", "restarted and healthy", |p| {
        let pid = p["pid"].as_u64().unwrap_or(0);
        pid != 0
            && pid != old_pid
            && p["restarts"].as_u64().unwrap_or(0) >= 1
            && p["healthy"] == true
    });
    assert_eq!(restarted["kind"], "exec", "{restarted}");

    let name = "airgap.test/app:1.0";
    let pulled = distctl(&d, args!["pull", name]);
    assert!(
        pulled.success().stdout.contains("from oci-dir"),
        "{}",
        pulled.stdout
    );
    assert_pulled(&d, name, &image).await;
}

/// A `socket` plugin whose socket does not exist: the daemon starts, a pull
/// routed to it fails naming the plugin and the socket, pulls on other
/// routes work, and `plugins ls` shows it unhealthy saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_its_socket_fails_its_route_only() {
    let registry = Registry::start();
    let image = Image::random(501, &[120_000]);
    push(&registry, &image, "test/app:v1");
    let tmp = tempfile::tempdir().expect("a directory");
    let socket = tmp.path().join("nothing-here.sock");
    let config = format!(
        "[[plugin]]\nname = \"gone\"\nsocket = {}\n",
        toml_str(utf8(&socket))
    ) + &route("gone.test/*", &["gone"]);
    let d = daemon(&config);

    let failed = distctl(&d, args!["pull", "gone.test/app:1"]);
    let line = failed.failure();
    // "gone" beyond the reference's own registry name.
    assert!(line.replace("gone.test", "").contains("gone"), "{line}");
    assert!(line.contains(utf8(&socket)), "{line}");

    let name = format!("{}/test/app:v1", registry.host());
    distctl(&d, args!["pull", &name]).success();
    assert_pulled(&d, &name, &image).await;

    let gone = plugins::get(&d, "gone");
    assert_eq!(gone["kind"], "socket", "{gone}");
    assert_eq!(gone["healthy"], false, "{gone}");
    let status = gone["status"].as_str().unwrap_or_default();
    assert!(status.contains(utf8(&socket)), "{gone}");
}

/// `plugins add` registers a plugin the test runs on its own socket, and
/// the route naming it works from then on; a second add of the name fails;
/// `plugins rm` removes it, but neither the built-in registry transport nor
/// a plugin the config declares.
#[test]
fn plugins_are_added_and_removed_at_run_time() {
    let image = Image::random(601, &[50_000]);
    let layout = layout_of(&image, "1.0");
    let tmp = tempfile::tempdir().expect("a directory");
    let socket = tmp.path().join("extra.sock");
    let _extra = PluginProcess::oci_dir(&socket, layout.path());
    let declared = exec_plugin("kept", &argv("distd-oci-dir", &[utf8(layout.path())]));
    let d = daemon(&(declared + &route("extra.test/*", &["extra"])));
    assert!(plugins::find(&d, "extra").is_none());
    let before = distctl(&d, args!["pull", "extra.test/app:1.0"]);
    assert!(
        before.failure().contains("extra: not registered"),
        "{}",
        before.failure()
    );

    distctl(&d, args!["plugins", "add", "extra", &socket]).success();
    let extra = plugins::wait_for(&d, "extra", "healthy", |p| p["healthy"] == true);
    assert_eq!(extra["kind"], "socket", "{extra}");
    assert_eq!(extra["socket"], utf8(&socket), "{extra}");
    let pulled = distctl(&d, args!["pull", "extra.test/app:1.0"]);
    assert!(
        pulled.success().stdout.contains("from extra"),
        "{}",
        pulled.stdout
    );

    let kept = distctl(&d, args!["plugins", "rm", "kept"]);
    assert!(
        kept.failure().contains("declared in the daemon's config"),
        "{}",
        kept.failure()
    );

    let again = distctl(&d, args!["plugins", "add", "extra", &socket]);
    let line = again.failure();
    assert!(
        line.contains("extra")
            && (line.contains("exists already") || line.contains("already exists")),
        "{line}"
    );

    distctl(&d, args!["plugins", "rm", "extra"]).success();
    assert!(
        plugins::find(&d, "extra").is_none(),
        "{:?}",
        plugins::list(&d)
    );

    let builtin = distctl(&d, args!["plugins", "rm", "registry"]);
    let line = builtin.failure();
    assert!(line.contains("built in"), "{line}");
    assert_eq!(plugins::get(&d, "registry")["kind"], "builtin");
}

/// A conformance fixture: `reference` names `image`, whose first layer is
/// the blob fetched.
fn fixture(reference: &str, image: &Image) -> Fixture {
    let descriptor = |blob: &Blob| Descriptor {
        media_type: blob.media_type.clone(),
        digest: Digest::parse(&blob.digest).expect("a valid digest"),
        size: blob.size(),
    };
    Fixture {
        reference: Reference::parse(reference).expect("a valid reference"),
        manifest: descriptor(&image.manifest),
        blob: descriptor(&image.layers[0]),
    }
}

/// A plugin the test runs, reached through `RemoteTransport` as the daemon
/// reaches it, its description learnt.
async fn remote(name: &str, plugin: &PluginProcess) -> RemoteTransport {
    let transport = RemoteTransport::new(name, plugin.socket());
    transport
        .refresh()
        .await
        .unwrap_or_else(|e| panic!("describe {name}: {e}\n{}", plugin.log()));
    transport
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_passes_on_oci_dir_through_its_socket() {
    let image = Image::random(701, &[100_000]);
    let layout = layout_of(&image, "1.0");
    let tmp = tempfile::tempdir().expect("a directory");
    let plugin = PluginProcess::oci_dir(&tmp.path().join("oci-dir.sock"), layout.path());
    let transport = remote("oci-dir", &plugin).await;

    let report = conformance::run(&transport, &fixture("example.test/app:1.0", &image)).await;
    assert!(report.passed(), "{report}");
    assert_eq!(
        report.outcome(checks::RESOLVE),
        Some(&Outcome::Passed),
        "{report}"
    );
    assert_eq!(
        report.outcome(checks::FETCH_OFFSETS),
        Some(&Outcome::Passed),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_passes_on_the_registry_transport() {
    let registry = Registry::start();
    let image = Image::random(702, &[100_000]);
    push(&registry, &image, "test/app:v1");
    let transport = RegistryTransport::new(RegistryOptions {
        disable_credential_files: true,
        ..RegistryOptions::default()
    })
    .expect("build the registry transport");

    let reference = format!("{}/test/app:v1", registry.host());
    let report = conformance::run(&transport, &fixture(&reference, &image)).await;
    assert!(
        report.passed(),
        "{report}\nregistry log:\n{}",
        registry.log()
    );
    assert_eq!(
        report.outcome(checks::RESOLVE),
        Some(&Outcome::Passed),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_fails_on_a_plugin_that_ignores_offsets() {
    let image = Image::random(703, &[100_000]);
    let layout = layout_of(&image, "1.0");
    let tmp = tempfile::tempdir().expect("a directory");
    let socket = tmp.path().join("ignore-offset.sock");
    let plugin = PluginProcess::test_plugin("ignore-offset", &socket, layout.path());
    let transport = remote("ignore-offset", &plugin).await;
    assert!(transport.describe().capabilities.ranged_fetch);

    let report = conformance::run(&transport, &fixture("example.test/app:1.0", &image)).await;
    assert!(!report.passed(), "{report}");
    let failed: Vec<_> = report.failures().collect();
    assert!(
        failed.iter().any(|c| c.name == checks::FETCH_OFFSETS
            && matches!(&c.outcome, Outcome::Failed(why) if why.contains("offset"))),
        "{report}"
    );
}

/// The README's plugin (`sdk/examples/blob_dir.rs`), run by the daemon:
/// the registry resolves the tag, every blob comes from the plugin's
/// directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_plugin_serves_the_blobs_the_registry_resolves() {
    let registry = Registry::start();
    let image = Image::random(801, &[2 * MIB, 70_000]);
    push(&registry, &image, "test/readme:v1");
    let blobs = tempfile::tempdir().expect("a blob directory");
    let sha256 = blobs.path().join("sha256");
    std::fs::create_dir_all(&sha256).expect("create the blob directory");
    for blob in image.blobs() {
        std::fs::write(sha256.join(blob.hex()), &blob.bytes).expect("write a blob");
    }
    let config = exec_plugin(
        "blob-dir",
        &argv("examples/blob_dir", &[utf8(blobs.path())]),
    ) + &route(&format!("{}/*", registry.host()), &["blob-dir", "registry"]);
    let d = daemon(&config);
    let name = format!("{}/test/readme:v1", registry.host());

    let events = parse_events(&distctl(&d, args!["--json", "pull", &name]).success().stdout);
    assert_eq!(of_kind(&events, "resolved")[0]["transport"], "registry");
    let by_transport = &done(&events)["bytes_by_transport"];
    assert_eq!(
        by_transport,
        &serde_json::json!({ "blob-dir": image.total_bytes() }),
        "{events:#?}"
    );
    assert_pulled(&d, &name, &image).await;
}
