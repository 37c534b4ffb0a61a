//! End-to-end in one process: real brick servers on loopback, the real
//! protocol client and DHT, checked against the brick directories on disk.

use bytes::Bytes;
use kiln_core::brick::{prepare_brick_dir, serve_listener, BrickConfig};
use kiln_core::client::{Caller, Volume};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_core::{FsError, Gfid, Name};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct TestVolume {
    _dir: tempfile::TempDir,
    bricks: Vec<PathBuf>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    spec: VolumeSpec,
}

async fn start_volume(n: usize) -> TestVolume {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut bricks = Vec::new();
    let mut specs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("brick{i}"));
        prepare_brick_dir(&path, &id, true).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let label = format!("127.0.0.1:{}", path.display());
        let cfg = BrickConfig {
            volume: "tv".into(),
            volume_id: id.clone(),
            label: label.clone(),
            path: path.clone(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        tasks.push(tokio::spawn(async move {
            let _ = serve_listener(cfg, listener).await;
        }));
        specs.push(BrickSpec {
            subvol: format!("tv-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port,
        });
        bricks.push(path);
    }
    let mut options = BTreeMap::new();
    options.insert("network.ping-timeout".to_string(), "5".to_string());
    let spec = VolumeSpec {
        name: "tv".into(),
        id,
        kind: VolumeKind::Distribute,
        bricks: specs,
        options,
        generation: 1,
    };
    TestVolume {
        _dir: dir,
        bricks,
        tasks,
        spec,
    }
}

async fn mount(tv: &TestVolume) -> Volume {
    let vol = Volume::new(tv.spec.clone());
    vol.wait_ready(Duration::from_secs(10))
        .await
        .expect("volume ready");
    vol
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Bricks holding a regular (non-link) file at `rel`.
fn holders(bricks: &[PathBuf], rel: &str) -> Vec<usize> {
    bricks
        .iter()
        .enumerate()
        .filter(|(_, b)| match std::fs::symlink_metadata(b.join(rel)) {
            Ok(m) => !is_link_file(&b.join(rel), &m),
            Err(_) => false,
        })
        .map(|(i, _)| i)
        .collect()
}

fn is_link_file(path: &Path, m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.is_file()
        && m.len() == 0
        && m.permissions().mode() & 0o7777 == 0o1000
        && xattr_present(path, "trusted.kiln.dht.linkto")
}

fn xattr_present(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings; a zero-size probe writes nothing.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_spread_one_copy_each_dirs_everywhere() {
    let tv = start_volume(3).await;
    let vol = mount(&tv).await;
    let me = Caller::ROOT;
    let d = vol
        .mkdir(Gfid::ROOT, &name("dir"), &me, 0o755)
        .await
        .unwrap();
    for b in &tv.bricks {
        assert!(b.join("dir").is_dir(), "directory on every brick");
    }
    let mut per_brick = vec![0; 3];
    for i in 0..60 {
        let n = format!("f{i}");
        let (_, fd) = vol
            .create(d.gfid, &name(&n), &me, 0o644, libc::O_RDWR, false)
            .await
            .unwrap();
        vol.write(&fd, 0, Bytes::from(format!("content {i}")))
            .await
            .unwrap();
        vol.release(&fd).await.unwrap();
        let h = holders(&tv.bricks, &format!("dir/{n}"));
        assert_eq!(h.len(), 1, "{n} on exactly one brick: {h:?}");
        per_brick[h[0]] += 1;
    }
    assert!(
        per_brick.iter().all(|c| *c > 5),
        "names spread over bricks: {per_brick:?}"
    );

    // readdir merges all bricks, without duplicates.
    let fd = vol.opendir(d.gfid).await.unwrap();
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let ents = vol.readdir(&fd, off, 7, true).await.unwrap();
        let Some(last) = ents.last() else { break };
        off = last.offset;
        names.extend(ents.into_iter().map(|e| e.name.to_string()));
    }
    names.sort();
    let mut want: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(names, want);

    // Data reads back through the volume.
    let f7 = vol.lookup(d.gfid, &name("f7")).await.unwrap().iatt;
    let fd = vol.open(f7.gfid, libc::O_RDONLY).await.unwrap();
    assert_eq!(&vol.read(&fd, 0, 100).await.unwrap()[..], b"content 7");

    // statfs sums the bricks (all on one disk here: 3x).
    let st = vol.statfs().await.unwrap();
    let one = nix_statvfs(&tv.bricks[0]);
    assert!(
        st.blocks >= one * 2,
        "summed blocks {} vs one brick {}",
        st.blocks,
        one
    );
}

fn nix_statvfs(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_blocks as u64 * s.f_frsize as u64 / 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_to_other_brick_leaves_link_file() {
    let tv = start_volume(2).await;
    let vol = mount(&tv).await;
    let me = Caller::ROOT;
    let (_, fd) = vol
        .create(Gfid::ROOT, &name("src"), &me, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    vol.write(&fd, 0, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    vol.release(&fd).await.unwrap();
    let data_on = holders(&tv.bricks, "src")[0];
    // Find a new name that hashes to the other brick.
    let mut target = None;
    for i in 0..200 {
        let n = format!("dst{i}");
        vol.rename(
            Gfid::ROOT,
            &name(if i == 0 {
                "src"
            } else {
                target.as_deref().unwrap_or("src")
            }),
            Gfid::ROOT,
            &name(&n),
        )
        .await
        .unwrap();
        let on = holders(&tv.bricks, &n);
        assert_eq!(on, vec![data_on], "data never moves on rename");
        let other = 1 - data_on;
        let p = tv.bricks[other].join(&n);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            assert!(is_link_file(&p, &m), "the other brick holds a link file");
            target = Some(n);
            break;
        }
        target = Some(n);
    }
    let t = target.unwrap();
    assert!(
        std::fs::symlink_metadata(tv.bricks[1 - data_on].join(&t)).is_ok(),
        "link file after a rename that changes the hashed brick"
    );
    // Lookup through the link file, read the data, then unlink both.
    let l = vol.lookup(Gfid::ROOT, &name(&t)).await.unwrap();
    let fd = vol.open(l.iatt.gfid, libc::O_RDONLY).await.unwrap();
    assert_eq!(&vol.read(&fd, 0, 100).await.unwrap()[..], b"payload");
    vol.release(&fd).await.unwrap();
    vol.unlink(Gfid::ROOT, &name(&t)).await.unwrap();
    for b in &tv.bricks {
        assert!(
            std::fs::symlink_metadata(b.join(&t)).is_err(),
            "data and link file both gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_brick_gives_enotconn_fast_and_dirs_heal() {
    let mut tv = start_volume(2).await;
    let vol = mount(&tv).await;
    let me = Caller::ROOT;
    for i in 0..20 {
        let (_, fd) = vol
            .create(
                Gfid::ROOT,
                &name(&format!("g{i}")),
                &me,
                0o644,
                libc::O_RDWR,
                false,
            )
            .await
            .unwrap();
        vol.release(&fd).await.unwrap();
    }
    // Kill brick 1's server task.
    let t = tv.tasks.remove(1);
    t.abort();
    let _ = t.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let mut ok = 0;
    let mut enotconn = 0;
    for i in 0..20 {
        match vol.lookup(Gfid::ROOT, &name(&format!("g{i}"))).await {
            Ok(_) => ok += 1,
            Err(FsError::NotConnected(_)) => enotconn += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(ok > 0 && enotconn > 0, "ok={ok} enotconn={enotconn}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no stall on a dead brick: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_and_renames_across_bricks() {
    let tv = start_volume(2).await;
    let vol = mount(&tv).await;
    let me = Caller::ROOT;
    // Many names so that every combination of hashed bricks occurs.
    for i in 0..30 {
        let f = format!("f{i}");
        let (iatt, fd) = vol
            .create(Gfid::ROOT, &name(&f), &me, 0o644, libc::O_RDWR, false)
            .await
            .unwrap();
        vol.write(&fd, 0, Bytes::from(f.clone())).await.unwrap();
        vol.release(&fd).await.unwrap();
        vol.link(iatt.gfid, Gfid::ROOT, &name(&format!("g{i}")))
            .await
            .unwrap();
        vol.link(iatt.gfid, Gfid::ROOT, &name(&format!("k{i}")))
            .await
            .unwrap();
        vol.rename(
            Gfid::ROOT,
            &name(&format!("g{i}")),
            Gfid::ROOT,
            &name(&format!("h{i}")),
        )
        .await
        .unwrap();
        for n in [format!("f{i}"), format!("h{i}"), format!("k{i}")] {
            let l = vol.lookup(Gfid::ROOT, &name(&n)).await.unwrap();
            assert_eq!(l.iatt.gfid, iatt.gfid, "{n}");
            assert_eq!(l.iatt.nlink, 3, "{n}");
        }
        assert!(matches!(
            vol.lookup(Gfid::ROOT, &name(&format!("g{i}"))).await,
            Err(FsError::NotFound)
        ));
        vol.unlink(Gfid::ROOT, &name(&format!("k{i}")))
            .await
            .unwrap();
        let l = vol
            .lookup(Gfid::ROOT, &name(&format!("h{i}")))
            .await
            .unwrap();
        let fd = vol.open(l.iatt.gfid, libc::O_RDONLY).await.unwrap();
        assert_eq!(&vol.read(&fd, 0, 100).await.unwrap()[..], f.as_bytes());
        vol.release(&fd).await.unwrap();
    }
}
