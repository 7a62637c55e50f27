//! Every task the daemon spawns goes through [`Tasks`]: a tokio-util `TaskTracker` (so stop can wait for
//! completion apart from signalling it) plus the names of what is still running, so a slow stop can say
//! who is late. Nothing is detached: blocking work goes through [`Tasks::spawn_blocking`] and is waited
//! for at stop like the rest.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<HashMap<u64, &'static str>>>,
    next_id: Arc<AtomicU64>,
}

struct Running {
    id: u64,
    running: Arc<Mutex<HashMap<u64, &'static str>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.id);
        }
    }
}

impl Tasks {
    pub fn new() -> Self {
        Tasks::default()
    }

    /// Spawns a named task on the tracker.
    pub fn spawn<F>(&self, name: &'static str, future: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let guard = self.enter(name);
        self.tracker.spawn(async move {
            let _guard = guard;
            future.await;
        })
    }

    /// Runs blocking work (CPU-bound parsing, a synchronous store scan) on the blocking pool, named and
    /// tracked like any task: [`Tasks::wait`] waits for it too, so stop never leaves a blocking call
    /// behind. The closure cannot be cancelled; keep it bounded.
    pub fn spawn_blocking<F, T>(&self, name: &'static str, f: F) -> tokio::task::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let guard = self.enter(name);
        self.tracker.spawn_blocking(move || {
            let _guard = guard;
            f()
        })
    }

    fn enter(&self, name: &'static str) -> Running {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, name);
        }
        Running {
            id,
            running: self.running.clone(),
        }
    }

    /// Names of the tasks still running, with counts: `{"grpc.handshake": 3, "store.flusher": 1}`.
    pub fn running(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        if let Ok(running) = self.running.lock() {
            for name in running.values() {
                *counts.entry(*name).or_insert(0) += 1;
            }
        }
        counts
    }

    /// No new tasks after this; [`Tasks::wait`] returns once the running ones end.
    pub fn close(&self) {
        self.tracker.close();
    }

    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_running_tasks_until_they_end() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("waiter", async move {
            let _ = rx.await;
        });
        tasks.spawn("quick", async {});
        tasks.close();
        // "quick" may or may not have finished yet; "waiter" cannot have.
        assert_eq!(tasks.running().get("waiter"), Some(&1));
        tx.send(()).unwrap();
        tasks.wait().await;
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn stop_waits_for_blocking_work() {
        let tasks = Tasks::new();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let handle = tasks.spawn_blocking("blocking.job", move || {
            released.recv().unwrap();
            7
        });
        tasks.close();
        assert_eq!(tasks.running().get("blocking.job"), Some(&1));
        let mut wait = Box::pin(tasks.wait());
        // Not done while the blocking closure still runs.
        assert!(futures::poll!(wait.as_mut()).is_pending());
        release.send(()).unwrap();
        wait.await;
        assert!(tasks.running().is_empty());
        assert_eq!(handle.await.unwrap(), 7);
    }
}
