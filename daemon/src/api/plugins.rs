//! The `Plugins` service: the transport table, its health and counters.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use distd_proto::distd::v1 as pb;
use tonic::{Request, Response, Status};

use crate::plugins::{Origin, Plugin, Plugins, PluginsError};

/// Serves `Plugins` over the daemon's transport table.
pub struct PluginsService {
    plugins: Plugins,
}

impl PluginsService {
    /// A service over `plugins`.
    pub fn new(plugins: Plugins) -> Self {
        PluginsService { plugins }
    }
}

fn plugins_status(error: PluginsError) -> Status {
    Status::new(error.kind().to_code(), error.to_string())
}

/// Describes `plugin` after asking it for its health.
async fn describe(plugin: &Plugin) -> pb::Plugin {
    let health = plugin.check().await;
    let description = plugin.transport.describe();
    let (kind, exec, restarts, pid) = match &plugin.origin {
        Origin::Builtin => ("builtin", Vec::new(), 0, 0),
        Origin::Socket(_) => ("socket", Vec::new(), 0, 0),
        Origin::Exec { argv, process, .. } => {
            ("exec", argv.clone(), process.restarts(), process.pid())
        }
    };
    let capabilities = description.capabilities;
    pb::Plugin {
        name: plugin.name.clone(),
        kind: kind.to_owned(),
        socket: plugin
            .socket()
            .map(|s| s.display().to_string())
            .unwrap_or_default(),
        exec,
        healthy: health.is_ok(),
        status: health.err().unwrap_or_default(),
        version: description.version,
        resolve: capabilities.resolve,
        fetch: capabilities.fetch,
        ranged_fetch: capabilities.ranged_fetch,
        push: capabilities.push,
        mount: capabilities.mount,
        registries: description.registries,
        bytes_served: plugin.stats.bytes.load(Ordering::Relaxed),
        errors: plugin.stats.errors.load(Ordering::Relaxed),
        bad_blobs: plugin.stats.bad_blobs.load(Ordering::Relaxed),
        restarts,
        pid,
    }
}

#[tonic::async_trait]
impl pb::plugins_server::Plugins for PluginsService {
    async fn list(
        &self,
        _: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let mut plugins = Vec::new();
        for plugin in self.plugins.list() {
            plugins.push(describe(&plugin).await);
        }
        Ok(Response::new(pb::ListPluginsResponse { plugins }))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterPluginRequest>,
    ) -> Result<Response<pb::RegisterPluginResponse>, Status> {
        let request = request.into_inner();
        if request.socket.is_empty() {
            return Err(Status::invalid_argument(
                "give the plugin's socket path; plugins the daemon starts itself are declared with `exec` in [[plugin]]",
            ));
        }
        let plugin = self
            .plugins
            .register(&request.name, PathBuf::from(&request.socket))
            .map_err(plugins_status)?;
        Ok(Response::new(pb::RegisterPluginResponse {
            plugin: Some(describe(&plugin).await),
        }))
    }

    async fn unregister(
        &self,
        request: Request<pb::UnregisterPluginRequest>,
    ) -> Result<Response<pb::UnregisterPluginResponse>, Status> {
        self.plugins
            .unregister(&request.into_inner().name)
            .await
            .map_err(plugins_status)?;
        Ok(Response::new(pb::UnregisterPluginResponse {}))
    }
}
