//! TCP record marking (RFC 5531 §11): a record is one or more fragments, each
//! behind a 4-byte header whose top bit marks the last fragment and whose low
//! 31 bits give its length. Records are capped so a peer cannot make us
//! allocate more than the cap, and buffers grow only as bytes arrive.

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The "last fragment" bit of a fragment header.
pub const LAST_FRAGMENT: u32 = 1 << 31;

/// Most bytes read from the socket into a record buffer at a time.
const GROW_STEP: usize = 256 * 1024;
/// Fragments up to this long get their whole buffer at once (no regrowth
/// copies for a 1 MiB WRITE; pages not yet written are not resident).
const UPFRONT_MAX: usize = 2 << 20;

/// A record that cannot be read.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The record's fragments add up past the cap.
    #[error("record of at least {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Bytes announced so far.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// More than the allowed number of fragments (tiny-fragment flood).
    #[error("record split into more than {0} fragments")]
    TooManyFragments(usize),
    /// The connection closed inside a record.
    #[error("connection closed inside a record")]
    Truncated,
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Most fragments accepted in one record.
pub const MAX_FRAGMENTS: usize = 1024;

/// Reads one record of at most `max` bytes. `Ok(None)` is a clean end of
/// stream between records. The buffer is filled straight from the socket
/// (never zeroed first), and parts of it can be shared without copying
/// (`Bytes::slice_ref`).
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, RecordError> {
    let mut rec = BytesMut::new();
    let mut fragments = 0usize;
    loop {
        let mut hdr = [0u8; 4];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return if fragments == 0 {
                    Ok(None)
                } else {
                    Err(RecordError::Truncated)
                };
            }
            Err(e) => return Err(e.into()),
        }
        fragments += 1;
        if fragments > MAX_FRAGMENTS {
            return Err(RecordError::TooManyFragments(MAX_FRAGMENTS));
        }
        let h = u32::from_be_bytes(hdr);
        let len = (h & !LAST_FRAGMENT) as usize;
        let total = rec.len().saturating_add(len);
        if total > max {
            return Err(RecordError::TooLarge { len: total, max });
        }
        if total <= UPFRONT_MAX {
            rec.reserve(total - rec.len());
        }
        while rec.len() < total {
            let step = (total - rec.len()).min(GROW_STEP);
            rec.reserve(step);
            let n = (&mut *r).take(step as u64).read_buf(&mut rec).await?;
            if n == 0 {
                return Err(RecordError::Truncated);
            }
        }
        if h & LAST_FRAGMENT != 0 {
            return Ok(Some(rec.freeze()));
        }
    }
}

/// Writes `parts` (concatenated) as one record in a single fragment.
pub async fn write_record<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l < LAST_FRAGMENT)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "record too large"))?;
    let mark = (len | LAST_FRAGMENT).to_be_bytes();
    if len < 64 * 1024 {
        // One write: no small segments held back by Nagle on unbuffered sockets.
        let mut buf = Vec::with_capacity(4 + len as usize);
        buf.extend_from_slice(&mark);
        for p in parts {
            buf.extend_from_slice(p);
        }
        return w.write_all(&buf).await;
    }
    w.write_all(&mark).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multi_fragment_and_caps() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&3u32.to_be_bytes());
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&(2 | LAST_FRAGMENT).to_be_bytes());
        wire.extend_from_slice(b"de");
        let mut r = &wire[..];
        assert_eq!(
            read_record(&mut r, 5).await.unwrap().unwrap(),
            &b"abcde"[..]
        );
        assert!(read_record(&mut r, 5).await.unwrap().is_none());
        let mut r = &wire[..];
        assert!(matches!(
            read_record(&mut r, 4).await,
            Err(RecordError::TooLarge { len: 5, max: 4 })
        ));
        // A huge announced length with no data: refused, nothing allocated.
        let evil = (0x7fff_ffffu32 | LAST_FRAGMENT).to_be_bytes();
        let mut r = &evil[..];
        assert!(matches!(
            read_record(&mut r, 1 << 20).await,
            Err(RecordError::TooLarge { .. })
        ));
        let mut r = &wire[..5];
        assert!(matches!(
            read_record(&mut r, 5).await,
            Err(RecordError::Truncated)
        ));
        let mut out = Vec::new();
        write_record(&mut out, &[b"ab", b"c"]).await.unwrap();
        assert_eq!(out, [0x80, 0, 0, 3, b'a', b'b', b'c']);
    }
}
