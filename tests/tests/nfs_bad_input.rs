//! Hostile input against a real server's RPC ports (the `kiln nfs` process
//! that `kiln server` runs: portmap 111, MOUNT 38465, NFS 2049 and 38467),
//! from another host: oversize record marks, many
//! connections announcing big records and stalling, wrong programs and
//! versions (PROG_UNAVAIL, PROG_MISMATCH with the range), a wrong rpcvers,
//! garbage credentials, garbage records and datagrams. Every call gets a
//! clear RPC error or nothing, the gateway process survives with bounded
//! memory, logs no panic, and still answers on every port.

use kiln_portmap::rpc::client::{encode_call, udp_call_raw};
use kiln_portmap::rpc::msg::{AuthStat, ReplyStat};
use kiln_portmap::rpc::{ClientError, RpcClient};
use kiln_tests::{check_prerequisites, cmdline, wait_for, Cluster, Node};
use std::net::SocketAddr;
use std::time::Duration;

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const PMAP: u32 = 100_000;

/// Pid of the node's `kiln nfs` process.
fn gateway_pid(node: &Node) -> Option<i32> {
    node.pids()
        .into_iter()
        .find(|p| cmdline(*p).split_whitespace().take(3).any(|t| t == "nfs"))
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn stat_of(r: Result<Vec<u8>, ClientError>) -> ReplyStat {
    match r {
        Ok(_) => ReplyStat::Success,
        Err(ClientError::Rpc(s)) => s,
        Err(e) => panic!("no RPC answer: {e}"),
    }
}

fn closed(r: Result<Vec<u8>, ClientError>) -> bool {
    matches!(r, Err(ClientError::Closed) | Err(ClientError::Io(_)))
}

/// The program every port serves (and its version range).
fn program_of(port: u16) -> (u32, u32, u32) {
    match port {
        111 => (PMAP, 2, 2),
        38465 => (MOUNT, 1, 3),
        _ => (NFS, 3, 3),
    }
}

async fn abuse(addr: SocketAddr) {
    let (prog, low, high) = program_of(addr.port());
    let mut c = RpcClient::connect(addr).await.unwrap();
    c.set_auth_sys(0, 0, vec![]);
    assert_eq!(stat_of(c.call(prog, low, 0, &[]).await), ReplyStat::Success);
    assert_eq!(
        stat_of(c.call(prog, high + 1, 0, &[]).await),
        ReplyStat::ProgMismatch { low, high },
        "{addr}"
    );
    assert_eq!(
        stat_of(c.call(prog, low.saturating_sub(1), 0, &[]).await),
        ReplyStat::ProgMismatch { low, high },
        "{addr}"
    );
    assert_eq!(
        stat_of(c.call(399_999, 1, 0, &[]).await),
        ReplyStat::ProgUnavail
    );
    assert_eq!(
        stat_of(c.call(prog, low, 999, &[]).await),
        ReplyStat::ProcUnavail
    );
    // rpcvers 3, an unknown credential flavor, an AUTH_SYS body that lies
    // about its group count, a credential longer than the message.
    let mut msg = encode_call(7, prog, low, 0, None, &[]);
    msg[8..12].copy_from_slice(&3u32.to_be_bytes());
    let r = c.call_raw(&msg).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::RpcMismatch { low: 2, high: 2 }
    );
    let mut msg = encode_call(8, prog, low, 0, None, &[]);
    msg[24..28].copy_from_slice(&0x4141_4141u32.to_be_bytes());
    let r = c.call_raw(&msg).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    let mut raw = Vec::new();
    for v in [
        9u32,
        0,
        2,
        prog,
        low,
        0,
        1,
        20,
        0,
        0,
        0,
        0,
        0x00ff_ffff,
        0,
        0,
    ] {
        raw.extend_from_slice(&v.to_be_bytes());
    }
    let r = c.call_raw(&raw).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    let mut raw = Vec::new();
    for v in [10u32, 0, 2, prog, low, 0, 1, 0x7fff_0000] {
        raw.extend_from_slice(&v.to_be_bytes());
    }
    let r = c.call_raw(&raw).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    // Garbage records are dropped; the connection still works.
    c.send_raw_record(&[0xde, 0xad, 0xbe]).await.unwrap();
    c.send_raw_record(&[0, 0, 0, 1, 0, 0, 0, 1, 9, 9])
        .await
        .unwrap();
    assert_eq!(stat_of(c.call(prog, low, 0, &[]).await), ReplyStat::Success);

    // A record mark announcing 2 GiB closes that connection.
    let mut bad = RpcClient::connect(addr).await.unwrap();
    bad.send_bytes(&0xffff_ffffu32.to_be_bytes()).await.unwrap();
    assert!(closed(bad.read_reply().await), "{addr}: 2 GiB record mark");
    // 100 connections announcing 1 MiB records, sending 100 bytes, stalling.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut s = RpcClient::connect(addr).await.unwrap();
        let mut b = ((1u32 << 20) | 1 << 31).to_be_bytes().to_vec();
        b.extend_from_slice(&[0x5a; 100]);
        s.send_bytes(&b).await.unwrap();
        stalled.push(s);
    }
    // Garbage datagrams get no answer; a good one does.
    for len in [0usize, 1, 7, 28, 1000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let r = udp_call_raw(addr, &junk, Duration::from_millis(300)).await;
        assert!(
            matches!(r, Err(ClientError::Timeout)),
            "{addr}: datagram of {len} answered"
        );
    }
    let r = udp_call_raw(
        addr,
        &encode_call(11, prog, low, 0, None, &[]),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(ReplyStat::decode_reply(&r).unwrap().1, ReplyStat::Success);
    // A fresh connection is served while the stalled ones hang on.
    let mut ok = RpcClient::connect(addr).await.unwrap();
    assert_eq!(
        stat_of(ok.call(prog, low, 0, &[]).await),
        ReplyStat::Success
    );
    drop(stalled);
}

#[test]
fn garbage_on_every_gateway_port() {
    check_prerequisites().unwrap();
    let c = Cluster::new(1).unwrap();
    c.create_started_volume("vbad", &[1]).unwrap();
    let n = c.node(1);
    let ports = [111u16, 38465, 2049, 38467];
    let pid = wait_for("the NFS gateway to listen", Duration::from_secs(60), || {
        let Some(pid) = gateway_pid(n) else {
            return Ok(None);
        };
        let ls = n.listeners();
        let all = ports
            .iter()
            .all(|p| ls.iter().any(|l| l.pid == pid && l.port == *p));
        Ok(all.then_some(pid))
    })
    .unwrap();
    let before = rss_kib(pid);
    let ip = n.addr();
    c.client()
        .ns()
        .enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    for port in ports {
                        abuse(SocketAddr::from((ip, port))).await;
                    }
                })
        })
        .unwrap();
    assert_eq!(gateway_pid(n), Some(pid), "the gateway survived");
    let after = rss_kib(pid);
    eprintln!("nfs_bad_input: gateway RSS {before} KiB before, {after} KiB after");
    assert!(
        after < before + 128 * 1024,
        "gateway RSS grew from {before} to {after} KiB"
    );
    let log = std::fs::read_to_string(n.log_dir().join("nfs.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "nfs.log shows a panic:\n{log}");
}
