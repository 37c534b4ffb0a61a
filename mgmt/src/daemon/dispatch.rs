//! Routing one request to its handler, with the access rules: peer messages
//! only on a connection that proved the pool secret; CLI commands only from
//! the local socket, loopback, or a pool member's address; volume specs
//! (fetched or watched) and probe-join to anyone.

use bytes::Bytes;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Daemon;
use crate::proto::{
    CliReply, CliRequest, MgmtReply, MgmtRequest, PeerRequest, MGMT_PROTOCOL_VERSION,
};
use crate::{peer, status, volume_ops};

/// Where a connection comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// The local unix socket (root checked at accept).
    Local,
    /// TCP from this address.
    Tcp(IpAddr),
}

/// Per-connection state.
pub(crate) struct Session {
    pub(crate) origin: Origin,
    /// The nonce sent in `Hello`.
    pub(crate) nonce: Vec<u8>,
    /// Set once the other side proved it holds the pool secret.
    pub(crate) peer_uuid: Option<String>,
    /// The secret epoch it proved (see `Daemon::secret_epoch`).
    pub(crate) auth_epoch: u64,
}

/// Handles one request; returns the reply, its data, and whether to close.
pub(crate) async fn handle(
    d: &Arc<Daemon>,
    session: &mut Session,
    req: MgmtRequest,
    data: Bytes,
) -> (MgmtReply, Bytes, bool) {
    match req {
        MgmtRequest::Auth {
            version,
            uuid,
            client_nonce,
            proof,
        } => {
            if version != MGMT_PROTOCOL_VERSION {
                let e = format!("management protocol {version} is not supported (this server speaks {MGMT_PROTOCOL_VERSION})");
                return (MgmtReply::Error(e), Bytes::new(), true);
            }
            let epoch = d.secret_epoch.load(Ordering::SeqCst);
            let secret = d.secret.read().clone();
            if client_nonce.len() < 16
                || !secret.verify_client(&session.nonce, &client_nonce, &proof)
            {
                tracing::warn!(origin = ?session.origin, claimed = %uuid, "peer authentication failed (wrong pool secret)");
                return (
                    MgmtReply::Error(
                        "authentication failed: not a member of this trusted pool".into(),
                    ),
                    Bytes::new(),
                    true,
                );
            }
            session.peer_uuid = Some(uuid);
            session.auth_epoch = epoch;
            let proof = secret.server_proof(&client_nonce, &session.nonce);
            (MgmtReply::AuthOk { proof }, Bytes::new(), false)
        }
        MgmtRequest::Cli(cmd) => {
            if !cli_allowed(d, session).await {
                tracing::warn!(origin = ?session.origin, "refused a CLI command from outside the pool");
                let e = "permission denied: CLI commands are accepted only from this server or a member of its trusted pool";
                return (MgmtReply::Error(e.into()), Bytes::new(), true);
            }
            tracing::info!(origin = ?session.origin, command = ?cmd, "CLI command");
            (MgmtReply::Cli(run_cli(d, cmd).await), Bytes::new(), false)
        }
        MgmtRequest::GetSpec { volume } => (get_spec(d, &volume), Bytes::new(), false),
        MgmtRequest::WatchSpec {
            volume,
            known,
            wait_secs,
        } => (
            super::watch::watch_spec(d, &volume, known, wait_secs).await,
            Bytes::new(),
            false,
        ),
        MgmtRequest::ProbeJoin {
            version,
            secret,
            prober_uuid,
        } => (
            peer::handle_probe_join(d, version, &secret, &prober_uuid).await,
            Bytes::new(),
            false,
        ),
        MgmtRequest::Peer(p) => {
            if session.peer_uuid.is_none() {
                tracing::warn!(origin = ?session.origin, "peer request on an unauthenticated connection");
                return (
                    MgmtReply::Error(
                        "permission denied: not authenticated as a pool member".into(),
                    ),
                    Bytes::new(),
                    true,
                );
            }
            let (r, data) = handle_peer(d, p, data).await;
            (r, data, false)
        }
    }
}

async fn cli_allowed(d: &Daemon, session: &Session) -> bool {
    let ip = match session.origin {
        Origin::Local => return true,
        Origin::Tcp(ip) => ip,
    };
    if ip.is_loopback() || session.peer_uuid.is_some() || crate::net::is_local_ip(ip, None) {
        return true;
    }
    let cfg = d.store.current();
    for p in cfg.peers.values().filter(|p| p.uuid != d.id.uuid) {
        let mgmt_host = crate::net::split_host_port(&p.mgmt_addr, 0)
            .map(|(h, _)| h)
            .unwrap_or_default();
        for host in [&p.hostname, &mgmt_host] {
            if crate::net::resolve(host).await.contains(&ip) {
                return true;
            }
        }
    }
    false
}

async fn run_cli(d: &Arc<Daemon>, cmd: CliRequest) -> CliReply {
    d.sync_config().await;
    match cmd {
        CliRequest::PeerProbe { host } => peer::probe(d, &host).await,
        CliRequest::PeerDetach { host, force } => peer::detach(d, &host, force).await,
        CliRequest::PeerStatus => peer::status(d, false).await,
        CliRequest::PoolList => peer::status(d, true).await,
        CliRequest::VolumeCreate(a) => volume_ops::create(d, a).await,
        CliRequest::VolumeStart { name, force } => volume_ops::start(d, &name, force).await,
        CliRequest::VolumeStop { name, force } => volume_ops::stop(d, &name, force).await,
        CliRequest::VolumeDelete { name } => volume_ops::delete(d, &name).await,
        CliRequest::VolumeInfo { name } => volume_ops::info(d, name.as_deref()),
        CliRequest::VolumeStatus { name, detail } => {
            status::volume_status(d, name.as_deref(), detail).await
        }
        CliRequest::VolumeSet { name, key, value } => volume_ops::set(d, &name, &key, &value).await,
        CliRequest::VolumeReset { name, key, .. } => {
            volume_ops::reset(d, &name, key.as_deref()).await
        }
        CliRequest::VolumeHeal { name, op } => crate::heal::heal(d, &name, op).await,
        CliRequest::VolumeAddBrick {
            name,
            replica,
            bricks,
            force,
        } => crate::add_brick::add_brick(d, &name, replica, bricks, force).await,
    }
}

fn get_spec(d: &Daemon, volume: &str) -> MgmtReply {
    let cfg = d.store.current();
    match cfg.volumes.get(volume) {
        None => MgmtReply::Error(format!("Volume {volume} does not exist")),
        Some(v) if v.status != kiln_config::VolumeStatus::Started => {
            MgmtReply::Error(format!("Volume {volume} is not started"))
        }
        Some(v) => MgmtReply::Spec(v.spec()),
    }
}

/// Handles a message from another pool member (or from this daemon itself).
pub(crate) async fn handle_peer(
    d: &Arc<Daemon>,
    req: PeerRequest,
    data: Bytes,
) -> (MgmtReply, Bytes) {
    let reply = match req {
        PeerRequest::Ping => MgmtReply::Ok,
        PeerRequest::Raft => {
            return match d.store.store().handle_peer_message(data.to_vec()).await {
                Ok(answer) => (MgmtReply::Raft, Bytes::from(answer)),
                Err(e) => (MgmtReply::Error(e.to_string()), Bytes::new()),
            }
        }
        PeerRequest::StageBrick {
            path,
            volume_id,
            force,
        } => blocking(move || crate::brickfs::stage(&path, &volume_id, force)).await,
        PeerRequest::UnstageBrick { path, volume_id } => {
            blocking(move || crate::brickfs::unstage(&path, &volume_id)).await
        }
        PeerRequest::EnsureBricks { volume } => {
            // `volume start [force]` also restarts a gateway that died.
            d.nfs.kick();
            d.shd.kick();
            MgmtReply::BricksStarted(d.supervisor.ensure_volume(&volume, &d.store).await)
        }
        PeerRequest::StopBricks { volume } => {
            d.supervisor.stop_volume(&volume).await;
            MgmtReply::Ok
        }
        PeerRequest::BrickStatus { volume, detail } => {
            MgmtReply::BrickStates(status::local_brick_states(d, &volume, detail).await)
        }
        PeerRequest::Detached => peer::handle_detached(d).await,
        PeerRequest::NfsStatus => MgmtReply::NfsState(d.nfs.state().await),
        PeerRequest::ShdStatus => MgmtReply::ShdState(d.shd.state().await),
        PeerRequest::Heal(req) => match d.shd.ask(&req, &d.store.current()).await {
            Ok(bricks) => MgmtReply::Heal(bricks),
            Err(e) => MgmtReply::Error(e),
        },
    };
    (reply, Bytes::new())
}

async fn blocking(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> MgmtReply {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => MgmtReply::Ok,
        Ok(Err(e)) => MgmtReply::Error(e),
        Err(e) => MgmtReply::Error(format!("internal error: {e}")),
    }
}
