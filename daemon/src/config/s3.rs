//! `[[s3]]`: S3-direct transports, each reading and writing one registry's
//! bucket in Distribution's storage layout.

use serde::Deserialize;

use std::collections::HashSet;

use super::ConfigError;
use super::routing::claim_name;

use distd_plugin_s3::MIN_PART_SIZE;

/// One `[[s3]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// How routes name it, e.g. `s3`.
    pub name: String,
    /// The registry's bucket.
    pub bucket: String,
    /// Its region (default `us-east-1`).
    pub region: Option<String>,
    /// An S3-compatible endpoint, e.g. `http://minio.local:9000`; default AWS.
    pub endpoint: Option<String>,
    /// Distribution's `rootdirectory` in that bucket.
    #[serde(default)]
    pub root_directory: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible
    /// servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Static credentials (with `secret_access_key`); else `profile`; else
    /// the environment's `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: Option<String>,
    /// See `access_key_id`.
    pub secret_access_key: Option<String>,
    /// A session token for temporary static credentials.
    pub session_token: Option<String>,
    /// A profile of the shared credentials file (`~/.aws/credentials`).
    pub profile: Option<String>,
    /// Registries (or `host/repository` globs) whose bucket this is; empty
    /// means any registry a route sends here.
    #[serde(default)]
    pub registries: Vec<String>,
    /// Part size of multipart uploads; blobs up to it go in one request.
    #[serde(default, deserialize_with = "optional_size")]
    pub part_size: Option<u64>,
}

fn optional_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    super::size(d).map(Some)
}

impl S3Settings {
    /// The S3 transport's settings.
    pub fn transport_config(&self) -> distd_plugin_s3::S3Config {
        let credentials = match (&self.access_key_id, &self.secret_access_key, &self.profile) {
            (Some(access_key_id), Some(secret_access_key), _) => {
                distd_plugin_s3::Credentials::Static {
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret_access_key.clone(),
                    session_token: self.session_token.clone(),
                }
            }
            (_, _, Some(profile)) => distd_plugin_s3::Credentials::Profile(profile.clone()),
            _ => distd_plugin_s3::Credentials::Environment,
        };
        distd_plugin_s3::S3Config {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            root_directory: self.root_directory.clone(),
            path_style: self.path_style,
            credentials,
            registries: self.registries.clone(),
            part_size: self.part_size.unwrap_or(distd_plugin_s3::DEFAULT_PART_SIZE),
            ..distd_plugin_s3::S3Config::new(&self.name, &self.bucket)
        }
    }
}

/// Checks the `[[s3]]` entries; `taken` holds the transport names used so
/// far.
pub fn validate<'a>(
    entries: &'a [S3Settings],
    taken: &mut HashSet<&'a str>,
) -> Result<(), ConfigError> {
    let invalid = |i: usize, field: &str, message: String| ConfigError::InvalidEntry {
        key: format!("s3[{i}]{field}"),
        message,
    };
    for (i, entry) in entries.iter().enumerate() {
        claim_name(format!("s3[{i}].name"), &entry.name, taken)?;
        if entry.bucket.is_empty() {
            return Err(invalid(i, ".bucket", "name the registry's bucket".into()));
        }
        match (&entry.access_key_id, &entry.secret_access_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    i,
                    ".secret_access_key",
                    "set both access_key_id and secret_access_key, or neither".into(),
                ));
            }
            (Some(_), Some(_)) if entry.profile.is_some() => {
                return Err(invalid(
                    i,
                    ".profile",
                    "set either static keys or a profile, not both".into(),
                ));
            }
            _ => {}
        }
        if entry.part_size.is_some_and(|size| size < MIN_PART_SIZE) {
            return Err(invalid(
                i,
                ".part_size",
                format!("must be at least {MIN_PART_SIZE} bytes (S3's minimum part)"),
            ));
        }
        if let Some(endpoint) = &entry.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                i,
                ".endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::check;

    #[test]
    fn entries_parse_and_bad_ones_are_named() {
        let good = r#"
            [[s3]]
            name = "s3"
            bucket = "registry"
            endpoint = "http://127.0.0.1:9000"
            root_directory = "/root1"
            path_style = true
            access_key_id = "a"
            secret_access_key = "b"
            part_size = "8MiB"
            registries = ["registry.example.com"]
        "#;
        check(good).unwrap();
        let config: Config = toml::from_str(good).unwrap();
        assert_eq!(config.s3[0].part_size, Some(8 << 20));
        let half = "[[s3]]\nname = \"s3\"\nbucket = \"b\"\naccess_key_id = \"a\"";
        assert!(check(half).unwrap_err().contains("s3[0].secret_access_key"));
        let small = "[[s3]]\nname = \"s3\"\nbucket = \"b\"\npart_size = \"1MiB\"";
        assert!(check(small).unwrap_err().contains("s3[0].part_size"));
        let clash =
            "[[plugin]]\nname = \"s3\"\nsocket = \"/s\"\n[[s3]]\nname = \"s3\"\nbucket = \"b\"";
        assert!(check(clash).unwrap_err().contains("already taken"));
        let url = "[[s3]]\nname = \"s3\"\nbucket = \"b\"\nendpoint = \"minio:9000\"";
        assert!(check(url).unwrap_err().contains("s3[0].endpoint"));
    }
}
