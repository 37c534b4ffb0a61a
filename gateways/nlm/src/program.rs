//! The NLM v4 and NSM v1 programs on the shared ONC-RPC core: decode, run
//! the lock manager, encode. The asynchronous `_MSG` procedures answer
//! void at once and send their result as a `_RES` call to the client's
//! lockd; the `_RES` procedures a client sends us are taken and dropped
//! (GRANTED is answered by the client synchronously).

use async_trait::async_trait;
use kiln_portmap::{CallContext, ProcError, RpcProgram, XdrWriter};
use std::sync::Arc;

use crate::callback;
use crate::locks::{LockManager, Peer};
use crate::types::*;

/// NLM v4 over a lock manager.
pub struct NlmProgram {
    mgr: Arc<LockManager>,
}

impl NlmProgram {
    /// The program over `mgr`.
    pub fn new(mgr: Arc<LockManager>) -> NlmProgram {
        NlmProgram { mgr }
    }
}

fn peer_of(ctx: &CallContext) -> Peer {
    let client = ctx.peer.ip();
    let mut local = ctx.local.ip();
    if local.is_unspecified() {
        // A call on a wildcard UDP socket: the address the client called is
        // the one routing picks towards it (what callbacks must come from).
        local = route_source(client).unwrap_or(local);
    }
    Peer { client, local }
}

/// The source address the kernel picks for packets to `dest` (a connected
/// UDP socket sends nothing).
fn route_source(dest: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let any: std::net::SocketAddr = if dest.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect((dest, 111)).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// Sends a `_MSG` call's result back as `_RES`, in the background.
fn reply_later(peer: Peer, pmap_port: u16, proc_: u32, body: Vec<u8>) {
    tokio::spawn(async move {
        if let Err(e) = callback::send_res(&peer, pmap_port, proc_, &body).await {
            tracing::warn!(client = %peer.client, proc_, error = %e, "nlm: cannot send a _RES reply");
        }
    });
}

#[async_trait]
impl RpcProgram for NlmProgram {
    fn program(&self) -> u32 {
        NLM_PROGRAM
    }

    fn versions(&self) -> &[u32] {
        &[NLM_V4]
    }

    fn name(&self) -> &'static str {
        "nlm"
    }

    async fn call(
        &self,
        ctx: &CallContext,
        _vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        let call = decode_nlm(proc_, args)
            .ok_or(ProcError::ProcUnavail)?
            .map_err(|e| {
                tracing::debug!(peer = %ctx.peer, proc_, error = %e, "nlm: undecodable arguments");
                ProcError::GarbageArgs
            })?;
        let peer = peer_of(ctx);
        // A `_MSG` form runs its synchronous procedure; the result goes
        // back as the `_RES` call and the reply itself is void.
        let Some((base, res)) = proc4::msg_form(proc_) else {
            return self.run(ctx, &peer, proc_, call).await;
        };
        let body = self.run(ctx, &peer, base, call).await?;
        reply_later(peer, self.mgr.pmap_port(), res, body);
        Ok(Vec::new())
    }
}

impl NlmProgram {
    /// Runs synchronous procedure `proc_` (or takes a `_RES` / GRANTED
    /// form a client sent) and encodes its result.
    async fn run(
        &self,
        ctx: &CallContext,
        peer: &Peer,
        proc_: u32,
        call: NlmCall,
    ) -> Result<Vec<u8>, ProcError> {
        use proc4::*;
        let mut w = XdrWriter::with_capacity(64);
        match (proc_, call) {
            (_, NlmCall::Null) => {}
            (TEST, NlmCall::Test(a)) => self.mgr.test(&a, peer).await.encode(&mut w),
            (GRANTED, NlmCall::Test(a)) => {
                // We are a server: nothing here waits for a grant.
                Res {
                    cookie: a.cookie,
                    stat: Nlm4Stat::Denied,
                }
                .encode(&mut w)
            }
            (GRANTED_MSG, NlmCall::Test(_)) => {}
            (LOCK, NlmCall::Lock(a)) => Res {
                stat: self.mgr.lock(&a, peer).await,
                cookie: a.cookie,
            }
            .encode(&mut w),
            (NM_LOCK, NlmCall::Lock(a)) => Res {
                stat: self.mgr.nm_lock(&a, peer).await,
                cookie: a.cookie,
            }
            .encode(&mut w),
            (CANCEL, NlmCall::Cancel(a)) => Res {
                stat: self.mgr.cancel(&a, peer).await,
                cookie: a.cookie,
            }
            .encode(&mut w),
            (UNLOCK, NlmCall::Unlock(a)) => Res {
                stat: self.mgr.unlock(&a, peer).await,
                cookie: a.cookie,
            }
            .encode(&mut w),
            (_, NlmCall::TestRes(_)) => {}
            (GRANTED_RES, NlmCall::Res(r)) => {
                tracing::debug!(peer = %ctx.peer, status = ?r.stat, "nlm: GRANTED_RES");
            }
            (_, NlmCall::Res(_)) => {}
            (SHARE, NlmCall::Share(a)) => {
                self.mgr.monitor().note(&a.share.caller_name, peer).await;
                self.mgr.share(&a, peer, false).encode(&mut w)
            }
            (UNSHARE, NlmCall::Share(a)) => self.mgr.share(&a, peer, true).encode(&mut w),
            (FREE_ALL, NlmCall::FreeAll(n)) => {
                self.mgr.free_all(&n.name, None).await;
            }
            _ => return Err(ProcError::ProcUnavail),
        }
        Ok(w.into_bytes())
    }
}

/// `res` of NSM: `stat_succ`.
const STAT_SUCC: u32 = 0;
/// `res` of NSM: `stat_fail`.
const STAT_FAIL: u32 = 1;

/// The gateway's NSM v1: SM_NOTIFY from a rebooted client releases its
/// locks; SM_STAT reports our state; SM_MON from anyone is refused (this
/// monitor serves the gateway only, as rpc.statd serves its local lockd).
pub struct NsmProgram {
    mgr: Arc<LockManager>,
}

impl NsmProgram {
    /// The program over `mgr`.
    pub fn new(mgr: Arc<LockManager>) -> NsmProgram {
        NsmProgram { mgr }
    }
}

#[async_trait]
impl RpcProgram for NsmProgram {
    fn program(&self) -> u32 {
        NSM_PROGRAM
    }

    fn versions(&self) -> &[u32] {
        &[NSM_V1]
    }

    fn name(&self) -> &'static str {
        "nsm"
    }

    async fn call(
        &self,
        ctx: &CallContext,
        _vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        let call = decode_nsm(proc_, args)
            .ok_or(ProcError::ProcUnavail)?
            .map_err(|_| ProcError::GarbageArgs)?;
        let state = self.mgr.monitor().state();
        let mut w = XdrWriter::with_capacity(16);
        match call {
            NsmCall::Void => {}
            NsmCall::Stat(_) => {
                w.put_u32(STAT_SUCC);
                w.put_i32(state);
            }
            NsmCall::Mon(m) => {
                tracing::info!(peer = %ctx.peer, mon_name = %String::from_utf8_lossy(&m.mon_name), "nsm: SM_MON refused (this monitor serves the gateway's own lock manager)");
                w.put_u32(STAT_FAIL);
                w.put_i32(state);
            }
            NsmCall::Unmon(_) | NsmCall::UnmonAll(_) => w.put_i32(state),
            NsmCall::Notify(n) => {
                tracing::info!(peer = %ctx.peer, mon_name = %String::from_utf8_lossy(&n.mon_name), state = n.state, "nsm: SM_NOTIFY: a client host restarted; releasing its locks");
                self.mgr.free_all(&n.mon_name, Some(ctx.peer.ip())).await;
            }
        }
        Ok(w.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_source_of_loopback() {
        let ip = super::route_source("127.0.0.1".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
    }
}
