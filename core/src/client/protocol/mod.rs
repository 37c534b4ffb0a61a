//! Protocol client: the translator that talks to one brick over TCP
//! (pipelined, multiplexed, reconnecting, with a ping timeout). A refused or
//! reset connection is noticed at once; a silent brick after ping-timeout.
//! Bulk reads and writes to a brick on this host go to the file directly
//! (`local`).

mod connection;
mod fops;
mod local;

pub use local::direct_io_bytes;

use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::error::{FsError, FsResult};
use crate::graph::BrickSpec;
use crate::proto::{Reply, Request, PROTOCOL_VERSION};
use connection::Connection;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ProtocolOptions {
    /// `network.ping-timeout`: a silent brick is declared down after this.
    pub ping_timeout: Duration,
    /// This client's id (lock owner namespace on the brick).
    pub client_id: String,
}

/// The translator for one brick.
pub struct ProtocolClient {
    name: String,
    shared: Arc<Shared>,
}

struct Shared {
    volume: String,
    brick: BrickSpec,
    opts: ProtocolOptions,
    /// The live connection and its generation (bumped on every reconnect,
    /// so fds opened on an older connection are reopened).
    current: Mutex<(Option<Arc<Connection>>, u64)>,
    /// Set once the first connection attempt has finished either way.
    first_attempt_done: AtomicBool,
    first_attempt: tokio::sync::Notify,
    shutdown: AtomicBool,
    wake: tokio::sync::Notify,
    /// The brick's handoff socket, for direct bulk I/O when it is local.
    handoff: local::HandoffLink,
}

impl ProtocolClient {
    /// A client for `brick` of `volume`; connects in the background (must be
    /// called inside a tokio runtime).
    pub fn new(volume: &str, brick: BrickSpec, opts: ProtocolOptions) -> ProtocolClient {
        let shared = Arc::new(Shared {
            volume: volume.to_string(),
            brick: brick.clone(),
            opts,
            current: Mutex::new((None, 0)),
            first_attempt_done: AtomicBool::new(false),
            first_attempt: tokio::sync::Notify::new(),
            shutdown: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            handoff: local::HandoffLink::new(volume, &brick.label()),
        });
        tokio::spawn(supervise(shared.clone()));
        ProtocolClient {
            name: brick.subvol.clone(),
            shared,
        }
    }

    /// The brick as `HOST:/PATH`.
    pub fn brick_label(&self) -> String {
        self.shared.brick.label()
    }

    /// The live connection, waiting for the very first attempt if it is
    /// still under way.
    async fn conn(&self) -> FsResult<(Arc<Connection>, u64)> {
        let s = &self.shared;
        loop {
            let notified = s.first_attempt.notified();
            {
                let cur = s.current.lock();
                if let Some(c) = &cur.0 {
                    if !c.is_dead() {
                        return Ok((c.clone(), cur.1));
                    }
                }
            }
            if s.first_attempt_done.load(Ordering::Acquire) {
                s.wake.notify_one();
                return Err(FsError::NotConnected(s.brick.label()));
            }
            notified.await;
        }
    }

    /// Sends a request and waits for the reply.
    pub(crate) async fn call(&self, req: Request, data: Bytes) -> FsResult<(Reply, Bytes)> {
        let (c, _) = self.conn().await?;
        c.call(req, data).await
    }
}

impl Drop for ProtocolClient {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some(c) = &self.shared.current.lock().0 {
            c.kill("client shut down");
        }
        self.shared.wake.notify_one();
    }
}

/// Keeps one connection up: connect, handshake, wait for it to die, retry.
async fn supervise(s: Arc<Shared>) {
    let mut logged_down = false;
    while !s.shutdown.load(Ordering::Acquire) {
        match connect_once(&s).await {
            Ok(conn) => {
                {
                    let mut cur = s.current.lock();
                    cur.1 += 1;
                    cur.0 = Some(conn.clone());
                }
                s.handoff.reset();
                tracing::info!(brick = %s.brick.label(), "connected to brick");
                logged_down = false;
                s.first_attempt_done.store(true, Ordering::Release);
                s.first_attempt.notify_waiters();
                conn.wait_closed().await;
                s.current.lock().0 = None;
            }
            Err(e) => {
                if !logged_down {
                    tracing::warn!(brick = %s.brick.label(), "cannot reach brick: {e}");
                    logged_down = true;
                }
                s.first_attempt_done.store(true, Ordering::Release);
                s.first_attempt.notify_waiters();
                // Retry after a pause, or at once when a caller needs us.
                let _ = tokio::time::timeout(Duration::from_secs(2), s.wake.notified()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect_once(s: &Shared) -> FsResult<Arc<Connection>> {
    if s.brick.port == 0 {
        return Err(FsError::NotConnected(format!(
            "{} has no port (brick never started)",
            s.brick.label()
        )));
    }
    let target = format!("{}:{}", s.brick.host, s.brick.port);
    let limit = s.opts.ping_timeout.min(Duration::from_secs(10));
    let stream = match tokio::time::timeout(limit, TcpStream::connect(&target)).await {
        Ok(Ok(st)) => st,
        Ok(Err(e)) => return Err(FsError::NotConnected(format!("{}: {e}", s.brick.label()))),
        Err(_) => {
            return Err(FsError::NotConnected(format!(
                "{}: connect timed out",
                s.brick.label()
            )))
        }
    };
    let conn = Connection::start(s.brick.label(), stream, s.opts.ping_timeout);
    let hs = Request::Handshake {
        version: PROTOCOL_VERSION,
        volume: s.volume.clone(),
        brick: s.brick.label(),
        client_id: s.opts.client_id.clone(),
    };
    match tokio::time::timeout(limit, conn.call(hs, Bytes::new())).await {
        Ok(Ok((Reply::Welcome { .. }, _))) => Ok(conn),
        Ok(Ok((other, _))) => {
            conn.kill("bad handshake reply");
            Err(FsError::Protocol(format!(
                "unexpected handshake reply {other:?}"
            )))
        }
        Ok(Err(e)) => {
            conn.kill("handshake refused");
            Err(e)
        }
        Err(_) => {
            conn.kill("handshake timed out");
            Err(FsError::NotConnected(format!(
                "{}: handshake timed out",
                s.brick.label()
            )))
        }
    }
}
