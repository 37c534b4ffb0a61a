//! The replicated state machine (openraft's `RaftStateMachine`): applies
//! committed entries with `PoolConfig::apply`, persists the result after
//! every batch (`raft-state.json`) and keeps the latest snapshot
//! (`raft-snapshot.json`). Watch channels report every apply.

use super::disk;
use super::types::{
    ApplyResult, Entry, LogId, RequestId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::model::PoolConfig;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

const STATE_FILE: &str = "raft-state.json";
const STATE_KIND: &str = "kiln-raft-state";
const SNAPSHOT_FILE: &str = "raft-snapshot.json";
const SNAPSHOT_KIND: &str = "kiln-raft-snapshot";
/// Kind of the snapshot bytes sent to peers.
const SNAPSHOT_DATA_KIND: &str = "kiln-raft-snapshot-data";
/// How many recent proposal results are remembered to answer retries.
const RECENT_RESULTS: usize = 512;

/// Everything the state machine holds; persisted whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmData {
    /// Last entry applied.
    last_applied: Option<LogId>,
    /// Last membership applied.
    last_membership: StoredMembership,
    /// The pool configuration.
    config: PoolConfig,
    /// Results of the latest proposals, so a retried one is not applied
    /// twice (part of the replicated state: identical on every server).
    recent: VecDeque<(RequestId, ApplyResult)>,
}

/// The snapshot document: its metadata and the state it captures.
#[derive(Serialize, Deserialize)]
struct SnapshotDoc {
    meta: SnapshotMeta,
    data: SmData,
}

/// The current snapshot, encoded as it is sent to peers.
#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    bytes: Vec<u8>,
}

/// State shared by the state machine, its snapshot builder and the store.
pub struct SmShared {
    dir: PathBuf,
    data: Mutex<SmData>,
    snapshot: Mutex<Option<CurrentSnapshot>>,
    /// Serializes writers of the snapshot file (builder vs. install).
    snapshot_file: Mutex<()>,
    snapshot_seq: AtomicU64,
    config_tx: watch::Sender<PoolConfig>,
    applied_tx: watch::Sender<Option<LogId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sm_err(e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn snap_err(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), verb, e)
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

impl SmShared {
    /// Loads the state machine from `dir`. Blocking.
    pub fn open_blocking(dir: &Path) -> io::Result<Arc<SmShared>> {
        let state: Option<SmData> = disk::read_doc(dir, STATE_FILE, STATE_KIND)?;
        let snap: Option<SnapshotDoc> = disk::read_doc(dir, SNAPSHOT_FILE, SNAPSHOT_KIND)?;
        let mut data = state.unwrap_or_default();
        let mut current = None;
        if let Some(doc) = snap {
            // The state file is written first on install, so it is normally
            // at least as new; prefer the snapshot if it is not.
            if doc.meta.last_log_id > data.last_applied {
                data = doc.data.clone();
            }
            let bytes = disk::encode_doc(SNAPSHOT_DATA_KIND, &doc.data)?;
            current = Some(CurrentSnapshot {
                meta: doc.meta,
                bytes,
            });
        }
        let (config_tx, _) = watch::channel(data.config.clone());
        let (applied_tx, _) = watch::channel(data.last_applied);
        Ok(Arc::new(SmShared {
            dir: dir.to_path_buf(),
            data: Mutex::new(data),
            snapshot: Mutex::new(current),
            snapshot_file: Mutex::new(()),
            snapshot_seq: AtomicU64::new(0),
            config_tx,
            applied_tx,
        }))
    }

    /// The configuration as last applied.
    pub fn config(&self) -> PoolConfig {
        lock(&self.data).config.clone()
    }

    /// Watches the applied configuration.
    pub fn subscribe_config(&self) -> watch::Receiver<PoolConfig> {
        self.config_tx.subscribe()
    }

    /// Watches the last applied log id.
    pub fn subscribe_applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied_tx.subscribe()
    }

    /// Persists `data` as the state file and publishes it.
    async fn persist_and_publish(self: &Arc<Self>, data: SmData) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        let config = data.config.clone();
        let applied = data.last_applied;
        blocking(move || disk::write_doc(&dir, STATE_FILE, STATE_KIND, &data))
            .await
            .map_err(sm_err)?;
        self.config_tx.send_replace(config);
        self.applied_tx.send_replace(applied);
        Ok(())
    }

    /// Makes `snap` the current snapshot and writes it, unless a newer one
    /// is already there.
    async fn save_snapshot(
        self: &Arc<Self>,
        meta: SnapshotMeta,
        data: SmData,
    ) -> Result<CurrentSnapshot, StorageError> {
        let bytes = disk::encode_doc(SNAPSHOT_DATA_KIND, &data)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let current = CurrentSnapshot {
            meta: meta.clone(),
            bytes,
        };
        let shared = self.clone();
        let keep = current.clone();
        blocking(move || {
            let _guard = lock(&shared.snapshot_file);
            let newer_exists = lock(&shared.snapshot)
                .as_ref()
                .is_some_and(|s| s.meta.last_log_id > meta.last_log_id);
            if newer_exists {
                return Ok(());
            }
            disk::write_doc(
                &shared.dir,
                SNAPSHOT_FILE,
                SNAPSHOT_KIND,
                &SnapshotDoc { meta, data },
            )?;
            *lock(&shared.snapshot) = Some(keep);
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(current)
    }
}

/// openraft's handle on the state machine.
pub struct StateMachine {
    shared: Arc<SmShared>,
}

impl StateMachine {
    /// A state machine over `shared`.
    pub fn new(shared: Arc<SmShared>) -> StateMachine {
        StateMachine { shared }
    }
}

/// Builds snapshots from the applied state.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = lock(&self.shared.data).clone();
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &data.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id,
        };
        tracing::debug!(snapshot = %meta, "raft: building snapshot");
        let current = self.shared.save_snapshot(meta, data).await?;
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(Cursor::new(current.bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = lock(&self.shared.data);
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let snapshot = {
            let mut data = lock(&self.shared.data);
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => ApplyResult(Ok(())),
                    EntryPayload::Membership(m) => {
                        data.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        ApplyResult(Ok(()))
                    }
                    EntryPayload::Normal(req) => {
                        let seen = data
                            .recent
                            .iter()
                            .find(|(id, _)| *id == req.id)
                            .map(|(_, r)| r.clone());
                        match seen {
                            Some(r) => r,
                            None => {
                                let r = ApplyResult(data.config.apply(&req.cmd));
                                if let Err(e) = &r.0 {
                                    tracing::info!(index = entry.log_id.index, error = %e, "config command rejected");
                                }
                                data.recent.push_back((req.id, r.clone()));
                                while data.recent.len() > RECENT_RESULTS {
                                    data.recent.pop_front();
                                }
                                r
                            }
                        }
                    }
                };
                results.push(result);
            }
            data.clone()
        };
        self.shared.persist_and_publish(snapshot).await?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta, "raft: installing snapshot from the leader");
        let bytes = snapshot.into_inner();
        let mut data: SmData =
            disk::decode_doc(&bytes, SNAPSHOT_DATA_KIND, "snapshot from the leader")
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        *lock(&self.shared.data) = data.clone();
        self.shared.persist_and_publish(data.clone()).await?;
        self.shared.save_snapshot(meta.clone(), data).await?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = lock(&self.shared.snapshot).clone();
        Ok(current.map(|c| Snapshot {
            meta: c.meta,
            snapshot: Box::new(Cursor::new(c.bytes)),
        }))
    }
}
