//! The `[[s3]]` settings and the S3 client they make.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ClientOptions, RetryConfig};

use crate::credentials::{self, Credentials};
use crate::error::{S3Error, Target};
use crate::session::{MAX_PART_SIZE, MIN_PART_SIZE};

/// The default part size of multipart uploads: 16 MiB.
pub const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;

/// The region used when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// One `[[s3]]` transport: a bucket holding a Docker Distribution
/// registry's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The transport's name in configuration and events, e.g. `s3`.
    pub name: String,
    /// The bucket.
    pub bucket: String,
    /// The region; `None` means the environment's (`Environment`
    /// credentials) or `us-east-1`.
    pub region: Option<String>,
    /// An S3-compatible endpoint (`http://` allowed), e.g.
    /// `http://minio.local:9000`; `None` means AWS.
    pub endpoint: Option<String>,
    /// The registry's `storage.s3.rootdirectory` (e.g. `/root1`), or empty.
    pub root_directory: String,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted
    /// ones (`bucket.endpoint/key`); most S3-compatible servers want it.
    pub path_style: bool,
    /// Where the keys come from.
    pub credentials: Credentials,
    /// Registries (or `host/repository` globs) the bucket serves; empty
    /// means any.
    pub registries: Vec<String>,
    /// Bytes per part of a multipart upload (at least 5 MiB); blobs up to
    /// this size are sent in one request.
    pub part_size: u64,
}

impl S3Config {
    /// A configuration for `bucket` with every other setting at its default.
    pub fn new(name: impl Into<String>, bucket: impl Into<String>) -> S3Config {
        S3Config {
            name: name.into(),
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            root_directory: String::new(),
            path_style: false,
            credentials: Credentials::Environment,
            registries: Vec::new(),
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// With a custom endpoint, virtual-hosted style needs the bucket in the
/// host: `https://host` → `https://bucket.host`.
fn virtual_hosted(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

/// The endpoint the environment names (`AWS_ENDPOINT_URL_S3`,
/// `AWS_ENDPOINT_URL`, `AWS_ENDPOINT`).
fn env_endpoint() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))
}

/// Checks `config` and builds its client; the target names the bucket and
/// endpoint in messages.
pub(crate) fn build(config: &S3Config) -> Result<(AmazonS3, Target), S3Error> {
    if config.name.is_empty() {
        return Err(S3Error::Config("name is empty".into()));
    }
    if config.bucket.is_empty() || config.bucket.contains('/') {
        return Err(S3Error::Config(format!(
            "bucket {:?} is not a bucket name",
            config.bucket
        )));
    }
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&config.part_size) {
        return Err(S3Error::Config(format!(
            "part_size {} is outside S3's {MIN_PART_SIZE}..={MAX_PART_SIZE} bytes",
            config.part_size
        )));
    }
    let mut builder = match &config.credentials {
        Credentials::Environment => AmazonS3Builder::from_env(),
        Credentials::Profile(profile) => {
            let keys = credentials::read_profile(&credentials::credentials_file(), profile)?;
            let builder = AmazonS3Builder::new()
                .with_access_key_id(keys.access_key_id)
                .with_secret_access_key(keys.secret_access_key);
            match keys.session_token {
                Some(token) => builder.with_token(token),
                None => builder,
            }
        }
        Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let builder = AmazonS3Builder::new()
                .with_access_key_id(access_key_id)
                .with_secret_access_key(secret_access_key);
            match session_token {
                Some(token) => builder.with_token(token),
                None => builder,
            }
        }
    };
    builder = builder
        .with_bucket_name(&config.bucket)
        .with_virtual_hosted_style_request(!config.path_style);
    let from_env = matches!(config.credentials, Credentials::Environment);
    let region = config.region.clone().or_else(|| {
        // The environment's region stays (from_env read it) unless absent.
        let env_has = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|r| !r.is_empty()));
        (!(from_env && env_has)).then(|| DEFAULT_REGION.to_owned())
    });
    if let Some(region) = &region {
        builder = builder.with_region(region);
    }
    let endpoint = match &config.endpoint {
        Some(endpoint) => {
            let endpoint = endpoint.trim_end_matches('/');
            let url = if config.path_style {
                endpoint.to_owned()
            } else {
                virtual_hosted(endpoint, &config.bucket)
            };
            builder = builder.with_endpoint(url);
            endpoint.to_owned()
        }
        // from_env may have read one.
        None => match env_endpoint().filter(|_| from_env) {
            Some(endpoint) => endpoint,
            None => format!(
                "https://s3.{}.amazonaws.com",
                region.as_deref().unwrap_or(DEFAULT_REGION)
            ),
        },
    };
    let allow_http = endpoint.starts_with("http://");
    // No overall request timeout: a fetch streams a layer of any size in
    // one response. Connecting is bounded; the daemon bounds stalls.
    let options = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(10));
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    let store = builder
        .with_allow_http(allow_http)
        .with_client_options(options)
        .with_retry(retry)
        .build()
        .map_err(|source| S3Error::Build {
            bucket: config.bucket.clone(),
            source,
        })?;
    let target = Target {
        bucket: config.bucket.clone(),
        endpoint,
    };
    Ok((store, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_carry_the_bucket() {
        assert_eq!(
            virtual_hosted("https://s3.example.test", "b"),
            "https://b.s3.example.test"
        );
        assert_eq!(virtual_hosted("host:9000", "b"), "b.host:9000");
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let mut config = S3Config::new("s3", "bucket");
        config.credentials = Credentials::Static {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        };
        config.endpoint = Some("http://127.0.0.1:1".into());
        config.path_style = true;
        let (_, target) = build(&config).unwrap();
        assert_eq!(target.endpoint, "http://127.0.0.1:1");
        config.part_size = 1024;
        let e = build(&config).unwrap_err().to_string();
        assert!(e.contains("part_size"), "{e}");
        config.part_size = DEFAULT_PART_SIZE;
        config.bucket = "a/b".into();
        assert!(build(&config).unwrap_err().to_string().contains("bucket"));
    }
}
