//! The volume spec ("volfile"): what the management daemon hands a client so
//! it can build its translator graph, and `build`, which turns a spec into the
//! stack of translators: DHT over one protocol client per brick, or, for
//! replicated volumes, DHT over replica sets (`<vol>-replicate-<k>`, each
//! over `replica` consecutive bricks). DHT sits on top even with a single
//! subvolume, so a volume's layout xattrs are the same whatever its size.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::client::distribute::Distribute;
use crate::client::protocol::{ProtocolClient, ProtocolOptions};
use crate::client::replicate::{Quorum, Replicate};
use crate::client::Xlator;

/// How a volume combines its bricks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeKind {
    /// Files spread over bricks by name hash (DHT).
    Distribute,
    /// Consecutive groups of `replica` bricks hold the same files (replica
    /// sets); files spread over the sets by name hash. One set is
    /// "Replicate", several "Distributed-Replicate".
    Replicate {
        /// Bricks per replica set (2 or more).
        replica: usize,
    },
}

/// One brick as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickSpec {
    /// The brick's subvolume name in the graph: `<vol>-client-<n>`.
    pub subvol: String,
    /// The server's host name (as given to `volume create`).
    pub host: String,
    /// The brick directory on that server.
    pub path: String,
    /// The TCP port its brick process listens on (0 = not started).
    pub port: u16,
}

impl BrickSpec {
    /// `HOST:/PATH`, as admins name bricks.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.path)
    }
}

/// Everything a client needs to mount a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Volume name.
    pub name: String,
    /// Volume id (UUID, hyphenated).
    pub id: String,
    /// How bricks combine.
    pub kind: VolumeKind,
    /// Bricks in order; their index is part of `subvol`.
    pub bricks: Vec<BrickSpec>,
    /// Volume options (`kiln volume set`), e.g. `network.ping-timeout`.
    pub options: BTreeMap<String, String>,
    /// Changes whenever the spec changes, so clients notice a new graph.
    pub generation: u64,
}

impl VolumeSpec {
    /// An option's value, or `default`.
    pub fn option<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.options.get(key).map(String::as_str).unwrap_or(default)
    }

    /// Whether `other` builds the same client graph: same volume, bricks
    /// (ports included) and options; `generation` is left out (it counts
    /// config changes, not what a client sees).
    pub fn same_graph(&self, other: &VolumeSpec) -> bool {
        self.name == other.name
            && self.id == other.id
            && self.kind == other.kind
            && self.bricks == other.bricks
            && self.options == other.options
    }

    /// Bricks per replica set (1 for an unreplicated volume).
    pub fn replica_count(&self) -> usize {
        match self.kind {
            VolumeKind::Distribute => 1,
            VolumeKind::Replicate { replica } => replica.max(1),
        }
    }

    /// `network.ping-timeout` (default 42 s).
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(
            self.option("network.ping-timeout", "42")
                .parse()
                .unwrap_or(42),
        )
    }
}

/// Builds the client translator graph for a spec. `client_id` names this
/// client to the bricks (lock ownership).
pub fn build(spec: &VolumeSpec, client_id: &str) -> Arc<dyn Xlator> {
    let opts = ProtocolOptions {
        ping_timeout: spec.ping_timeout(),
        client_id: client_id.to_string(),
    };
    let clients: Vec<Arc<dyn Xlator>> = spec
        .bricks
        .iter()
        .map(|b| {
            Arc::new(ProtocolClient::new(&spec.name, b.clone(), opts.clone())) as Arc<dyn Xlator>
        })
        .collect();
    let replica = spec.replica_count();
    let children = if replica <= 1 {
        clients
    } else {
        if clients.len().checked_rem(replica) != Some(0) {
            tracing::warn!(volume = %spec.name, bricks = clients.len(), replica, "brick count is not a multiple of the replica count; the last set is short");
        }
        clients
            .chunks(replica)
            .enumerate()
            .map(|(k, set)| {
                let quorum = Quorum::from_options(
                    spec.options.get("cluster.quorum-type").map(String::as_str),
                    spec.options.get("cluster.quorum-count").map(String::as_str),
                    set.len(),
                );
                let name = format!("{}-replicate-{k}", spec.name);
                let eager = spec.options.get("cluster.eager-lock").map(String::as_str);
                Arc::new(Replicate::new(name, set.to_vec(), quorum).with_eager_lock(eager))
                    as Arc<dyn Xlator>
            })
            .collect()
    };
    Arc::new(Distribute::new(format!("{}-dht", spec.name), children))
}
