//! `ConfigStore`: how the management daemon reads and changes the pool
//! configuration. The Raft-replicated implementation lives in `raft/`.

use crate::model::{Command, ConfigError, PoolConfig};
use async_trait::async_trait;
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
}
