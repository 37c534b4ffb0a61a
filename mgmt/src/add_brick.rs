//! `volume add-brick NAME [replica N] BRICK... [force]`: checks and stages
//! the new bricks, commits the new brick list (`Command::AddBricks`), starts
//! them if the volume runs, and, when the replica count grew, makes the old
//! copies of each set's root accuse the new, empty brick, so lookups fill
//! it lazily and `heal VOL full` at once.

use kiln_config::{BrickEntry, Command, VolumeStatus};
use kiln_core::Gfid;
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::peer::find_owner;
use crate::proto::{CliReply, MgmtReply, PeerRequest};
use crate::volume_ops::{nested, owners, parse_brick, shares_a_server, unstage, wait_ports};

/// Deadline of a brick staging call.
const STAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of starting one server's bricks.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `volume add-brick`.
pub(crate) async fn add_brick(
    d: &Arc<Daemon>,
    name: &str,
    replica: Option<u32>,
    new: Vec<String>,
    force: bool,
) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("volume add-brick: failed: {m}"));
    let cfg = d.store.current();
    let Some(vol) = cfg.volumes.get(name).cloned() else {
        return fail(format!("Volume {name} does not exist"));
    };
    let old = vol.replica_count();
    let replica = replica.map_or(old, |r| r as usize);
    if replica < old {
        return fail(format!(
            "Volume {name} has replica count {old}; add-brick cannot lower it"
        ));
    }
    let mut bricks: Vec<BrickEntry> = Vec::new();
    for b in &new {
        let (host, path) = match parse_brick(b) {
            Ok(hp) => hp,
            Err(e) => return fail(e),
        };
        let Some(owner) = find_owner(d, &cfg, &host).await else {
            return fail(format!("Host {host} is not in 'Peer in Cluster' state"));
        };
        let label = format!("{host}:{path}");
        let clash = bricks
            .iter()
            .chain(cfg.volumes.values().flat_map(|v| v.bricks.iter()))
            .any(|x| x.peer_uuid == owner.uuid && nested(&x.path, &path));
        if clash {
            return fail(format!("{label} is already part of a volume"));
        }
        bricks.push(BrickEntry {
            host,
            path,
            peer_uuid: owner.uuid,
            port: 0,
        });
    }
    // The resulting list, checked as the config will (counts) and for
    // two bricks of one set on one server.
    let mut after = vol.clone();
    let cmd = Command::AddBricks {
        name: name.to_string(),
        replica,
        bricks: bricks.clone(),
    };
    let mut probe = kiln_config::PoolConfig::default();
    probe.volumes.insert(name.to_string(), vol.clone());
    if let Err(e) = probe.apply(&cmd) {
        return fail(e.to_string());
    }
    if let Some(v) = probe.volumes.get(name) {
        after = v.clone();
    }
    if replica > 1 && !force && shares_a_server(&after.bricks, replica) {
        return fail("Multiple bricks of a replicate volume are present on the same server. This setup is not optimal. Use 'force' at the end of the command if you want to override this behavior. ".into());
    }
    let mut staged: Vec<&BrickEntry> = Vec::new();
    for b in &bricks {
        let req = PeerRequest::StageBrick {
            path: b.path.clone(),
            volume_id: vol.id.clone(),
            force,
        };
        if let Err(e) = d.call_peer(&b.peer_uuid, req, STAGE_TIMEOUT).await {
            unstage(d, &staged, &vol.id).await;
            return fail(format!("Staging failed on {}. Error: {e}", b.host));
        }
        staged.push(b);
    }
    if let Err(e) = d.store.propose(cmd).await {
        unstage(d, &staged, &vol.id).await;
        return fail(e.to_string());
    }
    if vol.status != VolumeStatus::Started {
        return CliReply::Done("Add Brick successful".into());
    }
    let Some(vol) = d.store.current().volumes.get(name).cloned() else {
        return fail(format!("Volume {name} does not exist"));
    };
    let calls = owners(&vol).into_iter().map(|uuid| {
        let req = PeerRequest::EnsureBricks {
            volume: vol.clone(),
        };
        async move { d.call_peer(&uuid, req, START_TIMEOUT).await }
    });
    let mut errors = Vec::new();
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(MgmtReply::BricksStarted(results)) => {
                errors.extend(
                    results
                        .into_iter()
                        .filter_map(|x| x.result.err().map(|e| format!("brick {}: {e}", x.brick))),
                );
            }
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    wait_ports(d, name).await;
    if replica > old {
        let Some(vol) = d.store.current().volumes.get(name).cloned() else {
            return fail(format!("Volume {name} does not exist"));
        };
        let sets = crate::heal::connected_sets(&vol).await;
        for (k, set) in sets.iter().enumerate() {
            for c in old..replica {
                if let Err(e) = set.accuse(Gfid::ROOT, c).await {
                    errors.push(format!(
                        "replica set {k}: cannot mark the new brick for heal: {e}"
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        CliReply::Done("Add Brick successful".into())
    } else {
        fail(errors.join("; "))
    }
}
