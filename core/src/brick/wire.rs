//! Blocking frame I/O for a brick connection served by its own thread: a
//! reader that decodes `FrameCodec` frames from the socket, and a sink any
//! thread writes replies to (vectored, so bulk data is never copied).

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};
use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use tokio_util::codec::Decoder;

// Reads that start a new frame ask for at most `READ_FIRST` bytes (see the
// async reader in `proto::frame`).
use crate::proto::frame::READ_FIRST;
use crate::proto::{Frame, FrameCodec, FrameKind, MAX_FRAME};

/// Buffer room kept for reads (more when a frame is larger).
const READ_CHUNK: usize = 256 * 1024;

/// Segments handed to one vectored write.
const IOV_MAX: usize = 64;
/// Data sections smaller than this are copied beside their header (one
/// segment to write); larger ones are written from their own buffer.
const INLINE_DATA: usize = 16 * 1024;

/// Reads frames from a blocking socket.
pub(crate) struct FrameReader {
    stream: TcpStream,
    buf: BytesMut,
}

impl FrameReader {
    pub(crate) fn new(stream: TcpStream) -> FrameReader {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The next frame; `None` at a clean end of stream. A bad frame, a read
    /// error, a timeout (see `set_timeout`) or an end in mid-frame is an
    /// error.
    pub(crate) fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = FrameCodec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let fresh = self.buf.is_empty();
            let spare = self.buf.spare_capacity_mut();
            let want = if fresh {
                spare.len().min(READ_FIRST)
            } else {
                spare.len()
            };
            // SAFETY: the pointer and length describe (part of) this
            // buffer's spare capacity, which read(2) may fill; it is not
            // read before `set_len` below covers only what the kernel wrote.
            let n = unsafe { libc::read(self.stream.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            // SAFETY: read(2) initialised `n` bytes of the spare capacity.
            unsafe { self.buf.set_len(self.buf.len() + n as usize) };
        }
    }

    /// True if a whole frame is already buffered (the next `next` will
    /// not block).
    pub(crate) fn has_frame(&self) -> bool {
        self.buf.len() >= 4 && {
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            self.buf.len() >= 4 + len as usize
        }
    }

    /// Makes reads fail after `t` without data (`None`: wait forever).
    pub(crate) fn set_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }
}

/// Appends one frame to `segs` as segments to write: the header (with the
/// data copied beside it when small) and, when large, the data itself.
pub(crate) fn encode(
    segs: &mut Vec<Bytes>,
    kind: FrameKind,
    xid: u64,
    meta: &[u8],
    data: &Bytes,
) -> io::Result<()> {
    let len = 1 + 8 + 4 + meta.len() + data.len();
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes exceeds the limit"),
        ));
    }
    let inline = data.len() < INLINE_DATA;
    let mut head =
        BytesMut::with_capacity(4 + 13 + meta.len() + if inline { data.len() } else { 0 });
    head.put_u32(len as u32);
    head.put_u8(match kind {
        FrameKind::Request => 0,
        FrameKind::Reply => 1,
    });
    head.put_u64(xid);
    head.put_u32(meta.len() as u32);
    head.extend_from_slice(meta);
    if inline {
        head.extend_from_slice(data);
        segs.push(head.freeze());
    } else {
        segs.push(head.freeze());
        segs.push(data.clone());
    }
    Ok(())
}

/// Writes reply frames to a connection from any thread; frames never
/// interleave. A writer blocks while the socket is full (the client is not
/// reading), which in turn stops the connection reading new requests.
pub(crate) struct ReplySink {
    stream: Mutex<TcpStream>,
    /// The socket's fd number, for `shutdown` without the lock.
    fd: std::os::fd::RawFd,
}

impl ReplySink {
    pub(crate) fn new(stream: TcpStream) -> ReplySink {
        ReplySink {
            fd: stream.as_raw_fd(),
            stream: Mutex::new(stream),
        }
    }

    /// Writes frames encoded by `encode`, in one go where the socket takes
    /// them.
    pub(crate) fn write_segments(&self, segs: &[Bytes]) -> io::Result<()> {
        let mut s = self.stream.lock();
        let (mut i, mut off) = (0usize, 0usize);
        while i < segs.len() {
            let iov: Vec<IoSlice<'_>> = std::iter::once(&segs[i][off..])
                .chain(segs[i + 1..].iter().map(|b| &b[..]))
                .take(IOV_MAX)
                .map(IoSlice::new)
                .collect();
            let mut n = match s.write_vectored(&iov) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while n > 0 && i < segs.len() {
                let left = segs[i].len() - off;
                if n >= left {
                    n -= left;
                    i += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
            // Skip empty segments so the loop ends.
            while i < segs.len() && segs[i].len() == off {
                i += 1;
                off = 0;
            }
        }
        Ok(())
    }

    /// Sends one frame whose data section is the first `len` bytes waiting
    /// in the pipe `pipe`, moved into the socket with splice(2) (no copy).
    /// An error leaves the stream in mid-frame: the connection is unusable.
    pub(crate) fn send_from_pipe(
        &self,
        kind: FrameKind,
        xid: u64,
        meta: &[u8],
        pipe: std::os::fd::RawFd,
        len: usize,
    ) -> io::Result<()> {
        let mut segs = Vec::with_capacity(1);
        // The header alone: encode with an empty data section, then fix
        // the frame length to cover `len` bytes more.
        encode(&mut segs, kind, xid, meta, &Bytes::new())?;
        let total = 1 + 8 + 4 + meta.len() + len;
        if total > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {total} bytes exceeds the limit"),
            ));
        }
        let mut head = BytesMut::from(&segs[0][..]);
        head[..4].copy_from_slice(&(total as u32).to_be_bytes());
        let mut s = self.stream.lock();
        s.write_all(&head)?;
        let mut left = len;
        while left > 0 {
            // SAFETY: both fds are open (the socket is owned by the locked
            // stream, the pipe by the caller) for the duration of the call.
            let n = unsafe {
                libc::splice(
                    pipe,
                    std::ptr::null_mut(),
                    self.fd,
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= n as usize;
        }
        Ok(())
    }

    /// Shuts the connection down both ways (the reader sees the end too).
    pub(crate) fn shutdown(&self) {
        // Not through the lock: a writer may be blocked holding it.
        // SAFETY: the fd belongs to the stream behind the mutex, which lives
        // as long as `self`; shutdown(2) does not close it.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

/// A counting semaphore for threads (requests of one connection in flight
/// on the worker pool).
pub(crate) struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
    total: usize,
}

impl Slots {
    pub(crate) fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
            total: n,
        }
    }

    /// Takes a slot, waiting for one.
    pub(crate) fn take(&self) {
        let mut f = self.free.lock();
        while *f == 0 {
            self.cv.wait(&mut f);
        }
        *f -= 1;
    }

    /// Gives a slot back.
    pub(crate) fn give(&self) {
        *self.free.lock() += 1;
        self.cv.notify_all();
    }

    /// Waits until every slot is free (nothing in flight).
    pub(crate) fn wait_idle(&self) {
        let mut f = self.free.lock();
        while *f < self.total {
            self.cv.wait(&mut f);
        }
    }
}
