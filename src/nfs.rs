//! `kiln nfs`: the NFSv3 + MOUNT + NLM/NSM gateway process of a server
//! (started by `kiln server` for every started volume without `nfs.disable
//! on`, or by hand). Fetches the volume specs from a management server,
//! connects to the bricks, serves until SIGTERM/SIGINT, then unregisters
//! from the portmapper.

use anyhow::{bail, Context};
use clap::Parser;
use kiln_core::client::Volume;
use kiln_nfs3::NfsConfig;
use kiln_nlm::NlmConfig;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long each volume has to become ready before the gateway serves
/// anyway (operations on an unreachable brick then fail with an NFS error).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `kiln nfs`: serve volumes over NFSv3 and MOUNT v1/v3.
#[derive(Parser, Debug)]
#[command(name = "kiln nfs")]
struct NfsCmd {
    /// Address to bind every port to (default: all addresses).
    #[arg(long)]
    listen: Option<IpAddr>,
    /// Management servers to fetch volume specs from, `HOST[:PORT]`
    /// (repeat or comma-separate; default: the listen address, else localhost).
    #[arg(long, value_delimiter = ',')]
    mgmt: Vec<String>,
    /// Volumes to serve (comma-separated; default: every started volume
    /// whose `nfs.disable` is not on).
    #[arg(long, value_delimiter = ',')]
    volumes: Vec<String>,
    /// Log file (default: stderr).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// NFS ports, TCP and UDP; the first is registered with the portmapper.
    #[arg(long, value_delimiter = ',', default_value = "2049,38467")]
    nfs_port: Vec<u16>,
    /// MOUNT port, TCP and UDP.
    #[arg(long, default_value_t = 38465)]
    mount_port: u16,
    /// Portmapper port to serve (or adopt a running rpcbind on); 0 registers
    /// nowhere (clients then need `-o port=...,mountport=...`).
    #[arg(long, default_value_t = 111)]
    portmap_port: u16,
    /// NLM (lock manager) and NSM (status monitor) port, TCP and UDP; 0
    /// serves no locking (clients then need `-o nolock`).
    #[arg(long, default_value_t = 38466)]
    nlm_port: u16,
    /// State directory (NSM monitor records, so clients reclaim their locks
    /// after a restart); none: nothing is kept.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Grace period in seconds after a restart that had lock clients
    /// (only lock reclaims are granted meanwhile).
    #[arg(long, env = "KILN_NLM_GRACE", default_value_t = 45)]
    nlm_grace: u64,
}

/// Runs `kiln nfs ARGS` in the foreground.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cmd = NfsCmd::try_parse_from(
        std::iter::once("kiln nfs".to_string()).chain(args.iter().cloned()),
    )?;
    let _guard = crate::logging::init(cmd.log_file.as_deref())?;
    if cmd.nfs_port.is_empty() {
        bail!("--nfs-port needs at least one port");
    }
    let servers = if cmd.mgmt.is_empty() {
        let host = match cmd.listen {
            Some(ip) if !ip.is_unspecified() => ip.to_string(),
            _ => "localhost".to_string(),
        };
        vec![host]
    } else {
        cmd.mgmt.clone()
    };
    let cfg = NfsConfig {
        listen: cmd.listen.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        nfs_ports: cmd.nfs_port.clone(),
        mount_port: cmd.mount_port,
        portmap_port: (cmd.portmap_port != 0).then_some(cmd.portmap_port),
        ..NfsConfig::default()
    };
    let nlm = (cmd.nlm_port != 0).then(|| NlmConfig {
        listen: cfg.listen,
        port: cmd.nlm_port,
        state_dir: cmd.state_dir.clone(),
        grace: Duration::from_secs(cmd.nlm_grace),
        ..NlmConfig::default()
    });
    crate::runtime()?.block_on(serve(servers, cmd.volumes, cfg, nlm))
}

async fn serve(
    servers: Vec<String>,
    volumes: Vec<String>,
    cfg: NfsConfig,
    nlm_cfg: Option<NlmConfig>,
) -> anyhow::Result<()> {
    let volumes = if volumes.is_empty() {
        kiln_mgmt::fetch_nfs_exports(&servers)
            .await
            .context("listing the volumes to serve")?
    } else {
        volumes
    };
    if volumes.is_empty() {
        bail!("no started volume to serve over NFS");
    }
    tracing::info!(volumes = ?volumes, mgmt = ?servers, "nfs gateway starting");
    let mut vols = Vec::new();
    for name in &volumes {
        let spec = kiln_mgmt::fetch_volume_spec(&servers, name)
            .await
            .with_context(|| format!("fetching the spec of volume {name}"))?;
        vols.push(Arc::new(Volume::new(spec)));
    }
    // Wait for every volume at once, not one after the other.
    let waits: Vec<_> = vols
        .iter()
        .map(|v| {
            let v = v.clone();
            tokio::spawn(async move {
                let r = v.wait_ready(READY_TIMEOUT).await;
                (v.spec().name.clone(), r)
            })
        })
        .collect();
    for w in waits {
        if let Ok((name, Err(e))) = w.await {
            tracing::warn!(volume = %name, error = %e, "nfs: volume not ready yet; serving it anyway");
        }
    }
    let served = vols.clone();
    let mut server = kiln_nfs3::serve_volumes(vols.clone(), cfg).await?;
    let mut nlm = match nlm_cfg {
        Some(c) => match kiln_nlm::serve_nlm(vols, c).await {
            Ok(n) => Some(n),
            Err(e) => {
                // NFS still works; clients then need `-o nolock`.
                tracing::error!(error = %e, "nlm: cannot serve NLM/NSM; serving NFS without locking");
                None
            }
        },
        None => None,
    };
    if let Some(n) = nlm.as_mut() {
        if let Some(pm) = server.portmapper() {
            if let Err(e) = n.register(pm).await {
                tracing::error!(error = %e, "nlm: no portmapper registration; clients cannot find the lock manager");
            }
        }
        n.notify_clients();
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let nlm_wait = async {
        match nlm.as_mut() {
            Some(n) => n.wait().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = server.wait() => r,
        r = nlm_wait => r.context("nlm listener failed"),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    tracing::info!("nfs gateway stopping");
    if let (Some(n), Some(pm)) = (nlm.as_ref(), server.portmapper()) {
        n.unregister(pm).await;
    }
    drop(nlm);
    server.shutdown().await;
    release_eager_locks(&served).await;
    result
}

/// Lets this gateway's eager locks go at once (their delayed post-ops
/// leave the changelogs clean), instead of leaving them to the bricks.
async fn release_eager_locks(vols: &[Arc<Volume>]) {
    let mut all = tokio::task::JoinSet::new();
    for v in vols {
        let v = v.clone();
        all.spawn(async move { v.release_eager_locks().await });
    }
    let done = async { while all.join_next().await.is_some() {} };
    if tokio::time::timeout(RELEASE_LIMIT, done).await.is_err() {
        tracing::warn!("eager locks not all released within {RELEASE_LIMIT:?}");
    }
}

/// How long a stopping gateway or mount waits for its eager locks to go.
const RELEASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
