//! kiln-nfs3: the NFSv3 gateway (RFC 1813) with MOUNT v1/v3, over the
//! volume client (`kiln_core::client::Volume`) and the shared ONC-RPC core
//! (`kiln_portmap`). File handles are volume id + gfid, so any server's
//! gateway serves any handle and handles survive restarts.
//!
//! Modules: `types`/`args` (NFSv3 XDR), `mount_types` (MOUNT XDR), `nfs`
//! (the NFS program's handlers), `mount` (MOUNT), `access` (credentials and
//! permission checks), `error` (the one `FsError` -> status mapping),
//! `exports` (volume options), `fdcache`, `gateway` (shared state), `server`.
//! Locking (NLM v4 + NSM) is the `kiln-nlm` crate, served by `kiln nfs`
//! beside this gateway. Not yet: spec updates without restart.

pub mod access;
pub mod args;
pub mod error;
pub mod exports;
mod fdcache;
mod gateway;
pub mod handle;
mod mount;
pub mod mount_types;
mod nfs;
mod server;
pub mod types;

pub use handle::FileHandle;
pub use mount::MountProgram;
pub use nfs::{NfsProgram, MAX_IO_TCP, MAX_IO_UDP};
pub use server::{run_nfs, serve_volumes, NfsConfig, NfsServer, SpecSource};
