//! Blocked LOCK requests: a conflicting blocking LOCK is answered
//! NLM4_BLOCKED and a task retries it on the brick (polling, so it can be
//! withdrawn: a brick waiter cannot), stopped by CANCEL, UNLOCK or
//! FREE_ALL; once granted, the client is called back (GRANTED).

use kiln_core::client::Fd;
use kiln_core::proto::{FileLock, LockCmd, LockType};
use kiln_core::FsError;
use kiln_nfs3::FileHandle;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use super::{range_end, LockManager, NlmVolume, Peer};
use crate::callback;
use crate::types::*;

/// First wait of a blocked lock before it asks the brick again.
const POLL_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two tries of a blocked lock.
const POLL_MAX: Duration = Duration::from_millis(250);
/// Most blocked locks waiting at once (LOCK beyond answers DENIED_NOLOCKS).
const MAX_BLOCKED: usize = 4096;
/// How often, and how many times, a GRANTED callback is tried.
const GRANTED_RETRY: Duration = Duration::from_secs(5);
const GRANTED_TRIES: u32 = 12;

/// Identifies one blocked request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BlockKey {
    pub(super) fh: FileHandle,
    pub(super) owner: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) exclusive: bool,
}

/// A waiting request, as CANCEL/UNLOCK/FREE_ALL find it.
pub(super) struct Blocked {
    id: u64,
    pub(super) host: Vec<u8>,
    cancel: Arc<Notify>,
}

/// What a waiting task needs.
struct Waiting {
    key: BlockKey,
    id: u64,
    vol: Arc<NlmVolume>,
    fd: Arc<Fd>,
    want: FileLock,
    args: TestArgs,
    peer: Peer,
    cancel: Arc<Notify>,
}

impl LockManager {
    /// Queues a blocking LOCK that met a conflict and starts its task.
    pub(super) fn start_waiting(
        self: &Arc<Self>,
        a: &LockArgs,
        peer: &Peer,
        vol: Arc<NlmVolume>,
        fd: Arc<Fd>,
        key: BlockKey,
        want: FileLock,
    ) -> Nlm4Stat {
        let l = &a.lock;
        let mut blocked = self.blocked.lock();
        if blocked.len() >= MAX_BLOCKED {
            return Nlm4Stat::DeniedNolocks;
        }
        if blocked.contains_key(&key) {
            return Nlm4Stat::Blocked;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(Notify::new());
        blocked.insert(
            key.clone(),
            Blocked {
                id,
                host: l.caller_name.clone(),
                cancel: cancel.clone(),
            },
        );
        drop(blocked);
        self.stats.blocked.fetch_add(1, Ordering::Relaxed);
        tracing::info!(host = %String::from_utf8_lossy(&l.caller_name), svid = l.svid, offset = l.offset, len = l.len, "nlm: lock blocked; waiting");
        let me = self.clone();
        let wait = Waiting {
            key,
            id,
            vol,
            fd,
            want,
            args: TestArgs {
                cookie: a.cookie.clone(),
                exclusive: a.exclusive,
                lock: l.clone(),
            },
            peer: *peer,
            cancel,
        };
        tokio::spawn(async move { me.wait_and_grant(wait).await });
        Nlm4Stat::Blocked
    }

    async fn wait_and_grant(self: Arc<Self>, w: Waiting) {
        let mut pause = POLL_MIN;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = w.cancel.notified() => {
                    self.tidy(w.key.fh);
                    return;
                }
            }
            pause = (pause * 2).min(POLL_MAX);
            if !self.is_waiting(&w) {
                self.tidy(w.key.fh);
                return;
            }
            match w.vol.volume.lk(&w.fd, LockCmd::Set, w.want).await {
                Ok(_) => break,
                Err(FsError::WouldBlock) | Err(FsError::Deadlock) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "nlm: a blocked lock failed; dropping it");
                    self.blocked.lock().remove(&w.key);
                    self.tidy(w.key.fh);
                    return;
                }
            }
        }
        // Granted on the brick: still wanted? (Noted as held before the
        // request stops counting as waiting, so the fd stays open.)
        let still = {
            let mut files = self.files.lock();
            let mut b = self.blocked.lock();
            if b.get(&w.key).is_some_and(|x| x.id == w.id) {
                b.remove(&w.key);
                Self::held(
                    &mut files,
                    w.key.fh,
                    w.key.owner,
                    &w.args.lock.caller_name,
                    w.want.start,
                    range_end(w.want.start, w.want.len),
                );
                true
            } else {
                false
            }
        };
        if !still {
            self.unlock_range(&w.vol, &w.fd, w.want).await;
            self.tidy(w.key.fh);
            return;
        }
        self.stats.granted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(host = %String::from_utf8_lossy(&w.args.lock.caller_name), svid = w.args.lock.svid, "nlm: blocked lock granted; calling the client back");
        let mut args = w.args.clone();
        for attempt in 0..GRANTED_TRIES {
            args.cookie = self
                .next_id
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes()
                .to_vec();
            match callback::granted(&w.peer, self.pmap_port, &args).await {
                Ok(Nlm4Stat::Granted) => {
                    self.stats.callbacks_ok.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %w.peer.client, "nlm: GRANTED callback accepted");
                    return;
                }
                Ok(s) => {
                    // The client no longer waits for it (it gave up).
                    tracing::info!(client = %w.peer.client, status = ?s, "nlm: GRANTED callback refused; releasing the lock");
                    self.unlock_range(&w.vol, &w.fd, w.want).await;
                    self.released(
                        w.key.fh,
                        w.key.owner,
                        w.want.start,
                        range_end(w.want.start, w.want.len),
                    );
                    self.tidy(w.key.fh);
                    return;
                }
                Err(e) => {
                    tracing::warn!(client = %w.peer.client, attempt, error = %e, "nlm: GRANTED callback failed");
                    tokio::time::sleep(GRANTED_RETRY).await;
                }
            }
        }
        // Keep the lock: the client's re-sent LOCK is answered GRANTED, and
        // its reboot (SM_NOTIFY) or FREE_ALL releases it.
    }

    fn is_waiting(&self, w: &Waiting) -> bool {
        self.blocked
            .lock()
            .get(&w.key)
            .is_some_and(|b| b.id == w.id)
    }

    pub(super) async fn unlock_range(&self, vol: &NlmVolume, fd: &Fd, mut l: FileLock) {
        l.kind = LockType::Unlock;
        if let Err(e) = vol.volume.lk(fd, LockCmd::Set, l).await {
            tracing::warn!(error = %e, "nlm: unlock failed");
        }
    }

    /// Stops the blocked requests matching `pred`; returns how many.
    pub(super) fn cancel_where(&self, pred: impl Fn(&BlockKey, &Blocked) -> bool) -> usize {
        let gone: Vec<Blocked> = {
            let mut b = self.blocked.lock();
            let keys: Vec<BlockKey> = b
                .iter()
                .filter(|(k, v)| pred(k, v))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| b.remove(k)).collect()
        };
        for g in &gone {
            g.cancel.notify_one();
        }
        gone.len()
    }
}
