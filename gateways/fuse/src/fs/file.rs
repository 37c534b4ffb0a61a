//! Open-file operations: open, read, write, flush, release, fsync,
//! fallocate, readlink.

use bytes::Bytes;
use fuser::FopenFlags;
use kiln_core::proto::{FileLock, LockCmd, LockType};
use kiln_core::{FsError, FsResult};

use super::reply::Opened;
use super::Inner;
use crate::handles::Handle;

impl Inner {
    pub(crate) async fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let gfid = self.inodes.gfid(ino)?;
        let mut fopen = FopenFlags::empty();
        let fd = if self.cfg.keep_cache {
            // Close-to-open: the kernel keeps its cached pages only if the
            // file did not change since this client last knew them good.
            let (fd, attr) = tokio::join!(self.vol.open(gfid, flags), self.vol.getattr(gfid));
            let fd = fd?;
            if let Ok(attr) = attr {
                if self.inodes.keep_cache_on_open(ino, &attr) {
                    fopen |= FopenFlags::FOPEN_KEEP_CACHE;
                }
            }
            fd
        } else {
            self.vol.open(gfid, flags).await?
        };
        let fh = self.handles.insert(Handle::file(fd));
        Ok(Opened { fh, flags: fopen })
    }

    pub(crate) async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let fd = self.handles.fd(fh)?;
        self.vol.read(&fd, offset, size).await
    }

    /// `kill`: the kernel asks to clear set-user/group-ID bits (a write by
    /// an unprivileged process).
    pub(crate) async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: Bytes,
        kill: bool,
    ) -> FsResult<u32> {
        let fd = self.handles.fd(fh)?;
        let (n, mut iatt) = self.vol.write(&fd, offset, data).await?;
        if kill {
            if let Some(iatt2) = self.kill_privs(&iatt, true).await? {
                iatt = iatt2;
            }
        }
        self.inodes.update(&iatt, true);
        Ok(n)
    }

    pub(crate) async fn flush(&self, fh: u64, lock_owner: u64) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        h.owners(|o| o.flushed(lock_owner));
        self.vol.flush(h.fd(), lock_owner).await
    }

    /// Last close of a file or directory. `flock_owner`: the kernel asks to
    /// drop that owner's flock; `flush`: it asks for a flush first.
    pub(crate) async fn release(
        &self,
        fh: u64,
        flock_owner: Option<u64>,
        flush: bool,
    ) -> FsResult<()> {
        let handle = self.handles.remove(fh)?;
        let fd = handle.fd();
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

    pub(crate) async fn fsync(&self, fh: u64, datasync: bool, dir: bool) -> FsResult<()> {
        let fd = self.handles.fd(fh)?;
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
        let r = self.vol.fallocate(&fd, mode, offset, len).await;
        self.inodes.invalidate(ino);
        r
    }

    pub(crate) async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let gfid = self.inodes.gfid(ino)?;
        Ok(Bytes::from(self.vol.readlink(gfid).await?))
    }
}
