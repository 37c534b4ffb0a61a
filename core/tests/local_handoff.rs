//! The local fd handoff: a brick hands the open file behind a client's fd to
//! a process on the same host, once per token, for regular files only; the
//! protocol client then moves bulk data on that file directly, and stops as
//! soon as the brick's connection is gone.

mod brick_util;

use brick_util::*;
use bytes::Bytes;
use kiln_core::brick::{handoff_exchange, handoff_socket_name};
use kiln_core::client::protocol::direct_io_bytes;
use kiln_core::client::{Caller, Volume};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_core::proto::{Reply, Request};
use kiln_core::{FsError, Gfid, Name};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

/// Sends `token` on the brick's handoff socket; the status byte and the fd.
fn redeem(sock: &mut UnixStream, token: &[u8]) -> (u8, Option<OwnedFd>) {
    let token: [u8; 16] = token.try_into().unwrap();
    handoff_exchange(sock, &token).unwrap()
}

fn connect(label: &str) -> UnixStream {
    let addr =
        SocketAddr::from_abstract_name(handoff_socket_name(VOLUME, label).as_bytes()).unwrap();
    UnixStream::connect_addr(&addr).expect("the brick's handoff socket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_hands_over_the_open_file_once() {
    let mut b = TestBrick::start().await;
    let mut c = b.client("handoff").await;
    let (_, fd) = c.create(Gfid::ROOT, "f").await;
    c.write(fd, 0, b"handed over").await;

    let token = match c.ok(Request::Handoff { fd }).await {
        Reply::HandoffToken { token } => token,
        r => panic!("{r:?}"),
    };
    let mut sock = connect(&b.label);
    let (status, file) = redeem(&mut sock, &token);
    assert_eq!(status, 0);
    let file = file.expect("an fd with the token");
    let mut buf = [0u8; 64];
    let n = rustix::io::pread(&file, &mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"handed over");
    // It is the brick's file: a write on it shows through the brick.
    rustix::io::pwrite(&file, b"HANDED", 0).unwrap();
    let (got, _) = c.read(fd, 0, 64).await;
    assert_eq!(&got[..], b"HANDED over");

    // A token works once; an unknown one never.
    let (status, file) = redeem(&mut sock, &token);
    assert_eq!((status, file.is_some()), (1, false), "a token is used once");
    let (status, file) = redeem(&mut sock, &[7u8; 16]);
    assert_eq!((status, file.is_some()), (1, false), "an unknown token");

    // Directories and fds that are not open are refused over TCP.
    let dir = match c.ok(Request::Opendir { gfid: Gfid::ROOT }).await {
        Reply::Opened { fd } => fd,
        r => panic!("{r:?}"),
    };
    assert!(matches!(
        c.err(Request::Handoff { fd: dir }).await,
        FsError::IsDir
    ));
    assert!(matches!(
        c.err(Request::Handoff { fd: 9999 }).await,
        FsError::BadFd
    ));
    // A short, garbled token write then a close does not hurt the brick.
    let mut junk = connect(&b.label);
    junk.write_all(b"short").unwrap();
    drop(junk);

    // A brick served again in this process binds its socket again.
    drop(sock);
    b.restart().await;
    let mut c = b.client("handoff-2").await;
    let (_, fd) = c.create(Gfid::ROOT, "g").await;
    let token = match c.ok(Request::Handoff { fd }).await {
        Reply::HandoffToken { token } => token,
        r => panic!("{r:?}"),
    };
    // The old listener goes in the background; the new one binds after it.
    let mut sock = None;
    for _ in 0..100 {
        let addr = SocketAddr::from_abstract_name(handoff_socket_name(VOLUME, &b.label).as_bytes())
            .unwrap();
        if let Ok(s) = UnixStream::connect_addr(&addr) {
            sock = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, file) = redeem(sock.as_mut().expect("handoff socket after restart"), &token);
    assert_eq!((status, file.is_some()), (0, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_brick_moves_bulk_data_directly_and_stops_when_it_dies() {
    let b = TestBrick::start().await;
    let port = b.addr.port();
    let spec = VolumeSpec {
        name: VOLUME.into(),
        id: b.volume_id.clone(),
        kind: VolumeKind::Distribute,
        bricks: vec![BrickSpec {
            subvol: format!("{VOLUME}-client-0"),
            host: "127.0.0.1".into(),
            path: b.path.display().to_string(),
            port,
        }],
        options: [("network.ping-timeout".to_string(), "5".to_string())].into(),
        generation: 1,
    };
    assert_eq!(
        spec.bricks[0].label(),
        b.label,
        "the client's label is the brick's"
    );
    let vol = Volume::new(spec);
    vol.wait_ready(Duration::from_secs(10)).await.unwrap();
    let me = Caller::ROOT;
    let (_, fd) = vol
        .create(
            Gfid::ROOT,
            &Name::new("big").unwrap(),
            &me,
            0o644,
            libc::O_RDWR,
            false,
        )
        .await
        .unwrap();
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let before = direct_io_bytes();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let (n, iatt) = vol
            .write(&fd, (i << 20) as u64, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
        assert_eq!(n as usize, chunk.len());
        assert_eq!(iatt.size, ((i + 1) << 20) as u64, "post-write size");
        assert_eq!(iatt.gfid, fd.gfid);
    }
    // A small write still goes over TCP, in order with the direct ones.
    vol.write(&fd, 10, Bytes::from_static(b"tcp"))
        .await
        .unwrap();
    let mut want = data.clone();
    want[10..13].copy_from_slice(b"tcp");
    let mut got = Vec::new();
    for off in (0..want.len()).step_by(1 << 20) {
        got.extend_from_slice(&vol.read(&fd, off as u64, 1 << 20).await.unwrap());
    }
    assert!(got == want, "bytes read back");
    assert!(
        direct_io_bytes() - before >= 8 << 20,
        "4 MiB written and read on the direct path"
    );
    // On the brick's disk, by path.
    assert!(std::fs::read(b.path.join("big")).unwrap() == want);

    // Brick gone: the direct path is closed too.
    let task = b.task;
    task.abort();
    let _ = task.await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match vol.read(&fd, 0, 1 << 20).await {
            Err(FsError::NotConnected(_)) => break,
            other if std::time::Instant::now() > deadline => {
                panic!("read after the brick died: {:?}", other.map(|d| d.len()))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
