//! DHT: places each file on one subvolume by the hash of its name, using
//! per-directory layouts stored in xattrs (`layout`); directories live on all
//! subvolumes (`dirs`); renames leave data in place behind link files
//! (`entries`).

mod dirs;
mod entries;
pub mod layout;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use super::fd::Fd;
use super::xlator::{Lookup, Xlator};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{FileKind, Iatt, SetAttr, Statvfs};
use crate::name::Name;
use crate::proto::{
    DirEntry, EntryLk, FileLock, InodeLk, Loc, LockCmd, NewInode, XattrMap, XattropOp,
};
use crate::xattr_names::{DHT_LAYOUT, DHT_LINKTO};
use layout::Layout;

/// Upper bound on cached file locations before the cache is reset.
const MAX_CACHED: usize = 1 << 20;

/// The distribute translator.
pub struct Distribute {
    name: String,
    children: Vec<Arc<dyn Xlator>>,
    /// Layouts of directories seen so far.
    layouts: Mutex<HashMap<Gfid, Arc<Layout>>>,
    /// The subvolume holding each regular file (or symlink, device...) seen.
    located: Mutex<HashMap<Gfid, usize>>,
}

/// What an `Fd` of a file holds at the DHT level.
struct FileFd {
    subvol: usize,
    child: Fd,
}

/// What an `Fd` of a directory holds: one child fd per reachable subvolume.
struct DirFd {
    children: Vec<Option<Fd>>,
    /// The subvolume whose copy lists the subdirectories.
    dirs_from: usize,
}

/// True when an inode is a DHT link file (a pointer to the subvolume that
/// really holds the data): zero-size, mode 01000, with a linkto xattr.
pub(crate) fn is_linkfile(iatt: &Iatt, xattrs: &XattrMap) -> bool {
    iatt.kind == FileKind::Regular
        && iatt.perm & 0o7777 == 0o1000
        && iatt.size == 0
        && xattrs.contains_key(DHT_LINKTO)
}

impl Distribute {
    /// DHT over `children` (in subvolume order).
    pub fn new(name: String, children: Vec<Arc<dyn Xlator>>) -> Distribute {
        Distribute {
            name,
            children,
            layouts: Mutex::new(HashMap::new()),
            located: Mutex::new(HashMap::new()),
        }
    }

    fn n(&self) -> usize {
        self.children.len()
    }

    fn child_index(&self, subvol_name: &[u8]) -> Option<usize> {
        self.children
            .iter()
            .position(|c| c.name().as_bytes() == subvol_name)
    }

    fn remember_file(&self, gfid: Gfid, subvol: usize) {
        let mut m = self.located.lock();
        if m.len() >= MAX_CACHED {
            m.clear();
        }
        m.insert(gfid, subvol);
    }

    fn forget_file(&self, gfid: &Gfid) {
        self.located.lock().remove(gfid);
    }

    fn file_fd<'a>(&self, fd: &'a Fd) -> FsResult<&'a FileFd> {
        fd.state::<FileFd>().ok_or(FsError::BadFd)
    }

    /// Where an inode lives: `Ok(None)` for a directory (on every subvolume),
    /// `Ok(Some(i))` for anything else.
    async fn locate(&self, gfid: Gfid) -> FsResult<Option<usize>> {
        if gfid.is_root() || self.layouts.lock().contains_key(&gfid) {
            return Ok(None);
        }
        if let Some(i) = self.located.lock().get(&gfid) {
            return Ok(Some(*i));
        }
        let xattrs = [DHT_LINKTO.to_string()];
        let results = join_all(self.children.iter().map(|c| c.lookup_gfid(gfid, &xattrs))).await;
        let mut disconnected = None;
        let mut found_dir = false;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(l) if l.iatt.is_dir() => found_dir = true,
                Ok(l) if !is_linkfile(&l.iatt, &l.xattrs) => {
                    self.remember_file(gfid, i);
                    return Ok(Some(i));
                }
                Ok(_) | Err(FsError::NotFound) | Err(FsError::Stale) => {}
                Err(e) if e.is_disconnect() => disconnected = Some(e),
                Err(e) => return Err(e),
            }
        }
        if found_dir {
            self.layout_of(gfid).await?;
            return Ok(None);
        }
        Err(disconnected.unwrap_or(FsError::Stale))
    }

    /// Runs `op` on the subvolume holding a non-directory, or returns `None`
    /// for a directory.
    async fn file_subvol(&self, gfid: Gfid) -> FsResult<Option<&Arc<dyn Xlator>>> {
        Ok(self.locate(gfid).await?.map(|i| &self.children[i]))
    }

    /// The first subvolume that is up (directories are read from it).
    fn first_up(&self) -> usize {
        self.children.iter().position(|c| c.is_up()).unwrap_or(0)
    }

    /// Runs a directory-wide modification on every subvolume; succeeds if it
    /// succeeded everywhere it could run and at least once.
    async fn on_all_dirs<T, F, Fut>(&self, f: F) -> FsResult<T>
    where
        F: Fn(Arc<dyn Xlator>) -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        if let Some(down) = self.children.iter().find(|c| !c.is_up()) {
            return Err(FsError::NotConnected(down.name().to_string()));
        }
        let results = join_all(self.children.iter().map(|c| f(c.clone()))).await;
        let mut first = None;
        for r in results {
            match r {
                Ok(v) => {
                    if first.is_none() {
                        first = Some(v)
                    }
                }
                Err(e) => return Err(e),
            }
        }
        first.ok_or_else(|| FsError::NotConnected(self.name.clone()))
    }
}

#[async_trait]
impl Xlator for Distribute {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_up(&self) -> bool {
        self.children.iter().any(|c| c.is_up())
    }

    async fn lookup(&self, loc: &Loc, _xattrs: &[String]) -> FsResult<Lookup> {
        self.named_lookup(loc).await
    }

    async fn lookup_gfid(&self, gfid: Gfid, _xattrs: &[String]) -> FsResult<Lookup> {
        match self.locate(gfid).await? {
            Some(i) => self.children[i].lookup_gfid(gfid, &[]).await,
            None => {
                let iatt = self.children[self.first_up()].stat(gfid).await?;
                Ok(Lookup {
                    iatt,
                    xattrs: XattrMap::new(),
                })
            }
        }
    }

    async fn stat(&self, gfid: Gfid) -> FsResult<Iatt> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.stat(gfid).await,
            None => self.children[self.first_up()].stat(gfid).await,
        }
    }

    async fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.setattr(gfid, attr).await,
            None => {
                self.on_all_dirs(|c| async move { c.setattr(gfid, attr).await })
                    .await
            }
        }
    }

    async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        let f = self.file_fd(fd)?;
        self.children[f.subvol].ftruncate(&f.child, size).await
    }

    async fn create(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        let i = self.hashed_subvol(loc).await?;
        let (iatt, child) = self.children[i]
            .create(loc, inode, flags, exclusive)
            .await?;
        self.remember_file(iatt.gfid, i);
        let fd = Fd::new(iatt.gfid, flags, FileFd { subvol: i, child });
        Ok((iatt, fd))
    }

    async fn mknod(&self, loc: &Loc, inode: &NewInode, rdev: u64) -> FsResult<Iatt> {
        let i = self.hashed_subvol(loc).await?;
        let iatt = self.children[i].mknod(loc, inode, rdev).await?;
        self.remember_file(iatt.gfid, i);
        Ok(iatt)
    }

    async fn mkdir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt> {
        self.make_dir(loc, inode).await
    }

    async fn symlink(&self, loc: &Loc, inode: &NewInode, target: &[u8]) -> FsResult<Iatt> {
        let i = self.hashed_subvol(loc).await?;
        let iatt = self.children[i].symlink(loc, inode, target).await?;
        self.remember_file(iatt.gfid, i);
        Ok(iatt)
    }

    async fn link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        self.hard_link(gfid, loc).await
    }

    async fn unlink(&self, loc: &Loc) -> FsResult<()> {
        self.remove_file(loc).await
    }

    async fn rmdir(&self, loc: &Loc) -> FsResult<()> {
        self.remove_dir(loc).await
    }

    async fn rename(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        self.rename_entry(from, to).await
    }

    async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.readlink(gfid).await,
            None => Err(FsError::InvalidArgument),
        }
    }

    async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        match self.locate(gfid).await? {
            Some(i) => {
                let child = self.children[i].open(gfid, flags).await?;
                Ok(Fd::new(gfid, flags, FileFd { subvol: i, child }))
            }
            None => Err(FsError::IsDir),
        }
    }

    async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        let f = self.file_fd(fd)?;
        self.children[f.subvol].read(&f.child, offset, size).await
    }

    async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)> {
        let f = self.file_fd(fd)?;
        self.children[f.subvol].write(&f.child, offset, data).await
    }

    async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()> {
        match fd.state::<FileFd>() {
            Some(f) => self.children[f.subvol].flush(&f.child, lock_owner).await,
            None => Ok(()),
        }
    }

    async fn fsync(&self, fd: &Fd, datasync: bool) -> FsResult<()> {
        if let Some(f) = fd.state::<FileFd>() {
            return self.children[f.subvol].fsync(&f.child, datasync).await;
        }
        // A directory: every subvolume's copy (replicate ends its entry
        // hold there).
        if let Some(d) = fd.state::<DirFd>() {
            let jobs = d
                .children
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| self.children[i].fsync(c, datasync)));
            join_all(jobs).await;
        }
        Ok(())
    }

    async fn release(&self, fd: &Fd) -> FsResult<()> {
        if let Some(f) = fd.state::<FileFd>() {
            return self.children[f.subvol].release(&f.child).await;
        }
        if let Some(d) = fd.state::<DirFd>() {
            let jobs = d
                .children
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| self.children[i].release(c)));
            join_all(jobs).await;
            return Ok(());
        }
        Err(FsError::BadFd)
    }

    async fn opendir(&self, gfid: Gfid) -> FsResult<Fd> {
        self.open_dir(gfid).await
    }

    async fn release_eager_locks(&self) {
        join_all(self.children.iter().map(|c| c.release_eager_locks())).await;
    }

    async fn readdir(
        &self,
        fd: &Fd,
        offset: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        self.read_dir(fd, offset, max_entries, plus).await
    }

    async fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.getxattr(gfid, name).await,
            None => self.children[self.first_up()].getxattr(gfid, name).await,
        }
    }

    async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.listxattr(gfid).await,
            None => self.children[self.first_up()].listxattr(gfid).await,
        }
    }

    async fn setxattr(&self, gfid: Gfid, xattrs: &XattrMap, flags: i32) -> FsResult<()> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.setxattr(gfid, xattrs, flags).await,
            None => {
                self.on_all_dirs(|c| async move { c.setxattr(gfid, xattrs, flags).await })
                    .await
            }
        }
    }

    async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.removexattr(gfid, name).await,
            None => {
                self.on_all_dirs(|c| async move { c.removexattr(gfid, name).await })
                    .await
            }
        }
    }

    async fn statfs(&self) -> FsResult<Statvfs> {
        let results = join_all(self.children.iter().map(|c| c.statfs())).await;
        let mut total: Option<Statvfs> = None;
        let mut last_err = None;
        for r in results {
            match r {
                Ok(s) => {
                    let t = total.get_or_insert(Statvfs {
                        bsize: s.bsize,
                        frsize: s.frsize,
                        namemax: s.namemax,
                        ..Default::default()
                    });
                    // Express every brick's blocks in the first brick's unit.
                    let scale = |b: u64| {
                        if t.frsize == 0 {
                            b
                        } else {
                            b.saturating_mul(s.frsize) / t.frsize
                        }
                    };
                    t.blocks += scale(s.blocks);
                    t.bfree += scale(s.bfree);
                    t.bavail += scale(s.bavail);
                    t.files += s.files;
                    t.ffree += s.ffree;
                    t.namemax = t.namemax.min(s.namemax);
                }
                Err(e) => last_err = Some(e),
            }
        }
        total.ok_or_else(|| last_err.unwrap_or(FsError::NotConnected(self.name.clone())))
    }

    async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock> {
        let f = self.file_fd(fd)?;
        self.children[f.subvol].lk(&f.child, cmd, lock).await
    }

    async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        let f = self.file_fd(fd)?;
        self.children[f.subvol]
            .fallocate(&f.child, mode, offset, len)
            .await
    }

    // Internal operations go where the inode lives (a directory: everywhere).

    async fn inodelk(&self, gfid: Gfid, lock: &InodeLk) -> FsResult<()> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.inodelk(gfid, lock).await,
            None => {
                self.on_all_dirs(|c| async move { c.inodelk(gfid, lock).await })
                    .await
            }
        }
    }

    async fn entrylk(&self, parent: Gfid, name: Option<&Name>, lock: &EntryLk) -> FsResult<()> {
        match name {
            Some(n) => {
                let i = self
                    .hashed_subvol(&Loc {
                        parent,
                        name: n.clone(),
                    })
                    .await?;
                self.children[i].entrylk(parent, name, lock).await
            }
            None => {
                self.on_all_dirs(|c| async move { c.entrylk(parent, None, lock).await })
                    .await
            }
        }
    }

    async fn xattrop(&self, gfid: Gfid, op: XattropOp, xattrs: &XattrMap) -> FsResult<XattrMap> {
        match self.file_subvol(gfid).await? {
            Some(c) => c.xattrop(gfid, op, xattrs).await,
            None => {
                self.on_all_dirs(|c| async move { c.xattrop(gfid, op, xattrs).await })
                    .await
            }
        }
    }
}

/// The xattrs DHT asks for on every lookup.
fn dht_xattrs() -> [String; 2] {
    [DHT_LAYOUT.to_string(), DHT_LINKTO.to_string()]
}
