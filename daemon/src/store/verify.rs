//! Verify: re-hash every blob and compare the files with the metadata.

use std::collections::HashSet;

use distd_sdk::Digest;

use super::Store;
use super::ingest::rehash;
use crate::error::{Result, StoreError};
use crate::meta;

/// What is wrong with one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Recorded, but the file is gone.
    Missing,
    /// The file's size or hash is wrong.
    Corrupt,
    /// A file the metadata does not know.
    Orphan,
}

/// One problem found.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Its kind.
    pub kind: ProblemKind,
    /// The digest (or file name, for an orphan that is not a digest).
    pub digest: String,
    /// What was found.
    pub detail: String,
}

/// What Verify found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Blobs checked.
    pub checked_count: u64,
    /// Bytes hashed.
    pub checked_bytes: u64,
    /// Problems, in digest order.
    pub problems: Vec<Problem>,
}

impl Store {
    /// Re-hashes every blob; reports missing, corrupt and orphan files.
    pub async fn verify(&self) -> Result<VerifyReport> {
        // Rows and files are compared with publishing and sweeping held off,
        // so a blob between its rename and its record, or a collected file
        // awaiting its unlink, is not taken for an orphan.
        let (rows, orphans) = {
            let _publish = self.publish_lock().lock().await;
            let rows = self
                .meta()
                .run(|conn| meta::blobs::list(conn, "", ""))
                .await?;
            let store = self.clone();
            let known: HashSet<String> = rows.iter().map(|r| r.digest.clone()).collect();
            let orphans = tokio::task::spawn_blocking(move || orphans(&store, &known)).await??;
            (rows, orphans)
        };
        let store = self.clone();
        let mut report = tokio::task::spawn_blocking(move || check_rows(&store, rows)).await??;
        // A blob collected while it was being checked is not missing.
        let mut problems = Vec::with_capacity(report.problems.len());
        for problem in report.problems {
            if problem.kind == ProblemKind::Missing {
                let key = problem.digest.clone();
                let recorded = self.meta().run(move |c| meta::blobs::get(c, &key)).await?;
                if recorded.is_none() {
                    continue;
                }
            }
            problems.push(problem);
        }
        problems.extend(orphans);
        problems.sort_by(|a, b| a.digest.cmp(&b.digest));
        report.problems = problems;
        Ok(report)
    }
}

/// Checks each recorded blob's file: present, right size, right hash.
fn check_rows(store: &Store, rows: Vec<meta::blobs::BlobRow>) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    for row in rows {
        let digest = match Digest::parse(&row.digest) {
            Ok(d) => d,
            Err(e) => {
                report.problems.push(Problem {
                    kind: ProblemKind::Corrupt,
                    digest: row.digest.clone(),
                    detail: format!("the metadata holds a malformed digest: {e}"),
                });
                continue;
            }
        };
        let path = store.blob_path(&digest);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.problems.push(Problem {
                    kind: ProblemKind::Missing,
                    digest: row.digest.clone(),
                    detail: format!("{} does not exist", path.display()),
                });
                continue;
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
        };
        report.checked_count += 1;
        report.checked_bytes += size;
        if i64::try_from(size).ok() != Some(row.size) {
            report.problems.push(Problem {
                kind: ProblemKind::Corrupt,
                digest: row.digest.clone(),
                detail: format!("file holds {size} bytes, metadata says {}", row.size),
            });
            continue;
        }
        let actual = match rehash(&path, digest.algorithm()) {
            Ok(actual) => actual,
            // Collected while being checked: the row re-check sorts it out.
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                report.problems.push(Problem {
                    kind: ProblemKind::Missing,
                    digest: row.digest.clone(),
                    detail: format!("{} does not exist", path.display()),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if actual != digest {
            report.problems.push(Problem {
                kind: ProblemKind::Corrupt,
                digest: row.digest.clone(),
                detail: format!("file hashes to {actual}"),
            });
        }
    }
    Ok(report)
}

/// Files in blobs/ that no row names. A collected file awaiting its unlink
/// is not one; the background unlink drops it from the doomed table and
/// removes it atomically, so a file that is not doomed (any more) and still
/// exists after the check is a real orphan.
fn orphans(store: &Store, known: &HashSet<String>) -> Result<Vec<Problem>> {
    let mut orphans = Vec::new();
    for (name, path) in super::blob_files(store)? {
        if !known.contains(&name) && !doomed(store, &name) && path.exists() {
            orphans.push(Problem {
                kind: ProblemKind::Orphan,
                detail: format!("{} is not recorded in the metadata", path.display()),
                digest: name,
            });
        }
    }
    Ok(orphans)
}

fn doomed(store: &Store, name: &str) -> bool {
    Digest::parse(name).is_ok_and(|d| store.is_doomed(&d))
}
