//! The lock manager behind NLM: NLM locks become the volume's POSIX locks
//! (`Volume::lk`) on an fd the gateway keeps open per file while one of its
//! clients holds locks there, with owner = a stable hash of (caller_name,
//! svid, oh); blocked LOCKs (`blocking`) wait in a task polling the brick,
//! cancellable by CANCEL, UNLOCK and FREE_ALL, and end with a GRANTED
//! callback; DOS share reservations are kept here; the grace period after a
//! restart.

use kiln_core::client::{Fd, Volume};
use kiln_core::proto::{FileLock, LockCmd, LockType};
use kiln_core::{FsError, Gfid};
use kiln_nfs3::exports::ExportOptions;
use kiln_nfs3::FileHandle;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod blocking;

use crate::monitor::Monitor;
use crate::ranges::{range_end, RangeSet};
use crate::types::*;
use blocking::{BlockKey, Blocked};

/// Most files with NLM state at once.
const MAX_FILES: usize = 65536;

/// One served volume, as NLM sees it.
pub struct NlmVolume {
    /// Volume name.
    pub name: String,
    /// Volume id (the first half of every file handle).
    pub id: [u8; 16],
    /// The volume client.
    pub volume: Arc<Volume>,
    /// Export rules (who may lock).
    pub opts: ExportOptions,
}

impl NlmVolume {
    /// Wraps a volume; fails if its id is not a UUID.
    pub fn new(volume: Arc<Volume>) -> Result<NlmVolume, String> {
        let spec = volume.spec();
        let id = *uuid::Uuid::parse_str(&spec.id)
            .map_err(|e| format!("volume {} has a bad id {:?}: {e}", spec.name, spec.id))?
            .as_bytes();
        Ok(NlmVolume {
            name: spec.name.clone(),
            id,
            opts: ExportOptions::from_spec(spec),
            volume,
        })
    }
}

/// Where a call came from and arrived: callbacks go back from `local` to
/// `client` (a Linux client accepts GRANTED only from the server's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub client: IpAddr,
    /// Our address the client called.
    pub local: IpAddr,
}

/// A stable, non-zero lock owner id for an NLM owner: FNV-1a 64 over
/// caller_name, svid and oh (the same on every gateway and across restarts).
pub fn owner_id(caller_name: &[u8], svid: i32, oh: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(b"nlm\0");
    eat(&(caller_name.len() as u32).to_be_bytes());
    eat(caller_name);
    eat(&svid.to_be_bytes());
    eat(&(oh.len() as u32).to_be_bytes());
    eat(oh);
    // 0 is the owner the NFS gateway flushes with; never use it.
    h.max(1)
}

/// A DOS share reservation.
#[derive(Debug, Clone)]
struct Share {
    host: Vec<u8>,
    oh: Vec<u8>,
    mode: u32,
    access: u32,
}

/// What one owner holds on one file.
struct Held {
    host: Vec<u8>,
    ranges: RangeSet,
}

/// NLM state of one file.
#[derive(Default)]
struct FileEntry {
    fd: Option<Arc<Fd>>,
    /// Calls using `fd` right now (the entry stays while any does).
    busy: usize,
    /// Owners holding locks here.
    owners: HashMap<u64, Held>,
    shares: Vec<Share>,
}

/// Outcome counters (tests and logs).
#[derive(Debug, Default)]
pub struct Stats {
    /// Locks granted at once.
    pub granted: AtomicU64,
    /// Locks refused (DENIED).
    pub denied: AtomicU64,
    /// Locks that waited (BLOCKED).
    pub blocked: AtomicU64,
    /// GRANTED callbacks the client accepted.
    pub callbacks_ok: AtomicU64,
}

/// The lock manager of one gateway.
pub struct LockManager {
    vols: HashMap<[u8; 16], Arc<NlmVolume>>,
    files: Mutex<HashMap<FileHandle, FileEntry>>,
    blocked: Mutex<HashMap<BlockKey, Blocked>>,
    next_id: AtomicU64,
    grace_until: Mutex<Option<Instant>>,
    monitor: Arc<Monitor>,
    pmap_port: u16,
    /// Counters.
    pub stats: Stats,
}

fn lock_kind(exclusive: bool) -> LockType {
    if exclusive {
        LockType::Write
    } else {
        LockType::Read
    }
}

fn stat_of(e: &FsError) -> Nlm4Stat {
    match e {
        FsError::WouldBlock => Nlm4Stat::Denied,
        FsError::Deadlock => Nlm4Stat::Deadlck,
        FsError::ReadOnly => Nlm4Stat::Rofs,
        FsError::NotFound | FsError::Stale | FsError::BadFd => Nlm4Stat::StaleFh,
        FsError::InvalidArgument | FsError::Range => Nlm4Stat::Fbig,
        _ => Nlm4Stat::Failed,
    }
}

impl LockManager {
    /// A manager over `vols`, in grace until `grace_until` (if any),
    /// finding clients' programs through their portmapper on `pmap_port`.
    pub fn new(
        vols: Vec<Arc<NlmVolume>>,
        monitor: Arc<Monitor>,
        grace_until: Option<Instant>,
        pmap_port: u16,
    ) -> Arc<LockManager> {
        Arc::new(LockManager {
            vols: vols.into_iter().map(|v| (v.id, v)).collect(),
            files: Mutex::new(HashMap::new()),
            blocked: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            grace_until: Mutex::new(grace_until),
            monitor,
            pmap_port,
            stats: Stats::default(),
        })
    }

    /// True while only reclaims are granted.
    pub fn in_grace(&self) -> bool {
        let mut g = self.grace_until.lock();
        match *g {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *g = None;
                tracing::info!("nlm: grace period over");
                false
            }
            None => false,
        }
    }

    /// Ends the grace period now.
    pub fn end_grace(&self) {
        *self.grace_until.lock() = None;
    }

    /// The port of clients' portmappers (111 but in tests).
    pub fn pmap_port(&self) -> u16 {
        self.pmap_port
    }

    /// The monitor (NSM records).
    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    fn resolve(&self, fh: &[u8], peer: &Peer) -> Result<(FileHandle, Arc<NlmVolume>), Nlm4Stat> {
        let h = FileHandle::decode(fh).ok_or(Nlm4Stat::StaleFh)?;
        let vol = self.vols.get(&h.volume).ok_or(Nlm4Stat::StaleFh)?;
        if !vol.opts.allows(peer.client) {
            return Err(Nlm4Stat::Denied);
        }
        Ok((h, vol.clone()))
    }

    /// The gateway's fd of the file (opened on first use), marked busy
    /// until `done`.
    async fn fd(&self, h: FileHandle, vol: &NlmVolume) -> Result<Arc<Fd>, Nlm4Stat> {
        if let Some(fd) = self.use_fd(h) {
            return Ok(fd);
        }
        let fd = match vol.volume.open(h.gfid, libc::O_RDWR).await {
            Ok(fd) => fd,
            Err(FsError::ReadOnly) | Err(FsError::AccessDenied) | Err(FsError::IsDir) => vol
                .volume
                .open(h.gfid, libc::O_RDONLY)
                .await
                .map_err(|e| stat_of(&e))?,
            Err(e) => return Err(stat_of(&e)),
        };
        let fd = Arc::new(fd);
        let mut files = self.files.lock();
        if files.len() >= MAX_FILES && !files.contains_key(&h) {
            drop(files);
            self.release_later(vol, fd);
            return Err(Nlm4Stat::DeniedNolocks);
        }
        let e = files.entry(h).or_default();
        e.busy += 1;
        match &e.fd {
            Some(existing) => {
                let keep = existing.clone();
                drop(files);
                self.release_later(vol, fd);
                Ok(keep)
            }
            None => {
                e.fd = Some(fd.clone());
                Ok(fd)
            }
        }
    }

    /// The file's fd if the gateway has one open, marked busy until `done`.
    fn use_fd(&self, h: FileHandle) -> Option<Arc<Fd>> {
        let mut files = self.files.lock();
        let e = files.get_mut(&h)?;
        let fd = e.fd.clone()?;
        e.busy += 1;
        Some(fd)
    }

    /// Ends a use of the file's fd (from `fd` or `use_fd`).
    fn done(&self, h: FileHandle) {
        if let Some(e) = self.files.lock().get_mut(&h) {
            e.busy = e.busy.saturating_sub(1);
        }
        self.tidy(h);
    }

    fn release_later(&self, vol: &NlmVolume, fd: Arc<Fd>) {
        let v = vol.volume.clone();
        tokio::spawn(async move {
            let _ = v.release(&fd).await;
        });
    }

    /// Drops the file's entry (and closes its fd) when nothing is left in it.
    fn tidy(&self, h: FileHandle) {
        let fd = {
            let mut files = self.files.lock();
            let empty = files
                .get(&h)
                .is_some_and(|e| e.owners.is_empty() && e.shares.is_empty() && e.busy == 0);
            let waiting = self.blocked.lock().keys().any(|k| k.fh == h);
            if !empty || waiting {
                return;
            }
            files.remove(&h).and_then(|e| e.fd)
        };
        if let (Some(fd), Some(vol)) = (fd, self.vols.get(&h.volume)) {
            self.release_later(vol, fd);
        }
    }

    /// Notes that `owner` (of `host`) now holds `[start, end]` here.
    fn held(
        files: &mut HashMap<FileHandle, FileEntry>,
        h: FileHandle,
        owner: u64,
        host: &[u8],
        start: u64,
        end: u64,
    ) {
        files
            .entry(h)
            .or_default()
            .owners
            .entry(owner)
            .or_insert_with(|| Held {
                host: host.to_vec(),
                ranges: RangeSet::default(),
            })
            .ranges
            .add(start, end);
    }

    /// Notes that `owner` released `[start, end]` here.
    fn released(&self, h: FileHandle, owner: u64, start: u64, end: u64) {
        if let Some(e) = self.files.lock().get_mut(&h) {
            if let Some(o) = e.owners.get_mut(&owner) {
                o.ranges.remove(start, end);
                if o.ranges.is_empty() {
                    e.owners.remove(&owner);
                }
            }
        }
    }

    /// TEST: would this lock be granted? DENIED names the conflicting lock.
    pub async fn test(&self, a: &TestArgs, peer: &Peer) -> TestRes {
        let res = |stat, holder| TestRes {
            cookie: a.cookie.clone(),
            stat,
            holder,
        };
        if self.in_grace() {
            return res(Nlm4Stat::DeniedGracePeriod, None);
        }
        let (h, vol) = match self.resolve(&a.lock.fh, peer) {
            Ok(x) => x,
            Err(s) => return res(s, None),
        };
        let fd = match self.fd(h, &vol).await {
            Ok(fd) => fd,
            Err(s) => return res(s, None),
        };
        let l = &a.lock;
        let want = FileLock {
            kind: lock_kind(a.exclusive),
            start: l.offset,
            len: l.len,
            owner: owner_id(&l.caller_name, l.svid, &l.oh),
            pid: l.svid as u32,
        };
        let out = vol.volume.lk(&fd, LockCmd::Get, want).await;
        self.done(h);
        match out {
            Ok(found) if found.kind == LockType::Unlock => res(Nlm4Stat::Granted, None),
            Ok(found) => res(
                Nlm4Stat::Denied,
                Some(Nlm4Holder {
                    exclusive: found.kind == LockType::Write,
                    svid: found.pid as i32,
                    oh: found.owner.to_be_bytes().to_vec(),
                    offset: found.start,
                    len: found.len,
                }),
            ),
            Err(e) => res(stat_of(&e), None),
        }
    }

    /// LOCK: granted now, denied, or (blocking) queued with a GRANTED
    /// callback to come.
    pub async fn lock(self: &Arc<Self>, a: &LockArgs, peer: &Peer) -> Nlm4Stat {
        self.lock_as(a, peer, true).await
    }

    /// NM_LOCK: a non-monitored lock (the client runs no statd: it is not
    /// recorded for notification, and it cannot wait).
    pub async fn nm_lock(self: &Arc<Self>, a: &LockArgs, peer: &Peer) -> Nlm4Stat {
        let a = LockArgs {
            block: false,
            ..a.clone()
        };
        self.lock_as(&a, peer, false).await
    }

    async fn lock_as(self: &Arc<Self>, a: &LockArgs, peer: &Peer, monitored: bool) -> Nlm4Stat {
        let grace = self.in_grace();
        if grace && !a.reclaim {
            return Nlm4Stat::DeniedGracePeriod;
        }
        let (h, vol) = match self.resolve(&a.lock.fh, peer) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let l = &a.lock;
        let owner = owner_id(&l.caller_name, l.svid, &l.oh);
        let key = BlockKey {
            fh: h,
            owner,
            offset: l.offset,
            len: l.len,
            exclusive: a.exclusive,
        };
        if self.blocked.lock().contains_key(&key) {
            // A re-sent LOCK of a request still waiting.
            return Nlm4Stat::Blocked;
        }
        // The client is monitored before it can hold anything, so a restart
        // of this gateway can tell it to reclaim.
        if monitored {
            self.monitor.note(&l.caller_name, peer).await;
        }
        let fd = match self.fd(h, &vol).await {
            Ok(fd) => fd,
            Err(s) => return s,
        };
        let want = FileLock {
            kind: lock_kind(a.exclusive),
            start: l.offset,
            len: l.len,
            owner,
            pid: l.svid as u32,
        };
        let out = vol.volume.lk(&fd, LockCmd::Set, want).await;
        if out.is_ok() {
            Self::held(
                &mut self.files.lock(),
                h,
                owner,
                &l.caller_name,
                l.offset,
                range_end(l.offset, l.len),
            );
        }
        let stat = self.after_lock(out, a, peer, vol, fd, key, want, grace);
        self.done(h);
        stat
    }

    /// The answer to a LOCK once the brick answered `out`; a conflict on a
    /// blocking request starts its waiting task.
    #[allow(clippy::too_many_arguments)]
    fn after_lock(
        self: &Arc<Self>,
        out: kiln_core::FsResult<FileLock>,
        a: &LockArgs,
        peer: &Peer,
        vol: Arc<NlmVolume>,
        fd: Arc<Fd>,
        key: BlockKey,
        want: FileLock,
        grace: bool,
    ) -> Nlm4Stat {
        let l = &a.lock;
        match out {
            Ok(_) => {
                self.stats.granted.fetch_add(1, Ordering::Relaxed);
                if a.reclaim {
                    tracing::info!(host = %String::from_utf8_lossy(&l.caller_name), svid = l.svid, offset = l.offset, len = l.len, in_grace = grace, "nlm: lock reclaimed");
                }
                tracing::debug!(host = %String::from_utf8_lossy(&l.caller_name), svid = l.svid, offset = l.offset, len = l.len, exclusive = a.exclusive, reclaim = a.reclaim, "nlm: lock granted");
                Nlm4Stat::Granted
            }
            Err(FsError::WouldBlock) if a.block && !grace => {
                self.start_waiting(a, peer, vol, fd, key, want)
            }
            Err(e) => {
                if matches!(e, FsError::WouldBlock) {
                    self.stats.denied.fetch_add(1, Ordering::Relaxed);
                }
                let s = stat_of(&e);
                tracing::debug!(host = %String::from_utf8_lossy(&l.caller_name), error = %e, ?s, "nlm: lock not granted");
                s
            }
        }
    }

    /// CANCEL: stops a blocked request.
    pub async fn cancel(&self, a: &CancArgs, peer: &Peer) -> Nlm4Stat {
        let (h, _) = match self.resolve(&a.lock.fh, peer) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let l = &a.lock;
        let owner = owner_id(&l.caller_name, l.svid, &l.oh);
        let n = self.cancel_where(|k, _| {
            k.fh == h && k.owner == owner && k.offset == l.offset && k.len == l.len
        });
        tracing::debug!(cancelled = n, "nlm: cancel");
        Nlm4Stat::Granted
    }

    /// UNLOCK: releases a range (and stops the owner's blocked requests on
    /// the file).
    pub async fn unlock(&self, a: &UnlockArgs, peer: &Peer) -> Nlm4Stat {
        let (h, vol) = match self.resolve(&a.lock.fh, peer) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let l = &a.lock;
        let owner = owner_id(&l.caller_name, l.svid, &l.oh);
        self.cancel_where(|k, _| k.fh == h && k.owner == owner);
        let known = self
            .files
            .lock()
            .get(&h)
            .is_some_and(|e| e.owners.contains_key(&owner));
        // Nothing of this owner's here: nothing to release.
        let Some(fd) = known.then(|| self.use_fd(h)).flatten() else {
            return Nlm4Stat::Granted;
        };
        let ul = FileLock {
            kind: LockType::Unlock,
            start: l.offset,
            len: l.len,
            owner,
            pid: l.svid as u32,
        };
        let r = vol.volume.lk(&fd, LockCmd::Set, ul).await;
        if r.is_ok() {
            self.released(h, owner, l.offset, range_end(l.offset, l.len));
        }
        self.done(h);
        match r {
            Ok(_) => Nlm4Stat::Granted,
            Err(e) => stat_of(&e),
        }
    }

    /// SHARE / UNSHARE: DOS share reservations, kept in the gateway.
    pub fn share(&self, a: &ShareArgs, peer: &Peer, unshare: bool) -> ShareRes {
        let res = |stat| ShareRes {
            cookie: a.cookie.clone(),
            stat,
            sequence: 0,
        };
        let s = &a.share;
        if !unshare && self.in_grace() && !a.reclaim {
            return res(Nlm4Stat::DeniedGracePeriod);
        }
        let h = match self.resolve(&s.fh, peer) {
            Ok((h, _)) => h,
            Err(st) => return res(st),
        };
        let mut files = self.files.lock();
        if unshare {
            if let Some(e) = files.get_mut(&h) {
                e.shares
                    .retain(|x| !(x.host == s.caller_name && x.oh == s.oh));
            }
            drop(files);
            self.tidy(h);
            return res(Nlm4Stat::Granted);
        }
        if files.len() >= MAX_FILES && !files.contains_key(&h) {
            return res(Nlm4Stat::DeniedNolocks);
        }
        let e = files.entry(h).or_default();
        let conflict = e.shares.iter().any(|x| {
            !(x.host == s.caller_name && x.oh == s.oh)
                && ((x.mode & s.access) != 0 || (s.mode & x.access) != 0)
        });
        if conflict {
            drop(files);
            self.tidy(h);
            return res(Nlm4Stat::Denied);
        }
        e.shares
            .retain(|x| !(x.host == s.caller_name && x.oh == s.oh));
        e.shares.push(Share {
            host: s.caller_name.clone(),
            oh: s.oh.clone(),
            mode: s.mode,
            access: s.access,
        });
        res(Nlm4Stat::Granted)
    }

    /// FREE_ALL, or a client's reboot: drops every lock, share and blocked
    /// request of host `name` (and, with `addr`, of every host name seen
    /// at that address). Returns the number of owners released.
    pub async fn free_all(&self, name: &[u8], addr: Option<IpAddr>) -> usize {
        let mut names = vec![name.to_vec()];
        if let Some(ip) = addr {
            for n in self.monitor.names_at(ip) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        self.cancel_where(|_, b| names.contains(&b.host));
        let mut work = Vec::new();
        {
            let mut files = self.files.lock();
            for (h, e) in files.iter_mut() {
                e.shares.retain(|s| !names.contains(&s.host));
                let owners: Vec<u64> = e
                    .owners
                    .iter()
                    .filter(|(_, held)| names.contains(&held.host))
                    .map(|(o, _)| *o)
                    .collect();
                for o in &owners {
                    e.owners.remove(o);
                }
                if let Some(fd) = &e.fd {
                    if !owners.is_empty() {
                        work.push((*h, fd.clone(), owners));
                    }
                }
            }
        }
        let mut released = 0;
        let mut touched = Vec::new();
        for (h, fd, owners) in work {
            if let Some(vol) = self.vols.get(&h.volume) {
                for owner in owners {
                    let l = FileLock {
                        kind: LockType::Unlock,
                        start: 0,
                        len: 0,
                        owner,
                        pid: 0,
                    };
                    if vol.volume.lk(&fd, LockCmd::Set, l).await.is_ok() {
                        released += 1;
                    }
                }
            }
            touched.push(h);
        }
        let all: Vec<FileHandle> = self.files.lock().keys().copied().collect();
        for h in all {
            self.tidy(h);
        }
        for n in &names {
            self.monitor.forget(n).await;
        }
        tracing::info!(hosts = ?names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>(), released, files = touched.len(), "nlm: released every lock of a client");
        released
    }

    /// Files with NLM state, blocked requests (tests and logs).
    pub fn counts(&self) -> (usize, usize) {
        (self.files.lock().len(), self.blocked.lock().len())
    }

    /// The volume and gfid of a file handle this gateway serves.
    pub fn volume_of(&self, fh: &[u8]) -> Option<(Arc<NlmVolume>, Gfid)> {
        let h = FileHandle::decode(fh)?;
        Some((self.vols.get(&h.volume)?.clone(), h.gfid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_are_stable_and_distinct() {
        let a = owner_id(b"host", 1, b"oh");
        assert_eq!(a, owner_id(b"host", 1, b"oh"));
        assert_ne!(a, owner_id(b"host", 2, b"oh"));
        assert_ne!(a, owner_id(b"hos", 1, b"toh"));
        assert_ne!(a, 0);
        // A fixed value: owners must not change between releases.
        assert_eq!(owner_id(b"", 0, b""), owner_id(b"", 0, b""));
    }
}
