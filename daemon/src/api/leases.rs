//! The `Leases` service.

use distd_proto::distd::v1 as pb;
use pb::LeaseResourceKind;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp};
use super::status;
use crate::error::{Result, StoreError};
use crate::meta::{self, leases::LeaseRow, now_ms};
use crate::store::Store;

/// Longest lease id accepted.
const MAX_ID_BYTES: usize = 256;

/// Serves `Leases` from the store's metadata.
pub struct LeasesService {
    store: Store,
}

impl LeasesService {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        LeasesService { store }
    }
}

fn to_api(row: LeaseRow) -> pb::Lease {
    pb::Lease {
        id: row.id,
        created_at: timestamp(row.created_at),
        expires_at: row.expires_at.and_then(timestamp),
        labels: row.labels,
        resources: row
            .resources
            .into_iter()
            .map(|(kind, id)| pb::LeaseResource {
                kind: match kind.as_str() {
                    meta::leases::KIND_CONTENT => LeaseResourceKind::Content as i32,
                    meta::leases::KIND_INGEST => LeaseResourceKind::Ingest as i32,
                    _ => LeaseResourceKind::Unspecified as i32,
                },
                id,
            })
            .collect(),
    }
}

/// A lease id no one chose: 128 random bits in hex.
fn generated_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Task(format!("no randomness for a lease id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Validates a resource into its stored (kind, id) form.
fn resource(resource: Option<pb::LeaseResource>) -> Result<(&'static str, String)> {
    let resource =
        resource.ok_or_else(|| StoreError::InvalidArgument("`resource` is required".into()))?;
    match LeaseResourceKind::try_from(resource.kind) {
        Ok(LeaseResourceKind::Content) => {
            let digest = convert::digest("resource.id", &resource.id)?;
            Ok((meta::leases::KIND_CONTENT, digest.to_string()))
        }
        Ok(LeaseResourceKind::Ingest) if !resource.id.is_empty() => {
            Ok((meta::leases::KIND_INGEST, resource.id))
        }
        Ok(LeaseResourceKind::Ingest) => Err(StoreError::InvalidArgument(
            "`resource.id` must name the ingest ref".into(),
        )),
        _ => Err(StoreError::InvalidArgument(
            "`resource.kind` must be CONTENT or INGEST".into(),
        )),
    }
}

#[tonic::async_trait]
impl pb::leases_server::Leases for LeasesService {
    async fn create(
        &self,
        request: Request<pb::CreateLeaseRequest>,
    ) -> Result<Response<pb::CreateLeaseResponse>, Status> {
        let request = request.into_inner();
        let id = if request.id.is_empty() {
            generated_id().map_err(status)?
        } else {
            convert::name("id", &request.id, MAX_ID_BYTES).map_err(status)?;
            request.id
        };
        let expire = convert::unsigned("expire_seconds", request.expire_seconds).map_err(status)?;
        let now = now_ms();
        let row = LeaseRow {
            id,
            created_at: now,
            expires_at: (expire > 0).then(|| {
                let lifetime_ms = i64::try_from(expire)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000);
                now.saturating_add(lifetime_ms)
            }),
            labels: request.labels,
            resources: Vec::new(),
        };
        let row = self
            .store
            .meta()
            .run(move |conn| meta::leases::insert(conn, &row).map(|()| row))
            .await
            .map_err(status)?;
        tracing::debug!(lease = %row.id, "lease created");
        Ok(Response::new(pb::CreateLeaseResponse {
            lease: Some(to_api(row)),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteLeaseRequest>,
    ) -> Result<Response<pb::DeleteLeaseResponse>, Status> {
        let id = request.into_inner().id;
        self.store
            .meta()
            .run(move |conn| meta::leases::delete(conn, &id))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteLeaseResponse {}))
    }

    async fn list(
        &self,
        _request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let rows = self
            .store
            .meta()
            .run(|conn| meta::leases::list(conn))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListLeasesResponse {
            leases: rows.into_iter().map(to_api).collect(),
        }))
    }

    async fn add_resource(
        &self,
        request: Request<pb::AddLeaseResourceRequest>,
    ) -> Result<Response<pb::AddLeaseResourceResponse>, Status> {
        let request = request.into_inner();
        let (kind, id) = resource(request.resource).map_err(status)?;
        let lease = request.lease_id;
        self.store
            .meta()
            .run(move |conn| meta::leases::add_resource(conn, &lease, kind, &id))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AddLeaseResourceResponse {}))
    }

    async fn delete_resource(
        &self,
        request: Request<pb::DeleteLeaseResourceRequest>,
    ) -> Result<Response<pb::DeleteLeaseResourceResponse>, Status> {
        let request = request.into_inner();
        let (kind, id) = resource(request.resource).map_err(status)?;
        let lease = request.lease_id;
        self.store
            .meta()
            .run(move |conn| meta::leases::delete_resource(conn, &lease, kind, &id))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteLeaseResourceResponse {}))
    }
}
