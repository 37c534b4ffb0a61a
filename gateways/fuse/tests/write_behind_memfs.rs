//! Write-behind through a real kernel mount: writes are acknowledged before
//! they land, yet land in order, show in stat and reads at once, and a
//! failure surfaces at fsync or close; with flush-behind close does not wait.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use kiln_core::FsError;

#[test]
fn overlapping_writes_land_in_order() {
    let m = common::mount_mem();
    m.mem.delay_writes(Duration::from_millis(3));
    let p = m.p("ordered");
    let f = File::create(&p).unwrap();
    // The same blocks rewritten many times, plus appends past the end.
    for round in 0..30u8 {
        for block in 0..4u64 {
            f.write_all_at(&[round; 4096], block * 4096).unwrap();
        }
    }
    for block in 4..40u64 {
        f.write_all_at(&[block as u8; 4096], block * 4096).unwrap();
    }
    // stat right away sees every acknowledged write.
    assert_eq!(fs::metadata(&p).unwrap().len(), 40 * 4096);
    f.sync_all().unwrap();
    drop(f);
    let data = m.mem.file_data("ordered").unwrap();
    assert_eq!(data.len(), 40 * 4096);
    assert!(data[..4 * 4096].iter().all(|b| *b == 29), "last round wins");
    for block in 4..40usize {
        assert!(data[block * 4096..(block + 1) * 4096]
            .iter()
            .all(|b| *b == block as u8));
    }
    assert_eq!(fs::read(&p).unwrap(), data);
}

#[test]
fn failure_surfaces_at_fsync_and_close() {
    let m = common::mount_mem();
    let p = m.p("doomed");
    let mut f = File::create(&p).unwrap();
    m.mem.fail_writes(Some(FsError::NoSpace));
    // Acknowledged: the failure is not known yet.
    f.write_all(&[1u8; 8192]).unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    // Reported once; the file works again after.
    m.mem.fail_writes(None);
    f.write_all(b"ok").unwrap();
    f.sync_all().unwrap();

    // close(2) reports a background failure too.
    let g = OpenOptions::new().write(true).open(&p).unwrap();
    m.mem.fail_writes(Some(FsError::Io("disk".into())));
    (&g).write_all(&[2u8; 4096]).unwrap();
    let fd = g.into_raw_fd();
    let r = unsafe { libc::close(fd) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EIO)
    );
    m.mem.fail_writes(None);
}

#[test]
fn close_does_not_wait_for_writes_unless_flush_behind_is_off() {
    for flush_behind in [true, false] {
        let mut cfg = kiln_fuse::MountConfig::default();
        cfg.fs.flush_behind = flush_behind;
        let m = common::mount_mem_with(cfg);
        m.mem.delay_writes(Duration::from_millis(300));
        let p = m.p("slow");
        let t = std::time::Instant::now();
        let mut f = File::create(&p).unwrap();
        f.write_all(&[3u8; 4096]).unwrap();
        drop(f);
        let closed = t.elapsed();
        if flush_behind {
            assert!(
                closed < Duration::from_millis(250),
                "close waited {closed:?}"
            );
        } else {
            assert!(
                closed >= Duration::from_millis(300),
                "close returned after {closed:?}"
            );
        }
        // This client's stat and read wait for the write either way.
        assert_eq!(fs::metadata(&p).unwrap().len(), 4096);
        assert_eq!(fs::read(&p).unwrap(), vec![3u8; 4096]);
        assert_eq!(m.mem.file_data("slow").unwrap(), vec![3u8; 4096]);
    }
}

#[test]
fn synchronous_opens_write_through() {
    let m = common::mount_mem();
    let p = m.p("sync");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags_sync()
        .open(&p)
        .unwrap();
    m.mem.fail_writes(Some(FsError::NoSpace));
    let e = (&f).write_all(b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    m.mem.fail_writes(None);
    let _ = f.as_raw_fd();
}

trait SyncFlag {
    fn custom_flags_sync(&mut self) -> &mut Self;
}

impl SyncFlag for OpenOptions {
    fn custom_flags_sync(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_SYNC)
    }
}

#[test]
fn unmount_waits_for_writes_closed_behind() {
    let mut m = common::mount_mem();
    m.mem.delay_writes(Duration::from_millis(400));
    let p = m.p("last-words");
    let mut f = File::create(&p).unwrap();
    f.write_all(&[7u8; 20_000]).unwrap();
    // flush-behind: close(2) returns while the write is still on its way.
    drop(f);
    assert!(m.mem.file_data("last-words").unwrap_or_default().len() < 20_000);
    // The unmount ends the session at once; the mount must still deliver
    // what it acknowledged before it is gone.
    m.mount.take().unwrap().unmount().unwrap();
    assert_eq!(
        m.mem.file_data("last-words").unwrap(),
        vec![7u8; 20_000],
        "an acknowledged write was dropped at unmount"
    );
}
