//! Accepting management connections: TCP (port 24007) and the local
//! abstract unix socket `@kiln-mgmt` (root only, checked with SO_PEERCRED),
//! and the per-connection loop: `Hello`, then one request at a time. Bad
//! input ends the connection with an error reply; it never ends the daemon.

use bytes::Bytes;
use kiln_core::proto::frame::decode_meta;
use kiln_core::proto::FrameKind;
use std::net::{IpAddr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::sync::Arc;
use std::time::Duration;

use super::dispatch::{self, Origin, Session};
use super::Daemon;
use crate::auth::nonce;
use crate::client::LOCAL_SOCKET;
use crate::proto::{MgmtReply, MgmtRequest, MGMT_PROTOCOL_VERSION};
use crate::wire::{Conn, Stream};

/// An unauthenticated connection that stays silent this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Accepts TCP connections until the task is aborted.
pub(super) async fn serve_tcp(daemon: Arc<Daemon>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let d = daemon.clone();
                tokio::spawn(async move {
                    serve_conn(
                        d,
                        Box::new(stream),
                        peer.to_string(),
                        Origin::Tcp(canonical_ip(peer)),
                    )
                    .await
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn canonical_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Binds the abstract socket `@kiln-mgmt`.
pub(super) fn bind_local() -> std::io::Result<tokio::net::UnixListener> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(LOCAL_SOCKET)?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    l.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(l)
}

/// Accepts local CLI connections from root (or this daemon's own user).
pub(super) async fn serve_local(daemon: Arc<Daemon>, listener: tokio::net::UnixListener) {
    // SAFETY: geteuid has no preconditions.
    let my_uid = unsafe { libc::geteuid() };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if uid != Some(0) && uid != Some(my_uid) {
                    tracing::warn!(?uid, "refused a local CLI connection from a non-root user");
                    let mut conn = Conn::new(Box::new(stream), "@kiln-mgmt".into());
                    let _ = conn
                        .send_reply(
                            0,
                            &MgmtReply::Error("permission denied: the kiln CLI needs root".into()),
                            Bytes::new(),
                        )
                        .await;
                    continue;
                }
                let d = daemon.clone();
                tokio::spawn(async move {
                    serve_conn(d, Box::new(stream), "@kiln-mgmt".into(), Origin::Local).await
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "local accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(daemon: Arc<Daemon>, stream: Box<dyn Stream>, addr: String, origin: Origin) {
    let mut conn = Conn::new(stream, addr.clone());
    let mut session = Session {
        origin,
        nonce: nonce(),
        peer_uuid: None,
        auth_epoch: 0,
    };
    let hello = MgmtReply::Hello {
        version: MGMT_PROTOCOL_VERSION,
        nonce: session.nonce.clone(),
        uuid: daemon.id.uuid.clone(),
    };
    if conn.send_reply(0, &hello, Bytes::new()).await.is_err() {
        return;
    }
    let mut stopping = daemon.stopping.subscribe();
    loop {
        let idle = if session.peer_uuid.is_some() {
            Duration::from_secs(365 * 86400)
        } else {
            IDLE_TIMEOUT
        };
        let next = tokio::select! {
            r = tokio::time::timeout(idle, conn.recv_frame()) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let frame = match next {
            Err(_) => {
                tracing::debug!(%addr, "closing an idle connection");
                return;
            }
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "connection ended");
                return;
            }
        };
        if frame.kind != FrameKind::Request {
            let _ = conn
                .send_reply(
                    frame.xid,
                    &MgmtReply::Error("expected a request frame".into()),
                    Bytes::new(),
                )
                .await;
            return;
        }
        let req: MgmtRequest = match decode_meta(&frame.meta) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "malformed management request");
                let _ = conn
                    .send_reply(
                        frame.xid,
                        &MgmtReply::Error(format!("malformed request: {e}")),
                        Bytes::new(),
                    )
                    .await;
                return;
            }
        };
        // Authenticated with a secret this server no longer holds (it left or
        // joined a pool): hang up without an answer, so a pooled connection
        // on the other side reconnects and authenticates afresh.
        if session.peer_uuid.is_some()
            && session.auth_epoch
                != daemon
                    .secret_epoch
                    .load(std::sync::atomic::Ordering::SeqCst)
        {
            tracing::info!(%addr, "closing a connection authenticated with a previous pool secret");
            return;
        }
        let (reply, data, close) = dispatch::handle(&daemon, &mut session, req, frame.data).await;
        if conn.send_reply(frame.xid, &reply, data).await.is_err() || close {
            return;
        }
    }
}
