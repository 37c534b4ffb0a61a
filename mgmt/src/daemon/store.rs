//! The daemon's handle on the pool configuration: a `ConfigStore` backend
//! (Raft in production, memory in unit tests) that can found a one-server
//! pool, be wiped when this server leaves its pool, and whose applied
//! changes are forwarded to one watch channel that survives such a reset.

use async_trait::async_trait;
use kiln_config::{
    Command, ConfigStore, MemoryStore, PoolConfig, RaftConfigStore, RaftTransport, StoreError,
};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pool::PeerPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the daemon needs of a config store besides `ConfigStore`.
#[async_trait]
pub(crate) trait StoreBackend: Send + Sync {
    /// The store as it is now.
    fn store(&self) -> Arc<dyn ConfigStore>;
    /// Whether this server belongs to a pool's replication group.
    fn is_member(&self) -> bool;
    /// Founds a one-server pool (no-op if already a member).
    async fn initialize_single(&self) -> Result<(), StoreError>;
    /// Forgets the pool: drops every replicated state and starts empty.
    async fn reset(&self) -> Result<(), StoreError>;
    /// Stops background work.
    async fn shutdown(&self);
}

/// An in-process store (unit tests): always a member, replicates nothing.
pub(crate) struct MemoryBackend {
    store: Mutex<Arc<MemoryStore>>,
}

impl MemoryBackend {
    /// An empty store.
    pub(crate) fn new() -> MemoryBackend {
        MemoryBackend {
            store: Mutex::new(Arc::new(MemoryStore::new())),
        }
    }
}

#[async_trait]
impl StoreBackend for MemoryBackend {
    fn store(&self) -> Arc<dyn ConfigStore> {
        self.store.lock().clone()
    }
    fn is_member(&self) -> bool {
        true
    }
    async fn initialize_single(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn reset(&self) -> Result<(), StoreError> {
        *self.store.lock() = Arc::new(MemoryStore::new());
        Ok(())
    }
    async fn shutdown(&self) {}
}

/// The daemon's view of the pool configuration.
pub(crate) struct StoreHandle {
    backend: Box<dyn StoreBackend>,
    tx: watch::Sender<PoolConfig>,
    forward: Mutex<Option<JoinHandle<()>>>,
}

impl StoreHandle {
    /// Wraps a backend and starts forwarding its changes.
    pub(crate) fn new(backend: Box<dyn StoreBackend>) -> Arc<StoreHandle> {
        let (tx, _) = watch::channel(backend.store().current());
        let h = Arc::new(StoreHandle {
            backend,
            tx,
            forward: Mutex::new(None),
        });
        h.start_forwarding();
        h
    }

    fn start_forwarding(&self) {
        let store = self.backend.store();
        let mut rx = store.subscribe();
        let tx = self.tx.clone();
        tx.send_replace(store.current());
        let task = tokio::spawn(async move {
            loop {
                let cfg = rx.borrow_and_update().clone();
                tx.send_if_modified(|cur| {
                    if *cur != cfg {
                        *cur = cfg;
                        true
                    } else {
                        false
                    }
                });
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        if let Some(old) = self.forward.lock().replace(task) {
            old.abort();
        }
    }

    /// The configuration as applied on this server.
    pub(crate) fn current(&self) -> PoolConfig {
        self.backend.store().current()
    }

    /// Watches applied changes (across resets).
    pub(crate) fn subscribe(&self) -> watch::Receiver<PoolConfig> {
        self.tx.subscribe()
    }

    /// Commits a command.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<(), StoreError> {
        let store = self.backend.store();
        store.propose(cmd).await?;
        // Publish at once, so waiters on `subscribe` see it before we answer.
        self.tx.send_replace(store.current());
        Ok(())
    }

    /// The raw store (membership changes, peer messages).
    pub(crate) fn store(&self) -> Arc<dyn ConfigStore> {
        self.backend.store()
    }

    /// Whether this server belongs to a pool's replication group.
    pub(crate) fn is_member(&self) -> bool {
        self.backend.is_member()
    }

    /// Founds a one-server pool if this server is in none.
    pub(crate) async fn initialize_single(&self) -> Result<(), StoreError> {
        self.backend.initialize_single().await
    }

    /// Forgets the pool and starts over empty.
    pub(crate) async fn reset(&self) -> Result<(), StoreError> {
        self.backend.reset().await?;
        self.start_forwarding();
        Ok(())
    }

    /// Stops background work.
    pub(crate) async fn shutdown(&self) {
        if let Some(t) = self.forward.lock().take() {
            t.abort();
        }
        self.backend.shutdown().await;
    }
}

/// The Raft transport of the config store: messages ride authenticated
/// peer connections on port 24007.
struct PoolTransport(Arc<PeerPool>);

#[async_trait]
impl RaftTransport for PoolTransport {
    async fn call(&self, target_addr: &str, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        self.0.raft_call(target_addr, payload).await
    }
}

/// The replicated store kept in `STATE/raft`.
pub(crate) struct RaftBackend {
    dir: PathBuf,
    node_id: u64,
    my_addr: String,
    transport: Arc<dyn RaftTransport>,
    store: Mutex<Arc<RaftConfigStore>>,
}

#[async_trait]
impl StoreBackend for RaftBackend {
    fn store(&self) -> Arc<dyn ConfigStore> {
        self.store.lock().clone()
    }
    fn is_member(&self) -> bool {
        self.store.lock().is_member()
    }
    async fn initialize_single(&self) -> Result<(), StoreError> {
        let s = self.store.lock().clone();
        s.initialize_single().await
    }
    async fn reset(&self) -> Result<(), StoreError> {
        let old = self.store.lock().clone();
        old.shutdown().await;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))?
        .map_err(|e| StoreError::Storage(format!("cannot remove {}: {e}", self.dir.display())))?;
        let fresh = RaftConfigStore::open(
            &self.dir,
            self.node_id,
            self.my_addr.clone(),
            self.transport.clone(),
        )
        .await?;
        *self.store.lock() = fresh;
        tracing::info!("config store reset: this server is in no pool now");
        Ok(())
    }
    async fn shutdown(&self) {
        let s = self.store.lock().clone();
        s.shutdown().await;
    }
}

/// Opens the replicated store kept in `STATE/raft`.
pub(crate) async fn open_raft_backend(
    state_dir: &Path,
    raft_id: u64,
    my_addr: String,
    peers: Arc<PeerPool>,
) -> anyhow::Result<Box<dyn StoreBackend>> {
    let dir = state_dir.join("raft");
    let transport: Arc<dyn RaftTransport> = Arc::new(PoolTransport(peers));
    let store = RaftConfigStore::open(&dir, raft_id, my_addr.clone(), transport.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the config store in {}: {e}", dir.display()))?;
    Ok(Box::new(RaftBackend {
        dir,
        node_id: raft_id,
        my_addr,
        transport,
        store: Mutex::new(store),
    }))
}
