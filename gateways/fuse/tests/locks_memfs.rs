//! Byte-range locks (fcntl, open-file-description locks) and flock through a
//! real kernel mount: conflicts, GETLK reports, waiting locks that do not
//! hold up other requests, release on close.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ofd_lock(f: &File, cmd: i32, typ: i32, start: i64, len: i64) -> (i32, libc::flock) {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    let e = if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    (e, fl)
}

fn open_rw(p: &std::path::Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

#[test]
fn byte_range_conflicts_and_getlk() {
    let m = common::mount_mem();
    let p = m.p("locked");
    std::fs::write(&p, vec![0u8; 100]).unwrap();
    let (a, b) = (open_rw(&p), open_rw(&p));

    // a: write lock on [0, 10); b conflicts inside, not outside.
    assert_eq!(ofd_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 10).0, 0);
    assert_eq!(
        ofd_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 5, 1).0,
        libc::EAGAIN
    );
    assert_eq!(
        ofd_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK, 9, 5).0,
        libc::EAGAIN
    );
    assert_eq!(ofd_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 10, 10).0, 0);

    // GETLK reports a's lock to b, and nothing on a free range.
    let (e, fl) = ofd_lock(&b, libc::F_OFD_GETLK, libc::F_WRLCK, 0, 1);
    assert_eq!(e, 0);
    assert_eq!(fl.l_type as i32, libc::F_WRLCK);
    assert_eq!((fl.l_start, fl.l_len), (0, 10));
    let (e, fl) = ofd_lock(&b, libc::F_OFD_GETLK, libc::F_WRLCK, 50, 0);
    assert_eq!(e, 0);
    assert_eq!(fl.l_type as i32, libc::F_UNLCK);

    // Shared locks coexist; unlocking part of a range frees just that part.
    assert_eq!(ofd_lock(&a, libc::F_OFD_SETLK, libc::F_RDLCK, 30, 10).0, 0);
    assert_eq!(ofd_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK, 30, 10).0, 0);
    assert_eq!(ofd_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 5).0, 0);
    assert_eq!(ofd_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 5).0, 0);
    assert_eq!(
        ofd_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 5, 5).0,
        libc::EAGAIN
    );

    // Closing the descriptions releases their locks.
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.mem.lock_count() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(m.mem.lock_count(), 0);
}

#[test]
fn waiting_lock_does_not_block_the_mount() {
    let m = common::mount_mem();
    let p = m.p("w");
    std::fs::write(&p, b"0123456789").unwrap();
    let a = open_rw(&p);
    assert_eq!(ofd_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).0, 0);

    let got = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (p, got) = (p.clone(), got.clone());
        std::thread::spawn(move || {
            let b = open_rw(&p);
            let (e, _) = ofd_lock(&b, libc::F_OFD_SETLKW, libc::F_WRLCK, 0, 0);
            got.store(true, Ordering::SeqCst);
            assert_eq!(e, 0);
            b
        })
    };
    // While the lock waits, many other requests are served (more than the
    // fuser threads could absorb if a waiting lock held one).
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..50 {
        std::fs::write(m.p(&format!("other-{i}")), b"x").unwrap();
        assert_eq!(std::fs::read(m.p(&format!("other-{i}"))).unwrap(), b"x");
    }
    assert!(!got.load(Ordering::SeqCst), "lock granted while held");
    assert_eq!(ofd_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 0).0, 0);
    let b = waiter.join().unwrap();
    assert!(got.load(Ordering::SeqCst));
    // Now b holds it.
    assert_eq!(
        ofd_lock(&a, libc::F_OFD_SETLK, libc::F_RDLCK, 3, 1).0,
        libc::EAGAIN
    );
    drop(b);
}

#[test]
fn posix_locks_of_one_process_do_not_conflict() {
    let m = common::mount_mem();
    let p = m.p("p");
    std::fs::write(&p, b"x").unwrap();
    let (a, b) = (open_rw(&p), open_rw(&p));
    assert_eq!(ofd_lock(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0).0, 0);
    // Same process (same owner): no conflict.
    assert_eq!(ofd_lock(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0).0, 0);
    assert_eq!(m.mem.lock_count(), 1);
    // An OFD lock is another owner: conflicts.
    assert_eq!(
        ofd_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK, 0, 1).0,
        libc::EAGAIN
    );
    // Closing any descriptor drops the process's POSIX locks (flush).
    drop(b);
    assert_eq!(m.mem.lock_count(), 0);
    drop(a);
}

#[test]
fn flock_is_cluster_wide_and_released_on_close() {
    let m = common::mount_mem();
    let p = m.p("fl");
    std::fs::write(&p, b"x").unwrap();
    let (a, b) = (open_rw(&p), open_rw(&p));
    assert_eq!(unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX) }, 0);
    // The lock went to the volume, not only the kernel.
    assert_eq!(m.mem.lock_count(), 1);
    let r = unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );
    // Shared then: still refused while a holds it exclusively.
    let r = unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    assert_eq!(r, -1);
    // The kernel sends the release of a closed file in the background, so
    // the flock is dropped shortly after close(2) returns.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        assert!(Instant::now() < deadline, "flock not released after close");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_UN) }, 0);
    assert_eq!(m.mem.lock_count(), 0);
}
