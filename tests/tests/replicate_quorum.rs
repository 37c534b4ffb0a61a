//! Replica 3 over three servers, with client quorum `auto` (the default for
//! three copies). One server cut off (iptables) while a FUSE client writes:
//! the writes go on. A second one cut off, leaving the client a minority:
//! modifications fail with EROFS while reads go on. Everything reconnected,
//! lookups heal (a large file changed in a few blocks by block checksums):
//! all three bricks, read directly, hold the same entries, gfids and bytes
//! (sha256) with clean changelogs. Then directory
//! operations made while a server was down (creates, deletes, renames,
//! mkdir, rmdir, links) are replayed on its brick once it is back.

use kiln_tests::brick;
use kiln_tests::replica::{changelog_clean, create_replicated_with, sha256, wait_brick};
use kiln_tests::{check_prerequisites, wait_for, wait_until, Cluster, Mount};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What differs between the bricks (entries, kinds, gfids, bytes, or a
/// changelog not clean); empty when all copies agree.
fn differences(vol: &str, bricks: &[PathBuf]) -> Vec<String> {
    let scans: Vec<BTreeMap<PathBuf, brick::Entry>> = bricks
        .iter()
        .map(|b| {
            brick::scan(b)
                .into_iter()
                .map(|e| (e.rel.clone(), e))
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for (k, s) in scans.iter().enumerate().skip(1) {
        let a: Vec<&PathBuf> = scans[0].keys().collect();
        let b: Vec<&PathBuf> = s.keys().collect();
        if a != b {
            let missing: Vec<_> = scans[0].keys().filter(|p| !s.contains_key(*p)).collect();
            let extra: Vec<_> = s.keys().filter(|p| !scans[0].contains_key(*p)).collect();
            out.push(format!(
                "brick {k}: {} missing (e.g. {:?}), {} extra (e.g. {:?})",
                missing.len(),
                missing.first(),
                extra.len(),
                extra.first()
            ));
        }
    }
    for (rel, e0) in &scans[0] {
        for (k, s) in scans.iter().enumerate().skip(1) {
            let Some(e) = s.get(rel) else { continue };
            if e.gfid.is_none() || e.gfid != e0.gfid || e.kind != e0.kind {
                out.push(format!("{rel:?}: gfid or kind differs on brick {k}"));
            } else if e.kind == brick::Kind::File
                && sha256(&bricks[0].join(rel)) != sha256(&bricks[k].join(rel))
            {
                out.push(format!("{rel:?}: bytes differ on brick {k}"));
            }
        }
        for (k, b) in bricks.iter().enumerate() {
            if e0.kind != brick::Kind::Symlink && !changelog_clean(vol, 3, &b.join(rel)) {
                out.push(format!("{rel:?}: changelog not clean on brick {k}"));
            }
        }
    }
    for (k, b) in bricks.iter().enumerate() {
        if !changelog_clean(vol, 3, b) {
            out.push(format!("root changelog not clean on brick {k}"));
        }
    }
    out
}

/// Looks every entry of `names` up, each round through a new mount (so
/// no kernel cache answers instead of the volume), and lists every
/// directory, until the bricks agree.
fn heal_by_lookups(
    c: &Cluster,
    vol: &str,
    others: &[&Mount],
    bricks: &[PathBuf],
    names: &[String],
) {
    let healed = wait_for("the bricks to agree", Duration::from_secs(120), || {
        let m = c.client().mount(&format!("node01:/{vol}"))?;
        for n in names {
            let _ = std::fs::symlink_metadata(m.join(n));
        }
        let _ = std::fs::read_dir(m.path()).map(|d| d.count());
        for n in names {
            let p = m.join(n);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let _ = std::fs::read_dir(&p).map(|d| d.count());
            }
        }
        drop(m);
        let diff = differences(vol, bricks);
        if diff.is_empty() {
            return Ok(Some(()));
        }
        eprintln!("still differing: {} (e.g. {})", diff.len(), diff[0]);
        Ok(None)
    });
    if healed.is_err() {
        c.dump_logs();
        for d in differences(vol, bricks) {
            eprintln!("difference: {d}");
        }
        for (k, b) in bricks.iter().enumerate() {
            let rows: Vec<String> = (0..3)
                .map(|n| {
                    let v = brick::get_xattr(b, &format!("trusted.kiln.afr.{vol}-client-{n}"));
                    format!("{v:?}")
                })
                .collect();
            eprintln!("brick {k} root changelog: {}", rows.join(" "));
        }
        for o in others {
            let log =
                std::fs::read_to_string(c.client().host_path(&o.log_file())).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" INFO ")).collect();
            eprintln!(
                "--- other mount log (warnings, last 80)\n{}",
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
    }
    healed.unwrap();
}

fn content(i: usize) -> Vec<u8> {
    format!("file {i}\n").repeat(1 + i % 40).into_bytes()
}

/// Creates files (and a directory every 20) until `stop` or an error;
/// returns what was acknowledged and the error that ended it.
fn write_stream(
    mnt: PathBuf,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> (Vec<String>, Option<std::io::Error>) {
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let name = format!("f{i:05}");
        let r = (|| {
            let mut f = std::fs::File::create(mnt.join(&name))?;
            f.write_all(&content(i))?;
            f.sync_all()
        })();
        if let Err(e) = r {
            return (acked, Some(e));
        }
        acked.push(name);
        if i % 20 == 0 {
            let d = format!("d{i:05}");
            if let Err(e) = std::fs::create_dir(mnt.join(&d)) {
                return (acked, Some(e));
            }
            acked.push(d);
        }
        i += 1;
        progress.store(i, Ordering::Release);
    }
    (acked, None)
}

fn is_erofs(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
}

#[test]
fn quorum_auto_minority_is_read_only_then_all_three_heal() {
    check_prerequisites().unwrap();
    const VOL: &str = "q3";
    let c = Cluster::pool(3).unwrap();
    let bricks = create_replicated_with(&c, VOL, 3, &[1, 2, 3], &[("network.ping-timeout", "4")]);
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    std::fs::write(m.join("before"), b"written by all three").unwrap();
    // A large file, changed in the middle while node03 is away: healed by
    // block checksums, compared by sha256 below.
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(m.join("big"), &big).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (mnt, stop, progress) = (m.path(), stop.clone(), progress.clone());
        std::thread::spawn(move || write_stream(mnt, stop, progress))
    };
    let advance = |what: &str, by: usize| {
        let from = progress.load(Ordering::Acquire);
        wait_until(what, Duration::from_secs(120), || {
            progress.load(Ordering::Acquire) >= from + by || writer.is_finished()
        })
        .unwrap();
        assert!(!writer.is_finished(), "the write stream stopped ({what})");
    };
    advance("the stream to start", 30);

    // One server of three cut off: two copies keep quorum, writes go on.
    c.node(3).cut_off().unwrap();
    advance("the stream to go on with node03 cut off", 60);
    let missed = brick::scan(&bricks[0]).len() - brick::scan(&bricks[2]).len();
    assert!(missed > 30, "node03's brick missed only {missed} entries");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("big"))
            .unwrap();
        f.write_all_at(&[0xA5; 300 << 10], 3 << 20).unwrap();
        f.sync_all().unwrap();
    }
    assert_ne!(
        sha256(&bricks[0].join("big")),
        sha256(&bricks[2].join("big"))
    );

    // A second one: the client reaches one copy of three, no quorum.
    c.node(2).cut_off().unwrap();
    let ended = wait_until(
        "the stream to fail without quorum",
        Duration::from_secs(90),
        || writer.is_finished(),
    );
    stop.store(true, Ordering::Release);
    ended.unwrap();
    let (acked, err) = writer.join().unwrap();
    let err = err.expect("the stream ended without an error");
    assert!(is_erofs(&err), "the stream failed with {err:?}, not EROFS");
    assert!(acked.len() > 90, "{} entries acknowledged", acked.len());

    // Every modification is refused with EROFS; reads go on.
    let e = std::fs::create_dir(m.join("nodir")).unwrap_err();
    assert!(is_erofs(&e), "mkdir: {e:?}");
    let e = std::fs::write(m.join("nofile"), b"x").unwrap_err();
    assert!(is_erofs(&e), "create: {e:?}");
    let e = std::fs::rename(m.join("before"), m.join("renamed")).unwrap_err();
    assert!(is_erofs(&e), "rename: {e:?}");
    let e = std::fs::remove_file(m.join(&acked[0])).unwrap_err();
    assert!(is_erofs(&e), "unlink: {e:?}");
    let w = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("before"))?;
        f.write_all(b"overwritten")?;
        f.sync_all()
    })();
    let e = w.expect_err("a write without quorum worked");
    assert!(is_erofs(&e), "write: {e:?}");
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
    assert_eq!(
        std::fs::read(m.join("before")).unwrap(),
        b"written by all three"
    );
    for f in acked.iter().filter(|f| f.starts_with('f')) {
        let i: usize = f[1..].parse().unwrap();
        assert_eq!(std::fs::read(m.join(f)).unwrap(), content(i), "{f}");
    }
    let listed = std::fs::read_dir(m.path()).unwrap().count();
    assert!(listed >= acked.len(), "{listed} entries listed");

    // Everything reconnected: writes work again, lookups heal every copy.
    c.node(2).heal().unwrap();
    c.node(3).heal().unwrap();
    wait_until("writes to work again", Duration::from_secs(120), || {
        std::fs::write(m.join("after"), b"quorum is back").is_ok()
    })
    .unwrap();
    assert_eq!(
        std::fs::read(m.join("before")).unwrap(),
        b"written by all three"
    );
    let mut names = acked.clone();
    names.extend(["before", "after", "big"].map(String::from));
    heal_by_lookups(&c, VOL, &[&m], &bricks, &names);
    let mut want = big.clone();
    want[3 << 20..(3 << 20) + (300 << 10)].fill(0xA5);
    for b in &bricks {
        assert_eq!(std::fs::read(b.join("big")).unwrap(), want, "big on {b:?}");
        assert_eq!(std::fs::read(b.join("after")).unwrap(), b"quorum is back");
        let i: usize = acked[acked.len() - 1][1..].parse().unwrap_or(0);
        let last = &acked[acked.len() - 1];
        if last.starts_with('f') {
            assert_eq!(std::fs::read(b.join(last)).unwrap(), content(i));
        }
    }
}

#[test]
fn directory_operations_are_replayed_on_a_returning_brick() {
    check_prerequisites().unwrap();
    const VOL: &str = "dr3";
    let c = Cluster::pool(3).unwrap();
    let bricks = create_replicated_with(&c, VOL, 3, &[1, 2, 3], &[("network.ping-timeout", "4")]);
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    let p = |rel: &str| m.join(rel);
    for d in ["a", "b", "b/sub", "rd", "keep", "gone"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    for (f, body) in [
        ("a/f1", "one"),
        ("a/f2", "two"),
        ("rd/inside", "in rd"),
        ("keep/k", "kept"),
        ("gone/x", "x"),
        ("top", "top file"),
    ] {
        std::fs::write(p(f), body).unwrap();
    }
    wait_until("the bricks to agree", Duration::from_secs(30), || {
        differences(VOL, &bricks).is_empty()
    })
    .unwrap();

    c.node(3).kill().unwrap();
    // While node03 is down: creates, deletes, renames (files and a
    // directory, within and across directories), mkdir, rmdir, links.
    std::fs::write(p("a/new"), b"new file").unwrap();
    std::fs::remove_file(p("a/f1")).unwrap();
    std::fs::rename(p("a/f2"), p("b/f2moved")).unwrap();
    std::fs::rename(p("top"), p("top2")).unwrap();
    std::fs::create_dir(p("c")).unwrap();
    std::fs::write(p("c/inner"), b"inner").unwrap();
    std::fs::create_dir(p("c/deeper")).unwrap();
    std::fs::remove_dir(p("b/sub")).unwrap();
    std::fs::rename(p("rd"), p("rd2")).unwrap();
    std::fs::remove_file(p("gone/x")).unwrap();
    std::fs::remove_dir(p("gone")).unwrap();
    std::os::unix::fs::symlink("new", p("a/ln")).unwrap();
    std::fs::hard_link(p("a/new"), p("keep/newlink")).unwrap();
    let down = &bricks[2];
    assert!(down.join("a/f1").exists() && !down.join("a/new").exists());

    c.node(3).start().unwrap();
    wait_brick(&c, 3, down);
    let names: Vec<String> = [
        "a",
        "b",
        "c",
        "c/deeper",
        "rd2",
        "keep",
        "a/new",
        "a/ln",
        "b/f2moved",
        "c/inner",
        "rd2/inside",
        "keep/newlink",
        "top2",
    ]
    .map(String::from)
    .to_vec();
    heal_by_lookups(&c, VOL, &[&m], &bricks, &names);

    // node03's brick, read directly, has every change.
    for gone in ["a/f1", "a/f2", "b/sub", "rd", "gone", "top"] {
        assert!(
            std::fs::symlink_metadata(down.join(gone)).is_err(),
            "{gone} still on node03's brick"
        );
    }
    assert_eq!(std::fs::read(down.join("a/new")).unwrap(), b"new file");
    assert_eq!(std::fs::read(down.join("b/f2moved")).unwrap(), b"two");
    assert_eq!(std::fs::read(down.join("c/inner")).unwrap(), b"inner");
    assert_eq!(std::fs::read(down.join("rd2/inside")).unwrap(), b"in rd");
    assert_eq!(std::fs::read(down.join("top2")).unwrap(), b"top file");
    assert!(down.join("c/deeper").is_dir());
    assert_eq!(
        std::fs::read_link(down.join("a/ln")).unwrap(),
        Path::new("new")
    );
    {
        use std::os::unix::fs::MetadataExt;
        let ino = |rel: &str| std::fs::metadata(down.join(rel)).unwrap().ino();
        assert_eq!(ino("a/new"), ino("keep/newlink"), "hard link kept");
    }
    // Same gfids as on node01's brick, for the moved ones too.
    for rel in ["b/f2moved", "rd2", "top2", "c", "c/inner"] {
        assert_eq!(
            brick::entry(&bricks[0], Path::new(rel)).and_then(|e| e.gfid),
            brick::entry(down, Path::new(rel)).and_then(|e| e.gfid),
            "gfid of {rel}"
        );
    }
}
