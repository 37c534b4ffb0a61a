//! A mounted client's subscription to its volume's spec: a `WatchSpec`
//! request held by a management server, re-sent when answered, moving on to
//! the next of the client's servers (`backup-volfile-servers`) when one
//! fails. Each spec that builds another graph comes out of a watch channel.

use bytes::Bytes;
use kiln_core::graph::VolumeSpec;
use std::time::Duration;
use tokio::sync::watch;

use crate::client::connect_tcp;
use crate::error::MgmtError;
use crate::proto::{MgmtReply, MgmtRequest};
use crate::wire::Conn;

/// How long a server holds one watch without news.
const HOLD_SECS: u32 = 60;

/// How long past the hold a silent server is given before the watch moves on.
const GRACE: Duration = Duration::from_secs(20);

/// Watches `volume`'s spec on `servers` (tried in order, the next one when
/// one fails), starting from `known`, the spec the client runs. The
/// receiver sees every spec that builds another graph (intermediate ones
/// may be skipped); the watch ends when the receiver is dropped. Must be
/// called inside a tokio runtime.
pub fn watch_volume_spec(
    servers: Vec<String>,
    volume: String,
    known: VolumeSpec,
) -> watch::Receiver<VolumeSpec> {
    let (tx, rx) = watch::channel(known);
    tokio::spawn(run(servers, volume, tx));
    rx
}

async fn run(servers: Vec<String>, volume: String, tx: watch::Sender<VolumeSpec>) {
    if servers.is_empty() {
        return;
    }
    let mut at = 0;
    let mut conn: Option<Conn> = None;
    let mut failures: u32 = 0;
    // A refusal (volume deleted?) is logged once until the next answer.
    let mut refused = false;
    loop {
        let server = &servers[at];
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let connected = tokio::select! {
                    r = connect_tcp(server) => r,
                    _ = tx.closed() => return,
                };
                match connected {
                    Ok((c, _, _)) => {
                        if failures > 0 {
                            tracing::info!(server = %server, volume = %volume, "watching the volume spec on {server}");
                        }
                        conn.insert(c)
                    }
                    Err(e) => {
                        failures += 1;
                        lost(&mut at, servers.len(), server, &volume, &e, failures);
                        pause(&tx, failures).await;
                        continue;
                    }
                }
            }
        };
        let req = MgmtRequest::WatchSpec {
            volume: volume.clone(),
            known: Some(tx.borrow().clone()),
            wait_secs: HOLD_SECS,
        };
        let hold = Duration::from_secs(u64::from(HOLD_SECS)) + GRACE;
        let answer = tokio::select! {
            r = c.call(&req, Bytes::new(), hold) => r,
            _ = tx.closed() => return,
        };
        match answer {
            Ok((MgmtReply::Spec(spec), _)) => {
                failures = 0;
                refused = false;
                let newer = {
                    let cur = tx.borrow();
                    !spec.same_graph(&cur) && spec.generation >= cur.generation
                };
                if newer {
                    tracing::info!(server = %server, volume = %volume, generation = spec.generation, "new volume spec from {server}");
                    tx.send_replace(spec);
                }
            }
            Ok((MgmtReply::Ok, _)) => {
                failures = 0;
                refused = false;
            }
            Ok((MgmtReply::Error(e), _)) => {
                // The server answers but has no spec for us (volume
                // deleted?): keep the graph, ask again later.
                if !refused {
                    tracing::warn!(server = %server, volume = %volume, error = %e, "volume spec watch refused; asking again every 5 s");
                }
                refused = true;
                pause(&tx, 5).await;
            }
            Ok((other, _)) => {
                conn = None;
                failures += 1;
                let e = MgmtError::Protocol(format!("unexpected answer to WatchSpec: {other:?}"));
                lost(&mut at, servers.len(), server, &volume, &e, failures);
                pause(&tx, failures).await;
            }
            Err(e) => {
                conn = None;
                failures += 1;
                lost(&mut at, servers.len(), server, &volume, &e, failures);
                pause(&tx, failures).await;
            }
        }
    }
}

/// Logs a failed server (once per outage, then quietly) and moves to the next.
fn lost(at: &mut usize, n: usize, server: &str, volume: &str, e: &MgmtError, failures: u32) {
    if failures == 1 {
        tracing::warn!(server = %server, volume, error = %e, "volume spec watch lost; trying the next server");
    } else {
        tracing::debug!(server = %server, volume, error = %e, "volume spec watch: server unreachable");
    }
    *at = (*at + 1) % n;
}

/// Waits `secs` (at most 5) seconds, or until the receiver is gone.
async fn pause(tx: &watch::Sender<VolumeSpec>, secs: u32) {
    let d = Duration::from_secs(u64::from(secs.clamp(1, 5)));
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = tx.closed() => {}
    }
}
