//! The translator seam: one async method per file operation. Each translator
//! holds its children and is itself a child of the one above; adding a
//! feature (replicate, quota, io-stats) is adding a translator.

use async_trait::async_trait;
use bytes::Bytes;

use super::fd::Fd;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::name::Name;
use crate::proto::{
    DirEntry, EntryLk, FileLock, InodeLk, Loc, LockCmd, NewInode, XattrMap, XattropOp,
};

/// Who asks: the credentials a gateway got from its client. New inodes are
/// owned by `uid`/`gid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id (for lock reporting).
    pub pid: u32,
}

impl Caller {
    /// The superuser.
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// The result of a lookup: the inode's attributes and requested xattrs.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Attributes.
    pub iatt: Iatt,
    /// Internal xattrs asked for by a translator (e.g. layout, linkto).
    pub xattrs: XattrMap,
}

/// A translator: one layer of the client stack.
#[async_trait]
pub trait Xlator: Send + Sync {
    /// This translator's name in the graph (e.g. `vol1-dht`, `vol1-client-0`).
    fn name(&self) -> &str;

    /// False when this translator knows it cannot reach its brick(s) right now
    /// (used to skip or refuse operations without waiting for a timeout).
    fn is_up(&self) -> bool {
        true
    }

    /// Finds `loc`; the reply carries the asked `xattrs` when present.
    async fn lookup(&self, loc: &Loc, xattrs: &[String]) -> FsResult<Lookup>;
    /// Finds an inode by gfid alone (NFS handles, FUSE inode revalidation).
    async fn lookup_gfid(&self, gfid: Gfid, xattrs: &[String]) -> FsResult<Lookup>;
    /// Attributes of an inode.
    async fn stat(&self, gfid: Gfid) -> FsResult<Iatt>;
    /// Changes attributes (chmod, chown, truncate, utimens); returns the new ones.
    async fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt>;
    /// Truncates through an open fd.
    async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt>;
    /// Creates and opens a regular file (`inode.mode`: permission bits).
    async fn create(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)>;
    /// Creates a special or regular file (`inode.mode` includes the S_IFMT bits).
    async fn mknod(&self, loc: &Loc, inode: &NewInode, rdev: u64) -> FsResult<Iatt>;
    /// Creates a directory.
    async fn mkdir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt>;
    /// Creates a symlink.
    async fn symlink(&self, loc: &Loc, inode: &NewInode, target: &[u8]) -> FsResult<Iatt>;
    /// Makes a hard link to `gfid` at `loc`.
    async fn link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt>;
    /// Removes a non-directory.
    async fn unlink(&self, loc: &Loc) -> FsResult<()>;
    /// Removes an empty directory.
    async fn rmdir(&self, loc: &Loc) -> FsResult<()>;
    /// Renames `from` to `to` (replacing `to` as rename(2) does).
    async fn rename(&self, from: &Loc, to: &Loc) -> FsResult<()>;
    /// A symlink's target.
    async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>>;
    /// Opens a file.
    async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd>;
    /// Reads up to `size` bytes; fewer at end of file.
    async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes>;
    /// Writes; returns the count written and the attributes afterwards.
    async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)>;
    /// A close(2) of one descriptor (releases that owner's POSIX locks).
    async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()>;
    /// fsync / fdatasync.
    async fn fsync(&self, fd: &Fd, datasync: bool) -> FsResult<()>;
    /// The last reference to an open file or directory is gone.
    async fn release(&self, fd: &Fd) -> FsResult<()>;
    /// Opens a directory for reading.
    async fn opendir(&self, gfid: Gfid) -> FsResult<Fd>;
    /// Entries after `offset` (0 = start); an empty vec is end of directory.
    async fn readdir(
        &self,
        fd: &Fd,
        offset: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>>;
    /// One extended attribute.
    async fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>>;
    /// Extended attribute names.
    async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>>;
    /// Sets extended attributes (setxattr(2) flags).
    async fn setxattr(&self, gfid: Gfid, xattrs: &XattrMap, flags: i32) -> FsResult<()>;
    /// Removes one extended attribute.
    async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()>;
    /// Capacity of the volume (DHT sums its subvolumes).
    async fn statfs(&self) -> FsResult<Statvfs>;
    /// POSIX byte-range lock on an open file.
    async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock>;
    /// fallocate(2).
    async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()>;

    /// Lets go of every lock this client holds eagerly (replicate's held
    /// locks and delayed post-ops): for a client about to go away, so the
    /// copies are left clean and unlocked at once.
    async fn release_eager_locks(&self) {}

    // ---- Internal operations (translators only, never gateways) ----

    /// Internal lock on a byte range of `gfid` (replicate's transactions),
    /// apart from POSIX locks; `SetWait` returns once granted.
    async fn inodelk(&self, _gfid: Gfid, _lock: &InodeLk) -> FsResult<()> {
        Err(FsError::NotSupported)
    }
    /// Internal lock on `name` in directory `parent` (`None`: the whole
    /// directory).
    async fn entrylk(&self, _parent: Gfid, _name: Option<&Name>, _lock: &EntryLk) -> FsResult<()> {
        Err(FsError::NotSupported)
    }
    /// Atomic arithmetic on `gfid`'s xattrs; returns the new values.
    async fn xattrop(&self, _gfid: Gfid, _op: XattropOp, _xattrs: &XattrMap) -> FsResult<XattrMap> {
        Err(FsError::NotSupported)
    }
    /// A brick's pending-heal index: gfids after `after`, in order, at most
    /// `max` (protocol clients only).
    async fn index_list(&self, _after: Option<Gfid>, _max: u32) -> FsResult<Vec<Gfid>> {
        Err(FsError::NotSupported)
    }
    /// Checksums of the `block`-byte blocks of an open file from `offset`
    /// for `len` bytes, computed where the file is (protocol clients only):
    /// the file's size and one xxh3-128 per block (`[low, high]`).
    async fn checksum(
        &self,
        _fd: &Fd,
        _offset: u64,
        _len: u64,
        _block: u32,
    ) -> FsResult<(u64, Vec<[u64; 2]>)> {
        Err(FsError::NotSupported)
    }
}

/// Builds a `Loc` from a parent gfid and a name.
pub fn loc(parent: Gfid, name: &Name) -> Loc {
    Loc {
        parent,
        name: name.clone(),
    }
}
