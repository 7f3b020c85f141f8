//! The `Store` and `System` services.

use distd_proto::distd::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::signed;
use super::status;
use crate::gc::{self, Policy, watermark::filesystem_space};
use crate::store::{ProblemKind, Store};

/// Most digests a Collect answer lists (the count is always complete).
const MAX_LISTED_DIGESTS: usize = 10_000;

/// Serves `Store`: usage, collection, verification.
pub struct StoreService {
    store: Store,
}

impl StoreService {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        StoreService { store }
    }
}

fn sum(rows: &[crate::meta::blobs::BlobRow]) -> i64 {
    rows.iter().map(|r| r.size).sum()
}

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn usage(
        &self,
        _request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let marker = self.store.clone();
        let marked = self
            .store
            .meta()
            .run(move |conn| gc::mark(conn, &marker))
            .await
            .map_err(status)?;
        let ingests = self.store.ingests().await.map_err(status)?;
        let (fs_total, fs_free) = filesystem_space(self.store.root()).map_err(status)?;
        Ok(Response::new(pb::UsageResponse {
            blob_count: signed((marked.referenced.len() + marked.unreferenced.len()) as u64),
            blob_bytes: sum(&marked.referenced) + sum(&marked.unreferenced),
            referenced_count: signed(marked.referenced.len() as u64),
            referenced_bytes: sum(&marked.referenced),
            reclaimable_count: signed(marked.unreferenced.len() as u64),
            reclaimable_bytes: sum(&marked.unreferenced),
            ingest_count: signed(ingests.len() as u64),
            ingest_bytes: signed(ingests.iter().map(|i| i.offset).sum()),
            filesystem_bytes: signed(fs_total),
            filesystem_free_bytes: signed(fs_free),
        }))
    }

    async fn collect(
        &self,
        request: Request<pb::CollectRequest>,
    ) -> Result<Response<pb::CollectResponse>, Status> {
        let dry_run = request.into_inner().dry_run;
        let report = gc::collect(&self.store, Policy::All, dry_run)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CollectResponse {
            removed_bytes: signed(report.removed_bytes()),
            removed_count: signed(report.removed.len() as u64),
            removed_digests: report
                .removed
                .into_iter()
                .take(MAX_LISTED_DIGESTS)
                .map(|(d, _)| d)
                .collect(),
            removed_ingest_bytes: signed(report.removed_ingests.iter().map(|(_, b)| b).sum()),
            removed_ingests: report.removed_ingests.into_iter().map(|(r, _)| r).collect(),
            removed_leases: report.removed_leases,
            dry_run: report.dry_run,
            duration_ms: signed(report.duration.as_millis() as u64),
        }))
    }

    async fn verify(
        &self,
        _request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let report = self.store.verify().await.map_err(status)?;
        Ok(Response::new(pb::VerifyResponse {
            checked_count: signed(report.checked_count),
            checked_bytes: signed(report.checked_bytes),
            problems: report
                .problems
                .into_iter()
                .map(|p| pb::VerifyProblem {
                    kind: match p.kind {
                        ProblemKind::Missing => pb::verify_problem::Kind::Missing,
                        ProblemKind::Corrupt => pb::verify_problem::Kind::Corrupt,
                        ProblemKind::Orphan => pb::verify_problem::Kind::Orphan,
                    } as i32,
                    digest: p.digest,
                    detail: p.detail,
                })
                .collect(),
        }))
    }
}

/// Serves `System`.
pub struct SystemService;

#[tonic::async_trait]
impl pb::system_server::System for SystemService {
    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api: distd_proto::API_PACKAGE.to_owned(),
        }))
    }
}
