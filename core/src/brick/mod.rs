//! Brick server: serves file operations on one brick directory to clients
//! over the `proto` wire protocol. Owns the on-disk brick format: gfids in
//! `trusted.kiln.gfid`, gfid handles under `.kiln/`, POSIX locks, statfs.
//!
//! PUBLIC API (other crates rely on these signatures):
//! - `BrickConfig`, `serve(config)` — run a brick process until killed
//!   (`serve_listener` on a listener the caller bound); `BrickError`.
//! - `prepare_brick_dir(path, volume_id, force)` — volume-create checks and
//!   stamping, run by the management daemon on the brick's own server.
//! - `BrickInfo` / `brick_info(path)` — what `volume status detail` shows.
//!
//! Inside: `server` (listener, connection threads), `wire` (blocking frame
//! reader and reply sink), `splice` (large reads sent without copying), `ops` (request
//! dispatch, open fds), `store` (gfid resolution, handle cache), `entry`
//! (name operations), `inode` (gfid operations, readdir), `xattrs`,
//! `locks` (byte-range locks), `format` (the on-disk format, documented),
//! `prepare`, `info`, `sys` (syscall helpers).

mod entry;
pub mod format;
pub(crate) mod handoff;
mod index;
mod info;
mod inode;
mod internal_locks;
mod locks;
mod ops;
mod prepare;
mod server;
mod splice;
mod store;
mod sys;
mod wire;
mod xattrop;
mod xattrs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use handoff::{exchange as handoff_exchange, socket_name as handoff_socket_name};
pub use info::{brick_info, BrickInfo};
pub use prepare::prepare_brick_dir;
pub(crate) use sys::iatt as iatt_of_stat;

/// How a brick process is started (`kiln brick ...`).
#[derive(Debug, Clone)]
pub struct BrickConfig {
    /// Volume name.
    pub volume: String,
    /// Volume id (hyphenated UUID); must match the brick root's volume-id xattr.
    pub volume_id: String,
    /// `HOST:/PATH` label clients use in the handshake.
    pub label: String,
    /// The brick directory.
    pub path: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
}

/// Why a brick directory cannot be used for a new volume.
#[derive(Debug, thiserror::Error)]
pub enum BrickPrepareError {
    /// Already part of a volume (has a volume-id xattr).
    #[error("{0} is already part of a volume")]
    InUse(String),
    /// The file system does not support trusted.* xattrs.
    #[error("{0}: the file system does not support extended attributes (trusted.*)")]
    NoXattrs(String),
    /// On the root file system and `force` not given.
    #[error("the brick {0} is being created in the root partition. It is recommended that you don't use the system's root partition for storage backend. Or use 'force' at the end of the command if you want to override this behavior.")]
    RootFilesystem(String),
    /// Any other I/O failure.
    #[error("{path}: {err}")]
    Io {
        /// The brick path.
        path: String,
        /// What failed.
        err: std::io::Error,
    },
}

/// Why a brick process cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum BrickError {
    /// A file system call on the brick failed.
    #[error("{path}: {err}")]
    Io {
        /// What was being accessed.
        path: String,
        /// What failed.
        err: std::io::Error,
    },
    /// The brick root has no volume-id: never prepared, or the disk that
    /// holds it is not mounted.
    #[error(
        "{0}: not a brick of any volume (no trusted.kiln.volume-id); is its file system mounted?"
    )]
    NotPrepared(String),
    /// The brick belongs to another volume.
    #[error("{path}: belongs to volume id {found}, not {expected}")]
    VolumeIdMismatch {
        /// The brick directory.
        path: String,
        /// The id this process was started for.
        expected: String,
        /// The id on disk.
        found: String,
    },
    /// The volume id given on the command line is not a UUID.
    #[error("invalid volume id {0:?}")]
    BadVolumeId(String),
    /// Written by a newer Kiln.
    #[error("{path}: brick format {found} is newer than this Kiln understands ({supported})")]
    NewerFormat {
        /// The brick directory.
        path: String,
        /// Version on disk.
        found: u8,
        /// Newest version this build knows.
        supported: u8,
    },
    /// The on-disk format is damaged.
    #[error("{path}: {what}")]
    Corrupt {
        /// The brick directory.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {err}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        err: std::io::Error,
    },
}

/// Runs the brick: checks and opens the brick directory, listens on
/// `config.listen`, and serves clients until the process is killed.
pub async fn serve(config: BrickConfig) -> Result<(), BrickError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|err| BrickError::Bind {
            addr: config.listen,
            err,
        })?;
    serve_listener(config, listener).await
}

/// Like `serve`, on a listener the caller bound (tests bind port 0 and read
/// the port back). `config.listen` is only used in logs.
pub async fn serve_listener(config: BrickConfig, listener: TcpListener) -> Result<(), BrickError> {
    let (path, vid) = (config.path.clone(), config.volume_id.clone());
    let store = tokio::task::spawn_blocking(move || {
        process_setup();
        store::Store::open_brick(&path, &vid)
    })
    .await
    .map_err(|e| BrickError::Io {
        path: config.path.display().to_string(),
        err: std::io::Error::other(e.to_string()),
    })??;
    let shared = Arc::new(ops::Shared {
        store,
        locks: locks::LockTable::default(),
        ilocks: internal_locks::InternalLocks::default(),
        xattrop: xattrop::Xattrop::default(),
        handoffs: Arc::default(),
    });
    let _handoff = handoff::start(&config.volume, &config.label, shared.handoffs.clone());
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(
        brick = %config.label,
        volume = %config.volume,
        path = %shared.store.root_path.display(),
        %addr,
        "brick serving"
    );
    server::accept_loop(Arc::new(config), shared, listener).await;
    Ok(())
}

/// Process-wide settings a brick needs: modes from clients are exact
/// (umask 0), and as many open files as the hard limit allows.
fn process_setup() {
    rustix::process::umask(rustix::fs::Mode::empty());
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = lim.maximum {
        if lim.current != Some(max) {
            let new = rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, new) {
                tracing::warn!("cannot raise the open-file limit: {e}");
            }
        }
    }
}
