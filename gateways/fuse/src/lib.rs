//! kiln-fuse: the FUSE client (`kiln mount`, `mount.kiln`). It fetches a
//! volume's spec from a management server, builds the client graph
//! (`Volume`), and serves it to the kernel through `fuser`.
//!
//! Public API: `MountArgs`, `parse_mount_helper_args`, `mount_main` for the
//! `kiln` binary; `FuseMount`, `MountConfig`, `KilnFs` to mount a `Volume`
//! in-process (tests, other gateways re-exporting a mount).
//!
//! How it behaves (the choices, in one place):
//! - Inode numbers are `Gfid::ino()`; the table counts kernel lookups and
//!   forgets inodes at zero. Errors become errnos once (`convert::errno`).
//! - Each request is a task: polled once on the fuser thread (its first
//!   brick message leaves at once), then on the runtime if it waits. A
//!   blocking F_SETLKW therefore holds no fuser thread.
//! - Mount: `default_permissions` (the kernel checks modes), `allow_other`,
//!   type `fuse.kiln`, source `HOST:/VOL`; 1 MiB writes, 4 MiB read-ahead;
//!   attributes and entries cached 1 s; no kernel write-back cache. Root
//!   calls mount(2); other users go through `fusermount3`.
//! - Attributes this client saw from the volume answer getattr for the
//!   attribute timeout, with its own directory changes applied; unlink and
//!   rename void them. At open the kernel keeps a file's cached pages only
//!   if (mtime, size) did not change meanwhile (close-to-open).
//! - Write-behind (`write-behind=off` to disable): writes are acknowledged
//!   at once and sent in the background, in order where they overlap,
//!   4 MiB per file and 64 MiB per mount in flight; a failure is reported
//!   by the next write, flush or fsync. Synchronous, direct and append
//!   opens write through. Reads, stats and lookups wait for a file's
//!   writes; so do locks, so locked data lands before the unlock.
//! - Flush-behind (`flush-behind=off` to disable), as GlusterFS: close(2)
//!   does not wait for the file's background writes (a failure already
//!   known is reported; a later one by fsync or the next write, else it is
//!   logged). This client's own opens, reads and stats wait for them; other
//!   clients may open the file before the last write lands (one round trip
//!   later). Files this client has locked always wait.
//! - Write-only opens bypass the kernel page cache (FOPEN_DIRECT_IO;
//!   `direct-write-only=off` to disable): a copy less per byte written and
//!   no `security.capability` probe per new file; the kernel drops the
//!   written range from other opens' caches, so readers stay coherent.
//! - close(2) sends a flush to the volume only for files this client has
//!   locked: a flush only releases locks (`Xlator::flush`).
//! - Locks: fcntl, OFD and flock locks all go to the volume; flock is a
//!   whole-file lock owned by the open file. OFD and flock locks are
//!   released at the last close (the kernel sends that release in the
//!   background, so it lands just after close(2) returns).
//! - Set-ID bits: with FUSE_HANDLE_KILLPRIV_V2 this side clears them on
//!   unprivileged writes and truncates and on chown, which spares a
//!   `security.capability` probe per write.
//! - The spec comes from the first of the listed servers that answers
//!   (`kiln_mgmt::fetch_volume_spec`), or from a file (`-o volfile=PATH`).
//! - The mount keeps watching the spec on its servers
//!   (`kiln_mgmt::watch_volume_spec`, the next server when one fails) and
//!   switches to each new graph without a remount (`Volume::switch`: open
//!   files move on their next use, locked ones stay on their graph until
//!   released). Not with `volfile=`.
//! - Known gaps: FUSE interrupts are not supported by fuser (a process
//!   killed while waiting for a lock waits until it is granted).

mod args;
mod convert;
mod daemon;
mod fs;
mod fusermount;
mod handles;
mod inode;
mod session;
mod spawn;
mod write_behind;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use kiln_core::client::Volume;
use kiln_core::graph::VolumeSpec;

pub use args::{parse_mount_helper_args, parse_source, ClientOptions, MountArgs, MountArgsError};
pub use fs::{FsConfig, FsStats, KilnFs};
pub use session::{unmount, FuseMount, KernelFlags, MountConfig};

/// Mounts a volume as `kiln mount` / `mount.kiln` do: unless
/// `args.foreground`, returns (in the calling process) once the mount is
/// ready while a background process keeps serving it until `umount`.
///
/// Call this before starting any thread or async runtime: it forks.
pub fn mount_main(args: MountArgs) -> anyhow::Result<()> {
    let mut opts = ClientOptions::parse(&args.options)?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(anyhow!(
            "mount point {} is not a directory",
            mountpoint.display()
        ));
    }
    if opts.log_file.is_none() {
        opts.log_file = args.log_file.clone();
    }
    let mut servers = args.spec_servers.clone();
    for s in &opts.backup_servers {
        if !servers.contains(s) {
            servers.push(s.clone());
        }
    }
    let fsname = format!(
        "{}:/{}",
        servers.first().map(String::as_str).unwrap_or("localhost"),
        args.volume
    );
    opts.mount.fsname = fsname;
    let job = Job {
        servers,
        volume: args.volume.clone(),
        mountpoint,
        opts,
    };
    if args.foreground {
        init_logging(&job, true);
        return serve(&job, None);
    }
    match daemon::fork()? {
        daemon::Forked::Parent(Ok(())) => Ok(()),
        daemon::Forked::Parent(Err(msg)) => Err(anyhow!(msg)),
        daemon::Forked::Child(mut notifier) => {
            init_logging(&job, false);
            // stderr is /dev/null now: panics go to the log.
            std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve(&job, Some(&mut notifier))
            }));
            let served = served.unwrap_or_else(|_| Err(anyhow!("internal error (see the log)")));
            let code = match served {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("mount failed: {e:#}");
                    if notifier.pending() {
                        notifier.failed(&format!("{e:#}"));
                    }
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// Everything the serving process needs.
struct Job {
    servers: Vec<String>,
    volume: String,
    mountpoint: PathBuf,
    opts: ClientOptions,
}

/// Fetches the spec, builds the volume, mounts, and serves until unmounted.
fn serve(job: &Job, notifier: Option<&mut daemon::Notifier>) -> anyhow::Result<()> {
    for o in &job.opts.unknown {
        tracing::warn!(option = %o, "unknown mount option ignored");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kiln-mount")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let spec = rt.block_on(load_spec(job))?;
    tracing::info!(volume = %spec.name, bricks = spec.bricks.len(), "volume spec loaded");
    let vol = {
        // The graph's protocol clients start their connections on `rt`.
        let _ctx = rt.enter();
        Arc::new(Volume::new(spec.clone()))
    };
    if job.opts.volfile.is_none() {
        let _ctx = rt.enter();
        follow_spec(job, spec, &vol);
    }
    let root = rt
        .block_on(vol.wait_ready(job.opts.ready_timeout))
        .map_err(|e| anyhow!("volume {} is not reachable: {e}", job.volume))?;
    let mount = FuseMount::mount(
        vol.clone(),
        rt.handle().clone(),
        Some(&root),
        &job.mountpoint,
        &job.opts.mount,
    )
    .with_context(|| format!("mounting on {}", job.mountpoint.display()))?;
    if let Some(p) = &job.opts.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the pid file");
        }
    }
    if let Some(n) = notifier {
        n.ready();
    }
    let mp = job.mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: unmounting");
        if let Err(e) = unmount(&mp) {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    let r = mount.wait();
    tracing::info!("unmounted; exiting");
    // Every request and background write has finished: let this client's
    // eager locks go now (their delayed post-ops leave the changelogs
    // clean) rather than leave them to the bricks.
    // (The timer is made inside the runtime.)
    let released = rt.block_on(async {
        tokio::time::timeout(EAGER_RELEASE_LIMIT, vol.release_eager_locks()).await
    });
    if released.is_err() {
        tracing::warn!("eager locks not all released within {EAGER_RELEASE_LIMIT:?}");
    }
    if let Some(p) = &job.opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    drop(vol);
    // `wait` let the last requests and background writes finish: nothing
    // is left to do (reconnect loops and idle timers are simply dropped).
    rt.shutdown_background();
    r.context("serving the mount")
}

/// How long an ending mount waits for its eager locks to go.
const EAGER_RELEASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a new graph is given to reach its bricks before it takes over.
const SWITCH_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the mount on the volume's current graph: watches the spec on the
/// mount's servers and switches `vol` to each new one (add-brick, option
/// changes, bricks on new ports) without a remount. Ends with the volume.
fn follow_spec(job: &Job, spec: VolumeSpec, vol: &Arc<Volume>) {
    let mut specs = kiln_mgmt::watch_volume_spec(job.servers.clone(), job.volume.clone(), spec);
    let vol = Arc::downgrade(vol);
    tokio::spawn(async move {
        while specs.changed().await.is_ok() {
            let spec = specs.borrow_and_update().clone();
            let Some(vol) = vol.upgrade() else {
                return;
            };
            if let Err(e) = vol.switch(spec, SWITCH_READY).await {
                tracing::error!(error = %e, "cannot switch to the volume's new graph; staying on the old one");
            }
        }
    });
}

/// The volume spec: from `volfile=` if given, else from the servers.
async fn load_spec(job: &Job) -> anyhow::Result<VolumeSpec> {
    if let Some(path) = &job.opts.volfile {
        let text = tokio::fs::read(path)
            .await
            .with_context(|| format!("volume spec {}", path.display()))?;
        let spec: VolumeSpec = serde_json::from_slice(&text)
            .with_context(|| format!("volume spec {}", path.display()))?;
        if spec.name != job.volume {
            return Err(anyhow!(
                "volume spec {} is for volume {}, not {}",
                path.display(),
                spec.name,
                job.volume
            ));
        }
        return Ok(spec);
    }
    fetch_spec(&job.servers, &job.volume).await
}

/// Asks the management servers, in order, for the volume's spec.
async fn fetch_spec(servers: &[String], volume: &str) -> anyhow::Result<VolumeSpec> {
    kiln_mgmt::fetch_volume_spec(servers, volume)
        .await
        .map_err(|e| anyhow!("cannot get the spec of volume {volume}: {e}"))
}

/// Logs to the log file (default under /var/log/kiln), or to stderr in the
/// foreground when no file can be opened.
fn init_logging(job: &Job, foreground: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match (&job.opts.log_level, std::env::var("RUST_LOG")) {
        (Some(l), _) => EnvFilter::new(l),
        (None, Ok(v)) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new("info"),
    };
    let path = job
        .opts
        .log_file
        .clone()
        .unwrap_or_else(|| default_log_file(&job.mountpoint));
    let file = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .ok()
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok()
        });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None if foreground => builder.with_writer(std::io::stderr).try_init(),
        None => Ok(()),
    };
}

/// `/var/log/kiln/mnt-data.log` for `/mnt/data`, as GlusterFS names them.
fn default_log_file(mountpoint: &Path) -> PathBuf {
    let name = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    let name = if name.is_empty() {
        "root".to_string()
    } else {
        name
    };
    PathBuf::from("/var/log/kiln").join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_names() {
        assert_eq!(
            default_log_file(Path::new("/mnt/data")),
            PathBuf::from("/var/log/kiln/mnt-data.log")
        );
        assert_eq!(
            default_log_file(Path::new("/")),
            PathBuf::from("/var/log/kiln/root.log")
        );
    }
}
