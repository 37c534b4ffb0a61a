//! The brick's network side: the listener, one task per client connection
//! (handshake, then pipelined requests handled concurrently and answered in
//! any order), a writer task per connection that sends bulk data without
//! copying it, and the cleanup of fds and locks when a client goes away.

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;

use super::ops::{self, Conn, Shared};
use super::BrickConfig;
use crate::error::FsError;
use crate::proto::frame::encode_meta;
use crate::proto::{
    FrameCodec, FrameKind, Reply, ReplyResult, Request, MAX_FRAME, PROTOCOL_VERSION,
};

/// Requests of one connection handled at once (more wait in the socket).
const IN_FLIGHT: usize = 256;
/// Replies queued for the writer of one connection.
const REPLY_QUEUE: usize = 1024;
/// How long a new connection may take to send its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Data at least this large is written straight from its buffer.
const DIRECT_WRITE: usize = 32 * 1024;

/// A reply ready to send.
struct Out {
    xid: u64,
    meta: Bytes,
    data: Bytes,
}

/// Accepts connections forever.
pub(crate) async fn accept_loop(
    config: Arc<BrickConfig>,
    shared: Arc<Shared>,
    listener: TcpListener,
) {
    let next_conn = AtomicU64::new(1);
    // Connections belong to this future: dropping it (an aborted brick
    // task in tests) closes them all, as a killed brick process would.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = next_conn.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection(config.clone(), shared.clone(), stream, peer, id));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Checks a handshake; returns the client id on success.
fn check_handshake(config: &BrickConfig, req: Request) -> Result<String, FsError> {
    let Request::Handshake {
        version,
        volume,
        brick,
        client_id,
    } = req
    else {
        return Err(FsError::Protocol(format!(
            "expected a handshake first, got {}",
            req.op_name()
        )));
    };
    if version != PROTOCOL_VERSION {
        return Err(FsError::Protocol(format!(
            "protocol version {version} not supported (this brick speaks {PROTOCOL_VERSION})"
        )));
    }
    if volume != config.volume {
        return Err(FsError::Protocol(format!(
            "this brick serves volume {}, not {volume}",
            config.volume
        )));
    }
    if brick != config.label {
        return Err(FsError::Protocol(format!(
            "this is brick {}, not {brick}",
            config.label
        )));
    }
    Ok(client_id)
}

/// One client connection: its read side and its reply writer run in this
/// one task, so dropping it (brick shutdown) closes the socket at once.
async fn connection(
    config: Arc<BrickConfig>,
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Out>(REPLY_QUEUE);
    // The writer ends once the read side and every in-flight request have
    // dropped their senders (after the last reply).
    tokio::join!(
        read_side(config, shared, r, tx, peer, id),
        write_loop(w, rx, peer)
    );
}

async fn read_side(
    config: Arc<BrickConfig>,
    shared: Arc<Shared>,
    r: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<Out>,
    peer: SocketAddr,
    id: u64,
) {
    let mut reader = FramedRead::with_capacity(r, FrameCodec, 256 * 1024);

    // Handshake.
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
        Ok(Some(Ok(f))) => f,
        Ok(Some(Err(e))) => {
            tracing::warn!(%peer, "bad frame before handshake, closing: {e}");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::warn!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}, closing");
            return;
        }
    };
    let hs = if first.kind != FrameKind::Request {
        Err(FsError::Protocol("expected a request frame".into()))
    } else {
        first
            .decode_request()
            .and_then(|r| check_handshake(&config, r))
    };
    let client_id = match hs {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, "handshake refused: {e}");
            send(&tx, first.xid, Err(e), Bytes::new()).await;
            return;
        }
    };
    let welcome = Reply::Welcome {
        volume_id: config.volume_id.clone(),
    };
    send(&tx, first.xid, Ok(welcome), Bytes::new()).await;
    let client: Arc<str> = if client_id.is_empty() {
        Arc::from(peer.to_string())
    } else {
        Arc::from(client_id)
    };
    tracing::info!(%peer, client = %client, conn = id, "client connected");
    let conn = Arc::new(Conn::new(id, client));
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));

    loop {
        let frame = match reader.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::warn!(%peer, conn = id, "bad frame, closing connection: {e}");
                break;
            }
            None => break,
        };
        if frame.kind != FrameKind::Request {
            tracing::warn!(%peer, conn = id, "reply frame from a client, closing connection");
            break;
        }
        let req = match frame.decode_request() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, conn = id, xid = frame.xid, "undecodable request, closing connection: {e}");
                break;
            }
        };
        // Lock waits may last long: they do not count against the limit.
        let permit = if matches!(
            req,
            Request::Lk { .. } | Request::Inodelk { .. } | Request::Entrylk { .. }
        ) {
            None
        } else {
            match limit.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => break,
            }
        };
        let bound = ops::bind(&conn, &req);
        let (sh, c, tx) = (shared.clone(), conn.clone(), tx.clone());
        let xid = frame.xid;
        let data = frame.data;
        tokio::spawn(async move {
            let (rep, out) = ops::dispatch(&sh, &c, req, data, bound).await;
            send(&tx, xid, rep, out).await;
            drop(permit);
        });
    }

    // Disconnect: no more locks for this connection, drop its waiters and
    // locks, close its fds.
    conn.closed.store(true, Ordering::Release);
    shared.locks.release_conn(id);
    shared.ilocks.release_conn(id);
    let fds = conn.take_all();
    let n = fds.len();
    // Closing files (and retiring unlinked ones) is disk work.
    tokio::task::spawn_blocking(move || drop(fds));
    tracing::info!(%peer, conn = id, open_fds = n, "client disconnected");
    drop(reader);
}

async fn send(tx: &mpsc::Sender<Out>, xid: u64, rep: ReplyResult, data: Bytes) {
    let meta = match encode_meta(&rep) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(xid, "cannot encode reply: {e}");
            match encode_meta(&ReplyResult::Err(FsError::Io(
                "reply encoding failed".into(),
            ))) {
                Ok(m) => m,
                Err(_) => return,
            }
        }
    };
    let _ = tx.send(Out { xid, meta, data }).await;
}

/// Appends a frame header (and the meta) to `buf`.
fn put_header(buf: &mut BytesMut, o: &Out) {
    let len = 1 + 8 + 4 + o.meta.len() + o.data.len();
    buf.reserve(4 + len - o.data.len());
    buf.put_u32(len as u32);
    buf.put_u8(1); // reply
    buf.put_u64(o.xid);
    buf.put_u32(o.meta.len() as u32);
    buf.extend_from_slice(&o.meta);
}

/// Sends replies in the wire format of `FrameCodec`: small ones are batched
/// into one buffer, large data sections are written from their own buffer.
async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<Out>, peer: SocketAddr) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(o) = next.take() {
            if 1 + 8 + 4 + o.meta.len() + o.data.len() > MAX_FRAME {
                tracing::error!(%peer, xid = o.xid, "reply exceeds the frame limit; dropped");
            } else {
                put_header(&mut buf, &o);
                if o.data.len() >= DIRECT_WRITE {
                    if w.write_all(&buf).await.is_err() || w.write_all(&o.data).await.is_err() {
                        return;
                    }
                    buf.clear();
                } else {
                    buf.extend_from_slice(&o.data);
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if w.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    }
    let _ = w.shutdown().await;
}
