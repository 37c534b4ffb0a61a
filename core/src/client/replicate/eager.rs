//! Eager locking and delayed post-op (GlusterFS's eager-lock and
//! post-op-delay), for a file's data and a directory's entries: the first
//! operation takes the whole file's data lock (the whole directory's entry
//! lock) and raises the data (entry) counters once (pre-op); following ones
//! from this client go straight to the children. The post-op and the unlock
//! come after `IDLE` without an operation, after `MAX_HOLD` (so another
//! client waiting for the lock gets it soon), on flush, fsync or release
//! (data), before an entry transaction of this client that needs the lock
//! (entries), or at once when an operation failed on some child (so the
//! failure is recorded before the operation is answered).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::changelog::{self, Slot};
use super::transaction::{LockItem, TxnSpec};
use super::Replicate;
use crate::client::xlator::Xlator;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::name::Name;
use crate::proto::{EntryLk, InodeLk, LockCmd, LockType, XattropOp};

/// An inode's eager lock goes after this long without an operation.
pub(super) const IDLE: Duration = Duration::from_secs(1);
/// ... and after this long in all (then taken again by the next operation),
/// so a client streaming writes never keeps others out for long.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(1);
/// How often the holder's timer looks at an inode.
const TICK: Duration = Duration::from_millis(100);

/// What an eager hold covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum HoldKind {
    /// A file's data: its whole-file data lock, its data counters.
    Data,
    /// A directory's entries: its whole-directory entry lock, its entry
    /// counters.
    Entry,
}

impl HoldKind {
    fn slot(self) -> Slot {
        match self {
            HoldKind::Data => Slot::Data,
            HoldKind::Entry => Slot::Entry,
        }
    }
}

/// A held eager lock.
pub(super) struct Held {
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
    /// Names under an entry operation (an entry hold runs one operation
    /// per name at a time, so every child sees them in the same order).
    names: HashSet<Name>,
}

impl Held {
    /// A hold taken by `owner` on `locked`, pre-op done on `ready`.
    pub(super) fn new(owner: u64, locked: Vec<usize>, ready: Vec<usize>) -> Held {
        let now = Instant::now();
        Held {
            owner,
            locked,
            ready,
            failed: 0,
            inflight: 0,
            closing: false,
            since: now,
            last: now,
            generation: 0,
            names: HashSet::new(),
        }
    }
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
    /// The data and entry lock domain (the translator's name).
    domain: String,
    inodes: Mutex<HashMap<(HoldKind, Gfid), Arc<EagerInode>>>,
    generations: std::sync::atomic::AtomicU64,
}

/// Marks one operation under way on a hold; counts it done when dropped
/// (also if the operation's future is dropped).
pub(super) struct Inflight {
    inode: Arc<EagerInode>,
    /// Children to send the operation to.
    pub(super) ready: Vec<usize>,
    /// The name an entry operation works on.
    name: Option<Name>,
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
            if let Some(n) = &self.name {
                h.names.remove(n);
            }
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

    fn inode(&self, kind: HoldKind, gfid: Gfid) -> Arc<EagerInode> {
        self.inodes.lock().entry((kind, gfid)).or_default().clone()
    }

    /// Joins the hold on `gfid` if there is one (not being released).
    pub(super) fn enter(&self, kind: HoldKind, gfid: Gfid) -> Option<Inflight> {
        match self.enter_name(kind, gfid, None) {
            Entered::Joined(i) => Some(i),
            Entered::NoHold | Entered::NameBusy => None,
        }
    }

    /// Joins the hold on `gfid` for an operation on `name` (entry holds),
    /// unless another operation of this client on that name is under way.
    pub(super) fn enter_name(&self, kind: HoldKind, gfid: Gfid, name: Option<&Name>) -> Entered {
        let Some(inode) = self.inodes.lock().get(&(kind, gfid)).cloned() else {
            return Entered::NoHold;
        };
        let ready = {
            let mut g = inode.held.lock();
            let Some(h) = g.as_mut().filter(|h| !h.closing) else {
                return Entered::NoHold;
            };
            if let Some(n) = name {
                if !h.names.insert(n.clone()) {
                    return Entered::NameBusy;
                }
            }
            h.inflight += 1;
            h.ready.clone()
        };
        Entered::Joined(Inflight {
            inode,
            ready,
            name: name.cloned(),
        })
    }

    /// True if this client holds (or is releasing) the eager lock of `gfid`.
    pub(super) fn holds(&self, kind: HoldKind, gfid: Gfid) -> bool {
        self.inodes
            .lock()
            .get(&(kind, gfid))
            .is_some_and(|i| i.held.lock().is_some())
    }

    /// Post-op and unlock of every hold.
    pub(super) async fn release_all(self: &Arc<Self>) {
        let keys: Vec<(HoldKind, Gfid)> = self.inodes.lock().keys().copied().collect();
        futures::future::join_all(keys.into_iter().map(|(k, g)| self.release(k, g, None))).await;
    }

    /// Post-op and unlock of the hold on `gfid` (`generation`: only that
    /// hold), after the operations under way finish.
    pub(super) async fn release(
        self: &Arc<Self>,
        kind: HoldKind,
        gfid: Gfid,
        generation: Option<u64>,
    ) {
        let Some(inode) = self.inodes.lock().get(&(kind, gfid)).cloned() else {
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
        let v = changelog::encode(changelog::counters(&[kind.slot()], -1));
        let delta: crate::proto::XattrMap = clear
            .iter()
            .map(|j| (self.keys[*j].clone(), v.clone()))
            .collect();
        // Post-op, then the unlock right behind it on each connection (a
        // brick answers an xattrop before reading the next request).
        futures::future::join_all(h.locked.iter().map(|c| {
            let delta = &delta;
            let ready = h.ready.contains(c) && !delta.is_empty();
            let post = async move {
                if !ready {
                    return;
                }
                match self.children[*c]
                    .xattrop(gfid, XattropOp::AddArray64, delta)
                    .await
                {
                    // An inode removed meanwhile has no counters left.
                    Err(FsError::Stale | FsError::NotFound) => {}
                    Err(e) if !e.is_disconnect() => {
                        tracing::warn!(child = self.children[*c].name(), %gfid, "post-op failed: {e}");
                    }
                    _ => {}
                }
            };
            let unlock = async move {
                let r = match kind {
                    HoldKind::Data => {
                        let lk = InodeLk {
                            domain: self.domain.clone(),
                            cmd: LockCmd::Set,
                            kind: LockType::Unlock,
                            start: 0,
                            len: 0,
                            owner: h.owner,
                        };
                        self.children[*c].inodelk(gfid, &lk).await
                    }
                    HoldKind::Entry => {
                        let lk = EntryLk {
                            domain: self.domain.clone(),
                            cmd: LockCmd::Set,
                            kind: LockType::Unlock,
                            owner: h.owner,
                        };
                        self.children[*c].entrylk(gfid, None, &lk).await
                    }
                };
                if let Err(e) = r {
                    if !e.is_disconnect() {
                        tracing::warn!(child = self.children[*c].name(), %gfid, "unlock failed: {e}");
                    }
                }
            };
            futures::future::join(post, unlock)
        }))
        .await;
        tracing::trace!(%gfid, ?kind, n, held_ms = h.since.elapsed().as_millis() as u64, "eager lock released");
        drop(_t);
        // Forget the inode unless someone is about to use it.
        let mut m = self.inodes.lock();
        if m.get(&(kind, gfid))
            .is_some_and(|i| Arc::strong_count(i) <= 2)
        {
            m.remove(&(kind, gfid));
        }
    }

    /// Installs `held` on `gfid` (taken by the caller) and starts its timer;
    /// false if there is one already or no runtime to time it (then the
    /// caller keeps `held` and must undo it).
    fn install(self: &Arc<Self>, kind: HoldKind, gfid: Gfid, held: &mut Option<Held>) -> bool {
        let inode = self.inode(kind, gfid);
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut g = inode.held.lock();
            if g.is_some() {
                return false;
            }
            let Some(mut h) = held.take() else {
                return false;
            };
            h.generation = generation;
            *g = Some(h);
        }
        if !self.watch(kind, gfid, generation) {
            *held = inode.held.lock().take();
            return false;
        }
        true
    }

    /// Watches the hold `generation` of `gfid` and releases it when idle
    /// or held too long.
    fn watch(self: &Arc<Self>, kind: HoldKind, gfid: Gfid, generation: u64) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let table = self.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(inode) = table.inodes.lock().get(&(kind, gfid)).cloned() else {
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
                    table.release(kind, gfid, Some(generation)).await;
                    return;
                }
            }
        });
        true
    }
}

/// What `EagerTable::enter_name` found.
pub(super) enum Entered {
    /// Joined the hold.
    Joined(Inflight),
    /// No hold (or one being released).
    NoHold,
    /// This client has an operation on that name under way: wait.
    NameBusy,
}

impl Replicate {
    /// What an eager hold of `kind` on `gfid` locks and raises.
    fn hold_spec(&self, kind: HoldKind, gfid: Gfid) -> TxnSpec {
        match kind {
            HoldKind::Data => self.data_txn(gfid, 0, 0),
            HoldKind::Entry => TxnSpec {
                locks: vec![LockItem::Entry {
                    parent: gfid,
                    name: None,
                    domain: self.name.clone(),
                }],
                changelog: vec![(gfid, vec![Slot::Entry])],
            },
        }
    }

    /// Takes the eager lock of `kind` on `gfid` on the children `cands`
    /// (lock, then pre-op), unless another operation took it meanwhile.
    /// Only a full set is held eagerly: with a child missing, everything is
    /// undone and `false` returned (the operation then runs as a
    /// transaction of its own, so a copy that took changes the others
    /// missed says so at once).
    pub(super) async fn eager_acquire(
        &self,
        kind: HoldKind,
        gfid: Gfid,
        cands: &[usize],
    ) -> FsResult<bool> {
        let inode = self.eager.inode(kind, gfid);
        let _t = inode.transition.lock().await;
        if inode.held.lock().is_some() {
            return Ok(true);
        }
        if cands.len() < self.n() {
            return Ok(false);
        }
        let n = self.n();
        if cands.is_empty() {
            return Err(FsError::NotConnected(format!(
                "{}: no child is up",
                self.name
            )));
        }
        if !self.quorum.met(cands, n) {
            return Err(FsError::ReadOnly);
        }
        let spec = self.hold_spec(kind, gfid);
        let slot = [kind.slot()];
        let owner = self.new_owner();
        let locked = self.lock_all(&spec.locks, cands, owner, true).await?;
        if !self.quorum.met(&locked, n) {
            self.unlock_all(&spec.locks, &locked, owner).await;
            return Err(FsError::ReadOnly);
        }
        let delta = self.changelog_delta(&slot, 1, 0..n);
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
            let undo = self.changelog_delta(&slot, -1, 0..n);
            futures::future::join_all(
                ready
                    .iter()
                    .map(|c| self.children[*c].xattrop(gfid, XattropOp::AddArray64, &undo)),
            )
            .await;
            self.unlock_all(&spec.locks, &locked, owner).await;
            return Ok(false);
        }
        let mut held = Some(Held::new(owner, locked, ready));
        drop(_t);
        if !self.eager.install(kind, gfid, &mut held) {
            // No runtime to time the release: do not keep it.
            if let Some(h) = held {
                self.undo_hold(kind, gfid, h).await;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Post-op and unlock of a hold that was never installed.
    async fn undo_hold(&self, kind: HoldKind, gfid: Gfid, h: Held) {
        let spec = self.hold_spec(kind, gfid);
        let undo = self.changelog_delta(&[kind.slot()], -1, 0..self.n());
        futures::future::join_all(
            h.ready
                .iter()
                .map(|c| self.children[*c].xattrop(gfid, XattropOp::AddArray64, &undo)),
        )
        .await;
        self.unlock_all(&spec.locks, &h.locked, h.owner).await;
    }

    /// Makes the data hold of a file this client just created: its copies
    /// were born with their data counters raised (the pre-op, on the
    /// children `created`) and the data lock `owner` was taken on `locked`
    /// with the creation. Only a full set is kept; otherwise the post-op
    /// and unlock come at once (the children where the file was not made
    /// stay accused).
    pub(super) async fn adopt_new_file(
        &self,
        gfid: Gfid,
        owner: u64,
        locked: Vec<usize>,
        created: Vec<usize>,
    ) {
        let n = self.n();
        let full = locked.len() == n && created.len() == n;
        let mut held = Some(Held::new(owner, locked, created));
        if !self.eager.install(HoldKind::Data, gfid, &mut held) {
            if let Some(h) = held {
                // Someone (a retried create?) holds it already: clear ours.
                let clear: Vec<usize> = h.ready.clone();
                let delta = self.changelog_delta(&[Slot::Data], -1, clear.iter().copied());
                let both: Vec<usize> = h
                    .locked
                    .iter()
                    .copied()
                    .filter(|c| h.ready.contains(c))
                    .collect();
                futures::future::join_all(
                    both.iter()
                        .map(|c| self.children[*c].xattrop(gfid, XattropOp::AddArray64, &delta)),
                )
                .await;
                let spec = self.hold_spec(HoldKind::Data, gfid);
                self.unlock_all(&spec.locks, &h.locked, h.owner).await;
            }
            return;
        }
        if !full {
            self.eager.release(HoldKind::Data, gfid, None).await;
        }
    }

    /// Post-op and unlock of this client's eager lock of `kind` on `gfid`,
    /// if held.
    pub(super) async fn eager_release(&self, kind: HoldKind, gfid: Gfid) {
        if self.eager.holds(kind, gfid) {
            self.eager.release(kind, gfid, None).await;
        }
    }
}
