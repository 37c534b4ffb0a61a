//! Hostile and broken input against the gateway's NFS and MOUNT programs:
//! wrong programs and versions, garbage credentials, truncated and random
//! arguments for every procedure, oversize records, refused clients. Every
//! case gets a clear RPC or NFS error, and the server keeps serving.

mod common;

use common::*;
use kiln_portmap::rpc::client::{encode_call, udp_call_raw, ClientError};
use kiln_portmap::rpc::msg::{AuthStat, ReplyStat};
use kiln_portmap::rpc::RpcClient;
use kiln_portmap::XdrWriter;
use std::time::Duration;

fn stat_of(r: Result<Vec<u8>, ClientError>) -> ReplyStat {
    match r {
        Ok(_) => ReplyStat::Success,
        Err(ClientError::Rpc(s)) => s,
        Err(e) => panic!("transport failure: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_programs_versions_and_credentials() {
    let env = start(2, &[]).await;
    let mut c = RpcClient::connect(env.nfs_addr()).await.unwrap();
    c.set_auth_sys(0, 0, vec![]);
    assert_eq!(
        stat_of(c.call(NFS, 2, 0, &[]).await),
        ReplyStat::ProgMismatch { low: 3, high: 3 }
    );
    assert_eq!(
        stat_of(c.call(NFS, 4, 0, &[]).await),
        ReplyStat::ProgMismatch { low: 3, high: 3 }
    );
    assert_eq!(
        stat_of(c.call(MOUNT, 2, 0, &[]).await),
        ReplyStat::ProgMismatch { low: 1, high: 3 }
    );
    assert_eq!(
        stat_of(c.call(100021, 4, 0, &[]).await),
        ReplyStat::ProgUnavail
    );
    assert_eq!(
        stat_of(c.call(NFS, 3, 22, &[]).await),
        ReplyStat::ProcUnavail
    );
    assert_eq!(
        stat_of(c.call(MOUNT, 3, 6, &[]).await),
        ReplyStat::ProcUnavail
    );
    assert_eq!(stat_of(c.call(NFS, 3, 0, &[]).await), ReplyStat::Success);

    // RPCSEC_GSS (flavor 6) is not spoken; AUTH_SYS with 17 groups is invalid.
    let mut msg = encode_call(1, NFS, 3, 0, None, &[]);
    msg[24..28].copy_from_slice(&6u32.to_be_bytes());
    let r = c.call_raw(&msg).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    let mut w = XdrWriter::new();
    for v in [2u32, 0, 2, NFS, 3, 0, 1, 4 * (1 + 1 + 1 + 1 + 1 + 17)] {
        w.put_u32(v);
    }
    for v in [0u32, 0, 0, 0, 17] {
        w.put_u32(v);
    }
    for g in 0..17u32 {
        w.put_u32(g);
    }
    w.put_u32(0);
    w.put_u32(0);
    let r = c.call_raw(w.as_bytes()).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    // A verifier that is not AUTH_NONE.
    let mut msg = encode_call(3, NFS, 3, 0, None, &[]);
    msg[32..36].copy_from_slice(&1u32.to_be_bytes());
    let r = c.call_raw(&msg).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadVerf)
    );
    assert_eq!(stat_of(c.call(NFS, 3, 0, &[]).await), ReplyStat::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_random_arguments() {
    let env = start(2, &[]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let c = &mut raw.c;
    // Every procedure with no arguments at all, and with half a handle.
    for proc_ in 1..=21u32 {
        assert_eq!(
            stat_of(c.call(NFS, 3, proc_, &[]).await),
            ReplyStat::GarbageArgs,
            "proc {proc_} empty"
        );
        let mut w = XdrWriter::new();
        w.put_u32(32);
        w.put_raw(&root[..16]);
        assert_eq!(
            stat_of(c.call(NFS, 3, proc_, w.as_bytes()).await),
            ReplyStat::GarbageArgs,
            "proc {proc_} short"
        );
    }
    for proc_ in [1u32, 3] {
        assert_eq!(
            stat_of(c.call(MOUNT, 3, proc_, &[0, 0, 0x10, 0]).await),
            ReplyStat::GarbageArgs
        );
    }
    // A handle longer than NFS3_FHSIZE, a name longer than any path, a
    // WRITE announcing more data than allowed: refused before reading on.
    let mut w = XdrWriter::new();
    w.put_opaque(&[7u8; 65]);
    assert_eq!(
        stat_of(c.call(NFS, 3, 1, w.as_bytes()).await),
        ReplyStat::GarbageArgs
    );
    let mut w = XdrWriter::new();
    w.put_opaque(&root);
    w.put_u32(1 << 30);
    assert_eq!(
        stat_of(c.call(NFS, 3, 3, w.as_bytes()).await),
        ReplyStat::GarbageArgs
    );
    let mut w = XdrWriter::new();
    w.put_opaque(&root);
    w.put_u64(0);
    w.put_u32(u32::MAX);
    w.put_u32(0);
    w.put_u32(u32::MAX);
    assert_eq!(
        stat_of(c.call(NFS, 3, 7, w.as_bytes()).await),
        ReplyStat::GarbageArgs
    );
    // Valid XDR, bad values: a 300-byte name is NAMETOOLONG, a bad handle BADHANDLE.
    let mut w = XdrWriter::new();
    w.put_opaque(&root);
    w.put_string(&[b'n'; 300]);
    let r = c.call(NFS, 3, 3, w.as_bytes()).await.unwrap();
    assert_eq!(&r[..4], &63u32.to_be_bytes());
    let mut w = XdrWriter::new();
    w.put_opaque(&[1, 2, 3, 4]);
    let r = c.call(NFS, 3, 1, w.as_bytes()).await.unwrap();
    assert_eq!(&r[..4], &10001u32.to_be_bytes());
    // Random arguments (seeded) for every procedure, some starting with the
    // real root handle: an answer each time, never a dropped connection.
    let mut seed = 0x5eed_u64;
    for round in 0..400u32 {
        let proc_ = round % 22;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 300) as usize;
        let mut args = XdrWriter::new();
        if round % 2 == 0 {
            args.put_opaque(&root);
        }
        args.put_raw(&pattern(len, seed));
        match c.call(NFS, 3, proc_, args.as_bytes()).await {
            Ok(_) | Err(ClientError::Rpc(ReplyStat::GarbageArgs)) => {}
            Err(e) => panic!("proc {proc_} random args: {e}"),
        }
    }
    // Still there are no stray files named from garbage at the root, and the
    // server answers.
    assert_eq!(stat_of(c.call(NFS, 3, 0, &[]).await), ReplyStat::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_and_datagrams() {
    let env = start(2, &[]).await;
    // A record mark announcing 2 GiB: the connection is closed.
    let mut bad = RpcClient::connect(env.nfs_addr()).await.unwrap();
    bad.send_bytes(&(0x7fff_ffffu32 | 1 << 31).to_be_bytes())
        .await
        .unwrap();
    assert!(matches!(
        bad.read_reply().await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
    // A WRITE record just over the record cap (1 MiB + 64 KiB): closed too.
    let mut bad = RpcClient::connect(env.nfs_addr()).await.unwrap();
    let big = vec![0u8; (1 << 20) + 65 * 1024];
    let _ = bad.send_raw_record(&big).await;
    assert!(matches!(
        bad.read_reply().await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
    // A connection closed in the middle of a record.
    let mut bad = RpcClient::connect(env.nfs_addr()).await.unwrap();
    bad.send_bytes(&[0x80, 0, 0, 100, 1, 2, 3]).await.unwrap();
    drop(bad);
    // Garbage datagrams get no answer; a good one still does.
    for len in [0usize, 3, 11, 40, 500] {
        let r = udp_call_raw(
            env.nfs_addr(),
            &pattern(len, len as u64),
            Duration::from_millis(300),
        )
        .await;
        assert!(
            matches!(r, Err(ClientError::Timeout)),
            "garbage datagram of {len} bytes answered"
        );
    }
    let msg = encode_call(9, NFS, 3, 0, None, &[]);
    assert!(udp_call_raw(env.nfs_addr(), &msg, Duration::from_secs(3))
        .await
        .is_ok());
    let mut ok = RpcClient::connect(env.nfs_addr()).await.unwrap();
    assert!(ok.call(NFS, 3, 0, &[]).await.is_ok());
    let (good, _, err) = run("nfs-ls", &[&env.url("", "")]).await;
    assert!(good, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_and_unknown_exports() {
    let env = start(2, &[("nfs.rpc-auth-reject", "127.0.0.0/8")]).await;
    let mut raw = Raw::connect(env.mount_addr()).await;
    assert_eq!(raw.mnt("/tv").await, Err(13));
    assert_eq!(raw.mnt("/nosuchvol").await, Err(2));
    assert_eq!(raw.mnt("/tv/not/exported").await, Err(2));
    // A handle obtained elsewhere is refused too.
    let handle = {
        let mut h = uuid::Uuid::parse_str(&env.spec.id)
            .unwrap()
            .as_bytes()
            .to_vec();
        h.extend_from_slice(&kiln_core::Gfid::ROOT.0);
        h
    };
    assert_eq!(raw.getattr(&handle).await, Err(13));
    let (ok, _, _) = run("nfs-ls", &[&env.url("", "")]).await;
    assert!(!ok, "a rejected client listed the volume");

    let env2 = start(2, &[("nfs.rpc-auth-allow", "10.0.0.0/8,192.168.1.1")]).await;
    let mut raw = Raw::connect(env2.mount_addr()).await;
    assert_eq!(raw.mnt("/tv").await, Err(13));
    let env3 = start(2, &[("nfs.rpc-auth-allow", "10.0.0.0/8, 127.0.0.1")]).await;
    let mut raw = Raw::connect(env3.mount_addr()).await;
    assert!(raw.mnt("/tv").await.is_ok());
}
