//! The state MOUNT and NFS share: the served volumes (by id and name) with
//! their export options, fd caches and directory parent hints, the write
//! verifier of this gateway instance, and handle resolution with the
//! per-volume address rules and root squash applied.

use kiln_core::client::Volume;
use kiln_core::{Gfid, Iatt};
use kiln_portmap::CallContext;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::access::Identity;
use crate::exports::ExportOptions;
use crate::fdcache::FdCache;
use crate::handle::FileHandle;
use crate::types::{Fattr3, Ftype3, NfsStat3, NfsTime3, WccAttr};

/// Most directory parent hints remembered per volume.
const MAX_PARENTS: usize = 65536;

/// One served volume.
pub struct VolumeCtx {
    /// Volume name (the export is `/NAME`).
    pub name: String,
    /// Volume id (first half of every handle).
    pub id: [u8; 16],
    /// The volume client.
    pub volume: Arc<Volume>,
    /// Export options.
    pub opts: ExportOptions,
    /// Open files and directories.
    pub fds: FdCache,
    /// `fsid` reported in attributes.
    pub fsid: u64,
    parents: Mutex<HashMap<Gfid, Gfid>>,
}

impl VolumeCtx {
    /// Wraps a ready volume; fails if its id is not a UUID.
    pub fn new(volume: Arc<Volume>, fd_idle: Duration) -> anyhow::Result<VolumeCtx> {
        let spec = volume.spec();
        let id = *uuid::Uuid::parse_str(&spec.id)
            .map_err(|e| anyhow::anyhow!("volume {} has a bad id {:?}: {e}", spec.name, spec.id))?
            .as_bytes();
        let fsid = u64::from_be_bytes(id[..8].try_into().unwrap_or([0; 8]))
            ^ u64::from_be_bytes(id[8..].try_into().unwrap_or([0; 8]));
        Ok(VolumeCtx {
            name: spec.name.clone(),
            id,
            opts: ExportOptions::from_spec(spec),
            fds: FdCache::new(volume.clone(), fd_idle),
            fsid,
            volume,
            parents: Mutex::new(HashMap::new()),
        })
    }

    /// The handle of `gfid` in this volume.
    pub fn fh(&self, gfid: Gfid) -> [u8; 32] {
        FileHandle::new(self.id, gfid).encode()
    }

    /// Remembers that directory `child` is in `parent` (for LOOKUP "..").
    pub fn note_parent(&self, child: &Iatt, parent: Gfid) {
        if child.is_dir() {
            let mut p = self.parents.lock();
            if p.len() >= MAX_PARENTS {
                p.clear();
            }
            p.insert(child.gfid, parent);
        }
    }

    /// The remembered parent of directory `gfid` (the root is its own).
    pub fn parent_of(&self, gfid: Gfid) -> Option<Gfid> {
        if gfid.is_root() {
            return Some(gfid);
        }
        self.parents.lock().get(&gfid).copied()
    }

    /// `fattr3` of an inode.
    pub fn fattr(&self, a: &Iatt) -> Fattr3 {
        use kiln_core::FileKind::*;
        let ftype = match a.kind {
            Regular => Ftype3::NF3REG,
            Directory => Ftype3::NF3DIR,
            Symlink => Ftype3::NF3LNK,
            BlockDevice => Ftype3::NF3BLK,
            CharDevice => Ftype3::NF3CHR,
            Fifo => Ftype3::NF3FIFO,
            Socket => Ftype3::NF3SOCK,
        };
        let rdev = (
            libc::major(a.rdev as libc::dev_t),
            libc::minor(a.rdev as libc::dev_t),
        );
        Fattr3 {
            ftype,
            mode: a.perm & 0o7777,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used: a.blocks.saturating_mul(512),
            rdev,
            fsid: self.fsid,
            fileid: a.ino(),
            atime: time3(a.atime),
            mtime: time3(a.mtime),
            ctime: time3(a.ctime),
        }
    }
}

/// An `nfstime3` from an inode time (before 1970 clamps to 0, after 2106 to max).
pub fn time3(t: kiln_core::iatt::Timespec) -> NfsTime3 {
    NfsTime3 {
        seconds: t.sec.clamp(0, u32::MAX as i64) as u32,
        nseconds: t.nsec,
    }
}

/// The `wcc_attr` of an inode.
pub fn wcc_attr(a: &Iatt) -> WccAttr {
    WccAttr {
        size: a.size,
        mtime: time3(a.mtime),
        ctime: time3(a.ctime),
    }
}

/// A client's mount as MOUNT DUMP lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Client host (its address).
    pub host: String,
    /// Mounted path.
    pub path: String,
}

/// Everything the gateway's programs share.
pub struct Gateway {
    by_id: HashMap<[u8; 16], Arc<VolumeCtx>>,
    by_name: HashMap<String, Arc<VolumeCtx>>,
    /// The write verifier of this gateway instance (new on every start).
    pub write_verf: [u8; 8],
    /// Current mounts (MOUNT DUMP).
    pub mounts: Mutex<Vec<MountEntry>>,
}

/// A resolved request: volume, inode and caller.
pub struct Target {
    /// The volume.
    pub vol: Arc<VolumeCtx>,
    /// The inode the handle names.
    pub gfid: Gfid,
    /// The caller after squashing.
    pub id: Identity,
}

impl Gateway {
    /// A gateway over `volumes`.
    pub fn new(volumes: Vec<Arc<VolumeCtx>>) -> Gateway {
        let mut write_verf = [0u8; 8];
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        write_verf.copy_from_slice(&(nanos ^ rand::random::<u64>()).to_be_bytes());
        Gateway {
            by_id: volumes.iter().map(|v| (v.id, v.clone())).collect(),
            by_name: volumes
                .iter()
                .map(|v| (v.name.clone(), v.clone()))
                .collect(),
            write_verf,
            mounts: Mutex::new(Vec::new()),
        }
    }

    /// Every served volume.
    pub fn volumes(&self) -> impl Iterator<Item = &Arc<VolumeCtx>> {
        self.by_name.values()
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Arc<VolumeCtx>> {
        self.by_name.get(name)
    }

    /// Resolves a raw handle for a call: BADHANDLE if malformed, STALE for an
    /// unknown volume, ACCES when the volume's rules refuse the client.
    pub fn resolve(&self, fh: &[u8], ctx: &CallContext) -> Result<Target, NfsStat3> {
        let h = FileHandle::decode(fh).ok_or(NfsStat3::NFS3ERR_BADHANDLE)?;
        let vol = self.by_id.get(&h.volume).ok_or(NfsStat3::NFS3ERR_STALE)?;
        if !vol.opts.allows(ctx.peer.ip()) {
            return Err(NfsStat3::NFS3ERR_ACCES);
        }
        Ok(Target {
            id: Identity::from_cred(&ctx.cred, vol.opts.root_squash),
            vol: vol.clone(),
            gfid: h.gfid,
        })
    }
}
