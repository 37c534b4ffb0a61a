//! `volume heal`: `heal VOL`, `heal VOL full`, `heal VOL info
//! [split-brain]` and `heal VOL statistics` go to the self-heal daemon of
//! every server owning bricks of the volume (through the peer channel, then
//! each server's control socket) and gather one answer per brick; the
//! split-brain resolution forms run here, over replicate translators built
//! for the volume's sets.

use kiln_config::{VolumeConfig, VolumeStatus};
use kiln_core::client::replicate::{Replicate, SplitBrainPolicy};
use kiln_core::{FsError, Gfid};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::proto::{BrickHeal, CliReply, HealOp, HealView, MgmtReply, PeerRequest, ShdRequest};

/// How long a server has to answer a heal command.
const HEAL_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the bricks of a volume have to connect for a resolution.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `volume heal NAME OP`.
pub(crate) async fn heal(d: &Arc<Daemon>, name: &str, op: HealOp) -> CliReply {
    let cfg = d.store.current();
    let Some(vol) = cfg.volumes.get(name).cloned() else {
        return CliReply::Failed(format!("Volume {name} does not exist"));
    };
    if vol.replica_count() <= 1 {
        return CliReply::Failed(format!("Volume {name} is not of type replicate"));
    }
    if vol.status != VolumeStatus::Started {
        return CliReply::Failed(format!("Volume {name} is not started."));
    }
    match op {
        HealOp::Index
        | HealOp::Full
        | HealOp::Info { .. }
        | HealOp::InfoHealed
        | HealOp::InfoHealFailed
        | HealOp::HealCount
        | HealOp::Statistics => ask_servers(d, &vol, op).await,
        _ => resolve(&vol, op).await,
    }
}

/// Sends a heal command to the heal daemon of every server owning bricks
/// of `vol`; bricks of servers that do not answer show as not connected.
async fn ask_servers(d: &Arc<Daemon>, vol: &VolumeConfig, op: HealOp) -> CliReply {
    let mut owners: Vec<String> = Vec::new();
    for b in &vol.bricks {
        if !owners.contains(&b.peer_uuid) {
            owners.push(b.peer_uuid.clone());
        }
    }
    let req = ShdRequest {
        volume: vol.name.clone(),
        op: op.clone(),
    };
    let calls = owners.into_iter().map(|uuid| {
        let req = PeerRequest::Heal(req.clone());
        async move { d.call_peer(&uuid, req, HEAL_TIMEOUT).await }
    });
    let mut bricks: Vec<BrickHeal> = vol
        .bricks
        .iter()
        .enumerate()
        .map(|(index, b)| BrickHeal {
            index,
            brick: format!("{}:{}", b.host, b.path),
            connected: false,
            entries: Vec::new(),
            crawls: Vec::new(),
            times: Vec::new(),
            count: 0,
        })
        .collect();
    let mut errors = Vec::new();
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(MgmtReply::Heal(answers)) => {
                for a in answers {
                    if let Some(slot) = bricks.get_mut(a.index) {
                        if slot.brick == a.brick {
                            *slot = a;
                        }
                    }
                }
            }
            Ok(other) => tracing::warn!(?other, "unexpected answer to a heal command"),
            Err(e) => {
                tracing::warn!(error = %e, "a server did not answer a heal command");
                errors.push(e.to_string());
            }
        }
    }
    let name = &vol.name;
    let message = match op {
        HealOp::Statistics => format!("Gathering crawl statistics on volume {name} has been successful"),
        HealOp::HealCount => format!(
            "Gathering count of entries to be healed on volume {name} has been successful"
        ),
        HealOp::Index | HealOp::Full if !errors.is_empty() && !bricks.iter().any(|b| b.connected) => {
            return CliReply::Failed(format!(
                "Commit failed on the servers of volume {name}: {}",
                errors.join("; ")
            ))
        }
        HealOp::Index => format!(
            "Launching heal operation to perform index self heal on volume {name} has been successful \nUse heal info commands to check status"
        ),
        HealOp::Full => format!(
            "Launching heal operation to perform full self heal on volume {name} has been successful \nUse heal info commands to check status"
        ),
        _ => format!("Heal operation on volume {name} has been successful"),
    };
    CliReply::Heal(HealView {
        volume: name.clone(),
        op,
        bricks,
        message,
    })
}

/// The volume's replica sets, connected (as far as possible).
pub(crate) async fn connected_sets(vol: &VolumeConfig) -> Vec<Arc<Replicate>> {
    let spec = vol.spec();
    let id = format!("{}-heal-{}", vol.name, uuid::Uuid::new_v4());
    let sets = Replicate::replica_sets(&spec, &id);
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let all_up = |sets: &[Arc<Replicate>]| {
        sets.iter()
            .all(|s| (0..s.child_count()).all(|c| s.child(c).is_some_and(|x| x.is_up())))
    };
    while !all_up(&sets) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sets
}

/// The split-brain resolution forms.
async fn resolve(vol: &VolumeConfig, op: HealOp) -> CliReply {
    let sets = connected_sets(vol).await;
    let replica = vol.replica_count();
    match op {
        HealOp::BiggerFile(file) => resolve_file(&sets, &file, SplitBrainPolicy::BiggerFile).await,
        HealOp::LatestMtime(file) => {
            resolve_file(&sets, &file, SplitBrainPolicy::LatestMtime).await
        }
        HealOp::SourceBrick { brick, file } => {
            let Some(index) = vol
                .bricks
                .iter()
                .position(|b| format!("{}:{}", b.host, b.path) == brick)
            else {
                return CliReply::Failed(format!("{brick} is not a brick of volume {}", vol.name));
            };
            let Some(set) = sets.get(index / replica) else {
                return CliReply::Failed(format!("{brick}: no replica set"));
            };
            let policy = SplitBrainPolicy::SourceChild(index % replica);
            match file {
                Some(f) => resolve_file(std::slice::from_ref(set), &f, policy).await,
                None => resolve_all(set, policy, &brick).await,
            }
        }
        other => CliReply::Failed(format!("not a split-brain command: {other:?}")),
    }
}

/// Resolves `file` on whichever set holds it in split-brain.
async fn resolve_file(sets: &[Arc<Replicate>], file: &str, policy: SplitBrainPolicy) -> CliReply {
    let path = if file.starts_with('/') {
        file.to_string()
    } else {
        format!("/{file}")
    };
    let mut found = false;
    for set in sets {
        let gfid = match set.resolve_raw(&path).await {
            Ok((g, _)) => g,
            Err(FsError::NotFound) => continue,
            Err(e) => return CliReply::Failed(format!("{path}: {e}")),
        };
        found = true;
        match set.examine(gfid).await {
            Ok(x) if x.split_brain => {}
            Ok(_) => continue,
            Err(e) => return CliReply::Failed(format!("{path}: {e}")),
        }
        return match set.resolve_split_brain(gfid, policy, &path).await {
            Ok(_) => CliReply::Done(format!("Healed {path}.")),
            Err(e) => CliReply::Failed(format!("{path}: resolution failed: {e}")),
        };
    }
    if found {
        CliReply::Failed(format!("{path}: File not in split-brain."))
    } else {
        CliReply::Failed(format!("{path}: No such file or directory"))
    }
}

/// Resolves every entry in split-brain on `set` with its copy on the
/// chosen brick.
async fn resolve_all(set: &Arc<Replicate>, policy: SplitBrainPolicy, brick: &str) -> CliReply {
    let mut gfids: Vec<Gfid> = Vec::new();
    for c in 0..set.child_count() {
        let Some(child) = set.child(c) else { continue };
        let mut after = None;
        loop {
            match child.index_list(after, 1024).await {
                Ok(page) if !page.is_empty() => {
                    after = page.last().copied();
                    let n = page.len();
                    gfids.extend(page);
                    if n < 1024 {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    gfids.sort_unstable();
    gfids.dedup();
    let (mut healed, mut failed) = (0, Vec::new());
    for g in gfids {
        if !set.examine(g).await.is_ok_and(|x| x.split_brain) {
            continue;
        }
        match set.resolve_split_brain(g, policy, &g.to_string()).await {
            Ok(_) => healed += 1,
            Err(e) => failed.push(format!("<gfid:{g}>: {e}")),
        }
    }
    if failed.is_empty() {
        CliReply::Done(format!(
            "Healed {healed} entries in split-brain from {brick}.\nNumber of healed entries: {healed}"
        ))
    } else {
        CliReply::Failed(format!(
            "Healed {healed} entries; failed: {}",
            failed.join("; ")
        ))
    }
}
