//! Replicated volumes in the harness: creating one across the nodes, and
//! reading what replication left on the bricks themselves (content hashes,
//! the replicate changelog xattrs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{brick, wait_until, Cluster};

/// `volume create NAME replica N` with brick K (`NAME.bK`) on node
/// `nodes[K]` (`force`: a set may have two bricks on one server), each
/// `(key, value)` of `options` set, then `volume start`; waits until every
/// brick listens. Returns the brick directories, in brick order.
pub fn create_replicated_with(
    c: &Cluster,
    name: &str,
    replica: usize,
    nodes: &[usize],
    options: &[(&str, &str)],
) -> Vec<PathBuf> {
    let mut args: Vec<String> = ["volume", "create", name, "replica"]
        .map(String::from)
        .to_vec();
    args.push(replica.to_string());
    let mut dirs = Vec::new();
    for (k, i) in nodes.iter().enumerate() {
        let brick = format!("{name}.b{k}");
        args.push(c.node(*i).brick_spec(&brick));
        dirs.push(c.node(*i).brick_dir(&brick));
    }
    args.push("force".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.node(1).kiln_ok(&refs).unwrap();
    for (key, value) in options {
        c.node(1)
            .kiln_ok(&["volume", "set", name, key, value])
            .unwrap();
    }
    c.node(1).kiln_ok(&["volume", "start", name]).unwrap();
    for (i, dir) in nodes.iter().zip(&dirs) {
        wait_brick(c, *i, dir);
    }
    dirs
}

/// `create_replicated_with` and no options.
pub fn create_replicated(c: &Cluster, name: &str, replica: usize, nodes: &[usize]) -> Vec<PathBuf> {
    create_replicated_with(c, name, replica, nodes, &[])
}

/// Waits (60 s at most) until the brick `dir` of `node` listens.
pub fn wait_brick(c: &Cluster, node: usize, dir: &Path) {
    let n = c.node(node);
    wait_until(
        &format!("brick {} to listen", n.brick_spec_of(dir)),
        Duration::from_secs(60),
        || n.brick_port(dir).is_some(),
    )
    .unwrap();
}

/// The sha256 of the file `p` in hex; `None` if it cannot be read.
pub fn sha256(p: &Path) -> Option<String> {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// True if no changelog counter of the brick path `p` of volume `vol`
/// against any of the set's `bricks` bricks is set (absent counts as zero).
pub fn changelog_clean(vol: &str, bricks: usize, p: &Path) -> bool {
    (0..bricks).all(
        |k| match brick::get_xattr(p, &format!("trusted.kiln.afr.{vol}-client-{k}")) {
            Ok(Some(v)) => v.iter().all(|b| *b == 0),
            Ok(None) => true,
            Err(_) => false,
        },
    )
}
