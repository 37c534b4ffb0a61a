//! Eager entry locks end to end in one process (real brick servers on
//! loopback, the real protocol clients, replicate and DHT): creates in one
//! directory share one hold of its entry lock and one pre-op, and a new
//! file's data counters are born raised and cleared at its release; a brick
//! lost during a hold is accused by the parent's entry changelog and
//! healed; two clients creating in one directory neither deadlock nor lose
//! entries. Checked against the brick directories on disk.

use kiln_core::client::{Caller, Volume};
use kiln_core::Gfid;
use std::path::Path;
use std::time::{Duration, Instant};

mod replica_util;
use replica_util::*;

const VOL: &str = "ev";

async fn start_volume(n: usize, replica: usize, options: &[(&str, &str)]) -> TestVolume {
    start_volume_named(VOL, n, replica, options).await
}

/// The changelog counters `path` holds against brick `n`.
fn pending(path: &std::path::Path, n: usize) -> [i64; 3] {
    pending_in(VOL, path, n)
}

/// Waits (up to 5 s) until every counter of `rels` on every brick is zero
/// and both heal indices are empty: holds end within about a second.
async fn settles(tv: &TestVolume, rels: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clean = rels.iter().all(|r| all_zero(tv, r, &[0, 1]));
        if clean && tv.index(0).is_empty() && tv.index(1).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_share_one_entry_hold_then_settle() {
    let tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let d = vol
        .mkdir(Gfid::ROOT, &name("d"), &Caller::ROOT, 0o755)
        .await
        .unwrap();
    let start = Instant::now();
    let mut gfids = Vec::new();
    for i in 0..20 {
        let n = format!("f{i}");
        gfids.push((n.clone(), write_file(&vol, d.gfid, &n, n.as_bytes()).await));
    }
    let quick = start.elapsed() < Duration::from_millis(500);
    // One hold for all twenty creates: one pre-op on the directory (two if
    // the hold was let go after a second and taken again), never one per
    // create.
    for b in 0..2 {
        for k in 0..2 {
            let c = pending(&tv.at(b, "d"), k);
            assert!(
                c[2] <= 1 && c[0] == 0 && c[1] == 0,
                "brick {b} against {k}: {c:?}"
            );
            if quick {
                assert_eq!(c, [0, 0, 1], "brick {b} against {k}: the hold's pre-op");
            }
        }
    }
    // Every copy made, with its data counters (born raised with the
    // create) cleared by the release.
    for (n, g) in &gfids {
        let rel = format!("d/{n}");
        for b in 0..2 {
            assert_eq!(std::fs::read(tv.at(b, &rel)).unwrap(), n.as_bytes());
            assert_eq!(gfid_of(&tv.at(b, &rel)), Some(g.0.to_vec()));
        }
        assert!(all_zero(&tv, &rel, &[0, 1]), "{rel}");
    }
    assert!(settles(&tv, &["d", ""]).await, "the hold ends when idle");

    // Unlinks take a new hold and settle too; an fsync of the directory
    // ends it at once.
    for (n, _) in gfids.iter().take(5) {
        vol.unlink(d.gfid, &name(n)).await.unwrap();
    }
    let dfd = vol.opendir(d.gfid).await.unwrap();
    vol.fsync(&dfd, false).await.unwrap();
    assert!(
        all_zero(&tv, "d", &[0, 1]),
        "fsync of the directory ends the hold"
    );
    vol.release(&dfd).await.unwrap();
    for b in 0..2 {
        assert!(!tv.at(b, "d/f0").exists() && tv.at(b, "d/f5").exists());
    }
    assert!(settles(&tv, &["d", ""]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brick_lost_during_an_entry_hold_is_accused_and_healed() {
    let mut tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let d = vol
        .mkdir(Gfid::ROOT, &name("d"), &Caller::ROOT, 0o755)
        .await
        .unwrap();
    for i in 0..5 {
        write_file(&vol, d.gfid, &format!("a{i}"), b"before").await;
    }
    // The hold on d is still up when brick 1 goes.
    tv.kill(1).await;
    for i in 0..5 {
        write_file(&vol, d.gfid, &format!("b{i}"), b"during").await;
    }
    vol.unlink(d.gfid, &name("a0")).await.unwrap();
    vol.mkdir(d.gfid, &name("sub"), &Caller::ROOT, 0o755)
        .await
        .unwrap();
    // Brick 0 accuses brick 1 for d's entries, and not itself (the hold
    // let go at the first failure, later operations were transactions).
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending(&tv.at(0, "d"), 0) != [0; 3] && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(&tv.at(0, "d"), 0), [0, 0, 0]);
    assert!(
        pending(&tv.at(0, "d"), 1)[2] > 0,
        "d's entries accuse brick 1"
    );
    assert!(tv.index(0).contains(&d.gfid.to_string()));
    assert!(!tv.at(1, "d/b0").exists() && tv.at(1, "d/a0").exists());

    tv.restart(1).await;
    let healed = || {
        (0..5).all(|i| {
            std::fs::read(tv.at(1, &format!("d/b{i}"))).ok().as_deref() == Some(&b"during"[..])
        }) && !tv.at(1, "d/a0").exists()
            && tv.at(1, "d/sub").is_dir()
    };
    let mut paths = vec!["/d".to_string(), "/d/sub".to_string()];
    paths.extend((0..5).map(|i| format!("/d/b{i}")));
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    heal_by_lookup(&tv, &paths, healed).await;
    for i in 0..5 {
        let rel = format!("d/b{i}");
        assert_eq!(gfid_of(&tv.at(0, &rel)), gfid_of(&tv.at(1, &rel)), "{rel}");
    }
    let mut rels = vec!["d".to_string(), "d/sub".to_string()];
    rels.extend((0..5).map(|i| format!("d/b{i}")));
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    assert!(settles(&tv, &rels).await, "counters cleared by the heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_create_in_one_directory() {
    const EACH: usize = 40;
    let tv = start_volume(2, 2, &[]).await;
    let a = mount(&tv).await;
    let b = mount(&tv).await;
    assert_ne!(a.client_id(), b.client_id());
    let d = a
        .mkdir(Gfid::ROOT, &name("d"), &Caller::ROOT, 0o755)
        .await
        .unwrap();
    let run = |vol: Volume, tag: &'static str| {
        tokio::spawn(async move {
            for i in 0..EACH {
                let n = format!("{tag}{i}");
                write_file(&vol, d.gfid, &n, n.as_bytes()).await;
            }
            vol
        })
    };
    let both = tokio::time::timeout(Duration::from_secs(120), async {
        let (x, y) = (run(a, "x"), run(b, "y"));
        (x.await.unwrap(), y.await.unwrap())
    })
    .await
    .expect("two clients creating in one directory finish (no deadlock)");
    drop(both);
    for brick in 0..2 {
        let mut names: Vec<String> = std::fs::read_dir(tv.at(brick, "d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2 * EACH, "brick {brick}: {names:?}");
        for n in &names {
            let rel = format!("d/{n}");
            assert_eq!(std::fs::read(tv.at(brick, &rel)).unwrap(), n.as_bytes());
            assert_eq!(gfid_of(&tv.at(0, &rel)), gfid_of(&tv.at(1, &rel)));
        }
    }
    // A third client lists them all.
    let c = mount(&tv).await;
    let fd = c.opendir(d.gfid).await.unwrap();
    let mut seen = 0;
    let mut off = 0;
    loop {
        let es = c.readdir(&fd, off, 128, false).await.unwrap();
        let Some(last) = es.last() else { break };
        off = last.offset;
        seen += es
            .iter()
            .filter(|e| e.name.as_bytes() != b"." && e.name.as_bytes() != b"..")
            .count();
    }
    c.release(&fd).await.unwrap();
    assert_eq!(seen, 2 * EACH);
    assert!(settles(&tv, &["d", ""]).await);
}

fn set_xattr(path: &Path, key: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(key).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {key} on {}", path.display());
}

fn counters(c: [i64; 3]) -> Vec<u8> {
    c.iter().flat_map(|x| x.to_be_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_left_half_made_by_a_brick_crash_is_healed() {
    // What a brick killed in the middle of a create under an entry hold
    // leaves: the name, its gfid and its born data counters, no handle;
    // the other copy took the write and accuses it.
    let tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let g = write_file(&vol, Gfid::ROOT, "half", b"written on brick 0").await;
    vol.release_eager_locks().await;
    drop(vol);
    let handle = tv.at(1, &format!(".kiln/{}", g.handle_rel_path()));
    std::fs::remove_file(&handle).unwrap();
    std::fs::write(tv.at(1, "half"), b"").unwrap();
    for k in 0..2 {
        set_xattr(
            &tv.at(1, "half"),
            &format!("trusted.kiln.afr.{VOL}-client-{k}"),
            &counters([1, 0, 0]),
        );
    }
    set_xattr(
        &tv.at(0, "half"),
        &format!("trusted.kiln.afr.{VOL}-client-1"),
        &counters([1, 0, 0]),
    );
    // A lookup by name makes the missing handle; the heal then reaches the
    // copy by gfid and fills it from brick 0.
    heal_by_lookup(&tv, &["/half"], || {
        std::fs::read(tv.at(1, "half")).ok().as_deref() == Some(&b"written on brick 0"[..])
            && all_zero(&tv, "half", &[0, 1])
    })
    .await;
    assert!(handle.exists(), "the handle is back");
    assert_eq!(gfid_of(&tv.at(1, "half")), Some(g.0.to_vec()));
}
