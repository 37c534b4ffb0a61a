//! `kiln bench-nfs`: Kiln's NFS gateway against nfs-ganesha's VFS export of a
//! local directory on the same disk, in one run, through libnfs's tools
//! (`nfs-cp`, `nfs-cat`); prints MB/s, files/s and the Kiln/ganesha ratios.
//! Both servers run in a private network and mount namespace of the bench.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: kiln bench-nfs [--data-dir DIR] [--size-mib N] [--files N] \
[--file-kib N] [--rounds N] [--bricks N] [--keep]

Starts, in a private network and mount namespace (root needed): rpcbind, a
single-server Kiln (`kiln server`, a distributed volume `nfsbench` of
--bricks bricks (default 1) under DIR/kiln, served by its NFS gateway on
2049/38465) and nfs-ganesha 4.3 (FSAL_VFS export of DIR/ganesha/export on
20490/20048), so both serve the same disk. Then, with libnfs's tools:
  large write: nfs-cp of a --size-mib MiB file (default 1024) to the export,
  large read:  nfs-cat of it to /dev/null,
  small files: --files (default 1000) files of --file-kib KiB (default 4),
               each written by one nfs-cp and read back by one nfs-cat.
Both sides run --rounds times (default 3) in alternating order; page caches
are synced and dropped before each large transfer. Every sample is printed,
then the means and Kiln/ganesha. DIR defaults to /var/tmp/kiln-bench-nfs and
is removed at the end unless --keep. Needs libnfs-utils, nfs-ganesha,
nfs-ganesha-vfs and rpcbind.";

/// Kiln's gateway ports (the defaults of `kiln nfs`).
const KILN_NFS_PORT: u16 = 2049;
const KILN_MOUNT_PORT: u16 = 38465;
/// Ganesha's ports, beside Kiln's in the same namespace.
const GANESHA_NFS_PORT: u16 = 20490;
const GANESHA_MOUNT_PORT: u16 = 20048;
const VOLUME: &str = "nfsbench";

/// Parsed command line.
#[derive(Debug, Clone)]
struct Opts {
    data_dir: PathBuf,
    size_mib: u64,
    files: usize,
    file_kib: usize,
    rounds: usize,
    bricks: usize,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        data_dir: PathBuf::from("/var/tmp/kiln-bench-nfs"),
        size_mib: 1024,
        files: 1000,
        file_kib: 4,
        rounds: 3,
        bricks: 1,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let num = |s: String, name: &str| -> Result<u64> {
            s.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{name}: not a positive number: {s}"))
        };
        match a.as_str() {
            "--data-dir" => o.data_dir = PathBuf::from(value(a)?),
            "--size-mib" => o.size_mib = num(value(a)?, a)?,
            "--files" => o.files = num(value(a)?, a)? as usize,
            "--file-kib" => o.file_kib = num(value(a)?, a)? as usize,
            "--rounds" => o.rounds = num(value(a)?, a)? as usize,
            "--bricks" => o.bricks = num(value(a)?, a)? as usize,
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    if !o.data_dir.is_absolute() {
        o.data_dir = std::env::current_dir()?.join(&o.data_dir);
    }
    Ok(o)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kiln,
    Ganesha,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Kiln => "kiln",
            Side::Ganesha => "ganesha",
        }
    }
}

/// One export as libnfs tools reach it.
struct Export {
    side: Side,
    /// `nfs://127.0.0.1/PATH` without the query.
    base: String,
    nfs_port: u16,
    mount_port: u16,
}

impl Export {
    fn url(&self, name: &str) -> String {
        format!(
            "{}/{name}?version=3&nfsport={}&mountport={}",
            self.base, self.nfs_port, self.mount_port
        )
    }

    fn root_url(&self) -> String {
        format!(
            "{}?version=3&nfsport={}&mountport={}",
            self.base, self.nfs_port, self.mount_port
        )
    }
}

/// Samples of one side.
#[derive(Default, Debug)]
struct Samples {
    write_mbps: Vec<f64>,
    read_mbps: Vec<f64>,
    small_write_fps: Vec<f64>,
    small_read_fps: Vec<f64>,
}

/// Runs `kiln bench-nfs ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kiln bench-nfs needs root (private namespaces, dropping page caches, ganesha)");
    }
    for tool in [
        "nfs-cp",
        "nfs-cat",
        "nfs-ls",
        "ganesha.nfsd",
        "rpcbind",
        "ip",
    ] {
        if find_tool(tool).is_none() {
            bail!(
                "`{tool}` not found: apt-get install libnfs-utils nfs-ganesha nfs-ganesha-vfs rpcbind iproute2"
            );
        }
    }
    let exe = std::env::current_exe().context("finding the kiln executable")?;
    if o.data_dir.exists() {
        fs::remove_dir_all(&o.data_dir)
            .with_context(|| format!("clearing {}", o.data_dir.display()))?;
    }
    fs::create_dir_all(&o.data_dir)?;
    isolate()?;
    let mut procs = Procs::default();
    let result = bench(&o, &exe, &mut procs);
    procs.stop_all();
    if !o.keep {
        let _ = fs::remove_dir_all(&o.data_dir);
    } else {
        eprintln!("kept {}", o.data_dir.display());
    }
    result
}

fn bench(o: &Opts, exe: &Path, procs: &mut Procs) -> Result<()> {
    let started = Instant::now();
    procs.spawn(
        "rpcbind",
        Command::new(find_tool("rpcbind").unwrap_or_default()).arg("-f"),
    )?;
    wait_port(
        SocketAddr::from(([127, 0, 0, 1], 111)),
        Duration::from_secs(10),
    )
    .context("rpcbind did not listen on 111")?;
    let kiln = start_kiln(o, exe, procs)?;
    let ganesha = start_ganesha(o, procs)?;
    let setup = started.elapsed();

    let src_dir = o.data_dir.join("src");
    fs::create_dir_all(&src_dir)?;
    let big = src_dir.join("big.bin");
    write_pattern(&big, o.size_mib << 20)?;
    let small = src_dir.join("small.bin");
    write_pattern(&small, (o.file_kib as u64) << 10)?;
    let bytes = o.size_mib << 20;

    println!(
        "kiln bench-nfs: {} MiB large file, {} files of {} KiB, {} rounds; data in {} ({})",
        o.size_mib,
        o.files,
        o.file_kib,
        o.rounds,
        o.data_dir.display(),
        describe_disk(&o.data_dir)
    );
    println!(
        "  kiln: volume {VOLUME} ({} brick(s)) via its gateway {}; ganesha: VFS export {}; setup {:.1}s",
        o.bricks,
        kiln.root_url(),
        ganesha.root_url(),
        setup.as_secs_f64()
    );
    let mut kiln_s = Samples::default();
    let mut ganesha_s = Samples::default();
    for round in 0..o.rounds {
        let order = if round % 2 == 0 {
            [&kiln, &ganesha]
        } else {
            [&ganesha, &kiln]
        };
        for ex in order {
            let s = match ex.side {
                Side::Kiln => &mut kiln_s,
                Side::Ganesha => &mut ganesha_s,
            };
            // A new name each round: nfs-cp will not replace a file.
            let name = format!("big-r{round}.bin");
            drop_caches();
            let t = Instant::now();
            nfs_tool("nfs-cp", &[path_str(&big)?, &ex.url(&name)])?;
            let w = mbps(bytes, t);
            drop_caches();
            let t = Instant::now();
            nfs_tool("nfs-cat", &[&ex.url(&name)])?;
            let r = mbps(bytes, t);
            let t = Instant::now();
            for i in 0..o.files {
                nfs_tool(
                    "nfs-cp",
                    &[path_str(&small)?, &ex.url(&format!("r{round}-f{i}"))],
                )?;
            }
            let sw = o.files as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            for i in 0..o.files {
                nfs_tool("nfs-cat", &[&ex.url(&format!("r{round}-f{i}"))])?;
            }
            let sr = o.files as f64 / t.elapsed().as_secs_f64();
            println!(
                "  round {} {:>7}: write {:>7.1} MB/s  read {:>7.1} MB/s  small write {:>6.1} files/s  small read {:>6.1} files/s",
                round + 1,
                ex.side.name(),
                w,
                r,
                sw,
                sr
            );
            let _ = std::io::stdout().flush();
            s.write_mbps.push(w);
            s.read_mbps.push(r);
            s.small_write_fps.push(sw);
            s.small_read_fps.push(sr);
        }
    }
    // The large file read back through Kiln must be what was written.
    verify_big(&kiln, "big-r0.bin", &big, &o.data_dir)?;

    println!();
    println!(
        "{:<30} {:>12} {:>12} {:>14}",
        "metric (mean)", "kiln", "ganesha", "kiln/ganesha"
    );
    let rows: [(&str, &Vec<f64>, &Vec<f64>); 4] = [
        (
            "large write (MB/s)",
            &kiln_s.write_mbps,
            &ganesha_s.write_mbps,
        ),
        ("large read (MB/s)", &kiln_s.read_mbps, &ganesha_s.read_mbps),
        (
            "small write (files/s)",
            &kiln_s.small_write_fps,
            &ganesha_s.small_write_fps,
        ),
        (
            "small read (files/s)",
            &kiln_s.small_read_fps,
            &ganesha_s.small_read_fps,
        ),
    ];
    for (name, k, g) in rows {
        let (k, g) = (mean(k), mean(g));
        println!(
            "{name:<30} {k:>12.1} {g:>12.1} {:>13.2}x",
            if g > 0.0 { k / g } else { 0.0 }
        );
    }
    Ok(())
}

/// Reads the large file back through Kiln with nfs-cp and compares it with
/// the source byte for byte.
fn verify_big(kiln: &Export, name: &str, src: &Path, dir: &Path) -> Result<()> {
    let back = dir.join("src/back.bin");
    nfs_tool("nfs-cp", &[&kiln.url(name), path_str(&back)?])?;
    let same = files_equal(src, &back)?;
    let _ = fs::remove_file(&back);
    if !same {
        bail!("the large file read back through Kiln differs from what was written");
    }
    Ok(())
}

fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Starts `kiln server` bound to 127.0.0.1, creates and starts the volume
/// and waits until its gateway answers MOUNT.
fn start_kiln(o: &Opts, exe: &Path, procs: &mut Procs) -> Result<Export> {
    let root = o.data_dir.join("kiln");
    let (state, log) = (root.join("state"), root.join("log"));
    fs::create_dir_all(&state)?;
    fs::create_dir_all(&log)?;
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--listen", "127.0.0.1", "--state-dir"])
        .arg(&state)
        .arg("--log-dir")
        .arg(&log);
    procs.spawn("kiln server", &mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(exe, &["pool", "list"])?.0 {
        if Instant::now() > deadline {
            bail!(
                "kiln server did not answer within 30 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut args: Vec<String> = vec!["volume".into(), "create".into(), VOLUME.into()];
    for i in 0..o.bricks {
        args.push(format!(
            "127.0.0.1:{}",
            root.join(format!("brick{i}")).display()
        ));
    }
    args.push("force".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    for step in [refs, vec!["volume", "start", VOLUME]] {
        let (ok, out) = cli(exe, &step)?;
        if !ok {
            bail!("kiln {}: {out}", step.join(" "));
        }
    }
    let ex = Export {
        side: Side::Kiln,
        base: format!("nfs://127.0.0.1/{VOLUME}"),
        nfs_port: KILN_NFS_PORT,
        mount_port: KILN_MOUNT_PORT,
    };
    wait_export(&ex, Duration::from_secs(60))
        .with_context(|| format!("Kiln's gateway; see {}", log.join("nfs.log").display()))?;
    Ok(ex)
}

/// Writes ganesha's configuration and starts it; waits until the export
/// answers MOUNT.
fn start_ganesha(o: &Opts, procs: &mut Procs) -> Result<Export> {
    let root = o.data_dir.join("ganesha");
    let export = root.join("export");
    fs::create_dir_all(&export)?;
    let conf = root.join("ganesha.conf");
    fs::write(
        &conf,
        format!(
            "NFS_CORE_PARAM {{\n  Protocols = 3;\n  NFS_Port = {GANESHA_NFS_PORT};\n  \
             MNT_Port = {GANESHA_MOUNT_PORT};\n  Enable_NLM = false;\n  Enable_RQUOTA = false;\n}}\n\
             NFSV4 {{ Graceless = true; }}\n\
             EXPORT {{\n  Export_Id = 77;\n  Path = {path};\n  Pseudo = /bench;\n  Protocols = 3;\n  \
             Transports = TCP;\n  Access_Type = RW;\n  Squash = No_Root_Squash;\n  SecType = sys;\n  \
             FSAL {{ Name = VFS; }}\n}}\n\
             LOG {{ Default_Log_Level = WARN; }}\n",
            path = export.display()
        ),
    )?;
    let log = root.join("ganesha.log");
    let mut cmd = Command::new(find_tool("ganesha.nfsd").unwrap_or_default());
    cmd.arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("-L")
        .arg(&log)
        .arg("-p")
        .arg(root.join("ganesha.pid"));
    procs.spawn("ganesha.nfsd", &mut cmd)?;
    let ex = Export {
        side: Side::Ganesha,
        base: format!("nfs://127.0.0.1{}", export.display()),
        nfs_port: GANESHA_NFS_PORT,
        mount_port: GANESHA_MOUNT_PORT,
    };
    wait_export(&ex, Duration::from_secs(60))
        .with_context(|| format!("nfs-ganesha; see {}", log.display()))?;
    Ok(ex)
}

fn wait_export(ex: &Export, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match nfs_tool("nfs-ls", &[&ex.root_url()]) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{} export never answered", ex.side.name())))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Runs one libnfs tool, its output discarded; an error with its stderr if
/// it fails.
fn nfs_tool(tool: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a CLI command of this executable; returns (success, output).
fn cli(exe: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(exe)
        .args(args)
        .arg("--mode=script")
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The children the bench started, stopped in reverse order at the end;
/// then anything else left in the bench's private network namespace (the
/// bricks and the gateway `kiln server` started) is killed.
#[derive(Default)]
struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Children go when the bench goes, however it is stopped.
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn stop_all(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let me = std::process::id() as i32;
        let Some(ns) = netns_inode(Path::new("/proc/self/ns/net")) else {
            return;
        };
        for _ in 0..50 {
            let left: Vec<i32> = pids_in_netns(ns).into_iter().filter(|p| *p != me).collect();
            if left.is_empty() {
                return;
            }
            for p in left {
                // SAFETY: kill(2); every process in this private namespace was
                // started by the bench.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn netns_inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| m.ino())
}

fn pids_in_netns(ino: u64) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| netns_inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))) == Some(ino))
        .collect()
}

/// Moves the bench into a private network namespace (only `lo`, up) and a
/// private mount namespace with its own `/run`, so its rpcbind, Kiln and
/// ganesha touch neither the host's ports nor its rpcbind socket.
fn isolate() -> Result<()> {
    // SAFETY: unshare/mount with valid arguments; the process is single-threaded here.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) != 0 {
            bail!("unshare: {}", std::io::Error::last_os_error());
        }
        let root = CString::new("/")?;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making mounts private: {}", std::io::Error::last_os_error());
        }
        let (tmpfs, run) = (CString::new("tmpfs")?, CString::new("/run")?);
        if libc::mount(
            tmpfs.as_ptr(),
            run.as_ptr(),
            tmpfs.as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            bail!("tmpfs on /run: {}", std::io::Error::last_os_error());
        }
    }
    fs::create_dir_all("/run/rpcbind")?;
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    if !st.success() {
        bail!("ip link set lo up: {st}");
    }
    Ok(())
}

fn wait_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("not UTF-8: {}", p.display()))
}

/// Writes `len` bytes of a pattern that does not compress, synced.
fn write_pattern(p: &Path, len: u64) -> Result<()> {
    let mut f = fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn mbps(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn describe_disk(p: &Path) -> String {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return "?".into();
    };
    // SAFETY: statfs into a zeroed struct with a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "?".into();
    }
    format!(
        "fs type {:#x}, {} GiB free",
        st.f_type,
        (st.f_bavail as u64 * st.f_bsize as u64) >> 30
    )
}
