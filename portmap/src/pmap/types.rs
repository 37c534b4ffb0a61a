//! Portmapper version 2 types, transcribed from RFC 1833 §3 (and RFC 1057
//! Appendix A): program 100000 on port 111, `mapping`, `pmaplist`, and the
//! procedure numbers.

use crate::xdr::{XdrReader, XdrResult, XdrWriter};

/// `PMAP_PROG`.
pub const PMAP_PROG: u32 = 100000;
/// `PMAP_VERS`.
pub const PMAP_VERS: u32 = 2;
/// The portmapper's well-known port.
pub const PMAP_PORT: u16 = 111;

/// `PMAPPROC_NULL`.
pub const PMAPPROC_NULL: u32 = 0;
/// `PMAPPROC_SET`.
pub const PMAPPROC_SET: u32 = 1;
/// `PMAPPROC_UNSET`.
pub const PMAPPROC_UNSET: u32 = 2;
/// `PMAPPROC_GETPORT`.
pub const PMAPPROC_GETPORT: u32 = 3;
/// `PMAPPROC_DUMP`.
pub const PMAPPROC_DUMP: u32 = 4;
/// `PMAPPROC_CALLIT`.
pub const PMAPPROC_CALLIT: u32 = 5;

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u32 = 17;

/// `struct mapping`: a program version served on a protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// Program number.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub prot: u32,
    /// Port (0 = not registered).
    pub port: u32,
}

impl Mapping {
    /// Decodes a `mapping`.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Mapping> {
        Ok(Mapping {
            prog: r.get_u32()?,
            vers: r.get_u32()?,
            prot: r.get_u32()?,
            port: r.get_u32()?,
        })
    }

    /// Encodes a `mapping`.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_u32(self.prog);
        w.put_u32(self.vers);
        w.put_u32(self.prot);
        w.put_u32(self.port);
    }

    /// Both TCP and UDP mappings of `prog`/`vers` on `port`.
    pub fn tcp_udp(prog: u32, vers: u32, port: u16) -> [Mapping; 2] {
        [
            Mapping {
                prog,
                vers,
                prot: IPPROTO_TCP,
                port: port as u32,
            },
            Mapping {
                prog,
                vers,
                prot: IPPROTO_UDP,
                port: port as u32,
            },
        ]
    }
}

/// Encodes a `pmaplist` (RFC 1833 §3.2: a linked list of optional entries).
pub fn encode_pmaplist(maps: &[Mapping], w: &mut XdrWriter) {
    for m in maps {
        w.put_bool(true);
        m.encode(w);
    }
    w.put_bool(false);
}

/// Decodes a `pmaplist` of at most `max` entries.
pub fn decode_pmaplist(r: &mut XdrReader<'_>, max: usize) -> XdrResult<Vec<Mapping>> {
    let mut out = Vec::new();
    while r.get_bool()? {
        if out.len() >= max {
            return Err(crate::xdr::XdrError::TooLong {
                len: out.len() + 1,
                max,
            });
        }
        out.push(Mapping::decode(r)?);
    }
    Ok(out)
}
