//! The one edge where volume errors become NFS status codes: `nfsstat3`
//! maps every `FsError`; nothing else in the gateway invents a mapping.

use kiln_core::FsError;

use crate::types::NfsStat3::{self, *};

/// The NFSv3 status for a volume error.
pub fn nfsstat3(e: &FsError) -> NfsStat3 {
    match e {
        FsError::NotFound => NFS3ERR_NOENT,
        FsError::Exists => NFS3ERR_EXIST,
        FsError::NotDir => NFS3ERR_NOTDIR,
        FsError::IsDir => NFS3ERR_ISDIR,
        FsError::NotEmpty => NFS3ERR_NOTEMPTY,
        FsError::InvalidArgument | FsError::Range => NFS3ERR_INVAL,
        FsError::NameTooLong => NFS3ERR_NAMETOOLONG,
        FsError::AccessDenied => NFS3ERR_ACCES,
        FsError::NotPermitted => NFS3ERR_PERM,
        FsError::Stale => NFS3ERR_STALE,
        FsError::NoSpace => NFS3ERR_NOSPC,
        FsError::ReadOnly => NFS3ERR_ROFS,
        // Transient: the client retries later instead of failing the call.
        FsError::WouldBlock | FsError::TimedOut => NFS3ERR_JUKEBOX,
        FsError::NotSupported | FsError::NoData => NFS3ERR_NOTSUPP,
        FsError::Protocol(_) => NFS3ERR_SERVERFAULT,
        FsError::NotConnected(_) | FsError::BadFd | FsError::Deadlock | FsError::Io(_) => {
            NFS3ERR_IO
        }
        FsError::Os(errno) => match *errno {
            libc::EFBIG => NFS3ERR_FBIG,
            libc::EMLINK => NFS3ERR_MLINK,
            libc::EXDEV => NFS3ERR_XDEV,
            libc::ENODEV => NFS3ERR_NODEV,
            libc::ENXIO => NFS3ERR_NXIO,
            libc::EDQUOT => NFS3ERR_DQUOT,
            libc::ETXTBSY => NFS3ERR_ACCES,
            libc::ELOOP => NFS3ERR_INVAL,
            _ => NFS3ERR_IO,
        },
    }
}

/// The status for an inode named by a file handle: one that no longer
/// exists is a stale handle, not a missing name.
pub fn nfsstat3_handle(e: &FsError) -> NfsStat3 {
    match e {
        FsError::NotFound => NFS3ERR_STALE,
        e => nfsstat3(e),
    }
}

/// The MOUNT status for a volume error (RFC 1813 Appendix I `mountstat3`).
pub fn mountstat3(e: &FsError) -> u32 {
    match nfsstat3(e) {
        NFS3ERR_PERM => 1,
        NFS3ERR_NOENT | NFS3ERR_STALE => 2,
        NFS3ERR_ACCES => 13,
        NFS3ERR_NOTDIR => 20,
        NFS3ERR_INVAL => 22,
        NFS3ERR_NAMETOOLONG => 63,
        NFS3ERR_NOTSUPP => 10004,
        NFS3ERR_SERVERFAULT => 10006,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_round_trip_maps() {
        assert_eq!(nfsstat3(&FsError::from_errno(libc::ENOENT)), NFS3ERR_NOENT);
        assert_eq!(nfsstat3(&FsError::from_errno(libc::EDQUOT)), NFS3ERR_NOSPC);
        assert_eq!(nfsstat3(&FsError::from_errno(libc::EFBIG)), NFS3ERR_FBIG);
        assert_eq!(nfsstat3(&FsError::NotConnected("b".into())), NFS3ERR_IO);
        assert_eq!(mountstat3(&FsError::NotFound), 2);
    }
}
