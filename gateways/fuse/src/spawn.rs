//! Starting request tasks with as few thread hand-offs as possible: a task is
//! polled at once on the thread that starts it (its first brick message
//! leaves from there), and only handed to the runtime when something wakes
//! it, from the thread that woke it (usually the runtime worker that read the
//! brick's reply), so no idle worker is woken just to find it still waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use parking_lot::Mutex;

type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A task polled once and parked until its first wake-up.
struct Parked {
    state: Mutex<ParkedState>,
    rt: tokio::runtime::Handle,
}

#[derive(Default)]
struct ParkedState {
    task: Option<Task>,
    /// Woken before (or while) the task was parked: spawn it at once.
    woken: bool,
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = {
            let mut st = self.state.lock();
            st.woken = true;
            st.task.take()
        };
        if let Some(t) = task {
            self.rt.spawn(t);
        }
    }
}

/// Runs `task` on `rt`: polls it here first; if it has to wait, it is
/// spawned on the runtime when it is first woken.
pub(crate) fn start(rt: &tokio::runtime::Handle, task: impl Future<Output = ()> + Send + 'static) {
    let mut task: Task = Box::pin(task);
    let _ctx = rt.enter();
    let parked = Arc::new(Parked {
        state: Mutex::new(ParkedState::default()),
        rt: rt.clone(),
    });
    let waker = Waker::from(parked.clone());
    let mut cx = Context::from_waker(&waker);
    if task.as_mut().poll(&mut cx).is_ready() {
        return;
    }
    let mut st = parked.state.lock();
    if st.woken {
        drop(st);
        rt.spawn(task);
    } else {
        st.task = Some(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn runs_ready_waiting_and_early_woken_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Completes on the first poll.
        let t = tx.clone();
        start(rt.handle(), async move { t.send(1).unwrap() });
        // Waits for a timer: spawned when the timer fires.
        let t = tx.clone();
        start(rt.handle(), async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            t.send(2).unwrap();
        });
        // Woken during its first poll (yield_now wakes at once).
        let t = tx.clone();
        start(rt.handle(), async move {
            tokio::task::yield_now().await;
            t.send(3).unwrap();
        });
        let mut got: Vec<i32> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
    }
}
