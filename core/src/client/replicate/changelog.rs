//! The pending changelog: `trusted.kiln.afr.<vol>-client-<n>` on every copy
//! of an inode holds three big-endian i64 counters (data, metadata, entry)
//! that this copy keeps against brick `n` of the set. `Matrix` gathers them
//! from all copies and `Matrix::verdict` decides who is a source, who is a
//! sink, and when the copies accuse each other (split-brain).
//!
//! The decision follows AFR's classic characterisation of each copy by its
//! own row: *innocent* (accuses no one), *fool* (accuses itself: the
//! operation failed or was interrupted there) and *wise* (accuses others,
//! not itself). Wise copies not accused by another wise copy are the
//! sources; wise copies accusing each other are split-brain; with only
//! fools (an interrupted transaction everywhere) one fool is chosen.

use crate::proto::XattrMap;

/// Which counter of the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// File contents (write, truncate, fallocate).
    Data = 0,
    /// Attributes and xattrs (setattr, setxattr, removexattr).
    Metadata = 1,
    /// Directory entries (create, mkdir, unlink, rename...).
    Entry = 2,
}

impl Slot {
    /// All three, in counter order.
    pub(crate) const ALL: [Slot; 3] = [Slot::Data, Slot::Metadata, Slot::Entry];

    /// A human name for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Slot::Data => "data",
            Slot::Metadata => "metadata",
            Slot::Entry => "entry",
        }
    }
}

/// Counters as stored: `[data, metadata, entry]`.
pub(crate) type Counters = [i64; 3];

/// The xattr value of three counters (24 bytes, big-endian).
pub(crate) fn encode(c: Counters) -> Vec<u8> {
    c.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Reads a counter value; missing elements count as zero, a value that
/// is not an i64 array is taken as all zeros (with a log line).
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87
pub(crate) fn decode(v: &[u8]) -> Counters {
    let mut out = [0i64; 3];
    if v.len() % 8 != 0 {
        tracing::warn!(len = v.len(), "malformed replicate changelog xattr ignored");
        return out;
    }
    for (i, c) in v.chunks_exact(8).take(3).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        out[i] = i64::from_be_bytes(b);
    }
    out
}

/// Counters with `n` in each slot of `slots`.
pub(crate) fn counters(slots: &[Slot], n: i64) -> Counters {
    let mut c = [0i64; 3];
    for s in slots {
        c[*s as usize] = n;
    }
    c
}

/// What the copies of one inode say about each other, for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nobody is accused.
    Clean,
    /// `sources` hold the good copy; `sinks` need healing from them.
    Heal {
        /// Copies to heal from (never empty).
        sources: Vec<usize>,
        /// Copies to heal.
        sinks: Vec<usize>,
        /// Only fools: a transaction cut short everywhere (or still under
        /// way). Every copy may still be read; the sinks are a guess.
        fools_only: bool,
    },
    /// Copies accuse each other: no copy can be trusted automatically.
    SplitBrain,
}

impl Verdict {
    /// True if copy `i` is known stale (a sink that a wise copy accuses):
    /// it must not be read.
    pub(crate) fn is_stale(&self, i: usize) -> bool {
        matches!(self, Verdict::Heal { sinks, fools_only: false, .. } if sinks.contains(&i))
    }
}

/// Every copy's counters against every copy: `rows[i][j]` is what copy `i`
/// holds against copy `j`; `None` for a copy that did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matrix {
    /// One row per child.
    pub(crate) rows: Vec<Option<Vec<Counters>>>,
}

impl Matrix {
    /// Builds the matrix from each child's xattrs (`None`: did not answer),
    /// `keys[j]` being the counter xattr name of child `j`.
    pub(crate) fn from_xattrs(keys: &[String], answers: &[Option<&XattrMap>]) -> Matrix {
        let rows = answers
            .iter()
            .map(|a| {
                a.map(|x| {
                    keys.iter()
                        .map(|k| x.get(k).map_or([0; 3], |v| decode(v)))
                        .collect()
                })
            })
            .collect();
        Matrix { rows }
    }

    /// True if any answered copy holds a non-zero counter in `slot`.
    #[cfg(test)]
    pub(crate) fn any(&self, slot: Slot) -> bool {
        self.rows
            .iter()
            .flatten()
            .any(|r| r.iter().any(|c| c[slot as usize] != 0))
    }

    /// `i` accuses `j` in `slot`.
    fn accuses(&self, i: usize, j: usize, slot: Slot) -> bool {
        self.rows
            .get(i)
            .and_then(|r| r.as_ref())
            .and_then(|r| r.get(j))
            .is_some_and(|c| c[slot as usize] > 0)
    }

    /// Decides sources and sinks for `slot`. With only fools, `pick`
    /// chooses the source among them (e.g. the largest file).
    pub(crate) fn verdict(&self, slot: Slot, pick: impl Fn(&[usize]) -> usize) -> Verdict {
        let n = self.rows.len();
        let answered: Vec<usize> = (0..n).filter(|i| self.rows[*i].is_some()).collect();
        let accuses_any = |i: usize| (0..n).any(|j| self.accuses(i, j, slot));
        if !answered.iter().any(|i| accuses_any(*i)) {
            return Verdict::Clean;
        }
        let fool = |i: usize| self.accuses(i, i, slot);
        let wise: Vec<usize> = answered
            .iter()
            .copied()
            .filter(|i| !fool(*i) && accuses_any(*i))
            .collect();
        if !wise.is_empty() {
            let sources: Vec<usize> = wise
                .iter()
                .copied()
                .filter(|i| !wise.iter().any(|k| k != i && self.accuses(*k, *i, slot)))
                .collect();
            if sources.is_empty() {
                return Verdict::SplitBrain;
            }
            // Sinks: whoever a source accuses. Copies nobody trusted accuses
            // (innocents) are left alone.
            let sinks: Vec<usize> = answered
                .iter()
                .copied()
                .filter(|j| {
                    !sources.contains(j) && sources.iter().any(|s| self.accuses(*s, *j, slot))
                })
                .collect();
            if sinks.is_empty() {
                // The sources accuse only copies that did not answer.
                return Verdict::Clean;
            }
            return Verdict::Heal {
                sources,
                sinks,
                fools_only: false,
            };
        }
        // Only fools (and innocents): a transaction was cut short on every
        // copy that took part. Any fool may serve; the others follow it.
        let fools: Vec<usize> = answered.iter().copied().filter(|i| fool(*i)).collect();
        let source = if fools.is_empty() {
            answered[0]
        } else {
            pick(&fools)
        };
        let sinks: Vec<usize> = answered.iter().copied().filter(|i| *i != source).collect();
        Verdict::Heal {
            sources: vec![source],
            sinks,
            fools_only: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: Vec<Option<Vec<i64>>>) -> Matrix {
        Matrix {
            rows: rows
                .into_iter()
                .map(|r| r.map(|r| r.into_iter().map(|d| [d, 0, 0]).collect()))
                .collect(),
        }
    }

    fn first(v: &[usize]) -> usize {
        v[0]
    }

    #[test]
    fn encoding() {
        let v = encode([1, -2, 3]);
        assert_eq!(v.len(), 24);
        assert_eq!(decode(&v), [1, -2, 3]);
        assert_eq!(decode(&v[..8]), [1, 0, 0]);
        assert_eq!(decode(&[1, 2, 3]), [0, 0, 0]);
        assert_eq!(counters(&[Slot::Data, Slot::Entry], -1), [-1, 0, -1]);
        let keys = vec!["k0".to_string(), "k1".to_string()];
        let mut x = XattrMap::new();
        x.insert("k1".into(), encode([0, 4, 0]));
        let mx = Matrix::from_xattrs(&keys, &[Some(&x), None]);
        assert_eq!(mx.rows, vec![Some(vec![[0, 0, 0], [0, 4, 0]]), None]);
        assert!(mx.any(Slot::Metadata) && !mx.any(Slot::Data));
    }

    #[test]
    fn verdicts() {
        // Clean.
        assert_eq!(
            m(vec![Some(vec![0, 0]), Some(vec![0, 0])]).verdict(Slot::Data, first),
            Verdict::Clean
        );
        // A wrote while B was down: A wise, B innocent -> heal B from A.
        let v = m(vec![Some(vec![0, 1]), Some(vec![0, 0])]).verdict(Slot::Data, first);
        assert_eq!(
            v,
            Verdict::Heal {
                sources: vec![0],
                sinks: vec![1],
                fools_only: false
            }
        );
        assert!(v.is_stale(1) && !v.is_stale(0));
        // B did not answer: nothing to heal now.
        assert_eq!(
            m(vec![Some(vec![0, 1]), None]).verdict(Slot::Data, first),
            Verdict::Clean
        );
        // Each accuses the other: split-brain.
        assert_eq!(
            m(vec![Some(vec![0, 1]), Some(vec![2, 0])]).verdict(Slot::Data, first),
            Verdict::SplitBrain
        );
        // The op failed on B but its post-op landed: B is a fool, A wise.
        assert_eq!(
            m(vec![Some(vec![0, 1]), Some(vec![0, 1])]).verdict(Slot::Data, first),
            Verdict::Heal {
                sources: vec![0],
                sinks: vec![1],
                fools_only: false
            }
        );
        // Interrupted everywhere: all fools; the picked one is the source.
        assert_eq!(
            m(vec![
                Some(vec![1, 1]),
                Some(vec![1, 1]),
                Some(vec![0, 0, 0])
            ])
            .verdict(Slot::Data, |f| f[f.len() - 1]),
            Verdict::Heal {
                sources: vec![1],
                sinks: vec![0, 2],
                fools_only: true
            }
        );
        assert!(!Verdict::Heal {
            sources: vec![1],
            sinks: vec![0],
            fools_only: true
        }
        .is_stale(0));
        // Replica 3: A and B wise accusing C.
        assert_eq!(
            m(vec![
                Some(vec![0, 0, 3]),
                Some(vec![0, 0, 3]),
                Some(vec![0, 0, 0])
            ])
            .verdict(Slot::Data, first),
            Verdict::Heal {
                sources: vec![0, 1],
                sinks: vec![2],
                fools_only: false
            }
        );
        // Negative counters (an over-eager decrement) accuse no one.
        assert_eq!(
            m(vec![Some(vec![0, -1]), Some(vec![0, 0])]).verdict(Slot::Data, first),
            Verdict::Clean
        );
    }
}
