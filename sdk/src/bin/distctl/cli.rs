//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// distctl: talk to the distd daemon — its content store, images, leases and
/// garbage collection.
#[derive(Debug, Parser)]
#[command(name = "distctl", version)]
pub struct Cli {
    /// The daemon's socket [default: $DISTD_SOCKET, else
    /// $XDG_RUNTIME_DIR/distd/distd.sock, else /run/distd/distd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Machine-readable output: one JSON document on stdout per command.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the versions of distctl and of the daemon.
    Version,
    /// Pull an image from its registry into the store.
    Pull(PullArgs),
    /// Push a local image to its registry (or to another name with --from).
    Push(PushArgs),
    /// Copy an image from one registry to another through the store,
    /// keeping every digest.
    Copy(CopyArgs),
    /// Show an image at its registry (manifest, config, size) without pulling it.
    Inspect(InspectArgs),
    /// Check credentials against a registry and keep them for distd's pulls
    /// (in the daemon's Docker config.json, or its credential helper).
    Login(LoginArgs),
    /// Forget distd's credentials for a registry.
    Logout {
        /// Registry host, e.g. `registry.example.com:5000` or `docker.io`.
        registry: String,
    },
    /// Blobs of the content store.
    #[command(subcommand)]
    Content(ContentCmd),
    /// Image names.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Import an OCI image layout directory or a docker-archive tar file.
    Import(ImportArgs),
    /// Export an image as an OCI image layout directory or a docker-archive tar.
    Export(ExportArgs),
    /// Leases that protect content from garbage collection.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Remove blobs that no image, lease or ingest needs.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the store's disk usage.
    Df,
    /// The transports content moves through: built-in and external plugins.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Re-hash every blob and report missing, corrupt and orphan files
    /// (exit status 1 when there are any).
    Verify,
}

/// `plugins` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginsCmd {
    /// List transports with their health, what they can do and what they
    /// moved since the daemon started.
    Ls,
    /// Register an external plugin that listens on a Unix socket (until the
    /// daemon stops; declare it with [[plugin]] in the config to keep it).
    Add {
        /// How routes name it, e.g. `oci-dir`.
        name: String,
        /// The plugin's socket (`--socket` is the daemon's).
        #[arg(value_name = "PLUGIN_SOCKET")]
        plugin_socket: PathBuf,
    },
    /// Remove an external plugin (stopping it if the daemon started it).
    Rm {
        /// Its name.
        name: String,
    },
}

/// `pull` arguments.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. `alpine`, `host:5000/app:1.0`, `app@sha256:…`.
    pub reference: String,
    /// Platform to pick from a multi-platform image, `os/arch[/variant]`
    /// [default: the daemon's host].
    #[arg(long, value_name = "PLATFORM", conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Pull every platform of a multi-platform image.
    #[arg(long)]
    pub all_platforms: bool,
}

/// `push` arguments.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Where to push, `registry/repository:tag`.
    pub reference: String,
    /// The local image to push [default: the one named REFERENCE].
    #[arg(long, value_name = "LOCAL_NAME")]
    pub from: Option<String>,
    /// Push only this platform of a multi-platform image, `os/arch[/variant]`.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
}

/// `copy` arguments.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Image to copy, e.g. `host:5000/app:1.0`.
    pub source: String,
    /// Where to copy it, `registry/repository:tag`.
    pub destination: String,
    /// Copy only this platform, `os/arch[/variant]` [default: every platform].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
}

/// `inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image reference, e.g. `alpine`, `host:5000/app:1.0`, `app@sha256:…`.
    pub reference: String,
    /// Platform to show from a multi-platform image, `os/arch[/variant]`
    /// [default: the daemon's host].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
}

/// `login` arguments.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host, e.g. `registry.example.com:5000` or `docker.io`.
    pub registry: String,
    /// Username [default: asked on the terminal].
    #[arg(short, long, value_name = "USER")]
    pub username: Option<String>,
    /// Read the password (or token) from stdin instead of the terminal.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `content` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContentCmd {
    /// List blobs.
    Ls {
        /// Only digests that start with this (e.g. sha256:ab).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Only blobs with exactly this media type.
        #[arg(long, value_name = "M")]
        media_type: Option<String>,
    },
    /// Show what the store records for a blob.
    Info {
        /// The blob's digest.
        digest: String,
    },
    /// Write a blob to a file, or to stdout.
    Get {
        /// The blob's digest.
        digest: String,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Skip re-hashing the bytes on arrival (distd verified them when
        /// they were committed; `distctl verify` re-checks the store).
        #[arg(long)]
        no_verify: bool,
    },
    /// Upload a file (or stdin, `-`) as a blob and print its digest.
    Put(PutArgs),
    /// Remove a blob now, referenced or not.
    Rm {
        /// The blob's digest.
        digest: String,
    },
    /// List the ingests (uploads) in progress.
    Ingests,
    /// Discard an ingest.
    Abort {
        /// The ingest's ref.
        #[arg(value_name = "REF")]
        ingest_ref: String,
    },
}

/// Arguments of `content put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Digest the content must have; the upload fails if it does not.
    #[arg(long, value_name = "DIGEST")]
    pub expected: Option<String>,
    /// Name of the ingest; the same ref resumes an interrupted upload.
    /// Default: derived from the file's path, size and mtime (random for stdin).
    #[arg(long = "ref", value_name = "REF")]
    pub ingest_ref: Option<String>,
    /// Media type to record with the blob.
    #[arg(long, value_name = "M")]
    pub media_type: Option<String>,
    /// Lease that protects the blob from garbage collection.
    #[arg(long, value_name = "ID")]
    pub lease: Option<String>,
    /// The file to upload; `-` reads stdin.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
}

/// `images` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// List images.
    Ls,
    /// Remove an image name (its content stays until `distctl gc`).
    Rm {
        /// The image's name.
        name: String,
    },
    /// Give the target of image SRC the name DST too.
    Tag {
        /// Existing image name.
        src: String,
        /// New name.
        dst: String,
    },
}

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// OCI image layout directory, or docker-archive tar file.
    pub path: PathBuf,
    /// Name of the image to create (default: from the layout's annotations or
    /// the archive's RepoTags).
    #[arg(long)]
    pub name: Option<String>,
}

/// Archive formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// OCI image layout directory.
    Oci,
    /// Tar file loadable by `docker load` (also an OCI layout).
    DockerArchive,
}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The image's name.
    pub name: String,
    /// Directory (oci) or file (docker-archive) to write.
    pub path: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ExportFormat::Oci)]
    pub format: ExportFormat,
}

/// `lease` subcommands.
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Start a lease and print its id.
    Create {
        /// Lease id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Lifetime, e.g. 10m, 2h (default: until deleted).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expire: Option<std::time::Duration>,
    },
    /// List leases.
    Ls,
    /// End a lease.
    Rm {
        /// The lease's id.
        id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let cli = Cli::try_parse_from([
            "distctl",
            "--json",
            "content",
            "put",
            "--expected",
            "sha256:x",
            "--ref",
            "r",
            "--media-type",
            "m",
            "--lease",
            "l",
            "-",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Content(ContentCmd::Put(put)) = cli.command else {
            panic!("not a put");
        };
        assert_eq!(put.file, PathBuf::from("-"));
        assert_eq!(put.ingest_ref.as_deref(), Some("r"));

        let cli = Cli::try_parse_from(["distctl", "lease", "create", "--expire", "10m"]).unwrap();
        let Command::Lease(LeaseCmd::Create { expire, .. }) = cli.command else {
            panic!("not a lease create");
        };
        assert_eq!(expire, Some(std::time::Duration::from_secs(600)));

        let cli =
            Cli::try_parse_from(["distctl", "export", "a:1", "/tmp/x", "--socket", "/s"]).unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/s")));
        let Command::Export(export) = cli.command else {
            panic!("not an export");
        };
        assert_eq!(export.format, ExportFormat::Oci);
        let cli = Cli::try_parse_from([
            "distctl",
            "export",
            "a:1",
            "/tmp/x.tar",
            "--format",
            "docker-archive",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Export(ExportArgs {
                format: ExportFormat::DockerArchive,
                ..
            })
        ));
    }
}
