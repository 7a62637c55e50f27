//! Every task the daemon spawns goes through [`Tasks`]: a tokio-util `TaskTracker` (so stop can wait for
//! completion apart from signalling it) plus the names of what is still running, so a slow stop can say
//! who is late. Nothing is detached.

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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, name);
        }
        let guard = Running {
            id,
            running: self.running.clone(),
        };
        self.tracker.spawn(async move {
            let _guard = guard;
            future.await;
        })
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
}
