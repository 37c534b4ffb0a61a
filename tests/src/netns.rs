//! One named network namespace (`ip netns`): running commands in it,
//! opening sockets from inside it, finding and signalling its processes,
//! and cutting it off from the test network with iptables.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, Output, DEFAULT_TIMEOUT};
use crate::procs;

/// A network namespace created by the harness, named `NAME` under
/// `/run/netns`. Dropping the handle does not delete it: `TestNet` owns that.
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace (`ip netns add NAME`) with `lo` up.
    pub(crate) fn create(name: &str) -> Result<NetNs> {
        cmd::must("ip", &["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        cmd::must("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace (no check that it exists).
    pub fn existing(name: &str) -> NetNs {
        NetNs {
            name: name.to_string(),
        }
    }

    /// The namespace's name (`ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: the file that pins the namespace.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `/etc/netns/NAME`: files here are bind-mounted over `/etc` by
    /// `ip netns exec` (the harness puts a `hosts` file there).
    pub fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// A `Command` that runs `program` in this namespace via
    /// `ip netns exec NAME program` (each such command also gets its own
    /// mount namespace in which `/etc/netns/NAME/*` covers `/etc/*`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(&self.name).arg(program);
        c
    }

    /// Runs `argv` in the namespace with the default deadline.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        let (prog, args) = argv.split_first().context("empty argv")?;
        let mut c = self.command(prog);
        c.args(args);
        cmd::run(c, None, DEFAULT_TIMEOUT)
    }

    /// Runs a `sh -c` script in the namespace with the default deadline.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.run(&["sh", "-c", script])
    }

    /// Runs `f` on a fresh thread that has joined this network namespace
    /// (setns(2) changes only the calling thread's namespace). Sockets made
    /// there stay in this namespace wherever they are used afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file =
            File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid namespace fd; affects this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!("setns {}: {}", self.name, std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }

    /// Opens a TCP connection to `addr` from inside this namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connect {addr} from netns {}", self.name))
    }

    /// True if something accepts TCP connections on `addr` as seen from
    /// inside this namespace.
    pub fn port_open(&self, addr: SocketAddr) -> bool {
        self.connect(addr, Duration::from_millis(500)).is_ok()
    }

    /// Inode of the namespace, identifying it in `/proc/PID/ns/net`.
    pub fn inode(&self) -> Option<u64> {
        procs::netns_inode(&self.path())
    }

    /// Live processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        self.inode().map(procs::pids_in_netns).unwrap_or_default()
    }

    /// Sends `sig` to every process in the namespace.
    pub fn signal_all(&self, sig: i32) {
        for p in self.pids() {
            procs::signal(p, sig);
        }
    }

    /// SIGKILLs every process in the namespace and waits until they are gone.
    pub fn kill_all(&self) -> Result<()> {
        match self.inode() {
            Some(ino) => procs::kill_all_in_netns(ino, Duration::from_secs(20)),
            None => Ok(()),
        }
    }

    /// Drops every packet in or out of the namespace except on `lo`
    /// (iptables in the namespace's own tables, both directions), so
    /// established connections go silent as with a pulled cable.
    pub fn cut_off(&self) -> Result<()> {
        for rule in CUT_RULES {
            self.iptables("-I", rule)?;
        }
        Ok(())
    }

    /// Removes the rules `cut_off` added.
    pub fn heal(&self) -> Result<()> {
        for rule in CUT_RULES {
            self.iptables("-D", rule)?;
        }
        Ok(())
    }

    fn iptables(&self, op: &str, rule: &[&str]) -> Result<()> {
        let mut argv = vec!["iptables", "-w", op];
        argv.extend_from_slice(rule);
        self.run(&argv)?.ok().map(|_| ())
    }

    /// Kills its processes, deletes the namespace and its `/etc/netns` dir.
    /// Veth ends inside it vanish with it (and take their peers along).
    pub(crate) fn destroy(&self) -> Result<()> {
        let killed = self.kill_all();
        let mut errs = Vec::new();
        if let Err(e) = killed {
            errs.push(format!("{e:#}"));
        }
        if self.path().exists() {
            if let Err(e) = cmd::must("ip", &["netns", "del", &self.name]) {
                errs.push(format!("{e:#}"));
            }
        }
        let etc = self.etc_dir();
        if etc.exists() {
            if let Err(e) = std::fs::remove_dir_all(&etc) {
                errs.push(format!("remove {}: {e}", etc.display()));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("destroy netns {}: {}", self.name, errs.join("; "))
        }
    }
}

/// Rules of a cut-off: everything but loopback, both directions.
const CUT_RULES: [&[&str]; 2] = [
    &["INPUT", "!", "-i", "lo", "-j", "DROP"],
    &["OUTPUT", "!", "-o", "lo", "-j", "DROP"],
];
