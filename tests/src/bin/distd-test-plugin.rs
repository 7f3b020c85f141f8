//! `distd-test-plugin`: a transport plugin that misbehaves on purpose, for
//! the end-to-end tests. It serves OCI image layouts like `distd-oci-dir`,
//! but declares only `fetch` and `ranged_fetch` (so the registry resolves
//! tags) and breaks fetches the way `--mode` says:
//!
//! - `good`: plain `oci-dir` behaviour, minus resolve.
//! - `die-after --bytes N`: a fetch that would send more than N bytes sends
//!   the first N, then the whole process exits with status 3 (after ~100 ms,
//!   so the bytes get out): mid-blob failover. Smaller fetches are served
//!   whole.
//! - `wrong-bytes`: the first byte each fetch sends is flipped (same length).
//! - `ignore-offset`: every fetch streams from 0, whatever the offset.
//!
//! ```text
//! distd-test-plugin --mode MODE [--bytes N] [--name NAME] [--socket PATH] DIR...
//! ```
//!
//! The socket is `--socket`, else `DISTD_PLUGIN_SOCKET`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use distd_plugin_oci_dir::OciDir;
use distd_sdk::transport::{ByteStream, Capabilities, Description, Descriptor, Locator};
use distd_sdk::{Digest, ErrorKind, Reference, Transport, TransportError};
use tokio_stream::{Stream, StreamExt as _};

/// How the plugin misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Serve correctly.
    Good,
    /// Exit the process after sending `--bytes` bytes of a fetch.
    DieAfter,
    /// Flip the first byte of every fetch.
    WrongBytes,
    /// Stream every fetch from offset 0.
    IgnoreOffset,
}

/// A deliberately misbehaving transport plugin for distd's tests.
#[derive(Debug, Parser)]
#[command(name = "distd-test-plugin")]
struct Args {
    /// How to misbehave.
    #[arg(long, value_enum)]
    mode: Mode,
    /// For die-after: bytes of a fetch to send before exiting.
    #[arg(long, value_name = "N", required_if_eq("mode", "die-after"))]
    bytes: Option<u64>,
    /// The name the plugin describes itself with.
    #[arg(long, default_value = "test-plugin")]
    name: String,
    /// Unix socket to serve on [default: $DISTD_PLUGIN_SOCKET].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// OCI image layout directories to serve.
    #[arg(value_name = "DIR", required = true)]
    dirs: Vec<PathBuf>,
}

/// Exit status of a `die-after` plugin.
const DIE_STATUS: i32 = 3;
/// How long a dying plugin waits for its last bytes to get out.
const FLUSH_DELAY: Duration = Duration::from_millis(100);

struct TestPlugin {
    inner: OciDir,
    mode: Mode,
    bytes: u64,
    name: String,
    /// What `die-after` does once its bytes are out.
    die: fn(),
}

fn exit_soon() {
    std::thread::spawn(|| {
        std::thread::sleep(FLUSH_DELAY);
        eprintln!(
            "distd-test-plugin: pid {} exiting with status {DIE_STATUS} mid-fetch (die-after)",
            std::process::id()
        );
        std::process::exit(DIE_STATUS);
    });
}

#[distd_sdk::plugin::async_trait]
impl Transport for TestPlugin {
    fn describe(&self) -> Description {
        Description {
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities {
                fetch: true,
                ranged_fetch: true,
                ..Capabilities::default()
            },
            registries: Vec::new(),
        }
    }

    async fn health(&self) -> Result<(), TransportError> {
        self.inner.health().await
    }

    async fn resolve(&self, reference: &Reference) -> Result<Descriptor, TransportError> {
        Err(TransportError::new(
            ErrorKind::FailedPrecondition,
            format!("{} does not resolve references ({reference})", self.name),
        ))
    }

    async fn fetch(
        &self,
        locator: &Locator,
        descriptor: &Descriptor,
        offset: u64,
    ) -> Result<ByteStream, TransportError> {
        let from = if self.mode == Mode::IgnoreOffset {
            0
        } else {
            offset
        };
        let stream = self.inner.fetch(locator, descriptor, from).await?;
        Ok(match self.mode {
            Mode::Good | Mode::IgnoreOffset => stream,
            Mode::DieAfter if descriptor.size.saturating_sub(offset) > self.bytes => {
                Box::pin(DieAfter {
                    inner: stream,
                    left: self.bytes,
                    die: Some(self.die),
                })
            }
            Mode::DieAfter => stream,
            Mode::WrongBytes => {
                let mut flipped = false;
                Box::pin(stream.map(move |item| {
                    item.map(|chunk| {
                        if flipped || chunk.is_empty() {
                            return chunk;
                        }
                        flipped = true;
                        let mut bytes = chunk.to_vec();
                        bytes[0] ^= 0xff;
                        Bytes::from(bytes)
                    })
                }))
            }
        })
    }

    async fn stat(
        &self,
        locator: &Locator,
        digest: &Digest,
    ) -> Result<Option<u64>, TransportError> {
        self.inner.stat(locator, digest).await
    }
}

/// Passes `left` bytes through, then calls `die` and never ends.
struct DieAfter {
    inner: ByteStream,
    left: u64,
    die: Option<fn()>,
}

impl Stream for DieAfter {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            // The consumer asks for more: every byte allowed is out.
            if let Some(die) = self.die.take() {
                die();
            }
            return Poll::Pending;
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(mut chunk))) => {
                let n = chunk
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                chunk.truncate(n);
                self.left -= n as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = args
        .socket
        .or_else(distd_sdk::plugin::socket_from_env)
        .context("no socket to serve on: pass --socket PATH or set DISTD_PLUGIN_SOCKET")?;
    let mode = args
        .mode
        .to_possible_value()
        .map(|v| v.get_name().to_owned());
    let mode = mode.unwrap_or_default();
    eprintln!(
        "distd-test-plugin: mode {mode}{}, pid {}, name {}, serving {} on {}",
        args.bytes
            .map(|n| format!(" (bytes {n})"))
            .unwrap_or_default(),
        std::process::id(),
        args.name,
        args.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        socket.display()
    );
    let plugin = TestPlugin {
        inner: OciDir::open(args.dirs)?,
        mode: args.mode,
        bytes: args.bytes.unwrap_or(0),
        name: args.name,
        die: exit_soon,
    };
    distd_sdk::plugin::serve(&socket, plugin)
        .await
        .with_context(|| format!("serving on {}", socket.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use distd_sdk::conformance::{self, Fixture, Outcome, checks};
    use distd_tests::oci::{Blob, Image};

    use super::*;

    static DIED: AtomicBool = AtomicBool::new(false);

    fn descriptor(blob: &Blob) -> Descriptor {
        Descriptor {
            media_type: blob.media_type.clone(),
            digest: Digest::parse(&blob.digest).unwrap(),
            size: blob.size(),
        }
    }

    fn setup(mode: Mode, bytes: u64) -> (tempfile::TempDir, TestPlugin, Fixture) {
        let dir = tempfile::tempdir().unwrap();
        let image = Image::random(7, &[300_000]);
        image.write_layout(dir.path(), "1.0");
        let plugin = TestPlugin {
            inner: OciDir::open(vec![dir.path().to_owned()]).unwrap(),
            mode,
            bytes,
            name: "test-plugin".to_owned(),
            die: || DIED.store(true, Ordering::SeqCst),
        };
        let fixture = Fixture {
            reference: Reference::parse("example.test/app:1.0").unwrap(),
            manifest: descriptor(&image.manifest),
            blob: descriptor(&image.layers[0]),
        };
        (dir, plugin, fixture)
    }

    #[tokio::test]
    async fn good_mode_conforms_without_resolving() {
        let (_dir, plugin, fixture) = setup(Mode::Good, 0);
        let report = conformance::run(&plugin, &fixture).await;
        assert!(report.passed(), "{report}");
        assert!(matches!(
            report.outcome(checks::RESOLVE),
            Some(Outcome::Skipped(_))
        ));
    }

    #[tokio::test]
    async fn ignore_offset_and_wrong_bytes_fail_conformance() {
        let (_dir, plugin, fixture) = setup(Mode::IgnoreOffset, 0);
        let report = conformance::run(&plugin, &fixture).await;
        match report.outcome(checks::FETCH_OFFSETS) {
            Some(Outcome::Failed(why)) => assert!(why.contains("offsets are ignored"), "{why}"),
            other => panic!("{other:?}"),
        }

        let (_dir, plugin, fixture) = setup(Mode::WrongBytes, 0);
        let report = conformance::run(&plugin, &fixture).await;
        match report.outcome(checks::FETCH_BLOB) {
            Some(Outcome::Failed(why)) => assert!(why.contains("hash to"), "{why}"),
            other => panic!("{other:?}"),
        }
        let locator = Locator::of(&fixture.reference);
        let mut stream = plugin.fetch(&locator, &fixture.blob, 0).await.unwrap();
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk.unwrap().len() as u64;
        }
        assert_eq!(total, fixture.blob.size, "same length");
    }

    #[tokio::test]
    async fn die_after_sends_exactly_n_bytes_of_large_fetches_then_dies() {
        let (_dir, plugin, fixture) = setup(Mode::DieAfter, 100_000);
        let locator = Locator::of(&fixture.reference);
        // The manifest is smaller than N: served whole, nobody dies.
        let mut stream = plugin.fetch(&locator, &fixture.manifest, 0).await.unwrap();
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk.unwrap().len() as u64;
        }
        assert_eq!(total, fixture.manifest.size);
        assert!(!DIED.load(Ordering::SeqCst));

        let mut stream = plugin.fetch(&locator, &fixture.blob, 1000).await.unwrap();
        let mut total = 0;
        while total < 100_000 {
            let chunk = stream.next().await.unwrap().unwrap();
            total += chunk.len() as u64;
        }
        assert_eq!(total, 100_000);
        assert!(
            !DIED.load(Ordering::SeqCst),
            "dies only when asked for more"
        );
        let more = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        assert!(more.is_err(), "the stream never ends cleanly");
        assert!(DIED.load(Ordering::SeqCst));
    }

    /// Kills the plugin process if the test fails before it exits.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// The real binary over its socket: needs `cargo build --bins` first,
    /// like every end-to-end test.
    #[tokio::test]
    async fn die_after_gets_its_bytes_out_then_exits_with_status_3() {
        let (dir, _, fixture) = setup(Mode::Good, 0);
        let socket = dir.path().join("plugin.sock");
        let mut child = Child(
            std::process::Command::new(distd_tests::bin_path("distd-test-plugin"))
                .args(["--mode", "die-after", "--bytes", "100000"])
                .arg(dir.path())
                .env("DISTD_PLUGIN_SOCKET", &socket)
                .spawn()
                .unwrap(),
        );
        distd_tests::poll_until(Duration::from_secs(10), "the plugin socket", || {
            socket.exists().then_some(())
        });
        let remote = distd_sdk::RemoteTransport::new("test-plugin", &socket);
        let description = remote.refresh().await.unwrap();
        assert!(!description.capabilities.resolve);

        let locator = Locator::of(&fixture.reference);
        let mut stream = remote.fetch(&locator, &fixture.blob, 0).await.unwrap();
        let (mut total, mut error) = (0, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => total += chunk.len() as u64,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        assert_eq!(total, 100_000);
        assert!(error.is_some(), "the stream failed instead of ending");
        let status = distd_tests::poll_until(Duration::from_secs(10), "the plugin to exit", || {
            child.0.try_wait().ok().flatten()
        });
        assert_eq!(status.code(), Some(DIE_STATUS));
    }
}
