//! A real origin registry for tests: Debian's `docker-registry`
//! (Distribution 2.8) on a free loopback port, filled with `skopeo`;
//! plain HTTP or TLS (optionally requiring client certificates), anonymous
//! or behind htpasswd or token auth ([`Registry::builder`]).
//!
//! Its storage is a directory of its own, or a bucket of an S3-compatible
//! server ([`RegistryBuilder::s3`], e.g. [`crate::s3::S3Server`]); a
//! registry can be stopped and started again on the same storage
//! ([`Registry::stop`], [`Registry::restart`]).
//!
//! The tools are installed by `./test.sh` (its `APT_TOOLS` list). A missing
//! tool fails the test with a message saying so; nothing is skipped.

use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use distd_sdk::media;
use serde_json::json;
use tempfile::TempDir;

use crate::certs::TestPki;
use crate::oci::{Blob, Image};
use crate::poll_until;
use crate::token_server::{self, TokenServer};

/// The registry binary of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "docker-registry";

/// `command`'s path on `$PATH`; panics telling to run `./test.sh` when
/// it is missing.
pub fn require_tool(command: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{command}` is not installed (Debian package {package}): run ./test.sh, \
                 which installs the tools the tests need"
            )
        })
}

/// A running registry; dropping it kills the process and removes its storage
/// (a bucket's keys stay: they are the S3 server's).
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// The `docker-registry` binary it runs.
    bin: PathBuf,
    /// Credentials `skopeo` pushes with (`--dest-creds`).
    creds: Option<(String, String)>,
    /// Whether the registry serves HTTPS.
    tls: bool,
}

/// How a [`RegistryBuilder`] authenticates clients.
#[derive(Debug, Clone)]
enum Auth {
    /// Anyone may pull and push.
    None,
    /// HTTP Basic against an htpasswd file of one user.
    Htpasswd { user: String, password: String },
    /// Bearer tokens from a token server.
    Token {
        realm: String,
        root_cert_bundle: PathBuf,
        user: String,
        password: String,
    },
}

/// Where a [`RegistryBuilder`]'s registry stores content: a bucket of an
/// S3-compatible server (Distribution's `s3` storage driver).
#[derive(Debug, Clone)]
struct S3Storage {
    endpoint: String,
    bucket: String,
    root_directory: String,
    access_key: String,
    secret_key: String,
}

/// Options of a registry to start: TLS, client certificates, basic or
/// token auth, S3 storage. Made by [`Registry::builder`];
/// [`RegistryBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    /// The PKI whose server certificate the registry serves HTTPS with.
    tls: Option<TestPki>,
    /// Require client certificates signed by the PKI's CA (mutual TLS).
    client_certs: bool,
    auth: Auth,
    /// A bucket instead of the registry's own directory.
    s3: Option<S3Storage>,
}

impl RegistryBuilder {
    /// Serve HTTPS with `pki`'s server certificate (`http.tls`); pushes
    /// trust `pki`'s CA.
    pub fn tls(mut self, pki: &TestPki) -> RegistryBuilder {
        self.tls = Some(pki.clone());
        self
    }

    /// Require a client certificate signed by the CA of the PKI given to
    /// [`RegistryBuilder::tls`] (`http.tls.clientcas`); pushes present
    /// the PKI's client certificate.
    pub fn require_client_cert(mut self) -> RegistryBuilder {
        self.client_certs = true;
        self
    }

    /// Require HTTP Basic auth as `user`:`password` (a bcrypt htpasswd file
    /// made by `htpasswd -Bbn`).
    pub fn basic_auth(mut self, user: &str, password: &str) -> RegistryBuilder {
        self.auth = Auth::Htpasswd {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        self
    }

    /// Require bearer tokens from `server` (`auth.token`); pushes log in to
    /// it with its user and password.
    pub fn token_auth(mut self, server: &TokenServer) -> RegistryBuilder {
        self.auth = Auth::Token {
            realm: server.realm(),
            root_cert_bundle: server.signing_cert().to_owned(),
            user: server.user().to_owned(),
            password: server.password().to_owned(),
        };
        self
    }

    /// Store content in `bucket` of the S3-compatible server at `endpoint`
    /// (e.g. [`crate::s3::S3Server::endpoint`]) under `root_directory`
    /// (e.g. `/root1`), path-style, plain HTTP, signing with access key
    /// `test`:`test` (see [`RegistryBuilder::s3_credentials`]), instead of
    /// a directory. Blobs are served by the registry itself (no redirects to
    /// the bucket).
    pub fn s3(mut self, endpoint: &str, bucket: &str, root_directory: &str) -> RegistryBuilder {
        self.s3 = Some(S3Storage {
            endpoint: endpoint.to_owned(),
            bucket: bucket.to_owned(),
            root_directory: root_directory.to_owned(),
            access_key: "test".to_owned(),
            secret_key: "test".to_owned(),
        });
        self
    }

    /// Sign S3 requests with these credentials (after [`RegistryBuilder::s3`]).
    pub fn s3_credentials(mut self, access_key: &str, secret_key: &str) -> RegistryBuilder {
        let s3 = self
            .s3
            .as_mut()
            .expect("s3_credentials needs s3(endpoint, bucket, root) first");
        s3.access_key = access_key.to_owned();
        s3.secret_key = secret_key.to_owned();
        self
    }

    /// The `storage:` section of the config.
    fn storage_section(&self, dir: &Path) -> String {
        let driver = match &self.s3 {
            None => format!(
                "  filesystem:\n    rootdirectory: {}\n",
                dir.join("data").display()
            ),
            Some(s3) => format!(
                "  s3:\n    accesskey: {}\n    secretkey: {}\n    region: us-east-1\n    \
                 regionendpoint: {}\n    bucket: {}\n    rootdirectory: {}\n    \
                 secure: false\n    v4auth: true\n    forcepathstyle: true\n  \
                 redirect:\n    disable: true\n",
                s3.access_key, s3.secret_key, s3.endpoint, s3.bucket, s3.root_directory
            ),
        };
        format!("storage:\n{driver}  delete:\n    enabled: true\n")
    }

    /// Starts the registry and waits until it answers.
    pub fn start(self) -> Registry {
        let registry_bin = require_tool(REGISTRY_BIN, "docker-registry");
        assert!(
            !self.client_certs || self.tls.is_some(),
            "require_client_cert needs tls(pki) too"
        );
        let dir = tempfile::Builder::new()
            .prefix("distd-registry-")
            .tempdir()
            .expect("create the registry's directory");
        let port = free_port();
        let (auth, creds) = self.auth_section(dir.path());
        let mut tls = String::new();
        if let Some(pki) = &self.tls {
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            );
            if self.client_certs {
                tls.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    pki.ca_cert.display()
                ));
            }
            // What skopeo's --dest-cert-dir reads: CA, and client cert/key.
            pki.write_certs_dir(&dir.path().join("skopeo-certs"), self.client_certs);
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             {}http:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            self.storage_section(dir.path())
        );
        fs::write(dir.path().join("config.yml"), config).expect("write the registry config");
        let mut registry = Registry {
            child: None,
            port,
            dir,
            bin: registry_bin,
            creds,
            tls: self.tls.is_some(),
        };
        registry.spawn_and_wait();
        registry
    }

    /// The `auth:` section of the config (files it needs written to `dir`)
    /// and the credentials pushes use.
    fn auth_section(&self, dir: &Path) -> (String, Option<(String, String)>) {
        match &self.auth {
            Auth::None => (String::new(), None),
            Auth::Htpasswd { user, password } => {
                let htpasswd = require_tool("htpasswd", "apache2-utils");
                let out = Command::new(htpasswd)
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd");
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                fs::write(dir.join("htpasswd"), &out.stdout).expect("write htpasswd");
                let section = format!(
                    "auth:\n  htpasswd:\n    realm: distd-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                );
                (section, Some((user.clone(), password.clone())))
            }
            Auth::Token {
                realm,
                root_cert_bundle,
                user,
                password,
            } => {
                let section = format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    \
                     rootcertbundle: {}\n",
                    token_server::SERVICE,
                    token_server::ISSUER,
                    root_cert_bundle.display()
                );
                (section, Some((user.clone(), password.clone())))
            }
        }
    }
}

impl Registry {
    /// An anonymous plain-HTTP registry.
    pub fn start() -> Registry {
        Registry::builder().start()
    }

    /// A plain-HTTP registry that requires HTTP Basic auth as
    /// `user`:`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::builder().basic_auth(user, password).start()
    }

    /// Options for a registry, starting from an anonymous plain-HTTP one.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            tls: None,
            client_certs: false,
            auth: Auth::None,
            s3: None,
        }
    }

    /// `127.0.0.1:PORT`, the registry part of references to it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Starts `docker-registry serve config.yml`, its output appended to
    /// `registry.log`, and waits until it answers `GET /v2/`.
    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "the registry is running already");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("open registry.log");
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            // Distribution's s3 driver panics (LoadCustomCABundleError) on a
            // CA bundle it cannot use; the tests' S3 server is plain HTTP.
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let port = self.port;
        // A TLS listener answers plain HTTP with a 400 before any handshake,
        // so the same probe serves both.
        poll_until(
            Duration::from_secs(20),
            "docker-registry to answer GET /v2/",
            || {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("docker-registry exited with {status}:\n{}", self.log());
                }
                answers_v2(port).then_some(())
            },
        );
    }

    /// Kills the registry process and reaps it; its storage stays. Requests
    /// to [`Registry::host`] are refused until [`Registry::restart`].
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the registry is running");
        child.kill().ok();
        child.wait().expect("reap docker-registry");
    }

    /// Starts the registry again on the same config, port and storage (after
    /// [`Registry::stop`]) and waits until it answers.
    pub fn restart(&mut self) {
        self.spawn_and_wait();
    }

    /// Whether the registry process runs (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The tags of repository `repo` the registry lists
    /// (`GET /v2/<repo>/tags/list`, through `skopeo list-tags`), sorted.
    pub fn list_tags(&self, repo: &str) -> Vec<String> {
        let mut command = self.skopeo();
        command.arg("list-tags");
        self.access_args(&mut command, "--");
        command.arg(format!("docker://{}/{repo}", self.host()));
        let out = self.run(command, &format!("skopeo list-tags {repo}"));
        let listed: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("skopeo list-tags printed no JSON ({e})"));
        let mut tags: Vec<String> = listed["Tags"]
            .as_array()
            .unwrap_or_else(|| panic!("skopeo list-tags printed no Tags: {listed}"))
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_owned())
            .collect();
        tags.sort();
        tags
    }

    /// The registry's log so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the OCI layout at `dir` as `repo_tag` (`repo:tag`) with
    /// `skopeo copy --preserve-digests` (with `--dest-creds` when the
    /// registry requires auth, trusting the test CA when it serves HTTPS).
    pub fn push_layout(&self, dir: &Path, repo_tag: &str) {
        self.push(dir, repo_tag, false);
    }

    /// Like [`Registry::push_layout`] for a layout whose image is an index,
    /// copying all of its manifests.
    pub fn push_index_layout(&self, dir: &Path, repo_tag: &str) {
        self.push(dir, repo_tag, true);
    }

    fn push(&self, dir: &Path, repo_tag: &str, all: bool) {
        let mut command = self.skopeo();
        command.args(["copy", "--preserve-digests"]);
        self.access_args(&mut command, "--dest-");
        if all {
            command.arg("--all");
        }
        command
            .arg(format!("oci:{}", dir.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()));
        self.run(command, &format!("skopeo copy to {repo_tag}"));
    }

    /// The bytes of the manifest (or index) `repo_ref` (`repo:tag` or
    /// `repo@digest`) as the registry serves them (`skopeo inspect --raw`).
    pub fn raw_manifest(&self, repo_ref: &str) -> Vec<u8> {
        let mut command = self.skopeo();
        command.args(["inspect", "--raw"]);
        self.access_args(&mut command, "--");
        command.arg(format!("docker://{}/{repo_ref}", self.host()));
        self.run(command, &format!("skopeo inspect --raw {repo_ref}"))
    }

    /// Copies the image `repo_ref` from the registry into an OCI layout at
    /// `dir`, tagged `tag`, keeping every digest (`skopeo copy
    /// --preserve-digests`; layers stay uncompressed).
    pub fn pull_layout(&self, repo_ref: &str, dir: &Path, tag: &str) {
        let mut command = self.skopeo();
        command.args([
            "copy",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ]);
        self.access_args(&mut command, "--src-");
        command
            .arg(format!("docker://{}/{repo_ref}", self.host()))
            .arg(format!("oci:{}:{tag}", dir.display()));
        self.run(command, &format!("skopeo copy from {repo_ref}"));
    }

    /// `skopeo` with an accept-anything policy and an auth file of its own.
    fn skopeo(&self) -> Command {
        let skopeo = require_tool("skopeo", "skopeo");
        let policy = self.dir.path().join("policy.json");
        fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("write the skopeo policy");
        let mut command = Command::new(skopeo);
        command.arg("--policy").arg(&policy).env(
            "REGISTRY_AUTH_FILE",
            self.dir.path().join("skopeo-auth.json"),
        );
        command
    }

    /// TLS and credential options of a skopeo command talking to this
    /// registry; `prefix` is `--dest-`, `--src-` or `--`.
    fn access_args(&self, command: &mut Command, prefix: &str) {
        if self.tls {
            command
                .arg(format!("{prefix}tls-verify=true"))
                .arg(format!("{prefix}cert-dir"))
                .arg(self.dir.path().join("skopeo-certs"));
        } else {
            command.arg(format!("{prefix}tls-verify=false"));
        }
        if let Some((user, password)) = &self.creds {
            command.arg(format!("{prefix}creds={user}:{password}"));
        }
    }

    /// Runs `command`; its stdout, or a panic saying `what` failed.
    fn run(&self, mut command: Command, what: &str) -> Vec<u8> {
        let out = command.output().expect("run skopeo");
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out.stdout
    }
}

/// The digests of every blob under an OCI layout's `blobs/sha256/`, sorted,
/// each checked against its bytes.
pub fn layout_blob_digests(dir: &Path) -> Vec<String> {
    let blobs = dir.join("blobs").join("sha256");
    let entries = fs::read_dir(&blobs)
        .unwrap_or_else(|e| panic!("read the layout's blobs {}: {e}", blobs.display()));
    let mut out: Vec<String> = entries
        .map(|entry| {
            let path = entry.expect("a layout blob").path();
            let name = format!(
                "sha256:{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let bytes = fs::read(&path).expect("read a layout blob");
            assert_eq!(
                crate::data::sha256(&bytes),
                name,
                "blob {} does not match its name",
                path.display()
            );
            name
        })
        .collect();
    out.sort();
    out
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// Whether an HTTP server on `port` answers `GET /v2/` (any status).
fn answers_v2(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// A multi-platform image: an OCI index over two single-platform images.
pub struct MultiArch {
    /// The index blob.
    pub index: Blob,
    /// The linux/amd64 and linux/arm64 images, in index order.
    pub images: Vec<Image>,
}

impl MultiArch {
    /// Two random images (`seed`, `seed + 1`) with the given layer sizes.
    pub fn random(seed: u64, layer_sizes: &[usize]) -> MultiArch {
        let images: Vec<Image> = (0..2)
            .map(|i| Image::random(seed + i, layer_sizes))
            .collect();
        let manifests: Vec<_> = images
            .iter()
            .zip(["amd64", "arm64"])
            .map(|(image, arch)| {
                let mut d = image.manifest.descriptor();
                d["platform"] = json!({ "os": "linux", "architecture": arch });
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        });
        let index = Blob::new(
            media::OCI_INDEX,
            serde_json::to_vec(&index).expect("serialize an index"),
        );
        MultiArch { index, images }
    }

    /// Writes an OCI layout at `dir` whose index.json names the index,
    /// tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) {
        for image in &self.images {
            image.write_layout(dir, tag);
        }
        let blobs = dir.join("blobs").join("sha256");
        fs::write(blobs.join(self.index.hex()), &self.index.bytes).expect("write the index blob");
        let mut descriptor = self.index.descriptor();
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let top =
            json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [descriptor] });
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec_pretty(&top).expect("serialize index.json"),
        )
        .expect("write index.json");
    }
}
