//! Waiting by polling with a deadline: the only way tests wait for a
//! condition (no fixed sleeps).

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

use crate::cmd::poll_interval;

/// Calls `probe` until it returns `Some`, or fails after `timeout` with a
/// message naming `what` and the last error `probe` reported.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(poll_interval(start.elapsed()));
    }
}

/// Like `wait_for` with a condition that is simply true or false.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    wait_for(what, timeout, || Ok(cond().then_some(())))
}

/// Runs `f` on another thread and waits at most `timeout` for its result;
/// `None` if it did not finish in time (the thread is left to finish on its
/// own, e.g. once the FUSE connection it is blocked on is aborted). Use it
/// to assert that a file operation does not hang.
pub fn within<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let v = f();
        let _ = tx.send((v, start.elapsed()));
    });
    rx.recv_timeout(timeout).ok()
}
