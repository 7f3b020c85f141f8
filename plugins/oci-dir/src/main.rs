//! `distd-oci-dir`: serves OCI image layout directories to distd as a
//! transport plugin.
//!
//! ```text
//! distd-oci-dir [--socket PATH] [--registry PATTERN]... DIR...
//! ```
//!
//! The daemon starts it with `DISTD_PLUGIN_SOCKET` set; `--socket` is for
//! running it by hand. It serves until SIGTERM.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use distd_plugin_oci_dir::OciDir;

/// Serve images from OCI image layout directories to distd.
#[derive(Debug, Parser)]
#[command(name = "distd-oci-dir", version)]
struct Args {
    /// Unix socket to serve on [default: $DISTD_PLUGIN_SOCKET, which the
    /// daemon sets when it starts the plugin].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// A registry (or `host/repository` glob) to serve; repeatable. None
    /// means any.
    #[arg(long = "registry", value_name = "PATTERN")]
    registries: Vec<String>,
    /// OCI image layout directories (each with `oci-layout` and
    /// `index.json`), searched in this order.
    #[arg(value_name = "DIR", required = true)]
    dirs: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = args
        .socket
        .or_else(distd_sdk::plugin::socket_from_env)
        .context("no socket to serve on: pass --socket PATH or set DISTD_PLUGIN_SOCKET")?;
    let transport = OciDir::open(args.dirs)?.with_registries(args.registries);
    let layouts: Vec<_> = transport
        .layouts()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    eprintln!(
        "distd-oci-dir {} (pid {}): serving {} on {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        layouts.join(", "),
        socket.display()
    );
    distd_sdk::plugin::serve(&socket, transport)
        .await
        .with_context(|| format!("serving on {}", socket.display()))?;
    Ok(())
}
