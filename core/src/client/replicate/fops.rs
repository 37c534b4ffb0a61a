//! Replicate's file operations: modifications as transactions on every
//! reachable child (`transaction`), reads from one good child with
//! fallback, and the per-child fds behind an open file or directory.

use bytes::Bytes;
use futures::future::join_all;
use std::future::Future;
use std::sync::Arc;

use super::changelog::Slot;
use super::eager::{HoldKind, Inflight};
use super::inspect::best_error;
use super::transaction::LockItem;
use super::{DirFd, FileFd, Replicate};
use crate::client::fd::Fd;
use crate::client::xlator::Xlator;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::proto::{DirEntry, FileLock, LockCmd, LockType};

/// Flags that only make sense for the first open of a file.
const CREATE_ONLY: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC;
/// How long after a failed late open (a child back, the file not healed
/// there yet) it is tried again.
const LATE_OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Replicate {
    fn file_fd<'a>(&self, fd: &'a Fd) -> FsResult<&'a FileFd> {
        fd.state::<FileFd>().ok_or(FsError::BadFd)
    }

    /// The child fds of an open file on reachable children; the file is
    /// opened on children that came back since (or could not open it).
    async fn fd_children(&self, fd: &Fd) -> FsResult<Vec<(usize, Fd)>> {
        let st = self.file_fd(fd)?;
        let cur: Vec<Option<Fd>> = st.children.lock().clone();
        let now = std::time::Instant::now();
        let missing: Vec<usize> = {
            let retry = st.retry.lock();
            (0..self.n())
                .filter(|i| cur[*i].is_none() && self.children[*i].is_up())
                .filter(|i| retry[*i].is_none_or(|t| now >= t))
                .collect()
        };
        if !missing.is_empty() {
            let flags = fd.flags & !CREATE_ONLY;
            let opened = join_all(
                missing
                    .iter()
                    .map(|i| self.children[*i].open(fd.gfid, flags)),
            )
            .await;
            let mut slots = st.children.lock();
            let mut retry = st.retry.lock();
            for (i, r) in missing.iter().zip(opened) {
                match r {
                    Ok(f) if slots[*i].is_none() => slots[*i] = Some(f),
                    Ok(_) => {}
                    // Not there yet (a heal will bring it): try again later.
                    Err(_) => retry[*i] = Some(now + LATE_OPEN_RETRY),
                }
            }
        }
        let slots = st.children.lock();
        Ok(slots
            .iter()
            .enumerate()
            .filter(|(i, _)| self.children[*i].is_up())
            .filter_map(|(i, f)| f.clone().map(|f| (i, f)))
            .collect())
    }

    /// Settles an operation run on the children of an eager hold
    /// (`held.ready`, in order with `results`): the same failure everywhere
    /// is the operation's answer; copies that failed are recorded on the
    /// hold, every copy that did not succeed is marked stale in `slot` of
    /// `gfid`, and a failure on some copies only lets the hold go at once
    /// (its post-op records the accusation) before answering. EROFS when the
    /// copies that succeeded are no quorum. The children where it
    /// succeeded, with their results.
    pub(super) async fn settle_held<T>(
        &self,
        held: Inflight,
        results: Vec<FsResult<T>>,
        kind: HoldKind,
        gfid: Gfid,
        slot: Slot,
    ) -> FsResult<Vec<(usize, T)>> {
        let n = self.n();
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for (c, r) in held.ready.iter().zip(results) {
            match r {
                Ok(v) => done.push((*c, v)),
                Err(e) => errors.push((*c, e)),
            }
        }
        if done.is_empty() {
            drop(held);
            let pick = errors
                .iter()
                .find(|(_, e)| !e.is_disconnect())
                .or(errors.first());
            return Err(pick
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| FsError::NotConnected(self.name.clone())));
        }
        let failed: Vec<usize> = errors.iter().map(|(c, _)| *c).collect();
        held.record_failures(&failed);
        drop(held);
        let succeeded: Vec<usize> = done.iter().map(|(c, _)| *c).collect();
        let behind: Vec<usize> = (0..n).filter(|c| !succeeded.contains(c)).collect();
        if !behind.is_empty() {
            self.mark_stale(gfid, &[slot], &behind);
        }
        if !failed.is_empty() {
            for (c, e) in &errors {
                if !e.is_disconnect() {
                    tracing::warn!(
                        child = self.children[*c].name(),
                        "operation failed on one copy only ({e}); it is accused for heal"
                    );
                }
            }
            // Record the failure (post-op) before answering.
            self.eager_release(kind, gfid).await;
        }
        if !self.quorum.met(&succeeded, n) {
            return Err(FsError::ReadOnly);
        }
        Ok(done)
    }

    /// A data operation through an open file: `op` on each child fd,
    /// under this client's eager lock of the inode (taken by the first
    /// operation, see `eager`).
    async fn fd_txn<T, F, Fut>(&self, fd: &Fd, start: u64, len: u64, op: F) -> FsResult<T>
    where
        F: Fn(Arc<dyn Xlator>, Fd) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let kids = self.fd_children(fd).await?;
        if !self.eager_on || tokio::runtime::Handle::try_current().is_err() {
            return self.fd_txn_plain(fd, &kids, start, len, op).await;
        }
        for _ in 0..8 {
            let Some(held) = self.eager.enter(HoldKind::Data, fd.gfid) else {
                let cands: Vec<usize> = kids.iter().map(|(i, _)| *i).collect();
                if self.eager_acquire(HoldKind::Data, fd.gfid, &cands).await? {
                    continue;
                }
                break;
            };
            let results = join_all(held.ready.iter().map(|c| {
                let f = kids.iter().find(|(i, _)| i == c).map(|(_, f)| f.clone());
                let child = self.children[*c].clone();
                let op = &op;
                async move {
                    match f {
                        Some(f) => op(child, f).await,
                        None => Err(FsError::NotConnected(String::new())),
                    }
                }
            }))
            .await;
            let done = self
                .settle_held(held, results, HoldKind::Data, fd.gfid, Slot::Data)
                .await?;
            return first(done);
        }
        self.fd_txn_plain(fd, &kids, start, len, op).await
    }

    /// A data transaction of its own (lock, pre-op, op, post-op, unlock)
    /// through an open file.
    async fn fd_txn_plain<T, F, Fut>(
        &self,
        fd: &Fd,
        kids: &[(usize, Fd)],
        start: u64,
        len: u64,
        op: F,
    ) -> FsResult<T>
    where
        F: Fn(Arc<dyn Xlator>, Fd) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        // Appends land at each copy's end of file: lock all of it.
        let (start, len) = if fd.flags & libc::O_APPEND != 0 {
            (0, 0)
        } else {
            (start, len)
        };
        let spec = self.data_txn(fd.gfid, start, len);
        let cands: Vec<usize> = kids.iter().map(|(i, _)| *i).collect();
        let done = self
            .transact(&spec, cands, |c| {
                let f = kids.iter().find(|(i, _)| *i == c).map(|(_, f)| f.clone());
                let child = self.children[c].clone();
                let op = &op;
                async move {
                    match f {
                        Some(f) => op(child, f).await,
                        None => Err(FsError::BadFd),
                    }
                }
            })
            .await?;
        first(done)
    }

    pub(super) async fn set_attr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        let meta = attr.mode.is_some()
            || attr.uid.is_some()
            || attr.gid.is_some()
            || attr.atime.is_some()
            || attr.mtime.is_some();
        let spec = if attr.size.is_some() {
            // This client's eager lock would hold the truncate up.
            self.eager_release(HoldKind::Data, gfid).await;
            let mut s = self.data_txn(gfid, 0, 0);
            if meta {
                s.locks.push(LockItem::Inode {
                    gfid,
                    domain: self.meta_domain(),
                    start: 0,
                    len: 0,
                });
                s.locks.sort();
                s.changelog[0].1.push(Slot::Metadata);
            }
            s
        } else {
            self.meta_txn(gfid)
        };
        let done = self
            .transact(&spec, self.up(), |c| self.children[c].setattr(gfid, attr))
            .await?;
        first(done)
    }

    pub(super) async fn truncate_fd(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        self.fd_txn(fd, 0, 0, |c, f| async move { c.ftruncate(&f, size).await })
            .await
    }

    pub(super) async fn allocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        self.fd_txn(fd, offset, len.max(1), |c, f| async move {
            c.fallocate(&f, mode, offset, len).await
        })
        .await
    }

    pub(super) async fn write_fd(
        &self,
        fd: &Fd,
        offset: u64,
        data: Bytes,
    ) -> FsResult<(u32, Iatt)> {
        let len = (data.len() as u64).max(1);
        self.fd_txn(fd, offset, len, |c, f| {
            let data = data.clone();
            async move { c.write(&f, offset, data).await }
        })
        .await
    }

    pub(super) async fn read_fd(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        let st = self.file_fd(fd)?;
        let mut last = None;
        for i in self.readable(fd.gfid, &[Slot::Data]).await? {
            let f = st.children.lock()[i].clone();
            let Some(f) = f else { continue };
            match self.children[i].read(&f, offset, size).await {
                Err(e) if e.is_disconnect() => last = Some(e),
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| {
            FsError::NotConnected(format!(
                "{}: no good copy of {} is open",
                self.name, fd.gfid
            ))
        }))
    }

    pub(super) async fn open_file(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        let up = self.up();
        let base = flags & !libc::O_TRUNC;
        let results = join_all(up.iter().map(|c| self.children[*c].open(gfid, base))).await;
        let mut slots = vec![None; self.n()];
        let mut errors = Vec::new();
        for (c, r) in up.iter().zip(results) {
            match r {
                Ok(f) => slots[*c] = Some(f),
                Err(e) => errors.push(Err::<(), _>(e)),
            }
        }
        if slots.iter().all(Option::is_none) {
            return Err(if errors.is_empty() {
                FsError::NotConnected(self.name.clone())
            } else {
                best_error(&errors)
            });
        }
        let fd = Fd::new(gfid, base, FileFd::new(slots));
        if flags & libc::O_TRUNC != 0 {
            self.truncate_fd(&fd, 0).await?;
        }
        Ok(fd)
    }

    /// Runs `op` on every child fd of an open file (flush, fsync); fine if
    /// it worked on one.
    pub(super) async fn on_fds<F, Fut>(&self, fd: &Fd, op: F) -> FsResult<()>
    where
        F: Fn(Arc<dyn Xlator>, Fd) -> Fut,
        Fut: Future<Output = FsResult<()>>,
    {
        let Some(st) = fd.state::<FileFd>() else {
            // A directory: an fsync ends this client's entry hold on it.
            self.eager_release(HoldKind::Entry, fd.gfid).await;
            return Ok(());
        };
        // Flush and fsync end the eager lock (post-op, unlock).
        self.eager_release(HoldKind::Data, fd.gfid).await;
        let kids: Vec<(usize, Fd)> = st
            .children
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.clone().map(|f| (i, f)))
            .collect();
        let results = join_all(
            kids.iter()
                .map(|(i, f)| op(self.children[*i].clone(), f.clone())),
        )
        .await;
        if results.iter().any(|r| r.is_ok()) || results.is_empty() {
            return Ok(());
        }
        Err(best_error(&results))
    }

    pub(super) async fn release_fd(&self, fd: &Fd) -> FsResult<()> {
        let mut file = false;
        let kids: Vec<(usize, Fd)> = if let Some(st) = fd.state::<FileFd>() {
            file = true;
            st.children
                .lock()
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.clone().map(|f| (i, f)))
                .collect()
        } else if let Some(d) = fd.state::<DirFd>() {
            d.children
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.clone().map(|f| (i, f)))
                .collect()
        } else {
            return Err(FsError::BadFd);
        };
        // The eager lock's post-op and unlock go out first on each
        // connection, the fd releases right behind them (a brick serves a
        // connection's requests in order; locks are not tied to fds).
        let hold = async {
            if file {
                self.eager_release(HoldKind::Data, fd.gfid).await;
            }
        };
        futures::future::join(
            hold,
            join_all(kids.iter().map(|(i, f)| self.children[*i].release(f))),
        )
        .await;
        Ok(())
    }

    pub(super) async fn open_dir(&self, gfid: Gfid) -> FsResult<Fd> {
        let up = self.up();
        let results = join_all(up.iter().map(|c| self.children[*c].opendir(gfid))).await;
        let mut children = vec![None; self.n()];
        let mut errors = Vec::new();
        for (c, r) in up.iter().zip(results) {
            match r {
                Ok(f) => children[*c] = Some(f),
                Err(e) => errors.push(Err::<(), _>(e)),
            }
        }
        if children.iter().all(Option::is_none) {
            return Err(if errors.is_empty() {
                FsError::NotConnected(self.name.clone())
            } else {
                best_error(&errors)
            });
        }
        let st = DirFd {
            children,
            reading: parking_lot::Mutex::new(None),
        };
        Ok(Fd::new(gfid, libc::O_RDONLY | libc::O_DIRECTORY, st))
    }

    /// A listing reads from one child (offsets are that child's): chosen
    /// at offset 0 among the children whose entries nobody accuses.
    pub(super) async fn read_dir(
        &self,
        fd: &Fd,
        offset: u64,
        max: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let d = fd.state::<DirFd>().ok_or(FsError::BadFd)?;
        let chosen = *d.reading.lock();
        if let (Some(i), true) = (chosen, offset != 0) {
            let f = d.children[i].as_ref().ok_or(FsError::BadFd)?;
            return self.children[i].readdir(f, offset, max, plus).await;
        }
        let mut last = None;
        for i in self.readable(fd.gfid, &[Slot::Entry]).await? {
            let Some(f) = &d.children[i] else { continue };
            match self.children[i].readdir(f, offset, max, plus).await {
                Err(e) if e.is_disconnect() && offset == 0 => last = Some(e),
                r => {
                    *d.reading.lock() = Some(i);
                    return r;
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            FsError::NotConnected(format!(
                "{}: no good copy of directory {} is open",
                self.name, fd.gfid
            ))
        }))
    }

    /// Capacity: the child with the least room (a file must fit on all).
    pub(super) async fn stat_fs(&self) -> FsResult<Statvfs> {
        let results = join_all(self.children.iter().map(|c| c.statfs())).await;
        let mut best: Option<Statvfs> = None;
        for s in results.iter().flatten() {
            let room = |x: &Statvfs| x.bavail.saturating_mul(x.frsize.max(1));
            if best.as_ref().is_none_or(|b| room(s) < room(b)) {
                best = Some(*s);
            }
        }
        best.ok_or_else(|| best_error(&results))
    }

    /// POSIX locks on every copy, taken one child after the other in child
    /// order (two clients never hold each other up), so they survive the
    /// loss of a child.
    pub(super) async fn posix_lock(
        &self,
        fd: &Fd,
        cmd: LockCmd,
        lock: FileLock,
    ) -> FsResult<FileLock> {
        let kids = self.fd_children(fd).await?;
        if kids.is_empty() {
            return Err(FsError::NotConnected(self.name.clone()));
        }
        if cmd == LockCmd::Get {
            let mut last = None;
            for (i, f) in &kids {
                match self.children[*i].lk(f, cmd, lock).await {
                    Err(e) if e.is_disconnect() => last = Some(e),
                    r => return r,
                }
            }
            return Err(last.unwrap_or_else(|| FsError::NotConnected(self.name.clone())));
        }
        if lock.kind == LockType::Unlock {
            let results =
                join_all(kids.iter().map(|(i, f)| self.children[*i].lk(f, cmd, lock))).await;
            return results.into_iter().find(|r| r.is_ok()).unwrap_or(Ok(lock));
        }
        let mut taken: Vec<&(usize, Fd)> = Vec::new();
        let mut granted = None;
        for k in &kids {
            match self.children[k.0].lk(&k.1, cmd, lock).await {
                Ok(l) => {
                    granted.get_or_insert(l);
                    taken.push(k);
                }
                Err(e) if e.is_disconnect() => {}
                Err(e) => {
                    let undo = FileLock {
                        kind: LockType::Unlock,
                        ..lock
                    };
                    for (i, f) in taken {
                        let _ = self.children[*i].lk(f, LockCmd::Set, undo).await;
                    }
                    return Err(e);
                }
            }
        }
        granted.ok_or_else(|| FsError::NotConnected(self.name.clone()))
    }
}

/// The result of the first child where a transaction succeeded.
pub(super) fn first<T>(done: Vec<(usize, T)>) -> FsResult<T> {
    done.into_iter()
        .next()
        .map(|(_, v)| v)
        .ok_or_else(|| FsError::Io("transaction without result".into()))
}
