//! The heal entry points the self-heal daemon uses, in one process: real
//! brick servers on loopback and replicate translators built per set
//! (`Replicate::replica_sets`): heal by the pending index (`IndexList` +
//! `heal_gfid`) with no client lookups, split-brain detection and
//! resolution by policy, and `full_heal` filling a brick added to the set.
//! Checked against the brick directories on disk.

use bytes::Bytes;
use kiln_core::client::replicate::{HealOutcome, Replicate, SplitBrainPolicy};
use kiln_core::client::{Caller, Volume};
use kiln_core::graph::{VolumeKind, VolumeSpec};
use kiln_core::Gfid;
use std::time::Duration;

mod replica_util;
use replica_util::*;

const VOL: &str = "hv";

async fn start_volume(n: usize, replica: usize, options: &[(&str, &str)]) -> TestVolume {
    start_volume_named(VOL, n, replica, options).await
}

/// The changelog counters `path` holds against brick `n`.
fn pending(path: &std::path::Path, n: usize) -> [i64; 3] {
    pending_in(VOL, path, n)
}

/// The volume's sets, with every child connected.
async fn sets(spec: &VolumeSpec) -> Vec<std::sync::Arc<Replicate>> {
    let sets = Replicate::replica_sets(spec, "shd-test");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sets
        .iter()
        .all(|s| (0..s.child_count()).all(|c| s.child(c).unwrap().is_up()))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bricks not connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sets
}

/// Every gfid in child `c`'s pending index.
async fn index_of(set: &Replicate, c: usize) -> Vec<Gfid> {
    set.child(c).unwrap().index_list(None, 4096).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_heal_then_split_brain_resolution() {
    let mut tv = start_volume(2, 2, &[]).await;
    let vol = mount(&tv).await;
    let sb = write_file(&vol, Gfid::ROOT, "sb", b"original").await;
    let plain = write_file(&vol, Gfid::ROOT, "plain", b"v1").await;
    let fd = vol.open(sb, libc::O_RDWR).await.unwrap();
    let pfd = vol.open(plain, libc::O_RDWR).await.unwrap();

    // Brick 1 away: brick 0 changes alone.
    tv.kill(1).await;
    vol.write(&fd, 0, Bytes::from_static(b"AAAA"))
        .await
        .unwrap();
    vol.write(&pfd, 0, Bytes::from_static(b"v2 longer"))
        .await
        .unwrap();
    let _ = vol.release(&pfd).await;
    // Brick 0 away, brick 1 back: brick 1 changes alone.
    tv.kill(0).await;
    tv.restart(1).await;
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
    vol.release_eager_locks().await;
    drop(vol);
    tv.restart(0).await;

    let sets = sets(&tv.spec).await;
    let set = &sets[0];
    // Brick 0's index holds both files; judged without healing.
    let pending0 = index_of(set, 0).await;
    assert!(
        pending0.contains(&sb) && pending0.contains(&plain),
        "{pending0:?}"
    );
    assert!(set.examine(sb).await.unwrap().split_brain);
    let x = set.examine(plain).await.unwrap();
    assert!(x.pending && !x.split_brain);
    assert_eq!(std::fs::read(tv.at(1, "plain")).unwrap(), b"v1");

    // The daemon's heal: the plain file heals, the split-brain stays.
    for g in &pending0 {
        let _ = set.heal_gfid(*g, &g.to_string()).await.unwrap();
    }
    assert_eq!(std::fs::read(tv.at(1, "plain")).unwrap(), b"v2 longer");
    assert!(all_zero(&tv, "plain", &[0, 1]));
    assert_eq!(
        set.heal_gfid(sb, "sb").await.unwrap(),
        HealOutcome::SplitBrain
    );
    assert_eq!(std::fs::read(tv.at(0, "sb")).unwrap(), b"AAAAinal");
    assert_eq!(std::fs::read(tv.at(1, "sb")).unwrap(), b"BBBBinal");

    // Resolution: brick 1's copy wins; both agree, nothing pending.
    let (g, _) = set.resolve_raw("/sb").await.unwrap();
    assert_eq!(g, sb);
    assert_eq!(
        set.resolve_split_brain(sb, SplitBrainPolicy::SourceChild(1), "/sb")
            .await
            .unwrap(),
        1
    );
    for b in 0..2 {
        assert_eq!(std::fs::read(tv.at(b, "sb")).unwrap(), b"BBBBinal");
    }
    assert!(all_zero(&tv, "sb", &[0, 1]));
    assert!(!set.examine(sb).await.unwrap().pending);
    let vol = mount(&tv).await;
    assert_eq!(read_all(&vol, sb).await.unwrap(), b"BBBBinal");
    // Not in split-brain any more: the policy still applies cleanly.
    assert_eq!(set.heal_gfid(sb, "sb").await.unwrap(), HealOutcome::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_heal_fills_a_brick_added_to_the_set() {
    // Three bricks; the first two serve a replica 2 volume at first.
    let tv = start_volume(3, 3, &[]).await;
    let mut two = tv.spec.clone();
    two.kind = VolumeKind::Replicate { replica: 2 };
    two.bricks.truncate(2);
    let vol = Volume::new(two);
    vol.wait_ready(Duration::from_secs(10)).await.unwrap();
    let d = vol
        .mkdir(Gfid::ROOT, &name("d"), &Caller::ROOT, 0o755)
        .await
        .unwrap()
        .gfid;
    let sub = vol
        .mkdir(d, &name("sub"), &Caller::ROOT, 0o700)
        .await
        .unwrap()
        .gfid;
    for i in 0..5 {
        write_file(&vol, d, &format!("f{i}"), format!("file {i}").as_bytes()).await;
    }
    write_file(&vol, sub, "deep", &[7u8; 200_000]).await;
    write_file(&vol, Gfid::ROOT, "top", b"top").await;
    vol.release_eager_locks().await;
    drop(vol);
    assert!(!tv.at(2, "d").exists());

    // Replica 3 now: the full crawl merges the copies' entries.
    let sets = sets(&tv.spec).await;
    let counts = sets[0].full_heal().await;
    assert!(counts.healed >= 1 && counts.failed == 0, "{counts:?}");
    for rel in ["d", "d/sub", "d/f0", "d/f4", "d/sub/deep", "top"] {
        assert_eq!(gfid_of(&tv.at(2, rel)), gfid_of(&tv.at(0, rel)), "{rel}");
        if !tv.at(0, rel).is_dir() {
            assert_eq!(
                std::fs::read(tv.at(2, rel)).unwrap(),
                std::fs::read(tv.at(0, rel)).unwrap(),
                "{rel}"
            );
        }
        assert!(all_zero(&tv, rel, &[0, 1, 2]), "{rel}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tv.at(2, "d/sub"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(all_zero(&tv, "", &[0, 1, 2]));
    // Nothing left to do.
    let again = sets[0].full_heal().await;
    assert_eq!(again.healed, 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_merge_from_two_copies_settles_the_third() {
    use kiln_core::proto::{XattrMap, XattropOp};
    let tv = start_volume(3, 3, &[]).await;
    let mut two = tv.spec.clone();
    two.kind = VolumeKind::Replicate { replica: 2 };
    two.bricks.truncate(2);
    let vol = Volume::new(two);
    vol.wait_ready(Duration::from_secs(10)).await.unwrap();
    write_file(&vol, Gfid::ROOT, "m1", b"one").await;
    write_file(&vol, Gfid::ROOT, "m2", b"two").await;
    vol.release_eager_locks().await;
    drop(vol);
    // Every copy of the root accuses itself (an entry operation cut short
    // everywhere): the heal merges the copies' entries.
    let sets = sets(&tv.spec).await;
    let set = &sets[0];
    for c in 0..3 {
        let mut delta = XattrMap::new();
        let mut v = vec![0u8; 16];
        v.extend_from_slice(&1i64.to_be_bytes());
        delta.insert(format!("trusted.kiln.afr.{VOL}-client-{c}"), v);
        set.child(c)
            .unwrap()
            .xattrop(Gfid::ROOT, XattropOp::AddArray64, &delta)
            .await
            .unwrap();
    }
    assert_eq!(pending(&tv.at(2, ""), 2), [0, 0, 1]);
    assert_eq!(
        set.heal_gfid(Gfid::ROOT, "/").await.unwrap(),
        HealOutcome::Healed
    );
    for rel in ["m1", "m2"] {
        assert_eq!(gfid_of(&tv.at(2, rel)), gfid_of(&tv.at(0, rel)), "{rel}");
        assert_eq!(
            std::fs::read(tv.at(2, rel)).unwrap(),
            std::fs::read(tv.at(0, rel)).unwrap()
        );
    }
    assert!(all_zero(&tv, "", &[0, 1, 2]));
}
