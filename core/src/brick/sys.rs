//! Thin helpers over the syscalls the brick store makes: extended attributes
//! (by fd, or by path without following a final symlink), `/proc/self/fd`
//! paths for calls that have no `*at` form, and `stat` -> `Iatt`.

// `stat`/`statfs` field types differ between architectures: keep the casts.
#![allow(clippy::unnecessary_cast)]

use rustix::fs::{FileType, OFlags, Stat, XattrFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::FsError;
use crate::gfid::Gfid;
use crate::iatt::{FileKind, Iatt, Timespec};

impl From<Errno> for FsError {
    fn from(e: Errno) -> FsError {
        FsError::from_errno(e.raw_os_error())
    }
}

/// Where an extended-attribute call goes: an open fd, or a path whose final
/// component is never followed (the `l*xattr` calls).
#[derive(Clone, Copy)]
pub(crate) enum XTarget<'a> {
    /// `f*xattr` on an open file or directory.
    Fd(BorrowedFd<'a>),
    /// `l*xattr` on a path.
    Path(&'a OsStr),
}

/// The path `/proc/self/fd/<dir>/<name>`: names `name` inside the directory
/// open as `dir`, for calls without an `*at` form (xattrs). The magic link
/// is only an intermediate component, so `l*` calls still do not follow a
/// symlink named `name`.
pub(crate) fn at_path(dir: BorrowedFd<'_>, name: &[u8]) -> OsString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    OsString::from_vec(p)
}

fn raw_get(t: XTarget<'_>, name: &str, buf: &mut [u8]) -> Result<usize, Errno> {
    match t {
        XTarget::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
        XTarget::Path(p) => rustix::fs::lgetxattr(p, name, buf),
    }
}

fn raw_get_size(t: XTarget<'_>, name: &str) -> Result<usize, Errno> {
    match t {
        XTarget::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
        XTarget::Path(p) => rustix::fs::lgetxattr_query(p, name),
    }
}

/// One attribute's value; `Ok(None)` when it is not set.
pub(crate) fn get_xattr(t: XTarget<'_>, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let mut small = [0u8; 256];
    match raw_get(t, name, &mut small) {
        Ok(n) => return Ok(Some(small[..n].to_vec())),
        Err(Errno::NODATA) => return Ok(None),
        Err(Errno::RANGE) => {}
        Err(e) => return Err(e),
    }
    for _ in 0..4 {
        let size = match raw_get_size(t, name) {
            Ok(s) => s,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size.max(1)];
        match raw_get(t, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// The gfid stored on a file, if it has a valid one.
pub(crate) fn get_gfid(t: XTarget<'_>) -> Result<Option<Gfid>, Errno> {
    let mut buf = [0u8; 16];
    match raw_get(t, crate::xattr_names::GFID, &mut buf) {
        Ok(16) => Ok(Some(Gfid(buf))),
        Ok(_) | Err(Errno::NODATA) | Err(Errno::RANGE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets one attribute (`flags` as setxattr(2)).
pub(crate) fn set_xattr(
    t: XTarget<'_>,
    name: &str,
    value: &[u8],
    flags: XattrFlags,
) -> Result<(), Errno> {
    match t {
        XTarget::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags),
        XTarget::Path(p) => rustix::fs::lsetxattr(p, name, value, flags),
    }
}

/// Removes one attribute.
pub(crate) fn remove_xattr(t: XTarget<'_>, name: &str) -> Result<(), Errno> {
    match t {
        XTarget::Fd(fd) => rustix::fs::fremovexattr(fd, name),
        XTarget::Path(p) => rustix::fs::lremovexattr(p, name),
    }
}

/// All attribute names.
pub(crate) fn list_xattr(t: XTarget<'_>) -> Result<Vec<String>, Errno> {
    let call = |buf: &mut [u8]| match t {
        XTarget::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        XTarget::Path(p) => rustix::fs::llistxattr(p, buf),
    };
    let mut buf = vec![0u8; 1024];
    let mut tries = 0;
    let n = loop {
        match call(&mut buf) {
            Ok(n) => break n,
            Err(Errno::RANGE) if tries < 4 => {
                tries += 1;
                let size = match t {
                    XTarget::Fd(fd) => rustix::fs::flistxattr_query(fd)?,
                    XTarget::Path(p) => rustix::fs::llistxattr_query(p)?,
                };
                buf = vec![0u8; size.max(buf.len() * 2)];
            }
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// The kind of an inode from its `st_mode`.
pub(crate) fn kind_of(st: &Stat) -> FileKind {
    FileKind::from_mode(st.st_mode as u32)
}

/// The kind from a directory entry's type, if the file system reported it.
pub(crate) fn kind_of_dirent(t: FileType) -> Option<FileKind> {
    Some(match t {
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        _ => return None,
    })
}

/// Builds the attributes clients see. A non-directory's link count leaves
/// out its gfid handle under `.kiln/`.
pub(crate) fn iatt(gfid: Gfid, st: &Stat) -> Iatt {
    let kind = kind_of(st);
    let mut nlink = st.st_nlink as u32;
    if kind != FileKind::Directory && nlink >= 2 {
        nlink -= 1;
    }
    Iatt {
        gfid,
        kind,
        perm: st.st_mode as u32 & 0o7777,
        nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u64,
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: ts(st.st_atime as i64, st.st_atime_nsec as u32),
        mtime: ts(st.st_mtime as i64, st.st_mtime_nsec as u32),
        ctime: ts(st.st_ctime as i64, st.st_ctime_nsec as u32),
    }
}

fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec { sec, nsec }
}

/// The open(2) flags a brick honours from a client's flags, for an existing
/// regular file: access mode (write-only is widened to read-write so a
/// client's page cache can fill partial pages), append, truncate, sync.
/// Creation, directory and terminal flags are the brick's own business.
pub(crate) fn file_open_flags(client_flags: i32) -> OFlags {
    let accmode = client_flags & libc::O_ACCMODE;
    let mut f = if accmode == libc::O_RDONLY {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    let pass = [
        (libc::O_APPEND, OFlags::APPEND),
        (libc::O_TRUNC, OFlags::TRUNC),
        (libc::O_SYNC, OFlags::SYNC),
        (libc::O_DSYNC, OFlags::DSYNC),
        (libc::O_NOATIME, OFlags::NOATIME),
    ];
    for (c, o) in pass {
        if client_flags & c == c {
            f |= o;
        }
    }
    f | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// True when `a` is the raw bytes of a name the brick never lets clients use
/// at its root.
pub(crate) fn is_internal_name(name: &[u8]) -> bool {
    name == crate::brick::format::INTERNAL_DIR.as_bytes()
}

/// `OsStr` view of raw name bytes.
pub(crate) fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}
