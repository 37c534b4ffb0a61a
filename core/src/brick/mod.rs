//! Brick server: serves file operations on one brick directory to clients
//! over the `proto` wire protocol. Owns the on-disk brick format: gfids in
//! `trusted.kiln.gfid`, gfid handles under `.kiln/`, POSIX locks, statfs.
//!
//! PUBLIC API (other crates rely on these signatures):
//! - `BrickConfig`, `serve(config)` — run a brick process until killed.
//! - `prepare_brick_dir(path, volume_id, force)` — volume-create checks and
//!   stamping, run by the management daemon on the brick's own server.
//! - `BrickInfo` / `brick_info(path)` — what `volume status detail` shows.

use std::net::SocketAddr;
use std::path::PathBuf;

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
