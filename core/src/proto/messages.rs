//! Requests a client sends to a brick and the replies it gets. Files are
//! named by gfid; entry operations by parent gfid + `Name`. Bulk data (write
//! payloads, read results) is not in these structs: it rides in the frame's
//! data section (`Frame::data`).

use crate::error::FsError;
use crate::gfid::Gfid;
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::name::Name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Extended attributes keyed by name.
pub type XattrMap = BTreeMap<String, Vec<u8>>;

/// Identifies an entry: its parent directory and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Loc {
    /// The parent directory's gfid.
    pub parent: Gfid,
    /// The entry's name in it.
    pub name: Name,
}

/// Ownership and mode for a new inode, plus the gfid the client chose for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInode {
    /// The gfid to give the new inode (same on every brick holding a copy).
    pub gfid: Gfid,
    /// Permission bits (umask already applied by the caller); for mknod also
    /// the S_IFMT bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Internal xattrs to set atomically with the creation (layout, linkto).
    pub xattrs: XattrMap,
}

/// One directory entry in a readdir reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Opaque cookie: pass it back as `offset` to continue after this entry.
    pub offset: u64,
    /// The entry's name.
    pub name: Name,
    /// The entry's gfid (NULL if the brick could not read it).
    pub gfid: Gfid,
    /// The inode kind (`st_mode & S_IFMT`).
    pub kind: crate::iatt::FileKind,
    /// Full attributes, for readdirplus.
    pub iatt: Option<Iatt>,
    /// Requested xattrs (e.g. link-file marker), for readdirplus.
    pub xattrs: XattrMap,
}

/// The type of a byte-range lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockType {
    /// Shared (F_RDLCK).
    Read,
    /// Exclusive (F_WRLCK).
    Write,
    /// Release (F_UNLCK).
    Unlock,
}

/// A POSIX byte-range lock. `len == 0` means "to end of file".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// Lock type.
    pub kind: LockType,
    /// First byte.
    pub start: u64,
    /// Length in bytes; 0 = to EOF.
    pub len: u64,
    /// The owner within the client (FUSE lock owner, NLM owner handle hash).
    pub owner: u64,
    /// The process id reported by GETLK.
    pub pid: u32,
}

/// What to do with a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockCmd {
    /// F_GETLK: report a conflicting lock, or `Unlock` if none.
    Get,
    /// F_SETLK: take or release without waiting (EAGAIN on conflict).
    Set,
    /// F_SETLKW: take, waiting until it is granted.
    SetWait,
}

/// An internal lock on a byte range of an inode (`Request::Inodelk`): what
/// translators such as replicate take to serialise their transactions on a
/// brick. Separate from POSIX locks; locks of different domains never
/// conflict; held locks go when the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeLk {
    /// Lock namespace (replicate: its own name, `:metadata` for metadata).
    pub domain: String,
    /// `Get` tests (EAGAIN if it would not be granted), `Set` tries
    /// (EAGAIN on conflict), `SetWait` waits until granted.
    pub cmd: LockCmd,
    /// `Read` (shared), `Write` (exclusive) or `Unlock`.
    pub kind: LockType,
    /// First byte.
    pub start: u64,
    /// Length in bytes; 0 = to end of file.
    pub len: u64,
    /// The owner within the client (one per transaction).
    pub owner: u64,
}

/// An internal lock on a name in a directory, or on the whole directory
/// (`Request::Entrylk`). Same rules as `InodeLk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLk {
    /// Lock namespace.
    pub domain: String,
    /// `Get`, `Set` or `SetWait`, as for `InodeLk`.
    pub cmd: LockCmd,
    /// `Read`, `Write` or `Unlock`.
    pub kind: LockType,
    /// The owner within the client.
    pub owner: u64,
}

/// What `Request::Xattrop` does with each attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattropOp {
    /// The value is an array of big-endian i64; add it element-wise to the
    /// stored array (missing attribute or elements count as zero).
    AddArray64,
}

/// A request to a brick. The frame's data section carries the bytes of
/// `Write`; every other request has an empty data section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First message on a connection.
    Handshake {
        /// Must equal `PROTOCOL_VERSION`.
        version: u32,
        /// The volume this client mounts.
        volume: String,
        /// The brick it expects to reach (`HOST:/PATH`).
        brick: String,
        /// The client's unique id (lock owner namespace).
        client_id: String,
    },
    /// Liveness check; answered with `Reply::Pong`.
    Ping,
    /// Look up `name` in `parent`; replies `Entry` (with the asked xattrs).
    Lookup { loc: Loc, xattrs: Vec<String> },
    /// Look up an inode by gfid alone (nameless lookup); replies `Entry`.
    LookupGfid { gfid: Gfid, xattrs: Vec<String> },
    /// Attributes; replies `Attr`.
    Stat { gfid: Gfid },
    /// Change attributes; replies `Attr` (post-op).
    Setattr { gfid: Gfid, attr: SetAttr },
    /// Truncate an open file; replies `Attr`.
    Ftruncate { fd: u64, size: u64 },
    /// Create and open a regular file; replies `Created`.
    Create {
        loc: Loc,
        inode: NewInode,
        flags: i32,
        exclusive: bool,
    },
    /// Create a special file (or a regular one without opening); `inode.mode`
    /// includes the S_IFMT bits; replies `Entry`.
    Mknod {
        loc: Loc,
        inode: NewInode,
        rdev: u64,
    },
    /// Create a directory; replies `Entry`.
    Mkdir { loc: Loc, inode: NewInode },
    /// Create a symlink; replies `Entry`.
    Symlink {
        loc: Loc,
        inode: NewInode,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// Hard link existing `gfid` at `loc`; replies `Entry`.
    Link { gfid: Gfid, loc: Loc },
    /// Remove a non-directory; replies `Done`.
    Unlink { loc: Loc },
    /// Remove an empty directory; replies `Done`.
    Rmdir { loc: Loc },
    /// Rename; replies `Done`.
    Rename { from: Loc, to: Loc },
    /// Read a symlink; replies `Link`.
    Readlink { gfid: Gfid },
    /// Open a file; replies `Opened`.
    Open { gfid: Gfid, flags: i32 },
    /// Read; replies `Read` with the bytes in the data section.
    Read { fd: u64, offset: u64, size: u32 },
    /// Write the frame's data section at `offset`; replies `Written`.
    Write { fd: u64, offset: u64 },
    /// Flush (close of one descriptor of an open file); replies `Done`.
    Flush { fd: u64, owner: u64 },
    /// Fsync; replies `Done`.
    Fsync { fd: u64, datasync: bool },
    /// Drop an open file or directory; replies `Done`.
    Release { fd: u64 },
    /// Offer the open regular file `fd` to a client on this host; replies
    /// `HandoffToken`, redeemed on the brick's handoff socket
    /// (`brick::handoff`).
    Handoff { fd: u64 },
    /// Open a directory for reading; replies `Opened`.
    Opendir { gfid: Gfid },
    /// Read entries after `offset` (0 = start); replies `Entries`.
    Readdir {
        fd: u64,
        offset: u64,
        max_entries: u32,
        plus: bool,
        xattrs: Vec<String>,
    },
    /// Get one xattr; replies `Xattr`.
    Getxattr { gfid: Gfid, name: String },
    /// List xattr names; replies `XattrNames`.
    Listxattr { gfid: Gfid },
    /// Set xattrs (flags as setxattr(2): XATTR_CREATE/REPLACE); replies `Done`.
    Setxattr {
        gfid: Gfid,
        xattrs: XattrMap,
        flags: i32,
    },
    /// Remove one xattr; replies `Done`.
    Removexattr { gfid: Gfid, name: String },
    /// File system capacity; replies `Statfs`.
    Statfs,
    /// Byte-range lock on an open file; replies `Lock`.
    Lk {
        fd: u64,
        cmd: LockCmd,
        lock: FileLock,
    },
    /// Allocate/punch space (fallocate(2) mode); replies `Done`.
    Fallocate {
        fd: u64,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Internal lock on a range of an inode; replies `Done` (when granted,
    /// for `SetWait`).
    Inodelk { gfid: Gfid, lock: InodeLk },
    /// Internal lock on `name` in directory `parent` (`None`: the whole
    /// directory); replies `Done`.
    Entrylk {
        parent: Gfid,
        name: Option<Name>,
        lock: EntryLk,
    },
    /// Atomic arithmetic on xattrs of `gfid` (under a per-inode mutex);
    /// replies `Xattrs` with the new values.
    Xattrop {
        gfid: Gfid,
        op: XattropOp,
        xattrs: XattrMap,
    },
    /// The brick's pending-heal index: indexed gfids after `after`, in
    /// order, at most `max`; replies `Gfids`.
    IndexList { after: Option<Gfid>, max: u32 },
    /// Checksums (xxh3-128) of the `block`-byte blocks of an open file
    /// from `offset` for `len` bytes (the last block may be short; none
    /// past end of file); replies `Checksums`. Appended last, so older
    /// variants keep their wire numbers.
    Checksum {
        fd: u64,
        offset: u64,
        len: u64,
        block: u32,
    },
}

impl Request {
    /// A short name for logs and io-stats.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Handshake { .. } => "HANDSHAKE",
            Request::Ping => "PING",
            Request::Lookup { .. } => "LOOKUP",
            Request::LookupGfid { .. } => "LOOKUP",
            Request::Stat { .. } => "STAT",
            Request::Setattr { .. } => "SETATTR",
            Request::Ftruncate { .. } => "FTRUNCATE",
            Request::Create { .. } => "CREATE",
            Request::Mknod { .. } => "MKNOD",
            Request::Mkdir { .. } => "MKDIR",
            Request::Symlink { .. } => "SYMLINK",
            Request::Link { .. } => "LINK",
            Request::Unlink { .. } => "UNLINK",
            Request::Rmdir { .. } => "RMDIR",
            Request::Rename { .. } => "RENAME",
            Request::Readlink { .. } => "READLINK",
            Request::Open { .. } => "OPEN",
            Request::Read { .. } => "READ",
            Request::Write { .. } => "WRITE",
            Request::Flush { .. } => "FLUSH",
            Request::Fsync { .. } => "FSYNC",
            Request::Release { .. } => "RELEASE",
            Request::Handoff { .. } => "HANDOFF",
            Request::Opendir { .. } => "OPENDIR",
            Request::Readdir { .. } => "READDIR",
            Request::Getxattr { .. } => "GETXATTR",
            Request::Listxattr { .. } => "LISTXATTR",
            Request::Setxattr { .. } => "SETXATTR",
            Request::Removexattr { .. } => "REMOVEXATTR",
            Request::Statfs => "STATFS",
            Request::Lk { .. } => "LK",
            Request::Fallocate { .. } => "FALLOCATE",
            Request::Inodelk { .. } => "INODELK",
            Request::Entrylk { .. } => "ENTRYLK",
            Request::Xattrop { .. } => "XATTROP",
            Request::IndexList { .. } => "INDEXLIST",
            Request::Checksum { .. } => "CHECKSUM",
        }
    }
}

/// A successful reply. Errors travel as `Err(FsError)` in `ReplyResult`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Handshake accepted.
    Welcome {
        /// The brick's volume id (hex).
        volume_id: String,
    },
    /// Answer to Ping.
    Pong,
    /// An inode (lookup, mkdir, mknod, symlink, link) with requested xattrs.
    Entry { iatt: Iatt, xattrs: XattrMap },
    /// Attributes.
    Attr { iatt: Iatt },
    /// A created and opened file.
    Created { iatt: Iatt, fd: u64 },
    /// An opened file or directory.
    Opened { fd: u64 },
    /// A one-time token for the brick's handoff socket.
    HandoffToken { token: [u8; 16] },
    /// Read result; the bytes are in the frame's data section.
    Read { eof: bool },
    /// Bytes written, and the file's attributes afterwards.
    Written { count: u32, iatt: Iatt },
    /// Directory entries; an empty list means end of directory.
    Entries { entries: Vec<DirEntry> },
    /// A symlink target.
    Link {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// One xattr value.
    Xattr {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Xattr names.
    XattrNames { names: Vec<String> },
    /// Capacity.
    Statfs { stat: Statvfs },
    /// Lock result (for GETLK: the conflicting lock, or kind Unlock).
    Lock { lock: FileLock },
    /// The operation succeeded with nothing to return.
    Done,
    /// Attribute values (the result of `Xattrop`).
    Xattrs { xattrs: XattrMap },
    /// Gfids (the result of `IndexList`).
    Gfids { gfids: Vec<Gfid> },
    /// Block checksums (the result of `Checksum`): xxh3-128 of each block,
    /// as two u64 (low, high), and the file's size when they were taken.
    Checksums { size: u64, sums: Vec<[u64; 2]> },
}

/// What a brick answers to one request.
pub type ReplyResult = Result<Reply, FsError>;
