//! Hostile input on a brick: garbage, truncated and undecodable frames close
//! that connection only; names with `..`, `/`, NUL and the internal `.kiln`
//! are refused; symlinks are never followed out of the brick.

mod brick_util;

use brick_util::*;
use bytes::{BufMut, Bytes, BytesMut};
use kiln_core::iatt::SetAttr;
use kiln_core::proto::frame::encode_meta;
use kiln_core::proto::{Loc, NewInode, Reply, Request, XattrMap, PROTOCOL_VERSION};
use kiln_core::{FsError, Gfid};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF; true if the server closed within the timeout.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn raw_frame(kind: u8, xid: u64, meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32((1 + 8 + 4 + meta.len() + data.len()) as u32);
    b.put_u8(kind);
    b.put_u64(xid);
    b.put_u32(meta.len() as u32);
    b.extend_from_slice(meta);
    b.extend_from_slice(data);
    b.to_vec()
}

fn handshake_bytes(b: &TestBrick) -> Vec<u8> {
    let hs = Request::Handshake {
        version: PROTOCOL_VERSION,
        volume: VOLUME.into(),
        brick: b.label.clone(),
        client_id: "evil".into(),
    };
    raw_frame(0, 1, &encode_meta(&hs).unwrap(), &[])
}

#[tokio::test]
async fn bad_frames_close_only_that_connection() {
    let b = TestBrick::start().await;
    let mut keep = b.client("bystander").await;
    let ping = encode_meta(&Request::Ping).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            (0..200u32).map(|i| (i * 37 % 256) as u8 | 0x80).collect(),
        ),
        ("huge length", vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
        ("short length", vec![0, 0, 0, 2, 0, 0]),
        ("unknown kind", raw_frame(9, 2, &ping, &[])),
        ("undecodable meta", raw_frame(0, 2, &[0xff; 40], &[])),
        ("meta longer than frame", {
            let mut f = raw_frame(0, 2, &ping, &[]);
            f[13..17].copy_from_slice(&1000u32.to_be_bytes());
            f
        }),
        ("reply from client", raw_frame(1, 2, &ping, &[])),
    ];
    for (what, bytes) in cases {
        for with_handshake in [false, true] {
            let mut s = TcpStream::connect(b.addr).await.unwrap();
            if with_handshake {
                s.write_all(&handshake_bytes(&b)).await.unwrap();
            }
            s.write_all(&bytes).await.unwrap();
            assert!(
                closed_by_server(&mut s).await,
                "{what} (handshake: {with_handshake}) must close"
            );
        }
    }
    // Garbage whose first word is a plausible length: the server waits
    // for the rest, and closes when the client stops sending.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let junk: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8).collect();
    s.write_all(&junk).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(
        closed_by_server(&mut s).await,
        "garbage then EOF must close"
    );
    // Truncated frame: half a request, then the client stops sending.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&handshake_bytes(&b)).await.unwrap();
    let full = raw_frame(0, 2, &ping, &[]);
    s.write_all(&full[..full.len() - 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_by_server(&mut s).await, "truncated frame must close");

    // The server and other connections are unharmed.
    assert!(matches!(keep.ok(Request::Ping).await, Reply::Pong));
    let mut fresh = b.client("fresh").await;
    assert!(matches!(fresh.ok(Request::Ping).await, Reply::Pong));
    assert!(!b.task.is_finished());
}

#[tokio::test]
async fn bad_names_refused_and_nothing_escapes() {
    let b = TestBrick::start().await;
    let outside = b.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"keep me").unwrap();
    std::fs::set_permissions(
        outside.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = tree(b.dir.path());

    let mut c = b.client("evil").await;
    let d = c.mkdir(Gfid::ROOT, "d").await;
    let bad: Vec<(&[u8], FsError)> = vec![
        (b"..", FsError::InvalidArgument),
        (b".", FsError::InvalidArgument),
        (b"", FsError::InvalidArgument),
        (b"../outside/x", FsError::InvalidArgument),
        (b"a/b", FsError::InvalidArgument),
        (b"x\0y", FsError::InvalidArgument),
        (&[b'n'; 256], FsError::NameTooLong),
    ];
    for parent in [Gfid::ROOT, d.gfid] {
        for (n, want) in &bad {
            let l = Loc {
                parent,
                name: raw_name(n),
            };
            let reqs = vec![
                Request::Lookup {
                    loc: l.clone(),
                    xattrs: vec![],
                },
                Request::Create {
                    loc: l.clone(),
                    inode: new_inode(0o644),
                    flags: libc::O_RDWR,
                    exclusive: true,
                },
                Request::Mkdir {
                    loc: l.clone(),
                    inode: new_inode(0o755),
                },
                Request::Mknod {
                    loc: l.clone(),
                    inode: new_inode(libc::S_IFIFO | 0o644),
                    rdev: 0,
                },
                Request::Symlink {
                    loc: l.clone(),
                    inode: new_inode(0o777),
                    target: b"/etc/passwd".to_vec(),
                },
                Request::Link {
                    gfid: d.gfid,
                    loc: l.clone(),
                },
                Request::Unlink { loc: l.clone() },
                Request::Rmdir { loc: l.clone() },
                Request::Rename {
                    from: loc(Gfid::ROOT, "d"),
                    to: l.clone(),
                },
                Request::Rename {
                    from: l.clone(),
                    to: loc(Gfid::ROOT, "z"),
                },
            ];
            for r in reqs {
                let op = r.op_name();
                assert_eq!(
                    &c.err(r).await,
                    want,
                    "{op} {:?}",
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
    // `.kiln` at the root: not a client name (EPERM to change, ENOENT to see).
    let k = loc(Gfid::ROOT, ".kiln");
    assert_eq!(
        c.lookup(Gfid::ROOT, ".kiln").await.unwrap_err(),
        FsError::NotFound
    );
    for r in [
        Request::Create {
            loc: k.clone(),
            inode: new_inode(0o644),
            flags: libc::O_RDWR,
            exclusive: false,
        },
        Request::Mkdir {
            loc: k.clone(),
            inode: new_inode(0o755),
        },
        Request::Unlink { loc: k.clone() },
        Request::Rmdir { loc: k.clone() },
        Request::Rename {
            from: k.clone(),
            to: loc(Gfid::ROOT, "stolen"),
        },
        Request::Rename {
            from: loc(Gfid::ROOT, "d"),
            to: k.clone(),
        },
        Request::Symlink {
            loc: k.clone(),
            inode: new_inode(0o777),
            target: b"x".to_vec(),
        },
    ] {
        let op = r.op_name();
        assert_eq!(c.err(r).await, FsError::NotPermitted, "{op}");
    }
    assert!(b.at(".kiln").is_dir());
    // ...but fine as a name in a subdirectory.
    c.mkdir(d.gfid, ".kiln").await;
    // New inodes may not claim the null or root gfid.
    for g in [Gfid::NULL, Gfid::ROOT] {
        let inode = NewInode {
            gfid: g,
            ..new_inode(0o644)
        };
        let e = c
            .err(Request::Create {
                loc: loc(d.gfid, "g"),
                inode,
                flags: libc::O_RDWR,
                exclusive: true,
            })
            .await;
        assert_eq!(e, FsError::InvalidArgument);
    }

    // Symlinks pointing out of the brick are never followed by the brick.
    let target = outside.join("secret");
    let sl = match c
        .ok(Request::Symlink {
            loc: loc(Gfid::ROOT, "evil"),
            inode: new_inode(0o777),
            target: target.to_str().unwrap().as_bytes().to_vec(),
        })
        .await
    {
        Reply::Entry { iatt, .. } => iatt,
        r => panic!("{r:?}"),
    };
    let sd = match c
        .ok(Request::Symlink {
            loc: loc(Gfid::ROOT, "evildir"),
            inode: new_inode(0o777),
            target: outside.to_str().unwrap().as_bytes().to_vec(),
        })
        .await
    {
        Reply::Entry { iatt, .. } => iatt,
        r => panic!("{r:?}"),
    };
    let e = c
        .err(Request::Setattr {
            gfid: sl.gfid,
            attr: SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        })
        .await;
    assert_eq!(e, FsError::NotSupported);
    let e = c
        .err(Request::Setattr {
            gfid: sl.gfid,
            attr: SetAttr {
                size: Some(0),
                ..Default::default()
            },
        })
        .await;
    assert_eq!(e, FsError::InvalidArgument);
    c.ok(Request::Setattr {
        gfid: sl.gfid,
        attr: SetAttr {
            uid: Some(4321),
            ..Default::default()
        },
    })
    .await;
    assert_eq!(
        std::fs::symlink_metadata(b.at("evil")).unwrap().uid(),
        4321,
        "the link itself changed"
    );
    assert_eq!(
        c.err(Request::Open {
            gfid: sl.gfid,
            flags: libc::O_RDWR
        })
        .await,
        FsError::Os(libc::ELOOP)
    );
    let mut m = XattrMap::new();
    m.insert("user.pwned".into(), b"1".to_vec());
    assert!(c
        .call(
            Request::Setxattr {
                gfid: sl.gfid,
                xattrs: m,
                flags: 0
            },
            Bytes::new()
        )
        .await
        .0
        .is_err());
    for parent in [sl.gfid, sd.gfid] {
        assert_eq!(
            c.err(Request::Create {
                loc: loc(parent, "planted"),
                inode: new_inode(0o644),
                flags: libc::O_RDWR,
                exclusive: true
            })
            .await,
            FsError::NotDir
        );
        assert_eq!(
            c.err(Request::Mkdir {
                loc: loc(parent, "planted"),
                inode: new_inode(0o755)
            })
            .await,
            FsError::NotDir
        );
        assert_eq!(
            c.lookup(parent, "secret").await.unwrap_err(),
            FsError::NotDir
        );
        assert_eq!(
            c.err(Request::Opendir { gfid: parent }).await,
            FsError::NotDir
        );
    }
    // A create over the symlink's name does not write through it.
    let e = c
        .err(Request::Create {
            loc: loc(Gfid::ROOT, "evil"),
            inode: new_inode(0o644),
            flags: libc::O_RDWR | libc::O_TRUNC,
            exclusive: false,
        })
        .await;
    assert_eq!(e, FsError::Exists);

    // Outside the brick nothing changed.
    let m = std::fs::metadata(outside.join("secret")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"keep me");
    assert!(xattr(&outside.join("secret"), "user.pwned").is_none());
    let after: Vec<String> = tree(b.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("brick"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|p| !p.starts_with("brick"))
        .collect();
    assert_eq!(after, before);

    // Bogus fds and oversized reads are plain errors / capped.
    assert_eq!(
        c.err(Request::Read {
            fd: 999,
            offset: 0,
            size: 10
        })
        .await,
        FsError::BadFd
    );
    assert_eq!(
        c.err(Request::Readdir {
            fd: 999,
            offset: 0,
            max_entries: 1,
            plus: false,
            xattrs: vec![]
        })
        .await,
        FsError::BadFd
    );
    let (_, fd) = c.create(d.gfid, "small").await;
    let (data, eof) = c.read(fd, 0, u32::MAX).await;
    assert!(data.is_empty() && eof);
    assert_eq!(
        c.err(Request::Readdir {
            fd,
            offset: 0,
            max_entries: 1,
            plus: false,
            xattrs: vec![]
        })
        .await,
        FsError::NotDir
    );

    // Offsets and lengths at the edge of u64: errors, never a crash.
    let (r, _) = c
        .call(
            Request::Write {
                fd,
                offset: u64::MAX,
            },
            Bytes::from_static(b"x"),
        )
        .await;
    assert!(r.is_err(), "{r:?}");
    let (r, _) = c
        .call(
            Request::Read {
                fd,
                offset: u64::MAX - 1,
                size: 100,
            },
            Bytes::new(),
        )
        .await;
    assert!(matches!(r, Err(_) | Ok(Reply::Read { eof: true })), "{r:?}");
    let (r, _) = c
        .call(
            Request::Fallocate {
                fd,
                mode: -1,
                offset: u64::MAX,
                len: u64::MAX,
            },
            Bytes::new(),
        )
        .await;
    assert!(r.is_err());
    let (r, _) = c
        .call(Request::Ftruncate { fd, size: u64::MAX }, Bytes::new())
        .await;
    assert!(r.is_err());
    assert!(matches!(c.ok(Request::Ping).await, Reply::Pong));
}
