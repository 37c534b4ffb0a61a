//! Trusted pool membership: `peer probe` (the prober hands its pool secret
//! to a lone server, adds it to the config's Raft group, records it),
//! `peer detach`, `peer status`, `pool list`, and the joining and leaving
//! server's side of those exchanges.

use bytes::Bytes;
use kiln_config::{Command, ConfigError, PeerInfo, PoolConfig};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::PoolSecret;
use crate::client::connect_tcp;
use crate::daemon::Daemon;
use crate::error::MgmtError;
use crate::net::{is_local_ip, join_host_port, resolve, split_host_port};
use crate::proto::{
    CliReply, MgmtReply, MgmtRequest, PeerRequest, PeerRow, MGMT_PORT, MGMT_PROTOCOL_VERSION,
};

/// How long `peer status` waits for each peer's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// True if `host` (with management `port`) names this server.
pub(crate) async fn is_self_host(d: &Daemon, host: &str, port: u16) -> bool {
    if port != d.bound.port() {
        return false;
    }
    if host == d.hostname || host == "localhost" {
        return true;
    }
    resolve(host)
        .await
        .into_iter()
        .any(|ip| is_local_ip(ip, d.args.listen))
}

/// The pool member (other than this server) that `host` names: by host
/// name, else by a shared address.
pub(crate) async fn find_peer(d: &Daemon, cfg: &PoolConfig, host: &str) -> Option<PeerInfo> {
    let others = || cfg.peers.values().filter(|p| p.uuid != d.id.uuid);
    if let Some(p) = others().find(|p| p.hostname == host) {
        return Some(p.clone());
    }
    let wanted = resolve(host).await;
    if wanted.is_empty() {
        return None;
    }
    for p in others() {
        let mgmt_host = split_host_port(&p.mgmt_addr, MGMT_PORT)
            .map(|(h, _)| h)
            .unwrap_or_default();
        for name in [&p.hostname, &mgmt_host] {
            if resolve(name).await.iter().any(|ip| wanted.contains(ip)) {
                return Some(p.clone());
            }
        }
    }
    None
}

/// The pool member (this server included) that owns bricks named `host`.
pub(crate) async fn find_owner(d: &Daemon, cfg: &PoolConfig, host: &str) -> Option<PeerInfo> {
    if let Some(p) = cfg.peers.values().find(|p| p.hostname == host) {
        return Some(p.clone());
    }
    if is_self_host(d, host, d.bound.port()).await {
        return cfg.peers.get(&d.id.uuid).cloned();
    }
    find_peer(d, cfg, host).await
}

/// `peer probe HOST[:PORT]`.
pub(crate) async fn probe(d: &Arc<Daemon>, target: &str) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("peer probe: failed: {m}"));
    let (host, port) = match split_host_port(target, MGMT_PORT) {
        Ok(hp) => hp,
        Err(e) => return fail(e),
    };
    let _guard = d.membership.lock().await;
    if is_self_host(d, &host, port).await {
        return CliReply::Done("peer probe: success. Probe on localhost not needed".into());
    }
    let already = || {
        CliReply::Done(format!(
            "peer probe: success. Host {host} port {port} already in peer list"
        ))
    };
    if find_peer(d, &d.store.current(), &host).await.is_some() {
        return already();
    }
    let addr = join_host_port(&host, port);
    let (mut conn, _, uuid) = match connect_tcp(&addr).await {
        Ok(c) => c,
        Err(e) if e.is_transport() => {
            tracing::warn!(%addr, error = %e, "probe: cannot reach");
            return fail("Probe returned with Transport endpoint is not connected".into());
        }
        Err(e) => return fail(format!("{host}: {e}")),
    };
    if uuid == d.id.uuid {
        return CliReply::Done("peer probe: success. Probe on localhost not needed".into());
    }
    if d.store.current().peers.contains_key(&uuid) {
        return already();
    }
    if let Err(e) = d.ensure_pool().await {
        return fail(e);
    }
    let req = MgmtRequest::ProbeJoin {
        version: MGMT_PROTOCOL_VERSION,
        secret: d.secret.read().to_hex(),
        prober_uuid: d.id.uuid.clone(),
    };
    let raft_id = match conn.call(&req, Bytes::new(), Duration::from_secs(60)).await {
        Ok((MgmtReply::Joined { raft_id, .. }, _)) => raft_id,
        Ok((MgmtReply::AlreadyMember { .. }, _)) => return already(),
        Ok((MgmtReply::Error(e), _)) => return fail(format!("{host} {e}")),
        Ok((other, _)) => return fail(format!("{host}: unexpected answer {other:?}")),
        Err(MgmtError::Timeout { .. }) | Err(MgmtError::ConnectionLost { .. }) => {
            return fail("Probe returned with Transport endpoint is not connected".into())
        }
        Err(e) => return fail(format!("{host}: {e}")),
    };
    drop(conn);
    tracing::info!(%addr, %uuid, raft_id, "probe: adding server to the pool");
    if let Err(e) = d.store.store().add_server(raft_id, addr.clone()).await {
        return fail(format!(
            "{host} could not join the pool's configuration group: {e}"
        ));
    }
    let info = PeerInfo {
        uuid,
        raft_id,
        hostname: host.clone(),
        mgmt_addr: addr,
    };
    if let Err(e) = d.store.propose(Command::AddPeer(info)).await {
        return fail(e.to_string());
    }
    CliReply::Done("peer probe: success".into())
}

/// The joining server's side of a probe: accepted only by a server with no
/// other peers and no volumes, which then adopts the prober's secret.
pub(crate) async fn handle_probe_join(
    d: &Arc<Daemon>,
    version: u32,
    secret: &str,
    prober: &str,
) -> MgmtReply {
    if version != MGMT_PROTOCOL_VERSION {
        return MgmtReply::Error(format!(
            "speaks management protocol {MGMT_PROTOCOL_VERSION}, the prober {version}"
        ));
    }
    let Some(secret) = PoolSecret::from_hex(secret) else {
        return MgmtReply::Error("received a malformed pool secret".into());
    };
    // Two servers probing each other at once must not wait on each other.
    let Ok(_guard) = d.membership.try_lock() else {
        return MgmtReply::Error("is busy with another pool membership change; try again".into());
    };
    let cfg = d.store.current();
    if cfg.peers.contains_key(prober) && *d.secret.read() == secret {
        return MgmtReply::AlreadyMember {
            uuid: d.id.uuid.clone(),
        };
    }
    if cfg.peers.keys().any(|u| *u != d.id.uuid) {
        tracing::warn!(prober, "refused a probe: already in a pool");
        return MgmtReply::Error("is already part of another cluster".into());
    }
    if !cfg.volumes.is_empty() {
        tracing::warn!(prober, "refused a probe: volumes configured");
        return MgmtReply::Error(
            "is either already part of another cluster or having volumes configured".into(),
        );
    }
    if d.store.is_member() || !cfg.peers.is_empty() {
        if let Err(e) = d.store.reset().await {
            return MgmtReply::Error(format!("cannot leave its one-server pool: {e}"));
        }
    }
    if let Err(e) = adopt_secret(d, secret).await {
        return MgmtReply::Error(e);
    }
    tracing::info!(prober, "joining a trusted pool");
    MgmtReply::Joined {
        uuid: d.id.uuid.clone(),
        raft_id: d.id.raft_id,
    }
}

async fn adopt_secret(d: &Daemon, secret: PoolSecret) -> Result<(), String> {
    let dir = d.args.state_dir.clone();
    let s = secret.clone();
    tokio::task::spawn_blocking(move || s.save(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot store the pool secret: {e}"))?;
    *d.secret.write() = secret;
    d.secret_epoch
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    d.peers.clear();
    Ok(())
}

/// `peer detach HOST [force]`.
pub(crate) async fn detach(d: &Arc<Daemon>, target: &str, force: bool) -> CliReply {
    let fail = |m: String| CliReply::Failed(format!("peer detach: failed: {m}"));
    let (host, port) = match split_host_port(target, MGMT_PORT) {
        Ok(hp) => hp,
        Err(e) => return fail(e),
    };
    let _guard = d.membership.lock().await;
    if is_self_host(d, &host, port).await {
        return fail(format!("{host} is localhost"));
    }
    let cfg = d.store.current();
    let Some(peer) = find_peer(d, &cfg, &host).await else {
        return fail(format!("{host} is not part of cluster"));
    };
    if cfg
        .volumes
        .values()
        .any(|v| v.bricks.iter().any(|b| b.peer_uuid == peer.uuid))
    {
        return fail(ConfigError::PeerHasBricks(host).to_string());
    }
    let up = d.peers.ping(&peer.mgmt_addr, PING_TIMEOUT).await;
    if !up {
        tracing::warn!(peer = %peer.hostname, force, "detaching an unreachable peer");
    }
    if let Err(e) = d.store.store().remove_server(peer.raft_id).await {
        return fail(format!(
            "{host}: cannot remove it from the pool's configuration group: {e}"
        ));
    }
    if let Err(e) = d
        .store
        .propose(Command::RemovePeer {
            uuid: peer.uuid.clone(),
        })
        .await
    {
        return fail(e.to_string());
    }
    if up {
        if let Err(e) = d
            .peers
            .call(
                &peer.mgmt_addr,
                PeerRequest::Detached,
                Bytes::new(),
                Duration::from_secs(30),
            )
            .await
        {
            tracing::warn!(peer = %peer.hostname, error = %e, "could not tell the detached server");
        }
    }
    CliReply::Done("Detach successful".into())
}

/// The detached server's side: forget the pool (config and secret).
pub(crate) async fn handle_detached(d: &Arc<Daemon>) -> MgmtReply {
    let _guard = d.membership.lock().await;
    tracing::info!("detached from the trusted pool; starting over as a lone server");
    if let Err(e) = d.store.reset().await {
        return MgmtReply::Error(format!("cannot reset the config store: {e}"));
    }
    match adopt_secret(d, PoolSecret::generate()).await {
        Ok(()) => MgmtReply::Ok,
        Err(e) => MgmtReply::Error(e),
    }
}

/// `peer status` (other servers) or `pool list` (all, this one as `localhost`).
pub(crate) async fn status(d: &Arc<Daemon>, with_self: bool) -> CliReply {
    let cfg = d.store.current();
    let others: Vec<PeerInfo> = cfg
        .peers
        .values()
        .filter(|p| p.uuid != d.id.uuid)
        .cloned()
        .collect();
    let pings = others
        .iter()
        .map(|p| d.peers.ping(&p.mgmt_addr, PING_TIMEOUT));
    let up = futures::future::join_all(pings).await;
    let mut rows: Vec<PeerRow> = others
        .into_iter()
        .zip(up)
        .map(|(p, connected)| PeerRow {
            uuid: p.uuid,
            hostname: p.hostname,
            connected,
        })
        .collect();
    if with_self {
        rows.push(PeerRow {
            uuid: d.id.uuid.clone(),
            hostname: "localhost".into(),
            connected: true,
        });
        CliReply::Pool(rows)
    } else {
        CliReply::Peers(rows)
    }
}
