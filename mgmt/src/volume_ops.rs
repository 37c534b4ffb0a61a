//! Volume commands run by the daemon that received them: create (checks,
//! staging on each brick's server, commit), start / stop (commit, then the
//! owning servers start or stop their bricks), delete, set / reset, info.

use kiln_config::{BrickEntry, Command, VolumeConfig, VolumeStatus};
use kiln_core::graph::VolumeKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::peer::find_owner;
use crate::proto::{CliReply, CreateArgs, MgmtReply, PeerRequest, VolumeView};

/// Deadline of a brick staging call.
const STAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of starting one server's bricks.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline of stopping one server's bricks.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks a volume name: 1 to 64 of `[A-Za-z0-9_-]`, not starting with `-`,
/// and not the reserved word `all`.
pub(crate) fn validate_volume_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "Volume name {name:?} must be 1 to 64 characters long"
        ));
    }
    if name.starts_with('-')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "Volume name {name} is invalid: use letters, digits, '-' and '_' (not first)"
        ));
    }
    if name == "all" {
        return Err("'all' is a reserved word and cannot be a volume name".into());
    }
    Ok(())
}

/// Parses `HOST:/ABS/PATH` into host and normalized path.
pub(crate) fn parse_brick(s: &str) -> Result<(String, String), String> {
    let wrong = || format!("wrong brick type: {s}, use <HOSTNAME>:<export-dir-abs-path>");
    let (host, path) = s
        .rsplit_once(":/")
        .map(|(h, p)| (h, format!("/{p}")))
        .ok_or_else(wrong)?;
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(wrong());
    }
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(format!("brick {s}: the path must not contain '..'")),
            c if c.contains('\0') => return Err(wrong()),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!("brick {s}: the root directory cannot be a brick"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), format!("/{}", parts.join("/"))))
}

/// True if one path is the other or lies inside it.
pub(crate) fn nested(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}/"));
    inside(a, b) || inside(b, a)
}

/// `volume create`.
pub(crate) async fn create(d: &Arc<Daemon>, a: CreateArgs) -> CliReply {
    let name = a.name.clone();
    let fail = |m: String| CliReply::Failed(format!("volume create: {name}: failed: {m}"));
    if let Err(e) = validate_volume_name(&name) {
        return fail(e);
    }
    let replica = match a.replica {
        None => 1,
        Some(r) if r < 2 => return fail("replica count should be greater than 1".into()),
        Some(r) => r as usize,
    };
    if a.stripe.is_some() {
        return fail("striped volumes are not supported yet".into());
    }
    if a.disperse.is_some() {
        return fail("dispersed volumes are not supported yet".into());
    }
    match a.transport.as_deref() {
        None | Some("tcp") => {}
        Some(t) if t.split(',').all(|x| x == "tcp" || x == "rdma") => return fail(
            "no RDMA device found: transport rdma is not available on this pool, use transport tcp"
                .into(),
        ),
        Some(t) => return fail(format!("invalid transport type {t}: use tcp")),
    }
    if a.bricks.is_empty() {
        return fail("no bricks given".into());
    }
    if a.bricks.len().checked_rem(replica) != Some(0) {
        return fail("number of bricks is not a multiple of replica count".into());
    }
    let mut parsed = Vec::new();
    for b in &a.bricks {
        match parse_brick(b) {
            Ok(hp) => parsed.push(hp),
            Err(e) => return fail(e),
        }
    }
    if let Err(e) = d.ensure_pool().await {
        return fail(e);
    }
    let cfg = d.store.current();
    if cfg.volumes.contains_key(&name) {
        return fail(format!("Volume {name} already exists"));
    }
    let mut bricks: Vec<BrickEntry> = Vec::new();
    for (host, path) in parsed {
        let Some(owner) = find_owner(d, &cfg, &host).await else {
            return fail(format!("Host {host} is not in 'Peer in Cluster' state"));
        };
        let label = format!("{host}:{path}");
        for prev in bricks.iter().filter(|b| b.peer_uuid == owner.uuid) {
            if prev.path == path {
                return fail(format!("Found duplicate exports {label}"));
            }
            if nested(&prev.path, &path) {
                return fail(format!(
                    "Brick: {}:{}, {label} one of the bricks contain the other",
                    prev.host, prev.path
                ));
            }
        }
        for v in cfg.volumes.values() {
            if v.bricks
                .iter()
                .any(|b| b.peer_uuid == owner.uuid && nested(&b.path, &path))
            {
                return fail(format!("{label} is already part of a volume ({})", v.name));
            }
        }
        bricks.push(BrickEntry {
            host,
            path,
            peer_uuid: owner.uuid,
            port: 0,
        });
    }
    if replica > 1 && !a.force && shares_a_server(&bricks, replica) {
        return fail("Multiple bricks of a replicate volume are present on the same server. This setup is not optimal. Bricks should be on different nodes to have best fault tolerant configuration. Use 'force' at the end of the command if you want to override this behavior. ".into());
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut staged: Vec<&BrickEntry> = Vec::new();
    for b in &bricks {
        let req = PeerRequest::StageBrick {
            path: b.path.clone(),
            volume_id: id.clone(),
            force: a.force,
        };
        if let Err(e) = d.call_peer(&b.peer_uuid, req, STAGE_TIMEOUT).await {
            unstage(d, &staged, &id).await;
            let err = if e.is_transport() {
                "Transport endpoint is not connected".to_string()
            } else {
                e.to_string()
            };
            return fail(format!("Staging failed on {}. Error: {err}", b.host));
        }
        staged.push(b);
    }
    let vol = VolumeConfig {
        name: name.clone(),
        id: id.clone(),
        kind: if replica > 1 {
            VolumeKind::Replicate { replica }
        } else {
            VolumeKind::Distribute
        },
        transport: "tcp".into(),
        status: VolumeStatus::Created,
        bricks: bricks.clone(),
        options: BTreeMap::new(),
        generation: 1,
    };
    if let Err(e) = d.store.propose(Command::CreateVolume(vol)).await {
        unstage(d, &staged, &id).await;
        return fail(e.to_string());
    }
    CliReply::Done(format!(
        "Creation of volume {name} has been successful. Please start the volume to access data."
    ))
}

/// True if two bricks of one replica set (`replica` consecutive bricks)
/// belong to the same server.
pub(crate) fn shares_a_server(bricks: &[BrickEntry], replica: usize) -> bool {
    bricks.chunks(replica).any(|set| {
        set.iter()
            .enumerate()
            .any(|(i, b)| set[..i].iter().any(|p| p.peer_uuid == b.peer_uuid))
    })
}

pub(crate) async fn unstage(d: &Arc<Daemon>, staged: &[&BrickEntry], id: &str) {
    for b in staged {
        let req = PeerRequest::UnstageBrick {
            path: b.path.clone(),
            volume_id: id.to_string(),
        };
        if let Err(e) = d.call_peer(&b.peer_uuid, req, STAGE_TIMEOUT).await {
            tracing::warn!(brick = %b.path, error = %e, "could not undo brick staging");
        }
    }
}

/// The servers owning bricks of `vol`, each once, in brick order.
pub(crate) fn owners(vol: &VolumeConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for b in &vol.bricks {
        if !out.contains(&b.peer_uuid) {
            out.push(b.peer_uuid.clone());
        }
    }
    out
}

/// `volume start NAME [force]`.
pub(crate) async fn start(d: &Arc<Daemon>, name: &str, force: bool) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("volume start: {name}: failed: {m}"));
    let Some(vol) = d.store.current().volumes.get(name).cloned() else {
        return fail(format!("Volume {name} does not exist"));
    };
    if vol.status == VolumeStatus::Started && !force {
        return fail(format!("Volume {name} already started"));
    }
    if vol.status != VolumeStatus::Started {
        let cmd = Command::SetVolumeStatus {
            name: name.to_string(),
            status: VolumeStatus::Started,
        };
        if let Err(e) = d.store.propose(cmd).await {
            return fail(e.to_string());
        }
    }
    let Some(vol) = d.store.current().volumes.get(name).cloned() else {
        return fail(format!("Volume {name} does not exist"));
    };
    let calls = owners(&vol).into_iter().map(|uuid| {
        let req = PeerRequest::EnsureBricks {
            volume: vol.clone(),
        };
        async move { (uuid.clone(), d.call_peer(&uuid, req, START_TIMEOUT).await) }
    });
    let mut errors = Vec::new();
    for (uuid, r) in futures::future::join_all(calls).await {
        match r {
            Ok(MgmtReply::BricksStarted(results)) => {
                for res in results {
                    if let Err(e) = res.result {
                        errors.push(format!("brick {}: {e}", res.brick));
                    }
                }
            }
            Ok(other) => errors.push(format!(
                "{}: unexpected answer {other:?}",
                d.peer_name(&uuid)
            )),
            Err(e) => errors.push(format!(
                "Commit failed on {}. Error: {e}",
                d.peer_name(&uuid)
            )),
        }
    }
    wait_ports(d, name).await;
    if errors.is_empty() {
        CliReply::Done(format!("Starting volume {name} has been successful"))
    } else {
        fail(errors.join("; "))
    }
}

/// Waits (briefly) until this server's config shows a port for every brick,
/// so a mount right after `volume start` gets a usable spec from any server.
pub(crate) async fn wait_ports(d: &Daemon, name: &str) {
    let mut rx = d.store.subscribe();
    let ready = |cfg: &kiln_config::PoolConfig| {
        cfg.volumes
            .get(name)
            .map(|v| v.bricks.iter().all(|b| b.port != 0))
            .unwrap_or(true)
    };
    let wait = async {
        loop {
            if ready(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
}

/// `volume stop NAME [force]`.
pub(crate) async fn stop(d: &Arc<Daemon>, name: &str, force: bool) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("volume stop: {name}: failed: {m}"));
    let Some(vol) = d.store.current().volumes.get(name).cloned() else {
        return fail(format!("Volume {name} does not exist"));
    };
    if vol.status != VolumeStatus::Started && !force {
        return fail(format!("Volume {name} is not in the started state"));
    }
    if vol.status == VolumeStatus::Started {
        let cmd = Command::SetVolumeStatus {
            name: name.to_string(),
            status: VolumeStatus::Stopped,
        };
        if let Err(e) = d.store.propose(cmd).await {
            return fail(e.to_string());
        }
    }
    let calls = owners(&vol).into_iter().map(|uuid| {
        let req = PeerRequest::StopBricks {
            volume: vol.clone(),
        };
        async move { (uuid.clone(), d.call_peer(&uuid, req, STOP_TIMEOUT).await) }
    });
    for (uuid, r) in futures::future::join_all(calls).await {
        if let Err(e) = r {
            // Its daemon stops them when it sees the committed state.
            tracing::warn!(peer = %d.peer_name(&uuid), error = %e, "could not stop bricks now");
        }
    }
    CliReply::Done(format!("Stopping volume {name} has been successful"))
}

/// `volume delete NAME` (the CLI asked for confirmation).
pub(crate) async fn delete(d: &Arc<Daemon>, name: &str) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("volume delete: {name}: failed: {m}"));
    if !d.store.current().volumes.contains_key(name) {
        return fail(format!("Volume {name} does not exist"));
    }
    match d
        .store
        .propose(Command::DeleteVolume {
            name: name.to_string(),
        })
        .await
    {
        Ok(()) => CliReply::Done(format!("Deleting volume {name} has been successful")),
        Err(e) => fail(e.to_string()),
    }
}

/// `volume set NAME KEY VALUE`.
pub(crate) async fn set(d: &Arc<Daemon>, name: &str, key: &str, value: &str) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("volume set: failed: {m}"));
    if !d.store.current().volumes.contains_key(name) {
        return fail(format!("Volume {name} does not exist"));
    }
    if let Err(e) = crate::options::validate(key, value) {
        return fail(e);
    }
    let cmd = Command::SetOption {
        name: name.to_string(),
        key: key.to_string(),
        value: Some(value.to_string()),
    };
    match d.store.propose(cmd).await {
        Ok(()) => CliReply::Done("Set volume successful".into()),
        Err(e) => fail(e.to_string()),
    }
}

/// `volume reset NAME [KEY]`.
pub(crate) async fn reset(d: &Arc<Daemon>, name: &str, key: Option<&str>) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("volume reset: failed: {m}"));
    let Some(vol) = d.store.current().volumes.get(name).cloned() else {
        return fail(format!("Volume {name} does not exist"));
    };
    let keys: Vec<String> = match key {
        Some(k) if !vol.options.contains_key(k) => {
            return fail(format!("option {k} is not set on volume {name}"))
        }
        Some(k) => vec![k.to_string()],
        None => vol.options.keys().cloned().collect(),
    };
    for k in keys {
        let cmd = Command::SetOption {
            name: name.to_string(),
            key: k,
            value: None,
        };
        if let Err(e) = d.store.propose(cmd).await {
            return fail(e.to_string());
        }
    }
    CliReply::Done("reset volume successful".into())
}

/// `volume info [NAME]`.
pub(crate) fn info(d: &Daemon, name: Option<&str>) -> CliReply {
    let cfg = d.store.current();
    let vols: Vec<&VolumeConfig> = match name {
        Some(n) => match cfg.volumes.get(n) {
            Some(v) => vec![v],
            None => return CliReply::Failed(format!("Volume {n} does not exist")),
        },
        None => cfg.volumes.values().collect(),
    };
    CliReply::Volumes(vols.into_iter().map(view).collect())
}

/// A volume as `volume info` shows it.
pub(crate) fn view(v: &VolumeConfig) -> VolumeView {
    VolumeView {
        name: v.name.clone(),
        kind: match v.kind {
            VolumeKind::Distribute => "Distribute".into(),
            VolumeKind::Replicate { replica } if v.bricks.len() > replica => {
                "Distributed-Replicate".into()
            }
            VolumeKind::Replicate { .. } => "Replicate".into(),
        },
        id: v.id.clone(),
        status: v.status.as_str().into(),
        transport: v.transport.clone(),
        bricks: v
            .bricks
            .iter()
            .map(|b| format!("{}:{}", b.host, b.path))
            .collect(),
        options: v.options.clone(),
        replica_count: v.replica_count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brick_parsing() {
        assert_eq!(
            parse_brick("node01:/export/brick1").unwrap(),
            ("node01".into(), "/export/brick1".into())
        );
        assert_eq!(
            parse_brick("node01://export//b/./").unwrap(),
            ("node01".into(), "/export/b".into())
        );
        assert_eq!(
            parse_brick("[::1]:/b").unwrap(),
            ("::1".into(), "/b".into())
        );
        for bad in [
            "node01",
            "node01:export",
            ":/x",
            "node01:/",
            "n:/a/../b",
            "a b:/x",
        ] {
            assert!(parse_brick(bad).is_err(), "{bad}");
        }
        assert!(parse_brick("node01:brick")
            .unwrap_err()
            .starts_with("wrong brick type"));
    }

    #[test]
    fn names_and_nesting() {
        assert!(validate_volume_name("vol1").is_ok());
        assert!(validate_volume_name("my_vol-2").is_ok());
        for bad in ["", "-x", "all", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_volume_name(bad).is_err(), "{bad}");
        }
        assert!(nested("/a", "/a/b"));
        assert!(nested("/a/b", "/a"));
        assert!(nested("/a", "/a"));
        assert!(!nested("/a", "/ab"));
    }
}
