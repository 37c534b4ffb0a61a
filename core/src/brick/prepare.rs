//! `volume create`'s checks and stamping of a brick directory, run on the
//! brick's own server: create it, refuse one already in a volume (itself or
//! a parent), one without trusted xattrs, one on the root file system
//! unless forced; then write the volume id and the format version.

use rustix::fs::XattrFlags;
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::format::FORMAT_VERSION;
use super::BrickPrepareError;
use crate::xattr_names;

const PROBE: &str = "trusted.kiln.probe";

fn io(path: &Path, err: impl Into<std::io::Error>) -> BrickPrepareError {
    BrickPrepareError::Io {
        path: path.display().to_string(),
        err: err.into(),
    }
}

/// Prepares `path` to become a brick of the volume `volume_id` (a UUID).
pub fn prepare_brick_dir(
    path: &Path,
    volume_id: &str,
    force: bool,
) -> Result<(), BrickPrepareError> {
    let disp = path.display().to_string();
    let vid = uuid::Uuid::parse_str(volume_id).map_err(|e| {
        io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid volume id {volume_id:?}: {e}"),
            ),
        )
    })?;
    // In use: the directory itself or any parent already carries a volume
    // id (checked before anything is created).
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| io(path, e))?.join(path)
    };
    let existing = abs
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let existing = existing.canonicalize().map_err(|e| io(existing, e))?;
    let existed = path.exists();
    for (i, dir) in existing.ancestors().enumerate() {
        match rustix::fs::getxattr(dir, xattr_names::VOLUME_ID, &mut [0u8; 64][..]) {
            Ok(_) | Err(Errno::RANGE) => {
                return Err(BrickPrepareError::InUse(if i == 0 && existed {
                    disp
                } else {
                    format!("{disp} or a prefix of it")
                }))
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::ACCESS) | Err(Errno::PERM) => {}
            Err(e) => return Err(io(dir, e)),
        }
    }
    std::fs::create_dir_all(path).map_err(|e| io(path, e))?;
    if !existed {
        // A new brick root is the volume root: 0755 as an admin expects,
        // whatever the caller's umask (a brick process runs with umask 0).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io(path, e))?;
    }
    // A refusal leaves no directory behind that this call made.
    let undo = |e: BrickPrepareError| {
        if !existed {
            let _ = std::fs::remove_dir(path);
        }
        e
    };
    let canon = path.canonicalize().map_err(|e| io(path, e))?;
    if !canon.is_dir() {
        return Err(io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let c = canon.as_os_str();
    match rustix::fs::setxattr(c, PROBE, b"1", XattrFlags::empty()) {
        Ok(()) => {
            let _ = rustix::fs::removexattr(c, PROBE);
        }
        Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => {
            return Err(undo(BrickPrepareError::NoXattrs(disp)))
        }
        Err(e) => return Err(undo(io(&canon, e))),
    }
    let st = rustix::fs::stat(c).map_err(|e| io(&canon, e))?;
    let root = rustix::fs::stat(OsStr::from_bytes(b"/")).map_err(|e| io(Path::new("/"), e))?;
    if st.st_dev == root.st_dev && !force {
        return Err(undo(BrickPrepareError::RootFilesystem(disp)));
    }
    rustix::fs::setxattr(
        c,
        xattr_names::VOLUME_ID,
        vid.as_bytes(),
        XattrFlags::empty(),
    )
    .map_err(|e| io(&canon, e))?;
    rustix::fs::setxattr(
        c,
        xattr_names::BRICK_FORMAT,
        &[FORMAT_VERSION],
        XattrFlags::empty(),
    )
    .map_err(|e| io(&canon, e))?;
    tracing::info!(brick = %disp, volume_id = %vid, "brick directory prepared");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_checks() {
        let base = tempfile::tempdir().unwrap();
        let vid = uuid::Uuid::new_v4().to_string();
        let b = base.path().join("a/b/brick");
        // /tmp is on the root file system here: refused without force.
        let on_root =
            rustix::fs::stat(base.path()).unwrap().st_dev == rustix::fs::stat("/").unwrap().st_dev;
        if on_root {
            assert!(matches!(
                prepare_brick_dir(&b, &vid, false),
                Err(BrickPrepareError::RootFilesystem(_))
            ));
            assert!(!b.exists(), "a refused brick dir is not left behind");
        }
        prepare_brick_dir(&b, &vid, true).unwrap();
        let mut v = [0u8; 16];
        rustix::fs::getxattr(&b, xattr_names::VOLUME_ID, &mut v[..]).unwrap();
        assert_eq!(&v, uuid::Uuid::parse_str(&vid).unwrap().as_bytes());
        // Again: in use. A child of it: in use (prefix).
        assert!(matches!(
            prepare_brick_dir(&b, &vid, true),
            Err(BrickPrepareError::InUse(_))
        ));
        match prepare_brick_dir(&b.join("sub"), &vid, true) {
            Err(BrickPrepareError::InUse(m)) => assert!(m.contains("prefix"), "{m}"),
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(!b.join("sub").exists(), "nothing created inside a brick");
        assert!(prepare_brick_dir(&base.path().join("x"), "not-a-uuid", true).is_err());
    }
}
