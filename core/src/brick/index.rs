//! The pending-heal index: `.kiln/indices/xattrop/<gfid>`, one empty file
//! per inode that has a non-zero replicate changelog counter on this brick
//! (kept by `xattrop`), so the heal daemon finds what to heal without
//! crawling the whole brick.

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::format::{INDEX_DIR, INDEX_XATTROP_DIR, INTERNAL_DIR_MODE};
use super::store::Store;
use crate::error::FsResult;
use crate::gfid::Gfid;

/// Most gfids one `IndexList` answer carries.
pub(crate) const LIST_MAX: u32 = 4096;

fn entry_rel(gfid: Gfid) -> String {
    format!("{INDEX_XATTROP_DIR}/{gfid}")
}

/// Creates `.kiln/indices/` and `.kiln/indices/xattrop/` if missing.
fn make_dirs(store: &Store) -> Result<(), Errno> {
    let mode = Mode::from_raw_mode(INTERNAL_DIR_MODE);
    for dir in [INDEX_DIR, INDEX_XATTROP_DIR] {
        match rustix::fs::mkdirat(&store.kiln, dir, mode) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Lists `gfid` as needing heal.
pub(crate) fn mark(store: &Store, gfid: Gfid) -> Result<(), Errno> {
    let rel = entry_rel(gfid);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    match rustix::fs::openat(&store.kiln, rel.as_str(), flags, mode) {
        Ok(_) => Ok(()),
        Err(Errno::NOENT) => {
            make_dirs(store)?;
            rustix::fs::openat(&store.kiln, rel.as_str(), flags, mode).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Takes `gfid` off the index.
pub(crate) fn unmark(store: &Store, gfid: Gfid) -> Result<(), Errno> {
    match rustix::fs::unlinkat(&store.kiln, entry_rel(gfid).as_str(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The indexed gfids greater than `after`, in order, at most `max` (capped
/// at `LIST_MAX`). Names that are not gfids are skipped; entries of inodes
/// that no longer exist on this brick are removed on the way.
pub(crate) fn list(store: &Store, after: Option<Gfid>, max: u32) -> FsResult<Vec<Gfid>> {
    let dir = match rustix::fs::openat(
        &store.kiln,
        INDEX_XATTROP_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut found = Vec::new();
    let mut d = rustix::fs::Dir::read_from(&dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let Ok(s) = std::str::from_utf8(e.file_name().to_bytes()) else {
            continue;
        };
        if let Some(g) = Gfid::parse(s) {
            if after.is_none_or(|a| g > a) {
                found.push(g);
            }
        }
    }
    found.sort_unstable();
    let want = max.min(LIST_MAX) as usize;
    let mut out = Vec::with_capacity(want.min(found.len()));
    for g in found {
        if out.len() >= want {
            break;
        }
        match store.resolve(g) {
            Err(crate::error::FsError::Stale) => {
                if let Err(e) = unmark(store, g) {
                    tracing::warn!(gfid = %g, "cannot drop a stale heal-index entry: {e}");
                }
            }
            _ => out.push(g),
        }
    }
    Ok(out)
}
