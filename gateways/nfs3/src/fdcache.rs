//! Open files kept between stateless NFS calls: one fd per file gfid (so READ
//! and WRITE do not open per call) with its last known attributes and its
//! write-behind queue (UNSTABLE writes, in order, to the volume), and open
//! directories keyed by READDIR cookie verifier (a listing continues on the
//! same snapshot). Entries idle past a timeout, or beyond a count, are
//! released by `reap`; an entry in use is never released under a call.

use bytes::Bytes;
use kiln_core::client::{Fd, Volume};
use kiln_core::{FsError, FsResult, Gfid, Iatt};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Attributes younger than this are reused for permission checks on WRITE.
pub const ATTR_FRESH: Duration = Duration::from_secs(1);

/// UNSTABLE WRITE data a volume's gateway holds before it reaches the
/// bricks, in KiB (a WRITE beyond it waits for earlier ones to land).
pub const WRITE_BEHIND_KIB: usize = 32 * 1024;

/// Queued writes of one file sent to the volume at once (disjoint ranges).
pub const WRITES_IN_FLIGHT: usize = 4;

/// READs of one sequential reader fetched ahead at most.
pub const READ_AHEAD_DEPTH: u64 = 4;

/// Read-ahead data a volume's gateway may hold, in KiB.
pub const READ_AHEAD_KIB: usize = 64 * 1024;

/// A read-ahead older than this is not used (another client may have
/// changed the file since).
pub const READ_AHEAD_FRESH: Duration = Duration::from_secs(1);

struct FileEntry {
    fd: Arc<Fd>,
    used: Instant,
    attr: Option<(Iatt, Instant)>,
    writer: Option<Arc<Writer>>,
    ahead: VecDeque<ReadAhead>,
}

/// What a read-ahead brings: the data and the attributes read with it.
pub type AheadResult = (FsResult<Bytes>, FsResult<Iatt>);

/// The next READ of a sequential reader, fetched while the client is busy
/// with the previous reply.
struct ReadAhead {
    offset: u64,
    count: u32,
    started: Instant,
    task: tokio::task::JoinHandle<AheadResult>,
    _budget: OwnedSemaphorePermit,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One queued UNSTABLE write (it keeps its queue alive until applied).
struct Job {
    writer: Arc<Writer>,
    fd: Arc<Fd>,
    offset: u64,
    data: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// The write-behind queue of one file: a task applies its writes in the
/// order they were accepted (overlapping ones strictly in that order); the
/// first failure is kept for COMMIT.
struct Writer {
    tx: mpsc::UnboundedSender<Job>,
    pending: AtomicUsize,
    idle: Notify,
    error: Mutex<Option<FsError>>,
}

impl Writer {
    fn start(volume: Arc<Volume>, gfid: Gfid) -> Arc<Writer> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let w = Arc::new(Writer {
            tx,
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            error: Mutex::new(None),
        });
        // The task ends when the last handle (file entry or queued job)
        // goes. Writes of disjoint ranges go to the volume together (up to
        // WRITES_IN_FLIGHT); one overlapping a write in flight waits for it.
        tokio::spawn(async move {
            let mut running: JoinSet<()> = JoinSet::new();
            let mut ranges: HashMap<tokio::task::Id, (u64, u64)> = HashMap::new();
            while let Some(job) = rx.recv().await {
                let (start, end) = (job.offset, job.offset.saturating_add(job.data.len() as u64));
                while running.len() >= WRITES_IN_FLIGHT
                    || ranges.values().any(|(s, e)| start < *e && *s < end)
                {
                    match running.join_next_with_id().await {
                        Some(Ok((id, ()))) => {
                            ranges.remove(&id);
                        }
                        Some(Err(e)) => {
                            ranges.remove(&e.id());
                        }
                        None => ranges.clear(),
                    }
                }
                let id = running.spawn(apply(volume.clone(), gfid, job)).id();
                ranges.insert(id, (start, end));
            }
            while running.join_next().await.is_some() {}
        });
        w
    }

    /// Waits until every accepted write has been applied.
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Writes one queued job (reopening the file once if its fd went bad), keeps
/// a failure for COMMIT and wakes waiters when the queue is empty.
async fn apply(volume: Arc<Volume>, gfid: Gfid, job: Job) {
    let w = job.writer.clone();
    let len = job.data.len();
    let mut r = volume.write(&job.fd, job.offset, job.data.clone()).await;
    if matches!(&r, Err(e) if stale_fd(e)) {
        if let Ok(fd) = volume.open(gfid, libc::O_RDWR).await {
            let fd = Arc::new(fd);
            r = volume.write(&fd, job.offset, job.data.clone()).await;
            release(&volume, fd);
        }
    }
    let failed = match r {
        Ok((n, _)) if n as usize == len => None,
        Ok((n, _)) => Some(FsError::Io(format!("short write: {n} of {len} bytes"))),
        Err(e) => Some(e),
    };
    if let Some(e) = failed {
        tracing::warn!(%gfid, offset = job.offset, len, error = %e, "nfs: a write-behind write failed");
        w.error.lock().get_or_insert(e);
    }
    drop(job);
    if w.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
        w.idle.notify_waiters();
    }
}

/// True for errors that a fresh open may cure (the cached fd went bad).
pub(crate) fn stale_fd(e: &FsError) -> bool {
    matches!(
        e,
        FsError::BadFd | FsError::Stale | FsError::NotConnected(_)
    )
}

fn release(vol: &Arc<Volume>, fd: Arc<Fd>) {
    let vol = vol.clone();
    tokio::spawn(async move {
        let _ = vol.flush(&fd, 0).await;
        let _ = vol.release(&fd).await;
    });
}

struct DirEntry {
    gfid: Gfid,
    fd: Arc<Fd>,
    used: Instant,
}

/// The cache of one volume.
pub struct FdCache {
    volume: Arc<Volume>,
    files: Mutex<HashMap<Gfid, FileEntry>>,
    dirs: Mutex<HashMap<u64, DirEntry>>,
    next_verf: Mutex<u64>,
    idle: Duration,
    max_files: usize,
    max_dirs: usize,
    /// Write-behind budget in KiB, shared by the volume's files.
    wb_budget: Arc<Semaphore>,
    /// Read-ahead budget in KiB, shared by the volume's files.
    ra_budget: Arc<Semaphore>,
}

impl FdCache {
    /// A cache releasing fds idle for `idle`.
    pub fn new(volume: Arc<Volume>, idle: Duration) -> FdCache {
        FdCache {
            volume,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_verf: Mutex::new(rand::random::<u32>() as u64 + 1),
            idle,
            max_files: 1024,
            max_dirs: 256,
            wb_budget: Arc::new(Semaphore::new(WRITE_BEHIND_KIB)),
            ra_budget: Arc::new(Semaphore::new(READ_AHEAD_KIB)),
        }
    }

    /// Reads ahead for a sequential reader whose next READ is `count`
    /// bytes at `offset` of `gfid`: up to `READ_AHEAD_DEPTH` such ranges
    /// (data and attributes) below `size`. Nothing if the file is not open
    /// here or has writes queued; fewer when the budget is spent.
    pub fn read_ahead(&self, gfid: Gfid, fd: Arc<Fd>, offset: u64, count: u32, size: u64) {
        let kib = (count as usize).div_ceil(1024).clamp(1, READ_AHEAD_KIB) as u32;
        let mut files = self.files.lock();
        let Some(e) = files.get_mut(&gfid) else {
            return;
        };
        if e.writer
            .as_ref()
            .is_some_and(|w| w.pending.load(Ordering::Acquire) > 0)
        {
            return;
        }
        // Another pattern than the window's: start over.
        if e.ahead
            .front()
            .is_some_and(|ra| ra.offset != offset || ra.count != count)
        {
            e.ahead.clear();
        }
        for k in 0..READ_AHEAD_DEPTH {
            let at = offset.saturating_add(k * u64::from(count));
            if at >= size {
                break;
            }
            if e.ahead.iter().any(|ra| ra.offset == at) {
                continue;
            }
            let Ok(budget) = self.ra_budget.clone().try_acquire_many_owned(kib) else {
                break;
            };
            let vol = self.volume.clone();
            let fd = fd.clone();
            let task =
                tokio::spawn(
                    async move { tokio::join!(vol.read(&fd, at, count), vol.getattr(gfid)) },
                );
            e.ahead.push_back(ReadAhead {
                offset: at,
                count,
                started: Instant::now(),
                task,
                _budget: budget,
            });
        }
    }

    /// The read-ahead of `gfid` if it is exactly this READ and fresh (on a
    /// miss the whole window is dropped).
    pub async fn take_read_ahead(
        &self,
        gfid: Gfid,
        offset: u64,
        count: u32,
    ) -> Option<AheadResult> {
        let mut ra = {
            let mut files = self.files.lock();
            let e = files.get_mut(&gfid)?;
            match e.ahead.front() {
                Some(ra) if ra.offset == offset && ra.count == count => e.ahead.pop_front()?,
                Some(_) => {
                    e.ahead.clear();
                    return None;
                }
                None => return None,
            }
        };
        if ra.started.elapsed() > READ_AHEAD_FRESH {
            return None;
        }
        (&mut ra.task).await.ok()
    }

    /// Drops the read-ahead of `gfid` (the file is changing).
    pub fn drop_read_ahead(&self, gfid: Gfid) {
        let ra = self
            .files
            .lock()
            .get_mut(&gfid)
            .map(|e| std::mem::take(&mut e.ahead));
        drop(ra);
    }

    /// Queues an UNSTABLE write of `data` at `offset` through `fd`; it
    /// reaches the volume after every write queued before it. Waits while
    /// the volume's write-behind budget is spent.
    pub async fn write_behind(&self, gfid: Gfid, fd: Arc<Fd>, offset: u64, data: Bytes) {
        let kib = data.len().div_ceil(1024).clamp(1, WRITE_BEHIND_KIB) as u32;
        let Ok(budget) = self.wb_budget.clone().acquire_many_owned(kib).await else {
            return;
        };
        let (writer, stale_ahead) = {
            let mut files = self.files.lock();
            match files.get_mut(&gfid) {
                Some(e) => (
                    e.writer
                        .get_or_insert_with(|| Writer::start(self.volume.clone(), gfid))
                        .clone(),
                    // What was read ahead predates this write.
                    std::mem::take(&mut e.ahead),
                ),
                // Evicted meanwhile: a queue of its own, gone when drained.
                None => (Writer::start(self.volume.clone(), gfid), VecDeque::new()),
            }
        };
        drop(stale_ahead);
        writer.pending.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            writer: writer.clone(),
            fd,
            offset,
            data,
            _budget: budget,
        };
        if writer.tx.send(job).is_err() {
            writer.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until the queued writes of `gfid` have reached the volume
    /// (before anything that must see them: READ, attributes, COMMIT).
    pub async fn drain(&self, gfid: Gfid) {
        let writer = self.writer(gfid);
        if let Some(w) = writer {
            w.wait_idle().await;
        }
    }

    /// The first failure of a queued write of `gfid` since the last call
    /// (COMMIT reports it).
    pub fn take_write_error(&self, gfid: Gfid) -> Option<FsError> {
        self.writer(gfid)?.error.lock().take()
    }

    /// True if a queued write of `gfid` failed and no COMMIT reported it yet.
    pub fn has_write_error(&self, gfid: Gfid) -> bool {
        self.writer(gfid).is_some_and(|w| w.error.lock().is_some())
    }

    fn writer(&self, gfid: Gfid) -> Option<Arc<Writer>> {
        self.files.lock().get(&gfid).and_then(|e| e.writer.clone())
    }

    /// An open fd for file `gfid`, opening it (read-write, else read-only) if needed.
    pub async fn file(&self, gfid: Gfid) -> FsResult<Arc<Fd>> {
        if let Some(e) = self.files.lock().get_mut(&gfid) {
            e.used = Instant::now();
            return Ok(e.fd.clone());
        }
        let fd = match self.volume.open(gfid, libc::O_RDWR).await {
            Ok(fd) => fd,
            Err(kiln_core::FsError::ReadOnly) | Err(kiln_core::FsError::AccessDenied) => {
                self.volume.open(gfid, libc::O_RDONLY).await?
            }
            Err(e) => return Err(e),
        };
        Ok(self.insert_file(gfid, fd))
    }

    /// Adds an fd this gateway opened (e.g. by CREATE); an existing one wins.
    pub fn insert_file(&self, gfid: Gfid, fd: Fd) -> Arc<Fd> {
        let mut files = self.files.lock();
        if let Some(e) = files.get_mut(&gfid) {
            e.used = Instant::now();
            let keep = e.fd.clone();
            drop(files);
            self.release_later(Arc::new(fd));
            return keep;
        }
        let fd = Arc::new(fd);
        files.insert(
            gfid,
            FileEntry {
                fd: fd.clone(),
                used: Instant::now(),
                attr: None,
                writer: None,
                ahead: VecDeque::new(),
            },
        );
        fd
    }

    /// Remembers attributes returned by a call on `gfid` (if it is open).
    pub fn note_attr(&self, a: &Iatt) {
        if let Some(e) = self.files.lock().get_mut(&a.gfid) {
            e.attr = Some((a.clone(), Instant::now()));
        }
    }

    /// Recent attributes of an open file, if any.
    pub fn fresh_attr(&self, gfid: Gfid) -> Option<Iatt> {
        let files = self.files.lock();
        let (a, at) = files.get(&gfid)?.attr.as_ref()?;
        (at.elapsed() < ATTR_FRESH).then(|| a.clone())
    }

    /// Forgets attributes of `gfid` (after a change made another way).
    pub fn forget_attr(&self, gfid: Gfid) {
        if let Some(e) = self.files.lock().get_mut(&gfid) {
            e.attr = None;
        }
    }

    /// Drops the fd of `gfid` now (after REMOVE, or a failed call on it).
    pub fn evict(&self, gfid: Gfid) {
        let e = self.files.lock().remove(&gfid);
        if let Some(e) = e {
            self.release_later(e.fd);
        }
    }

    /// The open directory of listing `verf`, if still open for `gfid`.
    pub fn dir(&self, gfid: Gfid, verf: u64) -> Option<Arc<Fd>> {
        let mut dirs = self.dirs.lock();
        let e = dirs.get_mut(&verf)?;
        if e.gfid != gfid {
            return None;
        }
        e.used = Instant::now();
        Some(e.fd.clone())
    }

    /// Opens directory `gfid` for a new listing; returns its verifier.
    pub async fn open_dir(&self, gfid: Gfid) -> FsResult<(u64, Arc<Fd>)> {
        let fd = Arc::new(self.volume.opendir(gfid).await?);
        let verf = {
            let mut v = self.next_verf.lock();
            *v = v.wrapping_add(1).max(1);
            *v
        };
        self.dirs.lock().insert(
            verf,
            DirEntry {
                gfid,
                fd: fd.clone(),
                used: Instant::now(),
            },
        );
        self.reap_dirs(Instant::now());
        Ok((verf, fd))
    }

    /// Ends listing `verf` (its end was sent).
    pub fn close_dir(&self, verf: u64) {
        let e = self.dirs.lock().remove(&verf);
        if let Some(e) = e {
            self.release_later(e.fd);
        }
    }

    /// Number of open files and directories.
    pub fn open_counts(&self) -> (usize, usize) {
        (self.files.lock().len(), self.dirs.lock().len())
    }

    /// Releases idle (and excess) entries no call is using.
    pub fn reap(&self) {
        let now = Instant::now();
        let mut victims = Vec::new();
        {
            let mut files = self.files.lock();
            let mut ages: Vec<(Gfid, Instant)> = files.iter().map(|(g, e)| (*g, e.used)).collect();
            ages.sort_by_key(|(_, t)| *t);
            let excess = files.len().saturating_sub(self.max_files);
            for (i, (g, used)) in ages.into_iter().enumerate() {
                let idle = now.duration_since(used) >= self.idle;
                if (idle || i < excess)
                    && files.get(&g).is_some_and(|e| Arc::strong_count(&e.fd) == 1)
                {
                    if let Some(e) = files.remove(&g) {
                        victims.push(e.fd);
                    }
                }
            }
        }
        for fd in victims {
            self.release_later(fd);
        }
        self.reap_dirs(now);
    }

    fn reap_dirs(&self, now: Instant) {
        let mut victims = Vec::new();
        {
            let mut dirs = self.dirs.lock();
            let mut ages: Vec<(u64, Instant)> = dirs.iter().map(|(v, e)| (*v, e.used)).collect();
            ages.sort_by_key(|(_, t)| *t);
            let excess = dirs.len().saturating_sub(self.max_dirs);
            for (i, (v, used)) in ages.into_iter().enumerate() {
                if now.duration_since(used) >= self.idle || i < excess {
                    if let Some(e) = dirs.remove(&v) {
                        victims.push(e.fd);
                    }
                }
            }
        }
        for fd in victims {
            self.release_later(fd);
        }
    }

    /// Releases every entry (shutdown).
    pub fn clear(&self) {
        let files: Vec<_> = self.files.lock().drain().map(|(_, e)| e.fd).collect();
        let dirs: Vec<_> = self.dirs.lock().drain().map(|(_, e)| e.fd).collect();
        for fd in files.into_iter().chain(dirs) {
            self.release_later(fd);
        }
    }

    fn release_later(&self, fd: Arc<Fd>) {
        let vol = self.volume.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = vol.flush(&fd, 0).await;
                let _ = vol.release(&fd).await;
            });
        }
    }
}
