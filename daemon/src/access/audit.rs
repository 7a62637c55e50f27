//! The audit log: every policy and guardrail decision, every call the authorization layer refuses
//! and every token change, appended to the `audit` tree in sequence order.
//!
//! Writes happen in the background: a decision is queued (a bounded channel) and the `audit-writer`
//! worker appends queued records in batches (one flush per batch under `flush = "always"`), so a
//! decision never waits for a disk. The writer runs under the supervisor (critical, permanent): a
//! panic restarts it with backoff, and the queue, owned by the worker rather than one incarnation,
//! survives the restart. While no incarnation runs, fail-closed decisions are denied; other records
//! wait in the queue for the next one. Only the final stop closes the queue, after writing what it
//! holds. Actions listed in `[audit] fail_closed_actions` (default `secrets.*`) are
//! the exception: their decision is only answered once its record is on disk, and if it cannot be
//! written the answer is a denial (`audit-unavailable`). Other decisions whose record cannot be
//! queued are answered and counted (`brainstem_audit_unrecorded_total`).
//!
//! Records carry who asked, about whom, what action on what resource, the answer and its reasons.
//! Never a secret value: callers pass names and paths, not contents.
//!
//! Retention: beyond `max_records` the oldest are trimmed after each batch; records older than
//! `max_age_seconds` are trimmed every minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::access::authz::pattern_matches_family;
use crate::access::config::AuditConfig;
use crate::access::events::{AuditTrimmed, AuditUnrecorded, AuditWritten};
use crate::runtime::events::ErrorOccurred;
use crate::runtime::tasks::Tasks;
use crate::store::{Record, Store, StoreError, Tree, trees};
use crate::supervisor::{ActorError, ActorResult, Worker, WorkerContext, WorkerPolicy};

/// Most records one query returns, and most it scans.
pub const MAX_QUERY_LIMIT: usize = 1000;
const MAX_QUERY_SCAN: usize = 100_000;
const BATCH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A Policy.Check / BatchCheck decision.
    Policy,
    /// A Guardrails decision.
    Guardrail,
    /// A call the authorization layer refused (missing capability, rate limit, bad token).
    Access,
    /// A capability token issued, attenuated or revoked.
    Token,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Policy => "policy",
            AuditKind::Guardrail => "guardrail",
            AuditKind::Access => "access",
            AuditKind::Token => "token",
        }
    }

    pub fn parse(text: &str) -> Option<AuditKind> {
        [
            AuditKind::Policy,
            AuditKind::Guardrail,
            AuditKind::Access,
            AuditKind::Token,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Assigned by the writer; 0 until written.
    pub seq: u64,
    pub time_unix_ms: u64,
    pub decision_id: String,
    pub kind: AuditKind,
    pub caller: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub allowed: bool,
    pub reasons: Vec<String>,
    pub correlation_id: String,
}

impl Record for AuditRecord {
    const VERSION: u8 = 1;
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit log is not accepting records (stopping or failed)")]
    Closed,
    #[error("the audit record could not be written")]
    WriteFailed,
}

struct Pending {
    record: AuditRecord,
    written: Option<oneshot::Sender<bool>>,
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub after: u64,
    pub newest_first: bool,
    pub before: u64,
    pub limit: usize,
    pub principal: String,
    pub action: String,
    pub kind: Option<AuditKind>,
    pub allowed: Option<bool>,
    pub since_unix_ms: u64,
    pub until_unix_ms: u64,
}

pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    tree: Tree,
    fail_closed: Vec<String>,
    healthy: Arc<AtomicBool>,
    /// Whether an incarnation of the writer is running.
    writer_running: watch::Receiver<bool>,
    /// Where queries run their blocking scans.
    tasks: Tasks,
    id_prefix: u32,
    next_id: AtomicU64,
}

impl AuditLog {
    /// Opens the tree. Records are queued from now on; they are written once the returned
    /// [`AuditWriter`] runs under the supervisor.
    pub fn open(
        store: &Store,
        config: &AuditConfig,
        tasks: &Tasks,
    ) -> Result<(Arc<AuditLog>, AuditWriter), StoreError> {
        let tree = store.tree(trees::AUDIT)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity as usize);
        let (running_tx, running_rx) = watch::channel(false);
        let healthy = Arc::new(AtomicBool::new(true));
        let mut prefix = [0u8; 4];
        // A per-run prefix keeps decision ids unique across restarts; a failed random source only
        // makes them less unique, never wrong.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut prefix);
        let log = Arc::new(AuditLog {
            tx,
            tree: tree.clone(),
            fail_closed: config.fail_closed_actions.clone(),
            healthy: healthy.clone(),
            writer_running: running_rx,
            tasks: tasks.clone(),
            id_prefix: u32::from_be_bytes(prefix),
            next_id: AtomicU64::new(0),
        });
        let writer = AuditWriter {
            queue: tokio::sync::Mutex::new(rx),
            tree,
            max_records: config.max_records as usize,
            max_age: Duration::from_secs(config.max_age_seconds),
            healthy,
            running: running_tx,
        };
        Ok((log, writer))
    }

    /// The daemon's task set, for blocking work done on the log's behalf (queries).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// A new decision id: unique within this run, with a random per-run prefix.
    pub fn decision_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:012x}", self.id_prefix)
    }

    /// Must a decision on `action` be on disk before it is answered? A resource scope in a
    /// `fail_closed_actions` pattern (which names actions, not resources) is ignored, so such a
    /// pattern errs towards failing closed.
    pub fn fails_closed(&self, action: &str) -> bool {
        self.fail_closed
            .iter()
            .any(|p| pattern_matches_family(p, action))
    }

    /// Queues a record without waiting. An error means the record is lost (and counted).
    pub fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        let kind = record.kind;
        let result = self
            .tx
            .try_send(Pending {
                record,
                written: None,
            })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => AuditError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => AuditError::Closed,
            });
        if let Err(err) = &result {
            AuditUnrecorded {
                kind: kind.as_str(),
                reason: err,
            }
            .emit();
        }
        result
    }

    /// Queues a record and waits until it is written (fail-closed decisions).
    pub async fn record_durable(&self, record: AuditRecord) -> Result<(), AuditError> {
        let kind = record.kind;
        let (written, done) = oneshot::channel();
        let result = async {
            if !self.healthy.load(Ordering::Acquire) {
                return Err(AuditError::WriteFailed);
            }
            if !*self.writer_running.borrow() {
                return Err(AuditError::Closed);
            }
            self.tx
                .try_send(Pending {
                    record,
                    written: Some(written),
                })
                .map_err(|err| match err {
                    mpsc::error::TrySendError::Full(_) => AuditError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => AuditError::Closed,
                })?;
            // The writer may end (stop, panic) before it reaches this record: then deny rather than
            // wait for an incarnation that may never come.
            let mut running = self.writer_running.clone();
            tokio::select! {
                biased;
                written = done => match written {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(AuditError::WriteFailed),
                    Err(_) => Err(AuditError::Closed),
                },
                _ = running.wait_for(|running| !*running) => Err(AuditError::Closed),
            }
        }
        .await;
        if let Err(err) = &result {
            AuditUnrecorded {
                kind: kind.as_str(),
                reason: err,
            }
            .emit();
        }
        result
    }

    /// Records matching `query`, and the cursor to continue from.
    pub fn query(&self, query: &AuditQuery) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        let limit = match query.limit {
            0 => 100,
            n => n.min(MAX_QUERY_LIMIT),
        };
        let iter = if query.newest_first {
            let end = if query.before == 0 {
                u64::MAX
            } else {
                query.before
            };
            self.tree.range::<AuditRecord, _>(..key(end), true)
        } else {
            self.tree
                .range::<AuditRecord, _>(key(query.after.saturating_add(1)).., false)
        };
        let mut records = Vec::new();
        let mut cursor = if query.newest_first {
            query.before
        } else {
            query.after
        };
        for entry in iter.take(MAX_QUERY_SCAN) {
            let (_, record) = entry?;
            cursor = record.seq;
            if query.matches(&record) {
                records.push(record);
                if records.len() == limit {
                    break;
                }
            }
        }
        Ok((records, cursor))
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

impl AuditQuery {
    fn matches(&self, r: &AuditRecord) -> bool {
        (self.principal.is_empty() || r.principal == self.principal || r.caller == self.principal)
            && (self.action.is_empty()
                || r.action == self.action
                || r.action
                    .strip_prefix(self.action.as_str())
                    .is_some_and(|rest| rest.starts_with('.')))
            && self.kind.is_none_or(|k| k == r.kind)
            && self.allowed.is_none_or(|a| a == r.allowed)
            && (self.since_unix_ms == 0 || r.time_unix_ms >= self.since_unix_ms)
            && (self.until_unix_ms == 0 || r.time_unix_ms < self.until_unix_ms)
    }
}

fn key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map_or(0, u64::from_be_bytes)
}

/// The `audit-writer` worker. It owns the queue's receiving end, so every incarnation reads the same
/// queue; the sequence number is read back from the tree at each start, so a panic mid-batch cannot
/// leave it behind.
pub struct AuditWriter {
    queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    tree: Tree,
    max_records: usize,
    max_age: Duration,
    healthy: Arc<AtomicBool>,
    running: watch::Sender<bool>,
}

/// `true` while an incarnation runs; `false` once it ends, however it ends (a panic included).
struct RunningFlag<'a>(&'a watch::Sender<bool>);

impl<'a> RunningFlag<'a> {
    fn raise(flag: &'a watch::Sender<bool>) -> Self {
        flag.send_replace(true);
        RunningFlag(flag)
    }
}

impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

enum Wake {
    Batch(usize),
    Trim,
    Stop,
}

impl Worker for AuditWriter {
    fn name(&self) -> &'static str {
        "audit-writer"
    }

    /// Critical: without it nothing is audited and fail-closed actions are all denied. A long stop
    /// deadline: the final stop writes every queued record first.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::CRITICAL.stop_deadline(Duration::from_secs(10))
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        // An aborted incarnation released the lock when its future was dropped.
        let mut queue = self.queue.lock().await;
        let next_seq = match self.tree.last_key().map_err(ActorError::from)? {
            Some(key) => seq_of(&key) + 1,
            None => 1,
        };
        let mut writer = Writer {
            tree: &self.tree,
            next_seq,
            max_records: self.max_records,
            max_age: self.max_age,
            healthy: &self.healthy,
        };
        let _running = RunningFlag::raise(&self.running);
        ctx.ready();
        let mut trim = tokio::time::interval(Duration::from_secs(60));
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let wake = ctx
                .idle(async {
                    tokio::select! {
                        biased;
                        () = ctx.cancelled() => Wake::Stop,
                        n = queue.recv_many(&mut batch, BATCH) => Wake::Batch(n),
                        _ = trim.tick() => Wake::Trim,
                    }
                })
                .await;
            match wake {
                Wake::Stop => break,
                // Every sender is gone (the log was dropped): nothing more can come.
                Wake::Batch(0) => {
                    ctx.idle(ctx.cancelled()).await;
                    break;
                }
                Wake::Batch(_) => writer.write(&mut batch).await,
                Wake::Trim => writer.trim_by_age().await,
            }
            ctx.progress();
            ctx.set_status(format!("next seq {}", writer.next_seq));
        }
        // Stopping: whatever was queued before the stop is still written. The final stop closes the
        // queue for good (later records are refused); an operator stop or restart leaves it open for
        // the next incarnation.
        if ctx.is_final_stop() {
            queue.close();
        }
        loop {
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            writer.write(&mut batch).await;
            ctx.progress();
        }
        Ok(())
    }
}

/// One incarnation's view of the writer.
struct Writer<'a> {
    tree: &'a Tree,
    next_seq: u64,
    max_records: usize,
    max_age: Duration,
    healthy: &'a AtomicBool,
}

impl Writer<'_> {
    async fn write(&mut self, batch: &mut Vec<Pending>) {
        let now = crate::store::unix_ms_now();
        let mut items = Vec::with_capacity(batch.len());
        for pending in batch.iter_mut() {
            pending.record.seq = self.next_seq;
            if pending.record.time_unix_ms == 0 {
                pending.record.time_unix_ms = now;
            }
            items.push((key(self.next_seq), pending.record.clone()));
            self.next_seq += 1;
        }
        let ok = match self.tree.put_batch_async(&items).await {
            Ok(()) => {
                AuditWritten {
                    records: items.len(),
                }
                .emit();
                true
            }
            Err(err) => {
                tracing::error!(error = %err, records = items.len(), "audit records could not be written");
                ErrorOccurred {
                    subsystem: "audit",
                    kind: "write",
                }
                .emit();
                false
            }
        };
        self.healthy.store(ok, Ordering::Release);
        for pending in batch.drain(..) {
            if let Some(written) = pending.written {
                let _ = written.send(ok);
            }
        }
        self.trim_by_count().await;
    }

    async fn trim_by_count(&self) {
        let excess = self.tree.len().saturating_sub(self.max_records);
        if excess == 0 {
            return;
        }
        let Ok(Some(first)) = self.tree.first_key() else {
            return;
        };
        let end = key(seq_of(&first).saturating_add(excess as u64));
        self.remove_below(&end, excess, "count").await;
    }

    async fn trim_by_age(&self) {
        let cutoff = crate::store::unix_ms_now().saturating_sub(self.max_age.as_millis() as u64);
        // Sequence order is time order, so the first record young enough bounds the removal.
        let mut end = None;
        for entry in self.tree.range::<AuditRecord, _>(.., false) {
            match entry {
                Ok((key, record)) if record.time_unix_ms >= cutoff => {
                    end = Some(key);
                    break;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "damaged audit record while trimming");
                    return;
                }
            }
        }
        let end = end.unwrap_or_else(|| key(self.next_seq));
        self.remove_below(&end, usize::MAX, "age").await;
    }

    async fn remove_below(&self, end: &[u8], limit: usize, why: &'static str) {
        match self.tree.remove_below(end, limit).await {
            Ok(0) => {}
            Ok(n) => AuditTrimmed { records: n, why }.emit(),
            Err(err) => tracing::warn!(error = %err, "audit trim failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{ActorState, Supervisor, SupervisorBuilder};
    use tokio_util::sync::CancellationToken;

    fn record(principal: &str, action: &str, allowed: bool) -> AuditRecord {
        AuditRecord {
            seq: 0,
            time_unix_ms: 0,
            decision_id: String::new(),
            kind: AuditKind::Policy,
            caller: "caller".into(),
            principal: principal.into(),
            action: action.into(),
            resource: "r".into(),
            allowed,
            reasons: vec!["why".into()],
            correlation_id: String::new(),
        }
    }

    fn config(max_records: u64) -> AuditConfig {
        AuditConfig {
            max_records,
            ..AuditConfig::default()
        }
    }

    /// The log with its writer running under a supervisor, as in the daemon.
    async fn start(
        store: &Store,
        config: &AuditConfig,
    ) -> (Arc<AuditLog>, Supervisor, Tasks, CancellationToken) {
        let (tasks, token) = (Tasks::new(), CancellationToken::new());
        let (log, writer) = AuditLog::open(store, config, &tasks).unwrap();
        let mut builder =
            SupervisorBuilder::new(crate::config::Config::default().supervisor, store.clone());
        builder.add_worker(writer);
        let supervisor = builder.start(&tasks, token.clone(), None).await;
        (log, supervisor, tasks, token)
    }

    async fn stop(tasks: Tasks, token: CancellationToken) {
        token.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn records_persist_in_order_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::config::Config::default().store).unwrap();
        let (log, supervisor, tasks, token) = start(&store, &config(1000)).await;
        log.record(record("a", "web.post", false)).unwrap();
        log.record(record("b", "web.read", true)).unwrap();
        log.record_durable(record("a", "secrets.read", true))
            .await
            .unwrap();
        // The durable record was queued last, so everything before it is written too.
        let (all, cursor) = log.query(&AuditQuery::default()).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(cursor, 3);
        assert!(all.iter().all(|r| r.time_unix_ms > 0));

        let by = |q: AuditQuery| -> Vec<String> {
            log.query(&q)
                .unwrap()
                .0
                .into_iter()
                .map(|r| r.action)
                .collect()
        };
        let q = AuditQuery::default;
        assert_eq!(
            by(AuditQuery {
                principal: "a".into(),
                ..q()
            }),
            ["web.post", "secrets.read"]
        );
        assert_eq!(
            by(AuditQuery {
                action: "web".into(),
                ..q()
            }),
            ["web.post", "web.read"]
        );
        assert_eq!(
            by(AuditQuery {
                action: "we".into(),
                ..q()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            by(AuditQuery {
                allowed: Some(false),
                ..q()
            }),
            ["web.post"]
        );
        assert_eq!(by(AuditQuery { after: 2, ..q() }), ["secrets.read"]);
        assert_eq!(
            by(AuditQuery {
                newest_first: true,
                limit: 2,
                ..q()
            }),
            ["secrets.read", "web.read"]
        );
        assert_eq!(
            by(AuditQuery {
                newest_first: true,
                before: 2,
                ..q()
            }),
            ["web.post"]
        );
        assert_eq!(
            by(AuditQuery {
                kind: Some(AuditKind::Token),
                ..q()
            }),
            Vec::<String>::new()
        );
        stop(tasks, token).await;
        drop((log, supervisor));
        store.close().unwrap();

        // Reopened, numbering continues after the last record.
        let store = Store::open(dir.path(), &crate::config::Config::default().store).unwrap();
        let (log, _supervisor, tasks, token) = start(&store, &config(1000)).await;
        log.record_durable(record("c", "ml.train", true))
            .await
            .unwrap();
        let (all, _) = log.query(&AuditQuery::default()).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        stop(tasks, token).await;
    }

    #[tokio::test]
    async fn queued_records_are_written_at_stop_and_trimmed_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::config::Config::default().store).unwrap();
        let (log, _supervisor, tasks, token) = start(&store, &config(1000)).await;
        for i in 0..1500 {
            log.record(record("p", &format!("a.n{i}"), true)).unwrap();
        }
        stop(tasks, token).await;
        // 1500 written; the oldest beyond 1000 trimmed.
        assert_eq!(log.len(), 1000);
        let (first, _) = log
            .query(&AuditQuery {
                limit: 1,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(first[0].seq, 501);
        assert_eq!(first[0].action, "a.n500");
        // After the stop nothing is accepted.
        assert!(matches!(
            log.record(record("p", "x", true)),
            Err(AuditError::Closed)
        ));
        assert!(log.record_durable(record("p", "x", true)).await.is_err());
    }

    #[test]
    fn fail_closed_patterns_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::config::Config::default().store).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        let (log, _supervisor, tasks, token) = rt.block_on(start(&store, &AuditConfig::default()));
        assert!(log.fails_closed("secrets.read"));
        assert!(!log.fails_closed("secrets"));
        assert!(!log.fails_closed("web.read"));
        let (a, b) = (log.decision_id(), log.decision_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        rt.block_on(stop(tasks, token));
    }

    #[tokio::test]
    async fn the_queue_outlives_the_writer_and_fail_closed_records_wait_for_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::config::Config::default().store).unwrap();
        let (log, supervisor, tasks, token) = start(&store, &config(1000)).await;
        log.record_durable(record("a", "first", true))
            .await
            .unwrap();

        // Stopped by an operator: fail-closed records are denied at once instead of waiting, and
        // ordinary ones wait in the queue.
        let stopped = supervisor.stop_actor("audit-writer").await.unwrap();
        assert_eq!(stopped.state, ActorState::Stopped);
        assert!(matches!(
            log.record_durable(record("a", "refused", true)).await,
            Err(AuditError::Closed)
        ));
        log.record(record("a", "queued while stopped", true))
            .unwrap();

        // The next incarnation reads the same queue and continues the numbering.
        let started = supervisor.start_actor("audit-writer").await.unwrap();
        assert_eq!((started.state, started.restarts), (ActorState::Running, 0));
        log.record_durable(record("a", "after restart", true))
            .await
            .unwrap();
        let (all, _) = log.query(&AuditQuery::default()).unwrap();
        assert_eq!(
            all.iter()
                .map(|r| (r.seq, r.action.as_str()))
                .collect::<Vec<_>>(),
            [
                (1, "first"),
                (2, "queued while stopped"),
                (3, "after restart")
            ]
        );
        stop(tasks, token).await;
    }
}
