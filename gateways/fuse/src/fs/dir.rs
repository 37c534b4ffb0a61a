//! Directory streams: opendir and readdir / readdirplus. Entries are fetched
//! from the volume in batches and served to the kernel by position; with
//! readdirplus each entry carries its attributes and counts as a lookup.

use fuser::{FileAttr, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use kiln_core::{FsError, FsResult, Gfid, Iatt, Name};

use super::reply::Opened;
use super::Inner;
use crate::convert::{errno, file_attr, file_type};
use crate::handles::{DirStream, Handle, Listed};

/// Entries fetched from the volume per call.
const BATCH_PLAIN: u32 = 512;
const BATCH_PLUS: u32 = 128;

/// Where a readdir's entries go.
pub(crate) enum Sink {
    /// Names and kinds only.
    Plain(ReplyDirectory),
    /// Names with attributes (each a kernel lookup).
    Plus(ReplyDirectoryPlus),
}

impl Sink {
    fn plus(&self) -> bool {
        matches!(self, Sink::Plus(_))
    }

    fn error(self, e: &FsError) {
        match self {
            Sink::Plain(r) => r.error(errno(e)),
            Sink::Plus(r) => r.error(errno(e)),
        }
    }

    fn ok(self) {
        match self {
            Sink::Plain(r) => r.ok(),
            Sink::Plus(r) => r.ok(),
        }
    }
}

impl Inner {
    pub(crate) async fn opendir(&self, ino: u64) -> FsResult<Opened> {
        let gfid = self.inodes.gfid(ino)?;
        let fd = self.vol.opendir(gfid).await?;
        let fh = self.handles.insert(Handle::dir(fd));
        Ok(Opened {
            fh,
            flags: FopenFlags::empty(),
        })
    }

    /// Serves one readdir(plus) request from position `offset`.
    pub(crate) async fn readdir(&self, ino: u64, fh: u64, offset: u64, mut sink: Sink) {
        match self.fill(ino, fh, offset, &mut sink).await {
            Ok(()) => sink.ok(),
            Err(e) => sink.error(&e),
        }
    }

    async fn fill(&self, ino: u64, fh: u64, offset: u64, sink: &mut Sink) -> FsResult<()> {
        let handle = self.handles.get(fh)?;
        let Handle::Dir { fd, stream } = &*handle else {
            return Err(FsError::BadFd);
        };
        let plus = sink.plus();
        let mut s = stream.lock().await;
        if (offset == 0 && s.started()) || offset < s.base() {
            s.restart();
        }
        let mut pos = offset;
        loop {
            if s.get(pos).is_none() {
                if !s.started() {
                    s.push_dots();
                    continue;
                }
                if s.eof() {
                    return Ok(());
                }
                let batch = if plus { BATCH_PLUS } else { BATCH_PLAIN };
                let entries = self.vol.readdir(fd, s.cookie(), batch, plus).await?;
                s.push_batch(entries);
                continue;
            }
            let full = self.emit(ino, &mut s, pos, sink).await?;
            if full {
                break;
            }
            pos += 1;
        }
        s.trim_before(pos);
        Ok(())
    }

    /// Adds the entry at `pos` to the reply; true when it did not fit.
    async fn emit(&self, dir: u64, s: &mut DirStream, pos: u64, sink: &mut Sink) -> FsResult<bool> {
        let Some(e) = s.get(pos).cloned() else {
            return Ok(false);
        };
        let next = pos + 1;
        let dot = if e.name == b"." {
            Some(dir)
        } else if e.name == b".." {
            Some(self.inodes.parent(dir))
        } else {
            None
        };
        match sink {
            Sink::Plain(r) => {
                let ino = dot.unwrap_or_else(|| e.gfid.ino());
                Ok(r.add(INodeNo(ino), next, file_type(e.kind), bytes_os(&e.name)))
            }
            Sink::Plus(r) => {
                if let Some(ino) = dot {
                    // The kernel does not link `.`/`..`; any attributes do.
                    let mut attr = self.dir_attr(dir).await?;
                    attr.ino = INodeNo(ino);
                    let ttl = self.ttl.attr;
                    return Ok(r.add(
                        INodeNo(ino),
                        next,
                        bytes_os(&e.name),
                        &ttl,
                        &attr,
                        Generation(0),
                    ));
                }
                let iatt = match e.iatt {
                    Some(i) if !self.wb.busy(i.ino()) => i,
                    _ => {
                        let i = self.entry_attr(dir, &e).await?;
                        s.set_iatt(pos, i.clone());
                        i
                    }
                };
                let ino = self.inodes.remember(&iatt, dir, false)?;
                let attr = file_attr(&iatt);
                let full = r.add(
                    INodeNo(ino),
                    next,
                    bytes_os(&e.name),
                    &self.ttl.entry,
                    &attr,
                    Generation(0),
                );
                if full {
                    // Not sent: the kernel will not count this lookup.
                    self.inodes.forget(ino, 1);
                }
                Ok(full)
            }
        }
    }

    /// Attributes of the directory being listed.
    async fn dir_attr(&self, dir: u64) -> FsResult<FileAttr> {
        if let Some(i) = self.inodes.last_attr(dir) {
            return Ok(file_attr(&i));
        }
        self.getattr(dir).await
    }

    /// Attributes of a listed entry the stack returned without them.
    async fn entry_attr(&self, dir: u64, e: &Listed) -> FsResult<Iatt> {
        if e.gfid != Gfid::NULL {
            self.wb.drain(e.gfid.ino()).await;
            match self.vol.getattr(e.gfid).await {
                Ok(i) => return Ok(i),
                Err(FsError::Stale) | Err(FsError::NotFound) => {}
                Err(err) => return Err(err),
            }
        }
        let pgfid = self.inodes.gfid(dir)?;
        let name = Name::new(e.name.clone())?;
        Ok(self.vol.lookup(pgfid, &name).await?.iatt)
    }
}

/// Raw name bytes as an `OsStr`.
fn bytes_os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}
