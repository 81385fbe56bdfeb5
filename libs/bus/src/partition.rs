//! The partition function of the contract.

use sha2::{Digest, Sha256};

/// The partition of a key: the first 8 bytes of SHA-256 of the key, read as a big-endian u64,
/// modulo `partitions`. Keys are task ids (the event id when there is no task).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_implementation() {
        // Expected values from Python: int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % P
        assert_eq!((partition_of("task-1", 8), partition_of("task-1", 5)), (7, 3));
        assert_eq!((partition_of("task-8f2c", 8), partition_of("task-8f2c", 5)), (2, 2));
        assert_eq!((partition_of("x", 8), partition_of("x", 5)), (4, 1));
    }

    #[test]
    fn spreads_keys_evenly() {
        let mut counts = [0u32; 8];
        for i in 0..80_000 {
            counts[partition_of(&format!("task-{i}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
