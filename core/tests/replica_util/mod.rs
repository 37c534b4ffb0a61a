//! Shared by the replicate_* tests: a replicated volume of real brick
//! servers on loopback ports over temp brick directories (killed and served
//! again on the same port, as a crashed brick process would be), a client
//! for it, and checks that read the bricks' xattrs and heal indices.
#![allow(dead_code)]

use bytes::Bytes;
use kiln_core::brick::{prepare_brick_dir, serve_listener, BrickConfig};
use kiln_core::client::{Caller, Volume};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_core::{FsError, Gfid, Name};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One brick server of a test volume.
pub struct Brick {
    pub path: PathBuf,
    pub port: u16,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// A replicated (or distributed-replicated) volume served in this process.
pub struct TestVolume {
    _dir: tempfile::TempDir,
    /// Volume name (brick subvolumes are `<vol>-client-<i>`).
    pub vol: &'static str,
    pub id: String,
    pub bricks: Vec<Brick>,
    pub spec: VolumeSpec,
}

/// Serves the brick at `path` of volume `vol` on `port` (0: any).
pub async fn serve(
    vol: &str,
    path: &Path,
    id: &str,
    port: u16,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = BrickConfig {
        volume: vol.into(),
        volume_id: id.to_string(),
        label: format!("127.0.0.1:{}", path.display()),
        path: path.to_path_buf(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let task = tokio::spawn(async move {
        let _ = serve_listener(cfg, listener).await;
    });
    (port, task)
}

/// `n` bricks in sets of `replica`, with a 5 s ping-timeout and `options`.
pub async fn start_volume_named(
    vol: &'static str,
    n: usize,
    replica: usize,
    options: &[(&str, &str)],
) -> TestVolume {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut bricks = Vec::new();
    let mut specs = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("brick{i}"));
        prepare_brick_dir(&path, &id, true).unwrap();
        let (port, task) = serve(vol, &path, &id, 0).await;
        specs.push(BrickSpec {
            subvol: format!("{vol}-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port,
        });
        bricks.push(Brick {
            path,
            port,
            task: Some(task),
        });
    }
    let mut opts = BTreeMap::new();
    opts.insert("network.ping-timeout".to_string(), "5".to_string());
    for (k, v) in options {
        opts.insert(k.to_string(), v.to_string());
    }
    let spec = VolumeSpec {
        name: vol.into(),
        id: id.clone(),
        kind: VolumeKind::Replicate { replica },
        bricks: specs,
        options: opts,
        generation: 1,
    };
    TestVolume {
        _dir: dir,
        vol,
        id,
        bricks,
        spec,
    }
}

impl TestVolume {
    /// Kills brick `i` (its listener and connections go, as with kill -9).
    pub async fn kill(&mut self, i: usize) {
        if let Some(t) = self.bricks[i].task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Serves brick `i` again on the same directory and port.
    pub async fn restart(&mut self, i: usize) {
        let b = &self.bricks[i];
        let (_, task) = serve(self.vol, &b.path, &self.id, b.port).await;
        self.bricks[i].task = Some(task);
    }

    /// `rel` inside brick `i`.
    pub fn at(&self, i: usize, rel: &str) -> PathBuf {
        self.bricks[i].path.join(rel)
    }

    /// Entries of the pending-heal index of brick `i`.
    pub fn index(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = match std::fs::read_dir(self.at(i, ".kiln/indices/xattrop")) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

/// A client of `tv`, once it reaches the volume.
pub async fn mount(tv: &TestVolume) -> Volume {
    let vol = Volume::new(tv.spec.clone());
    vol.wait_ready(Duration::from_secs(10))
        .await
        .expect("volume ready");
    vol
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The xattr `key` of `path` (not following symlinks).
pub fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(key).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

pub fn gfid_of(path: &Path) -> Option<Vec<u8>> {
    xattr(path, "trusted.kiln.gfid")
}

/// The changelog counters `path` holds against brick `n` of volume `vol`.
pub fn pending_in(vol: &str, path: &Path, n: usize) -> [i64; 3] {
    let mut out = [0; 3];
    if let Some(v) = xattr(path, &format!("trusted.kiln.afr.{vol}-client-{n}")) {
        for (i, c) in v.chunks_exact(8).take(3).enumerate() {
            out[i] = i64::from_be_bytes(c.try_into().unwrap());
        }
    }
    out
}

/// True when every counter of `rel` on each of `bricks` is zero.
pub fn all_zero(tv: &TestVolume, rel: &str, bricks: &[usize]) -> bool {
    bricks
        .iter()
        .all(|b| (0..tv.bricks.len()).all(|n| pending_in(tv.vol, &tv.at(*b, rel), n) == [0; 3]))
}

/// Creates `n` in `parent` with `data`; its gfid.
pub async fn write_file(vol: &Volume, parent: Gfid, n: &str, data: &[u8]) -> Gfid {
    let (iatt, fd) = vol
        .create(parent, &name(n), &Caller::ROOT, 0o644, libc::O_RDWR, false)
        .await
        .unwrap();
    vol.write(&fd, 0, Bytes::copy_from_slice(data))
        .await
        .unwrap();
    vol.release(&fd).await.unwrap();
    iatt.gfid
}

/// The whole content of `gfid`.
pub async fn read_all(vol: &Volume, gfid: Gfid) -> Result<Vec<u8>, FsError> {
    let fd = vol.open(gfid, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    loop {
        let b = vol.read(&fd, out.len() as u64, 1 << 16).await?;
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    vol.release(&fd).await?;
    Ok(out)
}

/// Looks `paths` up through a fresh client until `done` holds (the restarted
/// brick is reconnected and the lookup healed it).
pub async fn heal_by_lookup(tv: &TestVolume, paths: &[&str], done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let vol = mount(tv).await;
        for p in paths {
            let _ = vol.resolve_path(p).await;
        }
        if done() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lookups did not heal {paths:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
