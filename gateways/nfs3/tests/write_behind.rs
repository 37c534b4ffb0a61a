//! UNSTABLE WRITEs are queued behind and answered at once: a burst of
//! pipelined writes (with overlapping rewrites) lands in the order sent,
//! and GETATTR, READ, SETATTR (truncate) and COMMIT right after them see
//! every byte, as if each write had been applied before its reply.

mod common;

use common::*;
use kiln_portmap::rpc::client::encode_call;
use kiln_portmap::rpc::msg::ReplyStat;
use kiln_portmap::rpc::AuthSys;
use kiln_portmap::{XdrReader, XdrWriter};

const CHUNK: usize = 64 * 1024;

async fn create(raw: &mut Raw, dir: &[u8], name: &str) -> Vec<u8> {
    let mut w = XdrWriter::new();
    w.put_opaque(dir);
    w.put_string(name.as_bytes());
    w.put_u32(0); // UNCHECKED
    for _ in 0..4 {
        w.put_bool(false);
    }
    w.put_u32(0);
    w.put_u32(0);
    let (s, rest) = raw.nfs(8, &w).await;
    assert_eq!(s, 0, "CREATE");
    let mut r = XdrReader::new(&rest);
    assert!(r.get_bool().unwrap());
    r.get_opaque(64).unwrap().to_vec()
}

fn write_args(fh: &[u8], off: u64, data: &[u8], stable: u32) -> XdrWriter {
    let mut w = XdrWriter::new();
    w.put_opaque(fh);
    w.put_u64(off);
    w.put_u32(data.len() as u32);
    w.put_u32(stable);
    w.put_opaque(data);
    w
}

/// Sends every write before reading any reply (as a kernel client's
/// writeback does); returns the verifiers of the replies. Writes in flight
/// together have no order (as on any NFS server): overlapping ones go in
/// separate bursts.
async fn pipelined_writes(raw: &mut Raw, fh: &[u8], writes: &[(u64, Vec<u8>)]) -> Vec<[u8; 8]> {
    let root = AuthSys {
        stamp: 0,
        machinename: b"wb".to_vec(),
        uid: 0,
        gid: 0,
        gids: vec![],
    };
    for (i, (off, data)) in writes.iter().enumerate() {
        let args = write_args(fh, *off, data, 0);
        let msg = encode_call(1000 + i as u32, NFS, 3, 7, Some(&root), args.as_bytes());
        raw.c.send_raw_record(&msg).await.unwrap();
    }
    // Replies may come in any order (calls run concurrently): match by xid.
    let mut verfs = Vec::new();
    for _ in writes {
        let reply = raw.c.read_reply().await.unwrap();
        let (xid, stat, body) = ReplyStat::decode_reply(&reply).unwrap();
        assert_eq!(stat, ReplyStat::Success);
        let (off, data) = &writes[(xid - 1000) as usize];
        let mut r = XdrReader::new(body);
        assert_eq!(r.get_u32().unwrap(), 0, "WRITE at {off}");
        if r.get_bool().unwrap() {
            r.get_fixed(24).unwrap();
        }
        if r.get_bool().unwrap() {
            r.get_fixed(84).unwrap();
        }
        assert_eq!(r.get_u32().unwrap() as usize, data.len());
        assert_eq!(r.get_u32().unwrap(), 0, "UNSTABLE");
        verfs.push(r.get_array::<8>().unwrap());
    }
    verfs
}

async fn read_all(raw: &mut Raw, fh: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut w = XdrWriter::new();
        w.put_opaque(fh);
        w.put_u64(out.len() as u64);
        w.put_u32(1 << 20);
        let (s, rest) = raw.nfs(6, &w).await;
        assert_eq!(s, 0, "READ");
        let mut r = XdrReader::new(&rest);
        if r.get_bool().unwrap() {
            r.get_fixed(84).unwrap();
        }
        let _n = r.get_u32().unwrap();
        let eof = r.get_bool().unwrap();
        let data = r.get_opaque(1 << 20).unwrap();
        out.extend_from_slice(data);
        if eof || data.is_empty() {
            return out;
        }
    }
}

async fn commit(raw: &mut Raw, fh: &[u8]) -> (u32, Option<[u8; 8]>) {
    let mut w = XdrWriter::new();
    w.put_opaque(fh);
    w.put_u64(0);
    w.put_u32(0);
    let (s, rest) = raw.nfs(21, &w).await;
    if s != 0 {
        return (s, None);
    }
    let mut r = XdrReader::new(&rest);
    if r.get_bool().unwrap() {
        r.get_fixed(24).unwrap();
    }
    if r.get_bool().unwrap() {
        r.get_fixed(84).unwrap();
    }
    (s, Some(r.get_array::<8>().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_are_seen_in_order_by_later_calls() {
    let env = start(2, &[]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let fh = create(&mut raw, &root, "wb.bin").await;

    // 48 chunks in one burst; once answered, rewrites of chunks 3 and 7;
    // once those are answered, an unaligned patch over the rewritten chunk 7:
    // a write answered before another is sent must be applied before it.
    let mut expect = Vec::new();
    let mut burst = Vec::new();
    for i in 0..48u64 {
        let d = pattern(CHUNK, i + 1);
        expect.extend_from_slice(&d);
        burst.push((i * CHUNK as u64, d));
    }
    let mut verfs = pipelined_writes(&mut raw, &fh, &burst).await;
    for bursts in [
        vec![(3 * CHUNK, CHUNK, 100u64), (7 * CHUNK, CHUNK, 101)],
        vec![(7 * CHUNK + 1000, 5000, 102)],
    ] {
        let burst: Vec<(u64, Vec<u8>)> = bursts
            .into_iter()
            .map(|(off, len, seed)| {
                let d = pattern(len, seed);
                expect[off..off + len].copy_from_slice(&d);
                (off as u64, d)
            })
            .collect();
        verfs.extend(pipelined_writes(&mut raw, &fh, &burst).await);
    }
    // At once: the size and the bytes of every queued write.
    let (_, _, _, _, size) = raw.getattr(&fh).await.unwrap();
    assert_eq!(size, expect.len() as u64, "GETATTR right after the burst");
    let back = read_all(&mut raw, &fh).await;
    assert_eq!(back.len(), expect.len());
    assert!(back == expect, "READ right after the burst");
    let (s, v) = commit(&mut raw, &fh).await;
    assert_eq!((s, v), (0, Some(env.server.write_verifier())));
    // And on the bricks, through the volume (another client).
    let brick_bytes: Vec<Vec<u8>> = env
        .bricks
        .iter()
        .filter_map(|b| std::fs::read(b.join("wb.bin")).ok())
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(
        brick_bytes.len(),
        1,
        "one data copy on a distributed volume"
    );
    assert!(brick_bytes[0] == expect, "brick content after COMMIT");

    // Queued writes then a truncate: the truncate comes after them.
    let more: Vec<(u64, Vec<u8>)> = (0..8u64)
        .map(|i| ((48 + i) * CHUNK as u64, pattern(CHUNK, 200 + i)))
        .collect();
    pipelined_writes(&mut raw, &fh, &more).await;
    let mut w = XdrWriter::new();
    w.put_opaque(&fh);
    for _ in 0..3 {
        w.put_bool(false); // mode, uid, gid
    }
    w.put_bool(true);
    w.put_u64(10_000);
    w.put_u32(0);
    w.put_u32(0);
    w.put_bool(false); // no guard
    assert_eq!(raw.nfs(2, &w).await.0, 0, "SETATTR size");
    let (_, _, _, _, size) = raw.getattr(&fh).await.unwrap();
    assert_eq!(size, 10_000);
    assert!(read_all(&mut raw, &fh).await == expect[..10_000]);
    // A FILE_SYNC write after queued ones: lands after them, stable.
    pipelined_writes(&mut raw, &fh, &[(20_000, vec![7u8; 100])]).await;
    let (s, rest) = raw.nfs(7, &write_args(&fh, 20_050, &[9u8; 10], 2)).await;
    assert_eq!(s, 0);
    let mut r = XdrReader::new(&rest);
    if r.get_bool().unwrap() {
        r.get_fixed(24).unwrap();
    }
    if r.get_bool().unwrap() {
        r.get_fixed(84).unwrap();
    }
    assert_eq!(r.get_u32().unwrap(), 10);
    assert_eq!(r.get_u32().unwrap(), 2, "FILE_SYNC");
    let back = read_all(&mut raw, &fh).await;
    assert_eq!(back.len(), 20_100);
    assert_eq!(&back[20_000..20_050], &[7u8; 50][..]);
    assert_eq!(&back[20_050..20_060], &[9u8; 10][..]);
    assert_eq!(&back[20_060..], &[7u8; 40][..]);
}

async fn read_at(raw: &mut Raw, fh: &[u8], off: u64, count: u32) -> (Vec<u8>, bool) {
    let mut w = XdrWriter::new();
    w.put_opaque(fh);
    w.put_u64(off);
    w.put_u32(count);
    let (s, rest) = raw.nfs(6, &w).await;
    assert_eq!(s, 0, "READ at {off}");
    let mut r = XdrReader::new(&rest);
    if r.get_bool().unwrap() {
        r.get_fixed(84).unwrap();
    }
    let _n = r.get_u32().unwrap();
    let eof = r.get_bool().unwrap();
    (r.get_opaque(count as usize).unwrap().to_vec(), eof)
}

/// A sequential reader gets the next range read ahead; a write (UNSTABLE
/// or FILE_SYNC) or a truncate in between must never let it see the bytes
/// from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_never_returns_outdated_data() {
    let env = start(2, &[]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    let fh = create(&mut raw, &root, "ra.bin").await;
    let mut expect = pattern(16 * CHUNK, 7);
    let burst: Vec<(u64, Vec<u8>)> = expect
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| ((i * CHUNK) as u64, c.to_vec()))
        .collect();
    pipelined_writes(&mut raw, &fh, &burst).await;
    let c = CHUNK as u32;
    // Plain sequential reads: every range right, eof only at the end.
    for i in 0..16u64 {
        let (d, eof) = read_at(&mut raw, &fh, i * CHUNK as u64, c).await;
        assert!(
            d == expect[i as usize * CHUNK..(i as usize + 1) * CHUNK],
            "chunk {i}"
        );
        assert_eq!(eof, i == 15, "eof at chunk {i}");
    }
    // Read chunk 0 (chunk 1 is read ahead), overwrite chunk 1 UNSTABLE, read it.
    read_at(&mut raw, &fh, 0, c).await;
    let new1 = pattern(CHUNK, 70);
    pipelined_writes(&mut raw, &fh, &[(CHUNK as u64, new1.clone())]).await;
    expect[CHUNK..2 * CHUNK].copy_from_slice(&new1);
    let (d, _) = read_at(&mut raw, &fh, CHUNK as u64, c).await;
    assert!(
        d == new1,
        "READ after an UNSTABLE write over the read-ahead"
    );
    // Same with FILE_SYNC over chunk 3 while chunk 3 is read ahead.
    read_at(&mut raw, &fh, 2 * CHUNK as u64, c).await;
    let new3 = pattern(CHUNK, 71);
    let (s, _) = raw
        .nfs(7, &write_args(&fh, 3 * CHUNK as u64, &new3, 2))
        .await;
    assert_eq!(s, 0);
    let (d, _) = read_at(&mut raw, &fh, 3 * CHUNK as u64, c).await;
    assert!(
        d == new3,
        "READ after a FILE_SYNC write over the read-ahead"
    );
    // A truncate to 4.5 chunks while chunk 5 is read ahead.
    read_at(&mut raw, &fh, 4 * CHUNK as u64, c).await;
    let mut w = XdrWriter::new();
    w.put_opaque(&fh);
    for _ in 0..3 {
        w.put_bool(false);
    }
    w.put_bool(true);
    w.put_u64(4 * CHUNK as u64 + 100);
    w.put_u32(0);
    w.put_u32(0);
    w.put_bool(false);
    assert_eq!(raw.nfs(2, &w).await.0, 0, "SETATTR size");
    let (d, eof) = read_at(&mut raw, &fh, 5 * CHUNK as u64, c).await;
    assert!(
        d.is_empty() && eof,
        "READ past a truncate: {} bytes",
        d.len()
    );
    let (d, eof) = read_at(&mut raw, &fh, 4 * CHUNK as u64, c).await;
    assert!(eof && d == expect[4 * CHUNK..4 * CHUNK + 100]);
}
