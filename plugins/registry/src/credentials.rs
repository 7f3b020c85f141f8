//! Where registry credentials come from, in order: explicit options, Docker's
//! `config.json` (`credHelpers`, `credsStore`, `auths`), podman's `auth.json`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use distd_sdk::reference::DOCKER_HUB;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use crate::options::RegistryOptions;

/// The key Docker files Docker Hub's credentials under.
/// (`server_key` maps `docker.io` to it.)
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A username and password (or token) for Basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Basic {
    /// Username.
    pub username: String,
    /// Password or personal access token.
    pub password: String,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basic")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Looks credentials up for a registry.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    explicit: HashMap<String, Basic>,
    docker_config: Option<PathBuf>,
    podman_auth: Option<PathBuf>,
    /// Directories searched for `docker-credential-<name>`; `$PATH` when `None`.
    helper_path: Option<OsString>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl Credentials {
    /// Credentials from `options`, with file locations from the environment
    /// where the options leave them out.
    pub fn from_options(options: &RegistryOptions) -> Credentials {
        let explicit = options
            .registries
            .iter()
            .filter_map(|(registry, config)| {
                let username = config.username.clone()?;
                let password = config.password.clone().unwrap_or_default();
                Some((registry.clone(), Basic { username, password }))
            })
            .collect();
        if options.disable_credential_files {
            return Credentials {
                explicit,
                ..Credentials::default()
            };
        }
        let docker_dir = options.docker_config_dir.clone().or_else(|| {
            std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        });
        let podman_auth = options.podman_auth_file.clone().or_else(|| {
            std::env::var_os("REGISTRY_AUTH_FILE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_RUNTIME_DIR")
                        .map(|d| PathBuf::from(d).join("containers").join("auth.json"))
                })
        });
        Credentials {
            explicit,
            docker_config: docker_dir.map(|d| d.join("config.json")),
            podman_auth,
            helper_path: None,
        }
    }

    /// Searches `path` (a `PATH`-style list) instead of `$PATH` for
    /// credential helpers.
    pub fn with_helper_path(mut self, path: impl Into<OsString>) -> Credentials {
        self.helper_path = Some(path.into());
        self
    }

    /// The credentials for `registry` (as references name it), `None` for
    /// anonymous access. Unreadable files and failing helpers are logged and
    /// skipped.
    pub async fn lookup(&self, registry: &str, repository: &str) -> Option<Basic> {
        if let Some(basic) = self.explicit.get(registry) {
            return Some(basic.clone());
        }
        if let Some(file) = self.docker_config.as_deref().and_then(read_auth_file) {
            let server = server_key(registry);
            let helper = file
                .cred_helpers
                .iter()
                .find(|(key, _)| normalize_key(key) == registry)
                .map(|(_, helper)| helper)
                .or(file.creds_store.as_ref());
            if let Some(helper) = helper
                && let Some(basic) = self.run_helper(helper, server).await
            {
                return Some(basic);
            }
            if let Some(basic) = find_auth(&file, registry, None) {
                return Some(basic);
            }
        }
        let file = self.podman_auth.as_deref().and_then(read_auth_file)?;
        find_auth(&file, registry, Some(repository))
    }

    /// The Docker config.json this lookup reads (and `distctl login`
    /// writes), if there is one to read.
    pub fn docker_config_file(&self) -> Option<&Path> {
        self.docker_config.as_deref()
    }

    /// The program of credential helper `helper` (`docker-credential-<helper>`
    /// on the helper path). The name comes from a config file: it must be a
    /// plain name, never a path of its own.
    pub fn find_helper(&self, helper: &str) -> Option<PathBuf> {
        let plain = !helper.is_empty()
            && helper
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !helper.starts_with('.');
        if !plain {
            tracing::warn!(
                helper,
                "ignoring a credential helper name that is not a plain name"
            );
            return None;
        }
        let name = format!("docker-credential-{helper}");
        let path = self
            .helper_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))?;
        let found = std::env::split_paths(&path)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file());
        if found.is_none() {
            tracing::warn!(helper = %name, "credential helper not found on PATH");
        }
        found
    }

    async fn run_helper(&self, helper: &str, server: &str) -> Option<Basic> {
        let program = self.find_helper(helper)?;
        let name = format!("docker-credential-{helper}");
        let output = match call_helper(&program, "get", server.as_bytes()).await {
            Ok(output) => output,
            Err(e) => {
                tracing::warn!(helper = %name, error = %e, "credential helper failed to run");
                return None;
            }
        };
        if !output.status.success() {
            // "credentials not found in native keychain" is the normal miss.
            tracing::debug!(helper = %name, server, stdout = %String::from_utf8_lossy(&output.stdout),
                "credential helper has no credentials");
            return None;
        }
        match serde_json::from_slice::<HelperOutput>(&output.stdout) {
            Ok(out) if out.username == "<token>" => {
                tracing::warn!(helper = %name, server, "identity tokens are not supported; ignored");
                None
            }
            Ok(out) => Some(Basic {
                username: out.username,
                password: out.secret,
            }),
            Err(e) => {
                tracing::warn!(helper = %name, error = %e, "credential helper printed bad JSON");
                None
            }
        }
    }
}

/// Runs credential helper `program` with `action` (`get`, `store`,
/// `erase`), writing `input` to its stdin; its output, whatever its status.
pub async fn call_helper(
    program: &Path,
    action: &str,
    input: &[u8],
) -> std::io::Result<std::process::Output> {
    let mut child = tokio::process::Command::new(program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await?;
    }
    child.wait_with_output().await
}

/// The server name Docker files `registry`'s credentials under.
pub fn server_key(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_KEY
    } else {
        registry
    }
}

fn read_auth_file(path: &Path) -> Option<AuthFile> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read credentials file");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "credentials file is not valid JSON; ignored");
            None
        }
    }
}

/// The registry a config key names: `https://host:5000/v2/` → `host:5000`;
/// Docker Hub's aliases → `docker.io`.
pub fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// The entry of `file.auths` for `registry`; with a `repository`, podman's
/// `registry/namespace` keys are tried first, most specific first.
fn find_auth(file: &AuthFile, registry: &str, repository: Option<&str>) -> Option<Basic> {
    let mut best: Option<(usize, &AuthEntry)> = None;
    for (key, entry) in &file.auths {
        let stripped = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key)
            .trim_end_matches('/');
        let specificity = if normalize_key(key) != registry {
            continue;
        } else if let (Some(repo), Some((_, path))) = (repository, stripped.split_once('/')) {
            let path = path.trim_end_matches("/v1").trim_end_matches("/v2");
            if path.is_empty() || path == "v1" || path == "v2" {
                0
            } else if repo == path || repo.starts_with(&format!("{path}/")) {
                path.len()
            } else {
                continue;
            }
        } else {
            0
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, entry));
        }
    }
    decode_entry(best?.1)
}

fn decode_entry(entry: &AuthEntry) -> Option<Basic> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, pass)) => {
                return Some(Basic {
                    username: user.to_owned(),
                    password: pass.to_owned(),
                });
            }
            None => tracing::warn!("an `auth` entry is not base64 of user:password; ignored"),
        }
    }
    Some(Basic {
        username: entry.username.clone()?,
        password: entry.password.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RegistryConfig;
    use std::os::unix::fs::PermissionsExt as _;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(dir: &Path, config: &str) -> Credentials {
        std::fs::write(dir.join("config.json"), config).unwrap();
        let options = RegistryOptions {
            docker_config_dir: Some(dir.to_owned()),
            podman_auth_file: Some(dir.join("auth.json")),
            ..RegistryOptions::default()
        };
        Credentials::from_options(&options).with_helper_path(dir.as_os_str())
    }

    fn basic(u: &str, p: &str) -> Option<Basic> {
        Some(Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    #[tokio::test]
    async fn auths_entries_are_found_by_registry() {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"auths":{{
                "{DOCKER_HUB_KEY}":{{"auth":"{}"}},
                "https://reg.example.com:5000/v2/":{{"username":"u2","password":"p2"}},
                "other.example.com":{{}}
            }}}}"#,
            b64("hubuser:hub:pass")
        );
        let c = creds(dir.path(), &config);
        assert_eq!(
            c.lookup("docker.io", "library/alpine").await,
            basic("hubuser", "hub:pass")
        );
        assert_eq!(
            c.lookup("reg.example.com:5000", "a").await,
            basic("u2", "p2")
        );
        assert_eq!(c.lookup("other.example.com", "a").await, None);
        assert_eq!(c.lookup("nowhere.example.com", "a").await, None);
    }

    #[tokio::test]
    async fn a_helper_name_cannot_be_a_path() {
        let credentials = Credentials {
            helper_path: Some(std::env::temp_dir().into_os_string()),
            ..Credentials::default()
        };
        for name in ["../../bin/sh", "a/b", ".hidden", ""] {
            assert!(
                credentials.run_helper(name, "x").await.is_none(),
                "{name:?}"
            );
        }
    }

    #[tokio::test]
    async fn helpers_run_with_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("docker-credential-fake");
        std::fs::write(
            &script,
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 2\n\
             case \"$server\" in\n\
             helped.example.com) echo '{\"ServerURL\":\"x\",\"Username\":\"hu\",\"Secret\":\"hs\"}';;\n\
             https://index.docker.io/v1/) echo '{\"ServerURL\":\"x\",\"Username\":\"hub\",\"Secret\":\"hubs\"}';;\n\
             *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            r#"{{"credHelpers":{{"helped.example.com":"fake"}},
                 "auths":{{"plain.example.com":{{"auth":"{}"}}}}}}"#,
            b64("pu:pp")
        );
        let c = creds(dir.path(), &config);
        assert_eq!(c.lookup("helped.example.com", "a").await, basic("hu", "hs"));
        assert_eq!(c.lookup("plain.example.com", "a").await, basic("pu", "pp"));
        // credsStore serves everything; a miss falls through to auths.
        let config = format!(
            r#"{{"credsStore":"fake","auths":{{"plain.example.com":{{"auth":"{}"}}}}}}"#,
            b64("pu:pp")
        );
        let c = creds(dir.path(), &config);
        assert_eq!(
            c.lookup("docker.io", "library/x").await,
            basic("hub", "hubs")
        );
        assert_eq!(c.lookup("plain.example.com", "a").await, basic("pu", "pp"));
    }

    #[tokio::test]
    async fn explicit_beats_files_and_podman_is_last() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("auth.json"),
            format!(
                r#"{{"auths":{{"pod.example.com":{{"auth":"{}"}},"pod.example.com/team":{{"auth":"{}"}}}}}}"#,
                b64("any:1"),
                b64("team:2")
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), "not json").unwrap();
        let mut options = RegistryOptions {
            docker_config_dir: Some(dir.path().to_owned()),
            podman_auth_file: Some(dir.path().join("auth.json")),
            ..RegistryOptions::default()
        };
        options
            .registries
            .insert("pod.example.com".into(), RegistryConfig::default());
        let c = Credentials::from_options(&options);
        assert_eq!(
            c.lookup("pod.example.com", "team/app").await,
            basic("team", "2")
        );
        assert_eq!(
            c.lookup("pod.example.com", "other").await,
            basic("any", "1")
        );
        options.registries.insert(
            "pod.example.com".into(),
            RegistryConfig {
                username: Some("me".into()),
                password: Some("pw".into()),
                ..RegistryConfig::default()
            },
        );
        let c = Credentials::from_options(&options);
        assert_eq!(
            c.lookup("pod.example.com", "team/app").await,
            basic("me", "pw")
        );
    }

    #[test]
    fn keys_normalize_to_registries() {
        assert_eq!(normalize_key(DOCKER_HUB_KEY), "docker.io");
        assert_eq!(normalize_key("http://h:5000/v2/"), "h:5000");
        assert_eq!(normalize_key("h"), "h");
    }
}
