//! The committer: the one thread that applies batches and calls sled's flush.
//!
//! sled 0.34.7 deadlocks when several threads flush at once (spacejam/sled#1308: `flush_async` runs
//! `flush` on sled's own I/O pool, and concurrent flushes there end up waiting on buffer writes that
//! the same, now full, pool should do). So nothing but this thread flushes. Writers hand it a job (a
//! batch to apply, or only "make what I wrote durable") and await the reply:
//!
//! ```text
//! writer ─ Job ─▶ queue ─▶ committer: take every queued job → one sled batch per tree → one flush → reply all
//! ```
//!
//! A job is answered once a flush that started after its write has completed, so concurrent writers
//! share one flush (group commit). Writes are applied on this thread too: `apply_batch` takes sled's
//! process-wide write lock, which waits for a running flush; here it never runs beside one, and no
//! runtime worker blocks on it. A job hands its writes as a list ([`Writes`]; a `sled::Batch` cannot
//! be read back), so the writes of every job in a group that go to the same tree become one sled
//! batch, in queue order (a later write of a key wins): sled's cost is mostly per batch (a log
//! reservation, sealing, the write of its buffer), not per key. Should a merged batch fail, its
//! jobs are applied one by one, so each job gets its own answer. Replies are a tokio oneshot for async callers and a std channel for
//! blocking ones. When the thread is gone (the store closed) a job fails with an I/O error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::events::{StoreBatchesApplied, StoreFlushed};
use super::integrity::{self, IntegrityFile};
use super::{StoreError, space};

/// At most this many jobs share one flush, so one reply never waits behind an unbounded queue.
const MAX_GROUP: usize = 4096;
/// Longest a flush waits for more writers to join it (see the group-commit window in `run`).
const MAX_WINDOW: Duration = Duration::from_millis(2);
/// Shortest such wait: enough for a woken writer to send its next write.
const MIN_WINDOW: Duration = Duration::from_micros(200);

/// Writes to one tree, applied atomically on the committer (all or nothing, also across a crash).
pub(super) struct Writes {
    pub tree: sled::Tree,
    /// In order: a later write of the same key wins. `None` removes the key.
    pub ops: Vec<(sled::IVec, Option<sled::IVec>)>,
}

impl Writes {
    pub fn new(tree: sled::Tree) -> Writes {
        Writes {
            tree,
            ops: Vec::new(),
        }
    }

    pub fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.ops.push((key.into(), None));
    }

    fn add_to(&self, batch: &mut sled::Batch) {
        for (key, value) in &self.ops {
            match value {
                Some(value) => batch.insert(key.clone(), value.clone()),
                None => batch.remove(key.clone()),
            }
        }
    }

    /// The same tree (the same handle, not only the same name: a dropped tree's old handle differs
    /// from a new one of that name).
    fn same_tree(&self, other: &sled::Tree) -> bool {
        std::ptr::eq(&*self.tree, &**other)
    }
}

/// Runs on the committer thread once a job's writes were applied (`Ok`) or refused (`Err`), before
/// the flush, whether or not anyone still awaits the job: a writer that keeps an in-memory mirror of
/// its tree updates it here, so a caller that gives up waiting cannot leave the mirror behind the
/// disk. It must be quick and must not wait on the store (the committer would wait on itself).
pub(super) type Applied = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// One unit of work for the committer.
pub(super) struct Job {
    /// Applied on the committer thread before the flush; `None` when the caller wrote itself (a
    /// transaction) or only wants a flush.
    pub batch: Option<Writes>,
    /// Run after `batch` was applied (see [`Applied`]).
    pub applied: Option<Applied>,
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
    /// sled batches applied (a group's writes to one tree are merged into one).
    pub batches: u64,
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
    batches: AtomicU64,
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
    pub fn begin(&self, batch: Option<Writes>, durable: bool) -> Durable {
        let wrote = batch.is_some();
        self.begin_job(batch, durable, wrote)
    }

    /// [`Committer::begin`] with `applied` run on the committer once `batch` was applied.
    pub fn begin_then(&self, batch: Writes, durable: bool, applied: Applied) -> Durable {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Job {
            batch: Some(batch),
            applied: Some(applied),
            durable,
            wrote: true,
            mark: Mark::Later,
            reply: Reply::Async(tx),
        });
        Durable(rx)
    }

    /// [`Committer::begin`] for a caller that wrote through sled itself when `wrote`.
    pub fn begin_job(&self, batch: Option<Writes>, durable: bool, wrote: bool) -> Durable {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Job {
            batch,
            applied: None,
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
        batch: Option<Writes>,
        durable: bool,
        limit: Option<Duration>,
    ) -> Result<(), StoreError> {
        let wrote = batch.is_some();
        self.commit_job(batch, durable, wrote, Mark::Later, limit)
    }

    /// [`Committer::commit_blocking`] with every field of the job given.
    pub fn commit_job(
        &self,
        batch: Option<Writes>,
        durable: bool,
        wrote: bool,
        mark: Mark,
        limit: Option<Duration>,
    ) -> Result<(), StoreError> {
        let _span = tracing::debug_span!("store.commit", durable).entered();
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Job {
            batch,
            applied: None,
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
            batches: self.shared.batches.load(Ordering::Relaxed),
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
        // Held (tests): the jobs queued meanwhile all join this group.
        shared.wait_while_held();
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
        let gate = keeper.gate.clone();
        // A snapshot sees every batch of this group and the generation bump, or none of them.
        let writing = gate.enter();
        let mark = group
            .iter()
            .map(|job| job.mark)
            .max()
            .unwrap_or(Mark::Later);
        let outcomes = apply(&mut group, &mut keeper, shared);
        // A batch was applied: the disk took a write (only that ends a "disk full" spell; a flush
        // with nothing new to write proves nothing).
        let mut applied_any = false;
        let mut hooks = Vec::new();
        for (job, applied) in group.drain(..).zip(outcomes) {
            if applied.is_ok() && job.wrote {
                dirty = true;
                applied_any |= job.batch.is_some();
            }
            if let Some(hook) = job.applied {
                hooks.push((
                    hook,
                    applied.as_ref().map(|_| ()).map_err(StoreError::duplicate),
                ));
            }
            match applied {
                Ok(()) if job.durable || job.mark != Mark::Later => waiting.push(job.reply),
                other => job.reply.send(other),
            }
        }
        if waiting.is_empty() {
            drop(writing);
            run_hooks(hooks);
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
        run_hooks(hooks);
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

/// Applies the group's writes, one sled batch per tree holding every job's writes to it in queue
/// order; returns each job's outcome, in the group's order. A refusal of the disk-space guard is
/// every writing job's answer; a merged batch that fails is applied again job by job, so a job
/// whose own writes are fine is not failed by another's.
fn apply(group: &mut [Job], keeper: &mut Keeper, shared: &Shared) -> Vec<Result<(), StoreError>> {
    let mut outcomes: Vec<Result<(), StoreError>> = group.iter().map(|_| Ok(())).collect();
    if group.iter().all(|job| job.batch.is_none()) {
        return outcomes;
    }
    if let Err(err) = keeper.guard.check() {
        for (job, outcome) in group.iter().zip(&mut outcomes) {
            if job.batch.is_some() {
                *outcome = Err(err.duplicate());
            }
        }
        return outcomes;
    }
    // (tree, merged batch, the jobs in it), trees in the order the group first writes them.
    let mut merged: Vec<(sled::Tree, sled::Batch, Vec<usize>)> = Vec::new();
    for (index, job) in group.iter().enumerate() {
        let Some(writes) = &job.batch else { continue };
        let at = match merged.iter().position(|(tree, ..)| writes.same_tree(tree)) {
            Some(at) => at,
            None => {
                merged.push((writes.tree.clone(), sled::Batch::default(), Vec::new()));
                merged.len() - 1
            }
        };
        let (_, batch, jobs) = &mut merged[at];
        writes.add_to(batch);
        jobs.push(index);
    }
    let mut batches = 0u64;
    for (tree, batch, jobs) in merged {
        batches += 1;
        let result = tree.apply_batch(batch);
        match result {
            Ok(()) => {}
            Err(err) if jobs.len() == 1 => outcomes[jobs[0]] = Err(keeper.guard.classify(err)),
            Err(_) => {
                for index in jobs {
                    let Some(writes) = &group[index].batch else {
                        continue;
                    };
                    let mut own = sled::Batch::default();
                    writes.add_to(&mut own);
                    batches += 1;
                    if let Err(err) = tree.apply_batch(own) {
                        outcomes[index] = Err(keeper.guard.classify(err));
                    }
                }
            }
        }
    }
    shared.batches.fetch_add(batches, Ordering::Relaxed);
    StoreBatchesApplied { batches }.emit();
    outcomes
}

fn run_hooks(hooks: Vec<(Applied, Result<(), StoreError>)>) {
    for (hook, outcome) in hooks {
        hook(outcome.as_ref().map(|_| ()));
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
        let after = store.commit_stats();
        assert_eq!(
            (after.flushes, after.writes),
            (before.flushes, before.writes)
        );
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
        let mut batch = Writes::new(tree.clone());
        batch.insert(b"a".as_slice(), b"1".as_slice());
        committer.commit_blocking(Some(batch), true, None).unwrap();
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

    /// A committer over its own sled database (so a test can drop a tree under it).
    fn raw_committer(dir: &std::path::Path) -> (sled::Db, Committer) {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let keeper = Keeper {
            meta: db.open_tree("meta").unwrap(),
            generation: 0,
            record: None,
            create: None,
            guard: space::Guard::new(dir, 0),
            gate: Default::default(),
        };
        let committer = Committer::start(db.clone(), keeper).unwrap();
        (db, committer)
    }

    fn writes(tree: &sled::Tree, ops: &[(&str, Option<&str>)]) -> Writes {
        let mut writes = Writes::new(tree.clone());
        for (key, value) in ops {
            match value {
                Some(value) => writes.insert(key.as_bytes(), value.as_bytes()),
                None => writes.remove(key.as_bytes()),
            }
        }
        writes
    }

    fn value(tree: &sled::Tree, key: &str) -> Option<String> {
        tree.get(key)
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    /// Holds the committer, hands it `jobs` (each a Durable), waits until all are queued, and
    /// releases it: they form one group.
    fn one_group(committer: &Committer, jobs: impl FnOnce() -> Vec<Durable>) -> Vec<Durable> {
        let submitted = committer.submitted();
        committer.hold(true);
        let durables = jobs();
        let queued = submitted + durables.len() as u64;
        wait_for("the jobs to queue", || committer.submitted() == queued);
        committer.hold(false);
        durables
    }

    #[test]
    fn a_groups_writes_to_one_tree_are_one_sled_batch_applied_in_queue_order() {
        let dir = tempfile::tempdir().unwrap();
        let (db, committer) = raw_committer(dir.path());
        let a = db.open_tree("a").unwrap();
        let b = db.open_tree("b").unwrap();
        let before = committer.stats();
        let durables = one_group(&committer, || {
            vec![
                committer.begin(
                    Some(writes(&a, &[("k", Some("1")), ("x", Some("1"))])),
                    true,
                ),
                committer.begin(Some(writes(&b, &[("k", Some("b"))])), true),
                // Later in the queue: overwrites k, removes x.
                committer.begin(Some(writes(&a, &[("k", Some("2")), ("x", None)])), true),
                committer.begin(Some(writes(&a, &[("y", Some("3"))])), true),
            ]
        });
        for mut durable in durables {
            futures::executor::block_on(durable.wait()).unwrap();
        }
        let after = committer.stats();
        assert_eq!(after.writes - before.writes, 4);
        assert_eq!(after.flushes - before.flushes, 1, "one flush for the group");
        assert_eq!(after.batches - before.batches, 2, "one sled batch per tree");
        assert_eq!(value(&a, "k").as_deref(), Some("2"), "the later write wins");
        assert_eq!(value(&a, "x"), None, "the later removal wins");
        assert_eq!(value(&a, "y").as_deref(), Some("3"));
        assert_eq!(value(&b, "k").as_deref(), Some("b"));
        assert!(committer.stop(Duration::from_secs(10)));
    }

    #[test]
    fn a_job_on_a_dropped_tree_fails_alone_and_every_job_hears_its_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let (db, committer) = raw_committer(dir.path());
        let kept = db.open_tree("kept").unwrap();
        let gone = db.open_tree("gone").unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let hook = |name: &'static str| -> Applied {
            let heard = heard.clone();
            Box::new(move |outcome: Result<(), &StoreError>| {
                heard.lock().unwrap().push((name, outcome.is_ok()));
            })
        };
        let mut durables = one_group(&committer, || {
            let durables = vec![
                committer.begin_then(writes(&kept, &[("k", Some("1"))]), true, hook("first")),
                committer.begin_then(writes(&gone, &[("k", Some("1"))]), true, hook("gone")),
                committer.begin_then(writes(&kept, &[("j", Some("2"))]), true, hook("third")),
            ];
            assert!(db.drop_tree("gone").unwrap());
            durables
        });
        // A caller that gave up: its write lands and its hook runs all the same.
        drop(durables.pop());
        let results: Vec<_> = durables
            .iter_mut()
            .map(|durable| futures::executor::block_on(durable.wait()))
            .collect();
        assert!(results[0].is_ok(), "{:?}", results[0]);
        let err = results[1].as_ref().unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        wait_for("every hook", || heard.lock().unwrap().len() == 3);
        assert_eq!(
            *heard.lock().unwrap(),
            vec![("first", true), ("gone", false), ("third", true)]
        );
        assert_eq!(value(&kept, "k").as_deref(), Some("1"));
        assert_eq!(value(&kept, "j").as_deref(), Some("2"));
        assert!(committer.stop(Duration::from_secs(10)));
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
