//! Durable Raft log and vote (openraft's `RaftLogStorage`). The log is one
//! append-only file of checksummed records (`raft-log.dat`); the vote and the
//! last purged log id live in `raft-meta.json`. Every write is fsync'd before
//! openraft is told it happened; a torn record at the tail (crash mid-write)
//! is cut off at open.

use super::disk::{self, bad_data};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the log file inside the store directory.
const LOG_FILE: &str = "raft-log.dat";
/// Name of the vote / purge-point document.
const META_FILE: &str = "raft-meta.json";
/// Document kind of `META_FILE`.
const META_KIND: &str = "kiln-raft-meta";
/// First bytes of the log file: magic and format version 1.
const LOG_HEADER: &[u8; 12] = b"KILNRLOG\x01\x00\x00\x00";
/// A record: u32 length, u32 crc32 of the payload, payload (JSON `Entry`).
const RECORD_HEAD: u64 = 8;
/// Refuse records larger than this (a corrupt length must not allocate GiBs).
const MAX_RECORD: u32 = 64 << 20;
/// Rewrite the log file once this many purged records sit at its head (and
/// they outnumber the live ones).
const COMPACT_MIN_DEAD: usize = 64;

/// What `raft-meta.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    /// Last vote granted or cast.
    vote: Option<Vote>,
    /// Every entry up to this one is purged (it is in a snapshot).
    last_purged: Option<LogId>,
}

/// The entries readable right now, and the meta as last written.
#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    meta: Meta,
}

/// The open log file. Locked only on blocking threads.
struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// File offset of each record, by log index (purged ones too, until the
    /// file is compacted).
    offsets: BTreeMap<u64, u64>,
}

struct Shared {
    dir: PathBuf,
    cache: Mutex<Cache>,
    file: Mutex<LogFile>,
}

/// The Raft log of one server. Cheap to clone; clones share the log (the
/// log reader handed to replication tasks is a clone).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(subject, verb, e)
}

fn join_err(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("blocking task failed: {e}"))
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. Blocking: call from a blocking
    /// thread.
    pub fn open_blocking(dir: &Path) -> io::Result<LogStore> {
        let meta: Meta = disk::read_doc(dir, META_FILE, META_KIND)?.unwrap_or_default();
        let (file, entries) = LogFile::open(dir, meta.last_purged.map(|l| l.index))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                cache: Mutex::new(Cache { entries, meta }),
                file: Mutex::new(file),
            }),
        })
    }

    /// Runs `f` on the log file on the blocking pool.
    async fn with_file<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &mut LogFile) -> io::Result<R> + Send + 'static,
    ) -> io::Result<R> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = lock(&shared.file);
            f(&shared, &mut file)
        })
        .await
        .map_err(join_err)?
    }

    /// Writes the current meta document durably.
    async fn write_meta(&self) -> io::Result<()> {
        let meta = lock(&self.shared.cache).meta.clone();
        self.with_file(move |shared, _| disk::write_doc(&shared.dir, META_FILE, META_KIND, &meta))
            .await
    }
}

impl LogFile {
    /// Opens the file, reads every record and cuts a torn tail. Returns the
    /// live entries (those after `purged`).
    fn open(dir: &Path, purged: Option<u64>) -> io::Result<(LogFile, BTreeMap<u64, Entry>)> {
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut lf = LogFile {
            path,
            file,
            len: 0,
            offsets: BTreeMap::new(),
        };
        let size = lf.file.metadata()?.len();
        if size < LOG_HEADER.len() as u64 {
            // New (or torn while being created): start it afresh.
            lf.file.set_len(0)?;
            lf.file.write_all_at(LOG_HEADER, 0)?;
            lf.file.sync_all()?;
            disk::sync_dir(dir)?;
            lf.len = LOG_HEADER.len() as u64;
            return Ok((lf, BTreeMap::new()));
        }
        let mut head = [0u8; 12];
        lf.file.read_exact_at(&mut head, 0)?;
        if &head != LOG_HEADER {
            return Err(bad_data(format!(
                "{}: not a kiln raft log of a format this build reads",
                lf.path.display()
            )));
        }
        let mut entries = BTreeMap::new();
        let mut pos = LOG_HEADER.len() as u64;
        while let Some((entry, next)) = lf.read_record(pos, size)? {
            let index = entry.log_id.index;
            // A record at or below one already read can only follow a
            // truncation that did not reach the disk: the later one wins.
            let stale: Vec<u64> = lf.offsets.range(index..).map(|(i, _)| *i).collect();
            for i in stale {
                lf.offsets.remove(&i);
                entries.remove(&i);
            }
            lf.offsets.insert(index, pos);
            if purged.is_none_or(|p| index > p) {
                entries.insert(index, entry);
            }
            pos = next;
        }
        if pos < size {
            tracing::warn!(
                path = %lf.path.display(),
                kept = pos,
                size,
                "raft log: cutting a torn record at the tail"
            );
            lf.file.set_len(pos)?;
            lf.file.sync_all()?;
        }
        lf.len = pos;
        Ok((lf, entries))
    }

    /// Reads the record at `pos`; `None` at the end or at a torn record.
    fn read_record(&self, pos: u64, size: u64) -> io::Result<Option<(Entry, u64)>> {
        if pos + RECORD_HEAD > size {
            return Ok(None);
        }
        let mut head = [0u8; RECORD_HEAD as usize];
        self.file.read_exact_at(&mut head, pos)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD || pos + RECORD_HEAD + len as u64 > size {
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact_at(&mut payload, pos + RECORD_HEAD)?;
        if crc32fast::hash(&payload) != crc {
            return Ok(None);
        }
        // A record whose checksum holds but that does not decode is not a
        // torn write: refuse to guess.
        let entry: Entry = serde_json::from_slice(&payload).map_err(|e| {
            bad_data(format!(
                "{}: record at offset {pos}: {e}",
                self.path.display()
            ))
        })?;
        Ok(Some((entry, pos + RECORD_HEAD + len as u64)))
    }

    /// Appends encoded records and fsyncs.
    fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(records.len());
        for (index, rec) in records {
            offsets.push((*index, self.len + buf.len() as u64));
            buf.extend_from_slice(rec);
        }
        self.file.write_all_at(&buf, self.len)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        self.offsets.extend(offsets);
        Ok(())
    }

    /// Cuts the file before the record of `index` (and everything after).
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some((_, &off)) = self.offsets.range(index..).next() else {
            return Ok(());
        };
        self.file.set_len(off)?;
        self.file.sync_all()?;
        self.len = off;
        self.offsets.retain(|i, _| *i < index);
        Ok(())
    }

    /// Rewrites the file without the records up to `purged` when enough of
    /// them accumulated.
    fn maybe_compact(&mut self, dir: &Path, purged: u64) -> io::Result<()> {
        let dead = self.offsets.range(..=purged).count();
        let live = self.offsets.len() - dead;
        let worth_it = live == 0 || (dead >= COMPACT_MIN_DEAD && dead >= live);
        if dead == 0 || !worth_it {
            return Ok(());
        }
        let start = self
            .offsets
            .range(purged + 1..)
            .next()
            .map(|(_, o)| *o)
            .unwrap_or(self.len);
        let mut tail = vec![0u8; (self.len - start) as usize];
        self.file.read_exact_at(&mut tail, start)?;
        let mut bytes = LOG_HEADER.to_vec();
        bytes.extend_from_slice(&tail);
        disk::write_atomic(dir, LOG_FILE, &bytes)?;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        let shift = start - LOG_HEADER.len() as u64;
        self.offsets = self
            .offsets
            .range(purged + 1..)
            .map(|(i, o)| (*i, o - shift))
            .collect();
        self.len = bytes.len() as u64;
        tracing::debug!(purged, live, "raft log compacted");
        Ok(())
    }
}

/// Encodes one entry as a log record.
fn encode_record(entry: &Entry) -> io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| io::Error::other("raft log entry too large"))?;
    let mut rec = Vec::with_capacity(payload.len() + RECORD_HEAD as usize);
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    Ok(rec)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let cache = lock(&self.shared.cache);
        Ok(cache.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let cache = lock(&self.shared.cache);
        let last_purged = cache.meta.last_purged;
        let last = cache
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        lock(&self.shared.cache).meta.vote = Some(*vote);
        self.write_meta()
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.shared.cache).meta.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        {
            let mut cache = lock(&self.shared.cache);
            for entry in entries {
                let rec = encode_record(&entry)
                    .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
                records.push((entry.log_id.index, rec));
                cache.entries.insert(entry.log_id.index, entry);
            }
        }
        let res = self.with_file(move |_, file| file.append(&records)).await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let kind = e.kind();
                let msg = e.to_string();
                callback.log_io_completed(Err(io::Error::new(kind, msg)));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "raft log: truncate");
        lock(&self.shared.cache)
            .entries
            .retain(|i, _| *i < log_id.index);
        self.with_file(move |_, file| file.truncate(log_id.index))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "raft log: purge");
        {
            let mut cache = lock(&self.shared.cache);
            cache.entries.retain(|i, _| *i > log_id.index);
            cache.meta.last_purged = Some(log_id);
        }
        // The purge point first: once it is durable, records up to it are
        // ignored at open, so the file can be compacted at leisure.
        self.write_meta()
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.with_file(move |shared, file| file.maybe_compact(&shared.dir, log_id.index))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{ClientRequest, RequestId};
    use crate::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(ClientRequest {
                id: RequestId {
                    origin: 1,
                    session: 2,
                    serial: index,
                },
                cmd: Command::DeleteVolume {
                    name: format!("v{index}"),
                },
            }),
        }
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        // `LogFlushed` cannot be built outside openraft; write as `append`
        // does, minus the callback.
        let mut records = Vec::new();
        {
            let mut cache = lock(&store.shared.cache);
            for e in entries {
                records.push((e.log_id.index, encode_record(&e).unwrap()));
                cache.entries.insert(e.log_id.index, e);
            }
        }
        store
            .with_file(move |_, f| f.append(&records))
            .await
            .unwrap();
    }

    async fn indexes(store: &mut LogStore) -> Vec<u64> {
        store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    fn reopen(dir: &Path) -> LogStore {
        LogStore::open_blocking(dir).unwrap()
    }

    #[tokio::test]
    async fn append_truncate_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = reopen(dir.path());
        append(&mut s, (1..=10).map(|i| entry(1, i)).collect()).await;
        s.save_vote(&Vote::new(3, 2)).await.unwrap();
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
            .await
            .unwrap();
        append(&mut s, vec![entry(2, 8)]).await;
        drop(s);

        let mut s = reopen(dir.path());
        assert_eq!(indexes(&mut s).await, (1..=8).collect::<Vec<_>>());
        let last = s.try_get_log_entries(8..9).await.unwrap();
        assert_eq!(last[0].log_id.leader_id.term, 2);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 2)));

        s.purge(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(5));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        drop(s);

        let mut s = reopen(dir.path());
        assert_eq!(indexes(&mut s).await, vec![6, 7, 8]);
        // Purge past the end (snapshot install): empty log, compacted file.
        s.purge(LogId::new(CommittedLeaderId::new(2, 1), 20))
            .await
            .unwrap();
        append(&mut s, vec![entry(2, 21)]).await;
        drop(s);
        let mut s = reopen(dir.path());
        assert_eq!(indexes(&mut s).await, vec![21]);
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(21));
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = reopen(dir.path());
        append(&mut s, (1..=3).map(|i| entry(1, i)).collect()).await;
        drop(s);
        // A crash in the middle of writing record 4.
        let rec = encode_record(&entry(1, 4)).unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&rec[..rec.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();

        let mut s = reopen(dir.path());
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
        append(&mut s, vec![entry(1, 4)]).await;
        drop(s);
        let mut s = reopen(dir.path());
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"something else entirely").unwrap();
        assert!(LogStore::open_blocking(dir.path()).is_err());
        std::fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        assert!(LogStore::open_blocking(dir.path()).is_ok());
    }
}
