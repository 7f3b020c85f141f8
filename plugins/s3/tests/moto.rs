//! The s3 transport against a real S3 API: moto's server (`moto_server`),
//! started per test on a free port and killed on drop. A missing
//! `moto_server` fails the test: `./test.sh` installs it.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use distd_plugin_s3::{Credentials, MIN_PART_SIZE, S3Config, S3Transport};
use distd_sdk::conformance::{self, Fixture};
use distd_sdk::transport::{BlobSource, ByteStream, PushProgress};
use distd_sdk::{
    Algorithm, Descriptor, Digest, ErrorKind, Locator, MountOutcome, Reference, Transport,
    TransportError, UploadSession, media,
};
use tokio_stream::StreamExt as _;

const MIB: u64 = 1024 * 1024;
const BUCKET: &str = "registry";

/// A moto server on a free port; killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto with `bucket` created.
    fn start(bucket: &str) -> Moto {
        let moto = Moto::spawn(false);
        let status = http(moto.port, "PUT", &format!("/{bucket}")).unwrap();
        assert_eq!(status, 200, "creating bucket {bucket}");
        moto
    }

    /// Starts moto, checking credentials (it knows none) when `auth`.
    fn spawn(auth: bool) -> Moto {
        let port = free_port();
        let mut command = Command::new("moto_server");
        if auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = child.unwrap_or_else(|e| {
            panic!("cannot start moto_server ({e}): install it with `pip install \"moto[server]\"` (./test.sh does)")
        });
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/").is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            root_directory: "/root1".into(),
            path_style: true,
            credentials: Credentials::Static {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                session_token: None,
            },
            part_size: MIN_PART_SIZE,
            ..S3Config::new("s3", bucket)
        }
    }

    /// An object's bytes, read with a client of its own.
    async fn object(&self, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt as _;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let path = object_store::path::Path::parse(key).unwrap();
        let got = store.get(&path).await;
        let got = got.unwrap_or_else(|e| panic!("GET {key}: {e}"));
        got.bytes().await.unwrap().to_vec()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A plain, unsigned, bodiless HTTP/1.1 request (moto accepts them for
/// creating buckets): the status.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {response:?}")))
}

/// Blob bytes from memory, in 1 MiB chunks; optionally failing once
/// `fail_at` bytes have gone out.
struct MemorySource {
    bytes: Bytes,
    fail_at: Option<u64>,
    opened_at: Mutex<Vec<u64>>,
}

impl MemorySource {
    fn new(bytes: &Bytes, fail_at: Option<u64>) -> MemorySource {
        MemorySource {
            bytes: bytes.clone(),
            fail_at,
            opened_at: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for MemorySource {
    async fn open(&self, offset: u64) -> Result<ByteStream, TransportError> {
        self.opened_at.lock().unwrap().push(offset);
        let mut items = Vec::new();
        let mut at = offset;
        while at < self.bytes.len() as u64 {
            if self.fail_at.is_some_and(|f| at >= f) {
                items.push(Err(TransportError::new(
                    ErrorKind::Unavailable,
                    "disk gone",
                )));
                break;
            }
            let end = (at + MIB).min(self.bytes.len() as u64);
            items.push(Ok(self.bytes.slice(at as usize..end as usize)));
            at = end;
        }
        Ok(Box::pin(tokio_stream::iter(items)))
    }
}

#[derive(Default)]
struct Progress {
    sessions: Mutex<Vec<UploadSession>>,
    sent: AtomicU64,
}

impl PushProgress for Progress {
    fn session(&self, session: &UploadSession) {
        self.sessions.lock().unwrap().push(session.clone());
    }
    fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: Digest::of_bytes(Algorithm::Sha256, bytes),
        size: bytes.len() as u64,
    }
}

fn pattern(len: u64, seed: u32) -> Bytes {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let mut stream = stream;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn locator(repository: &str) -> Locator {
    Locator {
        registry: "example.test".into(),
        repository: repository.into(),
    }
}

async fn push(transport: &S3Transport, repo: &str, blob: &Descriptor, bytes: &Bytes) -> u64 {
    let source = MemorySource::new(bytes, None);
    let progress = Progress::default();
    let sent = transport
        .push_blob(&locator(repo), blob, &source, None, &progress)
        .await
        .unwrap();
    assert_eq!(progress.sent.load(Ordering::Relaxed), sent);
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_resumes_resolves_and_fetches_through_the_bucket() {
    let moto = Moto::start(BUCKET);
    let transport = S3Transport::new(moto.config(BUCKET)).unwrap();
    transport.health().await.unwrap();
    let app = locator("app");

    // A 20 MiB layer in 5 MiB parts, the first attempt failing after 2 parts.
    let layer = pattern(20 * MIB, 1);
    let layer_desc = descriptor(media::OCI_LAYER_GZIP, &layer);
    let failing = MemorySource::new(&layer, Some(10 * MIB));
    let progress = Progress::default();
    let e = transport
        .push_blob(&app, &layer_desc, &failing, None, &progress)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert_eq!(progress.sent.load(Ordering::Relaxed), 10 * MIB);
    let session = progress.sessions.lock().unwrap().last().cloned().unwrap();
    assert_eq!(session.offset, 10 * MIB);
    assert!(session.location.contains("\"upload_id\""), "{session:?}");
    assert_eq!(
        transport.stat(&app, &layer_desc.digest).await.unwrap(),
        None
    );

    let source = MemorySource::new(&layer, None);
    let progress = Progress::default();
    let sent = transport
        .push_blob(&app, &layer_desc, &source, Some(session), &progress)
        .await
        .unwrap();
    assert_eq!(sent, 10 * MIB, "only the rest is sent");
    assert_eq!(*source.opened_at.lock().unwrap(), [10 * MIB]);
    assert_eq!(
        progress.sessions.lock().unwrap().last().map(|s| s.offset),
        Some(20 * MIB)
    );
    assert_eq!(
        transport.stat(&app, &layer_desc.digest).await.unwrap(),
        Some(20 * MIB)
    );
    // Already there: only the link is written.
    assert_eq!(push(&transport, "app", &layer_desc, &layer).await, 0);

    // A session S3 does not know, and a malformed one: new uploads.
    let stale = UploadSession {
        location: format!(
            r#"{{"upload_id":"gone","part_size":{MIN_PART_SIZE},"parts":["a","b"]}}"#
        ),
        offset: 10 * MIB,
    };
    let malformed = UploadSession {
        location: "http://registry.test/upload".into(),
        offset: 3,
    };
    // The stale one is tried at its offset first (S3 refuses the part).
    for (seed, resume, opens) in [(2, stale, vec![10 * MIB, 0]), (3, malformed, vec![0])] {
        let big = pattern(12 * MIB, seed);
        let big_desc = descriptor(media::OCI_LAYER_GZIP, &big);
        let source = MemorySource::new(&big, None);
        let sent = transport
            .push_blob(&app, &big_desc, &source, Some(resume), &Progress::default())
            .await
            .unwrap();
        assert_eq!(sent, 12 * MIB);
        assert_eq!(*source.opened_at.lock().unwrap(), opens);
        let all = read_all(transport.fetch(&app, &big_desc, 0).await.unwrap()).await;
        assert!(all == big, "the restarted upload stored other bytes");
    }

    // Config and a small layer: single PUTs.
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config_desc = descriptor(media::OCI_CONFIG, &config);
    assert_eq!(
        push(&transport, "app", &config_desc, &config).await,
        config.len() as u64
    );
    let small = pattern(10_000, 4);
    let small_desc = descriptor(media::OCI_LAYER_TAR, &small);
    assert_eq!(push(&transport, "app", &small_desc, &small).await, 10_000);

    // A manifest naming them, tagged.
    let entry = |d: &Descriptor| {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
            d.media_type, d.digest, d.size
        )
    };
    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{},{}]}}"#,
        media::OCI_MANIFEST,
        entry(&config_desc),
        entry(&layer_desc),
        entry(&small_desc)
    ));
    let manifest_desc = descriptor(media::OCI_MANIFEST, &manifest);
    transport
        .push_manifest(&app, "1.0", media::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap();
    let v2 = "root1/docker/registry/v2";
    let hex = manifest_desc.digest.hex();
    let current = moto
        .object(&format!(
            "{v2}/repositories/app/_manifests/tags/1.0/current/link"
        ))
        .await;
    assert_eq!(current, manifest_desc.digest.to_string().as_bytes());
    moto.object(&format!(
        "{v2}/repositories/app/_manifests/tags/1.0/index/sha256/{hex}/link"
    ))
    .await;
    moto.object(&format!(
        "{v2}/repositories/app/_manifests/revisions/sha256/{hex}/link"
    ))
    .await;
    let stored = moto
        .object(&format!("{v2}/blobs/sha256/{}/{hex}/data", &hex[..2]))
        .await;
    assert_eq!(stored, manifest);
    let layer_link = moto
        .object(&format!(
            "{v2}/repositories/app/_layers/sha256/{}/link",
            layer_desc.digest.hex()
        ))
        .await;
    assert_eq!(layer_link, layer_desc.digest.to_string().as_bytes());

    // Pushing by digest needs the right digest; missing children refuse.
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"other").to_string();
    let e = transport
        .push_manifest(&app, &wrong, media::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let e = transport
        .push_manifest(
            &locator("other"),
            "1.0",
            media::OCI_MANIFEST,
            manifest.clone(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message.contains(&config_desc.digest.to_string()), "{e}");

    // Resolve.
    let reference = Reference::parse("example.test/app:1.0").unwrap();
    assert_eq!(transport.resolve(&reference).await.unwrap(), manifest_desc);
    let by_digest =
        Reference::parse(&format!("example.test/app@{}", manifest_desc.digest)).unwrap();
    assert_eq!(transport.resolve(&by_digest).await.unwrap(), manifest_desc);
    let missing = Reference::parse("example.test/app:2.0").unwrap();
    let e = transport.resolve(&missing).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("tags/2.0/current/link"), "{e}");
    let nowhere = Reference::parse("example.test/nowhere:1.0").unwrap();
    let e = transport.resolve(&nowhere).await.unwrap_err();
    assert!(e.message.contains("root_directory"), "{e}");

    // Fetch from 0, from an offset, at and past the end.
    let all = read_all(transport.fetch(&app, &layer_desc, 0).await.unwrap()).await;
    assert!(all == layer, "fetch from 0 differs");
    let offset = 7 * MIB + 3;
    let tail = read_all(transport.fetch(&app, &layer_desc, offset).await.unwrap()).await;
    assert!(
        tail == layer[offset as usize..],
        "fetch from {offset} differs"
    );
    let end = transport.fetch(&app, &layer_desc, 20 * MIB).await.unwrap();
    assert!(read_all(end).await.is_empty());
    let e = transport
        .fetch(&app, &layer_desc, 20 * MIB + 1)
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::OutOfRange, "{e}");
    let got = read_all(transport.fetch(&app, &manifest_desc, 0).await.unwrap()).await;
    assert_eq!(got, manifest);

    // No leak across repositories; a mount links it.
    let other = locator("other");
    let e = transport.fetch(&other, &layer_desc, 0).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("does not link"), "{e}");
    assert_eq!(
        transport.stat(&other, &layer_desc.digest).await.unwrap(),
        None
    );
    let outcome = transport
        .mount(&other, &layer_desc, "nowhere")
        .await
        .unwrap();
    assert_eq!(outcome, MountOutcome::NotMounted(None));
    let outcome = transport.mount(&other, &layer_desc, "app").await.unwrap();
    assert_eq!(outcome, MountOutcome::Mounted);
    assert_eq!(
        transport.stat(&other, &layer_desc.digest).await.unwrap(),
        Some(20 * MIB)
    );

    // Keys from bad names are refused.
    let e = transport
        .stat(&locator("../app"), &layer_desc.digest)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");

    // The contract, on what was pushed.
    let fixture = Fixture {
        reference,
        manifest: manifest_desc,
        blob: small_desc,
    };
    let report = conformance::run(&transport, &fixture).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_and_an_unreachable_endpoint_say_so() {
    let moto = Moto::start(BUCKET);
    let transport = S3Transport::new(moto.config("nope")).unwrap();
    let e = transport.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(
        e.message.contains(&format!(
            "no bucket nope at {} ([[s3]] bucket)",
            moto.endpoint()
        )),
        "{e}"
    );

    let mut config = moto.config(BUCKET);
    config.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let transport = S3Transport::new(config).unwrap();
    let e = transport.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");

    // By default moto accepts any keys; told to check them, it knows none.
    let strict = Moto::spawn(true);
    let transport = S3Transport::new(strict.config(BUCKET)).unwrap();
    let e = transport.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains("refused the credentials"), "{e}");

    let mut config = moto.config(BUCKET);
    config.credentials = Credentials::Profile("distd-test-no-such-profile".into());
    let e = S3Transport::new(config).unwrap_err().to_string();
    assert!(e.contains("distd-test-no-such-profile"), "{e}");
}
