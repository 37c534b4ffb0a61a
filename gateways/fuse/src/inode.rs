//! The inode table: kernel inode numbers ↔ gfids, with the kernel's lookup
//! counts (an inode lives until the kernel forgets every lookup it was
//! given) and the last attributes seen for each inode.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_core::iatt::Timespec;
use kiln_core::{FsError, FsResult, Gfid, Iatt};
use parking_lot::Mutex;

/// The kernel's inode number of the root directory.
pub(crate) const ROOT_INO: u64 = 1;

struct Entry {
    gfid: Gfid,
    /// Lookups handed to the kernel and not yet forgotten.
    nlookup: u64,
    /// The newest attributes seen for this inode, with this client's own
    /// later changes applied.
    iatt: Option<Iatt>,
    /// When `iatt` came from the volume, and the table generation then: it
    /// answers getattr until the attribute timeout, like the kernel's cache.
    seen: Option<(Instant, u64)>,
    /// (mtime, size) when this client last knew the page cache matched the
    /// file; an open that finds them unchanged keeps the kernel's cache.
    cache_stamp: Option<(Timespec, u64)>,
    /// Until when the inode is known to carry no `security.capability`
    /// (set at create: the kernel probes it before the first write).
    no_caps_until: Option<Instant>,
    /// This client took a lock on the inode (close must then release it
    /// only after the file's writes have landed).
    locked: bool,
    /// The directory this inode was last found in (for `..`).
    parent: u64,
}

struct Table {
    map: HashMap<u64, Entry>,
    /// Bumped by operations whose effect on other inodes' attributes is not
    /// known here (unlink, rename): every cached attribute older is void.
    generation: u64,
}

/// Inode numbers ↔ gfids for one mount.
pub(crate) struct InodeTable {
    inner: Mutex<Table>,
    attr_ttl: Duration,
}

impl InodeTable {
    /// A table holding the root; cached attributes answer for `attr_ttl`.
    pub(crate) fn new(attr_ttl: Duration) -> InodeTable {
        let mut map = HashMap::new();
        map.insert(
            ROOT_INO,
            Entry {
                gfid: Gfid::ROOT,
                nlookup: 1,
                iatt: None,
                seen: None,
                cache_stamp: None,
                no_caps_until: None,
                locked: false,
                parent: ROOT_INO,
            },
        );
        InodeTable {
            inner: Mutex::new(Table { map, generation: 0 }),
            attr_ttl,
        }
    }

    /// The gfid of a kernel inode (ESTALE if the kernel forgot it).
    pub(crate) fn gfid(&self, ino: u64) -> FsResult<Gfid> {
        if ino == ROOT_INO {
            return Ok(Gfid::ROOT);
        }
        self.inner
            .lock()
            .map
            .get(&ino)
            .map(|e| e.gfid)
            .ok_or(FsError::Stale)
    }

    /// Records one more kernel lookup of `iatt`'s inode, found in `parent`;
    /// returns its inode number. `own` marks attributes from this client's
    /// own change (the kernel's cached pages then match the file).
    pub(crate) fn remember(&self, iatt: &Iatt, parent: u64, own: bool) -> FsResult<u64> {
        let ino = iatt.ino();
        let mut t = self.inner.lock();
        let generation = t.generation;
        match t.map.get_mut(&ino) {
            Some(e) if e.gfid != iatt.gfid => {
                tracing::error!(
                    ino,
                    old = %e.gfid,
                    new = %iatt.gfid,
                    "inode number collision between two gfids"
                );
                Err(FsError::Io("inode number collision".into()))
            }
            Some(e) => {
                if ino != ROOT_INO {
                    e.nlookup += 1;
                    e.parent = parent;
                }
                e.iatt = Some(iatt.clone());
                e.seen = Some((Instant::now(), generation));
                Ok(ino)
            }
            None => {
                t.map.insert(
                    ino,
                    Entry {
                        gfid: iatt.gfid,
                        nlookup: 1,
                        iatt: Some(iatt.clone()),
                        seen: Some((Instant::now(), generation)),
                        cache_stamp: own.then_some((iatt.mtime, iatt.size)),
                        no_caps_until: None,
                        locked: false,
                        parent,
                    },
                );
                Ok(ino)
            }
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.inner.lock();
        if let Some(e) = t.map.get_mut(&ino) {
            e.nlookup = e.nlookup.saturating_sub(n);
            if e.nlookup == 0 {
                t.map.remove(&ino);
            }
        }
    }

    /// Stores attributes the volume returned for a known inode; `own` as in
    /// `remember`.
    pub(crate) fn update(&self, iatt: &Iatt, own: bool) {
        let mut t = self.inner.lock();
        let generation = t.generation;
        if let Some(e) = t.map.get_mut(&iatt.ino()) {
            if e.gfid == iatt.gfid {
                // Our own write: the page cache holds what we wrote.
                if own && e.cache_stamp.is_some() {
                    e.cache_stamp = Some((iatt.mtime, iatt.size));
                }
                e.seen = Some((Instant::now(), generation));
                e.iatt = Some(iatt.clone());
            }
        }
    }

    /// Folds in the attributes a background write returned: sizes and
    /// times only grow (replies of overlapping writes arrive in any order).
    pub(crate) fn merge_write(&self, iatt: &Iatt) {
        let mut t = self.inner.lock();
        let generation = t.generation;
        if let Some(e) = t.map.get_mut(&iatt.ino()) {
            if e.gfid != iatt.gfid {
                return;
            }
            let merged = match e.iatt.take() {
                Some(old) => Iatt {
                    size: old.size.max(iatt.size),
                    blocks: old.blocks.max(iatt.blocks),
                    mtime: old.mtime.max(iatt.mtime),
                    ctime: old.ctime.max(iatt.ctime),
                    ..iatt.clone()
                },
                None => iatt.clone(),
            };
            if e.cache_stamp.is_some() {
                e.cache_stamp = Some((merged.mtime, merged.size));
            }
            e.iatt = Some(merged);
            e.seen = Some((Instant::now(), generation));
        }
    }

    /// Notes that this client locked `ino`.
    pub(crate) fn mark_locked(&self, ino: u64) {
        if let Some(e) = self.inner.lock().map.get_mut(&ino) {
            e.locked = true;
        }
    }

    /// True if this client ever locked `ino` (while the kernel knew it).
    pub(crate) fn ever_locked(&self, ino: u64) -> bool {
        self.inner.lock().map.get(&ino).is_none_or(|e| e.locked)
    }

    /// Applies this client's own change to a directory's entries: times to
    /// at least `when`, link count by `nlink_delta`. The attributes stay as
    /// valid as they were (no older than the timeout from the volume).
    pub(crate) fn touch_dir(&self, ino: u64, when: Timespec, nlink_delta: i32) {
        let mut t = self.inner.lock();
        let generation = t.generation;
        if let Some(e) = t.map.get_mut(&ino) {
            if let Some(i) = e.iatt.as_mut() {
                i.mtime = i.mtime.max(when);
                i.ctime = i.ctime.max(when);
                i.nlink = i.nlink.saturating_add_signed(nlink_delta).max(1);
                if let Some((at, _)) = e.seen {
                    e.seen = Some((at, generation));
                }
            }
        }
    }

    /// Attributes that may answer a getattr: from the volume within the
    /// attribute timeout, no unknown change (unlink, rename) since.
    pub(crate) fn fresh_attr(&self, ino: u64) -> Option<Iatt> {
        let t = self.inner.lock();
        let e = t.map.get(&ino)?;
        let (at, generation) = e.seen?;
        if generation != t.generation || at.elapsed() >= self.attr_ttl {
            return None;
        }
        e.iatt.clone()
    }

    /// The last attributes seen for `ino`, however old.
    pub(crate) fn last_attr(&self, ino: u64) -> Option<Iatt> {
        self.inner.lock().map.get(&ino).and_then(|e| e.iatt.clone())
    }

    /// Forgets the cached attributes of one inode.
    pub(crate) fn invalidate(&self, ino: u64) {
        if let Some(e) = self.inner.lock().map.get_mut(&ino) {
            e.seen = None;
        }
    }

    /// Voids every cached attribute (after an unlink or a rename).
    pub(crate) fn invalidate_all(&self) {
        self.inner.lock().generation += 1;
    }

    /// Decides at open whether the kernel may keep the file's cached pages:
    /// yes when `iatt` shows the same (mtime, size) as the last time the
    /// cache was known good. Records `iatt` as the new reference.
    pub(crate) fn keep_cache_on_open(&self, ino: u64, iatt: &Iatt) -> bool {
        let mut t = self.inner.lock();
        let Some(e) = t.map.get_mut(&ino) else {
            return false;
        };
        let now = (iatt.mtime, iatt.size);
        let keep = e.cache_stamp == Some(now);
        e.cache_stamp = Some(now);
        e.iatt = Some(iatt.clone());
        keep
    }

    /// Records that this client just created `ino` without capabilities.
    pub(crate) fn mark_no_caps(&self, ino: u64) {
        if let Some(e) = self.inner.lock().map.get_mut(&ino) {
            e.no_caps_until = Some(Instant::now() + self.attr_ttl);
        }
    }

    /// True while `ino` is known to have no `security.capability`.
    pub(crate) fn known_no_caps(&self, ino: u64) -> bool {
        self.inner
            .lock()
            .map
            .get(&ino)
            .and_then(|e| e.no_caps_until)
            .is_some_and(|t| Instant::now() < t)
    }

    /// Forgets what is known about `ino`'s xattrs.
    pub(crate) fn xattrs_changed(&self, ino: u64) {
        if let Some(e) = self.inner.lock().map.get_mut(&ino) {
            e.no_caps_until = None;
            e.seen = None;
        }
    }

    /// The directory `ino` was last found in (itself for the root).
    pub(crate) fn parent(&self, ino: u64) -> u64 {
        self.inner
            .lock()
            .map
            .get(&ino)
            .map(|e| e.parent)
            .unwrap_or(ROOT_INO)
    }

    /// How many inodes the kernel holds (root included).
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::FileKind;

    fn iatt(gfid: Gfid, size: u64) -> Iatt {
        Iatt {
            gfid,
            kind: FileKind::Regular,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            blocks: 0,
            blksize: 4096,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
        }
    }

    #[test]
    fn lookups_and_forgets() {
        let t = InodeTable::new(Duration::from_secs(1));
        let g = Gfid::new_random();
        let ino = t.remember(&iatt(g, 0), ROOT_INO, false).unwrap();
        assert_eq!(ino, g.ino());
        t.remember(&iatt(g, 0), ROOT_INO, false).unwrap();
        assert_eq!(t.gfid(ino).unwrap(), g);
        t.forget(ino, 1);
        assert_eq!(t.gfid(ino).unwrap(), g);
        t.forget(ino, 1);
        assert_eq!(t.gfid(ino), Err(FsError::Stale));
        t.forget(ROOT_INO, 100);
        assert_eq!(t.gfid(ROOT_INO).unwrap(), Gfid::ROOT);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn fresh_attrs_expire() {
        let t = InodeTable::new(Duration::from_secs(60));
        let g = Gfid::new_random();
        let ino = t.remember(&iatt(g, 0), ROOT_INO, false).unwrap();
        assert_eq!(t.fresh_attr(ino).unwrap().size, 0);
        t.update(&iatt(g, 4096), true);
        assert_eq!(t.fresh_attr(ino).unwrap().size, 4096);
        t.invalidate_all();
        assert!(t.fresh_attr(ino).is_none());
        assert_eq!(t.last_attr(ino).unwrap().size, 4096);
        t.invalidate(ino);
        t.update(&iatt(g, 1), false);
        assert!(t.fresh_attr(ino).is_some());
        t.invalidate(ino);
        assert!(t.fresh_attr(ino).is_none());
    }

    #[test]
    fn own_directory_changes_keep_attrs_valid() {
        let t = InodeTable::new(Duration::from_secs(60));
        let g = Gfid::new_random();
        let mut d = iatt(g, 0);
        d.kind = FileKind::Directory;
        d.nlink = 2;
        let ino = t.remember(&d, ROOT_INO, false).unwrap();
        let when = Timespec { sec: 99, nsec: 1 };
        t.touch_dir(ino, when, 1);
        let a = t.fresh_attr(ino).unwrap();
        assert_eq!((a.nlink, a.mtime, a.ctime), (3, when, when));
        t.invalidate_all();
        assert!(t.fresh_attr(ino).is_none());
        t.touch_dir(ino, when, -1);
        assert_eq!(t.fresh_attr(ino).unwrap().nlink, 2);
        // Never valid when the volume's attributes were voided.
        t.invalidate(ino);
        t.touch_dir(ino, when, 0);
        assert!(t.fresh_attr(ino).is_none());
    }

    #[test]
    fn background_write_attrs_only_grow() {
        let t = InodeTable::new(Duration::from_secs(60));
        let g = Gfid::new_random();
        let ino = t.remember(&iatt(g, 0), ROOT_INO, true).unwrap();
        let mut late = iatt(g, 8192);
        late.mtime = Timespec { sec: 5, nsec: 0 };
        t.merge_write(&late);
        let mut early = iatt(g, 4096);
        early.mtime = Timespec { sec: 4, nsec: 0 };
        t.merge_write(&early);
        let a = t.fresh_attr(ino).unwrap();
        assert_eq!((a.size, a.mtime.sec), (8192, 5));
        assert!(!t.ever_locked(ino));
        t.mark_locked(ino);
        assert!(t.ever_locked(ino));
    }

    #[test]
    fn no_caps_mark() {
        let t = InodeTable::new(Duration::from_secs(60));
        let g = Gfid::new_random();
        let ino = t.remember(&iatt(g, 0), ROOT_INO, true).unwrap();
        assert!(!t.known_no_caps(ino));
        t.mark_no_caps(ino);
        assert!(t.known_no_caps(ino));
        t.xattrs_changed(ino);
        assert!(!t.known_no_caps(ino));
    }

    #[test]
    fn keep_cache_only_when_unchanged() {
        let t = InodeTable::new(Duration::from_secs(1));
        let g = Gfid::new_random();
        let ino = t.remember(&iatt(g, 10), ROOT_INO, false).unwrap();
        assert!(!t.keep_cache_on_open(ino, &iatt(g, 10)));
        assert!(t.keep_cache_on_open(ino, &iatt(g, 10)));
        assert!(!t.keep_cache_on_open(ino, &iatt(g, 11)));
    }
}
