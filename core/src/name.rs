//! A validated directory-entry name: what may travel in an entry operation.
//! Rejects what would escape a brick (`..`, `/`) or confuse it (NUL, `.kiln`).

use crate::error::FsError;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// Longest name accepted, as on Linux (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// One path component, as raw bytes (Linux names need not be UTF-8).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Name(#[serde(with = "serde_bytes")] Vec<u8>);

impl Name {
    /// Validates a name: non-empty, at most NAME_MAX bytes, no `/` or NUL,
    /// not `.` or `..`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Name, FsError> {
        let b = bytes.into();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
            return Err(FsError::InvalidArgument);
        }
        if b.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        Ok(Name(b))
    }

    /// Re-checks a name that came off the wire (serde bypasses `new`).
    pub fn validate(&self) -> Result<(), FsError> {
        Name::new(self.0.clone()).map(|_| ())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As an OsStr, for filesystem calls.
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// Lossy text, for logs and CLI output.
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl TryFrom<&str> for Name {
    type Error = FsError;
    fn try_from(s: &str) -> Result<Name, FsError> {
        Name::new(s.as_bytes())
    }
}

impl TryFrom<&OsStr> for Name {
    type Error = FsError;
    fn try_from(s: &OsStr) -> Result<Name, FsError> {
        Name::new(s.as_bytes())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.lossy())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        assert!(Name::new("..").is_err());
        assert!(Name::new(".").is_err());
        assert!(Name::new("a/b").is_err());
        assert!(Name::new(b"a\0b".to_vec()).is_err());
        assert!(Name::new("").is_err());
        assert!(Name::new(vec![b'x'; 256]).is_err());
        assert!(Name::new("ok name").is_ok());
    }
}
