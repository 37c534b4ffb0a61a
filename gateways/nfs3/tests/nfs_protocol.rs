//! NFSv3 and MOUNT semantics over raw RPC on real sockets: exclusive create
//! verifiers, write verifiers and COMMIT, handles that survive a gateway
//! restart and work on a second gateway, paged READDIR/READDIRPLUS of a large
//! directory, SETATTR guard, rename/link/symlink/mknod, and UDP.

mod common;

use common::*;
use kiln_portmap::rpc::client::udp_call;
use kiln_portmap::rpc::AuthSys;
use kiln_portmap::{XdrReader, XdrWriter};
use std::collections::BTreeSet;
use std::time::Duration;

fn dirop(dir: &[u8], name: &str) -> XdrWriter {
    let mut w = XdrWriter::new();
    w.put_opaque(dir);
    w.put_string(name.as_bytes());
    w
}

fn empty_sattr(w: &mut XdrWriter) {
    for _ in 0..4 {
        w.put_bool(false);
    }
    w.put_u32(0);
    w.put_u32(0);
}

/// Skips a post_op_attr; returns the fattr3's size and mtime seconds if present.
fn post_op(r: &mut XdrReader<'_>) -> Option<(u64, u32, u32)> {
    if !r.get_bool().unwrap() {
        return None;
    }
    let f = r.get_fixed(84).unwrap();
    let size = u64::from_be_bytes(f[20..28].try_into().unwrap());
    let atime = u32::from_be_bytes(f[60..64].try_into().unwrap());
    let mtime = u32::from_be_bytes(f[68..72].try_into().unwrap());
    Some((size, atime, mtime))
}

fn skip_wcc(r: &mut XdrReader<'_>) {
    if r.get_bool().unwrap() {
        r.get_fixed(24).unwrap();
    }
    post_op(r);
}

async fn create_excl(
    raw: &mut Raw,
    dir: &[u8],
    name: &str,
    verf: [u8; 8],
) -> (u32, Option<Vec<u8>>) {
    let mut w = dirop(dir, name);
    w.put_u32(2);
    w.put_fixed(&verf);
    let (s, rest) = raw.nfs(8, &w).await;
    if s != 0 {
        return (s, None);
    }
    let mut r = XdrReader::new(&rest);
    assert!(r.get_bool().unwrap());
    (s, Some(r.get_opaque(64).unwrap().to_vec()))
}

async fn write(
    raw: &mut Raw,
    fh: &[u8],
    off: u64,
    data: &[u8],
    stable: u32,
) -> (u32, u32, [u8; 8]) {
    let mut w = XdrWriter::new();
    w.put_opaque(fh);
    w.put_u64(off);
    w.put_u32(data.len() as u32);
    w.put_u32(stable);
    w.put_opaque(data);
    let (s, rest) = raw.nfs(7, &w).await;
    assert_eq!(s, 0, "WRITE failed");
    let mut r = XdrReader::new(&rest);
    skip_wcc(&mut r);
    let n = r.get_u32().unwrap();
    let committed = r.get_u32().unwrap();
    (n, committed, r.get_array::<8>().unwrap())
}

async fn commit(raw: &mut Raw, fh: &[u8]) -> [u8; 8] {
    let mut w = XdrWriter::new();
    w.put_opaque(fh);
    w.put_u64(0);
    w.put_u32(0);
    let (s, rest) = raw.nfs(21, &w).await;
    assert_eq!(s, 0);
    let mut r = XdrReader::new(&rest);
    skip_wcc(&mut r);
    r.get_array::<8>().unwrap()
}

fn read_args(fh: &[u8], off: u64, count: u32) -> XdrWriter {
    let mut w = XdrWriter::new();
    w.put_opaque(fh);
    w.put_u64(off);
    w.put_u32(count);
    w
}

/// Decodes a READ result: (data, eof).
fn read_res(rest: &[u8]) -> (Vec<u8>, bool) {
    let mut r = XdrReader::new(rest);
    post_op(&mut r);
    let _count = r.get_u32().unwrap();
    let eof = r.get_bool().unwrap();
    (r.get_opaque(1 << 21).unwrap().to_vec(), eof)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_create_write_verifier_and_restart() {
    let env = start(2, &[]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let verf = *b"kilnverf";
    let (s, fh) = create_excl(&mut raw, &root, "x.dat", verf).await;
    assert_eq!(s, 0);
    let fh = fh.unwrap();
    // A retransmitted exclusive create (same verifier) succeeds with the same
    // handle even though the reply cache is bypassed (new xid).
    let (s, again) = create_excl(&mut raw, &root, "x.dat", verf).await;
    assert_eq!((s, again.as_deref()), (0, Some(&fh[..])));
    // Another client's verifier: EXIST.
    assert_eq!(
        create_excl(&mut raw, &root, "x.dat", *b"otherone").await.0,
        17
    );
    // GUARDED on an existing name: EXIST.
    let mut w = dirop(&root, "x.dat");
    w.put_u32(1);
    empty_sattr(&mut w);
    assert_eq!(raw.nfs(8, &w).await.0, 17);

    let data = pattern(200_000, 5);
    let (n, committed, wverf) = write(&mut raw, &fh, 0, &data, 0).await;
    assert_eq!((n, committed), (200_000, 0), "UNSTABLE stays unstable");
    assert_eq!(wverf, env.server.write_verifier());
    assert_eq!(commit(&mut raw, &fh).await, wverf);
    let (_, committed, _) = write(&mut raw, &fh, 200_000, b"tail", 2).await;
    assert_eq!(committed, 2, "FILE_SYNC");
    let (s, rest) = raw.nfs(6, &read_args(&fh, 0, 1 << 20)).await;
    assert_eq!(s, 0);
    let (back, eof) = read_res(&rest);
    assert!(eof);
    assert_eq!(&back[..200_000], &data[..]);
    assert_eq!(&back[200_000..], b"tail");

    // A second gateway over the same bricks (failover / restart): same
    // handle works, the write verifier differs so clients resend.
    let vol2 = std::sync::Arc::new(kiln_core::client::Volume::new(env.spec.clone()));
    vol2.wait_ready(Duration::from_secs(10)).await.unwrap();
    let cfg = kiln_nfs3::NfsConfig {
        listen: "127.0.0.1".parse().unwrap(),
        nfs_ports: vec![0],
        mount_port: 0,
        portmap_port: None,
        fd_idle: Duration::from_secs(30),
    };
    let second = kiln_nfs3::serve_volumes(vec![vol2], cfg).await.unwrap();
    assert_ne!(second.write_verifier(), env.server.write_verifier());
    let mut raw2 = Raw::connect(second.nfs_addrs()[0]).await;
    let (t, _, _, _, size) = raw2.getattr(&fh).await.unwrap();
    assert_eq!((t, size), (1, 200_004));
    assert_eq!(commit(&mut raw2, &fh).await, second.write_verifier());
    // A handle of a removed file is stale; garbage handles are bad handles.
    assert_eq!(raw.remove(&root, "x.dat", false).await, 0);
    assert_eq!(raw2.getattr(&fh).await, Err(70));
    assert_eq!(raw2.getattr(&[1, 2, 3]).await, Err(10001));
    let mut other_vol = fh.clone();
    other_vol[0] ^= 0xff;
    assert_eq!(raw2.getattr(&other_vol).await, Err(70));
}

/// Reads a whole directory with READDIR(PLUS) in pages of `maxcount` bytes.
async fn list_all(raw: &mut Raw, dir: &[u8], plus: bool, maxcount: u32) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut cookie = 0u64;
    let mut verf = [0u8; 8];
    let mut calls = 0;
    loop {
        let mut w = XdrWriter::new();
        w.put_opaque(dir);
        w.put_u64(cookie);
        w.put_fixed(&verf);
        if plus {
            w.put_u32(maxcount);
        }
        w.put_u32(maxcount);
        let (s, rest) = raw.nfs(if plus { 17 } else { 16 }, &w).await;
        assert_eq!(s, 0, "readdir status");
        assert!(
            rest.len() + 4 <= maxcount as usize,
            "reply {} over maxcount {maxcount}",
            rest.len() + 4
        );
        calls += 1;
        let mut r = XdrReader::new(&rest);
        post_op(&mut r);
        verf = r.get_array::<8>().unwrap();
        while r.get_bool().unwrap() {
            let _fileid = r.get_u64().unwrap();
            names.push(String::from_utf8(r.get_string(255).unwrap().to_vec()).unwrap());
            cookie = r.get_u64().unwrap();
            if plus {
                let attr = post_op(&mut r);
                let has_fh = r.get_bool().unwrap();
                if has_fh {
                    assert_eq!(r.get_opaque(64).unwrap().len(), 32);
                }
                let last = names.last().unwrap();
                if last != ".." {
                    assert!(
                        attr.is_some() && has_fh,
                        "plus entry {last} lacks attributes"
                    );
                }
            }
        }
        if r.get_bool().unwrap() {
            return (names, calls);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_directory_paged_listing() {
    let env = start(2, &[]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let dir = raw.mkdir(&root, "big", 0o755).await.unwrap();
    let mut want = BTreeSet::new();
    for i in 0..1000 {
        let name = format!("entry-{i:04}-with-a-longer-name");
        let mut w = dirop(&dir, &name);
        w.put_u32(0);
        empty_sattr(&mut w);
        assert_eq!(raw.nfs(8, &w).await.0, 0);
        want.insert(name);
    }
    for plus in [false, true] {
        let (names, calls) = list_all(&mut raw, &dir, plus, 8192).await;
        assert!(calls > 3, "paged over several calls");
        assert_eq!(&names[..2], &[".", ".."]);
        let got: BTreeSet<String> = names[2..].iter().cloned().collect();
        assert_eq!(got.len(), names.len() - 2, "no entry twice (plus={plus})");
        assert_eq!(got, want, "every entry once (plus={plus})");
    }
    // Too small a reply for even one entry.
    let mut w = XdrWriter::new();
    w.put_opaque(&dir);
    w.put_u64(0);
    w.put_fixed(&[0; 8]);
    w.put_u32(40);
    assert_eq!(raw.nfs(16, &w).await.0, 10005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_links_and_attributes() {
    let env = start(2, &[]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let d = raw.mkdir(&root, "d", 0o755).await.unwrap();
    assert_eq!(raw.mkdir(&root, "d", 0o755).await, Err(17));
    // LOOKUP of "." and ".." (the parent is known from the MKDIR).
    assert_eq!(raw.lookup(&d, ".").await.unwrap(), d);
    assert_eq!(raw.lookup(&d, "..").await.unwrap(), root);
    assert_eq!(raw.lookup(&root, ".kiln").await, Err(2));
    // SYMLINK + READLINK.
    let mut w = dirop(&d, "ln");
    empty_sattr(&mut w);
    w.put_string(b"../target");
    assert_eq!(raw.nfs(10, &w).await.0, 0);
    let ln = raw.lookup(&d, "ln").await.unwrap();
    let mut w = XdrWriter::new();
    w.put_opaque(&ln);
    let (s, rest) = raw.nfs(5, &w).await;
    assert_eq!(s, 0);
    let mut r = XdrReader::new(&rest);
    post_op(&mut r);
    assert_eq!(r.get_string(4096).unwrap(), b"../target");
    // MKNOD a fifo; a socket; a device needs root (we are root); a dir is BADTYPE.
    let mut w = dirop(&d, "fifo");
    w.put_u32(7);
    empty_sattr(&mut w);
    assert_eq!(raw.nfs(11, &w).await.0, 0);
    let mut w = dirop(&d, "dirnode");
    w.put_u32(2);
    assert_eq!(raw.nfs(11, &w).await.0, 10007);
    let fifo = raw.lookup(&d, "fifo").await.unwrap();
    assert_eq!(raw.getattr(&fifo).await.unwrap().0, 7);
    // A file, LINK, RENAME over the link target, REMOVE; RMDIR non-empty.
    let mut w = dirop(&d, "f");
    w.put_u32(0);
    empty_sattr(&mut w);
    assert_eq!(raw.nfs(8, &w).await.0, 0);
    let f = raw.lookup(&d, "f").await.unwrap();
    let mut w = XdrWriter::new();
    w.put_opaque(&f);
    w.put_opaque(&root);
    w.put_string(b"hard");
    assert_eq!(raw.nfs(15, &w).await.0, 0);
    assert_eq!(raw.lookup(&root, "hard").await.unwrap(), f);
    let mut w = dirop(&root, "hard");
    w.put_opaque(&d);
    w.put_string(b"renamed");
    assert_eq!(raw.nfs(14, &w).await.0, 0);
    assert_eq!(raw.lookup(&d, "renamed").await.unwrap(), f);
    assert_eq!(raw.lookup(&root, "hard").await, Err(2));
    assert_eq!(raw.remove(&root, "d", true).await, 66, "NOTEMPTY");
    assert_eq!(
        raw.remove(&d, "f", true).await,
        20,
        "RMDIR of a file: NOTDIR"
    );
    assert_eq!(
        raw.remove(&root, "d", false).await,
        21,
        "REMOVE of a dir: ISDIR"
    );
    // SETATTR: size, and a guard that no longer matches.
    let mut w = XdrWriter::new();
    w.put_opaque(&f);
    w.put_bool(false);
    w.put_bool(false);
    w.put_bool(false);
    w.put_bool(true);
    w.put_u64(12345);
    w.put_u32(0);
    w.put_u32(0);
    w.put_bool(true);
    w.put_u32(1);
    w.put_u32(0);
    assert_eq!(raw.nfs(2, &w).await.0, 10002, "NOT_SYNC with a stale guard");
    let mut w = XdrWriter::new();
    w.put_opaque(&f);
    w.put_bool(false);
    w.put_bool(false);
    w.put_bool(false);
    w.put_bool(true);
    w.put_u64(12345);
    w.put_u32(0);
    w.put_u32(2); // mtime to a client time
    w.put_u32(1_000_000);
    w.put_u32(0);
    w.put_bool(false);
    assert_eq!(raw.nfs(2, &w).await.0, 0);
    assert_eq!(raw.getattr(&f).await.unwrap().4, 12345);
    let a = env.volume.resolve_path("/d/f").await.unwrap();
    assert_eq!((a.size, a.mtime.sec), (12345, 1_000_000));
    // ACCESS as another user on a 0644 file: read only.
    raw.as_user(4321, 4321);
    let mut w = XdrWriter::new();
    w.put_opaque(&f);
    w.put_u32(0x3f);
    let (s, rest) = raw.nfs(4, &w).await;
    assert_eq!(s, 0);
    let mut r = XdrReader::new(&rest);
    post_op(&mut r);
    assert_eq!(r.get_u32().unwrap(), 0x01);
    // FSSTAT, FSINFO (1 MiB over TCP), PATHCONF.
    let mut w = XdrWriter::new();
    w.put_opaque(&root);
    let (s, rest) = raw.nfs(18, &w).await;
    assert_eq!(s, 0);
    let mut r = XdrReader::new(&rest);
    post_op(&mut r);
    assert!(r.get_u64().unwrap() > 0, "tbytes");
    let (s, rest) = raw.nfs(19, &w).await;
    assert_eq!(s, 0);
    let mut r = XdrReader::new(&rest);
    post_op(&mut r);
    assert_eq!(r.get_u32().unwrap(), 1 << 20);
    assert_eq!(raw.nfs(20, &w).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_transport() {
    let env = start(2, &[]).await;
    let cred = AuthSys {
        stamp: 1,
        machinename: b"udp-client".to_vec(),
        uid: 0,
        gid: 0,
        gids: vec![],
    };
    let t = Duration::from_secs(5);
    let mut w = XdrWriter::new();
    w.put_string(b"/tv");
    let r = udp_call(env.mount_addr(), MOUNT, 3, 1, Some(&cred), w.as_bytes(), t)
        .await
        .unwrap();
    let mut x = XdrReader::new(&r);
    assert_eq!(x.get_u32().unwrap(), 0);
    let root = x.get_opaque(64).unwrap().to_vec();
    // MOUNT v1 hands out the same 32-byte handle as fixed opaque.
    let r = udp_call(env.mount_addr(), MOUNT, 1, 1, Some(&cred), w.as_bytes(), t)
        .await
        .unwrap();
    assert_eq!(&r[4..36], &root[..]);
    let udp = env.nfs_addr();
    // FSINFO over UDP advertises 32 KiB transfers.
    let mut w = XdrWriter::new();
    w.put_opaque(&root);
    let r = udp_call(udp, NFS, 3, 19, Some(&cred), w.as_bytes(), t)
        .await
        .unwrap();
    let mut x = XdrReader::new(&r[4..]);
    post_op(&mut x);
    assert_eq!(x.get_u32().unwrap(), 32 * 1024);
    // CREATE, WRITE 32 KiB FILE_SYNC, READ back (a 1 MiB ask is capped).
    let mut w = dirop(&root, "udp.bin");
    w.put_u32(0);
    empty_sattr(&mut w);
    let r = udp_call(udp, NFS, 3, 8, Some(&cred), w.as_bytes(), t)
        .await
        .unwrap();
    assert_eq!(&r[..4], &[0, 0, 0, 0]);
    let mut x = XdrReader::new(&r[4..]);
    assert!(x.get_bool().unwrap());
    let fh = x.get_opaque(64).unwrap().to_vec();
    let data = pattern(32 * 1024, 7);
    let mut w = XdrWriter::new();
    w.put_opaque(&fh);
    w.put_u64(0);
    w.put_u32(data.len() as u32);
    w.put_u32(2);
    w.put_opaque(&data);
    let r = udp_call(udp, NFS, 3, 7, Some(&cred), w.as_bytes(), t)
        .await
        .unwrap();
    assert_eq!(&r[..4], &[0, 0, 0, 0]);
    let r = udp_call(
        udp,
        NFS,
        3,
        6,
        Some(&cred),
        read_args(&fh, 0, 1 << 20).as_bytes(),
        t,
    )
    .await
    .unwrap();
    assert_eq!(&r[..4], &[0, 0, 0, 0]);
    let (back, eof) = read_res(&r[4..]);
    assert_eq!(sha256(&back), sha256(&data));
    assert!(eof);
    // And the file is really on a brick, written as uid 0.
    let a = env.volume.resolve_path("/udp.bin").await.unwrap();
    assert_eq!(a.size, 32 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fds_are_closed() {
    let env = start_with(
        2,
        &[],
        kiln_nfs3::NfsConfig {
            listen: "127.0.0.1".parse().unwrap(),
            nfs_ports: vec![0],
            mount_port: 0,
            portmap_port: None,
            fd_idle: Duration::from_millis(300),
        },
    )
    .await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let mut w = dirop(&root, "idle.bin");
    w.put_u32(0);
    empty_sattr(&mut w);
    assert_eq!(raw.nfs(8, &w).await.0, 0);
    let fh = raw.lookup(&root, "idle.bin").await.unwrap();
    for i in 0..20u64 {
        write(&mut raw, &fh, i * 4096, &[i as u8; 4096], 0).await;
    }
    assert_eq!(
        env.server.open_fds("tv"),
        Some((1, 0)),
        "one fd for twenty writes"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.server.open_fds("tv") != Some((0, 0)) {
        assert!(
            std::time::Instant::now() < deadline,
            "idle fd not closed: {:?}",
            env.server.open_fds("tv")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Data written UNSTABLE through the closed fd is on the brick.
    assert_eq!(
        env.volume.resolve_path("/idle.bin").await.unwrap().size,
        20 * 4096
    );
}
