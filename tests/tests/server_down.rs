//! A server dies (kill -9) or vanishes from the network while a client has
//! the volume mounted: files on the other bricks stay readable and
//! writable; operations that need the missing brick fail with ENOTCONN
//! quickly (at once for a dead process, within the ping timeout for a
//! silent one), never hang; the server's return heals the volume.

use kiln_tests::brick::{self, Kind};
use kiln_tests::{check_prerequisites, wait_for, within, Cluster};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an operation on a dead brick may take to fail (the process is
/// gone: connection refused or reset, noticed at once; generous for CI).
const FAIL_FAST: Duration = Duration::from_secs(10);
/// `network.ping-timeout` default, plus slack.
const PING_TIMEOUT_BOUND: Duration = Duration::from_secs(42 + 20);

fn errno_of<T>(r: &std::io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

/// Writes `count` files in the volume root and returns, for each brick, the
/// names it holds.
fn populate(m: &Path, bricks: &[PathBuf], count: usize) -> Vec<Vec<String>> {
    let mut by_brick = vec![Vec::new(); bricks.len()];
    for i in 0..count {
        let name = format!("f{i}");
        std::fs::write(m.join(&name), format!("{name}\n")).unwrap();
        let b = brick::data_brick(bricks, Path::new(&name)).expect("one data brick");
        by_brick[b].push(name);
    }
    by_brick
}

#[test]
fn kill_server_while_mounted() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(3).unwrap();
    let bricks = c.create_started_volume("vol1", &[1, 2, 3]).unwrap();
    let m = c.client().mount("node01:/vol1").unwrap();
    let mnt = m.path();
    let by_brick = populate(&mnt, &bricks, 60);
    assert!(
        by_brick.iter().all(|v| !v.is_empty()),
        "every brick holds a file: {by_brick:?}"
    );

    c.node(3).kill().unwrap();
    assert!(c.node(3).pids().is_empty());

    // Files on the surviving bricks: read and append.
    for b in 0..2 {
        for name in &by_brick[b] {
            let path = mnt.join(name);
            let (r, took) = within(FAIL_FAST, move || std::fs::read_to_string(path))
                .unwrap_or_else(|| panic!("read of {name} (brick {b}) hangs"));
            assert_eq!(r.unwrap(), format!("{name}\n"), "read {name} took {took:?}");
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(mnt.join(name))
                .unwrap();
            f.write_all(b"more\n").unwrap();
            f.sync_all().unwrap();
        }
    }
    // Files on the dead brick: ENOTCONN, quickly.
    for name in &by_brick[2] {
        let path = mnt.join(name);
        let (r, took) = within(FAIL_FAST, move || std::fs::read_to_string(path))
            .unwrap_or_else(|| panic!("read of {name} on the dead brick hangs past {FAIL_FAST:?}"));
        assert_eq!(
            errno_of(&r),
            Some(libc::ENOTCONN),
            "read {name}: {r:?} after {took:?}"
        );
    }
    // New files: those hashed to live bricks work, the others fail ENOTCONN.
    let mut created = Vec::new();
    for i in 0..30 {
        let name = format!("new{i}");
        let path = mnt.join(&name);
        let (r, _) = within(FAIL_FAST, move || std::fs::write(path, b"new\n"))
            .unwrap_or_else(|| panic!("create of {name} hangs"));
        match errno_of(&r) {
            None => created.push(name),
            Some(libc::ENOTCONN) => {}
            Some(e) => panic!("create {name}: unexpected errno {e}: {r:?}"),
        }
    }
    assert!(
        !created.is_empty(),
        "no file could be created with 2 of 3 bricks up"
    );
    // Listing the root still works (merged from the live bricks).
    let listed = within(FAIL_FAST, {
        let p = mnt.clone();
        move || std::fs::read_dir(p).map(|d| d.count())
    })
    .expect("readdir hangs");
    assert!(
        listed.0.is_ok(),
        "readdir with a brick down: {:?}",
        listed.0
    );
    // mkdir works while the new directory's hashed brick is up.
    let mut made = Vec::new();
    for i in 0..10 {
        let name = format!("dir{i}");
        let path = mnt.join(&name);
        let (r, _) = within(FAIL_FAST, move || std::fs::create_dir(path)).expect("mkdir hangs");
        match errno_of(&r) {
            None => made.push(name),
            Some(libc::ENOTCONN) => {}
            Some(e) => panic!("mkdir {name}: errno {e}"),
        }
    }
    assert!(!made.is_empty(), "no mkdir succeeded with 2 of 3 bricks up");

    // The server returns: its bricks come back, the client reconnects.
    c.node(3).start().unwrap();
    let back = by_brick[2][0].clone();
    wait_for(
        "a file on the returned brick to read again",
        Duration::from_secs(60),
        || Ok(std::fs::read_to_string(mnt.join(&back)).ok()),
    )
    .unwrap();
    for name in &by_brick[2] {
        assert_eq!(
            std::fs::read_to_string(mnt.join(name)).unwrap(),
            format!("{name}\n")
        );
    }
    for name in &by_brick[0] {
        assert_eq!(
            std::fs::read_to_string(mnt.join(name)).unwrap(),
            format!("{name}\nmore\n")
        );
    }
    // Directories made while it was down get their missing copy on a
    // lookup. The kernel answers repeated stats from its dentry cache, so
    // look up through a fresh mount, dropping dentries between tries.
    let fresh = c.client().mount("node01:/vol1").unwrap();
    for d in &made {
        wait_for(
            &format!("{d} healed onto brick 3"),
            Duration::from_secs(30),
            || {
                let _ = std::fs::write("/proc/sys/vm/drop_caches", "2\n");
                std::fs::metadata(fresh.join(d))?;
                Ok(brick::entry(&bricks[2], Path::new(d)).filter(|e| e.kind == Kind::Dir))
            },
        )
        .unwrap();
    }
}

#[test]
fn silent_server_fails_within_ping_timeout() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(2).unwrap();
    let bricks = c.create_started_volume("vol1", &[1, 2]).unwrap();
    let m = c.client().mount("node01:/vol1").unwrap();
    let mnt = m.path();
    let by_brick = populate(&mnt, &bricks, 20);
    assert!(!by_brick[1].is_empty() && !by_brick[0].is_empty());

    // node02 goes silent (packets dropped, no RST): only the ping timeout
    // can tell.
    c.node(2).cut_off().unwrap();
    let name = by_brick[1][0].clone();
    let path = mnt.join(&name);
    let (r, took) = within(PING_TIMEOUT_BOUND, move || std::fs::read_to_string(path))
        .unwrap_or_else(|| panic!("read on a silent brick hangs past {PING_TIMEOUT_BOUND:?}"));
    assert!(
        r.is_err(),
        "read of {name} on a cut-off brick succeeded: {r:?}"
    );
    assert_eq!(errno_of(&r), Some(libc::ENOTCONN), "{r:?} after {took:?}");
    // The other brick kept working meanwhile.
    let other = mnt.join(&by_brick[0][0]);
    assert!(within(FAIL_FAST, move || std::fs::read(other))
        .expect("hang")
        .0
        .is_ok());

    c.node(2).heal().unwrap();
    let path = mnt.join(&name);
    wait_for("reconnect after heal", Duration::from_secs(60), || {
        Ok(std::fs::read_to_string(&path).ok())
    })
    .unwrap();
}
