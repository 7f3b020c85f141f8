//! Unlinking the files of swept blobs without holding up the store.
//!
//! Unlinking is slow on some filesystems (ext4 with `discard` trims on every
//! unlink), so a collection deletes the rows under the publish lock, marks
//! the files *doomed*, and unlinks them in the background. A commit that
//! publishes a doomed digest again unlinks the old file first; both sides do
//! the unlink under the doomed table's lock, so exactly one of them does it
//! and a fresh file is never removed. A crash before the unlinks finish
//! leaves files without rows, which startup recovery removes.

use std::collections::HashMap;
use std::sync::Mutex;

use distd_sdk::Digest;

use super::{Store, remove_file_if_present};

/// Doomed digests and their sizes.
#[derive(Default)]
pub struct Doomed {
    files: Mutex<HashMap<Digest, u64>>,
    settled: tokio::sync::Notify,
}

impl Store {
    fn doomed(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, u64>> {
        // Plain data; a panic elsewhere cannot leave it torn.
        self.inner
            .doomed
            .files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dooms the files of blobs whose rows were just deleted and unlinks
    /// them in the background. Call with the publish lock held, right after
    /// the deleting transaction.
    pub fn reclaim(&self, blobs: Vec<(Digest, u64)>) {
        if blobs.is_empty() {
            return;
        }
        self.doomed().extend(blobs.iter().cloned());
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            for (digest, _) in &blobs {
                store.unlink_if_doomed(digest);
            }
            store.inner.doomed.settled.notify_waiters();
        });
    }

    /// Unlinks the file of `digest` if it is doomed (blocking).
    pub fn unlink_if_doomed(&self, digest: &Digest) {
        let mut doomed = self.doomed();
        if doomed.remove(digest).is_some()
            && let Err(e) = remove_file_if_present(&self.blob_path(digest))
        {
            // Left as a file without a row; startup recovery removes it.
            tracing::warn!(%digest, error = %e, "could not remove a collected blob");
        }
    }

    /// Bytes of doomed files not yet unlinked.
    pub fn doomed_bytes(&self) -> u64 {
        self.doomed().values().sum()
    }

    /// True while the file of `digest` waits to be unlinked.
    pub fn is_doomed(&self, digest: &Digest) -> bool {
        self.doomed().contains_key(digest)
    }

    /// Waits until every doomed file is unlinked.
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.doomed.settled.notified();
            if self.doomed().is_empty() {
                return;
            }
            notified.await;
        }
    }
}
