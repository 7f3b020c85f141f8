//! Startup recovery: finish or undo what a crash interrupted.
//!
//! - An ingest with a commit intent whose file reached `blobs/` is recorded
//!   (after re-hashing the file); one whose file did not is left as an
//!   ordinary, resumable ingest.
//! - Ingest directories that no row names are removed.
//! - Blob rows whose file is missing are reported (Verify lists them too).

use std::collections::HashSet;

use distd_sdk::{Digest, media};

use super::ingest::rehash;
use super::publish::record_commit;
use super::{Store, remove_dir_if_present};
use crate::error::{Result, StoreError};
use crate::meta::{self, blobs::BlobRow, now_ms};

pub(super) fn recover(store: &Store) -> Result<()> {
    let rows = store
        .meta()
        .run_blocking(|conn| meta::ingests::list(conn))?;
    let mut known_dirs = HashSet::new();
    for row in rows {
        let Some(intent) = row.committing.clone() else {
            known_dirs.insert(row.dir);
            continue;
        };
        let digest = Digest::parse(&intent)?;
        let blob = store.blob_path(&digest);
        if !blob.exists() {
            // The rename never happened: the bytes are still in the ingest.
            store
                .meta()
                .run_blocking(|conn| meta::ingests::set_committing(conn, &row.reference, None))?;
            known_dirs.insert(row.dir);
            tracing::info!(reference = %row.reference, "resuming an ingest whose commit was interrupted before publishing");
            continue;
        }
        let actual = rehash(&blob, digest.algorithm())?;
        if actual != digest {
            // Cannot happen unless the disk lies; never record a bad blob.
            tracing::error!(%digest, %actual, "a published blob does not match its digest; removing it");
            super::remove_file_if_present(&blob)?;
            store
                .meta()
                .run_blocking(|conn| meta::ingests::delete(conn, &row.reference).map(drop))?;
            remove_dir_if_present(&store.ingest_dir(&row.dir))?;
            continue;
        }
        let size = std::fs::metadata(&blob)
            .map_err(StoreError::io(format!("reading {}", blob.display())))?
            .len();
        let children = structured_children(&blob, &row.media_type, size)?;
        let now = now_ms();
        let blob_row = BlobRow {
            digest: intent,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            media_type: row.media_type.clone(),
            created_at: now,
            last_used: now,
        };
        store.meta().run_blocking(|conn| {
            let tx = conn.transaction()?;
            record_commit(&tx, &row.reference, &blob_row, &children)?;
            tx.commit()?;
            Ok(())
        })?;
        remove_dir_if_present(&store.ingest_dir(&row.dir))?;
        tracing::info!(%digest, "finished recording a commit interrupted by a crash");
    }
    remove_unknown_ingest_dirs(store, &known_dirs)?;
    remove_unrecorded_blobs(store)?;
    let (count, bytes) = store
        .meta()
        .run_blocking(|conn| meta::blobs::totals(conn))?;
    tracing::info!(blobs = count, bytes, "store opened");
    Ok(())
}

fn structured_children(blob: &std::path::Path, media_type: &str, size: u64) -> Result<Vec<String>> {
    if media::classify(media_type) == media::ContentClass::Opaque
        || size > media::MAX_MANIFEST_BYTES
    {
        return Ok(Vec::new());
    }
    let bytes =
        std::fs::read(blob).map_err(StoreError::io(format!("reading {}", blob.display())))?;
    // It parsed before the crash; if it no longer does, record no references.
    Ok(media::children(media_type, &bytes)
        .map(|c| c.into_iter().map(|c| c.digest.to_string()).collect())
        .unwrap_or_default())
}

fn remove_unknown_ingest_dirs(store: &Store, known: &HashSet<String>) -> Result<()> {
    let root = store.ingest_root();
    let entries =
        std::fs::read_dir(&root).map_err(StoreError::io(format!("listing {}", root.display())))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io(format!("listing {}", root.display())))?;
        let name = entry.file_name();
        if !known.contains(name.to_string_lossy().as_ref()) {
            tracing::info!(dir = %entry.path().display(), "removing an ingest directory no ingest names");
            let path = entry.path();
            if path.is_dir() {
                remove_dir_if_present(&path)?;
            } else {
                super::remove_file_if_present(&path)?;
            }
        }
    }
    Ok(())
}

/// Removes files in blobs/ that no row names. Commits in flight were settled
/// above, so these are files a collection had not finished unlinking.
fn remove_unrecorded_blobs(store: &Store) -> Result<()> {
    let known: HashSet<String> = store
        .meta()
        .run_blocking(|conn| meta::blobs::list(conn, "", ""))?
        .into_iter()
        .map(|row| row.digest)
        .collect();
    for (name, path) in super::blob_files(store)? {
        if !known.contains(&name) {
            tracing::info!(file = %path.display(), "removing a blob file no record names (a collection was interrupted)");
            super::remove_file_if_present(&path)?;
        }
    }
    Ok(())
}
