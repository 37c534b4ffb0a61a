//! Looking at bricks directly on disk, to check where DHT put things:
//! a walk of a brick's tree (leaving out `.kiln/`), and the `trusted.kiln.*`
//! xattrs that mark gfids and link files.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_core::xattr_names;

/// What kind of inode an entry on a brick is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file holding data.
    File,
    /// A DHT link file: regular, empty, mode exactly 01000, with a linkto xattr.
    LinkFile,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (fifo, device, socket).
    Other,
}

/// One entry found on a brick.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the brick root (as the mount shows it).
    pub rel: PathBuf,
    /// Its kind.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode` (with type bits).
    pub mode: u32,
    /// Hard-link count.
    pub nlink: u64,
    /// The `trusted.kiln.gfid` value, if present.
    pub gfid: Option<Vec<u8>>,
    /// The `trusted.kiln.dht.linkto` value, if present.
    pub linkto: Option<Vec<u8>>,
}

/// Reads one extended attribute without following symlinks; `Ok(None)` if
/// the file has no such attribute.
pub fn get_xattr(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length passed.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

/// True if this metadata and linkto value make a DHT link file.
pub fn is_link_file(meta: &std::fs::Metadata, linkto: Option<&[u8]>) -> bool {
    meta.file_type().is_file()
        && meta.len() == 0
        && meta.permissions().mode() & 0o7777 == 0o1000
        && linkto.is_some()
}

/// Describes one path on a brick (`rel` relative to `brick`); `None` if it
/// does not exist there.
pub fn entry(brick: &Path, rel: &Path) -> Option<Entry> {
    let full = brick.join(rel);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    let gfid = get_xattr(&full, xattr_names::GFID).ok().flatten();
    let linkto = get_xattr(&full, xattr_names::DHT_LINKTO).ok().flatten();
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if is_link_file(&meta, linkto.as_deref()) {
        Kind::LinkFile
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    Some(Entry {
        rel: rel.to_path_buf(),
        kind,
        size: meta.len(),
        mode: meta.mode(),
        nlink: meta.nlink(),
        gfid,
        linkto,
    })
}

/// Every entry under a brick root, depth first, without the root itself
/// and without the internal `.kiln/` directory.
pub fn scan(brick: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    walk(brick, Path::new(""), &mut out);
    out
}

fn walk(brick: &Path, rel: &Path, out: &mut Vec<Entry>) {
    let Ok(dir) = std::fs::read_dir(brick.join(rel)) else {
        return;
    };
    let mut names: Vec<_> = dir.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        if rel.as_os_str().is_empty() && name == ".kiln" {
            continue;
        }
        let child = rel.join(&name);
        if let Some(e) = entry(brick, &child) {
            let is_dir = e.kind == Kind::Dir;
            out.push(e);
            if is_dir {
                walk(brick, &child, out);
            }
        }
    }
}

/// Where `rel` exists across `bricks`: (brick index, entry) for each brick
/// that has it.
pub fn locate(bricks: &[PathBuf], rel: &Path) -> Vec<(usize, Entry)> {
    bricks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| entry(b, rel).map(|e| (i, e)))
        .collect()
}

/// Index of the one brick holding `rel` as a data file (not a link file);
/// `None` unless exactly one brick does.
pub fn data_brick(bricks: &[PathBuf], rel: &Path) -> Option<usize> {
    let holders: Vec<usize> = locate(bricks, rel)
        .into_iter()
        .filter(|(_, e)| e.kind == Kind::File)
        .map(|(i, _)| i)
        .collect();
    match holders.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}
