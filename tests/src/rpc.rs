//! Thin helpers over the SDK's raw gRPC clients, returning `tonic::Status`
//! so tests can assert exact codes.

use distd_sdk::Client;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::{MIB, pb};

/// Result of one RPC.
pub type RpcResult<T> = Result<T, Status>;

/// Panics unless `result` failed with `code`; returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: RpcResult<T>, code: Code, what: &str) -> Status {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            status
        }
    }
}

/// The fields every request of one ingest carries.
#[derive(Debug, Clone, Default)]
pub struct Ingest {
    pub r#ref: String,
    pub expected: String,
    pub total: i64,
    pub media_type: String,
    pub lease_id: String,
}

impl Ingest {
    /// An ingest with this ref and nothing else declared.
    pub fn new(r#ref: impl Into<String>) -> Ingest {
        Ingest {
            r#ref: r#ref.into(),
            ..Ingest::default()
        }
    }

    /// Also declares the expected digest.
    pub fn expected(mut self, digest: impl Into<String>) -> Ingest {
        self.expected = digest.into();
        self
    }

    /// Also declares the total size.
    pub fn total(mut self, total: u64) -> Ingest {
        self.total = total as i64;
        self
    }

    /// Also declares the media type.
    pub fn media_type(mut self, media_type: impl Into<String>) -> Ingest {
        self.media_type = media_type.into();
        self
    }

    /// Also names a lease.
    pub fn lease(mut self, lease_id: impl Into<String>) -> Ingest {
        self.lease_id = lease_id.into();
        self
    }

    /// A request of this ingest.
    pub fn request(
        &self,
        action: pb::WriteAction,
        offset: u64,
        data: &[u8],
    ) -> pb::WriteContentRequest {
        pb::WriteContentRequest {
            action: action as i32,
            r#ref: self.r#ref.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: offset as i64,
            data: data.to_vec().into(),
            media_type: self.media_type.clone(),
            lease_id: self.lease_id.clone(),
        }
    }

    /// A STAT request.
    pub fn stat(&self) -> pb::WriteContentRequest {
        self.request(pb::WriteAction::Stat, 0, &[])
    }
}

/// One open `Content.Write` stream, used in lock step: each request is sent
/// and its one response awaited.
pub struct WriteStream {
    tx: Option<mpsc::Sender<pb::WriteContentRequest>>,
    rx: tonic::Streaming<pb::WriteContentResponse>,
}

impl WriteStream {
    /// Opens a stream whose first request is `first`; returns the stream and
    /// the response to `first`.
    pub async fn open(
        client: &Client,
        first: pb::WriteContentRequest,
    ) -> RpcResult<(WriteStream, pb::WriteContentResponse)> {
        let (tx, rx) = mpsc::channel(4);
        // Queued before the call, so a server that waits for the first
        // message before answering the call does not deadlock us.
        tx.send(first).await.expect("queue the first request");
        let response = client.content().write(ReceiverStream::new(rx)).await?;
        let mut stream = WriteStream {
            tx: Some(tx),
            rx: response.into_inner(),
        };
        let first = stream.recv().await?;
        Ok((stream, first))
    }

    /// Sends one request and waits for its response.
    pub async fn send(
        &mut self,
        request: pb::WriteContentRequest,
    ) -> RpcResult<pb::WriteContentResponse> {
        let Some(tx) = &self.tx else {
            return Err(Status::failed_precondition("the request side is closed"));
        };
        if tx.send(request).await.is_err() {
            // The server ended the call: its status says why.
            return Err(self.recv().await.err().unwrap_or_else(|| {
                Status::internal("the server stopped reading requests but sent a response")
            }));
        }
        self.recv().await
    }

    async fn recv(&mut self) -> RpcResult<pb::WriteContentResponse> {
        match self.rx.message().await? {
            Some(response) => Ok(response),
            None => Err(Status::internal(
                "the Write stream ended without a response to a request",
            )),
        }
    }

    /// Sends `data` from `offset` as WRITE requests of at most 1 MiB each;
    /// returns the offset the last response reported.
    pub async fn write_all(
        &mut self,
        ingest: &Ingest,
        mut offset: u64,
        data: &[u8],
    ) -> RpcResult<u64> {
        let mut acknowledged = offset;
        for chunk in data.chunks(MIB) {
            let response = self
                .send(ingest.request(pb::WriteAction::Write, offset, chunk))
                .await?;
            offset += chunk.len() as u64;
            acknowledged = response.offset as u64;
        }
        Ok(acknowledged)
    }

    /// Sends COMMIT at `offset` with no data.
    pub async fn commit(
        &mut self,
        ingest: &Ingest,
        offset: u64,
    ) -> RpcResult<pb::WriteContentResponse> {
        self.send(ingest.request(pb::WriteAction::Commit, offset, &[]))
            .await
    }

    /// Closes the request side and drops the stream.
    pub fn close(mut self) {
        self.tx = None;
    }
}

/// Writes `data` as a new blob through one Write stream (STAT, WRITEs of
/// 1 MiB, COMMIT) and returns the COMMIT response.
pub async fn put(
    client: &Client,
    ingest: &Ingest,
    data: &[u8],
) -> RpcResult<pb::WriteContentResponse> {
    let (mut stream, stat) = WriteStream::open(client, ingest.stat()).await?;
    assert_eq!(
        stat.offset, 0,
        "ingest {:?} should be new, STAT says offset {}",
        ingest.r#ref, stat.offset
    );
    stream.write_all(ingest, 0, data).await?;
    let response = stream.commit(ingest, data.len() as u64).await?;
    stream.close();
    Ok(response)
}

/// `Content.Info`.
pub async fn info(client: &Client, digest: &str) -> RpcResult<pb::Info> {
    let response = client
        .content()
        .info(pb::InfoRequest {
            digest: digest.to_owned(),
        })
        .await?
        .into_inner();
    response
        .info
        .ok_or_else(|| Status::internal("InfoResponse without info"))
}

/// `Content.Read` of a whole blob, collected.
pub async fn read(client: &Client, digest: &str) -> RpcResult<Vec<u8>> {
    let mut stream = client
        .content()
        .read(pb::ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        assert_eq!(
            message.offset as usize,
            out.len(),
            "Read of {digest} returned a chunk at an unexpected offset"
        );
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

/// `Content.Delete`.
pub async fn delete(client: &Client, digest: &str) -> RpcResult<()> {
    client
        .content()
        .delete(pb::DeleteContentRequest {
            digest: digest.to_owned(),
        })
        .await?;
    Ok(())
}

/// `Content.List` of everything, all pages.
pub async fn list(client: &Client) -> RpcResult<Vec<pb::Info>> {
    let mut stream = client
        .content()
        .list(pb::ListContentRequest::default())
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(page) = stream.message().await? {
        out.extend(page.infos);
    }
    Ok(out)
}

/// `Content.ListIngests`.
pub async fn ingests(client: &Client) -> RpcResult<Vec<pb::IngestStatus>> {
    Ok(client
        .content()
        .list_ingests(pb::ListIngestsRequest {})
        .await?
        .into_inner()
        .ingests)
}

/// `Store.Usage`.
pub async fn usage(client: &Client) -> RpcResult<pb::UsageResponse> {
    Ok(client
        .store()
        .usage(pb::UsageRequest {})
        .await?
        .into_inner())
}

/// `Store.Collect`.
pub async fn collect(client: &Client, dry_run: bool) -> RpcResult<pb::CollectResponse> {
    Ok(client
        .store()
        .collect(pb::CollectRequest { dry_run })
        .await?
        .into_inner())
}

/// `Store.Verify`.
pub async fn verify(client: &Client) -> RpcResult<pb::VerifyResponse> {
    Ok(client
        .store()
        .verify(pb::VerifyRequest {})
        .await?
        .into_inner())
}

/// Panics with the problems unless `Store.Verify` finds none.
pub async fn assert_verify_clean(client: &Client) -> pb::VerifyResponse {
    let report = verify(client).await.expect("Store.Verify");
    assert!(
        report.problems.is_empty(),
        "Store.Verify found problems: {:#?}",
        report.problems
    );
    report
}

/// `Leases.Create` with this id and no expiry.
pub async fn create_lease(client: &Client, id: &str) -> RpcResult<pb::Lease> {
    let response = client
        .leases()
        .create(pb::CreateLeaseRequest {
            id: id.to_owned(),
            expire_seconds: 0,
            labels: Default::default(),
        })
        .await?
        .into_inner();
    response
        .lease
        .ok_or_else(|| Status::internal("CreateLeaseResponse without lease"))
}

/// `Leases.Delete`.
pub async fn delete_lease(client: &Client, id: &str) -> RpcResult<()> {
    client
        .leases()
        .delete(pb::DeleteLeaseRequest { id: id.to_owned() })
        .await?;
    Ok(())
}

/// `Images.Get`.
pub async fn image(client: &Client, name: &str) -> RpcResult<pb::Image> {
    let response = client
        .images()
        .get(pb::GetImageRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    response
        .image
        .ok_or_else(|| Status::internal("GetImageResponse without image"))
}

/// A blob's `last_used_at` as (seconds, nanos), for comparisons.
pub fn last_used(info: &pb::Info) -> (i64, i32) {
    info.last_used_at
        .as_ref()
        .map(|t| (t.seconds, t.nanos))
        .unwrap_or_default()
}
