//! The posix store of one brick: the brick root, the `.kiln/` handle tree,
//! resolution of a gfid to an open directory or a handle path (with a cache
//! of open directory fds), and start-up checks of the on-disk format.
//! Entry operations are in `entry.rs`, per-inode operations in `inode.rs`.

use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, XattrFlags, CWD};
use rustix::io::Errno;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    self, FORMAT_VERSION, INTERNAL_DIR, INTERNAL_DIR_MODE, ROOT_HANDLE_TARGET, TRASH_DIR,
};
use super::sys::{self, XTarget};
use super::BrickError;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::xattr_names;

/// Most directory fds kept open in the resolution cache.
const DIR_CACHE_MAX: usize = 2048;
/// Number of stripes of the per-gfid handle-maintenance locks.
const STRIPES: usize = 64;
/// Deepest directory chain walked by hand (beyond the kernel's 40 links).
const MAX_WALK: usize = 4096;

/// A resolved gfid.
pub(crate) enum Inode {
    /// A directory, open read-only (usable as the dirfd of `*at` calls).
    Dir(Arc<OwnedFd>),
    /// Anything else, reached through its hard-link handle `rel` (relative
    /// to `.kiln/`), with the handle's `lstat`.
    Other {
        /// `ab/cd/<gfid>`.
        rel: String,
        /// `lstat` of the inode.
        st: Box<Stat>,
    },
}

/// Regular files open on any connection, and those among them whose last
/// name is gone (their handle waits in `.kiln/unlink/`).
#[derive(Default)]
struct OpenFiles {
    counts: HashMap<Gfid, u32>,
    trashed: HashSet<Gfid>,
}

/// The trash path of `gfid`'s handle, relative to `.kiln/`.
pub(crate) fn trash_rel(gfid: Gfid) -> String {
    format!("{TRASH_DIR}/{gfid}")
}

/// True for a handle path that is in the trash.
pub(crate) fn is_trash_rel(rel: &str) -> bool {
    rel.starts_with(TRASH_DIR) && rel.as_bytes().get(TRASH_DIR.len()) == Some(&b'/')
}

/// One brick's directory tree and its `.kiln/` handles.
pub(crate) struct Store {
    pub(crate) root_path: PathBuf,
    pub(crate) root: Arc<OwnedFd>,
    pub(crate) kiln: OwnedFd,
    dirs: Mutex<HashMap<Gfid, Arc<OwnedFd>>>,
    stripes: Vec<Mutex<()>>,
    open: Mutex<OpenFiles>,
    /// The brick process's own uid/gid (what a new inode gets before chown).
    pub(crate) euid: u32,
    pub(crate) egid: u32,
}

fn io_err(path: &Path, e: impl Into<std::io::Error>) -> BrickError {
    BrickError::Io {
        path: path.display().to_string(),
        err: e.into(),
    }
}

impl Store {
    /// Opens a brick directory: checks its volume id and format version,
    /// then creates `.kiln/`, the root gfid and the root handle if missing.
    pub(crate) fn open_brick(path: &Path, volume_id: &str) -> Result<Store, BrickError> {
        let want = uuid::Uuid::parse_str(volume_id)
            .map_err(|_| BrickError::BadVolumeId(volume_id.to_string()))?;
        let root = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(path, e))?;
        let disp = path.display().to_string();
        let rt = XTarget::Fd(root.as_fd());
        match sys::get_xattr(rt, xattr_names::VOLUME_ID).map_err(|e| io_err(path, e))? {
            None => return Err(BrickError::NotPrepared(disp)),
            Some(v) if v.as_slice() != want.as_bytes() => {
                let found = match uuid::Uuid::from_slice(&v) {
                    Ok(u) => u.hyphenated().to_string(),
                    Err(_) => hex::encode(&v),
                };
                return Err(BrickError::VolumeIdMismatch {
                    path: disp,
                    expected: want.hyphenated().to_string(),
                    found,
                });
            }
            Some(_) => {}
        }
        match sys::get_xattr(rt, xattr_names::BRICK_FORMAT).map_err(|e| io_err(path, e))? {
            None => sys::set_xattr(
                rt,
                xattr_names::BRICK_FORMAT,
                &[FORMAT_VERSION],
                XattrFlags::empty(),
            )
            .map_err(|e| io_err(path, e))?,
            Some(v) if v.first().copied().unwrap_or(0) > FORMAT_VERSION => {
                return Err(BrickError::NewerFormat {
                    path: disp,
                    found: v.first().copied().unwrap_or(0),
                    supported: FORMAT_VERSION,
                })
            }
            Some(_) => {}
        }
        match sys::get_gfid(rt).map_err(|e| io_err(path, e))? {
            None => sys::set_xattr(rt, xattr_names::GFID, &Gfid::ROOT.0, XattrFlags::empty())
                .map_err(|e| io_err(path, e))?,
            Some(g) if !g.is_root() => {
                return Err(BrickError::Corrupt {
                    path: disp,
                    what: format!("root directory has gfid {g}, not the root gfid"),
                })
            }
            Some(_) => {}
        }
        match rustix::fs::mkdirat(&root, INTERNAL_DIR, Mode::from_raw_mode(INTERNAL_DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err(&path.join(INTERNAL_DIR), e)),
        }
        let kiln = rustix::fs::openat(
            &root,
            INTERNAL_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&path.join(INTERNAL_DIR), e))?;
        let store = Store {
            root_path: path.to_path_buf(),
            root: Arc::new(root),
            kiln,
            dirs: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            open: Mutex::new(OpenFiles::default()),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
        };
        store
            .ensure_root_handle()
            .map_err(|e| io_err(&path.join(INTERNAL_DIR), std::io::Error::from(e)))?;
        store
            .empty_trash()
            .map_err(|e| io_err(&path.join(INTERNAL_DIR).join(TRASH_DIR), e))?;
        Ok(store)
    }

    /// Creates `.kiln/unlink/`, removing what a previous run left there
    /// (files unlinked while open when that run ended).
    fn empty_trash(&self) -> Result<(), Errno> {
        match rustix::fs::mkdirat(
            &self.kiln,
            TRASH_DIR,
            Mode::from_raw_mode(INTERNAL_DIR_MODE),
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let t = rustix::fs::openat(
            &self.kiln,
            TRASH_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        let mut d = rustix::fs::Dir::read_from(&t)?;
        while let Some(e) = d.read() {
            let n = e?.file_name().to_bytes().to_vec();
            if n != b"." && n != b".." {
                names.push(n);
            }
        }
        for n in names {
            let _ = rustix::fs::unlinkat(&t, sys::os(&n), AtFlags::empty());
        }
        Ok(())
    }

    /// Counts an open regular file (one per brick fd).
    pub(crate) fn file_opened(&self, gfid: Gfid) {
        *self.open.lock().counts.entry(gfid).or_insert(0) += 1;
    }

    /// Uncounts an open regular file; the last close of an unlinked one
    /// removes its handle from the trash.
    pub(crate) fn file_closed(&self, gfid: Gfid) {
        let mut open = self.open.lock();
        let Some(n) = open.counts.get_mut(&gfid) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        open.counts.remove(&gfid);
        if open.trashed.remove(&gfid) {
            let rel = trash_rel(gfid);
            if let Err(e) = rustix::fs::unlinkat(&self.kiln, rel.as_str(), AtFlags::empty()) {
                tracing::warn!(%gfid, "cannot remove unlinked file's handle: {e}");
            }
        }
    }

    /// Retires the hard-link handle `rel` of `gfid`, whose last name is
    /// gone: removed, or moved to the trash while the file is open.
    pub(crate) fn retire_handle(&self, gfid: Gfid, rel: &str) -> Result<(), Errno> {
        let mut open = self.open.lock();
        if open.counts.get(&gfid).copied().unwrap_or(0) == 0 {
            return rustix::fs::unlinkat(&self.kiln, rel, AtFlags::empty());
        }
        let trash = trash_rel(gfid);
        rustix::fs::renameat(&self.kiln, rel, &self.kiln, trash.as_str())?;
        open.trashed.insert(gfid);
        Ok(())
    }

    /// Brings a trashed handle back to its place (the file got a name again).
    pub(crate) fn restore_handle(&self, gfid: Gfid) -> Result<(), Errno> {
        let mut open = self.open.lock();
        let rel = gfid.handle_rel_path();
        let trash = trash_rel(gfid);
        match rustix::fs::renameat(&self.kiln, trash.as_str(), &self.kiln, rel.as_str()) {
            Err(Errno::NOENT) => {
                self.make_fanout(&rel)?;
                rustix::fs::renameat(&self.kiln, trash.as_str(), &self.kiln, rel.as_str())?;
            }
            r => r?,
        }
        open.trashed.remove(&gfid);
        Ok(())
    }

    fn ensure_root_handle(&self) -> Result<(), Errno> {
        let rel = Gfid::ROOT.handle_rel_path();
        match rustix::fs::readlinkat(&self.kiln, rel.as_str(), Vec::new()) {
            Ok(t) if t.as_bytes() == ROOT_HANDLE_TARGET.as_bytes() => return Ok(()),
            Ok(_) | Err(Errno::INVAL) => {
                rustix::fs::unlinkat(&self.kiln, rel.as_str(), AtFlags::empty())?
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        self.make_fanout(&rel)?;
        rustix::fs::symlinkat(ROOT_HANDLE_TARGET, &self.kiln, rel.as_str())
    }

    /// Creates `.kiln/ab/` and `.kiln/ab/cd/` for a handle path.
    pub(crate) fn make_fanout(&self, rel: &str) -> Result<(), Errno> {
        let mode = Mode::from_raw_mode(INTERNAL_DIR_MODE);
        for dir in [&rel[0..2], &rel[0..5]] {
            match rustix::fs::mkdirat(&self.kiln, dir, mode) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `/proc/self/fd/<.kiln>/<rel>`: a handle as a path, for xattr calls.
    pub(crate) fn handle_path(&self, rel: &str) -> OsString {
        sys::at_path(self.kiln.as_fd(), rel.as_bytes())
    }

    /// The lock serialising handle maintenance for `gfid` (link counting).
    pub(crate) fn stripe(&self, gfid: Gfid) -> &Mutex<()> {
        &self.stripes[gfid.0[15] as usize % STRIPES]
    }

    /// Stripe indices for two gfids, in locking order, deduplicated.
    pub(crate) fn stripe_pair(&self, a: Gfid, b: Gfid) -> (usize, Option<usize>) {
        let (x, y) = (a.0[15] as usize % STRIPES, b.0[15] as usize % STRIPES);
        match x.cmp(&y) {
            std::cmp::Ordering::Less => (x, Some(y)),
            std::cmp::Ordering::Greater => (y, Some(x)),
            std::cmp::Ordering::Equal => (x, None),
        }
    }

    /// The stripe lock by index (see `stripe_pair`).
    pub(crate) fn stripe_at(&self, i: usize) -> &Mutex<()> {
        &self.stripes[i]
    }

    /// Remembers an open directory for `gfid`.
    pub(crate) fn cache_dir(&self, gfid: Gfid, fd: Arc<OwnedFd>) {
        let mut dirs = self.dirs.lock();
        if dirs.len() >= DIR_CACHE_MAX {
            dirs.clear();
        }
        dirs.insert(gfid, fd);
    }

    /// Forgets `gfid`'s directory (it was removed or replaced).
    pub(crate) fn forget_dir(&self, gfid: Gfid) {
        self.dirs.lock().remove(&gfid);
    }

    /// Resolves a gfid to its inode.
    pub(crate) fn resolve(&self, gfid: Gfid) -> FsResult<Inode> {
        if gfid.is_root() {
            return Ok(Inode::Dir(self.root.clone()));
        }
        if gfid.is_null() {
            return Err(FsError::Stale);
        }
        if let Some(fd) = self.dirs.lock().get(&gfid) {
            return Ok(Inode::Dir(fd.clone()));
        }
        let rel = gfid.handle_rel_path();
        let st = match rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return self.resolve_trashed(gfid),
            Err(e) => return Err(e.into()),
        };
        // A directory's handle is a symlink with one link; a user symlink's
        // handle is a hard link (two links while it has a name).
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink && st.st_nlink == 1 {
            match self.open_dir_handle(gfid, &rel) {
                Ok(fd) => {
                    let fd = Arc::new(fd);
                    self.cache_dir(gfid, fd.clone());
                    return Ok(Inode::Dir(fd));
                }
                Err(e) => {
                    let p = self.handle_path(&rel);
                    if sys::get_gfid(XTarget::Path(&p))? != Some(gfid) {
                        tracing::debug!(%gfid, "directory handle does not resolve: {e}");
                        return Err(FsError::Stale);
                    }
                    // An orphaned user symlink: fall through.
                }
            }
        }
        Ok(Inode::Other {
            rel,
            st: Box::new(st),
        })
    }

    /// An unlinked file that is still open, found in the trash.
    fn resolve_trashed(&self, gfid: Gfid) -> FsResult<Inode> {
        let rel = trash_rel(gfid);
        match rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Inode::Other {
                rel,
                st: Box::new(st),
            }),
            Err(_) => Err(FsError::Stale),
        }
    }

    /// Resolves a gfid that must be a directory.
    pub(crate) fn resolve_dir(&self, gfid: Gfid) -> FsResult<Arc<OwnedFd>> {
        match self.resolve(gfid)? {
            Inode::Dir(fd) => Ok(fd),
            Inode::Other { .. } => Err(FsError::NotDir),
        }
    }

    /// Opens a directory through its handle's symlink chain (or by walking
    /// the chain by hand when it is deeper than the kernel follows), and
    /// checks the directory found carries `gfid`.
    fn open_dir_handle(&self, gfid: Gfid, rel: &str) -> FsResult<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.kiln, rel, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => self.walk_dir(gfid)?,
            Err(e) => return Err(e.into()),
        };
        match sys::get_gfid(XTarget::Fd(fd.as_fd()))? {
            Some(g) if g == gfid => Ok(fd),
            other => {
                tracing::warn!(%gfid, found = ?other, "directory handle leads to another directory");
                Err(FsError::Stale)
            }
        }
    }

    /// Resolves a directory by reading handle links up to the root (or a
    /// cached ancestor), then opening each name without following symlinks.
    fn walk_dir(&self, gfid: Gfid) -> FsResult<OwnedFd> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut g = gfid;
        let start = loop {
            if g.is_root() {
                break self.root.clone();
            }
            if g != gfid {
                if let Some(fd) = self.dirs.lock().get(&g) {
                    break fd.clone();
                }
            }
            if names.len() >= MAX_WALK {
                return Err(FsError::Stale);
            }
            let t = match rustix::fs::readlinkat(
                &self.kiln,
                g.handle_rel_path().as_str(),
                Vec::new(),
            ) {
                Ok(t) => t,
                Err(Errno::NOENT) | Err(Errno::INVAL) => return Err(FsError::Stale),
                Err(e) => return Err(e.into()),
            };
            let (parent, name) =
                format::parse_dir_handle_target(t.as_bytes()).ok_or(FsError::Stale)?;
            names.push(name);
            g = parent;
        };
        let mut cur = rustix::fs::openat(
            &*start,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for name in names.iter().rev() {
            cur = rustix::fs::openat(
                &cur,
                sys::os(name),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::NOENT | Errno::LOOP | Errno::NOTDIR => FsError::Stale,
                e => e.into(),
            })?;
        }
        Ok(cur)
    }

    /// Runs an xattr call on a resolved inode.
    pub(crate) fn with_xtarget<R>(
        &self,
        inode: &Inode,
        f: impl FnOnce(XTarget<'_>) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        match inode {
            Inode::Dir(fd) => f(XTarget::Fd(fd.as_fd())),
            Inode::Other { rel, .. } => {
                let p = self.handle_path(rel);
                f(XTarget::Path(&p))
            }
        }
    }
}
