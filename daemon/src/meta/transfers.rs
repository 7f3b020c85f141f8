//! What transfers remember between runs: where blobs came from or went
//! (so a push can mount instead of upload) and pushes' upload sessions (so a
//! failed or interrupted push continues instead of starting over).

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::Result;

/// Most repositories remembered per blob and registry; mounts try the most
/// recent first.
pub const MAX_SOURCES_PER_REGISTRY: usize = 8;

/// Records that `digest` is in `registry`/`repository` as of `now`.
pub fn record_source(
    conn: &Connection,
    digest: &str,
    registry: &str,
    repository: &str,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO blob_sources (digest, registry, repository, seen_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (digest, registry, repository) DO UPDATE SET seen_at = excluded.seen_at",
        params![digest, registry, repository, now],
    )?;
    Ok(())
}

/// Repositories of `registry` known to hold `digest`, most recent first.
pub fn sources(conn: &Connection, digest: &str, registry: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT repository FROM blob_sources WHERE digest = ?1 AND registry = ?2
         ORDER BY seen_at DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![digest, registry, MAX_SOURCES_PER_REGISTRY as i64],
        |r| r.get(0),
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forgets the sources of blobs that are no longer in the store.
pub fn prune_sources(conn: &Connection) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM blob_sources WHERE digest NOT IN (SELECT digest FROM blobs)",
        [],
    )?)
}

/// One persisted upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Where the upload continues.
    pub location: String,
    /// Bytes the destination acknowledged.
    pub offset: u64,
    /// When it was last acknowledged (ms since the epoch).
    pub updated_at: i64,
}

/// Saves the latest state of the upload of `digest` to `registry`/`repository`.
pub fn save_session(
    conn: &Connection,
    registry: &str,
    repository: &str,
    digest: &str,
    row: &SessionRow,
) -> Result<()> {
    conn.execute(
        "INSERT INTO upload_sessions (registry, repository, digest, location, offset, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (registry, repository, digest) DO UPDATE SET
           location = excluded.location, offset = excluded.offset, updated_at = excluded.updated_at",
        params![
            registry,
            repository,
            digest,
            row.location,
            i64::try_from(row.offset).unwrap_or(i64::MAX),
            row.updated_at
        ],
    )?;
    Ok(())
}

/// The saved upload of `digest` to `registry`/`repository`, if any.
pub fn session(
    conn: &Connection,
    registry: &str,
    repository: &str,
    digest: &str,
) -> Result<Option<SessionRow>> {
    Ok(conn
        .query_row(
            "SELECT location, offset, updated_at FROM upload_sessions
             WHERE registry = ?1 AND repository = ?2 AND digest = ?3",
            params![registry, repository, digest],
            |r| {
                Ok(SessionRow {
                    location: r.get(0)?,
                    offset: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    updated_at: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Forgets the upload of `digest` to `registry`/`repository` (done, or the
/// destination no longer knows it).
pub fn delete_session(
    conn: &Connection,
    registry: &str,
    repository: &str,
    digest: &str,
) -> Result<()> {
    conn.execute(
        "DELETE FROM upload_sessions WHERE registry = ?1 AND repository = ?2 AND digest = ?3",
        params![registry, repository, digest],
    )?;
    Ok(())
}

/// Forgets sessions not acknowledged since `before` (registries expire
/// theirs too).
pub fn expire_sessions(conn: &Connection, before: i64) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM upload_sessions WHERE updated_at < ?1",
        [before],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Meta;

    #[test]
    fn sources_and_sessions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        meta.run_blocking(|c| {
            record_source(c, "sha256:a", "r:5000", "one", 1)?;
            record_source(c, "sha256:a", "r:5000", "two", 2)?;
            record_source(c, "sha256:a", "other:1", "three", 3)?;
            assert_eq!(sources(c, "sha256:a", "r:5000")?, ["two", "one"]);
            // sha256:a is not a stored blob.
            assert_eq!(prune_sources(c)?, 3);
            assert!(sources(c, "sha256:a", "r:5000")?.is_empty());

            let row = SessionRow {
                location: "http://r/v2/x/blobs/uploads/u1".into(),
                offset: 42,
                updated_at: 10,
            };
            save_session(c, "r", "x", "sha256:b", &row)?;
            assert_eq!(session(c, "r", "x", "sha256:b")?, Some(row));
            assert_eq!(expire_sessions(c, 5)?, 0);
            assert_eq!(expire_sessions(c, 11)?, 1);
            assert_eq!(session(c, "r", "x", "sha256:b")?, None);
            Ok(())
        })
        .unwrap();
    }
}
