//! In-process test harness for the Raft config store: `SimNet` routes peer
//! messages between `RaftConfigStore`s by address and can cut links, isolate
//! a server or kill it; `Cluster` opens stores on temp dirs. No global state:
//! each test owns its own net.

#![allow(dead_code)]

use async_trait::async_trait;
use kiln_config::{
    BrickEntry, Command, ConfigStore, PoolConfig, RaftConfigStore, RaftOptions, RaftTransport,
    VolumeConfig, VolumeStatus,
};
use kiln_core::graph::VolumeKind;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The simulated network.
#[derive(Default)]
pub struct SimNet {
    nodes: Mutex<HashMap<String, Arc<RaftConfigStore>>>,
    /// Directed links (from, to) that drop every message.
    cut: Mutex<HashSet<(String, String)>>,
    /// Messages delivered so far (to check traffic flows at all).
    pub delivered: std::sync::atomic::AtomicU64,
}

impl SimNet {
    /// An empty net.
    pub fn new() -> Arc<SimNet> {
        Arc::new(SimNet::default())
    }

    /// The transport a server at `me` uses.
    pub fn transport(self: &Arc<Self>, me: &str) -> Arc<SimTransport> {
        Arc::new(SimTransport {
            net: Arc::downgrade(self),
            me: me.to_string(),
        })
    }

    /// Makes `store` reachable at `addr`.
    pub fn register(&self, addr: &str, store: Arc<RaftConfigStore>) {
        self.nodes.lock().unwrap().insert(addr.to_string(), store);
    }

    /// Makes `addr` unreachable ("connection refused") and returns its store.
    pub fn unregister(&self, addr: &str) -> Option<Arc<RaftConfigStore>> {
        self.nodes.lock().unwrap().remove(addr)
    }

    /// Drops every message between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        let mut cut = self.cut.lock().unwrap();
        cut.insert((a.to_string(), b.to_string()));
        cut.insert((b.to_string(), a.to_string()));
    }

    /// Cuts `addr` off from every other registered server.
    pub fn isolate(&self, addr: &str) {
        let others: Vec<String> = self.nodes.lock().unwrap().keys().cloned().collect();
        for o in others.iter().filter(|o| *o != addr) {
            self.cut(addr, o);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    fn blocked(&self, from: &str, to: &str) -> bool {
        self.cut
            .lock()
            .unwrap()
            .contains(&(from.to_string(), to.to_string()))
    }
}

/// One server's view of the net.
pub struct SimTransport {
    net: Weak<SimNet>,
    me: String,
}

#[async_trait]
impl RaftTransport for SimTransport {
    async fn call(&self, target_addr: &str, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let net = self.net.upgrade().ok_or("network is gone")?;
        if net.blocked(&self.me, target_addr) {
            return Err(format!("{target_addr}: no route to host (partitioned)"));
        }
        let node = net.nodes.lock().unwrap().get(target_addr).cloned();
        let node = node.ok_or_else(|| format!("{target_addr}: connection refused"))?;
        // The receiving server works on its own, as over a socket: a caller
        // that gives up does not cancel it.
        let handled = tokio::spawn(async move { node.handle_peer_message(payload).await });
        let answer = handled
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if net.blocked(target_addr, &self.me) {
            return Err(format!("{target_addr}: connection reset (partitioned)"));
        }
        net.delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(answer)
    }
}

/// Servers of one test, each with its store directory under a temp dir.
pub struct Cluster {
    pub net: Arc<SimNet>,
    pub opts: RaftOptions,
    root: tempfile::TempDir,
    running: Mutex<BTreeMap<u64, Arc<RaftConfigStore>>>,
}

impl Cluster {
    /// A cluster with these options and no server yet.
    pub fn new(opts: RaftOptions) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        Cluster {
            net: SimNet::new(),
            opts,
            root: tempfile::tempdir().unwrap(),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Management address of server `id`.
    pub fn addr(id: u64) -> String {
        format!("node{id:02}:24007")
    }

    /// Store directory of server `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node{id:02}"))
    }

    /// Opens (or reopens) server `id` from its directory and connects it.
    pub async fn start(&self, id: u64) -> Arc<RaftConfigStore> {
        let addr = Self::addr(id);
        let store = RaftConfigStore::open_with(
            &self.dir(id),
            id,
            addr.clone(),
            self.net.transport(&addr),
            self.opts.clone(),
        )
        .await
        .expect("open store");
        self.net.register(&addr, store.clone());
        self.running.lock().unwrap().insert(id, store.clone());
        store
    }

    /// Server `id` (which must be running).
    pub fn node(&self, id: u64) -> Arc<RaftConfigStore> {
        self.running
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .expect("server is running")
    }

    /// Running servers.
    pub fn running(&self) -> Vec<Arc<RaftConfigStore>> {
        self.running.lock().unwrap().values().cloned().collect()
    }

    /// Kills server `id`: unreachable at once, Raft stopped; its directory
    /// stays as it was.
    pub async fn kill(&self, id: u64) {
        self.net.unregister(&Self::addr(id));
        let store = self.running.lock().unwrap().remove(&id);
        if let Some(s) = store {
            s.shutdown().await;
        }
    }

    /// Starts server 1 as a one-server pool, then adds servers 2..=n.
    pub async fn form(&self, n: u64) {
        let first = self.start(1).await;
        first.initialize_single().await.expect("initialize");
        for id in 2..=n {
            self.start(id).await;
            first
                .add_server(id, Self::addr(id))
                .await
                .expect("add server");
        }
        let ids: Vec<u64> = (1..=n).collect();
        wait_until(
            Duration::from_secs(15),
            "every server sees the full membership",
            || {
                ids.iter().all(|id| {
                    let st = self.node(*id).status();
                    st.voters.keys().copied().collect::<Vec<_>>() == ids && st.is_member
                })
            },
        )
        .await;
    }

    /// Waits until a leader that every running server agrees on is elected,
    /// and returns its id.
    pub async fn leader(&self) -> u64 {
        let mut found = None;
        wait_until(
            Duration::from_secs(15),
            "a leader all running servers agree on",
            || {
                let nodes = self.running();
                let first = nodes.first().and_then(|n| n.leader_id());
                let agreed = first.is_some()
                    && nodes.iter().all(|n| n.leader_id() == first)
                    && first.is_some_and(|l| nodes.iter().any(|n| n.node_id() == l));
                if agreed {
                    found = first;
                }
                agreed
            },
        )
        .await;
        found.unwrap()
    }

    /// Waits until every running server's config equals `pred`'s wish.
    pub async fn converge(&self, what: &str, pred: impl Fn(&PoolConfig) -> bool) {
        wait_until(Duration::from_secs(20), what, || {
            self.running().iter().all(|n| pred(&n.current()))
        })
        .await;
    }
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A distribute volume command.
pub fn create_volume(name: &str) -> Command {
    Command::CreateVolume(VolumeConfig {
        name: name.to_string(),
        id: format!("id-{name}"),
        kind: VolumeKind::Distribute,
        transport: "tcp".to_string(),
        status: VolumeStatus::Created,
        bricks: vec![BrickEntry {
            host: "node01".to_string(),
            path: format!("/bricks/{name}"),
            peer_uuid: "uuid-1".to_string(),
            port: 0,
        }],
        options: BTreeMap::new(),
        generation: 0,
    })
}

/// Options as in production, with a short propose timeout where a test
/// waits for one to fail.
pub fn test_options() -> RaftOptions {
    RaftOptions::default()
}
