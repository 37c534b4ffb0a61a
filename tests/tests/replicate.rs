//! A replica 2 volume over two servers: kill -9 one server in the middle of
//! a write stream from a FUSE mount; the stream goes on; the server comes
//! back; lookups heal it. Then every file reads back as written through the
//! mount (no acknowledged write lost), and the two bricks, read directly,
//! hold the same gfids and bytes (sha256) with clean changelogs.

use kiln_tests::brick;
use kiln_tests::replica::{changelog_clean, create_replicated, sha256, wait_brick};
use kiln_tests::{check_prerequisites, wait_for, wait_until, Cluster};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VOL: &str = "vol2";

fn content(i: usize) -> Vec<u8> {
    format!("file {i}\n").repeat(1 + i % 50).into_bytes()
}

/// What the writer got acknowledged.
struct Written {
    files: Vec<String>,
    log: Vec<u8>,
}

/// Writes until `stop`: records appended to `log` (fsync'd every ten),
/// one new file per record, a directory with a file every 25; `progress`
/// counts records. Any error ends the stream.
fn write_stream(
    mnt: PathBuf,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> std::io::Result<Written> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mnt.join("log"))?;
    let mut w = Written {
        files: Vec::new(),
        log: Vec::new(),
    };
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let rec = format!("record {i:06}\n");
        log.write_all(rec.as_bytes())?;
        if i % 10 == 0 {
            log.sync_data()?;
        }
        w.log.extend_from_slice(rec.as_bytes());
        let name = format!("f{i:05}");
        std::fs::write(mnt.join(&name), content(i))?;
        w.files.push(name);
        if i % 25 == 0 {
            let d = format!("d{i:05}");
            std::fs::create_dir(mnt.join(&d))?;
            let inner = format!("{d}/inner");
            std::fs::write(mnt.join(&inner), content(i + 1))?;
            w.files.push(inner);
        }
        i += 1;
        progress.store(i, Ordering::Release);
    }
    log.sync_all()?;
    Ok(w)
}

#[test]
fn kill_a_server_during_a_write_stream() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(2).unwrap();
    let bricks = create_replicated(&c, VOL, 2, &[1, 2]);
    let info = c.node(1).kiln_ok(&["volume", "info", VOL]).unwrap();
    assert!(
        info.contains("\nType: Replicate\n") && info.contains("\nNumber of Bricks: 1 x 2 = 2\n"),
        "{info}"
    );
    let m = c.client().mount(&format!("node01:/{VOL}")).unwrap();

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
    advance("the stream to start", 40);
    c.node(2).kill().unwrap();
    advance("the stream to go on with node02 dead", 100);
    // node02's brick misses what is written while it is down, and node01's
    // accuses it.
    let names = |b: &Path| -> std::collections::BTreeSet<PathBuf> {
        brick::scan(b).into_iter().map(|e| e.rel).collect()
    };
    let missed = names(&bricks[0]).difference(&names(&bricks[1])).count();
    assert!(
        missed > 50,
        "only {missed} entries missing on node02's brick during the outage"
    );
    assert!(
        !changelog_clean(VOL, 2, &bricks[0]),
        "node01's root does not accuse node02"
    );
    c.node(2).start().unwrap();
    wait_brick(&c, 2, &bricks[1]);
    advance("the stream to go on after node02 returned", 100);
    stop.store(true, Ordering::Release);
    let w = writer.join().unwrap().expect("write stream failed");
    assert!(w.files.len() > 240, "{} files", w.files.len());

    // Every acknowledged write reads back through the mount.
    assert_eq!(std::fs::read(m.join("log")).unwrap(), w.log, "log file");
    for f in &w.files {
        let i: usize = f.trim_start_matches('d').trim_start_matches('f')[..5]
            .parse()
            .unwrap();
        let want = if f.ends_with("/inner") {
            content(i + 1)
        } else {
            content(i)
        };
        assert_eq!(std::fs::read(m.join(f)).unwrap(), want, "{f}");
    }

    // Lookups through a fresh mount heal node02's brick: same gfid, same
    // bytes, clean changelogs on both.
    let fresh = c.client().mount(&format!("node01:/{VOL}")).unwrap();
    let mut names: Vec<String> = w.files.clone();
    names.push("log".into());
    names.extend(
        w.files
            .iter()
            .filter_map(|f| f.strip_suffix("/inner").map(str::to_string)),
    );
    let healed = wait_for(
        "node02's brick to be healed",
        Duration::from_secs(180),
        || {
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "2\n");
            let _ = std::fs::read_dir(fresh.path()).map(|d| d.count());
            let mut behind = Vec::new();
            for n in &names {
                let _ = std::fs::metadata(fresh.join(n));
                let (a, b) = (bricks[0].join(n), bricks[1].join(n));
                let ea = brick::entry(&bricks[0], Path::new(n));
                let eb = brick::entry(&bricks[1], Path::new(n));
                let same_inode = matches!((&ea, &eb), (Some(x), Some(y)) if x.gfid.is_some() && x.gfid == y.gfid && x.kind == y.kind);
                let same_bytes = ea.as_ref().is_some_and(|e| e.kind == brick::Kind::Dir)
                    || sha256(&a).is_some_and(|h| Some(h) == sha256(&b));
                if !(same_inode
                    && same_bytes
                    && changelog_clean(VOL, 2, &a)
                    && changelog_clean(VOL, 2, &b))
                {
                    behind.push(n.clone());
                }
            }
            if !(changelog_clean(VOL, 2, &bricks[0]) && changelog_clean(VOL, 2, &bricks[1])) {
                behind.push("/".into());
            }
            Ok(behind.is_empty().then_some(()).or_else(|| {
                eprintln!("still behind: {} (e.g. {:?})", behind.len(), behind.first());
                None
            }))
        },
    );
    if healed.is_err() {
        c.dump_logs();
    }
    healed.unwrap();
    // Nothing on node02's brick that node01's lacks.
    let listing = |b: &Path| {
        let mut v: Vec<PathBuf> = brick::scan(b).into_iter().map(|e| e.rel).collect();
        v.sort();
        v
    };
    assert_eq!(listing(&bricks[0]), listing(&bricks[1]));
}
