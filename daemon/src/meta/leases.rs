//! Rows of leases and the resources they protect.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{decode_map, encode_map};
use crate::error::{Result, StoreError};

/// Resource kind for a committed blob (by digest).
pub const KIND_CONTENT: &str = "content";
/// Resource kind for an ingest (by ref).
pub const KIND_INGEST: &str = "ingest";

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Id.
    pub id: String,
    /// ms.
    pub created_at: i64,
    /// ms; `None` = never.
    pub expires_at: Option<i64>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// (kind, id) pairs.
    pub resources: Vec<(String, String)>,
}

/// Creates a lease; `LeaseExists` when the id is taken.
pub fn insert(conn: &Connection, lease: &LeaseRow) -> Result<()> {
    let changed = conn.execute(
        "INSERT OR IGNORE INTO leases (id, created_at, expires_at, labels) VALUES (?1, ?2, ?3, ?4)",
        params![
            lease.id,
            lease.created_at,
            lease.expires_at,
            encode_map(&lease.labels)
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::LeaseExists(lease.id.clone()));
    }
    Ok(())
}

/// Removes a lease and its resources; `LeaseNotFound` when absent.
pub fn delete(conn: &Connection, id: &str) -> Result<()> {
    if conn.execute("DELETE FROM leases WHERE id = ?1", [id])? == 0 {
        return Err(StoreError::LeaseNotFound(id.to_owned()));
    }
    Ok(())
}

/// The lease `id`, with its resources.
pub fn get(conn: &Connection, id: &str) -> Result<Option<LeaseRow>> {
    let lease = conn
        .query_row(
            "SELECT id, created_at, expires_at, labels FROM leases WHERE id = ?1",
            [id],
            |r| {
                Ok(LeaseRow {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    expires_at: r.get(2)?,
                    labels: decode_map(&r.get::<_, String>(3)?),
                    resources: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut lease) = lease else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT kind, id FROM lease_resources WHERE lease_id = ?1 ORDER BY kind, id",
    )?;
    lease.resources = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(lease))
}

/// Every lease, with resources, by id.
pub fn list(conn: &Connection) -> Result<Vec<LeaseRow>> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM leases ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut leases = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(lease) = get(conn, &id)? {
            leases.push(lease);
        }
    }
    Ok(leases)
}

/// Fails with `LeaseNotFound` unless the lease exists and has not expired.
pub fn require_live(conn: &Connection, id: &str, now: i64) -> Result<()> {
    let expires: Option<Option<i64>> = conn
        .query_row("SELECT expires_at FROM leases WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    match expires {
        Some(None) => Ok(()),
        Some(Some(at)) if at > now => Ok(()),
        _ => Err(StoreError::LeaseNotFound(id.to_owned())),
    }
}

/// Fails with `LeaseNotFound` unless the lease exists (expired or not).
fn require(conn: &Connection, lease_id: &str) -> Result<()> {
    conn.query_row("SELECT 1 FROM leases WHERE id = ?1", [lease_id], |_| Ok(()))
        .optional()?
        .ok_or_else(|| StoreError::LeaseNotFound(lease_id.to_owned()))
}

/// Adds a resource to a lease (idempotent); `LeaseNotFound` when absent.
pub fn add_resource(conn: &Connection, lease_id: &str, kind: &str, id: &str) -> Result<()> {
    require(conn, lease_id)?;
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources (lease_id, kind, id) VALUES (?1, ?2, ?3)",
        params![lease_id, kind, id],
    )?;
    Ok(())
}

/// Adds a resource to a lease if the lease still exists; false when it does
/// not. For paths that must not fail a whole group because one lease ended.
pub fn hold(conn: &Connection, lease_id: &str, kind: &str, id: &str) -> Result<bool> {
    let changed = conn.execute(
        "INSERT OR IGNORE INTO lease_resources (lease_id, kind, id)
         SELECT id, ?2, ?3 FROM leases WHERE id = ?1",
        params![lease_id, kind, id],
    )?;
    Ok(changed > 0)
}

/// Removes a resource from a lease; `LeaseNotFound` when the lease is absent.
pub fn delete_resource(conn: &Connection, lease_id: &str, kind: &str, id: &str) -> Result<()> {
    require(conn, lease_id)?;
    conn.execute(
        "DELETE FROM lease_resources WHERE lease_id = ?1 AND kind = ?2 AND id = ?3",
        params![lease_id, kind, id],
    )?;
    Ok(())
}

/// Moves every lease's hold on ingest `reference` to the committed `digest`.
pub fn ingest_committed(conn: &Connection, reference: &str, digest: &str) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources (lease_id, kind, id)
         SELECT lease_id, ?3, ?2 FROM lease_resources WHERE kind = ?4 AND id = ?1",
        params![reference, digest, KIND_CONTENT, KIND_INGEST],
    )?;
    conn.execute(
        "DELETE FROM lease_resources WHERE kind = ?2 AND id = ?1",
        params![reference, KIND_INGEST],
    )?;
    Ok(())
}

/// Resources of leases that have not expired at `now`, as (kind, id).
pub fn live_resources(conn: &Connection, now: i64) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT r.kind, r.id FROM lease_resources r JOIN leases l ON l.id = r.lease_id
         WHERE l.expires_at IS NULL OR l.expires_at > ?1",
    )?;
    let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Ids of the ingests held by leases that expired at `now`: what a failed
/// pull left, collectable now rather than after the ingest expiry.
pub fn expired_ingests(conn: &Connection, now: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT r.id FROM lease_resources r JOIN leases l ON l.id = r.lease_id
         WHERE r.kind = ?1 AND l.expires_at IS NOT NULL AND l.expires_at <= ?2",
    )?;
    let rows = stmt.query_map(params![KIND_INGEST, now], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Moves lease `id`'s expiry to `expires_at`; `LeaseNotFound` when absent.
pub fn set_expiry(conn: &Connection, id: &str, expires_at: Option<i64>) -> Result<()> {
    if conn.execute(
        "UPDATE leases SET expires_at = ?2 WHERE id = ?1",
        params![id, expires_at],
    )? == 0
    {
        return Err(StoreError::LeaseNotFound(id.to_owned()));
    }
    Ok(())
}

/// Ids of leases expired at `now`.
pub fn expired_ids(conn: &Connection, now: i64) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT id FROM leases WHERE expires_at IS NOT NULL AND expires_at <= ?1")?;
    let rows = stmt.query_map([now], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
