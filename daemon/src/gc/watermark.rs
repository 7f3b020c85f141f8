//! Automatic collection by disk watermarks: above the high mark, evict
//! unreferenced content, least recently used first, until below the low mark.
//! Content that an image, a lease or a live ingest reaches is never evicted.

use std::time::Duration;

use crate::config::Watermark;
use crate::error::{Result, StoreError};
use crate::meta;
use crate::store::Store;

use super::{Policy, collect};

/// Minimum pause between two checks triggered by commits.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The watermarks in force.
#[derive(Debug, Clone, Copy)]
pub struct Watermarks {
    /// Start evicting above this.
    pub high: Watermark,
    /// Stop evicting below this.
    pub low: Watermark,
}

/// Bytes to free now to get from above `high` to `low`, or 0.
pub async fn bytes_over(store: &Store, marks: Watermarks) -> Result<u64> {
    match (marks.high, marks.low) {
        (Watermark::Bytes(high), low) => {
            let (_, used) = store.meta().run(|conn| meta::blobs::totals(conn)).await?;
            let used = u64::try_from(used).unwrap_or(0);
            let low = match low {
                Watermark::Bytes(low) => low,
                Watermark::Percent(_) => high,
            };
            Ok(if used > high { used - low.min(used) } else { 0 })
        }
        (Watermark::Percent(high), low) => {
            let (total, free) = filesystem_space(store.root())?;
            // Collected files still being unlinked are as good as free.
            let used = total
                .saturating_sub(free)
                .saturating_sub(store.doomed_bytes());
            let low = match low {
                Watermark::Percent(low) => low,
                Watermark::Bytes(_) => high,
            };
            let percent = |p: f64| (total as f64 * p / 100.0) as u64;
            Ok(if used > percent(high) {
                used - percent(low).min(used)
            } else {
                0
            })
        }
    }
}

/// Size and free bytes of the filesystem holding `path`.
pub fn filesystem_space(path: &std::path::Path) -> Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).map_err(|e| {
        StoreError::io(format!("reading filesystem usage of {}", path.display()))(e.into())
    })?;
    Ok((
        stat.f_blocks.saturating_mul(stat.f_frsize),
        stat.f_bavail.saturating_mul(stat.f_frsize),
    ))
}

/// Checks usage every `interval` and after commits, evicting when needed;
/// runs until the task is dropped.
pub async fn run(store: Store, marks: Watermarks, interval: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = store.committed().notified() => tokio::time::sleep(DEBOUNCE).await,
        }
        match bytes_over(&store, marks).await {
            Ok(0) => {}
            Ok(bytes) => match collect(&store, Policy::Evict { bytes }, false).await {
                Ok(report) if report.removed_bytes() < bytes => tracing::warn!(
                    wanted = bytes,
                    freed = report.removed_bytes(),
                    "above the high watermark, but everything left is referenced by images or leases"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watermark collection failed"),
            },
            Err(e) => tracing::warn!(error = %e, "could not measure disk usage"),
        }
    }
}
