//! One writer per ingest ref. The daemon owns its root exclusively (lock
//! file), so an in-process table is enough.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Result, StoreError};

/// The table of held ingest refs and when each was taken.
#[derive(Default, Clone)]
pub struct IngestLocks {
    held: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Holds a ref until dropped.
pub struct IngestGuard {
    locks: IngestLocks,
    reference: String,
}

impl IngestLocks {
    /// Takes `reference`, or `IngestLocked` (UNAVAILABLE) saying for how
    /// long another writer has held it.
    pub fn acquire(&self, reference: &str) -> Result<IngestGuard> {
        let mut held = self.lock_table();
        if let Some(since) = held.get(reference) {
            return Err(StoreError::IngestLocked {
                reference: reference.to_owned(),
                held: since.elapsed(),
            });
        }
        held.insert(reference.to_owned(), Instant::now());
        Ok(IngestGuard {
            locks: self.clone(),
            reference: reference.to_owned(),
        })
    }

    /// True while a writer holds `reference`.
    pub fn is_held(&self, reference: &str) -> bool {
        self.lock_table().contains_key(reference)
    }

    /// The refs held now.
    pub fn held(&self) -> Vec<String> {
        self.lock_table().keys().cloned().collect()
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The table holds plain data; a panic elsewhere cannot leave it torn.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for IngestGuard {
    fn drop(&mut self) {
        self.locks.lock_table().remove(&self.reference);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let locks = IngestLocks::default();
        let first = locks.acquire("r").unwrap();
        let err = locks.acquire("r").err().unwrap();
        assert_eq!(err.kind(), distd_sdk::ErrorKind::Unavailable);
        drop(first);
        locks.acquire("r").unwrap();
    }
}
