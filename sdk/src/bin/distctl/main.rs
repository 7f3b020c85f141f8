//! distctl: the command-line client of distd.
//!
//! Every command connects to the daemon's socket (`--socket`, else
//! `DISTD_SOCKET`, else the default), does its work through the SDK's typed
//! client, and prints one result — a table for people or, with `--json`, one
//! JSON document. Failures print one `error: …` line on stderr that says what
//! to do, and exit with status 1.

#![forbid(unsafe_code)]

mod cli;
mod content;
mod explain;
mod export;
mod images;
mod import;
mod layout;
mod output;
mod plugins;
mod registry;
mod source;
mod store;
mod tarwrite;
mod transfer;

use std::process::ExitCode;

use clap::Parser;
use distd_sdk::{Client, paths};

use crate::cli::{Cli, Command};
use crate::output::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&anyhow::anyhow!("starting the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            output::error(&err);
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; returns the exit status it asks for.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let out = Output::new(cli.json);
    let socket = paths::client_socket(cli.socket);
    let client = Client::connect(&socket)
        .await
        .map_err(|e| explain::explain(e, "connecting", &[]))?;
    match cli.command {
        Command::Version => store::version(&client, out).await?,
        Command::Pull(args) => transfer::pull(&client, out, args).await?,
        Command::Push(args) => transfer::push(&client, out, args).await?,
        Command::Copy(args) => transfer::copy(&client, out, args).await?,
        Command::Inspect(args) => registry::inspect(&client, out, args).await?,
        Command::Login(args) => registry::login(&client, out, args).await?,
        Command::Logout { registry } => registry::logout(&client, out, registry).await?,
        Command::Content(cmd) => content::run(&client, out, cmd).await?,
        Command::Images(cmd) => images::run(&client, out, cmd).await?,
        Command::Import(args) => import::run(&client, out, args).await?,
        Command::Export(args) => export::run(&client, out, args).await?,
        Command::Lease(cmd) => store::lease(&client, out, cmd).await?,
        Command::Gc { dry_run } => store::gc(&client, out, dry_run).await?,
        Command::Df => store::df(&client, out).await?,
        Command::Plugins(cmd) => plugins::run(&client, out, cmd).await?,
        Command::Verify => return store::verify(&client, out).await,
    }
    Ok(0)
}
