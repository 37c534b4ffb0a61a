//! Mounting: puts a `KilnFs` on a mount point and serves it on fuser
//! threads until the mount goes away. As root it calls mount(2) itself
//! (type `fuse.kiln`, source `HOST:/VOL`); otherwise `fusermount3` does.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{Config, Session, SessionACL};
use kiln_core::client::Volume;
use kiln_core::Iatt;

use crate::fs::{FsConfig, FsStats, KilnFs};

/// Generic mount flags (`-o ro,noatime,...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFlags {
    /// Read-only mount.
    pub read_only: bool,
    /// Honour set-user-ID bits (default: nosuid).
    pub suid: bool,
    /// Allow device files (default: nodev).
    pub dev: bool,
    /// Forbid execution.
    pub noexec: bool,
    /// Do not update access times.
    pub noatime: bool,
    /// Do not update directory access times.
    pub nodiratime: bool,
    /// Synchronous writes.
    pub sync: bool,
    /// Synchronous directory changes.
    pub dirsync: bool,
}

impl KernelFlags {
    fn ms_flags(&self) -> libc::c_ulong {
        let mut f = 0;
        for (on, bit) in [
            (self.read_only, libc::MS_RDONLY),
            (!self.suid, libc::MS_NOSUID),
            (!self.dev, libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
            (self.noatime, libc::MS_NOATIME),
            (self.nodiratime, libc::MS_NODIRATIME),
            (self.sync, libc::MS_SYNCHRONOUS),
            (self.dirsync, libc::MS_DIRSYNC),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// The same flags as `fusermount3 -o` words.
    fn words(&self) -> Vec<&'static str> {
        let mut o = vec![if self.read_only { "ro" } else { "rw" }];
        for (on, word) in [
            (!self.suid, "nosuid"),
            (!self.dev, "nodev"),
            (self.noexec, "noexec"),
            (self.noatime, "noatime"),
            (self.nodiratime, "nodiratime"),
            (self.sync, "sync"),
            (self.dirsync, "dirsync"),
        ] {
            if on {
                o.push(word);
            }
        }
        o
    }
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The mount's source as `mount` shows it (`HOST:/VOL`).
    pub fsname: String,
    /// Let every user (not only the mounter) use the mount.
    pub allow_other: bool,
    /// Let the kernel check permissions from the file modes.
    pub default_permissions: bool,
    /// Generic mount flags.
    pub flags: KernelFlags,
    /// File system behaviour.
    pub fs: FsConfig,
    /// Threads reading requests from the kernel.
    pub threads: usize,
    /// Kernel read-ahead to set on the mount's device (KiB; 0 = leave).
    pub read_ahead_kb: u32,
}

impl Default for MountConfig {
    fn default() -> MountConfig {
        MountConfig {
            fsname: "kiln".into(),
            allow_other: true,
            default_permissions: true,
            flags: KernelFlags::default(),
            fs: FsConfig::default(),
            threads: 2,
            read_ahead_kb: 4096,
        }
    }
}

/// How long an ended session waits for its last requests and background
/// writes (longer than the default ping-timeout, so a brick that went
/// silent fails them rather than the exit dropping them).
const FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A live FUSE mount served by background threads.
pub struct FuseMount {
    mountpoint: PathBuf,
    thread: Option<JoinHandle<io::Result<()>>>,
    stats: FsStats,
}

impl FuseMount {
    /// Mounts `vol` on `mountpoint`; requests run on `rt`. Returns once the
    /// kernel has initialised the mount. `root`: the root's attributes if
    /// known.
    pub fn mount(
        vol: Arc<Volume>,
        rt: tokio::runtime::Handle,
        root: Option<&Iatt>,
        mountpoint: &Path,
        cfg: &MountConfig,
    ) -> io::Result<FuseMount> {
        let mountpoint = mountpoint.canonicalize()?;
        let fs = KilnFs::new(vol, rt, cfg.fs.clone(), root);
        let stats = fs.stats();
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let mut cfg = cfg.clone();
        if cfg.allow_other && !root_user && !user_allow_other() {
            tracing::warn!(
                "allow_other needs user_allow_other in /etc/fuse.conf: only this user can use the mount"
            );
            cfg.allow_other = false;
        }
        let cfg = &cfg;
        let acl = if cfg.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        let mut config = Config::default();
        config.acl = acl;
        config.n_threads = Some(cfg.threads.max(1));
        config.clone_fd = cfg.threads > 1;
        let fd = if root_user {
            mount_direct(&mountpoint, cfg)?
        } else {
            let mut words = cfg.flags.words();
            if cfg.default_permissions {
                words.push("default_permissions");
            }
            if cfg.allow_other {
                words.push("allow_other");
            }
            let opts = format!(
                "{},fsname={},subtype=kiln",
                words.join(","),
                cfg.fsname.replace([',', '\\'], "_")
            );
            crate::fusermount::mount(&mountpoint, &opts)?
        };
        let session = Session::from_fd(fs, fd, acl, config)?;
        let thread = std::thread::Builder::new()
            .name("kiln-fuse".into())
            .spawn(move || session.run())?;
        if cfg.read_ahead_kb > 0 {
            if let Err(e) = set_read_ahead(&mountpoint, cfg.read_ahead_kb) {
                tracing::debug!(error = %e, "could not set the mount's read-ahead");
            }
        }
        tracing::info!(mountpoint = %mountpoint.display(), fsname = %cfg.fsname, "mounted");
        Ok(FuseMount {
            mountpoint,
            thread: Some(thread),
            stats,
        })
    }

    /// Where the volume is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counts of inodes and handles the mount holds.
    pub fn stats(&self) -> FsStats {
        self.stats.clone()
    }

    /// Unmounts (lazily if busy) and waits for the serving threads to end.
    pub fn unmount(mut self) -> io::Result<()> {
        unmount(&self.mountpoint)?;
        self.join()
    }

    /// Waits until the mount goes away (`umount` by anyone).
    pub fn wait(mut self) -> io::Result<()> {
        self.join()
    }

    fn join(&mut self) -> io::Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let r = t
            .join()
            .map_err(|_| io::Error::other("FUSE session thread panicked"))?;
        if !self.stats.finish(FINISH_LIMIT) {
            tracing::error!(
                "requests were still running {} s after the unmount; giving up on them",
                FINISH_LIMIT.as_secs()
            );
        }
        r
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = unmount(&self.mountpoint) {
                tracing::warn!(error = %e, "unmount failed");
            }
            let _ = self.join();
        }
    }
}

/// True if /etc/fuse.conf lets unprivileged users mount with allow_other.
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|c| c.lines().any(|l| l.trim() == "user_allow_other"))
        .unwrap_or(false)
}

/// Unmounts `mountpoint`; detaches it lazily when busy.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let c = cpath(mountpoint)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EBUSY) => {
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        Some(libc::EINVAL) => Ok(()), // not (or no longer) mounted
        Some(libc::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status()?;
            if st.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("fusermount3 -u failed: {st}")))
            }
        }
        _ => Err(e),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Opens /dev/fuse and mounts it with mount(2) (needs CAP_SYS_ADMIN).
fn mount_direct(mountpoint: &Path, cfg: &MountConfig) -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/fuse: {e}")))?;
    let rootmode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut opts = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        rootmode,
        uid,
        gid
    );
    if cfg.default_permissions {
        opts.push_str(",default_permissions");
    }
    if cfg.allow_other {
        opts.push_str(",allow_other");
    }
    let source = CString::new(cfg.fsname.replace('\0', ""))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad fsname"))?;
    let target = cpath(mountpoint)?;
    let copts = CString::new(opts.clone())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad mount options"))?;
    let flags = cfg.flags.ms_flags();
    for fstype in ["fuse.kiln", "fuse"] {
        let t = CString::new(fstype).map_err(io::Error::other)?;
        // SAFETY: all pointers are valid NUL-terminated strings that outlive
        // the call.
        let r = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                t.as_ptr(),
                flags,
                copts.as_ptr().cast(),
            )
        };
        if r == 0 {
            return Ok(OwnedFd::from(dev));
        }
        let e = io::Error::last_os_error();
        // Kernels without subtype support refuse "fuse.kiln" with ENODEV.
        if fstype == "fuse.kiln" && e.raw_os_error() == Some(libc::ENODEV) {
            continue;
        }
        return Err(io::Error::new(
            e.kind(),
            format!("mount {} on {}: {e}", cfg.fsname, mountpoint.display()),
        ));
    }
    Err(io::Error::other("mount: no FUSE file system type"))
}

/// Sets the kernel read-ahead of the mount's backing device info (the
/// default, 128 KiB, leaves sequential reads waiting on round trips).
fn set_read_ahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = mountpoint.as_os_str().as_bytes();
    // Fields: id parent major:minor root mountpoint ...; the last match is
    // the topmost mount.
    let dev = info
        .lines()
        .rev()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let mp = f.nth(1)?;
            (unescape_mountinfo(mp) == want).then(|| dev.to_string())
        })
        .next()
        .ok_or_else(|| io::Error::other("mount not in /proc/self/mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
    }

    #[test]
    fn default_flags_are_nosuid_nodev() {
        let f = KernelFlags::default().ms_flags();
        assert_eq!(f, libc::MS_NOSUID | libc::MS_NODEV);
        let ro = KernelFlags {
            read_only: true,
            ..Default::default()
        };
        assert_ne!(ro.ms_flags() & libc::MS_RDONLY, 0);
    }
}
