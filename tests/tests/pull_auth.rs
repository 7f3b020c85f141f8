//! `distctl pull` from registries that need trust or credentials: TLS with a
//! private CA (from the config or `certs.d`), mutual TLS, bearer-token auth,
//! and credentials from Docker's `config.json` (`auths` and `credHelpers`).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use distd_tests::certs::TestPki;
use distd_tests::oci::Image;
use distd_tests::registry::Registry;
use distd_tests::token_server::{TokenServer, base64};
use distd_tests::{CliOutput, Daemon, DaemonOpts, args, distctl, rpc};

/// Pushes a random image with layers of `sizes` to `registry` as `repo_tag`.
fn push_image(registry: &Registry, seed: u64, sizes: &[usize], repo_tag: &str) -> Image {
    let image = Image::random(seed, sizes);
    let layout = tempfile::tempdir().expect("a layout directory");
    image.write_layout(layout.path(), "latest");
    registry.push_layout(layout.path(), repo_tag);
    image
}

/// `distctl pull <registry>/<repo_tag>`.
fn pull(d: &Daemon, registry: &Registry, repo_tag: &str) -> CliOutput {
    distctl(d, args!["pull", format!("{}/{repo_tag}", registry.host())])
}

/// Asserts every blob of `image` is in `d`'s store with its size.
async fn assert_pulled(d: &Daemon, image: &Image) {
    let client = d.client().await;
    for blob in image.blobs() {
        let info = rpc::info(&client, &blob.digest).await.unwrap_or_else(|s| {
            panic!("{} {} not in the store: {s}", blob.media_type, blob.digest)
        });
        assert_eq!(info.size as u64, blob.size(), "{}", blob.digest);
    }
}

/// Asserts `d` has no image whose name contains `repo`.
fn assert_no_image(d: &Daemon, repo: &str) {
    let images = distctl(d, args!["--json", "images", "ls"]).success().json();
    assert!(!images.to_string().contains(repo), "{images}");
}

/// A TOML string of `path`.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Where a daemon with a config file looks for `host`'s certificates by
/// default: `certs.d/<host>/` next to its config (relative to its directory).
fn certs_d(registry: &Registry, file: &str) -> PathBuf {
    PathBuf::from("certs.d").join(registry.host()).join(file)
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A config file with no registry settings, so that defaults (such as the
/// certs directory next to it) apply.
const EMPTY_CONFIG: &str = "# no registry settings\n";

/// A TLS registry signed by a private CA is pulled from when the daemon's
/// config names the CA in `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_trusted_through_ca_file() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let registry = Registry::builder().tls(&pki).start();
    let image = push_image(&registry, 101, &[200_000, 30_000], "test/tls:v1");
    let config = format!(
        "[registries.\"{}\"]\nca_file = {}\n",
        registry.host(),
        toml_path(&pki.ca_cert)
    );
    let d = Daemon::start_with(DaemonOpts::with_config(&config));

    pull(&d, &registry, "test/tls:v1").success();
    assert_pulled(&d, &image).await;
}

/// Without the CA, a pull from the TLS registry fails (no fallback to plain
/// HTTP) with one line saying how to trust it; with the CA in
/// `certs.d/<host>/ca.crt` next to the config file it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_tls_registry_fails_until_its_ca_is_in_certs_d() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let registry = Registry::builder().tls(&pki).start();
    let image = push_image(&registry, 111, &[150_000], "test/untrusted:v1");
    let mut d = Daemon::start_with(DaemonOpts::with_config(EMPTY_CONFIG));

    let line = pull(&d, &registry, "test/untrusted:v1")
        .failure()
        .to_owned();
    assert!(
        line.contains("ca_file") && line.contains("certs.d"),
        "the error should say how to trust the registry's CA: {line}"
    );
    assert_no_image(&d, "untrusted");

    d.opts
        .files
        .push((certs_d(&registry, "ca.crt"), read(&pki.ca_cert)));
    d.restart();
    pull(&d, &registry, "test/untrusted:v1").success();
    assert_pulled(&d, &image).await;
}

/// A registry that requires a client certificate refuses a daemon that only
/// trusts its CA, with one line naming `client_cert` (no fallback to plain
/// HTTP); `client.cert`/`client.key` in `certs.d/<host>/`, or
/// `client_cert`/`client_key` in the config, get the pull through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let registry = Registry::builder().tls(&pki).require_client_cert().start();
    let image = push_image(&registry, 121, &[120_000, 40_000], "test/mtls:v1");

    let mut opts = DaemonOpts::with_config(EMPTY_CONFIG);
    opts.files
        .push((certs_d(&registry, "ca.crt"), read(&pki.ca_cert)));
    let mut d = Daemon::start_with(opts);
    let line = pull(&d, &registry, "test/mtls:v1").failure().to_owned();
    // The registry speaks TLS: distd must not fall back to plain HTTP (which
    // the registry answers with 400), and must say how to present a
    // client certificate.
    assert!(
        line.contains("client_cert") && !line.contains("400"),
        "the error should be the TLS failure, hinting at client_cert: {line}"
    );
    assert_no_image(&d, "mtls");

    d.opts
        .files
        .push((certs_d(&registry, "client.cert"), read(&pki.client_cert)));
    d.opts
        .files
        .push((certs_d(&registry, "client.key"), read(&pki.client_key)));
    d.restart();
    pull(&d, &registry, "test/mtls:v1").success();
    assert_pulled(&d, &image).await;

    let config = format!(
        "[registries.\"{}\"]\nca_file = {}\nclient_cert = {}\nclient_key = {}\n",
        registry.host(),
        toml_path(&pki.ca_cert),
        toml_path(&pki.client_cert),
        toml_path(&pki.client_key)
    );
    let configured = Daemon::start_with(DaemonOpts::with_config(&config));
    pull(&configured, &registry, "test/mtls:v1").success();
    assert_pulled(&configured, &image).await;
}

/// Behind token auth, the config's credentials buy a token that serves the
/// whole pull (cached, not fetched per blob); a wrong password fails with
/// one line saying to log in, and creates no image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_credentials_from_the_config() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let tokens = TokenServer::start(&pki, "bob", "t0ken-pw");
    let registry = Registry::builder().token_auth(&tokens).start();
    let image = push_image(
        &registry,
        131,
        &[90_000, 60_000, 30_000, 10_000],
        "test/tokened:v1",
    );
    let config = |password: &str| {
        format!(
            "[registries.\"{}\"]\nusername = \"bob\"\npassword = \"{password}\"\n",
            registry.host()
        )
    };

    let d = Daemon::start_with(DaemonOpts::with_config(&config("t0ken-pw")));
    let before = tokens.requests();
    pull(&d, &registry, "test/tokened:v1").success();
    assert_pulled(&d, &image).await;
    let fetched = tokens.requests() - before;
    assert!(
        (1..=2).contains(&fetched),
        "a pull of {} blobs fetched {fetched} tokens; token server log:\n{}",
        image.blobs().len(),
        tokens.log().join("\n")
    );

    let wrong = Daemon::start_with(DaemonOpts::with_config(&config("wrong")));
    let refused = tokens.refused();
    let line = pull(&wrong, &registry, "test/tokened:v1")
        .failure()
        .to_owned();
    assert!(line.contains("distctl login"), "{line}");
    assert!(
        tokens.refused() > refused,
        "the token server never refused the wrong password: {:?}",
        tokens.log()
    );
    assert_no_image(&wrong, "tokened");
}

/// Environment for a daemon whose home is `home`: Docker's config in
/// `home/.docker`, no podman auth file.
fn docker_env(home: &Path) -> Vec<(String, String)> {
    let var = |k: &str, v: PathBuf| (k.to_owned(), v.display().to_string());
    vec![
        var("HOME", home.to_owned()),
        var("DOCKER_CONFIG", home.join(".docker")),
        var("REGISTRY_AUTH_FILE", home.join("no-podman-auth.json")),
    ]
}

/// Writes `home/.docker/config.json`.
fn write_docker_config(home: &Path, config: &serde_json::Value) {
    fs::create_dir_all(home.join(".docker")).unwrap();
    fs::write(home.join(".docker/config.json"), config.to_string()).unwrap();
}

/// With no credentials in distd's config, those of Docker's `config.json`
/// are used: an `auths` entry, then a `credHelpers` helper found on PATH
/// and run with the registry on stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_dockers_config_json() {
    let registry = Registry::start_with_auth("carol", "d0cker-pw");
    let image = push_image(&registry, 141, &[80_000], "test/dockercreds:v1");
    let host = registry.host();

    // Control: an empty home has no credentials, so the pull is refused.
    let empty_home = tempfile::tempdir().unwrap();
    let anonymous = Daemon::start_with(DaemonOpts {
        env: docker_env(empty_home.path()),
        ..DaemonOpts::default()
    });
    let line = pull(&anonymous, &registry, "test/dockercreds:v1")
        .failure()
        .to_owned();
    assert!(line.contains("distctl login"), "{line}");

    let home = tempfile::tempdir().unwrap();
    write_docker_config(
        home.path(),
        &serde_json::json!({
            "auths": { host.as_str(): { "auth": base64(b"carol:d0cker-pw") } }
        }),
    );
    let d = Daemon::start_with(DaemonOpts {
        env: docker_env(home.path()),
        ..DaemonOpts::default()
    });
    pull(&d, &registry, "test/dockercreds:v1").success();
    assert_pulled(&d, &image).await;

    // A credential helper: docker-credential-distdtest on PATH.
    let helper_home = tempfile::tempdir().unwrap();
    let bin = helper_home.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let calls = helper_home.path().join("helper-calls.log");
    let helper = bin.join("docker-credential-distdtest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread -r server\necho \"$1 $server\" >> '{calls}'\n\
             case \"$1 $server\" in\n\
             \"get {host}\"|\"get https://{host}\"|\"get http://{host}\")\n\
             \x20 printf '{{\"ServerURL\":\"%s\",\"Username\":\"carol\",\"Secret\":\"d0cker-pw\"}}\\n' \"$server\";;\n\
             *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    write_docker_config(
        helper_home.path(),
        &serde_json::json!({ "credHelpers": { host.as_str(): "distdtest" } }),
    );
    let mut env = docker_env(helper_home.path());
    let path = std::env::var("PATH").unwrap_or_default();
    env.push(("PATH".to_owned(), format!("{}:{path}", bin.display())));
    let helped = Daemon::start_with(DaemonOpts {
        env,
        ..DaemonOpts::default()
    });
    pull(&helped, &registry, "test/dockercreds:v1").success();
    assert_pulled(&helped, &image).await;
    let calls = fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        calls
            .lines()
            .any(|l| l.starts_with("get ") && l.contains(&host)),
        "the helper was not asked for {host}: {calls:?}"
    );
}
