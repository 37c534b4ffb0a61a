//! The server's ONE child process for a set of volumes, as glusterd runs
//! gluster/nfs and glustershd: started with the first volume it is wanted
//! for, restarted when what it serves changes, stopped when none is left,
//! and adopted by a restarted management daemon through its pid file
//! (`STATE/run/NAME/NAME.pid`) and the fingerprint of what it serves
//! beside it (`NAME.spec`). The NFS gateway and the self-heal daemon are
//! the two kinds (`ChildKind`).

use kiln_config::PoolConfig;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{Mutex, Notify};

use crate::daemon::store::StoreHandle;
use crate::proto::NfsServerState;
use crate::supervisor::{read_pid, stop_process, write_pid};

/// How long a config must stay unchanged before the child follows it
/// (a `volume start` commits the status, then each brick's port).
const SETTLE: Duration = Duration::from_millis(300);
/// Upper bound of that wait while changes keep coming.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// One kind of per-server child process.
pub(crate) trait ChildKind: Send + Sync + 'static {
    /// What it serves of one volume (its digest decides restarts).
    type Wanted: Serialize + Send + Sync;
    /// Its `kiln` subcommand (`nfs`): names its run directory and files,
    /// and identifies its process by command line.
    const NAME: &'static str;
    /// How logs call it (`NFS gateway`).
    const WHAT: &'static str;
    /// Why none runs when nothing is wanted (for the log).
    const NONE_WANTED: &'static str;
    /// False if this server runs none at all (its launcher cannot).
    fn enabled(&self) -> bool;
    /// The volumes it must serve in `cfg`, with what it serves of each.
    fn wanted(&self, cfg: &PoolConfig) -> BTreeMap<String, Self::Wanted>;
    /// Starts the process for `wanted`.
    fn launch(&self, wanted: &BTreeMap<String, Self::Wanted>) -> io::Result<Child>;
}

/// The process this daemon runs or adopted.
struct Proc {
    pid: u32,
    /// Set when our own child exited; `None` for an adopted process.
    exited: Option<Arc<AtomicBool>>,
    /// The `kiln` subcommand it runs (for the liveness check).
    name: &'static str,
    volumes: Vec<String>,
    fingerprint: String,
}

impl Proc {
    fn alive(&self) -> bool {
        match &self.exited {
            Some(flag) => !flag.load(Ordering::SeqCst),
            None => is_child_process(self.pid, self.name),
        }
    }
}

#[derive(Default)]
struct State {
    proc: Option<Proc>,
    first_pass_done: bool,
}

/// Supervises this server's child of kind `K`.
pub(crate) struct ChildSupervisor<K: ChildKind> {
    kind: K,
    run_dir: PathBuf,
    log_file: PathBuf,
    state: Mutex<State>,
    kick: Notify,
}

impl<K: ChildKind> ChildSupervisor<K> {
    /// A supervisor keeping its files under `STATE/run/NAME/`, the child
    /// logging to `log_file`.
    pub(crate) fn new(kind: K, state_dir: &Path, log_file: PathBuf) -> ChildSupervisor<K> {
        ChildSupervisor {
            kind,
            run_dir: state_dir.join("run").join(K::NAME),
            log_file,
            state: Mutex::new(State::default()),
            kick: Notify::new(),
        }
    }

    /// The kind's own settings.
    pub(crate) fn kind(&self) -> &K {
        &self.kind
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", K::NAME))
    }

    fn fingerprint_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.spec", K::NAME))
    }

    /// Asks the supervision loop to check the child now (it restarts one
    /// that died, as `volume start VOL force` does in GlusterFS).
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// The live child's pid and volumes, if one runs.
    pub(crate) async fn running(&self) -> Option<(u32, Vec<String>)> {
        let st = self.state.lock().await;
        st.proc
            .as_ref()
            .filter(|p| p.alive())
            .map(|p| (p.pid, p.volumes.clone()))
    }

    /// Its state for `volume status` (online: it runs), shown with `port`;
    /// `None` if this server runs none at all.
    pub(crate) async fn status(&self, port: u16) -> Option<NfsServerState> {
        if !self.kind.enabled() {
            return None;
        }
        let (pid, volumes) = match self.running().await {
            Some((pid, volumes)) => (Some(pid), volumes),
            None => (None, Vec::new()),
        };
        Some(NfsServerState {
            host: String::new(),
            port,
            online: pid.is_some(),
            pid,
            volumes,
        })
    }

    /// Follows the config until the store goes away: reconciles, then waits
    /// for a change (or a kick) and for the config to settle.
    pub(crate) async fn run(&self, store: Arc<StoreHandle>) {
        if !self.kind.enabled() {
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

    /// Brings the child in line with `cfg`.
    pub(crate) async fn reconcile(&self, cfg: &PoolConfig) {
        let wanted = self.kind.wanted(cfg);
        let mut st = self.state.lock().await;
        let first = !std::mem::replace(&mut st.first_pass_done, true);
        if wanted.is_empty() {
            if let Some(p) = st.proc.take() {
                tracing::info!(pid = p.pid, "{}: stopping the {}", K::NONE_WANTED, K::WHAT);
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
                tracing::info!(pid = p.pid, "adopting the running {}", K::WHAT);
                st.proc = Some(p);
                return;
            }
            self.stop_stray().await;
        }
        if let Some(p) = st.proc.take() {
            if p.alive() {
                tracing::info!(pid = p.pid, volumes = ?wanted.keys().collect::<Vec<_>>(), "volumes or specs changed: restarting the {}", K::WHAT);
                stop(&p).await;
            }
        }
        match self.launch(&wanted, &fp).await {
            Ok(p) => st.proc = Some(p),
            Err(e) => tracing::error!(error = %e, "cannot start the {}", K::WHAT),
        }
    }

    /// A child left by an earlier daemon that serves exactly `wanted`.
    async fn adoptable(&self, fp: &str, wanted: &BTreeMap<String, K::Wanted>) -> Option<Proc> {
        let pid = read_pid(&self.pid_file())?;
        let saved = tokio::fs::read_to_string(self.fingerprint_file())
            .await
            .ok()?;
        (is_child_process(pid, K::NAME) && saved.trim() == fp).then(|| Proc {
            pid,
            exited: None,
            name: K::NAME,
            volumes: wanted.keys().cloned().collect(),
            fingerprint: fp.to_string(),
        })
    }

    /// Stops a child an earlier daemon left running (by the pid file).
    async fn stop_stray(&self) {
        if let Some(pid) = read_pid(&self.pid_file()).filter(|p| is_child_process(*p, K::NAME)) {
            tracing::info!(pid, "stopping the {} an earlier daemon started", K::WHAT);
            stop(&Proc {
                pid,
                exited: None,
                name: K::NAME,
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

    async fn launch(&self, wanted: &BTreeMap<String, K::Wanted>, fp: &str) -> Result<Proc, String> {
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
        let mut child = self
            .kind
            .launch(wanted)
            .map_err(|e| format!("cannot start the {} process: {e}", K::WHAT))?;
        let pid = child.id().unwrap_or(0);
        let (pid_file, fp_file) = (self.pid_file(), self.fingerprint_file());
        let fp_text = format!("{fp}\n");
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::write(&fp_file, fp_text)?;
            write_pid(&pid_file, pid)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(file = %self.pid_file().display(), "cannot write the {}'s pid file", K::WHAT);
        }
        let exited = Arc::new(AtomicBool::new(false));
        {
            let exited = exited.clone();
            let pid_file = self.pid_file();
            tokio::spawn(async move {
                let status = child.wait().await;
                exited.store(true, Ordering::SeqCst);
                tracing::warn!(pid, status = ?status, "{} process exited", K::WHAT);
                if read_pid(&pid_file) == Some(pid) {
                    let _ = tokio::fs::remove_file(&pid_file).await;
                }
            });
        }
        tracing::info!(pid, volumes = ?volumes, log = %self.log_file.display(), "{} started", K::WHAT);
        Ok(Proc {
            pid,
            exited: Some(exited),
            name: K::NAME,
            volumes,
            fingerprint: fp.to_string(),
        })
    }
}

/// A digest of what a child serves.
pub(crate) fn fingerprint<W: Serialize>(wanted: &BTreeMap<String, W>) -> String {
    let bytes = bincode::serialize(wanted).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// True if `pid` is a live `kiln NAME` process (guards against a recycled
/// pid): `kiln NAME ... --mgmt ...`, or `INTERPRETER SCRIPT NAME ...` in tests.
pub(crate) fn is_child_process(pid: u32, name: &str) -> bool {
    if !crate::supervisor::pid_runs(pid, "") {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().take(4).any(|a| *a == name.as_bytes()) && args.iter().any(|a| *a == b"--mgmt")
}

/// SIGTERM, then SIGKILL after a grace period.
async fn stop(p: &Proc) {
    if !p.alive() {
        return;
    }
    stop_process(p.pid, || p.alive(), &format!("`kiln {}`", p.name)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_process_check() {
        assert!(!is_child_process(std::process::id(), "nfs"));
        assert!(!is_child_process(std::process::id(), "shd"));
        assert!(!is_child_process(u32::MAX - 1, "nfs"));
    }

    #[test]
    fn fingerprint_follows_content() {
        let a = BTreeMap::from([("v".to_string(), 1u32)]);
        let b = BTreeMap::from([("v".to_string(), 2u32)]);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 64);
    }
}
