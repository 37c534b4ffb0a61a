//! `Volume::switch` in one process: real brick servers on loopback, a
//! replica 2 volume switched to replica 3 (a third brick added) while writes
//! through an open file are in flight. Checks that the writes under way
//! finish, the open file moves to the new graph and its new writes reach or
//! accuse the new brick, a file created after the switch lands on all three
//! bricks, a locked file stays on its graph until released, and the old
//! graph is dropped once nothing uses it.

mod brick_util;

use brick_util::{serve_on, xattr, VOLUME};
use bytes::Bytes;
use kiln_core::brick::prepare_brick_dir;
use kiln_core::client::{Caller, Volume};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_core::proto::{FileLock, LockCmd, LockType};
use kiln_core::{Gfid, Name};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Bricks {
    _dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    specs: Vec<BrickSpec>,
    id: String,
}

async fn start_bricks(n: usize) -> Bricks {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut paths = Vec::new();
    let mut specs = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("b{i}"));
        prepare_brick_dir(&path, &id, true).unwrap();
        let (addr, _, _task) = serve_on(&path, &id).await;
        specs.push(BrickSpec {
            subvol: format!("{VOLUME}-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port: addr.port(),
        });
        paths.push(path);
    }
    Bricks {
        _dir: dir,
        paths,
        specs,
        id,
    }
}

impl Bricks {
    fn spec(&self, replica: usize, options: &[(&str, &str)]) -> VolumeSpec {
        let mut opts = BTreeMap::new();
        opts.insert("network.ping-timeout".to_string(), "5".to_string());
        for (k, v) in options {
            opts.insert(k.to_string(), v.to_string());
        }
        VolumeSpec {
            name: VOLUME.into(),
            id: self.id.clone(),
            kind: VolumeKind::Replicate { replica },
            bricks: self.specs[..replica].to_vec(),
            options: opts,
            generation: replica as u64,
        }
    }
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The data counter brick `at`'s copy of `rel` holds against brick `n`.
fn data_pending(b: &Bricks, at: usize, rel: &str, n: usize) -> i64 {
    match xattr(
        &b.paths[at].join(rel),
        &format!("trusted.kiln.afr.{VOLUME}-client-{n}"),
    ) {
        Some(v) if v.len() >= 8 => i64::from_be_bytes(v[..8].try_into().unwrap()),
        _ => 0,
    }
}

fn block(i: u8) -> Bytes {
    Bytes::from(vec![i; 128 * 1024])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_with_writes_in_flight() {
    let b = start_bricks(3).await;
    let vol = Arc::new(Volume::new(b.spec(2, &[])));
    vol.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(vol.graph_number(), 1);

    let (_, fd) = vol
        .create(
            Gfid::ROOT,
            &name("open"),
            &Caller::ROOT,
            0o644,
            libc::O_RDWR,
            true,
        )
        .await
        .unwrap();
    vol.write(&fd, 0, block(1)).await.unwrap();

    // Writes under way while the graph switches.
    let mut inflight = Vec::new();
    for i in 1..9u8 {
        let (vol, fd) = (vol.clone(), fd.clone());
        inflight.push(tokio::spawn(async move {
            vol.write(&fd, u64::from(i) * 128 * 1024, block(i + 1))
                .await
        }));
    }
    // The same spec again is no switch.
    assert!(!vol
        .switch(b.spec(2, &[]), Duration::from_secs(10))
        .await
        .unwrap());
    assert!(vol
        .switch(b.spec(3, &[]), Duration::from_secs(10))
        .await
        .unwrap());
    assert_eq!(vol.graph_number(), 2);
    assert_eq!(vol.current_spec().bricks.len(), 3);
    for w in inflight {
        let (n, _) = w
            .await
            .unwrap()
            .expect("a write under way during the switch");
        assert_eq!(n, 128 * 1024);
    }

    // The open file keeps working, now on the new graph.
    let (n, _) = vol.write(&fd, 9 * 128 * 1024, block(10)).await.unwrap();
    assert_eq!(n, 128 * 1024);
    vol.fsync(&fd, false).await.unwrap();
    let back = vol.read(&fd, 9 * 128 * 1024, 128 * 1024).await.unwrap();
    assert_eq!(back, block(10));
    vol.release(&fd).await.unwrap();
    // The new brick either got the write or is accused of missing it by
    // the old copies (then a heal fills it).
    let on_new = std::fs::metadata(b.paths[2].join("open"))
        .map(|m| m.len() == 10 * 128 * 1024)
        .unwrap_or(false);
    assert!(
        on_new || (data_pending(&b, 0, "open", 2) > 0 && data_pending(&b, 1, "open", 2) > 0),
        "the write after the switch neither reached nor accuses the new brick"
    );

    // A file created after the switch is on all three bricks.
    let (_, fd2) = vol
        .create(
            Gfid::ROOT,
            &name("after"),
            &Caller::ROOT,
            0o644,
            libc::O_RDWR,
            true,
        )
        .await
        .unwrap();
    vol.write(&fd2, 0, block(7)).await.unwrap();
    vol.release(&fd2).await.unwrap();
    for p in &b.paths {
        let data = std::fs::read(p.join("after")).unwrap();
        assert_eq!(data, block(7).to_vec(), "{}", p.display());
    }

    // Nothing uses graph 1 any more: it is gone (its connections closed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while vol.graphs_in_use() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "graph 1 still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every block written, before, during and after the switch, is there.
    let fd = vol
        .open(
            vol.lookup(Gfid::ROOT, &name("open"))
                .await
                .unwrap()
                .iatt
                .gfid,
            libc::O_RDONLY,
        )
        .await
        .unwrap();
    for i in 0..10u8 {
        let got = vol
            .read(&fd, u64::from(i) * 128 * 1024, 128 * 1024)
            .await
            .unwrap();
        assert_eq!(got, block(i + 1), "block {i}");
    }
    vol.release(&fd).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_file_stays_on_its_graph_until_released() {
    let b = start_bricks(2).await;
    let vol = Volume::new(b.spec(2, &[]));
    vol.wait_ready(Duration::from_secs(10)).await.unwrap();
    let (_, locked) = vol
        .create(
            Gfid::ROOT,
            &name("locked"),
            &Caller::ROOT,
            0o644,
            libc::O_RDWR,
            true,
        )
        .await
        .unwrap();
    let lock = FileLock {
        kind: LockType::Write,
        start: 0,
        len: 0,
        owner: 7,
        pid: 1,
    };
    vol.lk(&locked, LockCmd::Set, lock).await.unwrap();

    // An option change is a new graph too.
    assert!(vol
        .switch(
            b.spec(2, &[("cluster.quorum-type", "fixed")]),
            Duration::from_secs(10)
        )
        .await
        .unwrap());
    assert_eq!(vol.graph_number(), 2);
    // The lock still holds: the file stays where its lock lives.
    vol.write(&locked, 0, block(3)).await.unwrap();
    assert_eq!(vol.graphs_in_use(), 2);
    let probe = FileLock { owner: 8, ..lock };
    let other = Volume::new(b.spec(2, &[]));
    other.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ofd = other
        .open(
            vol.lookup(Gfid::ROOT, &name("locked"))
                .await
                .unwrap()
                .iatt
                .gfid,
            libc::O_RDWR,
        )
        .await
        .unwrap();
    let seen = other.lk(&ofd, LockCmd::Get, probe).await.unwrap();
    assert_eq!(
        seen.kind,
        LockType::Write,
        "the lock was lost in the switch"
    );
    other.release(&ofd).await.unwrap();

    vol.lk(
        &locked,
        LockCmd::Set,
        FileLock {
            kind: LockType::Unlock,
            ..lock
        },
    )
    .await
    .unwrap();
    vol.release(&locked).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while vol.graphs_in_use() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "graph 1 still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
