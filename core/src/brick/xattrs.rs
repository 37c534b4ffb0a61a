//! Extended attributes as clients reach them: which `trusted.kiln.*` names
//! translators may read and write (the DHT layout and link-file marker) and
//! which stay the brick's own (gfid, volume id, format), plus the
//! get/list/set/remove operations addressed by gfid.

use rustix::fs::XattrFlags;

use super::store::Store;
use super::sys::{self, XTarget};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::proto::XattrMap;
use crate::xattr_names;

/// Longest attribute name (XATTR_NAME_MAX).
const NAME_MAX: usize = 255;
/// Largest attribute value (XATTR_SIZE_MAX).
const VALUE_MAX: usize = 65536;

/// True for the attributes only the brick itself writes.
pub(crate) fn is_protected(name: &str) -> bool {
    name == xattr_names::GFID || name == xattr_names::VOLUME_ID || name == xattr_names::BRICK_FORMAT
}

fn check_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(FsError::InvalidArgument);
    }
    if name.len() > NAME_MAX {
        return Err(FsError::Range);
    }
    if is_protected(name) {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

/// Checks an attribute a client may set (name allowed, sizes in range).
pub(crate) fn check_settable(name: &str, value: &[u8]) -> FsResult<()> {
    check_name(name)?;
    if value.len() > VALUE_MAX {
        return Err(FsError::Range);
    }
    Ok(())
}

/// Reads the wanted attributes that exist (protected ones are skipped, and
/// so is any that cannot be read: lookup replies never fail on them).
pub(crate) fn read_wanted(t: XTarget<'_>, want: &[String]) -> XattrMap {
    let mut out = XattrMap::new();
    for name in want {
        if check_name(name).is_err() {
            continue;
        }
        if let Ok(Some(v)) = sys::get_xattr(t, name) {
            out.insert(name.clone(), v);
        }
    }
    out
}

impl Store {
    /// One attribute of `gfid`.
    pub(crate) fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>> {
        check_name(name)?;
        let inode = self.resolve(gfid)?;
        self.with_xtarget(&inode, |t| sys::get_xattr(t, name))?
            .ok_or(FsError::NoData)
    }

    /// The attribute names of `gfid`, without the brick's own.
    pub(crate) fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        let inode = self.resolve(gfid)?;
        let mut names = self.with_xtarget(&inode, sys::list_xattr)?;
        names.retain(|n| !is_protected(n));
        Ok(names)
    }

    /// Sets attributes on `gfid` (`flags`: XATTR_CREATE / XATTR_REPLACE).
    pub(crate) fn setxattr(&self, gfid: Gfid, xattrs: &XattrMap, flags: i32) -> FsResult<()> {
        let flags = u32::try_from(flags)
            .ok()
            .filter(|f| f & !(libc::XATTR_CREATE as u32 | libc::XATTR_REPLACE as u32) == 0)
            .map(XattrFlags::from_bits_retain)
            .ok_or(FsError::InvalidArgument)?;
        for (k, v) in xattrs {
            check_settable(k, v)?;
        }
        let inode = self.resolve(gfid)?;
        for (k, v) in xattrs {
            self.with_xtarget(&inode, |t| sys::set_xattr(t, k, v, flags))?;
        }
        Ok(())
    }

    /// Removes one attribute of `gfid`.
    pub(crate) fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        check_name(name)?;
        let inode = self.resolve(gfid)?;
        self.with_xtarget(&inode, |t| sys::remove_xattr(t, name))?;
        Ok(())
    }
}
