//! GETATTR, SETATTR (guarded, with the kernel's ownership rules), ACCESS,
//! FSSTAT, FSINFO and PATHCONF.

use kiln_core::iatt::{SetTime, Timespec};
use kiln_core::SetAttr;
use kiln_portmap::CallContext;

use super::{max_io, ok, wcc, Fail, NfsProgram, Res, MAX_DIR_REPLY};
use crate::access::{Identity, MAY_WRITE};
use crate::args::{AccessArgs, RawFh, SetattrArgs};
use crate::error::nfsstat3;
use crate::gateway::time3;
use crate::types::*;

fn set_time(t: SetTime3) -> Option<SetTime> {
    match t {
        SetTime3::DontChange => None,
        SetTime3::ServerTime => Some(SetTime::Now),
        SetTime3::ClientTime(t) => Some(SetTime::At(Timespec {
            sec: t.seconds as i64,
            nsec: t.nseconds.min(999_999_999),
        })),
    }
}

/// Checks a SETATTR against the caller's rights on `a` (as chmod(2),
/// chown(2), truncate(2) and utimensat(2) would) and builds the change.
pub(crate) fn check_setattr(
    id: &Identity,
    a: &kiln_core::Iatt,
    s: &Sattr3,
) -> Result<SetAttr, NfsStat3> {
    use NfsStat3::*;
    let owner_or_root = id.is_root() || id.owns(a);
    let mut out = SetAttr::default();
    if let Some(mode) = s.mode {
        if !owner_or_root {
            return Err(NFS3ERR_PERM);
        }
        let mut mode = mode & 0o7777;
        if !id.is_root() && !a.is_dir() && !id.in_group(s.gid.unwrap_or(a.gid)) {
            mode &= !libc::S_ISGID;
        }
        out.mode = Some(mode);
    }
    if let Some(uid) = s.uid {
        if uid != a.uid && !id.is_root() {
            return Err(NFS3ERR_PERM);
        }
        out.uid = Some(uid);
    }
    if let Some(gid) = s.gid {
        if gid != a.gid && !(id.is_root() || (id.owns(a) && id.in_group(gid))) {
            return Err(NFS3ERR_PERM);
        }
        out.gid = Some(gid);
    }
    if let Some(size) = s.size {
        if a.is_dir() {
            return Err(NFS3ERR_ISDIR);
        }
        if a.kind != kiln_core::FileKind::Regular {
            return Err(NFS3ERR_INVAL);
        }
        if !id.may_write_data(a) {
            return Err(NFS3ERR_ACCES);
        }
        out.size = Some(size);
    }
    out.atime = set_time(s.atime);
    out.mtime = set_time(s.mtime);
    let client_time =
        matches!(s.atime, SetTime3::ClientTime(_)) || matches!(s.mtime, SetTime3::ClientTime(_));
    let any_time = out.atime.is_some() || out.mtime.is_some();
    if client_time && !owner_or_root {
        return Err(NFS3ERR_PERM);
    }
    if any_time && !owner_or_root && !id.may(a, MAY_WRITE) {
        return Err(NFS3ERR_ACCES);
    }
    Ok(out)
}

impl NfsProgram {
    pub(crate) async fn getattr(&self, ctx: &CallContext, fh: RawFh<'_>) -> Res {
        let t = self.target(fh, ctx).map_err(Fail::plain)?;
        let a = self.stat(&t).await.map_err(Fail::plain)?;
        t.vol.fds.note_attr(&a);
        let mut w = ok();
        t.vol.fattr(&a).encode(&mut w);
        Ok(w)
    }

    pub(crate) async fn setattr(&self, ctx: &CallContext, args: SetattrArgs<'_>) -> Res {
        let none = WccData::default();
        let t = self
            .target(args.object, ctx)
            .map_err(|s| Fail::wcc(s, &none))?;
        let vol = &t.vol;
        let before = self.stat(&t).await.map_err(|s| Fail::wcc(s, &none))?;
        let same = wcc(vol, Some(&before), Some(&before));
        if let Some(g) = args.guard {
            if time3(before.ctime) != g {
                return Err(Fail::wcc(NfsStat3::NFS3ERR_NOT_SYNC, &same));
            }
        }
        if vol.opts.read_only {
            return Err(Fail::wcc(NfsStat3::NFS3ERR_ROFS, &same));
        }
        let change = check_setattr(&t.id, &before, &args.attrs).map_err(|s| Fail::wcc(s, &same))?;
        let after = if change == SetAttr::default() {
            before.clone()
        } else {
            vol.fds.forget_attr(t.gfid);
            vol.fds.drop_read_ahead(t.gfid);
            vol.volume
                .setattr(t.gfid, &change)
                .await
                .map_err(|e| Fail::wcc(nfsstat3(&e), &same))?
        };
        vol.fds.note_attr(&after);
        let mut w = ok();
        wcc(vol, Some(&before), Some(&after)).encode(&mut w);
        Ok(w)
    }

    pub(crate) async fn access(&self, ctx: &CallContext, args: AccessArgs<'_>) -> Res {
        let t = self
            .target(args.object, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let a = self
            .stat(&t)
            .await
            .map_err(|s| Fail::attr(s, &t.vol, None))?;
        let bits = t.id.access_bits(&a, args.access, t.vol.opts.read_only);
        let mut w = ok();
        encode_post_op_attr(Some(&t.vol.fattr(&a)), &mut w);
        w.put_u32(bits);
        Ok(w)
    }

    pub(crate) async fn fsstat(&self, ctx: &CallContext, fh: RawFh<'_>) -> Res {
        let t = self
            .target(fh, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let (a, s) = tokio::join!(self.stat(&t), t.vol.volume.statfs());
        let a = a.ok();
        let s = s.map_err(|e| Fail::attr(nfsstat3(&e), &t.vol, a.as_ref()))?;
        let mut w = ok();
        encode_post_op_attr(a.map(|a| t.vol.fattr(&a)).as_ref(), &mut w);
        let unit = if s.frsize == 0 {
            s.bsize.max(512)
        } else {
            s.frsize
        };
        w.put_u64(s.blocks.saturating_mul(unit));
        w.put_u64(s.bfree.saturating_mul(unit));
        w.put_u64(s.bavail.saturating_mul(unit));
        w.put_u64(s.files);
        w.put_u64(s.ffree);
        w.put_u64(s.ffree);
        w.put_u32(0); // invarsec: may change at any time
        Ok(w)
    }

    pub(crate) async fn fsinfo(&self, ctx: &CallContext, fh: RawFh<'_>) -> Res {
        let t = self
            .target(fh, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let a = self
            .stat(&t)
            .await
            .map_err(|s| Fail::attr(s, &t.vol, None))?;
        let io = max_io(ctx.transport);
        let mut w = ok();
        encode_post_op_attr(Some(&t.vol.fattr(&a)), &mut w);
        w.put_u32(io); // rtmax
        w.put_u32(io); // rtpref
        w.put_u32(4096); // rtmult
        w.put_u32(io); // wtmax
        w.put_u32(io); // wtpref
        w.put_u32(4096); // wtmult
        w.put_u32(MAX_DIR_REPLY.min(io.max(8192))); // dtpref
        w.put_u64(i64::MAX as u64); // maxfilesize
        NfsTime3 {
            seconds: 0,
            nseconds: 1,
        }
        .encode(&mut w);
        w.put_u32(fsf3::LINK | fsf3::SYMLINK | fsf3::HOMOGENEOUS | fsf3::CANSETTIME);
        Ok(w)
    }

    pub(crate) async fn pathconf(&self, ctx: &CallContext, fh: RawFh<'_>) -> Res {
        let t = self
            .target(fh, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let a = self
            .stat(&t)
            .await
            .map_err(|s| Fail::attr(s, &t.vol, None))?;
        let mut w = ok();
        encode_post_op_attr(Some(&t.vol.fattr(&a)), &mut w);
        w.put_u32(65000); // linkmax (ext4/xfs bricks)
        w.put_u32(MAX_NAME as u32); // name_max
        w.put_bool(true); // no_trunc
        w.put_bool(true); // chown_restricted
        w.put_bool(false); // case_insensitive
        w.put_bool(true); // case_preserving
        Ok(w)
    }
}

/// An absent `post_op_attr` as a failure body.
pub(crate) fn post_op_none() -> kiln_portmap::XdrWriter {
    let mut w = kiln_portmap::XdrWriter::new();
    w.put_bool(false);
    w
}
