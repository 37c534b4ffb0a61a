//! NFS failover as an admin runs it, with the Linux kernel's own NFSv3
//! client: a replica 2 volume on node01 (A) and node02 (B), and a floating
//! service address (a VIP, as keepalived or CTDB give it) on A. A qemu
//! guest (`kiln_tests::knfs`) behind the client host (which routes for it)
//! mounts `VIP:/vol` (vers=3, tcp, hard), writes files, keeps one open and
//! leaves some data unsynced; then A is killed (-9, the whole server), the
//! VIP moves to B (gratuitous ARP from B, as keepalived sends), and the
//! guest goes on with the same handles: it keeps writing the open file and
//! creating files through the outage, reads the old files back, creates
//! new ones and lists, with no ESTALE and nothing lost: the checksums in
//! the guest (taken before the kill, and again after dropping its caches)
//! match each other and the files on B's brick. The open file's contents
//! are known, so B's brick copy is compared byte for byte.
//!
//! The volume sets `nfs.bind-all` (the gateways listen on all addresses,
//! not only the server's `--listen` one): without it the VIP reaches no
//! gateway.
//!
//! Locks do not follow (mounted `nolock`): B's gateway has no record of
//! the clients A's gateway monitored, so nothing tells the guest to
//! reclaim (ARCHITECTURE.md, "Known debt").

use kiln_tests::knfs::{GuestNet, KernelClient};
use kiln_tests::replica::{create_replicated_with, sha256};
use kiln_tests::{check_prerequisites, wait_until, Cluster, NetNs, Node};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const VOL: &str = "vkfo";
/// Where the guest tells the host it is ready for the failover (a TCP
/// connection to the client host's side of the tap).
const SIGNAL_PORT: u16 = 7001;
/// Lines the guest writes to the open file in each phase.
const LINES: usize = 50;
/// Rounds of (append to the open file, create a file) during the failover.
const TICKS: usize = 80;

const GUEST_SCRIPT: &str = r#"
fail() { echo "GUEST-FAIL: $*"; exit 1; }
sum() { sha256sum "$1" | cut -d' ' -f1; }
mkdir -p /mnt/n
knfs-mount $VIP:/$VOL /mnt/n vers=3,proto=tcp,mountproto=tcp,hard,nolock,addr=$VIP,mountaddr=$VIP || fail "mount"
grep " /mnt/n " /proc/mounts | sed 's/^/GUEST-MOUNTS: /'
D=/mnt/n/fo
mkdir $D || fail "mkdir"
for i in 1 2 3; do
  dd if=/dev/urandom of=$D/old$i bs=65536 count=$((i*7)) 2>/dev/null || fail "write old$i"
done
exec 3>$D/open.log || fail "open open.log"
i=0; while [ $i -lt $LINES ]; do echo "before $i" >&3 || fail "write open.log"; i=$((i+1)); done
sync
for f in old1 old2 old3; do echo "GUEST-BEFORE: $f $(sum $D/$f)"; done
# Data in the guest's page cache, never committed to A.
dd if=/dev/urandom of=$D/unsynced bs=65536 count=24 2>/dev/null || fail "write unsynced"
echo "GUEST-BEFORE: unsynced $(sum $D/unsynced)"
echo ready | nc $KNFS_HOST_IP $SIGNAL_PORT || fail "signalling the host"
echo "GUEST-SIGNALLED"
# A dies and the VIP moves while these run.
i=0
while [ $i -lt $TICKS ]; do
  echo "during $i" >&3 || fail "write open.log during $i"
  : > $D/tick-$i || fail "create tick-$i"
  echo "GUEST-TICK: $i"
  sleep 0.1
  i=$((i+1))
done
i=0; while [ $i -lt $LINES ]; do echo "after $i" >&3 || fail "write open.log after"; i=$((i+1)); done
exec 3>&-
for f in old1 old2 old3; do echo "GUEST-AFTER: $f $(sum $D/$f)"; done
for i in 1 2; do
  dd if=/dev/urandom of=$D/new$i bs=65536 count=$((i*5)) 2>/dev/null || fail "write new$i"
done
sync
echo "GUEST-LS: $(ls $D | sort | tr '\n' ' ')"
echo 3 > /proc/sys/vm/drop_caches
for f in old1 old2 old3 unsynced open.log new1 new2; do
  s=$(sum $D/$f) || fail "reading $f back"
  echo "GUEST-SUM: $f $s"
done
dmesg | grep -i -E "nfs|stale|rpc" | sed 's/^/GUEST-DMESG: /'
grep -E "xprt:|^ *(CREATE|WRITE|COMMIT|READ):" /proc/self/mountstats | sed 's/^ */GUEST-STATS: /'
umount /mnt/n || fail "umount"
echo "GUEST-RESULT: PASS"
"#;

/// What the open file must hold: the guest's three phases of lines.
fn expected_open_log() -> String {
    let mut s = String::new();
    for i in 0..LINES {
        s.push_str(&format!("before {i}\n"));
    }
    for i in 0..TICKS {
        s.push_str(&format!("during {i}\n"));
    }
    for i in 0..LINES {
        s.push_str(&format!("after {i}\n"));
    }
    s
}

fn ip(ns: &NetNs, args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let out = ns.run(&argv).unwrap();
    assert!(
        out.success(),
        "ip {args:?} in {}: {}",
        ns.name(),
        out.stderr
    );
}

/// The floating service address of `node`'s subnet (.250).
fn vip_of(node: &Node) -> Ipv4Addr {
    let [a, b, c, _] = node.addr().octets();
    Ipv4Addr::new(a, b, c, 250)
}

/// Moves the VIP from `from` (its server dead) to `to`, and announces it
/// from `to` with unsolicited ARP, as keepalived does on takeover. Returns
/// when it was up on `to` and arping's first line.
fn move_vip(vip: Ipv4Addr, from: &Node, to: &Node) -> (Instant, String) {
    let cidr = format!("{vip}/32");
    ip(from.ns(), &["addr", "del", &cidr, "dev", "eth0"]);
    ip(to.ns(), &["addr", "add", &cidr, "dev", "eth0"]);
    let up = Instant::now();
    let out = to
        .ns()
        .run(&["arping", "-U", "-c", "2", "-I", "eth0", &vip.to_string()])
        .unwrap();
    (
        up,
        out.stdout.lines().next().unwrap_or_default().to_string(),
    )
}

/// Waits until `node`'s gateway serves NFS and MOUNT on all addresses
/// (started without `--listen`).
fn wait_gateway(node: &Node) {
    wait_until(
        &format!("{}'s gateway on 2049 and 38465, all addresses", node.name()),
        Duration::from_secs(60),
        || {
            let l = node.listeners();
            [2049, 38465].iter().all(|p| {
                l.iter().any(|l| {
                    l.port == *p && l.cmdline.contains(" nfs ") && !l.cmdline.contains("--listen")
                })
            })
        },
    )
    .unwrap();
}

/// When the host side killed A and moved the VIP.
#[derive(Debug)]
struct Failover {
    /// kill -9 of A sent.
    killed: Instant,
    /// The VIP up on B (announced right after).
    moved: Instant,
    /// arping's first line.
    arping: String,
}

/// Waits for the guest's signal on `listener`, then kills A and moves the
/// VIP to B. Gives up when `done` is set (the guest ended without
/// signalling) or after `timeout`.
fn fail_over(
    listener: &TcpListener,
    done: &AtomicBool,
    timeout: Duration,
    vip: Ipv4Addr,
    a: &Node,
    b: &Node,
) -> Result<Failover, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let t = Instant::now();
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                let mut line = String::new();
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.read_to_string(&mut line);
                if line.trim() == "ready" {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
        if done.load(Ordering::SeqCst) || t.elapsed() > timeout {
            return Err("the guest never signalled".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the guest's writes and creates be under way.
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    a.kill().map_err(|e| format!("kill -9 of A: {e:#}"))?;
    let (moved, arping) = move_vip(vip, a, b);
    Ok(Failover {
        killed,
        moved,
        arping,
    })
}

/// `GUEST-<tag>: NAME SUM` lines as a map.
fn sums(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_string(), s.trim().to_string()))
        .collect()
}

#[test]
fn kernel_client_follows_the_vip_to_another_server() {
    check_prerequisites().unwrap();
    let kc = match KernelClient::prepare() {
        Ok(kc) => kc,
        Err(e) => {
            eprintln!(
                "SKIPPED nfs_failover_kernel: the Linux NFS client cannot be booted here (qemu TCG): {e:#}"
            );
            return;
        }
    };
    // Checked before the guest mounts: a failed move would leave its hard
    // mount hanging until the guest's timeout.
    let arping = std::process::Command::new("arping").arg("-V").output();
    assert!(
        arping.is_ok(),
        "arping missing: install iputils-arping (scripts/test.sh does)"
    );
    let t0 = Instant::now();
    let c = Cluster::pool(2).unwrap();
    let (a, b) = (c.node(1), c.node(2));
    // The gateways listen on every address of their host, so the VIP
    // reaches them.
    let bricks: Vec<PathBuf> =
        create_replicated_with(&c, VOL, 2, &[1, 2], &[("nfs.bind-all", "on")]);
    wait_gateway(a);
    wait_gateway(b);

    // The guest sits behind the client host, which routes for it; the
    // servers route the guest's subnet through the client host.
    let net = GuestNet::in_namespace(c.client().ns());
    let client_ns = c.client().ns();
    let out = client_ns
        .sh("echo 1 > /proc/sys/net/ipv4/ip_forward")
        .unwrap();
    assert!(out.success(), "ip_forward: {}", out.stderr);
    let guest_net = format!("{}/24", {
        let [p, q, r, _] = net.guest_ip.octets();
        Ipv4Addr::new(p, q, r, 0)
    });
    for n in [a, b] {
        ip(
            n.ns(),
            &[
                "route",
                "add",
                &guest_net,
                "via",
                &c.client().addr().to_string(),
            ],
        );
    }
    let vip = vip_of(a);
    ip(
        a.ns(),
        &["addr", "add", &format!("{vip}/32"), "dev", "eth0"],
    );
    let listener = client_ns
        .enter(|| TcpListener::bind(("0.0.0.0", SIGNAL_PORT)))
        .unwrap()
        .unwrap();
    let setup = t0.elapsed();

    let tool = PathBuf::from(env!("CARGO_BIN_EXE_knfs-mount"));
    let (vip_s, ticks, lines, port) = (
        vip.to_string(),
        TICKS.to_string(),
        LINES.to_string(),
        SIGNAL_PORT.to_string(),
    );
    let env = [
        ("VIP", vip_s.as_str()),
        ("VOL", VOL),
        ("TICKS", ticks.as_str()),
        ("LINES", lines.as_str()),
        ("SIGNAL_PORT", port.as_str()),
    ];
    let done = AtomicBool::new(false);
    let timeout = Duration::from_secs(400);
    let (run, failover) = std::thread::scope(|sc| {
        let host = sc.spawn(|| fail_over(&listener, &done, timeout, vip, a, b));
        let run = kc.run(&net, GUEST_SCRIPT, &env, &[tool.as_path()], timeout);
        done.store(true, Ordering::SeqCst);
        let failover = host
            .join()
            .unwrap_or_else(|_| Err("the host side panicked".into()));
        (run.unwrap(), failover)
    });
    if !run.passed || failover.is_err() {
        c.dump_logs();
        let tail: Vec<&str> = run.console.lines().rev().take(80).collect();
        panic!(
            "guest: {:?}; host side: {failover:?}\n--- console (last lines)\n{}",
            run.tagged("FAIL"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let failover = failover.unwrap();

    // The mount really is hard, TCP, NFSv3, on the VIP.
    let mounts = run.tagged("MOUNTS");
    assert!(
        mounts.len() == 1
            && mounts[0].starts_with(&format!("{vip}:/{VOL} "))
            && ["vers=3", "proto=tcp", "hard"]
                .iter()
                .all(|o| mounts[0].contains(o)),
        "{mounts:?}"
    );
    // The failover happened under the guest's I/O: it signalled, A died,
    // and ticks went on after the VIP moved.
    let killed_at = failover.killed.duration_since(run.started);
    let moved_at = failover.moved.duration_since(run.started);
    let ticks: Vec<Duration> = run
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("GUEST-TICK: "))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(ticks.len(), TICKS, "every tick ran");
    let after_move = ticks.iter().filter(|t| **t > moved_at).count();
    assert!(
        after_move > 0,
        "no I/O after the VIP moved (moved at {moved_at:?}, ticks {ticks:?})"
    );
    let resumed = ticks
        .iter()
        .find(|t| **t > moved_at)
        .map(|t| t.saturating_sub(moved_at))
        .unwrap_or_default();
    let stall = ticks
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or_default();

    // Same data before the kill, after it, and after the guest dropped its
    // caches (so read from B); the unsynced file was written again to B.
    let before = sums(&run.tagged("BEFORE"));
    let after = sums(&run.tagged("AFTER"));
    let reread = sums(&run.tagged("SUM"));
    for f in ["old1", "old2", "old3"] {
        assert_eq!(after.get(f), before.get(f), "{f} read after the failover");
    }
    for f in ["old1", "old2", "old3", "unsynced"] {
        assert!(before.contains_key(f), "{before:?}");
        assert_eq!(reread.get(f), before.get(f), "{f} read back from B");
    }
    assert_eq!(reread.len(), 7, "{reread:?}");
    // The listing: every file, the ticks created during the outage too.
    let ls: Vec<String> = run
        .tagged("LS")
        .first()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut want: Vec<String> = [
        "new1", "new2", "old1", "old2", "old3", "open.log", "unsynced",
    ]
    .map(String::from)
    .to_vec();
    want.extend((0..TICKS).map(|i| format!("tick-{i}")));
    want.sort();
    assert_eq!(ls, want, "the guest's listing after the failover");
    let dmesg = run.tagged("DMESG");
    assert!(
        !dmesg.iter().any(|l| l.to_lowercase().contains("stale")),
        "{dmesg:?}"
    );

    // B's brick holds what the guest has, byte for byte for the open file.
    let on_b = |f: &str| bricks[1].join("fo").join(f);
    wait_until(
        "B's brick to hold the guest's files",
        Duration::from_secs(20),
        || {
            reread
                .iter()
                .all(|(f, s)| sha256(&on_b(f)).as_deref() == Some(s.as_str()))
        },
    )
    .unwrap_or_else(|e| {
        let got: Vec<_> = reread
            .keys()
            .map(|f| (f.clone(), sha256(&on_b(f))))
            .collect();
        panic!("{e:#}: guest {reread:?}, B's brick {got:?}")
    });
    let open_log = std::fs::read_to_string(on_b("open.log")).unwrap();
    assert!(
        open_log == expected_open_log(),
        "open.log on B's brick differs from what the guest wrote ({} bytes, {} expected)",
        open_log.len(),
        expected_open_log().len()
    );
    assert!(on_b("tick-0").is_file());

    eprintln!(
        "nfs_failover_kernel figures: setup {:.1}s; guest boot {:.1}s; kill -9 of A to the VIP up on B {:.2}s (arping: {}); \
         first create done {:.2}s after the VIP came up; longest gap between creates {:.2}s (one every 0.1 s otherwise); \
         guest mountstats {:?}; qemu total {:.1}s; test total {:.1}s",
        setup.as_secs_f64(),
        run.boot.map(|t| t.as_secs_f64()).unwrap_or(f64::NAN),
        moved_at.saturating_sub(killed_at).as_secs_f64(),
        failover.arping,
        resumed.as_secs_f64(),
        stall.as_secs_f64(),
        run.tagged("STATS"),
        run.total.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
    );
}
