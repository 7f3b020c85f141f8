//! Keeping credentials where Docker keeps them: `config.json`'s `auths`, or
//! the credential helper the file names for the registry (`credHelpers`,
//! `credsStore`). Writes replace the file atomically and keep every key
//! this module does not own.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use base64::Engine as _;
use distd_sdk::error::ErrorKind;
use distd_sdk::transport::TransportError;
use serde_json::{Map, Value, json};

use crate::credentials::{Basic, Credentials, call_helper, normalize_key, server_key};

/// Stores `basic` for `registry`; returns where (a path or a helper name).
pub async fn store(
    credentials: &Credentials,
    registry: &str,
    basic: &Basic,
) -> Result<String, TransportError> {
    let file = config_file(credentials)?;
    let mut config = read_object(file)?;
    if let Some(helper) = helper_for(&config, registry) {
        let input = json!({
            "ServerURL": server_key(registry),
            "Username": basic.username,
            "Secret": basic.password,
        });
        run(credentials, &helper, "store", input.to_string().as_bytes()).await?;
        return Ok(format!("docker-credential-{helper}"));
    }
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(unusable(file, "its \"auths\" is not an object"));
    };
    // One entry per registry: drop the aliases Docker may have written.
    auths.retain(|key, _| normalize_key(key) != registry);
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", basic.username, basic.password));
    auths.insert(server_key(registry).to_owned(), json!({ "auth": token }));
    write_object(file, &config)?;
    Ok(file.display().to_string())
}

/// Forgets `registry`'s credentials; returns where they were. `NotFound`
/// when there were none.
pub async fn erase(credentials: &Credentials, registry: &str) -> Result<String, TransportError> {
    let file = config_file(credentials)?;
    let mut config = read_object(file)?;
    if let Some(helper) = helper_for(&config, registry) {
        run(
            credentials,
            &helper,
            "erase",
            server_key(registry).as_bytes(),
        )
        .await?;
        return Ok(format!("docker-credential-{helper}"));
    }
    let removed = match config.get_mut("auths") {
        Some(Value::Object(auths)) => {
            let before = auths.len();
            auths.retain(|key, _| normalize_key(key) != registry);
            before != auths.len()
        }
        _ => false,
    };
    if !removed {
        return Err(TransportError::new(
            ErrorKind::NotFound,
            format!(
                "no credentials for {registry} in {}; nothing to log out of",
                file.display()
            ),
        ));
    }
    write_object(file, &config)?;
    Ok(file.display().to_string())
}

fn config_file(credentials: &Credentials) -> Result<&Path, TransportError> {
    credentials.docker_config_file().ok_or_else(|| {
        TransportError::new(
            ErrorKind::FailedPrecondition,
            "distd has no Docker config to keep credentials in: start it with HOME or \
             DOCKER_CONFIG set, or put them in its config file under [registries]",
        )
    })
}

/// The credential helper `config` names for `registry`, if any.
fn helper_for(config: &Map<String, Value>, registry: &str) -> Option<String> {
    let specific = config
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|helpers| {
            helpers
                .iter()
                .find(|(key, _)| normalize_key(key) == registry)
                .and_then(|(_, name)| name.as_str())
        });
    specific
        .or_else(|| config.get("credsStore").and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

async fn run(
    credentials: &Credentials,
    helper: &str,
    action: &str,
    input: &[u8],
) -> Result<(), TransportError> {
    let name = format!("docker-credential-{helper}");
    let program = credentials.find_helper(helper).ok_or_else(|| {
        TransportError::new(
            ErrorKind::FailedPrecondition,
            format!("credential helper {name} is not on distd's PATH"),
        )
    })?;
    let output = call_helper(&program, action, input).await.map_err(|e| {
        TransportError::new(ErrorKind::Unavailable, format!("{name} failed to run: {e}"))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stdout);
    let said = said.trim();
    let kind = if action == "erase" && said.contains("not found") {
        ErrorKind::NotFound
    } else {
        ErrorKind::Unavailable
    };
    Err(TransportError::new(
        kind,
        format!("{name} {action} failed ({}): {said}", output.status),
    ))
}

fn unusable(file: &Path, reason: &str) -> TransportError {
    TransportError::new(
        ErrorKind::FailedPrecondition,
        format!(
            "{} is not a usable Docker config: {reason}; fix or move it",
            file.display()
        ),
    )
}

/// The file's JSON object; an empty one when the file does not exist.
fn read_object(file: &Path) -> Result<Map<String, Value>, TransportError> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(unusable(file, &e.to_string())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(unusable(file, "it is not a JSON object")),
        Err(e) => Err(unusable(file, &e.to_string())),
    }
}

/// Replaces `file` with `config`: a 0600 temporary file beside it, synced,
/// then renamed over it; its directory is created 0700 when missing.
fn write_object(file: &Path, config: &Map<String, Value>) -> Result<(), TransportError> {
    let failed = |e: std::io::Error| {
        TransportError::new(
            ErrorKind::Internal,
            format!("cannot write {}: {e}", file.display()),
        )
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let text = serde_json::to_vec_pretty(config).map_err(|e| failed(std::io::Error::other(e)))?;
    let temporary = dir.join(format!(".config.json.{}.tmp", std::process::id()));
    let written = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        out.write_all(&text)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        std::fs::rename(&temporary, file)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RegistryOptions;

    fn credentials_in(dir: &Path) -> Credentials {
        Credentials::from_options(&RegistryOptions {
            docker_config_dir: Some(dir.to_owned()),
            podman_auth_file: Some(dir.join("no-podman.json")),
            ..RegistryOptions::default()
        })
        .with_helper_path(dir.join("no-helpers"))
    }

    #[tokio::test]
    async fn store_keeps_other_keys_and_erase_removes_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"auths":{"https://r:5000/v2/":{"auth":"b2xkOm9sZA=="},"other:1":{"auth":"eDp5"}},"psFormat":"table"}"#,
        )
        .unwrap();
        let credentials = credentials_in(dir.path());
        let basic = Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let stored = store(&credentials, "r:5000", &basic).await.unwrap();
        assert_eq!(stored, file.display().to_string());
        let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written["psFormat"], "table");
        assert_eq!(written["auths"]["other:1"]["auth"], "eDp5");
        assert!(written["auths"].get("https://r:5000/v2/").is_none());
        assert_eq!(written["auths"]["r:5000"]["auth"], "YWxpY2U6czNjcmV0");
        assert_eq!(
            credentials.lookup("r:5000", "app").await.as_ref(),
            Some(&basic)
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        erase(&credentials, "r:5000").await.unwrap();
        assert_eq!(credentials.lookup("r:5000", "app").await, None);
        let e = erase(&credentials, "r:5000").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn docker_hub_is_filed_under_its_index_url_and_a_bad_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = credentials_in(dir.path());
        let basic = Basic {
            username: "u".into(),
            password: "p".into(),
        };
        store(&credentials, "docker.io", &basic).await.unwrap();
        let written: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert!(written["auths"]["https://index.docker.io/v1/"].is_object());

        std::fs::write(dir.path().join("config.json"), "[1]").unwrap();
        let e = store(&credentials, "r", &basic).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FailedPrecondition);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            "[1]"
        );
    }
}
