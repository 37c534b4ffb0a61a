//! The openraft type configuration of the config store, and what a log
//! entry carries: a `Command` tagged with a request id so a proposal retried
//! after a lost answer is applied once.

use crate::model::{Command, ConfigError};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// openraft types of the pool configuration group.
    pub TypeConfig:
        D = ClientRequest,
        R = ApplyResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Raft node id (chosen by the daemon).
pub type NodeId = u64;
/// A node of the group: its management address.
pub type Node = openraft::BasicNode;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership as stored with the entry that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// openraft storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Identifies one proposal: the server that made it, a random number drawn
/// when its store opened, and a counter. Retries carry the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Node id of the proposing server.
    pub origin: u64,
    /// Random per store instance.
    pub session: u64,
    /// Counter within the session.
    pub serial: u64,
}

/// The payload of a normal log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Who proposed it (for de-duplication of retries).
    pub id: RequestId,
    /// The change.
    pub cmd: Command,
}

/// What applying one entry gave: the state machine's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult(pub Result<(), ConfigError>);
