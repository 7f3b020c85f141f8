//! Rows of images: names that point at a manifest or index.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{decode_map, encode_map};
use crate::error::{Result, StoreError};

/// One image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// Reference-like name.
    pub name: String,
    /// Target media type.
    pub media_type: String,
    /// Target digest.
    pub digest: String,
    /// Target size.
    pub size: i64,
    /// Target annotations.
    pub annotations: HashMap<String, String>,
    /// Image labels.
    pub labels: HashMap<String, String>,
    /// ms.
    pub created_at: i64,
    /// ms.
    pub updated_at: i64,
}

const COLUMNS: &str = "name, media_type, digest, size, annotations, labels, created_at, updated_at";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        name: row.get(0)?,
        media_type: row.get(1)?,
        digest: row.get(2)?,
        size: row.get(3)?,
        annotations: decode_map(&row.get::<_, String>(4)?),
        labels: decode_map(&row.get::<_, String>(5)?),
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

/// The image called `name`.
pub fn get(conn: &Connection, name: &str) -> Result<Option<ImageRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM images WHERE name = ?1"),
            [name],
            from_row,
        )
        .optional()?)
}

/// Images whose name starts with `prefix`, by name.
pub fn list(conn: &Connection, prefix: &str) -> Result<Vec<ImageRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM images WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name"
    ))?;
    let rows = stmt.query_map([prefix], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts a new image; `ImageExists` when the name is taken.
pub fn insert(conn: &Connection, image: &ImageRow) -> Result<()> {
    let changed = conn.execute(
        &format!(
            "INSERT OR IGNORE INTO images ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            image.name,
            image.media_type,
            image.digest,
            image.size,
            encode_map(&image.annotations),
            encode_map(&image.labels),
            image.created_at,
            image.updated_at
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::ImageExists(image.name.clone()));
    }
    Ok(())
}

/// Replaces an existing image's target and labels; `ImageNotFound` when absent.
pub fn update(conn: &Connection, image: &ImageRow) -> Result<()> {
    let changed = conn.execute(
        "UPDATE images SET media_type = ?2, digest = ?3, size = ?4, annotations = ?5,
         labels = ?6, updated_at = ?7 WHERE name = ?1",
        params![
            image.name,
            image.media_type,
            image.digest,
            image.size,
            encode_map(&image.annotations),
            encode_map(&image.labels),
            image.updated_at
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::ImageNotFound(image.name.clone()));
    }
    Ok(())
}

/// Inserts or replaces (for Tag).
pub fn upsert(conn: &Connection, image: &ImageRow) -> Result<()> {
    match update(conn, image) {
        Err(StoreError::ImageNotFound(_)) => insert(conn, image),
        other => other,
    }
}

/// Removes an image; `ImageNotFound` when absent.
pub fn delete(conn: &Connection, name: &str) -> Result<()> {
    if conn.execute("DELETE FROM images WHERE name = ?1", [name])? == 0 {
        return Err(StoreError::ImageNotFound(name.to_owned()));
    }
    Ok(())
}

/// The target digests of every image (GC roots).
pub fn all_targets(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT digest FROM images")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
