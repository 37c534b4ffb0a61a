//! Name operations: lookup, create, mknod, mkdir, symlink, link, unlink,
//! rmdir, rename. Each new entry is counted in the inode table as one kernel
//! lookup.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::{FileAttr, RenameFlags};
use kiln_core::client::Caller;
use std::time::SystemTime;

use kiln_core::{FileKind, FsError, FsResult, Iatt, Name};

use super::reply::Opened;
use super::Inner;
use crate::convert::{file_attr, timespec};
use crate::handles::Handle;

/// Validates a name the kernel sent.
pub(crate) fn name(os: &OsStr) -> FsResult<Name> {
    Name::try_from(os)
}

impl Inner {
    /// Registers an inode handed to the kernel and returns its attributes.
    fn entry(&self, iatt: &Iatt, parent: u64, own: bool) -> FsResult<FileAttr> {
        if own {
            // The new entry changed the parent's times (and link count).
            let dirs = i32::from(iatt.kind == FileKind::Directory);
            self.inodes.touch_dir(parent, iatt.ctime, dirs);
        }
        self.inodes.remember(iatt, parent, own)?;
        Ok(file_attr(iatt))
    }

    /// New inodes in a set-group-ID directory take the directory's group
    /// (and new directories inherit the bit).
    fn owner_in(&self, parent: u64, mut who: Caller) -> (Caller, bool) {
        match self.inodes.last_attr(parent) {
            Some(p) if p.perm & libc::S_ISGID != 0 => {
                who.gid = p.gid;
                (who, true)
            }
            _ => (who, false),
        }
    }

    pub(crate) async fn lookup(&self, parent: u64, os: &OsStr) -> FsResult<FileAttr> {
        let pgfid = self.inodes.gfid(parent)?;
        let name = name(os)?;
        let mut l = self.vol.lookup(pgfid, &name).await?;
        if self.wb.busy(l.iatt.ino()) {
            // Its size is still growing: answer once the writes landed.
            self.wb.drain(l.iatt.ino()).await;
            l.iatt = self.vol.getattr(l.iatt.gfid).await?;
        }
        self.entry(&l.iatt, parent, false)
    }

    pub(crate) async fn create(
        &self,
        parent: u64,
        os: &OsStr,
        who: Caller,
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, Opened)> {
        let pgfid = self.inodes.gfid(parent)?;
        let name = name(os)?;
        let (who, _) = self.owner_in(parent, who);
        let exclusive = flags & libc::O_EXCL != 0;
        let (iatt, fd) = self
            .vol
            .create(pgfid, &name, &who, mode & 0o7777, flags, exclusive)
            .await?;
        let attr = match self.entry(&iatt, parent, true) {
            Ok(a) => {
                self.inodes.mark_no_caps(iatt.ino());
                a
            }
            Err(e) => {
                let _ = self.vol.release(&fd).await;
                return Err(e);
            }
        };
        let fh = self.handles.insert(Handle::file(fd));
        Ok((
            attr,
            Opened {
                fh,
                flags: self.open_flags_for(flags),
            },
        ))
    }

    pub(crate) async fn mknod(
        &self,
        parent: u64,
        os: &OsStr,
        who: Caller,
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let pgfid = self.inodes.gfid(parent)?;
        let name = name(os)?;
        let (who, _) = self.owner_in(parent, who);
        let iatt = self
            .vol
            .mknod(pgfid, &name, &who, mode, u64::from(rdev))
            .await?;
        self.entry(&iatt, parent, true)
    }

    pub(crate) async fn mkdir(
        &self,
        parent: u64,
        os: &OsStr,
        who: Caller,
        mode: u32,
    ) -> FsResult<FileAttr> {
        let pgfid = self.inodes.gfid(parent)?;
        let name = name(os)?;
        let (who, sgid) = self.owner_in(parent, who);
        let mode = if sgid { mode | libc::S_ISGID } else { mode };
        let iatt = self.vol.mkdir(pgfid, &name, &who, mode & 0o7777).await?;
        self.entry(&iatt, parent, true)
    }

    pub(crate) async fn symlink(
        &self,
        parent: u64,
        os: &OsStr,
        who: Caller,
        target: &Path,
    ) -> FsResult<FileAttr> {
        let pgfid = self.inodes.gfid(parent)?;
        let name = name(os)?;
        let (who, _) = self.owner_in(parent, who);
        let iatt = self
            .vol
            .symlink(pgfid, &name, &who, target.as_os_str().as_bytes())
            .await?;
        self.entry(&iatt, parent, true)
    }

    pub(crate) async fn link(&self, ino: u64, newparent: u64, os: &OsStr) -> FsResult<FileAttr> {
        let gfid = self.inodes.gfid(ino)?;
        let pgfid = self.inodes.gfid(newparent)?;
        let name = name(os)?;
        let iatt = self.vol.link(gfid, pgfid, &name).await?;
        self.entry(&iatt, newparent, true)
    }

    pub(crate) async fn unlink(&self, parent: u64, os: &OsStr, dir: bool) -> FsResult<()> {
        let pgfid = self.inodes.gfid(parent)?;
        let name = name(os)?;
        let r = if dir {
            self.vol.rmdir(pgfid, &name).await
        } else {
            self.vol.unlink(pgfid, &name).await
        };
        // The removed inode's link count changed, and it is not known here
        // which inode that was.
        self.inodes.invalidate_all();
        if r.is_ok() {
            self.inodes.touch_dir(
                parent,
                timespec(SystemTime::now()),
                if dir { -1 } else { 0 },
            );
        } else {
            self.inodes.invalidate(parent);
        }
        r
    }

    pub(crate) async fn rename(
        &self,
        parent: u64,
        os: &OsStr,
        newparent: u64,
        newos: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT)
            || !(flags - RenameFlags::RENAME_NOREPLACE).is_empty()
        {
            return Err(FsError::InvalidArgument);
        }
        let pgfid = self.inodes.gfid(parent)?;
        let npgfid = self.inodes.gfid(newparent)?;
        let old = name(os)?;
        let newname = name(newos)?;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            match self.vol.lookup(npgfid, &newname).await {
                Ok(_) => return Err(FsError::Exists),
                Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let r = self.vol.rename(pgfid, &old, npgfid, &newname).await;
        self.inodes.invalidate_all();
        self.inodes.invalidate(parent);
        self.inodes.invalidate(newparent);
        r
    }
}
