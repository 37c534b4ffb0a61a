//! The Raft-replicated `ConfigStore`: every server of the trusted pool keeps
//! the same `PoolConfig` by applying the same committed `Command`s, through
//! the `openraft` crate. Peers talk through a `RaftTransport` the daemon owns.
//!
//! Layout: `types` (openraft type config, log payload), `disk` (versioned,
//! fsync'd files), `log_store` (vote and log), `state_machine` (applied
//! config and snapshots), `messages` (the peer wire format), `network`
//! (openraft's network over the transport), `store` (the `RaftConfigStore`
//! itself), and `client` and `membership` (proposals and membership
//! changes, forwarded to the leader when called on a follower).

mod client;
mod disk;
mod log_store;
mod membership;
mod messages;
mod network;
mod state_machine;
mod store;
mod types;

use async_trait::async_trait;
use std::time::Duration;

pub use store::{NodeStatus, RaftConfigStore};

/// How one server's store sends a peer message to another server's store.
///
/// The management daemon implements it over its TCP port (24007) with the
/// pool secret; on the receiving side it hands the payload to
/// `ConfigStore::handle_peer_message` and sends back what that returns.
#[async_trait]
pub trait RaftTransport: Send + Sync {
    /// Sends `payload` to the server whose management address is
    /// `target_addr` ("HOST:PORT") and returns its answer, or why it could
    /// not be delivered (unreachable, connection lost, the peer refused).
    async fn call(&self, target_addr: &str, payload: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// Timing and compaction knobs of a `RaftConfigStore`.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// Leader heartbeat period (also the time a follower has to answer an
    /// AppendEntries).
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_max: Duration,
    /// How long `propose` may take before it gives up with `NoQuorum`.
    pub propose_timeout: Duration,
    /// How long `add_server`/`remove_server` may take (the new server has to
    /// catch up first).
    pub membership_timeout: Duration,
    /// Build a snapshot (and compact the log) after this many new entries.
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot, so a briefly absent server
    /// catches up from the log rather than from a snapshot.
    pub keep_after_snapshot: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1500),
            election_max: Duration::from_millis(3000),
            propose_timeout: Duration::from_secs(10),
            membership_timeout: Duration::from_secs(30),
            snapshot_every: 1000,
            keep_after_snapshot: 200,
        }
    }
}
