//! The daemon's configuration: one TOML file, every key optional, flags on
//! top. Sizes and durations are written the way people write them ("10GiB",
//! "80%", "24h"); a bad value is reported with the key that holds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod routing;
mod s3;

pub use routing::{PluginConfig, REGISTRY_TRANSPORT, RouteConfig, valid_plugin_name};
pub use s3::S3Settings;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The offending key, dotted.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An entry of a list (`[[plugin]]`, `[[route]]`) is wrong.
    #[error("config key `{key}`: {message}")]
    InvalidEntry {
        /// The offending key with the entry's position, e.g. `route[1].match`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Store directory.
    pub root: Option<PathBuf>,
    /// Unix socket of the gRPC API.
    pub socket: Option<PathBuf>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Content store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Garbage collection.
    #[serde(default)]
    pub gc: GcConfig,
    /// Pulls.
    #[serde(default)]
    pub transfer: TransferConfig,
    /// Pushes.
    #[serde(default)]
    pub push: PushConfig,
    /// A directory laid out like Docker's `certs.d`
    /// (`<dir>/<host:port>/*.crt`, `client.cert` + `client.key`); default:
    /// `certs.d` beside the config file. `/etc/docker/certs.d` and
    /// `/etc/containers/certs.d` are searched after it.
    pub certs_dir: Option<PathBuf>,
    /// Per-registry settings, keyed as references name the registry
    /// (`docker.io`, `registry.example.com:5000`).
    #[serde(default)]
    pub registries: std::collections::HashMap<String, RegistrySettings>,
    /// External transports (`[[plugin]]`).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Which transports serve which registries (`[[route]]`), first match
    /// wins; registries no route matches use `["registry"]`.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// S3-direct transports (`[[s3]]`).
    #[serde(default)]
    pub s3: Vec<S3Settings>,
}

/// `[registries."host:port"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Docker's insecure registry: no certificate checks, and plain HTTP when
    /// the registry does not speak TLS (loopback registries may use plain
    /// HTTP without this; their certificates are still checked).
    pub insecure: bool,
    /// PEM file of CA certificates to trust for this registry.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for registries that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Username; takes precedence over Docker's and podman's credential files.
    pub username: Option<String>,
    /// Password or token for `username`.
    pub password: Option<String>,
}

/// `[transfer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Blobs one pull fetches at once.
    pub concurrency: usize,
    /// How long a failed pull's partial content is kept for a retry to
    /// resume; after that GC may collect it.
    #[serde(with = "humantime_serde_lite")]
    pub pull_lease_ttl: Duration,
    /// Also fetch non-distributable ("foreign") layers, which registries
    /// usually do not serve and licences may forbid redistributing.
    pub include_foreign_layers: bool,
    /// A transport that sends no byte of a blob for this long is given up
    /// for that blob, and the next transport of the route continues it from
    /// the bytes already stored.
    #[serde(with = "humantime_serde_lite")]
    pub stall_timeout: Duration,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            concurrency: crate::transfer::DEFAULT_CONCURRENCY,
            pull_lease_ttl: crate::transfer::DEFAULT_PULL_LEASE_TTL,
            include_foreign_layers: false,
            stall_timeout: crate::transfer::DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// `[push]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Blobs up to this size go up in one request; larger ones in chunks of
    /// this size, so a proxy with a request-body limit cannot stop a push.
    #[serde(deserialize_with = "size")]
    pub chunk_size: u64,
    /// Blobs one push sends at once.
    pub concurrency: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            chunk_size: distd_plugin_registry::options::DEFAULT_PUSH_CHUNK_SIZE,
            concurrency: crate::transfer::DEFAULT_PUSH_CONCURRENCY,
        }
    }
}

/// A size: a number of bytes or text like "16MiB".
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Watermark::deserialize(d)? {
        Watermark::Bytes(bytes) => Ok(bytes),
        Watermark::Percent(_) => Err(serde::de::Error::custom(
            "expected a size such as \"16MiB\", not a percentage",
        )),
    }
}

/// Smallest push chunk: below it, per-request overhead dominates.
pub const MIN_PUSH_CHUNK: u64 = 64 * 1024;

/// The most blobs one pull may fetch at once.
pub const MAX_CONCURRENCY: usize = 64;

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: Option<LogFormat>,
    /// A `tracing` filter such as `info` or `distd=debug`; `RUST_LOG` wins.
    pub level: Option<String>,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How long an ingest that no lease protects survives without a write.
    #[serde(with = "humantime_serde_lite")]
    pub ingest_expiry: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            ingest_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[gc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Above this, unreferenced content is evicted, least recently used first.
    pub high_watermark: Option<Watermark>,
    /// Eviction stops below this.
    pub low_watermark: Option<Watermark>,
    /// How often usage is checked against the high watermark.
    #[serde(with = "humantime_serde_lite")]
    pub check_interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            high_watermark: None,
            low_watermark: None,
            check_interval: Duration::from_secs(60),
        }
    }
}

/// A disk-usage threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    /// Bytes of committed content in the store.
    Bytes(u64),
    /// Percent of the store's filesystem in use (by anything).
    Percent(f64),
}

impl<'de> Deserialize<'de> for Watermark {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(bytes) => Ok(Watermark::Bytes(bytes)),
            Raw::Text(text) => parse_watermark(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "80%", "10GiB", "500MB", "1048576".
pub fn parse_watermark(text: &str) -> Result<Watermark, String> {
    let text = text.trim();
    if let Some(number) = text.strip_suffix('%') {
        let percent: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage like \"80%\""))?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("{text:?} is not between 0% and 100%"));
        }
        return Ok(Watermark::Percent(percent));
    }
    parse_size(text).map(Watermark::Bytes)
}

/// Parses a size with an optional unit: B, KB/MB/GB/TB (powers of 1000) or
/// KiB/MiB/GiB/TiB (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"10GiB\" or \"500MB\""))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        other => return Err(format!("{text:?} has an unknown unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Serde adapter for human-readable durations ("30s", "24h").
mod humantime_serde_lite {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\": {e}"))
        })
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let gc = &self.gc;
        match (gc.high_watermark, gc.low_watermark) {
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "gc.low_watermark",
                    message:
                        "set gc.high_watermark too: the low mark only says where eviction stops"
                            .into(),
                });
            }
            (Some(Watermark::Bytes(high)), Some(Watermark::Bytes(low))) if low > high => {
                return Err(ConfigError::Invalid {
                    key: "gc.low_watermark",
                    message: format!("{low} bytes is above gc.high_watermark ({high} bytes)"),
                });
            }
            (Some(Watermark::Percent(high)), Some(Watermark::Percent(low))) if low > high => {
                return Err(ConfigError::Invalid {
                    key: "gc.low_watermark",
                    message: format!("{low}% is above gc.high_watermark ({high}%)"),
                });
            }
            (Some(Watermark::Bytes(_)), Some(Watermark::Percent(_)))
            | (Some(Watermark::Percent(_)), Some(Watermark::Bytes(_))) => {
                return Err(ConfigError::Invalid {
                    key: "gc.low_watermark",
                    message: "use the same form (bytes or percent) as gc.high_watermark".into(),
                });
            }
            _ => {}
        }
        if gc.check_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "gc.check_interval",
                message: "must be longer than zero".into(),
            });
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.transfer.concurrency) {
            return Err(ConfigError::Invalid {
                key: "transfer.concurrency",
                message: format!("must be between 1 and {MAX_CONCURRENCY}"),
            });
        }
        if self.push.chunk_size < MIN_PUSH_CHUNK {
            return Err(ConfigError::Invalid {
                key: "push.chunk_size",
                message: format!("must be at least {MIN_PUSH_CHUNK} bytes"),
            });
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.push.concurrency) {
            return Err(ConfigError::Invalid {
                key: "push.concurrency",
                message: format!("must be between 1 and {MAX_CONCURRENCY}"),
            });
        }
        if self.transfer.stall_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "transfer.stall_timeout",
                message: "must be longer than zero".into(),
            });
        }
        if self.transfer.pull_lease_ttl.is_zero() {
            return Err(ConfigError::Invalid {
                key: "transfer.pull_lease_ttl",
                message: "must be longer than zero".into(),
            });
        }
        for (host, registry) in &self.registries {
            if registry.client_cert.is_some() != registry.client_key.is_some() {
                return Err(ConfigError::Invalid {
                    key: "registries.*.client_cert",
                    message: format!("registry {host}: set both client_cert and client_key"),
                });
            }
        }
        let mut names = std::collections::HashSet::new();
        routing::validate(&self.plugins, &self.routes, &mut names)?;
        s3::validate(&self.s3, &mut names)
    }

    /// The registry transport's settings; `config_file` is where this
    /// config was read from (its directory holds the default `certs.d`).
    pub fn registry_options(
        &self,
        config_file: Option<&Path>,
    ) -> distd_plugin_registry::RegistryOptions {
        let certs_dir = self.certs_dir.clone().or_else(|| {
            config_file
                .and_then(Path::parent)
                .map(|dir| dir.join("certs.d"))
        });
        distd_plugin_registry::RegistryOptions {
            registries: self
                .registries
                .iter()
                .map(|(host, r)| {
                    let config = distd_plugin_registry::RegistryConfig {
                        insecure: r.insecure,
                        ca_file: r.ca_file.clone(),
                        client_cert: r.client_cert.clone(),
                        client_key: r.client_key.clone(),
                        username: r.username.clone(),
                        password: r.password.clone(),
                    };
                    (host.clone(), config)
                })
                .collect(),
            user_agent: Some(format!("distd/{}", env!("CARGO_PKG_VERSION"))),
            certs_dirs: certs_dir.into_iter().collect(),
            push_chunk_size: self.push.chunk_size,
            ..Default::default()
        }
    }

    /// The low watermark in force: the configured one, else the high one.
    pub fn low_watermark(&self) -> Option<Watermark> {
        self.gc.low_watermark.or(self.gc.high_watermark)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parses and validates config `text`; the error as text.
    pub fn check(text: &str) -> Result<(), String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
        assert_eq!(parse_watermark("80%"), Ok(Watermark::Percent(80.0)));
        assert!(parse_watermark("180%").is_err());
    }

    #[test]
    fn a_full_file_parses_and_an_unknown_key_is_named() {
        let config: Config = toml::from_str(
            r#"
            root = "/tmp/x"
            [gc]
            high_watermark = "40MiB"
            low_watermark = 1000
            check_interval = "2s"
            [store]
            ingest_expiry = "1h"
            "#,
        )
        .unwrap();
        assert_eq!(config.gc.high_watermark, Some(Watermark::Bytes(40 << 20)));
        assert_eq!(config.store.ingest_expiry, Duration::from_secs(3600));
        config.validate().unwrap();
        let err = toml::from_str::<Config>("[gc]\nhigh_water = 1").unwrap_err();
        assert!(err.to_string().contains("high_water"), "{err}");
    }

    #[test]
    fn the_readme_example_parses_and_validates() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n")
            .expect("the README has a toml block")
            + 8;
        let end = start + readme[start..].find("```").expect("the block ends");
        let config: Config = toml::from_str(&readme[start..end]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.push.chunk_size, 16 << 20);
        assert_eq!(
            config.certs_dir.as_deref(),
            Some(Path::new("/etc/distd/certs.d"))
        );
        assert!(config.registries.contains_key("registry.example.com:5000"));
    }

    #[test]
    fn inconsistent_watermarks_are_refused() {
        let config: Config =
            toml::from_str("[gc]\nhigh_watermark = \"10MiB\"\nlow_watermark = \"20MiB\"").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("gc.low_watermark"), "{err}");
    }
}
