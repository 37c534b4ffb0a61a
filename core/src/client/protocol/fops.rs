//! The protocol client's file operations: each one a request to the brick,
//! with the brick's fd numbers kept in the `Fd` and reopened after a
//! reconnect.

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;

use super::local::{self, Direct, DIRECT_MIN};
use super::ProtocolClient;
use crate::client::fd::Fd;
use crate::client::xlator::{Lookup, Xlator};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::name::Name;
use crate::proto::{
    DirEntry, EntryLk, FileLock, InodeLk, Loc, LockCmd, NewInode, Reply, Request, XattrMap,
    XattropOp,
};

/// The brick-side fd behind an `Fd`, with the connection generation it
/// belongs to.
struct RemoteFd {
    slot: Mutex<(u64, u64)>,
    is_dir: bool,
    /// The file itself, once the brick handed it over (local bricks).
    direct: Mutex<Direct>,
}

fn unexpected(r: Reply) -> FsError {
    FsError::Protocol(format!("unexpected reply {r:?}"))
}

impl ProtocolClient {
    async fn entry(&self, req: Request) -> FsResult<Lookup> {
        match self.call(req, Bytes::new()).await?.0 {
            Reply::Entry { iatt, xattrs } => Ok(Lookup { iatt, xattrs }),
            r => Err(unexpected(r)),
        }
    }

    async fn attr(&self, req: Request) -> FsResult<Iatt> {
        match self.call(req, Bytes::new()).await?.0 {
            Reply::Attr { iatt } | Reply::Entry { iatt, .. } => Ok(iatt),
            r => Err(unexpected(r)),
        }
    }

    async fn done(&self, req: Request) -> FsResult<()> {
        match self.call(req, Bytes::new()).await?.0 {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// The brick fd number for `fd` on the live connection, reopening it if
    /// the connection was re-established since it was opened.
    async fn remote_fd(&self, fd: &Fd) -> FsResult<(std::sync::Arc<super::Connection>, u64)> {
        let rfd = fd.state::<RemoteFd>().ok_or(FsError::BadFd)?;
        let (conn, gen) = self.conn().await?;
        let (g, n) = *rfd.slot.lock();
        if g == gen {
            return Ok((conn, n));
        }
        let req = if rfd.is_dir {
            Request::Opendir { gfid: fd.gfid }
        } else {
            Request::Open {
                gfid: fd.gfid,
                flags: fd.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
            }
        };
        match conn.call(req, Bytes::new()).await?.0 {
            Reply::Opened { fd: n } => {
                *rfd.slot.lock() = (gen, n);
                tracing::info!(brick = %self.brick_label(), gfid = %fd.gfid, "reopened fd after reconnect");
                Ok((conn, n))
            }
            r => Err(unexpected(r)),
        }
    }

    fn new_fd(&self, gfid: Gfid, flags: i32, n: u64, is_dir: bool) -> Fd {
        let gen = self.shared.current.lock().1;
        Fd::new(
            gfid,
            flags,
            RemoteFd {
                slot: Mutex::new((gen, n)),
                is_dir,
                direct: Mutex::new(Direct::Untried),
            },
        )
    }

    /// The file behind `fd` for direct I/O, if the brick is on this host
    /// and its connection is up (asking the brick to hand it over the
    /// first time, and again after a reconnect).
    async fn direct_file(&self, fd: &Fd) -> Option<std::sync::Arc<std::os::fd::OwnedFd>> {
        let link = &self.shared.handoff;
        if !link.available() {
            return None;
        }
        let rfd = fd.state::<RemoteFd>()?;
        if rfd.is_dir {
            return None;
        }
        let (_, gen) = self.conn().await.ok()?;
        match &*rfd.direct.lock() {
            Direct::Open { gen: g, file } if *g == gen => return Some(file.clone()),
            Direct::Refused => return None,
            _ => {}
        }
        let (conn, n) = self.remote_fd(fd).await.ok()?;
        let token = match conn.call(Request::Handoff { fd: n }, Bytes::new()).await {
            Ok((Reply::HandoffToken { token }, _)) => token,
            Err(FsError::NotConnected(_)) | Err(FsError::Os(libc::EAGAIN)) => return None,
            Ok(_) | Err(_) => {
                *rfd.direct.lock() = Direct::Refused;
                return None;
            }
        };
        let shared = self.shared.clone();
        let redeemed = tokio::task::spawn_blocking(move || shared.handoff.redeem(&token)).await;
        match redeemed {
            Ok(Ok(Some(file))) => {
                let file = std::sync::Arc::new(file);
                *rfd.direct.lock() = Direct::Open {
                    gen,
                    file: file.clone(),
                };
                tracing::debug!(brick = %self.brick_label(), gfid = %fd.gfid, "direct I/O on a local brick");
                Some(file)
            }
            Ok(Ok(None)) => {
                *rfd.direct.lock() = Direct::Refused;
                None
            }
            _ => None,
        }
    }

    async fn fd_call(
        &self,
        fd: &Fd,
        make: impl FnOnce(u64) -> Request,
        data: Bytes,
    ) -> FsResult<(Reply, Bytes)> {
        let (conn, n) = self.remote_fd(fd).await?;
        conn.call(make(n), data).await
    }
}

#[async_trait]
impl Xlator for ProtocolClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_up(&self) -> bool {
        let cur = self.shared.current.lock();
        cur.0.as_ref().is_some_and(|c| !c.is_dead())
            || !self.shared.first_attempt_done.load(Ordering::Acquire)
    }

    async fn lookup(&self, loc: &Loc, xattrs: &[String]) -> FsResult<Lookup> {
        self.entry(Request::Lookup {
            loc: loc.clone(),
            xattrs: xattrs.to_vec(),
        })
        .await
    }

    async fn lookup_gfid(&self, gfid: Gfid, xattrs: &[String]) -> FsResult<Lookup> {
        self.entry(Request::LookupGfid {
            gfid,
            xattrs: xattrs.to_vec(),
        })
        .await
    }

    async fn stat(&self, gfid: Gfid) -> FsResult<Iatt> {
        self.attr(Request::Stat { gfid }).await
    }

    async fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        self.attr(Request::Setattr {
            gfid,
            attr: attr.clone(),
        })
        .await
    }

    async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        match self
            .fd_call(fd, |n| Request::Ftruncate { fd: n, size }, Bytes::new())
            .await?
            .0
        {
            Reply::Attr { iatt } => Ok(iatt),
            r => Err(unexpected(r)),
        }
    }

    async fn create(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        let req = Request::Create {
            loc: loc.clone(),
            inode: inode.clone(),
            flags,
            exclusive,
        };
        match self.call(req, Bytes::new()).await?.0 {
            Reply::Created { iatt, fd } => {
                let f = self.new_fd(iatt.gfid, flags, fd, false);
                Ok((iatt, f))
            }
            r => Err(unexpected(r)),
        }
    }

    async fn mknod(&self, loc: &Loc, inode: &NewInode, rdev: u64) -> FsResult<Iatt> {
        Ok(self
            .entry(Request::Mknod {
                loc: loc.clone(),
                inode: inode.clone(),
                rdev,
            })
            .await?
            .iatt)
    }

    async fn mkdir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt> {
        Ok(self
            .entry(Request::Mkdir {
                loc: loc.clone(),
                inode: inode.clone(),
            })
            .await?
            .iatt)
    }

    async fn symlink(&self, loc: &Loc, inode: &NewInode, target: &[u8]) -> FsResult<Iatt> {
        Ok(self
            .entry(Request::Symlink {
                loc: loc.clone(),
                inode: inode.clone(),
                target: target.to_vec(),
            })
            .await?
            .iatt)
    }

    async fn link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        Ok(self
            .entry(Request::Link {
                gfid,
                loc: loc.clone(),
            })
            .await?
            .iatt)
    }

    async fn unlink(&self, loc: &Loc) -> FsResult<()> {
        self.done(Request::Unlink { loc: loc.clone() }).await
    }

    async fn rmdir(&self, loc: &Loc) -> FsResult<()> {
        self.done(Request::Rmdir { loc: loc.clone() }).await
    }

    async fn rename(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        self.done(Request::Rename {
            from: from.clone(),
            to: to.clone(),
        })
        .await
    }

    async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        match self.call(Request::Readlink { gfid }, Bytes::new()).await?.0 {
            Reply::Link { target } => Ok(target),
            r => Err(unexpected(r)),
        }
    }

    async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        match self
            .call(Request::Open { gfid, flags }, Bytes::new())
            .await?
            .0
        {
            Reply::Opened { fd } => Ok(self.new_fd(gfid, flags, fd, false)),
            r => Err(unexpected(r)),
        }
    }

    async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        if size as usize >= DIRECT_MIN {
            if let Some(file) = self.direct_file(fd).await {
                return local::read(file, offset, size.min(local::READ_MAX)).await;
            }
        }
        match self
            .fd_call(
                fd,
                |n| Request::Read {
                    fd: n,
                    offset,
                    size,
                },
                Bytes::new(),
            )
            .await?
        {
            (Reply::Read { .. }, data) => Ok(data),
            (r, _) => Err(unexpected(r)),
        }
    }

    async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)> {
        if data.len() >= DIRECT_MIN {
            if let Some(file) = self.direct_file(fd).await {
                return local::write(file, fd.gfid, offset, data).await;
            }
        }
        match self
            .fd_call(fd, |n| Request::Write { fd: n, offset }, data)
            .await?
            .0
        {
            Reply::Written { count, iatt } => Ok((count, iatt)),
            r => Err(unexpected(r)),
        }
    }

    async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()> {
        match self
            .fd_call(
                fd,
                |n| Request::Flush {
                    fd: n,
                    owner: lock_owner,
                },
                Bytes::new(),
            )
            .await?
            .0
        {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn fsync(&self, fd: &Fd, datasync: bool) -> FsResult<()> {
        match self
            .fd_call(fd, |n| Request::Fsync { fd: n, datasync }, Bytes::new())
            .await?
            .0
        {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn release(&self, fd: &Fd) -> FsResult<()> {
        let Some(rfd) = fd.state::<RemoteFd>() else {
            return Err(FsError::BadFd);
        };
        let (g, n) = *rfd.slot.lock();
        let Ok((conn, gen)) = self.conn().await else {
            return Ok(());
        };
        if g != gen {
            return Ok(()); // that connection's fds died with it
        }
        // Nothing waits on a release: it goes out with the next request
        // (the brick serves a connection's requests in order).
        match conn.send_only(Request::Release { fd: n }) {
            Ok(()) | Err(FsError::NotConnected(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn opendir(&self, gfid: Gfid) -> FsResult<Fd> {
        match self.call(Request::Opendir { gfid }, Bytes::new()).await?.0 {
            Reply::Opened { fd } => {
                Ok(self.new_fd(gfid, libc::O_RDONLY | libc::O_DIRECTORY, fd, true))
            }
            r => Err(unexpected(r)),
        }
    }

    async fn readdir(
        &self,
        fd: &Fd,
        offset: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let xattrs = vec![crate::xattr_names::DHT_LINKTO.to_string()];
        let make = |n| Request::Readdir {
            fd: n,
            offset,
            max_entries,
            plus,
            xattrs,
        };
        match self.fd_call(fd, make, Bytes::new()).await?.0 {
            Reply::Entries { entries } => Ok(entries),
            r => Err(unexpected(r)),
        }
    }

    async fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>> {
        match self
            .call(
                Request::Getxattr {
                    gfid,
                    name: name.to_string(),
                },
                Bytes::new(),
            )
            .await?
            .0
        {
            Reply::Xattr { value } => Ok(value),
            r => Err(unexpected(r)),
        }
    }

    async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        match self
            .call(Request::Listxattr { gfid }, Bytes::new())
            .await?
            .0
        {
            Reply::XattrNames { names } => Ok(names),
            r => Err(unexpected(r)),
        }
    }

    async fn setxattr(&self, gfid: Gfid, xattrs: &XattrMap, flags: i32) -> FsResult<()> {
        self.done(Request::Setxattr {
            gfid,
            xattrs: xattrs.clone(),
            flags,
        })
        .await
    }

    async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        self.done(Request::Removexattr {
            gfid,
            name: name.to_string(),
        })
        .await
    }

    async fn statfs(&self) -> FsResult<Statvfs> {
        match self.call(Request::Statfs, Bytes::new()).await?.0 {
            Reply::Statfs { stat } => Ok(stat),
            r => Err(unexpected(r)),
        }
    }

    async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock> {
        match self
            .fd_call(fd, |n| Request::Lk { fd: n, cmd, lock }, Bytes::new())
            .await?
            .0
        {
            Reply::Lock { lock } => Ok(lock),
            r => Err(unexpected(r)),
        }
    }

    async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        match self
            .fd_call(
                fd,
                |n| Request::Fallocate {
                    fd: n,
                    mode,
                    offset,
                    len,
                },
                Bytes::new(),
            )
            .await?
            .0
        {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn inodelk(&self, gfid: Gfid, lock: &InodeLk) -> FsResult<()> {
        self.done(Request::Inodelk {
            gfid,
            lock: lock.clone(),
        })
        .await
    }

    async fn entrylk(&self, parent: Gfid, name: Option<&Name>, lock: &EntryLk) -> FsResult<()> {
        self.done(Request::Entrylk {
            parent,
            name: name.cloned(),
            lock: lock.clone(),
        })
        .await
    }

    async fn xattrop(&self, gfid: Gfid, op: XattropOp, xattrs: &XattrMap) -> FsResult<XattrMap> {
        match self
            .call(
                Request::Xattrop {
                    gfid,
                    op,
                    xattrs: xattrs.clone(),
                },
                Bytes::new(),
            )
            .await?
            .0
        {
            Reply::Xattrs { xattrs } => Ok(xattrs),
            r => Err(unexpected(r)),
        }
    }

    async fn index_list(&self, after: Option<Gfid>, max: u32) -> FsResult<Vec<Gfid>> {
        match self
            .call(Request::IndexList { after, max }, Bytes::new())
            .await?
            .0
        {
            Reply::Gfids { gfids } => Ok(gfids),
            r => Err(unexpected(r)),
        }
    }

    async fn checksum(
        &self,
        fd: &Fd,
        offset: u64,
        len: u64,
        block: u32,
    ) -> FsResult<(u64, Vec<[u64; 2]>)> {
        match self
            .fd_call(
                fd,
                |n| Request::Checksum {
                    fd: n,
                    offset,
                    len,
                    block,
                },
                Bytes::new(),
            )
            .await?
            .0
        {
            Reply::Checksums { size, sums } => Ok((size, sums)),
            r => Err(unexpected(r)),
        }
    }
}
