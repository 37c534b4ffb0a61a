//! A small ONC-RPC client over TCP or UDP: used to register with an existing
//! rpcbind and by tests that speak raw RPC to our servers.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::msg::{AuthSys, CallHeader, OpaqueAuth, ReplyStat, AUTH_SYS, RPC_VERSION};
use super::record::{read_record, write_record, RecordError};
use crate::xdr::{XdrError, XdrWriter};

/// A call that got no results.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Record marking error.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// The reply did not decode.
    #[error("bad reply: {0}")]
    Xdr(#[from] XdrError),
    /// The server answered with an error status.
    #[error("rpc error: {0:?}")]
    Rpc(ReplyStat),
    /// The connection closed before a reply.
    #[error("connection closed")]
    Closed,
    /// No reply in time.
    #[error("timed out")]
    Timeout,
}

/// Encodes a whole call message.
pub fn encode_call(
    xid: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: Option<&AuthSys>,
    args: &[u8],
) -> Vec<u8> {
    let body = cred.map(|c| c.encode()).unwrap_or_default();
    let cred = match cred {
        Some(_) => OpaqueAuth {
            flavor: AUTH_SYS,
            body: &body,
        },
        None => OpaqueAuth::NONE,
    };
    let mut w = XdrWriter::with_capacity(64 + args.len());
    CallHeader {
        xid,
        rpcvers: RPC_VERSION,
        prog,
        vers,
        proc_,
        cred,
        verf: OpaqueAuth::NONE,
    }
    .encode(&mut w);
    w.put_raw(args);
    w.into_bytes()
}

/// One TCP connection issuing calls one at a time.
pub struct RpcClient {
    stream: TcpStream,
    xid: u32,
    cred: Option<AuthSys>,
    timeout: Duration,
}

impl RpcClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RpcClient> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        Ok(RpcClient {
            stream,
            xid: rand_xid(),
            cred: None,
            timeout: Duration::from_secs(10),
        })
    }

    /// Sends AUTH_SYS with these ids on later calls (AUTH_NONE otherwise).
    pub fn set_auth_sys(&mut self, uid: u32, gid: u32, gids: Vec<u32>) {
        self.cred = Some(AuthSys {
            stamp: 0,
            machinename: b"kiln".to_vec(),
            uid,
            gid,
            gids,
        });
    }

    /// Calls a procedure; returns its results on SUCCESS.
    pub async fn call(
        &mut self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        self.xid = self.xid.wrapping_add(1);
        let msg = encode_call(self.xid, prog, vers, proc_, self.cred.as_ref(), args);
        let reply = self.call_raw(&msg).await?;
        let (_, stat, results) = ReplyStat::decode_reply(&reply)?;
        match stat {
            ReplyStat::Success => Ok(results.to_vec()),
            other => Err(ClientError::Rpc(other)),
        }
    }

    /// Sends raw bytes as one record and returns the next reply record whole.
    pub async fn call_raw(&mut self, msg: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.send_raw_record(msg).await?;
        self.read_reply().await
    }

    /// Sends raw bytes as one record.
    pub async fn send_raw_record(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        write_record(&mut self.stream, &[msg]).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes raw bytes with no record mark (to test malformed framing).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next reply record.
    pub async fn read_reply(&mut self) -> Result<Vec<u8>, ClientError> {
        match tokio::time::timeout(self.timeout, read_record(&mut self.stream, 64 << 20))
            .await
            .map(|r| r.map(|o| o.map(Vec::from)))
        {
            Err(_) => Err(ClientError::Timeout),
            Ok(r) => r?.ok_or(ClientError::Closed),
        }
    }
}

/// One call over UDP with retransmissions until `timeout`.
pub async fn udp_call(
    addr: SocketAddr,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: Option<&AuthSys>,
    args: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let xid = rand_xid();
    let msg = encode_call(xid, prog, vers, proc_, cred, args);
    let reply = udp_call_raw(addr, &msg, timeout).await?;
    let (rxid, stat, results) = ReplyStat::decode_reply(&reply)?;
    if rxid != xid {
        return Err(ClientError::Closed);
    }
    match stat {
        ReplyStat::Success => Ok(results.to_vec()),
        other => Err(ClientError::Rpc(other)),
    }
}

/// Sends one datagram (retransmitting each second) and returns the first reply.
pub async fn udp_call_raw(
    addr: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        sock.send(msg).await?;
        let wait = Duration::from_secs(1)
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return Ok(buf[..n].to_vec()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(ClientError::Timeout),
            Err(_) => {}
        }
    }
}

fn rand_xid() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(1);
    t ^ std::process::id().rotate_left(8)
}
