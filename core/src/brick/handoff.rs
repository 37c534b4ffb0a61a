//! Local fd handoff: a client on this host (same network namespace) may take
//! over the open file behind one of its brick fds, so its bulk reads and
//! writes go straight to the file instead of through this process.
//!
//! Two steps, so the brick's own checks decide what a client may touch: the
//! client asks on its TCP connection (`Request::Handoff` names one of *its*
//! open fds) and gets a one-time token; it then sends the token on this
//! brick's abstract unix socket and receives the file descriptor
//! (SCM_RIGHTS), the same open file description its fd has (same access
//! mode). Only root peers are served (the client processes run as root, as
//! the brick does). Abstract unix sockets belong to a network namespace, so
//! "local" means what the network says it means: a client cut off from this
//! server cannot reach it here either.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ops::OpenFd;
use crate::error::{FsError, FsResult};

/// Length of a handoff token.
pub const TOKEN_LEN: usize = 16;
/// A token not redeemed within this long is forgotten.
const TOKEN_TTL: Duration = Duration::from_secs(30);
/// Tokens waiting at once (more means a client that never redeems them).
const TOKENS_MAX: usize = 4096;
/// Handoff connections served at once.
const CONNS_MAX: usize = 64;

/// Status byte sent with the descriptor.
pub const HANDED: u8 = 0;
/// Status byte of a refused token (unknown, expired or used).
pub const REFUSED: u8 = 1;

/// The abstract unix socket name of the brick `label` of `volume`.
pub fn socket_name(volume: &str, label: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{volume}\0{label}").as_bytes());
    format!("kiln-brick-handoff-{h:016x}")
}

/// An offered file and when it was offered.
type Offer = (Arc<OpenFd>, Instant);

/// Tokens issued and not yet redeemed.
#[derive(Default)]
pub(crate) struct Tokens(Mutex<HashMap<[u8; TOKEN_LEN], Offer>>);

impl Tokens {
    /// Issues a token for the regular file `f`.
    pub(crate) fn issue(&self, f: Arc<OpenFd>) -> FsResult<[u8; TOKEN_LEN]> {
        let OpenFd::File { fd, .. } = &*f else {
            return Err(FsError::IsDir);
        };
        let st = rustix::fs::fstat(fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(FsError::InvalidArgument);
        }
        let token: [u8; TOKEN_LEN] = rand::random();
        let mut t = self.0.lock();
        if t.len() >= TOKENS_MAX {
            t.retain(|_, (_, at)| at.elapsed() < TOKEN_TTL);
            if t.len() >= TOKENS_MAX {
                return Err(FsError::Os(libc::EAGAIN));
            }
        }
        t.insert(token, (f, Instant::now()));
        Ok(token)
    }

    fn redeem(&self, token: &[u8; TOKEN_LEN]) -> Option<Arc<OpenFd>> {
        let (f, at) = self.0.lock().remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(f)
    }
}

/// Stops the handoff listener when dropped (with the brick's serving
/// future), freeing its name for a brick served again in this process.
pub(crate) struct Listening {
    listener: Arc<Mutex<Option<Arc<UnixListener>>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(l) = &*self.listener.lock() {
            // Wakes the blocked accept(2).
            let _ = rustix::net::shutdown(&**l, rustix::net::Shutdown::Both);
        }
    }
}

/// How long binding the socket is retried (a brick served again in the same
/// process waits for the previous one's listener to go).
const BIND_PATIENCE: Duration = Duration::from_secs(3);

/// Binds the brick's handoff socket and serves it on a thread of its own.
/// Without it (the name is taken, say) clients just use TCP for data.
pub(crate) fn start(volume: &str, label: &str, tokens: Arc<Tokens>) -> Listening {
    let name = socket_name(volume, label);
    let listening = Listening {
        listener: Arc::default(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    // Bound before the brick takes clients when the name is free (the usual
    // case), so a client's first try finds it.
    let early = SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| UnixListener::bind_addr(&a))
        .ok()
        .map(Arc::new);
    *listening.listener.lock() = early.clone();
    let (slot, stop) = (listening.listener.clone(), listening.stop.clone());
    let spawned = std::thread::Builder::new()
        .name("kiln-handoff".into())
        .spawn(move || {
            let Some(l) = early.or_else(|| bind(&name, &stop)) else {
                return;
            };
            *slot.lock() = Some(l.clone());
            if !stop.load(Ordering::Acquire) {
                accept_loop(&l, &stop, tokens);
            }
            *slot.lock() = None;
        });
    if let Err(e) = spawned {
        tracing::warn!("local fd handoff off: cannot start its thread: {e}");
    }
    listening
}

fn bind(name: &str, stop: &AtomicBool) -> Option<Arc<UnixListener>> {
    let deadline = Instant::now() + BIND_PATIENCE;
    loop {
        let res = SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixListener::bind_addr(&a));
        match res {
            Ok(l) => return Some(Arc::new(l)),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Acquire) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(socket = %name, "local fd handoff off: cannot bind its socket: {e}");
                return None;
            }
        }
    }
}

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, tokens: Arc<Tokens>) {
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) if !stop.load(Ordering::Acquire) => s,
            Ok(_) => return,
            Err(_) if stop.load(Ordering::Acquire) => return,
            Err(e) => {
                tracing::warn!("handoff accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) if c.uid.is_root() => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid.as_raw(),
                    pid = c.pid.as_raw_nonzero().get(),
                    "handoff refused to a non-root process"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("handoff: no peer credentials: {e}");
                continue;
            }
        }
        if live.load(std::sync::atomic::Ordering::Acquire) >= CONNS_MAX {
            tracing::warn!("handoff: too many connections, refusing one");
            continue;
        }
        live.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (t, l) = (tokens.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("kiln-handoff-conn".into())
            .spawn(move || {
                serve(stream, &t);
                l.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            tracing::warn!("handoff: cannot start a connection thread: {e}");
        }
    }
}

/// Answers tokens on one connection until the client closes it.
fn serve(mut stream: UnixStream, tokens: &Tokens) {
    let mut token = [0u8; TOKEN_LEN];
    while stream.read_exact(&mut token).is_ok() {
        let sent = match tokens.redeem(&token) {
            Some(f) => match &*f {
                OpenFd::File { fd, .. } => send_fd(&stream, fd.as_fd()),
                OpenFd::Dir { .. } => send_status(&stream, REFUSED),
            },
            None => send_status(&stream, REFUSED),
        };
        if let Err(e) = sent {
            tracing::debug!("handoff: reply failed: {e}");
            return;
        }
    }
}

/// The client side of the socket protocol: sends `token` and returns the
/// status byte and the descriptor that came with it, if any.
pub fn exchange(
    sock: &mut UnixStream,
    token: &[u8; TOKEN_LEN],
) -> std::io::Result<(u8, Option<std::os::fd::OwnedFd>)> {
    use std::io::Write;
    sock.write_all(token)?;
    let mut status = [0u8; 1];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &*sock,
        &mut [std::io::IoSliceMut::new(&mut status)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = msg {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if got.bytes != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "handoff socket closed",
        ));
    }
    Ok((status[0], fd))
}

fn send_fd(stream: &UnixStream, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("control buffer too small"));
    }
    let status = [HANDED];
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&status)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

fn send_status(stream: &UnixStream, status: u8) -> std::io::Result<()> {
    let mut control = rustix::net::SendAncillaryBuffer::default();
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&[status])],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(())
}
