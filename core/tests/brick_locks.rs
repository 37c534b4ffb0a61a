//! POSIX byte-range locks on a brick: conflicts between clients, GETLK,
//! a blocked SETLKW granted when the holder unlocks or disconnects, and
//! release of an owner's locks on flush. All through real connections.

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::proto::{FileLock, LockCmd, LockType, Reply, Request};
use kiln_core::FsError;
use kiln_core::Gfid;
use std::time::Duration;

fn lk(fd: u64, cmd: LockCmd, kind: LockType, start: u64, len: u64, owner: u64) -> Request {
    Request::Lk {
        fd,
        cmd,
        lock: FileLock {
            kind,
            start,
            len,
            owner,
            pid: 100 + owner as u32,
        },
    }
}

async fn open(c: &mut Client, gfid: Gfid) -> u64 {
    match c
        .ok(Request::Open {
            gfid,
            flags: libc::O_RDWR,
        })
        .await
    {
        Reply::Opened { fd } => fd,
        r => panic!("{r:?}"),
    }
}

#[tokio::test]
async fn locks_conflict_wait_and_release() {
    let b = TestBrick::start().await;
    let mut a = b.client("client-a").await;
    let mut bb = b.client("client-b").await;
    let (f, fa) = a.create(Gfid::ROOT, "locked").await;
    let fb = open(&mut bb, f.gfid).await;

    // A takes a write lock; B (same owner number, other client) conflicts.
    a.ok(lk(fa, LockCmd::Set, LockType::Write, 0, 100, 1)).await;
    let e = bb.err(lk(fb, LockCmd::Set, LockType::Read, 50, 1, 1)).await;
    assert_eq!(e, FsError::WouldBlock);
    match bb.ok(lk(fb, LockCmd::Get, LockType::Read, 50, 1, 1)).await {
        Reply::Lock { lock } => {
            assert_eq!(
                (lock.kind, lock.start, lock.len, lock.pid),
                (LockType::Write, 0, 100, 101)
            )
        }
        r => panic!("{r:?}"),
    }
    // No conflict outside the range; GETLK then says Unlock.
    match bb
        .ok(lk(fb, LockCmd::Get, LockType::Write, 100, 0, 1))
        .await
    {
        Reply::Lock { lock } => assert_eq!(lock.kind, LockType::Unlock),
        r => panic!("{r:?}"),
    }

    // B waits; meanwhile its connection keeps answering (replies out of order).
    let wait_xid = bb
        .send(
            lk(fb, LockCmd::SetWait, LockType::Write, 10, 10, 1),
            Bytes::new(),
        )
        .await;
    let ping_xid = bb.send(Request::Ping, Bytes::new()).await;
    let (x, r, _) = bb.recv().await.unwrap();
    assert_eq!((x, r.is_ok()), (ping_xid, true));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bb.recv())
            .await
            .is_err(),
        "the waiter must not be granted while A holds the lock"
    );
    a.ok(lk(fa, LockCmd::Set, LockType::Unlock, 0, 0, 1)).await;
    let (x, r, _) = bb.recv().await.unwrap();
    assert_eq!(x, wait_xid);
    match r {
        Ok(Reply::Lock { lock }) => {
            assert_eq!((lock.kind, lock.start, lock.len), (LockType::Write, 10, 10))
        }
        r => panic!("{r:?}"),
    }

    // A waits for B's lock; B disconnects; A is granted.
    let wait_xid = a
        .send(
            lk(fa, LockCmd::SetWait, LockType::Read, 15, 1, 1),
            Bytes::new(),
        )
        .await;
    assert!(tokio::time::timeout(Duration::from_millis(200), a.recv())
        .await
        .is_err());
    drop(bb);
    let (x, r, _) = a.recv().await.unwrap();
    assert_eq!(x, wait_xid);
    assert!(matches!(r, Ok(Reply::Lock { .. })), "{r:?}");

    // Flush releases only that owner's locks.
    a.ok(lk(fa, LockCmd::Set, LockType::Write, 200, 0, 7)).await;
    let mut c = b.client("client-c").await;
    let fc = open(&mut c, f.gfid).await;
    assert_eq!(
        c.err(lk(fc, LockCmd::Set, LockType::Write, 300, 1, 1))
            .await,
        FsError::WouldBlock
    );
    a.ok(Request::Flush { fd: fa, owner: 7 }).await;
    c.ok(lk(fc, LockCmd::Set, LockType::Write, 300, 1, 1)).await;
    // A's read lock at 15 (owner 1) is still there.
    assert_eq!(
        c.err(lk(fc, LockCmd::Set, LockType::Write, 15, 1, 1)).await,
        FsError::WouldBlock
    );
    // Bad range: overflowing end.
    assert_eq!(
        c.err(lk(fc, LockCmd::Set, LockType::Write, u64::MAX - 1, 10, 1))
            .await,
        FsError::InvalidArgument
    );
}

#[tokio::test]
async fn waiter_of_a_closed_connection_is_dropped() {
    let b = TestBrick::start().await;
    let mut a = b.client("a").await;
    let mut w = b.client("w").await;
    let (f, fa) = a.create(Gfid::ROOT, "x").await;
    let fw = open(&mut w, f.gfid).await;
    a.ok(lk(fa, LockCmd::Set, LockType::Write, 0, 0, 1)).await;
    w.send(
        lk(fw, LockCmd::SetWait, LockType::Write, 0, 0, 1),
        Bytes::new(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(w); // the waiter goes away while blocked
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.ok(lk(fa, LockCmd::Set, LockType::Unlock, 0, 0, 1)).await;
    // Nobody got the lock on the dead connection's behalf.
    let mut c = b.client("c").await;
    let fc = open(&mut c, f.gfid).await;
    c.ok(lk(fc, LockCmd::Set, LockType::Write, 0, 0, 1)).await;
}
