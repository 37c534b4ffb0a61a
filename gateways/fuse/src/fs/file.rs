//! Open-file operations: open, read, write, flush, release, fsync,
//! fallocate, readlink.

use std::sync::Arc;

use bytes::Bytes;
use fuser::FopenFlags;
use kiln_core::proto::{FileLock, LockCmd, LockType};
use kiln_core::{FsError, FsResult};

use super::reply::Opened;
use super::{Inner, WRITE_BEHIND_UNITS};
use crate::handles::Handle;

impl Inner {
    /// FUSE open flags for an open with `flags`: a write-only open bypasses
    /// the kernel page cache (see `FsConfig::direct_write_only`).
    pub(crate) fn open_flags_for(&self, flags: i32) -> FopenFlags {
        if self.cfg.direct_write_only && flags & libc::O_ACCMODE == libc::O_WRONLY {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    pub(crate) async fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let gfid = self.inodes.gfid(ino)?;
        self.wb.drain(ino).await;
        let mut fopen = self.open_flags_for(flags);
        let fd = if !self.cfg.keep_cache {
            self.vol.open(gfid, flags).await?
        } else if let Some(attr) = self.inodes.fresh_attr(ino) {
            // Attributes from the volume within the attribute timeout are
            // as good as asking again.
            let fd = self.vol.open(gfid, flags).await?;
            if self.inodes.keep_cache_on_open(ino, &attr) {
                fopen |= FopenFlags::FOPEN_KEEP_CACHE;
            }
            fd
        } else {
            // Close-to-open: the kernel keeps its cached pages only if the
            // file did not change since this client last knew them good.
            let (fd, attr) = tokio::join!(self.vol.open(gfid, flags), self.vol.getattr(gfid));
            let fd = fd?;
            if let Ok(attr) = attr {
                self.inodes.update(&attr, false);
                if self.inodes.keep_cache_on_open(ino, &attr) {
                    fopen |= FopenFlags::FOPEN_KEEP_CACHE;
                }
            }
            fd
        };
        let fh = self.handles.insert(Handle::file(fd));
        Ok(Opened { fh, flags: fopen })
    }

    pub(crate) async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let fd = self.handles.fd(fh)?;
        self.wb.drain(ino).await;
        self.vol.read(&fd, offset, size).await
    }

    /// `kill`: the kernel asks to clear set-user/group-ID bits (a write by
    /// an unprivileged process). Writes go behind unless the file was
    /// opened for synchronous, direct or appending I/O.
    pub(crate) async fn write(
        self: Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        data: Bytes,
        kill: bool,
    ) -> FsResult<u32> {
        let fd = self.handles.fd(fh)?;
        let len = data.len();
        let sync_flags = libc::O_DSYNC | libc::O_DIRECT | libc::O_APPEND;
        if !self.cfg.write_behind || kill || fd.flags & sync_flags != 0 {
            self.wb.settle(ino).await?;
            let (n, mut iatt) = self.vol.write(&fd, offset, data).await?;
            if kill {
                if let Some(iatt2) = self.kill_privs(&iatt, true).await? {
                    iatt = iatt2;
                }
            }
            self.inodes.update(&iatt, true);
            return Ok(n);
        }
        let ticket = self.wb.begin(ino, offset, len).await?;
        let units = u32::try_from(len.div_ceil(4096).clamp(1, WRITE_BEHIND_UNITS)).unwrap_or(1);
        let permit = match self.wb_budget.clone().acquire_many_owned(units).await {
            Ok(p) => p,
            Err(_) => {
                self.wb.finish(ticket, Ok(()), len);
                return Err(FsError::Io("write-behind closed".into()));
            }
        };
        let me = self.clone();
        // Polled here first: the write leaves without waking a worker.
        let tasks = self.tasks.clone();
        crate::spawn::start(
            &self.rt,
            tasks.track_future(async move {
                let r = match me.vol.write(&fd, offset, data).await {
                    Ok((n, iatt)) => {
                        me.inodes.merge_write(&iatt);
                        if (n as usize) < len {
                            Err(FsError::NoSpace)
                        } else {
                            Ok(())
                        }
                    }
                    Err(e) => Err(e),
                };
                me.wb.finish(ticket, r, len);
                drop(permit);
            }),
        );
        Ok(len as u32)
    }

    /// A close(2): waits for the file's background writes and reports
    /// their failure (with flush-behind: reports a failure already known);
    /// releases `lock_owner`'s POSIX locks. A flush only
    /// releases locks (the `Xlator::flush` contract), so it is not sent
    /// for a file this client never locked.
    pub(crate) async fn flush(&self, ino: u64, fh: u64, lock_owner: u64) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        h.owners(|o| o.flushed(lock_owner));
        if self.inodes.ever_locked(ino) {
            // Locks guard the data: release them only once it has landed.
            self.wb.settle(ino).await?;
            return self.vol.flush(h.fd(), lock_owner).await;
        }
        if self.cfg.flush_behind {
            // Writes still in flight land on their own; this client's
            // later opens, reads and stats of the file wait for them.
            return self.wb.take_error(ino);
        }
        self.wb.settle(ino).await
    }

    /// Last close of a file or directory. `flock_owner`: the kernel asks to
    /// drop that owner's flock; `flush`: it asks for a flush first.
    pub(crate) async fn release(
        &self,
        ino: u64,
        fh: u64,
        flock_owner: Option<u64>,
        flush: bool,
    ) -> FsResult<()> {
        let handle = self.handles.remove(fh)?;
        let fd = handle.fd();
        self.wb.drain(ino).await;
        if flush {
            if let Err(e) = self.vol.flush(fd, flock_owner.unwrap_or(0)).await {
                tracing::debug!(fd = ?fd, error = %e, "flush at release failed");
            }
        }
        let mut owners = Vec::new();
        handle.owners(|o| owners = o.unreleased());
        owners.retain(|o| Some(*o) != flock_owner);
        // flock's owner (named by the kernel) and OFD lock owners.
        for owner in flock_owner.into_iter().chain(owners) {
            let unlock = FileLock {
                kind: LockType::Unlock,
                start: 0,
                len: 0,
                owner,
                pid: 0,
            };
            if let Err(e) = self.vol.lk(fd, LockCmd::Set, unlock).await {
                tracing::debug!(fd = ?fd, error = %e, "lock release at close failed");
            }
        }
        self.vol.release(fd).await
    }

    pub(crate) async fn fsync(&self, ino: u64, fh: u64, datasync: bool, dir: bool) -> FsResult<()> {
        let fd = self.handles.fd(fh)?;
        self.wb.settle(ino).await?;
        match self.vol.fsync(&fd, datasync).await {
            // A stack that cannot sync directories has nothing to sync.
            Err(FsError::NotSupported) if dir => Ok(()),
            r => r,
        }
    }

    pub(crate) async fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> FsResult<()> {
        let fd = self.handles.fd(fh)?;
        self.wb.drain(ino).await;
        let r = self.vol.fallocate(&fd, mode, offset, len).await;
        self.inodes.invalidate(ino);
        r
    }

    pub(crate) async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let gfid = self.inodes.gfid(ino)?;
        Ok(Bytes::from(self.vol.readlink(gfid).await?))
    }
}
