//! Outgoing server-to-server connections: authenticated with the pool
//! secret, kept idle per address for reuse, and the Raft transport of the
//! config store on top of them.

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::PoolSecret;
use crate::client::{authenticate, connect_tcp};
use crate::error::MgmtError;
use crate::proto::{MgmtReply, MgmtRequest, PeerRequest};
use crate::wire::Conn;

/// Idle connections kept per peer.
const MAX_IDLE: usize = 8;
/// Deadline of a Raft message (a forwarded proposal or membership change
/// waits for the leader to commit).
pub(crate) const RAFT_TIMEOUT: Duration = Duration::from_secs(45);

/// Authenticated connections to the other servers of the pool.
pub(crate) struct PeerPool {
    secret: Arc<RwLock<PoolSecret>>,
    my_uuid: String,
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl PeerPool {
    /// A pool that authenticates with the (current) `secret`.
    pub(crate) fn new(secret: Arc<RwLock<PoolSecret>>, my_uuid: String) -> PeerPool {
        PeerPool {
            secret,
            my_uuid,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Drops every idle connection (after the secret changed).
    pub(crate) fn clear(&self) {
        self.idle.lock().clear();
    }

    async fn connect(&self, addr: &str) -> Result<Conn, MgmtError> {
        let (mut conn, nonce, _) = connect_tcp(addr).await?;
        let secret = self.secret.read().clone();
        authenticate(&mut conn, &secret, &self.my_uuid, &nonce).await?;
        Ok(conn)
    }

    /// Sends a peer request to `addr` (`HOST:PORT`) and returns the answer;
    /// an `Error` answer becomes `MgmtError::Remote`.
    pub(crate) async fn call(
        &self,
        addr: &str,
        req: PeerRequest,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(MgmtReply, Bytes), MgmtError> {
        let req = MgmtRequest::Peer(req);
        let reused = self.idle.lock().get_mut(addr).and_then(Vec::pop);
        let result = match reused {
            Some(mut conn) => match conn.call(&req, data.clone(), timeout).await {
                // A pooled connection the peer closed meanwhile (it restarted):
                // nothing was processed, so try once more on a fresh one.
                Err(MgmtError::ConnectionLost { .. }) => {
                    self.fresh_call(addr, &req, data, timeout).await
                }
                Err(e) => Err(e),
                Ok(r) => Ok((conn, r)),
            },
            None => self.fresh_call(addr, &req, data, timeout).await,
        };
        let (conn, (reply, data)) = result?;
        {
            let mut idle = self.idle.lock();
            let list = idle.entry(addr.to_string()).or_default();
            if list.len() < MAX_IDLE {
                list.push(conn);
            }
        }
        match reply {
            MgmtReply::Error(e) => Err(MgmtError::Remote(e)),
            r => Ok((r, data)),
        }
    }

    async fn fresh_call(
        &self,
        addr: &str,
        req: &MgmtRequest,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(Conn, (MgmtReply, Bytes)), MgmtError> {
        let mut conn = self.connect(addr).await?;
        let r = conn.call(req, data, timeout).await?;
        Ok((conn, r))
    }

    /// True if the peer at `addr` answers a ping within `timeout` (and holds
    /// the pool secret).
    pub(crate) async fn ping(&self, addr: &str, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(
                timeout,
                self.call(addr, PeerRequest::Ping, Bytes::new(), timeout)
            )
            .await,
            Ok(Ok((MgmtReply::Ok, _)))
        )
    }

    /// Sends one Raft payload and returns the answer payload.
    pub(crate) async fn raft_call(&self, addr: &str, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        match self
            .call(addr, PeerRequest::Raft, Bytes::from(payload), RAFT_TIMEOUT)
            .await
        {
            Ok((MgmtReply::Raft, data)) => Ok(data.to_vec()),
            Ok((other, _)) => Err(format!("unexpected answer to a Raft message: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
