//! DHT directories: a directory exists on every subvolume, each copy holding
//! its ranges of the layout. Layout discovery and repair, directory
//! self-heal of missing copies, mkdir/rmdir, and readdir merged across
//! subvolumes.

use futures::future::join_all;
use std::sync::Arc;

use super::layout::{Layout, SubvolRanges};
use super::{dht_xattrs, is_linkfile, DirFd, Distribute};
use crate::client::fd::Fd;
use crate::client::xlator::Lookup;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::Iatt;
use crate::proto::{DirEntry, Loc, NewInode, XattrMap};
use crate::xattr_names::DHT_LAYOUT;

/// Bits of a readdir offset that hold the subvolume's own offset; the
/// subvolume index sits above them.
const SUBVOL_SHIFT: u32 = 52;
const CHILD_MASK: u64 = (1 << SUBVOL_SHIFT) - 1;

/// One subvolume's view of a directory during discovery.
enum Copy {
    Present {
        iatt: Iatt,
        ranges: Option<SubvolRanges>,
    },
    Missing,
    Down,
}

impl Distribute {
    /// The layout of directory `gfid`, from cache or by asking every
    /// subvolume (repairing missing layout xattrs on the way).
    pub(super) async fn layout_of(&self, gfid: Gfid) -> FsResult<Arc<Layout>> {
        if let Some(l) = self.layouts.lock().get(&gfid) {
            return Ok(l.clone());
        }
        let xattrs = [DHT_LAYOUT.to_string()];
        let results = join_all(self.children.iter().map(|c| c.lookup_gfid(gfid, &xattrs))).await;
        let copies = self.classify(results)?;
        let (_, layout) = self.settle_layout(gfid, None, copies).await?;
        Ok(layout)
    }

    fn classify(&self, results: Vec<FsResult<Lookup>>) -> FsResult<Vec<Copy>> {
        let mut copies = Vec::with_capacity(results.len());
        for r in results {
            copies.push(match r {
                Ok(l) if !l.iatt.is_dir() => return Err(FsError::NotDir),
                Ok(l) => {
                    let ranges = l
                        .xattrs
                        .get(DHT_LAYOUT)
                        .and_then(|v| SubvolRanges::decode(v).ok());
                    Copy::Present {
                        iatt: l.iatt,
                        ranges,
                    }
                }
                Err(FsError::NotFound) | Err(FsError::Stale) => Copy::Missing,
                Err(e) if e.is_disconnect() => Copy::Down,
                Err(e) => return Err(e),
            });
        }
        Ok(copies)
    }

    /// Given every subvolume's copy of a directory, heals missing copies (when
    /// `loc` names it) and missing layout xattrs, and caches the layout.
    async fn settle_layout(
        &self,
        gfid: Gfid,
        loc: Option<&Loc>,
        copies: Vec<Copy>,
    ) -> FsResult<(Iatt, Arc<Layout>)> {
        let Some(model) = copies.iter().find_map(|c| match c {
            Copy::Present { iatt, .. } => Some(iatt.clone()),
            _ => None,
        }) else {
            if copies.iter().any(|c| matches!(c, Copy::Down)) {
                return Err(FsError::NotConnected(self.name.clone()));
            }
            return Err(FsError::NotFound);
        };
        let default = Layout::new_default(gfid, self.n());
        let mut layout = Layout {
            subvols: vec![SubvolRanges::default(); self.n()],
        };
        let mut needs_xattr = Vec::new();
        let mut needs_copy = Vec::new();
        for (i, c) in copies.iter().enumerate() {
            match c {
                Copy::Present {
                    ranges: Some(r), ..
                } => layout.subvols[i] = r.clone(),
                Copy::Present { ranges: None, .. } => needs_xattr.push(i),
                Copy::Missing => needs_copy.push(i),
                Copy::Down => {}
            }
        }
        // Subvolumes without a known range get their share of the default
        // layout when that fits what the others hold; if exactly one range
        // owner is unknown it takes whatever is left.
        let unknown: Vec<usize> = (0..self.n())
            .filter(|i| layout.subvols[*i].ranges.is_empty())
            .collect();
        if !unknown.is_empty() {
            let known_match_default = (0..self.n())
                .filter(|i| !unknown.contains(i))
                .all(|i| layout.subvols[i].ranges == default.subvols[i].ranges);
            if known_match_default {
                for i in &unknown {
                    layout.subvols[*i] = default.subvols[*i].clone();
                }
            } else if unknown.len() == 1 {
                layout.subvols[unknown[0]].ranges = gaps(&layout);
                layout.subvols[unknown[0]].commit = 1;
            }
        }
        if !layout.is_complete() {
            tracing::warn!(dir = %gfid, "directory layout has holes or overlaps; using the default layout");
            layout = default;
        }

        // Heal: missing copies (only when we know the name) and layout xattrs.
        let mut heals = Vec::new();
        if let Some(loc) = loc {
            for i in needs_copy {
                let inode = NewInode {
                    gfid,
                    mode: model.perm,
                    uid: model.uid,
                    gid: model.gid,
                    xattrs: layout_xattr(&layout, i),
                };
                let child = self.children[i].clone();
                let loc = loc.clone();
                heals.push(tokio::spawn(async move {
                    match child.mkdir(&loc, &inode).await {
                        Ok(_) => tracing::info!(subvol = child.name(), dir = %loc.name, "directory self-heal: created missing copy"),
                        Err(e) => tracing::warn!(subvol = child.name(), dir = %loc.name, "directory self-heal failed: {e}"),
                    }
                }));
            }
        }
        for i in needs_xattr {
            let child = self.children[i].clone();
            let xattrs = layout_xattr(&layout, i);
            heals.push(tokio::spawn(async move {
                if let Err(e) = child.setxattr(gfid, &xattrs, 0).await {
                    tracing::warn!(subvol = child.name(), dir = %gfid, "layout self-heal failed: {e}");
                }
            }));
        }
        join_all(heals).await;
        let layout = Arc::new(layout);
        self.layouts.lock().insert(gfid, layout.clone());
        Ok((model, layout))
    }

    /// Named lookup of a directory found on its hashed subvolume (`known`):
    /// gathers the other copies, heals, caches the layout.
    pub(super) async fn lookup_dir(
        &self,
        loc: &Loc,
        hashed: usize,
        known: Lookup,
    ) -> FsResult<Lookup> {
        let gfid = known.iatt.gfid;
        let xattrs = dht_xattrs();
        let others = join_all(self.children.iter().enumerate().map(|(i, c)| {
            let xattrs = &xattrs;
            async move {
                if i == hashed {
                    None
                } else {
                    Some(c.lookup(loc, xattrs).await)
                }
            }
        }))
        .await;
        let mut results = Vec::with_capacity(self.n());
        let mut known = Some(known);
        for (i, r) in others.into_iter().enumerate() {
            let r = match r {
                None => Ok(known.take().ok_or(FsError::Io("lookup_dir".into()))?),
                Some(Ok(l)) if l.iatt.gfid != gfid => {
                    tracing::error!(subvol = self.children[i].name(), dir = %loc.name, "directory copy has gfid {} but {} expected; leaving it alone", l.iatt.gfid, gfid);
                    Err(FsError::Io("gfid mismatch".into()))
                }
                Some(Ok(l)) if !l.iatt.is_dir() => {
                    tracing::error!(subvol = self.children[i].name(), dir = %loc.name, "a non-directory stands where a directory copy should be");
                    Err(FsError::Io("type mismatch".into()))
                }
                Some(r) => r,
            };
            results.push(r);
        }
        let copies = results
            .into_iter()
            .map(|r| match r {
                Ok(l) => {
                    let ranges = l
                        .xattrs
                        .get(DHT_LAYOUT)
                        .and_then(|v| SubvolRanges::decode(v).ok());
                    Copy::Present {
                        iatt: l.iatt,
                        ranges,
                    }
                }
                Err(FsError::NotFound) => Copy::Missing,
                Err(_) => Copy::Down,
            })
            .collect();
        let (iatt, _) = self.settle_layout(gfid, Some(loc), copies).await?;
        Ok(Lookup {
            iatt,
            xattrs: XattrMap::new(),
        })
    }

    /// mkdir: on the hashed subvolume first (it must be up), then on the rest.
    pub(super) async fn make_dir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt> {
        let hashed = self.hashed_subvol(loc).await?;
        let layout = Layout::new_default(inode.gfid, self.n());
        let with_layout = |i: usize| {
            let mut ino = inode.clone();
            ino.xattrs.extend(layout_xattr(&layout, i));
            ino
        };
        let iatt = self.children[hashed]
            .mkdir(loc, &with_layout(hashed))
            .await?;
        let rest = self
            .children
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != hashed)
            .map(|(i, c)| {
                let ino = with_layout(i);
                async move { (i, c.mkdir(loc, &ino).await) }
            });
        for (i, r) in join_all(rest).await {
            if let Err(e) = r {
                tracing::warn!(subvol = self.children[i].name(), dir = %loc.name, "mkdir of a directory copy failed ({e}); it will be healed on lookup");
            }
        }
        self.layouts.lock().insert(iatt.gfid, Arc::new(layout));
        Ok(iatt)
    }

    /// rmdir: every subvolume must be up; the non-hashed copies go first, and
    /// if any of them is not empty the removed copies are put back.
    pub(super) async fn remove_dir(&self, loc: &Loc) -> FsResult<()> {
        if let Some(down) = self.children.iter().find(|c| !c.is_up()) {
            return Err(FsError::NotConnected(down.name().to_string()));
        }
        let hashed = self.hashed_subvol(loc).await?;
        let found = self.children[hashed].lookup(loc, &dht_xattrs()).await?;
        if !found.iatt.is_dir() {
            return Err(FsError::NotDir);
        }
        let gfid = found.iatt.gfid;
        let layout = self.layout_of(gfid).await?;
        let others: Vec<usize> = (0..self.n()).filter(|i| *i != hashed).collect();
        let results = join_all(others.iter().map(|i| self.children[*i].rmdir(loc))).await;
        let mut failure = None;
        let mut removed = Vec::new();
        for (i, r) in others.iter().zip(results) {
            match r {
                Ok(()) | Err(FsError::NotFound) => removed.push(*i),
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none() {
            if let Err(e) = self.children[hashed].rmdir(loc).await {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            // Put back the copies already removed so the directory stays whole.
            for i in removed {
                let inode = NewInode {
                    gfid,
                    mode: found.iatt.perm,
                    uid: found.iatt.uid,
                    gid: found.iatt.gid,
                    xattrs: layout_xattr(&layout, i),
                };
                if let Err(e2) = self.children[i].mkdir(loc, &inode).await {
                    tracing::warn!(subvol = self.children[i].name(), dir = %loc.name, "could not restore directory copy after failed rmdir: {e2}");
                }
            }
            return Err(e);
        }
        self.layouts.lock().remove(&gfid);
        Ok(())
    }

    /// opendir on every reachable subvolume.
    pub(super) async fn open_dir(&self, gfid: Gfid) -> FsResult<Fd> {
        self.layout_of(gfid).await?;
        let results = join_all(self.children.iter().map(|c| c.opendir(gfid))).await;
        let mut children = Vec::with_capacity(self.n());
        let mut last_err = None;
        for r in results {
            match r {
                Ok(fd) => children.push(Some(fd)),
                Err(e) => {
                    last_err = Some(e);
                    children.push(None)
                }
            }
        }
        let Some(dirs_from) = children.iter().position(Option::is_some) else {
            return Err(last_err.unwrap_or(FsError::NotConnected(self.name.clone())));
        };
        Ok(Fd::new(
            gfid,
            libc::O_RDONLY | libc::O_DIRECTORY,
            DirFd {
                children,
                dirs_from,
            },
        ))
    }

    /// readdir merged across subvolumes: files from where they live (link
    /// files hidden), subdirectories from one copy only.
    pub(super) async fn read_dir(
        &self,
        fd: &Fd,
        offset: u64,
        max: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let d = fd.state::<DirFd>().ok_or(FsError::BadFd)?;
        let mut idx = (offset >> SUBVOL_SHIFT) as usize;
        let mut coff = offset & CHILD_MASK;
        while idx < self.n() {
            let Some(child_fd) = &d.children[idx] else {
                idx += 1;
                coff = 0;
                continue;
            };
            let entries = match self.children[idx]
                .readdir(child_fd, coff, max.max(1), true)
                .await
            {
                Ok(e) => e,
                Err(e) if e.is_disconnect() => Vec::new(),
                Err(e) => return Err(e),
            };
            let Some(last) = entries.last().map(|e| e.offset) else {
                idx += 1;
                coff = 0;
                continue;
            };
            if last > CHILD_MASK {
                return Err(FsError::Io("brick readdir offset too large".into()));
            }
            let out: Vec<DirEntry> = entries
                .into_iter()
                .filter(|e| match &e.iatt {
                    Some(a) if a.is_dir() => idx == d.dirs_from,
                    Some(a) => !is_linkfile(a, &e.xattrs),
                    None => e.kind != crate::iatt::FileKind::Directory || idx == d.dirs_from,
                })
                .map(|mut e| {
                    e.offset = ((idx as u64) << SUBVOL_SHIFT) | e.offset;
                    if let Some(a) = &e.iatt {
                        if !a.is_dir() {
                            self.remember_file(a.gfid, idx);
                        }
                    }
                    if !plus {
                        e.iatt = None;
                    }
                    e.xattrs.clear();
                    e
                })
                .collect();
            if !out.is_empty() {
                return Ok(out);
            }
            coff = last;
        }
        Ok(Vec::new())
    }
}

/// The ranges of the hash space no subvolume owns.
fn gaps(layout: &Layout) -> Vec<super::layout::HashRange> {
    let mut all: Vec<_> = layout
        .subvols
        .iter()
        .flat_map(|s| s.ranges.iter().copied())
        .collect();
    all.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut next: u64 = 0;
    for r in all {
        if (r.start as u64) > next {
            out.push(super::layout::HashRange {
                start: next as u32,
                end: r.start - 1,
            });
        }
        next = next.max(r.end as u64 + 1);
    }
    if next < (1u64 << 32) {
        out.push(super::layout::HashRange {
            start: next as u32,
            end: u32::MAX,
        });
    }
    out
}

fn layout_xattr(layout: &Layout, i: usize) -> XattrMap {
    let mut m = XattrMap::new();
    m.insert(DHT_LAYOUT.to_string(), layout.subvols[i].encode());
    m
}
