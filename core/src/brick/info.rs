//! What `volume status detail` shows about a brick's disk: file system type,
//! device and mount options (from `/proc/self/mountinfo`), inode size (read
//! from an ext2/3/4 or XFS superblock when the device is readable), and
//! space and inode counts.

// `stat`/`statfs` field types differ between architectures: keep the casts.
#![allow(clippy::unnecessary_cast)]

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Disk facts about one brick directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickInfo {
    /// File system type (`ext4`, `xfs`, ...), or "N/A".
    pub fs_type: String,
    /// The mounted device (mount source), or "N/A".
    pub device: String,
    /// Mount options, as `/proc/mounts` lists them, or "N/A".
    pub mount_options: String,
    /// Inode size in bytes, or "N/A" when it cannot be read cheaply.
    pub inode_size: String,
    /// File system block size.
    pub block_size: u64,
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes free to unprivileged users.
    pub free_bytes: u64,
    /// Total inodes.
    pub inodes_total: u64,
    /// Free inodes.
    pub inodes_free: u64,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    mount_point: PathBuf,
    fs_type: String,
    source: String,
    options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            continue;
        }
        let mut options: Vec<&str> = pre[5].split(',').collect();
        for o in post[2].split(',') {
            if !options.contains(&o) {
                options.push(o);
            }
        }
        out.push(Mount {
            mount_point: PathBuf::from(unescape(pre[4])),
            fs_type: post[0].to_string(),
            source: unescape(post[1]),
            options: options.join(","),
        });
    }
    out
}

/// The mount holding `path`: the longest mount point that is a prefix of
/// it (the last one listed wins among equals, as it is on top).
fn mount_for<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

/// Reads the inode size from an ext2/3/4 or XFS superblock on `device`.
fn inode_size(device: &str, fs_type: &str) -> Option<u32> {
    if !device.starts_with('/') {
        return None;
    }
    let mut f = std::fs::File::open(device).ok()?;
    let mut sb = vec![0u8; 2048];
    f.read_exact(&mut sb).ok()?;
    match fs_type {
        "ext2" | "ext3" | "ext4" => {
            let s = &sb[1024..];
            if u16::from_le_bytes([s[0x38], s[0x39]]) != 0xEF53 {
                return None;
            }
            let rev = u32::from_le_bytes([s[0x4C], s[0x4D], s[0x4E], s[0x4F]]);
            if rev == 0 {
                return Some(128);
            }
            Some(u16::from_le_bytes([s[0x58], s[0x59]]) as u32)
        }
        "xfs" => {
            if &sb[0..4] != b"XFSB" {
                return None;
            }
            Some(u16::from_be_bytes([sb[104], sb[105]]) as u32)
        }
        _ => None,
    }
}

/// The name of a file system from its `statfs` magic, for when mountinfo
/// cannot be read.
fn fs_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext2/ext3/ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0x794C_7630 => "overlay",
        _ => "N/A",
    }
}

/// Disk facts for the brick at `path` (fields it cannot learn are "N/A" or 0).
pub fn brick_info(path: &Path) -> BrickInfo {
    let mut info = BrickInfo {
        fs_type: "N/A".into(),
        device: "N/A".into(),
        mount_options: "N/A".into(),
        inode_size: "N/A".into(),
        block_size: 0,
        total_bytes: 0,
        free_bytes: 0,
        inodes_total: 0,
        inodes_free: 0,
    };
    if let Ok(s) = rustix::fs::statvfs(path) {
        info.block_size = s.f_bsize;
        info.total_bytes = s.f_blocks.saturating_mul(s.f_frsize);
        info.free_bytes = s.f_bavail.saturating_mul(s.f_frsize);
        info.inodes_total = s.f_files;
        info.inodes_free = s.f_ffree;
    }
    if let Ok(s) = rustix::fs::statfs(path) {
        info.fs_type = fs_name(s.f_type as i64).to_string();
    }
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mounts = parse_mountinfo(&text);
        if let Some(m) = mount_for(&mounts, &canon) {
            info.fs_type = m.fs_type.clone();
            info.device = m.source.clone();
            info.mount_options = m.options.clone();
            if let Some(n) = inode_size(&m.source, &m.fs_type) {
                info.inode_size = n.to_string();
            }
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
30 22 8:2 / /export/brick\\0401 rw,noatime shared:2 - xfs /dev/sdb1 rw,attr2,inode64,noquota
31 22 0:5 / /proc rw,nosuid shared:3 - proc proc rw
";

    #[test]
    fn mountinfo_parsing() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/export/brick 1"));
        assert_eq!(m[1].options, "rw,noatime,attr2,inode64,noquota");
        let b = mount_for(&m, Path::new("/export/brick 1/b1")).unwrap();
        assert_eq!(
            (b.fs_type.as_str(), b.source.as_str()),
            ("xfs", "/dev/sdb1")
        );
        let r = mount_for(&m, Path::new("/export/brick1")).unwrap();
        assert_eq!(r.fs_type, "ext4");
    }

    #[test]
    fn inode_size_from_a_real_ext4_superblock() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        for want in [256u32, 512] {
            let st = std::process::Command::new("mkfs.ext4")
                .args(["-F", "-q", "-I", &want.to_string()])
                .arg(&img)
                .status()
                .expect("mkfs.ext4 (e2fsprogs) is needed by this test");
            assert!(st.success());
            let img = img.to_str().unwrap();
            assert_eq!(inode_size(img, "ext4"), Some(want));
            // Not what the superblock is: nothing rather than a wrong figure.
            assert_eq!(inode_size(img, "xfs"), None);
        }
        assert_eq!(inode_size("tmpfs", "ext4"), None);
    }

    #[test]
    fn info_of_a_real_dir() {
        let d = tempfile::tempdir().unwrap();
        let i = brick_info(d.path());
        assert!(i.total_bytes > 0 && i.inodes_total > 0, "{i:?}");
        assert_ne!(i.fs_type, "N/A");
        assert_ne!(i.mount_options, "N/A");
    }
}
