//! Who is calling and what they may do, as a kernel NFS server decides it:
//! AUTH_SYS ids (AUTH_NONE and squashed root become 65534), owner / group /
//! other permission bits with the root bypass, sticky directories, and the
//! ACCESS procedure's answer computed from mode, uid and gid.

use kiln_core::client::Caller;
use kiln_core::Iatt;
use kiln_portmap::Credential;

use crate::types::access3;

/// The anonymous (nobody) id used for AUTH_NONE and squashed root.
pub const ANON_ID: u32 = 65534;

/// Read permission bit.
pub const MAY_READ: u32 = 4;
/// Write permission bit.
pub const MAY_WRITE: u32 = 2;
/// Execute / search permission bit.
pub const MAY_EXEC: u32 = 1;

/// The caller's effective ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub gids: Vec<u32>,
}

impl Identity {
    /// The identity of a call's credential; with `root_squash`, uid 0 and
    /// gid 0 become 65534.
    pub fn from_cred(cred: &Credential, root_squash: bool) -> Identity {
        let mut id = match cred {
            Credential::Sys(s) => Identity {
                uid: s.uid,
                gid: s.gid,
                gids: s.gids.clone(),
            },
            Credential::None => Identity {
                uid: ANON_ID,
                gid: ANON_ID,
                gids: Vec::new(),
            },
        };
        if root_squash {
            if id.uid == 0 {
                id.uid = ANON_ID;
            }
            if id.gid == 0 {
                id.gid = ANON_ID;
            }
            id.gids.retain(|g| *g != 0);
        }
        id
    }

    /// The superuser (after squashing).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Primary or supplementary member of `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }

    /// Owner of the inode.
    pub fn owns(&self, a: &Iatt) -> bool {
        self.uid == a.uid
    }

    /// As the volume's `Caller` for new inodes, with group `gid`.
    pub fn caller(&self, gid: u32) -> Caller {
        Caller {
            uid: self.uid,
            gid,
            pid: 0,
        }
    }

    /// True when every bit of `want` (MAY_*) is granted on `a`.
    pub fn may(&self, a: &Iatt, want: u32) -> bool {
        if self.is_root() {
            // Root may do anything, except execute a file no one may execute.
            return want & MAY_EXEC == 0 || a.is_dir() || a.perm & 0o111 != 0;
        }
        let bits = if self.owns(a) {
            a.perm >> 6
        } else if self.in_group(a.gid) {
            a.perm >> 3
        } else {
            a.perm
        } & 7;
        bits & want == want
    }

    /// READ of file data: read permission, or execute (a client may page in
    /// a binary it may only execute), or ownership (the file was opened
    /// before a chmod).
    pub fn may_read_data(&self, a: &Iatt) -> bool {
        self.owns(a) || self.may(a, MAY_READ) || self.may(a, MAY_EXEC)
    }

    /// WRITE of file data: write permission or ownership.
    pub fn may_write_data(&self, a: &Iatt) -> bool {
        self.owns(a) || self.may(a, MAY_WRITE)
    }

    /// Removing or renaming away `victim` from `dir` under the sticky bit.
    pub fn may_unlink_sticky(&self, dir: &Iatt, victim: &Iatt) -> bool {
        dir.perm & libc::S_ISVTX == 0 || self.is_root() || self.owns(dir) || self.owns(victim)
    }

    /// The ACCESS3 bits granted among `asked`.
    pub fn access_bits(&self, a: &Iatt, asked: u32, read_only: bool) -> u32 {
        let mut out = 0;
        if asked & access3::READ != 0 && self.may(a, MAY_READ) {
            out |= access3::READ;
        }
        if a.is_dir() {
            if asked & access3::LOOKUP != 0 && self.may(a, MAY_EXEC) {
                out |= access3::LOOKUP;
            }
            let w = !read_only && self.may(a, MAY_WRITE | MAY_EXEC);
            for bit in [access3::MODIFY, access3::EXTEND, access3::DELETE] {
                if asked & bit != 0 && w {
                    out |= bit;
                }
            }
        } else {
            let w = !read_only && self.may(a, MAY_WRITE);
            for bit in [access3::MODIFY, access3::EXTEND] {
                if asked & bit != 0 && w {
                    out |= bit;
                }
            }
            if asked & access3::EXECUTE != 0 && self.may(a, MAY_EXEC) {
                out |= access3::EXECUTE;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::iatt::{FileKind, Timespec};
    use kiln_core::Gfid;
    use kiln_portmap::rpc::AuthSys;

    fn file(perm: u32, uid: u32, gid: u32) -> Iatt {
        Iatt {
            gfid: Gfid::new_random(),
            kind: FileKind::Regular,
            perm,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
        }
    }

    fn sys(uid: u32, gid: u32, gids: Vec<u32>) -> Credential {
        Credential::Sys(AuthSys {
            stamp: 0,
            machinename: b"h".to_vec(),
            uid,
            gid,
            gids,
        })
    }

    #[test]
    fn owner_group_other_and_root() {
        let f = file(0o640, 1000, 100);
        let owner = Identity::from_cred(&sys(1000, 1000, vec![]), false);
        let member = Identity::from_cred(&sys(2000, 2000, vec![100]), false);
        let other = Identity::from_cred(&sys(3000, 3000, vec![]), false);
        let root = Identity::from_cred(&sys(0, 0, vec![]), false);
        let squashed = Identity::from_cred(&sys(0, 0, vec![0, 5]), true);
        assert!(owner.may(&f, MAY_READ | MAY_WRITE));
        assert!(member.may(&f, MAY_READ) && !member.may(&f, MAY_WRITE));
        assert!(!other.may(&f, MAY_READ));
        assert!(root.may(&f, MAY_READ | MAY_WRITE) && !root.may(&f, MAY_EXEC));
        assert_eq!(
            (squashed.uid, squashed.gid, squashed.gids.clone()),
            (ANON_ID, ANON_ID, vec![5])
        );
        assert!(!squashed.may(&f, MAY_READ));
        let anon = Identity::from_cred(&Credential::None, false);
        assert_eq!(anon.uid, ANON_ID);
        assert_eq!(
            member.access_bits(&f, 0x3f, false),
            access3::READ,
            "group member: read only"
        );
        assert_eq!(owner.access_bits(&f, 0x3f, true), access3::READ);
    }
}
