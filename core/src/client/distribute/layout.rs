//! DHT placement: the name hash and per-directory layouts. Part of the
//! on-disk format (ARCHITECTURE.md, "DHT layout").
//!
//! Hash: XXH32 of the entry name's bytes, seed 0 (a 32-bit value).
//! Layout xattr `trusted.kiln.dht` on each brick's copy of a directory, v1:
//! `u8 version = 1 | u8 hash = 1 (xxh32) | u32 commit | u16 n | n x (u32 start, u32 end)`
//! big-endian, ranges inclusive. A subvolume may own several ranges (so a new
//! brick can take a slice of every old range) or none.

use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;

const VERSION: u8 = 1;
const HASH_XXH32: u8 = 1;

/// The hash that places a name.
pub fn name_hash(name: &[u8]) -> u32 {
    xxhash_rust::xxh32::xxh32(name, 0)
}

/// An inclusive range of the 32-bit hash space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    /// First hash value.
    pub start: u32,
    /// Last hash value (inclusive).
    pub end: u32,
}

/// The ranges one subvolume owns in one directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubvolRanges {
    /// Layout generation this was written with.
    pub commit: u32,
    /// Owned ranges.
    pub ranges: Vec<HashRange>,
}

impl SubvolRanges {
    /// Encodes for the `trusted.kiln.dht` xattr.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 8 * self.ranges.len());
        v.push(VERSION);
        v.push(HASH_XXH32);
        v.extend_from_slice(&self.commit.to_be_bytes());
        v.extend_from_slice(&(self.ranges.len() as u16).to_be_bytes());
        for r in &self.ranges {
            v.extend_from_slice(&r.start.to_be_bytes());
            v.extend_from_slice(&r.end.to_be_bytes());
        }
        v
    }

    /// Decodes an xattr value; malformed input is an error, never a panic.
    pub fn decode(b: &[u8]) -> FsResult<SubvolRanges> {
        let bad = || FsError::Io("malformed DHT layout xattr".into());
        if b.len() < 8 || b[0] != VERSION || b[1] != HASH_XXH32 {
            return Err(bad());
        }
        let commit = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        let n = u16::from_be_bytes([b[6], b[7]]) as usize;
        if b.len() != 8 + 8 * n {
            return Err(bad());
        }
        let ranges = b[8..]
            .chunks_exact(8)
            .map(|c| HashRange {
                start: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                end: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect::<Vec<_>>();
        if ranges.iter().any(|r| r.start > r.end) {
            return Err(bad());
        }
        Ok(SubvolRanges { commit, ranges })
    }
}

/// A directory's full layout: for each subvolume (by index) its ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Ranges per subvolume index.
    pub subvols: Vec<SubvolRanges>,
}

impl Layout {
    /// The default layout for a new directory over `n` subvolumes: equal
    /// contiguous ranges, the first one given to a subvolume chosen by the
    /// directory's gfid so that directories spread their starting points.
    pub fn new_default(gfid: Gfid, n: usize) -> Layout {
        let n = n.max(1);
        let rot = (name_hash(&gfid.0) as usize) % n;
        let step = (1u64 << 32) / n as u64;
        let mut subvols = vec![
            SubvolRanges {
                commit: 1,
                ranges: Vec::new()
            };
            n
        ];
        for k in 0..n {
            let start = (k as u64 * step) as u32;
            let end = if k == n - 1 {
                u32::MAX
            } else {
                ((k as u64 + 1) * step - 1) as u32
            };
            subvols[(k + rot) % n].ranges.push(HashRange { start, end });
        }
        Layout { subvols }
    }

    /// The subvolume that owns `hash`, if the layout covers it.
    pub fn subvol_for_hash(&self, hash: u32) -> Option<usize> {
        self.subvols
            .iter()
            .position(|s| s.ranges.iter().any(|r| r.start <= hash && hash <= r.end))
    }

    /// The subvolume a name hashes to.
    pub fn subvol_for_name(&self, name: &[u8]) -> Option<usize> {
        self.subvol_for_hash(name_hash(name))
    }

    /// True when the ranges cover the whole hash space without overlap.
    pub fn is_complete(&self) -> bool {
        let mut all: Vec<HashRange> = self
            .subvols
            .iter()
            .flat_map(|s| s.ranges.iter().copied())
            .collect();
        all.sort_by_key(|r| r.start);
        let mut next: u64 = 0;
        for r in all {
            if r.start as u64 != next {
                return false;
            }
            next = r.end as u64 + 1;
        }
        next == 1u64 << 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_complete_and_roundtrips() {
        for n in 1..9 {
            let l = Layout::new_default(Gfid::new_random(), n);
            assert!(l.is_complete(), "n={n}");
            for s in &l.subvols {
                assert_eq!(SubvolRanges::decode(&s.encode()).unwrap(), *s);
            }
        }
        assert!(SubvolRanges::decode(&[1, 1, 0, 0, 0, 1, 0, 5]).is_err());
        assert!(SubvolRanges::decode(&[]).is_err());
    }

    #[test]
    fn hash_is_stable() {
        // Part of the disk format: this value must never change.
        assert_eq!(name_hash(b"hello"), xxhash_rust::xxh32::xxh32(b"hello", 0));
        assert_eq!(name_hash(b""), 0x02cc5d05);
    }

    #[test]
    fn names_spread_evenly() {
        let l = Layout::new_default(Gfid::ROOT, 4);
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            counts[l.subvol_for_name(format!("file{i}").as_bytes()).unwrap()] += 1;
        }
        for c in counts {
            assert!((2_000..3_000).contains(&c), "{counts:?}");
        }
    }
}
