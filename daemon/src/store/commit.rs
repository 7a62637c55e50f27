//! The committer: the one thread that applies batches and calls sled's flush.
//!
//! sled 0.34.7 deadlocks when several threads flush at once (spacejam/sled#1308: `flush_async` runs
//! `flush` on sled's own I/O pool, and concurrent flushes there end up waiting on buffer writes that
//! the same, now full, pool should do). So nothing but this thread flushes. Writers hand it a job (a
//! batch to apply, or only "make what I wrote durable") and await the reply:
//!
//! ```text
//! writer ─ Job ─▶ queue ─▶ committer: take every queued job → apply each batch → one flush → reply all
//! ```
//!
//! A job is answered once a flush that started after its write has completed, so concurrent writers
//! share one flush (group commit). Batches are applied on this thread too: `apply_batch` takes sled's
//! process-wide write lock, which waits for a running flush; here it never runs beside one, and no
//! runtime worker blocks on it. Replies are a tokio oneshot for async callers and a std channel for
//! blocking ones. When the thread is gone (the store closed) a job fails with an I/O error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::events::StoreFlushed;
use super::integrity::{self, IntegrityFile};
use super::{StoreError, space};

/// At most this many jobs share one flush, so one reply never waits behind an unbounded queue.
const MAX_GROUP: usize = 4096;
/// Longest a flush waits for more writers to join it (see the group-commit window in `run`).
const MAX_WINDOW: Duration = Duration::from_millis(2);
/// Shortest such wait: enough for a woken writer to send its next write.
const MIN_WINDOW: Duration = Duration::from_micros(200);

/// One unit of work for the committer.
pub(super) struct Job {
    /// Applied on the committer thread before the flush; `None` when the caller wrote itself (a
    /// transaction) or only wants a flush.
    pub batch: Option<(sled::Tree, sled::Batch)>,
    /// Flush before replying (the `always` policy, bookkeeping, an explicit flush).
    pub durable: bool,
    /// The caller wrote through sled itself (a transaction, a removal) and asks for the flush that
    /// makes it durable: counted as a write (generation, disk-space reserve).
    pub wrote: bool,
    pub mark: Mark,
    pub reply: Reply,
}

/// What the committer does with the integrity record after this job's flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Mark {
    /// Within [`integrity::CHECKPOINT_INTERVAL`] of the flush.
    Later,
    /// Right after the flush (the store's open).
    Checkpoint,
    /// A clean stop: the exact per-tree state, `clean = true`. Nothing is written after it.
    Seal,
}

pub(super) enum Reply {
    Async(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    Blocking(mpsc::SyncSender<Result<(), StoreError>>),
}

impl Reply {
    fn send(self, result: Result<(), StoreError>) {
        // The caller may have gone away (a cancelled call): its write still landed, nobody waits.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// The point at which a write handed to the committer is applied (and, if asked, flushed).
#[derive(Debug)]
pub struct Durable(tokio::sync::oneshot::Receiver<Result<(), StoreError>>);

impl Durable {
    /// Waits for the committer's answer. Cancel-safe: a wait given up (a timeout) can be resumed by
    /// calling it again; dropping the `Durable` does not undo the write. Once it has returned, the
    /// answer is spent: do not wait again.
    pub async fn wait(&mut self) -> Result<(), StoreError> {
        use tracing::Instrument as _;
        (&mut self.0)
            .instrument(tracing::debug_span!("store.commit"))
            .await
            .unwrap_or_else(|_| Err(stopped()))
    }
}

/// What the committer has done, for tests and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// sled flushes (each one fsync of the log).
    pub flushes: u64,
    /// Jobs whose reply waited for a flush; `writes / flushes` is the mean group size.
    pub writes: u64,
}

/// The handle every [`super::Store`] and [`super::Tree`] shares (through `Handles`).
pub(super) struct Committer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<(std::thread::JoinHandle<()>, mpsc::Receiver<()>)>>,
    shared: Arc<Shared>,
    space: tokio::sync::watch::Receiver<bool>,
    /// The guard's reserve (only tests change it).
    reserve: Arc<AtomicU64>,
}

/// What the committer keeps besides sled.
pub(super) struct Keeper {
    /// The `meta` tree, where each flush that carries writes bumps the generation.
    pub meta: sled::Tree,
    pub generation: u64,
    /// The integrity record, once created; `None` for a committer tested on its own.
    pub record: Option<IntegrityFile>,
    /// The record to create at the first checkpoint (after the store's opening flush).
    pub create: Option<(std::path::PathBuf, integrity::IntegrityRecord)>,
    pub guard: space::Guard,
    /// Held shared while batches are applied and the generation bumped (see `snapshot`).
    pub gate: Arc<super::snapshot::WriteGate>,
}

/// Counters and the test gate, shared with the thread.
#[derive(Default)]
struct Shared {
    /// Jobs handed in (tests wait for a number of queued writers).
    submitted: AtomicU64,
    flushes: AtomicU64,
    writes: AtomicU64,
    /// The boot count the integrity record names (set by `record_boot`).
    boot_count: AtomicU64,
    /// The generation of the last flush that carried writes.
    generation: AtomicU64,
    /// While `true` the committer takes no jobs (tests: a store that stalls).
    held: Mutex<bool>,
    released: Condvar,
}

impl Shared {
    fn wait_while_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Committer {
    /// Starts the `store-committer` thread over `db`, keeping `keeper`'s integrity record and disk-space
    /// guard.
    pub fn start(db: sled::Db, keeper: Keeper) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (exited_tx, exited_rx) = mpsc::sync_channel::<()>(1);
        let shared = Arc::new(Shared::default());
        shared
            .generation
            .store(keeper.generation, Ordering::Relaxed);
        let space = keeper.guard.watch();
        let reserve = keeper.guard.reserve();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("store-committer".to_owned())
            .spawn(move || {
                run(&db, &rx, &thread_shared, keeper);
                // sled's files are released once its last handle goes: this one goes first.
                drop(db);
                let _ = exited_tx.send(());
            })?;
        Ok(Committer {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some((handle, exited_rx))),
            shared,
            space,
            reserve,
        })
    }

    /// Test hook: a new disk-space reserve, as if the filesystem filled up or was freed.
    #[cfg(test)]
    pub fn set_reserve(&self, reserve: u64) {
        self.reserve.store(reserve, Ordering::Relaxed);
    }

    /// The free space below which writes are refused.
    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    /// `true` while writes are refused for lack of disk space.
    pub fn space_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.space.clone()
    }

    pub fn set_boot_count(&self, boot_count: u64) {
        self.shared.boot_count.store(boot_count, Ordering::Relaxed);
    }

    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// Queues a job; if the committer has stopped the job is answered at once with an error.
    pub fn submit(&self, job: Job) {
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        let sender = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let rejected = match sender {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = rejected {
            job.reply.send(Err(stopped()));
        }
    }

    /// Queues `batch` (if any), with a flush when `durable`; the returned [`Durable`] resolves once
    /// that is done.
    pub fn begin(&self, batch: Option<(sled::Tree, sled::Batch)>, durable: bool) -> Durable {
        let wrote = batch.is_some();
        self.begin_job(batch, durable, wrote)
    }

    /// [`Committer::begin`] for a caller that wrote through sled itself when `wrote`.
    pub fn begin_job(
        &self,
        batch: Option<(sled::Tree, sled::Batch)>,
        durable: bool,
        wrote: bool,
    ) -> Durable {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Job {
            batch,
            durable,
            wrote,
            mark: Mark::Later,
            reply: Reply::Async(tx),
        });
        Durable(rx)
    }

    /// Blocking [`Committer::commit`], for callers outside the runtime's hot path (start, stop,
    /// tests). `limit` bounds the wait (the stop must end even when the disk does not answer).
    pub fn commit_blocking(
        &self,
        batch: Option<(sled::Tree, sled::Batch)>,
        durable: bool,
        limit: Option<Duration>,
    ) -> Result<(), StoreError> {
        let wrote = batch.is_some();
        self.commit_job(batch, durable, wrote, Mark::Later, limit)
    }

    /// [`Committer::commit_blocking`] with every field of the job given.
    pub fn commit_job(
        &self,
        batch: Option<(sled::Tree, sled::Batch)>,
        durable: bool,
        wrote: bool,
        mark: Mark,
        limit: Option<Duration>,
    ) -> Result<(), StoreError> {
        let _span = tracing::debug_span!("store.commit", durable).entered();
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Job {
            batch,
            durable,
            wrote,
            mark,
            reply: Reply::Blocking(tx),
        });
        match limit {
            None => rx.recv().unwrap_or_else(|_| Err(stopped())),
            Some(limit) => match rx.recv_timeout(limit) {
                Ok(result) => result,
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(stopped()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    Err(StoreError::Io(sled::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the store did not commit within {limit:?}"),
                    ))))
                }
            },
        }
    }

    pub fn stats(&self) -> CommitStats {
        CommitStats {
            flushes: self.shared.flushes.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// Ends the thread once it has answered every queued job, waiting at most `limit` for it.
    /// Returns whether it ended.
    pub fn stop(&self, limit: Duration) -> bool {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        let Some((handle, exited)) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            return true;
        };
        match exited.recv_timeout(limit) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                true
            }
            // Stuck in sled: leave the thread behind rather than the caller.
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }

    /// Test hook: while held, the committer takes no jobs, as a wedged disk or sled would.
    #[cfg(test)]
    pub fn hold(&self, held: bool) {
        *self.shared.held.lock().unwrap_or_else(|e| e.into_inner()) = held;
        self.shared.released.notify_all();
    }

    #[cfg(test)]
    pub(super) fn submitted(&self) -> u64 {
        self.shared.submitted.load(Ordering::Relaxed)
    }
}

impl Drop for Committer {
    /// Without [`Committer::stop`] (a store dropped, not closed): the thread ends on its own once
    /// it drained the queue; nobody waits for it.
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

fn stopped() -> StoreError {
    StoreError::Io(sled::Error::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the store is closed (its committer has stopped)",
    )))
}

/// The committer loop: runs until every sender is gone and the queue is empty.
fn run(db: &sled::Db, jobs: &mpsc::Receiver<Job>, shared: &Shared, mut keeper: Keeper) {
    let mut group = Vec::new();
    let mut waiting = Vec::new();
    // Writes applied since the last generation bump.
    let mut dirty = false;
    // Since when a flushed generation waits for the integrity record to name it.
    let mut unrecorded: Option<Instant> = None;
    // The last flush: how many writes it answered and how long it took (the group-commit window).
    let mut last_group = 0u64;
    let mut last_flush = Duration::ZERO;
    loop {
        let first = match unrecorded {
            None => jobs.recv().ok(),
            Some(since) => {
                match jobs
                    .recv_timeout(integrity::CHECKPOINT_INTERVAL.saturating_sub(since.elapsed()))
                {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // On failure (logged), try again an interval later, not at once.
                        unrecorded = match keeper.checkpoint(db, shared, false) {
                            Ok(()) => None,
                            Err(_) => Some(Instant::now()),
                        };
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(first) = first else { break };
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Group-commit window: when the last flush answered several writers, they are writing
        // concurrently and their next writes are on the way; waiting a fraction of a flush for them
        // lets one flush answer many. A lone writer (last group of one) never waits.
        if last_group >= 2 {
            let deadline = Instant::now() + last_flush.clamp(MIN_WINDOW, MAX_WINDOW);
            while group.len() < MAX_GROUP {
                let left = deadline.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(left) {
                    Ok(job) if !left.is_zero() => group.push(job),
                    Ok(job) => {
                        group.push(job);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        shared.wait_while_held();
        let gate = keeper.gate.clone();
        // A snapshot sees every batch of this group and the generation bump, or none of them.
        let writing = gate.enter();
        let mut mark = Mark::Later;
        // A batch was applied: the disk took a write (only that ends a "disk full" spell; a flush
        // with nothing new to write proves nothing).
        let mut applied_any = false;
        for job in group.drain(..) {
            mark = mark.max(job.mark);
            let had_batch = job.batch.is_some();
            let applied = match job.batch {
                Some((tree, batch)) => keeper.guard.check().and_then(|()| {
                    tree.apply_batch(batch)
                        .map_err(|e| keeper.guard.classify(e))
                }),
                None => Ok(()),
            };
            if applied.is_ok() && job.wrote {
                dirty = true;
                applied_any |= had_batch;
            }
            match applied {
                Ok(()) if job.durable || job.mark != Mark::Later => waiting.push(job.reply),
                other => job.reply.send(other),
            }
        }
        if waiting.is_empty() {
            drop(writing);
            continue;
        }
        if dirty {
            // The generation travels in the same flush as the writes it counts.
            let next = shared.generation.load(Ordering::Relaxed) + 1;
            if let Ok(bytes) = super::encode(&next)
                && keeper.meta.insert(super::GENERATION_KEY, bytes).is_ok()
            {
                shared.generation.store(next, Ordering::Relaxed);
                dirty = false;
            }
        }
        drop(writing);
        // Every write in `waiting` finished before this flush starts.
        let started = Instant::now();
        let mut result = db.flush().map(drop).map_err(|e| keeper.guard.classify(e));
        let writes = waiting.len() as u64;
        last_group = writes;
        last_flush = started.elapsed();
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        shared.writes.fetch_add(writes, Ordering::Relaxed);
        StoreFlushed {
            writes,
            duration: started.elapsed(),
            ok: result.is_ok(),
        }
        .emit();
        if result.is_ok() {
            if applied_any {
                keeper.guard.written();
            }
            let recorded = keeper.recorded_generation();
            if mark != Mark::Later
                || (recorded.is_some_and(|g| g != shared.generation.load(Ordering::Relaxed))
                    && unrecorded.get_or_insert_with(Instant::now).elapsed()
                        >= integrity::CHECKPOINT_INTERVAL)
            {
                let checkpoint = keeper.checkpoint(db, shared, mark == Mark::Seal);
                match checkpoint {
                    Ok(()) => unrecorded = None,
                    Err(err) if mark != Mark::Later => result = Err(err),
                    Err(_) => {}
                }
            }
        }
        for reply in waiting.drain(..) {
            reply.send(result.as_ref().map(|_| ()).map_err(StoreError::duplicate));
        }
    }
    if unrecorded.is_some() {
        let _ = keeper.checkpoint(db, shared, false);
    }
}

impl Keeper {
    fn recorded_generation(&self) -> Option<u64> {
        self.record.as_ref().map(|r| r.record().generation)
    }

    /// Writes the integrity record for the generation on disk now; a seal adds every tree's state.
    fn checkpoint(&mut self, db: &sled::Db, shared: &Shared, seal: bool) -> Result<(), StoreError> {
        if let Some((dir, first)) = self.create.take() {
            let created = IntegrityFile::create(&dir, first.clone()).map_err(|err| {
                self.create = Some((dir.clone(), first));
                tracing::warn!(error = %err, "store: cannot create the integrity record");
                StoreError::Io(sled::Error::Io(err))
            })?;
            self.record = Some(created);
        }
        let Some(record) = self.record.as_mut() else {
            return Ok(());
        };
        let trees = if seal {
            super::tree_marks(db)?
        } else {
            Default::default()
        };
        let generation = shared.generation.load(Ordering::Relaxed);
        let boot_count = shared.boot_count.load(Ordering::Relaxed);
        record
            .update(|r| {
                r.generation = generation;
                r.boot_count = r.boot_count.max(boot_count);
                r.clean = seal;
                r.trees = trees;
            })
            .map_err(|err| {
                tracing::warn!(error = %err, "store: cannot write the integrity record");
                StoreError::Io(sled::Error::Io(err))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::{FlushPolicy, StoreConfig};
    use crate::store::{Store, trees};

    fn open(dir: &std::path::Path, flush: FlushPolicy) -> Store {
        let config = StoreConfig {
            flush,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        };
        Store::open(dir, &config).unwrap()
    }

    /// Polls `done` every few milliseconds until it holds; fails after 10 s.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn concurrent_writers_share_flushes() {
        const WRITERS: u64 = 32;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), FlushPolicy::Always);
        let tree = store.tree(trees::EPISODIC).unwrap();
        let before = store.commit_stats();
        let submitted = store.handles.committer.submitted();
        // Held: every writer queues its job before the committer takes any.
        store.hold_commits(true);
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| {
                let tree = tree.clone();
                std::thread::spawn(move || tree.put(&i.to_be_bytes(), &i))
            })
            .collect();
        wait_for("every writer to queue its write", || {
            store.handles.committer.submitted() == submitted + WRITERS
        });
        store.hold_commits(false);
        for writer in writers {
            writer.join().unwrap().unwrap();
        }
        let after = store.commit_stats();
        assert_eq!(after.writes - before.writes, WRITERS);
        // The committer may have taken the first job before the hold; the rest share one flush.
        let flushes = after.flushes - before.flushes;
        assert!(
            (1..=2).contains(&flushes),
            "{WRITERS} writers took {flushes} flushes"
        );
        assert_eq!(tree.len(), WRITERS as usize);
    }

    #[tokio::test]
    async fn a_write_is_flushed_when_its_wait_returns_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), FlushPolicy::Always);
            let tree = store.tree(trees::TOKENS_ISSUED).unwrap();
            let before = store.commit_stats();
            tree.put_async(b"k", &7u64).await.unwrap();
            let after = store.commit_stats();
            // Answered by a flush of its own group: it was applied before that flush started.
            assert_eq!(after.writes - before.writes, 1);
            assert_eq!(after.flushes - before.flushes, 1);
            drop(tree);
            store.close().unwrap();
        }
        let store = open(dir.path(), FlushPolicy::Always);
        let tree = store.tree(trees::TOKENS_ISSUED).unwrap();
        assert_eq!(tree.get::<u64>(b"k").unwrap(), Some(7));
    }

    #[tokio::test]
    async fn the_interval_policy_answers_after_the_write_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), FlushPolicy::Interval);
        let tree = store.tree(trees::EPISODIC).unwrap();
        let before = store.commit_stats();
        tree.put_async(b"k", &1u64).await.unwrap();
        assert_eq!(tree.get::<u64>(b"k").unwrap(), Some(1));
        assert_eq!(store.commit_stats(), before);
        // The flusher's explicit flush goes through the committer too.
        store.flush_async().await.unwrap();
        assert_eq!(store.commit_stats().flushes, before.flushes + 1);
    }

    #[test]
    fn stop_ends_the_thread_and_later_writes_fail_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let tree = db.open_tree("t").unwrap();
        let keeper = Keeper {
            meta: db.open_tree("meta").unwrap(),
            generation: 0,
            record: None,
            create: None,
            guard: space::Guard::new(dir.path(), 0),
            gate: Default::default(),
        };
        let committer = Committer::start(db, keeper).unwrap();
        let mut batch = sled::Batch::default();
        batch.insert(b"a".as_slice(), b"1".as_slice());
        committer
            .commit_blocking(Some((tree.clone(), batch)), true, None)
            .unwrap();
        assert!(committer.stop(Duration::from_secs(10)), "the thread ended");
        let err = committer
            .commit_blocking(None, true, Some(Duration::from_secs(10)))
            .unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        let err = futures::executor::block_on(committer.begin(None, true).wait()).unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }

    #[test]
    fn a_blocking_wait_with_a_limit_gives_up_on_a_stalled_committer() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), FlushPolicy::Always);
        store.hold_commits(true);
        let err = store
            .handles
            .committer
            .commit_blocking(None, true, Some(Duration::from_millis(20)))
            .unwrap_err();
        assert!(err.to_string().contains("did not commit"), "{err}");
        store.hold_commits(false);
        store.close().unwrap();
    }

    /// The rule behind the committer: sled's flush is called in this file and nowhere else.
    #[test]
    fn only_the_committer_calls_sleds_flush() {
        let mut offenders = Vec::new();
        for (relative, text) in crate::testing::sources() {
            if relative == "store/commit.rs" {
                continue;
            }
            for pattern in ["db.flush", "tree.flush", "pagecache.flush"] {
                if text.contains(pattern) {
                    offenders.push(format!("{relative}: {pattern}"));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "sled flushed outside the committer: {offenders:?}"
        );
    }
}
