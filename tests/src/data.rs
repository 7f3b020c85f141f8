//! Test data: reproducible pseudo-random bytes and files, and their digests.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::MIB;

/// xorshift64* generator: fast and reproducible; not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds so that seeds 1 and 2 give unrelated streams.
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        state = state.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        Rng(if state == 0 { 1 } else { state })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `range` (half open).
    pub fn range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next_u64() % (range.end - range.start)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    Rng::new(seed).fill(&mut buf);
    buf
}

/// Writes `size` random bytes from `seed` to `path` in 1 MiB pieces (never
/// holding the file in memory); returns the file's `sha256:` digest.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = BufWriter::with_capacity(MIB, File::create(path).expect("create a random file"));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB as u64) as usize;
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).expect("write a random file");
        left -= n as u64;
    }
    out.flush().expect("flush a random file");
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// `sha256:` digest of a byte slice.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// `sha256:` digest of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> String {
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = file.read(&mut buf).expect("read a file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_matches_content_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let digest = write_random_file(&path, 3 * MIB as u64 + 5, 7);
        assert_eq!(digest, sha256_file(&path));
        let mut expected = vec![0u8; 3 * MIB + 5];
        Rng::new(7).fill(&mut expected[..MIB]);
        // Pieces are generated from one continuous stream.
        assert_eq!(std::fs::read(&path).unwrap()[..MIB], expected[..MIB]);
    }

    #[test]
    fn seeds_give_different_streams() {
        assert_ne!(random_bytes(1, 64), random_bytes(2, 64));
        assert_eq!(random_bytes(3, 64), random_bytes(3, 64));
    }
}
