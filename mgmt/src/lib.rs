//! kiln-mgmt: the management daemon (`kiln server`) and the admin CLI.
//!
//! The daemon keeps the trusted pool's configuration (through
//! `kiln_config::ConfigStore`), answers the CLI and clients on port 24007,
//! and runs the brick processes of the bricks it owns, its NFS gateway and
//! its self-heal daemon. The CLI speaks GlusterFS's grammar and prints
//! GlusterFS's layouts.

mod add_brick;
mod auth;
mod brickfs;
mod child_supervisor;
mod cli;
mod client;
mod daemon;
mod error;
mod heal;
mod identity;
mod logging;
mod net;
mod nfs_supervisor;
mod options;
mod peer;
mod pool;
pub mod proto;
mod shd;
mod shd_supervisor;
mod spec_watch;
mod status;
mod supervisor;
mod volume_ops;
mod wire;

pub use cli::run_cli;
pub use client::{fetch_nfs_exports, fetch_volume_spec};
pub use daemon::{run_server, ServerArgs};
pub use error::MgmtError;
pub use options::nfs_disabled;
pub use shd::{run_shd, ShdArgs};
pub use spec_watch::watch_volume_spec;
