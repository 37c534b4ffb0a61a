//! Shared test setup: a real kernel FUSE mount of a volume under a tempdir.
#![allow(dead_code)]

pub mod memfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::client::{Volume, Xlator};
use kiln_core::graph::{VolumeKind, VolumeSpec};
use kiln_fuse::{FuseMount, MountConfig};

/// A mounted test volume; unmounts on drop.
pub struct TestMount {
    pub mount: Option<FuseMount>,
    pub dir: tempfile::TempDir,
    pub mem: Arc<memfs::MemFs>,
    pub rt: tokio::runtime::Runtime,
}

impl TestMount {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            m.unmount().expect("unmount");
        }
    }
}

/// A spec naming no bricks (the graph is given directly).
pub fn spec(name: &str) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        id: "00000000-0000-0000-0000-00000000abcd".into(),
        kind: VolumeKind::Distribute,
        bricks: Vec::new(),
        options: BTreeMap::new(),
        generation: 1,
    }
}

/// Mounts an in-memory volume with `cfg` (fsname filled in).
pub fn mount_mem_with(mut cfg: MountConfig) -> TestMount {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mem = Arc::new(memfs::MemFs::new());
    let top: Arc<dyn Xlator> = mem.clone();
    let vol = Arc::new(Volume::with_top(spec("memvol"), top));
    let root = rt
        .block_on(vol.wait_ready(std::time::Duration::from_secs(5)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    cfg.fsname = "localhost:/memvol".into();
    let mount =
        FuseMount::mount(vol, rt.handle().clone(), Some(&root), dir.path(), &cfg).expect("mount");
    TestMount {
        mount: Some(mount),
        dir,
        mem,
        rt,
    }
}

/// A second mount of the same volume (another client), on its own dir.
pub fn second_mount(first: &TestMount, cfg: MountConfig) -> (tempfile::TempDir, FuseMount) {
    let top: Arc<dyn Xlator> = first.mem.clone();
    let vol = Arc::new(Volume::with_top(spec("memvol"), top));
    let dir = tempfile::tempdir().unwrap();
    let m =
        FuseMount::mount(vol, first.rt.handle().clone(), None, dir.path(), &cfg).expect("mount");
    (dir, m)
}

/// Mounts an in-memory volume with default settings.
pub fn mount_mem() -> TestMount {
    mount_mem_with(MountConfig::default())
}
