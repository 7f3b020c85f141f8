//! `distd`: the host-local image distribution daemon.
//!
//! Runs in the foreground: opens the content store, serves the gRPC API on a
//! Unix socket, collects garbage by disk watermarks, and stops cleanly on
//! SIGINT/SIGTERM.

#![forbid(unsafe_code)]

mod api;
mod config;
mod error;
mod failpoint;
mod gc;
mod meta;
mod plugins;
mod server;
mod store;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::config::{Config, LogFormat};
use crate::gc::watermark::{self, Watermarks};
use crate::store::{Store, StoreOptions};

/// Host-local image distribution daemon: a verified content store and its
/// gRPC API on a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; every key is optional.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Store directory [default: $XDG_DATA_HOME/distd, or /var/lib/distd as root].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// API socket [default: $XDG_RUNTIME_DIR/distd/distd.sock, or /run/distd/distd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("distd: error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    init_logging(
        args.log_format.or(config.log.format).unwrap_or_default(),
        &config,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, config: &Config) {
    let default = config.log.level.clone().unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: Args, config: Config) -> anyhow::Result<()> {
    let root = args
        .root
        .or(config.root.clone())
        .unwrap_or_else(distd_sdk::paths::default_root);
    let socket = args
        .socket
        .or(config.socket.clone())
        .unwrap_or_else(distd_sdk::paths::default_socket);
    let options = StoreOptions {
        ingest_expiry: config.store.ingest_expiry,
    };
    let opening = root.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&opening, options))
        .await
        .context("opening the store")?
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    let listener = server::bind_socket(&socket)?;
    tracing::info!(root = %root.display(), socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "distd ready");

    if let Some(high) = config.gc.high_watermark {
        let marks = Watermarks {
            high,
            low: config.low_watermark().unwrap_or(high),
        };
        tokio::spawn(watermark::run(
            store.clone(),
            marks,
            config.gc.check_interval,
        ));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = tokio::spawn(server::wait_for_signal(stop_tx));
    let registry = Arc::new(
        distd_plugin_registry::RegistryTransport::new(
            config.registry_options(args.config.as_deref()),
        )
        .map_err(|e| anyhow::anyhow!("cannot set up the registry transport: {e}"))?,
    );
    // Plugins the daemon starts listen beside its own socket.
    let exec_dir = socket
        .parent()
        .map_or_else(|| PathBuf::from("plugins"), |dir| dir.join("plugins"));
    let table = plugins::Plugins::new(registry.clone(), exec_dir);
    table
        .add_configured(&config.plugins)
        .context("adding the [[plugin]] entries")?;
    for (i, s3) in config.s3.iter().enumerate() {
        let transport = distd_plugin_s3::S3Transport::new(s3.transport_config())
            .map_err(|e| anyhow::anyhow!("config key `s3[{i}]` ({}): {e}", s3.name))?;
        table
            .add_builtin(&s3.name, Arc::new(transport))
            .with_context(|| format!("adding the s3 transport {}", s3.name))?;
    }
    let router = plugins::Router::new(config.routes.clone(), table.clone());
    let pulls = transfer::PullDefaults::from(&config.transfer);
    let pushes = transfer::PushOptions {
        concurrency: config.push.concurrency,
        ..transfer::PushOptions::default()
    };
    let serving = api::serve(
        store.clone(),
        registry,
        router,
        pulls,
        pushes,
        listener,
        server::stopped(stop_rx.clone()),
    );
    let grace = async {
        server::stopped(stop_rx).await;
        tokio::time::sleep(server::SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        served = serving => served.context("serving the API"),
        () = grace => {
            tracing::warn!("in-flight calls did not finish within the grace period; exiting (their ingests stay resumable)");
            Ok(())
        }
    };
    signals.abort();
    table.shutdown().await;
    // Let collected files finish unlinking; whatever is left, startup removes.
    let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, store.settled()).await;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, socket = %socket.display(), "could not remove the socket");
    }
    tracing::info!("distd stopped");
    result
}
