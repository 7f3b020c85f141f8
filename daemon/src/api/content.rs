//! The `Content` service.

use std::pin::Pin;

use distd_proto::distd::v1 as pb;
use pb::WriteAction;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::convert::{self, signed, timestamp, unsigned};
use super::status;
use crate::error::StoreError;
use crate::meta;
use crate::store::{IngestStatus, IngestWriter, OpenIngest, Store};

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves `Content` from the store.
pub struct ContentService {
    store: Store,
}

impl ContentService {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        ContentService { store }
    }
}

fn write_response(action: WriteAction, status: &IngestStatus) -> pb::WriteContentResponse {
    pb::WriteContentResponse {
        action: action as i32,
        offset: signed(status.offset),
        total: signed(status.total),
        digest: String::new(),
        started_at: timestamp(status.started_at),
        updated_at: timestamp(status.updated_at),
    }
}

/// Runs one Write stream: opens the ingest named by the first request, then
/// answers each request in turn until COMMIT or the client goes away. A
/// client that disappears leaves the ingest resumable.
async fn write_session(
    store: Store,
    mut inbound: Streaming<pb::WriteContentRequest>,
    out: mpsc::Sender<Result<pb::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    if first.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "the first Write request must name the ingest `ref`",
        ));
    }
    tracing::Span::current().record("reference", first.r#ref.as_str());
    let lease_id = (!first.lease_id.is_empty()).then(|| first.lease_id.clone());
    let open = OpenIngest {
        reference: first.r#ref.clone(),
        expected: convert::optional_digest(&first.expected).map_err(status)?,
        total: unsigned("total", first.total).map_err(status)?,
        media_type: first.media_type.clone(),
        lease_id,
    };
    let mut writer = IngestWriter::open(&store, open).await.map_err(status)?;
    let mut next = Some(first);
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => match inbound.message().await? {
                Some(request) => request,
                None => return Ok(()),
            },
        };
        if !request.r#ref.is_empty() && request.r#ref != writer.status().reference {
            return Err(Status::invalid_argument(
                "a Write stream serves one ingest: `ref` must not change",
            ));
        }
        let action = WriteAction::try_from(request.action).unwrap_or(WriteAction::Unspecified);
        let response = match action {
            WriteAction::Stat => write_response(action, &writer.status()),
            WriteAction::Write => {
                let offset = unsigned("offset", request.offset).map_err(status)?;
                writer.write(offset, request.data).await.map_err(status)?;
                write_response(action, &writer.status())
            }
            WriteAction::Commit => {
                let offset = unsigned("offset", request.offset).map_err(status)?;
                if !request.data.is_empty() {
                    writer
                        .write_final(offset, request.data)
                        .await
                        .map_err(status)?;
                }
                let state = writer.status();
                let expected = convert::optional_digest(&request.expected).map_err(status)?;
                let total = unsigned("total", request.total).map_err(status)?;
                let (digest, size) = writer
                    .commit(expected, total, &request.media_type)
                    .await
                    .map_err(status)?;
                let mut response = write_response(action, &state);
                response.offset = signed(size);
                response.digest = digest.to_string();
                let _ = out.send(Ok(response)).await;
                return Ok(());
            }
            WriteAction::Unspecified => {
                return Err(Status::invalid_argument(
                    "each Write request needs an action: STAT, WRITE or COMMIT",
                ));
            }
        };
        if out.send(Ok(response)).await.is_err() {
            // The client has gone; the ingest stays resumable.
            return Ok(());
        }
    }
}

#[tonic::async_trait]
impl pb::content_server::Content for ContentService {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let digest = convert::digest("digest", &request.get_ref().digest).map_err(status)?;
        let (row, children) = self.store.info(&digest).await.map_err(status)?;
        Ok(Response::new(pb::InfoResponse {
            info: Some(convert::info(row, children)),
        }))
    }

    type ListStream = ServerStream<pb::ListContentResponse>;

    async fn list(
        &self,
        request: Request<pb::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let pb::ListContentRequest {
            digest_prefix,
            media_type,
        } = request.into_inner();
        let rows = self
            .store
            .meta()
            .run(move |conn| meta::blobs::list(conn, &digest_prefix, &media_type))
            .await
            .map_err(status)?;
        let pages: Vec<Result<pb::ListContentResponse, Status>> = rows
            .chunks(1000)
            .map(|page| {
                Ok(pb::ListContentResponse {
                    infos: page
                        .iter()
                        .map(|row| convert::info(row.clone(), Vec::new()))
                        .collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    type ReadStream = ServerStream<pb::ReadContentResponse>;

    async fn read(
        &self,
        request: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let digest = convert::digest("digest", &request.digest).map_err(status)?;
        let offset = unsigned("offset", request.offset).map_err(status)?;
        let size = unsigned("size", request.size).map_err(status)?;
        let chunks = self
            .store
            .read(&digest, offset, size)
            .await
            .map_err(status)?;
        let stream = ReceiverStream::new(chunks).map(|chunk| {
            chunk
                .map(|(offset, data)| pb::ReadContentResponse {
                    offset: signed(offset),
                    data,
                })
                .map_err(status)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type WriteStream = ServerStream<pb::WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        let inbound = request.into_inner();
        let span = tracing::info_span!("write", reference = tracing::field::Empty);
        tokio::spawn(
            async move {
                if let Err(status) = write_session(store, inbound, tx.clone()).await {
                    tracing::debug!(code = ?status.code(), message = status.message(), "write ended");
                    let _ = tx.send(Err(status)).await;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<pb::DeleteContentResponse>, Status> {
        let digest = convert::digest("digest", &request.get_ref().digest).map_err(status)?;
        self.store.delete(&digest).await.map_err(status)?;
        tracing::info!(%digest, "content deleted");
        Ok(Response::new(pb::DeleteContentResponse {}))
    }

    async fn list_ingests(
        &self,
        _request: Request<pb::ListIngestsRequest>,
    ) -> Result<Response<pb::ListIngestsResponse>, Status> {
        let ingests = self.store.ingests().await.map_err(status)?;
        let locks = self.store.locks();
        Ok(Response::new(pb::ListIngestsResponse {
            ingests: ingests
                .into_iter()
                .map(|i| pb::IngestStatus {
                    active: locks.is_held(&i.reference),
                    r#ref: i.reference,
                    offset: signed(i.offset),
                    total: signed(i.total),
                    expected: i.expected.unwrap_or_default(),
                    media_type: i.media_type,
                    started_at: timestamp(i.started_at),
                    updated_at: timestamp(i.updated_at),
                })
                .collect(),
        }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let reference = &request.get_ref().r#ref;
        if reference.is_empty() {
            return Err(status(StoreError::InvalidArgument(
                "`ref` is required".into(),
            )));
        }
        self.store.abort(reference).await.map_err(status)?;
        Ok(Response::new(pb::AbortResponse {}))
    }
}
