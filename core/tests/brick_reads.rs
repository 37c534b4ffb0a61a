//! Reads through the brick's raw protocol at every size the brick serves
//! differently: small ones copied on the connection thread, large ones
//! spliced from the page cache on the worker pool; across the end of the
//! file, at it and past it; many pipelined at once; and errors.

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::proto::{Reply, Request};
use kiln_core::{FsError, Gfid};

/// Deterministic, non-repeating bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_every_size_return_the_file_bytes() {
    let b = TestBrick::start().await;
    let mut c = b.client("reads").await;
    let len = 3 * 1024 * 1024 + 12345;
    let data = pattern(len);
    let (_, fd) = c.create(Gfid::ROOT, "f").await;
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        c.write(fd, (i << 20) as u64, chunk).await;
    }
    for (offset, size) in [
        (0usize, 100u32),
        (5, 64 * 1024),
        (1000, 1 << 20),
        (len - 5000, 1 << 20),
        (len - 64 * 1024, 64 * 1024),
        (0, 4 << 20),
        (len, 1 << 20),
        (len + 10, 128 * 1024),
    ] {
        let (got, eof) = c.read(fd, offset as u64, size).await;
        let want = &data[offset.min(len)..(offset + size as usize).min(len)];
        assert_eq!(got.len(), want.len(), "read of {size} at {offset}");
        assert!(got[..] == *want, "bytes of the read of {size} at {offset}");
        assert_eq!(eof, offset + size as usize > len, "eof at {offset}");
    }

    // Many large reads in flight at once, answered in any order.
    let mut want = std::collections::HashMap::new();
    for i in 0..12u64 {
        let offset = i * 250_001;
        let xid = c
            .send(
                Request::Read {
                    fd,
                    offset,
                    size: 512 * 1024,
                },
                Bytes::new(),
            )
            .await;
        want.insert(xid, offset as usize);
    }
    while !want.is_empty() {
        let (xid, r, got) = c.recv().await.unwrap();
        let offset = want.remove(&xid).expect("a reply per request");
        assert!(matches!(r, Ok(Reply::Read { .. })), "{r:?}");
        let end = (offset + 512 * 1024).min(len);
        assert!(got[..] == data[offset..end], "pipelined read at {offset}");
    }

    // Large reads of a directory or of an fd that is not open fail
    // cleanly, and the connection goes on working.
    let dir = match c.ok(Request::Opendir { gfid: Gfid::ROOT }).await {
        Reply::Opened { fd } => fd,
        r => panic!("{r:?}"),
    };
    let e = c
        .err(Request::Read {
            fd: dir,
            offset: 0,
            size: 1 << 20,
        })
        .await;
    assert_eq!(e, FsError::IsDir);
    let e = c
        .err(Request::Read {
            fd: 999_999,
            offset: 0,
            size: 1 << 20,
        })
        .await;
    assert_eq!(e, FsError::BadFd);
    let (got, _) = c.read(fd, 0, 1 << 20).await;
    assert!(got[..] == data[..1 << 20]);
}
