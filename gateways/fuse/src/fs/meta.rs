//! Inode metadata: getattr/setattr, extended attributes, POSIX and flock
//! locks.

use std::ffi::OsStr;

use fuser::{FileAttr, TimeOrNow};
use kiln_core::proto::{FileLock, LockCmd};
use kiln_core::{FsError, FsResult, SetAttr};

use super::reply::XattrOut;
use super::Inner;
use crate::convert::{file_attr, file_lock, set_time};

/// What a setattr request asks to change.
pub(crate) struct AttrChange {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<TimeOrNow>,
    pub(crate) mtime: Option<TimeOrNow>,
    /// The open file the change came through (ftruncate).
    pub(crate) fh: Option<u64>,
    /// Who asks (truncation by a non-root user clears set-ID bits).
    pub(crate) uid_of_caller: u32,
}

/// `perm` without the set-ID bits a write, truncate or chown clears: the
/// set-user-ID bit, and the set-group-ID bit when group-executable (without
/// it, the bit marks mandatory locking and stays).
pub(crate) fn killed_perm(perm: u32) -> u32 {
    let mut p = perm & !libc::S_ISUID;
    if perm & libc::S_IXGRP != 0 {
        p &= !libc::S_ISGID;
    }
    p
}

/// Answers a getxattr/listxattr: a size probe (`size == 0`), the value, or
/// ERANGE when the caller's buffer is too small.
fn xattr_out(value: Vec<u8>, size: u32) -> FsResult<XattrOut> {
    let len = u32::try_from(value.len()).map_err(|_| FsError::Range)?;
    if size == 0 {
        Ok(XattrOut::Size(len))
    } else if len > size {
        Err(FsError::Range)
    } else {
        Ok(XattrOut::Data(value))
    }
}

/// An xattr name as the stack takes it (Linux names are text).
fn xattr_name(os: &OsStr) -> FsResult<&str> {
    os.to_str().ok_or(FsError::NotSupported)
}

impl Inner {
    pub(crate) async fn getattr(&self, ino: u64) -> FsResult<FileAttr> {
        self.wb.drain(ino).await;
        if let Some(iatt) = self.inodes.fresh_attr(ino) {
            return Ok(file_attr(&iatt));
        }
        let gfid = self.inodes.gfid(ino)?;
        let iatt = self.vol.getattr(gfid).await?;
        self.inodes.update(&iatt, false);
        Ok(file_attr(&iatt))
    }

    pub(crate) async fn setattr(&self, ino: u64, c: AttrChange) -> FsResult<FileAttr> {
        let gfid = self.inodes.gfid(ino)?;
        self.wb.drain(ino).await;
        let mut set = SetAttr {
            mode: c.mode.map(|m| m & 0o7777),
            uid: c.uid,
            gid: c.gid,
            size: None,
            atime: c.atime.map(set_time),
            mtime: c.mtime.map(set_time),
        };
        let mut out = None;
        if let Some(size) = c.size {
            match c.fh {
                Some(fh) => {
                    let fd = self.handles.fd(fh)?;
                    out = Some(self.vol.ftruncate(&fd, size).await?);
                }
                None => set.size = Some(size),
            }
        }
        if set != SetAttr::default() {
            out = Some(self.vol.setattr(gfid, &set).await?);
        }
        let mut iatt = match out {
            Some(iatt) => iatt,
            None => self.vol.getattr(gfid).await?,
        };
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves these to us: chown
        // of a non-directory always clears set-ID bits; truncation does when
        // an unprivileged user asks.
        let chown = c.uid.is_some() || c.gid.is_some();
        let truncate = c.size.is_some() && c.uid_of_caller != 0;
        if c.mode.is_none() && (chown || truncate) {
            if let Some(i) = self.kill_privs(&iatt, false).await? {
                iatt = i;
            }
        }
        self.inodes.update(&iatt, true);
        Ok(file_attr(&iatt))
    }

    /// Clears set-ID bits of a regular file (or any non-directory when
    /// `files_only` is false) if the kernel left that to this side; returns
    /// the new attributes when something changed.
    pub(crate) async fn kill_privs(
        &self,
        iatt: &kiln_core::Iatt,
        files_only: bool,
    ) -> FsResult<Option<kiln_core::Iatt>> {
        use kiln_core::FileKind;
        if !self.killpriv.load(std::sync::atomic::Ordering::Relaxed)
            || iatt.kind == FileKind::Directory
            || (files_only && iatt.kind != FileKind::Regular)
        {
            return Ok(None);
        }
        let perm = killed_perm(iatt.perm);
        if perm == iatt.perm & 0o7777 {
            return Ok(None);
        }
        let set = SetAttr {
            mode: Some(perm),
            ..Default::default()
        };
        Ok(Some(self.vol.setattr(iatt.gfid, &set).await?))
    }

    pub(crate) async fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
    ) -> FsResult<()> {
        if position != 0 {
            return Err(FsError::InvalidArgument);
        }
        let gfid = self.inodes.gfid(ino)?;
        let r = self
            .vol
            .setxattr(gfid, xattr_name(name)?, value, flags)
            .await;
        self.inodes.xattrs_changed(ino);
        r
    }

    pub(crate) async fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrOut> {
        let gfid = self.inodes.gfid(ino)?;
        let name = xattr_name(name).map_err(|_| FsError::NoData)?;
        // The kernel probes this before the first write to every file; a
        // file this client just created has none.
        if name == "security.capability" && self.inodes.known_no_caps(ino) {
            return Err(FsError::NoData);
        }
        xattr_out(self.vol.getxattr(gfid, name).await?, size)
    }

    pub(crate) async fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrOut> {
        let gfid = self.inodes.gfid(ino)?;
        let names = self.vol.listxattr(gfid).await?;
        let mut list = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            list.extend_from_slice(n.as_bytes());
            list.push(0);
        }
        xattr_out(list, size)
    }

    pub(crate) async fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let gfid = self.inodes.gfid(ino)?;
        let name = xattr_name(name).map_err(|_| FsError::NoData)?;
        let r = self.vol.removexattr(gfid, name).await;
        self.inodes.xattrs_changed(ino);
        r
    }

    pub(crate) async fn getlk(
        &self,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> FsResult<FileLock> {
        let fd = self.handles.fd(fh)?;
        let lock = file_lock(start, end, typ, owner, pid)?;
        self.vol.lk(&fd, LockCmd::Get, lock).await
    }

    /// F_SETLK / F_SETLKW, and flock(2) (which the kernel sends as a
    /// whole-file lock owned by the open file). A waiting lock runs in its
    /// own task, so it holds no fuser thread while it waits.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
    ) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let fd = h.fd();
        let lock = file_lock(start, end, typ, owner, pid)?;
        if typ != libc::F_UNLCK {
            h.owners(|o| o.locked(owner));
            self.inodes.mark_locked(ino);
        }
        // Writes made under a lock land before it is released or changed.
        self.wb.drain(ino).await;
        let cmd = if sleep {
            LockCmd::SetWait
        } else {
            LockCmd::Set
        };
        self.vol.lk(fd, cmd, lock).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_bits_cleared() {
        assert_eq!(killed_perm(0o4755), 0o755);
        assert_eq!(killed_perm(0o6755), 0o755);
        assert_eq!(killed_perm(0o2745), 0o2745);
        assert_eq!(killed_perm(0o1777), 0o1777);
    }

    #[test]
    fn xattr_size_probe_and_range() {
        assert!(matches!(xattr_out(vec![1, 2, 3], 0), Ok(XattrOut::Size(3))));
        assert!(matches!(xattr_out(vec![1, 2, 3], 2), Err(FsError::Range)));
        assert!(matches!(xattr_out(vec![1, 2, 3], 3), Ok(XattrOut::Data(v)) if v == [1, 2, 3]));
    }
}
