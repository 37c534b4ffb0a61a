//! `RaftConfigStore`: opening the store from its directory, starting the
//! openraft node, the `ConfigStore` implementation, and the receiving side of
//! the peer protocol (`handle_peer_message`).

use super::log_store::LogStore;
use super::messages::{
    decode, encode, Envelope, PeerRequest, PeerResponse, StatusReply, WIRE_VERSION,
};
use super::network::NetworkFactory;
use super::state_machine::{SmShared, StateMachine};
use super::types::{LogId, Node, NodeId, Raft, RequestId};
use super::{disk, RaftOptions, RaftTransport};
use crate::model::{Command, PoolConfig};
use crate::store::{ConfigStore, StoreError};
use async_trait::async_trait;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, RaftMetrics, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

/// File naming the node id the directory belongs to.
const NODE_FILE: &str = "raft-node.json";
const NODE_KIND: &str = "kiln-raft-node";

/// What `raft-node.json` holds.
#[derive(Serialize, Deserialize)]
struct NodeFile {
    node_id: NodeId,
}

/// How this server stands in the pool's Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This server's node id.
    pub node_id: NodeId,
    /// Whether it is a voter of the group.
    pub is_member: bool,
    /// The leader it knows of.
    pub leader_id: Option<NodeId>,
    /// Voters of the group, with their addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Non-voting members (servers being added), with their addresses.
    pub learners: BTreeMap<NodeId, String>,
    /// Index of the last entry applied here.
    pub last_applied: Option<u64>,
}

/// The pool configuration, replicated with Raft across the trusted pool.
pub struct RaftConfigStore {
    pub(super) node_id: NodeId,
    pub(super) my_addr: String,
    pub(super) raft: Raft,
    pub(super) sm: Arc<SmShared>,
    pub(super) transport: Arc<dyn RaftTransport>,
    pub(super) opts: RaftOptions,
    pub(super) metrics: watch::Receiver<RaftMetrics<NodeId, Node>>,
    /// Random per instance, part of every request id.
    session: u64,
    serial: AtomicU64,
    /// Another server has talked Raft to us (we are being added): never
    /// initialize a group of our own from now on.
    contacted: AtomicBool,
    closed: AtomicBool,
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

impl RaftConfigStore {
    /// Opens the store kept in `dir` (created if missing) for server
    /// `node_id` reachable at `my_addr`, and starts its Raft node.
    pub async fn open(
        dir: &Path,
        node_id: u64,
        my_addr: String,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Arc<RaftConfigStore>, StoreError> {
        Self::open_with(dir, node_id, my_addr, transport, RaftOptions::default()).await
    }

    /// `open` with explicit timing and compaction options.
    pub async fn open_with(
        dir: &Path,
        node_id: u64,
        my_addr: String,
        transport: Arc<dyn RaftTransport>,
        opts: RaftOptions,
    ) -> Result<Arc<RaftConfigStore>, StoreError> {
        let dir = dir.to_path_buf();
        let (log, sm) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            std::fs::create_dir_all(&dir)?;
            match disk::read_doc::<NodeFile>(&dir, NODE_FILE, NODE_KIND)? {
                Some(f) if f.node_id != node_id => {
                    return Err(io::Error::other(format!(
                        "{} holds the config store of raft node {}, not {node_id}",
                        dir.display(),
                        f.node_id
                    )))
                }
                Some(_) => {}
                None => disk::write_doc(&dir, NODE_FILE, NODE_KIND, &NodeFile { node_id })?,
            }
            Ok((
                LogStore::open_blocking(&dir)?,
                SmShared::open_blocking(&dir)?,
            ))
        })
        .await
        .map_err(storage)?
        .map_err(storage)?;

        let ms = |d: std::time::Duration| d.as_millis().max(1) as u64;
        let config = openraft::Config {
            cluster_name: "kiln-pool".to_string(),
            heartbeat_interval: ms(opts.heartbeat),
            election_timeout_min: ms(opts.election_min),
            election_timeout_max: ms(opts.election_max),
            install_snapshot_timeout: ms(opts.election_max).max(3000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: opts.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Storage(format!("raft options: {e}")))?;

        let network = NetworkFactory::new(node_id, transport.clone());
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            network,
            log,
            StateMachine::new(sm.clone()),
        )
        .await
        .map_err(storage)?;
        let metrics = raft.metrics();
        tracing::info!(node_id, addr = %my_addr, "raft config store opened");
        Ok(Arc::new(RaftConfigStore {
            node_id,
            my_addr,
            raft,
            sm,
            transport,
            opts,
            metrics,
            session: rand::random(),
            serial: AtomicU64::new(0),
            contacted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }))
    }

    /// Makes a fresh server the first (and only) member of a new pool.
    /// A no-op if it already holds Raft state or another server has started
    /// adding it (a probed server waits to be added instead). Returns once
    /// it leads its one-node group.
    pub async fn initialize_single(&self) -> Result<(), StoreError> {
        if self.contacted.load(Ordering::SeqCst) {
            tracing::info!("raft: not initializing, another server is adding this one");
            return Ok(());
        }
        if self.raft.is_initialized().await.map_err(storage)? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.node_id, BasicNode::new(&self.my_addr))]);
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(
                node_id = self.node_id,
                "raft: initialized a one-server pool"
            ),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => return Ok(()),
            Err(e) => return Err(storage(e)),
        }
        let deadline = Instant::now() + self.opts.propose_timeout;
        let me = self.node_id;
        self.wait_metrics(deadline, |m| m.current_leader == Some(me))
            .await;
        Ok(())
    }

    /// Whether this server is a voting member of the pool's group.
    pub fn is_member(&self) -> bool {
        let m = self.metrics.borrow();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node_id);
        is_voter
    }

    /// The current leader as this server knows it.
    pub fn leader_id(&self) -> Option<u64> {
        self.metrics.borrow().current_leader
    }

    /// This server's node id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// How this server stands in the group.
    pub fn status(&self) -> NodeStatus {
        let m = self.metrics.borrow();
        let membership = m.membership_config.membership();
        let addr = |id: NodeId| {
            membership
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let voters: BTreeMap<_, _> = membership.voter_ids().map(|id| (id, addr(id))).collect();
        NodeStatus {
            node_id: self.node_id,
            is_member: voters.contains_key(&self.node_id),
            leader_id: m.current_leader,
            learners: membership.learner_ids().map(|id| (id, addr(id))).collect(),
            voters,
            last_applied: m.last_applied.map(|l| l.index),
        }
    }

    /// Stops the Raft node. The store answers no peer and takes no proposal
    /// afterwards; what was applied stays on disk.
    pub async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft: shutdown");
        }
        tracing::info!(node_id = self.node_id, "raft config store shut down");
    }

    /// Whether `shutdown` was called.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A new request id for a proposal made here.
    pub(super) fn next_request_id(&self) -> RequestId {
        RequestId {
            origin: self.node_id,
            session: self.session,
            serial: self.serial.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Waits until `pred` holds for the Raft metrics or `deadline` passes;
    /// returns whether it held.
    pub(super) async fn wait_metrics(
        &self,
        deadline: Instant,
        pred: impl Fn(&RaftMetrics<NodeId, Node>) -> bool,
    ) -> bool {
        let mut rx = self.metrics.clone();
        loop {
            if pred(&rx.borrow_and_update()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(&rx.borrow()),
            }
        }
    }

    /// Waits until the entry at `index` is applied here, or `deadline`.
    pub(super) async fn wait_applied(&self, index: u64, deadline: Instant) -> bool {
        let mut rx = self.sm.subscribe_applied();
        let reached = |a: &Option<LogId>| a.is_some_and(|l| l.index >= index);
        loop {
            if reached(&rx.borrow_and_update()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return reached(&rx.borrow()),
            }
        }
    }

    fn status_reply(&self) -> StatusReply {
        let s = self.status();
        let m = self.metrics.borrow();
        StatusReply {
            node_id: self.node_id,
            initialized: m.last_log_index.is_some() || m.vote != Default::default(),
            voters: s.voters.keys().copied().collect(),
            leader: s.leader_id,
            last_log_index: m.last_log_index,
        }
    }

    /// Answers one decoded peer request.
    async fn answer(&self, req: PeerRequest) -> PeerResponse {
        match req {
            PeerRequest::AppendEntries(rpc) => {
                self.contacted.store(true, Ordering::SeqCst);
                PeerResponse::AppendEntries(self.raft.append_entries(rpc).await)
            }
            PeerRequest::Vote(rpc) => {
                self.contacted.store(true, Ordering::SeqCst);
                PeerResponse::Vote(self.raft.vote(rpc).await)
            }
            PeerRequest::InstallSnapshot(rpc) => {
                self.contacted.store(true, Ordering::SeqCst);
                PeerResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            PeerRequest::Status => {
                // A server asking is about to add us: do not start a pool of
                // our own from now on.
                self.contacted.store(true, Ordering::SeqCst);
                PeerResponse::Status(self.status_reply())
            }
            PeerRequest::ClientWrite(req) => {
                PeerResponse::ClientWrite(self.serve_forwarded_write(req).await)
            }
            PeerRequest::AddServer { node_id, addr } => {
                let deadline = Instant::now() + self.opts.membership_timeout.mul_f32(0.9);
                PeerResponse::Membership(self.leader_add_server(node_id, addr, deadline).await)
            }
            PeerRequest::RemoveServer { node_id } => {
                let deadline = Instant::now() + self.opts.membership_timeout.mul_f32(0.9);
                PeerResponse::Membership(self.leader_remove_server(node_id, deadline).await)
            }
        }
    }
}

#[async_trait]
impl ConfigStore for RaftConfigStore {
    fn current(&self) -> PoolConfig {
        self.sm.config()
    }

    fn subscribe(&self) -> watch::Receiver<PoolConfig> {
        self.sm.subscribe_config()
    }

    async fn propose(&self, cmd: Command) -> Result<(), StoreError> {
        self.propose_cmd(cmd).await
    }

    async fn add_server(&self, node_id: u64, addr: String) -> Result<(), StoreError> {
        self.route_add_server(node_id, addr).await
    }

    async fn remove_server(&self, node_id: u64) -> Result<(), StoreError> {
        self.route_remove_server(node_id).await
    }

    async fn handle_peer_message(&self, payload: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let env: Envelope<PeerRequest> = decode(&payload).map_err(StoreError::Storage)?;
        let resp = if env.version != WIRE_VERSION {
            PeerResponse::Refused(format!(
                "raft peer protocol version {} is not supported (this server speaks {WIRE_VERSION})",
                env.version
            ))
        } else if env.to != self.node_id {
            PeerResponse::Refused(format!(
                "this server is raft node {}, not {} (message from {})",
                self.node_id, env.to, env.from
            ))
        } else if self.is_closed() {
            PeerResponse::Refused("the config store is shut down".to_string())
        } else {
            self.answer(env.body).await
        };
        Ok(encode(&resp))
    }
}
