//! Where the bucket's credentials come from, and a small reader of the AWS
//! shared credentials file (`~/.aws/credentials`).

use std::path::{Path, PathBuf};

use crate::error::S3Error;

/// Where the access keys come from.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
    /// (and the rest of the standard `AWS_*` variables, e.g. `AWS_REGION`,
    /// web identity or container credentials); without keys, the instance
    /// metadata service.
    #[default]
    Environment,
    /// A profile of the shared credentials file:
    /// `$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
    Profile(String),
    /// Keys given in the configuration.
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: String,
        /// A session token, for temporary credentials.
        session_token: Option<String>,
    },
}

impl std::fmt::Debug for Credentials {
    /// Never shows a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Environment => f.write_str("Environment"),
            Credentials::Profile(p) => f.debug_tuple("Profile").field(p).finish(),
            Credentials::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Keys read from a profile.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Keys {
    /// Never shows a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The shared credentials file: `$AWS_SHARED_CREDENTIALS_FILE`, else
/// `$HOME/.aws/credentials`.
pub(crate) fn credentials_file() -> PathBuf {
    if let Some(file) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").filter(|f| !f.is_empty()) {
        return PathBuf::from(file);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".aws").join("credentials")
}

/// Reads profile `profile` of the credentials file `file`.
pub(crate) fn read_profile(file: &Path, profile: &str) -> Result<Keys, S3Error> {
    let failed = |reason: String| S3Error::Profile {
        file: file.to_owned(),
        profile: profile.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| failed(format!("cannot read it: {e}")))?;
    parse_profile(&text, profile).map_err(failed)
}

/// Finds `[profile]` in INI `text` and reads its keys; the error says what
/// is missing.
pub(crate) fn parse_profile(text: &str, profile: &str) -> Result<Keys, String> {
    let mut in_section = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            // `[profile x]` is the config file's spelling; accept it too.
            let name = name.strip_prefix("profile ").map_or(name, str::trim);
            in_section = name == profile;
            found |= in_section;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value).filter(|t| !t.is_empty()),
            _ => {}
        }
    }
    if !found {
        return Err(format!("there is no [{profile}] section"));
    }
    match (
        id.filter(|v| !v.is_empty()),
        secret.filter(|v| !v.is_empty()),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Keys {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(format!(
            "[{profile}] lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = secret0

[site]
; another comment
aws_access_key_id=AKISITE
aws_secret_access_key = se=cret1
aws_session_token = tok
region = eu-west-1

[profile other]
aws_access_key_id = AKIOTHER
";

    #[test]
    fn reads_the_named_profile_only() {
        let site = parse_profile(FILE, "site").unwrap();
        assert_eq!(site.access_key_id, "AKISITE");
        assert_eq!(site.secret_access_key, "se=cret1");
        assert_eq!(site.session_token.as_deref(), Some("tok"));
        let default = parse_profile(FILE, "default").unwrap();
        assert_eq!(default.access_key_id, "AKIDEFAULT");
        assert_eq!(default.session_token, None);
    }

    #[test]
    fn missing_sections_and_keys_are_named() {
        assert_eq!(
            parse_profile(FILE, "nope").unwrap_err(),
            "there is no [nope] section"
        );
        let e = parse_profile(FILE, "other").unwrap_err();
        assert!(e.contains("aws_secret_access_key"), "{e}");
    }

    #[test]
    fn a_missing_file_names_file_and_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        let e = read_profile(&file, "site").unwrap_err().to_string();
        assert!(e.contains("\"site\"") && e.contains("credentials"), "{e}");
        std::fs::write(&file, FILE).unwrap();
        assert_eq!(
            read_profile(&file, "site").unwrap().access_key_id,
            "AKISITE"
        );
        let e = read_profile(&file, "x").unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::Static {
            access_key_id: "AKI".into(),
            secret_access_key: "hunter2".into(),
            session_token: Some("tok".into()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKI") && !shown.contains("hunter2") && !shown.contains("tok"));
    }
}
