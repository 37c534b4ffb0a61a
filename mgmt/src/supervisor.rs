//! Brick supervision: this server runs one `kiln brick` process per brick it
//! owns of every started volume. Ports (24009 upward) are chosen here and
//! remembered in the pool config; pid files under `STATE/run/` let a
//! restarted daemon adopt bricks that kept running. A brick that dies is not
//! restarted on its own (it shows offline until `volume start VOL force`),
//! but a daemon that starts brings up every brick of its started volumes.

use kiln_config::{Command, PoolConfig, VolumeConfig, VolumeStatus};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::daemon::store::StoreHandle;
use crate::proto::{BrickStartResult, BrickState};

/// First brick port.
pub(crate) const FIRST_BRICK_PORT: u16 = 24009;
/// How long a new brick has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a brick has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a brick process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrickLaunch {
    /// Volume name.
    pub(crate) volume: String,
    /// Volume id.
    pub(crate) volume_id: String,
    /// Address to listen on.
    pub(crate) listen: SocketAddr,
    /// Log file.
    pub(crate) log_file: PathBuf,
    /// `HOST:/PATH`.
    pub(crate) label: String,
}

/// Starts brick processes and the NFS gateway (the `kiln` executable in
/// production; tests inject a stand-in).
pub(crate) trait BrickLauncher: Send + Sync {
    /// Spawns the process for one brick.
    fn launch(&self, b: &BrickLaunch) -> io::Result<Child>;

    /// True if this launcher can start the NFS gateway (`launch_nfs`).
    fn runs_nfs(&self) -> bool {
        false
    }

    /// Spawns the server's NFS gateway.
    fn launch_nfs(&self, _n: &crate::nfs_supervisor::NfsLaunch) -> io::Result<Child> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this launcher runs no NFS gateway",
        ))
    }

    /// True if this launcher can start the self-heal daemon (`launch_shd`).
    fn runs_shd(&self) -> bool {
        false
    }

    /// Spawns the server's self-heal daemon.
    fn launch_shd(&self, _n: &crate::shd_supervisor::ShdLaunch) -> io::Result<Child> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this launcher runs no self-heal daemon",
        ))
    }
}

/// Runs `EXE brick --volume V --volume-id ID --listen ADDR:PORT --log-file F HOST:/PATH`.
pub(crate) struct ExeLauncher {
    /// The executable (normally `std::env::current_exe()`).
    pub(crate) exe: PathBuf,
}

impl BrickLauncher for ExeLauncher {
    fn launch(&self, b: &BrickLaunch) -> io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&b.log_file)?;
        tokio::process::Command::new(&self.exe)
            .arg("brick")
            .arg("--volume")
            .arg(&b.volume)
            .arg("--volume-id")
            .arg(&b.volume_id)
            .arg("--listen")
            .arg(b.listen.to_string())
            .arg("--log-file")
            .arg(&b.log_file)
            .arg(&b.label)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
    }

    fn runs_nfs(&self) -> bool {
        true
    }

    /// Runs `EXE nfs [--listen IP] --mgmt ADDR --volumes V1,V2 --log-file F`.
    fn launch_nfs(&self, n: &crate::nfs_supervisor::NfsLaunch) -> io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_file)?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("nfs");
        if let Some(ip) = n.listen {
            cmd.arg("--listen").arg(ip.to_string());
        }
        cmd.arg("--mgmt")
            .arg(&n.mgmt)
            .arg("--volumes")
            .arg(n.volumes.join(","))
            .arg("--log-file")
            .arg(&n.log_file)
            .arg("--state-dir")
            .arg(&n.state_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
    }

    fn runs_shd(&self) -> bool {
        true
    }

    /// Runs `EXE shd --mgmt ADDR --volumes V1,V2 --bricks B1,B2 --control SOCK --log-file F`.
    fn launch_shd(&self, n: &crate::shd_supervisor::ShdLaunch) -> io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_file)?;
        tokio::process::Command::new(&self.exe)
            .arg("shd")
            .arg("--mgmt")
            .arg(&n.mgmt)
            .arg("--volumes")
            .arg(n.volumes.join(","))
            .arg("--bricks")
            .arg(n.bricks.join(","))
            .arg("--control")
            .arg(&n.control)
            .arg("--log-file")
            .arg(&n.log_file)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
    }
}

/// `/export/brick1` → `export-brick1` (GlusterFS's naming of brick files).
pub(crate) fn path_dashes(path: &str) -> String {
    let s = path.trim_matches('/').replace('/', "-");
    if s.is_empty() {
        "root".to_string()
    } else {
        s
    }
}

type Key = (String, String);

struct Running {
    pid: u32,
    label: String,
    /// Set when our own child exited (we reap it); `None` for an adopted
    /// process started by an earlier daemon.
    exited: Option<Arc<AtomicBool>>,
}

impl Running {
    fn alive(&self) -> bool {
        match &self.exited {
            Some(flag) => !flag.load(Ordering::SeqCst),
            None => pid_runs(self.pid, &self.label),
        }
    }
}

#[derive(Default)]
struct State {
    running: HashMap<Key, Running>,
    desired: BTreeSet<Key>,
    first_pass_done: bool,
}

/// This server's brick processes.
pub(crate) struct Supervisor {
    my_uuid: String,
    listen_ip: IpAddr,
    run_dir: PathBuf,
    brick_log_dir: PathBuf,
    launcher: Arc<dyn BrickLauncher>,
    state: Mutex<State>,
}

impl Supervisor {
    /// A supervisor for the bricks owned by `my_uuid`.
    pub(crate) fn new(
        my_uuid: String,
        listen: Option<IpAddr>,
        state_dir: &Path,
        log_dir: &Path,
        launcher: Arc<dyn BrickLauncher>,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            my_uuid,
            listen_ip: listen.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            run_dir: state_dir.join("run"),
            brick_log_dir: log_dir.join("bricks"),
            launcher,
            state: Mutex::new(State::default()),
        })
    }

    fn pid_file(&self, key: &Key) -> PathBuf {
        self.run_dir
            .join(format!("{}-{}.pid", key.0, path_dashes(&key.1)))
    }

    fn my_bricks<'a>(&'a self, vol: &'a VolumeConfig) -> impl Iterator<Item = usize> + 'a {
        vol.bricks
            .iter()
            .enumerate()
            .filter(move |(_, b)| b.peer_uuid == self.my_uuid)
            .map(|(i, _)| i)
    }

    /// Makes sure every brick of `vol` owned here runs; starts the missing ones.
    pub(crate) async fn ensure_volume(
        &self,
        vol: &VolumeConfig,
        store: &StoreHandle,
    ) -> Vec<BrickStartResult> {
        let mut out = Vec::new();
        for index in self.my_bricks(vol).collect::<Vec<_>>() {
            let b = &vol.bricks[index];
            let result = self.ensure_brick(vol, index, store).await;
            if let Err(e) = &result {
                tracing::error!(volume = %vol.name, brick = %b.path, error = %e, "brick start failed");
            }
            out.push(BrickStartResult {
                index,
                brick: format!("{}:{}", b.host, b.path),
                result,
            });
        }
        out
    }

    async fn ensure_brick(
        &self,
        vol: &VolumeConfig,
        index: usize,
        store: &StoreHandle,
    ) -> Result<u16, String> {
        let b = &vol.bricks[index];
        let key: Key = (vol.name.clone(), b.path.clone());
        let label = format!("{}:{}", b.host, b.path);
        let mut st = self.state.lock().await;
        if let Some(r) = st.running.get(&key) {
            if r.alive() {
                return Ok(b.port);
            }
            st.running.remove(&key);
        }
        let pid_file = self.pid_file(&key);
        if let Some(pid) = read_pid(&pid_file) {
            if b.port != 0 && pid_runs(pid, &label) {
                tracing::info!(volume = %vol.name, brick = %b.path, pid, "adopting running brick process");
                st.running.insert(
                    key,
                    Running {
                        pid,
                        label,
                        exited: None,
                    },
                );
                return Ok(b.port);
            }
        }
        // Choose the port: the remembered one if still free, else the lowest free one.
        let cfg = store.current();
        let mut used: BTreeSet<u16> = self.ports_in_use(&cfg, &vol.name, index);
        for (k, _) in st.running.iter() {
            if let Some(p) = cfg
                .volumes
                .get(&k.0)
                .and_then(|v| {
                    v.bricks
                        .iter()
                        .find(|x| x.path == k.1 && x.peer_uuid == self.my_uuid)
                })
                .map(|x| x.port)
            {
                used.insert(p);
            }
        }
        let port = if b.port != 0 && !used.contains(&b.port) && self.port_free(b.port) {
            b.port
        } else {
            self.pick_port(&used)?
        };
        if port != b.port {
            store
                .propose(Command::SetBrickPort {
                    name: vol.name.clone(),
                    index,
                    port,
                })
                .await
                .map_err(|e| format!("cannot record port {port}: {e}"))?;
        }
        let log_file = self
            .brick_log_dir
            .join(format!("{}.log", path_dashes(&b.path)));
        let launch = BrickLaunch {
            volume: vol.name.clone(),
            volume_id: vol.id.clone(),
            listen: SocketAddr::new(self.listen_ip, port),
            log_file: log_file.clone(),
            label: label.clone(),
        };
        let (dirs_run, dirs_log) = (self.run_dir.clone(), self.brick_log_dir.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(dirs_run)?;
            std::fs::create_dir_all(dirs_log)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot create run/log directories: {e}"))?;
        let mut child = self
            .launcher
            .launch(&launch)
            .map_err(|e| format!("cannot start the brick process: {e}"))?;
        let pid = child.id().unwrap_or(0);
        if let Err(e) = write_pid(&pid_file, pid) {
            tracing::warn!(file = %pid_file.display(), error = %e, "cannot write pid file");
        }
        let exited = Arc::new(AtomicBool::new(false));
        {
            let exited = exited.clone();
            let (volume, path, pid_file) = (vol.name.clone(), b.path.clone(), pid_file.clone());
            tokio::spawn(async move {
                let status = child.wait().await;
                exited.store(true, Ordering::SeqCst);
                tracing::warn!(volume = %volume, brick = %path, pid, status = ?status, "brick process exited");
                if read_pid(&pid_file) == Some(pid) {
                    let _ = std::fs::remove_file(&pid_file);
                }
            });
        }
        tracing::info!(volume = %vol.name, brick = %b.path, pid, port, "brick process started");
        st.running.insert(
            key,
            Running {
                pid,
                label,
                exited: Some(exited.clone()),
            },
        );
        drop(st);
        self.wait_listening(port, &exited, &log_file).await?;
        Ok(port)
    }

    fn ports_in_use(&self, cfg: &PoolConfig, volume: &str, index: usize) -> BTreeSet<u16> {
        cfg.volumes
            .values()
            .flat_map(|v| {
                v.bricks
                    .iter()
                    .enumerate()
                    .filter(move |(i, b)| {
                        b.peer_uuid == self.my_uuid
                            && b.port != 0
                            && !(v.name == volume && *i == index)
                    })
                    .map(|(_, b)| b.port)
            })
            .collect()
    }

    fn port_free(&self, port: u16) -> bool {
        let sock = match self.listen_ip {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        match sock {
            Ok(s) => {
                s.set_reuseaddr(true).is_ok()
                    && s.bind(SocketAddr::new(self.listen_ip, port)).is_ok()
            }
            Err(_) => false,
        }
    }

    fn pick_port(&self, used: &BTreeSet<u16>) -> Result<u16, String> {
        (FIRST_BRICK_PORT..=u16::MAX)
            .find(|p| !used.contains(p) && self.port_free(*p))
            .ok_or_else(|| "no free port for the brick".to_string())
    }

    async fn wait_listening(
        &self,
        port: u16,
        exited: &AtomicBool,
        log: &Path,
    ) -> Result<(), String> {
        let ip = if self.listen_ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.listen_ip
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if exited.load(Ordering::SeqCst) {
                return Err(format!("the brick process exited; see {}", log.display()));
            }
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect((ip, port)),
            )
            .await;
            if let Ok(Ok(_)) = attempt {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the brick process did not listen on port {port} within {} s; see {}",
                    START_TIMEOUT.as_secs(),
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every brick of `vol` running here.
    pub(crate) async fn stop_volume(&self, vol: &VolumeConfig) {
        for index in self.my_bricks(vol).collect::<Vec<_>>() {
            let key = (vol.name.clone(), vol.bricks[index].path.clone());
            let label = format!("{}:{}", vol.bricks[index].host, vol.bricks[index].path);
            self.stop_brick(&key, &label).await;
        }
    }

    async fn stop_brick(&self, key: &Key, label: &str) {
        let running = self.state.lock().await.running.remove(key);
        let pid_file = self.pid_file(key);
        let target = match running {
            Some(r) => Some(r),
            None => read_pid(&pid_file).map(|pid| Running {
                pid,
                label: label.to_string(),
                exited: None,
            }),
        };
        if let Some(r) = target {
            if r.alive() {
                tracing::info!(volume = %key.0, brick = %key.1, pid = r.pid, "stopping brick process");
                terminate(&r).await;
            }
        }
        let _ = tokio::fs::remove_file(&pid_file).await;
    }

    /// Live state of this server's bricks of `vol` (no file-system details).
    pub(crate) async fn brick_states(&self, vol: &VolumeConfig) -> Vec<BrickState> {
        let st = self.state.lock().await;
        self.my_bricks(vol)
            .map(|index| {
                let b = &vol.bricks[index];
                let key = (vol.name.clone(), b.path.clone());
                let label = format!("{}:{}", b.host, b.path);
                let pid = match st.running.get(&key) {
                    Some(r) if r.alive() => Some(r.pid),
                    Some(_) => None,
                    None => read_pid(&self.pid_file(&key)).filter(|p| pid_runs(*p, &label)),
                };
                BrickState {
                    index,
                    brick: label,
                    port: b.port,
                    online: pid.is_some() && vol.status == VolumeStatus::Started,
                    pid,
                    detail: None,
                }
            })
            .collect()
    }

    /// Brings the running bricks in line with a new config: starts the bricks
    /// of volumes that became started (all of them on the first pass, i.e. at
    /// daemon start), stops those of volumes that stopped or went away.
    pub(crate) async fn reconcile(&self, cfg: &PoolConfig, store: &StoreHandle) {
        let mut desired: BTreeMap<Key, String> = BTreeMap::new();
        for v in cfg
            .volumes
            .values()
            .filter(|v| v.status == VolumeStatus::Started)
        {
            for i in self.my_bricks(v) {
                desired.insert((v.name.clone(), v.bricks[i].path.clone()), v.name.clone());
            }
        }
        let (prev, first) = {
            let mut st = self.state.lock().await;
            let prev = std::mem::replace(&mut st.desired, desired.keys().cloned().collect());
            let first = !std::mem::replace(&mut st.first_pass_done, true);
            (prev, first)
        };
        for key in prev.iter().filter(|k| !desired.contains_key(*k)) {
            self.stop_brick(key, &format!(":{}", key.1)).await;
        }
        if first {
            self.stop_strays(&desired).await;
        }
        let mut started: BTreeSet<String> = BTreeSet::new();
        for (key, vol) in desired.iter().filter(|(k, _)| !prev.contains(*k)) {
            if started.insert(vol.clone()) {
                if let Some(v) = cfg.volumes.get(&key.0) {
                    self.ensure_volume(v, store).await;
                }
            }
        }
    }

    /// At daemon start: stops brick processes left from volumes no longer started.
    async fn stop_strays(&self, desired: &BTreeMap<Key, String>) {
        let wanted: BTreeSet<PathBuf> = desired.keys().map(|k| self.pid_file(k)).collect();
        let Ok(mut dir) = tokio::fs::read_dir(&self.run_dir).await else {
            return;
        };
        while let Ok(Some(ent)) = dir.next_entry().await {
            let path = ent.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pid") || wanted.contains(&path) {
                continue;
            }
            if let Some(pid) = read_pid(&path) {
                if pid_runs(pid, "--volume-id") {
                    tracing::info!(pid, file = %path.display(), "stopping a stray brick process");
                    terminate(&Running {
                        pid,
                        label: "--volume-id".into(),
                        exited: None,
                    })
                    .await;
                }
            }
            let _ = tokio::fs::remove_file(&path).await;
        }
    }

    /// Runs `reconcile` on every config change until the store goes away.
    pub(crate) async fn run(self: Arc<Self>, store: Arc<StoreHandle>) {
        let mut rx = store.subscribe();
        loop {
            let cfg = rx.borrow_and_update().clone();
            self.reconcile(&cfg, &store).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

pub(crate) fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(tmp, path)
}

/// True if process `pid` exists, is not a zombie, and its command line
/// contains `needle` (guards against a recycled pid).
pub(crate) fn pid_runs(pid: u32, needle: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_bytes();
    needle.is_empty() || cmdline.windows(needle.len()).any(|w| w == needle)
}

async fn terminate(r: &Running) {
    stop_process(r.pid, || r.alive(), "brick").await;
}

/// Stops process `pid` (ours, checked by the caller): SIGTERM, then
/// SIGKILL if `alive` still says so after `STOP_GRACE`; waits up to 2 s
/// more for it to go. `what` names it in the log.
pub(crate) async fn stop_process(pid: u32, alive: impl Fn() -> bool, what: &str) {
    let pid = pid as libc::pid_t;
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a positive pid the caller checked to be its child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if alive() {
        tracing::warn!(pid, "{what} did not stop on SIGTERM; sending SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes() {
        assert_eq!(path_dashes("/export/brick1"), "export-brick1");
        assert_eq!(path_dashes("/b/"), "b");
        assert_eq!(path_dashes("/"), "root");
    }

    #[test]
    fn pid_checks() {
        let me = std::process::id();
        assert!(pid_runs(me, ""));
        assert!(!pid_runs(me, "no-such-arg-in-our-cmdline-xyz"));
        assert!(!pid_runs(u32::MAX - 1, ""));
    }
}
