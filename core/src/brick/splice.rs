//! Large reads answered with splice(2): the file's page-cache pages go
//! into a pipe and from there into the client's socket by reference, so the
//! brick copies none of the bytes it serves (a read copied each byte twice:
//! into a buffer, then into the socket). Each worker thread keeps one 1 MiB
//! pipe; a read spanning more pages than that, or of a file system without
//! splice, takes the copying path.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::wire::ReplySink;
use crate::error::FsError;
use crate::proto::frame::encode_meta;
use crate::proto::{FrameKind, Reply, ReplyResult};

/// The page size pipes count in (a conservative 4 KiB).
const PAGE: usize = 4096;

/// Bytes a worker's pipe holds: the largest pipe an unprivileged process
/// may make by default (`/proc/sys/fs/pipe-max-size`), and the largest
/// read the kernel sends a FUSE client.
const PIPE_SIZE: usize = 1 << 20;

/// A worker thread's pipe: read end, write end.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

thread_local! {
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

/// What became of a read offered to `send_read`.
pub(crate) enum Spliced {
    /// The reply went out.
    Sent,
    /// Not served this way: answer it by copying.
    Declined,
    /// The file could not be read: answer with this error.
    Failed(FsError),
    /// The connection broke in mid-frame: shut it down.
    Broken(std::io::Error),
}

/// Answers a read of `size` bytes at `offset` of the open file `file` on
/// `sink` as reply `xid`, splicing the data.
pub(crate) fn send_read(
    sink: &ReplySink,
    xid: u64,
    file: RawFd,
    offset: u64,
    size: usize,
) -> Spliced {
    // A pipe holds whole pages (one per slot): the pages the range spans
    // must fit. The kernel's reads (read-ahead) are page-aligned.
    let span = (offset as usize % PAGE + size).div_ceil(PAGE) * PAGE;
    if span > PIPE_SIZE {
        return Spliced::Declined;
    }
    PIPE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            match new_pipe(PIPE_SIZE) {
                Some(p) => *slot = Some(p),
                None => return Spliced::Declined,
            }
        }
        let Some(pipe) = slot.as_ref() else {
            return Spliced::Declined;
        };
        // Fill the pipe from the file.
        let mut got = 0usize;
        let mut off = offset as libc::loff_t;
        while got < size {
            // SAFETY: both fds are open for the duration of the call; `off`
            // is a valid loff_t the kernel advances.
            let n = unsafe {
                libc::splice(
                    file,
                    &mut off,
                    pipe.w.as_raw_fd(),
                    std::ptr::null_mut(),
                    size - got,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Whatever is in the pipe is dropped with it.
                *slot = None;
                return match e.raw_os_error() {
                    // No splice here, or the pipe filled up after all:
                    // serve the whole read by copying.
                    Some(libc::EINVAL) | Some(libc::EAGAIN) => Spliced::Declined,
                    _ => Spliced::Failed(FsError::from(e)),
                };
            }
            if n == 0 {
                break;
            }
            got += n as usize;
        }
        let meta = match encode_meta(&ReplyResult::Ok(Reply::Read { eof: got < size })) {
            Ok(m) => m,
            Err(e) => {
                *slot = None;
                return Spliced::Failed(e);
            }
        };
        match sink.send_from_pipe(FrameKind::Reply, xid, &meta, pipe.r.as_raw_fd(), got) {
            Ok(()) => Spliced::Sent,
            Err(e) => {
                *slot = None;
                Spliced::Broken(e)
            }
        }
    })
}

/// A pipe that holds at least `size` bytes, or `None`.
fn new_pipe(size: usize) -> Option<Pipe> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let want = libc::c_int::try_from(size).ok()?;
    // SAFETY: F_SETPIPE_SZ on a pipe we own; returns the new capacity.
    let cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    if cap < 0 || (cap as usize) < size {
        return None;
    }
    Some(Pipe { r, w })
}
