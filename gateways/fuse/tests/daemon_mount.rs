//! `mount.kiln` as a user runs it: a separate process parses the helper's
//! command line, daemonizes, and returns once the mount is ready; the
//! background process serves until `umount`, then exits. Failures are
//! reported by the command itself with exit status 1.
//!
//! A test binary without libtest's harness: the same executable is the
//! mount helper when `KILN_TEST_MOUNT_HELPER` is set (so the fork happens in
//! a process with no other thread, as in `kiln`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_core::brick::{prepare_brick_dir, serve_listener, BrickConfig};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};

const HELPER_ENV: &str = "KILN_TEST_MOUNT_HELPER";

fn main() {
    if let Ok(argv) = std::env::var(HELPER_ENV) {
        // Helper mode: argv is separated by U+001F, program name first.
        let argv: Vec<String> = argv.split('\u{1f}').map(String::from).collect();
        let code = match kiln_fuse::parse_mount_helper_args(argv)
            .map_err(anyhow::Error::from)
            .and_then(kiln_fuse::mount_main)
        {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mount.kiln: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    let tests: [(&str, fn()); 3] = [
        (
            "daemon_mount_serves_until_umount",
            daemon_mount_serves_until_umount,
        ),
        (
            "daemon_mount_reports_failures",
            daemon_mount_reports_failures,
        ),
        (
            "unprivileged_mount_through_fusermount3",
            unprivileged_mount_through_fusermount3,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(f) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let _ = fs::remove_file(scratch_log());
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Where helpers log unless a test names a file (not /var/log/kiln).
fn scratch_log() -> PathBuf {
    std::env::temp_dir().join(format!("kiln-fuse-daemon-test-{}.log", std::process::id()))
}

/// Runs this executable as `mount.kiln` with `args`.
fn mount_helper(args: &[&str]) -> std::process::Output {
    let mut argv = vec!["mount.kiln"];
    argv.extend_from_slice(args);
    let log = format!("log-file={}", scratch_log().display());
    if !args.iter().any(|a| a.contains("log-file=")) {
        argv.extend_from_slice(&["-o", &log]);
    }
    Command::new(std::env::current_exe().unwrap())
        .env(HELPER_ENV, argv.join("\u{1f}"))
        .output()
        .unwrap()
}

/// Runs `program args` as uid/gid 65534.
fn as_nobody(program: &Path, args: &[&str], env: Option<(&str, String)>) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program)
        .args(args);
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().unwrap()
}

struct Bricks {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    spec: VolumeSpec,
}

fn start_bricks(n: usize) -> Bricks {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = "3c1f0b7a-2d4e-4f60-8a9b-0c1d2e3f4a5b".to_string();
    let mut bricks = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("brick{i}"));
        prepare_brick_dir(&path, &id, true).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = BrickConfig {
            volume: "dv".into(),
            volume_id: id.clone(),
            label: format!("127.0.0.1:{}", path.display()),
            path: path.clone(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        rt.spawn(async move {
            let _ = serve_listener(cfg, listener).await;
        });
        bricks.push(BrickSpec {
            subvol: format!("dv-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port,
        });
    }
    let spec = VolumeSpec {
        name: "dv".into(),
        id,
        kind: VolumeKind::Distribute,
        bricks,
        options: BTreeMap::new(),
        generation: 1,
    };
    Bricks { rt, dir, spec }
}

fn write_spec(b: &Bricks) -> PathBuf {
    let p = b.dir.path().join("dv.json");
    fs::write(&p, serde_json::to_vec(&b.spec).unwrap()).unwrap();
    p
}

fn mount_line(mnt: &Path) -> Option<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .map(String::from)
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // A zombie has exited (its parent, init, reaps it).
            Ok(s) if s.split(' ').nth(2) == Some("Z") => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return true,
        }
    }
    false
}

fn daemon_mount_serves_until_umount() {
    let b = start_bricks(2);
    let spec = write_spec(&b);
    let mnt = tempfile::tempdir().unwrap();
    let mnt_path = mnt.path().canonicalize().unwrap();
    let pid_file = b.dir.path().join("mount.pid");
    let log = b.dir.path().join("mount.log");
    let opts = format!(
        "rw,_netdev,volfile={},pid-file={},log-file={},backup-volfile-servers=127.0.0.2",
        spec.display(),
        pid_file.display(),
        log.display()
    );
    let t = Instant::now();
    let out = mount_helper(&["127.0.0.1:/dv", mnt_path.to_str().unwrap(), "-o", &opts]);
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The command returned with the mount in place, served by a daemon.
    let line = mount_line(&mnt_path).expect("mounted when mount.kiln returned");
    assert!(line.contains(" - fuse.kiln 127.0.0.1:/dv "), "{line}");
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, std::process::id());
    println!("  mounted in {:?} by daemon pid {pid}", t.elapsed());

    // Real I/O through the daemon lands on the bricks.
    fs::create_dir(mnt_path.join("d")).unwrap();
    for i in 0..20 {
        fs::write(mnt_path.join(format!("d/f{i}")), format!("data {i}")).unwrap();
    }
    for i in 0..20 {
        let rel = format!("d/f{i}");
        assert_eq!(
            fs::read_to_string(mnt_path.join(&rel)).unwrap(),
            format!("data {i}")
        );
        let on: Vec<_> = b
            .spec
            .bricks
            .iter()
            .filter(|br| Path::new(&br.path).join(&rel).is_file())
            .collect();
        assert_eq!(on.len(), 1, "{rel}");
    }
    assert!(fs::metadata(&log).unwrap().len() > 0, "log file written");

    // umount ends the daemon.
    let c = std::ffi::CString::new(mnt_path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "daemon still running"
    );
    assert!(mount_line(&mnt_path).is_none());
    assert!(!pid_file.exists(), "pid file removed at exit");
    drop(b.rt);
}

fn daemon_mount_reports_failures() {
    let b = start_bricks(1);
    let spec = write_spec(&b);
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();

    // A spec for another volume: refused before anything is mounted.
    let opts = format!("volfile={}", spec.display());
    let out = mount_helper(&["127.0.0.1:/other", m, "-o", &opts]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not other"), "{err}");

    // Bricks that do not answer: the daemon reports the failure, the
    // command exits 1, nothing stays mounted.
    let mut dead = b.spec.clone();
    dead.bricks[0].port = 1;
    let dead_spec = b.dir.path().join("dead.json");
    fs::write(&dead_spec, serde_json::to_vec(&dead).unwrap()).unwrap();
    let opts = format!("volfile={},ready-timeout=1", dead_spec.display());
    let out = mount_helper(&["127.0.0.1:/dv", m, "-o", &opts]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not reachable"), "{err}");
    assert!(mount_line(&mnt.path().canonicalize().unwrap()).is_none());

    // No management server answers: the spec cannot be fetched.
    let out = mount_helper(&[
        "127.0.0.9:/dv",
        m,
        "-o",
        "backup-volfile-servers=127.0.0.10",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot get the spec of volume dv"), "{err}");

    // Usage errors.
    let out = mount_helper(&["127.0.0.1:/dv"]);
    assert_eq!(out.status.code(), Some(1));
    let out = mount_helper(&["127.0.0.1:/dv", "/nonexistent/dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir"));
}

/// Makes /dev/fuse usable by every user while alive (the mode udev gives
/// it on a normal system; some containers create it 0600), then restores
/// the original mode.
struct DevFuseOpen {
    mode: Option<u32>,
}

impl DevFuseOpen {
    fn new() -> DevFuseOpen {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
        if mode & 0o006 == 0o006 {
            return DevFuseOpen { mode: None };
        }
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseOpen { mode: Some(mode) }
    }
}

impl Drop for DevFuseOpen {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(m) = self.mode {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(m));
        }
    }
}

fn unprivileged_mount_through_fusermount3() {
    let _dev = DevFuseOpen::new();
    let b = start_bricks(1);
    let spec = write_spec(&b);
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let nobody = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    };
    nobody(mnt.path());
    nobody(work.path());
    nobody(b.dir.path());
    // The admin opens the volume root (0755 root-owned when made) to users.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&b.spec.bricks[0].path, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mnt_path = mnt.path().canonicalize().unwrap();
    let log = work.path().join("user.log");
    let pid_file = work.path().join("user.pid");
    let opts = format!(
        "volfile={},log-file={},pid-file={}",
        spec.display(),
        log.display(),
        pid_file.display()
    );
    let argv = [
        "mount.kiln",
        "127.0.0.1:/dv",
        mnt_path.to_str().unwrap(),
        "-o",
        &opts,
    ];
    let out = as_nobody(
        &std::env::current_exe().unwrap(),
        &[],
        Some((HELPER_ENV, argv.join("\u{1f}"))),
    );
    assert!(
        out.status.success(),
        "user mount failed: {} (log: {})",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(&log).unwrap_or_default()
    );
    let line = mount_line(&mnt_path).expect("mounted");
    assert!(line.contains("fuse.kiln"), "{line}");
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The user's own files work; new files are the user's.
    let out = as_nobody(
        Path::new("sh"),
        &[
            "-c",
            &format!("echo hi > {0}/mine && cat {0}/mine", mnt_path.display()),
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let on_brick = Path::new(&b.spec.bricks[0].path).join("mine");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(on_brick).unwrap()),
        65534
    );
    // The user unmounts with fusermount3 -u; the daemon exits.
    let out = as_nobody(
        Path::new("fusermount3"),
        &["-u", mnt_path.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "daemon still running"
    );
    drop(b.rt);
}
