//! Framing on a brick connection. Every frame:
//!
//! ```text
//! u32 len   (bytes after this field, big-endian; at most MAX_FRAME)
//! u8  kind  (0 = request, 1 = reply)
//! u64 xid   (request id; the reply carries the same one)
//! u32 mlen  (length of the header message)
//! [mlen bytes] header message: a `Request` or `ReplyResult`, bincode
//! [rest]       bulk data (write payload / read result), raw
//! ```
//! Requests are pipelined: many may be outstanding, replies come in any order.
//!
//! `FrameSink` sends frames from any thread: the sender writes to the socket
//! itself when it can do so without blocking (no hop to a writer task), and
//! bulk data goes out by vectored writes from its own buffer (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_util::codec::{Decoder, Encoder};

use super::messages::{ReplyResult, Request};
use crate::error::FsError;
use bincode::Options;

/// Largest frame accepted (header + data), so a bad length cannot make a peer
/// allocate without bound.
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;
const FIXED: usize = 1 + 8 + 4;

/// Request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Client to brick.
    Request,
    /// Brick to client.
    Reply,
}

/// One frame, split into its header message bytes and its data section
/// (both are views into the receive buffer: no copy).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Request or reply.
    pub kind: FrameKind,
    /// Request id.
    pub xid: u64,
    /// The bincode-encoded header message.
    pub meta: Bytes,
    /// Bulk data.
    pub data: Bytes,
}

fn codec_options() -> impl bincode::Options {
    bincode::DefaultOptions::new().with_limit(MAX_FRAME as u64)
}

/// Encodes a header message.
pub fn encode_meta<T: Serialize>(msg: &T) -> Result<Bytes, FsError> {
    codec_options()
        .serialize(msg)
        .map(Bytes::from)
        .map_err(|e| FsError::Protocol(format!("encode: {e}")))
}

/// Decodes a header message; any malformed input is a `Protocol` error.
pub fn decode_meta<T: DeserializeOwned>(b: &[u8]) -> Result<T, FsError> {
    codec_options()
        .deserialize(b)
        .map_err(|e| FsError::Protocol(format!("decode: {e}")))
}

impl Frame {
    /// A request frame.
    pub fn request(xid: u64, req: &Request, data: Bytes) -> Result<Frame, FsError> {
        Ok(Frame {
            kind: FrameKind::Request,
            xid,
            meta: encode_meta(req)?,
            data,
        })
    }

    /// A reply frame.
    pub fn reply(xid: u64, rep: &ReplyResult, data: Bytes) -> Result<Frame, FsError> {
        Ok(Frame {
            kind: FrameKind::Reply,
            xid,
            meta: encode_meta(rep)?,
            data,
        })
    }

    /// Decodes the header as a request.
    pub fn decode_request(&self) -> Result<Request, FsError> {
        decode_meta(&self.meta)
    }

    /// Decodes the header as a reply.
    pub fn decode_reply(&self) -> Result<ReplyResult, FsError> {
        decode_meta(&self.meta)
    }
}

/// tokio-util codec for `Frame`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if !(FIXED..=MAX_FRAME).contains(&len) {
            return Err(bad(format!("frame length {len} out of range")));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len);
        let kind = match body.get_u8() {
            0 => FrameKind::Request,
            1 => FrameKind::Reply,
            k => return Err(bad(format!("unknown frame kind {k}"))),
        };
        let xid = body.get_u64();
        let mlen = body.get_u32() as usize;
        if mlen > body.len() {
            return Err(bad(format!("header length {mlen} exceeds frame")));
        }
        let meta = body.split_to(mlen).freeze();
        let data = body.freeze();
        Ok(Some(Frame {
            kind,
            xid,
            meta,
            data,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let len = FIXED + f.meta.len() + f.data.len();
        if len > MAX_FRAME {
            return Err(bad(format!("frame of {len} bytes exceeds limit")));
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        dst.put_u8(match f.kind {
            FrameKind::Request => 0,
            FrameKind::Reply => 1,
        });
        dst.put_u64(f.xid);
        dst.put_u32(f.meta.len() as u32);
        dst.extend_from_slice(&f.meta);
        dst.extend_from_slice(&f.data);
        Ok(())
    }
}

/// Buffer room an `AsyncFrameReader` keeps for reads (more for a larger frame).
const READ_CHUNK: usize = 256 * 1024;
/// Bytes an `AsyncFrameReader` asks for when no frame is under way: enough for a
/// batch of small frames, and little to move when it turns out to be the
/// start of a large one (whose buffer the decoder then allocates whole).
pub const READ_FIRST: usize = 64 * 1024;

/// Reads frames from an async byte stream (the client's side of a brick
/// connection). Cancel-safe: what was read stays buffered.
pub struct AsyncFrameReader<R> {
    rd: R,
    buf: BytesMut,
}

impl<R: tokio::io::AsyncRead + Unpin> AsyncFrameReader<R> {
    /// A reader on `rd`.
    pub fn new(rd: R) -> AsyncFrameReader<R> {
        AsyncFrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The next frame; `None` at a clean end of stream; a bad frame or an
    /// end in mid-frame is an error.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = FrameCodec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = if self.buf.is_empty() {
                (&mut self.rd)
                    .take(READ_FIRST as u64)
                    .read_buf(&mut self.buf)
                    .await?
            } else {
                self.rd.read_buf(&mut self.buf).await?
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

/// Data sections at least this large are written from their own buffer;
/// smaller ones are copied beside their header.
const SINK_INLINE: usize = 16 * 1024;
/// Segments handed to one vectored write.
const SINK_IOV: usize = 64;

/// The socket is closed (or failed): nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkClosed;

/// The sending side of a frame connection, shared by every thread that
/// answers or asks on it. A sender appends its frame to the queue and, unless
/// the socket is known to be full, writes the queue out at once with
/// non-blocking writes; what the socket does not take is written by the
/// sink's flusher task (`FrameSink::flusher`) as soon as the socket drains.
/// Frames leave in the order they were sent.
pub struct FrameSink {
    w: OwnedWriteHalf,
    state: Mutex<SinkState>,
    /// Wakes the flusher (the socket was full) or waiters for room.
    wake: Notify,
    drained: Notify,
    /// Wakes the lazy flusher (a lazy frame waits in the queue).
    lazy_wake: Notify,
}

#[derive(Default)]
struct SinkState {
    /// Segments to write, in order; the first may be partly written.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
    /// The socket refused bytes: the flusher waits for it to drain.
    stalled: bool,
    /// A frame sent with `send_lazy` is still queued.
    lazy: bool,
    closed: bool,
}

impl FrameSink {
    /// A sink on `w`; spawn `flusher()` on the runtime that owns `w`.
    pub fn new(w: OwnedWriteHalf) -> std::sync::Arc<FrameSink> {
        std::sync::Arc::new(FrameSink {
            w,
            state: Mutex::new(SinkState::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            lazy_wake: Notify::new(),
        })
    }

    /// Sends one frame: `meta` is the encoded header message.
    pub fn send(
        &self,
        kind: FrameKind,
        xid: u64,
        meta: &[u8],
        data: Bytes,
    ) -> Result<(), SinkClosed> {
        self.push(kind, xid, meta, data, false)
    }

    /// Queues one frame without writing it: it leaves with the next frame
    /// sent, or after the lazy flusher's delay (`FrameSink::lazy_flusher`).
    /// For messages nobody waits on, so a burst of them costs the peer one
    /// wake-up.
    pub fn send_lazy(
        &self,
        kind: FrameKind,
        xid: u64,
        meta: &[u8],
        data: Bytes,
    ) -> Result<(), SinkClosed> {
        self.push(kind, xid, meta, data, true)
    }

    fn push(
        &self,
        kind: FrameKind,
        xid: u64,
        meta: &[u8],
        data: Bytes,
        lazy: bool,
    ) -> Result<(), SinkClosed> {
        let len = FIXED + meta.len() + data.len();
        if len > MAX_FRAME {
            tracing::error!(xid, len, "frame exceeds the limit; dropped");
            return Ok(());
        }
        let inline = data.len() < SINK_INLINE;
        let mut head =
            BytesMut::with_capacity(4 + FIXED + meta.len() + if inline { data.len() } else { 0 });
        head.put_u32(len as u32);
        head.put_u8(match kind {
            FrameKind::Request => 0,
            FrameKind::Reply => 1,
        });
        head.put_u64(xid);
        head.put_u32(meta.len() as u32);
        head.extend_from_slice(meta);
        if inline {
            head.extend_from_slice(&data);
        }
        let mut st = self.state.lock();
        if st.closed {
            return Err(SinkClosed);
        }
        st.queued += head.len();
        st.queue.push_back(head.freeze());
        if !inline {
            st.queued += data.len();
            st.queue.push_back(data);
        }
        if st.stalled {
            return Ok(());
        }
        if lazy {
            if !st.lazy {
                st.lazy = true;
                drop(st);
                self.lazy_wake.notify_one();
            }
            return Ok(());
        }
        match self.write_queue(&mut st) {
            Ok(true) => Ok(()),
            Ok(false) => {
                st.stalled = true;
                drop(st);
                self.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                tracing::debug!("frame write failed: {e}");
                self.close_locked(&mut st);
                Err(SinkClosed)
            }
        }
    }

    /// Bytes queued and not yet taken by the socket.
    pub fn queued(&self) -> usize {
        self.state.lock().queued
    }

    /// Waits until at most `limit` bytes are queued (or the sink closed).
    pub async fn wait_room(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.state.lock();
                if st.closed || st.queued <= limit {
                    return;
                }
            }
            drained.await;
        }
    }

    /// True once a write failed or `close` was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Stops sending: queued frames are dropped, later sends fail.
    pub fn close(&self) {
        let mut st = self.state.lock();
        self.close_locked(&mut st);
    }

    fn close_locked(&self, st: &mut SinkState) {
        if !st.closed {
            // Both directions: the peer sees the end at once, and so does
            // this side's reader.
            use std::os::fd::AsRawFd;
            let fd = AsRef::<tokio::net::TcpStream>::as_ref(&self.w).as_raw_fd();
            // SAFETY: `fd` is the socket `self.w` owns, open while `self`
            // lives; shutdown(2) does not close it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        st.closed = true;
        st.queue.clear();
        st.queued = 0;
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    /// Writes queued segments until the queue is empty (true) or the socket
    /// is full (false). Called with the state locked, so writers never
    /// interleave.
    fn write_queue(&self, st: &mut SinkState) -> std::io::Result<bool> {
        while !st.queue.is_empty() {
            let n = {
                let iov: Vec<IoSlice<'_>> = st
                    .queue
                    .iter()
                    .take(SINK_IOV)
                    .map(|b| IoSlice::new(b))
                    .collect();
                match self.w.try_write_vectored(&iov) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            st.queued -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = st.queue.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    st.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        st.lazy = false;
        Ok(true)
    }

    /// Writes lazy frames that waited `delay` without another frame taking
    /// them along. Run it as a task beside `flusher`.
    pub async fn lazy_flusher(self: std::sync::Arc<Self>, delay: std::time::Duration) {
        loop {
            self.lazy_wake.notified().await;
            tokio::time::sleep(delay).await;
            let mut st = self.state.lock();
            if st.closed {
                return;
            }
            if !st.lazy || st.stalled {
                continue;
            }
            match self.write_queue(&mut st) {
                Ok(true) => {}
                Ok(false) => {
                    st.stalled = true;
                    drop(st);
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::debug!("frame write failed: {e}");
                    self.close_locked(&mut st);
                    return;
                }
            }
        }
    }

    /// Writes out what senders left behind when the socket was full; ends
    /// when the sink closes or a write fails. Run it as a task.
    pub async fn flusher(self: std::sync::Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                {
                    let mut st = self.state.lock();
                    if st.closed {
                        return;
                    }
                    match self.write_queue(&mut st) {
                        Ok(true) => {
                            st.stalled = false;
                            drop(st);
                            self.drained.notify_waiters();
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!("frame write failed: {e}");
                            self.close_locked(&mut st);
                            return;
                        }
                    }
                }
                self.drained.notify_waiters();
                if self.w.writable().await.is_err() {
                    self.close();
                    return;
                }
            }
        }
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        let f = Frame::request(7, &Request::Ping, Bytes::from_static(b"abc")).unwrap();
        codec.encode(f, &mut buf).unwrap();
        let g = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(g.xid, 7);
        assert_eq!(&g.data[..], b"abc");
        assert!(matches!(g.decode_request().unwrap(), Request::Ping));

        let mut junk = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2][..]);
        assert!(codec.decode(&mut junk).is_err());
        let mut short = BytesMut::from(&[0, 0, 0, 20, 0][..]);
        assert!(codec.decode(&mut short).unwrap().is_none());
        assert!(decode_meta::<Request>(&[0xff; 40]).is_err());
    }

    #[tokio::test]
    async fn async_reader_splits_small_and_large_frames() {
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = tokio::io::duplex(8192);
        let big = Bytes::from(vec![7u8; 3 * READ_FIRST + 5]);
        let mut wire = BytesMut::new();
        for (xid, data) in [
            (1, Bytes::from_static(b"a")),
            (2, big.clone()),
            (3, Bytes::new()),
        ] {
            let f = Frame::request(xid, &Request::Ping, data).unwrap();
            FrameCodec.encode(f, &mut wire).unwrap();
        }
        let writer = tokio::spawn(async move {
            // Dribble it out in odd pieces, then end the stream.
            for chunk in wire.chunks(1000) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut r = AsyncFrameReader::new(rx);
        let mut got = Vec::new();
        while let Some(f) = r.next().await.unwrap() {
            got.push((f.xid, f.data));
        }
        writer.await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (1, Bytes::from_static(b"a")));
        assert_eq!(got[1], (2, big));
        assert_eq!(got[2], (3, Bytes::new()));

        // A stream cut in mid-frame is an error, not a clean end.
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&[0, 0, 0, 40, 0, 1]).await.unwrap();
        drop(tx);
        assert!(AsyncFrameReader::new(rx).next().await.is_err());
    }
}
