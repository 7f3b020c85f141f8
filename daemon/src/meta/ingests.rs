//! Rows of ingests in progress.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// One ingest. Its offset is not stored: it is the length of the data file,
/// which is what is actually on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestRow {
    /// Client-chosen ref.
    pub reference: String,
    /// Directory name under `ingest/` (hex of the ref's sha256).
    pub dir: String,
    /// Expected digest, if given.
    pub expected: Option<String>,
    /// Expected size; 0 when unknown.
    pub total: i64,
    /// Media type to record at commit.
    pub media_type: String,
    /// ms.
    pub started_at: i64,
    /// ms of the last write.
    pub updated_at: i64,
    /// Commit intent: the digest being published, if a commit started.
    pub committing: Option<String>,
}

const COLUMNS: &str = "ref, dir, expected, total, media_type, started_at, updated_at, committing";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<IngestRow> {
    Ok(IngestRow {
        reference: row.get(0)?,
        dir: row.get(1)?,
        expected: row.get(2)?,
        total: row.get(3)?,
        media_type: row.get(4)?,
        started_at: row.get(5)?,
        updated_at: row.get(6)?,
        committing: row.get(7)?,
    })
}

/// The ingest with `reference`.
pub fn get(conn: &Connection, reference: &str) -> Result<Option<IngestRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM ingests WHERE ref = ?1"),
            [reference],
            from_row,
        )
        .optional()?)
}

/// Every ingest, by ref.
pub fn list(conn: &Connection) -> Result<Vec<IngestRow>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM ingests ORDER BY ref"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts or replaces an ingest row.
pub fn upsert(conn: &Connection, row: &IngestRow) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO ingests ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            row.reference,
            row.dir,
            row.expected,
            row.total,
            row.media_type,
            row.started_at,
            row.updated_at,
            row.committing
        ],
    )?;
    Ok(())
}

/// Records the last write time.
pub fn touch(conn: &Connection, reference: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE ingests SET updated_at = ?2 WHERE ref = ?1",
        params![reference, now],
    )?;
    Ok(())
}

/// Sets or clears the commit intent.
pub fn set_committing(conn: &Connection, reference: &str, digest: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE ingests SET committing = ?2 WHERE ref = ?1",
        params![reference, digest],
    )?;
    Ok(())
}

/// Removes an ingest row and any lease's hold on it; true when it existed.
pub fn delete(conn: &Connection, reference: &str) -> Result<bool> {
    conn.execute(
        "DELETE FROM lease_resources WHERE kind = ?2 AND id = ?1",
        params![reference, super::leases::KIND_INGEST],
    )?;
    Ok(conn.execute("DELETE FROM ingests WHERE ref = ?1", [reference])? > 0)
}
