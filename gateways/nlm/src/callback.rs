//! Calls from the gateway to a client host: the GRANTED callback to its
//! lockd, the `_RES` replies of the asynchronous `_MSG` procedures, and
//! SM_NOTIFY to its statd after a restart. Each finds the program through
//! the client's portmapper and goes over UDP from the address the client
//! called (a Linux client accepts GRANTED only from its server's address),
//! from a reserved port when we may bind one.

use kiln_portmap::pmap::{IPPROTO_UDP, PMAPPROC_GETPORT, PMAP_PROG, PMAP_VERS};
use kiln_portmap::rpc::client::encode_call;
use kiln_portmap::rpc::msg::ReplyStat;
use kiln_portmap::{XdrError, XdrReader, XdrWriter};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

use crate::locks::Peer;
use crate::types::*;

/// How long one callback waits for its reply (retransmitting each second).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A callback that got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The reply did not decode.
    #[error("bad reply: {0}")]
    Xdr(#[from] XdrError),
    /// The client answered with an RPC error.
    #[error("rpc error: {0:?}")]
    Rpc(ReplyStat),
    /// The client's portmapper does not know the program.
    #[error("program {0} v{1} not registered with the client's portmapper")]
    NotRegistered(u32, u32),
    /// No reply in time.
    #[error("no reply from {0}")]
    Timeout(SocketAddr),
}

/// A UDP socket on `local`, on a reserved port if possible (as a kernel
/// lockd calls from one), else any port.
async fn bind_from(local: IpAddr) -> std::io::Result<UdpSocket> {
    let start = 600 + (rand::random::<u16>() % 400);
    for i in 0..16u16 {
        let port = 600 + (start - 600 + i * 23) % 424;
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(local, port)).await {
            return Ok(s);
        }
    }
    UdpSocket::bind(SocketAddr::new(local, 0)).await
}

/// One call over UDP from `local`; the results of a SUCCESS reply.
pub async fn udp_call(
    local: IpAddr,
    dest: SocketAddr,
    prog: u32,
    vers: u32,
    proc_: u32,
    args: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallbackError> {
    let sock = match bind_from(local).await {
        Ok(s) => s,
        // The address went away: let the kernel pick one.
        Err(_) => {
            bind_from(if local.is_ipv4() {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            })
            .await?
        }
    };
    sock.connect(dest).await?;
    let xid = rand::random::<u32>();
    let msg = encode_call(xid, prog, vers, proc_, None, args);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        sock.send(&msg).await?;
        let wait = Duration::from_secs(1)
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let Ok((rxid, stat, results)) = ReplyStat::decode_reply(&buf[..n]) else {
                    continue;
                };
                if rxid != xid {
                    continue;
                }
                return match stat {
                    ReplyStat::Success => Ok(results.to_vec()),
                    other => Err(CallbackError::Rpc(other)),
                };
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(CallbackError::Timeout(dest))
            }
            Err(_) => {}
        }
    }
}

/// The UDP port of `prog`/`vers` on `peer.client`, from its portmapper
/// (on `pmap_port`: 111 but in tests).
pub async fn getport(
    peer: &Peer,
    pmap_port: u16,
    prog: u32,
    vers: u32,
) -> Result<u16, CallbackError> {
    let mut w = XdrWriter::new();
    w.put_u32(prog);
    w.put_u32(vers);
    w.put_u32(IPPROTO_UDP);
    w.put_u32(0);
    let r = udp_call(
        peer.local,
        SocketAddr::new(peer.client, pmap_port),
        PMAP_PROG,
        PMAP_VERS,
        PMAPPROC_GETPORT,
        w.as_bytes(),
        CALL_TIMEOUT,
    )
    .await?;
    let port = XdrReader::new(&r).get_u32()?;
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(CallbackError::NotRegistered(prog, vers)),
    }
}

/// Calls procedure `proc_` of the client's NLM v4.
async fn call_nlm(
    peer: &Peer,
    pmap_port: u16,
    proc_: u32,
    args: &[u8],
) -> Result<Vec<u8>, CallbackError> {
    let port = getport(peer, pmap_port, NLM_PROGRAM, NLM_V4).await?;
    udp_call(
        peer.local,
        SocketAddr::new(peer.client, port),
        NLM_PROGRAM,
        NLM_V4,
        proc_,
        args,
        CALL_TIMEOUT,
    )
    .await
}

/// NLM4_GRANTED to the client's lockd: its status (GRANTED if it still
/// waited for the lock).
pub async fn granted(
    peer: &Peer,
    pmap_port: u16,
    args: &TestArgs,
) -> Result<Nlm4Stat, CallbackError> {
    let mut w = XdrWriter::new();
    args.encode(&mut w);
    let r = call_nlm(peer, pmap_port, proc4::GRANTED, w.as_bytes()).await?;
    Ok(Res::decode(&mut XdrReader::new(&r))?.stat)
}

/// Sends the result of a `_MSG` call as the matching `_RES` call.
pub async fn send_res(
    peer: &Peer,
    pmap_port: u16,
    proc_: u32,
    body: &[u8],
) -> Result<(), CallbackError> {
    call_nlm(peer, pmap_port, proc_, body).await.map(|_| ())
}

/// SM_NOTIFY to the client's statd: host `mon_name` (this gateway, as the
/// client named it) restarted and is now in NSM state `state`.
pub async fn sm_notify(
    peer: &Peer,
    pmap_port: u16,
    mon_name: &[u8],
    state: i32,
) -> Result<(), CallbackError> {
    let port = getport(peer, pmap_port, NSM_PROGRAM, NSM_V1).await?;
    let mut w = XdrWriter::new();
    StatChge {
        mon_name: mon_name.to_vec(),
        state,
    }
    .encode(&mut w);
    udp_call(
        peer.local,
        SocketAddr::new(peer.client, port),
        NSM_PROGRAM,
        NSM_V1,
        nsmproc::NOTIFY,
        w.as_bytes(),
        CALL_TIMEOUT,
    )
    .await
    .map(|_| ())
}
