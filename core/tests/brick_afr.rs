//! The brick's replication requests over real connections: internal inode
//! and entry locks (conflicts, a blocked wait granted on unlock or on the
//! holder's disconnect), xattrop arithmetic on the changelog counters, and
//! the pending-heal index it keeps under `.kiln/indices/xattrop/`.

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::proto::{EntryLk, InodeLk, LockCmd, LockType, Reply, Request, XattrMap, XattropOp};
use kiln_core::{FsError, Gfid};
use std::time::Duration;

const DOM: &str = "testvol-replicate-0";
const KEY0: &str = "trusted.kiln.afr.testvol-client-0";
const KEY1: &str = "trusted.kiln.afr.testvol-client-1";

fn ilk(gfid: Gfid, cmd: LockCmd, kind: LockType, start: u64, len: u64, owner: u64) -> Request {
    Request::Inodelk {
        gfid,
        lock: InodeLk {
            domain: DOM.into(),
            cmd,
            kind,
            start,
            len,
            owner,
        },
    }
}

fn elk(parent: Gfid, n: Option<&str>, cmd: LockCmd, kind: LockType, owner: u64) -> Request {
    Request::Entrylk {
        parent,
        name: n.map(name),
        lock: EntryLk {
            domain: DOM.into(),
            cmd,
            kind,
            owner,
        },
    }
}

fn counters(v: [i64; 3]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn xop(gfid: Gfid, pairs: &[(&str, [i64; 3])]) -> Request {
    let mut xattrs = XattrMap::new();
    for (k, v) in pairs {
        xattrs.insert(k.to_string(), counters(*v));
    }
    Request::Xattrop {
        gfid,
        op: XattropOp::AddArray64,
        xattrs,
    }
}

fn index_entries(b: &TestBrick) -> Vec<String> {
    match std::fs::read_dir(b.path.join(".kiln/indices/xattrop")) {
        Ok(d) => {
            let mut v: Vec<String> = d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn inode_locks_wait_and_release() {
    let b = TestBrick::start().await;
    let mut a = b.client("client-a").await;
    let mut c = b.client("client-b").await;
    let (f, _) = a.create(Gfid::ROOT, "f").await;
    let g = f.gfid;

    a.ok(ilk(g, LockCmd::Set, LockType::Write, 0, 0, 1)).await;
    // Another client conflicts; another domain does not.
    assert_eq!(
        c.err(ilk(g, LockCmd::Set, LockType::Read, 10, 1, 1)).await,
        FsError::WouldBlock
    );
    assert_eq!(
        c.err(ilk(g, LockCmd::Get, LockType::Write, 0, 1, 1)).await,
        FsError::WouldBlock
    );
    let mut other = match ilk(g, LockCmd::Set, LockType::Write, 0, 0, 1) {
        Request::Inodelk { gfid, mut lock } => {
            lock.domain = "other".into();
            Request::Inodelk { gfid, lock }
        }
        _ => unreachable!(),
    };
    c.ok(other.clone()).await;
    if let Request::Inodelk { lock, .. } = &mut other {
        lock.kind = LockType::Unlock;
    }
    c.ok(other).await;

    // A blocking request is answered once the holder unlocks.
    let xid = c
        .send(
            ilk(g, LockCmd::SetWait, LockType::Write, 5, 5, 2),
            Bytes::new(),
        )
        .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.recv())
            .await
            .is_err(),
        "granted while held"
    );
    a.ok(ilk(g, LockCmd::Set, LockType::Unlock, 0, 0, 1)).await;
    let (x, r, _) = c.recv().await.unwrap();
    assert_eq!(x, xid);
    assert!(matches!(r, Ok(Reply::Done)), "{r:?}");

    // Now a waits; c disconnects: a is granted.
    let xid = a
        .send(
            ilk(g, LockCmd::SetWait, LockType::Read, 0, 100, 3),
            Bytes::new(),
        )
        .await;
    drop(c);
    let (x, r, _) = tokio::time::timeout(Duration::from_secs(5), a.recv())
        .await
        .expect("granted after the holder disconnected")
        .unwrap();
    assert_eq!(x, xid);
    assert!(matches!(r, Ok(Reply::Done)), "{r:?}");
    // Bad ranges are refused.
    assert_eq!(
        a.err(ilk(g, LockCmd::Set, LockType::Write, u64::MAX, 2, 9))
            .await,
        FsError::InvalidArgument
    );
}

#[tokio::test]
async fn entry_locks_names_and_directory() {
    let b = TestBrick::start().await;
    let mut a = b.client("client-a").await;
    let mut c = b.client("client-b").await;
    let d = a.mkdir(Gfid::ROOT, "d").await.gfid;
    a.ok(elk(d, Some("x"), LockCmd::Set, LockType::Write, 1))
        .await;
    c.ok(elk(d, Some("y"), LockCmd::Set, LockType::Write, 1))
        .await;
    assert_eq!(
        c.err(elk(d, Some("x"), LockCmd::Set, LockType::Write, 1))
            .await,
        FsError::WouldBlock
    );
    // The whole directory waits for both names.
    let xid = a
        .send(
            elk(d, None, LockCmd::SetWait, LockType::Write, 2),
            Bytes::new(),
        )
        .await;
    a.ok(elk(d, Some("x"), LockCmd::Set, LockType::Unlock, 1))
        .await;
    c.ok(elk(d, Some("y"), LockCmd::Set, LockType::Unlock, 1))
        .await;
    loop {
        let (x, r, _) = tokio::time::timeout(Duration::from_secs(5), a.recv())
            .await
            .expect("directory lock granted")
            .unwrap();
        if x == xid {
            assert!(matches!(r, Ok(Reply::Done)), "{r:?}");
            break;
        }
    }
    assert_eq!(
        c.err(elk(d, Some("z"), LockCmd::Get, LockType::Read, 1))
            .await,
        FsError::WouldBlock
    );
}

#[tokio::test]
async fn xattrop_counts_and_index() {
    let b = TestBrick::start().await;
    let mut a = b.client("client-a").await;
    let (f, fd) = a.create(Gfid::ROOT, "f").await;
    let g = f.gfid;
    assert!(index_entries(&b).is_empty());

    // Pre-op: +1 data for both children; the file is indexed.
    match a.ok(xop(g, &[(KEY0, [1, 0, 0]), (KEY1, [1, 0, 0])])).await {
        Reply::Xattrs { xattrs } => {
            assert_eq!(xattrs[KEY0], counters([1, 0, 0]));
            assert_eq!(xattrs[KEY1], counters([1, 0, 0]));
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(index_entries(&b), vec![g.to_string()]);
    // Post-op for child 0 only: child 1 stays accused.
    a.ok(xop(g, &[(KEY0, [-1, 0, 0])])).await;
    assert_eq!(xattr(&b.at("f"), KEY0), Some(counters([0, 0, 0])));
    assert_eq!(xattr(&b.at("f"), KEY1), Some(counters([1, 0, 0])));
    assert_eq!(index_entries(&b), vec![g.to_string()]);
    match a
        .ok(Request::IndexList {
            after: None,
            max: 10,
        })
        .await
    {
        Reply::Gfids { gfids } => assert_eq!(gfids, vec![g]),
        r => panic!("{r:?}"),
    }
    match a
        .ok(Request::IndexList {
            after: Some(g),
            max: 10,
        })
        .await
    {
        Reply::Gfids { gfids } => assert!(gfids.is_empty()),
        r => panic!("{r:?}"),
    }
    // Healed: back to zero, off the index.
    a.ok(xop(g, &[(KEY1, [-1, 0, 0])])).await;
    assert!(index_entries(&b).is_empty());

    // Concurrent xattrops from two connections add up exactly.
    let mut jobs = Vec::new();
    for i in 0..4 {
        let mut c = b.client(&format!("c{i}")).await;
        jobs.push(tokio::spawn(async move {
            for _ in 0..50 {
                c.ok(xop(g, &[(KEY0, [0, 1, 2])])).await;
            }
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    assert_eq!(xattr(&b.at("f"), KEY0), Some(counters([0, 200, 400])));
    assert_eq!(index_entries(&b), vec![g.to_string()]);

    // Bad input: not a counter array, protected names, unknown gfids.
    let mut bad = XattrMap::new();
    bad.insert(KEY0.into(), vec![1, 2, 3]);
    assert_eq!(
        a.err(Request::Xattrop {
            gfid: g,
            op: XattropOp::AddArray64,
            xattrs: bad
        })
        .await,
        FsError::InvalidArgument
    );
    assert_eq!(
        a.err(xop(g, &[("trusted.kiln.gfid", [1, 0, 0])])).await,
        FsError::NotPermitted
    );
    assert_eq!(
        a.err(xop(Gfid::new_random(), &[(KEY0, [1, 0, 0])])).await,
        FsError::Stale
    );
    let overflow = xop(g, &[(KEY0, [0, i64::MAX, 0])]);
    assert_eq!(a.err(overflow).await, FsError::Range);

    // An indexed inode that goes away is dropped by the next listing (not
    // while it is open: it still exists then).
    a.ok(Request::Unlink {
        loc: loc(Gfid::ROOT, "f"),
    })
    .await;
    match a
        .ok(Request::IndexList {
            after: None,
            max: 10,
        })
        .await
    {
        Reply::Gfids { gfids } => assert_eq!(gfids, vec![g]),
        r => panic!("{r:?}"),
    }
    a.ok(Request::Release { fd }).await;
    assert_eq!(index_entries(&b), vec![g.to_string()]);
    match a
        .ok(Request::IndexList {
            after: None,
            max: 10,
        })
        .await
    {
        Reply::Gfids { gfids } => assert!(gfids.is_empty(), "{gfids:?}"),
        r => panic!("{r:?}"),
    }
    assert!(index_entries(&b).is_empty());
}
