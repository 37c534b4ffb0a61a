//! Process inspection through `/proc`: which processes live in a network
//! namespace, their command lines, their listening TCP ports, and signalling
//! them and waiting until they are gone.

use anyhow::{bail, Result};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmd::poll_interval;

/// The inode of a network namespace file (`/run/netns/NAME` or
/// `/proc/PID/ns/net`), which identifies the namespace.
pub fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Every live (non-zombie) process whose network namespace has inode `ino`.
pub fn pids_in_netns(ino: u64) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // Zombies have no namespaces left: the readlink fails and they are skipped.
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if link.to_string_lossy() == format!("net:[{ino}]") && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// True if the process has exited but was not reaped yet.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// True if `pid` is a live process (not a zombie).
pub fn is_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// The process's command line, arguments joined with spaces ("" if gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits until none of `pids` is alive, at most `timeout`.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("processes still alive after {timeout:?}: {left:?}");
        }
        std::thread::sleep(poll_interval(start.elapsed()));
    }
}

/// SIGKILLs every process in the namespace with inode `ino` (repeating, so
/// children forked meanwhile go too) until none is left.
pub fn kill_all_in_netns(ino: u64, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let pids = pids_in_netns(ino);
        if pids.is_empty() {
            return Ok(());
        }
        for p in &pids {
            // A stopped process still dies on SIGKILL; SIGCONT is for politeness.
            signal(*p, libc::SIGKILL);
        }
        if start.elapsed() >= timeout {
            bail!("processes survive SIGKILL after {timeout:?}: {pids:?}");
        }
        std::thread::sleep(poll_interval(start.elapsed()));
    }
}

/// One listening TCP socket of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Local port.
    pub port: u16,
    /// The process that holds the socket.
    pub pid: i32,
    /// That process's command line.
    pub cmdline: String,
}

/// Listening TCP sockets (IPv4 and IPv6) of the given processes. Reads the
/// socket tables of the processes' own network namespace, then maps socket
/// inodes to the processes through their open file descriptors.
pub fn listeners(pids: &[i32]) -> Vec<Listener> {
    let Some(first) = pids.first() else {
        return Vec::new();
    };
    // inode -> port, for sockets in LISTEN state (st == 0A).
    let mut by_inode = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{first}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                by_inode.insert(inode, port);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(port) = by_inode.get(&inode) {
                if seen.insert((*port, *pid)) {
                    out.push(Listener {
                        port: *port,
                        pid: *pid,
                        cmdline: cmdline(*pid),
                    });
                }
            }
        }
    }
    out.sort_by_key(|l| (l.port, l.pid));
    out
}
