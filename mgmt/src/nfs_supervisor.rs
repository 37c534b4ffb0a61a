//! The server's NFS gateway, as GlusterFS runs gluster/nfs: ONE `kiln nfs`
//! process per server serving every started volume whose `nfs.disable` is
//! not on. Started with the first such volume, restarted when that set or
//! a served volume's spec changes, stopped when none is left; its pid file
//! is `STATE/run/nfs/nfs.pid`, beside the fingerprint of what it serves, so
//! a restarted daemon adopts a gateway that still serves the right thing.

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
use crate::proto::NfsServerState;
use crate::supervisor::{read_pid, write_pid, BrickLauncher};

/// The NFS port the gateway serves first (and `volume status` shows).
pub(crate) const NFS_PORT: u16 = 2049;
/// How long a config must stay unchanged before the gateway follows it
/// (a `volume start` commits the status, then each brick's port).
const SETTLE: Duration = Duration::from_millis(300);
/// Upper bound of that wait while changes keep coming.
const SETTLE_MAX: Duration = Duration::from_secs(5);
/// How long the gateway has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

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

/// The gateway process this daemon runs or adopted.
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
            None => is_nfs_process(self.pid),
        }
    }
}

#[derive(Default)]
struct State {
    proc: Option<Proc>,
    first_pass_done: bool,
}

/// This server's NFS gateway.
pub(crate) struct NfsSupervisor {
    listen: Option<IpAddr>,
    mgmt: String,
    run_dir: PathBuf,
    nfs_state_dir: PathBuf,
    log_file: PathBuf,
    launcher: Arc<dyn BrickLauncher>,
    state: Mutex<State>,
    kick: Notify,
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
        Arc::new(NfsSupervisor {
            listen,
            mgmt: SocketAddr::new(mgmt_ip, mgmt_port).to_string(),
            run_dir: state_dir.join("run").join("nfs"),
            nfs_state_dir: state_dir.join("nfs"),
            log_file: log_dir.join("nfs.log"),
            launcher,
            state: Mutex::new(State::default()),
            kick: Notify::new(),
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("nfs.pid")
    }

    fn fingerprint_file(&self) -> PathBuf {
        self.run_dir.join("nfs.spec")
    }

    /// Asks the supervision loop to check the gateway now (it restarts a
    /// gateway that died, as `volume start VOL force` does in GlusterFS).
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// The gateway's state for `volume status`; `None` if this daemon runs
    /// no gateway at all (its launcher cannot).
    pub(crate) async fn state(&self) -> Option<NfsServerState> {
        if !self.launcher.runs_nfs() {
            return None;
        }
        let (pid, volumes) = {
            let st = self.state.lock().await;
            match &st.proc {
                Some(p) if p.alive() => (Some(p.pid), p.volumes.clone()),
                _ => (None, Vec::new()),
            }
        };
        let online = pid.is_some() && self.accepts().await;
        Some(NfsServerState {
            host: String::new(),
            port: NFS_PORT,
            online,
            pid,
            volumes,
        })
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

    /// Follows the config until the store goes away: reconciles, then waits
    /// for a change (or a kick) and for the config to settle.
    pub(crate) async fn run(self: Arc<Self>, store: Arc<StoreHandle>) {
        if !self.launcher.runs_nfs() {
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

    /// Brings the gateway in line with `cfg`.
    pub(crate) async fn reconcile(&self, cfg: &PoolConfig) {
        let wanted = exported(cfg);
        let mut st = self.state.lock().await;
        let first = !std::mem::replace(&mut st.first_pass_done, true);
        if wanted.is_empty() {
            if let Some(p) = st.proc.take() {
                tracing::info!(
                    pid = p.pid,
                    "no volume to serve over NFS: stopping the NFS gateway"
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
                tracing::info!(pid = p.pid, "adopting the running NFS gateway");
                st.proc = Some(p);
                return;
            }
            self.stop_stray().await;
        }
        if let Some(p) = st.proc.take() {
            if p.alive() {
                tracing::info!(pid = p.pid, volumes = ?wanted.keys().collect::<Vec<_>>(), "volumes or specs changed: restarting the NFS gateway");
                stop(&p).await;
            }
        }
        match self.launch(&wanted, &fp).await {
            Ok(p) => st.proc = Some(p),
            Err(e) => tracing::error!(error = %e, "cannot start the NFS gateway"),
        }
    }

    /// A gateway left by an earlier daemon that serves exactly `wanted`.
    async fn adoptable(&self, fp: &str, wanted: &BTreeMap<String, VolumeSpec>) -> Option<Proc> {
        let pid = read_pid(&self.pid_file())?;
        let saved = tokio::fs::read_to_string(self.fingerprint_file())
            .await
            .ok()?;
        (is_nfs_process(pid) && saved.trim() == fp).then(|| Proc {
            pid,
            exited: None,
            volumes: wanted.keys().cloned().collect(),
            fingerprint: fp.to_string(),
        })
    }

    /// Stops a gateway an earlier daemon left running (by the pid file).
    async fn stop_stray(&self) {
        if let Some(pid) = read_pid(&self.pid_file()).filter(|p| is_nfs_process(*p)) {
            tracing::info!(pid, "stopping the NFS gateway an earlier daemon started");
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

    async fn launch(
        &self,
        wanted: &BTreeMap<String, VolumeSpec>,
        fp: &str,
    ) -> Result<Proc, String> {
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
        let launch = NfsLaunch {
            listen: gateway_listen(self.listen, wanted),
            mgmt: self.mgmt.clone(),
            volumes: volumes.clone(),
            log_file: self.log_file.clone(),
            state_dir: self.nfs_state_dir.clone(),
        };
        let mut child = self
            .launcher
            .launch_nfs(&launch)
            .map_err(|e| format!("cannot start the NFS gateway process: {e}"))?;
        let pid = child.id().unwrap_or(0);
        let (pid_file, fp_file) = (self.pid_file(), self.fingerprint_file());
        let fp_text = format!("{fp}\n");
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::write(&fp_file, fp_text)?;
            write_pid(&pid_file, pid)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(file = %self.pid_file().display(), "cannot write the NFS gateway's pid file");
        }
        let exited = Arc::new(AtomicBool::new(false));
        {
            let exited = exited.clone();
            let pid_file = self.pid_file();
            tokio::spawn(async move {
                let status = child.wait().await;
                exited.store(true, Ordering::SeqCst);
                tracing::warn!(pid, status = ?status, "NFS gateway process exited");
                if read_pid(&pid_file) == Some(pid) {
                    let _ = tokio::fs::remove_file(&pid_file).await;
                }
            });
        }
        tracing::info!(pid, volumes = ?volumes, log = %self.log_file.display(), "NFS gateway started");
        Ok(Proc {
            pid,
            exited: Some(exited),
            volumes,
            fingerprint: fp.to_string(),
        })
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

/// A digest of what the gateway serves.
fn fingerprint(wanted: &BTreeMap<String, VolumeSpec>) -> String {
    let bytes = bincode::serialize(wanted).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// True if `pid` is a live `kiln nfs` process (guards against a recycled pid).
fn is_nfs_process(pid: u32) -> bool {
    if !crate::supervisor::pid_runs(pid, "") {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // `kiln nfs ... --mgmt ...` (or `INTERPRETER SCRIPT nfs ...` in tests).
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().take(4).any(|a| *a == b"nfs") && args.iter().any(|a| *a == b"--mgmt")
}

/// SIGTERM, then SIGKILL after `STOP_GRACE`.
async fn stop(p: &Proc) {
    let pid = p.pid as libc::pid_t;
    if pid <= 0 || !p.alive() {
        return;
    }
    // SAFETY: kill(2) with a positive pid checked to be our gateway.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while p.alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if p.alive() {
        tracing::warn!(pid, "NFS gateway did not stop on SIGTERM; sending SIGKILL");
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

    #[test]
    fn nfs_process_check() {
        assert!(!is_nfs_process(std::process::id()));
        assert!(!is_nfs_process(u32::MAX - 1));
    }
}
