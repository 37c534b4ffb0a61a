//! kiln-config: the trusted pool's configuration (peers, volumes, bricks,
//! options, brick ports) as a deterministic state machine (`model`), and the
//! store that replicates it to every server (`ConfigStore`).

pub mod model;
pub mod raft;
pub mod store;

pub use model::{
    BrickEntry, Command, ConfigError, PeerInfo, PoolConfig, VolumeConfig, VolumeStatus,
};
pub use raft::{NodeStatus, RaftConfigStore, RaftOptions, RaftTransport};
pub use store::{ConfigStore, MemoryStore, StoreError};
