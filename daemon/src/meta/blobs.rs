//! Rows of committed blobs and the references between them.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// One committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// `algorithm:hex`.
    pub digest: String,
    /// Bytes.
    pub size: i64,
    /// As given at write time.
    pub media_type: String,
    /// Commit time, ms.
    pub created_at: i64,
    /// Last commit or read, ms.
    pub last_used: i64,
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BlobRow> {
    Ok(BlobRow {
        digest: row.get(0)?,
        size: row.get(1)?,
        media_type: row.get(2)?,
        created_at: row.get(3)?,
        last_used: row.get(4)?,
    })
}

/// The blob with `digest`, if recorded.
pub fn get(conn: &Connection, digest: &str) -> Result<Option<BlobRow>> {
    Ok(conn
        .query_row(
            "SELECT digest, size, media_type, created_at, last_used FROM blobs WHERE digest = ?1",
            [digest],
            from_row,
        )
        .optional()?)
}

/// Blobs whose digest starts with `prefix` and, if given, with `media_type`.
pub fn list(conn: &Connection, prefix: &str, media_type: &str) -> Result<Vec<BlobRow>> {
    let mut stmt = conn.prepare(
        "SELECT digest, size, media_type, created_at, last_used FROM blobs
         WHERE substr(digest, 1, length(?1)) = ?1 AND (?2 = '' OR media_type = ?2)
         ORDER BY digest",
    )?;
    let rows = stmt.query_map(params![prefix, media_type], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every blob, least recently used first.
pub fn all_by_last_used(conn: &Connection) -> Result<Vec<BlobRow>> {
    let mut stmt = conn.prepare(
        "SELECT digest, size, media_type, created_at, last_used FROM blobs ORDER BY last_used, digest",
    )?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Records a committed blob and the children it references.
pub fn insert(conn: &Connection, row: &BlobRow, children: &[String]) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO blobs (digest, size, media_type, created_at, last_used)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            row.digest,
            row.size,
            row.media_type,
            row.created_at,
            row.last_used
        ],
    )?;
    let mut stmt =
        conn.prepare_cached("INSERT OR IGNORE INTO refs (parent, child) VALUES (?1, ?2)")?;
    for child in children {
        stmt.execute(params![row.digest, child])?;
    }
    Ok(())
}

/// Marks a blob as used now (for LRU eviction). A lost update only makes
/// eviction slightly less exact, so this one write skips the fsync every
/// other transaction pays (WAL keeps it atomic either way); reads therefore
/// cost no disk flush. Must not be called inside a transaction.
pub fn touch(conn: &Connection, digest: &str, now: i64) -> Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let updated = conn.execute(
        "UPDATE blobs SET last_used = ?2 WHERE digest = ?1",
        params![digest, now],
    );
    conn.pragma_update(None, "synchronous", "FULL")?;
    updated?;
    Ok(())
}

/// Removes a blob's row and its outgoing references; true when it existed.
pub fn delete(conn: &Connection, digest: &str) -> Result<bool> {
    conn.execute("DELETE FROM refs WHERE parent = ?1", [digest])?;
    Ok(conn.execute("DELETE FROM blobs WHERE digest = ?1", [digest])? > 0)
}

/// The digests `digest` references.
pub fn children(conn: &Connection, digest: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT child FROM refs WHERE parent = ?1 ORDER BY child")?;
    let rows = stmt.query_map([digest], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every parent → child reference.
pub fn all_refs(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare("SELECT parent, child FROM refs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Count and bytes of all blobs.
pub fn totals(conn: &Connection) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0) FROM blobs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}
