//! The daemon as a process: its socket, its lock on the root, its signals,
//! and distctl's message when it is not there.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use distd_tests::data::{random_bytes, sha256};
use distd_tests::oci::Image;
use distd_tests::rpc::{self, Ingest};
use distd_tests::{
    Daemon, DaemonOpts, MIB, args, bin_path, cli::distctl_at, distctl, pb, poll_until,
};

/// The socket is created mode 0660 in a directory the daemon makes no more
/// open than 0750.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_in_a_directory_closed_to_others() {
    let d = Daemon::start_with(DaemonOpts {
        precreate_socket_dir: false,
        ..DaemonOpts::default()
    });
    let meta = std::fs::metadata(d.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "socket mode is {:o}",
        meta.permissions().mode() & 0o7777
    );
    let dir_mode = std::fs::metadata(d.socket().parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        dir_mode & !0o750,
        0,
        "the socket's directory must be 0750 or tighter, is {dir_mode:o}"
    );
    d.client().await.version().await.expect("Version");
}

/// Runs `distd --root ROOT --socket SOCKET` to its exit (20 s at most);
/// returns the status and stderr.
fn run_to_exit(root: &Path, socket: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(bin_path("distd"))
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second daemon");
    let status = poll_until(Duration::from_secs(20), "the second daemon to exit", || {
        child.try_wait().expect("wait for the second daemon")
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// A second daemon on a root in use exits non-zero saying so, and the first
/// keeps serving on its socket (the second must not take it over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_root_refuses_to_start() {
    let mut d = Daemon::start();
    let other_socket = d.dir().join("run").join("other.sock");
    for socket in [d.socket().to_path_buf(), other_socket] {
        let (status, stderr) = run_to_exit(d.root(), &socket);
        assert!(
            !status.success(),
            "a second daemon on {} must fail: {status}\n{stderr}",
            socket.display()
        );
        let lower = stderr.to_lowercase();
        assert!(
            lower.contains("in use") || lower.contains("lock"),
            "the second daemon should say the root is in use / locked: {stderr}"
        );
        assert!(d.is_running(), "the first daemon keeps running");
        d.client()
            .await
            .version()
            .await
            .expect("the first daemon still answers on its socket");
    }
}

/// A socket file left by `kill -9` is replaced at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_after_kill_9() {
    let mut d = Daemon::start();
    d.kill9();
    assert!(
        d.socket().exists(),
        "precondition: a killed daemon leaves its socket file"
    );
    d.restart();
    let version = d
        .client()
        .await
        .version()
        .await
        .expect("Version after restart");
    assert_eq!(version.api, "distd.v1");
    distctl(&d, args!["version"]).success();
}

/// SIGTERM: exit status 0 and the socket file removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_removes_the_socket() {
    let mut d = Daemon::start();
    // A connection was made, so shutdown has a client to let go of.
    let client = d.client().await;
    client.version().await.unwrap();
    let status = d.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}\n{}",
        d.log()
    );
    assert!(
        !d.socket().exists(),
        "the socket file is removed on a clean exit"
    );
}

/// With no daemon on the socket, distctl says so in one line.
#[test]
fn distctl_without_a_daemon_says_it_cannot_reach_it() {
    let dir = tempfile::Builder::new()
        .prefix("dt-")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = distctl_at(&socket, ["version"]);
    let line = out.failure();
    assert!(
        line.starts_with("error: cannot reach distd at"),
        "unexpected message: {line}"
    );
}

/// Images, leases and blobs survive a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_a_restart() {
    let mut d = Daemon::start();
    let image = Image::random(3, &[MIB, 1234]);
    let layout = d.work().join("layout");
    image.write_layout(&layout, "v1");
    distctl(
        &d,
        args!["import", &layout, "--name", "example.com/persist:v1"],
    )
    .success();
    let blob = random_bytes(40, 300_000);
    let digest = {
        let client = d.client().await;
        rpc::create_lease(&client, "keep").await.unwrap();
        rpc::put(&client, &Ingest::new("leased").lease("keep"), &blob)
            .await
            .unwrap()
            .digest
    };
    assert_eq!(d.stop().code(), Some(0));

    d.restart();
    let client = d.client().await;
    let record = rpc::image(&client, "example.com/persist:v1")
        .await
        .expect("the image survives");
    assert_eq!(record.target.unwrap().digest, image.manifest.digest);
    let leases = client
        .leases()
        .list(pb::ListLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(
        leases.iter().any(|l| l.id == "keep"),
        "the lease survives: {leases:#?}"
    );
    assert_eq!(rpc::read(&client, &digest).await.unwrap(), blob);
    for b in image.blobs() {
        assert_eq!(
            sha256(&rpc::read(&client, &b.digest).await.unwrap()),
            b.digest
        );
    }
    let collected = rpc::collect(&client, false).await.unwrap();
    assert!(
        collected.removed_digests.is_empty(),
        "image and lease still protect their content after a restart: {collected:?}"
    );
    rpc::assert_verify_clean(&client).await;
}

/// `[log] format = "json"` makes every log line a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_json_object_per_line() {
    let mut d = Daemon::start_with(DaemonOpts::with_config("[log]\nformat = \"json\"\n"));
    d.client().await.version().await.unwrap();
    assert_eq!(d.stop().code(), Some(0));
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("---- distd start"))
        .collect();
    assert!(!lines.is_empty(), "the daemon logged nothing");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value.is_object(), "log line is not a JSON object: {line}");
    }
}
