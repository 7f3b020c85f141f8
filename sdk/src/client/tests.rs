//! `write_blob` and `read_blob` against an in-process fake of the Content
//! service that follows content.proto's Write contract and records the
//! offsets the client wrote at.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use distd_proto::distd::v1 as pb;
use pb::content_server::{Content, ContentServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::digest::{Algorithm, Digest};

#[derive(Default)]
struct State {
    ingests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
    /// Offsets of the WRITE requests received.
    writes: Vec<u64>,
    /// Fail with RESOURCE_EXHAUSTED once this many WRITEs were taken.
    full_after: Option<usize>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

type Out = Result<pb::WriteContentResponse, Status>;

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Applies one request; `Err` ends the stream.
    fn apply(&self, ingest: &str, req: pb::WriteContentRequest) -> Out {
        let mut st = self.state();
        if !req.expected.is_empty() && st.blobs.contains_key(&req.expected) {
            return Err(Status::already_exists("present"));
        }
        let action = pb::WriteAction::try_from(req.action).unwrap();
        let mut response = pb::WriteContentResponse {
            action: req.action,
            total: req.total,
            ..Default::default()
        };
        if action != pb::WriteAction::Stat && !req.data.is_empty()
            || action == pb::WriteAction::Write
        {
            if st.full_after.is_some_and(|n| st.writes.len() >= n) {
                return Err(Status::resource_exhausted("disk full"));
            }
            st.writes.push(req.offset as u64);
            let data = st.ingests.entry(ingest.to_owned()).or_default();
            if req.offset == 0 {
                data.clear();
            } else if req.offset as usize != data.len() {
                return Err(Status::failed_precondition("bad offset"));
            }
            data.extend_from_slice(&req.data);
        }
        let data = st.ingests.get(ingest).cloned().unwrap_or_default();
        response.offset = data.len() as i64;
        if action == pb::WriteAction::Commit {
            st.ingests.remove(ingest);
            let digest = Digest::of_bytes(Algorithm::Sha256, &data).to_string();
            if (req.total != 0 && req.total as usize != data.len())
                || (!req.expected.is_empty() && req.expected != digest)
            {
                return Err(Status::data_loss("mismatch"));
            }
            if st.blobs.contains_key(&digest) {
                return Err(Status::already_exists("present"));
            }
            st.blobs.insert(digest.clone(), data);
            response.digest = digest;
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl Content for Fake {
    async fn info(
        &self,
        _: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type ListStream = ReceiverStream<Result<pb::ListContentResponse, Status>>;
    async fn list(
        &self,
        _: Request<pb::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Err(Status::unimplemented(""))
    }
    type ReadStream = ReceiverStream<Result<pb::ReadContentResponse, Status>>;
    async fn read(
        &self,
        request: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.into_inner();
        let blob = self.state().blobs.get(&req.digest).cloned();
        let blob = blob.ok_or_else(|| Status::not_found("absent"))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = req.offset as usize;
            for chunk in blob[offset..].chunks(1000) {
                let msg = pb::ReadContentResponse {
                    offset: offset as i64,
                    data: chunk.to_vec().into(),
                };
                offset += chunk.len();
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
    type WriteStream = ReceiverStream<Out>;
    async fn write(
        &self,
        request: Request<Streaming<pb::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let fake = self.clone();
        tokio::spawn(async move {
            let mut ingest = String::new();
            while let Ok(Some(req)) = inbound.message().await {
                if ingest.is_empty() {
                    ingest = req.r#ref.clone();
                }
                let out = fake.apply(&ingest, req);
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<pb::DeleteContentResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_ingests(
        &self,
        _: Request<pb::ListIngestsRequest>,
    ) -> Result<Response<pb::ListIngestsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn abort(
        &self,
        _: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

async fn serve(fake: Fake) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ContentServer::new(fake))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    (Client::connect(&socket).await.unwrap(), dir)
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn opts(r: &str, expected: Option<&Digest>, total: usize) -> WriteOptions {
    WriteOptions {
        ingest_ref: r.into(),
        expected: expected.cloned(),
        total: Some(total as u64),
        ..WriteOptions::default()
    }
}

#[tokio::test]
async fn writes_a_blob_in_chunks_and_reads_it_back() {
    let fake = Fake::default();
    let (client, _dir) = serve(fake.clone()).await;
    let data = blob(3 * WRITE_CHUNK_BYTES + 12345);
    let digest = Digest::of_bytes(Algorithm::Sha256, &data);
    let mut last = 0;
    let outcome = client
        .write_blob(&opts("r", None, data.len()), Unseekable(&data[..]), |n| {
            last = n
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        WriteOutcome::Committed {
            digest: digest.clone(),
            size: data.len() as u64
        }
    );
    assert_eq!(last, data.len() as u64);
    assert_eq!(fake.state().writes.len(), 4);

    let mut back = Vec::new();
    let read_opts = ReadOptions {
        verify: true,
        ..ReadOptions::default()
    };
    let n = client
        .read_blob_with(&digest, read_opts, &mut back, |_| {})
        .await
        .unwrap();
    assert_eq!((n, &back), (data.len() as u64, &data));
    let mut tail = Vec::new();
    client
        .read_blob(&digest, 5000, &mut tail, |_| {})
        .await
        .unwrap();
    assert_eq!(tail, data[5000..]);
}

#[tokio::test]
async fn a_seekable_source_resumes_where_the_ingest_stopped() {
    let data = blob(2 * WRITE_CHUNK_BYTES + 10);
    let digest = Digest::of_bytes(Algorithm::Sha256, &data);
    for expected in [Some(&digest), None] {
        let fake = Fake::default();
        let held = WRITE_CHUNK_BYTES + 3;
        fake.state()
            .ingests
            .insert("r".into(), data[..held].to_vec());
        let (client, _dir) = serve(fake.clone()).await;
        let source = Seekable::new(Cursor::new(data.clone()));
        let outcome = client
            .write_blob(&opts("r", expected, data.len()), source, |_| {})
            .await
            .unwrap();
        assert_eq!(outcome.digest(), &digest);
        assert_eq!(
            fake.state().writes[0],
            held as u64,
            "resumed at the held offset"
        );
    }
}

#[tokio::test]
async fn an_unseekable_source_restarts_the_ingest() {
    let data = blob(1000);
    let fake = Fake::default();
    fake.state()
        .ingests
        .insert("r".into(), b"stale bytes".to_vec());
    let (client, _dir) = serve(fake.clone()).await;
    let outcome = client
        .write_blob(&opts("r", None, data.len()), Unseekable(&data[..]), |_| {})
        .await
        .unwrap();
    assert_eq!(
        outcome.digest(),
        &Digest::of_bytes(Algorithm::Sha256, &data)
    );
    assert_eq!(fake.state().writes, [0]);

    // An empty blob over a non-empty ingest still restarts it.
    fake.state().ingests.insert("e".into(), b"stale".to_vec());
    let outcome = client
        .write_blob(&opts("e", None, 0), Unseekable(&b""[..]), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome.digest(), &Digest::of_bytes(Algorithm::Sha256, b""));
}

#[tokio::test]
async fn a_present_blob_is_an_outcome_not_an_error() {
    let data = blob(5000);
    let digest = Digest::of_bytes(Algorithm::Sha256, &data);
    let fake = Fake::default();
    fake.state().blobs.insert(digest.to_string(), data.clone());
    let (client, _dir) = serve(fake.clone()).await;
    // Named up front: nothing is written.
    let outcome = client
        .write_blob(
            &opts("a", Some(&digest), data.len()),
            Unseekable(&data[..]),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::AlreadyExists(digest.clone()));
    assert!(fake.state().writes.is_empty());
    // Found at commit: the digest comes from hashing what was sent.
    let outcome = client
        .write_blob(&opts("b", None, data.len()), Unseekable(&data[..]), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::AlreadyExists(digest));
}

#[tokio::test]
async fn a_mismatch_is_data_loss() {
    let data = blob(100);
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"other");
    let (client, _dir) = serve(Fake::default()).await;
    let err = client
        .write_blob(
            &opts("m", Some(&wrong), data.len()),
            Unseekable(&data[..]),
            |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss);
}

#[tokio::test]
async fn the_daemons_reason_wins_over_the_closed_stream() {
    let data = blob(12 * WRITE_CHUNK_BYTES);
    let fake = Fake::default();
    fake.state().full_after = Some(2);
    let (client, _dir) = serve(fake.clone()).await;
    let err = client
        .write_blob(&opts("f", None, data.len()), Unseekable(&data[..]), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    // What was written stays resumable.
    assert_eq!(fake.state().ingests["f"].len(), 2 * WRITE_CHUNK_BYTES);
}
