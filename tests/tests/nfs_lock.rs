//! NFS locking with the Linux kernel's own client: NLM v4 and NSM against
//! Kiln's gateway. A 2-server pool with a distributed volume; a qemu guest
//! (`kiln_tests::knfs`, run with rpcbind + rpc.statd) on a tap in node01's
//! namespace mounts node01's address over TCP *without* `nolock`, so its
//! lockd talks NLM to the gateway and the gateway calls it back.
//!
//! The guest takes an fcntl lock and a flock (both NLM LOCK/UNLOCK); holds
//! a lock while the host's FUSE client tries F_SETLK on the same file
//! (EAGAIN: both are the bricks' POSIX locks); then, against a lock a FUSE
//! process holds, its non-blocking fcntl and flock fail, F_GETLK (NLM TEST)
//! names the holder, and a blocking fcntl waits until the FUSE side
//! releases, when the gateway's GRANTED callback wakes it (measured: the
//! time from the release to the guest going on).
//!
//! Then node01's gateway is killed (-9) and brought back while the guest
//! holds a lock: the new gateway finds the guest in its NSM records, sends
//! it SM_NOTIFY, and the guest's lockd reclaims the lock in the grace
//! period (FUSE is refused again; the unlock afterwards works).
//!
//! Last, the guest sends SM_NOTIFY as a rebooted client's sm-notify does:
//! the gateway drops the locks it still held (FUSE gets the file).
//!
//! Guest and host take turns through two small files on the volume
//! (`ctl-guest` written by the guest over NFS, `ctl-host` by the host
//! over FUSE).

use kiln_tests::knfs::{GuestNet, KernelClient};
use kiln_tests::{check_prerequisites, wait_until, Cluster, Node};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_SCRIPT: &str = r#"
fail() { echo "GUEST-FAIL: $*"; exit 1; }
D=/mnt/n/locks
say() { echo "$1" >> $D/ctl-guest || fail "writing ctl-guest"; }
waitfor() {
  i=0
  while ! grep -qx "$1" $D/ctl-host; do
    sleep 0.2; i=$((i+1)); [ $i -lt 400 ] || fail "waiting for the host to say $1"
  done
}
mkdir -p /mnt/n
mount -t nfs -o vers=3,proto=tcp $SERVER:/vol1 /mnt/n || fail "mount"
grep " /mnt/n " /proc/mounts | sed 's/^/GUEST-MOUNTS: /'
rpcinfo -p 127.0.0.1 | grep -q nlockmgr && echo "GUEST-LOCKD: registered"

# 1. Uncontended: an fcntl lock and a flock, granted over NLM.
out=$(knfs-lock $D/a w 0 100 0 0) || fail "fcntl lock on a: $out"
echo "GUEST-FCNTL: $out" | tr '\n' ' '; echo
flock -x -w 20 $D/a -c 'echo GUEST-FLOCK: held' || fail "flock on a"

# 2. A guest lock makes a FUSE F_SETLK fail.
mkfifo /tmp/hb
knfs-lock $D/b w 0 0 0 stdin < /tmp/hb > /tmp/b.out &
exec 3>/tmp/hb
i=0; until grep -q LOCKED /tmp/b.out; do sleep 0.2; i=$((i+1)); [ $i -lt 100 ] || fail "lock on b: $(cat /tmp/b.out)"; done
say held-b
waitfor checked-b
exec 3>&-
wait
echo "GUEST-B: $(cat /tmp/b.out | tr '\n' ' ')"

# 3. A FUSE process holds c: non-blocking locks fail, TEST names it,
#    a blocking lock waits for the release and the GRANTED callback.
waitfor fuse-holds-c
out=$(knfs-lock $D/c w 0 0 0 0) && fail "fcntl on c granted while FUSE holds it: $out"
echo "GUEST-CNB: $out"
flock -n -x $D/c -c true && fail "flock -n on c granted while FUSE holds it"
echo "GUEST-CFLOCKNB: refused"
echo "GUEST-CTEST: $(knfs-lock $D/c t 0 0 0 0)"
say waiting-c
echo "GUEST-CWAIT: start"
out=$(knfs-lock $D/c w 0 0 1 0) || fail "blocking lock on c: $out"
echo "GUEST-CGOT: $out" | tr '\n' ' '; echo
say got-c

# 4. NSM: the gateway restarts while the guest holds a lock on e; the new
#    gateway's SM_NOTIFY reaches statd, and lockd reclaims the lock in the
#    grace period (the host checks FUSE is refused again), then releases it.
mkfifo /tmp/he
knfs-lock $D/e w 0 0 0 stdin < /tmp/he > /tmp/e.out &
exec 4>/tmp/he
i=0; until grep -q LOCKED /tmp/e.out; do sleep 0.2; i=$((i+1)); [ $i -lt 100 ] || fail "lock on e: $(cat /tmp/e.out)"; done
say held-e
waitfor checked-e
exec 4>&-
wait
echo "GUEST-E: $(cat /tmp/e.out | tr '\n' ' ')"
say released-e

# 5. The guest "reboots": holding a lock on f, it sends SM_NOTIFY from its
#    monitor list as a rebooted host's sm-notify does; the gateway drops
#    every lock of the guest (the host's FUSE F_SETLK then succeeds).
mkfifo /tmp/hf
knfs-lock $D/f w 0 0 0 stdin < /tmp/hf > /tmp/f.out &
exec 5>/tmp/hf
i=0; until grep -q LOCKED /tmp/f.out; do sleep 0.2; i=$((i+1)); [ $i -lt 100 ] || fail "lock on f: $(cat /tmp/f.out)"; done
ls /var/lib/nfs/sm | sed 's/^/GUEST-SM: /'
cp -p /var/lib/nfs/sm/* /var/lib/nfs/sm.bak/ || fail "no monitor record for the server"
sm-notify -f -d 2>&1 | sed 's/^/GUEST-SMNOTIFY: /' &
say notified-f
waitfor checked-f
exec 5>&-
wait
umount /mnt/n || fail "umount"
echo "GUEST-RESULT: PASS"
"#;

/// Reads a small file through FUSE (may lag a little behind NFS writes).
fn read_ctl(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits until the guest has appended line `want` to `p`.
fn wait_ctl(p: &Path, want: &str, timeout: Duration) -> Result<(), String> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if read_ctl(p).lines().any(|l| l == want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "the guest never said {want} (last: {:?})",
        read_ctl(p)
    ))
}

/// A FUSE-side lock holder (knfs-lock with HOLD=stdin), once it holds.
fn hold(tool: &Path, file: &Path) -> Child {
    let mut child = Command::new(tool)
        .arg(file)
        .args(["w", "0", "0", "1", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting knfs-lock");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("reading knfs-lock");
    assert!(line.starts_with("LOCKED"), "FUSE holder: {line}");
    child
}

/// One F_SETLK attempt through FUSE: the tool's output.
fn try_lock(tool: &Path, file: &Path) -> String {
    let out = Command::new(tool)
        .arg(file)
        .args(["w", "0", "0", "0", "0"])
        .output()
        .expect("running knfs-lock");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the host side saw.
#[derive(Debug)]
struct HostSide {
    /// FUSE's F_SETLK on b while the guest held it.
    fuse_b: String,
    /// The FUSE process holding c.
    holder_pid: u32,
    /// When it released c.
    released: Instant,
    /// When the host saw the guest had c.
    saw_got: Instant,
    /// The gateway restart under the guest's lock on e.
    reclaim: Reclaim,
    /// FUSE's F_SETLK on f after the guest's SM_NOTIFY.
    fuse_f: String,
    /// How long after `notified-f` FUSE got f.
    freed_after: Duration,
}

/// The restart of node01's gateway under a held lock.
#[derive(Debug)]
struct Reclaim {
    /// kill -9 to the new gateway running.
    back: Duration,
    /// kill -9 to the guest's lock reclaimed.
    reclaimed: Duration,
    /// FUSE's F_SETLK on e once reclaimed.
    fuse_after: String,
}

fn gateway_pid(n: &Node) -> Option<i32> {
    n.pids()
        .into_iter()
        .find(|p| kiln_tests::cmdline(*p).contains(" nfs "))
}

/// Kills node01's gateway (-9) while the guest holds a lock on `file`,
/// brings it back with `volume start vol1 force`, and waits for the guest's
/// reclaim (the gateway logs it); then tries FUSE's F_SETLK on `file`.
fn restart_gateway(n: &Node, file: &Path, tool: &Path) -> Result<Reclaim, String> {
    let log_file = n.log_dir().join("nfs.log");
    let reclaims = || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .matches("nlm: lock reclaimed")
            .count()
    };
    let before = reclaims();
    let pid = gateway_pid(n).ok_or("node01 runs no gateway")?;
    // SAFETY: kill(2) on the gateway of the test's own cluster.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err("kill -9 of the gateway failed".into());
    }
    let t = Instant::now();
    while gateway_pid(n) == Some(pid) {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("the gateway did not die".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The CLI's exit status does not matter; the gateway coming back does.
    let _ = n.kiln_timeout(
        &["volume", "start", "vol1", "force"],
        Duration::from_secs(60),
    );
    let mut back = None;
    while reclaims() == before {
        if back.is_none() && gateway_pid(n).is_some_and(|p| p != pid) {
            back = Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(90) {
            return Err(format!(
                "no lock reclaimed within 90 s of the kill (gateway back after {back:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reclaimed = t.elapsed();
    Ok(Reclaim {
        back: back.unwrap_or(reclaimed),
        reclaimed,
        fuse_after: try_lock(tool, file),
    })
}

#[test]
fn kernel_client_locks_over_nlm() {
    check_prerequisites().unwrap();
    let kc = match KernelClient::prepare() {
        Ok(kc) => kc,
        Err(e) => {
            eprintln!(
                "SKIPPED nfs_lock: the Linux NFS client cannot be booted here (qemu TCG): {e:#}"
            );
            return;
        }
    };
    // A short grace period after the gateway restart (the servers, and
    // through them the gateways, inherit the environment).
    std::env::set_var("KILN_NLM_GRACE", "10");
    let t0 = Instant::now();
    let c = Cluster::pool(2).unwrap();
    c.create_started_volume("vol1", &[1, 2]).unwrap();
    let n1 = c.node(1);
    wait_until(
        "node01's gateway to serve NLM on 38466",
        Duration::from_secs(60),
        || {
            let l = n1.listeners();
            l.iter()
                .any(|l| l.port == 2049 && l.cmdline.contains(" nfs "))
                && l.iter()
                    .any(|l| l.port == 38466 && l.cmdline.contains(" nfs "))
        },
    )
    .unwrap();

    let m = c.client().mount("node01:/vol1").unwrap();
    let dir = m.join("locks");
    std::fs::create_dir(&dir).unwrap();
    for f in ["a", "b", "c", "e", "f", "ctl-guest", "ctl-host"] {
        std::fs::write(dir.join(f), b"").unwrap();
    }
    // Pool, volume, gateways and FUSE mount (includes waiting for the
    // harness's cluster slot when other tests hold it).
    let setup = t0.elapsed();
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_knfs-lock"));
    let (ctl_guest, ctl_host) = (dir.join("ctl-guest"), dir.join("ctl-host"));
    // The host appends its lines to ctl-host (the guest greps for them).
    let say = |what: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&ctl_host)
            .unwrap();
        f.write_all(format!("{what}\n").as_bytes()).unwrap();
    };

    // The host's side of the script, in step with the guest, while the
    // guest runs.
    let net = GuestNet::in_namespace(n1.ns());
    let server = n1.addr().to_string();
    let (run, host_side) = std::thread::scope(|sc| {
        let host = sc.spawn(|| -> Result<HostSide, String> {
            wait_ctl(&ctl_guest, "held-b", Duration::from_secs(180))?;
            let fuse_b = try_lock(&tool, &dir.join("b"));
            say("checked-b");
            let mut holder = hold(&tool, &dir.join("c"));
            let holder_pid = holder.id();
            say("fuse-holds-c");
            if let Err(e) = wait_ctl(&ctl_guest, "waiting-c", Duration::from_secs(60)) {
                let _ = holder.kill();
                let _ = holder.wait();
                return Err(e);
            }
            // Let the guest's blocking LOCK reach the gateway and wait.
            std::thread::sleep(Duration::from_secs(4));
            let released = Instant::now();
            if let Some(mut stdin) = holder.stdin.take() {
                let _ = stdin.write_all(b"go\n");
            }
            let _ = holder.wait();
            wait_ctl(&ctl_guest, "got-c", Duration::from_secs(60))?;
            let saw_got = Instant::now();
            wait_ctl(&ctl_guest, "held-e", Duration::from_secs(60))?;
            let reclaim = restart_gateway(n1, &dir.join("e"), &tool)?;
            say("checked-e");
            wait_ctl(&ctl_guest, "released-e", Duration::from_secs(60))?;
            let after = try_lock(&tool, &dir.join("e"));
            if !after.starts_with("LOCKED") {
                return Err(format!(
                    "FUSE could not lock e after the guest released it: {after}"
                ));
            }
            wait_ctl(&ctl_guest, "notified-f", Duration::from_secs(60))?;
            let t = Instant::now();
            let fuse_f = loop {
                let r = try_lock(&tool, &dir.join("f"));
                if r.starts_with("LOCKED") || t.elapsed() > Duration::from_secs(20) {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            let freed_after = t.elapsed();
            say("checked-f");
            Ok(HostSide {
                fuse_f,
                freed_after,
                fuse_b,
                holder_pid,
                released,
                saw_got,
                reclaim,
            })
        });
        let run = kc
            .run_locking(
                &net,
                GUEST_SCRIPT,
                &[("SERVER", server.as_str())],
                &[tool.as_path()],
                Duration::from_secs(240),
            )
            .unwrap();
        // A host side still waiting for a guest that failed gives up on its
        // own timeouts.
        (
            run,
            host.join()
                .unwrap_or_else(|_| Err("the host side panicked".into())),
        )
    });
    let nfs_log = std::fs::read_to_string(n1.log_dir().join("nfs.log")).unwrap_or_default();
    if !run.passed || host_side.is_err() {
        c.dump_logs();
        let tail: Vec<&str> = run.console.lines().rev().take(80).collect();
        panic!(
            "guest: {:?}; host side: {host_side:?}\n--- console (last lines)\n{}",
            run.tagged("FAIL"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let HostSide {
        fuse_b,
        holder_pid,
        released,
        saw_got: host_saw_got,
        reclaim,
        fuse_f,
        freed_after,
    } = host_side.unwrap();

    // Mounted with locking (no nolock), lockd registered in the guest.
    let mounts = run.tagged("MOUNTS");
    assert!(
        !mounts.is_empty() && !mounts[0].contains("nolock"),
        "{mounts:?}"
    );
    assert_eq!(run.tagged("LOCKD"), ["registered"]);
    // 1. Granted fcntl lock and flock.
    let fcntl = run.tagged("FCNTL");
    assert!(
        fcntl[0].starts_with("LOCKED") && fcntl[0].contains("UNLOCKED"),
        "{fcntl:?}"
    );
    assert_eq!(run.tagged("FLOCK"), ["held"]);
    // 2. The guest's lock refused the FUSE client's F_SETLK.
    assert_eq!(fuse_b, "DENIED EAGAIN", "FUSE F_SETLK under a guest lock");
    assert!(
        run.tagged("B")[0].contains("UNLOCKED"),
        "{:?}",
        run.tagged("B")
    );
    // 3. Under the FUSE lock: refusals, TEST names a holder, then the wait.
    let cnb = run.tagged("CNB");
    assert!(cnb[0].starts_with("DENIED"), "{cnb:?}");
    assert_eq!(run.tagged("CFLOCKNB"), ["refused"]);
    let ctest = run.tagged("CTEST");
    // F_GETLK over NLM TEST names the FUSE process (Linux shows a remote
    // holder's pid negated).
    assert_eq!(
        ctest[0],
        format!("HELD -{holder_pid} 0 0 w"),
        "the guest's F_GETLK"
    );
    let got = run.tagged("CGOT");
    assert!(got[0].starts_with("LOCKED"), "{got:?}");
    // The release and the guest's wake-up on one clock (qemu's start).
    let release_at = released.duration_since(run.started);
    let got_at = run.time_of("GUEST-CGOT").expect("GUEST-CGOT time");
    let start_at = run.time_of("GUEST-CWAIT").expect("GUEST-CWAIT time");
    let wake = got_at.saturating_sub(release_at);
    assert!(
        got_at > release_at,
        "the guest got the lock before the FUSE side released it"
    );
    assert!(
        wake < Duration::from_secs(5),
        "the guest went on {wake:?} after the release (GRANTED callback expected at once)"
    );
    assert!(
        nfs_log.contains("GRANTED callback accepted"),
        "the gateway's log shows no accepted GRANTED callback"
    );
    assert!(
        nfs_log.contains("nsm: monitoring a new client host"),
        "{nfs_log}"
    );
    // 4. After the restart: notified, reclaimed in grace, FUSE refused again.
    assert!(nfs_log.contains("clients_to_notify=1"), "{nfs_log}");
    assert!(nfs_log.contains("nsm: SM_NOTIFY sent"), "{nfs_log}");
    assert!(
        nfs_log.contains("in_grace=true"),
        "the reclaim came outside the grace period"
    );
    assert_eq!(
        reclaim.fuse_after, "DENIED EAGAIN",
        "FUSE F_SETLK on the reclaimed lock"
    );
    // 5. The guest's SM_NOTIFY released its lock on f.
    assert!(
        nfs_log.contains("nsm: SM_NOTIFY: a client host restarted"),
        "{:?}",
        run.tagged("SMNOTIFY")
    );
    assert!(
        fuse_f.starts_with("LOCKED"),
        "FUSE F_SETLK on f after the guest's SM_NOTIFY: {fuse_f} (guest: {:?} {:?})",
        run.tagged("SM"),
        run.tagged("SMNOTIFY")
    );
    assert!(
        run.tagged("E")[0].contains("UNLOCKED"),
        "{:?}",
        run.tagged("E")
    );
    eprintln!(
        "nfs_lock figures: setup {:.1}s; guest boot {:.1}s; blocked {:.1}s in all; woken {:.2}s after the FUSE release (host saw it {:.2}s after); \
         gateway kill -9 to running again {:.1}s, to the guest's lock reclaimed {:.1}s; FUSE got the rebooted guest's file {:.1}s after its SM_NOTIFY; \
         qemu total {:.1}s; test total {:.1}s",
        setup.as_secs_f64(),
        run.boot.map(|t| t.as_secs_f64()).unwrap_or(f64::NAN),
        got_at.saturating_sub(start_at).as_secs_f64(),
        wake.as_secs_f64(),
        host_saw_got.duration_since(released).as_secs_f64(),
        reclaim.back.as_secs_f64(),
        reclaim.reclaimed.as_secs_f64(),
        freed_after.as_secs_f64(),
        run.total.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
    );
    m.umount().unwrap();
}
