//! The brick's network side: the listener, and one thread per client
//! connection (handshake, then pipelined requests: quick metadata requests
//! answered on that thread as they arrive, bulk data, fsync and listings on
//! the worker pool, lock waits as tasks, so replies come in any order; each
//! reply is written by the thread that produced it, bulk data without
//! copying), and the cleanup of fds and locks when a client goes away.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

use super::ops::{self, Conn, Route, Shared};
use super::splice::{self, Spliced};
use super::wire::{encode, FrameReader, ReplySink, Slots};
use super::BrickConfig;
use crate::error::{FsError, FsResult};
use crate::proto::frame::encode_meta;
use crate::proto::{FrameKind, Reply, ReplyResult, Request, PROTOCOL_VERSION};

/// Requests of one connection on the worker pool at once (more wait in the
/// socket).
const IN_FLIGHT: usize = 256;
/// Replies (segments) held back for one write at most.
const CORK_MAX: usize = 64;
/// How long a new connection may take to send its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The live connections' sockets, so that stopping the brick (dropping
/// `accept_loop`) closes them all, as a killed brick process would.
#[derive(Default)]
struct Live(
    Mutex<HashMap<u64, Arc<ReplySink>>>,
    Mutex<HashMap<u64, Arc<str>>>,
);

impl Live {
    /// Connection `id` belongs to `client`: any other connection of the
    /// same client is a dead one this brick did not notice (the client
    /// reconnects only after giving up on the old one, e.g. across a
    /// network cut), so it is closed, and its locks go with it.
    fn adopt(&self, id: u64, client: &Arc<str>) {
        let stale: Vec<u64> = {
            let mut owners = self.1.lock();
            owners.retain(|k, _| self.0.lock().contains_key(k));
            let stale = owners
                .iter()
                .filter(|(k, c)| **k != id && *c == client)
                .map(|(k, _)| *k)
                .collect();
            owners.insert(id, client.clone());
            stale
        };
        for k in stale {
            if let Some(s) = self.0.lock().get(&k) {
                tracing::info!(client = %client, conn = k, new = id, "closing an older connection of a reconnected client");
                s.shutdown();
            }
        }
    }
}

/// Shuts every live connection down when dropped.
struct CloseAll(Arc<Live>);

impl Drop for CloseAll {
    fn drop(&mut self) {
        for (_, s) in self.0 .0.lock().drain() {
            s.shutdown();
        }
    }
}

/// Accepts connections forever; each is served by its own thread.
pub(crate) async fn accept_loop(
    config: Arc<BrickConfig>,
    shared: Arc<Shared>,
    listener: TcpListener,
) {
    let next_conn = AtomicU64::new(1);
    let live = Arc::new(Live::default());
    let _close = CloseAll(live.clone());
    let rt = tokio::runtime::Handle::current();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = next_conn.fetch_add(1, Ordering::Relaxed);
        let stream = match stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            s.set_nodelay(true)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot set up connection: {e}");
                continue;
            }
        };
        let sink = match stream.try_clone() {
            Ok(w) => Arc::new(ReplySink::new(w)),
            Err(e) => {
                tracing::warn!(%peer, "cannot set up connection: {e}");
                continue;
            }
        };
        live.0.lock().insert(id, sink.clone());
        let (cfg, sh, lv, rt) = (config.clone(), shared.clone(), live.clone(), rt.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("kiln-conn-{id}"))
            .spawn(move || {
                let reader = FrameReader::new(stream);
                connection(&cfg, &sh, reader, &sink, peer, id, &rt, &lv);
                sink.shutdown();
                lv.0.lock().remove(&id);
                lv.1.lock().remove(&id);
            });
        if let Err(e) = spawned {
            tracing::warn!(%peer, "cannot start a connection thread: {e}");
            if let Some(s) = live.0.lock().remove(&id) {
                s.shutdown();
            }
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

/// True if `client` is the peer address standing in for an empty client id
/// (such connections are never taken as reconnections).
fn client_id_is_peer(client: &str, peer: &SocketAddr) -> bool {
    client == peer.to_string()
}

/// Serves one client connection on this thread until it ends.
#[allow(clippy::too_many_arguments)]
fn connection(
    config: &BrickConfig,
    shared: &Arc<Shared>,
    mut reader: FrameReader,
    sink: &Arc<ReplySink>,
    peer: SocketAddr,
    id: u64,
    rt: &tokio::runtime::Handle,
    live: &Live,
) {
    // Handshake.
    let _ = reader.set_timeout(Some(HANDSHAKE_TIMEOUT));
    let first = match reader.next() {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            tracing::warn!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}, closing");
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, "bad frame before handshake, closing: {e}");
            return;
        }
    };
    let _ = reader.set_timeout(None);
    let hs = if first.kind != FrameKind::Request {
        Err(FsError::Protocol("expected a request frame".into()))
    } else {
        first
            .decode_request()
            .and_then(|r| check_handshake(config, r))
    };
    let client_id = match hs {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, "handshake refused: {e}");
            send(sink, first.xid, Err(e));
            return;
        }
    };
    let welcome = Reply::Welcome {
        volume_id: config.volume_id.clone(),
    };
    send(sink, first.xid, Ok((welcome, Bytes::new())));
    let client: Arc<str> = if client_id.is_empty() {
        Arc::from(peer.to_string())
    } else {
        Arc::from(client_id)
    };
    tracing::info!(%peer, client = %client, conn = id, "client connected");
    if !client_id_is_peer(&client, &peer) {
        live.adopt(id, &client);
    }
    let conn = Arc::new(Conn::new(id, client));
    let slots = Arc::new(Slots::new(IN_FLIGHT));
    let mut corked: Vec<Bytes> = Vec::new();

    loop {
        let frame = match reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::ConnectionReset {
                    tracing::warn!(%peer, conn = id, "bad frame or read error, closing connection: {e}");
                }
                break;
            }
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
        // Fds are bound in arrival order, wherever the request then runs.
        let bound = ops::bind(&conn, &req);
        let xid = frame.xid;
        match ops::route(&req, frame.data.len()) {
            Route::Here => {
                let r = ops::run_blocking(shared, &conn, req, frame.data, bound);
                encode_reply(&mut corked, xid, r);
            }
            Route::Pool => {
                slots.take();
                let (sh, c, sk, sl) = (shared.clone(), conn.clone(), sink.clone(), slots.clone());
                let data = frame.data;
                rt.spawn_blocking(move || {
                    let r = match ops::read_by_splice(&req, &bound) {
                        Some((fd, offset, size)) => {
                            match splice::send_read(&sk, xid, fd, offset, size) {
                                Spliced::Sent => None,
                                Spliced::Declined => {
                                    Some(ops::run_blocking(&sh, &c, req, data, bound))
                                }
                                Spliced::Failed(e) => Some(Err(e)),
                                Spliced::Broken(e) => {
                                    tracing::debug!(
                                        xid,
                                        "reply write failed, closing connection: {e}"
                                    );
                                    sk.shutdown();
                                    None
                                }
                            }
                        }
                        None => Some(ops::run_blocking(&sh, &c, req, data, bound)),
                    };
                    if let Some(r) = r {
                        send(&sk, xid, r);
                    }
                    sl.give();
                });
            }
            Route::Wait => {
                // Lock waits may last long: they hold no slot and no thread.
                let (sh, c, sk) = (shared.clone(), conn.clone(), sink.clone());
                rt.spawn(async move {
                    let r = ops::run_wait(&sh, &c, req, bound).await;
                    // Writing may block while the client is not reading.
                    let _ = tokio::task::spawn_blocking(move || send(&sk, xid, r)).await;
                });
            }
        }
        // Replies made here go out together, once no further request is
        // already waiting in the buffer (one write for a pipelined batch).
        if !corked.is_empty() && (!reader.has_frame() || corked.len() >= CORK_MAX) {
            if let Err(e) = sink.write_segments(&corked) {
                tracing::debug!(%peer, conn = id, "reply write failed, closing connection: {e}");
                break;
            }
            corked.clear();
        }
    }

    // Disconnect: no more locks for this connection, drop its waiters and
    // locks; let pool requests finish (their replies may still go out to a
    // half-closed client), then close its fds.
    conn.closed.store(true, Ordering::Release);
    shared.locks.release_conn(id);
    shared.ilocks.release_conn(id);
    slots.wait_idle();
    let fds = conn.take_all();
    let n = fds.len();
    drop(fds);
    tracing::info!(%peer, conn = id, open_fds = n, "client disconnected");
}

/// Encodes and sends one reply; a failed write shuts the connection down
/// (its reader then ends and cleans up).
fn send(sink: &ReplySink, xid: u64, res: FsResult<(Reply, Bytes)>) {
    let mut segs = Vec::with_capacity(2);
    encode_reply(&mut segs, xid, res);
    if let Err(e) = sink.write_segments(&segs) {
        tracing::debug!(xid, "reply write failed, closing connection: {e}");
        sink.shutdown();
    }
}

/// Appends one encoded reply to `segs` (see `wire::encode`).
fn encode_reply(segs: &mut Vec<Bytes>, xid: u64, res: FsResult<(Reply, Bytes)>) {
    let (rep, data) = match res {
        Ok((r, d)) => (ReplyResult::Ok(r), d),
        Err(e) => (ReplyResult::Err(e), Bytes::new()),
    };
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
    if let Err(e) = encode(segs, FrameKind::Reply, xid, &meta, &data) {
        tracing::error!(xid, "reply dropped: {e}");
        let fail = ReplyResult::Err(FsError::Io(format!("reply dropped: {e}")));
        if let Ok(m) = encode_meta(&fail) {
            let _ = encode(segs, FrameKind::Reply, xid, &m, &Bytes::new());
        }
    }
}
