//! Replicate's write transaction: lock on every child (non-blocking on all
//! at once, then blocking one child at a time in child order if that
//! conflicted), pre-op (+1 on the changed slots of every child's counter,
//! on every child), the operation on all, post-op (-1 for the children
//! where it succeeded, so the others stay accused), unlock.

use futures::future::join_all;
use std::future::Future;

use super::changelog::{self, Slot};
use super::Replicate;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::name::Name;
use crate::proto::{EntryLk, InodeLk, Loc, LockCmd, LockType, XattrMap, XattropOp};

/// One lock a transaction takes on each child.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LockItem {
    /// A byte range of an inode in a domain (`len` 0 = to end of file).
    Inode {
        gfid: Gfid,
        domain: String,
        start: u64,
        len: u64,
    },
    /// A name in a directory (`None`: the whole directory).
    Entry {
        parent: Gfid,
        name: Option<Name>,
        domain: String,
    },
}

/// What a transaction locks and which counters it raises.
#[derive(Debug, Clone)]
pub(super) struct TxnSpec {
    /// Locks, taken in this (sorted) order on each child.
    pub(super) locks: Vec<LockItem>,
    /// Inodes whose counters go up during the operation, and which slots.
    pub(super) changelog: Vec<(Gfid, Vec<Slot>)>,
}

impl Replicate {
    /// The lock domain of metadata transactions (data and entry ones use
    /// the translator's name).
    pub(super) fn meta_domain(&self) -> String {
        format!("{}:metadata", self.name)
    }

    /// A data transaction on `len` bytes at `start` (0 = to end of file).
    pub(super) fn data_txn(&self, gfid: Gfid, start: u64, len: u64) -> TxnSpec {
        TxnSpec {
            locks: vec![LockItem::Inode {
                gfid,
                domain: self.name.clone(),
                start,
                len,
            }],
            changelog: vec![(gfid, vec![Slot::Data])],
        }
    }

    /// A metadata transaction (attributes, xattrs).
    pub(super) fn meta_txn(&self, gfid: Gfid) -> TxnSpec {
        TxnSpec {
            locks: vec![LockItem::Inode {
                gfid,
                domain: self.meta_domain(),
                start: 0,
                len: 0,
            }],
            changelog: vec![(gfid, vec![Slot::Metadata])],
        }
    }

    /// An entry transaction on names (their parents' entry counters).
    pub(super) fn entry_txn(&self, locs: &[&Loc]) -> TxnSpec {
        let mut locks: Vec<LockItem> = locs
            .iter()
            .map(|l| LockItem::Entry {
                parent: l.parent,
                name: Some(l.name.clone()),
                domain: self.name.clone(),
            })
            .collect();
        locks.sort();
        locks.dedup();
        let mut parents: Vec<Gfid> = locs.iter().map(|l| l.parent).collect();
        parents.sort();
        parents.dedup();
        TxnSpec {
            locks,
            changelog: parents
                .into_iter()
                .map(|p| (p, vec![Slot::Entry]))
                .collect(),
        }
    }

    async fn lock_item(
        &self,
        child: usize,
        item: &LockItem,
        cmd: LockCmd,
        kind: LockType,
        owner: u64,
    ) -> FsResult<()> {
        let c = &self.children[child];
        match item {
            LockItem::Inode {
                gfid,
                domain,
                start,
                len,
            } => {
                let lk = InodeLk {
                    domain: domain.clone(),
                    cmd,
                    kind,
                    start: *start,
                    len: *len,
                    owner,
                };
                c.inodelk(*gfid, &lk).await
            }
            LockItem::Entry {
                parent,
                name,
                domain,
            } => {
                let lk = EntryLk {
                    domain: domain.clone(),
                    cmd,
                    kind,
                    owner,
                };
                c.entrylk(*parent, name.as_ref(), &lk).await
            }
        }
    }

    /// Takes every item on one child, in order; on failure releases what
    /// it took.
    async fn lock_child(
        &self,
        child: usize,
        items: &[LockItem],
        cmd: LockCmd,
        owner: u64,
    ) -> FsResult<()> {
        for (k, item) in items.iter().enumerate() {
            if let Err(e) = self
                .lock_item(child, item, cmd, LockType::Write, owner)
                .await
            {
                self.unlock_child(child, &items[..k], owner).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn unlock_child(&self, child: usize, items: &[LockItem], owner: u64) {
        for item in items.iter().rev() {
            if let Err(e) = self
                .lock_item(child, item, LockCmd::Set, LockType::Unlock, owner)
                .await
            {
                if !e.is_disconnect() {
                    tracing::warn!(child = self.children[child].name(), "unlock failed: {e}");
                }
            }
        }
    }

    /// Releases `items` on every child of `locked`.
    pub(super) async fn unlock_all(&self, items: &[LockItem], locked: &[usize], owner: u64) {
        join_all(locked.iter().map(|c| self.unlock_child(*c, items, owner))).await;
    }

    /// Locks `items` on the children `cands`. All are tried at once without
    /// waiting; if any conflicts, everything is released and, when
    /// `blocking`, taken again waiting on one child after the other in
    /// child order (so two transactions never hold each other up), else
    /// `WouldBlock` is returned. Children that fail otherwise are left out;
    /// the children locked are returned.
    pub(super) async fn lock_all(
        &self,
        items: &[LockItem],
        cands: &[usize],
        owner: u64,
        blocking: bool,
    ) -> FsResult<Vec<usize>> {
        let tries = join_all(
            cands
                .iter()
                .map(|c| self.lock_child(*c, items, LockCmd::Set, owner)),
        )
        .await;
        let mut locked = Vec::new();
        let mut conflict = false;
        let mut last_err = None;
        for (c, r) in cands.iter().zip(tries) {
            match r {
                Ok(()) => locked.push(*c),
                Err(FsError::WouldBlock) => conflict = true,
                Err(e) => {
                    if !e.is_disconnect() {
                        tracing::warn!(child = self.children[*c].name(), "lock failed: {e}");
                    }
                    last_err = Some(e);
                }
            }
        }
        if !conflict {
            if locked.is_empty() {
                return Err(last_err.unwrap_or_else(|| FsError::NotConnected(self.name.clone())));
            }
            return Ok(locked);
        }
        self.unlock_all(items, &locked, owner).await;
        if !blocking {
            return Err(FsError::WouldBlock);
        }
        locked.clear();
        for c in cands {
            match self.lock_child(*c, items, LockCmd::SetWait, owner).await {
                Ok(()) => locked.push(*c),
                Err(e) => {
                    if !e.is_disconnect() {
                        tracing::warn!(child = self.children[*c].name(), "lock failed: {e}");
                    }
                    last_err = Some(e);
                }
            }
        }
        if locked.is_empty() {
            return Err(last_err.unwrap_or_else(|| FsError::NotConnected(self.name.clone())));
        }
        Ok(locked)
    }

    /// The xattrop adding `n` to `slots` of the counters of `children`.
    pub(super) fn changelog_delta(
        &self,
        slots: &[Slot],
        n: i64,
        children: impl Iterator<Item = usize>,
    ) -> XattrMap {
        let v = changelog::encode(changelog::counters(slots, n));
        children
            .map(|j| (self.keys[j].clone(), v.clone()))
            .collect()
    }

    /// Runs `op` on the children `cands` as one transaction of `spec`.
    /// Returns the children where it succeeded with their results (never
    /// empty), or the error if it failed everywhere. Children that failed
    /// or did not take part are accused on the ones that succeeded.
    pub(super) async fn transact<T, F, Fut>(
        &self,
        spec: &TxnSpec,
        cands: Vec<usize>,
        op: F,
    ) -> FsResult<Vec<(usize, T)>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let n = self.n();
        if cands.is_empty() {
            return Err(FsError::NotConnected(format!(
                "{}: no child is up",
                self.name
            )));
        }
        if !self.quorum.met(&cands, n) {
            return Err(FsError::ReadOnly);
        }
        let owner = self.new_owner();
        let locked = self.lock_all(&spec.locks, &cands, owner, true).await?;
        if !self.quorum.met(&locked, n) {
            self.unlock_all(&spec.locks, &locked, owner).await;
            return Err(FsError::ReadOnly);
        }

        // Pre-op: every child's counter up on every locked child.
        let pre = join_all(locked.iter().map(|c| async move {
            let mut ok = Vec::with_capacity(spec.changelog.len());
            for (gfid, slots) in &spec.changelog {
                let delta = self.changelog_delta(slots, 1, 0..n);
                let r = self.children[*c]
                    .xattrop(*gfid, XattropOp::AddArray64, &delta)
                    .await;
                if let Err(e) = &r {
                    tracing::debug!(child = self.children[*c].name(), %gfid, "pre-op failed: {e}");
                }
                ok.push(r.is_ok());
            }
            ok
        }))
        .await;
        let ready: Vec<usize> = locked
            .iter()
            .zip(&pre)
            .filter(|(_, ok)| ok.iter().all(|b| *b))
            .map(|(c, _)| *c)
            .collect();

        // The operation.
        let results = join_all(ready.iter().map(|c| op(*c))).await;
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for (c, r) in ready.iter().zip(results) {
            match r {
                Ok(v) => done.push((*c, v)),
                Err(e) => errors.push((*c, e)),
            }
        }
        let succeeded: Vec<usize> = done.iter().map(|(c, _)| *c).collect();

        // Post-op: clear the counters of the children where it worked (all
        // of them if it failed everywhere: nobody is behind).
        let clear: Vec<usize> = if succeeded.is_empty() {
            (0..n).collect()
        } else {
            succeeded.clone()
        };
        // With one inode to clear, the unlock follows the post-op on each
        // connection without waiting for its answer: a brick answers an
        // xattrop before it reads the next request, so the lock still goes
        // after the counters (one round trip less).
        let pipelined = spec.changelog.len() == 1;
        join_all(locked.iter().zip(&pre).map(|(c, pre_ok)| {
            let clear = &clear;
            let post = async move {
                for ((gfid, slots), ok) in spec.changelog.iter().zip(pre_ok) {
                    if !ok {
                        continue;
                    }
                    let delta = self.changelog_delta(slots, -1, clear.iter().copied());
                    if let Err(e) = self.children[*c].xattrop(*gfid, XattropOp::AddArray64, &delta).await {
                        tracing::warn!(child = self.children[*c].name(), %gfid, "post-op failed: {e}");
                    }
                }
            };
            async move {
                if pipelined {
                    futures::future::join(post, self.unlock_child(*c, &spec.locks, owner)).await;
                } else {
                    post.await;
                    self.unlock_child(*c, &spec.locks, owner).await;
                }
            }
        }))
        .await;

        if succeeded.is_empty() {
            // The same failure everywhere is the operation's answer.
            let pick = errors
                .iter()
                .find(|(_, e)| !e.is_disconnect())
                .or(errors.first());
            return Err(pick
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| FsError::NotConnected(self.name.clone())));
        }
        let behind: Vec<usize> = (0..n).filter(|c| !succeeded.contains(c)).collect();
        if !behind.is_empty() {
            for (gfid, slots) in &spec.changelog {
                self.mark_stale(*gfid, slots, &behind);
            }
            for (c, e) in &errors {
                if !e.is_disconnect() {
                    tracing::warn!(
                        child = self.children[*c].name(),
                        "operation failed on one copy only ({e}); it is accused for heal"
                    );
                }
            }
        }
        if !self.quorum.met(&succeeded, n) {
            return Err(FsError::ReadOnly);
        }
        Ok(done)
    }
}
