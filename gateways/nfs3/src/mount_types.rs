//! MOUNT protocol types, transcribed from RFC 1813 Appendix I (version 3)
//! and RFC 1094 Appendix A (version 1): program 100005, procedures, limits,
//! `mountstat3`, and the list encodings of DUMP and EXPORT.

use kiln_portmap::xdr::{XdrReader, XdrResult, XdrWriter};

/// `MOUNT_PROGRAM`.
pub const MOUNT_PROGRAM: u32 = 100005;
/// Version 1 (NFSv2-era, 32-byte fhandle).
pub const MOUNT_V1: u32 = 1;
/// Version 3.
pub const MOUNT_V3: u32 = 3;
/// `MNTPATHLEN`.
pub const MNTPATHLEN: usize = 1024;
/// `MNTNAMLEN`.
pub const MNTNAMLEN: usize = 255;
/// `FHSIZE` of version 1.
pub const FHSIZE: usize = 32;

/// `MOUNTPROC3_NULL`.
pub const MOUNTPROC_NULL: u32 = 0;
/// `MOUNTPROC3_MNT`.
pub const MOUNTPROC_MNT: u32 = 1;
/// `MOUNTPROC3_DUMP`.
pub const MOUNTPROC_DUMP: u32 = 2;
/// `MOUNTPROC3_UMNT`.
pub const MOUNTPROC_UMNT: u32 = 3;
/// `MOUNTPROC3_UMNTALL`.
pub const MOUNTPROC_UMNTALL: u32 = 4;
/// `MOUNTPROC3_EXPORT`.
pub const MOUNTPROC_EXPORT: u32 = 5;

/// `mountstat3` MNT3_OK.
pub const MNT3_OK: u32 = 0;
/// `mountstat3` MNT3ERR_NOENT.
pub const MNT3ERR_NOENT: u32 = 2;
/// `mountstat3` MNT3ERR_ACCES.
pub const MNT3ERR_ACCES: u32 = 13;
/// `mountstat3` MNT3ERR_NOTDIR.
pub const MNT3ERR_NOTDIR: u32 = 20;
/// `mountstat3` MNT3ERR_NAMETOOLONG.
pub const MNT3ERR_NAMETOOLONG: u32 = 63;

/// Decodes a `dirpath` argument (MNT, UMNT).
pub fn decode_dirpath<'a>(r: &mut XdrReader<'a>) -> XdrResult<&'a [u8]> {
    r.get_string(MNTPATHLEN)
}

/// Encodes a `mountlist` (DUMP): (hostname, directory) pairs.
pub fn encode_mountlist<'a>(items: impl Iterator<Item = (&'a str, &'a str)>, w: &mut XdrWriter) {
    for (host, dir) in items {
        w.put_bool(true);
        w.put_string(&host.as_bytes()[..host.len().min(MNTNAMLEN)]);
        w.put_string(&dir.as_bytes()[..dir.len().min(MNTPATHLEN)]);
    }
    w.put_bool(false);
}

/// Encodes an `exports` list (EXPORT): each directory with its groups.
pub fn encode_exports(items: &[(String, Vec<String>)], w: &mut XdrWriter) {
    for (dir, groups) in items {
        w.put_bool(true);
        w.put_string(&dir.as_bytes()[..dir.len().min(MNTPATHLEN)]);
        for g in groups {
            w.put_bool(true);
            w.put_string(&g.as_bytes()[..g.len().min(MNTNAMLEN)]);
        }
        w.put_bool(false);
    }
    w.put_bool(false);
}

/// Decodes the arguments of any MOUNT procedure (fuzzing): true when they decode.
pub fn decode_any(proc_: u32, args: &[u8]) -> bool {
    let r = &mut XdrReader::new(args);
    match proc_ {
        MOUNTPROC_NULL | MOUNTPROC_DUMP | MOUNTPROC_UMNTALL | MOUNTPROC_EXPORT => true,
        MOUNTPROC_MNT | MOUNTPROC_UMNT => decode_dirpath(r).is_ok(),
        _ => false,
    }
}
