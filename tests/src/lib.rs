//! The cluster harness: N real Kiln servers, each in its own network
//! namespace on a private bridged subnet, a client host whose FUSE mounts the
//! test reaches through `/proc`, and the controls tests need (kill -9,
//! restart, pause, cut off, CLI on any node, brick inspection).
//!
//! Layout of a running cluster (`id` = `kt<pid>c<n>`):
//! - namespace `id-sw` holds bridge `br0`; `id-n1`.. (node01..) and `id-c`
//!   (client) each hold `eth0`, a veth whose peer is a port of `br0`;
//!   addresses 10.213.R.1.. for the nodes, the next one for the client;
//! - `/etc/netns/<ns>/hosts` names every host, so `node02` resolves on any
//!   of them; `lo` is up everywhere;
//! - `/tmp/id/nodeXX/{state,log,export}` per node, `/tmp/id/client/mntN`
//!   for mount points.
//!
//! Needs root, `ip` (iproute2), `iptables`, `nsenter` (util-linux) and, for
//! kiln tests, the `kiln` binary (`KILN_BIN` or `target/{debug,release}/kiln`).
//! `knfs` boots the Linux kernel's NFSv3 client under qemu for the NFS tests.

mod cleanup;
mod client;
mod cluster;
mod cmd;
mod net;
mod netns;
mod procs;
mod wait;

pub mod brick;
pub mod knfs;
pub mod replica;

pub use cleanup::{acquire_slot, base_dir, cleanup_stale, lazy_umount_under, Slot};
pub use client::{Client, Mount};
pub use cluster::{node_name, Cluster, Node, MGMT_PORT};
pub use cmd::{describe, run, Output, DEFAULT_TIMEOUT};
pub use net::{Host, TestNet, PREFIX};
pub use netns::NetNs;
pub use procs::{cmdline, is_alive, Listener};
pub use wait::{wait_for, wait_until, within};

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The `kiln` binary under test: `$KILN_BIN` if set, else the most recently
/// built of `{$CARGO_TARGET_DIR,<workspace>/target}/{debug,release}/kiln`.
pub fn kiln_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("KILN_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let mut roots = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(t));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let newest = roots
        .iter()
        .flat_map(|r| ["debug", "release"].map(|p| r.join(p).join("kiln")))
        .filter_map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((t, p))
        })
        .max_by_key(|(t, _)| *t);
    match newest {
        Some((_, p)) => Ok(p),
        None => bail!("no kiln binary: build it (`cargo build --bin kiln`) or set KILN_BIN"),
    }
}

/// Skips nothing: fails with a clear message if the harness cannot run here
/// (not root, or a required tool missing).
pub fn check_prerequisites() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the cluster harness needs root (network namespaces, iptables, FUSE)");
    }
    for tool in ["ip", "iptables", "nsenter", "umount"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` not found: run scripts/test.sh, which installs what tests need");
        }
    }
    Ok(())
}
