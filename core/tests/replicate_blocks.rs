//! Replicate's block-checksum data heal and eager locking in one process:
//! real brick servers on loopback and real protocol clients under one
//! `Replicate` (kept at hand to read its heal counters). A large file
//! changed in a few blocks while a brick was down heals by copying only
//! those blocks; holes stay holes; a sink longer than the source is cut.
//! A stream of writes raises the counters once and clears them on release
//! or when idle; another client's write gets the lock within the hold
//! limit.

use bytes::Bytes;
use kiln_core::brick::prepare_brick_dir;
use kiln_core::client::protocol::{ProtocolClient, ProtocolOptions};
use kiln_core::client::replicate::{Quorum, Replicate};
use kiln_core::client::{Caller, Volume, Xlator};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_core::{Gfid, Name};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod replica_util;
use replica_util::{serve, xattr};

const VOL: &str = "bv";
const BLOCK: u64 = 128 << 10;

struct Setup {
    _dir: tempfile::TempDir,
    id: String,
    paths: Vec<PathBuf>,
    ports: Vec<u16>,
    tasks: Vec<Option<tokio::task::JoinHandle<()>>>,
    rep: Arc<Replicate>,
    vol: Volume,
}

async fn setup() -> Setup {
    setup_with(None).await
}

async fn setup_with(eager_lock: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let (mut paths, mut ports, mut tasks, mut specs) = (vec![], vec![], vec![], vec![]);
    for i in 0..2 {
        let path = dir.path().join(format!("brick{i}"));
        prepare_brick_dir(&path, &id, true).unwrap();
        let (port, task) = serve(VOL, &path, &id, 0).await;
        specs.push(BrickSpec {
            subvol: format!("{VOL}-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port,
        });
        paths.push(path);
        ports.push(port);
        tasks.push(Some(task));
    }
    let mut options = BTreeMap::new();
    options.insert("network.ping-timeout".to_string(), "5".to_string());
    let spec = VolumeSpec {
        name: VOL.into(),
        id: id.clone(),
        kind: VolumeKind::Replicate { replica: 2 },
        bricks: specs.clone(),
        options,
        generation: 1,
    };
    let opts = ProtocolOptions {
        ping_timeout: Duration::from_secs(5),
        client_id: format!("blocks-{}", uuid::Uuid::new_v4()),
    };
    let children: Vec<Arc<dyn Xlator>> = specs
        .into_iter()
        .map(|b| Arc::new(ProtocolClient::new(VOL, b, opts.clone())) as Arc<dyn Xlator>)
        .collect();
    let rep = Arc::new(
        Replicate::new(format!("{VOL}-replicate-0"), children, Quorum::None)
            .with_eager_lock(eager_lock),
    );
    let vol = Volume::with_top(spec, rep.clone());
    vol.wait_ready(Duration::from_secs(10)).await.unwrap();
    Setup {
        _dir: dir,
        id,
        paths,
        ports,
        tasks,
        rep,
        vol,
    }
}

impl Setup {
    async fn kill(&mut self, i: usize) {
        if let Some(t) = self.tasks[i].take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self, i: usize) {
        let (_, t) = serve(VOL, &self.paths[i], &self.id, self.ports[i]).await;
        self.tasks[i] = Some(t);
    }

    fn at(&self, i: usize, rel: &str) -> PathBuf {
        self.paths[i].join(rel)
    }

    /// Looks `rel` up until both copies match on disk.
    async fn heal(&self, rel: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let _ = self.vol.resolve_path(&format!("/{rel}")).await;
            let a = std::fs::read(self.at(0, rel)).unwrap();
            if std::fs::read(self.at(1, rel)).ok() == Some(a) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{rel} did not heal");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn write_at(vol: &Volume, gfid: Gfid, parts: &[(u64, Vec<u8>)], truncate: Option<u64>) {
    let fd = vol.open(gfid, libc::O_RDWR).await.unwrap();
    if let Some(t) = truncate {
        vol.ftruncate(&fd, t).await.unwrap();
    }
    for (off, data) in parts {
        for (k, c) in data.chunks(1 << 20).enumerate() {
            vol.write(&fd, off + (k as u64) * (1 << 20), Bytes::copy_from_slice(c))
                .await
                .unwrap();
        }
    }
    vol.release(&fd).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_differing_blocks_are_copied() {
    let mut s = setup().await;
    let name = Name::new("big").unwrap();
    let (iatt, fd) = s
        .vol
        .create(Gfid::ROOT, &name, &Caller::ROOT, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    s.vol.release(&fd).await.unwrap();
    let g = iatt.gfid;
    // 4 MiB + 100 bytes, with a hole at [1 MiB, 1.5 MiB).
    let mut body = pattern((4 << 20) + 100, 1);
    body[1 << 20..(3 << 19)].fill(0);
    write_at(
        &s.vol,
        g,
        &[
            (0, body[..1 << 20].to_vec()),
            (3 << 19, body[3 << 19..].to_vec()),
        ],
        None,
    )
    .await;
    let cut = Name::new("cut").unwrap();
    let (citatt, fd) = s
        .vol
        .create(Gfid::ROOT, &cut, &Caller::ROOT, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    s.vol.release(&fd).await.unwrap();
    let cbody = pattern(3 << 20, 2);
    write_at(&s.vol, citatt.gfid, &[(0, cbody.clone())], None).await;
    assert_eq!(std::fs::read(s.at(1, "big")).unwrap(), body);

    s.kill(1).await;
    // Block 3 (10 bytes), blocks 24-25 (200 KiB at 3 MiB), and the tail:
    // the file grows to 4 MiB + 300 KiB (blocks 32-34).
    let small = pattern(10, 3);
    let mid = pattern(200 << 10, 4);
    let tail = pattern((300 << 10) - 100, 5);
    write_at(
        &s.vol,
        g,
        &[
            (3 * BLOCK + 7, small.clone()),
            (3 << 20, mid.clone()),
            ((4 << 20) + 100, tail.clone()),
        ],
        None,
    )
    .await;
    // The other file: cut to 2 MiB, one block changed.
    write_at(
        &s.vol,
        citatt.gfid,
        &[(5 * BLOCK, pattern(1000, 6))],
        Some(2 << 20),
    )
    .await;
    let mut want = body.clone();
    want[(3 * BLOCK + 7) as usize..(3 * BLOCK + 17) as usize].copy_from_slice(&small);
    want[3 << 20..(3 << 20) + (200 << 10)].copy_from_slice(&mid);
    want.extend_from_slice(&tail);
    assert_eq!(std::fs::read(s.at(0, "big")).unwrap(), want);

    s.restart(1).await;
    let before = s.rep.data_heal_stats();
    s.heal("big").await;
    let after = s.rep.data_heal_stats();
    assert_eq!(std::fs::read(s.at(1, "big")).unwrap(), want);
    assert_eq!(after.block_heals - before.block_heals, 1, "{after:?}");
    assert_eq!(
        after.blocks_differing - before.blocks_differing,
        6,
        "blocks 3, 24, 25, 32, 33, 34 differ: {after:?}"
    );
    let written = after.bytes_written - before.bytes_written;
    assert!(
        written <= 6 * BLOCK && written > 5 * BLOCK,
        "wrote {written} bytes for 6 blocks"
    );
    // The hole of the source is a hole on the healed copy too.
    let m1 = std::fs::metadata(s.at(1, "big")).unwrap();
    assert!(
        m1.blocks() * 512 <= m1.len() - (256 << 10),
        "allocated {} of {}",
        m1.blocks() * 512,
        m1.len()
    );

    s.heal("cut").await;
    let mut cwant = cbody[..2 << 20].to_vec();
    cwant[(5 * BLOCK) as usize..(5 * BLOCK) as usize + 1000].copy_from_slice(&pattern(1000, 6));
    assert_eq!(std::fs::read(s.at(1, "cut")).unwrap(), cwant);
    let fin = s.rep.data_heal_stats();
    assert_eq!(fin.block_heals - after.block_heals, 1);
    assert_eq!(fin.blocks_differing - after.blocks_differing, 1, "{fin:?}");
    // Both copies are clean again.
    for b in 0..2 {
        for rel in ["big", "cut"] {
            for n in 0..2 {
                let key = format!("trusted.kiln.afr.{VOL}-client-{n}");
                let v = xattr(&s.at(b, rel), &key).unwrap_or_default();
                assert!(v.iter().all(|x| *x == 0), "{rel} on brick {b}: {v:?}");
            }
        }
    }
}

/// The data counter brick `b`'s copy of `rel` holds against brick `n`.
fn data_pending(s: &Setup, b: usize, rel: &str, n: usize) -> i64 {
    let key = format!("trusted.kiln.afr.{VOL}-client-{n}");
    xattr(&s.at(b, rel), &key)
        .map(|v| i64::from_be_bytes(v[..8].try_into().unwrap()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_lock_spans_a_write_stream() {
    let s = setup().await;
    let name = Name::new("stream").unwrap();
    let (iatt, fd) = s
        .vol
        .create(Gfid::ROOT, &name, &Caller::ROOT, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    let g = iatt.gfid;
    for k in 0..20u64 {
        s.vol
            .write(&fd, k * 4096, Bytes::from(vec![k as u8; 4096]))
            .await
            .unwrap();
    }
    // One pre-op for the whole stream: each copy accuses both by exactly 1.
    for b in 0..2 {
        for n in 0..2 {
            assert_eq!(data_pending(&s, b, "stream", n), 1, "brick {b} vs {n}");
        }
    }
    // Release: post-op, all clean.
    s.vol.release(&fd).await.unwrap();
    for b in 0..2 {
        for n in 0..2 {
            assert_eq!(data_pending(&s, b, "stream", n), 0, "brick {b} vs {n}");
        }
    }
    // Idle: the post-op comes by itself about a second after the last write.
    let fd = s.vol.open(g, libc::O_RDWR).await.unwrap();
    s.vol
        .write(&fd, 0, Bytes::from_static(b"idle"))
        .await
        .unwrap();
    assert_eq!(data_pending(&s, 0, "stream", 1), 1);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(data_pending(&s, 0, "stream", 1), 0, "idle post-op");

    // Another client writing the same file while this one streams gets
    // the lock within the hold limit.
    let other = Volume::new(s.vol.spec().clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ofd = other.open(g, libc::O_RDWR).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let stop = stop.clone();
        let vol = Volume::with_top(s.vol.spec().clone(), s.rep.clone());
        let fd = fd.clone();
        tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                vol.write(&fd, (k % 64) * 4096, Bytes::from(vec![1u8; 4096]))
                    .await
                    .unwrap();
                k += 1;
            }
            k
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    other
        .write(&ofd, 1 << 20, Bytes::from_static(b"other client"))
        .await
        .unwrap();
    let waited = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = streamer.await.unwrap();
    assert!(writes > 10, "the stream went on ({writes} writes)");
    assert!(
        waited < Duration::from_millis(2500),
        "the other client waited {waited:?}"
    );
    other.release(&ofd).await.unwrap();
    s.vol.release(&fd).await.unwrap();
    for b in 0..2 {
        for n in 0..2 {
            assert_eq!(data_pending(&s, b, "stream", n), 0, "brick {b} vs {n}");
        }
        let body = std::fs::read(s.at(b, "stream")).unwrap();
        assert_eq!(&body[1 << 20..], b"other client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brick_lost_under_the_eager_lock_stays_accused() {
    let mut s = setup().await;
    let name = Name::new("lost").unwrap();
    let (_, fd) = s
        .vol
        .create(Gfid::ROOT, &name, &Caller::ROOT, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    s.vol
        .write(&fd, 0, Bytes::from_static(b"both copies "))
        .await
        .unwrap();
    s.kill(1).await;
    // Acknowledged while brick 1 is gone: brick 0 must accuse it at once
    // (not at some later post-op), even though the lock was held eagerly.
    s.vol
        .write(&fd, 12, Bytes::from_static(b"only brick 0"))
        .await
        .unwrap();
    assert_eq!(data_pending(&s, 0, "lost", 1), 1, "brick 0 accuses brick 1");
    assert_eq!(data_pending(&s, 0, "lost", 0), 0, "brick 0 is clean itself");
    s.vol
        .write(&fd, 24, Bytes::from_static(b" and more"))
        .await
        .unwrap();
    s.vol.release(&fd).await.unwrap();
    assert_eq!(data_pending(&s, 0, "lost", 0), 0);
    assert!(data_pending(&s, 0, "lost", 1) >= 1);
    s.restart(1).await;
    s.heal("lost").await;
    assert_eq!(
        std::fs::read(s.at(1, "lost")).unwrap(),
        b"both copies only brick 0 and more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_lock_off_clears_counters_after_each_write() {
    let s = setup_with(Some("off")).await;
    let name = Name::new("plain").unwrap();
    let (_, fd) = s
        .vol
        .create(Gfid::ROOT, &name, &Caller::ROOT, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    s.vol
        .write(&fd, 0, Bytes::from_static(b"one transaction"))
        .await
        .unwrap();
    for b in 0..2 {
        for n in 0..2 {
            assert_eq!(data_pending(&s, b, "plain", n), 0, "brick {b} vs {n}");
        }
    }
    s.vol.release(&fd).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dying_under_the_eager_lock_leaves_fools_that_heal() {
    let s = setup().await;
    let spec = s.vol.spec().clone();
    // Another client writes under its eager lock and dies (its runtime and
    // connections dropped) before any post-op.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let v = Volume::new(spec);
            v.wait_ready(Duration::from_secs(10)).await.unwrap();
            let name = Name::new("crash").unwrap();
            let (_, fd) = v
                .create(Gfid::ROOT, &name, &Caller::ROOT, 0o644, libc::O_RDWR, false)
                .await
                .unwrap();
            for k in 0..8u64 {
                v.write(&fd, k * 65536, Bytes::from(vec![k as u8 + 1; 65536]))
                    .await
                    .unwrap();
            }
            // No flush, no release: the process just goes away.
            drop(fd);
            drop(v);
        });
        rt.shutdown_background();
    })
    .join()
    .unwrap();
    // Every copy accuses everyone (fools): nothing acknowledged is missing
    // anywhere, so any copy may serve and the heal makes them clean.
    for b in 0..2 {
        for n in 0..2 {
            assert_eq!(data_pending(&s, b, "crash", n), 1, "brick {b} vs {n}");
        }
    }
    let want: Vec<u8> = (0..8u8).flat_map(|k| vec![k + 1; 65536]).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = s.vol.resolve_path("/crash").await;
        let clean = (0..2).all(|b| (0..2).all(|n| data_pending(&s, b, "crash", n) == 0));
        if clean {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not healed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in 0..2 {
        assert_eq!(std::fs::read(s.at(b, "crash")).unwrap(), want, "brick {b}");
    }
}
