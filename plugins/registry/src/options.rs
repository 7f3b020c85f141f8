//! Per-registry settings: scheme, TLS trust and explicit credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// How to reach one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Talk plain HTTP to this registry. Loopback registries get plain HTTP
    /// without this, as in Docker.
    pub insecure_http: bool,
    /// A PEM file of CA certificates trusted for this registry, in addition
    /// to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from this registry. For tests only.
    pub skip_tls_verify: bool,
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
}

impl RegistryOptions {
    /// The settings of `registry`, defaults when it has none.
    pub fn config(&self, registry: &str) -> RegistryConfig {
        self.registries.get(registry).cloned().unwrap_or_default()
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

/// `https` or `http` for `registry` under `config`.
pub fn scheme(registry: &str, config: &RegistryConfig) -> &'static str {
    if config.insecure_http || is_loopback(registry) {
        "http"
    } else {
        "https"
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
    fn scheme_is_https_unless_loopback_or_configured() {
        let default = RegistryConfig::default();
        assert_eq!(scheme("ghcr.io", &default), "https");
        assert_eq!(scheme("127.0.0.1:5000", &default), "http");
        let insecure = RegistryConfig {
            insecure_http: true,
            ..RegistryConfig::default()
        };
        assert_eq!(scheme("build.lan:5000", &insecure), "http");
    }
}
