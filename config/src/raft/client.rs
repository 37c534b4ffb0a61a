//! Proposals: committing a `Command` through the leader, whichever server
//! it is called on. A follower forwards the request to the leader it knows
//! (following "not leader" hints, retrying until a deadline); the proposer
//! then waits until the entry is applied on its own server.

use super::messages::{ForwardError, PeerRequest, PeerResponse, WriteOutcome};
use super::network::call_peer;
use super::store::RaftConfigStore;
use super::types::{ClientRequest, NodeId};
use crate::model::{Command, ConfigError};
use crate::store::StoreError;
use openraft::error::{ClientWriteError, RaftError};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Pause between two attempts to reach a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Extra time a proposer waits for its own server to apply an entry the
/// leader reported committed, when the proposal deadline is already close.
const APPLY_GRACE: Duration = Duration::from_secs(2);

impl RaftConfigStore {
    /// The leader this server knows of, with its address.
    pub(super) fn known_leader(&self) -> Option<(NodeId, String)> {
        let m = self.metrics.borrow();
        let leader = m.current_leader?;
        if leader == self.node_id {
            return Some((leader, self.my_addr.clone()));
        }
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// Sleeps a little before the next attempt (never past `deadline`).
    pub(super) async fn pause(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
    }

    /// Runs an operation on the leader: `local` if this server leads, else
    /// `remote()` sent to the leader and its answer taken by `extract`.
    /// Follows leader changes and retries unreachable leaders until
    /// `deadline`, then fails with `NoQuorum`.
    pub(super) async fn on_leader<T, L, LF>(
        &self,
        what: &str,
        deadline: Instant,
        local: L,
        remote: impl Fn() -> PeerRequest,
        extract: impl Fn(PeerResponse) -> Option<Result<T, ForwardError>>,
    ) -> Result<T, StoreError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, ForwardError>>,
    {
        let mut hint: Option<(NodeId, String)> = None;
        let mut last = "no leader is elected".to_string();
        loop {
            if self.is_closed() {
                return Err(StoreError::Storage("the config store is shut down".into()));
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NoQuorum(format!("{what}: {last}")));
            }
            let Some((leader, addr)) = hint.take().or_else(|| self.known_leader()) else {
                if !self.is_member() {
                    last = "this server is not a member of a trusted pool with a leader".into();
                }
                let until = deadline.min(Instant::now() + RETRY_PAUSE * 5);
                self.wait_metrics(until, |m| m.current_leader.is_some())
                    .await;
                continue;
            };
            let attempt = if leader == self.node_id {
                tokio::time::timeout_at(deadline, local()).await
            } else {
                let call = call_peer(
                    self.transport.as_ref(),
                    self.node_id,
                    leader,
                    &addr,
                    remote(),
                );
                match tokio::time::timeout_at(deadline, call).await {
                    Err(elapsed) => Err(elapsed),
                    Ok(Err(e)) => {
                        last = format!("cannot reach the leader: {e}");
                        self.pause(deadline).await;
                        continue;
                    }
                    Ok(Ok(PeerResponse::Refused(m))) => {
                        last = format!("leader {leader} at {addr} refused: {m}");
                        self.pause(deadline).await;
                        continue;
                    }
                    Ok(Ok(resp)) => match (extract)(resp) {
                        Some(r) => Ok(r),
                        None => {
                            last = format!("leader {leader} at {addr} gave an unexpected answer");
                            self.pause(deadline).await;
                            continue;
                        }
                    },
                }
            };
            match attempt {
                Err(_) => return Err(StoreError::NoQuorum(format!("{what}: timed out ({last})"))),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(ForwardError::NotLeader {
                    leader: new,
                    addr: new_addr,
                })) => {
                    last = format!("server {leader} is no longer the leader");
                    if let (Some(l), Some(a)) = (new, new_addr) {
                        if l != leader {
                            hint = Some((l, a));
                            continue;
                        }
                    }
                    self.pause(deadline).await;
                }
                Ok(Err(ForwardError::NoQuorum(m))) => return Err(StoreError::NoQuorum(m)),
                Ok(Err(ForwardError::Refused(m))) => {
                    return Err(StoreError::Rejected(ConfigError::Invalid(m)))
                }
                Ok(Err(ForwardError::Failed(m))) => return Err(StoreError::Storage(m)),
            }
        }
    }

    /// `ConfigStore::propose`.
    pub(super) async fn propose_cmd(&self, cmd: Command) -> Result<(), StoreError> {
        let req = ClientRequest {
            id: self.next_request_id(),
            cmd,
        };
        let deadline = Instant::now() + self.opts.propose_timeout;
        let outcome = self
            .on_leader(
                "propose",
                deadline,
                || self.leader_write(req.clone(), deadline),
                || PeerRequest::ClientWrite(req.clone()),
                |resp| match resp {
                    PeerResponse::ClientWrite(r) => Some(r),
                    _ => None,
                },
            )
            .await?;
        let apply_deadline = deadline.max(Instant::now() + APPLY_GRACE);
        if !self
            .wait_applied(outcome.log_id.index, apply_deadline)
            .await
        {
            // Committed (the leader said so), but this server lags: the
            // change is made; it shows here once this server catches up.
            tracing::warn!(
                index = outcome.log_id.index,
                "raft: proposal committed but not yet applied on this server"
            );
        }
        outcome.result.0.map_err(StoreError::Rejected)
    }

    /// Commits `req` through the local Raft node, which must lead.
    pub(super) async fn leader_write(
        &self,
        req: ClientRequest,
        deadline: Instant,
    ) -> Result<WriteOutcome, ForwardError> {
        match tokio::time::timeout_at(deadline, self.raft.client_write(req)).await {
            Err(_) => Err(ForwardError::NoQuorum(
                "timed out waiting for a quorum of the trusted pool to commit the change".into(),
            )),
            Ok(Ok(resp)) => Ok(WriteOutcome {
                log_id: resp.log_id,
                result: resp.data,
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id,
                    addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ForwardError::Failed(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(ForwardError::Failed(format!("raft stopped: {f}"))),
        }
    }

    /// Receiving side of a forwarded proposal: commit it if this server
    /// leads (never forwarded further).
    pub(super) async fn serve_forwarded_write(
        &self,
        req: ClientRequest,
    ) -> Result<WriteOutcome, ForwardError> {
        // Leave the proposer time to hear the answer before its own deadline.
        let deadline = Instant::now() + self.opts.propose_timeout.mul_f32(0.9);
        self.leader_write(req, deadline).await
    }
}
