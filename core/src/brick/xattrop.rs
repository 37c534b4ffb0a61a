//! `Xattrop`: atomic arithmetic on extended attributes, under a per-inode
//! mutex, for replicate's pending changelog counters
//! (`trusted.kiln.afr.<vol>-client-<n>`, big-endian i64 arrays). Keeps the
//! pending-heal index in step: an inode with any non-zero AFR counter is
//! listed in `.kiln/indices/xattrop/`, one with none is not.

use parking_lot::Mutex;
use rustix::fs::XattrFlags;

use super::index;
use super::store::Store;
use super::sys;
use super::xattrs;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::proto::{XattrMap, XattropOp};
use crate::xattr_names;

/// Stripes of the per-inode xattrop mutex.
const STRIPES: usize = 64;
/// Largest array one xattrop may add to (bytes).
const VALUE_MAX: usize = 1024;
/// Most attributes in one xattrop.
const NAMES_MAX: usize = 256;

/// The brick's xattrop state: the per-inode serialisation.
pub(crate) struct Xattrop {
    stripes: Vec<Mutex<()>>,
}

impl Default for Xattrop {
    fn default() -> Xattrop {
        Xattrop {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// Decodes a big-endian i64 array (length a multiple of 8).
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87
fn decode(v: &[u8]) -> FsResult<Vec<i64>> {
    if v.len() % 8 != 0 {
        return Err(FsError::InvalidArgument);
    }
    Ok(v.chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            i64::from_be_bytes(b)
        })
        .collect())
}

fn encode(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Adds `delta` to `cur` element-wise; the shorter one counts as zeros.
fn add(cur: &[i64], delta: &[i64]) -> FsResult<Vec<i64>> {
    (0..cur.len().max(delta.len()))
        .map(|i| {
            let a = cur.get(i).copied().unwrap_or(0);
            let b = delta.get(i).copied().unwrap_or(0);
            a.checked_add(b).ok_or(FsError::Range)
        })
        .collect()
}

/// True if an AFR counter value holds anything but zeros (a value that is
/// not a counter array counts as pending: it needs a look).
pub(crate) fn pending(v: &[u8]) -> bool {
    v.iter().any(|b| *b != 0)
}

impl Xattrop {
    /// Applies `op` with the values of `xattrs` to `gfid`'s attributes and
    /// returns the new values. Missing attributes count as zeros.
    pub(crate) fn apply(
        &self,
        store: &Store,
        gfid: Gfid,
        op: XattropOp,
        xattrs: &XattrMap,
    ) -> FsResult<XattrMap> {
        let XattropOp::AddArray64 = op;
        if xattrs.len() > NAMES_MAX {
            return Err(FsError::InvalidArgument);
        }
        let mut deltas = Vec::with_capacity(xattrs.len());
        for (k, v) in xattrs {
            xattrs::check_settable(k, v)?;
            if v.len() > VALUE_MAX {
                return Err(FsError::Range);
            }
            deltas.push((k, decode(v)?));
        }
        let _g = self.stripes[gfid.0[15] as usize % STRIPES].lock();
        let inode = store.resolve(gfid)?;
        store
            .with_xtarget(&inode, |t| -> Result<XattrMap, rustix::io::Errno> {
                // AFR counters of this inode before and after the change.
                let mut afr_before = false;
                let mut others_pending = false;
                for name in sys::list_xattr(t)? {
                    if !name.starts_with(xattr_names::AFR_PREFIX) {
                        continue;
                    }
                    let Some(v) = sys::get_xattr(t, &name)? else {
                        continue;
                    };
                    if pending(&v) {
                        afr_before = true;
                        if !xattrs.contains_key(&name) {
                            others_pending = true;
                        }
                    }
                }
                let mut out = XattrMap::new();
                for (k, delta) in &deltas {
                    let cur = match sys::get_xattr(t, k)? {
                        Some(v) => decode(&v).map_err(|_| rustix::io::Errno::INVAL)?,
                        None => Vec::new(),
                    };
                    let new = add(&cur, delta).map_err(|_| rustix::io::Errno::RANGE)?;
                    out.insert((*k).clone(), encode(&new));
                }
                let afr_after = others_pending
                    || out
                        .iter()
                        .any(|(k, v)| k.starts_with(xattr_names::AFR_PREFIX) && pending(v));
                // Listed before the counters go up, unlisted after they reach
                // zero: a crash in between leaves at worst a stale entry.
                if afr_after && !afr_before {
                    index::mark(store, gfid)?;
                }
                for (k, v) in &out {
                    sys::set_xattr(t, k, v, XattrFlags::empty())?;
                }
                if afr_before && !afr_after {
                    index::unmark(store, gfid)?;
                }
                Ok(out)
            })
            .map_err(FsError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let a = encode(&[1, -2, 3]);
        assert_eq!(decode(&a).unwrap(), vec![1, -2, 3]);
        assert!(decode(&[0u8; 7]).is_err());
        assert_eq!(add(&[1, 2], &[5, 5, 5]).unwrap(), vec![6, 7, 5]);
        assert!(matches!(add(&[i64::MAX], &[1]), Err(FsError::Range)));
        assert!(!pending(&encode(&[0, 0, 0])));
        assert!(pending(&encode(&[0, -1, 0])));
    }
}
