//! PushBlob through `RemoteTransport` and the served in-memory transport:
//! resumed sessions, progress, a source read twice, a source that fails.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::memory::{TWICE, descriptor_of};
use super::{blob, fixture, locator};
use crate::error::ErrorKind;
use crate::plugin::CHUNK_BYTES;
use crate::transport::{
    BlobSource, ByteStream, Locator, PushProgress, Transport, TransportError, UploadSession,
};

/// A blob in memory that records the offsets it was opened at.
struct Source {
    data: Bytes,
    opens: Mutex<Vec<u64>>,
    /// Fail after this many bytes.
    fail_after: Option<usize>,
}

impl Source {
    fn new(data: &[u8]) -> Source {
        Source {
            data: Bytes::copy_from_slice(data),
            opens: Mutex::new(Vec::new()),
            fail_after: None,
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for Source {
    async fn open(&self, offset: u64) -> Result<ByteStream, TransportError> {
        self.opens.lock().unwrap().push(offset);
        let end = self.fail_after.unwrap_or(self.data.len());
        let rest = self.data.slice(offset as usize..end);
        let mut items: Vec<Result<Bytes, TransportError>> = Vec::new();
        for start in (0..rest.len()).step_by(300_000) {
            items.push(Ok(rest.slice(start..rest.len().min(start + 300_000))));
        }
        if self.fail_after.is_some() {
            items.push(Err(TransportError::new(
                ErrorKind::Internal,
                "the store broke",
            )));
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
        self.sent.fetch_add(bytes, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_a_blob_continuing_an_upload_session() {
    let f = fixture().await;
    let data = blob(3 * CHUNK_BYTES + 5);
    let descriptor = descriptor_of("application/octet-stream", &data);
    let done = 1_000_000;
    f.memory
        .state()
        .uploads
        .insert("upload-7".into(), data[..done].to_vec());
    let source = Source::new(&data);
    let progress = Progress::default();
    let resume = UploadSession {
        location: "upload-7".into(),
        offset: done as u64,
    };
    let sent = f
        .remote
        .push_blob(&locator(), &descriptor, &source, Some(resume), &progress)
        .await
        .unwrap();
    let rest = (data.len() - done) as u64;
    assert_eq!(sent, rest);
    assert_eq!(*source.opens.lock().unwrap(), [done as u64]);
    assert_eq!(progress.sent.load(Ordering::SeqCst), rest);
    let sessions = progress.sessions.lock().unwrap().clone();
    assert_eq!(
        sessions.last(),
        Some(&UploadSession {
            location: "upload-7".into(),
            offset: data.len() as u64,
        })
    );
    assert!(sessions.iter().all(|s| s.location == "upload-7"));
    assert_eq!(f.memory.state().blobs[&descriptor.digest], data);
    f.plugin.stop().await;
}

#[tokio::test]
async fn pushes_a_blob_from_the_start() {
    let f = fixture().await;
    let data = blob(700_000);
    let descriptor = descriptor_of("application/octet-stream", &data);
    let source = Source::new(&data);
    let progress = Progress::default();
    let sent = f
        .remote
        .push_blob(&locator(), &descriptor, &source, None, &progress)
        .await
        .unwrap();
    assert_eq!(sent, data.len() as u64);
    assert_eq!(*source.opens.lock().unwrap(), [0]);
    let sessions = progress.sessions.lock().unwrap().clone();
    assert_eq!(
        sessions.first().map(|s| s.location.as_str()),
        Some("upload-1")
    );
    assert_eq!(sessions.last().map(|s| s.offset), Some(data.len() as u64));
    assert_eq!(f.memory.state().blobs[&descriptor.digest], data);
    f.plugin.stop().await;
}

#[tokio::test]
async fn a_push_source_can_be_read_once() {
    let f = fixture().await;
    let data = blob(1000);
    let descriptor = descriptor_of("application/octet-stream", &data);
    let source = Source::new(&data);
    let twice = Locator {
        registry: "example.com".into(),
        repository: TWICE.into(),
    };
    let err = f
        .remote
        .push_blob(&twice, &descriptor, &source, None, &Progress::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("can be read once"), "{}", err.message);
    f.plugin.stop().await;
}

#[tokio::test]
async fn a_failing_push_source_fails_the_push_and_stores_nothing() {
    let f = fixture().await;
    let data = blob(2_000_000);
    let descriptor = descriptor_of("application/octet-stream", &data);
    let source = Source {
        fail_after: Some(700_000),
        ..Source::new(&data)
    };
    let err = f
        .remote
        .push_blob(&locator(), &descriptor, &source, None, &Progress::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Internal);
    assert_eq!(err.message, "the store broke");
    // The plugin saw the bytes stop short and did not take the blob.
    let mut waited = 0;
    while f.memory.state().push_errors.is_empty() && waited < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    let errors = f.memory.state().push_errors.clone();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].kind,
        ErrorKind::Unavailable,
        "{}",
        errors[0].message
    );
    assert!(!f.memory.state().blobs.contains_key(&descriptor.digest));
    f.plugin.stop().await;
}
