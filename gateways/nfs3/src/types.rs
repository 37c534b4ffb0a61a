//! NFS version 3 protocol types, transcribed from RFC 1813 §2 ("Basic data
//! types") and §3 (procedure numbers): status codes, file types, attributes
//! (`fattr3`, `sattr3`), weak cache consistency data and their XDR encodings.

use kiln_portmap::xdr::{XdrReader, XdrResult, XdrWriter};

/// Program number of NFS (RFC 1813 §1).
pub const NFS_PROGRAM: u32 = 100003;
/// The one version served.
pub const NFS_V3: u32 = 3;
/// `NFS3_FHSIZE`: the largest file handle.
pub const NFS3_FHSIZE: usize = 64;
/// `NFS3_COOKIEVERFSIZE`, `NFS3_CREATEVERFSIZE`, `NFS3_WRITEVERFSIZE`.
pub const NFS3_VERFSIZE: usize = 8;
/// Longest name accepted in `filename3` (Linux NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest `nfspath3` (symlink target) accepted (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// Procedure numbers (RFC 1813 §3).
pub mod proc3 {
    #![allow(missing_docs)]
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
}

/// `nfsstat3` (RFC 1813 §2.6).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfsStat3 {
    NFS3_OK = 0,
    NFS3ERR_PERM = 1,
    NFS3ERR_NOENT = 2,
    NFS3ERR_IO = 5,
    NFS3ERR_NXIO = 6,
    NFS3ERR_ACCES = 13,
    NFS3ERR_EXIST = 17,
    NFS3ERR_XDEV = 18,
    NFS3ERR_NODEV = 19,
    NFS3ERR_NOTDIR = 20,
    NFS3ERR_ISDIR = 21,
    NFS3ERR_INVAL = 22,
    NFS3ERR_FBIG = 27,
    NFS3ERR_NOSPC = 28,
    NFS3ERR_ROFS = 30,
    NFS3ERR_MLINK = 31,
    NFS3ERR_NAMETOOLONG = 63,
    NFS3ERR_NOTEMPTY = 66,
    NFS3ERR_DQUOT = 69,
    NFS3ERR_STALE = 70,
    NFS3ERR_REMOTE = 71,
    NFS3ERR_BADHANDLE = 10001,
    NFS3ERR_NOT_SYNC = 10002,
    NFS3ERR_BAD_COOKIE = 10003,
    NFS3ERR_NOTSUPP = 10004,
    NFS3ERR_TOOSMALL = 10005,
    NFS3ERR_SERVERFAULT = 10006,
    NFS3ERR_BADTYPE = 10007,
    NFS3ERR_JUKEBOX = 10008,
}

/// `ftype3` (RFC 1813 §2.3.5).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ftype3 {
    NF3REG = 1,
    NF3DIR = 2,
    NF3BLK = 3,
    NF3CHR = 4,
    NF3LNK = 5,
    NF3SOCK = 6,
    NF3FIFO = 7,
}

impl Ftype3 {
    /// Decodes an `ftype3`.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Ftype3> {
        use Ftype3::*;
        Ok(match r.get_u32()? {
            1 => NF3REG,
            2 => NF3DIR,
            3 => NF3BLK,
            4 => NF3CHR,
            5 => NF3LNK,
            6 => NF3SOCK,
            7 => NF3FIFO,
            value => {
                return Err(kiln_portmap::XdrError::BadValue {
                    what: "ftype3",
                    value,
                })
            }
        })
    }
}

/// ACCESS3 bits (RFC 1813 §3.3.4).
pub mod access3 {
    #![allow(missing_docs)]
    pub const READ: u32 = 0x0001;
    pub const LOOKUP: u32 = 0x0002;
    pub const MODIFY: u32 = 0x0004;
    pub const EXTEND: u32 = 0x0008;
    pub const DELETE: u32 = 0x0010;
    pub const EXECUTE: u32 = 0x0020;
}

/// `stable_how` (RFC 1813 §3.3.7).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StableHow {
    UNSTABLE = 0,
    DATA_SYNC = 1,
    FILE_SYNC = 2,
}

/// FSINFO `properties` bits (RFC 1813 §3.3.19).
pub mod fsf3 {
    #![allow(missing_docs)]
    pub const LINK: u32 = 0x0001;
    pub const SYMLINK: u32 = 0x0002;
    pub const HOMOGENEOUS: u32 = 0x0008;
    pub const CANSETTIME: u32 = 0x0010;
}

/// `nfstime3` (RFC 1813 §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NfsTime3 {
    /// Seconds.
    pub seconds: u32,
    /// Nanoseconds.
    pub nseconds: u32,
}

impl NfsTime3 {
    /// Decodes an `nfstime3`.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<NfsTime3> {
        Ok(NfsTime3 {
            seconds: r.get_u32()?,
            nseconds: r.get_u32()?,
        })
    }

    /// Encodes an `nfstime3`.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_u32(self.seconds);
        w.put_u32(self.nseconds);
    }
}

/// `time_how` + value of `set_atime`/`set_mtime` (RFC 1813 §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime3 {
    /// DONT_CHANGE.
    DontChange,
    /// SET_TO_SERVER_TIME.
    ServerTime,
    /// SET_TO_CLIENT_TIME.
    ClientTime(NfsTime3),
}

impl SetTime3 {
    fn decode(r: &mut XdrReader<'_>) -> XdrResult<SetTime3> {
        Ok(match r.get_u32()? {
            0 => SetTime3::DontChange,
            1 => SetTime3::ServerTime,
            2 => SetTime3::ClientTime(NfsTime3::decode(r)?),
            value => {
                return Err(kiln_portmap::XdrError::BadValue {
                    what: "time_how",
                    value,
                })
            }
        })
    }
}

/// `sattr3` (RFC 1813 §2.5): attributes a client asks to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sattr3 {
    /// set_mode3.
    pub mode: Option<u32>,
    /// set_uid3.
    pub uid: Option<u32>,
    /// set_gid3.
    pub gid: Option<u32>,
    /// set_size3.
    pub size: Option<u64>,
    /// set_atime.
    pub atime: SetTime3,
    /// set_mtime.
    pub mtime: SetTime3,
}

impl Sattr3 {
    /// Nothing to set.
    pub const EMPTY: Sattr3 = Sattr3 {
        mode: None,
        uid: None,
        gid: None,
        size: None,
        atime: SetTime3::DontChange,
        mtime: SetTime3::DontChange,
    };

    /// Decodes a `sattr3`.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Sattr3> {
        Ok(Sattr3 {
            mode: r.get_option(|r| r.get_u32())?,
            uid: r.get_option(|r| r.get_u32())?,
            gid: r.get_option(|r| r.get_u32())?,
            size: r.get_option(|r| r.get_u64())?,
            atime: SetTime3::decode(r)?,
            mtime: SetTime3::decode(r)?,
        })
    }
}

/// `fattr3` (RFC 1813 §2.5), ready to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fattr3 {
    /// File type.
    pub ftype: Ftype3,
    /// Permission bits (incl. setuid/setgid/sticky).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Bytes allocated.
    pub used: u64,
    /// Device numbers (`specdata3`).
    pub rdev: (u32, u32),
    /// File system id.
    pub fsid: u64,
    /// File id (inode number).
    pub fileid: u64,
    /// Access time.
    pub atime: NfsTime3,
    /// Modify time.
    pub mtime: NfsTime3,
    /// Change time.
    pub ctime: NfsTime3,
}

/// Bytes of an encoded `fattr3`.
pub const FATTR3_SIZE: usize = 84;

impl Fattr3 {
    /// Encodes a `fattr3`.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_u32(self.ftype as u32);
        w.put_u32(self.mode);
        w.put_u32(self.nlink);
        w.put_u32(self.uid);
        w.put_u32(self.gid);
        w.put_u64(self.size);
        w.put_u64(self.used);
        w.put_u32(self.rdev.0);
        w.put_u32(self.rdev.1);
        w.put_u64(self.fsid);
        w.put_u64(self.fileid);
        self.atime.encode(w);
        self.mtime.encode(w);
        self.ctime.encode(w);
    }
}

/// `wcc_attr` (RFC 1813 §2.6): size and times before an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WccAttr {
    /// Size.
    pub size: u64,
    /// Modify time.
    pub mtime: NfsTime3,
    /// Change time.
    pub ctime: NfsTime3,
}

/// `wcc_data`: pre-operation `wcc_attr` and post-operation `fattr3`, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WccData {
    /// pre_op_attr.
    pub before: Option<WccAttr>,
    /// post_op_attr.
    pub after: Option<Fattr3>,
}

impl WccData {
    /// Encodes a `wcc_data`.
    pub fn encode(&self, w: &mut XdrWriter) {
        match &self.before {
            Some(b) => {
                w.put_bool(true);
                w.put_u64(b.size);
                b.mtime.encode(w);
                b.ctime.encode(w);
            }
            None => w.put_bool(false),
        }
        encode_post_op_attr(self.after.as_ref(), w);
    }
}

/// Encodes a `post_op_attr`.
pub fn encode_post_op_attr(a: Option<&Fattr3>, w: &mut XdrWriter) {
    match a {
        Some(a) => {
            w.put_bool(true);
            a.encode(w);
        }
        None => w.put_bool(false),
    }
}

/// Encodes a `post_op_fh3`.
pub fn encode_post_op_fh(fh: Option<&[u8]>, w: &mut XdrWriter) {
    match fh {
        Some(fh) => {
            w.put_bool(true);
            w.put_opaque(fh);
        }
        None => w.put_bool(false),
    }
}
