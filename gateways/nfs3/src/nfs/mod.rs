//! The NFS version 3 program (100003): dispatch of the 22 procedures of RFC
//! 1813 to their handlers (`attr`: attributes and file system info, `io`:
//! READ/WRITE/COMMIT/READLINK, `entry`: name operations, `dir`: READDIR and
//! READDIRPLUS), and the reply helpers every handler shares.

mod attr;
mod dir;
mod entry;
mod io;

use async_trait::async_trait;
use kiln_core::{FsError, Iatt, Name};
use kiln_portmap::xdr::{XdrReader, XdrWriter};
use kiln_portmap::{CallContext, ProcError, ProcResults, RpcProgram, Transport};
use std::sync::Arc;

use crate::args;
use crate::error::{nfsstat3, nfsstat3_handle};
use crate::gateway::{wcc_attr, Gateway, Target, VolumeCtx};
use crate::types::*;

/// Largest READ/WRITE over TCP (and the FSINFO rtmax/wtmax advertised).
pub const MAX_IO_TCP: u32 = 1024 * 1024;
/// Largest READ/WRITE over UDP (fits a datagram with headers).
pub const MAX_IO_UDP: u32 = 32 * 1024;

/// Most bytes of a READDIR(PLUS) reply.
pub const MAX_DIR_REPLY: u32 = 256 * 1024;

/// The largest READ/WRITE on a transport.
pub fn max_io(t: Transport) -> u32 {
    match t {
        Transport::Tcp => MAX_IO_TCP,
        Transport::Udp => MAX_IO_UDP,
    }
}

/// A failed procedure: its status and the `resfail` arm's body.
pub(crate) struct Fail {
    stat: NfsStat3,
    tail: XdrWriter,
}

/// What a handler returns: the whole result (status included) or a failure.
pub(crate) type Res = Result<XdrWriter, Fail>;

impl Fail {
    /// A failure with an empty `resfail` (GETATTR) or one filled in later.
    pub(crate) fn plain(stat: NfsStat3) -> Fail {
        Fail {
            stat,
            tail: XdrWriter::new(),
        }
    }

    /// A failure whose `resfail` is one `post_op_attr`.
    pub(crate) fn attr(stat: NfsStat3, vol: &VolumeCtx, a: Option<&Iatt>) -> Fail {
        let mut f = Fail::plain(stat);
        encode_post_op_attr(a.map(|a| vol.fattr(a)).as_ref(), &mut f.tail);
        f
    }

    /// A failure whose `resfail` is a `wcc_data`.
    pub(crate) fn wcc(stat: NfsStat3, wcc: &WccData) -> Fail {
        let mut f = Fail::plain(stat);
        wcc.encode(&mut f.tail);
        f
    }

    /// A failure whose `resfail` is raw XDR already built.
    pub(crate) fn raw(stat: NfsStat3, tail: XdrWriter) -> Fail {
        Fail { stat, tail }
    }
}

/// A result writer with NFS3_OK already in place.
pub(crate) fn ok() -> XdrWriter {
    let mut w = XdrWriter::with_capacity(256);
    w.put_u32(NfsStat3::NFS3_OK as u32);
    w
}

/// The wcc_data of a change to `before` (pre) -> `after` (post).
pub(crate) fn wcc(vol: &VolumeCtx, before: Option<&Iatt>, after: Option<&Iatt>) -> WccData {
    WccData {
        before: before.map(wcc_attr),
        after: after.map(|a| vol.fattr(a)),
    }
}

/// A validated entry name, or the status that refuses it.
pub(crate) fn entry_name(raw: &[u8]) -> Result<Name, NfsStat3> {
    if raw.len() > MAX_NAME {
        return Err(NfsStat3::NFS3ERR_NAMETOOLONG);
    }
    Name::new(raw.to_vec()).map_err(|e| match e {
        FsError::InvalidArgument if raw == b"." || raw == b".." => NfsStat3::NFS3ERR_EXIST,
        e => nfsstat3(&e),
    })
}

/// The NFS program over a gateway's volumes.
pub struct NfsProgram {
    pub(crate) gw: Arc<Gateway>,
}

impl NfsProgram {
    /// The program serving `gw`'s volumes.
    pub fn new(gw: Arc<Gateway>) -> NfsProgram {
        NfsProgram { gw }
    }

    /// Resolves a handle or fails with an empty `resfail`-less status; the
    /// caller adds its own failure body.
    pub(crate) fn target(&self, fh: &[u8], ctx: &CallContext) -> Result<Target, NfsStat3> {
        self.gw.resolve(fh, ctx)
    }

    /// Attributes of the target (STALE when it no longer exists).
    /// Waits for the file's queued UNSTABLE writes first.
    pub(crate) async fn stat(&self, t: &Target) -> Result<Iatt, NfsStat3> {
        t.vol.fds.drain(t.gfid).await;
        self.stat_now(t).await
    }

    /// `stat` without waiting for queued writes (their sizes may be missing).
    pub(crate) async fn stat_now(&self, t: &Target) -> Result<Iatt, NfsStat3> {
        let a = t
            .vol
            .volume
            .getattr(t.gfid)
            .await
            .map_err(|e| nfsstat3_handle(&e))?;
        // Removed but still open somewhere (e.g. in another gateway's fd
        // cache): gone for NFS clients, as on a kernel server.
        if a.nlink == 0 && !a.is_dir() {
            t.vol.fds.evict(t.gfid);
            return Err(NfsStat3::NFS3ERR_STALE);
        }
        Ok(a)
    }
}

#[async_trait]
impl RpcProgram for NfsProgram {
    fn program(&self) -> u32 {
        NFS_PROGRAM
    }

    fn versions(&self) -> &[u32] {
        &[NFS_V3]
    }

    fn name(&self) -> &'static str {
        "nfs3"
    }

    fn is_idempotent(&self, _vers: u32, proc_: u32) -> bool {
        !matches!(
            proc_,
            proc3::SETATTR
                | proc3::CREATE
                | proc3::MKDIR
                | proc3::SYMLINK
                | proc3::MKNOD
                | proc3::REMOVE
                | proc3::RMDIR
                | proc3::RENAME
                | proc3::LINK
        )
    }

    async fn call(
        &self,
        ctx: &CallContext,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        let r = self.call_results(ctx, vers, proc_, args).await?;
        let mut w = XdrWriter::new();
        w.put_raw(&r.body);
        w.put_raw(&r.tail);
        w.put_raw(&[0u8; 3][..r.tail_pad.min(3)]);
        Ok(w.into_bytes())
    }

    async fn call_results(
        &self,
        ctx: &CallContext,
        _vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<ProcResults, ProcError> {
        let r = &mut XdrReader::new(args);
        let res = match proc_ {
            proc3::NULL => return Ok(ProcResults::default()),
            proc3::GETATTR => self.getattr(ctx, args::fh(r)?).await,
            proc3::SETATTR => self.setattr(ctx, args::setattr(r)?).await,
            proc3::LOOKUP => self.lookup(ctx, args::DirOpArgs::decode(r)?).await,
            proc3::ACCESS => self.access(ctx, args::access(r)?).await,
            proc3::READLINK => self.readlink(ctx, args::fh(r)?).await,
            proc3::READ => self.read(ctx, args::range(r)?).await,
            proc3::WRITE => {
                self.write(ctx, args::write(r, max_io(ctx.transport) as usize)?)
                    .await
            }
            proc3::CREATE => self.create(ctx, args::create(r)?).await,
            proc3::MKDIR => self.mkdir(ctx, args::mkdir(r)?).await,
            proc3::SYMLINK => self.symlink(ctx, args::symlink(r)?).await,
            proc3::MKNOD => self.mknod(ctx, args::mknod(r)?).await,
            proc3::REMOVE => self.remove(ctx, args::DirOpArgs::decode(r)?, false).await,
            proc3::RMDIR => self.remove(ctx, args::DirOpArgs::decode(r)?, true).await,
            proc3::RENAME => self.rename(ctx, args::rename(r)?).await,
            proc3::LINK => self.link(ctx, args::link(r)?).await,
            proc3::READDIR => self.readdir(ctx, args::readdir(r, false)?, false).await,
            proc3::READDIRPLUS => self.readdir(ctx, args::readdir(r, true)?, true).await,
            proc3::FSSTAT => self.fsstat(ctx, args::fh(r)?).await,
            proc3::FSINFO => self.fsinfo(ctx, args::fh(r)?).await,
            proc3::PATHCONF => self.pathconf(ctx, args::fh(r)?).await,
            proc3::COMMIT => self.commit(ctx, args::range(r)?).await,
            _ => return Err(ProcError::ProcUnavail),
        };
        Ok(match res {
            Ok(w) => w.into_results(),
            Err(f) => {
                if f.stat == NfsStat3::NFS3ERR_SERVERFAULT || f.stat == NfsStat3::NFS3ERR_IO {
                    tracing::warn!(peer = %ctx.peer, proc_, stat = ?f.stat, "nfs3: call failed");
                } else {
                    tracing::debug!(peer = %ctx.peer, proc_, stat = ?f.stat, "nfs3: call failed");
                }
                let mut w = XdrWriter::with_capacity(4 + f.tail.len());
                w.put_u32(f.stat as u32);
                w.put_raw(f.tail.as_bytes());
                w.into_results()
            }
        })
    }
}
