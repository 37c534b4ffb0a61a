//! Throughput of one brick over loopback, through the raw protocol (no
//! client library): pipelined small-file creates and 1 MiB sequential
//! writes and reads. Ignored by default; run with
//! `cargo test --release -p kiln-core --test brick_bench -- --ignored --nocapture`.

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::proto::{Reply, Request};
use kiln_core::Gfid;
use std::time::Instant;

const IN_FLIGHT: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn create_and_stream_rates() {
    let b = TestBrick::start().await;
    let mut c = b.client("bench").await;
    let d = c.mkdir(Gfid::ROOT, "bench").await;

    // 5000 creates (+ a 4 KiB write and a release each), pipelined.
    let n = 5000;
    let t = Instant::now();
    let mut sent = 0;
    let mut pending = 0;
    let mut writes = std::collections::HashMap::new();
    let payload = Bytes::from(vec![7u8; 4096]);
    while sent < n || pending > 0 {
        while pending < IN_FLIGHT && sent < n {
            c.send(
                Request::Create {
                    loc: loc(d.gfid, &format!("f{sent}")),
                    inode: new_inode(0o644),
                    flags: libc::O_WRONLY,
                    exclusive: true,
                },
                Bytes::new(),
            )
            .await;
            sent += 1;
            pending += 1;
        }
        let (xid, r, _) = c.recv().await.unwrap();
        pending -= 1;
        match r {
            Ok(Reply::Created { fd, .. }) => {
                // Release only after the write answered (requests on one
                // connection run concurrently).
                let x = c
                    .send(Request::Write { fd, offset: 0 }, payload.clone())
                    .await;
                writes.insert(x, fd);
                pending += 1;
            }
            Ok(Reply::Written { .. }) => {
                let fd = writes.remove(&xid).unwrap();
                c.send(Request::Release { fd }, Bytes::new()).await;
                pending += 1;
            }
            Ok(Reply::Done) => {}
            other => panic!("{other:?}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!("create+write 4KiB+release: {n} files in {secs:.2}s = {rate:.0} files/s");
    assert_eq!(std::fs::read_dir(b.at("bench")).unwrap().count(), n);

    // 512 MiB sequential write then read, 1 MiB requests, 8 in flight.
    let (_, fd) = c.create(d.gfid, "big").await;
    let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
    let total = 512u64;
    let t = Instant::now();
    let mut inflight = 0;
    for i in 0..total {
        c.send(
            Request::Write {
                fd,
                offset: i << 20,
            },
            chunk.clone(),
        )
        .await;
        inflight += 1;
        if inflight == 8 {
            c.recv().await.unwrap().1.unwrap();
            inflight -= 1;
        }
    }
    while inflight > 0 {
        c.recv().await.unwrap().1.unwrap();
        inflight -= 1;
    }
    let wt = t.elapsed();
    c.ok(Request::Fsync {
        fd,
        datasync: false,
    })
    .await;
    println!("write {wt:?}, with fsync {:?}", t.elapsed());
    let w = total as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut got = 0usize;
    for i in 0..total {
        c.send(
            Request::Read {
                fd,
                offset: i << 20,
                size: 1 << 20,
            },
            Bytes::new(),
        )
        .await;
        inflight += 1;
        if inflight == 8 {
            got += c.recv().await.unwrap().2.len();
            inflight -= 1;
        }
    }
    while inflight > 0 {
        got += c.recv().await.unwrap().2.len();
        inflight -= 1;
    }
    let r = total as f64 / t.elapsed().as_secs_f64();
    assert_eq!(got as u64, total << 20);
    println!("sequential write (fsync at end): {w:.0} MiB/s, read (page cache): {r:.0} MiB/s");
}
