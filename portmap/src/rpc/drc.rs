//! Duplicate request cache for non-idempotent procedures: a retransmitted
//! call (same xid, client address, program, version, procedure and argument
//! checksum) is not executed twice; while the first is running the duplicate
//! is dropped, afterwards the cached reply is sent again.

use parking_lot::Mutex;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies one call from one client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DrcKey {
    /// Transaction id.
    pub xid: u32,
    /// Client address and port.
    pub peer: SocketAddr,
    /// Program.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// Procedure.
    pub proc_: u32,
    /// Checksum of the arguments (guards against xid reuse).
    pub sum: u64,
}

impl DrcKey {
    /// Builds a key, hashing `args`.
    pub fn new(xid: u32, peer: SocketAddr, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Self {
        let mut h = DefaultHasher::new();
        args.hash(&mut h);
        DrcKey {
            xid,
            peer,
            prog,
            vers,
            proc_,
            sum: h.finish(),
        }
    }
}

/// What the cache says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrcLookup {
    /// First time seen: execute it, then `finish` (or `abandon`).
    New,
    /// The same call is executing now: drop this copy.
    InProgress,
    /// Already answered: send this reply again.
    Replay(Arc<Vec<u8>>),
}

enum State {
    InProgress,
    Done(Arc<Vec<u8>>),
}

struct Inner {
    map: HashMap<DrcKey, (State, Instant)>,
    order: VecDeque<(DrcKey, Instant)>,
    bytes: usize,
}

/// The cache: bounded by entry count, total reply bytes and age.
pub struct Drc {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    ttl: Duration,
}

impl Drc {
    /// A cache of at most `max_entries` calls and `max_bytes` of replies,
    /// each kept for `ttl`.
    pub fn new(max_entries: usize, max_bytes: usize, ttl: Duration) -> Drc {
        Drc {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            max_entries,
            max_bytes,
            ttl,
        }
    }

    /// Looks a call up, marking it in progress when new.
    pub fn begin(&self, key: &DrcKey) -> DrcLookup {
        let now = Instant::now();
        let mut g = self.inner.lock();
        self.expire(&mut g, now);
        match g.map.get(key) {
            Some((State::InProgress, _)) => DrcLookup::InProgress,
            Some((State::Done(reply), _)) => DrcLookup::Replay(reply.clone()),
            None => {
                g.map.insert(key.clone(), (State::InProgress, now));
                g.order.push_back((key.clone(), now));
                self.expire(&mut g, now);
                DrcLookup::New
            }
        }
    }

    /// Stores the reply of a call that `begin` called new.
    pub fn finish(&self, key: &DrcKey, reply: &[u8]) {
        let mut g = self.inner.lock();
        let len = reply.len();
        if let Some((state, _)) = g.map.get_mut(key) {
            *state = State::Done(Arc::new(reply.to_vec()));
            g.bytes += len;
        }
        let now = Instant::now();
        self.expire(&mut g, now);
    }

    /// Forgets a call that produced no reply.
    pub fn abandon(&self, key: &DrcKey) {
        let mut g = self.inner.lock();
        if let Some((State::Done(r), _)) = g.map.remove(key) {
            g.bytes -= r.len();
        }
    }

    /// Number of calls remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, g: &mut Inner, now: Instant) {
        while let Some((key, at)) = g.order.front().cloned() {
            let over = g.map.len() > self.max_entries || g.bytes > self.max_bytes;
            let old = now.duration_since(at) > self.ttl;
            if !over && !old {
                break;
            }
            g.order.pop_front();
            // Only remove the entry this queue slot was made for.
            let same = matches!(g.map.get(&key), Some((_, t)) if *t == at);
            if same {
                if let Some((State::Done(r), _)) = g.map.remove(&key) {
                    g.bytes -= r.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_and_bounds() {
        let peer: SocketAddr = "127.0.0.1:900".parse().unwrap();
        let drc = Drc::new(2, 1 << 20, Duration::from_secs(60));
        let k1 = DrcKey::new(1, peer, 100003, 3, 8, b"args");
        assert_eq!(drc.begin(&k1), DrcLookup::New);
        assert_eq!(drc.begin(&k1), DrcLookup::InProgress);
        drc.finish(&k1, b"reply");
        assert_eq!(
            drc.begin(&k1),
            DrcLookup::Replay(Arc::new(b"reply".to_vec()))
        );
        // Same xid, other arguments: a different call.
        let k1b = DrcKey::new(1, peer, 100003, 3, 8, b"other");
        assert_eq!(drc.begin(&k1b), DrcLookup::New);
        let k2 = DrcKey::new(2, peer, 100003, 3, 8, b"args");
        assert_eq!(drc.begin(&k2), DrcLookup::New);
        assert!(drc.len() <= 2);
        assert_eq!(drc.begin(&k1), DrcLookup::New, "oldest evicted");
    }
}
