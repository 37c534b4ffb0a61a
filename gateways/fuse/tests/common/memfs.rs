//! `MemFs`: a small in-memory `Xlator` (one "brick" in RAM) so the FUSE
//! layer can be exercised through a real kernel mount without the network
//! stack. POSIX-shaped: link counts, rename rules, xattr flags, byte-range
//! locks with waiting.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use kiln_core::client::xlator::Lookup;
use kiln_core::client::{Fd, Xlator};
use kiln_core::iatt::{SetTime, Timespec};
use kiln_core::proto::{DirEntry, FileLock, Loc, LockCmd, LockType, NewInode, XattrMap};
use kiln_core::{FileKind, FsError, FsResult, Gfid, Iatt, Name, SetAttr, Statvfs};
use parking_lot::Mutex;
use tokio::sync::Notify;

struct Node {
    iatt: Iatt,
    data: Vec<u8>,
    children: BTreeMap<Name, Gfid>,
    target: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// A held byte-range lock: [start, end) with end = u64::MAX for "to EOF".
#[derive(Clone, Copy)]
struct Held {
    gfid: Gfid,
    owner: u64,
    kind: LockType,
    start: u64,
    end: u64,
    pid: u32,
}

struct State {
    nodes: HashMap<Gfid, Node>,
    locks: Vec<Held>,
}

/// The in-memory translator.
pub struct MemFs {
    state: Mutex<State>,
    unlocked: Notify,
    /// Calls per operation name, to check what the kernel asks.
    calls: Mutex<HashMap<&'static str, usize>>,
    /// When set, writes fail with this error (after a short delay).
    fail_writes: Mutex<Option<FsError>>,
    /// Delay added to every write.
    write_delay: Mutex<std::time::Duration>,
}

fn now() -> Timespec {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Timespec {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

fn new_iatt(gfid: Gfid, kind: FileKind, perm: u32, uid: u32, gid: u32) -> Iatt {
    let t = now();
    Iatt {
        gfid,
        kind,
        perm: perm & 0o7777,
        nlink: if kind == FileKind::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        size: 0,
        blocks: 0,
        blksize: 4096,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

fn range(l: &FileLock) -> (u64, u64) {
    let end = if l.len == 0 {
        u64::MAX
    } else {
        l.start.saturating_add(l.len)
    };
    (l.start, end)
}

impl MemFs {
    /// An empty volume (root directory only).
    pub fn new() -> MemFs {
        let mut nodes = HashMap::new();
        nodes.insert(
            Gfid::ROOT,
            Node {
                iatt: new_iatt(Gfid::ROOT, FileKind::Directory, 0o755, 0, 0),
                data: Vec::new(),
                children: BTreeMap::new(),
                target: Vec::new(),
                xattrs: BTreeMap::new(),
            },
        );
        MemFs {
            state: Mutex::new(State {
                nodes,
                locks: Vec::new(),
            }),
            unlocked: Notify::new(),
            calls: Mutex::new(HashMap::new()),
            fail_writes: Mutex::new(None),
            write_delay: Mutex::new(std::time::Duration::ZERO),
        }
    }

    /// Makes every later write fail with `e` (None: succeed again).
    pub fn fail_writes(&self, e: Option<FsError>) {
        *self.fail_writes.lock() = e;
    }

    /// Delays every later write by `d` (so writes overlap in flight).
    pub fn delay_writes(&self, d: std::time::Duration) {
        *self.write_delay.lock() = d;
    }

    fn count(&self, op: &'static str) {
        *self.calls.lock().entry(op).or_default() += 1;
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: &str) -> usize {
        self.calls.lock().get(op).copied().unwrap_or(0)
    }

    /// Locks currently held (all files).
    pub fn lock_count(&self) -> usize {
        self.state.lock().locks.len()
    }

    /// The contents of the file at `path` (test inspection).
    pub fn file_data(&self, path: &str) -> Option<Vec<u8>> {
        let st = self.state.lock();
        let mut cur = Gfid::ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = *st.nodes.get(&cur)?.children.get(&Name::new(c).ok()?)?;
        }
        st.nodes.get(&cur).map(|n| n.data.clone())
    }
}

impl State {
    fn node(&self, g: Gfid) -> FsResult<&Node> {
        self.nodes.get(&g).ok_or(FsError::Stale)
    }

    fn node_mut(&mut self, g: Gfid) -> FsResult<&mut Node> {
        self.nodes.get_mut(&g).ok_or(FsError::Stale)
    }

    fn dir(&self, g: Gfid) -> FsResult<&Node> {
        let n = self.node(g)?;
        if n.iatt.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        Ok(n)
    }

    fn child(&self, loc: &Loc) -> FsResult<Gfid> {
        self.dir(loc.parent)?
            .children
            .get(&loc.name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    fn insert(&mut self, loc: &Loc, node: Node) -> FsResult<Iatt> {
        if self.dir(loc.parent)?.children.contains_key(&loc.name) {
            return Err(FsError::Exists);
        }
        let iatt = node.iatt.clone();
        let is_dir = iatt.kind == FileKind::Directory;
        self.nodes.insert(iatt.gfid, node);
        let t = now();
        let p = self.node_mut(loc.parent)?;
        p.children.insert(loc.name.clone(), iatt.gfid);
        p.iatt.mtime = t;
        p.iatt.ctime = t;
        if is_dir {
            p.iatt.nlink += 1;
        }
        Ok(iatt)
    }

    fn new_node(inode: &NewInode, kind: FileKind) -> Node {
        Node {
            iatt: new_iatt(inode.gfid, kind, inode.mode, inode.uid, inode.gid),
            data: Vec::new(),
            children: BTreeMap::new(),
            target: Vec::new(),
            xattrs: BTreeMap::new(),
        }
    }

    /// Drops one name of `g` from `parent`.
    fn detach(&mut self, parent: Gfid, name: &Name, g: Gfid) -> FsResult<()> {
        let is_dir = self.node(g)?.iatt.kind == FileKind::Directory;
        let t = now();
        let p = self.node_mut(parent)?;
        p.children.remove(name);
        p.iatt.mtime = t;
        p.iatt.ctime = t;
        if is_dir {
            p.iatt.nlink -= 1;
        }
        let n = self.node_mut(g)?;
        n.iatt.ctime = t;
        if is_dir {
            n.iatt.nlink = 0;
        } else {
            n.iatt.nlink = n.iatt.nlink.saturating_sub(1);
        }
        Ok(())
    }

    fn conflict(&self, gfid: Gfid, l: &FileLock) -> Option<Held> {
        let (s, e) = range(l);
        self.locks
            .iter()
            .find(|h| {
                h.gfid == gfid
                    && h.owner != l.owner
                    && h.start < e
                    && s < h.end
                    && (h.kind == LockType::Write || l.kind == LockType::Write)
            })
            .copied()
    }

    /// Replaces `owner`'s locks on [s, e) with `kind` (or removes them).
    fn apply_lock(&mut self, gfid: Gfid, l: &FileLock) {
        let (s, e) = range(l);
        let mut kept = Vec::new();
        for h in self.locks.drain(..) {
            if h.gfid != gfid || h.owner != l.owner || h.end <= s || e <= h.start {
                kept.push(h);
                continue;
            }
            if h.start < s {
                kept.push(Held { end: s, ..h });
            }
            if e < h.end {
                kept.push(Held { start: e, ..h });
            }
        }
        if l.kind != LockType::Unlock {
            kept.push(Held {
                gfid,
                owner: l.owner,
                kind: l.kind,
                start: s,
                end: e,
                pid: l.pid,
            });
        }
        self.locks = kept;
    }
}

fn resize(n: &mut Node, size: u64) {
    n.data.resize(size as usize, 0);
    n.iatt.size = size;
    n.iatt.blocks = size.div_ceil(512);
}

#[async_trait]
impl Xlator for MemFs {
    fn name(&self) -> &str {
        "memfs"
    }

    async fn lookup(&self, loc: &Loc, _xattrs: &[String]) -> FsResult<Lookup> {
        self.count("lookup");
        let st = self.state.lock();
        let g = st.child(loc)?;
        Ok(Lookup {
            iatt: st.node(g)?.iatt.clone(),
            xattrs: XattrMap::new(),
        })
    }

    async fn lookup_gfid(&self, gfid: Gfid, _xattrs: &[String]) -> FsResult<Lookup> {
        Ok(Lookup {
            iatt: self.stat(gfid).await?,
            xattrs: XattrMap::new(),
        })
    }

    async fn stat(&self, gfid: Gfid) -> FsResult<Iatt> {
        self.count("stat");
        Ok(self.state.lock().node(gfid)?.iatt.clone())
    }

    async fn setattr(&self, gfid: Gfid, a: &SetAttr) -> FsResult<Iatt> {
        self.count("setattr");
        let mut st = self.state.lock();
        let n = st.node_mut(gfid)?;
        let t = now();
        if let Some(m) = a.mode {
            n.iatt.perm = m & 0o7777;
        }
        if let Some(u) = a.uid {
            n.iatt.uid = u;
        }
        if let Some(g) = a.gid {
            n.iatt.gid = g;
        }
        if let Some(s) = a.size {
            if n.iatt.kind == FileKind::Directory {
                return Err(FsError::IsDir);
            }
            resize(n, s);
            n.iatt.mtime = t;
        }
        let at = |s: SetTime| match s {
            SetTime::Now => t,
            SetTime::At(x) => x,
        };
        if let Some(x) = a.atime {
            n.iatt.atime = at(x);
        }
        if let Some(x) = a.mtime {
            n.iatt.mtime = at(x);
        }
        n.iatt.ctime = t;
        Ok(n.iatt.clone())
    }

    async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        self.setattr(
            fd.gfid,
            &SetAttr {
                size: Some(size),
                ..Default::default()
            },
        )
        .await
    }

    async fn create(
        &self,
        loc: &Loc,
        inode: &NewInode,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        self.count("create");
        let mut st = self.state.lock();
        match st.child(loc) {
            Ok(g) if exclusive => {
                let _ = g;
                Err(FsError::Exists)
            }
            Ok(g) => {
                let n = st.node_mut(g)?;
                if flags & libc::O_TRUNC != 0 {
                    resize(n, 0);
                }
                Ok((n.iatt.clone(), Fd::new(g, flags, ())))
            }
            Err(FsError::NotFound) => {
                let iatt = st.insert(loc, State::new_node(inode, FileKind::Regular))?;
                Ok((iatt, Fd::new(inode.gfid, flags, ())))
            }
            Err(e) => Err(e),
        }
    }

    async fn mknod(&self, loc: &Loc, inode: &NewInode, rdev: u64) -> FsResult<Iatt> {
        let mut st = self.state.lock();
        let mut node = State::new_node(inode, FileKind::from_mode(inode.mode));
        node.iatt.rdev = rdev;
        st.insert(loc, node)
    }

    async fn mkdir(&self, loc: &Loc, inode: &NewInode) -> FsResult<Iatt> {
        self.state
            .lock()
            .insert(loc, State::new_node(inode, FileKind::Directory))
    }

    async fn symlink(&self, loc: &Loc, inode: &NewInode, target: &[u8]) -> FsResult<Iatt> {
        let mut node = State::new_node(inode, FileKind::Symlink);
        node.target = target.to_vec();
        node.iatt.size = target.len() as u64;
        self.state.lock().insert(loc, node)
    }

    async fn link(&self, gfid: Gfid, loc: &Loc) -> FsResult<Iatt> {
        let mut st = self.state.lock();
        if st.node(gfid)?.iatt.kind == FileKind::Directory {
            return Err(FsError::NotPermitted);
        }
        if st.dir(loc.parent)?.children.contains_key(&loc.name) {
            return Err(FsError::Exists);
        }
        st.node_mut(loc.parent)?
            .children
            .insert(loc.name.clone(), gfid);
        let n = st.node_mut(gfid)?;
        n.iatt.nlink += 1;
        n.iatt.ctime = now();
        Ok(n.iatt.clone())
    }

    async fn unlink(&self, loc: &Loc) -> FsResult<()> {
        let mut st = self.state.lock();
        let g = st.child(loc)?;
        if st.node(g)?.iatt.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        st.detach(loc.parent, &loc.name, g)
    }

    async fn rmdir(&self, loc: &Loc) -> FsResult<()> {
        let mut st = self.state.lock();
        let g = st.child(loc)?;
        let n = st.dir(g)?;
        if !n.children.is_empty() {
            return Err(FsError::NotEmpty);
        }
        st.detach(loc.parent, &loc.name, g)?;
        st.nodes.remove(&g);
        Ok(())
    }

    async fn rename(&self, from: &Loc, to: &Loc) -> FsResult<()> {
        let mut st = self.state.lock();
        let g = st.child(from)?;
        st.dir(to.parent)?;
        let src_dir = st.node(g)?.iatt.kind == FileKind::Directory;
        if let Ok(t) = st.child(to) {
            if t == g {
                return Ok(());
            }
            let dst_dir = st.node(t)?.iatt.kind == FileKind::Directory;
            match (src_dir, dst_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !st.node(t)?.children.is_empty() => return Err(FsError::NotEmpty),
                _ => {}
            }
            st.detach(to.parent, &to.name, t)?;
        }
        st.detach(from.parent, &from.name, g)?;
        let t = now();
        let p = st.node_mut(to.parent)?;
        p.children.insert(to.name.clone(), g);
        if src_dir {
            p.iatt.nlink += 1;
        }
        let n = st.node_mut(g)?;
        n.iatt.nlink = if src_dir { 2 } else { n.iatt.nlink + 1 };
        n.iatt.ctime = t;
        Ok(())
    }

    async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        let st = self.state.lock();
        let n = st.node(gfid)?;
        if n.iatt.kind != FileKind::Symlink {
            return Err(FsError::InvalidArgument);
        }
        Ok(n.target.clone())
    }

    async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        self.count("open");
        let mut st = self.state.lock();
        let n = st.node_mut(gfid)?;
        if flags & libc::O_TRUNC != 0 {
            resize(n, 0);
        }
        Ok(Fd::new(gfid, flags, ()))
    }

    async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        self.count("read");
        let st = self.state.lock();
        let n = st.node(fd.gfid)?;
        let start = (offset as usize).min(n.data.len());
        let end = start.saturating_add(size as usize).min(n.data.len());
        Ok(Bytes::copy_from_slice(&n.data[start..end]))
    }

    async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)> {
        self.count("write");
        let delay = *self.write_delay.lock();
        if !delay.is_zero() {
            // Later writes finish first: out-of-order completion.
            let jitter = (offset / 4096 % 3) as u32;
            tokio::time::sleep(delay / (1 + jitter)).await;
        }
        if let Some(e) = self.fail_writes.lock().clone() {
            return Err(e);
        }
        let mut st = self.state.lock();
        let n = st.node_mut(fd.gfid)?;
        let off = if fd.flags & libc::O_APPEND != 0 {
            n.data.len()
        } else {
            offset as usize
        };
        let end = off + data.len();
        if end > n.data.len() {
            resize(n, end as u64);
        }
        n.data[off..end].copy_from_slice(&data);
        let t = now();
        n.iatt.mtime = t;
        n.iatt.ctime = t;
        Ok((data.len() as u32, n.iatt.clone()))
    }

    async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()> {
        self.count("flush");
        let mut st = self.state.lock();
        let before = st.locks.len();
        st.locks
            .retain(|h| !(h.gfid == fd.gfid && h.owner == lock_owner));
        if st.locks.len() != before {
            self.unlocked.notify_waiters();
        }
        Ok(())
    }

    async fn fsync(&self, _fd: &Fd, _datasync: bool) -> FsResult<()> {
        Ok(())
    }

    async fn release(&self, _fd: &Fd) -> FsResult<()> {
        self.count("release");
        Ok(())
    }

    async fn opendir(&self, gfid: Gfid) -> FsResult<Fd> {
        self.state.lock().dir(gfid)?;
        Ok(Fd::new(gfid, libc::O_RDONLY, ()))
    }

    async fn readdir(
        &self,
        fd: &Fd,
        offset: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let st = self.state.lock();
        let d = st.dir(fd.gfid)?;
        let mut out = Vec::new();
        for (i, (name, g)) in d
            .children
            .iter()
            .enumerate()
            .skip(offset as usize)
            .take(max_entries as usize)
        {
            let n = st.node(*g)?;
            out.push(DirEntry {
                offset: i as u64 + 1,
                name: name.clone(),
                gfid: *g,
                kind: n.iatt.kind,
                iatt: plus.then(|| n.iatt.clone()),
                xattrs: XattrMap::new(),
            });
        }
        Ok(out)
    }

    async fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>> {
        self.count("getxattr");
        let st = self.state.lock();
        st.node(gfid)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(FsError::NoData)
    }

    async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        Ok(self
            .state
            .lock()
            .node(gfid)?
            .xattrs
            .keys()
            .cloned()
            .collect())
    }

    async fn setxattr(&self, gfid: Gfid, xattrs: &XattrMap, flags: i32) -> FsResult<()> {
        let mut st = self.state.lock();
        let n = st.node_mut(gfid)?;
        for (k, v) in xattrs {
            let exists = n.xattrs.contains_key(k);
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoData);
            }
            n.xattrs.insert(k.clone(), v.clone());
        }
        n.iatt.ctime = now();
        Ok(())
    }

    async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        let mut st = self.state.lock();
        let n = st.node_mut(gfid)?;
        n.xattrs.remove(name).map(|_| ()).ok_or(FsError::NoData)
    }

    async fn statfs(&self) -> FsResult<Statvfs> {
        Ok(Statvfs {
            bsize: 4096,
            frsize: 4096,
            blocks: 1 << 20,
            bfree: 1 << 19,
            bavail: 1 << 19,
            files: 1 << 16,
            ffree: 1 << 15,
            namemax: 255,
        })
    }

    async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock> {
        self.count("lk");
        loop {
            let notified = self.unlocked.notified();
            {
                let mut st = self.state.lock();
                st.node(fd.gfid)?;
                let conflict = if lock.kind == LockType::Unlock {
                    None
                } else {
                    st.conflict(fd.gfid, &lock)
                };
                match (cmd, conflict) {
                    (LockCmd::Get, None) => {
                        return Ok(FileLock {
                            kind: LockType::Unlock,
                            ..lock
                        })
                    }
                    (LockCmd::Get, Some(h)) => {
                        return Ok(FileLock {
                            kind: h.kind,
                            start: h.start,
                            len: if h.end == u64::MAX {
                                0
                            } else {
                                h.end - h.start
                            },
                            owner: h.owner,
                            pid: h.pid,
                        })
                    }
                    (_, None) => {
                        st.apply_lock(fd.gfid, &lock);
                        drop(st);
                        self.unlocked.notify_waiters();
                        return Ok(lock);
                    }
                    (LockCmd::Set, Some(_)) => return Err(FsError::WouldBlock),
                    (LockCmd::SetWait, Some(_)) => {}
                }
            }
            notified.await;
        }
    }

    async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        if mode != 0 {
            return Err(FsError::NotSupported);
        }
        let mut st = self.state.lock();
        let n = st.node_mut(fd.gfid)?;
        let end = offset.saturating_add(len);
        if end > n.iatt.size {
            resize(n, end);
        }
        let t = now();
        n.iatt.mtime = t;
        n.iatt.ctime = t;
        Ok(())
    }
}
