//! Replicate's entry operations (create, mknod, mkdir, symlink, link,
//! unlink, rmdir, rename): under this client's eager entry hold of the
//! parent directory (`eager`) when the whole set is up, else as entry
//! transactions of their own. A file created under the hold is born with
//! its own data hold: its copies come with their data counters raised and
//! its data lock is taken alongside the create, so its first writes go
//! straight to the children.

use futures::future::join_all;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::changelog::Slot;
use super::eager::{Entered, HoldKind};
use super::fops::first;
use super::{FileFd, Replicate};
use crate::client::fd::Fd;
use crate::client::xlator::Xlator;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::Iatt;
use crate::proto::{InodeLk, Loc, LockCmd, LockType, NewInode};

/// Flags that only make sense for the first open of a file.
const CREATE_ONLY: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC;
/// How long an entry operation waits before looking again when another
/// operation of this client on the same name is under way.
const NAME_BUSY_WAIT: Duration = Duration::from_millis(1);

impl Replicate {
    /// Whether this client may hold locks eagerly right now.
    fn eager_usable(&self) -> bool {
        self.eager_on && tokio::runtime::Handle::try_current().is_ok()
    }

    /// Runs the entry operation `op` on `loc` on every child: under this
    /// client's eager entry hold of the parent (the first operation takes
    /// it), or as a transaction of its own when the set is not whole.
    /// Returns the children where it succeeded with their results (never
    /// empty), or the error if it failed everywhere; children that failed
    /// are accused by the parent's entry changelog on the others.
    pub(super) async fn entry_op<T, F, Fut>(&self, loc: &Loc, op: F) -> FsResult<Vec<(usize, T)>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let mut tries = 0;
        while self.eager_usable() && tries < 8 {
            let held = match self
                .eager
                .enter_name(HoldKind::Entry, loc.parent, Some(&loc.name))
            {
                Entered::Joined(h) => h,
                Entered::NameBusy => {
                    tokio::time::sleep(NAME_BUSY_WAIT).await;
                    continue;
                }
                Entered::NoHold => {
                    tries += 1;
                    if self
                        .eager_acquire(HoldKind::Entry, loc.parent, &self.up())
                        .await?
                    {
                        continue;
                    }
                    break;
                }
            };
            let results = join_all(held.ready.iter().map(|c| op(*c))).await;
            return self
                .settle_held(held, results, HoldKind::Entry, loc.parent, Slot::Entry)
                .await;
        }
        // This client's own hold would keep the transaction's lock out.
        self.eager_release(HoldKind::Entry, loc.parent).await;
        let spec = self.entry_txn(&[loc]);
        self.transact(&spec, self.up(), op).await
    }

    pub(super) async fn create_file(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        let n = self.n();
        // With the whole set up, the file's data hold comes with it: the
        // copies are born with their data counters raised (the pre-op) and
        // the data lock of the new gfid (nobody else knows it yet) is taken
        // on each connection right before the create.
        let fresh = self.eager_usable() && self.up().len() == n;
        let owner = self.new_owner();
        let mut born = inode.clone();
        if fresh {
            born.xattrs
                .extend(self.changelog_delta(&[Slot::Data], 1, 0..n));
        }
        let lock = InodeLk {
            domain: self.name.clone(),
            cmd: LockCmd::Set,
            kind: LockType::Write,
            start: 0,
            len: 0,
            owner,
        };
        let (born, lock) = (&born, &lock);
        let done = self
            .entry_op(loc, |c| async move {
                let child = &self.children[c];
                if !fresh {
                    let (iatt, fd) = child.create(loc, born, flags, exclusive).await?;
                    return Ok((iatt, fd, false));
                }
                let (locked, made) = futures::future::join(
                    child.inodelk(born.gfid, lock),
                    child.create(loc, born, flags, exclusive),
                )
                .await;
                match made {
                    Ok((iatt, fd)) => Ok((iatt, fd, locked.is_ok())),
                    Err(e) => {
                        if locked.is_ok() {
                            let unlock = InodeLk {
                                kind: LockType::Unlock,
                                ..lock.clone()
                            };
                            let _ = child.inodelk(born.gfid, &unlock).await;
                        }
                        Err(e)
                    }
                }
            })
            .await?;
        let iatt = done[0].1 .0.clone();
        let mut slots = vec![None; n];
        let mut created = Vec::new();
        let mut locked = Vec::new();
        for (c, (_, f, l)) in done {
            slots[c] = Some(f);
            created.push(c);
            if l {
                locked.push(c);
            }
        }
        self.note_new(
            inode.gfid,
            &slots.iter().map(Option::is_some).collect::<Vec<_>>(),
        );
        if fresh {
            self.adopt_new_file(inode.gfid, owner, locked, created)
                .await;
        }
        let st = FileFd::new(slots);
        let gfid = iatt.gfid;
        Ok((iatt, Fd::new(gfid, flags & !CREATE_ONLY, st)))
    }

    /// A new inode exists only where `made[i]`: the others are stale.
    fn note_new(&self, gfid: Gfid, made: &[bool]) {
        let behind: Vec<usize> = (0..self.n()).filter(|i| !made[*i]).collect();
        self.forget(gfid);
        self.mark_stale(gfid, &Slot::ALL, &behind);
    }

    /// mknod, mkdir, symlink: `op` on every child.
    pub(super) async fn new_entry<F, Fut>(
        &self,
        loc: &Loc,
        inode: &NewInode,
        op: F,
    ) -> FsResult<Iatt>
    where
        F: Fn(Arc<dyn Xlator>) -> Fut,
        Fut: Future<Output = FsResult<Iatt>>,
    {
        let done = self.entry_op(loc, |c| op(self.children[c].clone())).await?;
        let made: Vec<bool> = (0..self.n())
            .map(|i| done.iter().any(|(c, _)| *c == i))
            .collect();
        self.note_new(inode.gfid, &made);
        first(done)
    }

    pub(super) async fn hard_link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        let done = self
            .entry_op(loc, |c| self.children[c].link(gfid, loc))
            .await?;
        first(done)
    }

    /// unlink / rmdir. A copy already gone is fine as long as one existed.
    pub(super) async fn remove(&self, loc: &Loc, dir: bool) -> FsResult<()> {
        let done = self
            .entry_op(loc, |c| async move {
                let r = if dir {
                    self.children[c].rmdir(loc).await
                } else {
                    self.children[c].unlink(loc).await
                };
                match r {
                    Ok(()) => Ok(true),
                    Err(FsError::NotFound) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if done.iter().any(|(_, removed)| *removed) {
            Ok(())
        } else {
            Err(FsError::NotFound)
        }
    }

    /// rename: an entry transaction on both names (this client's holds on
    /// the parents go first, or they would keep its locks out).
    pub(super) async fn rename_entry(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        self.eager_release(HoldKind::Entry, from.parent).await;
        if to.parent != from.parent {
            self.eager_release(HoldKind::Entry, to.parent).await;
        }
        let spec = self.entry_txn(&[from, to]);
        self.transact(&spec, self.up(), |c| self.children[c].rename(from, to))
            .await?;
        Ok(())
    }
}
