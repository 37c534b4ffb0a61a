//! XDR (RFC 4506) primitives: a bounded, borrowing `XdrReader` over one
//! received message and an `XdrWriter` building a reply. Every variable
//! length is checked against the remaining input and a per-field cap before
//! anything is allocated, so garbage input can never make a server allocate.

use thiserror::Error;

/// A decode failure. Callers answer GARBAGE_ARGS (or drop the message).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XdrError {
    /// The input ended inside an item.
    #[error("xdr: input truncated (need {need} bytes, have {have})")]
    Truncated {
        /// Bytes the item needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A length prefix above the field's cap.
    #[error("xdr: length {len} exceeds limit {max}")]
    TooLong {
        /// Length announced on the wire.
        len: usize,
        /// The field's cap.
        max: usize,
    },
    /// An enum or union discriminant outside the spec's values.
    #[error("xdr: invalid value {value} for {what}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// The value read.
        value: u32,
    },
    /// Bytes were left over after the last item.
    #[error("xdr: {0} trailing bytes")]
    Trailing(usize),
}

/// Result of decoding.
pub type XdrResult<T> = Result<T, XdrError>;

/// A cursor over one XDR-encoded message. Opaque data is borrowed, never copied.
#[derive(Debug, Clone)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Pads `n` up to a multiple of 4 (RFC 4506 §3: "BLOCK SIZE").
pub fn padded(n: usize) -> usize {
    n.saturating_add(3) & !3
}

impl<'a> XdrReader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        XdrReader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread rest of the input.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> XdrResult<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(XdrError::Trailing(n)),
        }
    }

    fn take(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(XdrError::Truncated {
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// unsigned int (§4.2).
    pub fn get_u32(&mut self) -> XdrResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// int (§4.1).
    pub fn get_i32(&mut self) -> XdrResult<i32> {
        Ok(self.get_u32()? as i32)
    }

    /// unsigned hyper (§4.5).
    pub fn get_u64(&mut self) -> XdrResult<u64> {
        let hi = self.get_u32()? as u64;
        let lo = self.get_u32()? as u64;
        Ok(hi << 32 | lo)
    }

    /// hyper (§4.5).
    pub fn get_i64(&mut self) -> XdrResult<i64> {
        Ok(self.get_u64()? as i64)
    }

    /// bool (§4.4): only 0 and 1 are valid.
    pub fn get_bool(&mut self) -> XdrResult<bool> {
        match self.get_u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::BadValue {
                what: "bool",
                value,
            }),
        }
    }

    /// Fixed-length opaque data (§4.9), padding skipped.
    pub fn get_fixed(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        let data = self.take(n)?;
        self.take(padded(n) - n)?;
        Ok(data)
    }

    /// A fixed-size array of bytes (e.g. a verifier).
    pub fn get_array<const N: usize>(&mut self) -> XdrResult<[u8; N]> {
        let s = self.get_fixed(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Variable-length opaque data (§4.10) of at most `max` bytes.
    pub fn get_opaque(&mut self, max: usize) -> XdrResult<&'a [u8]> {
        let len = self.get_u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        self.get_fixed(len)
    }

    /// A string (§4.11) of at most `max` bytes, as raw bytes (file names
    /// need not be UTF-8).
    pub fn get_string(&mut self, max: usize) -> XdrResult<&'a [u8]> {
        self.get_opaque(max)
    }

    /// The count of a variable-length array (§4.13) of at most `max`
    /// elements, each at least `min_elem` bytes on the wire: checked against
    /// the input left so a caller may reserve that many.
    pub fn get_count(&mut self, max: usize, min_elem: usize) -> XdrResult<usize> {
        let n = self.get_u32()? as usize;
        if n > max {
            return Err(XdrError::TooLong { len: n, max });
        }
        let need = n.saturating_mul(min_elem.max(1));
        if need > self.remaining() {
            return Err(XdrError::Truncated {
                need,
                have: self.remaining(),
            });
        }
        Ok(n)
    }

    /// An optional-data discriminant (§4.19, `*T`).
    pub fn get_option<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> XdrResult<T>,
    ) -> XdrResult<Option<T>> {
        if self.get_bool()? {
            Ok(Some(f(self)?))
        } else {
            Ok(None)
        }
    }
}

/// Builds an XDR message in a growable buffer, optionally ending in bulk
/// data kept in its own buffer (`put_opaque_tail`).
#[derive(Debug, Default, Clone)]
pub struct XdrWriter {
    buf: Vec<u8>,
    /// Bulk data that follows `buf[..at]`, and `at`.
    tail: Option<(bytes::Bytes, usize)>,
}

impl XdrWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        XdrWriter {
            buf: Vec::with_capacity(n),
            tail: None,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Cuts the message back to `len` bytes (drop a partly written item).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// The encoded bytes (a tail is copied in).
    pub fn into_bytes(self) -> Vec<u8> {
        let r = self.into_results();
        if r.tail.is_empty() {
            return r.body;
        }
        let mut v = r.body;
        v.extend_from_slice(&r.tail);
        v.extend_from_slice(&[0u8; 3][..r.tail_pad.min(3)]);
        v
    }

    /// The encoded results, a tail kept apart (sent without a copy).
    pub fn into_results(self) -> crate::rpc::ProcResults {
        let Some((tail, at)) = self.tail else {
            return self.buf.into();
        };
        let tail_pad = padded(tail.len()) - tail.len();
        if at == self.buf.len() {
            return crate::rpc::ProcResults {
                body: self.buf,
                tail,
                tail_pad,
            };
        }
        // Something was written after the tail: put it in its place.
        let mut body = self.buf[..at].to_vec();
        body.extend_from_slice(&tail);
        body.extend_from_slice(&[0u8; 3][..tail_pad]);
        body.extend_from_slice(&self.buf[at..]);
        body.into()
    }

    /// Variable-length opaque data kept in its own buffer, not copied: the
    /// last item of a message (bulk READ data). A second tail is copied in.
    pub fn put_opaque_tail(&mut self, data: bytes::Bytes) {
        if self.tail.is_some() {
            self.put_opaque(&data);
            return;
        }
        self.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        self.tail = Some((data, self.buf.len()));
    }

    /// The encoded bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// unsigned int.
    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// int.
    pub fn put_i32(&mut self, v: i32) {
        self.put_u32(v as u32);
    }

    /// unsigned hyper.
    pub fn put_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// hyper.
    pub fn put_i64(&mut self, v: i64) {
        self.put_u64(v as u64);
    }

    /// bool.
    pub fn put_bool(&mut self, v: bool) {
        self.put_u32(v as u32);
    }

    /// Fixed-length opaque data, zero padded.
    pub fn put_fixed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = padded(data.len()) - data.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
    }

    /// Variable-length opaque data (length prefix, bytes, padding). Longer
    /// than 4 GiB cannot be expressed; callers cap their data far below.
    pub fn put_opaque(&mut self, data: &[u8]) {
        self.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        self.put_fixed(data);
    }

    /// A string.
    pub fn put_string(&mut self, s: &[u8]) {
        self.put_opaque(s);
    }

    /// Raw bytes already in XDR form.
    pub fn put_raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_kept_apart_padded_and_in_its_place() {
        let mut w = XdrWriter::new();
        w.put_u32(1);
        w.put_opaque_tail(bytes::Bytes::from_static(b"abcde"));
        let r = w.clone().into_results();
        assert_eq!(r.body, [0, 0, 0, 1, 0, 0, 0, 5]);
        assert_eq!(&r.tail[..], b"abcde");
        assert_eq!(r.tail_pad, 3);
        assert_eq!(
            w.into_bytes(),
            [0, 0, 0, 1, 0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]
        );
        // What is written after a tail goes after it, copied in.
        let mut w = XdrWriter::new();
        w.put_opaque_tail(bytes::Bytes::from_static(b"xy"));
        w.put_u32(9);
        let r = w.into_results();
        assert!(r.tail.is_empty());
        assert_eq!(r.body, [0, 0, 0, 2, b'x', b'y', 0, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn round_trip_and_bounds() {
        let mut w = XdrWriter::new();
        w.put_u32(7);
        w.put_u64(u64::MAX - 1);
        w.put_opaque(b"abcde");
        w.put_bool(true);
        let b = w.into_bytes();
        assert_eq!(b.len(), 4 + 8 + 4 + 8 + 4);
        let mut r = XdrReader::new(&b);
        assert_eq!(r.get_u32().unwrap(), 7);
        assert_eq!(r.get_u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.get_opaque(5).unwrap(), b"abcde");
        assert!(r.get_bool().unwrap());
        r.finish().unwrap();

        let mut r = XdrReader::new(&b[12..]);
        assert_eq!(r.get_opaque(4), Err(XdrError::TooLong { len: 5, max: 4 }));
        // A huge announced length with little input is refused before allocating.
        let evil = [0xff, 0xff, 0xff, 0xf0, 1, 2];
        let mut r = XdrReader::new(&evil);
        assert!(matches!(
            r.get_opaque(usize::MAX),
            Err(XdrError::Truncated { .. })
        ));
        let mut r = XdrReader::new(&evil);
        assert!(matches!(
            r.get_count(usize::MAX, 4),
            Err(XdrError::Truncated { .. })
        ));
        let mut r = XdrReader::new(&[0, 0, 0, 2]);
        assert!(matches!(r.get_bool(), Err(XdrError::BadValue { .. })));
    }
}
