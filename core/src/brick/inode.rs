//! Per-inode operations of the posix store, addressed by gfid: stat,
//! nameless lookup, setattr, readlink, open, statfs, and directory listing
//! (a snapshot per open directory, read out by index).

use rustix::fs::{AtFlags, Dir, Mode, OFlags, Timestamps};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::store::{Inode, Store};
use super::sys::{self, os, XTarget};
use super::xattrs;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{FileKind, Iatt, SetAttr, SetTime, Statvfs};
use crate::name::Name;
use crate::proto::{DirEntry, XattrMap};

/// Entries per readdir reply when the client asks for 0 (and the most ever).
const READDIR_DEFAULT: usize = 1024;
const READDIR_MAX: usize = 16384;
/// Rough reply-size budget for one readdir, well under a frame's limit.
const READDIR_BYTES: usize = 4 << 20;

/// One name of a directory listing snapshot.
#[derive(Debug, Clone)]
pub(crate) struct SnapEntry {
    name: Vec<u8>,
    kind: Option<FileKind>,
}

impl Store {
    /// Attributes of `gfid`.
    pub(crate) fn stat(&self, gfid: Gfid) -> FsResult<Iatt> {
        let inode = self.resolve(gfid)?;
        self.inode_iatt(gfid, &inode)
    }

    fn inode_iatt(&self, gfid: Gfid, inode: &Inode) -> FsResult<Iatt> {
        Ok(match inode {
            Inode::Dir(fd) => sys::iatt(gfid, &rustix::fs::fstat(&**fd)?),
            Inode::Other { rel, st } => {
                let mut iatt = sys::iatt(gfid, st);
                if super::store::is_trash_rel(rel) {
                    iatt.nlink = 0; // unlinked, still open
                }
                iatt
            }
        })
    }

    /// Nameless lookup: attributes and the wanted xattrs.
    pub(crate) fn lookup_gfid(&self, gfid: Gfid, want: &[String]) -> FsResult<(Iatt, XattrMap)> {
        let inode = self.resolve(gfid)?;
        let iatt = self.inode_iatt(gfid, &inode)?;
        let x = self
            .with_xtarget(&inode, |t| Ok(xattrs::read_wanted(t, want)))
            .unwrap_or_default();
        Ok((iatt, x))
    }

    /// Changes owner, mode, size and times, in that order (a chown clears
    /// set-id bits, so the mode comes after it); returns the new attributes.
    pub(crate) fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        let inode = self.resolve(gfid)?;
        if attr.uid.is_some() || attr.gid.is_some() {
            let u = attr.uid.map(rustix::fs::Uid::from_raw);
            let g = attr.gid.map(rustix::fs::Gid::from_raw);
            match &inode {
                Inode::Dir(fd) => rustix::fs::fchown(&**fd, u, g)?,
                Inode::Other { rel, .. } => {
                    rustix::fs::chownat(&self.kiln, rel.as_str(), u, g, AtFlags::SYMLINK_NOFOLLOW)?
                }
            }
        }
        if let Some(mode) = attr.mode {
            let m = Mode::from_raw_mode(mode & 0o7777);
            match &inode {
                Inode::Dir(fd) => rustix::fs::fchmod(&**fd, m)?,
                Inode::Other { st, .. } if sys::kind_of(st) == FileKind::Symlink => {
                    return Err(FsError::NotSupported)
                }
                // The handle is a hard link to a non-symlink: nothing to follow.
                Inode::Other { rel, .. } => {
                    rustix::fs::chmodat(&self.kiln, rel.as_str(), m, AtFlags::empty())?
                }
            }
        }
        if let Some(size) = attr.size {
            match &inode {
                Inode::Dir(_) => return Err(FsError::IsDir),
                Inode::Other { st, .. } if sys::kind_of(st) != FileKind::Regular => {
                    return Err(FsError::InvalidArgument)
                }
                Inode::Other { rel, .. } => {
                    let f = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let fd = rustix::fs::openat(&self.kiln, rel.as_str(), f, Mode::empty())?;
                    rustix::fs::ftruncate(&fd, size)?;
                }
            }
        }
        if attr.atime.is_some() || attr.mtime.is_some() {
            let ts = Timestamps {
                last_access: to_timespec(attr.atime),
                last_modification: to_timespec(attr.mtime),
            };
            match &inode {
                Inode::Dir(fd) => rustix::fs::futimens(&**fd, &ts)?,
                Inode::Other { rel, .. } => {
                    rustix::fs::utimensat(&self.kiln, rel.as_str(), &ts, AtFlags::SYMLINK_NOFOLLOW)?
                }
            }
        }
        let st = match &inode {
            Inode::Dir(fd) => rustix::fs::fstat(&**fd)?,
            Inode::Other { rel, .. } => {
                rustix::fs::statat(&self.kiln, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW)?
            }
        };
        Ok(sys::iatt(gfid, &st))
    }

    /// A symlink's target.
    pub(crate) fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        match self.resolve(gfid)? {
            Inode::Other { rel, st } if sys::kind_of(&st) == FileKind::Symlink => {
                Ok(rustix::fs::readlinkat(&self.kiln, rel.as_str(), Vec::new())?.into_bytes())
            }
            _ => Err(FsError::InvalidArgument),
        }
    }

    /// Opens a regular file (or a directory, read-only) by gfid. Special
    /// files are never opened by the brick.
    pub(crate) fn open(&self, gfid: Gfid, flags: i32) -> FsResult<(OwnedFd, bool)> {
        match self.resolve(gfid)? {
            Inode::Dir(fd) => {
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    return Err(FsError::IsDir);
                }
                Ok((self.reopen_dir(&fd)?, true))
            }
            Inode::Other { rel, st } => match sys::kind_of(&st) {
                FileKind::Regular => {
                    let f = sys::file_open_flags(flags);
                    Ok((
                        rustix::fs::openat(&self.kiln, rel.as_str(), f, Mode::empty())?,
                        false,
                    ))
                }
                FileKind::Symlink => Err(FsError::Os(libc::ELOOP)),
                _ => Err(FsError::NotSupported),
            },
        }
    }

    /// A fresh fd of an open directory.
    pub(crate) fn reopen_dir(&self, fd: &OwnedFd) -> FsResult<OwnedFd> {
        let f = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(fd, ".", f, Mode::empty())?)
    }

    /// Opens a directory by gfid for listing.
    pub(crate) fn opendir(&self, gfid: Gfid) -> FsResult<Arc<OwnedFd>> {
        self.resolve_dir(gfid)
    }

    /// Capacity of the brick's file system.
    pub(crate) fn statfs(&self) -> FsResult<Statvfs> {
        let s = rustix::fs::fstatvfs(&*self.root)?;
        Ok(Statvfs {
            bsize: s.f_bsize,
            frsize: s.f_frsize,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            namemax: s.f_namemax,
        })
    }

    /// Reads the whole listing of a directory (without `.`, `..`, and
    /// `.kiln` at the brick root).
    pub(crate) fn snapshot(&self, dir: &OwnedFd, is_root: bool) -> FsResult<Vec<SnapEntry>> {
        let mut d = Dir::read_from(dir)?;
        let mut out = Vec::new();
        while let Some(e) = d.read() {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." || (is_root && sys::is_internal_name(name)) {
                continue;
            }
            out.push(SnapEntry {
                name: name.to_vec(),
                kind: sys::kind_of_dirent(e.file_type()),
            });
        }
        Ok(out)
    }

    /// Entries of a snapshot from index `offset`, each with its gfid (and
    /// for `plus`, its attributes and wanted xattrs). Names gone since the
    /// snapshot are skipped.
    pub(crate) fn dir_entries(
        &self,
        dir: &OwnedFd,
        snap: &[SnapEntry],
        offset: u64,
        max_entries: u32,
        plus: bool,
        want: &[String],
    ) -> FsResult<Vec<DirEntry>> {
        let max = match max_entries as usize {
            0 => READDIR_DEFAULT,
            n => n.min(READDIR_MAX),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (i, e) in snap.iter().enumerate().skip(start) {
            if out.len() >= max || bytes >= READDIR_BYTES {
                break;
            }
            let Ok(name) = Name::new(e.name.clone()) else {
                continue;
            };
            let p = sys::at_path(dir.as_fd(), &e.name);
            let gfid = match sys::get_gfid(XTarget::Path(&p)) {
                Ok(g) => g.unwrap_or(Gfid::NULL),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(_) => Gfid::NULL,
            };
            let (kind, iatt) = if plus || e.kind.is_none() {
                let st = match rustix::fs::statat(dir, os(&e.name), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(err) => return Err(err.into()),
                };
                (sys::kind_of(&st), plus.then(|| sys::iatt(gfid, &st)))
            } else {
                (e.kind.unwrap_or(FileKind::Regular), None)
            };
            let x = if plus {
                xattrs::read_wanted(XTarget::Path(&p), want)
            } else {
                XattrMap::new()
            };
            bytes += 64 + e.name.len() + if plus { 128 } else { 0 };
            bytes += x.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>();
            out.push(DirEntry {
                offset: i as u64 + 1,
                name,
                gfid,
                kind,
                iatt,
                xattrs: x,
            });
        }
        Ok(out)
    }
}

fn to_timespec(t: Option<SetTime>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(ts)) => rustix::fs::Timespec {
            tv_sec: ts.sec,
            tv_nsec: ts.nsec.min(999_999_999) as _,
        },
    }
}
