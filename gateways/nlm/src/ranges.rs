//! The byte ranges one NLM owner holds on one file, as the gateway tracks
//! them (the brick has the authoritative locks): enough to know when an
//! owner holds nothing more there, so the gateway can forget it and close
//! its fd. Ranges are inclusive; `u64::MAX` as end means "to EOF".

/// The end (inclusive) of `len` bytes from `offset`; `len` 0 is to EOF.
pub fn range_end(offset: u64, len: u64) -> u64 {
    if len == 0 {
        u64::MAX
    } else {
        offset.saturating_add(len - 1)
    }
}

/// Disjoint, sorted, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    r: Vec<(u64, u64)>,
}

impl RangeSet {
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.r
    }

    /// Adds `[start, end]`, merging with overlapping or adjacent ranges.
    pub fn add(&mut self, start: u64, end: u64) {
        let (mut s, mut e) = (start.min(end), end.max(start));
        let mut out = Vec::with_capacity(self.r.len() + 1);
        for &(a, b) in &self.r {
            if b.saturating_add(1) < s || e.saturating_add(1) < a {
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        out.push((s, e));
        out.sort_unstable();
        self.r = out;
    }

    /// Removes `[start, end]`, splitting a range it falls inside.
    pub fn remove(&mut self, start: u64, end: u64) {
        let (s, e) = (start.min(end), end.max(start));
        let mut out = Vec::with_capacity(self.r.len() + 1);
        for &(a, b) in &self.r {
            if b < s || a > e {
                out.push((a, b));
                continue;
            }
            if a < s {
                out.push((a, s - 1));
            }
            if b > e {
                out.push((e + 1, b));
            }
        }
        self.r = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merge_split() {
        let mut r = RangeSet::default();
        r.add(10, 19);
        r.add(30, 39);
        r.add(20, 25); // adjacent to 10..19
        assert_eq!(r.ranges(), [(10, 25), (30, 39)]);
        r.remove(12, 31);
        assert_eq!(r.ranges(), [(10, 11), (32, 39)]);
        r.add(0, u64::MAX);
        assert_eq!(r.ranges(), [(0, u64::MAX)]);
        r.remove(100, u64::MAX);
        assert_eq!(r.ranges(), [(0, 99)]);
        r.remove(0, 0);
        r.remove(99, 99);
        assert_eq!(r.ranges(), [(1, 98)]);
        r.remove(0, u64::MAX);
        assert!(r.is_empty());
        assert_eq!(range_end(5, 0), u64::MAX);
        assert_eq!(range_end(5, 1), 5);
        assert_eq!(range_end(u64::MAX - 1, 10), u64::MAX);
    }
}
