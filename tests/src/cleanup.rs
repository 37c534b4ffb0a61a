//! Leftovers of crashed runs, and the slots that bound how many clusters
//! run at once on this (2-core) machine.
//!
//! Every namespace, `/etc/netns` dir and scratch dir the harness makes is
//! named `kt<pid>c<n>...` after the process that made it; once that process
//! is gone, `cleanup_stale` removes them, whoever calls it.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::net::PREFIX;
use crate::netns::NetNs;

/// Where clusters put their scratch dirs: `$KT_TMPDIR` or `/tmp`. It must be
/// a real disk (bricks need trusted xattrs), not tmpfs.
pub fn base_dir() -> PathBuf {
    std::env::var_os("KT_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The process id in a harness name (`kt4242c0-n1` -> 4242).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('c')?;
    let (counter, _) = rest.split_once('-').unwrap_or((rest, ""));
    counter.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn is_stale(name: &str) -> bool {
    match owner_pid(name) {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Removes what earlier harness processes left behind when they died
/// without cleaning up: their namespaces (after killing every process in
/// them, which also ends their FUSE mounts), `/etc/netns` entries and
/// scratch dirs. Returns the names removed. Safe to run concurrently with
/// live harnesses: it only touches names whose owner process is gone.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list_names(Path::new("/run/netns")) {
        if is_stale(&name) {
            let ns = NetNs::existing(&name);
            if let Err(e) = ns.destroy() {
                eprintln!("kiln-tests: stale {name}: {e:#}");
            }
            removed.push(name);
        }
    }
    for name in list_names(Path::new("/etc/netns")) {
        if is_stale(&name) {
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
            if !removed.contains(&name) {
                removed.push(name);
            }
        }
    }
    let base = base_dir();
    for name in list_names(&base) {
        if is_stale(&name) {
            let dir = base.join(&name);
            lazy_umount_under(&dir);
            if std::env::var_os("KT_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            removed.push(dir.display().to_string());
        }
    }
    removed
}

fn list_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Lazily unmounts (root mount namespace) every mount at or below `dir`,
/// deepest first. Mounts inside the harness's own mount namespaces are not
/// visible here; they end with the namespace.
pub fn lazy_umount_under(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut targets: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .filter(|t| Path::new(t).starts_with(dir))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = crate::cmd::must("umount", &["-l", &t]);
    }
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A held cluster slot; released on drop (closing the file drops the lock).
#[derive(Debug)]
pub struct Slot {
    _file: File,
    /// Which slot (0-based).
    pub index: usize,
}

/// Waits for one of `$KT_PARALLEL` (default 1) cluster slots, shared by all
/// test processes on the machine through flock(2) on files in
/// `/run/kiln-tests/`. Multi-server tests thus run one at a time by default
/// whatever the test runner's thread count, while unit tests stay parallel.
pub fn acquire_slot(timeout: Duration) -> Result<Slot> {
    let n: usize = std::env::var("KT_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let dir = Path::new("/run/kiln-tests");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let start = Instant::now();
    loop {
        for index in 0..n {
            let path = dir.join(format!("slot-{index}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Slot { _file: file, index });
            }
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "no cluster slot free after {timeout:?} (KT_PARALLEL={n})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_harness_names_only() {
        assert_eq!(owner_pid("kt4242c0-n1"), Some(4242));
        assert_eq!(owner_pid("kt4242c17"), Some(4242));
        assert_eq!(owner_pid("kt4242c17-sw"), Some(4242));
        assert_eq!(owner_pid("ktx-n1"), None);
        assert_eq!(owner_pid("kitten"), None);
        assert_eq!(owner_pid("kt12cx-n1"), None);
    }

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
