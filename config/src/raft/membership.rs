//! Membership changes: adding a server (first as a learner that catches up
//! with the log or a snapshot, then as a voter) and removing one. Run on the
//! leader; a follower forwards them like proposals.
//!
//! A removed server is first demoted to a learner, and replicated to until
//! it has seen that, so its `is_member` turns false and it starts no
//! elections; then it is dropped and hears no more. It keeps its last config.
//! The daemon should stop its store and wipe its directory before the server
//! joins any pool again.

use super::messages::{ForwardError, PeerRequest, PeerResponse};
use super::network::call_peer;
use super::store::RaftConfigStore;
use super::types::{NodeId, TypeConfig};
use crate::store::StoreError;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, ChangeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How long the leader waits for a server it is about to add to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

impl RaftConfigStore {
    /// `ConfigStore::add_server`.
    pub(super) async fn route_add_server(
        &self,
        node_id: NodeId,
        addr: String,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.opts.membership_timeout;
        self.on_leader(
            "add server",
            deadline,
            || self.leader_add_server(node_id, addr.clone(), deadline),
            || PeerRequest::AddServer {
                node_id,
                addr: addr.clone(),
            },
            extract_membership,
        )
        .await?;
        // Let this server see the change too (it may be the one added).
        let until = Instant::now() + self.opts.heartbeat * 8;
        self.wait_metrics(until, |m| {
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == node_id)
        })
        .await;
        Ok(())
    }

    /// `ConfigStore::remove_server`.
    pub(super) async fn route_remove_server(&self, node_id: NodeId) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.opts.membership_timeout;
        self.on_leader(
            "remove server",
            deadline,
            || self.leader_remove_server(node_id, deadline),
            || PeerRequest::RemoveServer { node_id },
            extract_membership,
        )
        .await?;
        let until = Instant::now() + self.opts.heartbeat * 8;
        self.wait_metrics(until, |m| {
            m.membership_config
                .membership()
                .get_node(&node_id)
                .is_none()
        })
        .await;
        Ok(())
    }

    /// "Not the leader", with the leader this server knows of.
    fn not_leader(&self) -> ForwardError {
        let known = self.known_leader().filter(|(id, _)| *id != self.node_id);
        ForwardError::NotLeader {
            leader: known.as_ref().map(|k| k.0),
            addr: known.map(|k| k.1),
        }
    }

    fn is_leader(&self) -> bool {
        self.metrics.borrow().current_leader == Some(self.node_id)
    }

    /// Voters and all nodes (with addresses) of the current membership.
    fn members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, String>) {
        let m = self.metrics.borrow();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        (voters, nodes)
    }

    /// Adds server `node_id` at `addr` as a voter; this server must lead.
    pub(super) async fn leader_add_server(
        &self,
        node_id: NodeId,
        addr: String,
        deadline: Instant,
    ) -> Result<(), ForwardError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let (voters, nodes) = self.members();
        if voters.contains(&node_id) {
            return match nodes.get(&node_id) {
                Some(known) if *known != addr => Err(ForwardError::Refused(format!(
                    "raft node {node_id} is already a member, at {known}"
                ))),
                _ => Ok(()),
            };
        }
        self.check_joinable(node_id, &addr, &voters, deadline)
            .await?;

        tracing::info!(node_id, %addr, "raft: adding a server (as learner first)");
        let resp = self
            .membership_write(deadline, || {
                self.raft.add_learner(node_id, BasicNode::new(&addr), false)
            })
            .await?;
        let index = resp.log_id.index;
        let me = self.node_id;
        self.wait_metrics(deadline, |m| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&node_id).cloned())
                .flatten();
            m.current_leader != Some(me) || matched.is_some_and(|l| l.index >= index)
        })
        .await;
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let caught_up = {
            let m = self.metrics.borrow();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&node_id).cloned())
                .flatten();
            matched.is_some_and(|l| l.index >= index)
        };
        if !caught_up {
            // Do not leave a learner behind that the leader keeps trying.
            let undo = Instant::now() + STATUS_TIMEOUT;
            let removed = self
                .membership_write(undo, || {
                    self.raft.change_membership(
                        ChangeMembers::RemoveNodes(BTreeSet::from([node_id])),
                        false,
                    )
                })
                .await;
            if let Err(e) = removed {
                tracing::warn!(node_id, error = ?e, "raft: could not drop a learner that did not catch up");
            }
            return Err(ForwardError::NoQuorum(format!(
                "server {node_id} at {addr} did not catch up with the pool's log in time"
            )));
        }
        tracing::info!(node_id, %addr, "raft: learner caught up, making it a voter");
        self.membership_write(deadline, || {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
        })
        .await?;
        Ok(())
    }

    /// Asks the server to be added how it stands: refuses one that already
    /// belongs to another pool (adding it would overwrite its log).
    async fn check_joinable(
        &self,
        node_id: NodeId,
        addr: &str,
        voters: &BTreeSet<NodeId>,
        deadline: Instant,
    ) -> Result<(), ForwardError> {
        if node_id == self.node_id {
            return Ok(());
        }
        let call = call_peer(
            self.transport.as_ref(),
            self.node_id,
            node_id,
            addr,
            PeerRequest::Status,
        );
        let until = deadline.min(Instant::now() + STATUS_TIMEOUT);
        let status = match tokio::time::timeout_at(until, call).await {
            Ok(Ok(PeerResponse::Status(s))) => s,
            Ok(Ok(PeerResponse::Refused(m))) => {
                return Err(ForwardError::Refused(format!(
                    "server {node_id} at {addr}: {m}"
                )))
            }
            Ok(Ok(other)) => {
                return Err(ForwardError::Failed(format!(
                    "server {node_id} at {addr} answered {other:?}"
                )))
            }
            Ok(Err(e)) => {
                return Err(ForwardError::NoQuorum(format!(
                    "server is unreachable: {e}"
                )))
            }
            Err(_) => {
                return Err(ForwardError::NoQuorum(format!(
                    "server {node_id} at {addr} did not answer"
                )))
            }
        };
        let foreign = status.initialized
            && !status.voters.is_empty()
            && !status.voters.iter().any(|v| voters.contains(v));
        if foreign {
            return Err(ForwardError::Refused(format!(
                "server {node_id} at {addr} is already part of another trusted pool"
            )));
        }
        Ok(())
    }

    /// Removes server `node_id`; this server must lead. A voter is first
    /// demoted to a learner and replicated to until it has seen that (so it
    /// knows it is out and starts no elections), then dropped.
    pub(super) async fn leader_remove_server(
        &self,
        node_id: NodeId,
        deadline: Instant,
    ) -> Result<(), ForwardError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let (voters, nodes) = self.members();
        if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(ForwardError::Refused(
                    "cannot remove the last server of the trusted pool".into(),
                ));
            }
            tracing::info!(
                node_id,
                "raft: removing a server (demoting it to learner first)"
            );
            let demote = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
            let resp = self
                .membership_write(deadline, || {
                    self.raft.change_membership(demote.clone(), true)
                })
                .await?;
            if node_id == self.node_id {
                // This server stepped down; the next leader drops it.
                return Err(self.not_leader());
            }
            let index = resp.log_id.index;
            let me = self.node_id;
            let until = deadline.min(Instant::now() + STATUS_TIMEOUT);
            self.wait_metrics(until, |m| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&node_id).cloned())
                    .flatten();
                m.current_leader != Some(me) || matched.is_some_and(|l| l.index >= index)
            })
            .await;
        } else if !nodes.contains_key(&node_id) {
            return Ok(());
        }
        tracing::info!(node_id, "raft: dropping the server from the membership");
        let drop_node = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
        self.membership_write(deadline, || {
            self.raft.change_membership(drop_node.clone(), false)
        })
        .await?;
        Ok(())
    }

    /// Runs a membership write, retrying while another change is in
    /// progress, until `deadline`.
    async fn membership_write<F, Fut>(
        &self,
        deadline: Instant,
        f: F,
    ) -> Result<ClientWriteResponse<TypeConfig>, ForwardError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = WriteResult>,
    {
        loop {
            match tokio::time::timeout_at(deadline, f()).await {
                Err(_) => {
                    return Err(ForwardError::NoQuorum(
                        "timed out waiting for a quorum to commit the membership change".into(),
                    ))
                }
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) => self.pause(deadline).await,
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)))) => {
                    return Err(ForwardError::NotLeader {
                        leader: fwd.leader_id,
                        addr: fwd.leader_node.map(|n| n.addr),
                    })
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(ForwardError::Refused(e.to_string()))
                }
                Ok(Err(RaftError::Fatal(f))) => {
                    return Err(ForwardError::Failed(format!("raft stopped: {f}")))
                }
            }
        }
    }
}

fn extract_membership(resp: PeerResponse) -> Option<Result<(), ForwardError>> {
    match resp {
        PeerResponse::Membership(r) => Some(r),
        _ => None,
    }
}
