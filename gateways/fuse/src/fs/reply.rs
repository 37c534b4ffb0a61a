//! Sends an operation's outcome to the kernel: one `Answer` impl per FUSE
//! reply type. Errors become errnos here, through `convert::errno` only.

use std::time::Duration;

use bytes::Bytes;
use fuser::{
    FileAttr, FileHandle, FopenFlags, Generation, ReplyAttr, ReplyCreate, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
use kiln_core::proto::FileLock;
use kiln_core::{FsResult, Statvfs};

use crate::convert::{errno, kernel_lock};

/// Cache lifetimes given to the kernel with entries and attributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ttls {
    /// How long the kernel may trust attributes.
    pub(crate) attr: Duration,
    /// How long the kernel may trust a name → inode binding.
    pub(crate) entry: Duration,
}

/// A newly opened file or directory.
pub(crate) struct Opened {
    /// The file handle for the kernel.
    pub(crate) fh: u64,
    /// Open flags for the kernel (keep cache, ...).
    pub(crate) flags: FopenFlags,
}

/// The result of getxattr/listxattr.
pub(crate) enum XattrOut {
    /// A size probe's answer.
    Size(u32),
    /// The value (or the NUL-separated name list).
    Data(Vec<u8>),
}

/// One FUSE reply type that can carry an outcome of type `T`.
pub(crate) trait Answer<T>: Send + 'static {
    /// Sends `r` to the kernel.
    fn answer(self, ttl: &Ttls, r: FsResult<T>);
}

impl Answer<FileAttr> for ReplyEntry {
    fn answer(self, ttl: &Ttls, r: FsResult<FileAttr>) {
        match r {
            Ok(a) => self.entry_with_ttls(&ttl.attr, &ttl.entry, &a, Generation(0)),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<FileAttr> for ReplyAttr {
    fn answer(self, ttl: &Ttls, r: FsResult<FileAttr>) {
        match r {
            Ok(a) => self.attr(&ttl.attr, &a),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<()> for ReplyEmpty {
    fn answer(self, _: &Ttls, r: FsResult<()>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<Bytes> for ReplyData {
    fn answer(self, _: &Ttls, r: FsResult<Bytes>) {
        match r {
            Ok(b) => self.data(&b),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<u32> for ReplyWrite {
    fn answer(self, _: &Ttls, r: FsResult<u32>) {
        match r {
            Ok(n) => self.written(n),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<Opened> for ReplyOpen {
    fn answer(self, _: &Ttls, r: FsResult<Opened>) {
        match r {
            Ok(o) => self.opened(FileHandle(o.fh), o.flags),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<(FileAttr, Opened)> for ReplyCreate {
    fn answer(self, ttl: &Ttls, r: FsResult<(FileAttr, Opened)>) {
        match r {
            Ok((a, o)) => self.created(&ttl.entry, &a, Generation(0), FileHandle(o.fh), o.flags),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<Statvfs> for ReplyStatfs {
    fn answer(self, _: &Ttls, r: FsResult<Statvfs>) {
        match r {
            Ok(s) => self.statfs(
                s.blocks,
                s.bfree,
                s.bavail,
                s.files,
                s.ffree,
                s.bsize.clamp(512, u32::MAX as u64) as u32,
                s.namemax.clamp(1, 255) as u32,
                s.frsize.clamp(512, u32::MAX as u64) as u32,
            ),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<XattrOut> for ReplyXattr {
    fn answer(self, _: &Ttls, r: FsResult<XattrOut>) {
        match r {
            Ok(XattrOut::Size(n)) => self.size(n),
            Ok(XattrOut::Data(d)) => self.data(&d),
            Err(e) => self.error(errno(&e)),
        }
    }
}

impl Answer<FileLock> for ReplyLock {
    fn answer(self, _: &Ttls, r: FsResult<FileLock>) {
        match r {
            Ok(l) => {
                let (start, end, typ, pid) = kernel_lock(&l);
                self.locked(start, end, typ, pid)
            }
            Err(e) => self.error(errno(&e)),
        }
    }
}
