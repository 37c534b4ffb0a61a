//! `ConfigStore`: how the management daemon reads and changes the pool
//! configuration. `raft` holds the replicated implementation; `MemoryStore`
//! is a single-process one for unit tests of code above the store.

use crate::model::{Command, ConfigError, PoolConfig};
use async_trait::async_trait;
use std::sync::Mutex;
use tokio::sync::watch;

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Committed, but the state machine refused it (same on every server).
    #[error(transparent)]
    Rejected(#[from] ConfigError),
    /// No quorum / no leader reachable: nothing was changed.
    #[error("the trusted pool has no quorum: {0}")]
    NoQuorum(String),
    /// Storage failure on this server.
    #[error("config store: {0}")]
    Storage(String),
}

/// The replicated pool configuration as one server sees it.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// The configuration as last applied on this server.
    fn current(&self) -> PoolConfig;
    /// Watches every applied change.
    fn subscribe(&self) -> watch::Receiver<PoolConfig>;
    /// Commits a command (forwarding to the leader if needed) and returns once
    /// it is applied on this server.
    async fn propose(&self, cmd: Command) -> Result<(), StoreError>;
    /// Makes server `node_id` (reachable at `addr`, its management address)
    /// a voting member of the pool's Raft group.
    async fn add_server(&self, node_id: u64, addr: String) -> Result<(), StoreError>;
    /// Removes server `node_id` from the Raft group.
    async fn remove_server(&self, node_id: u64) -> Result<(), StoreError>;
    /// Server side of the store's peer transport: handles one message another
    /// server's store sent (see `raft::RaftTransport`) and returns the answer.
    async fn handle_peer_message(&self, payload: Vec<u8>) -> Result<Vec<u8>, StoreError>;
}

/// A config store local to one process: applies commands at once. For tests
/// of the layers above the store; it replicates nothing.
pub struct MemoryStore {
    state: Mutex<PoolConfig>,
    tx: watch::Sender<PoolConfig>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        let (tx, _) = watch::channel(PoolConfig::default());
        MemoryStore {
            state: Mutex::new(PoolConfig::default()),
            tx,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    fn current(&self) -> PoolConfig {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn subscribe(&self) -> watch::Receiver<PoolConfig> {
        self.tx.subscribe()
    }

    async fn propose(&self, cmd: Command) -> Result<(), StoreError> {
        let snapshot = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| StoreError::Storage("poisoned".into()))?;
            st.apply(&cmd)?;
            st.clone()
        };
        self.tx.send_replace(snapshot);
        Ok(())
    }

    async fn add_server(&self, _node_id: u64, _addr: String) -> Result<(), StoreError> {
        Ok(())
    }

    async fn remove_server(&self, _node_id: u64) -> Result<(), StoreError> {
        Ok(())
    }

    async fn handle_peer_message(&self, _payload: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Storage("a memory store has no peers".into()))
    }
}
