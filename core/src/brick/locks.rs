//! POSIX byte-range locks, kept in memory per gfid: GETLK/SETLK/SETLKW with
//! splitting and merging as fcntl(2) does, blocked waiters granted in order
//! when conflicting locks go away, deadlock detection, and release per lock
//! owner (close) or per connection (disconnect).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::proto::{FileLock, LockCmd, LockType};

/// Who holds a lock: the client (its handshake id) and the owner within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct OwnerKey {
    /// The client's id from its handshake.
    pub client: Arc<str>,
    /// The lock owner within that client.
    pub owner: u64,
}

/// A granted or wanted range; `end` is inclusive (`u64::MAX` = to EOF).
#[derive(Debug, Clone)]
struct Range {
    owner: OwnerKey,
    conn: u64,
    write: bool,
    start: u64,
    end: u64,
    pid: u32,
}

impl Range {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    fn conflicts(&self, other: &Range) -> bool {
        self.owner != other.owner
            && self.overlaps(other.start, other.end)
            && (self.write || other.write)
    }

    fn to_lock(&self) -> FileLock {
        FileLock {
            kind: if self.write {
                LockType::Write
            } else {
                LockType::Read
            },
            start: self.start,
            len: if self.end == u64::MAX {
                0
            } else {
                self.end - self.start + 1
            },
            owner: self.owner.owner,
            pid: self.pid,
        }
    }
}

struct Waiter {
    want: Range,
    reply: FileLock,
    tx: oneshot::Sender<FsResult<FileLock>>,
}

#[derive(Default)]
struct InodeLocks {
    held: Vec<Range>,
    waiters: Vec<Waiter>,
}

/// What a lock request turned into.
pub(crate) enum LockOutcome {
    /// Answered at once.
    Done(FileLock),
    /// Queued behind a conflicting lock: the receiver fires when granted
    /// (or with an error when the waiter is dropped).
    Wait(oneshot::Receiver<FsResult<FileLock>>),
}

/// Every byte-range lock of one brick.
#[derive(Default)]
pub(crate) struct LockTable {
    inodes: Mutex<HashMap<Gfid, InodeLocks>>,
}

/// The inclusive end of a range, or EINVAL when it overflows.
fn range_end(start: u64, len: u64) -> FsResult<u64> {
    if len == 0 {
        return Ok(u64::MAX);
    }
    start.checked_add(len - 1).ok_or(FsError::InvalidArgument)
}

impl LockTable {
    /// Handles one `Lk` request from `owner` on connection `conn`.
    /// `closed` is the connection's closed flag, checked under the table
    /// lock so nothing is granted to a connection already cleaned up.
    pub(crate) fn lock(
        &self,
        gfid: Gfid,
        cmd: LockCmd,
        lock: FileLock,
        owner: OwnerKey,
        conn: u64,
        closed: &AtomicBool,
    ) -> FsResult<LockOutcome> {
        let end = range_end(lock.start, lock.len)?;
        let want = Range {
            owner,
            conn,
            write: lock.kind == LockType::Write,
            start: lock.start,
            end,
            pid: lock.pid,
        };
        let mut all = self.inodes.lock();
        if closed.load(Ordering::Acquire) {
            return Err(FsError::NotConnected("connection closed".into()));
        }
        if cmd == LockCmd::Get {
            let found = all.get(&gfid).and_then(|il| {
                if lock.kind == LockType::Unlock {
                    return None;
                }
                il.held
                    .iter()
                    .find(|h| h.conflicts(&want))
                    .map(Range::to_lock)
            });
            return Ok(LockOutcome::Done(found.unwrap_or(FileLock {
                kind: LockType::Unlock,
                ..lock
            })));
        }
        let il = all.entry(gfid).or_default();
        if lock.kind == LockType::Unlock {
            apply(&mut il.held, &want, false);
            grant_waiters(il);
            cleanup(&mut all, gfid);
            return Ok(LockOutcome::Done(lock));
        }
        let blockers: Vec<OwnerKey> = il
            .held
            .iter()
            .filter(|h| h.conflicts(&want))
            .map(|h| h.owner.clone())
            .collect();
        if blockers.is_empty() {
            apply(&mut il.held, &want, true);
            // A downgrade (write -> read) may let readers in.
            grant_waiters(il);
            return Ok(LockOutcome::Done(lock));
        }
        if cmd == LockCmd::Set {
            cleanup(&mut all, gfid);
            return Err(FsError::WouldBlock);
        }
        if would_deadlock(&all, &want.owner, blockers) {
            cleanup(&mut all, gfid);
            return Err(FsError::Deadlock);
        }
        let (tx, rx) = oneshot::channel();
        let il = all.entry(gfid).or_default();
        il.waiters.push(Waiter {
            want,
            reply: lock,
            tx,
        });
        Ok(LockOutcome::Wait(rx))
    }

    /// Releases every lock `owner` holds on `gfid` (a close of the file).
    pub(crate) fn release_owner(&self, gfid: Gfid, owner: &OwnerKey) {
        let mut all = self.inodes.lock();
        if let Some(il) = all.get_mut(&gfid) {
            let before = il.held.len();
            il.held.retain(|h| &h.owner != owner);
            if il.held.len() != before {
                grant_waiters(il);
            }
        }
        cleanup(&mut all, gfid);
    }

    /// Drops every lock and waiter of connection `conn` (it disconnected).
    pub(crate) fn release_conn(&self, conn: u64) {
        let mut all = self.inodes.lock();
        let gfids: Vec<Gfid> = all.keys().copied().collect();
        for gfid in gfids {
            if let Some(il) = all.get_mut(&gfid) {
                let before = il.held.len();
                il.held.retain(|h| h.conn != conn);
                il.waiters.retain(|w| w.want.conn != conn);
                if il.held.len() != before {
                    grant_waiters(il);
                }
            }
            cleanup(&mut all, gfid);
        }
    }

    /// Number of granted ranges on `gfid` (for tests and statedumps).
    #[cfg(test)]
    pub(crate) fn held_count(&self, gfid: Gfid) -> usize {
        self.inodes.lock().get(&gfid).map_or(0, |il| il.held.len())
    }
}

fn cleanup(all: &mut HashMap<Gfid, InodeLocks>, gfid: Gfid) {
    if all
        .get(&gfid)
        .is_some_and(|il| il.held.is_empty() && il.waiters.is_empty())
    {
        all.remove(&gfid);
    }
}

/// Sets (`lock` = true) or clears `r`'s range for its owner, splitting the
/// owner's existing ranges and merging adjacent ones of the same type.
fn apply(held: &mut Vec<Range>, r: &Range, lock: bool) {
    let mut out = Vec::with_capacity(held.len() + 2);
    for h in held.drain(..) {
        if h.owner != r.owner || !h.overlaps(r.start, r.end) {
            out.push(h);
            continue;
        }
        if h.start < r.start {
            out.push(Range {
                end: r.start - 1,
                ..h.clone()
            });
        }
        if h.end > r.end {
            out.push(Range {
                start: r.end + 1,
                ..h
            });
        }
    }
    if lock {
        let (mut start, mut end) = (r.start, r.end);
        out.retain(|h| {
            let same = h.owner == r.owner && h.write == r.write;
            let left = h.end != u64::MAX && h.end + 1 == start;
            let right = end != u64::MAX && end + 1 == h.start;
            if same && (left || right) {
                start = start.min(h.start);
                end = end.max(h.end);
                false
            } else {
                true
            }
        });
        out.push(Range {
            start,
            end,
            ..r.clone()
        });
    }
    *held = out;
}

/// Grants, in arrival order, every waiter that no longer conflicts.
fn grant_waiters(il: &mut InodeLocks) {
    let mut i = 0;
    while i < il.waiters.len() {
        let w = &il.waiters[i];
        if w.tx.is_closed() {
            il.waiters.remove(i);
            continue;
        }
        if il.held.iter().any(|h| h.conflicts(&w.want)) {
            i += 1;
            continue;
        }
        let w = il.waiters.remove(i);
        apply(&mut il.held, &w.want, true);
        let _ = w.tx.send(Ok(w.reply));
        // Granting may block waiters checked earlier only if they were
        // already blocked, so continuing from `i` keeps arrival order.
    }
}

/// True if `requester` waiting on `blockers` closes a cycle of owners each
/// waiting for a lock the next one holds.
fn would_deadlock(
    all: &HashMap<Gfid, InodeLocks>,
    requester: &OwnerKey,
    blockers: Vec<OwnerKey>,
) -> bool {
    let mut stack = blockers;
    let mut seen: HashSet<OwnerKey> = HashSet::new();
    while let Some(o) = stack.pop() {
        if &o == requester {
            return true;
        }
        if !seen.insert(o.clone()) {
            continue;
        }
        for il in all.values() {
            for w in il.waiters.iter().filter(|w| w.want.owner == o) {
                for h in il.held.iter().filter(|h| h.conflicts(&w.want)) {
                    stack.push(h.owner.clone());
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str, o: u64) -> OwnerKey {
        OwnerKey {
            client: Arc::from(c),
            owner: o,
        }
    }

    fn fl(kind: LockType, start: u64, len: u64) -> FileLock {
        FileLock {
            kind,
            start,
            len,
            owner: 0,
            pid: 7,
        }
    }

    fn set(t: &LockTable, g: Gfid, o: &OwnerKey, l: FileLock) -> FsResult<FileLock> {
        let open = AtomicBool::new(false);
        match t.lock(g, LockCmd::Set, l, o.clone(), 1, &open)? {
            LockOutcome::Done(l) => Ok(l),
            LockOutcome::Wait(_) => panic!("Set never waits"),
        }
    }

    fn get(t: &LockTable, g: Gfid, o: &OwnerKey, l: FileLock) -> FileLock {
        let open = AtomicBool::new(false);
        match t.lock(g, LockCmd::Get, l, o.clone(), 1, &open).unwrap() {
            LockOutcome::Done(l) => l,
            LockOutcome::Wait(_) => panic!("Get never waits"),
        }
    }

    #[test]
    fn conflicts_split_and_merge() {
        let t = LockTable::default();
        let g = Gfid::new_random();
        let (a, b) = (owner("c1", 1), owner("c2", 1));
        set(&t, g, &a, fl(LockType::Write, 0, 100)).unwrap();
        // Same owner: no conflict with itself; other owner conflicts.
        set(&t, g, &a, fl(LockType::Write, 50, 10)).unwrap();
        assert_eq!(t.held_count(g), 1, "same-type overlap merges");
        assert!(matches!(
            set(&t, g, &b, fl(LockType::Read, 10, 1)),
            Err(FsError::WouldBlock)
        ));
        let c = get(&t, g, &b, fl(LockType::Read, 10, 1));
        assert_eq!((c.kind, c.start, c.len), (LockType::Write, 0, 100));
        // Punch a hole: the write lock splits in two.
        set(&t, g, &a, fl(LockType::Unlock, 40, 20)).unwrap();
        assert_eq!(t.held_count(g), 2);
        set(&t, g, &b, fl(LockType::Read, 45, 5)).unwrap();
        assert_eq!(
            get(&t, g, &b, fl(LockType::Write, 0, 0)).kind,
            LockType::Write
        );
        // Downgrade a's first part to read: b's read at 10 now fits.
        set(&t, g, &a, fl(LockType::Read, 0, 40)).unwrap();
        set(&t, g, &b, fl(LockType::Read, 10, 1)).unwrap();
        // Adjacent same-type ranges merge.
        set(&t, g, &b, fl(LockType::Read, 11, 4)).unwrap();
        let held = t.inodes.lock().get(&g).unwrap().held.clone();
        let bs: Vec<_> = held.iter().filter(|h| h.owner == b).collect();
        assert_eq!(bs.len(), 2, "{bs:?}");
        assert!(bs.iter().any(|h| h.start == 10 && h.end == 14));
        // To-EOF lock and overflow.
        assert!(matches!(
            set(&t, g, &a, fl(LockType::Write, u64::MAX, 2)),
            Err(FsError::InvalidArgument)
        ));
        t.release_owner(g, &a);
        t.release_owner(g, &b);
        assert_eq!(t.held_count(g), 0);
        assert!(t.inodes.lock().is_empty());
    }

    #[tokio::test]
    async fn waiter_granted_and_deadlock_detected() {
        let t = LockTable::default();
        let (g1, g2) = (Gfid::new_random(), Gfid::new_random());
        let (a, b) = (owner("c1", 1), owner("c2", 2));
        let open = AtomicBool::new(false);
        set(&t, g1, &a, fl(LockType::Write, 0, 0)).unwrap();
        set(&t, g2, &b, fl(LockType::Write, 0, 0)).unwrap();
        let rx = match t
            .lock(
                g1,
                LockCmd::SetWait,
                fl(LockType::Write, 5, 5),
                b.clone(),
                2,
                &open,
            )
            .unwrap()
        {
            LockOutcome::Wait(rx) => rx,
            LockOutcome::Done(_) => panic!("must wait"),
        };
        // a now waiting on b's g2 lock would close the cycle.
        assert!(matches!(
            t.lock(
                g2,
                LockCmd::SetWait,
                fl(LockType::Read, 0, 1),
                a.clone(),
                1,
                &open
            ),
            Err(FsError::Deadlock)
        ));
        set(&t, g1, &a, fl(LockType::Unlock, 0, 0)).unwrap();
        let got = rx.await.unwrap().unwrap();
        assert_eq!((got.start, got.len), (5, 5));
        assert_eq!(t.held_count(g1), 1);
        t.release_conn(2);
        assert_eq!(t.held_count(g1), 0);
        assert_eq!(t.held_count(g2), 1, "taken on connection 1");
        t.release_conn(1);
        assert_eq!(t.held_count(g2), 0);
    }
}
