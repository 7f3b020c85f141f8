//! The transport table: the built-in registry transport and external
//! plugins (processes serving `distd.transport.v1` on a Unix socket), each
//! with its health and counters. Plugins come from `[[plugin]]` in the
//! config (connected to, or started and kept running) and from the
//! `Plugins` API at run time. The [`Router`] turns `[[route]]` entries into
//! the ordered transports of a pull.

mod router;
mod supervisor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use distd_sdk::plugin::RemoteTransport;
use distd_sdk::{ErrorKind, Transport};

pub use router::Router;
pub use supervisor::Supervised;

use crate::config::{PluginConfig, REGISTRY_TRANSPORT, valid_plugin_name};
use crate::transfer::{Hop, TransportStats};

/// A health answer younger than this is reused by routes.
const HEALTH_FRESH: Duration = Duration::from_secs(3);
/// A failed health answer younger than this is reused by routes.
const FAILURE_FRESH: Duration = Duration::from_secs(1);
/// How long a route waits for a plugin the daemon has just (re)started.
const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// Why a plugin cannot be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum PluginsError {
    /// The name is malformed.
    #[error(
        "{0:?} is not a plugin name: use lower-case letters, digits, '-' and '_', starting with a letter"
    )]
    BadName(String),
    /// The socket path is not absolute.
    #[error("{0} is not an absolute socket path")]
    RelativeSocket(PathBuf),
    /// The name is taken.
    #[error("a transport named {0:?} exists already; remove it first or choose another name")]
    Exists(String),
    /// No such plugin.
    #[error("no plugin named {0:?}; `distctl plugins ls` lists them")]
    Missing(String),
    /// Built-ins stay.
    #[error("{0:?} is built in and cannot be removed")]
    BuiltIn(String),
    /// Config entries stay.
    #[error(
        "{0:?} is declared in the daemon's config; remove its entry there and restart the daemon"
    )]
    Declared(String),
}

impl PluginsError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PluginsError::BadName(_) | PluginsError::RelativeSocket(_) => {
                ErrorKind::InvalidArgument
            }
            PluginsError::Exists(_) => ErrorKind::AlreadyExists,
            PluginsError::Missing(_) => ErrorKind::NotFound,
            PluginsError::BuiltIn(_) | PluginsError::Declared(_) => ErrorKind::FailedPrecondition,
        }
    }
}

/// How a transport came to be.
#[derive(Debug)]
pub enum Origin {
    /// Linked into the daemon.
    Builtin,
    /// An external plugin the daemon connects to.
    Socket(PathBuf),
    /// An external plugin the daemon runs.
    Exec {
        /// Its command line.
        argv: Vec<String>,
        /// The socket it was told to listen on.
        socket: PathBuf,
        /// Its process.
        process: Arc<Supervised>,
    },
}

/// One transport of the table.
pub struct Plugin {
    /// How routes name it.
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// The transport (for external plugins, the gRPC adapter).
    pub transport: Arc<dyn Transport>,
    /// What it did since the daemon started.
    pub stats: Arc<TransportStats>,
    /// Declared in the config (`[[plugin]]`, `[[s3]]`) rather than
    /// registered through the API: only the config removes it.
    pub declared: bool,
    /// The last health answer: when, and the error if unhealthy.
    health: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Plugin {
    fn new(name: String, origin: Origin, transport: Arc<dyn Transport>) -> Plugin {
        Plugin {
            name,
            origin,
            transport,
            stats: Arc::default(),
            declared: true,
            health: Mutex::new(None),
        }
    }

    /// Asks the plugin now whether it can serve (refreshing what it says it
    /// can do); the error says why not.
    pub async fn check(&self) -> Result<(), String> {
        let answer =
            match tokio::time::timeout(Duration::from_secs(3), self.transport.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.message),
                Err(_) => Err("did not answer its health check within 3s".to_owned()),
            };
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), answer.clone()));
        answer
    }

    /// Whether routes may use it: a recent health answer is reused; a
    /// plugin the daemon has just started is given time to come up.
    pub async fn usable(&self) -> Result<(), String> {
        let cached = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A healthy answer is reused for a few seconds, a failure for one
        // (so that many pulls do not each wait on a dead plugin).
        if let Some((at, answer)) = cached {
            let fresh = if answer.is_ok() {
                HEALTH_FRESH
            } else {
                FAILURE_FRESH
            };
            if at.elapsed() < fresh {
                return answer;
            }
        }
        let mut answer = self.check().await;
        if let Origin::Exec { process, .. } = &self.origin {
            while answer.is_err() && process.starting(STARTUP_WAIT) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                answer = self.check().await;
            }
        }
        answer
    }

    /// This transport as a hop of a route.
    pub fn hop(&self) -> Hop {
        Hop {
            name: self.name.clone(),
            transport: Arc::clone(&self.transport),
            stats: Arc::clone(&self.stats),
        }
    }

    /// The socket it is reached on, if external.
    pub fn socket(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Builtin => None,
            Origin::Socket(socket) | Origin::Exec { socket, .. } => Some(socket),
        }
    }
}

/// The daemon's transports, by name. Clones share the table.
#[derive(Clone)]
pub struct Plugins {
    table: Arc<RwLock<BTreeMap<String, Arc<Plugin>>>>,
    /// Where plugins the daemon starts get their sockets.
    exec_dir: PathBuf,
}

impl Plugins {
    /// A table holding the built-in registry transport; plugins it starts
    /// listen on sockets in `exec_dir`.
    pub fn new(registry: Arc<dyn Transport>, exec_dir: PathBuf) -> Plugins {
        let builtin = Plugin::new(REGISTRY_TRANSPORT.to_owned(), Origin::Builtin, registry);
        let table = BTreeMap::from([(REGISTRY_TRANSPORT.to_owned(), Arc::new(builtin))]);
        Plugins {
            table: Arc::new(RwLock::new(table)),
            exec_dir,
        }
    }

    /// Adds a transport linked into the daemon (an `[[s3]]` entry) under
    /// `name`; it cannot be unregistered.
    pub fn add_builtin(
        &self,
        name: &str,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Plugin>, PluginsError> {
        check_name(name)?;
        self.insert(Plugin::new(name.to_owned(), Origin::Builtin, transport))
    }

    /// Adds the config's `[[plugin]]` entries, starting the `exec` ones. A
    /// plugin that is not up yet is no error: routes skip it until it is.
    pub fn add_configured(&self, configs: &[PluginConfig]) -> Result<(), PluginsError> {
        for config in configs {
            let plugin = match &config.socket {
                Some(socket) => self.socket_plugin(&config.name, socket.clone())?,
                None => self.exec_plugin(&config.name, config.exec.clone())?,
            };
            self.insert(plugin)?;
        }
        Ok(())
    }

    fn socket_plugin(&self, name: &str, socket: PathBuf) -> Result<Plugin, PluginsError> {
        check_name(name)?;
        if !socket.is_absolute() {
            return Err(PluginsError::RelativeSocket(socket));
        }
        let transport = Arc::new(RemoteTransport::new(name, socket.clone()));
        Ok(Plugin::new(
            name.to_owned(),
            Origin::Socket(socket),
            transport,
        ))
    }

    fn exec_plugin(&self, name: &str, argv: Vec<String>) -> Result<Plugin, PluginsError> {
        check_name(name)?;
        let socket = self.exec_dir.join(format!("{name}.sock"));
        let transport = Arc::new(RemoteTransport::new(name, socket.clone()));
        let process = supervisor::start(name, &argv, &socket);
        Ok(Plugin::new(
            name.to_owned(),
            Origin::Exec {
                argv,
                socket,
                process,
            },
            transport,
        ))
    }

    fn insert(&self, plugin: Plugin) -> Result<Arc<Plugin>, PluginsError> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if table.contains_key(&plugin.name) {
            return Err(PluginsError::Exists(plugin.name));
        }
        let plugin = Arc::new(plugin);
        table.insert(plugin.name.clone(), Arc::clone(&plugin));
        tracing::info!(plugin = %plugin.name, socket = ?plugin.socket(), "transport plugin added");
        Ok(plugin)
    }

    /// Registers an external plugin listening on `socket` (until the daemon
    /// stops).
    pub fn register(&self, name: &str, socket: PathBuf) -> Result<Arc<Plugin>, PluginsError> {
        if self.get(name).is_some() {
            return Err(PluginsError::Exists(name.to_owned()));
        }
        let mut plugin = self.socket_plugin(name, socket)?;
        plugin.declared = false;
        self.insert(plugin)
    }

    /// Removes a plugin, stopping its process if the daemon runs it.
    pub async fn unregister(&self, name: &str) -> Result<(), PluginsError> {
        let removed = {
            let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
            match table.get(name) {
                None => return Err(PluginsError::Missing(name.to_owned())),
                Some(p) if matches!(p.origin, Origin::Builtin) => {
                    return Err(PluginsError::BuiltIn(name.to_owned()));
                }
                Some(p) if p.declared => return Err(PluginsError::Declared(name.to_owned())),
                Some(_) => table.remove(name),
            }
        };
        if let Some(plugin) = removed {
            if let Origin::Exec { process, .. } = &plugin.origin {
                process.stop().await;
            }
            tracing::info!(plugin = %name, "transport plugin removed");
        }
        Ok(())
    }

    /// The transport named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every transport, by name.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stops the plugins the daemon runs, all at once.
    pub async fn shutdown(&self) {
        let processes: Vec<Arc<Supervised>> = self
            .list()
            .iter()
            .filter_map(|plugin| match &plugin.origin {
                Origin::Exec { process, .. } => Some(Arc::clone(process)),
                _ => None,
            })
            .collect();
        for process in &processes {
            process.request_stop();
        }
        for process in &processes {
            process.stop().await;
        }
    }
}

fn check_name(name: &str) -> Result<(), PluginsError> {
    if valid_plugin_name(name) {
        Ok(())
    } else {
        Err(PluginsError::BadName(name.to_owned()))
    }
}
