//! `distctl login`, `logout` and `inspect` through a real distd against a
//! real registry (Distribution 2.8).

use std::io::Write as _;
use std::process::Stdio;

use distd_tests::cli::{CliOutput, distctl_command};
use distd_tests::oci::Image;
use distd_tests::registry::{MultiArch, Registry};
use distd_tests::rpc;
use distd_tests::{Daemon, DaemonOpts, args, distctl};

/// `distctl login REGISTRY -u USER --password-stdin`, with `password` piped in.
fn login(d: &Daemon, registry: &str, user: &str, password: &str) -> CliOutput {
    let mut command = distctl_command(
        d,
        args!["--json", "login", registry, "-u", user, "--password-stdin"],
    );
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = format!("{command:?}");
    let mut child = command.spawn().expect("run distctl login");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let output = child.wait_with_output().expect("wait for distctl login");
    CliOutput {
        command: line,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A wrong password is refused and stores nothing; the right one is checked,
/// stored in the daemon's Docker config.json (0600) and used by the next
/// pull; logout removes it, and the pull is refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_checked_credentials_that_pulls_use_until_logout() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let image = Image::random(51, &[40_000]);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1");
    registry.push_layout(layout.path(), "team/private:v1");
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(DaemonOpts {
        env: vec![(
            "DOCKER_CONFIG".to_owned(),
            home.path().join(".docker").display().to_string(),
        )],
        ..DaemonOpts::default()
    });
    let host = registry.host();
    let name = format!("{host}/team/private:v1");
    let config_json = home.path().join(".docker/config.json");

    let refused = login(&d, &host, "alice", "wrong").failure().to_owned();
    assert!(refused.contains("refused the credentials"), "{refused}");
    assert!(
        !config_json.exists(),
        "a refused login wrote {config_json:?}"
    );
    let line = distctl(&d, args!["pull", &name]).failure().to_owned();
    assert!(line.contains("distctl login"), "{line}");

    let done = login(&d, &host, "alice", "s3cret").success().json();
    assert_eq!(done["stored_in"], config_json.display().to_string());
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_json).unwrap()).unwrap();
    // base64("alice:s3cret")
    assert_eq!(stored["auths"][&host]["auth"], "YWxpY2U6czNjcmV0");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config_json)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "config.json is readable by others");

    distctl(&d, args!["pull", &name]).success();
    let client = d.client().await;
    for blob in image.blobs() {
        assert!(rpc::info(&client, &blob.digest).await.is_ok());
    }

    distctl(&d, args!["logout", &host]).success();
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_json).unwrap()).unwrap();
    assert!(stored["auths"].get(&host).is_none(), "{stored}");
    let again = distctl(&d, args!["logout", &host]).failure().to_owned();
    assert!(again.contains("no credentials"), "{again}");
    distctl(&d, args!["images", "rm", &name]).success();
    let line = distctl(&d, args!["pull", &name]).failure().to_owned();
    assert!(line.contains("distctl login"), "{line}");
}

/// `inspect` shows the index's platforms, the chosen platform's manifest and
/// config and the size a pull would store, and stores nothing; a missing
/// tag names the reference tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reads_an_image_at_its_registry_without_storing_it() {
    let registry = Registry::start();
    let multi = MultiArch::random(61, &[70_000, 5_000]);
    let layout = tempfile::tempdir().unwrap();
    multi.write_layout(layout.path(), "multi");
    registry.push_index_layout(layout.path(), "test/multi:1");
    let d = Daemon::start();
    let name = format!("{}/test/multi:1", registry.host());
    let arm64 = &multi.images[1];

    let shown = distctl(
        &d,
        args!["--json", "inspect", "--platform", "linux/arm64", &name],
    )
    .success()
    .json();
    assert_eq!(shown["name"], name.as_str());
    assert_eq!(shown["target"]["digest"], multi.index.digest.as_str());
    assert_eq!(
        shown["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(shown["manifestDigest"], arm64.manifest.digest.as_str());
    assert_eq!(
        shown["manifest"],
        serde_json::from_slice::<serde_json::Value>(&arm64.manifest.bytes).unwrap()
    );
    assert_eq!(
        shown["config"],
        serde_json::from_slice::<serde_json::Value>(&arm64.config.bytes).unwrap()
    );
    let pulled_size: u64 = arm64.blobs().iter().map(|b| b.size()).sum::<u64>() + multi.index.size();
    assert_eq!(shown["size"], pulled_size);

    let human = distctl(&d, args!["inspect", "--platform", "linux/arm64", &name]);
    let human = &human.success().stdout;
    assert!(human.contains(&arm64.layers[0].digest), "{human}");

    let client = d.client().await;
    let usage = rpc::usage(&client).await.expect("Usage");
    assert_eq!(
        usage.referenced_count + usage.reclaimable_count,
        0,
        "inspect stored content"
    );

    let missing = format!("{}/test/multi:nope", registry.host());
    let line = distctl(&d, args!["inspect", &missing]).failure().to_owned();
    assert!(
        line.contains("nope") && line.contains("not found"),
        "{line}"
    );
}
