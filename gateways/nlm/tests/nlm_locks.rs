//! NLM and NSM over real sockets against a real 2-brick volume: LOCK, TEST,
//! UNLOCK, blocking locks woken by a GRANTED callback to a client lockd,
//! CANCEL, conflicts with a second volume client (as a FUSE mount's locks
//! are), SHARE, FREE_ALL, SM_NOTIFY, the grace period after a restart with
//! monitored clients, the _MSG/_RES forms, UDP, and RPC-level bad input.

mod common;

use common::*;
use kiln_core::client::Volume;
use kiln_core::proto::LockType;
use kiln_core::FsError;
use kiln_nlm::types::*;
use kiln_portmap::pmap::Mapping;
use kiln_portmap::rpc::client::ClientError;
use kiln_portmap::rpc::server::serve_tcp_udp;
use kiln_portmap::rpc::{ReplyStat, RpcClient};
use kiln_portmap::{RpcServer, ServerConfig, XdrReader, XdrWriter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_test_unlock_and_blocking_with_granted_callback() {
    let env = volume().await;
    let mut client = fake_client(Nlm4Stat::Granted).await;
    let server = nlm(&env, client.pm.addr().port(), None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    let (fh, gfid) = env.file("f1").await;
    assert!(c.raw(proc4::NULL, &[]).await.unwrap().is_empty());

    // A takes [0, 100) exclusively; B's TEST sees it, B's non-blocking lock is denied.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 100), true, false, false)
            .await,
        Nlm4Stat::Granted
    );
    let t = c.test(lk(&fh, "hostB", 20, 50, 10), false).await;
    assert_eq!(t.stat, Nlm4Stat::Denied);
    let h = t.holder.unwrap();
    assert!(h.exclusive);
    assert_eq!((h.svid, h.offset, h.len), (10, 0, 100));
    assert_eq!(
        c.test(lk(&fh, "hostB", 20, 100, 10), true).await.stat,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.lock(lk(&fh, "hostB", 20, 0, 0), true, false, false).await,
        Nlm4Stat::Denied
    );
    // The same owner re-locking is fine; shared locks of two owners coexist elsewhere.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 100), true, false, false)
            .await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.lock(lk(&fh, "hostB", 21, 200, 10), false, false, false)
            .await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.lock(lk(&fh, "hostC", 1, 205, 10), false, false, false)
            .await,
        Nlm4Stat::Granted
    );

    // B blocks; a re-sent LOCK is BLOCKED again; A's unlock wakes it with GRANTED.
    assert_eq!(
        c.lock(lk(&fh, "hostB", 20, 0, 0), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert_eq!(
        c.lock(lk(&fh, "hostB", 20, 0, 0), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert!(client.granted.try_recv().is_err());
    // hostB's shared lock at 200 is its own (other svid though: conflicts) - free it first.
    assert_eq!(
        c.unlock(lk(&fh, "hostB", 21, 0, 0)).await,
        Nlm4Stat::Granted
    );
    assert_eq!(c.unlock(lk(&fh, "hostC", 1, 0, 0)).await, Nlm4Stat::Granted);
    let released = Instant::now();
    // Released in two pieces; the gateway keeps track of what is left.
    assert_eq!(
        c.unlock(lk(&fh, "hostA", 10, 50, 50)).await,
        Nlm4Stat::Granted
    );
    assert_eq!(server.manager().counts(), (1, 1));
    assert_eq!(
        c.unlock(lk(&fh, "hostA", 10, 0, 50)).await,
        Nlm4Stat::Granted
    );
    let g = tokio::time::timeout(Duration::from_secs(5), client.granted.recv())
        .await
        .expect("a GRANTED callback within 5 s")
        .unwrap();
    let waited = released.elapsed();
    assert_eq!(g.lock.caller_name, b"hostB");
    assert_eq!(
        (g.lock.svid, g.lock.offset, g.lock.len, g.exclusive),
        (20, 0, 0, true)
    );
    assert_eq!(g.lock.fh, fh);
    eprintln!(
        "nlm figures: GRANTED callback {:.0} ms after the conflicting unlock",
        waited.as_secs_f64() * 1000.0
    );
    // B holds it now: A is denied, and a second volume client too.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 1), false, false, false)
            .await,
        Nlm4Stat::Denied
    );
    let other = Volume::new(env.spec.clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert!(matches!(
        other_client_lock(&other, gfid, LockType::Read, 10, 1).await,
        Err(FsError::WouldBlock)
    ));
    // CANCEL: A blocks, cancels; B's unlock then grants A nothing.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 1), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert_eq!(server.manager().counts().1, 1);
    assert_eq!(
        c.cancel(lk(&fh, "hostA", 10, 0, 1), true).await,
        Nlm4Stat::Granted
    );
    assert_eq!(server.manager().counts().1, 0);
    assert_eq!(
        c.unlock(lk(&fh, "hostB", 20, 0, 0)).await,
        Nlm4Stat::Granted
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        client.granted.try_recv().is_err(),
        "a cancelled lock was granted"
    );
    assert_eq!(
        c.test(lk(&fh, "hostD", 1, 0, 0), true).await.stat,
        Nlm4Stat::Granted
    );
    // hostA unlocked all it held ([0, 100) in two steps): nothing is left.
    // Everything released: the gateway closed its fd of the file.
    assert_eq!(server.manager().counts(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_client_conflicts_free_all_and_shares() {
    let env = volume().await;
    let client = fake_client(Nlm4Stat::Granted).await;
    let server = nlm(&env, client.pm.addr().port(), None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    let (fh, gfid) = env.file("f2").await;
    let other = Volume::new(env.spec.clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();

    // A lock of the other client (FUSE) denies NLM; its release lets NLM in.
    other_client_lock(&other, gfid, LockType::Write, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        c.lock(lk(&fh, "g", 1, 5, 1), true, false, false).await,
        Nlm4Stat::Denied
    );
    let t = c.test(lk(&fh, "g", 1, 5, 1), false).await;
    assert_eq!(t.stat, Nlm4Stat::Denied);
    assert_eq!(t.holder.unwrap().svid, 4242);
    other_client_lock(&other, gfid, LockType::Unlock, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        c.lock(lk(&fh, "g", 1, 5, 1), true, false, false).await,
        Nlm4Stat::Granted
    );
    // And an NLM lock makes the other client's F_SETLK fail with EAGAIN.
    assert!(matches!(
        other_client_lock(&other, gfid, LockType::Write, 0, 0).await,
        Err(FsError::WouldBlock)
    ));
    // FREE_ALL drops every lock of host g.
    assert_eq!(
        c.lock(lk(&fh, "g", 2, 50, 0), false, false, false).await,
        Nlm4Stat::Granted
    );
    c.free_all("g").await;
    other_client_lock(&other, gfid, LockType::Write, 0, 0)
        .await
        .unwrap();
    other_client_lock(&other, gfid, LockType::Unlock, 0, 0)
        .await
        .unwrap();

    // Shares: deny-write against write access conflicts; unshare lifts it.
    assert_eq!(
        c.share(&fh, "h1", "o1", 2, 1, false).await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.share(&fh, "h2", "o2", 0, 2, false).await,
        Nlm4Stat::Denied
    );
    assert_eq!(
        c.share(&fh, "h2", "o2", 0, 1, false).await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.share(&fh, "h1", "o1", 0, 0, true).await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.share(&fh, "h3", "o3", 0, 3, false).await,
        Nlm4Stat::Granted
    );
    c.free_all("h2").await;
    c.free_all("h3").await;
    assert_eq!(server.manager().counts(), (0, 0));

    // Unknown volume or malformed handle: STALE_FH.
    let mut bad = fh.clone();
    bad[0] ^= 0xff;
    assert_eq!(
        c.lock(lk(&bad, "g", 1, 0, 0), true, false, false).await,
        Nlm4Stat::StaleFh
    );
    assert_eq!(
        c.lock(lk(&fh[..31], "g", 1, 0, 0), true, false, false)
            .await,
        Nlm4Stat::StaleFh
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_grace_notify_and_client_reboot() {
    let env = volume().await;
    let state = tempfile::tempdir().unwrap();
    let client = fake_client(Nlm4Stat::Granted).await;
    // A statd on the client host, to receive our SM_NOTIFY.
    let (tx, mut notified) = mpsc::unbounded_channel();
    let mut rpc = RpcServer::new(ServerConfig::default());
    rpc.register(Arc::new(FakeStatd { tx }));
    let statd = serve_tcp_udp(Arc::new(rpc), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    client
        .pm
        .register(&Mapping::tcp_udp(
            NSM_PROGRAM,
            NSM_V1,
            statd.local_addr().port(),
        ))
        .await
        .unwrap();
    let (fh, gfid) = env.file("f3").await;
    {
        let server = nlm(
            &env,
            client.pm.addr().port(),
            Some(state.path()),
            Duration::from_secs(3),
        )
        .await;
        let mut c = Nlm::connect(server.local_addr()).await;
        // No monitored client before: no grace.
        assert_eq!(
            c.lock(lk(&fh, "guest", 1, 0, 0), true, false, false).await,
            Nlm4Stat::Granted
        );
        assert_eq!(c.unlock(lk(&fh, "guest", 1, 0, 0)).await, Nlm4Stat::Granted);
    }
    let sm = std::fs::read_dir(state.path().join("sm")).unwrap().count();
    assert_eq!(sm, 1, "the client host is recorded");
    {
        // NM_LOCK (a client without statd): granted, not recorded.
        let server = nlm(
            &env,
            client.pm.addr().port(),
            Some(&state.path().join("nm")),
            Duration::from_secs(3),
        )
        .await;
        let mut c = Nlm::connect(server.local_addr()).await;
        let mut w = XdrWriter::new();
        LockArgs {
            cookie: vec![2],
            block: true,
            exclusive: false,
            lock: lk(&fh, "no-statd", 9, 0, 1),
            reclaim: false,
            state: 0,
        }
        .encode(&mut w);
        let r = c.raw(proc4::NM_LOCK, w.as_bytes()).await.unwrap();
        assert_eq!(
            Res::decode(&mut XdrReader::new(&r)).unwrap().stat,
            Nlm4Stat::Granted
        );
        assert_eq!(
            std::fs::read_dir(state.path().join("nm/sm"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            c.unlock(lk(&fh, "no-statd", 9, 0, 1)).await,
            Nlm4Stat::Granted
        );
    }
    // Restart: SM_NOTIFY reaches the client's statd; only reclaims during grace.
    let mut server = nlm(
        &env,
        client.pm.addr().port(),
        Some(state.path()),
        Duration::from_secs(3),
    )
    .await;
    server.notify_clients();
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), notified.recv())
        .await
        .expect("SM_NOTIFY after the restart")
        .unwrap();
    assert_eq!(n.mon_name, b"127.0.0.1");
    assert_eq!(n.state, 3);
    let mut c = Nlm::connect(server.local_addr()).await;
    assert_eq!(
        c.lock(lk(&fh, "guest", 1, 0, 0), true, false, false).await,
        Nlm4Stat::DeniedGracePeriod
    );
    assert_eq!(
        c.test(lk(&fh, "guest", 1, 0, 0), true).await.stat,
        Nlm4Stat::DeniedGracePeriod
    );
    assert_eq!(
        c.lock(lk(&fh, "guest", 1, 0, 0), true, false, true).await,
        Nlm4Stat::Granted
    );
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        c.lock(lk(&fh, "guest", 2, 0, 0), true, false, false).await,
        Nlm4Stat::Denied
    );

    // The client reboots: its statd's SM_NOTIFY to ours frees its locks.
    let mut w = XdrWriter::new();
    StatChge {
        mon_name: b"guest".to_vec(),
        state: 7,
    }
    .encode(&mut w);
    let mut nsm = RpcClient::connect(server.local_addr()).await.unwrap();
    nsm.call(NSM_PROGRAM, NSM_V1, nsmproc::NOTIFY, w.as_bytes())
        .await
        .unwrap();
    let other = Volume::new(env.spec.clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();
    other_client_lock(&other, gfid, LockType::Write, 0, 0)
        .await
        .unwrap();
    // SM_STAT answers our state; SM_MON from a remote host is refused.
    let mut w = XdrWriter::new();
    w.put_string(b"x");
    let r = nsm
        .call(NSM_PROGRAM, NSM_V1, nsmproc::STAT, w.as_bytes())
        .await
        .unwrap();
    let mut rd = XdrReader::new(&r);
    assert_eq!((rd.get_u32().unwrap(), rd.get_i32().unwrap()), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_rpc() {
    let env = volume().await;
    let server = nlm(&env, 1, None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    // Garbage and truncated arguments: GARBAGE_ARGS, and the server lives on.
    for (p, args) in [
        (proc4::LOCK, vec![0u8; 3]),
        (proc4::TEST, vec![0xff; 64]),
        (proc4::UNLOCK, vec![0, 0, 4, 1]),
        (proc4::SHARE, vec![0; 40]),
        (proc4::FREE_ALL, vec![0, 0, 0, 1, b'a']),
    ] {
        match c.raw(p, &args).await {
            Err(ClientError::Rpc(ReplyStat::GarbageArgs)) => {}
            other => panic!("proc {p}: {other:?}"),
        }
    }
    match c.raw(16, &[]).await {
        Err(ClientError::Rpc(ReplyStat::ProcUnavail)) => {}
        other => panic!("{other:?}"),
    }
    // NLM v1 and v3: PROG_MISMATCH 4..4.
    for v in [1, 3] {
        match c.c.call(NLM_PROGRAM, v, proc4::NULL, &[]).await {
            Err(ClientError::Rpc(ReplyStat::ProgMismatch { low: 4, high: 4 })) => {}
            other => panic!("v{v}: {other:?}"),
        }
    }
    assert!(c.raw(proc4::NULL, &[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_msg_forms_udp_and_refused_callback() {
    let env = volume().await;
    let mut client = fake_client(Nlm4Stat::Denied).await;
    let server = nlm(&env, client.pm.addr().port(), None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    let (fh, _) = env.file("f4").await;

    // LOCK_MSG: void reply now, LOCK_RES to the client's lockd after.
    let mut w = XdrWriter::new();
    LockArgs {
        cookie: vec![0xab; 8],
        block: false,
        exclusive: true,
        lock: lk(&fh, "m", 1, 0, 10),
        reclaim: false,
        state: 1,
    }
    .encode(&mut w);
    assert!(c
        .raw(proc4::LOCK_MSG, w.as_bytes())
        .await
        .unwrap()
        .is_empty());
    let (p, call) = tokio::time::timeout(Duration::from_secs(5), client.others.recv())
        .await
        .expect("LOCK_RES")
        .unwrap();
    assert_eq!(p, proc4::LOCK_RES);
    assert_eq!(
        call,
        NlmCall::Res(Res {
            cookie: vec![0xab; 8],
            stat: Nlm4Stat::Granted
        })
    );
    // TEST_MSG from another host: TEST_RES says DENIED with the holder.
    let mut w = XdrWriter::new();
    TestArgs {
        cookie: vec![1],
        exclusive: false,
        lock: lk(&fh, "n", 2, 5, 1),
    }
    .encode(&mut w);
    assert!(c
        .raw(proc4::TEST_MSG, w.as_bytes())
        .await
        .unwrap()
        .is_empty());
    let (p, call) = tokio::time::timeout(Duration::from_secs(5), client.others.recv())
        .await
        .expect("TEST_RES")
        .unwrap();
    assert_eq!(p, proc4::TEST_RES);
    match call {
        NlmCall::TestRes(t) => {
            assert_eq!(t.stat, Nlm4Stat::Denied);
            assert_eq!(
                t.holder.map(|h| (h.svid, h.offset, h.len)),
                Some((1, 0, 10))
            );
        }
        other => panic!("{other:?}"),
    }

    // CANCEL_MSG (nothing of m's is waiting) and UNLOCK_MSG of m's range:
    // each answered by its own _RES with the cookie; the unlock ran (a
    // TEST_MSG of host n is granted now), then m locks again for below.
    let mut w = XdrWriter::new();
    CancArgs {
        cookie: vec![0xcc],
        block: true,
        exclusive: true,
        lock: lk(&fh, "m", 1, 0, 10),
    }
    .encode(&mut w);
    assert!(c
        .raw(proc4::CANCEL_MSG, w.as_bytes())
        .await
        .unwrap()
        .is_empty());
    let mut w = XdrWriter::new();
    UnlockArgs {
        cookie: vec![0xdd],
        lock: lk(&fh, "m", 1, 0, 10),
    }
    .encode(&mut w);
    assert!(c
        .raw(proc4::UNLOCK_MSG, w.as_bytes())
        .await
        .unwrap()
        .is_empty());
    let mut got = Vec::new();
    for what in ["CANCEL_RES", "UNLOCK_RES"] {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), client.others.recv())
                .await
                .expect(what)
                .unwrap(),
        );
    }
    got.sort_by_key(|(p, _)| *p);
    assert_eq!(
        got,
        [
            (
                proc4::CANCEL_RES,
                NlmCall::Res(Res {
                    cookie: vec![0xcc],
                    stat: Nlm4Stat::Granted
                })
            ),
            (
                proc4::UNLOCK_RES,
                NlmCall::Res(Res {
                    cookie: vec![0xdd],
                    stat: Nlm4Stat::Granted
                })
            )
        ]
    );
    let mut w = XdrWriter::new();
    TestArgs {
        cookie: vec![2],
        exclusive: true,
        lock: lk(&fh, "n", 2, 5, 1),
    }
    .encode(&mut w);
    c.raw(proc4::TEST_MSG, w.as_bytes()).await.unwrap();
    let (p, call) = tokio::time::timeout(Duration::from_secs(5), client.others.recv())
        .await
        .expect("TEST_RES after the unlock")
        .unwrap();
    assert_eq!(p, proc4::TEST_RES);
    match call {
        NlmCall::TestRes(t) => assert_eq!(t.stat, Nlm4Stat::Granted, "m's lock is gone"),
        other => panic!("{other:?}"),
    }
    let mut w = XdrWriter::new();
    LockArgs {
        cookie: vec![3],
        block: false,
        exclusive: true,
        lock: lk(&fh, "m", 1, 0, 10),
        reclaim: false,
        state: 1,
    }
    .encode(&mut w);
    let r = c.raw(proc4::LOCK, w.as_bytes()).await.unwrap();
    assert_eq!(
        Res::decode(&mut XdrReader::new(&r)).unwrap().stat,
        Nlm4Stat::Granted
    );

    // Over UDP too: a non-blocking LOCK of host n is DENIED.
    let mut w = XdrWriter::new();
    LockArgs {
        cookie: vec![7],
        block: false,
        exclusive: true,
        lock: lk(&fh, "n", 2, 0, 0),
        reclaim: false,
        state: 1,
    }
    .encode(&mut w);
    let r = kiln_portmap::rpc::client::udp_call(
        server.local_addr(),
        NLM_PROGRAM,
        NLM_V4,
        proc4::LOCK,
        None,
        w.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        Res::decode(&mut XdrReader::new(&r)).unwrap().stat,
        Nlm4Stat::Denied
    );

    // A blocked lock whose GRANTED the client refuses (it gave up) is
    // released again by the gateway.
    assert_eq!(
        c.lock(lk(&fh, "n", 2, 0, 0), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert_eq!(c.unlock(lk(&fh, "m", 1, 0, 0)).await, Nlm4Stat::Granted);
    let g = tokio::time::timeout(Duration::from_secs(5), client.granted.recv())
        .await
        .expect("GRANTED")
        .unwrap();
    assert_eq!(g.lock.caller_name, b"n");
    let t = Instant::now();
    loop {
        if c.test(lk(&fh, "o", 3, 0, 0), true).await.stat == Nlm4Stat::Granted {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the refused grant was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused lock is forgotten too: no file state is left.
    assert_eq!(server.manager().counts(), (0, 0));
    assert_eq!(
        server
            .manager()
            .stats
            .callbacks_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
