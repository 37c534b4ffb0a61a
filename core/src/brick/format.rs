//! The on-disk brick format, version 1: what a brick directory holds besides
//! the volume's own tree, and the helpers that build and parse gfid handles.
//! Everything here is stable: changing it needs a new `FORMAT_VERSION`.
//!
//! ```text
//! <brick>/                          the volume's root directory
//!   trusted.kiln.volume-id          16 raw bytes: the volume's UUID
//!   trusted.kiln.brick-format       1 byte: FORMAT_VERSION (1)
//!   trusted.kiln.gfid               16 bytes: 00000000-0000-0000-0000-000000000001
//!   <the volume's tree, under the same paths as clients see them>
//!     every file, directory, symlink and special file:
//!       trusted.kiln.gfid           16 raw bytes, the gfid the client chose
//!     directories (written by DHT): trusted.kiln.dht        hash ranges
//!     DHT link files:               trusted.kiln.dht.linkto target subvolume
//!     replicated volumes, any inode: trusted.kiln.afr.<vol>-client-<n>
//!                                   24 bytes: three big-endian i64 pending
//!                                   counters (data, metadata, entry) this
//!                                   copy holds against brick n of its
//!                                   replica set (itself included); non-zero
//!                                   = that brick missed an operation
//!   .kiln/                          internal (mode 0700), hidden from clients
//!     00/00/00000000-0000-0000-0000-000000000001 -> ../../..
//!     ab/cd/<gfid>                  non-directory: a HARD LINK to the inode
//!     ab/cd/<gfid> -> ../../xx/yy/<parent gfid>/<name>
//!                                   directory: a RELATIVE SYMLINK through the
//!                                   parent's handle to the directory's name
//!     unlink/<gfid>                 the handle of a file whose last name was
//!                                   removed while a client had it open; it
//!                                   goes at the last close (and at start-up)
//!     indices/xattrop/<gfid>        pending-heal index: an empty file per
//!                                   inode with a non-zero trusted.kiln.afr.*
//!                                   counter on this brick (made before the
//!                                   counter rises, removed after it is zero;
//!                                   an entry may outlive its inode)
//! ```
//!
//! `ab/cd` are the first four hex digits of the gfid (`Gfid::handle_rel_path`).
//! Because directory handles chain through their parents' handles down to
//! the root handle (`../../..`, i.e. the brick root), the kernel resolves a
//! directory handle with a single `open`; chains deeper than the kernel's
//! symlink limit (40) are resolved by reading the links one by one.
//!
//! Invariants kept by the brick server:
//! - a non-directory with gfid G has `st_nlink` = user-visible links + 1
//!   (its handle); the handle is removed when the last user-visible name is;
//! - a directory's handle is rewritten on rename and removed on rmdir;
//! - the brick root's `.kiln` is never a client-visible name.

use crate::gfid::Gfid;

/// The brick-format version this code writes and understands.
pub const FORMAT_VERSION: u8 = 1;

/// The internal directory at the brick root.
pub const INTERNAL_DIR: &str = ".kiln";

/// Under `.kiln/`: handles of unlinked files still open (see module doc).
pub const TRASH_DIR: &str = "unlink";

/// Under `.kiln/`: the directory of the brick's indices.
pub const INDEX_DIR: &str = "indices";

/// Under `.kiln/`: the pending-heal index (see module doc).
pub const INDEX_XATTROP_DIR: &str = "indices/xattrop";

/// Target of the root gfid's handle (`.kiln/00/00/<root>` -> brick root).
pub const ROOT_HANDLE_TARGET: &str = "../../..";

/// Mode of the internal directory and its handle fan-out directories.
pub const INTERNAL_DIR_MODE: u32 = 0o700;

/// The symlink target of a directory's handle: `../../xx/yy/<parent>/<name>`.
pub fn dir_handle_target(parent: Gfid, name: &[u8]) -> Vec<u8> {
    let mut t = b"../../".to_vec();
    t.extend_from_slice(parent.handle_rel_path().as_bytes());
    t.push(b'/');
    t.extend_from_slice(name);
    t
}

/// Parses a directory handle's target into (parent gfid, name); `None` for
/// the root handle or anything not in the format.
pub fn parse_dir_handle_target(target: &[u8]) -> Option<(Gfid, Vec<u8>)> {
    let rest = target.strip_prefix(b"../../")?;
    // "xx/yy/" + 36-char uuid + "/" + name
    if rest.len() < 6 + 36 + 2 {
        return None;
    }
    let (fan, rest) = rest.split_at(6);
    let (uuid, rest) = rest.split_at(36);
    let name = rest.strip_prefix(b"/")?;
    let gfid = Gfid::parse(std::str::from_utf8(uuid).ok()?)?;
    let s = gfid.to_string();
    if fan != format!("{}/{}/", &s[0..2], &s[2..4]).as_bytes() {
        return None;
    }
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return None;
    }
    Some((gfid, name.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_handle_roundtrip() {
        let p = Gfid::new_random();
        let t = dir_handle_target(p, b"some dir");
        let s = p.to_string();
        assert_eq!(
            t,
            format!("../../{}/{}/{}/some dir", &s[0..2], &s[2..4], s).into_bytes()
        );
        assert_eq!(parse_dir_handle_target(&t), Some((p, b"some dir".to_vec())));
        assert_eq!(parse_dir_handle_target(ROOT_HANDLE_TARGET.as_bytes()), None);
        assert_eq!(parse_dir_handle_target(b"../../aa/bb/x/y"), None);
        let mut bad = dir_handle_target(p, b"..");
        assert_eq!(parse_dir_handle_target(&bad), None);
        bad = dir_handle_target(p, b"a/b");
        assert_eq!(parse_dir_handle_target(&bad), None);
    }
}
