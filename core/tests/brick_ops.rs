//! The brick server's file operations, through a raw protocol client, with
//! the results checked on the brick directory itself (gfid xattrs, handles).

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::iatt::{FileKind, SetAttr, SetTime, Timespec};
use kiln_core::proto::{Loc, NewInode, Reply, Request, XattrMap, PROTOCOL_VERSION};
use kiln_core::{FsError, Gfid};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

#[tokio::test]
async fn handshake_checks() {
    let b = TestBrick::start().await;
    for (version, volume, brick) in [
        (PROTOCOL_VERSION + 1, VOLUME.to_string(), b.label.clone()),
        (PROTOCOL_VERSION, "othervol".to_string(), b.label.clone()),
        (
            PROTOCOL_VERSION,
            VOLUME.to_string(),
            "elsewhere:/b".to_string(),
        ),
    ] {
        let mut c = Client::raw(b.addr).await;
        let hs = Request::Handshake {
            version,
            volume,
            brick,
            client_id: "x".into(),
        };
        let (r, _) = c.call(hs, Bytes::new()).await;
        assert!(matches!(r, Err(FsError::Protocol(_))), "{r:?}");
        assert!(c.recv().await.is_none(), "connection closed after refusal");
    }
    // A request before the handshake is refused too.
    let mut c = Client::raw(b.addr).await;
    let (r, _) = c.call(Request::Ping, Bytes::new()).await;
    assert!(r.is_err());
    let mut c = b.client("ok").await;
    assert!(matches!(c.ok(Request::Ping).await, Reply::Pong));
}

#[tokio::test]
async fn startup_checks() {
    let b = TestBrick::start().await;
    // Root gfid, format and the root handle were created at start.
    let mut c = b.client("c").await;
    let root = match c
        .ok(Request::LookupGfid {
            gfid: Gfid::ROOT,
            xattrs: vec![],
        })
        .await
    {
        Reply::Entry { iatt, .. } => iatt,
        r => panic!("{r:?}"),
    };
    assert!(root.is_dir());
    assert_eq!(
        xattr(&b.path, "trusted.kiln.gfid").unwrap(),
        Gfid::ROOT.0.to_vec()
    );
    assert_eq!(
        xattr(&b.path, "trusted.kiln.brick-format").unwrap(),
        vec![1]
    );
    assert_eq!(
        std::fs::read_link(b.handle(Gfid::ROOT)).unwrap(),
        std::path::PathBuf::from("../../..")
    );
    // Wrong volume id: refused with a clear error.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = kiln_core::brick::BrickConfig {
        volume: VOLUME.into(),
        volume_id: uuid::Uuid::new_v4().to_string(),
        label: b.label.clone(),
        path: b.path.clone(),
        listen: listener.local_addr().unwrap(),
    };
    let e = kiln_core::brick::serve_listener(cfg.clone(), listener)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("belongs to volume id"), "{e}");
    // An unprepared directory: refused.
    let bare = b.dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = kiln_core::brick::serve_listener(
        kiln_core::brick::BrickConfig { path: bare, ..cfg },
        listener,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not a brick"), "{e}");
}

#[tokio::test]
async fn mkdir_create_write_read() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let d = c.mkdir(Gfid::ROOT, "dir").await;
    assert!(d.is_dir());
    assert_eq!(d.perm, 0o755);
    // On disk: the gfid xattr and the directory handle symlink.
    assert_eq!(xattr(&b.at("dir"), "trusted.kiln.gfid").unwrap(), d.gfid.0);
    let root_h = Gfid::ROOT.handle_rel_path();
    assert_eq!(
        std::fs::read_link(b.handle(d.gfid)).unwrap(),
        std::path::PathBuf::from(format!("../../{root_h}/dir"))
    );
    assert_eq!(
        std::fs::metadata(b.handle(d.gfid)).unwrap().ino(),
        std::fs::metadata(b.at("dir")).unwrap().ino()
    );
    assert_eq!(
        c.err(Request::Mkdir {
            loc: loc(Gfid::ROOT, "dir"),
            inode: new_inode(0o755)
        })
        .await,
        FsError::Exists
    );

    let (f, fd) = c.create(d.gfid, "file").await;
    assert_eq!(
        (f.kind, f.perm, f.nlink, f.size),
        (FileKind::Regular, 0o644, 1, 0)
    );
    let m = std::fs::metadata(b.at("dir/file")).unwrap();
    assert_eq!(m.nlink(), 2, "name + handle");
    assert_eq!(std::fs::metadata(b.handle(f.gfid)).unwrap().ino(), m.ino());

    let data: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i * 7 % 251) as u8).collect();
    let (n, post) = c.write(fd, 0, &data).await;
    assert_eq!(n as usize, data.len());
    assert_eq!(post.size, data.len() as u64);
    let (got, eof) = c.read(fd, 0, 1 << 20).await;
    assert_eq!(&got[..], &data[..1 << 20]);
    assert!(!eof);
    let (got, eof) = c.read(fd, 1 << 20, 1 << 20).await;
    assert_eq!(&got[..], &data[1 << 20..]);
    assert!(eof);
    assert_eq!(std::fs::read(b.at("dir/file")).unwrap(), data);

    // Open by gfid, read back; stat; fsync; flush; release.
    let fd2 = match c
        .ok(Request::Open {
            gfid: f.gfid,
            flags: libc::O_RDONLY,
        })
        .await
    {
        Reply::Opened { fd } => fd,
        r => panic!("{r:?}"),
    };
    assert_eq!(&c.read(fd2, 5, 3).await.0[..], &data[5..8]);
    match c.ok(Request::Stat { gfid: f.gfid }).await {
        Reply::Attr { iatt } => assert_eq!((iatt.size, iatt.nlink), (data.len() as u64, 1)),
        r => panic!("{r:?}"),
    }
    c.ok(Request::Fsync { fd, datasync: true }).await;
    c.ok(Request::Flush { fd, owner: 1 }).await;
    c.ok(Request::Release { fd }).await;
    assert_eq!(
        c.err(Request::Read {
            fd,
            offset: 0,
            size: 1
        })
        .await,
        FsError::BadFd
    );
    // Ftruncate through the read-only fd still works.
    match c.ok(Request::Ftruncate { fd: fd2, size: 10 }).await {
        Reply::Attr { iatt } => assert_eq!(iatt.size, 10),
        r => panic!("{r:?}"),
    }
    // Create: same gfid again (a retried create) opens it; another gfid is
    // EEXIST; exclusive is EEXIST.
    let inode = NewInode {
        gfid: f.gfid,
        ..new_inode(0o644)
    };
    let l = loc(d.gfid, "file");
    match c
        .ok(Request::Create {
            loc: l.clone(),
            inode: inode.clone(),
            flags: libc::O_RDWR,
            exclusive: false,
        })
        .await
    {
        Reply::Created { iatt, .. } => assert_eq!(iatt.gfid, f.gfid),
        r => panic!("{r:?}"),
    }
    let e = c
        .err(Request::Create {
            loc: l.clone(),
            inode: new_inode(0o644),
            flags: libc::O_RDWR,
            exclusive: false,
        })
        .await;
    assert_eq!(e, FsError::Exists);
    let e = c
        .err(Request::Create {
            loc: l,
            inode,
            flags: libc::O_RDWR,
            exclusive: true,
        })
        .await;
    assert_eq!(e, FsError::Exists);
}

#[tokio::test]
async fn special_files_links_and_attrs() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    // Mknod: fifo, regular, socket; owner from NewInode.
    for (n, mode, kind) in [
        ("fifo", libc::S_IFIFO | 0o640, FileKind::Fifo),
        ("reg", libc::S_IFREG | 0o600, FileKind::Regular),
        ("sock", libc::S_IFSOCK | 0o644, FileKind::Socket),
    ] {
        let inode = NewInode {
            uid: 1234,
            gid: 5678,
            ..new_inode(mode)
        };
        let iatt = match c
            .ok(Request::Mknod {
                loc: loc(Gfid::ROOT, n),
                inode,
                rdev: 0,
            })
            .await
        {
            Reply::Entry { iatt, .. } => iatt,
            r => panic!("{r:?}"),
        };
        assert_eq!(
            (iatt.kind, iatt.perm, iatt.uid, iatt.gid),
            (kind, mode & 0o7777, 1234, 5678)
        );
        let m = std::fs::symlink_metadata(b.at(n)).unwrap();
        assert_eq!((m.uid(), m.gid(), m.nlink()), (1234, 5678, 2));
    }
    // Symlink + readlink; its handle is a hard link to the symlink itself.
    let s = match c
        .ok(Request::Symlink {
            loc: loc(Gfid::ROOT, "sl"),
            inode: new_inode(0o777),
            target: b"reg".to_vec(),
        })
        .await
    {
        Reply::Entry { iatt, .. } => iatt,
        r => panic!("{r:?}"),
    };
    assert_eq!(s.kind, FileKind::Symlink);
    match c.ok(Request::Readlink { gfid: s.gfid }).await {
        Reply::Link { target } => assert_eq!(target, b"reg"),
        r => panic!("{r:?}"),
    }
    assert_eq!(
        std::fs::symlink_metadata(b.handle(s.gfid)).unwrap().ino(),
        std::fs::symlink_metadata(b.at("sl")).unwrap().ino()
    );
    // Stat through the handle of a symlink reports the symlink.
    match c.ok(Request::Stat { gfid: s.gfid }).await {
        Reply::Attr { iatt } => assert_eq!(iatt.kind, FileKind::Symlink),
        r => panic!("{r:?}"),
    }

    // Link, then unlink both names: the handle goes with the last one.
    let (f, ffd) = c.create(Gfid::ROOT, "a").await;
    c.ok(Request::Release { fd: ffd }).await;
    match c
        .ok(Request::Link {
            gfid: f.gfid,
            loc: loc(Gfid::ROOT, "b"),
        })
        .await
    {
        Reply::Entry { iatt, .. } => assert_eq!((iatt.gfid, iatt.nlink), (f.gfid, 2)),
        r => panic!("{r:?}"),
    }
    c.ok(Request::Unlink {
        loc: loc(Gfid::ROOT, "a"),
    })
    .await;
    assert!(b.handle(f.gfid).exists(), "still linked as b");
    c.ok(Request::Unlink {
        loc: loc(Gfid::ROOT, "b"),
    })
    .await;
    assert!(
        !b.handle(f.gfid).exists(),
        "handle removed with the last name"
    );
    assert_eq!(c.err(Request::Stat { gfid: f.gfid }).await, FsError::Stale);
    let d = c.mkdir(Gfid::ROOT, "d").await;
    assert_eq!(
        c.err(Request::Unlink {
            loc: loc(Gfid::ROOT, "d")
        })
        .await,
        FsError::IsDir
    );
    assert_eq!(
        c.err(Request::Link {
            gfid: d.gfid,
            loc: loc(Gfid::ROOT, "dl")
        })
        .await,
        FsError::NotPermitted
    );
    c.ok(Request::Rmdir {
        loc: loc(Gfid::ROOT, "d"),
    })
    .await;
    assert!(
        std::fs::symlink_metadata(b.handle(d.gfid)).is_err(),
        "dir handle removed"
    );
    assert_eq!(c.err(Request::Stat { gfid: d.gfid }).await, FsError::Stale);

    // Setattr: chmod, chown, truncate, times (given and now).
    let (g, _) = c.create(Gfid::ROOT, "g").await;
    let attr = SetAttr {
        mode: Some(0o4750),
        uid: Some(42),
        gid: Some(43),
        size: Some(4096),
        atime: Some(SetTime::At(Timespec {
            sec: 1_000_000,
            nsec: 5,
        })),
        mtime: Some(SetTime::At(Timespec {
            sec: 2_000_000,
            nsec: 7,
        })),
    };
    let post = match c.ok(Request::Setattr { gfid: g.gfid, attr }).await {
        Reply::Attr { iatt } => iatt,
        r => panic!("{r:?}"),
    };
    assert_eq!(
        (post.perm, post.uid, post.gid, post.size),
        (0o4750, 42, 43, 4096)
    );
    assert_eq!(
        (post.atime.sec, post.mtime.sec, post.mtime.nsec),
        (1_000_000, 2_000_000, 7)
    );
    let m = std::fs::metadata(b.at("g")).unwrap();
    assert_eq!(
        (m.permissions().mode() & 0o7777, m.uid(), m.len()),
        (0o4750, 42, 4096)
    );
    let attr = SetAttr {
        mtime: Some(SetTime::Now),
        ..Default::default()
    };
    match c.ok(Request::Setattr { gfid: g.gfid, attr }).await {
        Reply::Attr { iatt } => assert!(iatt.mtime.sec > 1_700_000_000),
        r => panic!("{r:?}"),
    }
    // Statfs.
    match c.ok(Request::Statfs).await {
        Reply::Statfs { stat } => assert!(stat.blocks > 0 && stat.namemax >= 255),
        r => panic!("{r:?}"),
    }
    // Fallocate extends the file.
    let (_, fd) = c.create(Gfid::ROOT, "fa").await;
    c.ok(Request::Fallocate {
        fd,
        mode: 0,
        offset: 0,
        len: 8192,
    })
    .await;
    assert_eq!(std::fs::metadata(b.at("fa")).unwrap().len(), 8192);
}

#[tokio::test]
async fn readdir_across_calls_and_plus() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let d = c.mkdir(Gfid::ROOT, "d").await;
    let mut want = BTreeSet::new();
    for i in 0..25 {
        let n = format!("f{i:02}");
        if i % 5 == 0 {
            c.mkdir(d.gfid, &n).await;
        } else {
            c.create(d.gfid, &n).await;
        }
        want.insert(n);
    }
    let fd = c.opendir(d.gfid).await;
    let mut got = BTreeSet::new();
    let mut offset = 0;
    let mut calls = 0;
    loop {
        let r = c
            .ok(Request::Readdir {
                fd,
                offset,
                max_entries: 4,
                plus: false,
                xattrs: vec![],
            })
            .await;
        let Reply::Entries { entries } = r else {
            panic!("{r:?}")
        };
        if entries.is_empty() {
            break;
        }
        calls += 1;
        assert!(entries.len() <= 4);
        for e in &entries {
            assert!(!e.gfid.is_null());
            assert!(e.iatt.is_none());
            let is_dir = e.name.as_bytes()[1..]
                .iter()
                .fold(0, |a, d| a * 10 + (d - b'0') as u32)
                % 5
                == 0;
            assert_eq!(e.kind == FileKind::Directory, is_dir, "{:?}", e.name);
            assert!(got.insert(e.name.to_string()), "no duplicates");
        }
        offset = entries.last().unwrap().offset;
        if calls == 2 {
            // A new entry after the snapshot does not disturb the listing.
            c.create(d.gfid, "late").await;
        }
    }
    assert_eq!(got, want);
    assert!(calls >= 7);
    // Offset 0 starts over with a fresh snapshot.
    let r = c
        .ok(Request::Readdir {
            fd,
            offset: 0,
            max_entries: 100,
            plus: true,
            xattrs: vec!["user.tag".into()],
        })
        .await;
    let Reply::Entries { entries } = r else {
        panic!()
    };
    assert_eq!(entries.len(), 26);
    for e in &entries {
        let iatt = e.iatt.as_ref().unwrap();
        assert_eq!(iatt.gfid, e.gfid);
        assert_eq!(iatt.kind, e.kind);
    }
    // The root listing hides .kiln.
    let fd = c.opendir(Gfid::ROOT).await;
    let r = c
        .ok(Request::Readdir {
            fd,
            offset: 0,
            max_entries: 0,
            plus: false,
            xattrs: vec![],
        })
        .await;
    let Reply::Entries { entries } = r else {
        panic!()
    };
    let names: Vec<String> = entries.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(names, vec!["d".to_string()]);
}

#[tokio::test]
async fn rename_keeps_handles() {
    let mut b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let a = c.mkdir(Gfid::ROOT, "a").await;
    let sub = c.mkdir(a.gfid, "sub").await;
    let x = c.mkdir(Gfid::ROOT, "x").await;
    let (f, _) = c.create(sub.gfid, "file").await;
    // Rename a directory into another: its handle follows.
    c.ok(Request::Rename {
        from: loc(a.gfid, "sub"),
        to: loc(x.gfid, "moved"),
    })
    .await;
    let x_h = x.gfid.handle_rel_path();
    assert_eq!(
        std::fs::read_link(b.handle(sub.gfid)).unwrap(),
        std::path::PathBuf::from(format!("../../{x_h}/moved"))
    );
    assert_eq!(
        std::fs::metadata(b.handle(sub.gfid)).unwrap().ino(),
        std::fs::metadata(b.at("x/moved")).unwrap().ino()
    );
    // Rename the parent too, then restart (cold cache): resolution by
    // gfid still finds the file's directory.
    c.ok(Request::Rename {
        from: loc(Gfid::ROOT, "x"),
        to: loc(Gfid::ROOT, "y"),
    })
    .await;
    drop(c);
    b.restart().await;
    let mut c = b.client("c2").await;
    assert_eq!(c.lookup(sub.gfid, "file").await.unwrap().gfid, f.gfid);
    c.create(sub.gfid, "new").await;
    assert!(b.at("y/moved/new").exists());

    // Rename a file over another: the replaced file's handle goes away.
    let (t, _) = c.create(Gfid::ROOT, "target").await;
    let (s, _) = c.create(Gfid::ROOT, "source").await;
    c.ok(Request::Rename {
        from: loc(Gfid::ROOT, "source"),
        to: loc(Gfid::ROOT, "target"),
    })
    .await;
    assert!(!b.handle(t.gfid).exists());
    assert!(b.handle(s.gfid).exists());
    assert_eq!(c.lookup(Gfid::ROOT, "target").await.unwrap().gfid, s.gfid);
    assert_eq!(
        c.lookup(Gfid::ROOT, "source").await.unwrap_err(),
        FsError::NotFound
    );
    // A directory over an empty directory: the replaced one's handle goes.
    let d1 = c.mkdir(Gfid::ROOT, "d1").await;
    let d2 = c.mkdir(Gfid::ROOT, "d2").await;
    c.ok(Request::Rename {
        from: loc(Gfid::ROOT, "d1"),
        to: loc(Gfid::ROOT, "d2"),
    })
    .await;
    assert!(std::fs::symlink_metadata(b.handle(d2.gfid)).is_err());
    assert_eq!(c.lookup(Gfid::ROOT, "d2").await.unwrap().gfid, d1.gfid);
    assert_eq!(c.err(Request::Stat { gfid: d2.gfid }).await, FsError::Stale);
    // Into a non-empty directory: ENOTEMPTY, nothing changes.
    let e = c
        .err(Request::Rename {
            from: loc(Gfid::ROOT, "d2"),
            to: loc(Gfid::ROOT, "y"),
        })
        .await;
    assert_eq!(e, FsError::NotEmpty);
    // A directory into its own subdirectory: EINVAL.
    let e = c
        .err(Request::Rename {
            from: loc(Gfid::ROOT, "y"),
            to: loc(sub.gfid, "loop"),
        })
        .await;
    assert_eq!(e, FsError::InvalidArgument);
}

#[tokio::test]
async fn deep_tree_beyond_symlink_limit() {
    let mut b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let mut parent = Gfid::ROOT;
    let mut gfids = Vec::new();
    for i in 0..50 {
        parent = c.mkdir(parent, &format!("l{i}")).await.gfid;
        gfids.push(parent);
    }
    // The kernel gives up on a chain this deep (40 links at most)...
    let e = std::fs::read_dir(b.handle(parent)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    // ...and one level less deep than the limit still resolves directly.
    assert!(std::fs::read_dir(b.handle(gfids[30])).is_ok());
    drop(c);
    b.restart().await; // cold cache: the 50-deep chain must be walked
    let mut c = b.client("c").await;
    let (f, _) = c.create(parent, "deep").await;
    assert_eq!(c.lookup(parent, "deep").await.unwrap().gfid, f.gfid);
    match c
        .ok(Request::LookupGfid {
            gfid: gfids[45],
            xattrs: vec![],
        })
        .await
    {
        Reply::Entry { iatt, .. } => assert!(iatt.is_dir()),
        r => panic!("{r:?}"),
    }
    let rel: Vec<String> = (0..50).map(|i| format!("l{i}")).collect();
    assert!(b.at(&format!("{}/deep", rel.join("/"))).exists());
}

#[tokio::test]
async fn xattrs_pass_through_and_internal_ones_guarded() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let d = c.mkdir(Gfid::ROOT, "d").await;
    let (f, _) = c.create(Gfid::ROOT, "f").await;
    for g in [d.gfid, f.gfid] {
        let mut m = XattrMap::new();
        m.insert("user.color".into(), b"blue".to_vec());
        c.ok(Request::Setxattr {
            gfid: g,
            xattrs: m.clone(),
            flags: 0,
        })
        .await;
        assert_eq!(
            c.err(Request::Setxattr {
                gfid: g,
                xattrs: m,
                flags: libc::XATTR_CREATE
            })
            .await,
            FsError::Exists
        );
        match c
            .ok(Request::Getxattr {
                gfid: g,
                name: "user.color".into(),
            })
            .await
        {
            Reply::Xattr { value } => assert_eq!(value, b"blue"),
            r => panic!("{r:?}"),
        }
        match c.ok(Request::Listxattr { gfid: g }).await {
            Reply::XattrNames { names } => {
                assert!(names.contains(&"user.color".to_string()));
                assert!(!names.iter().any(|n| n == "trusted.kiln.gfid"), "{names:?}");
            }
            r => panic!("{r:?}"),
        }
        c.ok(Request::Removexattr {
            gfid: g,
            name: "user.color".into(),
        })
        .await;
        assert_eq!(
            c.err(Request::Getxattr {
                gfid: g,
                name: "user.color".into()
            })
            .await,
            FsError::NoData
        );
        // The brick's own attributes are not for clients.
        let mut m = XattrMap::new();
        m.insert("trusted.kiln.gfid".into(), Gfid::new_random().0.to_vec());
        assert_eq!(
            c.err(Request::Setxattr {
                gfid: g,
                xattrs: m,
                flags: 0
            })
            .await,
            FsError::NotPermitted
        );
        assert_eq!(
            c.err(Request::Removexattr {
                gfid: g,
                name: "trusted.kiln.gfid".into()
            })
            .await,
            FsError::NotPermitted
        );
        assert_eq!(
            c.err(Request::Getxattr {
                gfid: g,
                name: "trusted.kiln.gfid".into()
            })
            .await,
            FsError::NotPermitted
        );
    }
    for name in ["trusted.kiln.volume-id", "trusted.kiln.brick-format"] {
        let mut m = XattrMap::new();
        m.insert(name.into(), vec![1]);
        assert_eq!(
            c.err(Request::Setxattr {
                gfid: Gfid::ROOT,
                xattrs: m,
                flags: 0
            })
            .await,
            FsError::NotPermitted
        );
    }
    // DHT's attributes go through: layout on a directory, linkto at create.
    let mut m = XattrMap::new();
    m.insert("trusted.kiln.dht".into(), b"layout".to_vec());
    c.ok(Request::Setxattr {
        gfid: d.gfid,
        xattrs: m,
        flags: 0,
    })
    .await;
    match c
        .ok(Request::Lookup {
            loc: loc(Gfid::ROOT, "d"),
            xattrs: vec![
                "trusted.kiln.dht".into(),
                "trusted.kiln.gfid".into(),
                "user.none".into(),
            ],
        })
        .await
    {
        Reply::Entry { iatt, xattrs } => {
            assert_eq!(iatt.gfid, d.gfid);
            assert_eq!(xattrs.len(), 1, "{xattrs:?}");
            assert_eq!(xattrs["trusted.kiln.dht"], b"layout");
        }
        r => panic!("{r:?}"),
    }
    let mut inode = NewInode {
        mode: libc::S_IFREG | 0o1000,
        ..new_inode(0)
    };
    inode
        .xattrs
        .insert("trusted.kiln.dht.linkto".into(), b"vol-client-1".to_vec());
    c.ok(Request::Mknod {
        loc: loc(Gfid::ROOT, "link"),
        inode: inode.clone(),
        rdev: 0,
    })
    .await;
    assert_eq!(
        xattr(&b.at("link"), "trusted.kiln.dht.linkto").unwrap(),
        b"vol-client-1"
    );
    match c
        .ok(Request::LookupGfid {
            gfid: inode.gfid,
            xattrs: vec!["trusted.kiln.dht.linkto".into()],
        })
        .await
    {
        Reply::Entry { iatt, xattrs } => {
            assert_eq!(iatt.perm, 0o1000);
            assert_eq!(xattrs["trusted.kiln.dht.linkto"], b"vol-client-1");
        }
        r => panic!("{r:?}"),
    }
    // A protected name cannot ride in with a creation either.
    let mut inode = new_inode(0o644);
    inode
        .xattrs
        .insert("trusted.kiln.volume-id".into(), vec![0; 16]);
    let e = c
        .err(Request::Create {
            loc: loc(Gfid::ROOT, "sneaky"),
            inode,
            flags: libc::O_RDWR,
            exclusive: true,
        })
        .await;
    assert_eq!(e, FsError::NotPermitted);
    assert!(!b.at("sneaky").exists());
}

#[tokio::test]
async fn setgid_directory_and_ownership() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let inode = NewInode {
        uid: 100,
        gid: 200,
        ..new_inode(0o2775)
    };
    let d = match c
        .ok(Request::Mkdir {
            loc: loc(Gfid::ROOT, "shared"),
            inode,
        })
        .await
    {
        Reply::Entry { iatt, .. } => iatt,
        r => panic!("{r:?}"),
    };
    assert_eq!((d.perm, d.uid, d.gid), (0o2775, 100, 200));
    // New entries in a set-group-ID directory take its group; directories
    // also inherit the bit.
    let inode = NewInode {
        uid: 300,
        gid: 400,
        ..new_inode(0o755)
    };
    let sub = match c
        .ok(Request::Mkdir {
            loc: loc(d.gfid, "sub"),
            inode,
        })
        .await
    {
        Reply::Entry { iatt, .. } => iatt,
        r => panic!("{r:?}"),
    };
    assert_eq!((sub.perm, sub.uid, sub.gid), (0o2755, 300, 200));
    let inode = NewInode {
        uid: 300,
        gid: 400,
        ..new_inode(0o640)
    };
    let l = Loc {
        parent: d.gfid,
        name: name("f"),
    };
    match c
        .ok(Request::Create {
            loc: l,
            inode,
            flags: libc::O_WRONLY,
            exclusive: true,
        })
        .await
    {
        Reply::Created { iatt, .. } => {
            assert_eq!((iatt.perm, iatt.uid, iatt.gid), (0o640, 300, 200))
        }
        r => panic!("{r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_release_in_order() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let d = c.mkdir(Gfid::ROOT, "p").await;
    // 64 creates in flight at once; every xid answered exactly once.
    let mut xids = std::collections::BTreeMap::new();
    for i in 0..64 {
        let x = c
            .send(
                Request::Create {
                    loc: loc(d.gfid, &format!("f{i}")),
                    inode: new_inode(0o644),
                    flags: libc::O_RDWR,
                    exclusive: true,
                },
                Bytes::new(),
            )
            .await;
        xids.insert(x, i);
    }
    let mut fds = Vec::new();
    for _ in 0..64 {
        let (x, r, _) = c.recv().await.unwrap();
        let i = xids.remove(&x).expect("known xid, answered once");
        match r {
            Ok(Reply::Created { fd, .. }) => fds.push((i, fd)),
            r => panic!("{r:?}"),
        }
    }
    // Write then Release sent back to back: the write still lands.
    let mut writes = BTreeSet::new();
    for (i, fd) in fds.iter() {
        let data = Bytes::from(format!("data {i}"));
        writes.insert(c.send(Request::Write { fd: *fd, offset: 0 }, data).await);
        c.send(Request::Release { fd: *fd }, Bytes::new()).await;
    }
    for _ in 0..128 {
        let (x, r, _) = c.recv().await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        writes.remove(&x);
    }
    assert!(writes.is_empty());
    for i in 0..64 {
        assert_eq!(
            std::fs::read(b.at(&format!("p/f{i}"))).unwrap(),
            format!("data {i}").as_bytes()
        );
    }
}

#[tokio::test]
async fn unlinked_open_files_stay_reachable_by_gfid() {
    let mut b = TestBrick::start().await;
    let mut c = b.client("c").await;
    let tdir = b.path.join(".kiln/unlink");
    let trash = |g: Gfid| tdir.join(g.to_string());
    let (f, fd) = c.create(Gfid::ROOT, "tmp").await;
    c.write(fd, 0, b"still here").await;
    c.ok(Request::Unlink {
        loc: loc(Gfid::ROOT, "tmp"),
    })
    .await;
    assert!(!b.handle(f.gfid).exists());
    assert!(
        trash(f.gfid).exists(),
        "handle kept in the trash while open"
    );
    // Stat and reopen by gfid (what a client does after a reconnect).
    match c.ok(Request::Stat { gfid: f.gfid }).await {
        Reply::Attr { iatt } => assert_eq!((iatt.nlink, iatt.size), (0, 10)),
        r => panic!("{r:?}"),
    }
    let fd2 = match c
        .ok(Request::Open {
            gfid: f.gfid,
            flags: libc::O_RDONLY,
        })
        .await
    {
        Reply::Opened { fd } => fd,
        r => panic!("{r:?}"),
    };
    assert_eq!(&c.read(fd2, 0, 100).await.0[..], b"still here");
    c.ok(Request::Release { fd }).await;
    assert!(trash(f.gfid).exists(), "one fd still open");
    c.ok(Request::Release { fd: fd2 }).await;
    assert!(!trash(f.gfid).exists(), "gone with the last close");
    assert_eq!(c.err(Request::Stat { gfid: f.gfid }).await, FsError::Stale);

    // Renamed over while open, then linked back to a name: handle restored.
    let (g, gfd) = c.create(Gfid::ROOT, "victim").await;
    c.create(Gfid::ROOT, "other").await;
    c.ok(Request::Rename {
        from: loc(Gfid::ROOT, "other"),
        to: loc(Gfid::ROOT, "victim"),
    })
    .await;
    assert!(trash(g.gfid).exists());
    c.ok(Request::Link {
        gfid: g.gfid,
        loc: loc(Gfid::ROOT, "saved"),
    })
    .await;
    assert!(!trash(g.gfid).exists());
    assert_eq!(
        std::fs::metadata(b.handle(g.gfid)).unwrap().ino(),
        std::fs::metadata(b.at("saved")).unwrap().ino()
    );
    c.ok(Request::Release { fd: gfd }).await;
    assert!(b.handle(g.gfid).exists(), "linked again: the handle stays");

    // A brick that stops with unlinked files open empties the trash at start.
    let (h, _hfd) = c.create(Gfid::ROOT, "left").await;
    c.ok(Request::Unlink {
        loc: loc(Gfid::ROOT, "left"),
    })
    .await;
    assert!(trash(h.gfid).exists());
    drop(c);
    b.restart().await;
    assert!(!trash(h.gfid).exists());
}

#[tokio::test]
async fn gfid_collisions_and_adoption() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    // A gfid already used by another file or directory: EEXIST, no leftover.
    let (f, _) = c.create(Gfid::ROOT, "first").await;
    let d = c.mkdir(Gfid::ROOT, "dir").await;
    for used in [f.gfid, d.gfid] {
        let inode = NewInode {
            gfid: used,
            ..new_inode(0o644)
        };
        let e = c
            .err(Request::Create {
                loc: loc(Gfid::ROOT, "second"),
                inode: inode.clone(),
                flags: libc::O_RDWR,
                exclusive: true,
            })
            .await;
        assert_eq!(e, FsError::Exists);
        assert!(!b.at("second").exists());
        let e = c
            .err(Request::Mkdir {
                loc: loc(Gfid::ROOT, "second"),
                inode,
            })
            .await;
        assert_eq!(e, FsError::Exists);
        assert!(!b.at("second").exists());
    }
    // A file put into the brick by hand gets a gfid and a handle on lookup.
    std::fs::write(b.at("dir/manual"), b"hand made").unwrap();
    let m = c.lookup(d.gfid, "manual").await.unwrap();
    assert!(!m.gfid.is_null());
    assert_eq!(
        xattr(&b.at("dir/manual"), "trusted.kiln.gfid").unwrap(),
        m.gfid.0
    );
    assert!(b.handle(m.gfid).exists());
    assert_eq!(
        c.lookup(d.gfid, "manual").await.unwrap().gfid,
        m.gfid,
        "stable"
    );
    // A directory without a gfid is adopted by a mkdir naming it (heal).
    std::fs::create_dir(b.at("dir/bare")).unwrap();
    assert!(c.lookup(d.gfid, "bare").await.unwrap().gfid.is_null());
    let inode = new_inode(0o750);
    match c
        .ok(Request::Mkdir {
            loc: loc(d.gfid, "bare"),
            inode: inode.clone(),
        })
        .await
    {
        Reply::Entry { iatt, .. } => assert_eq!((iatt.gfid, iatt.perm), (inode.gfid, 0o750)),
        r => panic!("{r:?}"),
    }
    assert_eq!(c.lookup(d.gfid, "bare").await.unwrap().gfid, inode.gfid);
    c.create(inode.gfid, "inside").await;
    assert!(b.at("dir/bare/inside").exists());
}

#[tokio::test]
async fn stopping_the_brick_closes_its_connections() {
    let b = TestBrick::start().await;
    let mut c = b.client("c").await;
    assert!(matches!(c.ok(Request::Ping).await, Reply::Pong));
    b.task.abort();
    // Like a killed brick process: the client sees the connection end.
    assert!(c.recv().await.is_none());
}
