//! Hostile or broken input: garbage and truncated frames on the management
//! and brick ports, `..`, `/`, NUL and `.kiln` in names sent straight to a
//! brick, internal xattrs, servers that are not pool members issuing
//! commands, bad names in the CLI. Expected: clear errors, no panic, no
//! effect outside the brick, the servers keep serving.

use kiln_core::proto::frame::{decode_meta, encode_meta};
use kiln_core::proto::{Loc, NewInode, Reply, ReplyResult, Request, PROTOCOL_VERSION};
use kiln_core::{xattr_names, Gfid, Name};
use kiln_tests::{check_prerequisites, Cluster, Node, MGMT_PORT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn frame(kind: u8, xid: u64, meta: &[u8], data: &[u8]) -> Vec<u8> {
    let len = 1 + 8 + 4 + meta.len() + data.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(kind);
    f.extend_from_slice(&xid.to_be_bytes());
    f.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    f.extend_from_slice(meta);
    f.extend_from_slice(data);
    f
}

/// Reads one frame: (kind, xid, meta, data).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, u64, Vec<u8>, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if !(13..=kiln_core::proto::MAX_FRAME).contains(&len) {
        return Err(std::io::Error::other(format!("reply frame length {len}")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let kind = body[0];
    let xid = u64::from_be_bytes(body[1..9].try_into().unwrap_or_default());
    let mlen = u32::from_be_bytes(body[9..13].try_into().unwrap_or_default()) as usize;
    if 13 + mlen > len {
        return Err(std::io::Error::other("reply header length"));
    }
    Ok((
        kind,
        xid,
        body[13..13 + mlen].to_vec(),
        body[13 + mlen..].to_vec(),
    ))
}

/// Sends `bytes` (ignoring a reset: the server may hang up mid-way), then
/// reads until the server closes or goes quiet for `quiet`.
fn throw(c: &Cluster, addr: SocketAddr, bytes: &[u8], close_early: bool) {
    let Ok(mut s) = c.client().connect(addr) else {
        panic!("cannot connect to {addr}");
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    if close_early {
        return;
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut sink = vec![0u8; 65536];
    let mut total = 0usize;
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 || total > 1 << 20 {
            break;
        }
        total += n;
    }
}

/// Every kind of broken byte stream, each on its own connection.
fn abuse_port(c: &Cluster, addr: SocketAddr) {
    // Pure garbage, small and large.
    throw(c, addr, &garbage(100, 1), false);
    throw(c, addr, &garbage(256 * 1024, 2), false);
    // A length far past the limit, and the largest u32.
    throw(c, addr, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0], false);
    throw(c, addr, &[0xff; 4], false);
    // A length below the fixed header.
    throw(c, addr, &[0, 0, 0, 1, 0], false);
    // Truncated frames: header promises more than comes, then EOF / reset.
    let f = frame(0, 1, &garbage(40, 3), b"");
    throw(c, addr, &f[..10], false);
    throw(c, addr, &f[..f.len() - 1], true);
    // Well-framed, but the header message is garbage / the kind is unknown /
    // the header length overruns the frame.
    throw(c, addr, &frame(0, 2, &garbage(64, 4), b"data"), false);
    throw(c, addr, &frame(7, 3, b"", b""), false);
    let mut bad_mlen = frame(0, 4, b"abc", b"");
    bad_mlen[13..17].copy_from_slice(&1000u32.to_be_bytes());
    throw(c, addr, &bad_mlen, false);
    // Many frames of garbage back to back, then connections dropped at once.
    let mut burst = Vec::new();
    for i in 0..200 {
        burst.extend(frame(0, i, &garbage(20, i + 10), b""));
    }
    throw(c, addr, &burst, false);
    for i in 0..50 {
        throw(c, addr, &garbage(i * 3, 100 + i as u64), true);
    }
}

fn assert_no_panic_logged(node: &Node) {
    let mut files = vec![node.dir().join("server.out")];
    let mut stack = vec![node.log_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            !text.contains("panicked"),
            "{} shows a panic:\n{text}",
            f.display()
        );
    }
}

#[test]
fn garbage_on_the_management_port() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(2).unwrap();
    let n1 = c.node(1);
    let pid = n1.server_pid().unwrap();
    abuse_port(&c, n1.sock(MGMT_PORT));
    assert_eq!(n1.server_pid(), Some(pid), "the daemon died or restarted");
    n1.kiln(&["pool", "list"]).unwrap().ok().unwrap();
    c.create_started_volume("vol1", &[1, 2]).unwrap();
    assert!(n1
        .kiln_ok(&["volume", "info", "vol1"])
        .unwrap()
        .contains("vol1"));
    assert_no_panic_logged(n1);
}

/// A one-brick volume on node01, and that brick's address.
fn one_brick(c: &Cluster) -> (std::path::PathBuf, SocketAddr) {
    let bricks = c.create_started_volume("vol1", &[1]).unwrap();
    let port = kiln_tests::wait_for("the brick to listen", Duration::from_secs(30), || {
        Ok(c.node(1).brick_port(&bricks[0]))
    })
    .unwrap();
    (bricks[0].clone(), c.node(1).sock(port))
}

#[test]
fn garbage_on_a_brick_port() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(1).unwrap();
    let (brick, addr) = one_brick(&c);
    let pids = c.node(1).brick_pids();
    abuse_port(&c, addr);
    assert_eq!(c.node(1).brick_pids(), pids, "the brick died or restarted");
    // The volume still works end to end.
    let m = c.client().mount("node01:/vol1").unwrap();
    std::fs::write(m.join("after-garbage"), b"fine").unwrap();
    assert_eq!(std::fs::read(m.join("after-garbage")).unwrap(), b"fine");
    assert!(brick.join("after-garbage").is_file());
    assert_no_panic_logged(c.node(1));
}

/// A brick connection that has done its handshake.
struct BrickConn {
    s: TcpStream,
    xid: u64,
}

impl BrickConn {
    fn open(c: &Cluster, addr: SocketAddr, brick: &Path) -> BrickConn {
        let s = c.client().connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut conn = BrickConn { s, xid: 0 };
        let hello = Request::Handshake {
            version: PROTOCOL_VERSION,
            volume: "vol1".into(),
            brick: format!("node01:{}", brick.display()),
            client_id: "kt-bad-input".into(),
        };
        match conn.call(&hello) {
            Ok(Reply::Welcome { .. }) => conn,
            other => panic!("handshake refused: {other:?}"),
        }
    }

    fn call(&mut self, req: &Request) -> ReplyResult {
        self.xid += 1;
        let meta = encode_meta(req).unwrap();
        self.s.write_all(&frame(0, self.xid, &meta, b"")).unwrap();
        let (kind, xid, meta, _data) =
            read_frame(&mut self.s).expect("the brick hung up on a request");
        assert_eq!((kind, xid), (1, self.xid), "reply frame");
        decode_meta::<ReplyResult>(&meta).expect("undecodable reply")
    }
}

/// A name that `Name::new` would refuse, made the way a hostile client
/// would: straight from wire bytes.
fn raw_name(bytes: &[u8]) -> Name {
    let mut wire = Vec::new();
    // bincode (varint options): length, then the bytes.
    assert!(bytes.len() < 251);
    wire.push(bytes.len() as u8);
    wire.extend_from_slice(bytes);
    decode_meta::<Name>(&wire).expect("a raw name decodes")
}

fn new_inode(mode: u32) -> NewInode {
    NewInode {
        gfid: Gfid::new_random(),
        mode,
        uid: 0,
        gid: 0,
        xattrs: Default::default(),
    }
}

#[test]
fn dotdot_nul_slash_and_internal_names_stay_inside_the_brick() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(1).unwrap();
    let (brick, addr) = one_brick(&c);
    let export = brick.parent().unwrap().to_path_buf();
    let before: Vec<_> = std::fs::read_dir(&export)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let mut conn = BrickConn::open(&c, addr, &brick);

    let bad: [&[u8]; 8] = [
        b"..",
        b".",
        b"../escape",
        b"../../escape",
        b"a/b",
        b"/etc",
        b"nul\0byte",
        b"",
    ];
    for name in bad {
        let loc = Loc {
            parent: Gfid::ROOT,
            name: raw_name(name),
        };
        let shown = String::from_utf8_lossy(name);
        let reqs = vec![
            Request::Lookup {
                loc: loc.clone(),
                xattrs: vec![],
            },
            Request::Mkdir {
                loc: loc.clone(),
                inode: new_inode(0o755),
            },
            Request::Create {
                loc: loc.clone(),
                inode: new_inode(0o644),
                flags: libc::O_RDWR,
                exclusive: true,
            },
            Request::Mknod {
                loc: loc.clone(),
                inode: new_inode(libc::S_IFREG | 0o644),
                rdev: 0,
            },
            Request::Symlink {
                loc: loc.clone(),
                inode: new_inode(0o777),
                target: b"/etc/passwd".to_vec(),
            },
            Request::Link {
                gfid: Gfid::ROOT,
                loc: loc.clone(),
            },
            Request::Unlink { loc: loc.clone() },
            Request::Rmdir { loc: loc.clone() },
            Request::Rename {
                from: loc.clone(),
                to: Loc {
                    parent: Gfid::ROOT,
                    name: raw_name(b"target"),
                },
            },
        ];
        for req in reqs {
            let op = req.op_name();
            let r = conn.call(&req);
            assert!(r.is_err(), "{op} with name {shown:?} succeeded: {r:?}");
        }
    }
    // `.kiln` at the brick root is internal: never visible, never creatable.
    let kiln_loc = Loc {
        parent: Gfid::ROOT,
        name: raw_name(b".kiln"),
    };
    let r = conn.call(&Request::Lookup {
        loc: kiln_loc.clone(),
        xattrs: vec![],
    });
    assert!(r.is_err(), "lookup of .kiln answered {r:?}");
    let r = conn.call(&Request::Mkdir {
        loc: kiln_loc,
        inode: new_inode(0o755),
    });
    assert!(r.is_err(), "mkdir .kiln answered {r:?}");
    // The brick's own xattrs (gfid, volume id, format) are not readable or
    // settable over the wire; DHT's layout/linkto are, for the translators.
    for name in [
        xattr_names::VOLUME_ID,
        xattr_names::GFID,
        xattr_names::BRICK_FORMAT,
    ] {
        let r = conn.call(&Request::Getxattr {
            gfid: Gfid::ROOT,
            name: name.into(),
        });
        assert!(r.is_err(), "a client read {name}: {r:?}");
        let mut xattrs = std::collections::BTreeMap::new();
        xattrs.insert(name.to_string(), vec![0u8; 16]);
        let r = conn.call(&Request::Setxattr {
            gfid: Gfid::ROOT,
            xattrs,
            flags: 0,
        });
        assert!(r.is_err(), "a client set {name}: {r:?}");
    }
    if let Ok(Reply::XattrNames { names }) = conn.call(&Request::Listxattr { gfid: Gfid::ROOT }) {
        for name in [
            xattr_names::VOLUME_ID,
            xattr_names::GFID,
            xattr_names::BRICK_FORMAT,
        ] {
            assert!(
                !names.iter().any(|n| n == name),
                "{name} listed to a client: {names:?}"
            );
        }
    }
    // The connection is still good for a sane request.
    let ok = conn.call(&Request::Lookup {
        loc: Loc {
            parent: Gfid::ROOT,
            name: Name::new("does-not-exist").unwrap(),
        },
        xattrs: vec![],
    });
    assert!(ok.is_err(), "lookup of a missing name: {ok:?}");
    assert!(matches!(conn.call(&Request::Ping), Ok(Reply::Pong)));

    // Nothing appeared outside the brick, nor at the brick root.
    let after: Vec<_> = std::fs::read_dir(&export)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "entries appeared next to the brick");
    for e in std::fs::read_dir(&brick).unwrap().flatten() {
        assert_eq!(
            e.file_name(),
            ".kiln",
            "unexpected {:?} in the brick root",
            e.file_name()
        );
    }
    assert!(!Path::new("/escape").exists() && !c.node(1).dir().join("escape").exists());
    assert_no_panic_logged(c.node(1));
}

#[test]
fn internal_xattrs_are_hidden_through_the_mount() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(1).unwrap();
    one_brick(&c);
    let m = c.client().mount("node01:/vol1").unwrap();
    std::fs::write(m.join("f"), b"x").unwrap();
    let names = m
        .sh("getfattr -d -m - f 2>&1; getfattr -d -m - . 2>&1")
        .unwrap();
    assert!(!names.stdout.contains("trusted.kiln"), "{names}");
    let get = m.sh("getfattr -n trusted.kiln.gfid f").unwrap();
    assert!(
        !get.success(),
        "read an internal xattr through the mount: {get}"
    );
    let set = m
        .sh("setfattr -n trusted.kiln.dht.linkto -v evil f")
        .unwrap();
    assert!(
        !set.success(),
        "set an internal xattr through the mount: {set}"
    );
    // user.* xattrs work.
    m.sh("setfattr -n user.color -v blue f")
        .unwrap()
        .ok()
        .unwrap();
    let got = m
        .sh("getfattr --only-values -n user.color f")
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(got.stdout, "blue");
}

#[test]
fn servers_outside_the_pool_cannot_command_or_join_it() {
    check_prerequisites().unwrap();
    let c = Cluster::new(3).unwrap();
    c.node(1).kiln_ok(&["peer", "probe", "node02"]).unwrap();
    c.create_started_volume("vol1", &[1, 2]).unwrap();
    let outsider = c.node(3);
    let evil_brick = outsider.brick_dir("evil");

    let attempts: Vec<Vec<String>> = vec![
        vec![
            "--remote-host",
            "node01",
            "volume",
            "stop",
            "vol1",
            "--mode=script",
        ],
        vec![
            "--remote-host",
            "node01",
            "volume",
            "delete",
            "vol1",
            "--yes",
        ],
        vec!["--remote-host", "node01", "peer", "probe", "node03"],
        vec!["--remote-host", "node01", "peer", "detach", "node02"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .chain([vec![
        "--remote-host".to_string(),
        "node01".into(),
        "volume".into(),
        "create".into(),
        "evil".into(),
        format!("node01:{}", evil_brick.display()),
        "force".into(),
    ]])
    .collect();
    for a in &attempts {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = outsider.kiln(&args).unwrap();
        assert!(
            !out.success(),
            "an outsider ran `kiln {}`: {out}",
            a.join(" ")
        );
        // The client host is no pool member either.
        let mut ca = vec!["--remote-host"];
        ca.extend_from_slice(&args[1..]);
        let out = c.client().kiln(&ca).unwrap();
        assert!(
            !out.success(),
            "the client host ran `kiln {}`: {out}",
            a.join(" ")
        );
    }
    // An outsider probing a pool member does not pull it into its own pool.
    let _ = outsider.kiln(&["peer", "probe", "node01"]).unwrap();

    let info = c.node(1).kiln_ok(&["volume", "info", "vol1"]).unwrap();
    assert!(info.contains("Started"), "vol1 changed:\n{info}");
    let all = c.node(1).kiln_ok(&["volume", "info"]).unwrap();
    assert!(!all.contains("evil"), "{all}");
    assert!(!evil_brick.exists(), "the outsider's brick was created");
    for i in [1, 2] {
        let pool = c.node(i).kiln_ok(&["pool", "list"]).unwrap();
        assert!(
            !pool.contains("node03"),
            "node{i:02} lists the outsider:\n{pool}"
        );
        assert!(
            pool.contains(if i == 1 { "node02" } else { "node01" }),
            "{pool}"
        );
    }
}

#[test]
fn bad_volume_and_brick_names_in_the_cli() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(1).unwrap();
    let n1 = c.node(1);
    let good_brick = n1.brick_spec("b");
    let before: Vec<_> = std::fs::read_dir(n1.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    for name in [
        "..",
        "../up",
        "a/b",
        "/abs",
        ".",
        "-dash",
        "x".repeat(300).as_str(),
    ] {
        let out = n1
            .kiln(&["volume", "create", name, &good_brick, "force"])
            .unwrap();
        assert!(!out.success(), "volume name {name:?} accepted: {out}");
        assert!(
            !out.stderr.trim().is_empty() || !out.stdout.trim().is_empty(),
            "no message for {name:?}"
        );
    }
    for brick in [
        "node01:relative/path",
        "node01:",
        "nohost-at-all",
        "node99:/tmp/x",
    ] {
        let out = n1.kiln(&["volume", "create", "v", brick, "force"]).unwrap();
        assert!(!out.success(), "brick {brick:?} accepted: {out}");
    }
    // Nothing was created beside the node's own dirs.
    let after: Vec<_> = std::fs::read_dir(n1.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after);
    let all = n1.kiln_ok(&["volume", "info"]).unwrap();
    for bad in ["../up", "a/b", "/abs", "-dash"] {
        assert!(!all.contains(bad), "{bad} listed:\n{all}");
    }
    assert_no_panic_logged(n1);
}
