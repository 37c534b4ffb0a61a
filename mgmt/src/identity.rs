//! This server's identity, made at its first start and kept in the state dir
//! (`node.info`, like glusterd's `glusterd.info`): its UUID and its Raft node
//! id. Also the small versioned `key=value` file format both it and the pool
//! secret use.

use rand::Rng;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const NODE_FILE: &str = "node.info";
const NODE_FORMAT: &str = "1";

/// Who this server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeIdentity {
    /// UUID, hyphenated.
    pub(crate) uuid: String,
    /// Raft node id (random, non-zero).
    pub(crate) raft_id: u64,
}

impl NodeIdentity {
    /// Reads `node.info`, creating the state dir and the file at first start.
    pub(crate) fn load_or_create(state_dir: &Path) -> io::Result<NodeIdentity> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join(NODE_FILE);
        if let Some(kv) = read_kv_file(&path)? {
            let bad = |what: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {what}", path.display()),
                )
            };
            if kv.get("format").map(String::as_str) != Some(NODE_FORMAT) {
                return Err(bad("unknown format"));
            }
            let uuid = kv
                .get("uuid")
                .filter(|u| uuid::Uuid::parse_str(u).is_ok())
                .ok_or_else(|| bad("bad uuid"))?
                .clone();
            let raft_id = kv
                .get("raft-id")
                .and_then(|r| r.parse::<u64>().ok())
                .filter(|r| *r != 0)
                .ok_or_else(|| bad("bad raft-id"))?;
            return Ok(NodeIdentity { uuid, raft_id });
        }
        let id = NodeIdentity {
            uuid: uuid::Uuid::new_v4().to_string(),
            raft_id: rand::thread_rng().gen_range(1..u64::MAX),
        };
        write_kv_file(
            &path,
            &[
                ("format", NODE_FORMAT.to_string()),
                ("uuid", id.uuid.clone()),
                ("raft-id", id.raft_id.to_string()),
            ],
            0o644,
        )?;
        Ok(id)
    }
}

/// Reads a `key=value` file; `None` if it does not exist.
pub(crate) fn read_kv_file(path: &Path) -> io::Result<Option<BTreeMap<String, String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    ))
}

/// Writes a `key=value` file atomically (temp file, fsync, rename).
pub(crate) fn write_kv_file(path: &Path, kv: &[(&str, String)], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        for (k, v) in kv {
            writeln!(f, "{k}={v}")?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = NodeIdentity::load_or_create(&state).unwrap();
        let b = NodeIdentity::load_or_create(&state).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.raft_id, 0);
        std::fs::write(state.join(NODE_FILE), "format=1\nuuid=zzz\nraft-id=5\n").unwrap();
        assert!(NodeIdentity::load_or_create(&state).is_err());
        std::fs::write(state.join(NODE_FILE), "format=9\n").unwrap();
        assert!(NodeIdentity::load_or_create(&state).is_err());
    }
}
