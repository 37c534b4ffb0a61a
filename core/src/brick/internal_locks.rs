//! Internal locks (`Inodelk`, `Entrylk`): the locks translators such as
//! replicate take to serialise their transactions on a brick, apart from
//! POSIX locks. Kept in memory per (kind, domain, gfid); a blocking request
//! waits in arrival order and is answered when granted; whatever a
//! connection holds or waits for goes when it disconnects.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

use super::locks::OwnerKey;
use super::ops::Conn;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::name::Name;
use crate::proto::{LockCmd, LockType, Reply, Request};

/// Longest lock domain accepted.
const DOMAIN_MAX: usize = 256;
/// Most locks and waiters one brick keeps (a bound on what clients can
/// make it allocate).
const TOTAL_MAX: usize = 1 << 20;

/// What a lock covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    /// Bytes `start..=end` of an inode.
    Range { start: u64, end: u64 },
    /// One name in a directory, or (`None`) the whole directory.
    Entry(Option<Name>),
}

impl Span {
    fn overlaps(&self, other: &Span) -> bool {
        match (self, other) {
            (Span::Range { start: a, end: b }, Span::Range { start: c, end: d }) => {
                a <= d && c <= b
            }
            (Span::Entry(None), Span::Entry(_)) | (Span::Entry(_), Span::Entry(None)) => true,
            (Span::Entry(Some(x)), Span::Entry(Some(y))) => x == y,
            _ => false,
        }
    }
}

/// A granted or wanted lock.
#[derive(Debug, Clone)]
struct Held {
    owner: OwnerKey,
    conn: u64,
    write: bool,
    span: Span,
}

impl Held {
    fn conflicts(&self, other: &Held) -> bool {
        self.owner != other.owner && (self.write || other.write) && self.span.overlaps(&other.span)
    }
}

struct Waiter {
    want: Held,
    tx: oneshot::Sender<FsResult<()>>,
}

/// The locks and waiters of one (kind, domain, gfid).
#[derive(Default)]
struct Queue {
    held: Vec<Held>,
    waiters: VecDeque<Waiter>,
}

impl Queue {
    /// True if `want` can be granted now: no held lock conflicts, and no
    /// earlier waiter it conflicts with is still queued (arrival order).
    fn grantable(&self, want: &Held) -> bool {
        !self.held.iter().any(|h| h.conflicts(want))
            && !self.waiters.iter().any(|w| w.want.conflicts(want))
    }

    /// Grants, in arrival order, every waiter that no longer conflicts.
    fn grant_waiters(&mut self) -> usize {
        let mut dropped = 0;
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].tx.is_closed() {
                self.waiters.remove(i);
                dropped += 1;
                continue;
            }
            let w = &self.waiters[i].want;
            let blocked = self.held.iter().any(|h| h.conflicts(w))
                || self.waiters.iter().take(i).any(|e| e.want.conflicts(w));
            if blocked {
                i += 1;
                continue;
            }
            if let Some(w) = self.waiters.remove(i) {
                if w.tx.send(Ok(())).is_ok() {
                    self.held.push(w.want);
                } else {
                    dropped += 1;
                }
            }
        }
        dropped
    }

    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.waiters.is_empty()
    }

    fn len(&self) -> usize {
        self.held.len() + self.waiters.len()
    }
}

/// Which table a lock lives in: inode locks and entry locks of the same
/// domain and gfid never conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    entry: bool,
    domain: String,
    gfid: Gfid,
}

/// What a lock request turned into.
pub(crate) enum Outcome {
    /// Answered at once.
    Done,
    /// Queued: the receiver fires when the lock is granted.
    Wait(oneshot::Receiver<FsResult<()>>),
}

/// Every internal lock of one brick.
#[derive(Default)]
pub(crate) struct InternalLocks {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    queues: HashMap<Key, Queue>,
    /// Locks plus waiters over all queues.
    total: usize,
}

impl Table {
    /// Re-counts after a queue changed, dropping it when empty.
    fn settle(&mut self, key: &Key, before: usize) {
        let after = self.queues.get(key).map_or(0, Queue::len);
        self.total = (self.total + after).saturating_sub(before);
        if self.queues.get(key).is_some_and(Queue::is_empty) {
            self.queues.remove(key);
        }
    }
}

/// The inclusive end of `len` bytes from `start` (0 = to end of file).
fn range_end(start: u64, len: u64) -> FsResult<u64> {
    if len == 0 {
        return Ok(u64::MAX);
    }
    start.checked_add(len - 1).ok_or(FsError::InvalidArgument)
}

impl InternalLocks {
    /// Handles one lock request of connection `conn` (`closed`: its closed
    /// flag, checked under the table lock so nothing is granted to a
    /// connection already cleaned up).
    fn request(
        &self,
        key: Key,
        cmd: LockCmd,
        kind: LockType,
        want: Held,
        closed: &AtomicBool,
    ) -> FsResult<Outcome> {
        if key.domain.is_empty() || key.domain.len() > DOMAIN_MAX {
            return Err(FsError::InvalidArgument);
        }
        let mut t = self.table.lock();
        if closed.load(Ordering::Acquire) {
            return Err(FsError::NotConnected("connection closed".into()));
        }
        let before = t.queues.get(&key).map_or(0, Queue::len);
        if kind == LockType::Unlock {
            if let Some(q) = t.queues.get_mut(&key) {
                q.held
                    .retain(|h| h.owner != want.owner || !h.span.overlaps(&want.span));
                q.grant_waiters();
            }
            t.settle(&key, before);
            return Ok(Outcome::Done);
        }
        if cmd == LockCmd::Get {
            let free = t.queues.get(&key).is_none_or(|q| q.grantable(&want));
            return if free {
                Ok(Outcome::Done)
            } else {
                Err(FsError::WouldBlock)
            };
        }
        if t.total >= TOTAL_MAX {
            return Err(FsError::NoSpace);
        }
        let q = t.queues.entry(key.clone()).or_default();
        let outcome = if q.grantable(&want) {
            q.held.push(want);
            Ok(Outcome::Done)
        } else if cmd == LockCmd::Set {
            Err(FsError::WouldBlock)
        } else {
            let (tx, rx) = oneshot::channel();
            q.waiters.push_back(Waiter { want, tx });
            Ok(Outcome::Wait(rx))
        };
        t.settle(&key, before);
        outcome
    }

    /// Drops every lock and waiter of connection `conn` (it disconnected)
    /// and grants what that frees.
    pub(crate) fn release_conn(&self, conn: u64) {
        let mut t = self.table.lock();
        let keys: Vec<Key> = t.queues.keys().cloned().collect();
        for key in keys {
            let before = t.queues.get(&key).map_or(0, Queue::len);
            if let Some(q) = t.queues.get_mut(&key) {
                q.held.retain(|h| h.conn != conn);
                q.waiters.retain(|w| w.want.conn != conn);
                q.grant_waiters();
            }
            t.settle(&key, before);
        }
    }

    /// Number of granted locks (tests).
    #[cfg(test)]
    fn held_total(&self) -> usize {
        self.table
            .lock()
            .queues
            .values()
            .map(|q| q.held.len())
            .sum()
    }
}

/// Answers an `Inodelk` or `Entrylk` request of `conn` (may wait until the
/// lock is granted).
pub(crate) async fn serve(
    locks: &InternalLocks,
    conn: &Arc<Conn>,
    req: Request,
) -> FsResult<Reply> {
    let (key, cmd, kind, owner, span) = match req {
        Request::Inodelk { gfid, lock } => {
            let end = range_end(lock.start, lock.len)?;
            let key = Key {
                entry: false,
                domain: lock.domain,
                gfid,
            };
            let span = Span::Range {
                start: lock.start,
                end,
            };
            (key, lock.cmd, lock.kind, lock.owner, span)
        }
        Request::Entrylk { parent, name, lock } => {
            if let Some(n) = &name {
                n.validate()?;
            }
            let key = Key {
                entry: true,
                domain: lock.domain,
                gfid: parent,
            };
            (key, lock.cmd, lock.kind, lock.owner, Span::Entry(name))
        }
        other => {
            return Err(FsError::Protocol(format!(
                "{} is not an internal lock request",
                other.op_name()
            )))
        }
    };
    let want = Held {
        owner: OwnerKey {
            client: conn.client.clone(),
            owner,
        },
        conn: conn.id,
        write: kind == LockType::Write,
        span,
    };
    match locks.request(key, cmd, kind, want, &conn.closed)? {
        Outcome::Done => Ok(Reply::Done),
        Outcome::Wait(rx) => match rx.await {
            Ok(r) => r.map(|()| Reply::Done),
            Err(_) => Err(FsError::NotConnected("lock wait cancelled".into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(client: &str, owner: u64, conn: u64, write: bool, span: Span) -> Held {
        Held {
            owner: OwnerKey {
                client: Arc::from(client),
                owner,
            },
            conn,
            write,
            span,
        }
    }

    fn key(entry: bool, g: Gfid) -> Key {
        Key {
            entry,
            domain: "vol-replicate-0".into(),
            gfid: g,
        }
    }

    fn range(start: u64, end: u64) -> Span {
        Span::Range { start, end }
    }

    #[tokio::test]
    async fn ranges_conflict_wait_and_release_on_disconnect() {
        let l = InternalLocks::default();
        let g = Gfid::new_random();
        let open = AtomicBool::new(false);
        let a = held("c1", 1, 1, true, range(0, 99));
        assert!(matches!(
            l.request(
                key(false, g),
                LockCmd::Set,
                LockType::Write,
                a.clone(),
                &open
            ),
            Ok(Outcome::Done)
        ));
        // Disjoint range: granted; overlapping: refused or queued.
        let b = held("c2", 7, 2, true, range(100, 199));
        assert!(l
            .request(key(false, g), LockCmd::Set, LockType::Write, b, &open)
            .is_ok());
        let c = held("c2", 8, 2, false, range(50, 50));
        assert!(matches!(
            l.request(
                key(false, g),
                LockCmd::Set,
                LockType::Read,
                c.clone(),
                &open
            ),
            Err(FsError::WouldBlock)
        ));
        assert!(matches!(
            l.request(
                key(false, g),
                LockCmd::Get,
                LockType::Read,
                c.clone(),
                &open
            ),
            Err(FsError::WouldBlock)
        ));
        // Another domain or the entry table never conflicts.
        assert!(l
            .request(
                key(true, g),
                LockCmd::Set,
                LockType::Write,
                c.clone(),
                &open
            )
            .is_ok());
        let rx = match l
            .request(
                key(false, g),
                LockCmd::SetWait,
                LockType::Read,
                c.clone(),
                &open,
            )
            .unwrap()
        {
            Outcome::Wait(rx) => rx,
            Outcome::Done => panic!("must wait"),
        };
        // A later non-conflicting-with-held but conflicting-with-waiter
        // request queues behind the waiter.
        let d = held("c3", 1, 3, true, range(50, 50));
        assert!(matches!(
            l.request(key(false, g), LockCmd::Set, LockType::Write, d, &open),
            Err(FsError::WouldBlock)
        ));
        // Connection 1 goes away: the waiter is granted.
        l.release_conn(1);
        rx.await.unwrap().unwrap();
        assert_eq!(l.held_total(), 3);
        l.release_conn(2);
        assert_eq!(l.held_total(), 0);
        assert!(l.table.lock().queues.is_empty());
        assert_eq!(l.table.lock().total, 0);
    }

    #[test]
    fn entries_and_whole_directory() {
        let l = InternalLocks::default();
        let g = Gfid::new_random();
        let open = AtomicBool::new(false);
        let n = |s: &str| Span::Entry(Some(Name::new(s).unwrap()));
        let a = held("c1", 1, 1, true, n("a"));
        l.request(
            key(true, g),
            LockCmd::Set,
            LockType::Write,
            a.clone(),
            &open,
        )
        .unwrap();
        let b = held("c2", 1, 2, true, n("b"));
        l.request(key(true, g), LockCmd::Set, LockType::Write, b, &open)
            .unwrap();
        let all = held("c3", 1, 3, true, Span::Entry(None));
        assert!(matches!(
            l.request(
                key(true, g),
                LockCmd::Set,
                LockType::Write,
                all.clone(),
                &open
            ),
            Err(FsError::WouldBlock)
        ));
        // Unlock by its owner, then the whole-directory lock fits once the
        // other name is unlocked too.
        l.request(key(true, g), LockCmd::Set, LockType::Unlock, a, &open)
            .unwrap();
        l.release_conn(2);
        l.request(key(true, g), LockCmd::Set, LockType::Write, all, &open)
            .unwrap();
        let closed = AtomicBool::new(true);
        let late = held("c4", 1, 4, false, n("z"));
        assert!(matches!(
            l.request(
                key(true, g),
                LockCmd::SetWait,
                LockType::Read,
                late,
                &closed
            ),
            Err(FsError::NotConnected(_))
        ));
        assert!(matches!(
            l.request(
                Key {
                    entry: true,
                    domain: String::new(),
                    gfid: g
                },
                LockCmd::Set,
                LockType::Read,
                held("c4", 1, 4, false, n("z")),
                &open
            ),
            Err(FsError::InvalidArgument)
        ));
    }
}
