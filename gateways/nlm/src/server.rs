//! Starting NLM and NSM: one RPC server carrying both programs on TCP+UDP
//! (port 38466 by default), registered with the portmapper the NFS gateway
//! uses; the monitor records of the previous instance decide the grace
//! period, and their clients are sent SM_NOTIFY (`notify_clients`, once
//! registered) in the background.

use kiln_core::client::Volume;
use kiln_portmap::pmap::{Mapping, Portmapper};
use kiln_portmap::rpc::server::{serve_tcp_udp, ServeHandle};
use kiln_portmap::{RpcServer, ServerConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::callback;
use crate::locks::{LockManager, NlmVolume};
use crate::monitor::{Monitor, Record};
use crate::program::{NlmProgram, NsmProgram};
use crate::types::*;

/// Default grace period after a restart with clients to notify.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(45);

/// Where and how NLM listens.
#[derive(Debug, Clone)]
pub struct NlmConfig {
    /// Address to bind.
    pub listen: IpAddr,
    /// NLM and NSM port (TCP and UDP); 0 picks one.
    pub port: u16,
    /// State directory (monitor records, NSM state); `None` keeps none.
    pub state_dir: Option<PathBuf>,
    /// Grace period after a restart that had monitored clients.
    pub grace: Duration,
    /// Port of the clients' portmappers (111; another one in tests).
    pub client_portmap_port: u16,
}

impl Default for NlmConfig {
    fn default() -> Self {
        NlmConfig {
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 38466,
            state_dir: None,
            grace: DEFAULT_GRACE,
            client_portmap_port: kiln_portmap::pmap::PMAP_PORT,
        }
    }
}

/// Starting NLM failed.
#[derive(Debug, thiserror::Error)]
pub enum NlmError {
    /// A socket or the state directory.
    #[error("nlm: {0}")]
    Io(#[from] std::io::Error),
    /// A volume whose id is not a UUID.
    #[error("nlm: {0}")]
    Volume(String),
}

/// Running NLM + NSM; dropping it stops the listeners.
pub struct NlmServer {
    mgr: Arc<LockManager>,
    serve: ServeHandle,
    nsm_registered: bool,
    /// The previous instance's clients, our state, their portmapper port
    /// and the grace period, until `notify_clients`.
    to_notify: Option<(Vec<Record>, i32, u16, Duration)>,
    notifier: Option<tokio::task::JoinHandle<()>>,
}

impl NlmServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.serve.local_addr()
    }

    /// The lock manager (tests, stats).
    pub fn manager(&self) -> &Arc<LockManager> {
        &self.mgr
    }

    /// Registers NLM v4 (and NSM v1 unless the portmapper already has a
    /// statd) with `pm`.
    pub async fn register(&mut self, pm: &Portmapper) -> Result<(), kiln_portmap::PmapError> {
        let port = self.local_addr().port();
        let mut maps = Mapping::tcp_udp(NLM_PROGRAM, NLM_V4, port).to_vec();
        // A statd already registered on the host's rpcbind receives the
        // clients' SM_NOTIFY for the host's own lockd; Kiln leaves it alone.
        let statd = pm.is_external()
            && kiln_portmap::pmap::service::getport(
                pm.addr(),
                NSM_PROGRAM,
                NSM_V1,
                kiln_portmap::pmap::IPPROTO_UDP,
            )
            .await
            .is_ok_and(|p| p != 0);
        if statd {
            tracing::warn!("nsm: the host's rpc.statd is registered with its portmapper; Kiln's NSM is not registered (client reboots reach the host's statd, not the gateway: their NLM locks go when the client's lockd sends FREE_ALL or re-locks)");
        } else {
            maps.extend(Mapping::tcp_udp(NSM_PROGRAM, NSM_V1, port));
            self.nsm_registered = true;
        }
        pm.register(&maps).await
    }

    /// Removes the registrations from `pm`.
    pub async fn unregister(&self, pm: &Portmapper) {
        let mut progs = vec![(NLM_PROGRAM, NLM_V4)];
        if self.nsm_registered {
            progs.push((NSM_PROGRAM, NSM_V1));
        }
        let _ = pm.unregister(&progs).await;
    }

    /// Sends SM_NOTIFY to every client of the previous instance (in the
    /// background, retrying through the grace period), so their lockds
    /// reclaim. Call once registered with the portmapper: a client's
    /// reclaim looks NLM up there.
    pub fn notify_clients(&mut self) {
        if let Some((old, state, pmap_port, grace)) = self.to_notify.take() {
            if !old.is_empty() {
                self.notifier = Some(tokio::spawn(notify_all(
                    old,
                    state,
                    pmap_port,
                    grace.max(Duration::from_secs(10)),
                )));
            }
        }
    }

    /// Waits until a listener fails.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        self.serve.wait().await
    }
}

impl Drop for NlmServer {
    fn drop(&mut self) {
        if let Some(n) = &self.notifier {
            n.abort();
        }
    }
}

/// Serves NLM v4 and NSM v1 for `volumes`.
pub async fn serve_nlm(volumes: Vec<Arc<Volume>>, cfg: NlmConfig) -> Result<NlmServer, NlmError> {
    let vols = volumes
        .into_iter()
        .map(|v| NlmVolume::new(v).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(NlmError::Volume)?;
    let dir = cfg.state_dir.clone();
    let (monitor, old) = tokio::task::spawn_blocking(move || Monitor::open(dir.as_deref()))
        .await
        .map_err(std::io::Error::other)??;
    let grace = (!old.is_empty() && !cfg.grace.is_zero()).then(|| Instant::now() + cfg.grace);
    let state = monitor.state();
    let mgr = LockManager::new(vols, Arc::new(monitor), grace, cfg.client_portmap_port);
    let mut rpc = RpcServer::new(ServerConfig {
        max_record: 64 * 1024,
        ..ServerConfig::default()
    });
    rpc.register(Arc::new(NlmProgram::new(mgr.clone())));
    rpc.register(Arc::new(NsmProgram::new(mgr.clone())));
    let addr = SocketAddr::new(cfg.listen, cfg.port);
    let serve = serve_tcp_udp(Arc::new(rpc), addr).await?;
    tracing::info!(addr = %serve.local_addr(), nsm_state = state, clients_to_notify = old.len(), grace_secs = grace.map(|_| cfg.grace.as_secs()), "nlm: serving NLM v4 and NSM v1 over tcp and udp");
    Ok(NlmServer {
        mgr,
        serve,
        nsm_registered: false,
        to_notify: Some((old, state, cfg.client_portmap_port, cfg.grace)),
        notifier: None,
    })
}

/// Tells each client of the previous instance that we restarted (so its
/// lockd reclaims), retrying for up to `window`.
async fn notify_all(old: Vec<Record>, state: i32, pmap_port: u16, window: Duration) {
    let mut tasks = Vec::new();
    for r in old {
        tasks.push(tokio::spawn(async move {
            let mon_name = r.peer.local.to_string();
            let until = Instant::now() + window;
            loop {
                match callback::sm_notify(&r.peer, pmap_port, mon_name.as_bytes(), state).await {
                    Ok(()) => {
                        tracing::info!(host = %String::from_utf8_lossy(&r.name), client = %r.peer.client, state, "nsm: SM_NOTIFY sent");
                        return;
                    }
                    Err(e) if Instant::now() >= until => {
                        tracing::warn!(host = %String::from_utf8_lossy(&r.name), client = %r.peer.client, error = %e, "nsm: could not notify a client; giving up");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(client = %r.peer.client, error = %e, "nsm: SM_NOTIFY failed; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
