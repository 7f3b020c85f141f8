//! `distctl login`, `logout` and `inspect`: the daemon's registry
//! credentials, and a look at an image at its registry before pulling it.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};

use anyhow::Context as _;
use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Client, ClientError, ErrorKind};
use serde_json::{Value, json};

use crate::cli::{InspectArgs, LoginArgs};
use crate::explain::explain_remote;
use crate::output::{self, Output};

/// Runs `distctl login`: reads the username and secret, has the daemon check
/// them against the registry and store them.
pub async fn login(client: &Client, out: Output, args: LoginArgs) -> anyhow::Result<()> {
    let username = match args.username {
        Some(name) => name,
        None => prompt("Username: ", true)?,
    };
    let secret = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        prompt("Password: ", false)?
    };
    if username.is_empty() || secret.is_empty() {
        anyhow::bail!(
            "logging in to {}: a username and a password are required",
            args.registry
        );
    }
    let action = format!("logging in to {}", args.registry);
    let response = client
        .transfer()
        .login(pb::LoginRequest {
            registry: args.registry.clone(),
            username: username.clone(),
            secret,
        })
        .await
        .map_err(|e| {
            explain_remote(
                ClientError::from(e),
                &action,
                &[(
                    ErrorKind::PermissionDenied,
                    "check the username and password (or token) and try again",
                )],
            )
        })?
        .into_inner();
    out.result(
        &json!({ "registry": args.registry, "username": username, "stored_in": response.stored_in }),
        || {
            vec![format!(
                "Login succeeded: {username} at {} (stored in {})",
                args.registry, response.stored_in
            )]
        },
    );
    Ok(())
}

/// Runs `distctl logout REGISTRY`.
pub async fn logout(client: &Client, out: Output, registry: String) -> anyhow::Result<()> {
    let action = format!("logging out of {registry}");
    let response = client
        .transfer()
        .logout(pb::LogoutRequest {
            registry: registry.clone(),
        })
        .await
        .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?
        .into_inner();
    out.result(
        &json!({ "registry": registry, "removed_from": response.removed_from }),
        || {
            vec![format!(
                "Removed the credentials of {registry} from {}",
                response.removed_from
            )]
        },
    );
    Ok(())
}

/// Asks for a line on the terminal; without echo for secrets. Refuses when
/// stdin is not a terminal, pointing at the flags instead.
fn prompt(label: &str, echo: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "stdin is not a terminal: pass the username with -u and the password with --password-stdin"
        );
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{label}")?;
    stderr.flush()?;
    let saved = if echo {
        None
    } else {
        let saved = rustix::termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)
            .context("turning the terminal's echo off")?;
        Some(saved)
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
        writeln!(stderr)?;
    }
    read.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Runs `distctl inspect REF`.
pub async fn inspect(client: &Client, out: Output, args: InspectArgs) -> anyhow::Result<()> {
    let action = format!("inspecting {}", args.reference);
    let found = client
        .transfer()
        .inspect(pb::InspectRequest {
            reference: args.reference.clone(),
            platform: args.platform.unwrap_or_default(),
        })
        .await
        .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?
        .into_inner();
    let parse = |what: &str, bytes: &[u8]| -> anyhow::Result<Value> {
        serde_json::from_slice(bytes).with_context(|| format!("{action}: its {what} is not JSON"))
    };
    let manifest = parse("manifest", &found.manifest)?;
    let config = parse("config", &found.config)?;
    let layers: Vec<(String, i64)> = manifest["layers"]
        .as_array()
        .map(|layers| {
            layers
                .iter()
                .map(|l| {
                    (
                        l["digest"].as_str().unwrap_or("?").to_owned(),
                        l["size"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let manifest_descriptor = found.manifest_descriptor.unwrap_or_default();
    let config_size = manifest["config"]["size"].as_i64().unwrap_or(0);
    // What a pull of this platform stores.
    let size = manifest_descriptor.size
        + config_size
        + layers.iter().map(|(_, size)| size).sum::<i64>()
        + i64::try_from(found.index.len()).unwrap_or(0);
    let target = found.target.unwrap_or_default();
    let platform = format!(
        "{}/{}",
        config["os"].as_str().unwrap_or("?"),
        config["architecture"].as_str().unwrap_or("?")
    );
    let doc = json!({
        "name": found.name,
        "target": { "mediaType": target.media_type, "digest": target.digest, "size": target.size },
        "platforms": found.platforms,
        "platform": platform,
        "manifestDigest": manifest_descriptor.digest,
        "manifest": manifest,
        "config": config,
        "size": size,
    });
    out.result(&doc, || {
        let mut lines = vec![
            format!("Name:       {}", found.name),
            format!("Digest:     {} ({})", target.digest, target.media_type),
        ];
        if !found.platforms.is_empty() {
            lines.push(format!("Platforms:  {}", found.platforms.join(", ")));
            lines.push(format!("Manifest:   {}", manifest_descriptor.digest));
        }
        lines.push(format!("Platform:   {platform}"));
        if let Some(created) = config["created"].as_str() {
            lines.push(format!("Created:    {created}"));
        }
        lines.push(format!(
            "Size:       {} in {} layers",
            output::bytes(size),
            layers.len()
        ));
        for (digest, size) in &layers {
            lines.push(format!("  {digest}  {}", output::bytes(*size)));
        }
        lines
    });
    Ok(())
}
