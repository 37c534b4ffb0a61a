//! The server's self-heal daemon, as GlusterFS runs glustershd: ONE
//! `kiln shd` process per server healing every started replicated volume
//! with a brick on this server (a `ChildSupervisor` child: started with the
//! first such volume, restarted when that set, a volume's spec or this
//! server's bricks change, e.g. `add-brick`, stopped when none is left,
//! adopted across daemon restarts by `STATE/run/shd/shd.pid`); it answers
//! heal commands on `STATE/run/shd/shd.sock`.

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
use crate::proto::{BrickHeal, NfsServerState, ShdRequest};
use crate::supervisor::BrickLauncher;

/// How long a heal command waits for the heal daemon.
const ASK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a heal command waits for a starting heal daemon's socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// What the heal daemon process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShdLaunch {
    /// Management server the daemon fetches specs from (`IP:PORT`).
    pub(crate) mgmt: String,
    /// Volumes to heal.
    pub(crate) volumes: Vec<String>,
    /// This server's bricks of those volumes (`HOST:/PATH`).
    pub(crate) bricks: Vec<String>,
    /// Its control socket.
    pub(crate) control: PathBuf,
    /// Log file.
    pub(crate) log_file: PathBuf,
}

/// The heal daemon as a child kind: what it heals and how it starts.
pub(crate) struct HealDaemon {
    uuid: String,
    mgmt: String,
    control: PathBuf,
    log_file: PathBuf,
    launcher: Arc<dyn BrickLauncher>,
}

impl ChildKind for HealDaemon {
    type Wanted = Healed;
    const NAME: &'static str = "shd";
    const WHAT: &'static str = "self-heal daemon";
    const NONE_WANTED: &'static str = "no replicated volume to heal here";

    fn enabled(&self) -> bool {
        self.launcher.runs_shd()
    }

    fn wanted(&self, cfg: &PoolConfig) -> BTreeMap<String, Healed> {
        healed(cfg, &self.uuid)
    }

    fn launch(&self, wanted: &BTreeMap<String, Healed>) -> io::Result<Child> {
        self.launcher.launch_shd(&ShdLaunch {
            mgmt: self.mgmt.clone(),
            volumes: wanted.keys().cloned().collect(),
            bricks: wanted
                .values()
                .flat_map(|w| w.bricks.iter().cloned())
                .collect(),
            control: self.control.clone(),
            log_file: self.log_file.clone(),
        })
    }
}

/// This server's self-heal daemon.
pub(crate) struct ShdSupervisor {
    child: ChildSupervisor<HealDaemon>,
}

impl ShdSupervisor {
    /// A supervisor for the heal daemon of the server `uuid` listening on
    /// `listen` whose management port is `mgmt_port`.
    pub(crate) fn new(
        uuid: String,
        listen: Option<IpAddr>,
        mgmt_port: u16,
        state_dir: &Path,
        log_dir: &Path,
        launcher: Arc<dyn BrickLauncher>,
    ) -> Arc<ShdSupervisor> {
        let listen = listen.filter(|ip| !ip.is_unspecified());
        let mgmt_ip = listen.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let log_file = log_dir.join("shd.log");
        let kind = HealDaemon {
            uuid,
            mgmt: SocketAddr::new(mgmt_ip, mgmt_port).to_string(),
            control: state_dir.join("run").join("shd").join("shd.sock"),
            log_file: log_file.clone(),
            launcher,
        };
        Arc::new(ShdSupervisor {
            child: ChildSupervisor::new(kind, state_dir, log_file),
        })
    }

    /// Asks the supervision loop to check the heal daemon now (it restarts
    /// one that died, as `volume start VOL force` does in GlusterFS).
    pub(crate) fn kick(&self) {
        self.child.kick();
    }

    /// The heal daemon's state for `volume status`; `None` if this
    /// management daemon runs none at all (its launcher cannot).
    pub(crate) async fn state(&self) -> Option<NfsServerState> {
        self.child.status(0).await
    }

    /// The control socket of the heal daemon.
    pub(crate) fn socket(&self) -> PathBuf {
        self.child.kind().control.clone()
    }

    /// Sends `req` to this server's heal daemon, first bringing the daemon
    /// in line with `cfg` (a command right after `add-brick` reaches a
    /// daemon that heals the new graph); no bricks if this server runs none
    /// for that volume.
    pub(crate) async fn ask(
        &self,
        req: &ShdRequest,
        cfg: &PoolConfig,
    ) -> Result<Vec<BrickHeal>, String> {
        if !self.child.kind().enabled() {
            return Ok(Vec::new());
        }
        self.child.reconcile(cfg).await;
        let runs = self
            .child
            .running()
            .await
            .is_some_and(|(_, volumes)| volumes.contains(&req.volume));
        if !runs {
            return Ok(Vec::new());
        }
        // A daemon just (re)started binds its socket within moments.
        let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
        loop {
            match crate::shd::ask_shd(&self.socket(), req, ASK_TIMEOUT).await {
                Err(e) if e.contains("not running") && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                r => return r,
            }
        }
    }

    /// Follows the config until the store goes away.
    pub(crate) async fn run(self: Arc<Self>, store: Arc<StoreHandle>) {
        self.child.run(store).await
    }
}

/// What the heal daemon heals of one volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Healed {
    spec: VolumeSpec,
    /// This server's bricks (`HOST:/PATH`).
    bricks: Vec<String>,
}

/// The started replicated volumes with a brick of server `uuid`, with
/// their specs (generation left out: it counts changes, not what a client
/// sees) and that server's bricks.
fn healed(cfg: &PoolConfig, uuid: &str) -> BTreeMap<String, Healed> {
    cfg.volumes
        .values()
        .filter(|v| v.status == VolumeStatus::Started && v.replica_count() > 1)
        .filter_map(|v| {
            let bricks: Vec<String> = v
                .bricks
                .iter()
                .filter(|b| b.peer_uuid == uuid)
                .map(|b| format!("{}:{}", b.host, b.path))
                .collect();
            if bricks.is_empty() {
                return None;
            }
            let mut spec = v.spec();
            spec.generation = 0;
            Some((v.name.clone(), Healed { spec, bricks }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child_supervisor::fingerprint;
    use kiln_config::{BrickEntry, VolumeConfig};
    use kiln_core::graph::VolumeKind;

    fn vol(name: &str, kind: VolumeKind, status: VolumeStatus, owners: &[&str]) -> VolumeConfig {
        VolumeConfig {
            name: name.into(),
            id: format!("id-{name}"),
            kind,
            transport: "tcp".into(),
            status,
            bricks: owners
                .iter()
                .enumerate()
                .map(|(i, o)| BrickEntry {
                    host: format!("node-{o}"),
                    path: format!("/export/{name}{i}"),
                    peer_uuid: o.to_string(),
                    port: 24009,
                })
                .collect(),
            options: BTreeMap::new(),
            generation: 1,
        }
    }

    #[test]
    fn healed_volumes_and_fingerprints() {
        let r2 = VolumeKind::Replicate { replica: 2 };
        let mut cfg = PoolConfig::default();
        for v in [
            vol("a", r2, VolumeStatus::Started, &["u1", "u2"]),
            vol("b", r2, VolumeStatus::Started, &["u2", "u3"]),
            vol(
                "c",
                VolumeKind::Distribute,
                VolumeStatus::Started,
                &["u1", "u1"],
            ),
            vol("d", r2, VolumeStatus::Stopped, &["u1", "u2"]),
        ] {
            cfg.volumes.insert(v.name.clone(), v);
        }
        let h = healed(&cfg, "u1");
        assert_eq!(h.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(h["a"].bricks, ["node-u1:/export/a0"]);
        assert_eq!(healed(&cfg, "u2").len(), 2);
        assert!(healed(&cfg, "u9").is_empty());
        let fp = fingerprint(&h);
        cfg.volumes.get_mut("a").unwrap().generation = 9;
        assert_eq!(fingerprint(&healed(&cfg, "u1")), fp);
        // add-brick changes what is healed.
        let a = cfg.volumes.get_mut("a").unwrap();
        a.kind = VolumeKind::Replicate { replica: 3 };
        a.bricks.push(BrickEntry {
            host: "node-u3".into(),
            path: "/export/a2".into(),
            peer_uuid: "u3".into(),
            port: 0,
        });
        assert_ne!(fingerprint(&healed(&cfg, "u1")), fp);
        assert_eq!(healed(&cfg, "u3").len(), 2);
    }
}
