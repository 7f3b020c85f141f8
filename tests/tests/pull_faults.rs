//! `distctl pull` through a fault-injecting proxy in front of a real registry
//! (Distribution 2.8): cut connections, lying bodies, a daemon killed
//! mid-pull, concurrent pulls sharing layers, and a failed pull's leftovers.

use distd_tests::transfer::{of_kind, parse_events, proxy_for};
use std::process::Stdio;
use std::time::{Duration, Instant};

use distd_tests::cli::distctl_command;
use distd_tests::oci::{self, Image};
use distd_tests::proxy::Fault;
use distd_tests::registry::Registry;
use distd_tests::rpc::{self, expect_code};
use distd_tests::{Daemon, DaemonOpts, MIB, args, distctl, poll_until};
use tonic::Code;

/// Pushes `image` to `registry` as `repo_tag`.
fn push(registry: &Registry, image: &Image, repo_tag: &str) {
    let layout = tempfile::tempdir().expect("a layout directory");
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), repo_tag);
}

/// Runs `distctl --json pull NAME`; returns the output.
fn pull(d: &Daemon, name: &str) -> distd_tests::CliOutput {
    distctl(d, args!["--json", "pull", name])
}

/// Panics unless the store holds every blob of `image` with its bytes.
async fn assert_image_stored(client: &distd_sdk::Client, image: &Image) {
    for blob in image.blobs() {
        let stored = rpc::read(client, &blob.digest)
            .await
            .unwrap_or_else(|s| panic!("{} {}: {s}", blob.media_type, blob.digest));
        assert!(
            stored == blob.bytes,
            "{} {} differs from the registry's bytes",
            blob.media_type,
            blob.digest
        );
    }
}

/// The image names `distctl images ls` lists.
fn image_names(d: &Daemon) -> Vec<String> {
    let listed = distctl(d, args!["--json", "images", "ls"]).success().json();
    listed
        .as_array()
        .unwrap_or_else(|| panic!("images ls printed no array: {listed}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Connections cut every 512 KiB: distd reconnects and resumes each blob
/// with `Range` where it broke off, so the pull completes with every blob
/// intact while the proxy carries little more than the image once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_every_512_kib_resume_with_range_and_the_pull_completes() {
    let registry = Registry::start();
    // The largest layer needs at least 9 connections.
    let image = Image::random(51, &[4 * MIB + 7, 700_000, 250_000]);
    push(&registry, &image, "test/app:v1");
    let proxy = proxy_for(&registry, Fault::CutEvery(512 * 1024));
    let d = Daemon::start();
    let client = d.client().await;
    let name = format!("{}/test/app:v1", proxy.host());

    let events = parse_events(&pull(&d, &name).success().stdout);
    let done = events.last().expect("events");
    assert_eq!(done["event"], "done", "{events:?}");
    assert_eq!(done["target"]["digest"], image.manifest.digest.as_str());
    assert_image_stored(&client, &image).await;
    rpc::assert_verify_clean(&client).await;
    assert_eq!(image_names(&d), vec![name.clone()]);

    let total = image.total_bytes();
    let down = proxy.bytes_down();
    assert!(
        down * 10 < total * 13,
        "the proxy carried {down} bytes for an image of {total}: blobs restarted instead of resuming"
    );
    let resumed: Vec<_> = of_kind(&events, "blob_started")
        .into_iter()
        .filter(|e| e["resume_offset"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert!(
        !resumed.is_empty(),
        "no blob_started event resumed: {events:?}"
    );
    let partial = proxy
        .requests()
        .iter()
        .filter(|e| e.status == Some(206))
        .count();
    assert!(
        partial > 0,
        "{} resumes but no ranged (206) answer: {:?}",
        resumed.len(),
        proxy.requests()
    );
}

/// A registry whose big layer arrives with one byte flipped: distd refetches
/// it once from scratch, then fails the pull with one line saying the digest
/// does not match, naming the blob and the registry; no image, no bad blob,
/// a clean store.
/// Once the registry is healthy the same pull succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_body_byte_is_refetched_once_then_fails_the_pull_naming_digest_and_registry() {
    let registry = Registry::start();
    let image = Image::random(61, &[2 * MIB + 3, 120_000]);
    let big = &image.layers[0];
    push(&registry, &image, "test/app:v1");
    let proxy = proxy_for(
        &registry,
        Fault::FlipBodyByte {
            min_body: MIB as u64,
        },
    );
    let d = Daemon::start();
    let client = d.client().await;
    let name = format!("{}/test/app:v1", proxy.host());

    let failed = pull(&d, &name);
    let line = failed.failure();
    for needle in [
        "does not match its digest",
        "fetched 2 times",
        "nothing was stored",
        &big.digest,
        &proxy.host(),
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
    assert_eq!(
        proxy.blob_gets(&big.digest),
        2,
        "the corrupt layer should be fetched twice: {:?}",
        proxy.requests()
    );
    assert_eq!(proxy.blob_served(&big.digest), 2);
    assert!(image_names(&d).is_empty(), "a failed pull named an image");
    expect_code(
        rpc::info(&client, &big.digest).await,
        Code::NotFound,
        "the corrupt layer",
    );
    let ingests = rpc::ingests(&client).await.expect("ListIngests");
    assert!(
        !ingests
            .iter()
            .any(|i| i.r#ref == format!("pull-{}", big.digest)),
        "the corrupt layer's ingest was kept: {ingests:?}"
    );
    rpc::assert_verify_clean(&client).await;

    proxy.set_fault(Fault::None);
    let events = parse_events(&pull(&d, &name).success().stdout);
    assert_eq!(events.last().expect("events")["event"], "done");
    assert_eq!(proxy.blob_served(&big.digest), 3);
    assert_image_stored(&client, &image).await;
    rpc::assert_verify_clean(&client).await;
    assert_eq!(image_names(&d), vec![name]);
}

/// distd killed with SIGKILL while a 16 MiB layer is partly in its ingest:
/// after a restart on the same root the pull resumes that layer from the
/// ingest's offset, so the second pull moves less than the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_with_the_daemon_resumes_its_partial_layer_after_a_restart() {
    let registry = Registry::start();
    let image = Image::random(71, &[16 * MIB, 300_000]);
    let big = &image.layers[0];
    push(&registry, &image, "test/app:v1");
    let stall_at = 6 * MIB as u64;
    let proxy = proxy_for(&registry, Fault::StallAfter(stall_at));
    let mut d = Daemon::start();
    let name = format!("{}/test/app:v1", proxy.host());

    let mut first = distctl_command(&d, args!["--json", "pull", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start distctl pull");
    let ingest_ref = format!("pull-{}", big.digest);
    let partial = {
        let client = d.client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ingests = rpc::ingests(&client).await.expect("ListIngests");
            let offset = ingests
                .iter()
                .find(|i| i.r#ref == ingest_ref)
                .map_or(0, |i| i.offset);
            if offset > 0 && proxy.bytes_down() >= stall_at {
                break offset;
            }
            assert!(
                Instant::now() < deadline,
                "no partial ingest of the big layer within 60 s: {ingests:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        (partial as u64) < big.size(),
        "the stalled layer is complete"
    );
    d.kill9();
    let status = first.wait().expect("wait for the first distctl");
    assert!(!status.success(), "the pull survived its daemon's SIGKILL");

    d.restart();
    proxy.set_fault(Fault::None);
    let before = proxy.bytes_down();
    let events = parse_events(&pull(&d, &name).success().stdout);
    let carried = proxy.bytes_down() - before;
    assert!(
        carried < image.total_bytes(),
        "the second pull carried {carried} bytes of an image of {}",
        image.total_bytes()
    );
    let started = of_kind(&events, "blob_started")
        .into_iter()
        .find(|e| e["digest"] == big.digest.as_str())
        .unwrap_or_else(|| panic!("no blob_started for the big layer: {events:?}"));
    assert!(
        started["resume_offset"].as_u64().unwrap_or(0) > 0,
        "the big layer restarted from 0 (the ingest had {partial} bytes): {started}"
    );
    let client = d.client().await;
    assert_image_stored(&client, &image).await;
    rpc::assert_verify_clean(&client).await;
}

/// Pulls at once of eight images that share a base layer: all succeed and
/// the proxy's log shows every blob fetched exactly once (the daemon shares
/// concurrent downloads and skips blobs it has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_pulls_of_images_sharing_a_layer_fetch_every_blob_once() {
    const IMAGES: u64 = 8;
    let registry = Registry::start();
    let base = oci::layer(8_100, 2 * MIB);
    let images: Vec<Image> = (0..IMAGES)
        .map(|i| {
            let unique = oci::layer(8_200 + i, 200_000 + i as usize * 50_000);
            Image::from_layers(8_300 + i, vec![base.clone(), unique])
        })
        .collect();
    for (i, image) in images.iter().enumerate() {
        push(&registry, image, &format!("test/app{i}:v{i}"));
    }
    let proxy = proxy_for(&registry, Fault::None);
    let d = Daemon::start();
    let names: Vec<String> = (0..IMAGES)
        .map(|i| format!("{}/test/app{i}:v{i}", proxy.host()))
        .collect();

    std::thread::scope(|scope| {
        let pulls: Vec<_> = names
            .iter()
            .map(|name| {
                let d = &d;
                scope.spawn(move || pull(d, name))
            })
            .collect();
        for pulled in pulls {
            pulled.join().expect("a pull thread").success();
        }
    });

    let mut digests: Vec<String> = images.iter().flat_map(Image::digests).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len() as u64, 1 + 3 * IMAGES);
    for digest in &digests {
        assert_eq!(
            (proxy.blob_gets(digest), proxy.blob_served(digest)),
            (1, 1),
            "{digest} was not fetched exactly once: {:?}",
            proxy.requests()
        );
    }
    let client = d.client().await;
    for image in &images {
        assert_image_stored(&client, image).await;
    }
    let mut listed = image_names(&d);
    listed.sort();
    assert_eq!(listed, names);
    rpc::assert_verify_clean(&client).await;
}

/// A pull that fails halfway leaves its committed blobs and its partial
/// ingest under its lease: `distctl gc` keeps them while the lease lives and
/// removes them all once it has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_is_collected_once_its_lease_expires() {
    let registry = Registry::start();
    let image = Image::random(91, &[4 * MIB, 100_000]);
    let big = &image.layers[0];
    push(&registry, &image, "test/app:v1");
    let proxy = proxy_for(&registry, Fault::RefuseAfter(2 * MIB as u64));
    let d = Daemon::start_with(DaemonOpts::with_config(
        "[transfer]\npull_lease_ttl = \"5s\"\n",
    ));
    let client = d.client().await;
    let name = format!("{}/test/app:v1", proxy.host());

    let failed = pull(&d, &name);
    let line = failed.failure();
    let failed_at = Instant::now();
    // Every blob in flight broke off; whichever gave up first is named.
    assert!(
        line.contains(&proxy.host()) && image.blobs().iter().any(|b| line.contains(&b.digest)),
        "the failure should name the registry and a blob it broke off: {line}"
    );
    let committed: Vec<String> = parse_events(&failed.stdout)
        .iter()
        .filter(|e| e["event"] == "blob_done")
        .map(|e| e["digest"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        committed.contains(&image.manifest.digest),
        "the manifest was not committed before the failure: {committed:?}"
    );
    let ingest_ref = format!("pull-{}", big.digest);

    let gc = distctl(&d, args!["--json", "gc"]).success().json();
    assert!(
        failed_at.elapsed() < Duration::from_secs(5),
        "too slow to collect within the lease's 5 s; the machine is overloaded"
    );
    assert_eq!(
        gc["removed_count"], 0,
        "gc removed a live lease's blobs: {gc}"
    );
    assert_eq!(gc["removed_ingests"], serde_json::json!([]), "{gc}");
    assert_eq!(gc["removed_leases"], serde_json::json!([]), "{gc}");
    for digest in &committed {
        assert!(
            rpc::info(&client, digest).await.is_ok(),
            "gc removed {digest}, which the failed pull's lease holds"
        );
    }
    let ingests = rpc::ingests(&client).await.expect("ListIngests");
    assert!(
        ingests
            .iter()
            .any(|i| i.r#ref == ingest_ref && i.offset > 0),
        "the big layer's partial ingest is gone: {ingests:?}"
    );

    poll_until(
        Duration::from_secs(20),
        "gc to collect the failed pull's content",
        || {
            distctl(&d, args!["gc"]).success();
            let usage = distctl(&d, args!["--json", "df"]).success().json();
            (usage["blobs"]["count"] == 0 && usage["ingests"]["count"] == 0).then_some(())
        },
    );
    assert!(rpc::ingests(&client).await.expect("ListIngests").is_empty());
    let usage = rpc::usage(&client).await.expect("Usage");
    assert_eq!((usage.blob_count, usage.ingest_count), (0, 0), "{usage:?}");
    rpc::assert_verify_clean(&client).await;
}
