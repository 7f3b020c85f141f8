//! `[[route]]` entries turned into the ordered, usable transports of one
//! repository: the first entry whose pattern matches wins; registries no
//! entry matches go through the built-in registry transport alone.

use std::sync::Arc;

use distd_sdk::glob::matches_locator;
use distd_sdk::{ErrorKind, Locator};

use super::Plugins;
use crate::config::{REGISTRY_TRANSPORT, RouteConfig};
use crate::transfer::{Route, TransferError};

/// Picks the transports of a transfer. Clones share the table.
#[derive(Clone)]
pub struct Router {
    routes: Arc<Vec<RouteConfig>>,
    plugins: Plugins,
}

impl Router {
    /// A router over the config's routes and the transport table; names a
    /// route uses that the table lacks are logged (they may be registered
    /// later through the API).
    pub fn new(routes: Vec<RouteConfig>, plugins: Plugins) -> Router {
        for (i, route) in routes.iter().enumerate() {
            for name in &route.transports {
                if plugins.get(name).is_none() {
                    tracing::warn!(route = i, pattern = %route.pattern, transport = %name, "route names a transport that is not registered (yet): declare it with [[plugin]] or `distctl plugins add`");
                }
            }
        }
        Router {
            routes: Arc::new(routes),
            plugins,
        }
    }

    /// The transport table.
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// The transport names configured for `locator`, in order.
    pub fn names_for(&self, locator: &Locator) -> Vec<String> {
        self.routes
            .iter()
            .find(|route| matches_locator(&route.pattern, locator))
            .map_or_else(
                || vec![REGISTRY_TRANSPORT.to_owned()],
                |route| route.transports.clone(),
            )
    }

    /// The usable transports for `locator`, in order. Missing or unhealthy
    /// ones are left out (and listed, for a warning); UNAVAILABLE when none
    /// is left, saying why each was left out.
    pub async fn route(&self, locator: &Locator) -> Result<Route, TransferError> {
        let mut hops = Vec::new();
        let mut left_out = Vec::new();
        for name in self.names_for(locator) {
            let Some(plugin) = self.plugins.get(&name) else {
                left_out.push(format!(
                    "{name}: not registered (declare it with [[plugin]] or `distctl plugins add`)"
                ));
                continue;
            };
            match plugin.usable().await {
                Ok(()) => hops.push(plugin.hop()),
                Err(why) => {
                    tracing::warn!(plugin = %name, reason = %why, "leaving an unhealthy transport out of the route");
                    left_out.push(format!("{name}: {why}"));
                }
            }
        }
        if hops.is_empty() {
            return Err(TransferError::NoTransport {
                kind: ErrorKind::Unavailable,
                locator: locator.to_string(),
                detail: format!(
                    "{}; check `distctl plugins ls` and the daemon's log",
                    left_out.join("; ")
                ),
            });
        }
        Ok(Route {
            locator: locator.clone(),
            hops,
            left_out,
        })
    }
}
