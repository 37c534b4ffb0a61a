//! The one error type of the volume seam. Every translator and the brick
//! speak `FsError`; each gateway maps it once, at its edge (errno for FUSE,
//! nfsstat3 for NFS, HTTP status for Swift).

use serde::{Deserialize, Serialize};

/// Result of a file operation anywhere in the stack.
pub type FsResult<T> = Result<T, FsError>;

/// A failed file operation. Named variants for what the stack itself decides;
/// `Os` carries any other errno returned by a brick's local file system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FsError {
    /// ENOENT
    #[error("no such file or directory")]
    NotFound,
    /// EEXIST
    #[error("file exists")]
    Exists,
    /// ENOTDIR
    #[error("not a directory")]
    NotDir,
    /// EISDIR
    #[error("is a directory")]
    IsDir,
    /// ENOTEMPTY
    #[error("directory not empty")]
    NotEmpty,
    /// EINVAL
    #[error("invalid argument")]
    InvalidArgument,
    /// ENAMETOOLONG
    #[error("file name too long")]
    NameTooLong,
    /// EACCES
    #[error("permission denied")]
    AccessDenied,
    /// EPERM
    #[error("operation not permitted")]
    NotPermitted,
    /// ENOTCONN: the brick that holds the data is unreachable.
    #[error("transport endpoint is not connected ({0})")]
    NotConnected(String),
    /// ESTALE: the gfid is unknown (file removed or handle from elsewhere).
    #[error("stale file handle")]
    Stale,
    /// EBADF
    #[error("bad file descriptor")]
    BadFd,
    /// ENODATA: the extended attribute does not exist.
    #[error("no such attribute")]
    NoData,
    /// ERANGE
    #[error("result too large")]
    Range,
    /// ENOSPC
    #[error("no space left on device")]
    NoSpace,
    /// EROFS
    #[error("read-only file system")]
    ReadOnly,
    /// EAGAIN: a lock conflicts (non-blocking lock request).
    #[error("resource temporarily unavailable")]
    WouldBlock,
    /// EDEADLK
    #[error("resource deadlock avoided")]
    Deadlock,
    /// ENOTSUP / EOPNOTSUPP
    #[error("operation not supported")]
    NotSupported,
    /// EIO, with a reason for the log.
    #[error("input/output error: {0}")]
    Io(String),
    /// EPROTO: the peer sent something this side cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// ETIMEDOUT
    #[error("timed out")]
    TimedOut,
    /// Any other errno from the brick's local file system.
    #[error("os error {0}")]
    Os(i32),
}

impl FsError {
    /// The Linux errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::InvalidArgument => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::AccessDenied => libc::EACCES,
            FsError::NotPermitted => libc::EPERM,
            FsError::NotConnected(_) => libc::ENOTCONN,
            FsError::Stale => libc::ESTALE,
            FsError::BadFd => libc::EBADF,
            FsError::NoData => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::NoSpace => libc::ENOSPC,
            FsError::ReadOnly => libc::EROFS,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Deadlock => libc::EDEADLK,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Io(_) => libc::EIO,
            FsError::Protocol(_) => libc::EPROTO,
            FsError::TimedOut => libc::ETIMEDOUT,
            FsError::Os(e) => *e,
        }
    }

    /// Builds the error for an errno (the inverse of `errno`).
    pub fn from_errno(e: i32) -> FsError {
        match e {
            libc::ENOENT => FsError::NotFound,
            libc::EEXIST => FsError::Exists,
            libc::ENOTDIR => FsError::NotDir,
            libc::EISDIR => FsError::IsDir,
            libc::ENOTEMPTY => FsError::NotEmpty,
            libc::EINVAL => FsError::InvalidArgument,
            libc::ENAMETOOLONG => FsError::NameTooLong,
            libc::EACCES => FsError::AccessDenied,
            libc::EPERM => FsError::NotPermitted,
            libc::ENOTCONN => FsError::NotConnected(String::new()),
            libc::ESTALE => FsError::Stale,
            libc::EBADF => FsError::BadFd,
            libc::ENODATA => FsError::NoData,
            libc::ERANGE => FsError::Range,
            libc::ENOSPC | libc::EDQUOT => FsError::NoSpace,
            libc::EROFS => FsError::ReadOnly,
            libc::EAGAIN => FsError::WouldBlock,
            libc::EDEADLK => FsError::Deadlock,
            libc::EOPNOTSUPP => FsError::NotSupported,
            libc::EIO => FsError::Io(String::new()),
            libc::EPROTO => FsError::Protocol(String::new()),
            libc::ETIMEDOUT => FsError::TimedOut,
            other => FsError::Os(other),
        }
    }

    /// True when the error means "the brick is unreachable", not "the
    /// operation failed on it".
    pub fn is_disconnect(&self) -> bool {
        matches!(self, FsError::NotConnected(_) | FsError::TimedOut)
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> FsError {
        match e.raw_os_error() {
            Some(n) => FsError::from_errno(n),
            None => FsError::Io(e.to_string()),
        }
    }
}
