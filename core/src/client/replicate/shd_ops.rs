//! The heal entry points the self-heal daemon and the management daemon
//! call on one replica set: heal one gfid from a brick's pending index,
//! examine a gfid without healing (`heal info`), crawl the whole tree
//! (`heal full`), resolve a split-brain by policy, and accuse a new empty
//! brick (`add-brick replica N+1`).

use futures::future::join_all;
use std::sync::Arc;

use super::changelog::{self, Matrix, Slot, Verdict};
use super::inspect::best_error;
use super::transaction::LockItem;
use super::{Quorum, Replicate};
use crate::client::protocol::{ProtocolClient, ProtocolOptions};
use crate::client::xlator::{Lookup, Xlator};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::graph::VolumeSpec;
use crate::iatt::FileKind;
use crate::name::Name;
use crate::proto::{DirEntry, Loc, XattrMap, XattropOp};

/// Entries asked per readdir during a full crawl.
const CRAWL_BATCH: u32 = 512;
/// How often a split-brain resolution tries the locks before giving up.
const LOCK_TRIES: usize = 50;

/// A directory copy's entries as sorted (name, gfid) pairs.
type Names = Vec<(Vec<u8>, Gfid)>;

/// What healing one inode came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealOutcome {
    /// Nothing to do (every copy that answered agrees).
    Clean,
    /// Something was repaired and the copies agree now.
    Healed,
    /// The copies accuse each other (data or metadata): left for the admin.
    SplitBrain,
    /// Still pending: a lock was busy, a sink is down, or a step failed.
    Pending,
}

/// How `heal VOL split-brain ...` picks the good copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// The largest copy (regular files).
    BiggerFile,
    /// The copy modified last.
    LatestMtime,
    /// The copy on this child of the set.
    SourceChild(usize),
}

/// What `examine` found about one inode (without healing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Examined {
    /// Its type, from a copy that answered.
    pub kind: Option<FileKind>,
    /// Some slot needs heal.
    pub pending: bool,
    /// The copies accuse each other in some slot.
    pub split_brain: bool,
}

/// Counts of a full crawl of one replica set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrawlCounts {
    /// Inodes looked at.
    pub scanned: u64,
    /// Inodes repaired.
    pub healed: u64,
    /// Inodes that could not be healed.
    pub failed: u64,
    /// Inodes in split-brain.
    pub split_brain: u64,
}

impl Replicate {
    /// One replicate translator per replica set of `spec`, over fresh
    /// protocol clients (no DHT on top): what the heal daemon and the
    /// management daemon heal through. Empty for an unreplicated volume.
    pub fn replica_sets(spec: &VolumeSpec, client_id: &str) -> Vec<Arc<Replicate>> {
        let replica = spec.replica_count();
        if replica <= 1 {
            return Vec::new();
        }
        let opts = ProtocolOptions {
            ping_timeout: spec.ping_timeout(),
            client_id: client_id.to_string(),
        };
        let clients: Vec<Arc<dyn Xlator>> = spec
            .bricks
            .iter()
            .map(|b| {
                Arc::new(ProtocolClient::new(&spec.name, b.clone(), opts.clone()))
                    as Arc<dyn Xlator>
            })
            .collect();
        clients
            .chunks(replica)
            .enumerate()
            .map(|(k, set)| {
                let name = format!("{}-replicate-{k}", spec.name);
                Arc::new(Replicate::new(name, set.to_vec(), Quorum::None))
            })
            .collect()
    }

    /// Number of children.
    pub fn child_count(&self) -> usize {
        self.n()
    }

    /// Child `i` (a protocol client for one brick).
    pub fn child(&self, i: usize) -> Option<&Arc<dyn Xlator>> {
        self.children.get(i)
    }

    /// Every child's copy of `gfid` with the changelog.
    async fn all_answers(&self, gfid: Gfid) -> Vec<FsResult<Lookup>> {
        let keys = self.keys.clone();
        join_all(self.children.iter().map(|c| c.lookup_gfid(gfid, &keys))).await
    }

    /// Looks at `gfid` on every child and judges the changelog, healing
    /// nothing.
    pub async fn examine(&self, gfid: Gfid) -> FsResult<Examined> {
        let answers = self.all_answers(gfid).await;
        if !answers.iter().any(|a| a.is_ok()) {
            return Err(best_error(&answers));
        }
        let kind = answers
            .iter()
            .find_map(|a| a.as_ref().ok())
            .map(|l| l.iatt.kind);
        let v = self.judge(&answers);
        Ok(Examined {
            kind,
            pending: v.iter().any(|x| *x != Verdict::Clean),
            split_brain: v.contains(&Verdict::SplitBrain),
        })
    }

    /// Heals whatever `gfid` needs (data, metadata, entries), as a lookup
    /// would, and says how it ended. `label` names it in logs.
    pub async fn heal_gfid(&self, gfid: Gfid, label: &str) -> FsResult<HealOutcome> {
        let answers = self.all_answers(gfid).await;
        if !answers.iter().any(|a| a.is_ok()) {
            return Err(best_error(&answers));
        }
        let v = self.judge(&answers);
        if v.iter().all(|x| *x == Verdict::Clean) {
            return Ok(HealOutcome::Clean);
        }
        let kind = answers
            .iter()
            .find_map(|a| a.as_ref().ok())
            .map(|l| l.iatt.kind);
        let healed = match self.heal_inode(gfid, kind, label).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(replicate = %self.name, file = %label, "heal: {e}");
                false
            }
        };
        let after = self.all_answers(gfid).await;
        let v = self.judge(&after);
        self.forget(gfid);
        if v[Slot::Data as usize] == Verdict::SplitBrain
            || v[Slot::Metadata as usize] == Verdict::SplitBrain
        {
            return Ok(HealOutcome::SplitBrain);
        }
        if v.iter().all(|x| *x == Verdict::Clean) {
            return Ok(if healed {
                HealOutcome::Healed
            } else {
                HealOutcome::Clean
            });
        }
        Ok(HealOutcome::Pending)
    }

    /// Every entry of directory `dir` on child `c`.
    async fn entries_of(&self, c: usize, dir: Gfid) -> FsResult<Vec<DirEntry>> {
        let child = &self.children[c];
        let fd = child.opendir(dir).await?;
        let mut out = Vec::new();
        let mut off = 0;
        let r = loop {
            match child.readdir(&fd, off, CRAWL_BATCH, true).await {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => {
                    off = batch.last().map_or(off, |e| e.offset);
                    out.extend(batch);
                }
                Err(e) => break Err(e),
            }
        };
        let _ = child.release(&fd).await;
        r.map(|()| out)
    }

    /// `heal full` of this set: walks the tree from the root on every
    /// reachable child; where the copies of a directory list different
    /// names while the changelog is clean (a brick that never saw them,
    /// such as one added by `add-brick`), the copies holding names others
    /// lack accuse those (`mark_missing`), so the entry heal fills them;
    /// every inode met is healed.
    pub async fn full_heal(&self) -> CrawlCounts {
        let mut counts = CrawlCounts::default();
        let mut dirs: Vec<(Gfid, String)> = vec![(Gfid::ROOT, "/".to_string())];
        while let Some((dir, path)) = dirs.pop() {
            self.heal_one(dir, &path, &mut counts).await;
            let up = self.up();
            let mut lists = Vec::new();
            for c in &up {
                match self.entries_of(*c, dir).await {
                    Ok(l) => lists.push((*c, l)),
                    Err(e) => {
                        tracing::warn!(replicate = %self.name, dir = %path, child = self.children[*c].name(), "full heal: cannot list: {e}")
                    }
                }
            }
            let names = |l: &Vec<DirEntry>| {
                let mut v: Vec<(Vec<u8>, Gfid)> = l
                    .iter()
                    .filter(|e| e.name.as_bytes() != b"." && e.name.as_bytes() != b"..")
                    .map(|e| (e.name.as_bytes().to_vec(), e.gfid))
                    .collect();
                v.sort();
                v
            };
            let sorted: Vec<(usize, Names)> = lists.iter().map(|(c, l)| (*c, names(l))).collect();
            let differ = sorted.windows(2).any(|w| w[0].1 != w[1].1);
            if differ {
                self.mark_missing(dir, &sorted).await;
                self.heal_one(dir, &path, &mut counts).await;
                lists.clear();
                for c in &up {
                    if let Ok(l) = self.entries_of(*c, dir).await {
                        lists.push((*c, l));
                    }
                }
            }
            // Every name any copy holds, once.
            let mut seen = std::collections::BTreeMap::new();
            for (_, l) in &lists {
                for e in l {
                    if e.name.as_bytes() == b"." || e.name.as_bytes() == b".." || e.gfid.is_null() {
                        continue;
                    }
                    seen.entry(e.name.as_bytes().to_vec())
                        .or_insert((e.gfid, e.kind));
                }
            }
            for (name, (gfid, kind)) in seen {
                let child_path = if path == "/" {
                    format!("/{}", String::from_utf8_lossy(&name))
                } else {
                    format!("{path}/{}", String::from_utf8_lossy(&name))
                };
                if kind == FileKind::Directory {
                    dirs.push((gfid, child_path));
                } else {
                    self.heal_one(gfid, &child_path, &mut counts).await;
                }
            }
        }
        counts
    }

    async fn heal_one(&self, gfid: Gfid, label: &str, counts: &mut CrawlCounts) {
        counts.scanned += 1;
        match self.heal_gfid(gfid, label).await {
            Ok(HealOutcome::Clean) => {}
            Ok(HealOutcome::Healed) => counts.healed += 1,
            Ok(HealOutcome::SplitBrain) => counts.split_brain += 1,
            Ok(HealOutcome::Pending) => counts.failed += 1,
            Err(FsError::NotFound) | Err(FsError::Stale) => {}
            Err(e) => {
                tracing::warn!(replicate = %self.name, file = %label, "full heal: {e}");
                counts.failed += 1;
            }
        }
    }

    /// Where copies of `dir` list different names under a clean changelog,
    /// makes each copy accuse the copies lacking names it holds (entry
    /// slot), so the entry heal that follows fills them: one-sided gaps
    /// (a new, empty brick) heal from the fuller copies; copies each
    /// missing the other's names accuse each other and are merged
    /// (nothing removed).
    async fn mark_missing(&self, dir: Gfid, lists: &[(usize, Names)]) {
        let jobs = lists.iter().filter_map(|(o, theirs)| {
            let mut delta = XattrMap::new();
            for (c, mine) in lists.iter().filter(|(c, _)| c != o) {
                if theirs.iter().any(|e| mine.binary_search(e).is_err()) {
                    delta.insert(
                        self.keys[*c].clone(),
                        changelog::encode(changelog::counters(&[Slot::Entry], 1)),
                    );
                }
            }
            (!delta.is_empty()).then_some(async move {
                if let Err(e) = self.children[*o]
                    .xattrop(dir, XattropOp::AddArray64, &delta)
                    .await
                {
                    tracing::warn!(replicate = %self.name, %dir, "full heal: cannot mark missing entries: {e}");
                }
            })
        });
        join_all(jobs).await;
    }

    /// Makes the other copies of `gfid` accuse child `sink` (data and
    /// metadata for a file, entries and metadata for a directory): used on
    /// the root of a set that just got a new, empty brick, so lookups fill
    /// it lazily and `heal full` at once.
    pub async fn accuse(&self, gfid: Gfid, sink: usize) -> FsResult<()> {
        if sink >= self.n() {
            return Err(FsError::InvalidArgument);
        }
        let others: Vec<usize> = (0..self.n()).filter(|c| *c != sink).collect();
        let answers = join_all(
            others
                .iter()
                .map(|c| self.children[*c].lookup_gfid(gfid, &[])),
        )
        .await;
        let kind = answers
            .iter()
            .find_map(|a| a.as_ref().ok())
            .map(|l| l.iatt.kind)
            .ok_or_else(|| best_error(&answers))?;
        let slots: &[Slot] = match kind {
            FileKind::Regular => &[Slot::Data, Slot::Metadata],
            FileKind::Directory => &[Slot::Entry, Slot::Metadata],
            _ => &[Slot::Metadata],
        };
        let mut delta = XattrMap::new();
        delta.insert(
            self.keys[sink].clone(),
            changelog::encode(changelog::counters(slots, 1)),
        );
        let mut done = 0;
        let mut last = None;
        for c in others {
            match self.children[c]
                .xattrop(gfid, XattropOp::AddArray64, &delta)
                .await
            {
                Ok(_) => done += 1,
                Err(e) => last = Some(e),
            }
        }
        self.forget(gfid);
        match (done, last) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Resolves `path` (from the volume root) to the gfid its copies hold
    /// on this set, without judging the last component (so a file in
    /// split-brain resolves). `NotFound` if no child of this set has it.
    pub async fn resolve_raw(&self, path: &str) -> FsResult<(Gfid, FileKind)> {
        let comps: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut cur = Gfid::ROOT;
        let Some((last, dirs)) = comps.split_last() else {
            return Ok((Gfid::ROOT, FileKind::Directory));
        };
        for d in dirs {
            let loc = Loc {
                parent: cur,
                name: Name::new(d.as_bytes())?,
            };
            let answers = join_all(self.children.iter().map(|c| c.lookup(&loc, &[]))).await;
            let found = answers
                .iter()
                .find_map(|a| a.as_ref().ok())
                .map(|l| l.iatt.clone());
            match found {
                Some(i) if i.kind == FileKind::Directory => cur = i.gfid,
                Some(_) => return Err(FsError::NotDir),
                None => return Err(best_error(&answers)),
            }
        }
        let loc = Loc {
            parent: cur,
            name: Name::new(last.as_bytes())?,
        };
        let answers = join_all(self.children.iter().map(|c| c.lookup(&loc, &[]))).await;
        answers
            .iter()
            .find_map(|a| a.as_ref().ok())
            .map(|l| (l.iatt.gfid, l.iatt.kind))
            .ok_or_else(|| best_error(&answers))
    }

    /// Resolves a split-brain on `gfid`: picks the good copy by `policy`,
    /// rewrites the changelog under the inode locks so that copy accuses
    /// every other one (and nobody accuses it), then heals. Returns the
    /// child whose copy won.
    pub async fn resolve_split_brain(
        &self,
        gfid: Gfid,
        policy: SplitBrainPolicy,
        label: &str,
    ) -> FsResult<usize> {
        let items = [
            LockItem::Inode {
                gfid,
                domain: self.name.clone(),
                start: 0,
                len: 0,
            },
            LockItem::Inode {
                gfid,
                domain: self.meta_domain(),
                start: 0,
                len: 0,
            },
        ];
        let mut taken = None;
        for _ in 0..LOCK_TRIES {
            if let Some(t) = self.try_lock(&items).await? {
                taken = Some(t);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let Some((owner, locked)) = taken else {
            return Err(FsError::WouldBlock);
        };
        let r = self.reset_changelog(gfid, policy, &locked).await;
        self.unlock_all(&items, &locked, owner).await;
        let (source, kind) = r?;
        tracing::info!(replicate = %self.name, file = %label, source = self.children[source].name(), ?policy, "split-brain resolved by policy; healing from the chosen copy");
        self.forget(gfid);
        match self.heal_gfid(gfid, label).await? {
            HealOutcome::Clean | HealOutcome::Healed => Ok(source),
            other => Err(FsError::Io(format!(
                "{label}: heal after resolution left it {other:?} ({kind:?})"
            ))),
        }
    }

    /// Under the locks: choose the source and rewrite every answering
    /// copy's counters (source accuses all others; others accuse nobody).
    async fn reset_changelog(
        &self,
        gfid: Gfid,
        policy: SplitBrainPolicy,
        locked: &[usize],
    ) -> FsResult<(usize, FileKind)> {
        let answers = self.locked_answers(gfid, locked, &[]).await;
        let oks: Vec<(usize, &Lookup)> = answers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().ok().map(|l| (i, l)))
            .collect();
        if oks.is_empty() {
            return Err(best_error(&answers));
        }
        let source = match policy {
            SplitBrainPolicy::BiggerFile => oks
                .iter()
                .max_by_key(|(i, l)| (l.iatt.size, std::cmp::Reverse(*i)))
                .map(|(i, _)| *i),
            SplitBrainPolicy::LatestMtime => oks
                .iter()
                .max_by_key(|(i, l)| (l.iatt.mtime, std::cmp::Reverse(*i)))
                .map(|(i, _)| *i),
            SplitBrainPolicy::SourceChild(c) => oks.iter().find(|(i, _)| *i == c).map(|(i, _)| *i),
        }
        .ok_or_else(|| FsError::NotConnected("the chosen source brick is not reachable".into()))?;
        let kind = oks
            .iter()
            .find(|(i, _)| *i == source)
            .map(|(_, l)| l.iatt.kind)
            .unwrap_or(FileKind::Regular);
        let slots: &[Slot] = match kind {
            FileKind::Regular => &[Slot::Data, Slot::Metadata],
            FileKind::Directory => &[Slot::Entry, Slot::Metadata],
            _ => &[Slot::Metadata],
        };
        let matrix = Matrix::from_xattrs(
            &self.keys,
            &answers
                .iter()
                .map(|a| a.as_ref().ok().map(|l| &l.xattrs))
                .collect::<Vec<_>>(),
        );
        for (i, _) in &oks {
            let Some(row) = matrix.rows[*i].as_ref() else {
                continue;
            };
            let mut delta = XattrMap::new();
            for (j, have) in row.iter().enumerate() {
                let mut want = [0i64; 3];
                if *i == source && j != source {
                    for s in slots {
                        want[*s as usize] = 1;
                    }
                }
                let d = [want[0] - have[0], want[1] - have[1], want[2] - have[2]];
                if d != [0; 3] {
                    delta.insert(self.keys[j].clone(), changelog::encode(d));
                }
            }
            if !delta.is_empty() {
                self.children[*i]
                    .xattrop(gfid, XattropOp::AddArray64, &delta)
                    .await?;
            }
        }
        Ok((source, kind))
    }
}
