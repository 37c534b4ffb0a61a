//! openraft's network (`RaftNetworkFactory` / `RaftNetwork`) over the
//! daemon's `RaftTransport`, plus `call_peer`, the one place a store sends a
//! `PeerRequest` and decodes the answer.

use super::messages::{decode, encode, Envelope, PeerRequest, PeerResponse, WIRE_VERSION};
use super::types::{Node, NodeId, TypeConfig};
use super::RaftTransport;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;
use std::time::Duration;

/// First pause before retrying an unreachable peer; doubles up to
/// `BACKOFF_MAX` (a server that is down for hours is tried every few
/// seconds, not flooded, and is caught up within that time of its return).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(4);

/// A peer could not be reached, or answered something unexpected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

/// Sends `req` from node `from` to node `to` at `addr` and decodes the
/// answer.
pub async fn call_peer(
    transport: &dyn RaftTransport,
    from: NodeId,
    to: NodeId,
    addr: &str,
    req: PeerRequest,
) -> Result<PeerResponse, PeerError> {
    let env = Envelope {
        version: WIRE_VERSION,
        from,
        to,
        body: req,
    };
    let bytes = transport
        .call(addr, encode(&env))
        .await
        .map_err(|e| PeerError(format!("node {to} at {addr}: {e}")))?;
    decode(&bytes).map_err(|e| PeerError(format!("node {to} at {addr}: {e}")))
}

/// Makes one `PeerClient` per target for openraft.
pub struct NetworkFactory {
    me: NodeId,
    transport: Arc<dyn RaftTransport>,
}

impl NetworkFactory {
    /// A factory sending as node `me`.
    pub fn new(me: NodeId, transport: Arc<dyn RaftTransport>) -> NetworkFactory {
        NetworkFactory { me, transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            me: self.me,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        req: PeerRequest,
    ) -> Result<PeerResponse, RPCError<NodeId, Node, E>> {
        match call_peer(
            self.transport.as_ref(),
            self.me,
            self.target,
            &self.addr,
            req,
        )
        .await
        {
            Ok(PeerResponse::Refused(msg)) => {
                Err(RPCError::Unreachable(Unreachable::new(&PeerError(
                    format!("node {} at {} refused: {msg}", self.target, self.addr),
                ))))
            }
            Ok(resp) => Ok(resp),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, resp: &PeerResponse) -> RPCError<NodeId, Node, E> {
        RPCError::Network(NetworkError::new(&PeerError(format!(
            "node {} answered with an unexpected message: {resp:?}",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(PeerRequest::AppendEntries(rpc)).await? {
            PeerResponse::AppendEntries(Ok(r)) => Ok(r),
            PeerResponse::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(PeerRequest::InstallSnapshot(rpc)).await? {
            PeerResponse::InstallSnapshot(Ok(r)) => Ok(r),
            PeerResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(PeerRequest::Vote(rpc)).await? {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(Some(BACKOFF_FIRST), |d| {
            Some((*d * 2).min(BACKOFF_MAX))
        }))
    }
}
