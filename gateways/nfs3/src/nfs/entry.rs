//! Name operations: LOOKUP, CREATE (UNCHECKED / GUARDED / EXCLUSIVE with the
//! verifier kept in atime/mtime as Linux knfsd does), MKDIR, SYMLINK, MKNOD,
//! REMOVE, RMDIR, RENAME and LINK, with the kernel's permission rules
//! (write+search on the directory, sticky directories, device nodes for root).

use kiln_core::client::Caller;
use kiln_core::iatt::{SetTime, Timespec};
use kiln_core::{FileKind, FsError, Gfid, Iatt, Name, SetAttr};
use kiln_portmap::xdr::XdrWriter;
use kiln_portmap::CallContext;

use super::attr::{check_setattr, post_op_none};
use super::{entry_name, ok, wcc, Fail, NfsProgram, Res};
use crate::access::{MAY_EXEC, MAY_WRITE};
use crate::args::{
    CreateArgs, CreateHow, DirOpArgs, LinkArgs, MkdirArgs, MknodArgs, RenameArgs, SymlinkArgs,
};
use crate::error::nfsstat3;
use crate::gateway::Target;
use crate::types::*;

/// A directory about to change: resolved, checked, with its attributes before.
pub(crate) struct DirChange {
    t: Target,
    before: Iatt,
}

impl DirChange {
    fn wcc_same(&self) -> WccData {
        wcc(&self.t.vol, Some(&self.before), Some(&self.before))
    }

    fn fail(&self, s: NfsStat3) -> Fail {
        Fail::wcc(s, &self.wcc_same())
    }

    async fn wcc_after(&self) -> WccData {
        let after = self.t.vol.volume.getattr(self.t.gfid).await.ok();
        wcc(&self.t.vol, Some(&self.before), after.as_ref())
    }

    /// The group of a new inode in this directory (BSD/setgid semantics).
    fn new_gid(&self) -> u32 {
        if self.before.perm & libc::S_ISGID != 0 {
            self.before.gid
        } else {
            self.t.id.gid
        }
    }

    fn caller(&self) -> Caller {
        self.t.id.caller(self.new_gid())
    }
}

/// The verifier of an EXCLUSIVE create as the two times that keep it.
fn verf_times(v: &[u8; 8]) -> (u32, u32) {
    (
        u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
        u32::from_be_bytes([v[4], v[5], v[6], v[7]]),
    )
}

fn has_verf(a: &Iatt, v: &[u8; 8]) -> bool {
    let (at, mt) = verf_times(v);
    a.kind == FileKind::Regular && a.atime.sec == at as i64 && a.mtime.sec == mt as i64
}

impl NfsProgram {
    /// Resolves a directory for a change: NOTDIR, ROFS, ACCES as a kernel would.
    pub(crate) async fn dir_change(&self, ctx: &CallContext, fh: &[u8]) -> Result<DirChange, Fail> {
        let none = WccData::default();
        let t = self.target(fh, ctx).map_err(|s| Fail::wcc(s, &none))?;
        let before = self.stat(&t).await.map_err(|s| Fail::wcc(s, &none))?;
        let d = DirChange { t, before };
        if !d.before.is_dir() {
            return Err(d.fail(NfsStat3::NFS3ERR_NOTDIR));
        }
        if d.t.vol.opts.read_only {
            return Err(d.fail(NfsStat3::NFS3ERR_ROFS));
        }
        if !d.t.id.may(&d.before, MAY_WRITE | MAY_EXEC) {
            return Err(d.fail(NfsStat3::NFS3ERR_ACCES));
        }
        Ok(d)
    }

    pub(crate) async fn lookup(&self, ctx: &CallContext, args: DirOpArgs<'_>) -> Res {
        let t = self
            .target(args.dir, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let vol = &t.vol;
        let dir = self.stat(&t).await.map_err(|s| Fail::attr(s, vol, None))?;
        if !dir.is_dir() {
            return Err(Fail::attr(NfsStat3::NFS3ERR_NOTDIR, vol, Some(&dir)));
        }
        if !t.id.may(&dir, MAY_EXEC) {
            return Err(Fail::attr(NfsStat3::NFS3ERR_ACCES, vol, Some(&dir)));
        }
        let found = match args.name {
            b"." => Ok(dir.clone()),
            b".." => match vol.parent_of(dir.gfid) {
                Some(p) => vol.volume.getattr(p).await.map_err(|e| nfsstat3(&e)),
                None => Err(NfsStat3::NFS3ERR_NOENT),
            },
            raw => {
                let name = entry_name(raw).map_err(|s| Fail::attr(s, vol, Some(&dir)))?;
                match vol.volume.lookup(dir.gfid, &name).await {
                    Ok(l) => Ok(l.iatt),
                    // The brick's own `.kiln` directory does not exist for clients.
                    Err(FsError::NotPermitted) => Err(NfsStat3::NFS3ERR_NOENT),
                    Err(e) => Err(nfsstat3(&e)),
                }
            }
        };
        let obj = found.map_err(|s| Fail::attr(s, vol, Some(&dir)))?;
        if args.name != b".." && args.name != b"." {
            vol.note_parent(&obj, dir.gfid);
        }
        let mut w = ok();
        w.put_opaque(&vol.fh(obj.gfid));
        encode_post_op_attr(Some(&vol.fattr(&obj)), &mut w);
        encode_post_op_attr(Some(&vol.fattr(&dir)), &mut w);
        Ok(w)
    }

    /// Applies the part of a creation's `sattr3` not given at creation.
    async fn apply_rest(&self, d: &DirChange, obj: Iatt, attrs: &Sattr3) -> Result<Iatt, NfsStat3> {
        let rest = Sattr3 {
            mode: None,
            ..*attrs
        };
        let change = check_setattr(&d.t.id, &obj, &rest)?;
        if change == SetAttr::default() {
            return Ok(obj);
        }
        d.t.vol.fds.forget_attr(obj.gfid);
        d.t.vol
            .volume
            .setattr(obj.gfid, &change)
            .await
            .map_err(|e| nfsstat3(&e))
    }

    /// The CREATE/MKDIR/SYMLINK/MKNOD success body.
    async fn created(&self, d: &DirChange, obj: &Iatt) -> Res {
        let vol = &d.t.vol;
        vol.note_parent(obj, d.t.gfid);
        let mut w = ok();
        encode_post_op_fh(Some(&vol.fh(obj.gfid)), &mut w);
        encode_post_op_attr(Some(&vol.fattr(obj)), &mut w);
        d.wcc_after().await.encode(&mut w);
        Ok(w)
    }

    async fn fail_after(&self, d: &DirChange, s: NfsStat3) -> Fail {
        Fail::wcc(s, &d.wcc_after().await)
    }

    pub(crate) async fn create(&self, ctx: &CallContext, args: CreateArgs<'_>) -> Res {
        let d = self.dir_change(ctx, args.wher.dir).await?;
        let name = entry_name(args.wher.name).map_err(|s| d.fail(s))?;
        let vol = &d.t.vol;
        let (attrs, exclusive, mode) = match args.how {
            CreateHow::Unchecked(s) => (s, false, s.mode.unwrap_or(0o644)),
            CreateHow::Guarded(s) => (s, true, s.mode.unwrap_or(0o644)),
            CreateHow::Exclusive(v) => return self.create_exclusive(&d, &name, v).await,
        };
        let (obj, fd) = match vol
            .volume
            .create(
                d.t.gfid,
                &name,
                &d.caller(),
                mode & 0o7777,
                libc::O_RDWR,
                exclusive,
            )
            .await
        {
            Ok(x) => x,
            Err(e) => return Err(self.fail_after(&d, nfsstat3(&e)).await),
        };
        vol.fds.insert_file(obj.gfid, fd);
        let obj = match self.apply_rest(&d, obj, &attrs).await {
            Ok(o) => o,
            Err(s) => return Err(self.fail_after(&d, s).await),
        };
        self.created(&d, &obj).await
    }

    async fn create_exclusive(&self, d: &DirChange, name: &Name, verf: [u8; 8]) -> Res {
        let vol = &d.t.vol;
        let existing = |r: Result<kiln_core::client::xlator::Lookup, FsError>| match r {
            Ok(l) if has_verf(&l.iatt, &verf) => Ok(Some(l.iatt)),
            Ok(_) => Err(NfsStat3::NFS3ERR_EXIST),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(nfsstat3(&e)),
        };
        // A retransmission finds the file it made, with its verifier.
        if let Some(obj) =
            existing(vol.volume.lookup(d.t.gfid, name).await).map_err(|s| d.fail(s))?
        {
            return self.created(d, &obj).await;
        }
        let obj = match vol
            .volume
            .create(d.t.gfid, name, &d.caller(), 0o600, libc::O_RDWR, true)
            .await
        {
            Ok((obj, fd)) => {
                vol.fds.insert_file(obj.gfid, fd);
                obj
            }
            Err(FsError::Exists) => match existing(vol.volume.lookup(d.t.gfid, name).await) {
                Ok(Some(obj)) => return self.created(d, &obj).await,
                Ok(None) => return Err(self.fail_after(d, NfsStat3::NFS3ERR_EXIST).await),
                Err(s) => return Err(self.fail_after(d, s).await),
            },
            Err(e) => return Err(self.fail_after(d, nfsstat3(&e)).await),
        };
        let (at, mt) = verf_times(&verf);
        let stamp = SetAttr {
            atime: Some(SetTime::At(Timespec {
                sec: at as i64,
                nsec: 0,
            })),
            mtime: Some(SetTime::At(Timespec {
                sec: mt as i64,
                nsec: 0,
            })),
            ..SetAttr::default()
        };
        match vol.volume.setattr(obj.gfid, &stamp).await {
            Ok(obj) => self.created(d, &obj).await,
            Err(e) => Err(self.fail_after(d, nfsstat3(&e)).await),
        }
    }

    pub(crate) async fn mkdir(&self, ctx: &CallContext, args: MkdirArgs<'_>) -> Res {
        let d = self.dir_change(ctx, args.wher.dir).await?;
        let name = entry_name(args.wher.name).map_err(|s| d.fail(s))?;
        let mut mode = args.attrs.mode.unwrap_or(0o755) & 0o7777;
        if d.before.perm & libc::S_ISGID != 0 {
            mode |= libc::S_ISGID;
        }
        let obj = match d
            .t
            .vol
            .volume
            .mkdir(d.t.gfid, &name, &d.caller(), mode)
            .await
        {
            Ok(o) => o,
            Err(e) => return Err(self.fail_after(&d, nfsstat3(&e)).await),
        };
        match self.apply_rest(&d, obj, &args.attrs).await {
            Ok(obj) => self.created(&d, &obj).await,
            Err(s) => Err(self.fail_after(&d, s).await),
        }
    }

    pub(crate) async fn symlink(&self, ctx: &CallContext, args: SymlinkArgs<'_>) -> Res {
        let d = self.dir_change(ctx, args.wher.dir).await?;
        let name = entry_name(args.wher.name).map_err(|s| d.fail(s))?;
        if args.target.is_empty() || args.target.contains(&0) {
            return Err(d.fail(NfsStat3::NFS3ERR_INVAL));
        }
        let obj = match d
            .t
            .vol
            .volume
            .symlink(d.t.gfid, &name, &d.caller(), args.target)
            .await
        {
            Ok(o) => o,
            Err(e) => return Err(self.fail_after(&d, nfsstat3(&e)).await),
        };
        // Symlink modes are meaningless; owners and times may be set.
        let attrs = Sattr3 {
            mode: None,
            ..args.attrs
        };
        match self.apply_rest(&d, obj, &attrs).await {
            Ok(obj) => self.created(&d, &obj).await,
            Err(s) => Err(self.fail_after(&d, s).await),
        }
    }

    pub(crate) async fn mknod(&self, ctx: &CallContext, args: MknodArgs<'_>) -> Res {
        let d = self.dir_change(ctx, args.wher.dir).await?;
        let name = entry_name(args.wher.name).map_err(|s| d.fail(s))?;
        let kind = match args.ftype {
            Ftype3::NF3CHR => libc::S_IFCHR,
            Ftype3::NF3BLK => libc::S_IFBLK,
            Ftype3::NF3SOCK => libc::S_IFSOCK,
            Ftype3::NF3FIFO => libc::S_IFIFO,
            _ => return Err(d.fail(NfsStat3::NFS3ERR_BADTYPE)),
        };
        if matches!(args.ftype, Ftype3::NF3CHR | Ftype3::NF3BLK) && !d.t.id.is_root() {
            return Err(d.fail(NfsStat3::NFS3ERR_PERM));
        }
        let mode = kind | (args.attrs.mode.unwrap_or(0o644) & 0o7777);
        let rdev = libc::makedev(args.spec.0, args.spec.1) as u64;
        let obj = match d
            .t
            .vol
            .volume
            .mknod(d.t.gfid, &name, &d.caller(), mode, rdev)
            .await
        {
            Ok(o) => o,
            Err(e) => return Err(self.fail_after(&d, nfsstat3(&e)).await),
        };
        match self.apply_rest(&d, obj, &args.attrs).await {
            Ok(obj) => self.created(&d, &obj).await,
            Err(s) => Err(self.fail_after(&d, s).await),
        }
    }

    pub(crate) async fn remove(&self, ctx: &CallContext, args: DirOpArgs<'_>, rmdir: bool) -> Res {
        let d = self.dir_change(ctx, args.dir).await?;
        let vol = &d.t.vol;
        let name = match (args.name, rmdir) {
            (b".", true) => return Err(d.fail(NfsStat3::NFS3ERR_INVAL)),
            (b"..", true) => return Err(d.fail(NfsStat3::NFS3ERR_NOTEMPTY)),
            (b"." | b"..", false) => return Err(d.fail(NfsStat3::NFS3ERR_ISDIR)),
            (raw, _) => entry_name(raw).map_err(|s| d.fail(s))?,
        };
        let victim = vol
            .volume
            .lookup(d.t.gfid, &name)
            .await
            .map_err(|e| d.fail(nfsstat3(&e)))?
            .iatt;
        if !d.t.id.may_unlink_sticky(&d.before, &victim) {
            return Err(d.fail(NfsStat3::NFS3ERR_PERM));
        }
        let r = match (rmdir, victim.is_dir()) {
            (true, false) => Err(FsError::NotDir),
            (false, true) => Err(FsError::IsDir),
            (true, true) => vol.volume.rmdir(d.t.gfid, &name).await,
            (false, false) => vol.volume.unlink(d.t.gfid, &name).await,
        };
        if let Err(e) = r {
            return Err(self.fail_after(&d, nfsstat3(&e)).await);
        }
        vol.fds.evict(victim.gfid);
        let mut w = ok();
        d.wcc_after().await.encode(&mut w);
        Ok(w)
    }

    pub(crate) async fn rename(&self, ctx: &CallContext, args: RenameArgs<'_>) -> Res {
        let none = WccData::default();
        let two = |s: NfsStat3, a: &WccData, b: &WccData| {
            let mut tail = XdrWriter::new();
            a.encode(&mut tail);
            b.encode(&mut tail);
            Fail::raw(s, tail)
        };
        let from = self.dir_change(ctx, args.from.dir).await.map_err(|f| {
            let mut tail = f.tail;
            none.encode(&mut tail);
            Fail::raw(f.stat, tail)
        })?;
        let to = match self.dir_change(ctx, args.to.dir).await {
            Ok(t) => t,
            Err(f) => {
                let mut tail = XdrWriter::new();
                from.wcc_same().encode(&mut tail);
                tail.put_raw(f.tail.as_bytes());
                return Err(Fail::raw(f.stat, tail));
            }
        };
        let fail = |s: NfsStat3| two(s, &from.wcc_same(), &to.wcc_same());
        if from.t.vol.id != to.t.vol.id {
            return Err(fail(NfsStat3::NFS3ERR_XDEV));
        }
        let vol = &from.t.vol;
        let special = |n: &[u8]| n == b"." || n == b"..";
        if special(args.from.name) || special(args.to.name) {
            return Err(fail(NfsStat3::NFS3ERR_INVAL));
        }
        let from_name = entry_name(args.from.name).map_err(fail)?;
        let to_name = entry_name(args.to.name).map_err(fail)?;
        let victim = vol
            .volume
            .lookup(from.t.gfid, &from_name)
            .await
            .map_err(|e| fail(nfsstat3(&e)))?
            .iatt;
        if !from.t.id.may_unlink_sticky(&from.before, &victim) {
            return Err(fail(NfsStat3::NFS3ERR_PERM));
        }
        let replaced: Option<Iatt> = match vol.volume.lookup(to.t.gfid, &to_name).await {
            Ok(l) => Some(l.iatt),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(fail(nfsstat3(&e))),
        };
        if let Some(old) = &replaced {
            if old.gfid == victim.gfid {
                // Two names of one file: rename(2) does nothing.
                let mut w = ok();
                from.wcc_same().encode(&mut w);
                to.wcc_same().encode(&mut w);
                return Ok(w);
            }
            if !to.t.id.may_unlink_sticky(&to.before, old) {
                return Err(fail(NfsStat3::NFS3ERR_PERM));
            }
            match (victim.is_dir(), old.is_dir()) {
                (true, false) => return Err(fail(NfsStat3::NFS3ERR_NOTDIR)),
                (false, true) => return Err(fail(NfsStat3::NFS3ERR_ISDIR)),
                _ => {}
            }
        }
        let r = vol
            .volume
            .rename(from.t.gfid, &from_name, to.t.gfid, &to_name)
            .await;
        let (fw, tw) = tokio::join!(from.wcc_after(), to.wcc_after());
        if let Err(e) = r {
            return Err(two(nfsstat3(&e), &fw, &tw));
        }
        if let Some(old) = replaced {
            vol.fds.evict(old.gfid);
        }
        vol.note_parent(&victim, to.t.gfid);
        let mut w = ok();
        fw.encode(&mut w);
        tw.encode(&mut w);
        Ok(w)
    }

    pub(crate) async fn link(&self, ctx: &CallContext, args: LinkArgs<'_>) -> Res {
        let none = WccData::default();
        let both = |s: NfsStat3,
                    file: Option<&Iatt>,
                    vol: Option<&crate::gateway::VolumeCtx>,
                    dir: &WccData| {
            let mut tail = XdrWriter::new();
            encode_post_op_attr(
                file.and_then(|f| vol.map(|v| v.fattr(f))).as_ref(),
                &mut tail,
            );
            dir.encode(&mut tail);
            Fail::raw(s, tail)
        };
        let ft = self
            .target(args.file, ctx)
            .map_err(|s| both(s, None, None, &none))?;
        let file = self
            .stat(&ft)
            .await
            .map_err(|s| both(s, None, None, &none))?;
        let d = match self.dir_change(ctx, args.link.dir).await {
            Ok(d) => d,
            Err(f) => {
                let mut tail = XdrWriter::new();
                encode_post_op_attr(Some(&ft.vol.fattr(&file)), &mut tail);
                tail.put_raw(f.tail.as_bytes());
                return Err(Fail::raw(f.stat, tail));
            }
        };
        let vol = &d.t.vol;
        let fail = |s: NfsStat3| both(s, Some(&file), Some(vol), &d.wcc_same());
        if ft.vol.id != vol.id {
            return Err(fail(NfsStat3::NFS3ERR_XDEV));
        }
        if file.is_dir() {
            return Err(fail(NfsStat3::NFS3ERR_ISDIR));
        }
        let name = entry_name(args.link.name).map_err(fail)?;
        let gfid: Gfid = file.gfid;
        match vol.volume.link(gfid, d.t.gfid, &name).await {
            Ok(after) => {
                vol.fds.forget_attr(gfid);
                let mut w = ok();
                encode_post_op_attr(Some(&vol.fattr(&after)), &mut w);
                d.wcc_after().await.encode(&mut w);
                Ok(w)
            }
            Err(e) => {
                let dw = d.wcc_after().await;
                Err(both(nfsstat3(&e), Some(&file), Some(vol), &dw))
            }
        }
    }
}
