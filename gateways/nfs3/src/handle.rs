//! The NFS file handle: volume id (16 bytes) followed by the gfid (16 bytes).
//! Fixed size and opaque to clients; it names the same file on every server's
//! gateway and across restarts, so failover needs no handle translation.

use kiln_core::Gfid;

/// Bytes in a handle (also the NFSv2/MOUNT v1 `fhandle` size).
pub const FH_SIZE: usize = 32;

/// A decoded file handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle {
    /// The volume's id.
    pub volume: [u8; 16],
    /// The file's gfid.
    pub gfid: Gfid,
}

impl FileHandle {
    /// The handle of `gfid` in volume `volume`.
    pub fn new(volume: [u8; 16], gfid: Gfid) -> FileHandle {
        FileHandle { volume, gfid }
    }

    /// Parses a handle; `None` unless exactly 32 bytes with a non-null gfid.
    pub fn decode(b: &[u8]) -> Option<FileHandle> {
        if b.len() != FH_SIZE {
            return None;
        }
        let mut volume = [0u8; 16];
        volume.copy_from_slice(&b[..16]);
        let gfid = Gfid::from_slice(&b[16..])?;
        if gfid.is_null() {
            return None;
        }
        Some(FileHandle { volume, gfid })
    }

    /// The 32 wire bytes.
    pub fn encode(&self) -> [u8; FH_SIZE] {
        let mut b = [0u8; FH_SIZE];
        b[..16].copy_from_slice(&self.volume);
        b[16..].copy_from_slice(&self.gfid.0);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = FileHandle::new([7; 16], Gfid::new_random());
        assert_eq!(FileHandle::decode(&h.encode()), Some(h));
        assert_eq!(FileHandle::decode(&h.encode()[..31]), None);
        assert_eq!(
            FileHandle::decode(&[7; 32][..16].repeat(2)[..]).map(|h| h.volume),
            Some([7; 16])
        );
        let mut null = [0u8; 32];
        null[..16].copy_from_slice(&[1; 16]);
        assert_eq!(FileHandle::decode(&null), None);
    }
}
