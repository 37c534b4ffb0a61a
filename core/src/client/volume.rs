//! `Volume`: the top of a client graph, what every gateway uses. It names new
//! inodes (gfids), resolves paths, forwards POSIX-shaped calls to the
//! translator stack, and switches to a new graph when the volume's spec
//! changes (`switch`) without the gateway noticing: handles are gfids, and
//! open files move to the new graph on their next use (`volume_graph`).

use bytes::Bytes;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Duration;

use super::fd::Fd;
use super::volume_graph::{describe, Binding, Graph, VolumeFd};
use super::xlator::{Caller, Lookup, Xlator};
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::graph::{self, VolumeSpec};
use crate::iatt::{Iatt, SetAttr, Statvfs};
use crate::name::Name;
use crate::proto::{DirEntry, FileLock, Loc, LockCmd, LockType, NewInode, XattrMap};
use crate::xattr_names;

/// A mounted volume: the current client graph, and the spec it was mounted
/// with.
pub struct Volume {
    mount_spec: VolumeSpec,
    graph: RwLock<Arc<Graph>>,
    client_id: String,
    /// Graphs switched away from (alive while something still uses them).
    old: parking_lot::Mutex<Vec<std::sync::Weak<Graph>>>,
    /// Serializes graph switches.
    switching: tokio::sync::Mutex<()>,
}

impl Volume {
    /// Builds the graph for `spec` and returns at once; bricks connect in the
    /// background (call `wait_connected` to wait for them).
    pub fn new(spec: VolumeSpec) -> Volume {
        let client_id = format!("{}-{}", spec.name, uuid::Uuid::new_v4());
        let top = graph::build(&spec, &client_id);
        Volume::over(spec, top, client_id)
    }

    /// A volume over an already built translator (tests, nested graphs).
    pub fn with_top(spec: VolumeSpec, top: Arc<dyn Xlator>) -> Volume {
        Volume::over(spec, top, "local".into())
    }

    fn over(spec: VolumeSpec, top: Arc<dyn Xlator>, client_id: String) -> Volume {
        let graph = Arc::new(Graph {
            number: 1,
            spec: Arc::new(spec.clone()),
            top,
        });
        Volume {
            mount_spec: spec,
            graph: RwLock::new(graph),
            client_id,
            old: parking_lot::Mutex::new(Vec::new()),
            switching: tokio::sync::Mutex::new(()),
        }
    }

    /// The spec the volume was mounted with (its name and id never change;
    /// `current_spec` is the one the live graph was built from).
    pub fn spec(&self) -> &VolumeSpec {
        &self.mount_spec
    }

    /// The spec of the graph new operations go to.
    pub fn current_spec(&self) -> Arc<VolumeSpec> {
        self.graph.read().spec.clone()
    }

    /// The number of the graph new operations go to (1 at mount, +1 per
    /// switch).
    pub fn graph_number(&self) -> u64 {
        self.graph.read().number
    }

    /// How many graphs are alive: the current one, and older ones still
    /// used by an operation under way or an open file that cannot move (it
    /// holds a POSIX lock, or its reopen failed).
    pub fn graphs_in_use(&self) -> usize {
        let mut old = self.old.lock();
        old.retain(|g| g.strong_count() > 0);
        old.len() + 1
    }

    /// This client's id as the bricks know it (graph 1's; later graphs add
    /// `-g<N>`, so a brick never takes a new graph's connection for a
    /// reconnect of the old one).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The top translator of the current graph.
    pub fn xlator(&self) -> Arc<dyn Xlator> {
        self.graph.read().top.clone()
    }

    fn current(&self) -> Arc<Graph> {
        self.graph.read().clone()
    }

    /// Switches to the graph of `spec` if it differs from the current one
    /// (same bricks and options: nothing happens, `Ok(false)`). The new
    /// graph is built and given up to `ready_timeout` to reach its bricks;
    /// then new operations go to it, open files move to it on their next
    /// use, operations under way finish on the old graph, and the old graph
    /// is dropped (its brick connections closed) once nothing uses it.
    pub async fn switch(&self, spec: VolumeSpec, ready_timeout: Duration) -> FsResult<bool> {
        let _one = self.switching.lock().await;
        let cur = self.current();
        if cur.spec.same_graph(&spec) {
            return Ok(false);
        }
        let client_id = format!("{}-g{}", self.client_id, cur.number + 1);
        let top = graph::build(&spec, &client_id);
        self.install(cur, spec, top, ready_timeout).await
    }

    /// `switch` onto an already built translator (tests).
    pub async fn switch_to(
        &self,
        spec: VolumeSpec,
        top: Arc<dyn Xlator>,
        ready_timeout: Duration,
    ) -> FsResult<bool> {
        let _one = self.switching.lock().await;
        let cur = self.current();
        if cur.spec.same_graph(&spec) {
            return Ok(false);
        }
        self.install(cur, spec, top, ready_timeout).await
    }

    async fn install(
        &self,
        cur: Arc<Graph>,
        spec: VolumeSpec,
        top: Arc<dyn Xlator>,
        ready_timeout: Duration,
    ) -> FsResult<bool> {
        if spec.name != cur.spec.name || spec.id != cur.spec.id {
            tracing::error!(volume = %cur.spec.name, new = %spec.name, new_id = %spec.id, "refusing a graph of another volume");
            return Err(FsError::InvalidArgument);
        }
        let number = cur.number + 1;
        if let Err(e) = wait_root(&top, ready_timeout).await {
            tracing::warn!(volume = %spec.name, graph = number, error = %e, "the new graph does not reach its bricks yet; switching anyway");
        }
        let line = describe(&spec);
        let graph = Arc::new(Graph {
            number,
            spec: Arc::new(spec),
            top,
        });
        let previous = std::mem::replace(&mut *self.graph.write(), graph);
        {
            let mut old = self.old.lock();
            old.retain(|g| g.strong_count() > 0);
            old.push(Arc::downgrade(&previous));
        }
        // The old graph's held locks (another client id to the bricks)
        // would keep the new graph's operations waiting.
        previous.top.release_eager_locks().await;
        drop(previous);
        tracing::info!("graph {number} active: {line}");
        Ok(true)
    }

    /// The binding of `fd` for its next operation (moved to the current
    /// graph if it is on an older one).
    async fn bind(&self, fd: &Fd) -> FsResult<Arc<Binding>> {
        let cur = self.current();
        match fd.state::<VolumeFd>() {
            Some(v) => v.bind(fd, &cur).await,
            // An fd made by a translator directly: the current graph's.
            None => Ok(Binding::new(cur, fd.clone())),
        }
    }

    /// Waits until the root directory can be looked up (all bricks that are
    /// up have answered), or `timeout` passes.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> FsResult<Iatt> {
        wait_root(&self.xlator(), timeout).await
    }

    /// Resolves an absolute path inside the volume (`/` = root).
    pub async fn resolve_path(&self, path: &str) -> FsResult<Iatt> {
        let mut cur = self.current().top.lookup_gfid(Gfid::ROOT, &[]).await?.iatt;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err(FsError::InvalidArgument);
            }
            if !cur.is_dir() {
                return Err(FsError::NotDir);
            }
            let name = Name::new(comp)?;
            cur = self.lookup(cur.gfid, &name).await?.iatt;
        }
        Ok(cur)
    }

    /// Looks up `name` in `parent`.
    pub async fn lookup(&self, parent: Gfid, name: &Name) -> FsResult<Lookup> {
        check_visible(parent, name)?;
        self.current()
            .top
            .lookup(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &[],
            )
            .await
    }

    /// Attributes by gfid (revalidates the inode).
    pub async fn getattr(&self, gfid: Gfid) -> FsResult<Iatt> {
        self.current().top.stat(gfid).await
    }

    /// Changes attributes.
    pub async fn setattr(&self, gfid: Gfid, attr: &SetAttr) -> FsResult<Iatt> {
        self.current().top.setattr(gfid, attr).await
    }

    /// Truncates through an open file.
    pub async fn ftruncate(&self, fd: &Fd, size: u64) -> FsResult<Iatt> {
        let b = self.bind(fd).await?;
        b.graph.top.ftruncate(&b.fd, size).await
    }

    /// Creates and opens a regular file owned by `caller`.
    pub async fn create(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        mode: u32,
        flags: i32,
        exclusive: bool,
    ) -> FsResult<(Iatt, Fd)> {
        check_visible(parent, name)?;
        let graph = self.current();
        let (iatt, fd) = graph
            .top
            .create(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, mode & 0o7777),
                flags,
                exclusive,
            )
            .await?;
        Ok((iatt, VolumeFd::wrap(graph, fd, false)))
    }

    /// Creates a special file (`mode` includes S_IFMT).
    pub async fn mknod(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        mode: u32,
        rdev: u64,
    ) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.current()
            .top
            .mknod(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, mode),
                rdev,
            )
            .await
    }

    /// Creates a directory.
    pub async fn mkdir(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        mode: u32,
    ) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.current()
            .top
            .mkdir(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, mode & 0o7777),
            )
            .await
    }

    /// Creates a symlink.
    pub async fn symlink(
        &self,
        parent: Gfid,
        name: &Name,
        caller: &Caller,
        target: &[u8],
    ) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.current()
            .top
            .symlink(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &new_inode(caller, 0o777),
                target,
            )
            .await
    }

    /// Hard-links `gfid` as `name` in `parent`.
    pub async fn link(&self, gfid: Gfid, parent: Gfid, name: &Name) -> FsResult<Iatt> {
        check_visible(parent, name)?;
        self.current()
            .top
            .link(
                gfid,
                &Loc {
                    parent,
                    name: name.clone(),
                },
            )
            .await
    }

    /// Removes a non-directory.
    pub async fn unlink(&self, parent: Gfid, name: &Name) -> FsResult<()> {
        check_visible(parent, name)?;
        self.current()
            .top
            .unlink(&Loc {
                parent,
                name: name.clone(),
            })
            .await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: Gfid, name: &Name) -> FsResult<()> {
        check_visible(parent, name)?;
        self.current()
            .top
            .rmdir(&Loc {
                parent,
                name: name.clone(),
            })
            .await
    }

    /// Renames.
    pub async fn rename(
        &self,
        parent: Gfid,
        name: &Name,
        new_parent: Gfid,
        new_name: &Name,
    ) -> FsResult<()> {
        check_visible(parent, name)?;
        check_visible(new_parent, new_name)?;
        self.current()
            .top
            .rename(
                &Loc {
                    parent,
                    name: name.clone(),
                },
                &Loc {
                    parent: new_parent,
                    name: new_name.clone(),
                },
            )
            .await
    }

    /// A symlink's target.
    pub async fn readlink(&self, gfid: Gfid) -> FsResult<Vec<u8>> {
        self.current().top.readlink(gfid).await
    }

    /// Opens a file.
    pub async fn open(&self, gfid: Gfid, flags: i32) -> FsResult<Fd> {
        let graph = self.current();
        let fd = graph.top.open(gfid, flags).await?;
        Ok(VolumeFd::wrap(graph, fd, false))
    }

    /// Reads.
    pub async fn read(&self, fd: &Fd, offset: u64, size: u32) -> FsResult<Bytes> {
        let b = self.bind(fd).await?;
        b.graph.top.read(&b.fd, offset, size).await
    }

    /// Writes.
    pub async fn write(&self, fd: &Fd, offset: u64, data: Bytes) -> FsResult<(u32, Iatt)> {
        let b = self.bind(fd).await?;
        b.graph.top.write(&b.fd, offset, data).await
    }

    /// A close(2) of one descriptor.
    pub async fn flush(&self, fd: &Fd, lock_owner: u64) -> FsResult<()> {
        let b = self.bind(fd).await?;
        b.graph.top.flush(&b.fd, lock_owner).await
    }

    /// fsync.
    /// Lets go of every lock this client holds eagerly (call before the
    /// client goes away: unmount, gateway shutdown).
    pub async fn release_eager_locks(&self) {
        self.xlator().release_eager_locks().await
    }

    pub async fn fsync(&self, fd: &Fd, datasync: bool) -> FsResult<()> {
        let b = self.bind(fd).await?;
        b.graph.top.fsync(&b.fd, datasync).await
    }

    /// Drops an open file or directory.
    pub async fn release(&self, fd: &Fd) -> FsResult<()> {
        // Released where it is: an fd is never moved just to be closed.
        let b = match fd.state::<VolumeFd>() {
            Some(v) => match v.take() {
                Some(b) => b,
                None => return Ok(()),
            },
            None => return self.current().top.release(fd).await,
        };
        if !b.take_release() {
            return Ok(());
        }
        b.graph.top.release(&b.fd).await
    }

    /// Opens a directory.
    pub async fn opendir(&self, gfid: Gfid) -> FsResult<Fd> {
        let graph = self.current();
        let fd = graph.top.opendir(gfid).await?;
        Ok(VolumeFd::wrap(graph, fd, true))
    }

    /// Reads directory entries after `offset` (0 = start); `.` and `..` are
    /// not included (gateways add them).
    pub async fn readdir(
        &self,
        fd: &Fd,
        offset: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let b = self.bind(fd).await?;
        let mut entries = b
            .graph
            .top
            .readdir(&b.fd, offset, max_entries, plus)
            .await?;
        if fd.gfid.is_root() {
            entries.retain(|e| e.name.as_bytes() != b".kiln");
        }
        Ok(entries)
    }

    /// One xattr (internal `trusted.kiln.*` names are refused).
    pub async fn getxattr(&self, gfid: Gfid, name: &str) -> FsResult<Vec<u8>> {
        check_xattr_name(name)?;
        self.current().top.getxattr(gfid, name).await
    }

    /// Xattr names (internal ones hidden).
    pub async fn listxattr(&self, gfid: Gfid) -> FsResult<Vec<String>> {
        let mut names = self.current().top.listxattr(gfid).await?;
        names.retain(|n| !xattr_names::is_internal(n));
        Ok(names)
    }

    /// Sets one xattr (internal names are refused).
    pub async fn setxattr(&self, gfid: Gfid, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        check_xattr_name(name)?;
        let mut map = XattrMap::new();
        map.insert(name.to_string(), value.to_vec());
        self.current().top.setxattr(gfid, &map, flags).await
    }

    /// Removes one xattr.
    pub async fn removexattr(&self, gfid: Gfid, name: &str) -> FsResult<()> {
        check_xattr_name(name)?;
        self.current().top.removexattr(gfid, name).await
    }

    /// Capacity.
    pub async fn statfs(&self) -> FsResult<Statvfs> {
        self.current().top.statfs().await
    }

    /// POSIX lock.
    pub async fn lk(&self, fd: &Fd, cmd: LockCmd, lock: FileLock) -> FsResult<FileLock> {
        let b = self.bind(fd).await?;
        let taking = cmd != LockCmd::Get && lock.kind != LockType::Unlock;
        let r = b.graph.top.lk(&b.fd, cmd, lock).await;
        if taking && r.is_ok() {
            // The lock lives on this graph's brick connections.
            b.pin();
        }
        r
    }

    /// fallocate(2).
    pub async fn fallocate(&self, fd: &Fd, mode: i32, offset: u64, len: u64) -> FsResult<()> {
        let b = self.bind(fd).await?;
        b.graph.top.fallocate(&b.fd, mode, offset, len).await
    }
}

/// Waits until `top` can look up the root, or `timeout` passes.
async fn wait_root(top: &Arc<dyn Xlator>, timeout: Duration) -> FsResult<Iatt> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match top.lookup_gfid(Gfid::ROOT, &[]).await {
            Ok(l) => return Ok(l.iatt),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn new_inode(caller: &Caller, mode: u32) -> NewInode {
    NewInode {
        gfid: Gfid::new_random(),
        mode,
        uid: caller.uid,
        gid: caller.gid,
        xattrs: XattrMap::new(),
    }
}

/// The brick's own `.kiln` directory is never visible in the volume root.
fn check_visible(parent: Gfid, name: &Name) -> FsResult<()> {
    if parent.is_root() && name.as_bytes() == b".kiln" {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

fn check_xattr_name(name: &str) -> FsResult<()> {
    if xattr_names::is_internal(name) {
        return Err(FsError::NotPermitted);
    }
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Range);
    }
    Ok(())
}
