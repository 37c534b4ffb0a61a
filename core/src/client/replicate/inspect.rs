//! Lookups: ask every child, compare the copies (gfid, changelog), remember
//! which copies are stale, heal what is behind (inline, only if nobody
//! holds the locks right now), and answer from a good copy. A data
//! split-brain answers EIO.

use futures::future::join_all;

use super::changelog::{Matrix, Slot, Verdict};
use super::{Health, Replicate};
use crate::client::xlator::Lookup;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::FileKind;
use crate::proto::Loc;

/// The three verdicts of one inode (data, metadata, entry).
pub(super) type Verdicts = [Verdict; 3];

impl Replicate {
    /// The xattrs to ask children for: the caller's plus the changelog.
    fn wanted(&self, extra: &[String]) -> Vec<String> {
        let mut w: Vec<String> = extra.to_vec();
        for k in &self.keys {
            if !w.contains(k) {
                w.push(k.clone());
            }
        }
        w
    }

    /// Judges the copies that answered: the changelog verdict per slot
    /// (data only for regular files, entry only for directories).
    pub(super) fn judge(&self, answers: &[FsResult<Lookup>]) -> Verdicts {
        let oks: Vec<Option<&Lookup>> = answers.iter().map(|a| a.as_ref().ok()).collect();
        let matrix = Matrix::from_xattrs(
            &self.keys,
            &oks.iter().map(|l| l.map(|l| &l.xattrs)).collect::<Vec<_>>(),
        );
        let kind = oks.iter().flatten().next().map(|l| l.iatt.kind);
        let largest = |fools: &[usize]| {
            let size = |i: &usize| oks[*i].map_or(0, |l| l.iatt.size);
            fools
                .iter()
                .copied()
                .max_by_key(|i| (size(i), std::cmp::Reverse(*i)))
                .unwrap_or(fools[0])
        };
        let first = |fools: &[usize]| fools[0];
        let data = if kind == Some(FileKind::Regular) {
            matrix.verdict(Slot::Data, largest)
        } else {
            Verdict::Clean
        };
        let meta = matrix.verdict(Slot::Metadata, first);
        let entry = if kind == Some(FileKind::Directory) {
            matrix.verdict(Slot::Entry, first)
        } else {
            Verdict::Clean
        };
        [data, meta, entry]
    }

    fn health_of(&self, v: &Verdicts) -> Health {
        let mut h = Health::default();
        for s in Slot::ALL {
            for c in 0..self.n() {
                if v[s as usize].is_stale(c) {
                    h.stale[s as usize] |= 1 << c;
                }
            }
        }
        h
    }

    /// Nameless lookup: every child, judged, healed, answered from a good
    /// copy.
    pub(super) async fn inspect_gfid(&self, gfid: Gfid, xattrs: &[String]) -> FsResult<Lookup> {
        let want = self.wanted(xattrs);
        let answers = join_all(self.children.iter().map(|c| c.lookup_gfid(gfid, &want))).await;
        self.settle(gfid, &gfid.to_string(), answers, xattrs, true)
            .await
    }

    /// Named lookup: every child; copies that disagree about the name
    /// (missing, another gfid) get the parent's entries healed, or are
    /// judged by the parent's changelog.
    pub(super) async fn named_lookup(&self, loc: &Loc, xattrs: &[String]) -> FsResult<Lookup> {
        let want = self.wanted(xattrs);
        let mut answers = join_all(self.children.iter().map(|c| c.lookup(loc, &want))).await;
        if self.disagree(&answers) {
            if self.heal_entries(loc.parent, None).await.unwrap_or(false) {
                answers = join_all(self.children.iter().map(|c| c.lookup(loc, &want))).await;
            }
            if self.disagree(&answers) {
                // Trust only the copies the parent's changelog does not accuse.
                let parent = match self.cached_health(loc.parent) {
                    Some(h) => h,
                    None => {
                        let _ = self.inspect_gfid(loc.parent, &[]).await;
                        self.cached_health(loc.parent).unwrap_or_default()
                    }
                };
                for (i, a) in answers.iter_mut().enumerate() {
                    if parent.is_stale(i, Slot::Entry) {
                        *a = Err(FsError::NotConnected(format!(
                            "{} is behind on {}",
                            self.children[i].name(),
                            loc.parent
                        )));
                    }
                }
                self.log_mismatch(loc, &answers);
            }
        }
        let name = format!("{}/{}", loc.parent, loc.name);
        self.settle_named(&name, answers, xattrs).await
    }

    /// True if the children that answered disagree about a name: some have
    /// it and some not, or they hold different gfids.
    fn disagree(&self, answers: &[FsResult<Lookup>]) -> bool {
        let mut gfids = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .map(|l| l.iatt.gfid);
        let first = gfids.next();
        let missing = answers.iter().any(|a| matches!(a, Err(FsError::NotFound)));
        match first {
            None => false,
            Some(g) => missing || gfids.any(|x| x != g),
        }
    }

    fn log_mismatch(&self, loc: &Loc, answers: &[FsResult<Lookup>]) {
        let gfids: Vec<Gfid> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .map(|l| l.iatt.gfid)
            .collect();
        if gfids.windows(2).any(|w| w[0] != w[1]) {
            tracing::error!(replicate = %self.name, parent = %loc.parent, name = %loc.name, ?gfids, "gfid mismatch between copies of one name; answering from the first trusted copy");
        }
    }

    async fn settle_named(
        &self,
        name: &str,
        mut answers: Vec<FsResult<Lookup>>,
        xattrs: &[String],
    ) -> FsResult<Lookup> {
        // Keep the copies of the first gfid found.
        let Some(gfid) = answers
            .iter()
            .find_map(|a| a.as_ref().ok())
            .map(|l| l.iatt.gfid)
        else {
            return Err(best_error(&answers));
        };
        for a in answers.iter_mut() {
            if matches!(a, Ok(l) if l.iatt.gfid != gfid) {
                *a = Err(FsError::Io("gfid mismatch".into()));
            }
        }
        self.settle(gfid, name, answers, xattrs, true).await
    }

    /// Judges answers about `gfid`, heals if needed (once), caches the
    /// health and returns the best copy's lookup.
    async fn settle(
        &self,
        gfid: Gfid,
        name: &str,
        answers: Vec<FsResult<Lookup>>,
        xattrs: &[String],
        may_heal: bool,
    ) -> FsResult<Lookup> {
        if !answers.iter().any(|a| a.is_ok()) {
            return Err(best_error(&answers));
        }
        let mut answers = answers;
        let mut v = self.judge(&answers);
        if may_heal && v.iter().any(|x| *x != Verdict::Clean) {
            let kind = answers
                .iter()
                .find_map(|a| a.as_ref().ok())
                .map(|l| l.iatt.kind);
            match self.heal_inode(gfid, kind, name).await {
                Ok(true) => {
                    let want = self.wanted(xattrs);
                    answers =
                        join_all(self.children.iter().map(|c| c.lookup_gfid(gfid, &want))).await;
                    if !answers.iter().any(|a| a.is_ok()) {
                        return Err(best_error(&answers));
                    }
                    v = self.judge(&answers);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(replicate = %self.name, file = %name, "self-heal failed: {e}")
                }
            }
        }
        if v[Slot::Data as usize] == Verdict::SplitBrain {
            tracing::error!(replicate = %self.name, file = %name, %gfid, "data split-brain: the copies accuse each other; refusing access (EIO)");
            return Err(FsError::Io(format!("split-brain on {name}")));
        }
        let h = self.health_of(&v);
        self.set_health(gfid, h);
        let order = self.read_order(gfid, h, &[Slot::Data, Slot::Metadata]);
        let pick = order
            .iter()
            .find(|i| answers[**i].is_ok())
            .copied()
            .or_else(|| answers.iter().position(|a| a.is_ok()))
            .ok_or_else(|| best_error(&answers))?;
        let mut l = match answers.swap_remove(pick) {
            Ok(l) => l,
            Err(e) => return Err(e),
        };
        l.xattrs.retain(|k, _| xattrs.contains(k));
        Ok(l)
    }
}

/// The error to give when no copy answered: "not found" if a reachable
/// child said so, else the first error.
pub(super) fn best_error<T>(answers: &[FsResult<T>]) -> FsError {
    let errs: Vec<&FsError> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    for want in [FsError::NotFound, FsError::Stale] {
        if errs.contains(&&want) {
            return want;
        }
    }
    errs.iter()
        .find(|e| !e.is_disconnect())
        .or(errs.first())
        .map(|e| (*e).clone())
        .unwrap_or_else(|| FsError::NotConnected(String::new()))
}
