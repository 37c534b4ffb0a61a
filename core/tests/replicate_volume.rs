//! Replicated volumes end to end in one process: real brick servers on
//! loopback, the real protocol clients, replicate and DHT, checked against
//! the brick directories on disk (content, gfid and changelog xattrs, the
//! pending-heal index). Bricks are killed by dropping their task and
//! restarted on the same directory and port.

use bytes::Bytes;
use kiln_core::client::{Caller, Volume};
use kiln_core::{FsError, Gfid};
use std::path::Path;
use std::time::Duration;

mod replica_util;
use replica_util::*;

const VOL: &str = "rv";

async fn start_volume(n: usize, replica: usize, options: &[(&str, &str)]) -> TestVolume {
    start_volume_named(VOL, n, replica, options).await
}

/// The changelog counters `path` holds against brick `n`.
fn pending(path: &std::path::Path, n: usize) -> [i64; 3] {
    pending_in(VOL, path, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_on_both_copies() {
    let tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let d = vol
        .mkdir(Gfid::ROOT, &name("d"), &Caller::ROOT, 0o755)
        .await
        .unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let g = write_file(&vol, d.gfid, "f", &body).await;
    // Entry holds (the directories' delayed post-ops) end when the client
    // lets go of them, or after a second idle.
    vol.release_eager_locks().await;
    for b in 0..2 {
        assert_eq!(
            std::fs::read(tv.at(b, "d/f")).unwrap(),
            body,
            "content on brick {b}"
        );
        assert_eq!(gfid_of(&tv.at(b, "d/f")), Some(g.0.to_vec()));
        assert_eq!(gfid_of(&tv.at(b, "d")), Some(d.gfid.0.to_vec()));
    }
    assert!(
        all_zero(&tv, "d/f", &[0, 1]) && all_zero(&tv, "d", &[0, 1]) && all_zero(&tv, "", &[0, 1])
    );
    assert!(tv.index(0).is_empty() && tv.index(1).is_empty());
    assert_eq!(read_all(&vol, g).await.unwrap(), body);

    // Metadata and entry operations reach both copies too.
    vol.setxattr(g, "user.colour", b"blue", 0).await.unwrap();
    vol.setattr(
        g,
        &kiln_core::SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    vol.rename(d.gfid, &name("f"), Gfid::ROOT, &name("moved"))
        .await
        .unwrap();
    vol.symlink(Gfid::ROOT, &name("ln"), &Caller::ROOT, b"moved")
        .await
        .unwrap();
    for b in 0..2 {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(tv.at(b, "moved")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(
            xattr(&tv.at(b, "moved"), "user.colour"),
            Some(b"blue".to_vec())
        );
        assert!(!tv.at(b, "d/f").exists());
        assert_eq!(
            std::fs::read_link(tv.at(b, "ln")).unwrap(),
            Path::new("moved")
        );
    }
    vol.release_eager_locks().await;
    assert!(all_zero(&tv, "moved", &[0, 1]) && all_zero(&tv, "", &[0, 1]));
    // Internal xattrs stay hidden from clients.
    assert!(vol
        .listxattr(g)
        .await
        .unwrap()
        .iter()
        .all(|n| !n.starts_with("trusted.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_down_is_accused_then_healed_by_lookup() {
    let mut tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let old = write_file(&vol, Gfid::ROOT, "old", b"old data").await;
    let doomed = write_file(&vol, Gfid::ROOT, "doomed", b"bye").await;
    let _renamed = write_file(&vol, Gfid::ROOT, "r1", b"renamed").await;
    let sub = vol
        .mkdir(Gfid::ROOT, &name("sub"), &Caller::ROOT, 0o755)
        .await
        .unwrap();
    write_file(&vol, sub.gfid, "inner", b"inner").await;
    let (_, open_fd) = vol
        .create(
            Gfid::ROOT,
            &name("stream"),
            &Caller::ROOT,
            0o644,
            libc::O_RDWR,
            false,
        )
        .await
        .unwrap();
    vol.write(&open_fd, 0, Bytes::from_static(b"0123456789"))
        .await
        .unwrap();

    tv.kill(1).await;
    // Degraded mode: everything keeps working on brick 0.
    let fd = vol.open(old, libc::O_RDWR).await.unwrap();
    vol.write(&fd, 0, Bytes::from_static(b"NEW")).await.unwrap();
    vol.release(&fd).await.unwrap();
    vol.write(&open_fd, 10, Bytes::from_static(b"abcdef"))
        .await
        .unwrap();
    let fresh = write_file(&vol, Gfid::ROOT, "fresh", &[7u8; 100_000]).await;
    let nd = vol
        .mkdir(Gfid::ROOT, &name("newdir"), &Caller::ROOT, 0o750)
        .await
        .unwrap();
    write_file(&vol, nd.gfid, "deep", b"deep file").await;
    vol.link(old, Gfid::ROOT, &name("oldlink")).await.unwrap();
    vol.mknod(
        Gfid::ROOT,
        &name("fifo"),
        &Caller::ROOT,
        libc::S_IFIFO | 0o600,
        0,
    )
    .await
    .unwrap();
    vol.unlink(Gfid::ROOT, &name("doomed")).await.unwrap();
    vol.rename(Gfid::ROOT, &name("r1"), Gfid::ROOT, &name("r2"))
        .await
        .unwrap();
    vol.unlink(sub.gfid, &name("inner")).await.unwrap();
    vol.rmdir(Gfid::ROOT, &name("sub")).await.unwrap();
    vol.setattr(
        old,
        &kiln_core::SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(read_all(&vol, old).await.unwrap(), b"NEW data");

    // The live brick accuses the dead one: data and metadata on the file,
    // entries on the root; the accused inodes are in its heal index.
    assert_eq!(pending(&tv.at(0, "old"), 1), [1, 1, 0]);
    assert_eq!(pending(&tv.at(0, "old"), 0), [0, 0, 0]);
    assert!(
        pending(&tv.at(0, ""), 1)[2] > 0,
        "root entries accuse brick 1"
    );
    assert_eq!(pending(&tv.at(0, "stream"), 1)[0], 1);
    let idx = tv.index(0);
    assert!(
        idx.contains(&old.to_string()) && idx.contains(&Gfid::ROOT.to_string()),
        "{idx:?}"
    );
    assert!(!tv.at(1, "fresh").exists());

    // The brick comes back; lookups heal it.
    tv.restart(1).await;
    vol.write(&open_fd, 16, Bytes::from_static(b"!"))
        .await
        .unwrap();
    vol.release(&open_fd).await.unwrap();
    let healed = || {
        let same = |rel: &str| {
            std::fs::read(tv.at(0, rel))
                .ok()
                .is_some_and(|a| std::fs::read(tv.at(1, rel)).ok() == Some(a))
        };
        same("old")
            && same("fresh")
            && same("newdir/deep")
            && same("r2")
            && same("stream")
            && !tv.at(1, "doomed").exists()
            && !tv.at(1, "r1").exists()
            && !tv.at(1, "sub").exists()
    };
    heal_by_lookup(
        &tv,
        &[
            "/",
            "/old",
            "/fresh",
            "/newdir",
            "/newdir/deep",
            "/r2",
            "/stream",
        ],
        healed,
    )
    .await;

    for rel in ["old", "fresh", "newdir", "newdir/deep", "r2", "stream"] {
        assert_eq!(
            gfid_of(&tv.at(0, rel)),
            gfid_of(&tv.at(1, rel)),
            "gfid of {rel}"
        );
        assert!(
            all_zero(&tv, rel, &[0, 1]),
            "pending counters of {rel}: {:?} {:?}",
            pending(&tv.at(0, rel), 1),
            pending(&tv.at(1, rel), 0)
        );
    }
    assert!(all_zero(&tv, "", &[0, 1]), "root counters");
    assert_eq!(
        std::fs::read(tv.at(1, "stream")).unwrap(),
        b"0123456789abcdef!"
    );
    assert_eq!(std::fs::read(tv.at(1, "old")).unwrap(), b"NEW data");
    assert_eq!(gfid_of(&tv.at(1, "fresh")), Some(fresh.0.to_vec()));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |b: usize, rel: &str| {
            std::fs::metadata(tv.at(b, rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(1, "old"), 0o640, "metadata healed");
        assert_eq!(mode(1, "newdir"), 0o750);
    }
    assert!(!tv.at(1, "doomed").exists() && doomed != old);
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = |rel: &str| std::fs::symlink_metadata(tv.at(1, rel)).unwrap();
        assert_eq!(
            m("oldlink").ino(),
            m("old").ino(),
            "a hard link stays a hard link"
        );
        assert!(m("fifo").file_type().is_fifo());
    }
    // Left in the index: only inodes removed since (`sub`), which the
    // index drops when it is next listed.
    for b in 0..2 {
        for g in tv.index(b) {
            let g = Gfid::parse(&g).unwrap();
            assert!(
                !tv.at(b, &format!(".kiln/{}", g.handle_rel_path())).exists(),
                "brick {b}: {g} still pending after heal"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_gives_eio() {
    let mut tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let g = write_file(&vol, Gfid::ROOT, "sb", b"original").await;
    let fd = vol.open(g, libc::O_RDWR).await.unwrap();

    tv.kill(1).await;
    vol.write(&fd, 0, Bytes::from_static(b"AAAA"))
        .await
        .unwrap();
    tv.kill(0).await;
    tv.restart(1).await;
    // Writes reach brick 1 alone once it is back (quorum none for 2).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while vol
        .write(&fd, 0, Bytes::from_static(b"BBBB"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "brick 1 never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = vol.release(&fd).await;
    tv.restart(0).await;
    assert_eq!(pending(&tv.at(0, "sb"), 1)[0], 1);
    assert_eq!(pending(&tv.at(1, "sb"), 0)[0], 1);

    // Each copy accuses the other: EIO, and nothing is healed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = mount(&tv).await;
        match v.lookup(Gfid::ROOT, &name("sb")).await {
            Err(FsError::Io(m)) => {
                assert!(m.contains("split-brain"), "{m}");
                break;
            }
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no split-brain detected: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(std::fs::read(tv.at(0, "sb")).unwrap(), b"AAAAinal");
    assert_eq!(std::fs::read(tv.at(1, "sb")).unwrap(), b"BBBBinal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_auto_refuses_writes_in_a_minority() {
    let mut tv = start_volume(3, 3, &[]).await;
    let vol = mount(&tv).await;
    let g = write_file(&vol, Gfid::ROOT, "q", b"quorum").await;
    tv.kill(2).await;
    // 2 of 3: still a majority.
    write_file(&vol, Gfid::ROOT, "two", b"ok").await;
    tv.kill(1).await;
    let fd = vol.open(g, libc::O_RDWR).await.unwrap();
    assert_eq!(
        vol.write(&fd, 0, Bytes::from_static(b"no"))
            .await
            .unwrap_err(),
        FsError::ReadOnly
    );
    assert_eq!(
        vol.mkdir(Gfid::ROOT, &name("nodir"), &Caller::ROOT, 0o755)
            .await
            .unwrap_err(),
        FsError::ReadOnly
    );
    // Reads go on.
    assert_eq!(read_all(&vol, g).await.unwrap(), b"quorum");
    vol.release(&fd).await.unwrap();

    // quorum-type none accepts the same write.
    let mut spec = tv.spec.clone();
    spec.options
        .insert("cluster.quorum-type".into(), "none".into());
    let v2 = Volume::new(spec);
    v2.wait_ready(Duration::from_secs(10)).await.unwrap();
    let fd = v2.open(g, libc::O_RDWR).await.unwrap();
    v2.write(&fd, 0, Bytes::from_static(b"QU")).await.unwrap();
    v2.release(&fd).await.unwrap();
    assert_eq!(std::fs::read(tv.at(0, "q")).unwrap(), b"QUorum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_replicate_places_each_file_on_one_set() {
    let tv = start_volume(4, 2, &[]).await;
    let vol = mount(&tv).await;
    let mut per_set = [0usize; 2];
    for i in 0..40 {
        let n = format!("f{i}");
        let g = write_file(&vol, Gfid::ROOT, &n, n.as_bytes()).await;
        let holders: Vec<usize> = (0..4)
            .filter(|b| {
                let p = tv.at(*b, &n);
                // Not a DHT link file.
                std::fs::symlink_metadata(&p).is_ok_and(|m| m.len() > 0)
            })
            .collect();
        assert!(
            holders == vec![0, 1] || holders == vec![2, 3],
            "{n} held by {holders:?}"
        );
        for b in &holders {
            assert_eq!(gfid_of(&tv.at(*b, &n)), Some(g.0.to_vec()));
        }
        per_set[holders[0] / 2] += 1;
    }
    assert!(
        per_set.iter().all(|c| *c > 5),
        "spread over sets: {per_set:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_failing_on_one_copy_is_repaired() {
    let tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    // A stray file on brick 1 makes mkdir fail there only (EEXIST).
    std::fs::write(tv.at(1, "clash"), b"stray").unwrap();
    let d = vol
        .mkdir(Gfid::ROOT, &name("clash"), &Caller::ROOT, 0o755)
        .await
        .expect("mkdir succeeds on the copy where it can");
    // Brick 0 accuses brick 1 for the root's entries; brick 1, where the
    // operation failed, accuses itself.
    assert_eq!(pending(&tv.at(0, ""), 1), [0, 0, 1]);
    assert_eq!(pending(&tv.at(0, ""), 0), [0, 0, 0]);
    assert_eq!(pending(&tv.at(1, ""), 1), [0, 0, 1]);
    assert_eq!(pending(&tv.at(1, ""), 0), [0, 0, 0]);

    // A lookup sees the copies disagree and heals the root from brick 0:
    // the stray file gives way to the directory.
    heal_by_lookup(&tv, &["/clash"], || tv.at(1, "clash").is_dir()).await;
    assert_eq!(gfid_of(&tv.at(1, "clash")), Some(d.gfid.0.to_vec()));
    assert!(all_zero(&tv, "", &[0, 1]), "root counters cleared");
    let got = vol.lookup(Gfid::ROOT, &name("clash")).await.unwrap();
    assert_eq!(got.iatt.gfid, d.gfid);
}
