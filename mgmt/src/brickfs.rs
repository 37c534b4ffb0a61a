//! Brick directories as the management daemon touches them (blocking calls;
//! run them on the blocking pool): `volume create` staging (through
//! `kiln_core::brick::prepare_brick_dir`), undoing it after a failed create,
//! and the file-system facts `volume status ... detail` shows.

use kiln_core::xattr_names;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::proto::BrickDetail;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C strings.
    let rc = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

fn volume_id_bytes(volume_id: &str) -> io::Result<[u8; 16]> {
    uuid::Uuid::parse_str(volume_id)
        .map(|u| *u.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad volume id"))
}

/// Stages brick `path` for volume `volume_id`: creates it if missing,
/// refuses one already in a volume, one without trusted xattrs, one on the
/// root file system unless `force`, then stamps it.
pub(crate) fn stage(path: &str, volume_id: &str, force: bool) -> Result<(), String> {
    kiln_core::brick::prepare_brick_dir(Path::new(path), volume_id, force)
        .map_err(|e| e.to_string())
}

/// Undoes `stage` after a failed create: removes the volume-id and format
/// stamps if they are still `volume_id`'s.
pub(crate) fn unstage(path: &str, volume_id: &str) -> Result<(), String> {
    let p = Path::new(path);
    let run = || -> io::Result<()> {
        let id = volume_id_bytes(volume_id)?;
        match get_xattr(p, xattr_names::VOLUME_ID)? {
            Some(v) if v == id => {
                remove_xattr(p, xattr_names::VOLUME_ID)?;
                remove_xattr(p, xattr_names::BRICK_FORMAT)
            }
            _ => Ok(()),
        }
    };
    run().map_err(|e| format!("{path}: {e}"))
}

/// File-system facts about the brick directory `path`.
pub(crate) fn brick_detail(path: &Path) -> BrickDetail {
    let i = kiln_core::brick::brick_info(path);
    BrickDetail {
        fs_type: i.fs_type,
        device: i.device,
        mount_options: i.mount_options,
        inode_size: i.inode_size.parse().ok(),
        free_bytes: i.free_bytes,
        total_bytes: i.total_bytes,
        inode_count: i.inodes_total,
        free_inodes: i.inodes_free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = brick_detail(dir.path());
        assert!(d.total_bytes > 0 && d.total_bytes >= d.free_bytes);
        assert_ne!(d.fs_type, "N/A");
    }

    #[test]
    fn unstaging_removes_only_its_own_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("brick1");
        let bs = b.to_str().unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        stage(bs, &id, true).unwrap();
        assert!(b.is_dir());
        let again = stage(bs, &uuid::Uuid::new_v4().to_string(), true).unwrap_err();
        assert!(again.contains("already part of a volume"), "{again}");
        unstage(bs, &uuid::Uuid::new_v4().to_string()).unwrap();
        assert!(stage(bs, &id, true).is_err(), "another id must not unstage");
        unstage(bs, &id).unwrap();
        assert_eq!(get_xattr(&b, xattr_names::BRICK_FORMAT).unwrap(), None);
        stage(bs, &id, true).unwrap();
        assert!(unstage("/nonexistent/brick", &id).is_err());
    }
}
