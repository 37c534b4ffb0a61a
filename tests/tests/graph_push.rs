//! New graphs pushed to a running FUSE mount (DESIGN "Management"), on real
//! servers, without remounting:
//! - `add-brick replica 3` under a replica 2 mount holding a file open for
//!   writing: the mount logs `graph 2 active`; a file created afterwards is
//!   on all three bricks; the open file's later writes reach the new brick
//!   (or accuse it, to be healed), its fd keeps working, graph 1 is
//!   released, and once healed all three bricks hold the same bytes as were
//!   written (sha256);
//! - `volume set cluster.quorum-type fixed` + `cluster.quorum-count 2`
//!   reaches the mount: with a brick down a create fails with EROFS, and
//!   `volume reset` of the option lets it through again;
//! - the management daemon the mount watches is killed: the mount moves to
//!   its backup server (`backup-volfile-servers`) and still gets the next
//!   option change.

use kiln_tests::brick;
use kiln_tests::replica::{changelog_clean, create_replicated, sha256, wait_brick};
use kiln_tests::{check_prerequisites, wait_until, Cluster};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Waits until the mount's log has a `graph N active` line containing every
/// one of `parts`; returns that line.
fn wait_graph_line(log: &Path, parts: &[&str]) -> String {
    let mut found = String::new();
    wait_until(
        &format!("{} to log a graph with {parts:?}", log.display()),
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            match text
                .lines()
                .filter(|l| l.contains(" active: "))
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                Some(l) => {
                    found = l.to_string();
                    true
                }
                None => false,
            }
        },
    )
    .unwrap();
    found
}

/// The data counter of `p` against brick `n` of volume `vol`.
fn data_pending(vol: &str, p: &Path, n: usize) -> i64 {
    match brick::get_xattr(p, &format!("trusted.kiln.afr.{vol}-client-{n}")) {
        Ok(Some(v)) if v.len() >= 8 => i64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])),
        _ => 0,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The sha256 of `data` in hex (`sha256sum`, as `replica::sha256`).
fn sha256_bytes(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn add_brick_reaches_a_mounted_client_and_its_open_file() {
    check_prerequisites().unwrap();
    const VOL: &str = "gpv";
    let c = Cluster::pool(3).unwrap();
    let mut bricks = create_replicated(&c, VOL, 2, &[1, 2]);
    let m = c
        .client()
        .mount_with(
            &format!("node01:/{VOL}"),
            &["-o", "backup-volfile-servers=node02"],
        )
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.join("open"))
        .unwrap();
    let first = pattern(1, MIB);
    f.write_all(&first).unwrap();
    f.sync_all().unwrap();

    let b3 = c.node(3).brick_spec(&format!("{VOL}.b2"));
    let out = c
        .node(1)
        .kiln_ok(&["volume", "add-brick", VOL, "replica", "3", &b3, "force"])
        .unwrap();
    assert!(out.contains("Add Brick successful"), "{out}");
    let added_at = std::time::Instant::now();
    bricks.push(c.node(3).brick_dir(&format!("{VOL}.b2")));
    wait_brick(&c, 3, &bricks[2]);
    let line = wait_graph_line(&m.log_file(), &["graph 2 active", "replica 3", &b3]);
    eprintln!(
        "add-brick done -> mount on graph 2: {} ms (polled); {line}",
        added_at.elapsed().as_millis()
    );

    // A file created now is on all three bricks at once.
    let after = pattern(2, 300 * 1024);
    let mut g = std::fs::File::create(m.join("after")).unwrap();
    g.write_all(&after).unwrap();
    g.sync_all().unwrap();
    drop(g);
    for b in &bricks {
        assert_eq!(
            std::fs::read(b.join("after")).ok().as_deref(),
            Some(&after[..]),
            "{}",
            b.display()
        );
    }

    // The file open since before the switch: its fd keeps working, and its
    // new writes reach the new brick or accuse it.
    let second = pattern(3, MIB);
    f.seek(SeekFrom::Start(MIB as u64)).unwrap();
    f.write_all(&second).unwrap();
    f.sync_all().unwrap();
    let on_new = std::fs::read(bricks[2].join("open"))
        .ok()
        .is_some_and(|d| d.len() == 2 * MIB && d[MIB..] == second[..]);
    let accused = data_pending(VOL, &bricks[0].join("open"), 2) > 0
        && data_pending(VOL, &bricks[1].join("open"), 2) > 0;
    assert!(
        on_new || accused,
        "the write after the switch neither reached nor accuses the new brick"
    );
    eprintln!("write after the switch: on the new brick {on_new}, accused {accused}");
    let mut back = vec![0u8; MIB];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert!(
        back == first,
        "the open file reads back wrong after the switch"
    );
    drop(f);
    // Nothing uses graph 1 any more: it is dropped, its connections closed.
    wait_until(
        "the mount to release graph 1",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(m.log_file())
                .unwrap_or_default()
                .contains("graph 1 released")
        },
    )
    .unwrap();

    // Healed (the heal daemon, or a heal the test starts), the three bricks
    // hold exactly what was written; nothing is pending.
    let mut whole = first.clone();
    whole.extend_from_slice(&second);
    let want = sha256_bytes(&whole);
    let _ = c.node(1).kiln(&["volume", "heal", VOL]);
    let healed = wait_until(
        "the three bricks to agree",
        Duration::from_secs(120),
        || {
            bricks.iter().all(|b| {
                sha256(&b.join("open")).as_deref() == Some(want.as_str())
                    && changelog_clean(VOL, 3, &b.join("open"))
            })
        },
    );
    if healed.is_err() {
        c.dump_logs();
    }
    healed.unwrap();
    for b in &bricks {
        assert_eq!(sha256(&b.join("after")), Some(sha256_bytes(&after)));
    }
    drop(m);
}

#[test]
fn quorum_options_reach_a_mounted_client() {
    check_prerequisites().unwrap();
    const VOL: &str = "gpq";
    let c = Cluster::pool(2).unwrap();
    create_replicated(&c, VOL, 2, &[1, 2]);
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    std::fs::write(m.join("before"), b"both up\n").unwrap();

    c.node(1)
        .kiln_ok(&["volume", "set", VOL, "cluster.quorum-type", "fixed"])
        .unwrap();
    c.node(1)
        .kiln_ok(&["volume", "set", VOL, "cluster.quorum-count", "2"])
        .unwrap();
    let set_at = std::time::Instant::now();
    wait_graph_line(
        &m.log_file(),
        &["cluster.quorum-type=fixed", "cluster.quorum-count=2"],
    );
    eprintln!(
        "volume set -> mount on the new graph: {} ms (polled)",
        set_at.elapsed().as_millis()
    );
    c.node(2).kill_bricks().unwrap();
    let err = std::fs::write(m.join("refused"), b"one brick\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // Back to the default (none for two bricks): writes go on with one.
    c.node(1)
        .kiln_ok(&["volume", "reset", VOL, "cluster.quorum-type"])
        .unwrap();
    let text = std::fs::read_to_string(m.log_file()).unwrap_or_default();
    let switches = text.lines().filter(|l| l.contains(" active: ")).count();
    wait_until(
        "the mount to switch after the reset",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(m.log_file())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" active: "))
                .count()
                > switches
        },
    )
    .unwrap();
    std::fs::write(m.join("accepted"), b"one brick\n").unwrap();
    assert_eq!(std::fs::read(m.join("accepted")).unwrap(), b"one brick\n");
    drop(m);
}

#[test]
fn the_mount_follows_the_volume_through_a_backup_server() {
    check_prerequisites().unwrap();
    const VOL: &str = "gpb";
    // node03 holds no brick: with node01's daemon gone, node02 and node03
    // keep the pool's Raft majority and answer the CLI.
    let c = Cluster::pool(3).unwrap();
    create_replicated(&c, VOL, 2, &[1, 2]);
    let m = c
        .client()
        .mount_with(
            &format!("node01:/{VOL}"),
            &["-o", "backup-volfile-servers=node02"],
        )
        .unwrap();
    std::fs::write(m.join("before"), b"watched on node01\n").unwrap();
    // The management daemon the mount watches dies (its bricks go on).
    c.node(1).kill_server().unwrap();
    wait_until(
        "the mount to notice its watch is lost",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(m.log_file())
                .unwrap_or_default()
                .contains("volume spec watch lost")
        },
    )
    .unwrap();
    c.node(2)
        .kiln_ok(&["volume", "set", VOL, "network.ping-timeout", "17"])
        .unwrap();
    let line = wait_graph_line(
        &m.log_file(),
        &["graph 2 active", "network.ping-timeout=17"],
    );
    eprintln!("through the backup server: {line}");
    // The mount still works, on the new graph.
    std::fs::write(m.join("after"), b"watched on node02\n").unwrap();
    assert_eq!(
        std::fs::read(m.join("before")).unwrap(),
        b"watched on node01\n"
    );
    drop(m);
}
