//! The peer wire format of the config store: what one server's store sends
//! another through `RaftTransport`, and the answers. JSON in a versioned
//! envelope; a message for another node id, or of another version, is
//! refused rather than guessed at.

use super::types::{ApplyResult, ClientRequest, LogId, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

/// Version of the peer protocol. A server refuses other versions.
pub const WIRE_VERSION: u32 = 1;

/// A request from one store to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// `WIRE_VERSION` of the sender.
    pub version: u32,
    /// Node id of the sender.
    pub from: NodeId,
    /// Node id the sender means to reach (a server at that address with
    /// another id refuses the message).
    pub to: NodeId,
    /// The message.
    pub body: T,
}

/// What a store asks another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft log replication / heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot transfer (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// "You are the leader: commit this for me" (a proposal made on a
    /// follower).
    ClientWrite(ClientRequest),
    /// "You are the leader: make this server a voter."
    AddServer {
        /// Its node id.
        node_id: NodeId,
        /// Its management address.
        addr: String,
    },
    /// "You are the leader: remove this server."
    RemoveServer {
        /// Its node id.
        node_id: NodeId,
    },
    /// How do you stand? (asked of a server before adding it).
    Status,
}

/// Why a request forwarded to a leader did not succeed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader; it names the one it knows of.
    NotLeader {
        /// Leader id, if known.
        leader: Option<NodeId>,
        /// Leader address, if known.
        addr: Option<String>,
    },
    /// No quorum (timed out waiting for a commit).
    NoQuorum(String),
    /// Refused as asked (for membership changes: a bad request).
    Refused(String),
    /// Storage or internal failure on the leader.
    Failed(String),
}

/// What a committed forwarded write gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Where it was committed.
    pub log_id: LogId,
    /// The state machine's verdict.
    pub result: ApplyResult,
}

/// How a server stands in the group (answer to `Status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Its node id.
    pub node_id: NodeId,
    /// Whether it holds any Raft state (a log, a vote).
    pub initialized: bool,
    /// Voters of its current membership.
    pub voters: Vec<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Index of its last log entry.
    pub last_log_index: Option<u64>,
}

/// The answer to a `PeerRequest`.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to `ClientWrite`.
    ClientWrite(Result<WriteOutcome, ForwardError>),
    /// Answer to `AddServer` / `RemoveServer`.
    Membership(Result<(), ForwardError>),
    /// Answer to `Status`.
    Status(StatusReply),
    /// The request was not understood or not meant for this server.
    Refused(String),
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Every type here serializes to JSON without error (no maps with
    // non-string keys outside openraft's own, which it makes strings).
    serde_json::to_vec(msg).unwrap_or_else(|e| {
        tracing::error!(error = %e, "raft: cannot encode a peer message");
        b"null".to_vec()
    })
}

/// Decodes a message.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("malformed raft peer message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_garbage() {
        let env = Envelope {
            version: WIRE_VERSION,
            from: 1,
            to: 2,
            body: PeerRequest::Status,
        };
        let back: Envelope<PeerRequest> = decode(&encode(&env)).unwrap();
        assert_eq!(back.to, 2);
        assert!(matches!(back.body, PeerRequest::Status));
        assert!(decode::<Envelope<PeerRequest>>(b"\x00\xffgarbage").is_err());
        assert!(decode::<Envelope<PeerRequest>>(br#"{"version":1,"from":1}"#).is_err());
    }
}
