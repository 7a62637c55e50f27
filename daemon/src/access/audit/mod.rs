//! The audit log: every policy and guardrail decision, every call the authorization layer refuses
//! and every token change, appended in sequence order to hash-chained segment files under
//! `<state_dir>/audit/` ([`segment`]; docs/AUDIT.md).
//!
//! Recording costs the caller an encode and an enqueue: under the queue's lock, a record is encoded
//! as an unnumbered frame straight into one shared buffer ([`segment::RecordBuf`]; no allocation,
//! channel message or cross-thread free per record), and the `audit-writer` worker swaps that
//! buffer for its spare one, numbers and chains the frames in place and appends them as one batch
//! (one `write`), on a blocking thread. Encoding from borrowed fields lets a decision keep its
//! reasons and id for its answer without copies. A batch holding a fail-closed record is synced
//! before its waiters are answered (group commit); otherwise the log is synced at least every
//! [`segment::SYNC_EVERY`] and once a second when idle, so a kill -9 loses nothing handed to the
//! kernel and a power loss at most that interval of records nobody waited for. The writer runs
//! under the supervisor (critical, permanent); the queue, shared by the log and the worker rather
//! than owned by one incarnation, survives a restart.
//!
//! Actions listed in `[audit] fail_closed_actions` (default `secrets.*`) are answered only once
//! their record is on disk, and denied (`audit-unavailable`) when it cannot be written. Any other
//! record that finds the queue full, or whose batch fails to write, is counted
//! (`brainstem_audit_unrecorded_total`) and logged at most once a second; the decision stands.
//! Nothing waits for a disk except a fail-closed decision, and that at most [`DURABLE_WAIT`].
//!
//! Refusals by the authorization layer are aggregated: one record per caller, method, reason and
//! second, carrying a count, and at most [`REFUSAL_KEYS_PER_SECOND`] of them per second (the rest
//! fold into one `refusal-budget-exceeded` record), so a flood of refused calls cannot push
//! decisions out of the log.
//!
//! The final stop writes everything queued before it ends; what could not be written is counted,
//! logged once, keeps the stop from being marked clean ([`AuditLog::finish`]), and is reported by
//! the next start.
//!
//! Retention removes whole segments, oldest first, beyond `max_records`, `max_bytes` or
//! `max_age_seconds` (checked after each batch and every second, from counts the index keeps).

pub mod segment;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::access::authz::pattern_matches_family;
use crate::access::config::AuditConfig;
use crate::access::events::{
    AuditLogSize, AuditStopLost, AuditTrimmed, AuditUnrecorded, AuditUnrecordedLogged, AuditWritten,
};
use crate::runtime::events::ErrorOccurred;
use crate::runtime::tasks::Tasks;
use crate::store::StoreError;
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{ActorResult, Worker, WorkerContext, WorkerPolicy};
use segment::{Index, Limits, RecordBuf, SegmentWriter};

/// Most records one query returns, and most it scans.
pub const MAX_QUERY_LIMIT: usize = 1000;
const MAX_QUERY_SCAN: usize = 100_000;
/// A wake-up that finds this many records queued writes them at once instead of letting more
/// gather ([`COALESCE`]).
const BATCH: usize = 8192;
/// Distinct (caller, method, reason) refusal records per second; the rest are folded into one.
pub const REFUSAL_KEYS_PER_SECOND: usize = 64;
/// Longest a fail-closed decision waits for its record to be on disk before it is denied.
pub const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// After a failed write the writer waits this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// How long the writer lets the queue fill after a wake before it writes, unless a fail-closed
/// record waits: a steady stream of decisions then costs one wake-up, one hand-off to the blocking
/// pool and one `write` per interval instead of per handful of records. A fail-closed record ends
/// the wait at once ([`Shared::durable`]), so group commit is not delayed.
const COALESCE: Duration = Duration::from_millis(5);
/// Group commit for fail-closed records, as the store's committer does it: when the last sync
/// answered several waiters, their callers are running concurrently and their next records are
/// on the way, so the writer waits about one sync's time (within these bounds; tokio's timer rounds
/// up to a millisecond) for them to join the next sync. A lone waiter never waits, nor does the
/// first record after a pause of [`DURABLE_PAUSE_MS`] (by the log's clock, [`Shared::now`]).
const DURABLE_WINDOW_MIN: Duration = Duration::from_micros(200);
const DURABLE_WINDOW_MAX: Duration = Duration::from_millis(2);
const DURABLE_PAUSE_MS: u64 = 10;
/// Written at a stop that lost records, read (and removed) by the next start.
const UNCLEAN_MARKER: &str = "unclean-stop";

/// Milliseconds since the Unix epoch; injectable so tests move time instead of sleeping.
pub type Now = Arc<dyn Fn() -> u64 + Send + Sync>;

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
    /// An operator's change to the daemon's state: a flag override set or cleared, a store recovered
    /// with accepted loss.
    Admin,
    /// A change to a secret (put, rotate, delete, undelete, destroy, metadata) or the master key; the
    /// record names the path and version, never the value.
    Secret,
    /// A change in the model registry (register, alias move, lineage, deployment, status, card text)
    /// or a drift rule that fired; the record names the model and version.
    Registry,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Policy => "policy",
            AuditKind::Guardrail => "guardrail",
            AuditKind::Access => "access",
            AuditKind::Token => "token",
            AuditKind::Admin => "admin",
            AuditKind::Secret => "secret",
            AuditKind::Registry => "registry",
        }
    }

    /// Every kind (the order [`Queued::events`] counts them in).
    pub const ALL: [AuditKind; 7] = [
        AuditKind::Policy,
        AuditKind::Guardrail,
        AuditKind::Access,
        AuditKind::Token,
        AuditKind::Admin,
        AuditKind::Secret,
        AuditKind::Registry,
    ];

    pub fn parse(text: &str) -> Option<AuditKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Assigned by the writer; 0 until written.
    pub seq: u64,
    /// Set when queued if left 0.
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
    /// How many identical events the record stands for: 1, or more for aggregated refusals.
    pub count: u32,
}

impl AuditRecord {
    /// The record's fields, borrowed: what [`segment::encode`] writes.
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            time_unix_ms: self.time_unix_ms,
            decision_id: &self.decision_id,
            kind: self.kind,
            caller: &self.caller,
            principal: &self.principal,
            action: &self.action,
            resource: &self.resource,
            allowed: self.allowed,
            reasons: &self.reasons,
            correlation_id: &self.correlation_id,
            count: self.count,
        }
    }
}

/// A record to be written, its strings borrowed from whoever made it: a decision records what its
/// query, its caller and its answer already hold, without copying them into an [`AuditRecord`].
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// 0: the time it is queued.
    pub time_unix_ms: u64,
    pub decision_id: &'a str,
    pub kind: AuditKind,
    pub caller: &'a str,
    pub principal: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub allowed: bool,
    pub reasons: &'a [String],
    /// Empty: the current call's ([`crate::grpc::correlation::with_current`]), if any.
    pub correlation_id: &'a str,
    /// How many identical events the record stands for (0 counts as 1).
    pub count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit log is not accepting records (stopping or failed)")]
    Closed,
    #[error("the audit record could not be written")]
    WriteFailed,
    #[error("the audit record was not on disk within {DURABLE_WAIT:?}")]
    TimedOut,
}

impl AuditError {
    fn reason(&self) -> &'static str {
        match self {
            AuditError::QueueFull => "queue-full",
            AuditError::Closed => "closed",
            AuditError::WriteFailed => "write-failed",
            AuditError::TimedOut => "timed-out",
        }
    }
}

/// The audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log in {dir}: {source}")]
pub struct OpenError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Events by kind, as [`AuditKind::ALL`] orders them.
type ByKind = [u64; AuditKind::ALL.len()];

fn add_events(counts: &mut ByKind, kind: AuditKind, n: u64) {
    if let Some(i) = AuditKind::ALL.iter().position(|k| *k == kind) {
        counts[i] += n;
    }
}

/// Queued records: their frames, the waiters of the fail-closed ones among them, and the events
/// they stand for by kind (what a failed batch counts as unrecorded).
struct Queued {
    records: RecordBuf,
    /// (record index, answer) of every record whose caller waits for it to be on disk.
    waiters: Vec<(usize, oneshot::Sender<bool>)>,
    events: ByKind,
}

impl Queued {
    fn new() -> Queued {
        // About 1,000 typical decisions before the first growth.
        Queued {
            records: RecordBuf::with_capacity(1024, 192 * 1024),
            waiters: Vec::new(),
            events: ByKind::default(),
        }
    }

    /// Events `records[from..]` stand for, by kind (read back from the frames past the first).
    fn by_kind(&self, from: usize) -> ByKind {
        if from == 0 {
            return self.events;
        }
        let mut counts = ByKind::default();
        for i in from..self.records.len() {
            let (kind, n) = self.records.kind_and_count(i);
            add_events(&mut counts, kind, n);
        }
        counts
    }

    fn clear(&mut self) {
        self.records.clear();
        self.waiters.clear();
        self.events = ByKind::default();
    }
}

/// The queue: bounded by record count; closed for good by the final stop.
struct Queue {
    queued: Queued,
    capacity: usize,
    closed: bool,
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
    /// Only this call's records (empty: any).
    pub correlation_id: String,
}

/// What the log and its writer share.
struct Shared {
    queue: Mutex<Queue>,
    /// Told when a record goes into an empty queue: the writer wakes.
    ready: tokio::sync::Notify,
    index: Arc<Index>,
    now: Now,
    refusals: Mutex<Refusals>,
    warn: WarnOncePerSecond,
    /// Records lost once the final stop began (refused as closed, failed in the last writes).
    lost_at_stop: AtomicU64,
    id_prefix: u32,
    next_id: AtomicU64,
    /// Told when a fail-closed record is queued: the writer stops coalescing and writes.
    durable: tokio::sync::Notify,
}

/// The writer's side of the queue (the spare buffer it swaps in; holding its lock is being the one
/// that takes from the queue) and the appender: the writer's, and at the end of the final stop the
/// log's, which writes whatever an operator-stopped or abandoned writer left behind.
struct Core {
    spare: tokio::sync::Mutex<Queued>,
    segments: Arc<Mutex<SegmentWriter>>,
    dir: PathBuf,
}

pub struct AuditLog {
    shared: Arc<Shared>,
    core: Arc<Core>,
    fail_closed: Vec<String>,
    /// Whether an incarnation of the writer is running.
    writer_running: watch::Receiver<bool>,
    /// Where queries run their blocking reads.
    tasks: Tasks,
    /// Test hook: while set, every write fails as on a full disk.
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl AuditLog {
    /// Opens `<state_dir>/audit`. Records are queued from now on; they are written once the
    /// returned [`AuditWriter`] runs under the supervisor.
    pub fn open(
        state_dir: &Path,
        config: &AuditConfig,
        tasks: &Tasks,
    ) -> Result<(Arc<AuditLog>, AuditWriter), OpenError> {
        Self::open_with(
            &state_dir.join("audit"),
            config,
            tasks,
            Arc::new(crate::store::unix_ms_now),
        )
    }

    /// [`AuditLog::open`] on a directory of its own, with an injected clock.
    pub fn open_with(
        dir: &Path,
        config: &AuditConfig,
        tasks: &Tasks,
        now: Now,
    ) -> Result<(Arc<AuditLog>, AuditWriter), OpenError> {
        let open_error = |source| OpenError {
            dir: dir.to_owned(),
            source,
        };
        let limits = Limits {
            max_records: config.max_records,
            max_bytes: config.max_bytes,
            max_age_ms: config.max_age_seconds.saturating_mul(1000),
        };
        let (segments, recovered) = SegmentWriter::open(dir, limits).map_err(open_error)?;
        if recovered.torn_bytes > 0 {
            tracing::warn!(
                bytes = recovered.torn_bytes,
                "the audit log ended in a partly written record (the previous run stopped mid-write); it was cut off"
            );
        }
        let marker = dir.join(UNCLEAN_MARKER);
        if let Ok(text) = std::fs::read_to_string(&marker) {
            tracing::warn!(
                records = text.trim(),
                "the previous stop could not write every queued audit record"
            );
            let _ = std::fs::remove_file(&marker);
        }
        let (running_tx, running_rx) = watch::channel(false);
        let mut prefix = [0u8; 4];
        // A per-run prefix keeps decision ids unique across restarts; a failed random source only
        // makes them less unique, never wrong.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut prefix);
        let index = segments.index().clone();
        let fail_writes = segments.fail.clone();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                queued: Queued::new(),
                capacity: usize::try_from(config.queue_capacity).unwrap_or(usize::MAX),
                closed: false,
            }),
            ready: tokio::sync::Notify::new(),
            index,
            now,
            refusals: Mutex::new(Refusals::default()),
            warn: WarnOncePerSecond::default(),
            lost_at_stop: AtomicU64::new(0),
            id_prefix: u32::from_be_bytes(prefix),
            next_id: AtomicU64::new(0),
            durable: tokio::sync::Notify::new(),
        });
        let core = Arc::new(Core {
            spare: tokio::sync::Mutex::new(Queued::new()),
            segments: Arc::new(Mutex::new(segments)),
            dir: dir.to_owned(),
        });
        let log = Arc::new(AuditLog {
            shared: shared.clone(),
            core: core.clone(),
            fail_closed: config.fail_closed_actions.clone(),
            writer_running: running_rx,
            tasks: tasks.clone(),
            fail_writes,
        });
        let writer = AuditWriter {
            core,
            shared,
            tasks: tasks.clone(),
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
        self.shared.decision_id().as_str().to_owned()
    }

    /// [`AuditLog::decision_id`] without a heap string: every decision makes one.
    pub fn new_decision_id(&self) -> DecisionId {
        self.shared.decision_id()
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
        self.shared.record(record.entry())
    }

    /// [`AuditLog::record`] for borrowed fields: a decision records what its query and answer hold
    /// (the answer then takes its reasons and id without copies). Encoded into the queue at once.
    pub fn record_entry(&self, entry: Entry<'_>) -> Result<(), AuditError> {
        self.shared.record(entry)
    }

    /// Queues a record and waits until it is on disk (fail-closed decisions), at most
    /// [`DURABLE_WAIT`].
    pub async fn record_durable(&self, record: AuditRecord) -> Result<(), AuditError> {
        self.record_durable_entry(record.entry()).await
    }

    /// [`AuditLog::record_durable`] for borrowed fields (see [`AuditLog::record_entry`]).
    pub async fn record_durable_entry(&self, entry: Entry<'_>) -> Result<(), AuditError> {
        self.queue_durable(entry).written().await
    }

    /// The first half of [`AuditLog::record_durable_entry`]: encodes `entry` into the queue now
    /// (or fails at once); the returned [`Durable`] borrows nothing, so what waits for the disk
    /// need not hold what the record was encoded from.
    pub fn queue_durable(&self, entry: Entry<'_>) -> Durable {
        let (kind, count) = (entry.kind, entry.count.max(1));
        let (written, done) = oneshot::channel();
        let queued = if *self.writer_running.borrow() {
            self.shared.enqueue(entry, Some(written)).inspect(|()| {
                self.shared.durable.notify_one();
            })
        } else {
            Err(AuditError::Closed)
        };
        Durable {
            queued: queued.map(|()| (done, self.writer_running.clone())),
            shared: self.shared.clone(),
            kind,
            count,
        }
    }

    /// Counts a refusal by the authorization layer; see the module documentation.
    pub fn refuse(&self, caller: &str, method: &str, reason: &str, correlation_id: &str) {
        self.shared.refuse(caller, method, reason, correlation_id);
    }

    /// Records matching `query`, and the cursor to continue from.
    pub fn query(&self, query: &AuditQuery) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        let limit = match query.limit {
            0 => 100,
            n => n.min(MAX_QUERY_LIMIT),
        };
        let segments = self.shared.index.segments();
        let mut records = Vec::new();
        let mut scanned = 0;
        let mut cursor = if query.newest_first {
            query.before
        } else {
            query.after
        };
        let corrupt = |seq: u64, reason: String| StoreError::Corrupt {
            tree: "audit".to_owned(),
            key: seq.to_string(),
            reason,
        };
        let read = |info: &segment::SegmentInfo, window: &segment::Window| {
            self.shared
                .index
                .read(info, window)
                .map_err(|err| corrupt(window.first_seq, format!("cannot read the segment: {err}")))
        };
        // Windows of at most MARK_EVERY records, in the order the query walks them.
        let mut windows: Vec<(&segment::SegmentInfo, segment::Window)> = Vec::new();
        let before = match query.before {
            0 => u64::MAX,
            n => n,
        };
        if query.newest_first {
            for info in segments.iter().rev().filter(|s| s.first_seq < before) {
                for w in info.windows().into_iter().rev() {
                    if w.first_seq < before {
                        windows.push((info, w));
                    }
                }
            }
        } else {
            for info in segments.iter().filter(|s| s.next_seq > query.after + 1) {
                for w in info.windows() {
                    if w.next_seq > query.after + 1 {
                        windows.push((info, w));
                    }
                }
            }
        }
        for (info, window) in windows {
            let bytes = read(info, &window)?;
            let mut frames: Vec<_> = segment::Frames::new(&bytes)
                .filter(|f| {
                    if query.newest_first {
                        f.seq < before
                    } else {
                        f.seq > query.after
                    }
                })
                .collect();
            if query.newest_first {
                frames.reverse();
            }
            for frame in frames {
                if scanned == MAX_QUERY_SCAN || records.len() == limit {
                    return Ok((records, cursor));
                }
                scanned += 1;
                cursor = frame.seq;
                let record = segment::decode(info.version, frame.seq, frame.payload)
                    .map_err(|r| corrupt(frame.seq, r))?;
                if query.matches(&record) {
                    records.push(record);
                }
            }
        }
        Ok((records, cursor))
    }

    /// Records in the log (kept by the writer, not counted).
    pub fn len(&self) -> usize {
        self.shared.index.records() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the log's segments hold.
    pub fn bytes(&self) -> u64 {
        self.shared.index.bytes()
    }

    /// The directory of the segment files.
    pub fn dir(&self) -> &Path {
        &self.shared.index.dir
    }

    /// The segments as readers see them now, each with the length its writer committed (a backup
    /// copies each file up to that length).
    pub fn segments(&self) -> Vec<segment::SegmentInfo> {
        self.shared.index.segments()
    }

    /// Test hook: while `on`, every write fails as it would on a full disk.
    #[doc(hidden)]
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    /// After the final stop: writes what the writer left queued (when an operator had stopped it,
    /// or it was abandoned), then returns how many records were not written (refused as closed,
    /// failed in the last writes, or still queued). A non-zero count is logged once and left for
    /// the next start to report; the caller must not mark the stop clean.
    pub async fn finish(&self) -> u64 {
        self.shared.flush_refusals(true);
        if let Ok(mut spare) = self.core.spare.try_lock() {
            self.shared.close();
            self.shared.take(&mut spare);
            let (left, started) = (spare.records.len(), std::time::Instant::now());
            if left > 0 {
                self.core
                    .write(&self.shared, &self.tasks, &mut spare, true, false)
                    .await;
                tracing::info!(
                    records = left,
                    ms = started.elapsed().as_millis() as u64,
                    "wrote the audit records the stopped writer left queued"
                );
            }
        }
        let lost =
            self.shared.queue_len() as u64 + self.shared.lost_at_stop.load(Ordering::Acquire);
        if lost > 0 {
            AuditStopLost { records: lost }.emit();
            let marker = self.core.dir.join(UNCLEAN_MARKER);
            if let Err(err) = std::fs::write(&marker, format!("{lost}\n")) {
                tracing::warn!(error = %err, path = %marker.display(), "cannot leave the unclean-stop note for the next start");
            }
        }
        lost
    }
}

/// A fail-closed record in the queue (or refused by it), to be waited for
/// ([`AuditLog::queue_durable`]).
#[must_use = "a fail-closed record counts only once it is known to be on disk"]
pub struct Durable {
    /// The answer from the writer and its running flag, or why the record was not queued.
    queued: Result<(oneshot::Receiver<bool>, watch::Receiver<bool>), AuditError>,
    shared: Arc<Shared>,
    kind: AuditKind,
    count: u32,
}

impl Durable {
    /// Waits until the record is on disk, at most [`DURABLE_WAIT`]. A record that did not make it
    /// is counted as unrecorded (a failed batch by the writer, anything else here).
    pub async fn written(self) -> Result<(), AuditError> {
        let result = match self.queued {
            Err(err) => Err(err),
            // The writer may end (stop, panic) before it reaches this record: then deny rather
            // than wait for an incarnation that may never come.
            Ok((done, mut running)) => tokio::select! {
                biased;
                written = done => match written {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(AuditError::WriteFailed),
                    Err(_) => Err(AuditError::Closed),
                },
                _ = running.wait_for(|running| !*running) => Err(AuditError::Closed),
                () = tokio::time::sleep(DURABLE_WAIT) => Err(AuditError::TimedOut),
            },
        };
        if let Err(err) = &result {
            // A record that failed in its batch was counted by the writer.
            if !matches!(err, AuditError::WriteFailed) {
                self.shared
                    .unrecorded(self.kind, err.reason(), u64::from(self.count));
            }
        }
        result
    }
}

impl Shared {
    /// `{prefix:08x}{n:012x}`, written without the formatter: every decision makes one.
    fn decision_id(&self) -> DecisionId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Past 2^48 ids the counter takes up to 16 digits, as `{n:012x}` would.
        let digits = 12usize.max(16 - n.leading_zeros() as usize / 4);
        let mut id = DecisionId {
            text: [0; DecisionId::MAX],
            len: (8 + digits) as u8,
        };
        lower_hex(u64::from(self.id_prefix), &mut id.text[..8]);
        lower_hex(n, &mut id.text[8..8 + digits]);
        id
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes `entry` into the queue, timed now if it has no time, with the current call's
    /// correlation id if it has none (every record a call causes carries its id); `written` is
    /// answered once it is on disk. Counts nothing.
    fn enqueue(
        &self,
        mut entry: Entry<'_>,
        written: Option<oneshot::Sender<bool>>,
    ) -> Result<(), AuditError> {
        if entry.time_unix_ms == 0 {
            entry.time_unix_ms = (self.now)();
        }
        let first = {
            let mut queue = self.lock_queue();
            if queue.closed {
                return Err(AuditError::Closed);
            }
            if queue.queued.records.len() >= queue.capacity {
                return Err(AuditError::QueueFull);
            }
            let records = &mut queue.queued.records;
            if entry.correlation_id.is_empty() {
                crate::grpc::correlation::with_current(|id| {
                    records.push(&Entry {
                        correlation_id: id,
                        ..entry
                    })
                })
                .unwrap_or_else(|| records.push(&entry));
            } else {
                records.push(&entry);
            }
            let n = records.len();
            add_events(
                &mut queue.queued.events,
                entry.kind,
                u64::from(entry.count.max(1)),
            );
            if let Some(written) = written {
                queue.queued.waiters.push((n - 1, written));
            }
            n == 1
        };
        if first {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn record(&self, entry: Entry<'_>) -> Result<(), AuditError> {
        let (kind, count) = (entry.kind, u64::from(entry.count.max(1)));
        self.enqueue(entry, None).inspect_err(|error| {
            if matches!(error, AuditError::Closed) {
                self.lost_at_stop.fetch_add(count, Ordering::AcqRel);
            }
            self.unrecorded(kind, error.reason(), count);
        })
    }

    /// Records queued and not yet taken by the writer.
    fn queue_len(&self) -> usize {
        self.lock_queue().queued.records.len()
    }

    /// (records queued, whether one of them is waited for, whether the queue is closed).
    fn peek(&self) -> (usize, bool, bool) {
        let queue = self.lock_queue();
        (
            queue.queued.records.len(),
            !queue.queued.waiters.is_empty(),
            queue.closed,
        )
    }

    /// Takes everything queued into `into` (which must be empty), leaving `into`'s buffers behind.
    fn take(&self, into: &mut Queued) {
        std::mem::swap(&mut self.lock_queue().queued, into);
    }

    /// From now on records are refused (and counted as lost at stop).
    fn close(&self) {
        self.lock_queue().closed = true;
    }

    /// Counts records that will not be written; one log line a second at most.
    fn unrecorded(&self, kind: AuditKind, reason: &'static str, records: u64) {
        AuditUnrecorded {
            kind: kind.as_str(),
            reason,
            records,
        }
        .emit();
        if let Some(records) = self.warn.note(records, (self.now)()) {
            AuditUnrecordedLogged { records, reason }.emit();
        }
    }

    fn refuse(&self, caller: &str, method: &str, reason: &str, correlation_id: &str) {
        let second = (self.now)() / 1000;
        let ready = {
            let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let ready = (refusals.second != second).then(|| refusals.take(second));
            refusals.add(caller, method, reason, correlation_id);
            ready
        };
        if let Some(ready) = ready {
            self.write_refusals(ready);
        }
    }

    /// Queues the aggregated refusals of past seconds (`all`: of the current one too).
    fn flush_refusals(&self, all: bool) {
        let second = (self.now)() / 1000;
        let ready = {
            let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            (all || refusals.second < second).then(|| refusals.take(second))
        };
        if let Some(ready) = ready {
            self.write_refusals(ready);
        }
    }

    fn write_refusals(&self, ready: Refusals) {
        let time_unix_ms = ready.second * 1000;
        let overflow = (ready.overflow > 0).then(|| {
            (
                (
                    "*".to_owned(),
                    "*".to_owned(),
                    "refusal-budget-exceeded".to_owned(),
                ),
                (ready.overflow, String::new()),
            )
        });
        for ((caller, method, reason), (count, correlation_id)) in
            ready.keys.into_iter().chain(overflow)
        {
            let _ = self.record(Entry {
                time_unix_ms,
                decision_id: self.decision_id().as_str(),
                kind: AuditKind::Access,
                caller: &caller,
                principal: &caller,
                action: &method,
                resource: "",
                allowed: false,
                reasons: &[reason],
                correlation_id: &correlation_id,
                count,
            });
        }
    }
}

/// A decision's id, `{prefix:08x}{n:012x}` (16 digits for `n` past 2^48): held inline, so a
/// decision's answer and its audit record need no heap string for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DecisionId {
    text: [u8; DecisionId::MAX],
    len: u8,
}

impl DecisionId {
    const MAX: usize = 24;

    /// An id with the given text (at most 24 bytes), for tests of what carries one.
    #[cfg(test)]
    pub fn for_tests(text: &str) -> DecisionId {
        let mut id = DecisionId {
            text: [0; DecisionId::MAX],
            len: text.len() as u8,
        };
        id.text[..text.len()].copy_from_slice(text.as_bytes());
        id
    }

    /// The id's bytes (ASCII hex digits), without [`DecisionId::as_str`]'s UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only lowercase hex digits are ever written into it.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Display for DecisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for DecisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Fills `out` with the low `out.len()` hex digits of `value`, most significant first.
fn lower_hex(mut value: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// One second's refusals, by (caller, method, reason): how many, and the first one's correlation id.
#[derive(Default)]
struct Refusals {
    second: u64,
    keys: HashMap<(String, String, String), (u32, String)>,
    overflow: u32,
}

impl Refusals {
    fn add(&mut self, caller: &str, method: &str, reason: &str, correlation_id: &str) {
        // Looked up by reference first: a repeat (the flood case) allocates nothing.
        if let Some((_, (n, _))) = self
            .keys
            .iter_mut()
            .find(|((c, m, r), _)| c == caller && m == method && r == reason)
        {
            *n = n.saturating_add(1);
        } else if self.keys.len() < REFUSAL_KEYS_PER_SECOND {
            self.keys.insert(
                (caller.to_owned(), method.to_owned(), reason.to_owned()),
                (1, correlation_id.to_owned()),
            );
        } else {
            self.overflow = self.overflow.saturating_add(1);
        }
    }

    /// The gathered refusals; `self` starts over for `second`.
    fn take(&mut self, second: u64) -> Refusals {
        std::mem::replace(
            self,
            Refusals {
                second,
                ..Refusals::default()
            },
        )
    }
}

/// Gathers counts and lets one log line through per second.
#[derive(Default)]
struct WarnOncePerSecond {
    last_second: AtomicU64,
    pending: AtomicU64,
}

impl WarnOncePerSecond {
    /// Adds `n`; returns the count to log when this second has not logged yet.
    fn note(&self, n: u64, now_ms: u64) -> Option<u64> {
        self.pending.fetch_add(n, Ordering::AcqRel);
        let second = now_ms / 1000 + 1;
        let last = self.last_second.load(Ordering::Acquire);
        (last != second
            && self
                .last_second
                .compare_exchange(last, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then(|| self.pending.swap(0, Ordering::AcqRel))
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
            && (self.correlation_id.is_empty() || r.correlation_id == self.correlation_id)
    }
}

/// The `audit-writer` worker. It owns the queue's receiving end and the segment writer, so every
/// incarnation continues the same queue, numbering and chain.
pub struct AuditWriter {
    core: Arc<Core>,
    shared: Arc<Shared>,
    tasks: Tasks,
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
    Ready,
    Tick,
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
        let mut batch = self.core.spare.lock().await;
        let _running = RunningFlag::raise(&self.running);
        ctx.ready();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last batch with fail-closed waiters: how many it answered, how long it took, when it
        // was done.
        let (mut last_waiters, mut last_sync) = (0usize, Duration::ZERO);
        let mut last_done_ms = 0;
        loop {
            // A record queued since the last look (its wake-up perhaps spent on a tick) is
            // written without waiting: only a push into an empty queue wakes the writer.
            let (queued, durable, closed) = self.shared.peek();
            let wake = if queued > 0 {
                Wake::Ready
            } else if closed {
                // The queue was closed (a final stop of an earlier incarnation): nothing more
                // comes.
                ctx.idle(ctx.cancelled()).await;
                break;
            } else {
                ctx.idle(async {
                    tokio::select! {
                        biased;
                        () = ctx.cancelled() => Wake::Stop,
                        // Before the queue: under constant load the tick still comes once a second.
                        _ = tick.tick() => Wake::Tick,
                        () = self.shared.ready.notified() => Wake::Ready,
                    }
                })
                .await
            };
            match wake {
                Wake::Stop => break,
                Wake::Ready => {
                    let (queued, durable) = if queued > 0 {
                        (queued, durable)
                    } else {
                        let (queued, durable, _) = self.shared.peek();
                        (queued, durable)
                    };
                    if queued == 0 {
                        continue;
                    }
                    if queued < BATCH && !durable {
                        ctx.idle(async {
                            tokio::select! {
                                biased;
                                () = ctx.cancelled() => {}
                                () = self.shared.durable.notified() => {}
                                () = tokio::time::sleep(COALESCE) => {}
                            }
                        })
                        .await;
                    } else if durable
                        && last_waiters >= 2
                        && (self.shared.now)().saturating_sub(last_done_ms) < DURABLE_PAUSE_MS
                    {
                        let window = last_sync.clamp(DURABLE_WINDOW_MIN, DURABLE_WINDOW_MAX);
                        ctx.idle(until_cancelled(&ctx, tokio::time::sleep(window)))
                            .await;
                    }
                    self.shared.take(&mut batch);
                    let (waiters, started) = (batch.waiters.len(), std::time::Instant::now());
                    let written = self.write(&mut batch, false).await;
                    if waiters > 0 {
                        (last_waiters, last_sync) = (waiters, started.elapsed());
                        last_done_ms = (self.shared.now)();
                    }
                    if !written {
                        ctx.idle(until_cancelled(&ctx, tokio::time::sleep(RETRY_AFTER)))
                            .await;
                    }
                }
                Wake::Tick => {
                    self.shared.flush_refusals(false);
                    self.trim().await;
                    // Once a second rather than a formatted string per batch.
                    ctx.set_status(format!(
                        "{} records, {} bytes",
                        self.shared.index.records(),
                        self.shared.index.bytes()
                    ));
                }
            }
            ctx.progress();
        }
        // Stopping: whatever was queued before the stop is still written. The final stop closes the
        // queue for good (later records are refused and counted); an operator stop or restart
        // leaves it open for the next incarnation.
        let last = ctx.is_final_stop();
        if last {
            self.shared.flush_refusals(true);
            self.shared.close();
        }
        loop {
            self.shared.take(&mut batch);
            if batch.records.is_empty() {
                break;
            }
            self.write(&mut batch, last).await;
            ctx.progress();
        }
        Ok(())
    }
}

impl Core {
    /// Appends `batch` (one write and one sync per segment touched), answers the fail-closed
    /// waiters, trims. Returns whether all of it was written; what failed is counted as
    /// unrecorded. `wait`: wait for the appender if busy; otherwise (the end of the stop, when it
    /// may be held by an abandoned write) fail at once.
    async fn write(
        &self,
        shared: &Shared,
        tasks: &Tasks,
        batch: &mut Queued,
        stopping: bool,
        wait: bool,
    ) -> bool {
        let segments = self.segments.clone();
        let mut taken = std::mem::replace(
            batch,
            Queued {
                records: RecordBuf::default(),
                waiters: Vec::new(),
                events: ByKind::default(),
            },
        );
        // What a failure would lose, by kind (the whole batch when the write task itself failed).
        let mut failed = taken.by_kind(0);
        // Group commit for fail-closed records (and at stop); the rest are synced every SYNC_EVERY.
        let sync = stopping || !taken.waiters.is_empty();
        let now = (shared.now)();
        let done = tasks
            .spawn_blocking("audit.write", move || {
                let mut writer = match segments.try_lock() {
                    Ok(writer) => writer,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) if wait => {
                        segments.lock().unwrap_or_else(|p| p.into_inner())
                    }
                    Err(std::sync::TryLockError::WouldBlock) => {
                        let busy = std::io::Error::other("the audit writer is still busy");
                        return (taken, 0, 0, Some(busy), Vec::new());
                    }
                };
                let synced = writer.syncs();
                let (written, error) = writer.append(&mut taken.records, sync);
                let trimmed = writer.trim(now);
                let syncs = writer.syncs() - synced;
                (taken, written, syncs, error, trimmed)
            })
            .await;
        let ok = match done {
            Ok((mut taken, written, syncs, error, trimmed)) => {
                if written > 0 || syncs > 0 {
                    AuditWritten {
                        records: written,
                        syncs,
                    }
                    .emit();
                }
                for (why, records) in trimmed {
                    AuditTrimmed { records, why }.emit();
                }
                if let Some(err) = &error {
                    tracing::error!(error = %err, records = taken.records.len() - written, dir = %self.dir.display(), "audit records could not be written");
                }
                failed = taken.by_kind(written);
                // After a failed sync nothing is known to be on disk: fail-closed waiters hear no.
                let durable = if error.is_some() { 0 } else { written };
                for (i, answer) in taken.waiters.drain(..) {
                    let _ = answer.send(i < durable);
                }
                // Keep the allocation for the next batch.
                taken.clear();
                *batch = taken;
                error.is_none()
            }
            Err(err) => {
                let records: u64 = failed.iter().sum();
                tracing::error!(error = %err, records, "the audit write panicked");
                false
            }
        };
        if !ok {
            ErrorOccurred {
                subsystem: "audit",
                kind: "write",
            }
            .emit();
            for (kind, records) in AuditKind::ALL
                .into_iter()
                .zip(failed)
                .filter(|(_, n)| *n > 0)
            {
                shared.unrecorded(kind, "write-failed", records);
                if stopping {
                    shared.lost_at_stop.fetch_add(records, Ordering::AcqRel);
                }
            }
        }
        AuditLogSize {
            records: shared.index.records(),
            bytes: shared.index.bytes(),
            queued: shared.queue_len() as u64,
        }
        .emit();
        ok
    }
}

impl AuditWriter {
    async fn write(&self, batch: &mut Queued, stopping: bool) -> bool {
        self.core
            .write(&self.shared, &self.tasks, batch, stopping, true)
            .await
    }

    /// Once a second: syncs what the last batches wrote, and retention when no batch comes (an
    /// idle log still ages).
    async fn trim(&self) {
        let segments = self.core.segments.clone();
        let now = (self.shared.now)();
        if let Ok((syncs, trimmed)) = self
            .tasks
            .spawn_blocking("audit.trim", move || {
                let mut writer = segments.lock().unwrap_or_else(|p| p.into_inner());
                let synced = writer.syncs();
                if let Err(err) = writer.sync() {
                    tracing::warn!(error = %err, "audit log sync failed");
                }
                (writer.syncs() - synced, writer.trim(now))
            })
            .await
        {
            if syncs > 0 {
                AuditWritten { records: 0, syncs }.emit();
            }
            for (why, records) in trimmed {
                AuditTrimmed { records, why }.emit();
            }
        }
    }
}

#[cfg(test)]
mod tests;
