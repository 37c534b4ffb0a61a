//! Entry self-heal of a directory: under a lock on the whole directory
//! (tried, never waited for), compare each sink's entries with the
//! source's: create what is missing (same gfid; a hard link when the inode
//! is already there under another name), remove what the source no longer
//! has, replace names that point at another inode. New inodes are first
//! marked pending on the source against the sink, then healed (data,
//! metadata, their own entries) like any accused inode. When the copies
//! accuse each other, or no copy is known good, the entries are merged
//! instead (created everywhere, nothing removed).

use futures::future::{join_all, BoxFuture};
use std::collections::BTreeMap;

use super::changelog::{self, Slot, Verdict};
use super::transaction::LockItem;
use super::Replicate;
use crate::client::xlator::Lookup;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::FileKind;
use crate::name::Name;
use crate::proto::{DirEntry, Loc, NewInode, XattrMap, XattropOp};
use crate::xattr_names::{DHT_LAYOUT, DHT_LINKTO};

/// Entries asked per readdir while healing.
const LIST_BATCH: u32 = 512;

/// A directory listing by name.
type Listing = BTreeMap<Name, DirEntry>;

impl Replicate {
    /// Heals the entries of directory `dir` (`name` for logs). True if
    /// anything was repaired.
    pub(super) async fn heal_entries(&self, dir: Gfid, name: Option<&str>) -> FsResult<bool> {
        let items = [LockItem::Entry {
            parent: dir,
            name: None,
            domain: self.name.clone(),
        }];
        let Some((owner, locked)) = self.try_lock(&items).await? else {
            return Ok(false);
        };
        let label = name.map(str::to_string).unwrap_or_else(|| dir.to_string());
        let r = self.heal_entries_locked(dir, &label, &locked).await;
        self.unlock_all(&items, &locked, owner).await;
        let created = r?;
        let healed = created.is_some();
        // New inodes carry pending counters against their sinks: heal them
        // now (each under its own locks).
        for (gfid, kind, child_name) in created.unwrap_or_default() {
            let label = format!("{label}/{child_name}");
            if let Err(e) = self.heal_inode(gfid, Some(kind), &label).await {
                tracing::warn!(replicate = %self.name, file = %label, "self-heal of a re-created entry failed: {e}");
            }
        }
        Ok(healed)
    }

    /// The entry heal proper. `Ok(None)`: nothing to do; else the inodes
    /// created on sinks.
    async fn heal_entries_locked(
        &self,
        dir: Gfid,
        label: &str,
        locked: &[usize],
    ) -> FsResult<Option<Vec<(Gfid, FileKind, Name)>>> {
        let answers = self.locked_answers(dir, locked, &[]).await;
        if !answers.iter().flatten().any(|l| l.iatt.is_dir()) {
            return Ok(None);
        }
        let verdict = self.judge(&answers)[Slot::Entry as usize].clone();
        let answered: Vec<usize> = (0..self.n())
            .filter(|i| matches!(&answers[*i], Ok(l) if l.iatt.is_dir()))
            .collect();
        let (sources, sinks, merge) = match verdict {
            Verdict::Clean => return Ok(None),
            Verdict::SplitBrain => {
                tracing::warn!(replicate = %self.name, dir = %label, "entry split-brain: merging the copies' entries (nothing removed)");
                (answered.clone(), answered.clone(), true)
            }
            Verdict::Heal {
                sources,
                sinks,
                fools_only,
            } => (sources, sinks, fools_only),
        };
        let mut lists: Vec<Option<Listing>> = vec![None; self.n()];
        for i in &answered {
            match self.list_dir(*i, dir).await {
                Ok(l) => lists[*i] = Some(l),
                Err(e) => {
                    tracing::warn!(child = self.children[*i].name(), dir = %label, "cannot list for entry heal: {e}")
                }
            }
        }
        let mut created = Vec::new();
        let mut healed: Vec<usize> = Vec::new();
        if merge {
            for c in &answered {
                let mut ok = lists[*c].is_some();
                for o in answered.iter().filter(|o| *o != c) {
                    if let (Some(theirs), Some(mine)) = (&lists[*o], &lists[*c]) {
                        ok &= self
                            .sync_entries(dir, label, *o, theirs, *c, mine, false, &mut created)
                            .await;
                    }
                }
                if ok {
                    healed.push(*c);
                }
            }
        } else {
            let source = sources[0];
            let Some(theirs) = lists[source].clone() else {
                return Ok(None);
            };
            healed.push(source);
            for s in sinks.iter().filter(|s| answered.contains(s)) {
                if let Some(mine) = &lists[*s] {
                    if self
                        .sync_entries(dir, label, source, &theirs, *s, mine, true, &mut created)
                        .await
                    {
                        healed.push(*s);
                    }
                }
            }
            // Copies neither source nor sink agree already.
            let agree: Vec<usize> = answered
                .iter()
                .copied()
                .filter(|i| !sinks.contains(i) && !healed.contains(i))
                .collect();
            healed.extend(agree);
        }
        tracing::info!(replicate = %self.name, dir = %label, created = created.len(), "entry self-heal done");
        self.clear_seen(dir, Slot::Entry, &answers, &healed).await;
        Ok(Some(created))
    }

    /// Every entry of `dir` on child `c`.
    async fn list_dir(&self, c: usize, dir: Gfid) -> FsResult<Listing> {
        let child = &self.children[c];
        let fd = child.opendir(dir).await?;
        let mut out = Listing::new();
        let mut off = 0;
        let r = loop {
            match child.readdir(&fd, off, LIST_BATCH, true).await {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => {
                    off = batch.last().map_or(off, |e| e.offset);
                    for e in batch {
                        out.insert(e.name.clone(), e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let _ = child.release(&fd).await;
        r.map(|()| out)
    }

    /// Makes `sink`'s entries of `dir` follow `source`'s: creates missing
    /// ones; with `remove`, deletes extra ones and replaces mismatched ones.
    /// True if the sink now agrees.
    #[allow(clippy::too_many_arguments)]
    async fn sync_entries(
        &self,
        dir: Gfid,
        label: &str,
        source: usize,
        theirs: &Listing,
        sink: usize,
        mine: &Listing,
        remove: bool,
        created: &mut Vec<(Gfid, FileKind, Name)>,
    ) -> bool {
        let mut ok = true;
        // Stale names first (a renamed directory must go before its gfid
        // can be made again under the new name).
        if remove {
            for (n, e) in mine {
                let stale = match theirs.get(n) {
                    None => true,
                    Some(t) => t.gfid != e.gfid || t.kind != e.kind,
                };
                if stale && e.kind == FileKind::Directory {
                    ok &= self.log_step(
                        self.remove_tree(sink, dir, n, e).await,
                        sink,
                        label,
                        n,
                        "remove stale directory",
                    );
                }
            }
        }
        for (n, t) in theirs {
            if t.gfid.is_null() {
                continue;
            }
            match mine.get(n) {
                Some(e) if e.gfid == t.gfid && e.kind == t.kind => continue,
                Some(e) if !remove => {
                    tracing::error!(replicate = %self.name, dir = %label, name = %n, "{} and {} hold different inodes ({} / {}) under one name; leaving it", self.children[source].name(), self.children[sink].name(), t.gfid, e.gfid);
                    ok = false;
                    continue;
                }
                Some(e) if e.kind != FileKind::Directory => {
                    ok &= self.log_step(
                        self.remove_tree(sink, dir, n, e).await,
                        sink,
                        label,
                        n,
                        "remove replaced entry",
                    );
                }
                _ => {}
            }
            match self.copy_entry(dir, n, source, sink).await {
                Ok(Some(made)) => created.push(made),
                Ok(None) => {}
                // Made meanwhile (a merge from another copy, with a listing
                // taken before): fine if it is the same inode.
                Err(FsError::Exists) if self.holds(sink, dir, n, t.gfid).await => {}
                Err(e) => ok &= self.log_step(Err(e), sink, label, n, "re-create entry"),
            }
        }
        if remove {
            for (n, e) in mine {
                if e.kind != FileKind::Directory && !theirs.contains_key(n) {
                    ok &= self.log_step(
                        self.remove_tree(sink, dir, n, e).await,
                        sink,
                        label,
                        n,
                        "remove stale entry",
                    );
                }
            }
        }
        ok
    }

    /// True if child `c` has `name` in `dir` pointing at `gfid`.
    async fn holds(&self, c: usize, dir: Gfid, name: &Name, gfid: Gfid) -> bool {
        let loc = Loc {
            parent: dir,
            name: name.clone(),
        };
        matches!(self.children[c].lookup(&loc, &[]).await, Ok(l) if l.iatt.gfid == gfid)
    }

    fn log_step(&self, r: FsResult<()>, sink: usize, label: &str, n: &Name, what: &str) -> bool {
        match r {
            Ok(()) | Err(FsError::NotFound) => true,
            Err(e) => {
                tracing::warn!(replicate = %self.name, child = self.children[sink].name(), dir = %label, name = %n, "entry self-heal: {what} failed: {e}");
                false
            }
        }
    }

    /// Creates `name` of `dir` on `sink` as it is on `source`. Returns the
    /// new inode if one was made (a hard link to an inode the sink already
    /// holds makes none).
    async fn copy_entry(
        &self,
        dir: Gfid,
        name: &Name,
        source: usize,
        sink: usize,
    ) -> FsResult<Option<(Gfid, FileKind, Name)>> {
        let loc = Loc {
            parent: dir,
            name: name.clone(),
        };
        let internal = [DHT_LAYOUT.to_string(), DHT_LINKTO.to_string()];
        let Lookup { iatt, xattrs } = match self.children[source].lookup(&loc, &internal).await {
            Ok(l) => l,
            Err(FsError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (to, gfid, kind) = (&self.children[sink], iatt.gfid, iatt.kind);
        if kind != FileKind::Directory {
            match to.lookup_gfid(gfid, &[]).await {
                Ok(_) => return to.link(gfid, &loc).await.map(|_| None),
                Err(FsError::NotFound) | Err(FsError::Stale) => {}
                Err(e) => return Err(e),
            }
        }
        // Accuse the sink on the source's copy before the sink's copy
        // exists, so an interrupted heal is picked up again.
        let slots: &[Slot] = match kind {
            FileKind::Regular => &[Slot::Data, Slot::Metadata],
            FileKind::Directory => &[Slot::Entry, Slot::Metadata],
            _ => &[Slot::Metadata],
        };
        let mut mark = XattrMap::new();
        mark.insert(
            self.keys[sink].clone(),
            changelog::encode(changelog::counters(slots, 1)),
        );
        self.children[source]
            .xattrop(gfid, XattropOp::AddArray64, &mark)
            .await?;
        let inode = NewInode {
            gfid,
            mode: iatt.perm & 0o7777,
            uid: iatt.uid,
            gid: iatt.gid,
            xattrs,
        };
        match kind {
            FileKind::Directory => to.mkdir(&loc, &inode).await?,
            FileKind::Symlink => {
                let target = self.children[source].readlink(gfid).await?;
                to.symlink(&loc, &inode, &target).await?
            }
            other => {
                let special = NewInode {
                    mode: other.mode_bits() | inode.mode,
                    ..inode
                };
                to.mknod(&loc, &special, iatt.rdev).await?
            }
        };
        self.mark_stale(gfid, slots, &[sink]);
        Ok(Some((gfid, kind, name.clone())))
    }

    /// Removes `name` from `dir` on child `c`, with everything under it.
    fn remove_tree<'a>(
        &'a self,
        c: usize,
        dir: Gfid,
        name: &'a Name,
        e: &'a DirEntry,
    ) -> BoxFuture<'a, FsResult<()>> {
        Box::pin(async move {
            let loc = Loc {
                parent: dir,
                name: name.clone(),
            };
            let child = &self.children[c];
            if e.kind != FileKind::Directory {
                return child.unlink(&loc).await;
            }
            let inside = self.list_dir(c, e.gfid).await?;
            let results = join_all(
                inside
                    .iter()
                    .map(|(n, sub)| self.remove_tree(c, e.gfid, n, sub)),
            )
            .await;
            for r in results {
                match r {
                    Ok(()) | Err(FsError::NotFound) => {}
                    Err(err) => return Err(err),
                }
            }
            self.forget(e.gfid);
            child.rmdir(&loc).await
        })
    }
}
