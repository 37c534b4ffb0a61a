//! The MOUNT program (100005, versions 1 and 3): MNT resolves `/VOL` or an
//! exported `/VOL/sub/dir` to a handle (address rules applied), DUMP and
//! UMNT/UMNTALL keep the list of mounts, EXPORT lists what may be mounted.

use async_trait::async_trait;
use kiln_portmap::xdr::{XdrReader, XdrWriter};
use kiln_portmap::{CallContext, ProcError, RpcProgram};
use std::sync::Arc;

use crate::error::mountstat3;
use crate::exports::{normalize, AddrRule};
use crate::gateway::{Gateway, MountEntry, VolumeCtx};
use crate::mount_types::*;

/// Most mounts remembered for DUMP.
const MAX_MOUNTS: usize = 4096;

/// The MOUNT program over a gateway's volumes.
pub struct MountProgram {
    gw: Arc<Gateway>,
}

impl MountProgram {
    /// The program serving `gw`'s volumes.
    pub fn new(gw: Arc<Gateway>) -> MountProgram {
        MountProgram { gw }
    }

    /// Resolves a mount path to (volume, inode) or a `mountstat3`.
    async fn mnt(
        &self,
        ctx: &CallContext,
        raw: &[u8],
    ) -> Result<(Arc<VolumeCtx>, kiln_core::Gfid), u32> {
        let path = std::str::from_utf8(raw).map_err(|_| MNT3ERR_NOENT)?;
        let path = normalize(path);
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let vname = parts.next().unwrap_or("");
        let sub = parts.next().map(|s| format!("/{s}"));
        let vol = self.gw.volume(vname).ok_or(MNT3ERR_NOENT)?.clone();
        let ip = ctx.peer.ip();
        let allowed = match &sub {
            None => vol.opts.export_volume && vol.opts.allows(ip),
            Some(sub) => {
                let dir = vol
                    .opts
                    .dirs
                    .iter()
                    .find(|d| &d.path == sub)
                    .ok_or(MNT3ERR_NOENT)?;
                vol.opts.allows_dir(dir, ip)
            }
        };
        if !allowed {
            tracing::info!(peer = %ctx.peer, path, "mount: refused by the volume's address rules");
            return Err(MNT3ERR_ACCES);
        }
        let a = vol
            .volume
            .resolve_path(sub.as_deref().unwrap_or("/"))
            .await
            .map_err(|e| mountstat3(&e))?;
        if !a.is_dir() {
            return Err(MNT3ERR_NOTDIR);
        }
        let mut m = self.gw.mounts.lock();
        let entry = MountEntry {
            host: ip.to_string(),
            path: path.clone(),
        };
        if !m.contains(&entry) && m.len() < MAX_MOUNTS {
            m.push(entry);
        }
        tracing::info!(peer = %ctx.peer, path, "mount: MNT");
        Ok((vol, a.gfid))
    }

    fn exports(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let groups = |rules: &[AddrRule]| -> Vec<String> {
            rules
                .iter()
                .map(|r| match r {
                    AddrRule::Any => "*".to_string(),
                    AddrRule::Net { addr, prefix } => format!("{addr}/{prefix}"),
                })
                .collect()
        };
        let mut vols: Vec<_> = self.gw.volumes().collect();
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        for v in vols {
            if v.opts.export_volume {
                out.push((format!("/{}", v.name), groups(&v.opts.allow)));
            }
            for d in &v.opts.dirs {
                let g = d
                    .hosts
                    .as_deref()
                    .map(groups)
                    .unwrap_or_else(|| groups(&v.opts.allow));
                out.push((format!("/{}{}", v.name, d.path), g));
            }
        }
        out
    }
}

#[async_trait]
impl RpcProgram for MountProgram {
    fn program(&self) -> u32 {
        MOUNT_PROGRAM
    }

    fn versions(&self) -> &[u32] {
        &[MOUNT_V1, MOUNT_V3]
    }

    fn name(&self) -> &'static str {
        "mount"
    }

    async fn call(
        &self,
        ctx: &CallContext,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        let r = &mut XdrReader::new(args);
        let mut w = XdrWriter::with_capacity(128);
        match proc_ {
            MOUNTPROC_NULL => {}
            MOUNTPROC_MNT => {
                let path = decode_dirpath(r)?;
                match self.mnt(ctx, path).await {
                    Ok((vol, gfid)) => {
                        w.put_u32(MNT3_OK);
                        let fh = vol.fh(gfid);
                        if vers == MOUNT_V1 {
                            w.put_fixed(&fh[..FHSIZE]);
                        } else {
                            w.put_opaque(&fh);
                            w.put_u32(2); // auth_flavors: AUTH_NONE, AUTH_SYS
                            w.put_u32(kiln_portmap::rpc::msg::AUTH_SYS);
                            w.put_u32(kiln_portmap::rpc::msg::AUTH_NONE);
                        }
                    }
                    Err(stat) => {
                        tracing::debug!(peer = %ctx.peer, path = %String::from_utf8_lossy(path), stat, "mount: MNT failed");
                        // Version 1's fhstatus uses errno values, which these are.
                        w.put_u32(stat);
                    }
                }
            }
            MOUNTPROC_DUMP => {
                let m = self.gw.mounts.lock();
                encode_mountlist(m.iter().map(|e| (e.host.as_str(), e.path.as_str())), &mut w);
            }
            MOUNTPROC_UMNT => {
                let path = normalize(&String::from_utf8_lossy(decode_dirpath(r)?));
                let host = ctx.peer.ip().to_string();
                self.gw
                    .mounts
                    .lock()
                    .retain(|e| !(e.host == host && e.path == path));
            }
            MOUNTPROC_UMNTALL => {
                let host = ctx.peer.ip().to_string();
                self.gw.mounts.lock().retain(|e| e.host != host);
            }
            MOUNTPROC_EXPORT => encode_exports(&self.exports(), &mut w),
            _ => return Err(ProcError::ProcUnavail),
        }
        Ok(w.into_bytes())
    }
}
