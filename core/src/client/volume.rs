//! `Volume`: the top of a client graph, what every gateway uses. It names new
//! inodes (gfids), resolves paths, and forwards POSIX-shaped calls to the
//! translator stack.

use bytes::Bytes;
use std::sync::Arc;

use super::fd::Fd;
use super::xlator::{Caller, Lookup, Xlator};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::graph::{self, VolumeSpec};
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::name::Name;
use crate::proto::{DirEntry, FileLock, Loc, LockCmd, NewInode, XattrMap};
use crate::xattr_names;

/// A mounted volume: a client graph plus its spec.
pub struct Volume {
    spec: VolumeSpec,
    top: Arc<dyn Xlator>,
    client_id: String,
}

impl Volume {
    /// Builds the graph for `spec` and returns at once; bricks connect in the
    /// background (call `wait_connected` to wait for them).
    pub fn new(spec: VolumeSpec) -> Volume {
        let client_id = format!("{}-{}", spec.name, uuid::Uuid::new_v4());
        let top = graph::build(&spec, &client_id);
        Volume {
            spec,
            top,
            client_id,
        }
    }

    /// A volume over an already built translator (tests, nested graphs).
    pub fn with_top(spec: VolumeSpec, top: Arc<dyn Xlator>) -> Volume {
        Volume {
            spec,
            top,
            client_id: "local".into(),
        }
    }

    /// The spec the graph was built from.
    pub fn spec(&self) -> &VolumeSpec {
        &self.spec
    }

    /// This client's id as the bricks know it.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The top translator.
    pub fn xlator(&self) -> &Arc<dyn Xlator> {
        &self.top
    }

    /// Waits until the root directory can be looked up (all bricks that are
    /// up have answered), or `timeout` passes.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> FsResult<Iatt> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.top.lookup_gfid(Gfid::ROOT, &[]).await {
                Ok(l) => return Ok(l.iatt),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Resolves an absolute path inside the volume (`/` = root).
    pub async fn resolve_path(&self, path: &str) -> FsResult<Iatt> {
        let mut cur = self.top.lookup_gfid(Gfid::ROOT, &[]).await?.iatt;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err(FsError::InvalidArgument);
            }
            if !cur.is_dir() {
                return Err(FsError::NotDir);
            }
            let name = Name::new(comp)?;
            cur = self.lookup(cur.gfid, &name).await?.iatt;
        }
        Ok(cur)
    }

    /// Looks up `name` in `parent`.
    pub async fn lookup(&self, parent: Gfid, name: &Name) -> FsResult<Lookup> {
        check_visible(parent, name)?;
        self.top
            .lookup(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &[],
            )
            .await
    }

    /// Attributes by gfid (revalidates the inode).
    pub async fn getattr(&self, gfid: Gfid) -> FsResult<Iatt> {
        self.top.stat(gfid).await
    }

    /// Changes attributes.
    pub async fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        self.top.setattr(gfid, attr).await
    }

    /// Truncates through an open file.
    pub async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        self.top.ftruncate(fd, size).await
    }

    /// Creates and opens a regular file owned by `caller`.
    pub async fn create(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        mode: u32,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        check_visible(parent, name)?;
        self.top
            .create(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, mode & 0o7777),
                flags,
                exclusive,
            )
            .await
    }

    /// Creates a special file (`mode` includes S_IFMT).
    pub async fn mknod(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        mode: u32,
        rdev: u64,
    ) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.top
            .mknod(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, mode),
                rdev,
            )
            .await
    }

    /// Creates a directory.
    pub async fn mkdir(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        mode: u32,
    ) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.top
            .mkdir(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, mode & 0o7777),
            )
            .await
    }

    /// Creates a symlink.
    pub async fn symlink(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        target: &[u8],
    ) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.top
            .symlink(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, 0o777),
                target,
            )
            .await
    }

    /// Hard-links `gfid` as `name` in `parent`.
    pub async fn link(&self, gfid: Gfid, parent: Gfid, name: &Name) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.top
            .link(
                gfid,
                &Loc {
                    parent,
                    name: name.clone(),
                },
            )
            .await
    }

    /// Removes a non-directory.
    pub async fn unlink(&self, parent: Gfid, name: &Name) -> FsResult<()> {
        check_visible(parent, name)?;
        self.top
            .unlink(&Loc {
                parent,
                name: name.clone(),
            })
            .await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: Gfid, name: &Name) -> FsResult<()> {
        check_visible(parent, name)?;
        self.top
            .rmdir(&Loc {
                parent,
                name: name.clone(),
            })
            .await
    }

    /// Renames.
    pub async fn rename(
        &self,
        parent: Gfid,
        name: &Name,
        new_parent: Gfid,
        new_name: &Name,
    ) -> FsResult<()> {
        check_visible(parent, name)?;
        check_visible(new_parent, new_name)?;
        self.top
            .rename(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &Loc {
                    parent: new_parent,
                    name: new_name.clone(),
                },
            )
            .await
    }

    /// A symlink's target.
    pub async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        self.top.readlink(gfid).await
    }

    /// Opens a file.
    pub async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        self.top.open(gfid, flags).await
    }

    /// Reads.
    pub async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        self.top.read(fd, offset, size).await
    }

    /// Writes.
    pub async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)> {
        self.top.write(fd, offset, data).await
    }

    /// A close(2) of one descriptor.
    pub async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()> {
        self.top.flush(fd, lock_owner).await
    }

    /// fsync.
    pub async fn fsync(&self, fd: &Fd, datasync: bool) -> FsResult<()> {
        self.top.fsync(fd, datasync).await
    }

    /// Drops an open file or directory.
    pub async fn release(&self, fd: &Fd) -> FsResult<()> {
        self.top.release(fd).await
    }

    /// Opens a directory.
    pub async fn opendir(&self, gfid: Gfid) -> FsResult<Fd> {
        self.top.opendir(gfid).await
    }

    /// Reads directory entries after `offset` (0 = start); `.` and `..` are
    /// not included (gateways add them).
    pub async fn readdir(
        &self,
        fd: &Fd,
        offset: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let mut entries = self.top.readdir(fd, offset, max_entries, plus).await?;
        if fd.gfid.is_root() {
            entries.retain(|e| e.name.as_bytes() != b".kiln");
        }
        Ok(entries)
    }

    /// One xattr (internal `trusted.kiln.*` names are refused).
    pub async fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>> {
        check_xattr_name(name)?;
        self.top.getxattr(gfid, name).await
    }

    /// Xattr names (internal ones hidden).
    pub async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        let mut names = self.top.listxattr(gfid).await?;
        names.retain(|n| !xattr_names::is_internal(n));
        Ok(names)
    }

    /// Sets one xattr (internal names are refused).
    pub async fn setxattr(&self, gfid: Gfid, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        check_xattr_name(name)?;
        let mut map = XattrMap::new();
        map.insert(name.to_string(), value.to_vec());
        self.top.setxattr(gfid, &map, flags).await
    }

    /// Removes one xattr.
    pub async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        check_xattr_name(name)?;
        self.top.removexattr(gfid, name).await
    }

    /// Capacity.
    pub async fn statfs(&self) -> FsResult<Statvfs> {
        self.top.statfs().await
    }

    /// POSIX lock.
    pub async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock> {
        self.top.lk(fd, cmd, lock).await
    }

    /// fallocate(2).
    pub async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        self.top.fallocate(fd, mode, offset, len).await
    }
}

fn new_inode(caller: &Caller, mode: u32) -> NewInode {
    NewInode {
        gfid: Gfid::new_random(),
        mode,
        uid: caller.uid,
        gid: caller.gid,
        xattrs: XattrMap::new(),
    }
}

/// The brick's own `.kiln` directory is never visible in the volume root.
fn check_visible(parent: Gfid, name: &Name) -> FsResult<()> {
    if parent.is_root() && name.as_bytes() == b".kiln" {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

fn check_xattr_name(name: &str) -> FsResult<()> {
    if xattr_names::is_internal(name) {
        return Err(FsError::NotPermitted);
    }
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Range);
    }
    Ok(())
}
