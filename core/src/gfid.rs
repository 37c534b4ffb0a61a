//! The gfid: a 128-bit id naming one file or directory, identical on every
//! brick that holds a copy. Clients choose it at create time.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A file's global id (a random v4 UUID; the root directory is `00..01`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gfid(pub [u8; 16]);

impl Gfid {
    /// The gfid of every volume's root directory.
    pub const ROOT: Gfid = Gfid([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    /// The all-zero gfid, never given to a file ("no gfid").
    pub const NULL: Gfid = Gfid([0; 16]);

    /// A fresh random gfid.
    pub fn new_random() -> Gfid {
        Gfid(*uuid::Uuid::new_v4().as_bytes())
    }

    /// Parses the canonical hyphenated or plain hex form.
    pub fn parse(s: &str) -> Option<Gfid> {
        uuid::Uuid::parse_str(s).ok().map(|u| Gfid(*u.as_bytes()))
    }

    /// Builds a gfid from raw bytes (an xattr value); `None` if not 16 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Gfid> {
        <[u8; 16]>::try_from(b).ok().map(Gfid)
    }

    /// True for the root directory's gfid.
    pub fn is_root(&self) -> bool {
        *self == Gfid::ROOT
    }

    /// True for the all-zero gfid.
    pub fn is_null(&self) -> bool {
        *self == Gfid::NULL
    }

    /// The 64-bit inode number gateways show for this gfid (root is 1).
    pub fn ino(&self) -> u64 {
        if self.is_root() {
            return 1;
        }
        let hi = u64::from_be_bytes(self.0[0..8].try_into().unwrap_or([0; 8]));
        let lo = u64::from_be_bytes(self.0[8..16].try_into().unwrap_or([0; 8]));
        let ino = hi ^ lo;
        if ino <= 1 {
            ino + 2
        } else {
            ino
        }
    }

    /// The relative path of this gfid's handle under a brick's `.kiln/` dir:
    /// `ab/cd/<uuid>`.
    pub fn handle_rel_path(&self) -> String {
        let s = self.to_string();
        format!("{}/{}/{}", &s[0..2], &s[2..4], s)
    }
}

impl fmt::Display for Gfid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", uuid::Uuid::from_bytes(self.0).hyphenated())
    }
}

impl fmt::Debug for Gfid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gfid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_parse() {
        assert_eq!(
            Gfid::ROOT.to_string(),
            "00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(Gfid::parse(&Gfid::ROOT.to_string()), Some(Gfid::ROOT));
        assert_eq!(Gfid::ROOT.ino(), 1);
        let g = Gfid::new_random();
        assert!(g.ino() > 1);
        assert_eq!(g.handle_rel_path().len(), 2 + 1 + 2 + 1 + 36);
    }
}
