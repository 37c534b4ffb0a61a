//! The client host: its network namespace plus one long-lived mount
//! namespace that every client command shares, so FUSE mounts made there
//! stay reachable.
//!
//! Why: `ip netns exec` makes a fresh mount namespace for each command (to
//! bind `/etc/netns/NS/hosts` over `/etc/hosts`), so a FUSE mount made by one
//! `ip netns exec kiln mount ...` is invisible to the next command and to the
//! test. The harness therefore starts one *holder* process (`sleep`) with
//! `ip netns exec`, and runs every client command with
//! `nsenter -t HOLDER -m -n`: same network, same mount namespace, same
//! `/etc/hosts`. The test process reaches the mounted files through
//! `/proc/HOLDER/root/PATH` with plain `std::fs`, since that path resolves
//! in the holder's mount namespace.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::cmd::{self, Output, DEFAULT_TIMEOUT};
use crate::net::Host;
use crate::netns::NetNs;
use crate::procs;
use crate::wait::wait_until;

/// The client host of a test network.
#[derive(Debug)]
pub struct Client {
    host: Host,
    dir: PathBuf,
    kiln: Option<PathBuf>,
    holder: Mutex<Child>,
    holder_pid: i32,
    seq: AtomicU32,
}

impl Client {
    /// Starts the holder process in `host`'s namespace. `dir` is where
    /// mount points go; `kiln` is the binary `kiln`/`mount` calls use.
    pub fn start(host: &Host, dir: &Path, kiln: Option<PathBuf>) -> Result<Client> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut c = host.ns.command("sleep");
        c.arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().context("spawn client namespace holder")?;
        let holder_pid = child.id() as i32;
        let client = Client {
            host: host.clone(),
            dir: dir.to_path_buf(),
            kiln,
            holder: Mutex::new(child),
            holder_pid,
            seq: AtomicU32::new(0),
        };
        // `ip netns exec` joins the namespaces, then execs sleep in place.
        let ino = host.ns.inode().context("client netns has no inode")?;
        wait_until(
            "client holder in its namespace",
            Duration::from_secs(10),
            || {
                procs::cmdline(holder_pid).starts_with("sleep")
                    && std::fs::read_link(format!("/proc/{holder_pid}/ns/net"))
                        .map(|l| l.to_string_lossy() == format!("net:[{ino}]"))
                        .unwrap_or(false)
            },
        )?;
        Ok(client)
    }

    /// Host name (`client`).
    pub fn name(&self) -> &str {
        &self.host.name
    }

    /// Address on the test network.
    pub fn addr(&self) -> std::net::Ipv4Addr {
        self.host.addr
    }

    /// The client's network namespace.
    pub fn ns(&self) -> &NetNs {
        &self.host.ns
    }

    /// Pid of the process whose namespaces client commands join.
    pub fn holder_pid(&self) -> i32 {
        self.holder_pid
    }

    /// Where a path inside the client's mount namespace is reachable from
    /// the test process: `/proc/HOLDER/root/PATH`.
    pub fn host_path(&self, inner: &Path) -> PathBuf {
        let rel = inner.strip_prefix("/").unwrap_or(inner);
        PathBuf::from(format!("/proc/{}/root", self.holder_pid)).join(rel)
    }

    /// A `Command` running `program` in the client's network and mount
    /// namespaces.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid.to_string())
            .arg("-m")
            .arg("-n")
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `argv` on the client with the default deadline.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        self.run_timeout(argv, DEFAULT_TIMEOUT)
    }

    /// Runs `argv` on the client with the given deadline.
    pub fn run_timeout(&self, argv: &[&str], timeout: Duration) -> Result<Output> {
        let (prog, args) = argv.split_first().context("empty argv")?;
        let mut c = self.command(prog);
        c.args(args);
        cmd::run(c, None, timeout)
    }

    /// Runs a `sh -c` script on the client.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.run(&["sh", "-c", script])
    }

    /// Runs `kiln ARGS` on the client.
    pub fn kiln(&self, args: &[&str]) -> Result<Output> {
        let kiln = self
            .kiln
            .as_ref()
            .context("no kiln binary for this client")?;
        let mut c = self.command(kiln);
        c.args(args);
        cmd::run(c, None, DEFAULT_TIMEOUT)
    }

    /// Opens a TCP connection from the client's namespace.
    pub fn connect(&self, addr: SocketAddr) -> Result<TcpStream> {
        self.host.ns.connect(addr, Duration::from_secs(5))
    }

    /// `kiln mount SOURCE DIR` on the client (SOURCE like `node01:/vol1`),
    /// then waits until the FUSE mount shows in the client's mount table.
    pub fn mount(&self, source: &str) -> Result<Mount<'_>> {
        self.mount_with(source, &[])
    }

    /// Like `mount`, with extra arguments after `kiln mount` (options).
    pub fn mount_with(&self, source: &str, extra: &[&str]) -> Result<Mount<'_>> {
        self.mount_by(source, |inner, log| {
            let mut args = vec!["mount", "--log-file", log];
            args.extend_from_slice(extra);
            args.push(source);
            args.push(inner);
            self.kiln(&args)
        })
    }

    /// Mounts with the system's `mount -t kiln SOURCE DIR`, which runs the
    /// installed `/sbin/mount.kiln` helper (scripts/test.sh installs it).
    pub fn mount_fstype(&self, source: &str) -> Result<Mount<'_>> {
        self.mount_by(source, |inner, log| {
            let opt = format!("log-file={log}");
            self.run(&["mount", "-t", "kiln", "-o", &opt, source, inner])
        })
    }

    fn mount_by(
        &self,
        source: &str,
        run: impl FnOnce(&str, &str) -> Result<Output>,
    ) -> Result<Mount<'_>> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let inner = self.dir.join(format!("mnt{n}"));
        std::fs::create_dir_all(&inner).with_context(|| format!("create {}", inner.display()))?;
        let inner_s = inner.to_string_lossy().into_owned();
        // The client's log goes beside its mount point (dumped on failure).
        let log = format!("{}.log", inner_s);
        let out = run(&inner_s, &log)?;
        let mount = Mount {
            client: self,
            inner,
            source: source.to_string(),
        };
        if !out.success() {
            bail!("mount failed: {out}");
        }
        wait_until(
            &format!("{source} mounted on {inner_s}"),
            Duration::from_secs(30),
            || mount.is_mounted(),
        )?;
        Ok(mount)
    }

    /// FUSE mount table entries (`target fstype`) of the client namespace.
    fn mount_table(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(format!("/proc/{}/mounts", self.holder_pid))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[1].to_string(), f[2].to_string()))
            })
            .collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Every process in the client netns (the holder, mount daemons,
        // stray commands) goes; the mount namespace and its FUSE mounts
        // end with the last of them.
        if let Err(e) = self.host.ns.kill_all() {
            eprintln!("kiln-tests: client: {e:#}");
        }
        if let Ok(mut h) = self.holder.lock() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// A FUSE mount on the client. Unmounted (lazily) on drop.
#[derive(Debug)]
pub struct Mount<'c> {
    client: &'c Client,
    inner: PathBuf,
    source: String,
}

impl Mount<'_> {
    /// The mount point as the test process reaches it (`/proc/HOLDER/root/..`):
    /// use this with `std::fs`.
    pub fn path(&self) -> PathBuf {
        self.client.host_path(&self.inner)
    }

    /// `path()` joined with a relative path inside the volume.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// The mount point as processes in the client namespace see it.
    pub fn inner(&self) -> &Path {
        &self.inner
    }

    /// The client's log file (`kiln mount --log-file`).
    pub fn log_file(&self) -> PathBuf {
        PathBuf::from(format!("{}.log", self.inner.display()))
    }

    /// What was mounted (`node01:/vol1`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True while the mount point carries a FUSE mount in the client's
    /// mount namespace.
    pub fn is_mounted(&self) -> bool {
        let target = self.inner.to_string_lossy();
        self.client
            .mount_table()
            .iter()
            .any(|(t, fs)| *t == target && fs.starts_with("fuse"))
    }

    /// Runs a shell script on the client with the mount point as cwd.
    pub fn sh(&self, script: &str) -> Result<Output> {
        let s = format!("cd '{}' && {script}", self.inner.display());
        self.client.sh(&s)
    }

    /// Pids of the client processes serving this mount (their command line
    /// names the mount point).
    pub fn daemon_pids(&self) -> Vec<i32> {
        let target = self.inner.to_string_lossy();
        self.client
            .ns()
            .pids()
            .into_iter()
            .filter(|p| *p != self.client.holder_pid && procs::cmdline(*p).contains(&*target))
            .collect()
    }

    /// `umount DIR` on the client; fails if the mount stays.
    pub fn umount(self) -> Result<()> {
        let inner = self.inner.to_string_lossy().into_owned();
        let out = self.client.run(&["umount", &inner])?;
        if !out.success() {
            bail!("umount failed: {out}");
        }
        wait_until("mount gone", Duration::from_secs(10), || !self.is_mounted())?;
        Ok(())
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if self.is_mounted() {
            let inner = self.inner.to_string_lossy().into_owned();
            let _ = self
                .client
                .run_timeout(&["umount", "-l", &inner], Duration::from_secs(10));
        }
    }
}
