//! The Linux kernel's own NFSv3 client against Kiln's NFS gateway. A
//! 2-server pool with a distributed volume; `kiln server` starts the
//! gateway on both. A qemu guest (`kiln_tests::knfs`) on a tap device in
//! node01's namespace mounts node01's own address — as a client on the
//! network would — with `mount -t nfs -o vers=3,proto=tcp,nolock`, then
//! over UDP: reads a file written through FUSE, writes files of awkward
//! sizes, reads them back after a remount with checksums, renames within
//! and across directories, lists a directory it filled and a 10,000-entry
//! one made through FUSE, deletes. The host checks the guest's checksums
//! through FUSE and where the files landed on the bricks.
//!
//! Why a tap in node01's namespace: the gateway binds the server's
//! `--listen` address only (never 127.0.0.1, which qemu's user network
//! would need); on the tap the guest's packets to node01's address are
//! local to that namespace, the kernel client keeps its reserved source
//! ports, and the server could call the guest back (NLM, later).

use kiln_tests::brick::{self, Kind};
use kiln_tests::knfs::{GuestNet, KernelClient};
use kiln_tests::{check_prerequisites, wait_for, wait_until, Cluster};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Entries of the directory made through FUSE and listed by the guest.
const BIG_DIR_ENTRIES: usize = 10_000;
/// Entries the guest makes itself, per protocol.
const GUEST_ENTRIES: usize = 200;

/// The guest's script (busybox sh). `$SERVER` is node01's address. The
/// second round asks for NFS over UDP; Debian's kernel refuses it on the
/// client side (`CONFIG_NFS_DISABLE_UDP_SUPPORT=y`, the upstream default
/// since 5.6), so the round then mounts with `mountproto=udp`: the kernel's
/// own portmapper and MOUNT calls go over UDP, NFS over TCP.
const GUEST_SCRIPT: &str = r#"
fail() { echo "GUEST-FAIL: $*"; exit 1; }
mnt() {
  case $MODE in
    tcp|udp) mount -t nfs -o vers=3,proto=$MODE,nolock $SERVER:/vol1 /mnt/n ;;
    mountudp) knfs-mount $SERVER:/vol1 /mnt/n vers=3,proto=tcp,mountproto=udp,nolock,addr=$SERVER,mountaddr=$SERVER ;;
  esac || fail "mount ($MODE)"
}
mkdir -p /mnt/n
for proto in tcp udp; do
  MODE=$proto
  # nfs_debug makes the client say why it refuses a mount.
  [ $proto = udp ] && echo 32767 > /proc/sys/sunrpc/nfs_debug
  if [ $proto = udp ] && ! mount -t nfs -o vers=3,proto=udp,nolock $SERVER:/vol1 /mnt/n 2>/tmp/err; then
    echo 0 > /proc/sys/sunrpc/nfs_debug
    echo "GUEST-NOUDP: $(cat /tmp/err) | $(dmesg | grep -m1 -i 'transport protocol')"
    MODE=mountudp
    mnt
  elif [ $proto = udp ]; then
    echo 0 > /proc/sys/sunrpc/nfs_debug
  elif [ $proto = tcp ]; then
    mnt
  fi
  echo "GUEST-MOUNTED: $proto"
  grep " /mnt/n " /proc/mounts | sed 's/^/GUEST-MOUNTS: /'
  echo "GUEST-HOSTFILE: $proto $(sha256sum /mnt/n/from-host.bin | cut -d' ' -f1)"
  d=/mnt/n/k-$proto
  mkdir $d || fail "mkdir $d"
  for spec in empty:0 one:1 page:4095 mid:65537 big:3145731; do
    name=${spec%%:*}; size=${spec#*:}
    head -c $size /dev/urandom > /tmp/$name
    cp /tmp/$name $d/$name || fail "write $name"
  done
  sync
  echo "GUEST-WRITTEN: $proto"
  # A fresh mount: what follows is read from the server, not the page cache.
  umount /mnt/n || fail "umount after writing"
  mnt
  for name in empty one page mid big; do
    [ "$(stat -c %s $d/$name)" = "$(stat -c %s /tmp/$name)" ] || fail "size of $name: $(stat -c %s $d/$name)"
    cmp /tmp/$name $d/$name || fail "content of $name"
  done
  echo "GUEST-READ: $proto"
  mv $d/mid $d/mid.renamed || fail "rename"
  [ ! -e $d/mid ] && cmp /tmp/mid $d/mid.renamed || fail "after rename"
  mkdir $d/sub || fail "mkdir sub"
  mv $d/page $d/sub/page.moved || fail "rename across directories"
  [ ! -e $d/page ] && cmp /tmp/page $d/sub/page.moved || fail "after the move"
  mkdir $d/many || fail "mkdir many"
  i=0
  while [ $i -lt $ENTRIES ]; do : > $d/many/f$i || fail "create f$i"; i=$((i+1)); done
  n=$(ls $d/many | wc -l)
  [ "$n" = "$ENTRIES" ] || fail "many holds $n entries"
  echo "GUEST-LISTED: $proto"
  n=$(ls /mnt/n/big | wc -l)
  [ "$n" = "$BIG" ] || fail "big holds $n entries"
  ls /mnt/n/big | grep -qx e9999 || fail "e9999 not listed"
  echo "GUEST-BIGLISTED: $proto"
  rm $d/empty || fail "rm"
  [ ! -e $d/empty ] || fail "still there after rm"
  for f in one big mid.renamed sub/page.moved; do
    echo "GUEST-SUM: k-$proto/$f $(sha256sum $d/$f | cut -d' ' -f1)"
  done
  umount /mnt/n || fail "umount"
  echo "GUEST-DONE: $proto"
done
echo "GUEST-RESULT: PASS"
"#;

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic bytes that do not compress.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn kernel_client_over_tcp_and_udp() {
    check_prerequisites().unwrap();
    let kc = match KernelClient::prepare() {
        Ok(kc) => kc,
        Err(e) => {
            eprintln!(
                "SKIPPED nfs_kernel: the Linux NFS client cannot be booted here (qemu TCG): {e:#}"
            );
            return;
        }
    };
    let c = Cluster::pool(2).unwrap();
    let t0 = Instant::now();
    let bricks = c.create_started_volume("vol1", &[1, 2]).unwrap();

    // Both servers run their gateway; status shows them.
    let n1 = c.node(1);
    for node in c.nodes() {
        wait_until(
            &format!("the NFS gateway of {} to listen on 2049", node.name()),
            Duration::from_secs(60),
            || {
                node.listeners()
                    .iter()
                    .any(|l| l.port == 2049 && l.cmdline.contains(" nfs "))
            },
        )
        .unwrap();
    }
    let status = wait_for(
        "status to show both gateways online",
        Duration::from_secs(30),
        || {
            let out = n1.kiln(&["volume", "status", "vol1"])?;
            let nfs: Vec<&str> = out
                .stdout
                .lines()
                .filter(|l| l.starts_with("NFS Server on "))
                .collect();
            let ok = nfs.len() == 2 && nfs.iter().all(|l| l.split_whitespace().nth(5) == Some("Y"));
            Ok(ok.then(|| out.stdout.clone()))
        },
    )
    .unwrap();
    assert!(status.contains("NFS Server on localhost"), "{status}");
    assert!(status.contains("NFS Server on node02"), "{status}");

    // Seed through FUSE: a file the guest reads, and a big directory.
    let m = c.client().mount("node01:/vol1").unwrap();
    let host_file = pattern(3 * 1024 * 1024 + 17);
    std::fs::write(m.join("from-host.bin"), &host_file).unwrap();
    let seed = Instant::now();
    std::fs::create_dir(m.join("big")).unwrap();
    let big_dir = m.join("big");
    std::thread::scope(|s| {
        for t in 0..4 {
            let dir = &big_dir;
            s.spawn(move || {
                for i in (t..BIG_DIR_ENTRIES).step_by(4) {
                    std::fs::File::create(dir.join(format!("e{i}")))
                        .unwrap_or_else(|e| panic!("create big/e{i}: {e}"));
                }
            });
        }
    });
    let seed_time = seed.elapsed();
    let setup = t0.elapsed();

    let net = GuestNet::in_namespace(n1.ns());
    let server = n1.addr().to_string();
    let (entries, big) = (GUEST_ENTRIES.to_string(), BIG_DIR_ENTRIES.to_string());
    let run = kc
        .run(
            &net,
            GUEST_SCRIPT,
            &[
                ("SERVER", server.as_str()),
                ("ENTRIES", entries.as_str()),
                ("BIG", big.as_str()),
            ],
            &[Path::new(env!("CARGO_BIN_EXE_knfs-mount"))],
            Duration::from_secs(240),
        )
        .unwrap();
    if !run.passed {
        c.dump_logs();
        let tail: Vec<&str> = run.console.lines().rev().take(80).collect();
        panic!(
            "the guest failed: {:?}\n--- console (last lines)\n{}",
            run.tagged("FAIL"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    // The mounts were what was asked for: NFSv3 over TCP; then NFS over
    // UDP, or, where the client kernel refuses that, MOUNT over UDP.
    let mounts = run.tagged("MOUNTS");
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert!(
        mounts[0].contains("vers=3") && mounts[0].contains(",proto=tcp"),
        "{mounts:?}"
    );
    let no_udp = run.tagged("NOUDP");
    if no_udp.is_empty() {
        assert!(mounts[1].contains(",proto=udp"), "{mounts:?}");
    } else {
        assert!(
            no_udp[0].contains("Unsupported transport protocol udp"),
            "the UDP mount failed for another reason than the client kernel's refusal: {no_udp:?}"
        );
        assert!(
            mounts[1].contains("vers=3") && mounts[1].contains("mountproto=udp"),
            "{mounts:?}"
        );
        eprintln!("nfs_kernel: the guest kernel has no NFS over UDP ({}); the udp round used mountproto=udp", no_udp[0]);
    }

    // The guest read what FUSE wrote; FUSE reads what the guest wrote.
    let want = sha256_hex(&host_file);
    for l in run.tagged("HOSTFILE") {
        assert!(
            l.ends_with(&want),
            "guest read from-host.bin as {l}, want {want}"
        );
    }
    let sums: BTreeMap<String, String> = run
        .tagged("SUM")
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    assert_eq!(sums.len(), 8, "{sums:?}");
    for (path, sum) in &sums {
        let data = std::fs::read(m.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(&sha256_hex(&data), sum, "{path} through FUSE");
    }
    for proto in ["tcp", "udp"] {
        let d = Path::new("").join(format!("k-{proto}"));
        assert_eq!(
            std::fs::metadata(m.join(d.join("big"))).unwrap().len(),
            3_145_731
        );
        assert!(!m.join(d.join("empty")).exists() && !m.join(d.join("mid")).exists());
        // On the bricks: each file on exactly one, spread over both.
        let mut per_brick = [0usize; 2];
        for i in 0..GUEST_ENTRIES {
            let rel = d.join(format!("many/f{i}"));
            let b =
                brick::data_brick(&bricks, &rel).unwrap_or_else(|| panic!("{rel:?} on no brick"));
            per_brick[b] += 1;
        }
        assert!(per_brick.iter().all(|n| *n > 0), "{proto}: {per_brick:?}");
        for rel in ["mid.renamed", "sub/page.moved", "big"] {
            let holders: Vec<usize> = brick::locate(&bricks, &d.join(rel))
                .into_iter()
                .filter(|(_, e)| e.kind == Kind::File)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(holders.len(), 1, "{proto}/{rel}: data on {holders:?}");
        }
    }

    let at = |p: &str| run.time_of(p).map(|t| t.as_secs_f64()).unwrap_or(f64::NAN);
    eprintln!(
        "nfs_kernel figures: volume start to gateways up + FUSE seed {:.1}s (10,000 FUSE creates {:.1}s); guest boot {:.1}s; \
         tcp mounted {:.1}s, written {:.1}s, read {:.1}s, listed {:.1}s, 10k listed {:.1}s, done {:.1}s; \
         udp mounted {:.1}s, done {:.1}s; qemu total {:.1}s; test total {:.1}s",
        setup.as_secs_f64(),
        seed_time.as_secs_f64(),
        run.boot.map(|t| t.as_secs_f64()).unwrap_or(f64::NAN),
        at("GUEST-MOUNTED: tcp"),
        at("GUEST-WRITTEN: tcp"),
        at("GUEST-READ: tcp"),
        at("GUEST-LISTED: tcp"),
        at("GUEST-BIGLISTED: tcp"),
        at("GUEST-DONE: tcp"),
        at("GUEST-MOUNTED: udp"),
        at("GUEST-DONE: udp"),
        run.total.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
    );
    m.umount().unwrap();

    // nfs.disable on: the real gateways stop (SIGTERM, clean shutdown) and
    // status shows none; off: they come back.
    let gateway = |node: &kiln_tests::Node| {
        node.pids()
            .into_iter()
            .find(|p| kiln_tests::cmdline(*p).contains(" nfs "))
    };
    let before = gateway(n1).expect("node01 runs its gateway");
    n1.kiln_ok(&["volume", "set", "vol1", "nfs.disable", "on"])
        .unwrap();
    for node in c.nodes() {
        wait_until(
            &format!("{}'s gateway to stop", node.name()),
            Duration::from_secs(30),
            || gateway(node).is_none(),
        )
        .unwrap();
    }
    let log = std::fs::read_to_string(n1.log_dir().join("nfs.log")).unwrap();
    assert!(log.contains("nfs gateway stopping"), "{log}");
    let out = n1.kiln_ok(&["volume", "status", "vol1"]).unwrap();
    assert!(!out.contains("NFS Server"), "{out}");
    n1.kiln_ok(&["volume", "set", "vol1", "nfs.disable", "off"])
        .unwrap();
    wait_until(
        "node01's gateway to listen again",
        Duration::from_secs(60),
        || {
            n1.listeners()
                .iter()
                .any(|l| l.port == 2049 && l.cmdline.contains(" nfs ") && l.pid != before)
        },
    )
    .unwrap();
}
