//! A real S3-compatible server for tests: `moto_server` (moto's stand-alone
//! server) on a free loopback port, and the keys Distribution's storage
//! layout gives a registry's content in a bucket ([`RegistryLayout`]).
//!
//! The harness talks to moto with a few plain HTTP/1.1 requests of its own
//! (no SDK, no signatures): moto accepts them as long as it does not check
//! credentials, which it does only after [`S3Server::require_auth`]. A
//! registry storing into a bucket is [`crate::registry::RegistryBuilder::s3`].
//!
//! moto is installed by `./test.sh` (`pip install "moto[server]"`). A
//! missing `moto_server` fails the test saying so; nothing is skipped.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::poll_until;

mod http;

pub use http::{HttpAnswer, http};
use http::{encode_key, encode_query, http_ok, object_path, xml_values};

/// moto's stand-alone server.
pub const MOTO_BIN: &str = "moto_server";

/// An `Authorization` header for requests moto does not check (before
/// [`S3Server::require_auth`]): it routes them to S3 and takes them as
/// authenticated, so objects stored `private` are served.
pub const UNCHECKED_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
     Credential=test/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=unchecked";

/// How long moto gets to answer HTTP after it is started (it imports a lot
/// of Python first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one harness request to moto may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `moto_server`'s path on `$PATH`; panics saying how to install it when it
/// is missing.
pub fn require_moto() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(MOTO_BIN))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{MOTO_BIN}` is not installed: run ./test.sh, which installs the tools the \
                 tests need, or `pip install \"moto[server]\"`"
            )
        })
}

/// Static credentials moto knows (made by [`S3Server::require_auth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// A running `moto_server`; dropping it kills and reaps the process (its
/// buckets live in its memory only) and removes its log.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// Whether moto checks credentials now (the harness's own unsigned
    /// requests are refused then).
    auth: bool,
}

impl S3Server {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` on a free port, its output
    /// in a log file, and waits until it answers HTTP.
    pub fn start() -> S3Server {
        let moto = require_moto();
        let dir = tempfile::Builder::new()
            .prefix("distd-moto-")
            .tempdir()
            .expect("create moto's directory");
        let port = crate::registry::free_port();
        let log = fs::File::create(dir.path().join("moto.log")).expect("create moto.log");
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            // Credentials are checked only once require_auth says so.
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let mut server = S3Server {
            child: Some(child),
            port,
            dir,
            auth: false,
        };
        poll_until(START_TIMEOUT, "moto_server to answer HTTP", || {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("moto_server exited with {status}:\n{}", server.log());
            }
            http(port, "GET", "/moto-api/", &[], b"").ok().map(|_| ())
        });
        server
    }

    /// `http://127.0.0.1:PORT`, the endpoint S3 clients are given.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (e.g. to put a proxy in front of it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything moto logged so far (one line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Creates bucket `name` (`PUT /<name>`).
    pub fn create_bucket(&self, name: &str) {
        let answer = self.request("PUT", &format!("/{}", encode_key(name)), b"");
        self.expect(&answer, &[200], &format!("create bucket {name}"));
    }

    /// Stores `bytes` as `bucket`/`key` (`PUT /<bucket>/<key>`).
    pub fn put_key(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let answer = self.request("PUT", &object_path(bucket, key), bytes);
        self.expect(&answer, &[200], &format!("put {bucket}/{key}"));
    }

    /// The bytes of `bucket`/`key`, or `None` when there is no such key.
    pub fn get_key(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let answer = self.request("GET", &object_path(bucket, key), b"");
        if answer.status == 404 {
            return None;
        }
        self.expect(&answer, &[200], &format!("get {bucket}/{key}"));
        Some(answer.body)
    }

    /// Deletes `bucket`/`key` (`DELETE /<bucket>/<key>`), which must exist.
    pub fn delete_key(&self, bucket: &str, key: &str) {
        assert!(
            self.get_key(bucket, key).is_some(),
            "cannot delete {bucket}/{key}: no such key"
        );
        let answer = self.request("DELETE", &object_path(bucket, key), b"");
        self.expect(&answer, &[200, 204], &format!("delete {bucket}/{key}"));
    }

    /// Every key of `bucket` under `prefix`, sorted (`GET
    /// /<bucket>?list-type=2&prefix=…`, following continuation tokens).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!(
                "/{}?list-type=2&prefix={}",
                encode_key(bucket),
                encode_query(prefix)
            );
            if let Some(token) = &token {
                target.push_str(&format!("&continuation-token={}", encode_query(token)));
            }
            let answer = self.request("GET", &target, b"");
            self.expect(&answer, &[200], &format!("list {bucket}/{prefix}"));
            let xml = String::from_utf8_lossy(&answer.body);
            keys.extend(xml_values(&xml, "Key"));
            token = (xml_values(&xml, "IsTruncated").first().map(String::as_str) == Some("true"))
                .then(|| xml_values(&xml, "NextContinuationToken").into_iter().next())
                .flatten();
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// Makes moto check credentials from now on: creates an IAM user allowed
    /// `s3:*`, with an access key, and returns that key; every request
    /// signed otherwise (wrong key id, wrong secret) is refused with 403.
    /// The harness's own requests are unsigned, so [`S3Server::create_bucket`],
    /// [`S3Server::put_key`], … no longer work afterwards: set the bucket up
    /// first.
    pub fn require_auth(&mut self) -> S3Credentials {
        assert!(!self.auth, "require_auth was called already");
        let user = "distd-tests";
        self.iam(&[("Action", "CreateUser"), ("UserName", user)]);
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "s3-all"),
            ("PolicyDocument", policy),
        ]);
        let created = self.iam(&[("Action", "CreateAccessKey"), ("UserName", user)]);
        let field = |name: &str| {
            xml_values(&created, name)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("CreateAccessKey answered no {name}: {created}"))
        };
        let credentials = S3Credentials {
            access_key_id: field("AccessKeyId"),
            secret_access_key: field("SecretAccessKey"),
        };
        // moto checks credentials once it has served this many actions
        // without (counted from now): none.
        let answer = http_ok(
            self.port,
            "POST",
            "/moto-api/reset-auth",
            &[("Content-Type", "text/plain")],
            b"0",
        );
        self.expect(
            &answer,
            &[200],
            "turn moto's auth on (/moto-api/reset-auth)",
        );
        self.auth = true;
        credentials
    }

    /// One IAM query action (form-encoded, `Version` added), answered 200;
    /// returns the XML answer. moto routes an unsigned request by the
    /// service in its `Authorization` header, which it does not check yet.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
            .collect();
        form.push("Version=2010-05-08".to_owned());
        let body = form.join("&");
        let answer = http_ok(
            self.port,
            "POST",
            "/",
            &[
                (
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=setup/20240101/us-east-1/iam/aws4_request, \
                     SignedHeaders=host, Signature=none",
                ),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        );
        let what = format!("IAM {}", params[0].1);
        self.expect(&answer, &[200], &what);
        String::from_utf8_lossy(&answer.body).into_owned()
    }

    /// An unsigned S3 request to moto, which must not be checking
    /// credentials. It carries an `Authorization` header all the same (which
    /// moto does not check then): without one moto takes the request as
    /// anonymous and refuses it objects the registry stored `private`.
    fn request(&self, method: &str, target: &str, body: &[u8]) -> HttpAnswer {
        assert!(
            !self.auth,
            "the harness's unsigned {method} {target} would be refused: moto checks \
             credentials since require_auth"
        );
        http_ok(
            self.port,
            method,
            target,
            &[("Authorization", UNCHECKED_AUTHORIZATION)],
            body,
        )
    }

    /// Panics naming `what` unless `answer`'s status is one of `statuses`.
    #[track_caller]
    fn expect(&self, answer: &HttpAnswer, statuses: &[u16], what: &str) {
        assert!(
            statuses.contains(&answer.status),
            "{what}: moto answered {}: {}\nmoto log:\n{}",
            answer.status,
            String::from_utf8_lossy(&answer.body),
            self.log()
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        if std::thread::panicking() {
            let log = self.log();
            // The last requests are the interesting ones.
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "==== moto log (last {} lines) ====\n{}\n==== end of moto log ====",
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The keys Distribution's storage driver gives a registry's content under
/// its `rootdirectory` (`<root>/docker/registry/v2/…`), to read or forge
/// them in a bucket.
#[derive(Debug, Clone)]
pub struct RegistryLayout {
    /// `<root>/docker/registry/v2` without a leading `/`.
    base: String,
}

impl RegistryLayout {
    /// The layout under `root_directory` (e.g. `/root1`; `""` for the
    /// bucket's top).
    pub fn new(root_directory: &str) -> RegistryLayout {
        let root = root_directory.trim_matches('/');
        let base = if root.is_empty() {
            "docker/registry/v2".to_owned()
        } else {
            format!("{root}/docker/registry/v2")
        };
        RegistryLayout { base }
    }

    /// `<root>/docker/registry/v2`: the prefix of every key.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `…/blobs/sha256/<first two hex>/<hex>/data`: the blob's bytes.
    pub fn blob_data(&self, digest: &str) -> String {
        let hex = hex_of(digest);
        format!("{}/blobs/sha256/{}/{hex}/data", self.base, &hex[..2])
    }

    /// `…/repositories/<repo>`: every key of repository `repo`.
    pub fn repository(&self, repo: &str) -> String {
        format!("{}/repositories/{repo}", self.base)
    }

    /// `…/repositories/<repo>/_layers/sha256/<hex>/link`: `repo` may serve
    /// the blob (a layer or config).
    pub fn layer_link(&self, repo: &str, digest: &str) -> String {
        format!(
            "{}/_layers/sha256/{}/link",
            self.repository(repo),
            hex_of(digest)
        )
    }

    /// `…/_manifests/revisions/sha256/<hex>/link`: `repo` has the manifest.
    pub fn revision_link(&self, repo: &str, digest: &str) -> String {
        format!(
            "{}/_manifests/revisions/sha256/{}/link",
            self.repository(repo),
            hex_of(digest)
        )
    }

    /// `…/_manifests/tags/<tag>/current/link`: the tag's manifest digest.
    pub fn tag_current_link(&self, repo: &str, tag: &str) -> String {
        format!(
            "{}/_manifests/tags/{tag}/current/link",
            self.repository(repo)
        )
    }

    /// `…/_manifests/tags/<tag>/index/sha256/<hex>/link`: the tag's history.
    pub fn tag_index_link(&self, repo: &str, tag: &str, digest: &str) -> String {
        format!(
            "{}/_manifests/tags/{tag}/index/sha256/{}/link",
            self.repository(repo),
            hex_of(digest)
        )
    }
}

/// The hex of a `sha256:` digest.
fn hex_of(digest: &str) -> &str {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{digest:?} is not a sha256 digest"));
    assert!(hex.len() == 64, "{digest:?} is not a sha256 digest");
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys() {
        let layout = RegistryLayout::new("/root1");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            layout.blob_data(&digest),
            format!(
                "root1/docker/registry/v2/blobs/sha256/ab/{}/data",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            layout.tag_current_link("team/app", "v1"),
            "root1/docker/registry/v2/repositories/team/app/_manifests/tags/v1/current/link"
        );
        assert_eq!(RegistryLayout::new("").base(), "docker/registry/v2");
    }
}
