//! Conversions between API messages and store types.

use distd_proto::distd::v1 as pb;
use distd_sdk::Digest;

use crate::error::{Result, StoreError};

/// A protobuf timestamp from milliseconds since the epoch.
pub fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

/// Parses a digest field, naming the field when it is empty.
pub fn digest(field: &str, value: &str) -> Result<Digest> {
    if value.is_empty() {
        return Err(StoreError::InvalidArgument(format!(
            "`{field}` is required"
        )));
    }
    Ok(Digest::parse(value)?)
}

/// An optional digest field: empty means absent.
pub fn optional_digest(value: &str) -> Result<Option<Digest>> {
    if value.is_empty() {
        return Ok(None);
    }
    Ok(Some(Digest::parse(value)?))
}

/// A non-negative size or offset field.
pub fn unsigned(field: &str, value: i64) -> Result<u64> {
    u64::try_from(value)
        .map_err(|_| StoreError::InvalidArgument(format!("`{field}` must not be negative")))
}

/// A size as the API carries it.
pub fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A store blob row as API info.
pub fn info(row: crate::meta::blobs::BlobRow, children: Vec<String>) -> pb::Info {
    pb::Info {
        digest: row.digest,
        size: row.size,
        media_type: row.media_type,
        created_at: timestamp(row.created_at),
        last_used_at: timestamp(row.last_used),
        children,
    }
}

/// Checks a free-form name (image name, lease id): non-empty, bounded, no
/// control characters or white space.
pub fn name(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(StoreError::InvalidArgument(format!(
            "`{field}` must be 1 to {max} bytes long"
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::InvalidArgument(format!(
            "`{field}` {value:?} must not contain white space or control characters"
        )));
    }
    Ok(())
}
