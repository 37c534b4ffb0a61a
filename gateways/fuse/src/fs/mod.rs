//! `KilnFs`: the `fuser::Filesystem` over a `Volume`. Each kernel request is
//! turned into a tokio task that calls the volume and replies when done, so
//! the fuser threads only read requests and never wait on the network.

mod dir;
mod entry;
mod file;
mod meta;
mod reply;

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    AccessFlags, BsdFileFlags, FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use kiln_core::client::{Caller, Volume};
use kiln_core::{FsResult, Iatt};
use tokio_util::task::TaskTracker;

use crate::handles::HandleTable;
use crate::inode::InodeTable;
use crate::write_behind::WriteBehind;
use reply::{Answer, Ttls};

/// How the file system behaves towards the kernel.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache name lookups.
    pub entry_timeout: Duration,
    /// Let the kernel keep a file's cached pages across opens when the file
    /// did not change (checked at each open: close-to-open consistency).
    pub keep_cache: bool,
    /// Kernel write-back caching (faster small writes, weaker coherence).
    pub writeback_cache: bool,
    /// Largest write request the kernel may send.
    pub max_write: u32,
    /// Kernel read-ahead per file, in bytes.
    pub max_readahead: u32,
    /// Acknowledge writes at once and send them in the background
    /// (failures reported by the next write, flush or fsync).
    pub write_behind: bool,
    /// Bytes of background writes in flight per file.
    pub write_behind_window: usize,
    /// close(2) returns without waiting for the file's background writes
    /// (GlusterFS's `flush-behind`): a failure that is already known is
    /// still reported, a later one only by fsync or the next write. Files
    /// this client locked always wait (locks guard the data).
    pub flush_behind: bool,
    /// Write-only opens bypass the kernel page cache (FOPEN_DIRECT_IO): the
    /// kernel hands the writer's own pages to this process, which saves a
    /// copy of every byte written and the page cache churn; nothing reads
    /// through such an open, and the kernel drops other opens' cached pages
    /// of the range written.
    pub direct_write_only: bool,
}

impl Default for FsConfig {
    fn default() -> FsConfig {
        FsConfig {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            keep_cache: true,
            writeback_cache: false,
            max_write: 1 << 20,
            max_readahead: 1 << 20,
            write_behind: true,
            write_behind_window: 4 << 20,
            flush_behind: true,
            direct_write_only: true,
        }
    }
}

/// The state every request task shares.
pub(crate) struct Inner {
    pub(crate) vol: Arc<Volume>,
    pub(crate) inodes: InodeTable,
    pub(crate) handles: HandleTable,
    pub(crate) cfg: FsConfig,
    pub(crate) ttl: Ttls,
    /// The kernel leaves clearing set-user/group-ID bits to us
    /// (FUSE_HANDLE_KILLPRIV_V2), which spares a security.capability probe
    /// on every write.
    pub(crate) killpriv: std::sync::atomic::AtomicBool,
    /// Background writes.
    pub(crate) wb: WriteBehind,
    /// Bytes of background writes in flight for the whole mount, in 4 KiB
    /// units.
    pub(crate) wb_budget: Arc<tokio::sync::Semaphore>,
    /// The runtime request tasks run on.
    pub(crate) rt: tokio::runtime::Handle,
    /// Every request task and background write still running, so the
    /// mount finishes them before the process exits (`FsStats::finish`).
    pub(crate) tasks: TaskTracker,
}

/// Background writes the whole mount may have in flight, in 4 KiB units
/// (64 MiB).
pub(crate) const WRITE_BEHIND_UNITS: usize = (64 << 20) / 4096;

/// The FUSE file system of one mounted volume.
pub struct KilnFs {
    inner: Arc<Inner>,
    rt: tokio::runtime::Handle,
}

impl KilnFs {
    /// A file system over `vol`; requests run as tasks on `rt`. `root` is
    /// the root directory's attributes if already known (`wait_ready`).
    pub fn new(
        vol: Arc<Volume>,
        rt: tokio::runtime::Handle,
        cfg: FsConfig,
        root: Option<&Iatt>,
    ) -> KilnFs {
        let inodes = InodeTable::new(cfg.attr_timeout);
        let cfg_window = cfg.write_behind_window;
        if let Some(root) = root {
            inodes.update(root, false);
        }
        let ttl = Ttls {
            attr: cfg.attr_timeout,
            entry: cfg.entry_timeout,
        };
        KilnFs {
            inner: Arc::new(Inner {
                vol,
                inodes,
                handles: HandleTable::new(),
                cfg,
                ttl,
                killpriv: std::sync::atomic::AtomicBool::new(false),
                wb: WriteBehind::new(cfg_window),
                wb_budget: Arc::new(tokio::sync::Semaphore::new(WRITE_BEHIND_UNITS)),
                rt: rt.clone(),
                tasks: TaskTracker::new(),
            }),
            rt,
        }
    }

    /// A probe into the mount's tables, for tests and diagnostics.
    pub fn stats(&self) -> FsStats {
        FsStats {
            inner: self.inner.clone(),
        }
    }

    /// Runs `op` as a task and answers `reply` with its outcome.
    fn run<T, R, F>(&self, reply: R, op: impl FnOnce(Arc<Inner>) -> F)
    where
        T: Send + 'static,
        R: Answer<T>,
        F: Future<Output = FsResult<T>> + Send + 'static,
    {
        let fut = op(self.inner.clone());
        let ttl = self.inner.ttl;
        self.start(async move {
            let r = fut.await;
            reply.answer(&ttl, r);
        });
    }

    /// Starts a request task (`crate::spawn::start`): polled once right
    /// here, on the fuser thread, so its first message to a brick leaves
    /// at once (and a request that completes at once is answered at once);
    /// handed to the runtime only when it is woken.
    fn start(&self, task: impl Future<Output = ()> + Send + 'static) {
        crate::spawn::start(&self.rt, self.inner.tasks.track_future(task));
    }
}

/// Counts of what a mount holds open (see `KilnFs::stats`).
#[derive(Clone)]
pub struct FsStats {
    inner: Arc<Inner>,
}

impl FsStats {
    /// Inodes the kernel holds lookups on (root included).
    pub fn inodes(&self) -> usize {
        self.inner.inodes.len()
    }

    /// Open file and directory handles.
    pub fn open_handles(&self) -> usize {
        self.inner.handles.len()
    }

    /// Once the session has ended: waits (at most `limit`) for the request
    /// tasks and background writes still running (a close answered by
    /// flush-behind, a release the kernel sent just before the unmount),
    /// so no acknowledged write is dropped when the process exits. False
    /// if some were still running at `limit`.
    pub fn finish(&self, limit: std::time::Duration) -> bool {
        let inner = self.inner.clone();
        inner.tasks.close();
        // Blocks on the runtime from a thread of its own: the caller may be
        // inside a runtime context itself.
        std::thread::scope(|s| {
            s.spawn(|| {
                inner.rt.block_on(async {
                    tokio::time::timeout(limit, inner.tasks.wait())
                        .await
                        .is_ok()
                })
            })
            .join()
            .unwrap_or(false)
        })
    }
}

/// The credentials of the process behind a request.
fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl Filesystem for KilnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_MAX_PAGES;
        if self.inner.cfg.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let offered = config.capabilities();
        if let Err(missing) = config.add_capabilities(wanted & offered) {
            tracing::warn!(?missing, "kernel refused FUSE capabilities");
        }
        self.inner.killpriv.store(
            offered.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2),
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::info!(
            abi = %config.kernel_abi(),
            missing = ?(wanted - offered),
            "FUSE session starting"
        );
        if let Err(max) = config.set_max_write(self.inner.cfg.max_write) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(self.inner.cfg.max_readahead) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::info!("FUSE session ended");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.run(reply, |i| async move { i.lookup(parent.0, &name).await });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(reply, |i| async move { i.getattr(ino.0).await });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = meta::AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
            uid_of_caller: req.uid(),
        };
        self.run(reply, |i| async move { i.setattr(ino.0, change).await });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(reply, |i| async move { i.readlink(ino.0).await });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, who) = (name.to_owned(), caller(req));
        self.run(reply, |i| async move {
            i.mknod(parent.0, &name, who, mode, rdev).await
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, who) = (name.to_owned(), caller(req));
        self.run(reply, |i| async move {
            i.mkdir(parent.0, &name, who, mode).await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(
            reply,
            |i| async move { i.unlink(parent.0, &name, false).await },
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(
            reply,
            |i| async move { i.unlink(parent.0, &name, true).await },
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target, who) = (link_name.to_owned(), target.to_owned(), caller(req));
        self.run(reply, |i| async move {
            i.symlink(parent.0, &name, who, &target).await
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.run(reply, |i| async move {
            i.rename(parent.0, &name, newparent.0, &newname, flags)
                .await
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.run(reply, |i| async move {
            i.link(ino.0, newparent.0, &newname).await
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(reply, |i| async move { i.open(ino.0, flags.0).await });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(
            reply,
            |i| async move { i.read(ino.0, fh.0, offset, size).await },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = Bytes::copy_from_slice(data);
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        self.run(reply, |i| async move {
            i.write(ino.0, fh.0, offset, data, kill).await
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.flush(ino.0, fh.0, lock_owner.0).await
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.release(ino.0, fh.0, lock_owner.map(|o| o.0), flush).await
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.fsync(ino.0, fh.0, datasync, false).await
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(reply, |i| async move { i.opendir(ino.0).await });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let inner = self.inner.clone();
        self.start(async move {
            inner
                .readdir(ino.0, fh.0, offset, dir::Sink::Plain(reply))
                .await
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let inner = self.inner.clone();
        self.start(async move {
            inner
                .readdir(ino.0, fh.0, offset, dir::Sink::Plus(reply))
                .await
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.release(ino.0, fh.0, None, false).await
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.fsync(ino.0, fh.0, datasync, true).await
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(reply, |i| async move { i.vol.statfs().await });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.run(reply, |i| async move {
            i.setxattr(ino.0, &name, &value, flags, position).await
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_owned();
        self.run(
            reply,
            |i| async move { i.getxattr(ino.0, &name, size).await },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(reply, |i| async move { i.listxattr(ino.0, size).await });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(reply, |i| async move { i.removexattr(ino.0, &name).await });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, who) = (name.to_owned(), caller(req));
        self.run(reply, |i| async move {
            i.create(parent.0, &name, who, mode, flags).await
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        self.run(reply, |i| async move {
            i.getlk(fh.0, lock_owner.0, start, end, typ, pid).await
        });
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.setlk(ino.0, fh.0, lock_owner.0, start, end, typ, pid, sleep)
                .await
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.run(reply, |i| async move {
            i.fallocate(ino.0, fh.0, offset, length, mode).await
        });
    }
}
