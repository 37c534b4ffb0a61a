//! `kiln shd`, the self-heal daemon of one server (GlusterFS's glustershd):
//! for every replicated volume it is given, it builds one replicate
//! translator per replica set and, for each brick of this server, crawls
//! that brick's pending index every few seconds and at once when a brick
//! of the set comes back, healing each gfid. It answers `heal` commands
//! from the management daemon on a unix socket (`control`).

mod control;
mod crawl;
mod paths;

use anyhow::Context;
use kiln_core::client::replicate::Replicate;
use kiln_core::graph::VolumeSpec;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use control::ask_shd;
use crawl::BrickCrawler;

/// What `kiln shd` runs with.
#[derive(Debug, Clone)]
pub struct ShdArgs {
    /// Management servers to fetch volume specs from (`HOST[:PORT]`).
    pub mgmt: Vec<String>,
    /// Volumes to heal.
    pub volumes: Vec<String>,
    /// This server's bricks (`HOST:/PATH`); only their indices are crawled.
    pub bricks: Vec<String>,
    /// The control socket to listen on.
    pub control: PathBuf,
    /// Time between two index crawls of a brick.
    pub interval: Duration,
}

/// One volume as the daemon heals it.
pub(crate) struct HealedVolume {
    pub(crate) spec: VolumeSpec,
    /// One replicate translator per set.
    pub(crate) sets: Vec<Arc<Replicate>>,
    /// One crawler per local brick.
    pub(crate) crawlers: Vec<Arc<BrickCrawler>>,
}

/// Runs the heal daemon until SIGTERM/SIGINT.
pub async fn run_shd(args: ShdArgs) -> anyhow::Result<()> {
    let mut vols = Vec::new();
    for name in &args.volumes {
        let spec = crate::client::fetch_volume_spec(&args.mgmt, name)
            .await
            .with_context(|| format!("fetching the spec of volume {name}"))?;
        let client_id = format!("{name}-shd-{}", uuid::Uuid::new_v4());
        let sets = Replicate::replica_sets(&spec, &client_id);
        let replica = spec.replica_count();
        let mut crawlers = Vec::new();
        for (index, b) in spec.bricks.iter().enumerate() {
            if !args.bricks.contains(&b.label()) || replica <= 1 {
                continue;
            }
            let Some(set) = sets.get(index / replica) else {
                continue;
            };
            crawlers.push(Arc::new(BrickCrawler::new(
                name.clone(),
                set.clone(),
                index % replica,
                index,
                b.label(),
                PathBuf::from(&b.path),
            )));
        }
        tracing::info!(volume = %name, sets = sets.len(), local_bricks = crawlers.len(), "self-heal daemon: healing volume");
        vols.push(Arc::new(HealedVolume {
            spec,
            sets,
            crawlers,
        }));
    }
    let mut tasks = Vec::new();
    for v in &vols {
        for c in &v.crawlers {
            tasks.push(tokio::spawn(c.clone().run(args.interval)));
        }
        for set in &v.sets {
            let mine: Vec<Arc<BrickCrawler>> = v
                .crawlers
                .iter()
                .filter(|c| Arc::ptr_eq(&c.set, set))
                .cloned()
                .collect();
            if !mine.is_empty() {
                tasks.push(tokio::spawn(crawl::watch_reconnects(set.clone(), mine)));
            }
        }
    }
    let listener = control::bind(&args.control)?;
    tasks.push(tokio::spawn(control::serve(listener, vols)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("self-heal daemon stopping");
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&args.control);
    Ok(())
}
