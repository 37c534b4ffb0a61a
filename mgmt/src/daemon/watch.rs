//! Pushing volume specs to mounted clients (`WatchSpec`): a held request
//! answered as soon as the applied config gives the volume a spec that
//! builds another graph than the client's (add-brick, set/reset, a brick on
//! a new port), or with `Ok` once the wait is over. A spec older than the
//! client's (`generation`, from a server still catching up) is never sent.

use std::time::Duration;

use super::Daemon;
use crate::proto::MgmtReply;
use kiln_config::VolumeStatus;
use kiln_core::graph::VolumeSpec;

/// The longest a client may ask the daemon to hold a watch.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// News is sent once the config has been quiet this long.
const QUIET: Duration = Duration::from_millis(300);

/// How long news waits for the ports of bricks not started yet.
const SETTLE: Duration = Duration::from_secs(10);

/// Holds a client's watch until its volume's spec differs from `known`,
/// the wait ends, or the daemon stops. A stopped volume is no news: the
/// client keeps its graph until the volume is started with another spec.
pub(super) async fn watch_spec(
    d: &Daemon,
    volume: &str,
    known: Option<VolumeSpec>,
    wait_secs: u32,
) -> MgmtReply {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(u64::from(wait_secs)).min(MAX_WAIT);
    let mut configs = d.store.subscribe();
    let mut stopping = d.stopping.subscribe();
    // When news was first seen: a change made of several commits (add-brick
    // commits the bricks, then each new brick's port) is sent once settled.
    let mut news_since: Option<tokio::time::Instant> = None;
    loop {
        let news = {
            let cfg = configs.borrow_and_update();
            match cfg.volumes.get(volume) {
                None => return MgmtReply::Error(format!("Volume {volume} does not exist")),
                Some(v) if v.status == VolumeStatus::Started => {
                    let spec = v.spec();
                    match &known {
                        // Same graph, or this server has not applied the
                        // change the client already runs: no news.
                        Some(k) if k.same_graph(&spec) || spec.generation < k.generation => None,
                        _ => Some(spec),
                    }
                }
                Some(_) => None,
            }
        };
        if let Some(spec) = news {
            let since = *news_since.get_or_insert_with(tokio::time::Instant::now);
            let ports_known = spec.bricks.iter().all(|b| b.port != 0);
            // Wait for the config to be quiet, and for new bricks' ports
            // (at most SETTLE: a brick that never starts stays at port 0).
            let until = if ports_known || since.elapsed() >= SETTLE {
                tokio::time::Instant::now() + QUIET
            } else {
                since + SETTLE
            };
            tokio::select! {
                changed = configs.changed() => {
                    if changed.is_err() {
                        return MgmtReply::Ok;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(until) => {}
                _ = stopping.wait_for(|s| *s) => return MgmtReply::Ok,
            }
            if ports_known || since.elapsed() >= SETTLE {
                tracing::debug!(
                    volume,
                    generation = spec.generation,
                    "pushing a new volume spec to a client"
                );
                return MgmtReply::Spec(spec);
            }
            continue;
        }
        news_since = None;
        tokio::select! {
            changed = configs.changed() => {
                if changed.is_err() {
                    return MgmtReply::Ok;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return MgmtReply::Ok,
            _ = stopping.wait_for(|s| *s) => return MgmtReply::Ok,
        }
    }
}
