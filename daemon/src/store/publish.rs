//! Publishing committed ingests as blobs, in groups.
//!
//! Publishing costs three syncs (the commit intent, the directory after the
//! rename, the record), and it must be serialized against GC's sweep. Rather
//! than pay them once per blob, commits that arrive while another group is
//! being published wait, and the next one to take the lock publishes all of
//! them with one sync of each kind ("group commit"). Each commit still gets
//! its own result.

use std::collections::HashSet;
use std::path::PathBuf;

use distd_sdk::Digest;
use tokio::sync::oneshot;

use super::{Store, remove_dir_if_present, sync_dir};
use crate::error::{Result, StoreError};
use crate::failpoint;
use crate::meta::{self, blobs::BlobRow, ingests::IngestRow, now_ms};

/// A verified ingest, ready to become a blob.
pub struct PublishJob {
    /// The ingest's ref.
    pub reference: String,
    /// The ingest's directory name.
    pub dir: String,
    /// Its data file.
    pub data_path: PathBuf,
    /// The verified digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Media type to record.
    pub media_type: String,
    /// References to record.
    pub children: Vec<String>,
    /// Lease to put the blob under.
    pub lease_id: Option<String>,
    /// The ingest's row, when it was never recorded (a blob written in one
    /// request): it is recorded with the commit intent.
    pub unrecorded: Option<IngestRow>,
}

/// A job waiting for a publisher, with where to send its result.
pub(super) struct Pending {
    job: PublishJob,
    done: oneshot::Sender<Result<()>>,
}

/// A published blob's row, references and lease, to record.
type Record = (BlobRow, Vec<String>, Option<String>);

/// What the intent transaction needs of a job.
struct Claim {
    reference: String,
    digest: String,
    lease: Option<String>,
    unrecorded: Option<IngestRow>,
}

/// What became of one job.
enum Outcome {
    /// Published and recorded.
    Published,
    /// The digest was already in the store (or earlier in the same group).
    Exists,
    /// Publishing failed.
    Failed(StoreError),
}

impl Store {
    /// Publishes `job`, grouped with whatever else is waiting. `BlobExists`
    /// when the digest is already committed; the ingest is gone either way.
    pub async fn publish(&self, job: PublishJob) -> Result<()> {
        let digest = job.digest.clone();
        let (done, mut result) = oneshot::channel();
        self.pending().push(Pending { job, done });
        loop {
            let guard = self.publish_lock().lock().await;
            match result.try_recv() {
                // A previous holder published this job in its group.
                Ok(outcome) => return outcome,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Task(format!(
                        "publishing {digest} was abandoned"
                    )));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = self.take_group();
            self.publish_group(group).await;
            drop(guard);
            self.committed().notify_one();
            // Our job may have been held back as a duplicate: go round again.
        }
    }

    /// Takes the waiting jobs, one per digest; later jobs of a digest wait
    /// for the next group, where they find it committed (ALREADY_EXISTS) or,
    /// if the first one failed, get their own chance.
    fn take_group(&self) -> Vec<Pending> {
        let mut pending = self.pending();
        let mut seen = HashSet::new();
        let (group, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut *pending)
            .into_iter()
            .partition(|p| seen.insert(p.job.digest.clone()));
        *pending = later;
        group
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        // The queue holds plain data; a panic elsewhere cannot leave it torn.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes a group; the caller holds the publish lock.
    async fn publish_group(&self, group: Vec<Pending>) {
        let (jobs, replies): (Vec<PublishJob>, Vec<_>) =
            group.into_iter().map(|p| (p.job, p.done)).unzip();
        let outcomes = match self.publish_jobs(jobs).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let (kind, message) = (e.kind(), e.to_string());
                tracing::error!(error = %message, "publishing a group of blobs failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Group {
                        kind,
                        message: message.clone(),
                    }));
                }
                return;
            }
        };
        for ((digest, outcome), reply) in outcomes.into_iter().zip(replies) {
            let result = match outcome {
                Outcome::Published => Ok(()),
                Outcome::Exists => Err(StoreError::BlobExists(digest)),
                Outcome::Failed(e) => Err(e),
            };
            let _ = reply.send(result);
        }
    }

    async fn publish_jobs(&self, jobs: Vec<PublishJob>) -> Result<Vec<(Digest, Outcome)>> {
        // 1. Sort out digests already present (or repeated in the group) and
        //    record the intent of the rest, in one transaction.
        let claims: Vec<Claim> = jobs
            .iter()
            .map(|j| Claim {
                reference: j.reference.clone(),
                digest: j.digest.to_string(),
                lease: j.lease_id.clone(),
                unrecorded: j.unrecorded.clone(),
            })
            .collect();
        let fresh: Vec<bool> = self
            .meta()
            .run(move |conn| {
                let tx = conn.transaction()?;
                let mut seen = HashSet::new();
                let mut fresh = Vec::with_capacity(claims.len());
                for claim in &claims {
                    let exists = !seen.insert(claim.digest.clone())
                        || meta::blobs::get(&tx, &claim.digest)?.is_some();
                    if exists {
                        meta::leases::ingest_committed(&tx, &claim.reference, &claim.digest)?;
                        if let Some(lease) = &claim.lease {
                            meta::leases::hold(
                                &tx,
                                lease,
                                meta::leases::KIND_CONTENT,
                                &claim.digest,
                            )?;
                        }
                        meta::ingests::delete(&tx, &claim.reference)?;
                    } else {
                        if let Some(row) = &claim.unrecorded {
                            meta::ingests::upsert(&tx, row)?;
                        }
                        meta::ingests::set_committing(&tx, &claim.reference, Some(&claim.digest))?;
                    }
                    fresh.push(!exists);
                }
                tx.commit()?;
                Ok(fresh)
            })
            .await?;
        failpoint::hit(failpoint::COMMIT_BEFORE_RENAME);

        // 2. Rename the fresh ones into blobs/ and sync each directory once.
        let moves: Vec<(bool, Digest, PathBuf, PathBuf, PathBuf)> = jobs
            .iter()
            .zip(&fresh)
            .map(|(j, fresh)| {
                (
                    *fresh,
                    j.digest.clone(),
                    j.data_path.clone(),
                    self.blob_path(&j.digest),
                    self.blob_dir(j.digest.algorithm()),
                )
            })
            .collect();
        let store = self.clone();
        let renamed: Vec<Option<Result<()>>> = tokio::task::spawn_blocking(move || {
            let mut dirs = HashSet::new();
            let mut renamed: Vec<Option<Result<()>>> = moves
                .iter()
                .map(|(fresh, digest, source, target, dir)| {
                    fresh.then(|| {
                        // A collected file of the same digest may await unlinking.
                        store.unlink_if_doomed(digest);
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o444))
                            .and_then(|()| std::fs::rename(source, target))
                            .map_err(|e| {
                                // Stay resumable: the ingest must be appendable again.
                                let _ = std::fs::set_permissions(
                                    source,
                                    std::fs::Permissions::from_mode(0o600),
                                );
                                StoreError::io(format!("publishing {}", target.display()))(e)
                            })?;
                        dirs.insert(dir.clone());
                        Ok(())
                    })
                })
                .collect();
            for dir in dirs {
                if let Err(e) = sync_dir(&dir) {
                    // Without the sync, nothing in this group may be recorded.
                    let message = e.to_string();
                    for slot in renamed.iter_mut().flatten() {
                        if slot.is_ok() {
                            *slot = Err(StoreError::Task(message.clone()));
                        }
                    }
                }
            }
            renamed
        })
        .await?;
        failpoint::hit(failpoint::COMMIT_AFTER_RENAME);

        // 3. Record what was published, in one transaction; a failed rename
        //    leaves its ingest resumable (intent cleared).
        let now = now_ms();
        let records: Vec<(String, Option<Record>)> = jobs
            .iter()
            .zip(&renamed)
            .filter_map(|(j, r)| {
                let record = match r {
                    Some(Ok(())) => Some((
                        BlobRow {
                            digest: j.digest.to_string(),
                            size: i64::try_from(j.size).unwrap_or(i64::MAX),
                            media_type: j.media_type.clone(),
                            created_at: now,
                            last_used: now,
                        },
                        j.children.clone(),
                        j.lease_id.clone(),
                    )),
                    Some(Err(_)) => None,
                    None => return None,
                };
                Some((j.reference.clone(), record))
            })
            .collect();
        let recorded = self
            .meta()
            .run(move |conn| {
                let tx = conn.transaction()?;
                for (reference, record) in &records {
                    match record {
                        Some((row, children, lease)) => {
                            record_commit(&tx, reference, row, children)?;
                            if let Some(lease) = lease {
                                meta::leases::hold(
                                    &tx,
                                    lease,
                                    meta::leases::KIND_CONTENT,
                                    &row.digest,
                                )?;
                            }
                        }
                        None => meta::ingests::set_committing(&tx, reference, None)?,
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = recorded {
            self.unpublish(&jobs, &renamed).await;
            return Err(e);
        }
        failpoint::hit(failpoint::COMMIT_AFTER_RECORD);

        // 4. Clean up the ingest directories and report.
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (job, rename) in jobs.into_iter().zip(renamed) {
            let outcome = match rename {
                None => Outcome::Exists,
                Some(Ok(())) => Outcome::Published,
                Some(Err(e)) => Outcome::Failed(e),
            };
            if !matches!(outcome, Outcome::Failed(_))
                && let Err(e) = remove_dir_if_present(&self.ingest_dir(&job.dir))
            {
                // The row is gone; startup removes directories no row names.
                tracing::warn!(error = %e, "could not remove an ingest directory");
            }
            if matches!(outcome, Outcome::Published) {
                tracing::debug!(digest = %job.digest, size = job.size, "committed");
            }
            outcomes.push((job.digest, outcome));
        }
        Ok(outcomes)
    }
}

impl Store {
    /// Undoes the renames of a group whose record failed (a full disk can
    /// refuse the metadata write): the files go back into their ingests and
    /// the intents are cleared, so every ingest is resumable as before. If
    /// clearing the intents fails too, startup recovery does it.
    async fn unpublish(&self, jobs: &[PublishJob], renamed: &[Option<Result<()>>]) {
        let moves: Vec<(String, PathBuf, PathBuf)> = jobs
            .iter()
            .zip(renamed)
            .filter(|(_, r)| matches!(r, Some(Ok(()))))
            .map(|(j, _)| {
                (
                    j.reference.clone(),
                    self.blob_path(&j.digest),
                    j.data_path.clone(),
                )
            })
            .collect();
        let references: Vec<String> = moves.iter().map(|(r, _, _)| r.clone()).collect();
        let undone = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            for (_, published, ingest) in &moves {
                let back = std::fs::rename(published, ingest).and_then(|()| {
                    std::fs::set_permissions(ingest, std::fs::Permissions::from_mode(0o600))
                });
                if let Err(e) = back {
                    tracing::error!(file = %published.display(), error = %e, "could not return a published file to its ingest");
                }
            }
        })
        .await;
        if let Err(e) = undone {
            tracing::error!(error = %e, "returning published files to their ingests failed");
        }
        let cleared = self
            .meta()
            .run(move |conn| {
                let tx = conn.transaction()?;
                for reference in &references {
                    meta::ingests::set_committing(&tx, reference, None)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "could not clear commit intents; startup recovery will");
        }
    }
}

/// Records a published blob, moves lease holds from the ingest to the blob,
/// and forgets the ingest; the caller owns the transaction.
pub(super) fn record_commit(
    conn: &rusqlite::Connection,
    reference: &str,
    row: &BlobRow,
    children: &[String],
) -> Result<()> {
    meta::blobs::insert(conn, row, children)?;
    meta::leases::ingest_committed(conn, reference, &row.digest)?;
    meta::ingests::delete(conn, reference)?;
    Ok(())
}
