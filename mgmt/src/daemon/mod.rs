//! The management daemon (`kiln server`): its identity and pool secret, the
//! listeners (TCP 24007 and the local `@kiln-mgmt` socket), the pool config
//! store, brick and NFS gateway supervision, and the calls it makes to other
//! servers.

mod conn;
mod dispatch;
pub(crate) mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_nfs;
#[cfg(test)]
mod tests_pool;
#[cfg(test)]
mod tests_watch;
mod watch;

use anyhow::Context;
use bytes::Bytes;
use kiln_config::{Command, PeerInfo};
use parking_lot::{Mutex, RwLock};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::auth::PoolSecret;
use crate::error::MgmtError;
use crate::identity::NodeIdentity;
use crate::net::{join_host_port, self_hostname};
use crate::nfs_supervisor::NfsSupervisor;
use crate::pool::PeerPool;
use crate::proto::{MgmtReply, PeerRequest, MGMT_PORT};
use crate::shd_supervisor::ShdSupervisor;
use crate::supervisor::{BrickLauncher, ExeLauncher, Supervisor};
use store::{MemoryBackend, StoreBackend, StoreHandle};

/// Options of `kiln server`.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// Bind every port of this server (management, bricks) to this address.
    pub listen: Option<IpAddr>,
    /// State directory (identity, pool secret, config store, pid files).
    pub state_dir: PathBuf,
    /// Log directory (`kiln-server.log`, `bricks/*.log`).
    pub log_dir: PathBuf,
    /// Management port (24007).
    pub port: u16,
}

impl Default for ServerArgs {
    fn default() -> Self {
        ServerArgs {
            listen: None,
            state_dir: PathBuf::from("/var/lib/kiln"),
            log_dir: PathBuf::from("/var/log/kiln"),
            port: MGMT_PORT,
        }
    }
}

/// Runs the management daemon in the foreground until SIGTERM or SIGINT.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let _guard = crate::logging::init(&args.log_dir)
        .with_context(|| format!("cannot open the log directory {}", args.log_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the kiln executable")?;
    let hooks = Hooks {
        launcher: Arc::new(ExeLauncher { exe }),
        memory_store: false,
        local_socket: true,
    };
    let daemon = Daemon::start(args, hooks).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
}

/// What differs between production and in-process tests.
pub(crate) struct Hooks {
    /// Starts brick processes.
    pub(crate) launcher: Arc<dyn BrickLauncher>,
    /// Use an unreplicated in-memory config store.
    pub(crate) memory_store: bool,
    /// Answer the CLI on the abstract socket `@kiln-mgmt`.
    pub(crate) local_socket: bool,
}

/// One running management daemon.
pub(crate) struct Daemon {
    pub(crate) args: ServerArgs,
    pub(crate) id: NodeIdentity,
    /// The name this server registers itself under.
    pub(crate) hostname: String,
    /// Its management address as other servers reach it (`HOST:PORT`).
    pub(crate) my_addr: String,
    /// The TCP address actually bound.
    pub(crate) bound: SocketAddr,
    pub(crate) secret: Arc<RwLock<PoolSecret>>,
    /// Bumped whenever the secret changes: connections authenticated with
    /// an older secret lose their peer rights.
    pub(crate) secret_epoch: std::sync::atomic::AtomicU64,
    pub(crate) peers: Arc<PeerPool>,
    pub(crate) store: Arc<StoreHandle>,
    pub(crate) supervisor: Arc<Supervisor>,
    /// This server's NFS gateway.
    pub(crate) nfs: Arc<NfsSupervisor>,
    /// This server's self-heal daemon.
    pub(crate) shd: Arc<ShdSupervisor>,
    /// Serializes pool membership changes (probe, detach, join).
    pub(crate) membership: tokio::sync::Mutex<()>,
    /// Flips to true at shutdown; open connections end on it.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Daemon {
    /// Starts a daemon: identity, listeners, store, supervision.
    pub(crate) async fn start(args: ServerArgs, hooks: Hooks) -> anyhow::Result<Arc<Daemon>> {
        let state_dir = args.state_dir.clone();
        let listen = args.listen;
        let (id, secret, hostname) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let id = NodeIdentity::load_or_create(&state_dir)
                .with_context(|| format!("state directory {}", state_dir.display()))?;
            let secret = PoolSecret::load_or_create(&state_dir).context("pool secret")?;
            Ok((id, secret, self_hostname(listen)))
        })
        .await??;
        let bind_ip = args.listen.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind_ip, args.port))
            .await
            .with_context(|| format!("cannot listen on {bind_ip}:{}", args.port))?;
        let bound = listener.local_addr()?;
        let my_addr = join_host_port(&advertised_host(&hostname, args.listen).await, bound.port());
        let secret = Arc::new(RwLock::new(secret));
        let peers = Arc::new(PeerPool::new(secret.clone(), id.uuid.clone()));
        let backend: Box<dyn StoreBackend> = if hooks.memory_store {
            Box::new(MemoryBackend::new())
        } else {
            store::open_raft_backend(&args.state_dir, id.raft_id, my_addr.clone(), peers.clone())
                .await?
        };
        let store = StoreHandle::new(backend);
        let nfs = NfsSupervisor::new(
            args.listen,
            bound.port(),
            &args.state_dir,
            &args.log_dir,
            hooks.launcher.clone(),
        );
        let shd = ShdSupervisor::new(
            id.uuid.clone(),
            args.listen,
            bound.port(),
            &args.state_dir,
            &args.log_dir,
            hooks.launcher.clone(),
        );
        let supervisor = Supervisor::new(
            id.uuid.clone(),
            args.listen,
            &args.state_dir,
            &args.log_dir,
            hooks.launcher,
        );
        tracing::info!(uuid = %id.uuid, addr = %my_addr, hostname = %hostname, "kiln server starting");
        let daemon = Arc::new(Daemon {
            args,
            id,
            hostname,
            my_addr,
            bound,
            secret,
            secret_epoch: std::sync::atomic::AtomicU64::new(0),
            peers,
            store: store.clone(),
            supervisor: supervisor.clone(),
            nfs: nfs.clone(),
            shd: shd.clone(),
            membership: tokio::sync::Mutex::new(()),
            stopping: tokio::sync::watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(conn::serve_tcp(daemon.clone(), listener)),
            tokio::spawn(supervisor.run(store.clone())),
            tokio::spawn(nfs.run(store.clone())),
            tokio::spawn(shd.run(store)),
        ];
        if hooks.local_socket {
            match conn::bind_local() {
                Ok(l) => tasks.push(tokio::spawn(conn::serve_local(daemon.clone(), l))),
                Err(e) => tracing::warn!(
                    error = %e,
                    "the local CLI socket @kiln-mgmt is taken (another server in this network namespace?); the CLI reaches this server over TCP"
                ),
            }
        }
        daemon.tasks.lock().extend(tasks);
        Ok(daemon)
    }

    /// Stops listening and background work (brick processes and the NFS
    /// gateway keep running).
    pub(crate) async fn shutdown(&self) {
        self.stopping.send_replace(true);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.store.shutdown().await;
    }

    /// This server as a pool member.
    pub(crate) fn self_peer(&self) -> PeerInfo {
        PeerInfo {
            uuid: self.id.uuid.clone(),
            raft_id: self.id.raft_id,
            hostname: self.hostname.clone(),
            mgmt_addr: self.my_addr.clone(),
        }
    }

    /// Makes sure this server is in a pool (founding a one-server pool if it
    /// is in none) and listed in its config.
    pub(crate) async fn ensure_pool(&self) -> Result<(), String> {
        if !self.store.is_member() {
            self.store
                .initialize_single()
                .await
                .map_err(|e| e.to_string())?;
        }
        if !self.store.current().peers.contains_key(&self.id.uuid) {
            self.store
                .propose(Command::AddPeer(self.self_peer()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Brings this server's config up to date with the pool before a command
    /// acts on it: commits a `Noop` barrier and waits for it to apply here, so
    /// everything committed earlier is applied too. Best effort: without a
    /// quorum the command goes on with the local state after 5 s.
    pub(crate) async fn sync_config(&self) {
        if !self.store.is_member() {
            return;
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.store.propose(Command::Noop)).await;
    }

    /// Sends a peer request to the server `uuid` (handled in-process when it
    /// is this one).
    pub(crate) async fn call_peer(
        self: &Arc<Self>,
        uuid: &str,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<MgmtReply, MgmtError> {
        if uuid == self.id.uuid {
            let (reply, _) = dispatch::handle_peer(self, req, Bytes::new()).await;
            return match reply {
                MgmtReply::Error(e) => Err(MgmtError::Remote(e)),
                r => Ok(r),
            };
        }
        let addr = self
            .store
            .current()
            .peers
            .get(uuid)
            .map(|p| p.mgmt_addr.clone())
            .ok_or_else(|| MgmtError::Remote(format!("{uuid} is not a part of the cluster")))?;
        let (reply, _) = self.peers.call(&addr, req, Bytes::new(), timeout).await?;
        Ok(reply)
    }

    /// The host name of pool member `uuid`, for messages.
    pub(crate) fn peer_name(&self, uuid: &str) -> String {
        if uuid == self.id.uuid {
            return "localhost".to_string();
        }
        self.store
            .current()
            .peers
            .get(uuid)
            .map(|p| p.hostname.clone())
            .unwrap_or_else(|| uuid.to_string())
    }
}

/// The host part of the address other servers should use for this one: the
/// `--listen` address's name, else the system host name if it resolves to a
/// non-loopback local address, else this server's outgoing address.
async fn advertised_host(hostname: &str, listen: Option<IpAddr>) -> String {
    if listen.map(|l| !l.is_unspecified()).unwrap_or(false) {
        return hostname.to_string();
    }
    let addrs = crate::net::resolve(hostname).await;
    if addrs
        .iter()
        .any(|a| !a.is_loopback() && crate::net::is_local_ip(*a, None))
    {
        return hostname.to_string();
    }
    outgoing_ip()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| hostname.to_string())
}

/// The local address of the default route (no packet is sent).
fn outgoing_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}
