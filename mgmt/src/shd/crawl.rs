//! One local brick's crawler: walks the brick's pending index (`IndexList`)
//! and heals every gfid through the set's replicate translator, on a timer,
//! when kicked (`heal VOL`, a brick of the set reconnecting), and runs
//! `heal full` crawls; keeps a record of its last crawls for
//! `heal statistics`.

use kiln_core::client::replicate::{CrawlCounts, HealOutcome, Replicate};
use kiln_core::{FsError, Gfid};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

use crate::proto::CrawlRecord;

/// Crawl records kept per brick.
const KEEP_RECORDS: usize = 32;
/// Gfids asked per `IndexList`.
const PAGE: u32 = 1024;
/// Passes of one index crawl while it still makes progress (a directory
/// healed late re-creates files listed earlier).
const PASSES: usize = 4;
/// Healed and failed gfids remembered per brick (`info healed`,
/// `info heal-failed`).
const KEEP_EVENTS: usize = 1024;
/// How long a full crawl waits for every brick of the set to be reachable.
const FULL_WAIT: Duration = Duration::from_secs(10);
/// How often children are checked for coming back.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The crawler of one local brick (child `child` of `set`).
pub(crate) struct BrickCrawler {
    pub(crate) volume: String,
    pub(crate) set: Arc<Replicate>,
    pub(crate) child: usize,
    /// Index of the brick in the volume.
    pub(crate) index: usize,
    /// `HOST:/PATH`.
    pub(crate) label: String,
    /// The brick directory (local: used to name gfids by path).
    pub(crate) path: PathBuf,
    records: Mutex<VecDeque<CrawlRecord>>,
    /// Recently healed gfids, with when.
    healed: Mutex<VecDeque<(u64, Gfid)>>,
    /// Recent heal failures, with when.
    failed: Mutex<VecDeque<(u64, Gfid)>>,
    kick: Notify,
    full_wanted: AtomicBool,
    /// Serializes crawls of this brick.
    busy: tokio::sync::Mutex<()>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl BrickCrawler {
    /// A crawler for child `child` of `set`, brick `index` of the volume.
    pub(crate) fn new(
        volume: String,
        set: Arc<Replicate>,
        child: usize,
        index: usize,
        label: String,
        path: PathBuf,
    ) -> BrickCrawler {
        BrickCrawler {
            volume,
            set,
            child,
            index,
            label,
            path,
            records: Mutex::new(VecDeque::new()),
            healed: Mutex::new(VecDeque::new()),
            failed: Mutex::new(VecDeque::new()),
            kick: Notify::new(),
            full_wanted: AtomicBool::new(false),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Asks for an index crawl now.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Asks for a full crawl (run only by the first reachable brick of the
    /// set, so one server walks each set).
    pub(crate) fn kick_full(&self) {
        self.full_wanted.store(true, Ordering::SeqCst);
        self.kick.notify_one();
    }

    /// The crawl records, oldest first.
    pub(crate) fn records(&self) -> Vec<CrawlRecord> {
        self.records.lock().iter().cloned().collect()
    }

    /// Recently healed (`failed` false) or failed gfids, oldest first.
    pub(crate) fn events(&self, failed: bool) -> Vec<(u64, Gfid)> {
        let q = if failed { &self.failed } else { &self.healed };
        q.lock().iter().copied().collect()
    }

    fn note(&self, failed: bool, gfid: Gfid) {
        let mut q = if failed {
            self.failed.lock()
        } else {
            self.healed.lock()
        };
        if q.len() >= KEEP_EVENTS {
            q.pop_front();
        }
        q.push_back((now(), gfid));
    }

    fn begin(&self, kind: &str) -> usize {
        let mut r = self.records.lock();
        if r.len() >= KEEP_RECORDS {
            r.pop_front();
        }
        r.push_back(CrawlRecord {
            kind: kind.to_string(),
            start: now(),
            end: None,
            scanned: 0,
            healed: 0,
            failed: 0,
            split_brain: 0,
        });
        r.len() - 1
    }

    fn finish(&self, at: usize, c: CrawlCounts) {
        let mut r = self.records.lock();
        if let Some(rec) = r.get_mut(at) {
            rec.end = Some(now());
            rec.scanned = c.scanned;
            rec.healed = c.healed;
            rec.failed = c.failed;
            rec.split_brain = c.split_brain;
        }
    }

    /// Crawls on every tick, kick, or reconnect, forever.
    pub(crate) async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            let _ = tokio::time::timeout(interval, self.kick.notified()).await;
            let Some(brick) = self.set.child(self.child) else {
                return;
            };
            if !brick.is_up() {
                continue;
            }
            if self.full_wanted.swap(false, Ordering::SeqCst) {
                // A daemon just restarted (e.g. after add-brick) may not have
                // reached every brick yet: give them a moment, so the walk
                // covers them all and one brick's daemon does it.
                let deadline = tokio::time::Instant::now() + FULL_WAIT;
                while !self.all_up() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if self.first_up() {
                    self.full_crawl().await;
                } else {
                    tracing::info!(volume = %self.volume, brick = %self.label, "full heal: another brick of the set crawls it");
                }
            }
            self.index_crawl().await;
        }
    }

    /// True if every child of the set is reachable.
    fn all_up(&self) -> bool {
        (0..self.set.child_count()).all(|c| self.set.child(c).is_some_and(|x| x.is_up()))
    }

    /// True if this brick is the first reachable child of its set.
    fn first_up(&self) -> bool {
        (0..self.set.child_count())
            .find(|c| self.set.child(*c).is_some_and(|x| x.is_up()))
            .is_none_or(|c| c == self.child)
    }

    /// Every gfid of the brick's pending index.
    pub(crate) async fn pending(&self) -> Result<Vec<Gfid>, FsError> {
        let brick = self.set.child(self.child).ok_or(FsError::InvalidArgument)?;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = brick.index_list(after, PAGE).await?;
            let Some(last) = page.last().copied() else {
                break;
            };
            let n = page.len();
            out.extend(page);
            after = Some(last);
            if n < PAGE as usize {
                break;
            }
        }
        Ok(out)
    }

    /// One index crawl (several passes while it makes progress).
    async fn index_crawl(&self) {
        let _busy = self.busy.lock().await;
        let pending = match self.pending().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(volume = %self.volume, brick = %self.label, "cannot read the pending index: {e}");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let rec = self.begin("INDEX");
        let mut total = CrawlCounts::default();
        let mut todo = pending;
        let mut failed = Vec::new();
        for pass in 0..PASSES {
            let mut c = CrawlCounts::default();
            failed.clear();
            for gfid in &todo {
                c.scanned += 1;
                match self.set.heal_gfid(*gfid, &gfid.to_string()).await {
                    Ok(HealOutcome::Healed) => {
                        c.healed += 1;
                        self.note(false, *gfid);
                    }
                    Ok(HealOutcome::Clean) => {}
                    Ok(HealOutcome::SplitBrain) => c.split_brain += 1,
                    Ok(HealOutcome::Pending) => {
                        c.failed += 1;
                        failed.push(*gfid);
                    }
                    Err(FsError::NotFound) | Err(FsError::Stale) => {}
                    Err(e) => {
                        tracing::debug!(volume = %self.volume, brick = %self.label, %gfid, "heal: {e}");
                        c.failed += 1;
                        failed.push(*gfid);
                    }
                }
            }
            if pass == 0 {
                total.scanned = c.scanned;
            }
            total.healed += c.healed;
            total.split_brain = c.split_brain;
            total.failed = c.failed;
            if c.healed == 0 {
                break;
            }
            match self.pending().await {
                Ok(p) if !p.is_empty() => todo = p,
                _ => break,
            }
        }
        // What the last pass could not heal.
        for g in failed {
            self.note(true, g);
        }
        tracing::info!(volume = %self.volume, brick = %self.label, scanned = total.scanned, healed = total.healed, failed = total.failed, split_brain = total.split_brain, "index crawl done");
        self.finish(rec, total);
    }

    /// One full crawl of the set.
    async fn full_crawl(&self) {
        let _busy = self.busy.lock().await;
        tracing::info!(volume = %self.volume, brick = %self.label, "full crawl starting");
        let rec = self.begin("FULL");
        let c = self.set.full_heal().await;
        tracing::info!(volume = %self.volume, brick = %self.label, scanned = c.scanned, healed = c.healed, failed = c.failed, split_brain = c.split_brain, "full crawl done");
        self.finish(rec, c);
    }
}

/// Kicks the crawlers of `set` when one of its children comes back.
pub(crate) async fn watch_reconnects(set: Arc<Replicate>, crawlers: Vec<Arc<BrickCrawler>>) {
    let up = |set: &Replicate| -> Vec<bool> {
        (0..set.child_count())
            .map(|c| set.child(c).is_some_and(|x| x.is_up()))
            .collect()
    };
    let mut before = up(&set);
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let now = up(&set);
        let back: Vec<usize> = (0..now.len()).filter(|c| now[*c] && !before[*c]).collect();
        if !back.is_empty() {
            tracing::info!(set = %kiln_core::client::Xlator::name(&*set), children = ?back, "brick(s) came back: crawling now");
            for c in &crawlers {
                c.kick();
            }
        }
        before = now;
    }
}
