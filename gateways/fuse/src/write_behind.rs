//! Write-behind: a write is acknowledged to the kernel at once and sent to
//! the volume in the background, so one file's sequential writes overlap
//! instead of waiting for each other's round trip. Per inode it keeps the
//! ranges in flight (an overlapping write waits for the older one, so
//! writes land in order), bounds the bytes in flight, and holds the first
//! failure until a later write, flush or fsync reports it. Whatever reads
//! data or attributes first waits for the inode's writes to land (`drain`).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_core::{FsError, FsResult};
use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    /// (id, start, end) of writes in flight.
    ranges: Vec<(u64, u64, u64)>,
    bytes: usize,
    next_id: u64,
    /// The first background failure not yet reported.
    error: Option<FsError>,
}

#[derive(Default)]
struct Pending {
    state: Mutex<State>,
    changed: Notify,
}

/// A write admitted into the window; give it back to `finish`.
#[derive(Debug)]
pub(crate) struct Ticket {
    ino: u64,
    id: u64,
}

/// Background writes of one mount.
pub(crate) struct WriteBehind {
    window: usize,
    map: Mutex<HashMap<u64, Arc<Pending>>>,
}

impl WriteBehind {
    /// At most `window` bytes in flight per inode.
    pub(crate) fn new(window: usize) -> WriteBehind {
        WriteBehind {
            window: window.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a write of [start, start + len) to `ino`: waits while it
    /// overlaps a write in flight or the window is full. Fails with (and
    /// clears) an earlier background failure.
    pub(crate) async fn begin(&self, ino: u64, start: u64, len: usize) -> FsResult<Ticket> {
        let end = start.saturating_add(len as u64);
        loop {
            let pending = {
                let mut map = self.map.lock();
                let p = map.entry(ino).or_default().clone();
                let mut st = p.state.lock();
                if let Some(e) = st.error.take() {
                    if st.ranges.is_empty() {
                        drop(st);
                        map.remove(&ino);
                    }
                    return Err(e);
                }
                let overlaps = st.ranges.iter().any(|&(_, s, e)| s < end && start < e);
                let room = st.bytes == 0 || st.bytes + len <= self.window;
                if !overlaps && room {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.ranges.push((id, start, end));
                    st.bytes += len;
                    return Ok(Ticket { ino, id });
                }
                drop(st);
                p
            };
            let changed = pending.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Re-check after registering, so a finish in between is seen.
            if !self.still_blocked(&pending, start, end, len) {
                continue;
            }
            changed.await;
        }
    }

    fn still_blocked(&self, p: &Pending, start: u64, end: u64, len: usize) -> bool {
        let st = p.state.lock();
        st.error.is_none()
            && (st.ranges.iter().any(|&(_, s, e)| s < end && start < e)
                || !(st.bytes == 0 || st.bytes + len <= self.window))
    }

    /// A background write ended; a failure is kept for the next report.
    pub(crate) fn finish(&self, ticket: Ticket, result: FsResult<()>, len: usize) {
        let mut map = self.map.lock();
        let Some(p) = map.get(&ticket.ino).cloned() else {
            return;
        };
        let mut st = p.state.lock();
        st.ranges.retain(|&(id, _, _)| id != ticket.id);
        st.bytes = st.bytes.saturating_sub(len);
        if let Err(e) = result {
            tracing::warn!(ino = ticket.ino, error = %e, "background write failed");
            st.error.get_or_insert(e);
        }
        if st.ranges.is_empty() && st.error.is_none() {
            map.remove(&ticket.ino);
        }
        drop(st);
        p.changed.notify_waiters();
    }

    /// True while `ino` has writes in flight.
    pub(crate) fn busy(&self, ino: u64) -> bool {
        self.map
            .lock()
            .get(&ino)
            .is_some_and(|p| !p.state.lock().ranges.is_empty())
    }

    /// Waits until every write in flight to `ino` has landed.
    pub(crate) async fn drain(&self, ino: u64) {
        loop {
            let Some(p) = self.map.lock().get(&ino).cloned() else {
                return;
            };
            let changed = p.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if p.state.lock().ranges.is_empty() {
                return;
            }
            changed.await;
        }
    }

    /// Reports (and clears) a failure of `ino`'s background writes that is
    /// already known, without waiting for those in flight.
    pub(crate) fn take_error(&self, ino: u64) -> FsResult<()> {
        let mut map = self.map.lock();
        let Some(p) = map.get(&ino).cloned() else {
            return Ok(());
        };
        let mut st = p.state.lock();
        let err = st.error.take();
        if st.ranges.is_empty() {
            drop(st);
            map.remove(&ino);
        }
        err.map_or(Ok(()), Err)
    }

    /// Waits for `ino`'s writes, then reports (and clears) a failure.
    pub(crate) async fn settle(&self, ino: u64) -> FsResult<()> {
        self.drain(ino).await;
        let mut map = self.map.lock();
        let err = map.get(&ino).and_then(|p| p.state.lock().error.take());
        if let Some(p) = map.get(&ino) {
            if p.state.lock().ranges.is_empty() {
                map.remove(&ino);
            }
        }
        err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_writes_wait_and_errors_are_reported_once() {
        let wb = Arc::new(WriteBehind::new(1 << 20));
        let a = wb.begin(7, 0, 100).await.unwrap();
        let b = wb.begin(7, 100, 100).await.unwrap();
        assert!(wb.busy(7));
        // Overlaps `a`: waits until it finishes.
        let wb2 = wb.clone();
        let c = tokio::spawn(async move { wb2.begin(7, 50, 10).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!c.is_finished());
        wb.finish(a, Ok(()), 100);
        let c = tokio::time::timeout(Duration::from_secs(5), c)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        wb.finish(b, Err(FsError::NoSpace), 100);
        wb.finish(c, Ok(()), 10);
        assert!(!wb.busy(7));
        assert_eq!(wb.settle(7).await, Err(FsError::NoSpace));
        assert_eq!(wb.settle(7).await, Ok(()));
        assert!(wb.map.lock().is_empty());
    }

    #[tokio::test]
    async fn window_bounds_bytes_in_flight() {
        let wb = Arc::new(WriteBehind::new(250));
        let a = wb.begin(1, 0, 100).await.unwrap();
        let b = wb.begin(1, 100, 100).await.unwrap();
        let wb2 = wb.clone();
        let c = tokio::spawn(async move { wb2.begin(1, 200, 100).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!c.is_finished());
        wb.finish(a, Ok(()), 100);
        let c = c.await.unwrap().unwrap();
        let wb3 = wb.clone();
        let d = tokio::spawn(async move { wb3.drain(1).await });
        wb.finish(b, Ok(()), 100);
        wb.finish(c, Ok(()), 100);
        tokio::time::timeout(Duration::from_secs(5), d)
            .await
            .unwrap()
            .unwrap();
        // A write larger than the window is admitted when alone.
        let big = wb.begin(1, 0, 1000).await.unwrap();
        wb.finish(big, Ok(()), 1000);
    }

    #[tokio::test]
    async fn take_error_reports_a_known_failure_without_waiting() {
        let wb = WriteBehind::new(1 << 20);
        let a = wb.begin(5, 0, 10).await.unwrap();
        let b = wb.begin(5, 10, 10).await.unwrap();
        // `b` still in flight: nothing known yet, and no wait.
        assert_eq!(wb.take_error(5), Ok(()));
        wb.finish(a, Err(FsError::NoSpace), 10);
        assert_eq!(wb.take_error(5), Err(FsError::NoSpace));
        assert_eq!(wb.take_error(5), Ok(()));
        assert!(wb.busy(5));
        wb.finish(b, Ok(()), 10);
        assert_eq!(wb.take_error(5), Ok(()));
        assert!(wb.map.lock().is_empty());
    }

    #[tokio::test]
    async fn an_error_fails_the_next_write() {
        let wb = WriteBehind::new(1 << 20);
        let a = wb.begin(3, 0, 10).await.unwrap();
        wb.finish(a, Err(FsError::Io("disk".into())), 10);
        assert!(matches!(wb.begin(3, 10, 10).await, Err(FsError::Io(_))));
        assert!(wb.map.lock().is_empty());
        let b = wb.begin(3, 10, 10).await.unwrap();
        wb.finish(b, Ok(()), 10);
        assert_eq!(wb.settle(3).await, Ok(()));
    }
}
