//! The self-heal daemon and `kiln volume heal`, on real servers:
//! - a 2 x 2 volume loses a server (kill -9) while files are written,
//!   created, removed and renamed through FUSE; `heal info` lists what is
//!   pending; the server returns and the heal daemon heals it with no
//!   client access; the bricks, read directly, agree (gfid, sha256, clean
//!   changelogs); `heal statistics` shows the crawl;
//! - a split-brain made on purpose (quorum none, each side written while
//!   the other is down) gives EIO, shows in `heal info split-brain`, and is
//!   resolved by bigger-file, latest-mtime and source-brick;
//! - `add-brick replica 3` on a live replica 2 volume, then `heal full`:
//!   the new brick holds every file with the same gfid and bytes.

use kiln_tests::brick;
use kiln_tests::replica::{changelog_clean, create_replicated, sha256, wait_brick};
use kiln_tests::{check_prerequisites, wait_for, wait_until, Cluster};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every entry of a brick by path.
fn listing(b: &Path) -> BTreeMap<PathBuf, brick::Entry> {
    brick::scan(b)
        .into_iter()
        .map(|e| (e.rel.clone(), e))
        .collect()
}

/// Differences between two bricks of a set: names, gfids, kinds, bytes,
/// and changelogs still set. Empty when they agree.
fn differences(vol: &str, n: usize, a: &Path, b: &Path) -> Vec<String> {
    let (la, lb) = (listing(a), listing(b));
    let mut out = Vec::new();
    for rel in la.keys().chain(lb.keys()) {
        let (Some(x), Some(y)) = (la.get(rel), lb.get(rel)) else {
            out.push(format!("{}: on one brick only", rel.display()));
            continue;
        };
        if x.gfid.is_none() || x.gfid != y.gfid || x.kind != y.kind {
            out.push(format!("{}: gfid or kind differ", rel.display()));
        }
        if x.kind == brick::Kind::File && sha256(&a.join(rel)) != sha256(&b.join(rel)) {
            out.push(format!("{}: bytes differ", rel.display()));
        }
        if !changelog_clean(vol, n, &a.join(rel)) || !changelog_clean(vol, n, &b.join(rel)) {
            out.push(format!("{}: changelog still set", rel.display()));
        }
    }
    if !changelog_clean(vol, n, a) || !changelog_clean(vol, n, b) {
        out.push("/: changelog still set".into());
    }
    out.sort();
    out.dedup();
    out
}

/// `heal VOL info` as JSON: per brick, (connected, entries).
fn heal_info(c: &Cluster, node: usize, vol: &str, split: bool) -> Vec<(String, bool, Vec<String>)> {
    let mut args = vec!["volume", "heal", vol, "info"];
    if split {
        args.push("split-brain");
    }
    let v: Value = c.node(node).kiln_json(&args).unwrap();
    v["bricks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["brick"].as_str().unwrap_or_default().to_string(),
                b["connected"].as_bool().unwrap_or(false),
                b["entries"]
                    .as_array()
                    .map(|e| {
                        e.iter()
                            .map(|x| x.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn the_heal_daemon_heals_a_returning_server_without_clients() {
    check_prerequisites().unwrap();
    const VOL: &str = "hv";
    let c = Cluster::pool(2).unwrap();
    // Two replica sets, each with a copy on node01 and one on node02.
    let bricks = create_replicated(&c, VOL, 2, &[1, 2, 1, 2]);
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    for i in 0..20 {
        std::fs::write(m.join(format!("f{i}")), format!("before {i}\n").repeat(100)).unwrap();
    }
    std::fs::create_dir(m.join("dir")).unwrap();
    std::fs::write(m.join("dir/inner"), b"inner\n").unwrap();
    // Both heal daemons answer, nothing pending.
    wait_until(
        "heal info to show four clean bricks",
        Duration::from_secs(60),
        || {
            let info = c.node(1).kiln_json(&["volume", "heal", VOL, "info"]);
            info.is_ok_and(|v| {
                v["bricks"].as_array().is_some_and(|b| {
                    b.len() == 4
                        && b.iter().all(|x| {
                            x["connected"].as_bool() == Some(true)
                                && x["number_of_entries"].as_u64() == Some(0)
                        })
                })
            })
        },
    )
    .unwrap();

    c.node(2).kill().unwrap();
    // Writes, creates, deletes, renames while node02 is down.
    for i in 0..5 {
        std::fs::write(m.join(format!("f{i}")), format!("after {i}\n").repeat(300)).unwrap();
    }
    for i in 5..8 {
        std::fs::remove_file(m.join(format!("f{i}"))).unwrap();
    }
    std::fs::rename(m.join("f8"), m.join("renamed8")).unwrap();
    std::fs::rename(m.join("dir"), m.join("dir2")).unwrap();
    std::fs::create_dir(m.join("new")).unwrap();
    for i in 0..10 {
        std::fs::write(m.join(format!("new/n{i}")), format!("new {i}\n").repeat(50)).unwrap();
    }
    std::fs::write(m.join("dir2/inner"), b"changed inner\n").unwrap();

    let info = heal_info(&c, 1, VOL, false);
    assert_eq!(info.len(), 4, "{info:?}");
    let (b0, up0, _) = &info[0];
    assert!(
        b0.ends_with(&format!("{VOL}.b0")) && *up0 && info[2].1,
        "{info:?}"
    );
    let pending: Vec<&String> = info[0].2.iter().chain(&info[2].2).collect();
    assert!(pending.len() >= 5, "node01's bricks list {pending:?}");
    assert!(
        info[0].2.iter().any(|p| p == "/")
            && info[2].2.iter().any(|p| p == "/")
            && pending.iter().any(|p| *p == "/new"),
        "pending entries are named by path: {pending:?}"
    );
    assert!(
        !info[1].1 && !info[3].1,
        "node02's bricks show connected: {info:?}"
    );
    let count = c
        .node(1)
        .kiln_json(&["volume", "heal", VOL, "statistics", "heal-count"])
        .unwrap();
    assert_eq!(
        count["bricks"][0]["count"].as_u64(),
        Some(info[0].2.len() as u64),
        "{count}"
    );
    let text = c.node(1).kiln_ok(&["volume", "heal", VOL, "info"]).unwrap();
    assert!(
        text.contains(&format!(
            "Brick {}\nNumber of entries: {}\n",
            c.node(1).brick_spec(&format!("{VOL}.b0")),
            info[0].2.len()
        )) && text.contains("Status: Brick is Not connected"),
        "{text}"
    );

    // node02 returns; nobody touches the mount: the heal daemon heals.
    let started = std::time::Instant::now();
    c.node(2).start().unwrap();
    wait_brick(&c, 2, &bricks[1]);
    wait_brick(&c, 2, &bricks[3]);
    let healed = wait_for(
        "heal info to show no entries",
        Duration::from_secs(120),
        || {
            let info = heal_info(&c, 1, VOL, false);
            Ok(
                (info.len() == 4 && info.iter().all(|(_, up, e)| *up && e.is_empty()))
                    .then_some(()),
            )
        },
    );
    if healed.is_err() {
        c.dump_logs();
    }
    healed.unwrap();
    eprintln!("healed {:?} after node02 started", started.elapsed());
    for set in [0, 2] {
        let diff = differences(VOL, 4, &bricks[set], &bricks[set + 1]);
        assert!(
            diff.is_empty(),
            "set {set}: bricks differ after heal: {diff:?}"
        );
    }
    // node02's copy of each file, in the set that holds it.
    let twin = |rel: &str| -> PathBuf {
        let set = [0, 2]
            .into_iter()
            .find(|i| {
                brick::entry(&bricks[*i], Path::new(rel))
                    .is_some_and(|e| e.kind != brick::Kind::LinkFile)
            })
            .unwrap_or_else(|| panic!("{rel} on no brick of node01"));
        bricks[set + 1].join(rel)
    };
    assert!(twin("renamed8").exists() && twin("dir2/inner").exists());
    for gone in ["f8", "f6"] {
        assert!(bricks.iter().all(|b| !b.join(gone).exists()), "{gone}");
    }
    assert_eq!(
        std::fs::read(twin("f3")).unwrap(),
        "after 3\n".repeat(300).into_bytes()
    );

    // The crawl that did it shows in the statistics.
    let stats = c
        .node(1)
        .kiln_json(&["volume", "heal", VOL, "statistics"])
        .unwrap();
    let healed_by_crawls: u64 = [0, 2]
        .iter()
        .flat_map(|i| stats["bricks"][i]["crawls"].as_array().unwrap())
        .map(|r| r["healed"].as_u64().unwrap_or(0))
        .sum();
    assert!(healed_by_crawls >= 3, "{stats}");
    let text = c
        .node(2)
        .kiln_ok(&["volume", "heal", VOL, "statistics"])
        .unwrap();
    assert!(
        text.contains("Crawl statistics for brick no 0")
            && text.contains("Type of crawl: INDEX")
            && text.contains("No. of entries healed: "),
        "{text}"
    );
    // `heal VOL` launches a crawl.
    let out = c.node(2).kiln_ok(&["volume", "heal", VOL]).unwrap();
    assert!(out.contains("has been successful"), "{out}");
    // GlusterFS 3.3's `info healed`: what the daemon healed, with times.
    let healed: Value = c
        .node(2)
        .kiln_json(&["volume", "heal", VOL, "info", "healed"])
        .unwrap();
    let on1: Vec<&Value> = [0, 2]
        .iter()
        .flat_map(|i| healed["bricks"][i]["entries"].as_array().unwrap())
        .collect();
    assert!(on1.iter().any(|e| *e == "/f3"), "{healed}");
    let text = c
        .node(1)
        .kiln_ok(&["volume", "heal", VOL, "info", "healed"])
        .unwrap();
    assert!(
        text.contains("at                    path on brick\n"),
        "{text}"
    );
    // `volume status` shows both heal daemons.
    let status = c.node(1).kiln_ok(&["volume", "status", VOL]).unwrap();
    let shd: Vec<Vec<&str>> = status
        .lines()
        .filter(|l| l.starts_with("Self-heal Daemon on"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(shd.len(), 2, "{status}");
    assert!(shd.iter().all(|l| l[5] == "Y"), "{status}");
    // The daemon logs under the log directory.
    let log = std::fs::read_to_string(c.node(1).log_dir().join("shd.log")).unwrap();
    assert!(log.contains("index crawl done"), "{log}");
    // node02's brick processes die, its server lives: its bricks show not
    // connected, node01's answer.
    c.node(2).kill_bricks().unwrap();
    let info = heal_info(&c, 2, VOL, false);
    let up: Vec<bool> = info.iter().map(|(_, up, _)| *up).collect();
    assert_eq!(up, [true, false, true, false], "{info:?}");
}

/// Reads `rel` through a fresh mount (no cached pages or attributes).
fn fresh_read(c: &Cluster, vol: &str, rel: &str) -> std::io::Result<Vec<u8>> {
    let m = c.client().mount(&format!("node01:/{vol}")).unwrap();
    std::fs::read(m.join(rel))
}

/// Waits until `rel` on brick `b` holds `want`.
fn wait_brick_content(b: &Path, rel: &str, want: &[u8]) {
    wait_until(
        &format!(
            "{} to hold {:?}",
            b.join(rel).display(),
            String::from_utf8_lossy(want)
        ),
        Duration::from_secs(30),
        || std::fs::read(b.join(rel)).is_ok_and(|x| x == want),
    )
    .unwrap();
}

#[test]
fn split_brain_is_detected_and_resolved_by_each_policy() {
    check_prerequisites().unwrap();
    const VOL: &str = "sbv";
    // node03 holds no brick: it keeps the pool's Raft majority while
    // node01 or node02 is down, and answers the CLI.
    let c = Cluster::pool(3).unwrap();
    let bricks = create_replicated(&c, VOL, 2, &[1, 2]);
    c.node(1)
        .kiln_ok(&["volume", "set", VOL, "cluster.quorum-type", "none"])
        .unwrap();
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    let files = ["sb1", "sb2", "sb3", "sb4"];
    for f in files {
        std::fs::write(m.join(f), b"init\n").unwrap();
    }
    for f in files {
        wait_brick_content(&bricks[1], f, b"init\n");
    }
    let side1: [&[u8]; 4] = [
        &[b'1'; 3000],
        b"older on node01\n",
        b"from node01\n",
        b"node01 sb4\n",
    ];
    let side2: [&[u8]; 4] = [
        b"small\n",
        b"newest on node02\n",
        b"from node02\n",
        b"node02 sb4\n",
    ];
    // Round 1: node02 down, node01's copies change.
    c.node(2).kill().unwrap();
    for (f, data) in files.iter().zip(side1) {
        std::fs::write(m.join(f), data).unwrap();
    }
    for (f, data) in files.iter().zip(side1) {
        wait_brick_content(&bricks[0], f, data);
    }
    // Round 2: node01 down before node02 returns (so nobody heals), and
    // node02's copies change.
    c.node(1).kill().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    c.node(2).start().unwrap();
    wait_brick(&c, 2, &bricks[1]);
    wait_until(
        "the client to write to node02 again",
        Duration::from_secs(60),
        || std::fs::write(m.join(files[0]), side2[0]).is_ok(),
    )
    .unwrap();
    for (f, data) in files.iter().zip(side2) {
        std::fs::write(m.join(f), data).unwrap();
    }
    for (f, data) in files.iter().zip(side2) {
        wait_brick_content(&bricks[1], f, data);
    }
    drop(m);
    // Both back: the copies accuse each other.
    c.node(1).start().unwrap();
    wait_brick(&c, 1, &bricks[0]);
    let err = fresh_read(&c, VOL, "sb1").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let listed = wait_for(
        "heal info split-brain to list the files",
        Duration::from_secs(60),
        || {
            let info = heal_info(&c, 3, VOL, true);
            let all = info
                .iter()
                .all(|(_, up, e)| *up && files.iter().all(|f| e.contains(&format!("/{f}"))));
            Ok(all.then_some(info))
        },
    );
    if listed.is_err() {
        c.dump_logs();
    }
    let listed = listed.unwrap();
    eprintln!("heal info split-brain: {listed:?}");
    let text = c
        .node(3)
        .kiln_ok(&["volume", "heal", VOL, "info", "split-brain"])
        .unwrap();
    assert!(text.contains("Number of entries: 4\n/sb"), "{text}");
    // Still in split-brain after the heal daemon had its chances.
    c.node(1).kiln_ok(&["volume", "heal", VOL]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(fresh_read(&c, VOL, "sb2").is_err());

    // bigger-file: node01's 3000 bytes win.
    let out = c
        .node(3)
        .kiln_ok(&["volume", "heal", VOL, "split-brain", "bigger-file", "/sb1"])
        .unwrap();
    assert!(out.contains("Healed /sb1"), "{out}");
    // latest-mtime: node02's copy, written last, wins.
    c.node(2)
        .kiln_ok(&["volume", "heal", VOL, "split-brain", "latest-mtime", "sb2"])
        .unwrap();
    // source-brick with a file: node02's copy of sb3.
    let b2 = c.node(2).brick_spec(&format!("{VOL}.b1"));
    let b1 = c.node(1).brick_spec(&format!("{VOL}.b0"));
    c.node(1)
        .kiln_ok(&[
            "volume",
            "heal",
            VOL,
            "split-brain",
            "source-brick",
            &b2,
            "/sb3",
        ])
        .unwrap();
    // A file not in split-brain is refused.
    let out = c
        .node(1)
        .kiln(&["volume", "heal", VOL, "split-brain", "bigger-file", "/sb1"])
        .unwrap();
    assert!(
        !out.success() && out.stderr.contains("not in split-brain"),
        "{out}"
    );
    // source-brick without a file: every file left in split-brain (sb4).
    let out = c
        .node(3)
        .kiln_ok(&["volume", "heal", VOL, "split-brain", "source-brick", &b1])
        .unwrap();
    assert!(out.contains("Number of healed entries: 1"), "{out}");

    let want: [&[u8]; 4] = [side1[0], side2[1], side2[2], side1[3]];
    for (f, w) in files.iter().zip(want) {
        assert_eq!(fresh_read(&c, VOL, f).unwrap(), w, "{f}");
        for b in &bricks {
            assert_eq!(
                std::fs::read(b.join(f)).unwrap(),
                w,
                "{f} on {}",
                b.display()
            );
            assert!(
                changelog_clean(VOL, 2, &b.join(f)),
                "{f} on {}",
                b.display()
            );
        }
    }
    wait_until(
        "heal info split-brain to be empty",
        Duration::from_secs(30),
        || {
            heal_info(&c, 3, VOL, true)
                .iter()
                .all(|(_, up, e)| *up && e.is_empty())
        },
    )
    .unwrap();
}

#[test]
fn add_brick_raises_the_replica_count_and_heal_full_fills_the_new_brick() {
    check_prerequisites().unwrap();
    const VOL: &str = "abv";
    let c = Cluster::pool(3).unwrap();
    let mut bricks = create_replicated(&c, VOL, 2, &[1, 2]);
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    for d in 0..5 {
        let dir = m.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        for i in 0..10 {
            std::fs::write(
                dir.join(format!("f{i}")),
                format!("{d}/{i}\n").repeat(i * 40 + 1),
            )
            .unwrap();
        }
        std::fs::write(dir.join("sub/deep"), format!("deep {d}\n")).unwrap();
    }
    std::fs::write(m.join("top"), vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("d0/f1", m.join("link")).unwrap();
    drop(m);

    let b3 = c.node(3).brick_spec(&format!("{VOL}.b2"));
    let out = c
        .node(1)
        .kiln_ok(&["volume", "add-brick", VOL, "replica", "3", &b3, "force"])
        .unwrap();
    assert!(out.contains("Add Brick successful"), "{out}");
    bricks.push(c.node(3).brick_dir(&format!("{VOL}.b2")));
    wait_brick(&c, 3, &bricks[2]);
    let info = c.node(2).kiln_ok(&["volume", "info", VOL]).unwrap();
    assert!(info.contains("\nNumber of Bricks: 1 x 3 = 3\n"), "{info}");
    assert!(info.contains(&format!("Brick3: {b3}\n")), "{info}");

    let out = wait_for("heal full to be launched", Duration::from_secs(60), || {
        let out = c.node(3).kiln(&["volume", "heal", VOL, "full"])?;
        Ok(out.success().then_some(out.stdout))
    })
    .unwrap();
    assert!(out.contains("full self heal"), "{out}");
    let filled = wait_for(
        "the new brick to be filled",
        Duration::from_secs(120),
        || {
            let diff = differences(VOL, 3, &bricks[0], &bricks[2]);
            if !diff.is_empty() {
                eprintln!("still differ: {} (e.g. {:?})", diff.len(), diff.first());
            }
            Ok(diff.is_empty().then_some(()))
        },
    );
    if filled.is_err() {
        c.dump_logs();
    }
    filled.unwrap();
    assert!(differences(VOL, 3, &bricks[0], &bricks[1]).is_empty());
    let n = listing(&bricks[2]).len();
    assert!(n >= 5 * 12 + 2, "{n} entries on the new brick");
    let stats = c
        .node(1)
        .kiln_json(&["volume", "heal", VOL, "statistics"])
        .unwrap();
    assert!(
        stats["bricks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["crawls"]
                .as_array()
                .is_some_and(|cr| cr.iter().any(|r| r["type"] == "FULL"))),
        "{stats}"
    );
    // A new mount writes to all three copies.
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    let mut f = std::fs::File::create(m.join("after")).unwrap();
    std::io::Write::write_all(&mut f, b"three copies\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    for b in &bricks {
        wait_brick_content(b, "after", b"three copies\n");
    }
    drop(m);
}
