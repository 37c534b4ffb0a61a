//! READ, WRITE (UNSTABLE / DATA_SYNC / FILE_SYNC with this instance's write
//! verifier), COMMIT and READLINK. File data goes through the fd cache, so a
//! stream of READs or WRITEs opens the file once; UNSTABLE writes are queued
//! behind (in order) and answered at once, and READ, attributes and COMMIT
//! wait for the queue (COMMIT reports a queued write that failed); a READ
//! that does not reach the end starts reading the next range ahead.

use kiln_core::{FileKind, FsError, Iatt};
use kiln_portmap::xdr::XdrWriter;
use kiln_portmap::CallContext;
use std::sync::Arc;

use super::attr::post_op_none;
use super::{max_io, ok, wcc, Fail, NfsProgram, Res};
use crate::args::{RangeArgs, RawFh, WriteArgs};
use crate::error::nfsstat3;
use crate::fdcache::stale_fd;
use crate::gateway::Target;
use crate::types::*;

/// Why a non-regular file cannot be read or written.
fn kind_error(a: &Iatt) -> Option<NfsStat3> {
    match a.kind {
        FileKind::Regular => None,
        FileKind::Directory => Some(NfsStat3::NFS3ERR_ISDIR),
        _ => Some(NfsStat3::NFS3ERR_INVAL),
    }
}

impl NfsProgram {
    async fn file_fd(&self, t: &Target) -> Result<Arc<kiln_core::client::Fd>, FsError> {
        t.vol.fds.file(t.gfid).await
    }

    pub(crate) async fn read(&self, ctx: &CallContext, args: RangeArgs<'_>) -> Res {
        let t = self
            .target(args.file, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let vol = &t.vol;
        let count = args.count.min(max_io(ctx.transport));
        vol.fds.drain(t.gfid).await;
        let a = match vol.fds.fresh_attr(t.gfid) {
            Some(a) => a,
            None => self.stat(&t).await.map_err(|s| Fail::attr(s, vol, None))?,
        };
        if let Some(s) = kind_error(&a) {
            return Err(Fail::attr(s, vol, Some(&a)));
        }
        if !t.id.may_read_data(&a) {
            return Err(Fail::attr(NfsStat3::NFS3ERR_ACCES, vol, Some(&a)));
        }
        // A sequential reader's READ was usually fetched already.
        let ahead = match vol.fds.take_read_ahead(t.gfid, args.offset, count).await {
            Some((Ok(d), post)) => Some((d, post.unwrap_or_else(|_| a.clone()))),
            _ => None,
        };
        let mut retried = false;
        let (data, a) = match ahead {
            Some(hit) => hit,
            None => loop {
                let fd = self
                    .file_fd(&t)
                    .await
                    .map_err(|e| Fail::attr(nfsstat3(&e), vol, Some(&a)))?;
                let (data, post) = tokio::join!(
                    vol.volume.read(&fd, args.offset, count),
                    vol.volume.getattr(t.gfid)
                );
                match data {
                    Ok(d) => break (d, post.unwrap_or(a)),
                    Err(e) if stale_fd(&e) && !retried => {
                        retried = true;
                        vol.fds.evict(t.gfid);
                    }
                    Err(e) => return Err(Fail::attr(nfsstat3(&e), vol, Some(&a))),
                }
            },
        };
        vol.fds.note_attr(&a);
        let eof =
            data.len() < count as usize || args.offset.saturating_add(data.len() as u64) >= a.size;
        if !eof {
            if let Ok(fd) = self.file_fd(&t).await {
                let next = args.offset.saturating_add(data.len() as u64);
                vol.fds.read_ahead(t.gfid, fd, next, count, a.size);
            }
        }
        let mut w = XdrWriter::with_capacity(128);
        w.put_u32(NfsStat3::NFS3_OK as u32);
        encode_post_op_attr(Some(&vol.fattr(&a)), &mut w);
        w.put_u32(data.len() as u32);
        w.put_bool(eof);
        // Sent from the buffer it was read into.
        w.put_opaque_tail(data);
        Ok(w)
    }

    pub(crate) async fn write(&self, ctx: &CallContext, args: WriteArgs<'_>) -> Res {
        let none = WccData::default();
        let t = self
            .target(args.file, ctx)
            .map_err(|s| Fail::wcc(s, &none))?;
        let vol = &t.vol;
        if vol.opts.read_only {
            return Err(Fail::wcc(NfsStat3::NFS3ERR_ROFS, &none));
        }
        let data = &args.data[..args.data.len().min(args.count as usize)];
        // For the type and permission checks only: no wait for queued writes.
        let before = match vol.fds.fresh_attr(t.gfid) {
            Some(a) => a,
            None => {
                let a = self.stat_now(&t).await.map_err(|s| Fail::wcc(s, &none))?;
                vol.fds.note_attr(&a);
                a
            }
        };
        let same = wcc(vol, Some(&before), Some(&before));
        if let Some(s) = kind_error(&before) {
            return Err(Fail::wcc(s, &same));
        }
        if !t.id.may_write_data(&before) {
            return Err(Fail::wcc(NfsStat3::NFS3ERR_ACCES, &same));
        }
        // The data stays in the call's buffer (no copy).
        let payload = ctx.share(data);
        if args.stable == StableHow::UNSTABLE && !payload.is_empty() {
            // Behind: answered now, applied in order; COMMIT (or a failure
            // already known) reports errors. No post-op attributes: the
            // data has not landed yet.
            if vol.fds.has_write_error(t.gfid) {
                let e = vol.fds.take_write_error(t.gfid);
                let s = e.as_ref().map_or(NfsStat3::NFS3ERR_IO, nfsstat3);
                return Err(Fail::wcc(s, &same));
            }
            let fd = self
                .file_fd(&t)
                .await
                .map_err(|e| Fail::wcc(nfsstat3(&e), &same))?;
            let n = payload.len() as u32;
            vol.fds.write_behind(t.gfid, fd, args.offset, payload).await;
            let mut w = ok();
            WccData::default().encode(&mut w);
            w.put_u32(n);
            w.put_u32(StableHow::UNSTABLE as u32);
            w.put_fixed(&self.gw.write_verf);
            return Ok(w);
        }
        // Stable writes land after the queued ones, and outdate what was
        // read ahead.
        vol.fds.drain(t.gfid).await;
        vol.fds.drop_read_ahead(t.gfid);
        if let Some(e) = vol.fds.take_write_error(t.gfid) {
            return Err(Fail::wcc(nfsstat3(&e), &same));
        }
        let mut retried = false;
        let (fd, n, after) = loop {
            let fd = self
                .file_fd(&t)
                .await
                .map_err(|e| Fail::wcc(nfsstat3(&e), &same))?;
            match vol.volume.write(&fd, args.offset, payload.clone()).await {
                Ok((n, after)) => break (fd, n, after),
                Err(e) if stale_fd(&e) && !retried => {
                    retried = true;
                    vol.fds.evict(t.gfid);
                }
                Err(e) => return Err(Fail::wcc(nfsstat3(&e), &same)),
            }
        };
        let committed = match args.stable {
            StableHow::UNSTABLE => StableHow::UNSTABLE,
            how => {
                vol.volume
                    .fsync(&fd, how == StableHow::DATA_SYNC)
                    .await
                    .map_err(|e| Fail::wcc(nfsstat3(&e), &wcc(vol, None, Some(&after))))?;
                how
            }
        };
        vol.fds.note_attr(&after);
        let mut w = ok();
        // No pre-op attributes: with writes in flight they could not be exact,
        // and a client then keeps its cache instead of invalidating it.
        wcc(vol, None, Some(&after)).encode(&mut w);
        w.put_u32(n);
        w.put_u32(committed as u32);
        w.put_fixed(&self.gw.write_verf);
        Ok(w)
    }

    pub(crate) async fn commit(&self, ctx: &CallContext, args: RangeArgs<'_>) -> Res {
        let none = WccData::default();
        let t = self
            .target(args.file, ctx)
            .map_err(|s| Fail::wcc(s, &none))?;
        let vol = &t.vol;
        // `stat` waits for the queued writes.
        let before = self.stat(&t).await.map_err(|s| Fail::wcc(s, &none))?;
        let same = wcc(vol, Some(&before), Some(&before));
        if let Some(s) = kind_error(&before) {
            return Err(Fail::wcc(s, &same));
        }
        if let Some(e) = vol.fds.take_write_error(t.gfid) {
            return Err(Fail::wcc(nfsstat3(&e), &same));
        }
        let fd = self
            .file_fd(&t)
            .await
            .map_err(|e| Fail::wcc(nfsstat3(&e), &same))?;
        if let Err(e) = vol.volume.fsync(&fd, false).await {
            vol.fds.evict(t.gfid);
            return Err(Fail::wcc(nfsstat3(&e), &same));
        }
        let mut w = ok();
        same.encode(&mut w);
        w.put_fixed(&self.gw.write_verf);
        Ok(w)
    }

    pub(crate) async fn readlink(&self, ctx: &CallContext, fh: RawFh<'_>) -> Res {
        let t = self
            .target(fh, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let vol = &t.vol;
        let a = self.stat(&t).await.map_err(|s| Fail::attr(s, vol, None))?;
        if a.kind != FileKind::Symlink {
            return Err(Fail::attr(NfsStat3::NFS3ERR_INVAL, vol, Some(&a)));
        }
        let target = vol
            .volume
            .readlink(t.gfid)
            .await
            .map_err(|e| Fail::attr(nfsstat3(&e), vol, Some(&a)))?;
        let mut w = ok();
        encode_post_op_attr(Some(&vol.fattr(&a)), &mut w);
        w.put_string(&target);
        Ok(w)
    }
}
