//! DHT entries: finding a name (hashed subvolume, following link files),
//! removing it, renaming it (data stays where it is; a link file goes to the
//! new hashed subvolume) and hard links across subvolumes.

use futures::future::join_all;

use super::{dht_xattrs, is_linkfile, Distribute};
use crate::client::xlator::Lookup;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::Iatt;
use crate::proto::{Loc, NewInode, XattrMap};
use crate::xattr_names::DHT_LINKTO;

/// Where a name's data lives, as found by `resolve`.
struct Resolved {
    lookup: Lookup,
    hashed: usize,
    /// Subvolume holding the data (== hashed unless behind a link file).
    cached: usize,
}

impl Distribute {
    /// The subvolume `loc`'s name hashes to in its parent's layout.
    pub(super) async fn hashed_subvol(&self, loc: &Loc) -> FsResult<usize> {
        let layout = self.layout_of(loc.parent).await?;
        layout.subvol_for_name(loc.name.as_bytes()).ok_or_else(|| {
            FsError::Io(format!(
                "no subvolume owns the hash of {} in {}",
                loc.name, loc.parent
            ))
        })
    }

    /// Named lookup: ask the hashed subvolume; follow a link file; gather
    /// and heal directories; if the hashed subvolume is down, ask the others.
    pub(super) async fn named_lookup(&self, loc: &Loc) -> FsResult<Lookup> {
        let hashed = self.hashed_subvol(loc).await?;
        match self.children[hashed].lookup(loc, &dht_xattrs()).await {
            Ok(l) if l.iatt.is_dir() => self.lookup_dir(loc, hashed, l).await,
            Ok(l) if is_linkfile(&l.iatt, &l.xattrs) => {
                Ok(self.follow_link(loc, hashed, l).await?.lookup)
            }
            Ok(mut l) => {
                self.remember_file(l.iatt.gfid, hashed);
                l.xattrs.clear();
                Ok(l)
            }
            Err(e) if e.is_disconnect() => self.lookup_elsewhere(loc, hashed, e).await,
            Err(e) => Err(e),
        }
    }

    async fn follow_link(&self, loc: &Loc, hashed: usize, link: Lookup) -> FsResult<Resolved> {
        let target = link
            .xattrs
            .get(DHT_LINKTO)
            .and_then(|t| self.child_index(t))
            .ok_or_else(|| {
                tracing::warn!(name = %loc.name, "link file points to an unknown subvolume");
                FsError::NotFound
            })?;
        let mut l = self.children[target].lookup(loc, &dht_xattrs()).await?;
        if l.iatt.gfid != link.iatt.gfid || is_linkfile(&l.iatt, &l.xattrs) {
            tracing::warn!(name = %loc.name, "stale link file on {}", self.children[hashed].name());
            return Err(FsError::NotFound);
        }
        self.remember_file(l.iatt.gfid, target);
        l.xattrs.clear();
        Ok(Resolved {
            lookup: l,
            hashed,
            cached: target,
        })
    }

    /// The hashed subvolume is down: a directory, or a file renamed away from
    /// it, can still be found on the others.
    async fn lookup_elsewhere(&self, loc: &Loc, hashed: usize, down: FsError) -> FsResult<Lookup> {
        let xattrs = dht_xattrs();
        let others = self
            .children
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != hashed);
        let results = join_all(others.map(|(i, c)| {
            let xattrs = &xattrs;
            async move { (i, c.lookup(loc, xattrs).await) }
        }))
        .await;
        for (i, r) in results {
            if let Ok(mut l) = r {
                if l.iatt.is_dir() {
                    self.layout_of(l.iatt.gfid).await?;
                    l.xattrs.clear();
                    return Ok(l);
                }
                if !is_linkfile(&l.iatt, &l.xattrs) {
                    self.remember_file(l.iatt.gfid, i);
                    l.xattrs.clear();
                    return Ok(l);
                }
            }
        }
        Err(down)
    }

    /// Finds a non-directory name: its attributes, hashed and data subvolume.
    async fn resolve(&self, loc: &Loc) -> FsResult<Resolved> {
        let hashed = self.hashed_subvol(loc).await?;
        let l = self.children[hashed].lookup(loc, &dht_xattrs()).await?;
        if is_linkfile(&l.iatt, &l.xattrs) {
            return self.follow_link(loc, hashed, l).await;
        }
        Ok(Resolved {
            lookup: l,
            hashed,
            cached: hashed,
        })
    }

    /// unlink: the data, then the link file pointing at it, if any.
    pub(super) async fn remove_file(&self, loc: &Loc) -> FsResult<()> {
        let hashed = self.hashed_subvol(loc).await?;
        let l = self.children[hashed].lookup(loc, &dht_xattrs()).await?;
        if l.iatt.is_dir() {
            return Err(FsError::IsDir);
        }
        if is_linkfile(&l.iatt, &l.xattrs) {
            if let Some(target) = l.xattrs.get(DHT_LINKTO).and_then(|t| self.child_index(t)) {
                match self.children[target].unlink(loc).await {
                    Ok(()) | Err(FsError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.children[hashed].unlink(loc).await?;
        self.forget_file(&l.iatt.gfid);
        Ok(())
    }

    /// Writes a link file for `gfid` at `loc` on `on`, pointing at `target`.
    /// If `on` already holds a link file for this gfid (another hard link's
    /// name hashes there too), the new name becomes a hard link of it: a
    /// brick holds one inode per gfid.
    async fn make_linkfile(&self, loc: &Loc, gfid: Gfid, on: usize, target: usize) -> FsResult<()> {
        let child = &self.children[on];
        match child.lookup_gfid(gfid, &[DHT_LINKTO.to_string()]).await {
            Ok(l) if is_linkfile(&l.iatt, &l.xattrs) => {
                return child.link(gfid, loc).await.map(|_| ())
            }
            Ok(_) => {
                tracing::warn!(subvol = child.name(), %gfid, "gfid already used by a non-link inode; refusing a link file");
                return Err(FsError::Exists);
            }
            Err(FsError::NotFound) | Err(FsError::Stale) => {}
            Err(e) => return Err(e),
        }
        let mut xattrs = XattrMap::new();
        xattrs.insert(
            DHT_LINKTO.to_string(),
            self.children[target].name().as_bytes().to_vec(),
        );
        let inode = NewInode {
            gfid,
            mode: libc::S_IFREG | 0o1000,
            uid: 0,
            gid: 0,
            xattrs,
        };
        child.mknod(loc, &inode, 0).await.map(|_| ())
    }

    /// rename(2) across the volume.
    pub(super) async fn rename_entry(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        let src_hashed = self.hashed_subvol(from).await?;
        let probe = self.children[src_hashed]
            .lookup(from, &dht_xattrs())
            .await?;
        if probe.iatt.is_dir() {
            return self.rename_dir(from, to, &probe.iatt).await;
        }
        let src = if is_linkfile(&probe.iatt, &probe.xattrs) {
            self.follow_link(from, src_hashed, probe).await?
        } else {
            Resolved {
                lookup: probe,
                hashed: src_hashed,
                cached: src_hashed,
            }
        };
        let gfid = src.lookup.iatt.gfid;
        let dst_hashed = self.hashed_subvol(to).await?;
        let dst = match self.resolve(to).await {
            Ok(d) => Some(d),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if d.lookup.iatt.is_dir() {
                return Err(FsError::IsDir);
            }
            if d.lookup.iatt.gfid == gfid {
                return Ok(()); // two names of one inode: rename(2) does nothing
            }
            // The old target's data lives elsewhere: remove it there.
            if d.cached != src.cached {
                match self.children[d.cached].unlink(to).await {
                    Ok(()) | Err(FsError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            // Its old link file on the new hashed subvolume is replaced below.
            if d.hashed != d.cached && d.hashed != src.cached {
                let _ = self.children[d.hashed].unlink(to).await;
            }
            self.forget_file(&d.lookup.iatt.gfid);
        }
        if dst_hashed != src.cached {
            self.make_linkfile(to, gfid, dst_hashed, src.cached).await?;
        }
        if let Err(e) = self.children[src.cached].rename(from, to).await {
            if dst_hashed != src.cached {
                let _ = self.children[dst_hashed].unlink(to).await;
            }
            return Err(e);
        }
        if src.hashed != src.cached {
            if let Err(e) = self.children[src.hashed].unlink(from).await {
                tracing::warn!(name = %from.name, "could not remove old link file: {e}");
            }
        }
        Ok(())
    }

    /// Directory rename: on every subvolume (all must be up).
    async fn rename_dir(&self, from: &Loc, to: &Loc, _iatt: &Iatt) -> FsResult<()> {
        if let Ok(d) = self.named_lookup(to).await {
            if !d.iatt.is_dir() {
                return Err(FsError::NotDir);
            }
        }
        self.on_all_dirs(|c| async move { c.rename(from, to).await })
            .await?;
        Ok(())
    }

    /// link(2): a hard link on the subvolume holding the data, plus a link
    /// file where the new name hashes if that is elsewhere.
    pub(super) async fn hard_link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        let cached = self.locate(gfid).await?.ok_or(FsError::NotPermitted)?;
        let hashed = self.hashed_subvol(loc).await?;
        if hashed != cached {
            self.make_linkfile(loc, gfid, hashed, cached).await?;
        }
        match self.children[cached].link(gfid, loc).await {
            Ok(iatt) => Ok(iatt),
            Err(e) => {
                if hashed != cached {
                    let _ = self.children[hashed].unlink(loc).await;
                }
                Err(e)
            }
        }
    }
}
