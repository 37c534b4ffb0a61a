//! Eager locking and delayed post-op (GlusterFS's eager-lock and
//! post-op-delay): the first data operation on an inode takes the whole
//! file's data lock and raises the data counters (pre-op) once; following
//! ones from this client go straight to the children. The post-op and the
//! unlock come on flush, fsync or release, after `IDLE` without an
//! operation, after `MAX_HOLD` (so another client waiting for the lock gets
//! it soon), or at once when an operation failed on some child (so the
//! failure is recorded before the operation is answered).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::changelog::{self, Slot};
use super::Replicate;
use crate::client::xlator::Xlator;
use crate::error::FsResult;
use crate::gfid::Gfid;
use crate::proto::{InodeLk, LockCmd, LockType, XattropOp};

/// An inode's eager lock goes after this long without an operation.
pub(super) const IDLE: Duration = Duration::from_secs(1);
/// ... and after this long in all (then taken again by the next operation),
/// so a client streaming writes never keeps others out for long.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(1);
/// How often the holder's timer looks at an inode.
const TICK: Duration = Duration::from_millis(100);

/// A held eager lock.
struct Held {
    /// Its lock owner.
    owner: u64,
    /// Children holding the lock.
    locked: Vec<usize>,
    /// Children whose pre-op landed: operations go to these.
    ready: Vec<usize>,
    /// Children where an operation failed that worked elsewhere (bit mask):
    /// the post-op does not clear their counters.
    failed: u64,
    /// Operations under way.
    inflight: usize,
    /// Set by a release: new operations wait for the next lock.
    closing: bool,
    /// Taken at.
    since: Instant,
    /// Last operation finished at.
    last: Instant,
    /// Tells this hold from the next one on the same inode.
    generation: u64,
}

/// One inode's eager state.
#[derive(Default)]
pub(super) struct EagerInode {
    /// Held while taking or releasing the lock.
    transition: tokio::sync::Mutex<()>,
    held: Mutex<Option<Held>>,
}

/// The eager locks of one replicate translator, by inode. Owns clones of
/// what a release needs, so the idle timer can run on its own.
pub(super) struct EagerTable {
    children: Vec<Arc<dyn Xlator>>,
    keys: Vec<String>,
    /// The data lock domain (the translator's name).
    domain: String,
    inodes: Mutex<HashMap<Gfid, Arc<EagerInode>>>,
    generations: std::sync::atomic::AtomicU64,
}

/// Marks one operation under way on a hold; counts it done when dropped
/// (also if the operation's future is dropped).
pub(super) struct Inflight {
    inode: Arc<EagerInode>,
    /// Children to send the operation to.
    pub(super) ready: Vec<usize>,
}

impl Inflight {
    /// Records that the operation failed on `failed` while it worked on
    /// another child.
    pub(super) fn record_failures(&self, failed: &[usize]) {
        if let Some(h) = self.inode.held.lock().as_mut() {
            for c in failed {
                h.failed |= 1 << c;
            }
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(h) = self.inode.held.lock().as_mut() {
            h.inflight = h.inflight.saturating_sub(1);
            h.last = Instant::now();
        }
    }
}

impl EagerTable {
    /// An empty table for the translator `domain` over `children`.
    pub(super) fn new(domain: String, children: Vec<Arc<dyn Xlator>>, keys: Vec<String>) -> Self {
        EagerTable {
            children,
            keys,
            domain,
            inodes: Mutex::new(HashMap::new()),
            generations: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn inode(&self, gfid: Gfid) -> Arc<EagerInode> {
        self.inodes.lock().entry(gfid).or_default().clone()
    }

    /// Joins the hold on `gfid` if there is one (not being released).
    pub(super) fn enter(&self, gfid: Gfid) -> Option<Inflight> {
        let inode = self.inodes.lock().get(&gfid).cloned()?;
        let ready = {
            let mut g = inode.held.lock();
            let h = g.as_mut().filter(|h| !h.closing)?;
            h.inflight += 1;
            h.ready.clone()
        };
        Some(Inflight { inode, ready })
    }

    /// True if this client holds (or is releasing) the eager lock of `gfid`.
    pub(super) fn holds(&self, gfid: Gfid) -> bool {
        self.inodes
            .lock()
            .get(&gfid)
            .is_some_and(|i| i.held.lock().is_some())
    }

    /// Post-op and unlock of the hold on `gfid` (`generation`: only that
    /// hold), after the operations under way finish.
    pub(super) async fn release(self: &Arc<Self>, gfid: Gfid, generation: Option<u64>) {
        let Some(inode) = self.inodes.lock().get(&gfid).cloned() else {
            return;
        };
        let _t = inode.transition.lock().await;
        {
            let mut g = inode.held.lock();
            match g.as_mut() {
                Some(h) if generation.is_none_or(|x| x == h.generation) => h.closing = true,
                _ => return,
            }
        }
        loop {
            if inode.held.lock().as_ref().is_none_or(|h| h.inflight == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(h) = inode.held.lock().take() else {
            return;
        };
        let n = self.children.len();
        let clear: Vec<usize> = h
            .ready
            .iter()
            .copied()
            .filter(|c| h.failed & (1 << c) == 0)
            .collect();
        let v = changelog::encode(changelog::counters(&[Slot::Data], -1));
        let delta: crate::proto::XattrMap = clear
            .iter()
            .map(|j| (self.keys[*j].clone(), v.clone()))
            .collect();
        let unlock = InodeLk {
            domain: self.domain.clone(),
            cmd: LockCmd::Set,
            kind: LockType::Unlock,
            start: 0,
            len: 0,
            owner: h.owner,
        };
        // Post-op, then the unlock right behind it on each connection (a
        // brick answers an xattrop before reading the next request).
        futures::future::join_all(h.locked.iter().map(|c| {
            let (delta, unlock) = (&delta, &unlock);
            let ready = h.ready.contains(c) && !delta.is_empty();
            let post = async move {
                if !ready {
                    return;
                }
                if let Err(e) = self.children[*c]
                    .xattrop(gfid, XattropOp::AddArray64, delta)
                    .await
                {
                    if !e.is_disconnect() {
                        tracing::warn!(child = self.children[*c].name(), %gfid, "post-op failed: {e}");
                    }
                }
            };
            let unlock = async move {
                if let Err(e) = self.children[*c].inodelk(gfid, unlock).await {
                    if !e.is_disconnect() {
                        tracing::warn!(child = self.children[*c].name(), %gfid, "unlock failed: {e}");
                    }
                }
            };
            futures::future::join(post, unlock)
        }))
        .await;
        tracing::trace!(%gfid, n, held_ms = h.since.elapsed().as_millis() as u64, "eager lock released");
        drop(_t);
        // Forget the inode unless someone is about to use it.
        let mut m = self.inodes.lock();
        if m.get(&gfid).is_some_and(|i| Arc::strong_count(i) <= 2) {
            m.remove(&gfid);
        }
    }

    /// Watches the hold `generation` of `gfid` and releases it when idle
    /// or held too long.
    fn watch(self: &Arc<Self>, gfid: Gfid, generation: u64) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let table = self.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(inode) = table.inodes.lock().get(&gfid).cloned() else {
                    return;
                };
                let due = match inode.held.lock().as_ref() {
                    Some(h) if h.generation == generation => {
                        (h.inflight == 0 && h.last.elapsed() >= IDLE)
                            || h.since.elapsed() >= MAX_HOLD
                    }
                    _ => return,
                };
                // Not kept across the release, which forgets the inode
                // when nobody else refers to it.
                drop(inode);
                if due {
                    table.release(gfid, Some(generation)).await;
                    return;
                }
            }
        });
        true
    }
}

impl Replicate {
    /// Takes the eager lock of `gfid` on the children `cands` (lock, then
    /// pre-op), unless another operation took it meanwhile. Only a full
    /// set is held eagerly: with a child missing, everything is undone and
    /// `false` returned (the operation then runs as a transaction of its
    /// own, so a copy that took writes the others missed says so at once).
    pub(super) async fn eager_acquire(&self, gfid: Gfid, cands: &[usize]) -> FsResult<bool> {
        let inode = self.eager.inode(gfid);
        let _t = inode.transition.lock().await;
        if inode.held.lock().is_some() {
            return Ok(true);
        }
        if cands.len() < self.n() {
            return Ok(false);
        }
        let n = self.n();
        if cands.is_empty() {
            return Err(crate::error::FsError::NotConnected(format!(
                "{}: no child is up",
                self.name
            )));
        }
        if !self.quorum.met(cands, n) {
            return Err(crate::error::FsError::ReadOnly);
        }
        let spec = self.data_txn(gfid, 0, 0);
        let owner = self.new_owner();
        let locked = self.lock_all(&spec.locks, cands, owner, true).await?;
        if !self.quorum.met(&locked, n) {
            self.unlock_all(&spec.locks, &locked, owner).await;
            return Err(crate::error::FsError::ReadOnly);
        }
        let delta = self.changelog_delta(&[Slot::Data], 1, 0..n);
        let pre = futures::future::join_all(
            locked
                .iter()
                .map(|c| self.children[*c].xattrop(gfid, XattropOp::AddArray64, &delta)),
        )
        .await;
        let ready: Vec<usize> = locked
            .iter()
            .zip(&pre)
            .filter(|(_, r)| r.is_ok())
            .map(|(c, _)| *c)
            .collect();
        if ready.len() < n {
            // Not the whole set: undo the pre-op where it landed.
            let undo = self.changelog_delta(&[Slot::Data], -1, 0..n);
            futures::future::join_all(
                ready
                    .iter()
                    .map(|c| self.children[*c].xattrop(gfid, XattropOp::AddArray64, &undo)),
            )
            .await;
            self.unlock_all(&spec.locks, &locked, owner).await;
            return Ok(false);
        }
        let generation = self
            .eager
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        *inode.held.lock() = Some(Held {
            owner,
            locked,
            ready,
            failed: 0,
            inflight: 0,
            closing: false,
            since: now,
            last: now,
            generation,
        });
        drop(_t);
        if !self.eager.watch(gfid, generation) {
            // No runtime to time the release: do not keep it.
            self.eager.release(gfid, Some(generation)).await;
            return Ok(false);
        }
        Ok(true)
    }

    /// Post-op and unlock of this client's eager lock on `gfid`, if held.
    pub(super) async fn eager_release(&self, gfid: Gfid) {
        if self.eager.holds(gfid) {
            self.eager.release(gfid, None).await;
        }
    }
}
