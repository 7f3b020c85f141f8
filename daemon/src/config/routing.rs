//! `[[plugin]]` and `[[route]]`: which transports exist besides the built-in
//! registry one, and which of them serve which registries, in which order.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The built-in transport's name, and the route of registries no
/// `[[route]]` matches.
pub const REGISTRY_TRANSPORT: &str = "registry";

/// `[[plugin]]`: an external transport, a process serving
/// `distd.transport.v1` on a Unix socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// How routes and events name it.
    pub name: String,
    /// Connect to a plugin someone else runs, listening here.
    pub socket: Option<PathBuf>,
    /// Or start it: the command line, run with `DISTD_PLUGIN_SOCKET` set to
    /// the socket it must listen on (`{socket}` in an argument is replaced
    /// by that path too), restarted with backoff when it exits.
    #[serde(default)]
    pub exec: Vec<String>,
}

/// `[[route]]`: the transports that serve the registries or repositories
/// `match` names, tried in order for every blob.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `registry.example.com`, `registry.example.com/team/*`, `*`: without a
    /// `/` the pattern names whole registries, with one `host/repository`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Transport names, first tried first.
    pub transports: Vec<String>,
}

/// Whether `name` can name a plugin: lower-case letters, digits, `-`, `_`,
/// at most 64 of them, starting with a letter.
pub fn valid_plugin_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks that `name` (at config key `key`) can name a transport and is
/// not taken yet, and takes it.
pub fn claim_name<'a>(
    key: String,
    name: &'a str,
    taken: &mut HashSet<&'a str>,
) -> Result<(), ConfigError> {
    if !valid_plugin_name(name) {
        return Err(ConfigError::InvalidEntry {
            key,
            message: format!(
                "{name:?} is not a transport name: use lower-case letters, digits, '-' and '_'"
            ),
        });
    }
    if name == REGISTRY_TRANSPORT || !taken.insert(name) {
        return Err(ConfigError::InvalidEntry {
            key,
            message: format!("{name:?} is already taken"),
        });
    }
    Ok(())
}

/// Checks `[[plugin]]` and `[[route]]` entries; a bad one is named by its
/// position, e.g. `plugin[2].exec`.
pub fn validate<'a>(
    plugins: &'a [PluginConfig],
    routes: &[RouteConfig],
    names: &mut HashSet<&'a str>,
) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::InvalidEntry { key, message };
    for (i, plugin) in plugins.iter().enumerate() {
        claim_name(format!("plugin[{i}].name"), &plugin.name, names)?;
        match (&plugin.socket, plugin.exec.is_empty()) {
            (Some(_), false) | (None, true) => {
                return Err(invalid(
                    format!("plugin[{i}]"),
                    format!(
                        "plugin {:?}: set either `socket` (connect to it) or `exec` (start it)",
                        plugin.name
                    ),
                ));
            }
            (Some(socket), true) if !socket.is_absolute() => {
                return Err(invalid(
                    format!("plugin[{i}].socket"),
                    format!("{} is not an absolute path", socket.display()),
                ));
            }
            _ => {}
        }
        if plugin
            .exec
            .first()
            .is_some_and(|program| program.is_empty())
        {
            return Err(invalid(
                format!("plugin[{i}].exec"),
                "the first element must be the program to run".into(),
            ));
        }
    }
    for (i, route) in routes.iter().enumerate() {
        if route.pattern.is_empty() {
            return Err(invalid(
                format!("route[{i}].match"),
                "must name a registry or a host/repository pattern, e.g. \"registry.example.com/*\""
                    .into(),
            ));
        }
        if route.transports.is_empty() {
            return Err(invalid(
                format!("route[{i}].transports"),
                "must list at least one transport, e.g. [\"registry\"]".into(),
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
    fn plugins_and_routes_parse() {
        let config: Config = toml::from_str(
            r#"
            [[plugin]]
            name = "oci-dir"
            exec = ["/usr/bin/distd-oci-dir", "/srv/images"]
            [[plugin]]
            name = "p2p_2"
            socket = "/run/p2p.sock"
            [[route]]
            match = "registry.example.com/*"
            transports = ["oci-dir", "registry"]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.plugins.len(), 2);
        assert_eq!(config.routes[0].pattern, "registry.example.com/*");
        assert_eq!(config.routes[0].transports, ["oci-dir", "registry"]);
    }

    #[test]
    fn bad_entries_are_named_by_position() {
        let both = "[[plugin]]\nname = \"a\"\nsocket = \"/s\"\nexec = [\"x\"]";
        assert!(check(both).unwrap_err().contains("plugin[0]"));
        let neither = "[[plugin]]\nname = \"a\"";
        assert!(check(neither).unwrap_err().contains("either `socket`"));
        let relative = "[[plugin]]\nname = \"a\"\nsocket = \"s.sock\"";
        assert!(check(relative).unwrap_err().contains("plugin[0].socket"));
        let name = "[[plugin]]\nname = \"Bad Name\"\nsocket = \"/s\"";
        assert!(check(name).unwrap_err().contains("plugin[0].name"));
        let taken = "[[plugin]]\nname = \"registry\"\nsocket = \"/s\"";
        assert!(check(taken).unwrap_err().contains("already taken"));
        let twice =
            "[[plugin]]\nname = \"a\"\nsocket = \"/s\"\n[[plugin]]\nname = \"a\"\nsocket = \"/t\"";
        assert!(check(twice).unwrap_err().contains("plugin[1].name"));
        let empty = "[[route]]\nmatch = \"h\"\ntransports = []";
        assert!(check(empty).unwrap_err().contains("route[0].transports"));
    }
}
