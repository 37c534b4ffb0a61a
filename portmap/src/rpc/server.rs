//! The ONC-RPC server core shared by portmap, MOUNT, NFS and NLM: a program
//! registry (`RpcProgram`), call dispatch with the RFC 5531 error replies,
//! the duplicate request cache, and the TCP (record marked) and UDP loops.

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::drc::{Drc, DrcKey, DrcLookup};
use super::msg::{AuthStat, CallError, CallHeader, Credential, ReplyStat, AUTH_NONE, RPC_VERSION};
use super::record::{read_record, write_record, RecordError};
use crate::xdr::{XdrError, XdrWriter};

/// Largest UDP datagram payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// Which transport a call came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with record marking.
    Tcp,
    /// One UDP datagram per message.
    Udp,
}

/// What a procedure knows about its call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Transaction id.
    pub xid: u32,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the call arrived on.
    pub local: SocketAddr,
    /// The transport.
    pub transport: Transport,
    /// The validated credential.
    pub cred: Credential,
    /// The whole call message, so arguments can be kept without copying
    /// (`share`).
    pub record: Bytes,
}

impl CallContext {
    /// `part` (a slice of this call's arguments) as shared bytes: no copy
    /// when it lies inside the call's record, a copy otherwise.
    pub fn share(&self, part: &[u8]) -> Bytes {
        let (base, len) = (self.record.as_ptr() as usize, self.record.len());
        let at = part.as_ptr() as usize;
        if at >= base && at.saturating_add(part.len()) <= base.saturating_add(len) {
            self.record.slice_ref(part)
        } else {
            Bytes::copy_from_slice(part)
        }
    }
}

/// A procedure's encoded results: `body`, then `tail` (bulk data, sent
/// from its own buffer without a copy) and `tail_pad` zero bytes.
#[derive(Debug, Clone, Default)]
pub struct ProcResults {
    /// Results up to the bulk data.
    pub body: Vec<u8>,
    /// Bulk data ending the results (READ data).
    pub tail: Bytes,
    /// XDR padding after the tail (0..=3).
    pub tail_pad: usize,
}

impl From<Vec<u8>> for ProcResults {
    fn from(body: Vec<u8>) -> ProcResults {
        ProcResults {
            body,
            tail: Bytes::new(),
            tail_pad: 0,
        }
    }
}

/// A call a procedure could not answer with results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProcError {
    /// PROC_UNAVAIL: no such procedure in this version.
    #[error("procedure unavailable")]
    ProcUnavail,
    /// GARBAGE_ARGS: the arguments did not decode.
    #[error("garbage arguments")]
    GarbageArgs,
    /// SYSTEM_ERR: the server failed.
    #[error("system error")]
    SystemErr,
    /// AUTH_ERROR: the credential is refused.
    #[error("authentication error {0:?}")]
    Auth(AuthStat),
}

impl From<XdrError> for ProcError {
    fn from(_: XdrError) -> ProcError {
        ProcError::GarbageArgs
    }
}

/// One RPC program (portmap, MOUNT, NFS, NLM ...) served by `RpcServer`.
#[async_trait]
pub trait RpcProgram: Send + Sync {
    /// Program number.
    fn program(&self) -> u32;
    /// Versions served (ascending); PROG_MISMATCH reports the lowest and highest.
    fn versions(&self) -> &[u32];
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// False for procedures whose repetition would differ (create, remove,
    /// rename ...): their replies go through the duplicate request cache.
    fn is_idempotent(&self, _vers: u32, _proc_: u32) -> bool {
        true
    }
    /// Executes a procedure, returning its XDR-encoded results.
    async fn call(
        &self,
        ctx: &CallContext,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError>;
    /// Like `call`, for programs whose results may end in bulk data sent
    /// without copying (NFS READ); what the server calls.
    async fn call_results(
        &self,
        ctx: &CallContext,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<ProcResults, ProcError> {
        self.call(ctx, vers, proc_, args)
            .await
            .map(ProcResults::from)
    }
}

/// An encoded reply: RPC header and procedure results, kept apart so the
/// results (up to a MiB of READ data) are not copied again.
#[derive(Debug, Clone, Default)]
pub struct RpcReply {
    /// xid, status and verifier.
    pub head: Vec<u8>,
    /// Procedure results (empty unless SUCCESS).
    pub body: ProcResults,
}

/// Zero bytes for XDR padding.
const PAD: [u8; 3] = [0; 3];

impl RpcReply {
    fn stat(xid: u32, stat: ReplyStat) -> RpcReply {
        let mut w = XdrWriter::with_capacity(32);
        stat.encode_header(xid, &mut w);
        RpcReply {
            head: w.into_bytes(),
            body: ProcResults::default(),
        }
    }

    /// The reply's parts, in order on the wire.
    pub fn parts(&self) -> [&[u8]; 4] {
        [
            &self.head,
            &self.body.body,
            &self.body.tail,
            &PAD[..self.body.tail_pad.min(3)],
        ]
    }

    /// Total length on the wire (without record mark).
    pub fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }

    /// True when empty (never for a real reply).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole reply in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for p in self.parts() {
            v.extend_from_slice(p);
        }
        v
    }
}

/// Limits of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest TCP record accepted (a bigger one closes the connection).
    pub max_record: usize,
    /// Calls executed at once per TCP connection (backpressure beyond).
    pub max_inflight_per_conn: usize,
    /// Calls executed at once from the UDP socket.
    pub max_inflight_udp: usize,
    /// Duplicate request cache: entries.
    pub drc_entries: usize,
    /// Duplicate request cache: reply bytes.
    pub drc_bytes: usize,
    /// Duplicate request cache: how long a reply is kept.
    pub drc_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_record: 1024 * 1024 + 64 * 1024,
            max_inflight_per_conn: 64,
            max_inflight_udp: 128,
            drc_entries: 4096,
            drc_bytes: 16 * 1024 * 1024,
            drc_ttl: Duration::from_secs(120),
        }
    }
}

/// A set of programs answering on any number of TCP listeners and UDP sockets.
pub struct RpcServer {
    programs: HashMap<u32, Arc<dyn RpcProgram>>,
    drc: Drc,
    cfg: ServerConfig,
}

impl RpcServer {
    /// A server with no programs yet.
    pub fn new(cfg: ServerConfig) -> RpcServer {
        RpcServer {
            programs: HashMap::new(),
            drc: Drc::new(cfg.drc_entries, cfg.drc_bytes, cfg.drc_ttl),
            cfg,
        }
    }

    /// Adds a program (replacing one with the same number).
    pub fn register(&mut self, prog: Arc<dyn RpcProgram>) {
        self.programs.insert(prog.program(), prog);
    }

    /// The duplicate request cache (for tests and stats).
    pub fn drc(&self) -> &Drc {
        &self.drc
    }

    /// Answers one message; `None` means send nothing (not a call, or a
    /// retransmission of a call still executing).
    pub async fn dispatch(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        msg: &[u8],
    ) -> Option<RpcReply> {
        self.dispatch_record(peer, local, transport, Bytes::copy_from_slice(msg))
            .await
    }

    /// `dispatch` of a message the server owns (procedures may keep parts
    /// of it, such as WRITE data, without copying).
    pub async fn dispatch_record(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        record: Bytes,
    ) -> Option<RpcReply> {
        let msg: &[u8] = &record;
        let (call, args) = match CallHeader::decode(msg) {
            Ok(c) => c,
            Err(CallError::NotACall) => {
                tracing::debug!(%peer, len = msg.len(), "rpc: dropped a message that is not a call");
                return None;
            }
            Err(CallError::RpcMismatch { xid }) => {
                tracing::debug!(%peer, xid, "rpc: wrong rpcvers");
                return Some(RpcReply::stat(
                    xid,
                    ReplyStat::RpcMismatch {
                        low: RPC_VERSION,
                        high: RPC_VERSION,
                    },
                ));
            }
            Err(CallError::BadAuth { xid }) => {
                tracing::debug!(%peer, xid, "rpc: undecodable credential");
                return Some(RpcReply::stat(xid, ReplyStat::AuthError(AuthStat::BadCred)));
            }
        };
        let xid = call.xid;
        let cred = match Credential::from_auth(&call.cred) {
            Ok(c) => c,
            Err(stat) => {
                tracing::debug!(%peer, xid, flavor = call.cred.flavor, "rpc: credential refused");
                return Some(RpcReply::stat(xid, ReplyStat::AuthError(stat)));
            }
        };
        if call.verf.flavor != AUTH_NONE || !call.verf.body.is_empty() {
            return Some(RpcReply::stat(xid, ReplyStat::AuthError(AuthStat::BadVerf)));
        }
        let Some(prog) = self.programs.get(&call.prog) else {
            tracing::debug!(%peer, xid, prog = call.prog, "rpc: program unavailable");
            return Some(RpcReply::stat(xid, ReplyStat::ProgUnavail));
        };
        let versions = prog.versions();
        if !versions.contains(&call.vers) {
            let low = versions.first().copied().unwrap_or(0);
            let high = versions.last().copied().unwrap_or(0);
            return Some(RpcReply::stat(xid, ReplyStat::ProgMismatch { low, high }));
        }
        let key = (!prog.is_idempotent(call.vers, call.proc_))
            .then(|| DrcKey::new(xid, peer, call.prog, call.vers, call.proc_, args));
        if let Some(key) = &key {
            match self.drc.begin(key) {
                DrcLookup::New => {}
                DrcLookup::InProgress => {
                    tracing::debug!(%peer, xid, "rpc: retransmission of a call in progress dropped");
                    return None;
                }
                DrcLookup::Replay(reply) => {
                    tracing::debug!(%peer, xid, "rpc: retransmission answered from the cache");
                    return Some(RpcReply {
                        head: reply.to_vec(),
                        body: ProcResults::default(),
                    });
                }
            }
        }
        let ctx = CallContext {
            xid,
            peer,
            local,
            transport,
            cred,
            record: record.clone(),
        };
        let reply = match prog.call_results(&ctx, call.vers, call.proc_, args).await {
            Ok(body) => {
                let mut r = RpcReply::stat(xid, ReplyStat::Success);
                r.body = body;
                r
            }
            Err(e) => {
                tracing::debug!(%peer, xid, prog = prog.name(), vers = call.vers, proc_ = call.proc_, error = %e, "rpc: call failed");
                RpcReply::stat(
                    xid,
                    match e {
                        ProcError::ProcUnavail => ReplyStat::ProcUnavail,
                        ProcError::GarbageArgs => ReplyStat::GarbageArgs,
                        ProcError::SystemErr => ReplyStat::SystemErr,
                        ProcError::Auth(s) => ReplyStat::AuthError(s),
                    },
                )
            }
        };
        if let Some(key) = &key {
            self.drc.finish(key, &reply.to_vec());
        }
        Some(reply)
    }

    /// Serves TCP connections from `listener` until the future is dropped
    /// (which also closes every connection it accepted).
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            conns.spawn(self.clone().serve_conn(stream, peer));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "rpc: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }

    async fn serve_conn(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let (mut rd, wr) = stream.into_split();
        let inflight = self.cfg.max_inflight_per_conn.max(1);
        let (tx, mut rx) = mpsc::channel::<RpcReply>(inflight);
        let writer = tokio::spawn(async move {
            let mut wr = BufWriter::with_capacity(64 * 1024, wr);
            while let Some(r) = rx.recv().await {
                if write_record(&mut wr, &r.parts()).await.is_err() {
                    return;
                }
                if rx.is_empty() && wr.flush().await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let sem = Arc::new(Semaphore::new(inflight));
        let mut calls = JoinSet::new();
        loop {
            match read_record(&mut rd, self.cfg.max_record).await {
                Ok(Some(msg)) => {
                    let Ok(permit) = sem.clone().acquire_owned().await else {
                        break;
                    };
                    let me = self.clone();
                    let tx = tx.clone();
                    calls.spawn(async move {
                        if let Some(r) = me.dispatch_record(peer, local, Transport::Tcp, msg).await
                        {
                            let _ = tx.send(r).await;
                        }
                        drop(permit);
                    });
                    while calls.try_join_next().is_some() {}
                }
                Ok(None) => break,
                Err(e @ RecordError::TooLarge { .. })
                | Err(e @ RecordError::TooManyFragments(_)) => {
                    tracing::warn!(%peer, error = %e, "rpc: closing connection");
                    break;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "rpc: connection ended");
                    break;
                }
            }
        }
        // Let the calls already read finish and their replies go out.
        while calls.join_next().await.is_some() {}
        drop(tx);
        let _ = writer.await;
    }

    /// Serves datagrams on `socket` until the future is dropped.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) -> std::io::Result<()> {
        let socket = Arc::new(socket);
        let local = socket.local_addr()?;
        let sem = Arc::new(Semaphore::new(self.cfg.max_inflight_udp.max(1)));
        let mut calls = JoinSet::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep serving.
                    tracing::debug!(error = %e, "rpc: udp receive error");
                    continue;
                }
            };
            let msg = Bytes::copy_from_slice(&buf[..n]);
            let Ok(permit) = sem.clone().acquire_owned().await else {
                continue;
            };
            let me = self.clone();
            let socket = socket.clone();
            calls.spawn(async move {
                if let Some(r) = me.dispatch_record(peer, local, Transport::Udp, msg).await {
                    let out = if r.len() > MAX_UDP_PAYLOAD {
                        tracing::warn!(%peer, len = r.len(), "rpc: reply too large for udp");
                        let xid = u32::from_be_bytes([r.head[0], r.head[1], r.head[2], r.head[3]]);
                        RpcReply::stat(xid, ReplyStat::SystemErr).to_vec()
                    } else {
                        r.to_vec()
                    };
                    let _ = socket.send_to(&out, peer).await;
                }
                drop(permit);
            });
            while calls.try_join_next().is_some() {}
        }
    }
}

/// Binds `addr` on TCP and UDP and serves `server` on both until dropped.
pub async fn serve_tcp_udp(
    server: Arc<RpcServer>,
    addr: SocketAddr,
) -> std::io::Result<ServeHandle> {
    let tcp = bind_tcp(addr)?;
    let udp = UdpSocket::bind(tcp.local_addr()?).await?;
    let local = tcp.local_addr()?;
    let mut tasks = JoinSet::new();
    tasks.spawn(server.clone().serve_tcp(tcp));
    tasks.spawn(server.serve_udp(udp));
    Ok(ServeHandle { local, tasks })
}

/// A TCP listener with SO_REUSEADDR (restarts do not wait for TIME_WAIT).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// The TCP and UDP loops of one address; dropping it stops both.
pub struct ServeHandle {
    local: SocketAddr,
    tasks: JoinSet<std::io::Result<()>>,
}

impl ServeHandle {
    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits until a loop fails (they never end otherwise).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(std::io::Error::other(e)),
            None => Ok(()),
        }
    }
}
