//! Brick support for replicate's heal, over real connections: `Checksum`
//! (xxh3-128 per block of an open file, short last block, none past end of
//! file, bad block sizes refused), and a client reconnecting with the same
//! id closes its older connection, so the internal locks that connection
//! held (a network cut the brick never saw) do not block heals forever.

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::proto::{InodeLk, LockCmd, LockType, Reply, Request};
use kiln_core::{FsError, Gfid};
use std::time::Duration;

fn lock(gfid: Gfid, kind: LockType, owner: u64) -> Request {
    Request::Inodelk {
        gfid,
        lock: InodeLk {
            domain: "d".into(),
            cmd: LockCmd::Set,
            kind,
            start: 0,
            len: 0,
            owner,
        },
    }
}

fn xxh(b: &[u8]) -> [u64; 2] {
    let h = xxhash_rust::xxh3::xxh3_128(b);
    [h as u64, (h >> 64) as u64]
}

#[tokio::test]
async fn checksums_of_blocks() {
    let b = TestBrick::start().await;
    let mut c = b.client("sums").await;
    let (_, fd) = c.create(Gfid::ROOT, "f").await;
    let body: Vec<u8> = (0..(3 * 8192 + 100)).map(|i| (i % 253) as u8).collect();
    c.write(fd, 0, &body).await;
    let sums = |offset, len, block| Request::Checksum {
        fd,
        offset,
        len,
        block,
    };
    match c.ok(sums(0, 1 << 20, 8192)).await {
        Reply::Checksums { size, sums } => {
            assert_eq!(size, body.len() as u64);
            let want: Vec<[u64; 2]> = body.chunks(8192).map(xxh).collect();
            assert_eq!(sums, want);
        }
        r => panic!("{r:?}"),
    }
    // A window in the middle; nothing past the end.
    match c.ok(sums(8192, 8192, 8192)).await {
        Reply::Checksums { sums, .. } => assert_eq!(sums, vec![xxh(&body[8192..16384])]),
        r => panic!("{r:?}"),
    }
    match c.ok(sums(1 << 20, 8192, 8192)).await {
        Reply::Checksums { sums, .. } => assert!(sums.is_empty()),
        r => panic!("{r:?}"),
    }
    assert_eq!(c.err(sums(0, 8192, 100)).await, FsError::InvalidArgument);
    assert_eq!(
        c.err(sums(0, 1 << 40, 8192)).await,
        FsError::InvalidArgument
    );
    let bad = Request::Checksum {
        fd: 999,
        offset: 0,
        len: 8192,
        block: 8192,
    };
    assert_eq!(c.err(bad).await, FsError::BadFd);
}

#[tokio::test]
async fn a_reconnecting_client_drops_its_old_connection_and_locks() {
    let b = TestBrick::start().await;
    let mut old = b.client("same-client").await;
    let (iatt, _) = old.create(Gfid::ROOT, "f").await;
    let g = iatt.gfid;
    old.ok(lock(g, LockType::Write, 1)).await;
    // Another client is refused while the lock is held.
    let mut other = b.client("another").await;
    assert_eq!(
        other.err(lock(g, LockType::Write, 2)).await,
        FsError::WouldBlock
    );
    // The same client id connects again (its old connection is dead to
    // it): the brick closes the old connection and drops its locks.
    let mut new = b.client("same-client").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match other
            .call(lock(g, LockType::Write, 2), Bytes::new())
            .await
            .0
        {
            Ok(_) => break,
            Err(FsError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            r => panic!("{r:?}"),
        }
    }
    // The old connection is closed; the new one works.
    let gone = tokio::time::timeout(Duration::from_secs(5), old.recv()).await;
    assert!(matches!(gone, Ok(None)), "old connection still open");
    assert!(new.lookup(Gfid::ROOT, "f").await.is_ok());
}
