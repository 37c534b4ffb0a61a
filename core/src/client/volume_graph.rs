//! The graphs a `Volume` switches between (DESIGN "Management": a new graph
//! pushed to mounted clients): one built graph (`Graph`), and the open files
//! bound to a graph (`VolumeFd`), which move to the newer graph on their next
//! use. A graph lives as long as an operation, or an open file that cannot
//! move, still uses it; dropping it closes its brick connections.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::fd::Fd;
use super::xlator::Xlator;
use crate::error::{FsError, FsResult};
use crate::graph::VolumeSpec;

/// One translator graph built from one spec.
pub(crate) struct Graph {
    /// 1 for the graph a volume starts with, +1 per switch.
    pub(crate) number: u64,
    /// The spec it was built from.
    pub(crate) spec: Arc<VolumeSpec>,
    /// Its top translator.
    pub(crate) top: Arc<dyn Xlator>,
}

impl Drop for Graph {
    fn drop(&mut self) {
        tracing::info!(volume = %self.spec.name, graph = self.number, "graph {} released", self.number);
    }
}

/// A one-line description of a graph for the log: `vol2 replica 3
/// (h1:/b, h2:/b, h3:/b) options {..}`.
pub(crate) fn describe(spec: &VolumeSpec) -> String {
    let kind = match spec.replica_count() {
        1 => "distribute".to_string(),
        n => format!("replica {n}"),
    };
    let bricks: Vec<String> = spec.bricks.iter().map(|b| b.label()).collect();
    let opts: Vec<String> = spec
        .options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} {kind} ({}) options [{}]",
        spec.name,
        bricks.join(", "),
        opts.join(", ")
    )
}

/// An open file's fd on one graph.
pub(crate) struct Binding {
    /// The graph the fd was opened on.
    pub(crate) graph: Arc<Graph>,
    /// The fd its top translator made.
    pub(crate) fd: Fd,
    /// A POSIX lock was taken through it: the lock lives on this graph's
    /// connections, so the file stays here until released.
    pinned: AtomicBool,
    /// Replaced by a binding on a newer graph: released on that graph once
    /// the last operation using it ends.
    retired: AtomicBool,
    /// Released by the gateway (`Volume::release`).
    released: AtomicBool,
}

impl Binding {
    /// `fd`, opened on `graph`.
    pub(crate) fn new(graph: Arc<Graph>, fd: Fd) -> Arc<Binding> {
        Arc::new(Binding {
            graph,
            fd,
            pinned: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            released: AtomicBool::new(false),
        })
    }

    /// Keeps the file on this graph (a POSIX lock was taken through it).
    pub(crate) fn pin(&self) {
        self.pinned.store(true, Ordering::Release);
    }

    /// Marks the fd released; true the first time.
    pub(crate) fn take_release(&self) -> bool {
        !self.released.swap(true, Ordering::AcqRel)
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        if !self.retired.load(Ordering::Acquire) || self.released.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let graph = self.graph.clone();
        let fd = self.fd.clone();
        rt.spawn(async move {
            if let Err(e) = graph.top.release(&fd).await {
                tracing::debug!(gfid = %fd.gfid, graph = graph.number, error = %e, "release of a migrated fd on its old graph failed");
            }
        });
    }
}

/// The state of an fd the `Volume` hands out: which graph's fd it is now.
pub(crate) struct VolumeFd {
    /// `None` once released (so a released fd holds no graph).
    binding: Mutex<Option<Arc<Binding>>>,
    /// Serializes moving to a newer graph.
    moving: tokio::sync::Mutex<()>,
    dir: bool,
}

impl VolumeFd {
    /// Wraps `fd`, opened on `graph`, as the fd a gateway holds.
    pub(crate) fn wrap(graph: Arc<Graph>, fd: Fd, dir: bool) -> Fd {
        let (gfid, flags) = (fd.gfid, fd.flags);
        Fd::new(
            gfid,
            flags,
            VolumeFd {
                binding: Mutex::new(Some(Binding::new(graph, fd))),
                moving: tokio::sync::Mutex::new(()),
                dir,
            },
        )
    }

    /// The binding to use for the next operation: the current one if it is
    /// on `current` (or pinned), else the fd reopened on `current` by gfid
    /// (the old one is released on its graph once its last operation ends).
    /// If the reopen fails the old graph keeps serving the file.
    pub(crate) async fn bind(&self, gfid_fd: &Fd, current: &Arc<Graph>) -> FsResult<Arc<Binding>> {
        let b = self.binding.lock().clone().ok_or(FsError::BadFd)?;
        if b.graph.number >= current.number || b.pinned.load(Ordering::Acquire) {
            return Ok(b);
        }
        let _moving = self.moving.lock().await;
        let b = self.binding.lock().clone().ok_or(FsError::BadFd)?;
        if b.graph.number >= current.number || b.pinned.load(Ordering::Acquire) {
            return Ok(b);
        }
        let reopened = if self.dir {
            current.top.opendir(gfid_fd.gfid).await
        } else {
            current
                .top
                .open(gfid_fd.gfid, reopen_flags(gfid_fd.flags))
                .await
        };
        match reopened {
            Ok(fd) => {
                let nb = Binding::new(current.clone(), fd);
                b.retired.store(true, Ordering::Release);
                let mut slot = self.binding.lock();
                if slot.is_none() {
                    // Released meanwhile: close the new fd with the old one.
                    nb.retired.store(true, Ordering::Release);
                    return Err(FsError::BadFd);
                }
                *slot = Some(nb.clone());
                tracing::debug!(gfid = %gfid_fd.gfid, from = b.graph.number, to = current.number, "open file moved to the new graph");
                Ok(nb)
            }
            Err(e) => {
                tracing::warn!(gfid = %gfid_fd.gfid, graph = current.number, error = %e, "cannot reopen an open file on the new graph; it stays on the old one");
                Ok(b)
            }
        }
    }

    /// Takes the binding out for release (no move); `None` if already
    /// released.
    pub(crate) fn take(&self) -> Option<Arc<Binding>> {
        self.binding.lock().take()
    }
}

/// Flags for reopening an open file by gfid: never create or truncate again.
fn reopen_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC)
}
