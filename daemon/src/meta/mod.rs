//! SQLite metadata of the store.
//!
//! Schema (version 2, kept in `PRAGMA user_version`):
//!
//! ```text
//! blobs           digest PK, size, media_type, created_at, last_used
//!                 one row per committed file under blobs/; written only
//!                 after the file is fsynced and renamed into place
//! refs            parent → child digests, from manifests/indexes; the child
//!                 need not be present (other platforms of an index)
//! images          name PK → target (media_type, digest, size, annotations),
//!                 labels, created_at, updated_at; GC roots
//! leases          id PK, created_at, expires_at (NULL = never), labels
//! lease_resources (lease_id → leases ON DELETE CASCADE, kind, id)
//!                 kind 'content' (digest) or 'ingest' (ref); GC roots while
//!                 the lease has not expired
//! ingests         ref PK, dir (hex name under ingest/), expected, total,
//!                 media_type, started_at, updated_at, committing
//!                 `committing` is the commit intent: set before the file is
//!                 renamed into blobs/, so recovery after a crash knows to
//!                 finish recording the blob
//! blob_sources    (digest, registry, repository) PK, seen_at: where a blob
//!                 was pulled from or pushed to, for cross-repository mounts
//! upload_sessions (registry, repository, digest) PK, location, offset,
//!                 updated_at: the latest acknowledged state of a push's
//!                 upload, continued after a failure or a restart
//! ```
//!
//! Times are milliseconds since the Unix epoch. Every change that must be
//! atomic runs in one transaction; the connection sits behind one mutex, so
//! metadata writes are serialized (the "metadata write lock" GC marks under).

pub mod blobs;
pub mod images;
pub mod ingests;
pub mod leases;
pub mod transfers;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::error::{Result, StoreError};

/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 2;

/// Migrations, in order; entry `n` takes the schema from version `n` to `n+1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE blobs (
        digest     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        media_type TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        last_used  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX blobs_last_used ON blobs(last_used);
    CREATE TABLE refs (
        parent TEXT NOT NULL,
        child  TEXT NOT NULL,
        PRIMARY KEY (parent, child)
    ) WITHOUT ROWID;
    CREATE TABLE images (
        name        TEXT PRIMARY KEY,
        media_type  TEXT NOT NULL,
        digest      TEXT NOT NULL,
        size        INTEGER NOT NULL,
        annotations TEXT NOT NULL DEFAULT '{}',
        labels      TEXT NOT NULL DEFAULT '{}',
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        id         TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        labels     TEXT NOT NULL DEFAULT '{}'
    ) WITHOUT ROWID;
    CREATE TABLE lease_resources (
        lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
        kind     TEXT NOT NULL,
        id       TEXT NOT NULL,
        PRIMARY KEY (lease_id, kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE ingests (
        ref        TEXT PRIMARY KEY,
        dir        TEXT NOT NULL UNIQUE,
        expected   TEXT,
        total      INTEGER NOT NULL DEFAULT 0,
        media_type TEXT NOT NULL DEFAULT '',
        started_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        committing TEXT
    ) WITHOUT ROWID;
"#,
    r#"
    CREATE TABLE blob_sources (
        digest     TEXT NOT NULL,
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        seen_at    INTEGER NOT NULL,
        PRIMARY KEY (digest, registry, repository)
    ) WITHOUT ROWID;
    CREATE TABLE upload_sessions (
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest     TEXT NOT NULL,
        location   TEXT NOT NULL,
        offset     INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (registry, repository, digest)
    ) WITHOUT ROWID;
"#,
];

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Handle to the metadata database; clones share one connection.
#[derive(Clone)]
pub struct Meta {
    conn: Arc<Mutex<Connection>>,
}

impl Meta {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Meta> {
        let mut conn = Connection::open(path)?;
        // WAL: readers never block the writer; FULL: a committed transaction
        // survives power loss, so metadata never lags a published blob.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrate(&mut conn)?;
        Ok(Meta {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection on a blocking thread.
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("metadata lock poisoned".into()))?;
            work(&mut guard)
        })
        .await?
    }

    /// Runs `work` on the connection on the current thread (for startup and
    /// code that is already on a blocking thread).
    pub fn run_blocking<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| StoreError::Task("metadata lock poisoned".into()))?;
        work(&mut guard)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::InvalidArgument(format!(
            "the store's metadata is schema version {version}, newer than this distd understands ({SCHEMA_VERSION}); run a newer distd"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Encodes a string map as JSON for a TEXT column.
pub fn encode_map(map: &std::collections::HashMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

/// Decodes a JSON TEXT column into a string map (empty when malformed).
pub fn decode_map(text: &str) -> std::collections::HashMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_twice_keeps_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        Meta::open(&path).unwrap();
        let meta = Meta::open(&path).unwrap();
        let version: i64 = meta
            .run_blocking(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
