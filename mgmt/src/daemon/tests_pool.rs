//! In-process pool tests: several daemons with the real Raft config store on
//! their own 127.0.x.y addresses and state dirs, probing each other, creating
//! and starting a volume across servers, going down and coming back, and
//! refusing strangers.

use super::tests::{cli, start_daemon, wait_cfg, Reaper};
use super::*;
use crate::proto::{MgmtRequest, MGMT_PROTOCOL_VERSION};
use crate::wire::Conn;
use kiln_config::VolumeStatus;

/// A management port unlikely to be taken on these private addresses.
const PORT: u16 = 24917;

fn status_line<'a>(out: &'a str, label: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.contains(label))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_walkthrough() {
    let tmp = tempfile::tempdir().unwrap();
    let ips = ["127.0.2.1", "127.0.2.2", "127.0.2.3"];
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let _reaper = Reaper(dirs.iter().map(|d| d.join("state")).collect());
    let mut ds = Vec::new();
    for (ip, dir) in ips.iter().zip(&dirs) {
        ds.push(start_daemon(ip, dir, false, PORT).await);
    }
    assert_eq!(
        cli(&ds[0], "peer status").await,
        (0, "Number of Peers: 0\n".into())
    );

    for ip in &ips[1..] {
        assert_eq!(
            cli(&ds[0], &format!("peer probe {ip}:{PORT}")).await,
            (0, "peer probe: success\n".into())
        );
    }
    assert_eq!(
        cli(&ds[0], &format!("peer probe {}:{PORT}", ips[1])).await,
        (
            0,
            format!(
                "peer probe: success. Host {} port {PORT} already in peer list\n",
                ips[1]
            )
        )
    );
    assert_eq!(
        cli(&ds[0], &format!("peer probe {}:{PORT}", ips[0])).await,
        (
            0,
            "peer probe: success. Probe on localhost not needed\n".into()
        )
    );
    for d in &ds {
        wait_cfg(d, "3 peers", |c| c.peers.len() == 3).await;
    }
    let (code, out) = cli(&ds[2], "peer status").await;
    assert_eq!(code, 0);
    assert!(out.starts_with("Number of Peers: 2\n"), "{out}");
    assert_eq!(
        out.matches("State: Peer in Cluster (Connected)").count(),
        2,
        "{out}"
    );
    assert!(
        out.contains(&format!("Hostname: {}\nUuid: {}", ips[0], ds[0].id.uuid)),
        "{out}"
    );
    let (_, out) = cli(&ds[1], "pool list").await;
    assert!(
        out.contains(&format!("{}\tlocalhost\tConnected", ds[1].id.uuid)),
        "{out}"
    );
    assert_eq!(out.lines().count(), 4, "{out}");

    // Any server runs any command: create on n2 with bricks on n1 and n3.
    let b1 = format!("{}:{}/export/brick1", ips[0], dirs[0].display());
    let b3 = format!("{}:{}/export/brick1", ips[2], dirs[2].display());
    let (code, out) = cli(&ds[1], &format!("volume create vol1 {b1} {b3} force")).await;
    assert_eq!(code, 0, "{out}");
    assert!(dirs[0].join("export/brick1").is_dir() && dirs[2].join("export/brick1").is_dir());
    let (code, out) = cli(&ds[1], &format!("peer detach {}:{PORT}", ips[2])).await;
    assert_eq!(code, 1);
    assert!(out.contains("hosts one or more bricks"), "{out}");

    let (code, out) = cli(&ds[2], "volume start vol1").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Starting volume vol1 has been successful\n")
    );
    let spec = crate::fetch_volume_spec(&["127.0.0.9:1".into(), ds[1].bound.to_string()], "vol1")
        .await
        .unwrap();
    assert_eq!(spec.bricks.len(), 2);
    assert!(spec.bricks.iter().all(|b| b.port >= 24009), "{spec:?}");
    let (_, out) = cli(&ds[0], "volume status vol1").await;
    let n3_line = status_line(&out, &b3);
    assert_eq!(n3_line[3], "Y", "{out}");
    let n3_pid: u32 = n3_line[4].parse().unwrap();

    // n3's daemon goes down: its brick shows offline from elsewhere; a
    // change made meanwhile reaches it when it returns; its running brick
    // is adopted, not restarted.
    ds[2].shutdown().await;
    let (_, out) = cli(&ds[0], "volume status vol1").await;
    assert_eq!(status_line(&out, &b3)[3], "N", "{out}");
    assert_eq!(status_line(&out, &b1)[3], "Y", "{out}");
    let (code, out) = cli(&ds[0], "volume set vol1 network.ping-timeout 22").await;
    assert_eq!(code, 0, "{out}");
    ds[2] = start_daemon(ips[2], &dirs[2], false, PORT).await;
    wait_cfg(&ds[2], "the option set while down", |c| {
        c.volumes
            .get("vol1")
            .map(|v| v.options.contains_key("network.ping-timeout"))
            .unwrap_or(false)
    })
    .await;
    let (_, out) = cli(&ds[1], "volume status vol1").await;
    assert_eq!(
        status_line(&out, &b3)[3..5],
        ["Y", n3_pid.to_string().as_str()],
        "{out}"
    );

    let (code, out) = cli(&ds[0], "volume stop vol1").await;
    assert_eq!(code, 0, "{out}");
    assert!(!crate::supervisor::pid_runs(n3_pid, "--volume-id"));
    wait_cfg(&ds[2], "stopped", |c| {
        c.volumes["vol1"].status == VolumeStatus::Stopped
    })
    .await;
    assert_eq!(cli(&ds[2], "volume delete vol1 --yes").await.0, 0);

    // Detach n2; it forgets the pool and can be probed again.
    assert_eq!(
        cli(&ds[0], &format!("peer detach {}:{PORT}", ips[1])).await,
        (0, "Detach successful\n".into())
    );
    wait_cfg(&ds[1], "detached", |c| c.peers.is_empty()).await;
    assert_eq!(
        cli(&ds[1], "peer status").await,
        (0, "Number of Peers: 0\n".into())
    );
    let (_, out) = cli(&ds[0], "peer status").await;
    assert!(out.starts_with("Number of Peers: 1\n"), "{out}");
    assert_eq!(
        cli(&ds[2], &format!("peer probe {}:{PORT}", ips[1])).await,
        (0, "peer probe: success\n".into())
    );
    wait_cfg(&ds[1], "rejoined", |c| c.peers.len() == 3).await;
    for d in &ds {
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ips = ["127.0.3.1", "127.0.3.2", "127.0.3.3"];
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let mut ds = Vec::new();
    for (ip, dir) in ips.iter().zip(&dirs) {
        ds.push(start_daemon(ip, dir, false, PORT).await);
    }
    assert_eq!(
        cli(&ds[0], &format!("peer probe {}:{PORT}", ips[1]))
            .await
            .0,
        0
    );
    let b = format!("{}:{}/b", ips[2], dirs[2].display());
    assert_eq!(
        cli(&ds[2], &format!("volume create solo {b} force"))
            .await
            .0,
        0
    );

    // A server in a pool, or with volumes, cannot be probed into another.
    let (code, out) = cli(&ds[2], &format!("peer probe {}:{PORT}", ips[1])).await;
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            format!(
                "peer probe: failed: {} is already part of another cluster\n",
                ips[1]
            )
            .as_str()
        )
    );
    let (code, out) = cli(&ds[0], &format!("peer probe {}:{PORT}", ips[2])).await;
    assert_eq!(code, 1);
    assert!(out.contains("having volumes configured"), "{out}");
    let (code, out) = cli(&ds[0], "peer probe 127.0.3.9:1").await;
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "peer probe: failed: Probe returned with Transport endpoint is not connected\n"
        )
    );

    // Raw connections without the secret: peer messages, a forged Auth, a
    // ProbeJoin to a pool member.
    let connect = |addr: SocketAddr| async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = Conn::new(Box::new(s), addr.to_string());
        let (nonce, _) = c.read_hello().await.unwrap();
        (c, nonce)
    };
    let t = Duration::from_secs(10);
    let (mut c, _) = connect(ds[1].bound).await;
    let r = c
        .call(&MgmtRequest::Peer(PeerRequest::Detached), Bytes::new(), t)
        .await
        .unwrap();
    assert!(
        matches!(r.0, MgmtReply::Error(ref e) if e.contains("not authenticated")),
        "{r:?}"
    );
    assert!(
        c.call(&MgmtRequest::Peer(PeerRequest::Ping), Bytes::new(), t)
            .await
            .is_err(),
        "connection stays open"
    );
    let (mut c, nonce) = connect(ds[1].bound).await;
    let forged = MgmtRequest::Auth {
        version: MGMT_PROTOCOL_VERSION,
        uuid: ds[0].id.uuid.clone(),
        client_nonce: crate::auth::nonce(),
        proof: PoolSecret::generate().client_proof(&nonce, &[0u8; 32]),
    };
    let r = c.call(&forged, Bytes::new(), t).await.unwrap();
    assert!(
        matches!(r.0, MgmtReply::Error(ref e) if e.contains("authentication failed")),
        "{r:?}"
    );
    let (mut c, _) = connect(ds[1].bound).await;
    let join = MgmtRequest::ProbeJoin {
        version: MGMT_PROTOCOL_VERSION,
        secret: PoolSecret::generate().to_hex(),
        prober_uuid: "evil".into(),
    };
    let r = c.call(&join, Bytes::new(), t).await.unwrap();
    assert!(
        matches!(r.0, MgmtReply::Error(ref e) if e.contains("already part of another cluster")),
        "{r:?}"
    );
    // Garbage on the port closes that connection only.
    let mut raw = tokio::net::TcpStream::connect(ds[1].bound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0xff; 64])
        .await
        .unwrap();
    let (mut c, _) = connect(ds[1].bound).await;
    let r = c
        .call(&MgmtRequest::Peer(PeerRequest::Ping), Bytes::new(), t)
        .await
        .unwrap();
    assert!(matches!(r.0, MgmtReply::Error(_)));

    // The real pool member still works with its secret, and the pool is intact.
    assert!(ds[0].peers.ping(&ds[1].my_addr, t).await);
    let (_, out) = cli(&ds[1], "peer status").await;
    assert!(
        out.starts_with("Number of Peers: 1\n") && out.contains("(Connected)"),
        "{out}"
    );
    assert_eq!(
        cli(&ds[0], "volume info").await,
        (0, "No volumes present\n".into())
    );
    for d in &ds {
        d.shutdown().await;
    }
}
