//! `distctl plugins ls | add | rm`: the daemon's transports, their health
//! and what they moved.

use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Client, ClientError};
use serde_json::json;

use crate::cli::PluginsCmd;
use crate::explain::explain_remote;
use crate::output::{self, Output};

/// Runs a `plugins` subcommand.
pub async fn run(client: &Client, out: Output, cmd: PluginsCmd) -> anyhow::Result<()> {
    match cmd {
        PluginsCmd::Ls => list(client, out).await,
        PluginsCmd::Add {
            name,
            plugin_socket: socket,
        } => {
            let action = format!("adding plugin {name}");
            let socket = std::path::absolute(&socket)
                .map_err(|e| anyhow::anyhow!("{action}: {}: {e}", socket.display()))?;
            let plugin = client
                .plugins()
                .register(pb::RegisterPluginRequest {
                    name: name.clone(),
                    socket: socket.display().to_string(),
                })
                .await
                .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?
                .into_inner()
                .plugin
                .unwrap_or_default();
            out.result(&plugin_json(&plugin), || {
                let mut lines = vec![format!("added {} ({})", plugin.name, plugin.socket)];
                if !plugin.healthy {
                    lines.push(format!(
                        "warning: it is not answering yet: {}; routes skip it until it does",
                        plugin.status
                    ));
                }
                lines
            });
            Ok(())
        }
        PluginsCmd::Rm { name } => {
            let action = format!("removing plugin {name}");
            client
                .plugins()
                .unregister(pb::UnregisterPluginRequest { name: name.clone() })
                .await
                .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?;
            out.result(&json!({ "removed": name }), || {
                vec![format!("removed {name}")]
            });
            Ok(())
        }
    }
}

async fn list(client: &Client, out: Output) -> anyhow::Result<()> {
    let plugins = client
        .plugins()
        .list(pb::ListPluginsRequest {})
        .await
        .map_err(|e| explain_remote(ClientError::from(e), "listing plugins", &[]))?
        .into_inner()
        .plugins;
    let doc = json!({ "plugins": plugins.iter().map(plugin_json).collect::<Vec<_>>() });
    out.result(&doc, || {
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.kind.clone(),
                    if p.healthy {
                        "healthy".into()
                    } else {
                        format!("unhealthy: {}", p.status)
                    },
                    capabilities(p),
                    output::bytes(i64::try_from(p.bytes_served).unwrap_or(i64::MAX)),
                    p.errors.to_string(),
                    p.bad_blobs.to_string(),
                    match p.kind.as_str() {
                        "exec" => format!("pid {} restarts {}", p.pid, p.restarts),
                        "socket" => p.socket.clone(),
                        _ => String::new(),
                    },
                ]
            })
            .collect();
        Output::table(
            &[
                "NAME", "KIND", "HEALTH", "CAN", "SERVED", "ERRORS", "BAD", "PROCESS",
            ],
            &rows,
        )
    });
    Ok(())
}

fn capabilities(p: &pb::Plugin) -> String {
    let all = [
        (p.resolve, "resolve"),
        (p.fetch, "fetch"),
        (p.ranged_fetch, "ranged"),
        (p.push, "push"),
        (p.mount, "mount"),
    ];
    let can: Vec<&str> = all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
    if can.is_empty() {
        "-".into()
    } else {
        can.join(",")
    }
}

fn plugin_json(p: &pb::Plugin) -> serde_json::Value {
    json!({
        "name": p.name,
        "kind": p.kind,
        "socket": p.socket,
        "exec": p.exec,
        "healthy": p.healthy,
        "status": p.status,
        "version": p.version,
        "capabilities": {
            "resolve": p.resolve, "fetch": p.fetch, "ranged_fetch": p.ranged_fetch,
            "push": p.push, "mount": p.mount,
        },
        "registries": p.registries,
        "bytes_served": p.bytes_served,
        "errors": p.errors,
        "bad_blobs": p.bad_blobs,
        "restarts": p.restarts,
        "pid": p.pid,
    })
}
