//! Request dispatch: turns one decoded `Request` into a reply (`route` says
//! on which thread): disk work in `run_blocking`, lock waits as tasks in
//! `run_wait`. Owns a connection's open-fd table; bulk
//! data moves between the frame and the disk without serde (reads land in a
//! `BytesMut` that becomes the reply frame's data).

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::inode::SnapEntry;
use super::locks::{LockOutcome, LockTable, OwnerKey};
use super::store::Store;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::proto::{Reply, Request, MAX_FRAME};

/// Largest read served in one reply (leaves room for the header).
const READ_MAX: usize = MAX_FRAME - 64 * 1024;

/// What every connection of one brick shares.
pub(crate) struct Shared {
    /// The posix store.
    pub store: Store,
    /// Byte-range locks.
    pub locks: LockTable,
    /// Internal (inodelk/entrylk) locks.
    pub ilocks: super::internal_locks::InternalLocks,
    /// Xattrop serialisation.
    pub xattrop: super::xattrop::Xattrop,
    /// Open files offered to local clients (`handoff`).
    pub handoffs: Arc<super::handoff::Tokens>,
}

/// Keeps a regular file counted as open on the brick (so unlinking its
/// last name keeps its handle until the last close).
pub(crate) struct OpenGuard {
    shared: Arc<Shared>,
    gfid: Gfid,
}

impl OpenGuard {
    fn new(shared: &Arc<Shared>, gfid: Gfid) -> OpenGuard {
        shared.store.file_opened(gfid);
        OpenGuard {
            shared: shared.clone(),
            gfid,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.shared.store.file_closed(self.gfid);
    }
}

/// An open file or directory of one connection.
pub(crate) enum OpenFd {
    /// A regular file (or a directory opened with `Open`).
    File {
        gfid: Gfid,
        fd: OwnedFd,
        _open: Option<OpenGuard>,
    },
    /// A directory opened for listing, with its listing snapshot.
    Dir {
        gfid: Gfid,
        fd: Arc<OwnedFd>,
        snap: Mutex<Option<Arc<Vec<SnapEntry>>>>,
    },
}

impl OpenFd {
    fn gfid(&self) -> Gfid {
        match self {
            OpenFd::File { gfid, .. } | OpenFd::Dir { gfid, .. } => *gfid,
        }
    }
}

/// One client connection's state.
pub(crate) struct Conn {
    /// Connection number (unique in this brick process).
    pub id: u64,
    /// The client's id from its handshake (lock owner namespace).
    pub client: Arc<str>,
    fds: Mutex<HashMap<u64, Arc<OpenFd>>>,
    next_fd: AtomicU64,
    /// Set when the connection is gone; no lock is granted after it.
    pub closed: AtomicBool,
}

impl Conn {
    /// State for a connection that completed its handshake.
    pub(crate) fn new(id: u64, client: Arc<str>) -> Conn {
        Conn {
            id,
            client,
            fds: Mutex::new(HashMap::new()),
            next_fd: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        }
    }

    fn insert(&self, f: OpenFd) -> u64 {
        let n = self.next_fd.fetch_add(1, Ordering::Relaxed);
        self.fds.lock().insert(n, Arc::new(f));
        n
    }

    fn get(&self, n: u64) -> FsResult<Arc<OpenFd>> {
        self.fds.lock().get(&n).cloned().ok_or(FsError::BadFd)
    }

    /// Takes every open fd out of the table (the connection went away);
    /// the caller drops them off the reactor.
    pub(crate) fn take_all(&self) -> Vec<Arc<OpenFd>> {
        self.fds.lock().drain().map(|(_, f)| f).collect()
    }
}

fn file_fd(f: &OpenFd) -> &OwnedFd {
    match f {
        OpenFd::File { fd, .. } => fd,
        OpenFd::Dir { fd, .. } => fd,
    }
}

/// The open fd a request names, looked up when the request arrives (so a
/// `Release` pipelined behind a `Write` on the same fd never overtakes it).
pub(crate) type Bound = Option<FsResult<Arc<OpenFd>>>;

/// Binds the fd named by `req` in arrival order; a `Release` takes it out
/// of the table here (in-flight requests keep it open until they finish).
pub(crate) fn bind(conn: &Conn, req: &Request) -> Bound {
    let n = match req {
        Request::Release { fd } => {
            return Some(conn.fds.lock().remove(fd).ok_or(FsError::BadFd));
        }
        Request::Ftruncate { fd, .. }
        | Request::Read { fd, .. }
        | Request::Write { fd, .. }
        | Request::Flush { fd, .. }
        | Request::Fsync { fd, .. }
        | Request::Readdir { fd, .. }
        | Request::Lk { fd, .. }
        | Request::Fallocate { fd, .. }
        | Request::Handoff { fd }
        | Request::Checksum { fd, .. } => *fd,
        _ => return None,
    };
    Some(conn.get(n))
}

/// For a bulk `Read` of an open regular file: its fd, offset and (clamped)
/// size, to be served by `splice::send_read` while `bound` is held.
pub(crate) fn read_by_splice(
    req: &Request,
    bound: &Bound,
) -> Option<(std::os::fd::RawFd, u64, usize)> {
    let Request::Read { offset, size, .. } = req else {
        return None;
    };
    match bound {
        Some(Ok(f)) => match &**f {
            OpenFd::File { fd, .. } => Some((
                std::os::fd::AsRawFd::as_raw_fd(fd),
                *offset,
                (*size as usize).min(READ_MAX),
            )),
            OpenFd::Dir { .. } => None,
        },
        _ => None,
    }
}

fn any(bound: Bound) -> FsResult<Arc<OpenFd>> {
    bound.unwrap_or(Err(FsError::BadFd))
}

fn file(bound: Bound) -> FsResult<Arc<OpenFd>> {
    let f = any(bound)?;
    match &*f {
        OpenFd::File { .. } => Ok(f),
        OpenFd::Dir { .. } => Err(FsError::IsDir),
    }
}

/// Requests moving at least this many bytes go to the worker pool.
const BULK: usize = 64 * 1024;

/// Where a request is served.
pub(crate) enum Route {
    /// On the connection's own thread, before the next request is read:
    /// quick metadata work, answered with no thread hand-off.
    Here,
    /// On the worker pool (bulk data, fsync, listings): the connection
    /// keeps reading while it runs.
    Pool,
    /// As a task: may wait for a long time without holding a thread (lock
    /// waits).
    Wait,
}

/// Where `req` (with `data_len` bytes of data) is served.
pub(crate) fn route(req: &Request, data_len: usize) -> Route {
    match req {
        Request::Lk { .. } | Request::Inodelk { .. } | Request::Entrylk { .. } => Route::Wait,
        Request::IndexList { .. } | Request::Checksum { .. } => Route::Pool,
        // Xattrop stays `Here` (done before the next request is read):
        // replicate sends its unlock right behind a post-op.
        Request::Read { size, .. } if *size as usize >= BULK => Route::Pool,
        Request::Write { .. } if data_len >= BULK => Route::Pool,
        Request::Fsync { .. }
        | Request::Readdir { .. }
        | Request::Fallocate { .. }
        | Request::Ftruncate { .. } => Route::Pool,
        _ => Route::Here,
    }
}

/// Answers a request routed `Wait` (a lock request, which may wait for
/// another owner's unlock).
pub(crate) async fn run_wait(
    sh: &Arc<Shared>,
    conn: &Arc<Conn>,
    req: Request,
    bound: Bound,
) -> FsResult<(Reply, Bytes)> {
    match req {
        Request::Lk { fd: _, cmd, lock } => {
            let gfid = any(bound)?.gfid();
            let owner = OwnerKey {
                client: conn.client.clone(),
                owner: lock.owner,
            };
            Ok((
                lk(&sh.locks, conn, gfid, cmd, lock, owner).await?,
                Bytes::new(),
            ))
        }
        req @ (Request::Inodelk { .. } | Request::Entrylk { .. }) => Ok((
            super::internal_locks::serve(&sh.ilocks, conn, req).await?,
            Bytes::new(),
        )),
        other => Err(FsError::Protocol(format!(
            "{} does not wait",
            other.op_name()
        ))),
    }
}

/// Answers a request routed `Here` or `Pool` (disk work: call it on a
/// brick thread, never on the reactor).
pub(crate) fn run_blocking(
    sh: &Arc<Shared>,
    conn: &Arc<Conn>,
    req: Request,
    data: Bytes,
    bound: Bound,
) -> FsResult<(Reply, Bytes)> {
    let s = sh;
    let none = Bytes::new();
    let reply = match req {
        Request::Handshake { .. } => {
            return Err(FsError::Protocol("handshake already done".into()))
        }
        Request::Ping => Reply::Pong,
        Request::Lookup { loc, xattrs } => {
            let (iatt, xattrs) = s.store.lookup(&loc, &xattrs)?;
            Reply::Entry { iatt, xattrs }
        }
        Request::LookupGfid { gfid, xattrs } => {
            let (iatt, xattrs) = s.store.lookup_gfid(gfid, &xattrs)?;
            Reply::Entry { iatt, xattrs }
        }
        Request::Stat { gfid } => Reply::Attr {
            iatt: s.store.stat(gfid)?,
        },
        Request::Setattr { gfid, attr } => Reply::Attr {
            iatt: s.store.setattr(gfid, &attr)?,
        },
        Request::Ftruncate { fd: _, size } => {
            let f = file(bound)?;
            Reply::Attr {
                iatt: ftruncate(&f, size)?,
            }
        }
        Request::Create {
            loc,
            inode,
            flags,
            exclusive,
        } => {
            let gfid = inode.gfid;
            let (fd, iatt) = s.store.create(&loc, &inode, flags, exclusive)?;
            let fd = conn.insert(OpenFd::File {
                gfid,
                fd,
                _open: Some(OpenGuard::new(sh, gfid)),
            });
            Reply::Created { iatt, fd }
        }
        Request::Mknod { loc, inode, rdev } => Reply::Entry {
            iatt: s.store.mknod(&loc, &inode, rdev)?,
            xattrs: Default::default(),
        },
        Request::Mkdir { loc, inode } => Reply::Entry {
            iatt: s.store.mkdir(&loc, &inode)?,
            xattrs: Default::default(),
        },
        Request::Symlink { loc, inode, target } => Reply::Entry {
            iatt: s.store.symlink(&loc, &inode, &target)?,
            xattrs: Default::default(),
        },
        Request::Link { gfid, loc } => Reply::Entry {
            iatt: s.store.link(gfid, &loc)?,
            xattrs: Default::default(),
        },
        Request::Unlink { loc } => {
            s.store.unlink(&loc)?;
            Reply::Done
        }
        Request::Rmdir { loc } => {
            s.store.rmdir(&loc)?;
            Reply::Done
        }
        Request::Rename { from, to } => {
            s.store.rename(&from, &to)?;
            Reply::Done
        }
        Request::Readlink { gfid } => Reply::Link {
            target: s.store.readlink(gfid)?,
        },
        Request::Open { gfid, flags } => {
            let (fd, is_dir) = s.store.open(gfid, flags)?;
            let open = (!is_dir).then(|| OpenGuard::new(sh, gfid));
            Reply::Opened {
                fd: conn.insert(OpenFd::File {
                    gfid,
                    fd,
                    _open: open,
                }),
            }
        }
        Request::Read {
            fd: _,
            offset,
            size,
        } => {
            let f = file(bound)?;
            let size = (size as usize).min(READ_MAX);
            let (buf, eof) = read(&f, offset, size)?;
            return Ok((Reply::Read { eof }, buf));
        }
        Request::Write { fd: _, offset } => {
            let f = file(bound)?;
            let (count, iatt) = write(&f, offset, &data)?;
            Reply::Written { count, iatt }
        }
        Request::Flush { fd: _, owner } => {
            let gfid = any(bound)?.gfid();
            let key = OwnerKey {
                client: conn.client.clone(),
                owner,
            };
            sh.locks.release_owner(gfid, &key);
            Reply::Done
        }
        Request::Fsync { fd: _, datasync } => {
            let f = any(bound)?;
            let fd = file_fd(&f);
            if datasync {
                rustix::fs::fdatasync(fd)?;
            } else {
                rustix::fs::fsync(fd)?;
            }
            Reply::Done
        }
        Request::Release { .. } => {
            // Already taken out of the table by `bind`, in arrival order;
            // closing may flush to disk (and retire an unlinked file), and
            // is done before the reply.
            drop(bound);
            Reply::Done
        }
        Request::Handoff { .. } => Reply::HandoffToken {
            token: s.handoffs.issue(file(bound)?)?,
        },
        Request::Opendir { gfid } => {
            let fd = s.store.opendir(gfid)?;
            Reply::Opened {
                fd: conn.insert(OpenFd::Dir {
                    gfid,
                    fd,
                    snap: Mutex::new(None),
                }),
            }
        }
        Request::Readdir {
            fd: _,
            offset,
            max_entries,
            plus,
            xattrs,
        } => {
            let f = any(bound)?;
            let OpenFd::Dir { gfid, fd, snap } = &*f else {
                return Err(FsError::NotDir);
            };
            let cur = snap.lock().clone();
            let list = match cur {
                Some(l) if offset != 0 => l,
                _ => {
                    let l = Arc::new(s.store.snapshot(fd, gfid.is_root())?);
                    *snap.lock() = Some(l.clone());
                    l
                }
            };
            let entries = s
                .store
                .dir_entries(fd, &list, offset, max_entries, plus, &xattrs)?;
            Reply::Entries { entries }
        }
        Request::Getxattr { gfid, name } => Reply::Xattr {
            value: s.store.getxattr(gfid, &name)?,
        },
        Request::Listxattr { gfid } => Reply::XattrNames {
            names: s.store.listxattr(gfid)?,
        },
        Request::Setxattr {
            gfid,
            xattrs,
            flags,
        } => {
            s.store.setxattr(gfid, &xattrs, flags)?;
            Reply::Done
        }
        Request::Removexattr { gfid, name } => {
            s.store.removexattr(gfid, &name)?;
            Reply::Done
        }
        Request::Statfs => Reply::Statfs {
            stat: s.store.statfs()?,
        },
        Request::Lk { .. } | Request::Inodelk { .. } | Request::Entrylk { .. } => {
            return Err(FsError::Protocol("lock request on the wrong path".into()))
        }
        Request::Fallocate {
            fd: _,
            mode,
            offset,
            len,
        } => {
            let f = file(bound)?;
            let flags = rustix::fs::FallocateFlags::from_bits(mode as u32)
                .ok_or(FsError::InvalidArgument)?;
            rustix::fs::fallocate(file_fd(&f), flags, offset, len)?;
            Reply::Done
        }
        Request::Xattrop { gfid, op, xattrs } => Reply::Xattrs {
            xattrs: s.xattrop.apply(&s.store, gfid, op, &xattrs)?,
        },
        Request::IndexList { after, max } => Reply::Gfids {
            gfids: super::index::list(&s.store, after, max)?,
        },
        Request::Checksum {
            fd: _,
            offset,
            len,
            block,
        } => {
            let f = file(bound)?;
            let (size, sums) = checksums(file_fd(&f), offset, len, block)?;
            Reply::Checksums { size, sums }
        }
    };
    Ok((reply, none))
}

async fn lk(
    locks: &LockTable,
    conn: &Arc<Conn>,
    gfid: Gfid,
    cmd: crate::proto::LockCmd,
    lock: crate::proto::FileLock,
    owner: OwnerKey,
) -> FsResult<Reply> {
    match locks.lock(gfid, cmd, lock, owner, conn.id, &conn.closed)? {
        LockOutcome::Done(lock) => Ok(Reply::Lock { lock }),
        LockOutcome::Wait(rx) => match rx.await {
            Ok(r) => Ok(Reply::Lock { lock: r? }),
            Err(_) => Err(FsError::NotConnected("lock wait cancelled".into())),
        },
    }
}

fn read(f: &OpenFd, offset: u64, size: usize) -> FsResult<(Bytes, bool)> {
    let fd = file_fd(f);
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let at = offset.saturating_add(buf.len() as u64);
        let (got, _) = rustix::io::pread(fd, buf.spare_capacity_mut(), at)?;
        let n = got.len();
        if n == 0 {
            break;
        }
        // SAFETY: pread initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
    }
    let eof = buf.len() < size;
    Ok((buf.freeze(), eof))
}

/// Smallest and largest block a `Checksum` request may ask for.
const SUM_BLOCK: std::ops::RangeInclusive<u32> = 4096..=(16 << 20);
/// Most bytes one `Checksum` request covers.
const SUM_MAX: u64 = 256 << 20;

/// xxh3-128 of each `block`-byte block of `fd` in `offset..offset+len`
/// (clamped to end of file), and the file's size.
fn checksums(fd: &OwnedFd, offset: u64, len: u64, block: u32) -> FsResult<(u64, Vec<[u64; 2]>)> {
    if !SUM_BLOCK.contains(&block) || len > SUM_MAX {
        return Err(FsError::InvalidArgument);
    }
    let size = rustix::fs::fstat(fd)?.st_size.max(0) as u64;
    let end = offset.saturating_add(len).min(size);
    let mut sums = Vec::new();
    let mut buf = vec![0u8; block as usize];
    let mut at = offset;
    while at < end {
        let want = ((end - at).min(block as u64)) as usize;
        let mut got = 0usize;
        while got < want {
            let n = rustix::io::pread(fd, &mut buf[got..want], at + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let h = xxhash_rust::xxh3::xxh3_128(&buf[..got]);
        sums.push([h as u64, (h >> 64) as u64]);
        if got < want {
            break;
        }
        at += want as u64;
    }
    Ok((size, sums))
}

fn write(f: &OpenFd, offset: u64, data: &[u8]) -> FsResult<(u32, crate::iatt::Iatt)> {
    let fd = file_fd(f);
    let mut done = 0usize;
    while done < data.len() {
        let n = rustix::io::pwrite(fd, &data[done..], offset.saturating_add(done as u64))?;
        if n == 0 {
            return Err(FsError::NoSpace);
        }
        done += n;
    }
    let st = rustix::fs::fstat(fd)?;
    Ok((done as u32, super::sys::iatt(f.gfid(), &st)))
}

fn ftruncate(f: &OpenFd, size: u64) -> FsResult<crate::iatt::Iatt> {
    let fd = file_fd(f);
    match rustix::fs::ftruncate(fd, size) {
        Ok(()) => {}
        // Opened read-only: truncate through a writable reopen of the same
        // inode (works for unlinked files too).
        Err(rustix::io::Errno::BADF) | Err(rustix::io::Errno::INVAL) => {
            let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
            let w = rustix::fs::open(
                p.as_str(),
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            rustix::fs::ftruncate(&w, size)?;
        }
        Err(e) => return Err(e.into()),
    }
    let st = rustix::fs::fstat(fd)?;
    Ok(super::sys::iatt(f.gfid(), &st))
}
