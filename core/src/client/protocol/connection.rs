//! One live TCP connection to a brick: requests written by their callers
//! (a flusher task finishes what a full socket did not take), a reader task matching replies to waiting calls by xid, and a pinger that
//! declares the brick dead after `network.ping-timeout` of silence.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::error::{FsError, FsResult};
use crate::proto::frame::{encode_meta, AsyncFrameReader, FrameSink};
use crate::proto::{FrameKind, Reply, Request};

/// How long a request sent with `send_only` may wait for another request
/// to take it along.
const LAZY_DELAY: Duration = Duration::from_millis(5);
/// Bytes of requests a connection queues before callers wait for the
/// socket to drain.
const SEND_QUEUE_MAX: usize = 32 << 20;

type Pending = HashMap<u64, oneshot::Sender<FsResult<(Reply, Bytes)>>>;

/// A connected, handshaken brick connection.
pub(crate) struct Connection {
    label: String,
    next_xid: AtomicU64,
    pending: Mutex<Pending>,
    /// Requests are written from the calling task (see `FrameSink`).
    sink: Arc<FrameSink>,
    dead: AtomicBool,
    last_rx: Mutex<Instant>,
    /// Fires when the connection dies.
    closed: tokio::sync::Notify,
}

impl Connection {
    /// Opens a connection to `addr` and starts its tasks (no handshake yet).
    pub(crate) fn start(
        label: String,
        stream: TcpStream,
        ping_timeout: Duration,
    ) -> Arc<Connection> {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let sink = FrameSink::new(wr);
        let conn = Arc::new(Connection {
            label,
            next_xid: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            sink: sink.clone(),
            dead: AtomicBool::new(false),
            last_rx: Mutex::new(Instant::now()),
            closed: tokio::sync::Notify::new(),
        });

        // Flushers: write what callers could not write without blocking,
        // and lazy frames nothing else took along.
        let c = conn.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sink.clone().flusher() => {}
                _ = sink.lazy_flusher(LAZY_DELAY) => {}
                _ = c.wait_closed() => {}
            }
            c.kill("write failed");
        });

        // Reader: dispatch replies.
        let c = conn.clone();
        tokio::spawn(async move {
            let mut stream = AsyncFrameReader::new(rd);
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = c.wait_closed() => break,
                };
                match next {
                    Ok(Some(frame)) => {
                        *c.last_rx.lock() = Instant::now();
                        if frame.kind != FrameKind::Reply {
                            c.kill("brick sent a request frame");
                            break;
                        }
                        let waiter = c.pending.lock().remove(&frame.xid);
                        if let Some(w) = waiter {
                            let res = match frame.decode_reply() {
                                Ok(Ok(rep)) => Ok((rep, frame.data)),
                                Ok(Err(e)) => Err(e),
                                Err(e) => Err(e),
                            };
                            let _ = w.send(res);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(brick = %c.label, "bad frame from brick: {e}");
                        c.kill("bad frame");
                        break;
                    }
                    Ok(None) => {
                        c.kill("connection closed by brick");
                        break;
                    }
                }
            }
        });

        // Pinger: a silent brick is dead after ping_timeout.
        let c = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let interval =
                (ping_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                tokio::time::sleep(interval).await;
                let Some(c) = c.upgrade() else { break };
                if c.is_dead() {
                    break;
                }
                let silent = c.last_rx.lock().elapsed();
                if silent > ping_timeout {
                    tracing::error!(brick = %c.label, "no answer for {}s (network.ping-timeout): disconnecting", silent.as_secs());
                    c.kill("ping timeout");
                    break;
                }
                if silent >= interval {
                    let c2 = c.clone();
                    tokio::spawn(async move {
                        let _ = c2.call(Request::Ping, Bytes::new()).await;
                    });
                }
            }
        });
        conn
    }

    /// True once the connection is unusable.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Waits until the connection dies.
    pub(crate) async fn wait_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.is_dead() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the connection dead and fails every waiting call with ENOTCONN.
    pub(crate) fn kill(&self, why: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(brick = %self.label, "disconnected: {why}");
        self.sink.close();
        let waiters: Vec<_> = self.pending.lock().drain().collect();
        for (_, w) in waiters {
            let _ = w.send(Err(FsError::NotConnected(self.label.clone())));
        }
        self.closed.notify_waiters();
    }

    /// Sends a request nobody waits on (its reply is ignored): it leaves
    /// with the next request, or within `LAZY_DELAY`. Requests on one
    /// connection keep their order, so a later request still sees its
    /// effect.
    pub(crate) fn send_only(&self, req: Request) -> FsResult<()> {
        if self.is_dead() {
            return Err(FsError::NotConnected(self.label.clone()));
        }
        let xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
        let meta = encode_meta(&req)?;
        if self
            .sink
            .send_lazy(FrameKind::Request, xid, &meta, Bytes::new())
            .is_err()
        {
            self.kill("write failed");
            return Err(FsError::NotConnected(self.label.clone()));
        }
        Ok(())
    }

    /// Sends one request and waits for its reply.
    pub(crate) async fn call(&self, req: Request, data: Bytes) -> FsResult<(Reply, Bytes)> {
        if self.is_dead() {
            return Err(FsError::NotConnected(self.label.clone()));
        }
        let xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
        let meta = encode_meta(&req)?;
        if self.sink.queued() > SEND_QUEUE_MAX {
            self.sink.wait_room(SEND_QUEUE_MAX).await;
        }
        let (wtx, wrx) = oneshot::channel();
        self.pending.lock().insert(xid, wtx);
        if self
            .sink
            .send(FrameKind::Request, xid, &meta, data)
            .is_err()
        {
            self.pending.lock().remove(&xid);
            self.kill("write failed");
            return Err(FsError::NotConnected(self.label.clone()));
        }
        // The reader or `kill` always completes the waiter.
        match wrx.await {
            Ok(r) => r,
            Err(_) => Err(FsError::NotConnected(self.label.clone())),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::Release);
    }
}
