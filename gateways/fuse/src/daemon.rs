//! Daemonizing `kiln mount`: the parent forks before any thread exists, the
//! child sets up the mount and reports through a pipe; the parent exits 0
//! on "ready" or prints the child's error.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Which side of the fork this is.
pub(crate) enum Forked {
    /// The original process, with the child's report.
    Parent(Result<(), String>),
    /// The background process; report through the notifier.
    Child(Notifier),
}

/// The child's end of the readiness pipe.
pub(crate) struct Notifier {
    pipe: Option<File>,
}

impl Notifier {
    /// The mount is ready: the parent may exit 0.
    pub(crate) fn ready(&mut self) {
        self.send("ok\n");
    }

    /// The mount failed: the parent prints `msg` and exits 1.
    pub(crate) fn failed(&mut self, msg: &str) {
        self.send(&format!("error: {msg}\n"));
    }

    /// True until `ready` or `failed` was sent.
    pub(crate) fn pending(&self) -> bool {
        self.pipe.is_some()
    }

    fn send(&mut self, msg: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(msg.as_bytes());
        }
    }
}

/// Forks. Must be called before any thread or runtime is started.
pub(crate) fn fork() -> io::Result<Forked> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (the caller's contract), so the
    // child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(r);
            detach()?;
            Ok(Forked::Child(Notifier {
                pipe: Some(File::from(w)),
            }))
        }
        _child => {
            drop(w);
            let mut report = String::new();
            File::from(r).read_to_string(&mut report)?;
            let report = report.trim();
            Ok(Forked::Parent(if report == "ok" {
                Ok(())
            } else if let Some(msg) = report.strip_prefix("error: ") {
                Err(msg.to_string())
            } else {
                Err("the mount process exited before the mount was ready".to_string())
            }))
        }
    }
}

/// New session, no controlling terminal, cwd `/`, stdio on /dev/null.
fn detach() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors with a valid source.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
