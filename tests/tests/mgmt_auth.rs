//! A client that claims to be a pool member without the pool secret, talking
//! the management protocol on 24007 directly: unauthenticated peer
//! messages, a forged `Auth`, a `ProbeJoin` with a made-up secret, and CLI
//! commands from a host outside the pool. All refused; the pool, its
//! volumes and the daemons carry on unchanged.

use kiln_core::proto::frame::{decode_meta, encode_meta};
use kiln_mgmt::proto::{CliRequest, MgmtReply, MgmtRequest, PeerRequest, MGMT_PROTOCOL_VERSION};
use kiln_tests::{check_prerequisites, Cluster, MGMT_PORT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One raw management connection from the client host.
struct Raw {
    s: TcpStream,
    xid: u64,
    nonce: Vec<u8>,
}

fn read_frame(s: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if !(13..=kiln_core::proto::MAX_FRAME).contains(&len) {
        panic!("daemon sent a frame of length {len}");
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    let xid = u64::from_be_bytes(body[1..9].try_into().ok()?);
    let mlen = u32::from_be_bytes(body[9..13].try_into().ok()?) as usize;
    Some((body[0], xid, body.get(13..13 + mlen)?.to_vec()))
}

impl Raw {
    fn open(c: &Cluster, addr: SocketAddr) -> Raw {
        let mut s = c.client().connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (kind, _, meta) = read_frame(&mut s).expect("no Hello from the daemon");
        assert_eq!(kind, 1, "Hello is a reply frame");
        match decode_meta::<MgmtReply>(&meta).unwrap() {
            MgmtReply::Hello { nonce, .. } => Raw { s, xid: 0, nonce },
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Sends a request; the reply, or `None` if the daemon hung up.
    fn call(&mut self, req: &MgmtRequest) -> Option<MgmtReply> {
        self.xid += 1;
        let meta = encode_meta(req).unwrap();
        let len = 13 + meta.len();
        let mut f = Vec::with_capacity(4 + len);
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.push(0);
        f.extend_from_slice(&self.xid.to_be_bytes());
        f.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        f.extend_from_slice(&meta);
        self.s.write_all(&f).ok()?;
        let (kind, xid, meta) = read_frame(&mut self.s)?;
        assert_eq!((kind, xid), (1, self.xid));
        Some(decode_meta::<MgmtReply>(&meta).expect("undecodable reply"))
    }
}

fn refused(r: &Option<MgmtReply>) -> bool {
    matches!(r, None | Some(MgmtReply::Error(_)))
}

#[test]
fn a_client_without_the_pool_secret_is_refused() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(2).unwrap();
    c.create_started_volume("vol1", &[1, 2]).unwrap();
    let n1 = c.node(1);
    let pid = n1.server_pid().unwrap();
    let addr = n1.sock(MGMT_PORT);
    let evil = n1.dir().join("export/evil");
    let evil_s = evil.to_string_lossy().into_owned();

    // Peer messages on a connection that never authenticated.
    let unauthenticated = [
        PeerRequest::Ping,
        PeerRequest::StageBrick {
            path: evil_s.clone(),
            volume_id: "6f1c1f2e-1111-4222-8333-944455556666".into(),
            force: true,
        },
        PeerRequest::Detached,
    ];
    for p in unauthenticated {
        let mut raw = Raw::open(&c, addr);
        let r = raw.call(&MgmtRequest::Peer(p.clone()));
        assert!(refused(&r), "unauthenticated {p:?} answered {r:?}");
    }

    // A forged Auth: right shape, wrong proof; then peer messages on it.
    let mut raw = Raw::open(&c, addr);
    let forged = MgmtRequest::Auth {
        version: MGMT_PROTOCOL_VERSION,
        uuid: "00000000-0000-4000-8000-000000000bad".into(),
        client_nonce: vec![7u8; 32],
        proof: raw
            .nonce
            .iter()
            .rev()
            .copied()
            .chain([0u8; 16])
            .take(32)
            .collect(),
    };
    let r = raw.call(&forged);
    assert!(refused(&r), "forged Auth answered {r:?}");
    let r = raw.call(&MgmtRequest::Peer(PeerRequest::Ping));
    assert!(refused(&r), "peer Ping after a failed Auth answered {r:?}");

    // A ProbeJoin with a made-up secret cannot pull a pool member away.
    let mut raw = Raw::open(&c, addr);
    let r = raw.call(&MgmtRequest::ProbeJoin {
        version: MGMT_PROTOCOL_VERSION,
        secret: "ab".repeat(32),
        prober_uuid: "00000000-0000-4000-8000-000000000bad".into(),
    });
    assert!(refused(&r), "ProbeJoin into a pool member answered {r:?}");

    // CLI commands from the client host (not a pool member).
    for cmd in [
        CliRequest::VolumeStop {
            name: "vol1".into(),
            force: true,
        },
        CliRequest::VolumeDelete {
            name: "vol1".into(),
        },
        CliRequest::PeerDetach {
            host: "node02".into(),
            force: true,
        },
        CliRequest::PeerProbe {
            host: "client".into(),
        },
    ] {
        let mut raw = Raw::open(&c, addr);
        let r = raw.call(&MgmtRequest::Cli(cmd.clone()));
        assert!(refused(&r), "{cmd:?} from outside the pool answered {r:?}");
    }

    // Nothing changed, nothing crashed.
    assert_eq!(n1.server_pid(), Some(pid), "the daemon died");
    assert!(
        !evil.exists(),
        "an unauthenticated StageBrick created {}",
        evil.display()
    );
    let info = n1.kiln_ok(&["volume", "info", "vol1"]).unwrap();
    assert!(info.contains("Started"), "{info}");
    for (i, other) in [(1, "node02"), (2, "node01")] {
        let pool = c.node(i).kiln_ok(&["pool", "list"]).unwrap();
        assert!(pool.contains(other), "node{i:02} lost {other}:\n{pool}");
        assert!(!pool.contains("client"), "{pool}");
    }
}
