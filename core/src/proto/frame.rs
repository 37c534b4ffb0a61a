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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
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
}
