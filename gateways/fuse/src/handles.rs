//! Open files and directories handed to the kernel as FUSE file handles,
//! and the per-directory-handle listing window that turns the stack's opaque
//! readdir cookies into the small, stable offsets the kernel asks for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_core::client::Fd;
use kiln_core::proto::DirEntry;
use kiln_core::{FileKind, FsError, FsResult, Gfid, Iatt};
use parking_lot::Mutex;

/// One entry of a directory listing as the kernel will see it.
#[derive(Clone)]
pub(crate) struct Listed {
    /// Name bytes (`.` and `..` included).
    pub(crate) name: Vec<u8>,
    /// The entry's gfid (NULL for `.`/`..`, filled in by the caller).
    pub(crate) gfid: Gfid,
    /// Inode kind.
    pub(crate) kind: FileKind,
    /// Attributes when the stack returned them (readdirplus).
    pub(crate) iatt: Option<Iatt>,
}

/// Listing state of an open directory. Offsets given to the kernel are
/// positions in the listing (entry `i` carries offset `i + 1`); `.` and `..`
/// are positions 0 and 1.
pub(crate) struct DirStream {
    /// Position of `window[0]`.
    base: u64,
    window: VecDeque<Listed>,
    /// The stack's cookie to continue after the last fetched entry.
    cookie: u64,
    eof: bool,
    started: bool,
}

/// How many already-read entries a stream keeps behind its read position.
const KEEP_BEHIND: usize = 256;

impl DirStream {
    fn new() -> DirStream {
        DirStream {
            base: 0,
            window: VecDeque::new(),
            cookie: 0,
            eof: false,
            started: false,
        }
    }

    /// Restarts the listing from the beginning (rewinddir, or a seek back
    /// behind the kept window).
    pub(crate) fn restart(&mut self) {
        *self = DirStream::new();
    }

    /// True once the first batch was fetched.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// True when the whole directory has been fetched.
    pub(crate) fn eof(&self) -> bool {
        self.eof
    }

    /// The stack cookie to fetch the next batch with.
    pub(crate) fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The first position still in the window.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Appends `.` and `..` (first fetch only).
    pub(crate) fn push_dots(&mut self) {
        self.started = true;
        for name in [&b"."[..], &b".."[..]] {
            self.window.push_back(Listed {
                name: name.to_vec(),
                gfid: Gfid::NULL,
                kind: FileKind::Directory,
                iatt: None,
            });
        }
    }

    /// Appends a batch from the stack; an empty batch marks the end.
    pub(crate) fn push_batch(&mut self, batch: Vec<DirEntry>) {
        self.started = true;
        if batch.is_empty() {
            self.eof = true;
            return;
        }
        for e in batch {
            self.cookie = e.offset;
            self.window.push_back(Listed {
                name: e.name.as_bytes().to_vec(),
                gfid: e.gfid,
                kind: e.kind,
                iatt: e.iatt,
            });
        }
    }

    /// The entry at position `pos`, if fetched and still kept.
    pub(crate) fn get(&self, pos: u64) -> Option<&Listed> {
        pos.checked_sub(self.base)
            .and_then(|i| self.window.get(i as usize))
    }

    /// Fills in attributes fetched later for the entry at `pos`.
    pub(crate) fn set_iatt(&mut self, pos: u64, iatt: Iatt) {
        if let Some(i) = pos.checked_sub(self.base) {
            if let Some(e) = self.window.get_mut(i as usize) {
                e.iatt = Some(iatt);
            }
        }
    }

    /// Drops entries well behind `pos` so a huge directory does not stay in
    /// memory.
    pub(crate) fn trim_before(&mut self, pos: u64) {
        while self.base + (KEEP_BEHIND as u64) < pos && !self.window.is_empty() {
            self.window.pop_front();
            self.base += 1;
        }
    }
}

/// Lock owners seen on one open file. The kernel drops a process's POSIX
/// locks with a flush on every close, and flock locks with a flag on
/// release, but never tells about open-file-description (OFD) locks: those
/// are the owners that locked through the handle and never flushed it.
#[derive(Default)]
pub(crate) struct LockOwners {
    locked: Vec<u64>,
    flushed: Vec<u64>,
}

impl LockOwners {
    /// `owner` took a lock through this handle.
    pub(crate) fn locked(&mut self, owner: u64) {
        if !self.locked.contains(&owner) {
            self.locked.push(owner);
        }
    }

    /// `owner` closed a descriptor of this handle (a POSIX owner).
    pub(crate) fn flushed(&mut self, owner: u64) {
        if !self.flushed.contains(&owner) {
            self.flushed.push(owner);
        }
    }

    /// Owners whose locks only a release can end (OFD owners).
    pub(crate) fn unreleased(&self) -> Vec<u64> {
        self.locked
            .iter()
            .copied()
            .filter(|o| !self.flushed.contains(o))
            .collect()
    }
}

/// What a file handle refers to.
pub(crate) enum Handle {
    /// An open regular file.
    File {
        /// The stack's open file.
        fd: Fd,
        /// Lock owners that used it.
        owners: Mutex<LockOwners>,
    },
    /// An open directory.
    Dir {
        /// The stack's open directory.
        fd: Fd,
        /// Listing state (one reader at a time).
        stream: tokio::sync::Mutex<DirStream>,
    },
}

impl Handle {
    /// A new directory handle.
    pub(crate) fn dir(fd: Fd) -> Handle {
        Handle::Dir {
            fd,
            stream: tokio::sync::Mutex::new(DirStream::new()),
        }
    }

    /// A new file handle.
    pub(crate) fn file(fd: Fd) -> Handle {
        Handle::File {
            fd,
            owners: Mutex::new(LockOwners::default()),
        }
    }

    /// The stack fd behind this handle.
    pub(crate) fn fd(&self) -> &Fd {
        match self {
            Handle::File { fd, .. } | Handle::Dir { fd, .. } => fd,
        }
    }

    /// Records lock-owner activity (files only).
    pub(crate) fn owners(&self, f: impl FnOnce(&mut LockOwners)) {
        if let Handle::File { owners, .. } = self {
            f(&mut owners.lock());
        }
    }
}

/// File handles of one mount.
pub(crate) struct HandleTable {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl HandleTable {
    /// An empty table.
    pub(crate) fn new() -> HandleTable {
        HandleTable {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a handle; returns the number given to the kernel.
    pub(crate) fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().insert(fh, Arc::new(h));
        fh
    }

    /// The handle for `fh` (EBADF if unknown).
    pub(crate) fn get(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.map.lock().get(&fh).cloned().ok_or(FsError::BadFd)
    }

    /// The stack fd for `fh`.
    pub(crate) fn fd(&self, fh: u64) -> FsResult<Fd> {
        Ok(self.get(fh)?.fd().clone())
    }

    /// Removes `fh`, returning its handle.
    pub(crate) fn remove(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.map.lock().remove(&fh).ok_or(FsError::BadFd)
    }

    /// Open handles (files and directories).
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Name;

    fn entry(name: &str, cookie: u64) -> DirEntry {
        DirEntry {
            offset: cookie,
            name: Name::new(name).unwrap(),
            gfid: Gfid::new_random(),
            kind: FileKind::Regular,
            iatt: None,
            xattrs: Default::default(),
        }
    }

    #[test]
    fn positions_and_window() {
        let mut s = DirStream::new();
        s.push_dots();
        s.push_batch(
            (0..1000)
                .map(|i| entry(&format!("f{i}"), 7000 + i))
                .collect(),
        );
        assert!(s.get(1001).is_some() && s.get(1002).is_none());
        assert_eq!(s.cookie(), 7999);
        assert_eq!(s.get(0).unwrap().name, b".");
        assert_eq!(s.get(2).unwrap().name, b"f0");
        s.trim_before(900);
        assert!(s.base() > 0 && s.base() < 900);
        assert!(s.get(0).is_none());
        assert_eq!(s.get(901).unwrap().name, b"f899");
        s.push_batch(Vec::new());
        assert!(s.eof());
        s.restart();
        assert!(!s.started() && s.get(0).is_none());
    }

    #[test]
    fn ofd_owners_are_the_unflushed_ones() {
        let mut o = LockOwners::default();
        o.locked(1);
        o.locked(2);
        o.locked(2);
        o.flushed(1);
        o.flushed(3);
        assert_eq!(o.unreleased(), [2]);
    }
}
