//! Garbage collection: mark from the roots through recorded references,
//! sweep the rest.
//!
//! Roots: image targets, the resources of unexpired leases, and live ingests
//! (leased, held by a writer, or written to within the ingest expiry; an
//! ingest's commit intent counts too). Marking and the metadata deletions
//! happen in one transaction under the publish lock; the files are then
//! unlinked in the background (see `store::reclaim` for why that is safe).

pub mod watermark;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::error::Result;
use crate::meta::{self, blobs::BlobRow, now_ms};
use crate::store::{IngestGuard, Store, remove_dir_if_present};

/// Which unreferenced blobs a collection removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// All of them, plus expired leases and ingests.
    All,
    /// Least recently used first, until this many bytes are freed; leases and
    /// ingests are left alone.
    Evict {
        /// Bytes to free.
        bytes: u64,
    },
}

/// What a collection removed (or would, in a dry run).
#[derive(Debug, Clone, Default)]
pub struct CollectReport {
    /// Blobs removed, with their sizes.
    pub removed: Vec<(String, u64)>,
    /// Ingest refs removed, with their bytes on disk.
    pub removed_ingests: Vec<(String, u64)>,
    /// Lease ids removed.
    pub removed_leases: Vec<String>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Wall time.
    pub duration: std::time::Duration,
}

impl CollectReport {
    /// Total bytes of blobs removed.
    pub fn removed_bytes(&self) -> u64 {
        self.removed.iter().map(|(_, size)| size).sum()
    }
}

/// The result of marking: every blob row split into reachable or not.
pub struct Marked {
    /// Reachable from a root.
    pub referenced: Vec<BlobRow>,
    /// Not reachable, least recently used first.
    pub unreferenced: Vec<BlobRow>,
    /// Ingests that are no longer live: (ref, directory name).
    pub expired_ingests: Vec<(String, String)>,
    /// Expired lease ids.
    pub expired_leases: Vec<String>,
}

/// Marks on an open connection (inside the caller's transaction).
pub fn mark(conn: &rusqlite::Connection, store: &Store) -> Result<Marked> {
    let now = now_ms();
    let expiry_ms = i64::try_from(store.ingest_expiry().as_millis()).unwrap_or(i64::MAX);
    let held: HashSet<String> = store.locks().held().into_iter().collect();
    let mut roots: Vec<String> = meta::images::all_targets(conn)?;
    let mut leased_ingests = HashSet::new();
    for (kind, id) in meta::leases::live_resources(conn, now)? {
        if kind == meta::leases::KIND_INGEST {
            leased_ingests.insert(id);
        } else {
            roots.push(id);
        }
    }
    // A lease that expired gives its ingests up at once: the failed pull it
    // protected had its chance to resume them.
    let abandoned: HashSet<String> = meta::leases::expired_ingests(conn, now)?
        .into_iter()
        .filter(|reference| !leased_ingests.contains(reference))
        .collect();
    let mut expired_ingests = Vec::new();
    for ingest in meta::ingests::list(conn)? {
        let live = held.contains(&ingest.reference)
            || leased_ingests.contains(&ingest.reference)
            || (!abandoned.contains(&ingest.reference)
                && now.saturating_sub(ingest.updated_at) < expiry_ms);
        if live {
            roots.extend(ingest.committing);
        } else {
            expired_ingests.push((ingest.reference, ingest.dir));
        }
    }
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for (parent, child) in meta::blobs::all_refs(conn)? {
        children.entry(parent).or_default().push(child);
    }
    let mut reached: HashSet<String> = HashSet::with_capacity(roots.len());
    while let Some(digest) = roots.pop() {
        if reached.insert(digest.clone())
            && let Some(kids) = children.get(&digest)
        {
            roots.extend(kids.iter().filter(|k| !reached.contains(*k)).cloned());
        }
    }
    let (referenced, unreferenced) = meta::blobs::all_by_last_used(conn)?
        .into_iter()
        .partition(|row| reached.contains(&row.digest));
    Ok(Marked {
        referenced,
        unreferenced,
        expired_ingests,
        expired_leases: meta::leases::expired_ids(conn, now)?,
    })
}

/// How long a push's upload session is remembered without progress;
/// registries expire theirs sooner (Distribution: a week at most, often
/// hours), and a session they no longer know just starts a new upload.
const UPLOAD_SESSION_TTL_MS: i64 = 24 * 3600 * 1000;

/// Runs one collection.
pub async fn collect(store: &Store, policy: Policy, dry_run: bool) -> Result<CollectReport> {
    let started = Instant::now();
    let _publish = store.publish_lock().lock().await;
    let sweeper = store.clone();
    let (mut report, expired) = store
        .meta()
        .run(move |conn| {
            let tx = conn.transaction()?;
            let marked = mark(&tx, &sweeper)?;
            let (report, expired) = select(&sweeper, marked, policy, dry_run);
            if !dry_run {
                for (digest, _) in &report.removed {
                    meta::blobs::delete(&tx, digest)?;
                }
                for id in &report.removed_leases {
                    meta::leases::delete(&tx, id)?;
                }
                for (reference, _) in &report.removed_ingests {
                    meta::ingests::delete(&tx, reference)?;
                }
                if !report.removed.is_empty() {
                    meta::transfers::prune_sources(&tx)?;
                }
                let stale = now_ms().saturating_sub(UPLOAD_SESSION_TTL_MS);
                meta::transfers::expire_sessions(&tx, stale)?;
                tx.commit()?;
            }
            Ok((report, expired))
        })
        .await?;
    if !dry_run {
        let doomed = report
            .removed
            .iter()
            .filter_map(|(digest, size)| match distd_sdk::Digest::parse(digest) {
                Ok(digest) => Some((digest, *size)),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "skipping a malformed digest");
                    None
                }
            })
            .collect();
        store.reclaim(doomed);
        // The expired ingests' refs stay locked until their directories are
        // gone, so a writer reopening one starts afresh instead of inheriting
        // a directory that is being removed.
        let sweeper = store.clone();
        tokio::task::spawn_blocking(move || {
            for (dir, _guard) in expired {
                if let Err(e) = remove_dir_if_present(&sweeper.ingest_dir(&dir)) {
                    tracing::warn!(error = %e, "could not remove a collected ingest");
                }
            }
        })
        .await?;
    }
    report.duration = started.elapsed();
    tracing::info!(
        blobs = report.removed.len(),
        bytes = report.removed_bytes(),
        ingests = report.removed_ingests.len(),
        leases = report.removed_leases.len(),
        dry_run,
        ms = report.duration.as_millis() as u64,
        "garbage collected"
    );
    Ok(report)
}

/// Picks what `policy` removes from what marking left unreferenced; returns
/// the report and, for each expired ingest it removes, its directory and the
/// lock on its ref. An expired ingest whose ref a writer holds is kept.
fn select(
    store: &Store,
    marked: Marked,
    policy: Policy,
    dry_run: bool,
) -> (CollectReport, Vec<(String, IngestGuard)>) {
    let mut report = CollectReport {
        dry_run,
        ..CollectReport::default()
    };
    let mut freed = 0u64;
    for row in marked.unreferenced {
        if let Policy::Evict { bytes } = policy
            && freed >= bytes
        {
            break;
        }
        let size = u64::try_from(row.size).unwrap_or(0);
        freed += size;
        report.removed.push((row.digest, size));
    }
    let mut expired = Vec::new();
    if policy == Policy::All {
        report.removed_leases = marked.expired_leases;
        for (reference, dir) in marked.expired_ingests {
            let Ok(guard) = store.locks().acquire(&reference) else {
                continue;
            };
            let bytes =
                std::fs::metadata(store.ingest_dir(&dir).join("data")).map_or(0, |m| m.len());
            report.removed_ingests.push((reference, bytes));
            expired.push((dir, guard));
        }
    }
    (report, expired)
}
