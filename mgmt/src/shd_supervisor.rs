//! The server's self-heal daemon, as GlusterFS runs glustershd: ONE
//! `kiln shd` process per server healing every started replicated volume
//! with a brick on this server. Started with the first such volume,
//! restarted when that set, a volume's spec or this server's bricks change
//! (e.g. `add-brick`), stopped when none is left; its pid file is
//! `STATE/run/shd/shd.pid` beside the fingerprint of what it heals, and it
//! answers heal commands on `STATE/run/shd/shd.sock`.

use kiln_config::{PoolConfig, VolumeStatus};
use kiln_core::graph::VolumeSpec;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

use crate::daemon::store::StoreHandle;
use crate::proto::{BrickHeal, NfsServerState, ShdRequest};
use crate::supervisor::{read_pid, write_pid, BrickLauncher};

/// How long a config must stay unchanged before the heal daemon follows it
/// (a `volume start` commits the status, then each brick's port).
const SETTLE: Duration = Duration::from_millis(300);
/// Upper bound of that wait while changes keep coming.
const SETTLE_MAX: Duration = Duration::from_secs(5);
/// How long the daemon has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
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

/// The heal daemon process this management daemon runs or adopted.
struct Proc {
    pid: u32,
    /// Set when our own child exited; `None` for an adopted process.
    exited: Option<Arc<AtomicBool>>,
    volumes: Vec<String>,
    fingerprint: String,
}

impl Proc {
    fn alive(&self) -> bool {
        match &self.exited {
            Some(flag) => !flag.load(Ordering::SeqCst),
            None => is_shd_process(self.pid),
        }
    }
}

#[derive(Default)]
struct State {
    proc: Option<Proc>,
    first_pass_done: bool,
}

/// This server's self-heal daemon.
pub(crate) struct ShdSupervisor {
    uuid: String,
    mgmt: String,
    run_dir: PathBuf,
    log_file: PathBuf,
    launcher: Arc<dyn BrickLauncher>,
    state: Mutex<State>,
    kick: Notify,
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
        Arc::new(ShdSupervisor {
            uuid,
            mgmt: SocketAddr::new(mgmt_ip, mgmt_port).to_string(),
            run_dir: state_dir.join("run").join("shd"),
            log_file: log_dir.join("shd.log"),
            launcher,
            state: Mutex::new(State::default()),
            kick: Notify::new(),
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("shd.pid")
    }

    fn fingerprint_file(&self) -> PathBuf {
        self.run_dir.join("shd.spec")
    }

    /// Asks the supervision loop to check the heal daemon now (it restarts
    /// one that died, as `volume start VOL force` does in GlusterFS).
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// The heal daemon's state for `volume status`; `None` if this
    /// management daemon runs none at all (its launcher cannot).
    pub(crate) async fn state(&self) -> Option<NfsServerState> {
        if !self.launcher.runs_shd() {
            return None;
        }
        let st = self.state.lock().await;
        let (pid, volumes) = match &st.proc {
            Some(p) if p.alive() => (Some(p.pid), p.volumes.clone()),
            _ => (None, Vec::new()),
        };
        Some(NfsServerState {
            host: String::new(),
            port: 0,
            online: pid.is_some(),
            pid,
            volumes,
        })
    }

    /// The control socket of the heal daemon.
    pub(crate) fn socket(&self) -> PathBuf {
        self.run_dir.join("shd.sock")
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
        if !self.launcher.runs_shd() {
            return Ok(Vec::new());
        }
        self.reconcile(cfg).await;
        let runs = {
            let st = self.state.lock().await;
            st.proc
                .as_ref()
                .is_some_and(|p| p.alive() && p.volumes.contains(&req.volume))
        };
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

    /// Follows the config until the store goes away: reconciles, then waits
    /// for a change (or a kick) and for the config to settle.
    pub(crate) async fn run(self: Arc<Self>, store: Arc<StoreHandle>) {
        if !self.launcher.runs_shd() {
            return;
        }
        let mut rx = store.subscribe();
        loop {
            let cfg = rx.borrow_and_update().clone();
            self.reconcile(&cfg).await;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = self.kick.notified() => {}
            }
            let deadline = tokio::time::Instant::now() + SETTLE_MAX;
            loop {
                match tokio::time::timeout(SETTLE, rx.changed()).await {
                    Ok(Ok(())) if tokio::time::Instant::now() < deadline => continue,
                    Ok(Ok(())) | Err(_) => break,
                    Ok(Err(_)) => return,
                }
            }
        }
    }

    /// Brings the heal daemon in line with `cfg`.
    pub(crate) async fn reconcile(&self, cfg: &PoolConfig) {
        let wanted = healed(cfg, &self.uuid);
        let mut st = self.state.lock().await;
        let first = !std::mem::replace(&mut st.first_pass_done, true);
        if wanted.is_empty() {
            if let Some(p) = st.proc.take() {
                tracing::info!(
                    pid = p.pid,
                    "no replicated volume to heal here: stopping the self-heal daemon"
                );
                stop(&p).await;
            } else if first {
                self.stop_stray().await;
            }
            self.remove_files().await;
            return;
        }
        let fp = fingerprint(&wanted);
        if let Some(p) = &st.proc {
            if p.alive() && p.fingerprint == fp {
                return;
            }
        }
        if st.proc.is_none() && first {
            if let Some(p) = self.adoptable(&fp, &wanted).await {
                tracing::info!(pid = p.pid, "adopting the running self-heal daemon");
                st.proc = Some(p);
                return;
            }
            self.stop_stray().await;
        }
        if let Some(p) = st.proc.take() {
            if p.alive() {
                tracing::info!(pid = p.pid, volumes = ?wanted.keys().collect::<Vec<_>>(), "volumes or specs changed: restarting the self-heal daemon");
                stop(&p).await;
            }
        }
        match self.launch(&wanted, &fp).await {
            Ok(p) => st.proc = Some(p),
            Err(e) => tracing::error!(error = %e, "cannot start the self-heal daemon"),
        }
    }

    /// A heal daemon left by an earlier daemon that heals exactly `wanted`.
    async fn adoptable(&self, fp: &str, wanted: &BTreeMap<String, Healed>) -> Option<Proc> {
        let pid = read_pid(&self.pid_file())?;
        let saved = tokio::fs::read_to_string(self.fingerprint_file())
            .await
            .ok()?;
        (is_shd_process(pid) && saved.trim() == fp).then(|| Proc {
            pid,
            exited: None,
            volumes: wanted.keys().cloned().collect(),
            fingerprint: fp.to_string(),
        })
    }

    /// Stops a heal daemon an earlier daemon left running (by the pid file).
    async fn stop_stray(&self) {
        if let Some(pid) = read_pid(&self.pid_file()).filter(|p| is_shd_process(*p)) {
            tracing::info!(
                pid,
                "stopping the self-heal daemon an earlier daemon started"
            );
            stop(&Proc {
                pid,
                exited: None,
                volumes: Vec::new(),
                fingerprint: String::new(),
            })
            .await;
        }
    }

    async fn remove_files(&self) {
        let _ = tokio::fs::remove_file(self.pid_file()).await;
        let _ = tokio::fs::remove_file(self.fingerprint_file()).await;
    }

    async fn launch(&self, wanted: &BTreeMap<String, Healed>, fp: &str) -> Result<Proc, String> {
        let run_dir = self.run_dir.clone();
        let log_dir = self.log_file.parent().map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(run_dir)?;
            match log_dir {
                Some(d) => std::fs::create_dir_all(d),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot create run/log directories: {e}"))?;
        let volumes: Vec<String> = wanted.keys().cloned().collect();
        let launch = ShdLaunch {
            mgmt: self.mgmt.clone(),
            volumes: volumes.clone(),
            bricks: wanted
                .values()
                .flat_map(|w| w.bricks.iter().cloned())
                .collect(),
            control: self.socket(),
            log_file: self.log_file.clone(),
        };
        let mut child = self
            .launcher
            .launch_shd(&launch)
            .map_err(|e| format!("cannot start the self-heal daemon process: {e}"))?;
        let pid = child.id().unwrap_or(0);
        let (pid_file, fp_file) = (self.pid_file(), self.fingerprint_file());
        let fp_text = format!("{fp}\n");
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::write(&fp_file, fp_text)?;
            write_pid(&pid_file, pid)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(file = %self.pid_file().display(), "cannot write the self-heal daemon's pid file");
        }
        let exited = Arc::new(AtomicBool::new(false));
        {
            let exited = exited.clone();
            let pid_file = self.pid_file();
            tokio::spawn(async move {
                let status = child.wait().await;
                exited.store(true, Ordering::SeqCst);
                tracing::warn!(pid, status = ?status, "self-heal daemon process exited");
                if read_pid(&pid_file) == Some(pid) {
                    let _ = tokio::fs::remove_file(&pid_file).await;
                }
            });
        }
        tracing::info!(pid, volumes = ?volumes, log = %self.log_file.display(), "self-heal daemon started");
        Ok(Proc {
            pid,
            exited: Some(exited),
            volumes,
            fingerprint: fp.to_string(),
        })
    }
}

/// What the heal daemon heals of one volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Healed {
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

/// A digest of what the heal daemon heals.
fn fingerprint(wanted: &BTreeMap<String, Healed>) -> String {
    let bytes = bincode::serialize(wanted).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// True if `pid` is a live `kiln shd` process (guards against a recycled pid).
fn is_shd_process(pid: u32) -> bool {
    if !crate::supervisor::pid_runs(pid, "") {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // `kiln shd ... --mgmt ...` (or `INTERPRETER SCRIPT shd ...` in tests).
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().take(4).any(|a| *a == b"shd") && args.iter().any(|a| *a == b"--mgmt")
}

/// SIGTERM, then SIGKILL after `STOP_GRACE`.
async fn stop(p: &Proc) {
    let pid = p.pid as libc::pid_t;
    if pid <= 0 || !p.alive() {
        return;
    }
    // SAFETY: kill(2) with a positive pid checked to be our heal daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while p.alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if p.alive() {
        tracing::warn!(
            pid,
            "self-heal daemon did not stop on SIGTERM; sending SIGKILL"
        );
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while p.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn shd_process_check() {
        assert!(!is_shd_process(std::process::id()));
        assert!(!is_shd_process(u32::MAX - 1));
    }
}
