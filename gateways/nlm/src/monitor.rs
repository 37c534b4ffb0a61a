//! The gateway's own status monitor records (what rpc.statd keeps in
//! /var/lib/nfs/sm): one file per client host that held or waited for a
//! lock, under `<state>/sm/`, naming its address and the address it called;
//! our NSM state number in `<state>/state` (odd, +2 at every start). After
//! a restart the previous records say whom to SM_NOTIFY and whether a
//! grace period is needed at all.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::locks::Peer;

/// A monitored client host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its NLM caller_name.
    pub name: Vec<u8>,
    /// Its address and the address of ours it called.
    pub peer: Peer,
}

/// Monitored hosts and our NSM state.
pub struct Monitor {
    dir: Option<PathBuf>,
    state: i32,
    hosts: Mutex<HashMap<Vec<u8>, Peer>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The record file's name: the host name in hex, or a hash of a long one.
fn file_name(name: &[u8]) -> String {
    if name.len() <= 100 {
        hex(name)
    } else {
        format!("h{:016x}", crate::locks::owner_id(name, 0, b"sm"))
    }
}

impl Monitor {
    /// Opens (creating) the state under `dir` (`None`: keep nothing on
    /// disk): bumps the state number and takes the previous instance's
    /// records out (they are notified, then forgotten; clients that
    /// reclaim are recorded again). Blocking: call at startup.
    pub fn open(dir: Option<&Path>) -> std::io::Result<(Monitor, Vec<Record>)> {
        let Some(dir) = dir else {
            return Ok((
                Monitor {
                    dir: None,
                    state: 1,
                    hosts: Mutex::new(HashMap::new()),
                },
                Vec::new(),
            ));
        };
        let sm = dir.join("sm");
        std::fs::create_dir_all(&sm)?;
        let state_file = dir.join("state");
        let old: i32 = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let state = if old % 2 == 1 { old + 2 } else { old + 1 }.max(1);
        let tmp = dir.join("state.tmp");
        std::fs::write(&tmp, format!("{state}\n"))?;
        std::fs::rename(&tmp, &state_file)?;
        let mut records = Vec::new();
        for e in std::fs::read_dir(&sm)?.flatten() {
            let path = e.path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                let mut lines = text.lines();
                let rec = (|| {
                    let client = lines.next()?.parse().ok()?;
                    let local = lines.next()?.parse().ok()?;
                    let name = unhex(lines.next()?)?;
                    Some(Record {
                        name,
                        peer: Peer { client, local },
                    })
                })();
                match rec {
                    Some(r) => records.push(r),
                    None => {
                        tracing::warn!(file = %path.display(), "nsm: unreadable monitor record dropped")
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok((
            Monitor {
                dir: Some(sm),
                state,
                hosts: Mutex::new(HashMap::new()),
            },
            records,
        ))
    }

    /// Our NSM state number (odd).
    pub fn state(&self) -> i32 {
        self.state
    }

    /// Records host `name` reaching us as `peer` (written before the first
    /// lock it is granted).
    pub async fn note(&self, name: &[u8], peer: &Peer) {
        {
            let mut h = self.hosts.lock();
            if h.get(name) == Some(peer) {
                return;
            }
            h.insert(name.to_vec(), *peer);
        }
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let path = dir.join(file_name(name));
        let text = format!("{}\n{}\n{}\n", peer.client, peer.local, hex(name));
        let r = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!(host = %String::from_utf8_lossy(name), "nsm: cannot write the monitor record");
        }
        tracing::info!(host = %String::from_utf8_lossy(name), client = %peer.client, "nsm: monitoring a new client host");
    }

    /// Stops monitoring `name` (it rebooted or freed everything).
    pub async fn forget(&self, name: &[u8]) {
        if self.hosts.lock().remove(name).is_none() {
            return;
        }
        if let Some(dir) = self.dir.clone() {
            let path = dir.join(file_name(name));
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        }
    }

    /// Host names seen at address `ip`.
    pub fn names_at(&self, ip: IpAddr) -> Vec<Vec<u8>> {
        self.hosts
            .lock()
            .iter()
            .filter(|(_, p)| p.client == ip)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every monitored host.
    pub fn hosts(&self) -> Vec<Record> {
        self.hosts
            .lock()
            .iter()
            .map(|(n, p)| Record {
                name: n.clone(),
                peer: *p,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_restart_once() {
        let d = tempfile::tempdir().unwrap();
        let (m, old) = Monitor::open(Some(d.path())).unwrap();
        assert!(old.is_empty());
        assert_eq!(m.state(), 1);
        let peer = Peer {
            client: "10.0.0.2".parse().unwrap(),
            local: "10.0.0.1".parse().unwrap(),
        };
        m.note(b"guest", &peer).await;
        m.note(&[b'x'; 300], &peer).await;
        assert_eq!(m.names_at(peer.client).len(), 2);
        drop(m);
        let (m, mut old) = Monitor::open(Some(d.path())).unwrap();
        assert_eq!(m.state(), 3);
        old.sort_by_key(|a| a.name.len());
        assert_eq!(old.len(), 2);
        assert_eq!(old[0].name, b"guest");
        assert_eq!(old[0].peer, peer);
        assert_eq!(old[1].name, vec![b'x'; 300]);
        // Taken out: a second restart has nothing to notify.
        drop(m);
        let (m, old) = Monitor::open(Some(d.path())).unwrap();
        assert!(old.is_empty());
        assert_eq!(m.state(), 5);
    }
}
