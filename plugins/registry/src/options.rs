//! Per-registry settings: scheme, TLS trust and explicit credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// How to reach one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Docker's "insecure registry": HTTPS without certificate checks, and
    /// plain HTTP when the registry does not speak TLS. Loopback registries
    /// may fall back to plain HTTP without this (their certificates are
    /// still checked when they speak TLS), as in Docker.
    pub insecure: bool,
    /// A PEM file of CA certificates trusted for this registry, in addition
    /// to the system's roots and the certs directories.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS with this registry.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Username for this registry; takes precedence over config.json.
    pub username: Option<String>,
    /// Password or token for `username`.
    pub password: Option<String>,
}

/// Settings of the registry transport.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Settings per registry, keyed as references name it (`docker.io`,
    /// `host:5000`).
    pub registries: HashMap<String, RegistryConfig>,
    /// Docker's config directory; `None` means `$DOCKER_CONFIG`, else
    /// `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Podman's auth file; `None` means `$REGISTRY_AUTH_FILE`, else
    /// `$XDG_RUNTIME_DIR/containers/auth.json`.
    pub podman_auth_file: Option<PathBuf>,
    /// Never read Docker's or podman's credential files: only the explicit
    /// credentials in `registries` are used.
    pub disable_credential_files: bool,
    /// `User-Agent` sent with every request.
    pub user_agent: Option<String>,
    /// Directories laid out like Docker's `certs.d`: `<dir>/<host:port>/`
    /// holds `*.crt` CA certificates and `NAME.cert` + `NAME.key` client
    /// certificates. Searched in order, then [`DEFAULT_CERTS_DIRS`].
    pub certs_dirs: Vec<PathBuf>,
    /// Blobs larger than this many bytes are pushed in chunks of this size
    /// (one `PATCH` each, so an interrupted push resumes from the last
    /// acknowledged chunk); smaller ones in one `PUT`. 0 means
    /// [`DEFAULT_PUSH_CHUNK_SIZE`]. Lower it for registries, or proxies in
    /// front of them, that refuse large requests (413 Payload Too Large).
    pub push_chunk_size: u64,
}

/// The push chunk size when [`RegistryOptions::push_chunk_size`] is 0:
/// 16 MiB.
pub const DEFAULT_PUSH_CHUNK_SIZE: u64 = 16 * 1024 * 1024;

/// Where Docker and podman keep per-registry certificates; always searched
/// after [`RegistryOptions::certs_dirs`].
pub const DEFAULT_CERTS_DIRS: [&str; 2] = ["/etc/docker/certs.d", "/etc/containers/certs.d"];

impl RegistryOptions {
    /// The settings of `registry`, defaults when it has none.
    pub fn config(&self, registry: &str) -> RegistryConfig {
        self.registries.get(registry).cloned().unwrap_or_default()
    }

    /// The push chunk size in force: [`RegistryOptions::push_chunk_size`],
    /// or [`DEFAULT_PUSH_CHUNK_SIZE`] when that is 0.
    pub fn chunk_size(&self) -> u64 {
        match self.push_chunk_size {
            0 => DEFAULT_PUSH_CHUNK_SIZE,
            n => n,
        }
    }

    /// The certs directories of `registry` that exist, in search order.
    pub fn certs_dirs_of(&self, registry: &str) -> Vec<PathBuf> {
        self.certs_dirs
            .iter()
            .cloned()
            .chain(DEFAULT_CERTS_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(registry))
            .filter(|dir| dir.is_dir())
            .collect()
    }
}

/// The host part of `registry` (`host`, `host:port`, `[v6]:port`), without
/// port or brackets.
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(inside, _)| inside);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// Whether `registry` is on this host (`localhost`, `127.0.0.0/8`, `::1`),
/// where plain HTTP is allowed without configuration.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The schemes to try for `registry` under `config`, in order: HTTPS
/// always first; plain HTTP after it only for insecure or loopback
/// registries, and only when the registry does not speak TLS.
pub fn schemes(registry: &str, config: &RegistryConfig) -> &'static [&'static str] {
    if config.insecure || is_loopback(registry) {
        &["https", "http"]
    } else {
        &["https"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_detected() {
        for yes in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.9.8.7:1",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(yes), "{yes} is loopback");
        }
        for no in [
            "docker.io",
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "128.0.0.1",
            "[::2]:5000",
            "localhost.example.com",
            "mylocalhost:5000",
        ] {
            assert!(!is_loopback(no), "{no} is not loopback");
        }
    }

    #[test]
    fn chunk_size_defaults_to_sixteen_mib() {
        assert_eq!(RegistryOptions::default().chunk_size(), 16 * 1024 * 1024);
        let small = RegistryOptions {
            push_chunk_size: 4096,
            ..RegistryOptions::default()
        };
        assert_eq!(small.chunk_size(), 4096);
    }

    #[test]
    fn plain_http_only_after_https_and_only_for_loopback_or_insecure() {
        let default = RegistryConfig::default();
        assert_eq!(schemes("ghcr.io", &default), ["https"]);
        assert_eq!(schemes("127.0.0.1:5000", &default), ["https", "http"]);
        let insecure = RegistryConfig {
            insecure: true,
            ..RegistryConfig::default()
        };
        assert_eq!(schemes("build.lan:5000", &insecure), ["https", "http"]);
    }
}
