//! One blob's attempts across a route's transports: which transport to try
//! next, how long to wait first, whom to blame for bad bytes, and when to
//! give up.

use std::time::Duration;

use distd_sdk::{Descriptor, ErrorKind, TransportError};

use super::error::TransferError;
use super::fetch::{FIRST_BACKOFF, MAX_RETRIES};
use super::route::{Hop, Route};

/// The state of one blob's download across the route's transports.
pub(super) struct Attempts {
    /// Transports given up for this blob (they do not have it, or sent bad
    /// bytes while others remain).
    excluded: Vec<bool>,
    /// Where the search for the next transport starts.
    cursor: usize,
    /// Failures in a row that brought no byte beyond [`Attempts::high_water`].
    retries: u32,
    /// The furthest the ingest got; bytes sent again below it (after a
    /// restart from zero) are not progress.
    high_water: u64,
    /// Whether the first attempt began.
    began: bool,
    /// The ingest held bytes of an earlier pull when this download began:
    /// bad bytes then cannot be blamed on anyone.
    pub inherited: bool,
    /// Whole attempts whose bytes failed verification.
    pub corrupt: u32,
    /// Transports whose bytes are in the ingest.
    pub contributors: Vec<usize>,
    /// Bytes moved for this blob, all transports.
    pub transferred: u64,
    /// The last failure of each transport.
    failures: Vec<Option<TransportError>>,
    /// The transport that failed last.
    last: Option<usize>,
}

impl Attempts {
    /// A download over `hops` transports.
    pub fn new(hops: usize) -> Attempts {
        Attempts {
            excluded: vec![false; hops],
            cursor: 0,
            retries: 0,
            high_water: 0,
            began: false,
            inherited: false,
            corrupt: 0,
            contributors: Vec::new(),
            transferred: 0,
            failures: vec![None; hops],
            last: None,
        }
    }

    /// An attempt starts with the ingest at `offset`.
    pub fn starting(&mut self, offset: u64) {
        if !self.began {
            self.began = true;
            self.inherited = offset > 0;
        }
        if offset == 0 {
            self.contributors.clear();
            self.inherited = false;
        }
        self.high_water = self.high_water.max(offset);
    }

    /// Transport `index` put bytes into the ingest (or tried to).
    pub fn contributed(&mut self, index: usize) {
        if !self.contributors.contains(&index) {
            self.contributors.push(index);
        }
    }

    /// The next transport to try from the cursor, and whether it must start
    /// from zero. At an offset only ranged transports continue, unless none
    /// is left or they keep failing: then a transport that can only send
    /// the whole blob starts it again.
    pub fn next_hop(&self, hops: &[Hop], offset: u64) -> Option<(usize, bool)> {
        let n = hops.len();
        let ranged = |i: usize| hops[i].transport.describe().capabilities.ranged_fetch;
        let candidates: Vec<usize> = (0..n)
            .map(|i| (self.cursor + i) % n)
            .filter(|&i| !self.excluded[i])
            .collect();
        if offset == 0 {
            return candidates.first().map(|&i| (i, false));
        }
        let persistent = self.retries >= MAX_RETRIES;
        match candidates.iter().find(|&&i| ranged(i)) {
            Some(&i) if !persistent || candidates.iter().all(|&c| ranged(c)) => Some((i, false)),
            _ => candidates.first().map(|&i| (i, !ranged(i))),
        }
    }

    /// Records that transport `index` failed after the ingest reached
    /// `reached`; false when it is time to give up. Errors that retrying
    /// cannot fix (not found, refused, out of range) exclude the transport
    /// for this blob without counting as a retry.
    pub fn failed(&mut self, index: usize, reached: u64, error: TransportError) -> bool {
        let permanent = matches!(
            error.kind,
            ErrorKind::NotFound
                | ErrorKind::PermissionDenied
                | ErrorKind::InvalidArgument
                | ErrorKind::OutOfRange
                | ErrorKind::FailedPrecondition
        );
        if permanent {
            self.excluded[index] = true;
        } else {
            if reached > self.high_water {
                self.high_water = reached;
                self.retries = 0;
            }
            self.retries += 1;
        }
        self.failures[index] = Some(error);
        self.last = Some(index);
        let n = self.excluded.len();
        self.cursor = (index + 1) % n;
        let active = self.active();
        active > 0 && self.retries <= MAX_RETRIES * active
    }

    /// The pause before trying `next` after `failed` failed: none when
    /// handing over to a later transport of the round; a doubling backoff
    /// when the round wrapped around or the same transport goes again.
    pub fn pause(&self, failed: usize, next: usize) -> Duration {
        if next > failed {
            return Duration::ZERO;
        }
        let rounds = self.retries.div_ceil(self.active().max(1)).clamp(1, 6);
        FIRST_BACKOFF * 2u32.pow(rounds - 1)
    }

    fn active(&self) -> u32 {
        self.excluded.iter().filter(|gone| !**gone).count() as u32
    }

    /// After bad bytes: skips the transports that sent them, unless their
    /// origin is unknown or no other transport would be left.
    pub fn distrust_contributors(&mut self) {
        let others =
            (0..self.excluded.len()).any(|i| !self.excluded[i] && !self.contributors.contains(&i));
        if others && !self.inherited {
            for &i in &self.contributors {
                self.excluded[i] = true;
            }
        }
        self.contributors.clear();
        self.cursor = 0;
    }

    /// The error once no transport is left to try: the transport's own when
    /// one alone failed, else each transport's last failure.
    pub fn exhausted(&self, route: &Route, hops: &[Hop], blob: &Descriptor) -> TransferError {
        let failed: Vec<(usize, &TransportError)> = self
            .failures
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
            .collect();
        let kind = self
            .last
            .and_then(|i| self.failures[i].as_ref())
            .map_or(ErrorKind::Unavailable, |e| e.kind);
        match failed.as_slice() {
            [] => TransferError::NoTransport {
                kind: ErrorKind::Unavailable,
                locator: route.locator.to_string(),
                detail: format!("no transport is left to fetch {}", blob.digest),
            },
            [(_, only)] => TransferError::Transport {
                registry: route.locator.registry.clone(),
                source: (*only).clone(),
            },
            several => {
                let each: Vec<String> = several
                    .iter()
                    .map(|(i, e)| format!("{}: {}", hops[*i].name, e.message))
                    .collect();
                TransferError::Transport {
                    registry: route.locator.registry.clone(),
                    source: TransportError::new(
                        kind,
                        format!(
                            "every transport failed for {}: {}; `distctl plugins ls` shows their health",
                            blob.digest,
                            each.join("; ")
                        ),
                    ),
                }
            }
        }
    }
}
