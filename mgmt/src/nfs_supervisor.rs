//! The server's NFS gateway, as GlusterFS runs gluster/nfs: ONE `kiln nfs`
//! process per server serving every started volume whose `nfs.disable` is
//! not on (a `ChildSupervisor` child: started with the first such volume,
//! restarted when that set or a served volume's spec changes, stopped when
//! none is left, adopted across daemon restarts by `STATE/run/nfs/nfs.pid`).

use kiln_config::{PoolConfig, VolumeStatus};
use kiln_core::graph::VolumeSpec;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;

use crate::child_supervisor::{ChildKind, ChildSupervisor};
use crate::daemon::store::StoreHandle;
use crate::proto::NfsServerState;
use crate::supervisor::BrickLauncher;

/// The NFS port the gateway serves first (and `volume status` shows).
pub(crate) const NFS_PORT: u16 = 2049;

/// What the NFS gateway process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NfsLaunch {
    /// Address to bind (`--listen` of the server); `None`: all addresses.
    pub(crate) listen: Option<IpAddr>,
    /// Management server the gateway fetches specs from (`IP:PORT`).
    pub(crate) mgmt: String,
    /// Volumes to serve.
    pub(crate) volumes: Vec<String>,
    /// Log file.
    pub(crate) log_file: PathBuf,
    /// The gateway's state directory (NLM/NSM monitor records).
    pub(crate) state_dir: PathBuf,
}

/// The gateway as a child kind: what it serves and how it starts.
pub(crate) struct NfsGateway {
    listen: Option<IpAddr>,
    mgmt: String,
    nfs_state_dir: PathBuf,
    log_file: PathBuf,
    launcher: Arc<dyn BrickLauncher>,
}

impl ChildKind for NfsGateway {
    type Wanted = VolumeSpec;
    const NAME: &'static str = "nfs";
    const WHAT: &'static str = "NFS gateway";
    const NONE_WANTED: &'static str = "no volume to serve over NFS";

    fn enabled(&self) -> bool {
        self.launcher.runs_nfs()
    }

    fn wanted(&self, cfg: &PoolConfig) -> BTreeMap<String, VolumeSpec> {
        exported(cfg)
    }

    fn launch(&self, wanted: &BTreeMap<String, VolumeSpec>) -> io::Result<Child> {
        self.launcher.launch_nfs(&NfsLaunch {
            listen: gateway_listen(self.listen, wanted),
            mgmt: self.mgmt.clone(),
            volumes: wanted.keys().cloned().collect(),
            log_file: self.log_file.clone(),
            state_dir: self.nfs_state_dir.clone(),
        })
    }
}

/// This server's NFS gateway.
pub(crate) struct NfsSupervisor {
    listen: Option<IpAddr>,
    child: ChildSupervisor<NfsGateway>,
}

impl NfsSupervisor {
    /// A supervisor for the gateway of the server listening on `listen`
    /// whose management port is `mgmt_port`.
    pub(crate) fn new(
        listen: Option<IpAddr>,
        mgmt_port: u16,
        state_dir: &Path,
        log_dir: &Path,
        launcher: Arc<dyn BrickLauncher>,
    ) -> Arc<NfsSupervisor> {
        let listen = listen.filter(|ip| !ip.is_unspecified());
        let mgmt_ip = listen.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let log_file = log_dir.join("nfs.log");
        let kind = NfsGateway {
            listen,
            mgmt: SocketAddr::new(mgmt_ip, mgmt_port).to_string(),
            nfs_state_dir: state_dir.join("nfs"),
            log_file: log_file.clone(),
            launcher,
        };
        Arc::new(NfsSupervisor {
            listen,
            child: ChildSupervisor::new(kind, state_dir, log_file),
        })
    }

    /// Asks the supervision loop to check the gateway now (it restarts a
    /// gateway that died, as `volume start VOL force` does in GlusterFS).
    pub(crate) fn kick(&self) {
        self.child.kick();
    }

    /// The gateway's state for `volume status` (online: runs and accepts on
    /// 2049); `None` if this daemon runs no gateway at all (its launcher cannot).
    pub(crate) async fn state(&self) -> Option<NfsServerState> {
        let mut state = self.child.status(NFS_PORT).await?;
        state.online = state.online && self.accepts().await;
        Some(state)
    }

    /// True if the NFS port accepts a TCP connection.
    async fn accepts(&self) -> bool {
        let ip = self.listen.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        matches!(
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect((ip, NFS_PORT)),
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Follows the config until the store goes away.
    pub(crate) async fn run(self: Arc<Self>, store: Arc<StoreHandle>) {
        self.child.run(store).await
    }
}

/// The volumes the gateway serves, with their specs (generation left out:
/// it counts changes, not what a client sees).
fn exported(cfg: &PoolConfig) -> BTreeMap<String, VolumeSpec> {
    cfg.volumes
        .values()
        .filter(|v| v.status == VolumeStatus::Started && !crate::options::nfs_disabled(&v.options))
        .map(|v| {
            let mut spec = v.spec();
            spec.generation = 0;
            (v.name.clone(), spec)
        })
        .collect()
}

/// The address the gateway binds: the server's, unless a served volume
/// sets `nfs.bind-all` (then all addresses, for a floating service address).
fn gateway_listen(listen: Option<IpAddr>, wanted: &BTreeMap<String, VolumeSpec>) -> Option<IpAddr> {
    if wanted
        .values()
        .any(|s| crate::options::nfs_bind_all(&s.options))
    {
        return None;
    }
    listen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child_supervisor::fingerprint;
    use kiln_config::{BrickEntry, VolumeConfig};
    use kiln_core::graph::VolumeKind;

    fn vol(name: &str, status: VolumeStatus, opts: &[(&str, &str)]) -> VolumeConfig {
        VolumeConfig {
            name: name.into(),
            id: format!("id-{name}"),
            kind: VolumeKind::Distribute,
            transport: "tcp".into(),
            status,
            bricks: vec![BrickEntry {
                host: "node01".into(),
                path: format!("/export/{name}"),
                peer_uuid: "u1".into(),
                port: 24009,
            }],
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            generation: 1,
        }
    }

    #[test]
    fn exported_volumes_and_fingerprints() {
        let mut cfg = PoolConfig::default();
        for v in [
            vol("a", VolumeStatus::Started, &[]),
            vol("b", VolumeStatus::Started, &[("nfs.disable", "on")]),
            vol("c", VolumeStatus::Stopped, &[]),
            vol("d", VolumeStatus::Started, &[("nfs.disable", "off")]),
        ] {
            cfg.volumes.insert(v.name.clone(), v);
        }
        let e = exported(&cfg);
        assert_eq!(e.keys().collect::<Vec<_>>(), ["a", "d"]);
        let fp = fingerprint(&e);
        // A new generation alone changes nothing a client sees.
        cfg.volumes.get_mut("a").unwrap().generation = 7;
        assert_eq!(fingerprint(&exported(&cfg)), fp);
        // A brick port or an option does.
        cfg.volumes.get_mut("a").unwrap().bricks[0].port = 24010;
        let fp2 = fingerprint(&exported(&cfg));
        assert_ne!(fp2, fp);
        cfg.volumes
            .get_mut("d")
            .unwrap()
            .options
            .insert("nfs.rpc-auth-allow".into(), "10.0.0.1".into());
        assert_ne!(fingerprint(&exported(&cfg)), fp2);
    }

    #[test]
    fn bind_all_frees_the_gateway_from_the_server_address() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut cfg = PoolConfig::default();
        for v in [
            vol("a", VolumeStatus::Started, &[]),
            vol("b", VolumeStatus::Stopped, &[("nfs.bind-all", "on")]),
        ] {
            cfg.volumes.insert(v.name.clone(), v);
        }
        assert_eq!(gateway_listen(Some(ip), &exported(&cfg)), Some(ip));
        let fp = fingerprint(&exported(&cfg));
        cfg.volumes
            .get_mut("a")
            .unwrap()
            .options
            .insert("nfs.bind-all".into(), "on".into());
        assert_eq!(gateway_listen(Some(ip), &exported(&cfg)), None);
        // Setting it restarts the gateway (a new fingerprint).
        assert_ne!(fingerprint(&exported(&cfg)), fp);
    }
}
