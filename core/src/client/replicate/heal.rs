//! Self-heal of one inode's data and metadata: under the inode's lock
//! (tried, never waited for: a heal steps aside while a transaction runs),
//! re-read the changelog, copy from a source to the sinks, then subtract
//! exactly the counters that were seen, leaving accusations against
//! children that did not take part.
//!
//! Data heal copies a small file whole (holes stay holes); a large one is
//! compared block by block (`heal_data`).

use bytes::Bytes;
use futures::future::{join_all, BoxFuture};

use super::changelog::{self, Matrix, Slot, Verdict};
use super::transaction::LockItem;
use super::Replicate;
use crate::client::fd::Fd;
use crate::client::xlator::Lookup;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{FileKind, Iatt, SetAttr, SetTime};
use crate::proto::{XattrMap, XattropOp};
use crate::xattr_names::AFR_PREFIX;

/// Bytes copied per read during a data heal.
const HEAL_CHUNK: u32 = 1 << 20;

/// What a heal decided for one slot under its lock.
struct Plan {
    source: usize,
    sinks: Vec<usize>,
}

impl Replicate {
    /// Heals whatever `gfid` needs (data, metadata, entries). True if
    /// anything was repaired.
    pub(super) fn heal_inode<'a>(
        &'a self,
        gfid: Gfid,
        kind: Option<FileKind>,
        name: &'a str,
    ) -> BoxFuture<'a, FsResult<bool>> {
        Box::pin(async move {
            let mut healed = false;
            let mut failure = None;
            if kind == Some(FileKind::Regular) {
                match self.heal_data(gfid, name).await {
                    Ok(h) => healed |= h,
                    Err(e) => failure = Some(e),
                }
            }
            match self.heal_metadata(gfid, name).await {
                Ok(h) => healed |= h,
                Err(e) => failure = Some(e),
            }
            if kind == Some(FileKind::Directory) {
                match self.heal_entries(gfid, Some(name)).await {
                    Ok(h) => healed |= h,
                    Err(e) => failure = Some(e),
                }
            }
            match failure {
                Some(e) if !healed => Err(e),
                _ => Ok(healed),
            }
        })
    }

    /// Tries `items` on every reachable child without waiting. `None` when
    /// someone holds them (or nothing could be locked).
    pub(super) async fn try_lock(&self, items: &[LockItem]) -> FsResult<Option<(u64, Vec<usize>)>> {
        let owner = self.new_owner();
        match self.lock_all(items, &self.up(), owner, false).await {
            Ok(locked) => Ok(Some((owner, locked))),
            Err(FsError::WouldBlock) => Ok(None),
            Err(e) if e.is_disconnect() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every locked child's copy of `gfid` with its counters (`Err` for
    /// the others).
    pub(super) async fn locked_answers(
        &self,
        gfid: Gfid,
        locked: &[usize],
        extra: &[String],
    ) -> Vec<FsResult<Lookup>> {
        let mut want: Vec<String> = self.keys.clone();
        want.extend(extra.iter().cloned());
        let asked = join_all(
            locked
                .iter()
                .map(|c| self.children[*c].lookup_gfid(gfid, &want)),
        )
        .await;
        let mut out: Vec<FsResult<Lookup>> = (0..self.n())
            .map(|_| Err(FsError::NotConnected(String::new())))
            .collect();
        for (c, r) in locked.iter().zip(asked) {
            out[*c] = r;
        }
        out
    }

    /// Subtracts the positive `slot` counters seen in `answers` that
    /// accuse children among `settled`, on every child that answered.
    pub(super) async fn clear_seen(
        &self,
        gfid: Gfid,
        slot: Slot,
        answers: &[FsResult<Lookup>],
        settled: &[usize],
    ) {
        let rows = Matrix::from_xattrs(
            &self.keys,
            &answers
                .iter()
                .map(|a| a.as_ref().ok().map(|l| &l.xattrs))
                .collect::<Vec<_>>(),
        )
        .rows;
        let jobs = rows.iter().enumerate().filter_map(|(i, row)| {
            let row = row.as_ref()?;
            let mut delta = XattrMap::new();
            for j in settled {
                let seen = row[*j][slot as usize];
                if seen > 0 {
                    delta.insert(self.keys[*j].clone(), changelog::encode(changelog::counters(&[slot], -seen)));
                }
            }
            (!delta.is_empty()).then_some(async move {
                if let Err(e) = self.children[i].xattrop(gfid, XattropOp::AddArray64, &delta).await {
                    tracing::warn!(child = self.children[i].name(), %gfid, "could not clear {} counters after heal: {e}", slot.as_str());
                }
            })
        });
        join_all(jobs).await;
    }

    /// The source and sinks for `slot` from answers taken under the lock.
    /// `Ok(None)`: nothing to do.
    fn plan(
        &self,
        verdict: Verdict,
        answers: &[FsResult<Lookup>],
        name: &str,
        slot: Slot,
    ) -> FsResult<Option<Plan>> {
        match verdict {
            Verdict::Clean => Ok(None),
            Verdict::SplitBrain => {
                tracing::error!(replicate = %self.name, file = %name, "{} split-brain: the copies accuse each other; not healing", slot.as_str());
                Err(FsError::Io(format!(
                    "{} split-brain on {name}",
                    slot.as_str()
                )))
            }
            Verdict::Heal { sources, sinks, .. } => {
                let source = sources[0];
                let sinks: Vec<usize> = sinks.into_iter().filter(|s| answers[*s].is_ok()).collect();
                Ok(Some(Plan { source, sinks }))
            }
        }
    }

    /// Data self-heal of a regular file.
    pub(super) async fn heal_data(&self, gfid: Gfid, name: &str) -> FsResult<bool> {
        let items = [LockItem::Inode {
            gfid,
            domain: self.name.clone(),
            start: 0,
            len: 0,
        }];
        let Some((owner, locked)) = self.try_lock(&items).await? else {
            tracing::debug!(replicate = %self.name, file = %name, "data self-heal put off: the file is locked");
            return Ok(false);
        };
        let r = self.heal_data_locked(gfid, name, &locked).await;
        self.unlock_all(&items, &locked, owner).await;
        r
    }

    async fn heal_data_locked(&self, gfid: Gfid, name: &str, locked: &[usize]) -> FsResult<bool> {
        let answers = self.locked_answers(gfid, locked, &[]).await;
        let verdict = self.judge(&answers)[Slot::Data as usize].clone();
        let Some(plan) = self.plan(verdict, &answers, name, Slot::Data)? else {
            return Ok(false);
        };
        let Ok(src) = &answers[plan.source] else {
            return Ok(false);
        };
        let src_iatt = src.iatt.clone();
        let sinks: Vec<usize> = plan
            .sinks
            .iter()
            .copied()
            .filter(|s| matches!(&answers[*s], Ok(l) if l.iatt.kind == FileKind::Regular))
            .collect();
        if !sinks.is_empty() {
            self.sync_data(gfid, plan.source, &src_iatt, &sinks).await?;
            tracing::info!(replicate = %self.name, file = %name, source = self.children[plan.source].name(), sinks = ?sinks.iter().map(|s| self.children[*s].name()).collect::<Vec<_>>(), bytes = src_iatt.size, "data self-heal done");
        }
        // Every copy that answered now matches the source.
        let settled: Vec<usize> = (0..self.n())
            .filter(|i| answers[*i].is_ok() && (!plan.sinks.contains(i) || sinks.contains(i)))
            .collect();
        self.clear_seen(gfid, Slot::Data, &answers, &settled).await;
        Ok(true)
    }

    /// Copies the contents of `gfid` from `source` to `sinks` (which are
    /// truncated to zero first, so holes stay holes), then its times.
    pub(super) async fn copy_data(
        &self,
        gfid: Gfid,
        source: usize,
        src_iatt: &Iatt,
        sinks: &[usize],
    ) -> FsResult<()> {
        let src_fd = self.children[source].open(gfid, libc::O_RDONLY).await?;
        let opened = join_all(
            sinks
                .iter()
                .map(|s| self.children[*s].open(gfid, libc::O_WRONLY)),
        )
        .await;
        let mut outs: Vec<(usize, Fd)> = Vec::new();
        let mut err = None;
        for (s, r) in sinks.iter().zip(opened) {
            match r {
                Ok(f) => outs.push((*s, f)),
                Err(e) => err = Some(e),
            }
        }
        let r = self.copy_open(&src_fd, source, &outs, src_iatt.size).await;
        let _ = self.children[source].release(&src_fd).await;
        join_all(outs.iter().map(|(s, f)| self.children[*s].release(f))).await;
        r?;
        if let Some(e) = err {
            return Err(e);
        }
        let times = SetAttr {
            atime: Some(SetTime::At(src_iatt.atime)),
            mtime: Some(SetTime::At(src_iatt.mtime)),
            ..Default::default()
        };
        for (s, _) in &outs {
            self.children[*s].setattr(gfid, &times).await?;
        }
        Ok(())
    }

    async fn copy_open(
        &self,
        src: &Fd,
        source: usize,
        outs: &[(usize, Fd)],
        size: u64,
    ) -> FsResult<()> {
        for (s, f) in outs {
            self.children[*s].ftruncate(f, 0).await?;
            self.children[*s].ftruncate(f, size).await?;
        }
        let mut off = 0u64;
        loop {
            let chunk: Bytes = self.children[source].read(src, off, HEAL_CHUNK).await?;
            if chunk.is_empty() {
                break;
            }
            if chunk.iter().any(|b| *b != 0) {
                let writes = join_all(
                    outs.iter()
                        .map(|(s, f)| self.children[*s].write(f, off, chunk.clone())),
                )
                .await;
                for w in writes {
                    w?;
                }
            }
            off += chunk.len() as u64;
        }
        // The source may have been shorter or longer than its stat said.
        if off != size {
            for (s, f) in outs {
                self.children[*s].ftruncate(f, off).await?;
            }
        }
        Ok(())
    }

    /// Metadata self-heal: mode, owner, times and xattrs (internal ones
    /// such as the DHT layout included, changelog excluded).
    pub(super) async fn heal_metadata(&self, gfid: Gfid, name: &str) -> FsResult<bool> {
        let items = [LockItem::Inode {
            gfid,
            domain: self.meta_domain(),
            start: 0,
            len: 0,
        }];
        let Some((owner, locked)) = self.try_lock(&items).await? else {
            return Ok(false);
        };
        let r = self.heal_metadata_locked(gfid, name, &locked).await;
        self.unlock_all(&items, &locked, owner).await;
        r
    }

    async fn heal_metadata_locked(
        &self,
        gfid: Gfid,
        name: &str,
        locked: &[usize],
    ) -> FsResult<bool> {
        let answers = self.locked_answers(gfid, locked, &[]).await;
        let verdict = self.judge(&answers)[Slot::Metadata as usize].clone();
        let plan = match self.plan(verdict, &answers, name, Slot::Metadata) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(false),
            // A metadata split-brain is left for the admin; reads go on.
            Err(_) => return Ok(false),
        };
        let Ok(src) = &answers[plan.source] else {
            return Ok(false);
        };
        let src_iatt = src.iatt.clone();
        let mut healed = Vec::new();
        for s in &plan.sinks {
            match self.copy_metadata(gfid, plan.source, &src_iatt, *s).await {
                Ok(()) => healed.push(*s),
                Err(e) => {
                    tracing::warn!(replicate = %self.name, file = %name, sink = self.children[*s].name(), "metadata self-heal failed: {e}")
                }
            }
        }
        if !healed.is_empty() {
            tracing::info!(replicate = %self.name, file = %name, source = self.children[plan.source].name(), "metadata self-heal done");
        }
        let settled: Vec<usize> = (0..self.n())
            .filter(|i| answers[*i].is_ok() && (!plan.sinks.contains(i) || healed.contains(i)))
            .collect();
        self.clear_seen(gfid, Slot::Metadata, &answers, &settled)
            .await;
        Ok(true)
    }

    /// Makes `sink`'s attributes and xattrs of `gfid` those of `source`.
    pub(super) async fn copy_metadata(
        &self,
        gfid: Gfid,
        source: usize,
        src: &Iatt,
        sink: usize,
    ) -> FsResult<()> {
        let (from, to) = (&self.children[source], &self.children[sink]);
        let attr = SetAttr {
            mode: (src.kind != FileKind::Symlink).then_some(src.perm),
            uid: Some(src.uid),
            gid: Some(src.gid),
            size: None,
            atime: Some(SetTime::At(src.atime)),
            mtime: Some(SetTime::At(src.mtime)),
        };
        to.setattr(gfid, &attr).await?;
        let keep = |n: &String| !n.starts_with(AFR_PREFIX);
        let mut want: Vec<String> = from.listxattr(gfid).await?;
        want.retain(keep);
        let mut have: Vec<String> = to.listxattr(gfid).await?;
        have.retain(keep);
        for n in have.iter().filter(|n| !want.contains(n)) {
            match to.removexattr(gfid, n).await {
                Ok(()) | Err(FsError::NoData) => {}
                Err(e) => return Err(e),
            }
        }
        for n in &want {
            let v = match from.getxattr(gfid, n).await {
                Ok(v) => v,
                Err(FsError::NoData) => continue,
                Err(e) => return Err(e),
            };
            let same = have.contains(n) && to.getxattr(gfid, n).await.is_ok_and(|cur| cur == v);
            if !same {
                let mut m = XattrMap::new();
                m.insert(n.clone(), v);
                to.setxattr(gfid, &m, 0).await?;
            }
        }
        Ok(())
    }
}
