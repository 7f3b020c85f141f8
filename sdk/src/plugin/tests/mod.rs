//! An in-memory transport served with `serve_with_shutdown` on a socket in a
//! temporary directory, reached through `RemoteTransport`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use distd_proto::distd::transport::v1 as pb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::*;
use crate::error::ErrorKind;
use crate::reference::Reference;
use crate::transport::{
    ByteStream, Capabilities, Description, Locator, MountOutcome, Transport, TransportError,
    UploadSession,
};

mod memory;
mod push;
use memory::{Memory, descriptor_of};

/// A plugin server running in this process.
struct Plugin {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), PluginError>>,
}

impl Plugin {
    async fn start(socket: &Path, memory: Memory) -> Plugin {
        let listener = bind(socket).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with_shutdown(listener, memory, shutdown));
        Plugin { stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    socket: PathBuf,
    memory: Memory,
    plugin: Plugin,
    remote: RemoteTransport,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent directory is created.
    let socket = dir.path().join("plugins").join("memory.sock");
    let memory = Memory::default();
    let plugin = Plugin::start(&socket, memory.clone()).await;
    let remote = RemoteTransport::new("mine", &socket);
    Fixture {
        dir,
        socket,
        memory,
        plugin,
        remote,
    }
}

fn locator() -> Locator {
    Locator {
        registry: "example.com".into(),
        repository: "app".into(),
    }
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn collect(mut stream: ByteStream) -> (Vec<u8>, Vec<TransportError>) {
    let (mut bytes, mut errors) = (Vec::new(), Vec::new());
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                assert!(errors.is_empty(), "bytes after an error");
                assert!(!chunk.is_empty() && chunk.len() <= CHUNK_BYTES);
                bytes.extend_from_slice(&chunk);
            }
            Err(e) => errors.push(e),
        }
    }
    (bytes, errors)
}

#[test]
fn a_remote_transport_is_made_without_a_runtime_or_a_plugin() {
    let remote = RemoteTransport::new("mine", "/nonexistent/mine.sock");
    assert_eq!(
        remote.describe(),
        Description {
            name: "mine".into(),
            ..Description::default()
        }
    );
    assert_eq!(remote.socket(), Path::new("/nonexistent/mine.sock"));
}

#[tokio::test]
async fn describes_itself_under_the_configured_name() {
    let f = fixture().await;
    assert_eq!(f.remote.describe().capabilities, Capabilities::default());
    let refreshed = f.remote.refresh().await.unwrap();
    let described = f.remote.describe();
    assert_eq!(refreshed, described);
    assert_eq!(described.name, "mine");
    assert_eq!(described.version, "1.2.3");
    assert_eq!(
        described.capabilities,
        Capabilities {
            resolve: true,
            fetch: true,
            ranged_fetch: true,
            push: true,
            mount: false,
        }
    );
    assert_eq!(described.registries, ["example.com", "host:5000/team/*"]);
    f.plugin.stop().await;
}

#[tokio::test]
async fn health_says_whether_the_plugin_serves() {
    let f = fixture().await;
    f.remote.health().await.unwrap();
    assert!(f.remote.describe().capabilities.fetch, "health refreshes");
    f.memory.state().unhealthy = Some("the bucket is gone".into());
    let err = f.remote.health().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(err.message, "plugin mine: not serving: the bucket is gone");
    f.plugin.stop().await;
}

#[tokio::test]
async fn health_of_a_missing_or_dead_socket_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ghost.sock");
    let remote = RemoteTransport::new("ghost", &socket);
    let err = remote.health().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(
        err.message,
        format!(
            "plugin ghost: no plugin socket at {}: is the plugin running?",
            socket.display()
        )
    );
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = remote.health().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("refused"), "{}", err.message);
    assert!(err.message.contains(&socket.display().to_string()));
}

#[tokio::test]
async fn resolves_tags_and_digests_and_says_not_found() {
    let f = fixture().await;
    let manifest = descriptor_of("application/vnd.oci.image.manifest.v1+json", b"{}");
    f.memory
        .state()
        .tags
        .insert("example.com/app:1.0".into(), manifest.clone());
    let tag = Reference::parse("example.com/app:1.0").unwrap();
    assert_eq!(f.remote.resolve(&tag).await.unwrap(), manifest);
    let pinned = Reference::parse(&format!("example.com/app@{}", manifest.digest)).unwrap();
    assert_eq!(f.remote.resolve(&pinned).await.unwrap(), manifest);
    let unknown = Reference::parse("example.com/app:2.0").unwrap();
    let err = f.remote.resolve(&unknown).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(err.message, "plugin mine: example.com/app:2.0 is not here");
    f.plugin.stop().await;
}

#[tokio::test]
async fn fetches_from_the_start_and_from_an_offset() {
    let f = fixture().await;
    let data = blob(5 * CHUNK_BYTES / 2 + 17);
    let descriptor = f.memory.add_blob(&data);
    let (bytes, errors) = collect(f.remote.fetch(&locator(), &descriptor, 0).await.unwrap()).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(bytes, data);
    let offset = 1_500_001;
    let stream = f
        .remote
        .fetch(&locator(), &descriptor, offset)
        .await
        .unwrap();
    let (bytes, errors) = collect(stream).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(bytes, data[offset as usize..]);

    let past = data.len() as u64 + 1;
    let err = match f.remote.fetch(&locator(), &descriptor, past).await {
        Err(err) => err,
        Ok(_) => panic!("fetched past the end"),
    };
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    let absent = descriptor_of("application/octet-stream", b"absent");
    let err = match f.remote.fetch(&locator(), &absent, 0).await {
        Err(err) => err,
        Ok(_) => panic!("fetched an absent blob"),
    };
    assert_eq!(err.kind, ErrorKind::NotFound);
    f.plugin.stop().await;
}

#[tokio::test]
async fn an_error_mid_stream_follows_the_bytes_before_it() {
    let f = fixture().await;
    let data = blob(100_000);
    let descriptor = f.memory.add_blob(&data);
    f.memory
        .state()
        .broken
        .insert(descriptor.digest.clone(), 1000);
    let (bytes, errors) = collect(f.remote.fetch(&locator(), &descriptor, 10).await.unwrap()).await;
    assert_eq!(bytes, data[10..1000]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ErrorKind::DataLoss);
    assert_eq!(errors[0].message, "plugin mine: the disk failed");
    f.plugin.stop().await;
}

#[tokio::test]
async fn stats_present_and_absent_blobs() {
    let f = fixture().await;
    let descriptor = f.memory.add_blob(b"hello");
    let absent = descriptor_of("", b"absent");
    let stat = f.remote.stat(&locator(), &descriptor.digest).await.unwrap();
    assert_eq!(stat, Some(5));
    let stat = f.remote.stat(&locator(), &absent.digest).await.unwrap();
    assert_eq!(stat, None);
    f.plugin.stop().await;
}

#[tokio::test]
async fn pushes_a_large_manifest_and_resolves_it() {
    let f = fixture().await;
    let manifest = Bytes::from(blob(4 * 1024 * 1024));
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    f.remote
        .push_manifest(&locator(), "v1", media_type, manifest.clone())
        .await
        .unwrap();
    let reference = Reference::parse("example.com/app:v1").unwrap();
    let descriptor = f.remote.resolve(&reference).await.unwrap();
    assert_eq!(descriptor, descriptor_of(media_type, &manifest));
    let (bytes, _) = collect(f.remote.fetch(&locator(), &descriptor, 0).await.unwrap()).await;
    assert_eq!(bytes, manifest);
    f.plugin.stop().await;
}

#[tokio::test]
async fn mounts_present_blobs_and_passes_on_upload_sessions() {
    let f = fixture().await;
    let present = f.memory.add_blob(b"layer");
    let outcome = f.remote.mount(&locator(), &present, "other").await.unwrap();
    assert_eq!(outcome, MountOutcome::Mounted);
    let absent = descriptor_of("", b"absent");
    let outcome = f.remote.mount(&locator(), &absent, "other").await.unwrap();
    let session = UploadSession {
        location: "mount-upload".into(),
        offset: 0,
    };
    assert_eq!(outcome, MountOutcome::NotMounted(Some(session)));
    f.plugin.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_plugin_restarts() {
    let f = fixture().await;
    let descriptor = f.memory.add_blob(b"hello");
    let stat = f.remote.stat(&locator(), &descriptor.digest).await.unwrap();
    assert_eq!(stat, Some(5));
    f.plugin.stop().await;
    let err = f
        .remote
        .stat(&locator(), &descriptor.digest)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{}", err.message);
    assert!(err.message.contains(&f.socket.display().to_string()));
    // The same path: `bind` replaces the stale socket.
    let plugin = Plugin::start(&f.socket, f.memory.clone()).await;
    let stat = f.remote.stat(&locator(), &descriptor.digest).await.unwrap();
    assert_eq!(stat, Some(5));
    plugin.stop().await;
    drop(f.dir);
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let f = fixture().await;
    let mut client = pb::transport_client::TransportClient::new(client::channel(&f.socket));
    let pb_locator = Some(pb::Locator {
        registry: "example.com".into(),
        repository: "app".into(),
    });
    let status = client
        .stat(pb::StatRequest {
            locator: pb_locator.clone(),
            digest: "sha256:nothex".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("stat: digest:"),
        "{}",
        status.message()
    );
    let status = client
        .resolve(pb::ResolveRequest {
            reference: "Not A Reference".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .fetch(pb::FetchRequest {
            locator: None,
            descriptor: None,
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "fetch: locator is missing");
    let status = client
        .fetch(pb::FetchRequest {
            locator: pb_locator.clone(),
            descriptor: Some(pb::Descriptor {
                media_type: String::new(),
                digest: "md5:abc".into(),
                size: 3,
            }),
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let data_first = pb::PushBlobRequest {
        message: Some(pb::push_blob_request::Message::Data(Bytes::from_static(
            b"x",
        ))),
    };
    let status = client
        .push_blob(tokio_stream::iter([data_first]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "push_blob: the first message of a call must be start"
    );
    // The server is still there.
    f.remote.health().await.unwrap();
    f.plugin.stop().await;
}

#[tokio::test]
async fn bind_refuses_other_files_and_live_sockets() {
    let f = fixture().await;
    let err = bind(&f.socket).await.unwrap_err();
    assert!(matches!(err, PluginError::InUse { .. }), "{err}");
    assert!(err.to_string().contains(&f.socket.display().to_string()));
    let file = f.dir.path().join("file");
    std::fs::write(&file, b"not a socket").unwrap();
    let err = bind(&file).await.unwrap_err();
    assert!(matches!(err, PluginError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&f.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, SOCKET_MODE);
    f.plugin.stop().await;
}

#[tokio::test]
async fn serve_stops_on_sigterm_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("memory.sock");
    let server = tokio::spawn(serve(socket.clone(), Memory::default()));
    let remote = RemoteTransport::new("mine", &socket);
    // The signal handlers are installed before the socket is bound.
    let mut tries = 0;
    while remote.health().await.is_err() {
        tries += 1;
        assert!(tries < 200, "the plugin never answered");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mode = std::fs::symlink_metadata(&socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, SOCKET_MODE);
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", std::process::id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    stopped.unwrap().unwrap().unwrap();
    assert!(!socket.exists(), "the socket file was left behind");
}
