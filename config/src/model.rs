//! The pool configuration and the commands that change it. `PoolConfig::apply`
//! is deterministic: every server applies the same committed commands in the
//! same order and ends with the same config.

use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A server of the trusted pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The server's UUID (made at its first start, kept in its state dir).
    pub uuid: String,
    /// The Raft node id derived from it.
    pub raft_id: u64,
    /// The host name it was probed by (or its own, for the first server).
    pub hostname: String,
    /// Its management address, `HOST:PORT`.
    pub mgmt_addr: String,
}

/// Lifecycle state of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeStatus {
    /// Created, never started.
    Created,
    /// Started: its bricks should run.
    Started,
    /// Stopped.
    Stopped,
}

impl VolumeStatus {
    /// As `volume info` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Created => "Created",
            VolumeStatus::Started => "Started",
            VolumeStatus::Stopped => "Stopped",
        }
    }
}

/// One brick of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickEntry {
    /// Host name as given to `volume create`.
    pub host: String,
    /// Brick directory.
    pub path: String,
    /// UUID of the peer that owns it.
    pub peer_uuid: String,
    /// Port handed out to its brick process (0 until first start).
    pub port: u16,
}

/// A volume's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// Name.
    pub name: String,
    /// Volume id (UUID).
    pub id: String,
    /// Type; a replicated volume's replica count is part of it
    /// (`VolumeKind::Replicate { replica }`), so configs written before
    /// replication existed read unchanged.
    pub kind: VolumeKind,
    /// Transport (`tcp`).
    pub transport: String,
    /// Lifecycle state.
    pub status: VolumeStatus,
    /// Bricks, in order.
    pub bricks: Vec<BrickEntry>,
    /// Options set with `volume set`.
    pub options: BTreeMap<String, String>,
    /// Bumped on every change (clients refetch the graph).
    pub generation: u64,
}

impl VolumeConfig {
    /// Bricks per replica set (1: not replicated).
    pub fn replica_count(&self) -> usize {
        match self.kind {
            VolumeKind::Distribute => 1,
            VolumeKind::Replicate { replica } => replica.max(1),
        }
    }

    /// The spec clients build their graph from.
    pub fn spec(&self) -> VolumeSpec {
        VolumeSpec {
            name: self.name.clone(),
            id: self.id.clone(),
            kind: self.kind,
            bricks: self
                .bricks
                .iter()
                .enumerate()
                .map(|(i, b)| BrickSpec {
                    subvol: format!("{}-client-{}", self.name, i),
                    host: b.host.clone(),
                    path: b.path.clone(),
                    port: b.port,
                })
                .collect(),
            options: self.options.clone(),
            generation: self.generation,
        }
    }
}

/// The whole replicated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Servers, by UUID.
    pub peers: BTreeMap<String, PeerInfo>,
    /// Volumes, by name.
    pub volumes: BTreeMap<String, VolumeConfig>,
}

/// A change to the configuration (the Raft log's entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A server joined (peer probe).
    AddPeer(PeerInfo),
    /// A server left (peer detach).
    RemovePeer {
        /// Its UUID.
        uuid: String,
    },
    /// A new volume.
    CreateVolume(VolumeConfig),
    /// Start/stop.
    SetVolumeStatus {
        /// Volume.
        name: String,
        /// New state.
        status: VolumeStatus,
    },
    /// Remove a volume.
    DeleteVolume {
        /// Volume.
        name: String,
    },
    /// `volume set` (value `None` = `volume reset`).
    SetOption {
        /// Volume.
        name: String,
        /// Option key.
        key: String,
        /// New value, or none to reset.
        value: Option<String>,
    },
    /// Changes nothing: a barrier a server commits to be sure it has applied
    /// everything committed before (read-your-writes for CLI commands).
    Noop,
    /// The port a brick process listens on.
    SetBrickPort {
        /// Volume.
        name: String,
        /// Brick index.
        index: usize,
        /// Port.
        port: u16,
    },
    /// `volume add-brick`: new bricks, one more per replica set when
    /// `replica` grows (each set's new brick goes after its old ones), or
    /// whole new sets at the end when it stays.
    AddBricks {
        /// Volume.
        name: String,
        /// The replica count after the change.
        replica: usize,
        /// The new bricks, set by set.
        bricks: Vec<BrickEntry>,
    },
}

/// Why a command cannot be applied (checked again at apply time, so a
/// command that raced another one fails cleanly on every server alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ConfigError {
    /// `Volume NAME does not exist`.
    #[error("Volume {0} does not exist")]
    NoSuchVolume(String),
    /// `Volume NAME already exists`.
    #[error("Volume {0} already exists")]
    VolumeExists(String),
    /// Peer not in pool.
    #[error("{0} is not a part of the cluster")]
    NoSuchPeer(String),
    /// Peer still has bricks.
    #[error("Peer {0} hosts one or more bricks. If the peer is in not recoverable state then use either replace-brick or remove-brick command with force to remove all bricks from the peer and attempt the peer detach again.")]
    PeerHasBricks(String),
    /// Bad state transition or argument.
    #[error("{0}")]
    Invalid(String),
}

impl PoolConfig {
    /// Applies one committed command.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), ConfigError> {
        match cmd {
            Command::AddPeer(p) => {
                self.peers.insert(p.uuid.clone(), p.clone());
            }
            Command::RemovePeer { uuid } => {
                let peer = self
                    .peers
                    .get(uuid)
                    .ok_or_else(|| ConfigError::NoSuchPeer(uuid.clone()))?;
                if self
                    .volumes
                    .values()
                    .any(|v| v.bricks.iter().any(|b| &b.peer_uuid == uuid))
                {
                    return Err(ConfigError::PeerHasBricks(peer.hostname.clone()));
                }
                self.peers.remove(uuid);
            }
            Command::CreateVolume(v) => {
                if self.volumes.contains_key(&v.name) {
                    return Err(ConfigError::VolumeExists(v.name.clone()));
                }
                self.volumes.insert(v.name.clone(), v.clone());
            }
            Command::SetVolumeStatus { name, status } => {
                let v = self.volume_mut(name)?;
                v.status = *status;
                v.generation += 1;
            }
            Command::DeleteVolume { name } => {
                let v = self.volume_mut(name)?;
                if v.status == VolumeStatus::Started {
                    return Err(ConfigError::Invalid(format!("Volume {name} has been started.Volume needs to be stopped before deletion.")));
                }
                self.volumes.remove(name);
            }
            Command::SetOption { name, key, value } => {
                let v = self.volume_mut(name)?;
                match value {
                    Some(val) => v.options.insert(key.clone(), val.clone()),
                    None => v.options.remove(key),
                };
                v.generation += 1;
            }
            Command::Noop => {}
            Command::SetBrickPort { name, index, port } => {
                let v = self.volume_mut(name)?;
                let b = v.bricks.get_mut(*index).ok_or_else(|| {
                    ConfigError::Invalid(format!("volume {name} has no brick {index}"))
                })?;
                b.port = *port;
                v.generation += 1;
            }
            Command::AddBricks {
                name,
                replica,
                bricks,
            } => {
                let v = self.volume_mut(name)?;
                v.bricks = with_added_bricks(v, *replica, bricks)?;
                if *replica > 1 {
                    v.kind = VolumeKind::Replicate { replica: *replica };
                }
                v.generation += 1;
            }
        }
        Ok(())
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut VolumeConfig, ConfigError> {
        self.volumes
            .get_mut(name)
            .ok_or_else(|| ConfigError::NoSuchVolume(name.to_string()))
    }

    /// The peer with this host name, if any.
    pub fn peer_by_host(&self, host: &str) -> Option<&PeerInfo> {
        self.peers.values().find(|p| p.hostname == host)
    }
}

/// The brick list of `v` after `add-brick` with `bricks` and replica count
/// `replica`.
fn with_added_bricks(
    v: &VolumeConfig,
    replica: usize,
    bricks: &[BrickEntry],
) -> Result<Vec<BrickEntry>, ConfigError> {
    let old = v.replica_count().max(1);
    let bad = |m: String| Err(ConfigError::Invalid(format!("volume {}: {m}", v.name)));
    if bricks.is_empty() {
        return bad("no bricks to add".into());
    }
    if replica == old {
        if bricks.len().checked_rem(old) != Some(0) {
            return bad(format!(
                "Incorrect number of bricks supplied {} with count {old}",
                bricks.len()
            ));
        }
        let mut all = v.bricks.clone();
        all.extend(bricks.iter().cloned());
        return Ok(all);
    }
    if replica < old {
        return bad("the replica count cannot shrink with add-brick".into());
    }
    let sets = v.bricks.len() / old;
    let per = replica - old;
    if v.bricks.len().checked_rem(old) != Some(0) || bricks.len() != sets * per {
        return bad(format!(
            "Incorrect number of bricks supplied {} with count {replica}",
            bricks.len()
        ));
    }
    let mut all = Vec::with_capacity(v.bricks.len() + bricks.len());
    for k in 0..sets {
        all.extend(v.bricks[k * old..(k + 1) * old].iter().cloned());
        all.extend(bricks[k * per..(k + 1) * per].iter().cloned());
    }
    Ok(all)
}

#[cfg(test)]
mod add_brick_tests {
    use super::*;

    fn brick(n: &str) -> BrickEntry {
        BrickEntry {
            host: n.into(),
            path: "/b".into(),
            peer_uuid: n.into(),
            port: 0,
        }
    }

    fn pool(kind: VolumeKind, hosts: &[&str]) -> PoolConfig {
        let mut p = PoolConfig::default();
        p.volumes.insert(
            "v".into(),
            VolumeConfig {
                name: "v".into(),
                id: "id".into(),
                kind,
                transport: "tcp".into(),
                status: VolumeStatus::Started,
                bricks: hosts.iter().map(|h| brick(h)).collect(),
                options: BTreeMap::new(),
                generation: 1,
            },
        );
        p
    }

    fn hosts(p: &PoolConfig) -> Vec<String> {
        p.volumes["v"]
            .bricks
            .iter()
            .map(|b| b.host.clone())
            .collect()
    }

    #[test]
    fn add_bricks_grows_each_set_or_adds_sets() {
        let mut p = pool(VolumeKind::Replicate { replica: 2 }, &["a", "b", "c", "d"]);
        let cmd = Command::AddBricks {
            name: "v".into(),
            replica: 3,
            bricks: vec![brick("x"), brick("y")],
        };
        p.apply(&cmd).unwrap();
        assert_eq!(hosts(&p), ["a", "b", "x", "c", "d", "y"]);
        assert_eq!(p.volumes["v"].replica_count(), 3);
        assert_eq!(p.volumes["v"].generation, 2);
        // Same replica count: whole sets at the end.
        let cmd = Command::AddBricks {
            name: "v".into(),
            replica: 3,
            bricks: vec![brick("p"), brick("q"), brick("r")],
        };
        p.apply(&cmd).unwrap();
        assert_eq!(hosts(&p)[6..], ["p", "q", "r"]);
        // Wrong counts and shrinking are refused, leaving the volume alone.
        for (replica, n) in [(3, 2), (4, 1), (2, 2)] {
            let cmd = Command::AddBricks {
                name: "v".into(),
                replica,
                bricks: (0..n).map(|i| brick(&format!("z{i}"))).collect(),
            };
            assert!(p.apply(&cmd).is_err(), "replica {replica} with {n}");
        }
        assert_eq!(hosts(&p).len(), 9);
        // A distributed volume becomes replicated.
        let mut p = pool(VolumeKind::Distribute, &["a", "b"]);
        let cmd = Command::AddBricks {
            name: "v".into(),
            replica: 2,
            bricks: vec![brick("x"), brick("y")],
        };
        p.apply(&cmd).unwrap();
        assert_eq!(hosts(&p), ["a", "x", "b", "y"]);
        assert_eq!(p.volumes["v"].kind, VolumeKind::Replicate { replica: 2 });
    }
}
