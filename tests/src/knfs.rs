//! The Linux kernel's own NFSv3 client, for a machine whose running kernel
//! has none: Debian's stock kernel booted under qemu (TCG, no KVM needed)
//! with a busybox initramfs carrying e1000, sunrpc, lockd, nfs and nfsv3,
//! running a guest shell script as root. The guest sits on a tap device in
//! a network namespace of the test (a node's), so it reaches that node's
//! own address directly and the node can reach it back.
//!
//! The kernel and its modules are fetched once (`apt-get download` of the
//! package `linux-image-amd64` depends on) and kept under
//! `$KILN_KNFS_CACHE` (default `~/.cache/kiln-knfs`); the initramfs is
//! written fresh for each run (a plain `newc` cpio, no cpio tool needed), so
//! a boot-to-poweroff cycle costs only the guest's own time.
//! Lines the guest prints that start with `GUEST` are collected (and echoed
//! to stderr with their arrival time); `GUEST-RESULT: PASS` means success.
//!
//! For locking (`run_locking`) the host's Debian `rpcbind`, `rpc.statd`,
//! `sm-notify`, `rpcinfo` and util-linux `flock` go into the initramfs with
//! their libraries, the files libtirpc reads, and statd's `/var/lib/nfs`
//! (owned by `statd`); the guest starts rpcbind and rpc.statd before the
//! script, so a mount without `nolock` starts lockd and locks go over NLM
//! v4, and the server can call the guest back on the tap (GRANTED, NSM).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::netns::NetNs;

/// Modules the guest loads, dependencies first (paths under
/// `lib/modules/VERSION/kernel/`, without the `.ko*` suffix).
const MODULES: &[&str] = &[
    "drivers/net/ethernet/intel/e1000/e1000",
    "net/sunrpc/sunrpc",
    "fs/nfs_common/grace",
    "fs/lockd/lockd",
    "fs/nfs_common/nfs_acl",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "fs/nfs/nfs",
    "fs/nfs/nfsv3",
];

/// The guest's `/init`: mounts, modules, network, the test script, poweroff.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /tmp; mount -t tmpfs tmp /tmp
. /etc/knfs.env
export PATH=/sbin:/bin
for m in $(cat /mods/order); do insmod /mods/$m.ko || echo "GUEST: insmod $m failed"; done
hostname knfs-guest
ip link set lo up; ip link set eth0 up
ip addr add $KNFS_GUEST_IP/24 dev eth0; ip route add default via $KNFS_HOST_IP
if [ "$KNFS_LOCK" = 1 ]; then
  rpcbind || echo "GUEST-WARN: rpcbind failed"
  rpc.statd || echo "GUEST-WARN: rpc.statd failed"
  rpcinfo -p 127.0.0.1 | grep -q status || echo "GUEST-WARN: statd not registered with rpcbind"
fi
echo "GUEST-BOOTED: kernel $(uname -r)"
sh /guest-test.sh
echo "GUEST-EXIT: $?"
sync
poweroff -f
"#;

/// Everything needed to boot the guest: qemu, busybox, kernel, modules.
#[derive(Debug, Clone)]
pub struct KernelClient {
    qemu: PathBuf,
    busybox: PathBuf,
    kernel_dir: PathBuf,
}

/// How the guest is attached: a tap device in a namespace of the test.
#[derive(Debug, Clone)]
pub struct GuestNet {
    /// The namespace qemu runs in (the tap lives there).
    pub ns: NetNs,
    /// Tap device name.
    pub tap: String,
    /// The namespace's side of the tap (`/24`), the guest's default gateway.
    pub host_ip: Ipv4Addr,
    /// The guest's address.
    pub guest_ip: Ipv4Addr,
}

impl GuestNet {
    /// `knfs0` in `ns`, host side 10.77.0.1, guest 10.77.0.2.
    pub fn in_namespace(ns: &NetNs) -> GuestNet {
        GuestNet {
            ns: ns.clone(),
            tap: "knfs0".into(),
            host_ip: Ipv4Addr::new(10, 77, 0, 1),
            guest_ip: Ipv4Addr::new(10, 77, 0, 2),
        }
    }
}

/// What a guest run printed.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// True if the guest printed `GUEST-RESULT: PASS`.
    pub passed: bool,
    /// The `GUEST...` lines, with their arrival time since qemu started.
    pub lines: Vec<(Duration, String)>,
    /// The whole console output (kernel messages included).
    pub console: String,
    /// Time from qemu's start to `GUEST-BOOTED` (kernel up, modules loaded).
    pub boot: Option<Duration>,
    /// Time from qemu's start to its exit.
    pub total: Duration,
    /// When qemu was started (line times count from here).
    pub started: Instant,
}

impl GuestRun {
    /// The values of lines `GUEST-<TAG>: VALUE`.
    pub fn tagged(&self, tag: &str) -> Vec<String> {
        let prefix = format!("GUEST-{tag}: ");
        self.lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// When the first line starting with `prefix` arrived.
    pub fn time_of(&self, prefix: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }
}

/// The cache directory: `$KILN_KNFS_CACHE`, else `~/.cache/kiln-knfs`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_KNFS_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/kiln-knfs")
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let mut c = Command::new("apt-get");
    c.args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if cmd::run(c, None, Duration::from_secs(600))?.success() {
        return Ok(());
    }
    let mut u = Command::new("apt-get");
    u.args(["update", "-q"]);
    cmd::run(u, None, Duration::from_secs(300))?;
    let mut c = Command::new("apt-get");
    c.args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(c, None, Duration::from_secs(600))?.ok()?;
    Ok(())
}

impl KernelClient {
    /// Finds (installing with apt-get if missing) qemu and busybox, and
    /// fetches the kernel into the cache on first use. An error here means
    /// the guest cannot be booted on this machine at all.
    pub fn prepare() -> Result<KernelClient> {
        let mut need = Vec::new();
        if which("qemu-system-x86_64").is_none() {
            need.push("qemu-system-x86");
        }
        if !Path::new("/bin/busybox").is_file() {
            need.push("busybox-static");
        }
        if !need.is_empty() {
            apt_install(&need).with_context(|| format!("installing {}", need.join(" ")))?;
        }
        let qemu = which("qemu-system-x86_64").context("qemu-system-x86_64 not installed")?;
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.is_file() {
            bail!("/bin/busybox (busybox-static) not installed");
        }
        let kernel_dir = cache_dir().join("kernel");
        if !kernel_dir.join("complete").is_file() {
            fetch_kernel(&kernel_dir).context("fetching Debian's kernel package")?;
        }
        Ok(KernelClient {
            qemu,
            busybox,
            kernel_dir,
        })
    }

    /// Boots the guest attached by `net`, runs `script` in it as root and
    /// returns what it printed once it powered off (or `timeout` passed).
    /// The guest script sees `$KNFS_HOST_IP`, `$KNFS_GUEST_IP` and `env`;
    /// `bins` (host executables) are in its `/sbin`, with the libraries
    /// `ldd` lists for them.
    pub fn run(
        &self,
        net: &GuestNet,
        script: &str,
        env: &[(&str, &str)],
        bins: &[&Path],
        timeout: Duration,
    ) -> Result<GuestRun> {
        self.run_inner(net, script, env, bins, timeout, false)
    }

    /// As `run`, with rpcbind and rpc.statd running in the guest before the
    /// script (`$KNFS_LOCK` is 1), so NFS mounts without `nolock` lock over
    /// NLM; `flock` (util-linux) is in its `/sbin`. Fails if the host lacks
    /// rpcbind or nfs-common (scripts/test.sh installs them).
    pub fn run_locking(
        &self,
        net: &GuestNet,
        script: &str,
        env: &[(&str, &str)],
        bins: &[&Path],
        timeout: Duration,
    ) -> Result<GuestRun> {
        self.run_inner(net, script, env, bins, timeout, true)
    }

    fn run_inner(
        &self,
        net: &GuestNet,
        script: &str,
        env: &[(&str, &str)],
        bins: &[&Path],
        timeout: Duration,
        lock: bool,
    ) -> Result<GuestRun> {
        let work = tempdir()?;
        let initrd = work.join("initrd.cpio");
        self.write_initramfs(&initrd, net, script, env, bins, lock)?;
        let _tap = Tap::create(net)?;
        let mut c = net.ns.command(&self.qemu);
        c.args(["-accel", "tcg", "-m", "512", "-smp", "1"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(self.kernel_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-device", "e1000,netdev=n0,romfile="])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                net.tap
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let result = run_qemu(c, timeout);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn write_initramfs(
        &self,
        out: &Path,
        net: &GuestNet,
        script: &str,
        env: &[(&str, &str)],
        bins: &[&Path],
        lock: bool,
    ) -> Result<()> {
        let mut a = Cpio::default();
        for d in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "mnt", "tmp", "run", "mods",
        ] {
            a.dir(d);
        }
        a.file("bin/busybox", 0o755, &std::fs::read(&self.busybox)?);
        let mods = self.kernel_dir.join("mods");
        let order = std::fs::read_to_string(mods.join("order"))?;
        for m in order.split_whitespace() {
            let name = format!("{m}.ko");
            a.file(
                &format!("mods/{name}"),
                0o644,
                &std::fs::read(mods.join(&name))?,
            );
        }
        a.file("mods/order", 0o644, order.as_bytes());
        for bin in bins {
            add_bin(&mut a, bin)?;
        }
        if lock {
            add_lock_tools(&mut a)?;
        }
        a.file("init", 0o755, INIT.as_bytes());
        a.file("guest-test.sh", 0o755, script.as_bytes());
        let mut envs = format!(
            "KNFS_HOST_IP={}\nKNFS_GUEST_IP={}\nKNFS_LOCK={}\nexport KNFS_HOST_IP KNFS_GUEST_IP KNFS_LOCK\n",
            net.host_ip,
            net.guest_ip,
            u8::from(lock)
        );
        for (k, v) in env {
            envs.push_str(&format!("{k}='{}'\nexport {k}\n", v.replace('\'', "")));
        }
        a.file("etc/knfs.env", 0o644, envs.as_bytes());
        a.file(
            "etc/hosts",
            0o644,
            format!("127.0.0.1\tlocalhost\n{}\tknfs-guest\n", net.guest_ip).as_bytes(),
        );
        std::fs::write(out, a.finish()).with_context(|| format!("writing {}", out.display()))
    }
}

/// A host executable into the guest's `/sbin`, with its libraries.
fn add_bin(a: &mut Cpio, bin: &Path) -> Result<()> {
    let name = bin.file_name().context("a binary without a name")?;
    let data = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    a.file(&format!("sbin/{}", name.to_string_lossy()), 0o755, &data);
    for lib in libraries(bin)? {
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        if !a.has(&rel) {
            a.file_with_parents(&rel, 0o755, &std::fs::read(&lib)?);
        }
    }
    Ok(())
}

/// Host executables the locking guest needs, where Debian puts them.
const LOCK_TOOLS: &[&str] = &[
    "/usr/sbin/rpcbind",
    "/usr/sbin/rpc.statd",
    "/usr/sbin/sm-notify",
    "/usr/sbin/rpcinfo",
    "/usr/bin/flock",
];

/// `uid:gid` of a user, from `getent passwd` (its line goes to `passwd`).
fn user(name: &str, passwd: &mut String) -> Result<(u32, u32)> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .context("running getent")?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 {
        bail!("no user {name} on this host (install rpcbind and nfs-common)");
    }
    passwd.push_str(&line);
    passwd.push('\n');
    Ok((f[2].parse()?, f[3].parse()?))
}

/// rpcbind, rpc.statd and friends with what they read, and statd's
/// state directory owned by `statd` (it runs as the owner of `sm/`).
fn add_lock_tools(a: &mut Cpio) -> Result<()> {
    for t in LOCK_TOOLS {
        let p = Path::new(t);
        if !p.exists() {
            bail!("{t} missing on this host (install rpcbind, nfs-common, util-linux)");
        }
        add_bin(a, p)?;
    }
    for f in ["netconfig", "services", "protocols", "rpc"] {
        let p = Path::new("/etc").join(f);
        if let Ok(data) = std::fs::read(&p) {
            a.file(&format!("etc/{f}"), 0o644, &data);
        }
    }
    a.file(
        "etc/nsswitch.conf",
        0o644,
        b"passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\nrpc: files\n",
    );
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let (rpc_uid, rpc_gid) = user("_rpc", &mut passwd)?;
    let (statd_uid, statd_gid) = user("statd", &mut passwd)?;
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
    a.file("etc/passwd", 0o644, passwd.as_bytes());
    a.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    for d in ["var", "var/lib", "usr"] {
        if !a.has(d) {
            a.dir(d);
        }
    }
    a.entry_owned("var/lib/nfs", 0o040755, statd_uid, statd_gid, &[]);
    a.entry_owned("var/lib/nfs/sm", 0o040700, statd_uid, statd_gid, &[]);
    a.entry_owned("var/lib/nfs/sm.bak", 0o040700, statd_uid, statd_gid, &[]);
    a.entry_owned("var/lib/nfs/state", 0o100644, statd_uid, statd_gid, &[]);
    a.entry_owned("run/rpcbind", 0o040755, rpc_uid, rpc_gid, &[]);
    a.symlink("var/run", "../run");
    a.symlink("usr/sbin", "../sbin");
    Ok(())
}

/// The shared libraries `ldd` lists for `bin` (with the dynamic loader).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let path = match f.as_slice() {
            [_, "=>", p, ..] if p.starts_with('/') => p,
            [p, ..] if p.starts_with('/') => p,
            _ => continue,
        };
        libs.push(PathBuf::from(path));
    }
    Ok(libs)
}

fn tempdir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "kiln-knfs-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Downloads the kernel package and keeps `vmlinuz`, the modules (in load
/// order, decompressed) and a `complete` marker in `dir`.
fn fetch_kernel(dir: &Path) -> Result<()> {
    let pkg = kernel_package().or_else(|_| {
        let mut u = Command::new("apt-get");
        u.args(["update", "-q"]);
        cmd::run(u, None, Duration::from_secs(300))?;
        kernel_package()
    })?;
    let work = tempdir()?;
    let mut dl = Command::new("apt-get");
    dl.args(["download", &pkg]).current_dir(&work);
    cmd::run(dl, None, Duration::from_secs(900))?
        .ok()
        .with_context(|| format!("apt-get download {pkg}"))?;
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("no .deb downloaded")?;
    let root = work.join("root");
    cmd::must(
        "dpkg",
        &["-x", &deb.to_string_lossy(), &root.to_string_lossy()],
    )?;
    let kdir = std::fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .map(|e| e.path().join("kernel"))
        .find(|p| p.is_dir())
        .context("no lib/modules/*/kernel in the package")?;
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("mods"))?;
    let mut order = String::new();
    for m in MODULES {
        let base = kdir.join(m);
        let name = m.rsplit('/').next().unwrap_or(m);
        let out = staging.join("mods").join(format!("{name}.ko"));
        let plain = base.with_extension("ko");
        let (xz, zst) = (base.with_extension("ko.xz"), base.with_extension("ko.zst"));
        let data = if plain.is_file() {
            std::fs::read(&plain)?
        } else if xz.is_file() {
            decompress("xz", &xz)?
        } else if zst.is_file() {
            decompress("zstd", &zst)?
        } else {
            bail!("module {m} not in {pkg}");
        };
        std::fs::write(&out, data)?;
        order.push_str(name);
        order.push('\n');
    }
    std::fs::write(staging.join("mods/order"), order)?;
    let vmlinuz = std::fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .context("no boot/vmlinuz-* in the package")?;
    std::fs::copy(&vmlinuz, staging.join("vmlinuz"))?;
    std::fs::write(staging.join("complete"), format!("{pkg}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(&staging, dir)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `linux-image-6.1.0-NN-amd64`: what `linux-image-amd64` depends on.
fn kernel_package() -> Result<String> {
    let mut c = Command::new("apt-cache");
    c.args(["depends", "linux-image-amd64"]);
    let out = cmd::run(c, None, Duration::from_secs(60))?;
    out.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .map(str::to_string)
        .context("apt-cache knows no linux-image-amd64 dependency")
}

fn decompress(tool: &str, file: &Path) -> Result<Vec<u8>> {
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", file.display());
    }
    Ok(out.stdout)
}

/// A tap device in a namespace, with the host side's address; deleted on
/// drop (it also goes with the namespace).
struct Tap {
    ns: NetNs,
    name: String,
}

impl Tap {
    fn create(net: &GuestNet) -> Result<Tap> {
        let ns = net.ns.name();
        let _ = cmd::run(
            {
                let mut c = Command::new("ip");
                c.args(["-n", ns, "link", "del", &net.tap]);
                c
            },
            None,
            Duration::from_secs(10),
        );
        cmd::must(
            "ip",
            &["-n", ns, "tuntap", "add", "dev", &net.tap, "mode", "tap"],
        )?;
        let tap = Tap {
            ns: net.ns.clone(),
            name: net.tap.clone(),
        };
        cmd::must(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", net.host_ip),
                "dev",
                &net.tap,
            ],
        )?;
        cmd::must("ip", &["-n", ns, "link", "set", &net.tap, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", self.ns.name(), "link", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs qemu, collecting its console until it exits or `timeout` passes.
fn run_qemu(mut c: Command, timeout: Duration) -> Result<GuestRun> {
    let start = Instant::now();
    let mut child = c.spawn().context("starting qemu")?;
    let lines: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let console: Arc<Mutex<String>> = Arc::default();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let (lines, console) = (lines.clone(), console.clone());
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                // The firmware's screen escapes may precede the first line.
                if let Some(guest) = text.find("GUEST").map(|i| &text[i..]) {
                    let t = start.elapsed();
                    eprintln!("[{:6.2}s] {guest}", t.as_secs_f64());
                    lines
                        .lock()
                        .map(|mut l| l.push((t, guest.to_string())))
                        .ok();
                }
                if let Ok(mut c) = console.lock() {
                    c.push_str(&text);
                    c.push('\n');
                }
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let console = console.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut c) = console.lock() {
                    c.push_str("qemu: ");
                    c.push_str(&line);
                    c.push('\n');
                }
            }
        }));
    }
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let total = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
    let mut console = console.lock().map(|c| c.clone()).unwrap_or_default();
    if timed_out {
        console.push_str(&format!("(killed after {timeout:?})\n"));
    }
    let run = GuestRun {
        passed: lines.iter().any(|(_, l)| l == "GUEST-RESULT: PASS"),
        boot: lines
            .iter()
            .find(|(_, l)| l.starts_with("GUEST-BOOTED"))
            .map(|(t, _)| *t),
        lines,
        console,
        total,
        started: start,
    };
    Ok(run)
}

/// A `newc` cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    names: std::collections::HashSet<String>,
}

impl Cpio {
    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// A file, with every missing parent directory before it.
    fn file_with_parents(&mut self, name: &str, perm: u32, data: &[u8]) {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.has(&prefix) {
                self.dir(&prefix.clone());
            }
        }
        self.file(name, perm, data);
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry_owned(name, mode, 0, 0, data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }

    fn entry_owned(&mut self, name: &str, mode: u32, uid: u32, gid: u32, data: &[u8]) {
        self.ino += 1;
        self.names.insert(name.to_string());
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            uid,
            gid,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_layout() {
        let mut a = Cpio::default();
        a.dir("bin");
        a.file("init", 0o755, b"#!/bin/sh\n");
        a.file_with_parents("lib/x86_64-linux-gnu/libz.so", 0o755, b"z");
        assert!(a.has("lib") && a.has("lib/x86_64-linux-gnu"));
        let out = a.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        // mode of "init": regular file 0755; its size 10 bytes; name size 5.
        assert!(text.contains("000081ed"), "{text}");
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        let init_hdr = text.find("init\0").unwrap() - 110;
        assert_eq!(&text[init_hdr + 54..init_hdr + 62], "0000000a");
        assert_eq!(&text[init_hdr + 94..init_hdr + 102], "00000005");
    }
}
