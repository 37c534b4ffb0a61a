//! READDIR and READDIRPLUS. Cookies: 1 after `.`, 2 after `..`, and a
//! volume readdir offset `o` travels as `o + 2`. The cookie verifier names
//! the open directory (one snapshot per listing in the fd cache); an unknown
//! verifier reopens the directory and continues from the cookie.

use kiln_core::{Gfid, Iatt};
use kiln_portmap::xdr::padded;
use kiln_portmap::{CallContext, Transport};

use super::attr::post_op_none;
use super::{ok, Fail, NfsProgram, Res, MAX_DIR_REPLY};
use crate::access::MAY_READ;
use crate::args::ReaddirArgs;
use crate::error::nfsstat3;
use crate::gateway::VolumeCtx;
use crate::types::*;

/// Entries asked of the volume per batch.
const BATCH: u32 = 256;

/// One entry ready to encode.
struct Ent<'a> {
    fileid: u64,
    name: &'a [u8],
    cookie: u64,
    attr: Option<&'a Iatt>,
    gfid: Option<Gfid>,
}

struct Listing<'v> {
    vol: &'v VolumeCtx,
    w: kiln_portmap::XdrWriter,
    plus: bool,
    /// Bytes of the reply so far plus the closing `false, eof`.
    used: usize,
    max: usize,
    emitted: usize,
}

impl Listing<'_> {
    /// Adds an entry; false when it does not fit.
    fn push(&mut self, e: &Ent<'_>) -> bool {
        let name_len = 4 + padded(e.name.len());
        let base = 4 + 8 + name_len + 8;
        let size = base
            + if self.plus {
                4 + FATTR3_SIZE + 4 + 4 + 32
            } else {
                0
            };
        if self.used + size > self.max {
            return false;
        }
        self.used += size;
        self.emitted += 1;
        let w = &mut self.w;
        w.put_bool(true);
        w.put_u64(e.fileid);
        w.put_string(e.name);
        w.put_u64(e.cookie);
        if self.plus {
            encode_post_op_attr(e.attr.map(|a| self.vol.fattr(a)).as_ref(), w);
            let fh = e.gfid.map(|g| self.vol.fh(g));
            encode_post_op_fh(fh.as_ref().map(|f| &f[..]), w);
        }
        true
    }
}

impl NfsProgram {
    pub(crate) async fn readdir(
        &self,
        ctx: &CallContext,
        args: ReaddirArgs<'_>,
        plus: bool,
    ) -> Res {
        let t = self
            .target(args.dir, ctx)
            .map_err(|s| Fail::raw(s, post_op_none()))?;
        let vol = &t.vol;
        let dir = self.stat(&t).await.map_err(|s| Fail::attr(s, vol, None))?;
        let fail = |s: NfsStat3| Fail::attr(s, vol, Some(&dir));
        if !dir.is_dir() {
            return Err(fail(NfsStat3::NFS3ERR_NOTDIR));
        }
        if !t.id.may(&dir, MAY_READ) {
            return Err(fail(NfsStat3::NFS3ERR_ACCES));
        }
        let verf_in = u64::from_be_bytes(args.cookieverf);
        let (verf, fd) = match (args.cookie, vol.fds.dir(dir.gfid, verf_in)) {
            (c, Some(fd)) if c != 0 => (verf_in, fd),
            _ => vol
                .fds
                .open_dir(dir.gfid)
                .await
                .map_err(|e| fail(nfsstat3(&e)))?,
        };
        let cap = match ctx.transport {
            Transport::Tcp => MAX_DIR_REPLY,
            Transport::Udp => 32 * 1024,
        };
        // Like knfsd, READDIRPLUS's `dircount` is advisory: only `maxcount`
        // bounds the reply (Linux asks dircount = maxcount / 8).
        let mut l = Listing {
            vol,
            w: ok(),
            plus,
            used: 0,
            max: args.maxcount.min(cap) as usize,
            emitted: 0,
        };
        encode_post_op_attr(Some(&vol.fattr(&dir)), &mut l.w);
        l.w.put_u64(verf);
        l.used = l.w.len() + 8;

        let mut full = false;
        if args.cookie == 0 {
            full = !l.push(&Ent {
                fileid: dir.ino(),
                name: b".",
                cookie: 1,
                attr: Some(&dir),
                gfid: Some(dir.gfid),
            });
        }
        if !full && args.cookie <= 1 {
            let parent = match vol.parent_of(dir.gfid) {
                Some(p) if p == dir.gfid => Some(dir.clone()),
                Some(p) => vol.volume.getattr(p).await.ok(),
                None => None,
            };
            full = !l.push(&Ent {
                fileid: parent.as_ref().map(|p| p.ino()).unwrap_or(dir.ino()),
                name: b"..",
                cookie: 2,
                attr: parent.as_ref(),
                gfid: parent.as_ref().map(|p| p.gfid),
            });
        }
        let mut offset = args.cookie.saturating_sub(2);
        let mut eof = false;
        while !full {
            let batch = vol
                .volume
                .readdir(&fd, offset, BATCH, plus)
                .await
                .map_err(|e| fail(nfsstat3(&e)))?;
            if batch.is_empty() {
                eof = true;
                break;
            }
            for e in &batch {
                if let Some(a) = &e.iatt {
                    vol.note_parent(a, dir.gfid);
                }
                let ent = Ent {
                    fileid: e
                        .iatt
                        .as_ref()
                        .map(|a| a.ino())
                        .unwrap_or_else(|| e.gfid.ino()),
                    name: e.name.as_bytes(),
                    cookie: e.offset.saturating_add(2),
                    attr: e.iatt.as_ref(),
                    gfid: (!e.gfid.is_null()).then_some(e.gfid),
                };
                if !l.push(&ent) {
                    full = true;
                    break;
                }
                offset = e.offset;
            }
        }
        if l.emitted == 0 && !eof {
            return Err(fail(NfsStat3::NFS3ERR_TOOSMALL));
        }
        if eof {
            vol.fds.close_dir(verf);
        }
        l.w.put_bool(false);
        l.w.put_bool(eof);
        Ok(l.w)
    }
}
