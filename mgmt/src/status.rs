//! `volume status [NAME|all] [detail]`: every server that owns bricks of the
//! volume reports their live state (and, for `detail`, file-system facts);
//! the bricks of a server that does not answer show offline. Every server of
//! the pool reports its NFS gateway (`NFS Server on HOST`) unless the volume
//! has `nfs.disable on`.

use kiln_config::{VolumeConfig, VolumeStatus};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::proto::{
    BrickState, CliReply, MgmtReply, NfsServerState, PeerRequest, VolumeStatusView,
};

/// How long a server has to report its bricks.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// This server's bricks of `vol`, with details if asked.
pub(crate) async fn local_brick_states(
    d: &Daemon,
    vol: &VolumeConfig,
    detail: bool,
) -> Vec<BrickState> {
    let mut states = d.supervisor.brick_states(vol).await;
    if detail {
        for s in states.iter_mut() {
            let path = PathBuf::from(&vol.bricks[s.index].path);
            s.detail = tokio::task::spawn_blocking(move || crate::brickfs::brick_detail(&path))
                .await
                .ok();
        }
    }
    states
}

/// Gathers the state of every brick of a started volume.
async fn gather(d: &Arc<Daemon>, vol: &VolumeConfig, detail: bool) -> VolumeStatusView {
    let mut owners: Vec<String> = Vec::new();
    for b in &vol.bricks {
        if !owners.contains(&b.peer_uuid) {
            owners.push(b.peer_uuid.clone());
        }
    }
    let calls = owners.into_iter().map(|uuid| {
        let req = PeerRequest::BrickStatus {
            volume: vol.clone(),
            detail,
        };
        async move { d.call_peer(&uuid, req, STATUS_TIMEOUT).await }
    });
    let mut bricks: Vec<BrickState> = vol
        .bricks
        .iter()
        .enumerate()
        .map(|(index, b)| BrickState {
            index,
            brick: format!("{}:{}", b.host, b.path),
            port: b.port,
            online: false,
            pid: None,
            detail: None,
        })
        .collect();
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(MgmtReply::BrickStates(states)) => {
                for s in states {
                    if let Some(slot) = bricks.get_mut(s.index) {
                        if slot.brick == s.brick {
                            *slot = s;
                        }
                    }
                }
            }
            Ok(other) => tracing::warn!(?other, "unexpected answer to BrickStatus"),
            Err(e) => tracing::warn!(error = %e, "a server did not report its bricks"),
        }
    }
    let nfs = if detail || crate::options::nfs_disabled(&vol.options) {
        Vec::new()
    } else {
        nfs_states(d, &vol.name).await
    };
    let shd = if detail || vol.replica_count() <= 1 {
        Vec::new()
    } else {
        shd_states(d, vol).await
    };
    VolumeStatusView {
        name: vol.name.clone(),
        bricks,
        nfs,
        shd,
    }
}

/// The NFS gateway of every server of the pool (this one first, as
/// `localhost`), as it serves volume `name`. A server that does not answer
/// shows offline; one that runs no gateway at all (tests) is left out.
async fn nfs_states(d: &Arc<Daemon>, name: &str) -> Vec<NfsServerState> {
    let cfg = d.store.current();
    let mut uuids: Vec<String> = vec![d.id.uuid.clone()];
    let mut others: Vec<(&String, &String)> = cfg
        .peers
        .values()
        .filter(|p| p.uuid != d.id.uuid)
        .map(|p| (&p.hostname, &p.uuid))
        .collect();
    others.sort();
    uuids.extend(others.into_iter().map(|(_, u)| u.clone()));
    let calls = uuids.into_iter().map(|uuid| async move {
        let r = d
            .call_peer(&uuid, PeerRequest::NfsStatus, STATUS_TIMEOUT)
            .await;
        (uuid, r)
    });
    let mut out = Vec::new();
    for (uuid, r) in futures::future::join_all(calls).await {
        let host = d.peer_name(&uuid);
        match r {
            Ok(MgmtReply::NfsState(None)) => {}
            Ok(MgmtReply::NfsState(Some(mut s))) => {
                s.online = s.online && s.volumes.iter().any(|v| v == name);
                if !s.online {
                    s.pid = None;
                }
                s.host = host;
                out.push(s);
            }
            other => {
                if let Err(e) = &other {
                    tracing::warn!(peer = %host, error = %e, "a server did not report its NFS gateway");
                }
                out.push(NfsServerState {
                    host,
                    port: crate::nfs_supervisor::NFS_PORT,
                    online: false,
                    pid: None,
                    volumes: Vec::new(),
                });
            }
        }
    }
    out
}

/// The self-heal daemon of every server owning bricks of `vol` (`Self-heal
/// Daemon on HOST`); a server that does not answer shows offline.
async fn shd_states(d: &Arc<Daemon>, vol: &VolumeConfig) -> Vec<NfsServerState> {
    let mut uuids: Vec<String> = Vec::new();
    for b in &vol.bricks {
        if !uuids.contains(&b.peer_uuid) {
            uuids.push(b.peer_uuid.clone());
        }
    }
    let calls = uuids.into_iter().map(|uuid| async move {
        let r = d
            .call_peer(&uuid, PeerRequest::ShdStatus, STATUS_TIMEOUT)
            .await;
        (uuid, r)
    });
    let mut out = Vec::new();
    for (uuid, r) in futures::future::join_all(calls).await {
        let host = d.peer_name(&uuid);
        match r {
            Ok(MgmtReply::ShdState(None)) => {}
            Ok(MgmtReply::ShdState(Some(mut s))) => {
                s.online = s.online && s.volumes.contains(&vol.name);
                if !s.online {
                    s.pid = None;
                }
                s.host = host;
                out.push(s);
            }
            _ => out.push(NfsServerState {
                host,
                port: 0,
                online: false,
                pid: None,
                volumes: Vec::new(),
            }),
        }
    }
    out
}

/// `volume status [NAME] [detail]`.
pub(crate) async fn volume_status(d: &Arc<Daemon>, name: Option<&str>, detail: bool) -> CliReply {
    let cfg = d.store.current();
    let vols: Vec<VolumeConfig> = match name {
        Some(n) => match cfg.volumes.get(n) {
            None => return CliReply::Failed(format!("Volume {n} does not exist")),
            Some(v) if v.status != VolumeStatus::Started => {
                return CliReply::Failed(format!("Volume {n} is not started"))
            }
            Some(v) => vec![v.clone()],
        },
        None => cfg
            .volumes
            .values()
            .filter(|v| v.status == VolumeStatus::Started)
            .cloned()
            .collect(),
    };
    if name.is_none() && vols.is_empty() {
        return CliReply::Failed("No volumes present".into());
    }
    let views = futures::future::join_all(vols.iter().map(|v| gather(d, v, detail))).await;
    CliReply::Status(views)
}
