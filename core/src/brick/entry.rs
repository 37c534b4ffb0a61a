//! Entry operations of the posix store (lookup, create, mkdir, mknod,
//! symlink, link, unlink, rmdir, rename): each resolves its parent directory
//! through the gfid handle, works relative to that directory's fd, and keeps
//! the `.kiln/` handles in step with the names.

// `stat`/`statfs` field types differ between architectures: keep the casts.
#![allow(clippy::unnecessary_cast)]

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::format;
use super::index;
use super::store::Store;
use super::sys::{self, os, XTarget};
use super::xattrop;
use super::xattrs;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{FileKind, Iatt};
use crate::proto::{Loc, NewInode, XattrMap};
use crate::xattr_names;

/// Longest symlink target accepted (PATH_MAX - 1).
const SYMLINK_MAX: usize = 4095;

/// The new inode as it exists while its creation is being finished: an
/// open fd to it, or only its name in the parent.
enum New<'a> {
    Fd(BorrowedFd<'a>),
    Name,
}

impl Store {
    /// Checks a name a client may look up or change: valid, and never the
    /// brick's internal directory at the root.
    fn check_loc(&self, loc: &Loc) -> FsResult<()> {
        loc.name.validate()?;
        if loc.parent.is_root() && sys::is_internal_name(loc.name.as_bytes()) {
            return Err(FsError::NotPermitted);
        }
        Ok(())
    }

    /// Checks a creation request: the location, the chosen gfid, and that
    /// only allowed xattrs come with it.
    fn check_new(&self, loc: &Loc, inode: &NewInode) -> FsResult<()> {
        self.check_loc(loc)?;
        if inode.gfid.is_null() || inode.gfid.is_root() {
            return Err(FsError::InvalidArgument);
        }
        for (k, v) in &inode.xattrs {
            xattrs::check_settable(k, v)?;
        }
        Ok(())
    }

    /// Looks up `loc`: its attributes and the asked xattrs that exist. A
    /// non-directory found without a gfid (put in the brick by hand) is
    /// given one.
    pub(crate) fn lookup(&self, loc: &Loc, want: &[String]) -> FsResult<(Iatt, XattrMap)> {
        loc.name.validate()?;
        if loc.parent.is_root() && sys::is_internal_name(loc.name.as_bytes()) {
            return Err(FsError::NotFound);
        }
        let dir = self.resolve_dir(loc.parent)?;
        let name = os(loc.name.as_bytes());
        let mut st = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let p = sys::at_path(dir.as_fd(), loc.name.as_bytes());
        let gfid = match sys::get_gfid(XTarget::Path(&p))? {
            Some(g) => g,
            None => self.adopt(dir.as_fd(), loc, &st)?,
        };
        // A non-directory always has its handle as a second link: one
        // link only means the brick stopped in the middle of creating it
        // (gfid set, handle not made yet). Make it now, or the inode stays
        // out of reach by gfid (heals of it would fail for ever).
        if st.st_nlink == 1 && sys::kind_of(&st) != FileKind::Directory && !gfid.is_null() {
            match self.make_link_handle(dir.as_fd(), loc, gfid) {
                Ok(()) => {
                    tracing::info!(name = %loc.name, parent = %loc.parent, %gfid, "made the missing handle of a file");
                    st = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                }
                Err(e) => {
                    tracing::warn!(name = %loc.name, parent = %loc.parent, %gfid, "cannot make the missing handle of a file: {e}")
                }
            }
        }
        let x = xattrs::read_wanted(XTarget::Path(&p), want);
        Ok((sys::iatt(gfid, &st), x))
    }

    /// Gives a gfid and a handle to a non-directory that has none.
    fn adopt(&self, dir: BorrowedFd<'_>, loc: &Loc, st: &Stat) -> FsResult<Gfid> {
        if sys::kind_of(st) == FileKind::Directory {
            tracing::warn!(name = %loc.name, parent = %loc.parent, "directory without a gfid");
            return Ok(Gfid::NULL);
        }
        let p = sys::at_path(dir, loc.name.as_bytes());
        let g = Gfid::new_random();
        match sys::set_xattr(
            XTarget::Path(&p),
            xattr_names::GFID,
            &g.0,
            XattrFlags::CREATE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return sys::get_gfid(XTarget::Path(&p))?.ok_or(FsError::Io("gfid race".into()))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(name = %loc.name, parent = %loc.parent, gfid = %g, "gave a gfid to a file found without one");
        self.make_link_handle(dir, loc, g)?;
        Ok(g)
    }

    /// Creates and opens a regular file.
    pub(crate) fn create(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(OwnedFd, Iatt)> {
        self.check_new(loc, inode)?;
        let dir = self.resolve_dir(loc.parent)?;
        let name = os(loc.name.as_bytes());
        let exclusive = exclusive || flags & libc::O_EXCL != 0;
        let oflags = sys::file_open_flags(flags) - OFlags::TRUNC;
        let mode = Mode::from_raw_mode(inode.mode & 0o7777);
        let fd = match rustix::fs::openat(&*dir, name, oflags | OFlags::CREATE | OFlags::EXCL, mode)
        {
            Ok(fd) => fd,
            Err(Errno::EXIST) if !exclusive => return self.open_existing(&dir, loc, inode, flags),
            Err(e) => return Err(e.into()),
        };
        match self.finish_new(&dir, loc, inode, New::Fd(fd.as_fd()), FileKind::Regular) {
            Ok(st) => Ok((fd, sys::iatt(inode.gfid, &st))),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&*dir, name, AtFlags::empty());
                Err(e)
            }
        }
    }

    /// A non-exclusive create found the name taken: open it if it is the
    /// same file (a retried create), else EEXIST.
    fn open_existing(
        &self,
        dir: &OwnedFd,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
    ) -> FsResult<(OwnedFd, Iatt)> {
        let name = os(loc.name.as_bytes());
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if sys::kind_of(&st) != FileKind::Regular {
            return Err(FsError::Exists);
        }
        let fd = rustix::fs::openat(dir, name, sys::file_open_flags(flags), Mode::empty())?;
        if sys::get_gfid(XTarget::Fd(fd.as_fd()))? != Some(inode.gfid) {
            return Err(FsError::Exists);
        }
        let st = rustix::fs::fstat(&fd)?;
        Ok((fd, sys::iatt(inode.gfid, &st)))
    }

    /// Creates a directory.
    pub(crate) fn mkdir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt> {
        self.check_new(loc, inode)?;
        let dir = self.resolve_dir(loc.parent)?;
        let name = os(loc.name.as_bytes());
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let created =
            match rustix::fs::mkdirat(&*dir, name, Mode::from_raw_mode(inode.mode & 0o7777)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return Err(e.into()),
            };
        let fd = match rustix::fs::openat(&*dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(_) if !created => return Err(FsError::Exists),
            Err(e) => return Err(e.into()),
        };
        if !created {
            // Adopt a directory that exists without a gfid (a copy made by
            // hand, or a creation interrupted before its gfid was set).
            if sys::get_gfid(XTarget::Fd(fd.as_fd()))?.is_some() {
                return Err(FsError::Exists);
            }
            tracing::info!(name = %loc.name, gfid = %inode.gfid, "adopting a directory found without a gfid");
        }
        match self.finish_new(&dir, loc, inode, New::Fd(fd.as_fd()), FileKind::Directory) {
            Ok(st) => {
                self.cache_dir(inode.gfid, Arc::new(fd));
                Ok(sys::iatt(inode.gfid, &st))
            }
            Err(e) => {
                if created {
                    let _ = rustix::fs::unlinkat(&*dir, name, AtFlags::REMOVEDIR);
                }
                Err(e)
            }
        }
    }

    /// Creates a regular or special file without opening it.
    pub(crate) fn mknod(&self, loc: &Loc, inode: &NewInode, rdev: u64) -> FsResult<Iatt> {
        self.check_new(loc, inode)?;
        let dir = self.resolve_dir(loc.parent)?;
        let name = os(loc.name.as_bytes());
        let perm = Mode::from_raw_mode(inode.mode & 0o7777);
        let kind = match inode.mode & libc::S_IFMT {
            0 | libc::S_IFREG => FileKind::Regular,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return Err(FsError::InvalidArgument),
        };
        let fd = if kind == FileKind::Regular {
            let f =
                OFlags::RDONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            Some(rustix::fs::openat(&*dir, name, f, perm)?)
        } else {
            let ft = FileType::from_raw_mode(kind.mode_bits());
            rustix::fs::mknodat(&*dir, name, ft, perm, rdev)?;
            None
        };
        let new = match &fd {
            Some(fd) => New::Fd(fd.as_fd()),
            None => New::Name,
        };
        match self.finish_new(&dir, loc, inode, new, kind) {
            Ok(st) => Ok(sys::iatt(inode.gfid, &st)),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&*dir, name, AtFlags::empty());
                Err(e)
            }
        }
    }

    /// Creates a symbolic link.
    pub(crate) fn symlink(&self, loc: &Loc, inode: &NewInode, target: &[u8]) -> FsResult<Iatt> {
        self.check_new(loc, inode)?;
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::InvalidArgument);
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::NameTooLong);
        }
        let dir = self.resolve_dir(loc.parent)?;
        let name = os(loc.name.as_bytes());
        rustix::fs::symlinkat(os(target), &*dir, name)?;
        match self.finish_new(&dir, loc, inode, New::Name, FileKind::Symlink) {
            Ok(st) => Ok(sys::iatt(inode.gfid, &st)),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&*dir, name, AtFlags::empty());
                Err(e)
            }
        }
    }

    /// Sets a new inode's gfid and internal xattrs, owner and mode, and
    /// makes its handle; returns its `stat`.
    fn finish_new(
        &self,
        dir: &OwnedFd,
        loc: &Loc,
        inode: &NewInode,
        new: New<'_>,
        kind: FileKind,
    ) -> FsResult<Stat> {
        let name = os(loc.name.as_bytes());
        let path;
        let xt = match new {
            New::Fd(fd) => XTarget::Fd(fd),
            New::Name => {
                path = sys::at_path(dir.as_fd(), loc.name.as_bytes());
                XTarget::Path(&path)
            }
        };
        sys::set_xattr(xt, xattr_names::GFID, &inode.gfid.0, XattrFlags::empty())?;
        // Born with a pending replicate counter (a create's pre-op): listed
        // in the heal index before the counter exists, as `xattrop` does.
        if inode
            .xattrs
            .iter()
            .any(|(k, v)| k.starts_with(xattr_names::AFR_PREFIX) && xattrop::pending(v))
        {
            index::mark(self, inode.gfid)?;
        }
        for (k, v) in &inode.xattrs {
            sys::set_xattr(xt, k, v, XattrFlags::empty())?;
        }
        // Ownership: a set-group-ID parent passes its group on (and, to a
        // directory, the set-group-ID bit), as the kernel would for a
        // process creating the file itself.
        let pst = rustix::fs::fstat(dir)?;
        let sgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let (gid, cur_gid) = if sgid_parent {
            (pst.st_gid, pst.st_gid)
        } else {
            (inode.gid, self.egid)
        };
        if inode.uid != self.euid || gid != cur_gid {
            let (u, g) = (
                Some(rustix::fs::Uid::from_raw(inode.uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
            match new {
                New::Fd(fd) => rustix::fs::fchown(fd, u, g)?,
                New::Name => rustix::fs::chownat(dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?,
            }
        }
        if kind == FileKind::Directory {
            self.make_dir_handle(inode.gfid, loc)?;
        } else {
            self.make_link_handle(dir.as_fd(), loc, inode.gfid)?;
        }
        let mut st = match new {
            New::Fd(fd) => rustix::fs::fstat(fd)?,
            New::Name => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?,
        };
        let mut want = inode.mode & 0o7777;
        if kind == FileKind::Directory && sgid_parent {
            want |= libc::S_ISGID;
        }
        if kind != FileKind::Symlink && st.st_mode & 0o7777 != want {
            let m = Mode::from_raw_mode(want);
            match new {
                New::Fd(fd) => rustix::fs::fchmod(fd, m)?,
                New::Name => rustix::fs::chmodat(dir, name, m, AtFlags::empty())?,
            }
            st.st_mode = (st.st_mode & !0o7777) | want;
        }
        Ok(st)
    }

    /// Hard-links `loc` as the handle of `gfid`. An existing
    /// handle of the same inode is fine; an orphaned one (link count 1) is
    /// replaced; a live one of another inode is a gfid collision (EEXIST).
    fn make_link_handle(&self, dir: BorrowedFd<'_>, loc: &Loc, gfid: Gfid) -> FsResult<()> {
        let rel = gfid.handle_rel_path();
        let name = os(loc.name.as_bytes());
        for _ in 0..4 {
            match rustix::fs::linkat(dir, name, &self.kiln, rel.as_str(), AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::NOENT) => self.make_fanout(&rel)?,
                Err(Errno::EXIST) => {
                    let h =
                        rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                    let me = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                    if h.st_ino == me.st_ino && h.st_dev == me.st_dev {
                        return Ok(());
                    }
                    if h.st_nlink != 1 || FileType::from_raw_mode(h.st_mode) == FileType::Symlink {
                        tracing::warn!(%gfid, "gfid already in use by another inode");
                        return Err(FsError::Exists);
                    }
                    tracing::info!(%gfid, "replacing an orphaned handle");
                    rustix::fs::unlinkat(&self.kiln, rel.as_str(), AtFlags::empty())?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FsError::Io(format!("cannot create the handle of {gfid}")))
    }

    /// Makes (or re-points) a directory's handle symlink at `loc`.
    fn make_dir_handle(&self, gfid: Gfid, loc: &Loc) -> FsResult<()> {
        let rel = gfid.handle_rel_path();
        let target = format::dir_handle_target(loc.parent, loc.name.as_bytes());
        for _ in 0..4 {
            match rustix::fs::symlinkat(os(&target), &self.kiln, rel.as_str()) {
                Ok(()) => return Ok(()),
                Err(Errno::NOENT) => self.make_fanout(&rel)?,
                Err(Errno::EXIST) => {
                    let old = rustix::fs::readlinkat(&self.kiln, rel.as_str(), Vec::new());
                    if old
                        .as_ref()
                        .is_ok_and(|t| t.as_bytes() == target.as_slice())
                    {
                        return Ok(());
                    }
                    // Another live file or directory with this gfid is a
                    // collision; a dangling or stale handle is replaced.
                    let h =
                        rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                    if h.st_nlink != 1 {
                        tracing::warn!(%gfid, "gfid already in use by a file");
                        return Err(FsError::Exists);
                    }
                    self.forget_dir(gfid);
                    if matches!(self.resolve(gfid), Ok(super::store::Inode::Dir(_))) {
                        tracing::warn!(%gfid, "gfid already in use by another directory");
                        return Err(FsError::Exists);
                    }
                    return self.replace_symlink(&rel, &target);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FsError::Io(format!("cannot create the handle of {gfid}")))
    }

    /// Atomically replaces the symlink `rel` under `.kiln/` with `target`.
    fn replace_symlink(&self, rel: &str, target: &[u8]) -> FsResult<()> {
        let tmp = format!("{rel}.{:016x}.tmp", rand::random::<u64>());
        match rustix::fs::symlinkat(os(target), &self.kiln, tmp.as_str()) {
            Ok(()) => {}
            Err(Errno::NOENT) => {
                self.make_fanout(rel)?;
                rustix::fs::symlinkat(os(target), &self.kiln, tmp.as_str())?;
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = rustix::fs::renameat(&self.kiln, tmp.as_str(), &self.kiln, rel) {
            let _ = rustix::fs::unlinkat(&self.kiln, tmp.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(())
    }

    /// Hard-links the inode `gfid` at `loc`.
    pub(crate) fn link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        self.check_loc(loc)?;
        let dir = self.resolve_dir(loc.parent)?;
        let _g = self.stripe(gfid).lock();
        let rel = match self.resolve(gfid)? {
            super::store::Inode::Dir(_) => return Err(FsError::NotPermitted),
            super::store::Inode::Other { rel, .. } => rel,
        };
        let name = os(loc.name.as_bytes());
        rustix::fs::linkat(&self.kiln, rel.as_str(), &*dir, name, AtFlags::empty())?;
        if super::store::is_trash_rel(&rel) {
            // An unlinked, still open file got a name again.
            self.restore_handle(gfid)?;
        }
        let st = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(sys::iatt(gfid, &st))
    }

    /// The gfid and `lstat` of a name in a directory.
    fn entry_at(&self, dir: &OwnedFd, name: &[u8]) -> FsResult<(Option<Gfid>, Stat)> {
        let st = rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW)?;
        let p = sys::at_path(dir.as_fd(), name);
        Ok((sys::get_gfid(XTarget::Path(&p))?, st))
    }

    /// Removes `gfid`'s hard-link handle if only the handle is left of
    /// inode `ino`. Call with the gfid's stripe lock held.
    fn drop_link_handle_if_last(&self, gfid: Gfid, ino: u64) {
        let rel = gfid.handle_rel_path();
        if let Ok(h) = rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            if h.st_ino as u64 == ino && h.st_nlink == 1 {
                if let Err(e) = self.retire_handle(gfid, &rel) {
                    tracing::warn!(%gfid, "cannot remove handle: {e}");
                }
            }
        }
    }

    /// Removes a directory's handle symlink and forgets its cached fd.
    fn drop_dir_handle(&self, gfid: Gfid) {
        self.forget_dir(gfid);
        let rel = gfid.handle_rel_path();
        if let Ok(h) = rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            if FileType::from_raw_mode(h.st_mode) == FileType::Symlink && h.st_nlink == 1 {
                let _ = rustix::fs::unlinkat(&self.kiln, rel.as_str(), AtFlags::empty());
            }
        }
    }

    /// Removes a non-directory name.
    pub(crate) fn unlink(&self, loc: &Loc) -> FsResult<()> {
        self.check_loc(loc)?;
        let dir = self.resolve_dir(loc.parent)?;
        let (gfid, st) = self.entry_at(&dir, loc.name.as_bytes())?;
        if sys::kind_of(&st) == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        let _g = gfid.map(|g| self.stripe(g).lock());
        rustix::fs::unlinkat(&*dir, os(loc.name.as_bytes()), AtFlags::empty())?;
        if let Some(g) = gfid {
            self.drop_link_handle_if_last(g, st.st_ino as u64);
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub(crate) fn rmdir(&self, loc: &Loc) -> FsResult<()> {
        self.check_loc(loc)?;
        let dir = self.resolve_dir(loc.parent)?;
        let (gfid, st) = self.entry_at(&dir, loc.name.as_bytes())?;
        if sys::kind_of(&st) != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        rustix::fs::unlinkat(&*dir, os(loc.name.as_bytes()), AtFlags::REMOVEDIR)?;
        if let Some(g) = gfid {
            self.drop_dir_handle(g);
        }
        Ok(())
    }

    /// Renames `from` to `to` as rename(2) does, replacing `to`; keeps the
    /// moved directory's handle and the replaced inode's handle right.
    pub(crate) fn rename(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        self.check_loc(from)?;
        self.check_loc(to)?;
        let fdir = self.resolve_dir(from.parent)?;
        let tdir = if to.parent == from.parent {
            fdir.clone()
        } else {
            self.resolve_dir(to.parent)?
        };
        let (sg, sst) = self.entry_at(&fdir, from.name.as_bytes())?;
        let target = match self.entry_at(&tdir, to.name.as_bytes()) {
            Ok(t) => Some(t),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let tg = target.as_ref().and_then(|t| t.0);
        let (s1, s2) = self.stripe_pair(sg.unwrap_or(Gfid::NULL), tg.unwrap_or(Gfid::NULL));
        let _l1 = self.stripe_at(s1).lock();
        let _l2 = s2.map(|s| self.stripe_at(s).lock());
        rustix::fs::renameat(
            &*fdir,
            os(from.name.as_bytes()),
            &*tdir,
            os(to.name.as_bytes()),
        )?;
        if let Some((_, tst)) = &target {
            if tst.st_ino == sst.st_ino && tst.st_dev == sst.st_dev {
                return Ok(()); // two names of one inode: rename does nothing
            }
        }
        if sys::kind_of(&sst) == FileKind::Directory {
            if let Some(g) = sg {
                let rel = g.handle_rel_path();
                let t = format::dir_handle_target(to.parent, to.name.as_bytes());
                if let Err(e) = self.replace_symlink(&rel, &t) {
                    tracing::error!(gfid = %g, "cannot re-point handle after rename: {e}");
                    return Err(e);
                }
            }
        }
        if let Some((Some(g), tst)) = target {
            if sys::kind_of(&tst) == FileKind::Directory {
                self.drop_dir_handle(g);
            } else {
                self.drop_link_handle_if_last(g, tst.st_ino as u64);
            }
        }
        Ok(())
    }
}
