//! The FUSE edge of the volume seam: `FsError` → errno (the one place it is
//! mapped), `Iatt` → `FileAttr`, and the byte-range and time conversions
//! between the kernel's forms and the stack's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};
use kiln_core::iatt::{SetTime, Timespec};
use kiln_core::proto::{FileLock, LockType};
use kiln_core::{FileKind, FsError, FsResult, Iatt};

/// The errno the kernel gets for `e`.
pub(crate) fn errno(e: &FsError) -> Errno {
    match e.errno() {
        0 => Errno::EIO,
        n => Errno::from_i32(n),
    }
}

/// The FUSE file type of an inode kind.
pub(crate) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// A stack timestamp as a `SystemTime` (timestamps before 1970 included).
pub(crate) fn system_time(t: Timespec) -> SystemTime {
    let nsec = t.nsec.min(999_999_999);
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// A kernel timestamp as a stack one.
pub(crate) fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

/// A kernel `utimensat` time as a stack one.
pub(crate) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timespec(t)),
    }
}

/// The attributes the kernel caches for an inode.
pub(crate) fn file_attr(iatt: &Iatt) -> FileAttr {
    FileAttr {
        ino: INodeNo(iatt.ino()),
        size: iatt.size,
        blocks: iatt.blocks,
        atime: system_time(iatt.atime),
        mtime: system_time(iatt.mtime),
        ctime: system_time(iatt.ctime),
        crtime: UNIX_EPOCH,
        kind: file_type(iatt.kind),
        perm: (iatt.perm & 0o7777) as u16,
        nlink: iatt.nlink,
        uid: iatt.uid,
        gid: iatt.gid,
        // FUSE carries the kernel's 32-bit encoding, which is the low half of
        // glibc's dev_t for every major below 4096.
        rdev: iatt.rdev as u32,
        blksize: if iatt.blksize == 0 {
            4096
        } else {
            iatt.blksize
        },
        flags: 0,
    }
}

/// The kernel's "to end of file" lock end (`OFFSET_MAX`).
const OFFSET_MAX: u64 = i64::MAX as u64;

/// A kernel lock request (inclusive `end`, `typ` as F_RDLCK/F_WRLCK/F_UNLCK)
/// as a stack lock.
pub(crate) fn file_lock(
    start: u64,
    end: u64,
    typ: i32,
    owner: u64,
    pid: u32,
) -> FsResult<FileLock> {
    let kind = match typ {
        libc::F_RDLCK => LockType::Read,
        libc::F_WRLCK => LockType::Write,
        libc::F_UNLCK => LockType::Unlock,
        _ => return Err(FsError::InvalidArgument),
    };
    if end < start {
        return Err(FsError::InvalidArgument);
    }
    let len = if end >= OFFSET_MAX {
        0
    } else {
        end - start + 1
    };
    Ok(FileLock {
        kind,
        start,
        len,
        owner,
        pid,
    })
}

/// A stack lock as the kernel's (start, inclusive end, type, pid).
pub(crate) fn kernel_lock(lock: &FileLock) -> (u64, u64, i32, u32) {
    let typ = match lock.kind {
        LockType::Read => libc::F_RDLCK,
        LockType::Write => libc::F_WRLCK,
        LockType::Unlock => libc::F_UNLCK,
    };
    let end = if lock.len == 0 {
        OFFSET_MAX
    } else {
        lock.start.saturating_add(lock.len - 1).min(OFFSET_MAX)
    };
    (lock.start, end, typ, lock.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ranges_round_trip() {
        let l = file_lock(10, 19, libc::F_WRLCK, 7, 42).unwrap();
        assert_eq!((l.start, l.len, l.kind), (10, 10, LockType::Write));
        assert_eq!(kernel_lock(&l), (10, 19, libc::F_WRLCK, 42));
        let whole = file_lock(0, OFFSET_MAX, libc::F_RDLCK, 1, 1).unwrap();
        assert_eq!(whole.len, 0);
        assert_eq!(kernel_lock(&whole).1, OFFSET_MAX);
        assert!(file_lock(5, 4, libc::F_RDLCK, 1, 1).is_err());
        assert!(file_lock(0, 1, 99, 1, 1).is_err());
    }

    #[test]
    fn times_round_trip() {
        for t in [
            Timespec { sec: 0, nsec: 0 },
            Timespec {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timespec {
                sec: -5,
                nsec: 250_000_000,
            },
        ] {
            assert_eq!(timespec(system_time(t)), t);
        }
    }

    #[test]
    fn errno_is_the_stack_errno() {
        assert_eq!(errno(&FsError::NotFound), Errno::ENOENT);
        assert_eq!(
            errno(&FsError::NotConnected("x".into())).code(),
            libc::ENOTCONN
        );
        assert_eq!(errno(&FsError::Os(libc::EMLINK)).code(), libc::EMLINK);
        assert_eq!(errno(&FsError::Os(0)), Errno::EIO);
    }
}
