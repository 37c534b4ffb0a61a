//! Local data path: for a brick in this network namespace, the protocol
//! client takes over the open file behind a brick fd (`brick::handoff`) and
//! reads and writes bulk data on it directly, skipping the brick process and
//! the loopback copies. Opens, locks, xattrs, fsync and everything else still
//! go to the brick, and direct I/O is only done while the brick's connection
//! is up, so a dead brick fails the same way on both paths.

use bytes::{Bytes, BytesMut};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::brick::handoff;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::Iatt;

/// Reads and writes at least this large take the direct path (smaller ones
/// are not worth a handoff).
pub(super) const DIRECT_MIN: usize = 64 * 1024;
/// Largest direct read (as a brick serves at most).
pub(super) const READ_MAX: u32 = 16 << 20;

/// Set (to anything but empty or `on`) to keep all data on TCP: for
/// comparisons and for debugging a brick.
const ENV_SWITCH: &str = "KILN_LOCAL_HANDOFF";

/// Bytes read and written on the direct path by this process.
static DIRECT_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes this process has read and written on the direct path so far.
pub fn direct_io_bytes() -> u64 {
    DIRECT_BYTES.load(Ordering::Relaxed)
}

/// The direct file of one open fd.
pub(super) enum Direct {
    /// Not asked for yet.
    Untried,
    /// Handed over while connection generation `gen` was live.
    Open { gen: u64, file: Arc<OwnedFd> },
    /// The brick said no (a directory, an old brick): TCP only.
    Refused,
}

/// This client's link to one brick's handoff socket.
pub(super) struct HandoffLink {
    name: String,
    /// One connection, used by one redemption at a time.
    sock: std::sync::Mutex<Option<UnixStream>>,
    /// The socket is not there (the brick runs on another host): no more
    /// tries until the brick connection is re-established.
    absent: AtomicBool,
    enabled: bool,
}

impl HandoffLink {
    pub(super) fn new(volume: &str, label: &str) -> HandoffLink {
        let enabled = std::env::var(ENV_SWITCH).map_or(true, |v| v.is_empty() || v == "on");
        HandoffLink {
            name: handoff::socket_name(volume, label),
            sock: std::sync::Mutex::new(None),
            absent: AtomicBool::new(false),
            enabled,
        }
    }

    /// True unless the brick is known not to be local.
    pub(super) fn available(&self) -> bool {
        self.enabled && !self.absent.load(Ordering::Acquire)
    }

    /// The brick connection was re-established: the brick may be local now.
    pub(super) fn reset(&self) {
        self.absent.store(false, Ordering::Release);
        if let Ok(mut s) = self.sock.lock() {
            *s = None;
        }
    }

    /// Redeems `token` for the file descriptor (blocking; run it off the
    /// reactor). `Ok(None)`: the brick refused the token.
    pub(super) fn redeem(&self, token: &[u8; handoff::TOKEN_LEN]) -> FsResult<Option<OwnedFd>> {
        let mut guard = self
            .sock
            .lock()
            .map_err(|_| FsError::Io("handoff link poisoned".into()))?;
        if guard.is_none() {
            let addr = SocketAddr::from_abstract_name(self.name.as_bytes())?;
            match UnixStream::connect_addr(&addr) {
                Ok(s) => *guard = Some(s),
                Err(e) => {
                    self.absent.store(true, Ordering::Release);
                    tracing::debug!(socket = %self.name, "no local handoff: {e}");
                    return Err(e.into());
                }
            }
        }
        let Some(sock) = guard.as_mut() else {
            return Err(FsError::NotConnected(self.name.clone()));
        };
        let res = exchange(sock, token);
        if res.is_err() {
            *guard = None;
        }
        res
    }
}

/// Sends a token and receives the fd, if the brick handed it.
fn exchange(sock: &mut UnixStream, token: &[u8; handoff::TOKEN_LEN]) -> FsResult<Option<OwnedFd>> {
    match handoff::exchange(sock, token)? {
        (handoff::HANDED, Some(f)) => Ok(Some(f)),
        (handoff::REFUSED, _) => Ok(None),
        _ => Err(FsError::Protocol("bad handoff reply".into())),
    }
}

/// Reads up to `size` bytes at `offset` (short only at end of file).
pub(super) async fn read(file: Arc<OwnedFd>, offset: u64, size: u32) -> FsResult<Bytes> {
    blocking(move || {
        let size = size as usize;
        let mut buf = BytesMut::with_capacity(size);
        while buf.len() < size {
            let at = offset.saturating_add(buf.len() as u64);
            let (got, _) = rustix::io::pread(&*file, buf.spare_capacity_mut(), at)?;
            let n = got.len();
            if n == 0 {
                break;
            }
            // SAFETY: pread initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
        }
        DIRECT_BYTES.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.freeze())
    })
    .await
}

/// Writes all of `data` at `offset`; the file's attributes afterwards.
pub(super) async fn write(
    file: Arc<OwnedFd>,
    gfid: Gfid,
    offset: u64,
    data: Bytes,
) -> FsResult<(u32, Iatt)> {
    blocking(move || {
        let mut done = 0usize;
        while done < data.len() {
            let n = rustix::io::pwrite(&*file, &data[done..], offset.saturating_add(done as u64))?;
            if n == 0 {
                return Err(FsError::NoSpace);
            }
            done += n;
        }
        DIRECT_BYTES.fetch_add(done as u64, Ordering::Relaxed);
        let st = rustix::fs::fstat(&*file)?;
        Ok((done as u32, crate::brick::iatt_of_stat(gfid, &st)))
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Io(format!("direct I/O task failed: {e}")))?
}
