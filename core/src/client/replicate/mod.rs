//! Replicate (AFR-style): every copy of a file on each child of a replica
//! set. Modifications run as transactions on all children under internal
//! locks with the pending changelog (`transaction`, `changelog`), so a
//! child that misses one is accused by the others; reads go to one child
//! that nobody accuses; lookups compare the copies and heal what is behind
//! (`inspect`, `heal`, `heal_entry`). Client quorum refuses modifications
//! (EROFS) when too few children are reachable.
//!
//! Data operations through an open file hold the inode's lock eagerly and
//! delay the post-op (`eager`); large files heal by block checksums
//! (`heal_data`).

mod changelog;
mod eager;
mod entry_fops;
mod fops;
mod heal;
mod heal_data;
mod heal_entry;
mod inspect;
mod shd_ops;
mod transaction;

pub use shd_ops::{CrawlCounts, Examined, HealOutcome, SplitBrainPolicy};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::fd::Fd;
use super::xlator::{Lookup, Xlator};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::proto::{DirEntry, FileLock, Loc, LockCmd, NewInode, XattrMap};
use crate::xattr_names::AFR_PREFIX;
use changelog::Slot;
pub use heal_data::DataHealStats;

/// Most inodes whose health is remembered before the cache is reset.
const MAX_CACHED: usize = 1 << 18;
/// Most children of one replica set (health is kept as bit masks).
pub const MAX_REPLICA: usize = 64;

/// Client quorum: how many children must be reachable for a modification
/// (`cluster.quorum-type`, `cluster.quorum-count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// Any one child will do.
    None,
    /// More than half of the set; exactly half if the first child is among
    /// them.
    Auto,
    /// At least this many children.
    Fixed(usize),
}

impl Quorum {
    /// Reads the volume options for a set of `n` children: `quorum-type`
    /// defaults to `auto` for 3 or more children, `none` below.
    pub fn from_options(kind: Option<&str>, count: Option<&str>, n: usize) -> Quorum {
        match kind {
            Some("none") => Quorum::None,
            Some("auto") => Quorum::Auto,
            Some("fixed") => match count.and_then(|c| c.parse::<usize>().ok()) {
                Some(c) if c >= 1 => Quorum::Fixed(c.min(n.max(1))),
                _ => Quorum::Auto,
            },
            _ if n >= 3 => Quorum::Auto,
            _ => Quorum::None,
        }
    }

    /// True if the children `up` (indices into a set of `n`) make quorum.
    pub fn met(&self, up: &[usize], n: usize) -> bool {
        match self {
            Quorum::None => !up.is_empty(),
            Quorum::Fixed(c) => up.len() >= *c,
            Quorum::Auto => up.len() * 2 > n || (up.len() * 2 == n && up.contains(&0)),
        }
    }
}

/// Which children hold a stale copy of an inode, per changelog slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Health {
    stale: [u64; 3],
}

impl Health {
    fn is_stale(&self, child: usize, slot: Slot) -> bool {
        self.stale[slot as usize] & (1 << child) != 0
    }
}

/// An open file: one child fd per child it could be opened on (opened
/// later on children that come back).
struct FileFd {
    children: Mutex<Vec<Option<Fd>>>,
    /// When a late open may be tried again on each child (after a failure).
    retry: Mutex<Vec<Option<std::time::Instant>>>,
}

impl FileFd {
    fn new(children: Vec<Option<Fd>>) -> FileFd {
        let n = children.len();
        FileFd {
            children: Mutex::new(children),
            retry: Mutex::new(vec![None; n]),
        }
    }
}

/// An open directory: child fds, and the child a listing reads from
/// (offsets belong to one child).
struct DirFd {
    children: Vec<Option<Fd>>,
    reading: Mutex<Option<usize>>,
}

/// The replicate translator over the children of one replica set.
pub struct Replicate {
    name: String,
    children: Vec<Arc<dyn Xlator>>,
    /// `trusted.kiln.afr.<child name>` for each child.
    keys: Vec<String>,
    quorum: Quorum,
    /// Lock owners: one per transaction or heal.
    owners: AtomicU64,
    health: Mutex<HashMap<Gfid, Health>>,
    /// What data heals did.
    heal_counters: heal_data::HealCounters,
    /// Eager data locks held by this client, by inode.
    eager: Arc<eager::EagerTable>,
    /// Whether data operations through an open file hold locks eagerly
    /// (`cluster.eager-lock`, on by default).
    eager_on: bool,
}

impl Replicate {
    /// Replicate named `name` (`<vol>-replicate-<k>`, also its lock domain)
    /// over `children` (at most `MAX_REPLICA`; extra ones are ignored).
    pub fn new(name: String, mut children: Vec<Arc<dyn Xlator>>, quorum: Quorum) -> Replicate {
        if children.len() > MAX_REPLICA {
            tracing::error!(%name, "a replica set has at most {MAX_REPLICA} children; ignoring the rest");
            children.truncate(MAX_REPLICA);
        }
        let keys: Vec<String> = children
            .iter()
            .map(|c| format!("{AFR_PREFIX}{}", c.name()))
            .collect();
        let eager = Arc::new(eager::EagerTable::new(
            name.clone(),
            children.clone(),
            keys.clone(),
        ));
        Replicate {
            name,
            children,
            keys,
            quorum,
            owners: AtomicU64::new(rand::random::<u64>() >> 1),
            health: Mutex::new(HashMap::new()),
            heal_counters: Default::default(),
            eager,
            eager_on: true,
        }
    }

    /// Turns eager locking / delayed post-op on or off (`cluster.eager-lock`:
    /// `off`, `no`, `false`, `disable` or `0` turn it off).
    pub fn with_eager_lock(mut self, option: Option<&str>) -> Replicate {
        self.eager_on = !option.is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "off" | "no" | "false" | "disable" | "0"
            )
        });
        self
    }

    /// The changelog xattr names, one per child (for tests and tools).
    pub fn pending_keys(&self) -> &[String] {
        &self.keys
    }

    fn n(&self) -> usize {
        self.children.len()
    }

    /// Children that are (believed) reachable.
    fn up(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|i| self.children[*i].is_up())
            .collect()
    }

    fn new_owner(&self) -> u64 {
        self.owners.fetch_add(1, Ordering::Relaxed)
    }

    fn cached_health(&self, gfid: Gfid) -> Option<Health> {
        self.health.lock().get(&gfid).copied()
    }

    fn set_health(&self, gfid: Gfid, h: Health) {
        let mut m = self.health.lock();
        if m.len() >= MAX_CACHED {
            m.clear();
        }
        m.insert(gfid, h);
    }

    /// Records that `children` missed a change of `gfid` in `slots`.
    fn mark_stale(&self, gfid: Gfid, slots: &[Slot], children: &[usize]) {
        if children.is_empty() {
            return;
        }
        let mut h = self.cached_health(gfid).unwrap_or_default();
        for s in slots {
            for c in children {
                h.stale[*s as usize] |= 1 << c;
            }
        }
        self.set_health(gfid, h);
    }

    fn forget(&self, gfid: Gfid) {
        self.health.lock().remove(&gfid);
    }

    /// The order to try children in when reading `gfid` for `slots`: up,
    /// not stale, starting at a child chosen by the gfid's hash (so reads
    /// of different files spread over the set, and each file's pages stay
    /// in one brick's cache).
    fn read_order(&self, gfid: Gfid, h: Health, slots: &[Slot]) -> Vec<usize> {
        let n = self.n();
        let start = (xxhash_rust::xxh32::xxh32(&gfid.0, 0) as usize) % n.max(1);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| self.children[*i].is_up())
            .filter(|i| !slots.iter().any(|s| h.is_stale(*i, *s)))
            .collect()
    }

    /// Children to read `gfid` from, best first; asks every child (and
    /// heals) when its health is not known yet.
    async fn readable(&self, gfid: Gfid, slots: &[Slot]) -> FsResult<Vec<usize>> {
        let h = match self.cached_health(gfid) {
            Some(h) => h,
            None => {
                self.inspect_gfid(gfid, &[]).await?;
                self.cached_health(gfid).unwrap_or_default()
            }
        };
        let order = self.read_order(gfid, h, slots);
        if order.is_empty() {
            return Err(FsError::NotConnected(format!(
                "{}: no child with a good copy of {gfid} is up",
                self.name
            )));
        }
        Ok(order)
    }

    /// Runs a read-only `op` on the first readable child, falling back to
    /// the next one when a child is unreachable.
    async fn read_from<T, F, Fut>(&self, gfid: Gfid, slots: &[Slot], op: F) -> FsResult<T>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        let mut last = None;
        for i in self.readable(gfid, slots).await? {
            match op(i).await {
                Err(e) if e.is_disconnect() => last = Some(e),
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| FsError::NotConnected(self.name.clone())))
    }
}

#[async_trait]
impl Xlator for Replicate {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_up(&self) -> bool {
        self.children.iter().any(|c| c.is_up())
    }

    async fn lookup(&self, loc: &Loc, xattrs: &[String]) -> FsResult<Lookup> {
        self.named_lookup(loc, xattrs).await
    }

    async fn lookup_gfid(&self, gfid: Gfid, xattrs: &[String]) -> FsResult<Lookup> {
        self.inspect_gfid(gfid, xattrs).await
    }

    async fn stat(&self, gfid: Gfid) -> FsResult<Iatt> {
        self.read_from(gfid, &[Slot::Data, Slot::Metadata], |i| {
            self.children[i].stat(gfid)
        })
        .await
    }

    async fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        self.set_attr(gfid, attr).await
    }

    async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        self.truncate_fd(fd, size).await
    }

    async fn create(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        self.create_file(loc, inode, flags, exclusive).await
    }

    async fn mknod(&self, loc: &Loc, inode: &NewInode, rdev: u64) -> FsResult<Iatt> {
        self.new_entry(
            loc,
            inode,
            |c| async move { c.mknod(loc, inode, rdev).await },
        )
        .await
    }

    async fn mkdir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt> {
        self.new_entry(loc, inode, |c| async move { c.mkdir(loc, inode).await })
            .await
    }

    async fn symlink(&self, loc: &Loc, inode: &NewInode, target: &[u8]) -> FsResult<Iatt> {
        self.new_entry(loc, inode, |c| async move {
            c.symlink(loc, inode, target).await
        })
        .await
    }

    async fn link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        self.hard_link(gfid, loc).await
    }

    async fn unlink(&self, loc: &Loc) -> FsResult<()> {
        self.remove(loc, false).await
    }

    async fn rmdir(&self, loc: &Loc) -> FsResult<()> {
        self.remove(loc, true).await
    }

    async fn rename(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        self.rename_entry(from, to).await
    }

    async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        self.read_from(gfid, &[Slot::Data, Slot::Metadata], |i| {
            self.children[i].readlink(gfid)
        })
        .await
    }

    async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        self.open_file(gfid, flags).await
    }

    async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        self.read_fd(fd, offset, size).await
    }

    async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)> {
        self.write_fd(fd, offset, data).await
    }

    async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()> {
        self.on_fds(fd, |c, f| async move { c.flush(&f, lock_owner).await })
            .await
    }

    async fn fsync(&self, fd: &Fd, datasync: bool) -> FsResult<()> {
        self.on_fds(fd, |c, f| async move { c.fsync(&f, datasync).await })
            .await
    }

    async fn release(&self, fd: &Fd) -> FsResult<()> {
        self.release_fd(fd).await
    }

    async fn opendir(&self, gfid: Gfid) -> FsResult<Fd> {
        self.open_dir(gfid).await
    }

    async fn release_eager_locks(&self) {
        self.eager.release_all().await;
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
        self.read_from(gfid, &[Slot::Metadata], |i| {
            self.children[i].getxattr(gfid, name)
        })
        .await
    }

    async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        let mut names = self
            .read_from(gfid, &[Slot::Metadata], |i| {
                self.children[i].listxattr(gfid)
            })
            .await?;
        names.retain(|n| !n.starts_with(AFR_PREFIX));
        Ok(names)
    }

    async fn setxattr(&self, gfid: Gfid, xattrs: &XattrMap, flags: i32) -> FsResult<()> {
        let spec = self.meta_txn(gfid);
        self.transact(&spec, self.up(), |c| {
            let child = self.children[c].clone();
            async move { child.setxattr(gfid, xattrs, flags).await }
        })
        .await
        .map(|_| ())
    }

    async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        let spec = self.meta_txn(gfid);
        self.transact(&spec, self.up(), |c| {
            let child = self.children[c].clone();
            async move { child.removexattr(gfid, name).await }
        })
        .await
        .map(|_| ())
    }

    async fn statfs(&self) -> FsResult<Statvfs> {
        self.stat_fs().await
    }

    async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock> {
        self.posix_lock(fd, cmd, lock).await
    }

    async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        self.allocate(fd, mode, offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_rules() {
        assert_eq!(Quorum::from_options(None, None, 2), Quorum::None);
        assert_eq!(Quorum::from_options(None, None, 3), Quorum::Auto);
        assert_eq!(Quorum::from_options(Some("none"), None, 3), Quorum::None);
        assert_eq!(
            Quorum::from_options(Some("fixed"), Some("2"), 3),
            Quorum::Fixed(2)
        );
        assert_eq!(
            Quorum::from_options(Some("fixed"), Some("9"), 3),
            Quorum::Fixed(3)
        );
        assert_eq!(Quorum::from_options(Some("fixed"), None, 3), Quorum::Auto);
        // Auto: more than half; exactly half only with the first child.
        assert!(Quorum::Auto.met(&[0, 2], 3));
        assert!(!Quorum::Auto.met(&[2], 3));
        assert!(Quorum::Auto.met(&[0], 2));
        assert!(!Quorum::Auto.met(&[1], 2));
        assert!(Quorum::Fixed(2).met(&[1, 2], 3));
        assert!(!Quorum::Fixed(2).met(&[1], 3));
        assert!(Quorum::None.met(&[1], 2) && !Quorum::None.met(&[], 2));
    }
}
