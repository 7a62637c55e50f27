use std::sync::atomic::AtomicU64;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::Store;
use crate::supervisor::{ActorState, Supervisor, SupervisorBuilder};

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
        count: 1,
    }
}

fn config(max_records: u64) -> AuditConfig {
    AuditConfig {
        max_records,
        ..AuditConfig::default()
    }
}

/// A clock tests move by hand (milliseconds).
fn clock(start: u64) -> (Arc<AtomicU64>, Now) {
    let ms = Arc::new(AtomicU64::new(start));
    let read = ms.clone();
    (ms, Arc::new(move || read.load(Ordering::SeqCst)))
}

struct Fixture {
    log: Arc<AuditLog>,
    supervisor: Supervisor,
    tasks: Tasks,
    token: CancellationToken,
    store: Store,
}

/// The log with its writer running under a supervisor, as in the daemon.
async fn start_with(dir: &Path, config: &AuditConfig, now: Now) -> Fixture {
    let store = Store::open(&dir.join("state"), &crate::config::Config::default().store).unwrap();
    let (tasks, token) = (Tasks::new(), CancellationToken::new());
    let (log, writer) = AuditLog::open_with(&dir.join("audit"), config, &tasks, now).unwrap();
    let mut builder =
        SupervisorBuilder::new(crate::config::Config::default().supervisor, store.clone());
    builder.add_worker(writer);
    let supervisor = builder.start(&tasks, token.clone(), None).await;
    Fixture {
        log,
        supervisor,
        tasks,
        token,
        store,
    }
}

async fn start(dir: &Path, config: &AuditConfig) -> Fixture {
    start_with(dir, config, Arc::new(crate::store::unix_ms_now)).await
}

impl Fixture {
    /// The final stop, as the daemon's: returns what [`AuditLog::finish`] reports.
    async fn stop(self) -> (Arc<AuditLog>, u64) {
        self.token.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let lost = self.log.finish().await;
        drop(self.supervisor);
        self.store.close().unwrap();
        (self.log, lost)
    }
}

fn seqs(log: &AuditLog, query: AuditQuery) -> Vec<u64> {
    log.query(&query).unwrap().0.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn records_persist_in_order_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    let log = f.log.clone();
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
    assert_eq!(log.len(), 3);

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
    let (_, lost) = f.stop().await;
    assert_eq!(lost, 0);

    // Reopened, numbering (and the chain) continues after the last record.
    let f = start(dir.path(), &config(1000)).await;
    f.log
        .record_durable(record("c", "ml.train", true))
        .await
        .unwrap();
    assert_eq!(seqs(&f.log, AuditQuery::default()), [1, 2, 3, 4]);
    assert_eq!(f.log.len(), 4);
    f.stop().await;
}

#[tokio::test]
async fn queued_records_are_written_at_stop_and_trimmed_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    for i in 0..1500 {
        f.log.record(record("p", &format!("a.n{i}"), true)).unwrap();
    }
    let (log, lost) = f.stop().await;
    assert_eq!(lost, 0, "a stop writes everything queued");
    // 1500 written; whole segments (1000/16 → 64 records each) beyond 1000 trimmed.
    let kept = log.len() as u64;
    assert!((1000 - 64..=1000).contains(&kept), "{kept}");
    let (first, _) = log
        .query(&AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(first[0].seq, 1500 - kept + 1);
    assert_eq!(first[0].action, format!("a.n{}", 1500 - kept));
    // After the stop nothing is accepted, and what is refused is reported by finish.
    assert!(matches!(
        log.record(record("p", "x", true)),
        Err(AuditError::Closed)
    ));
    assert!(log.record_durable(record("p", "x", true)).await.is_err());
    assert_eq!(log.finish().await, 1);
}

#[test]
fn fail_closed_patterns_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let f = rt.block_on(start(dir.path(), &AuditConfig::default()));
    assert!(f.log.fails_closed("secrets.read"));
    assert!(!f.log.fails_closed("secrets"));
    assert!(!f.log.fails_closed("web.read"));
    let (a, b) = (f.log.decision_id(), f.log.decision_id());
    assert_ne!(a, b);
    assert_eq!(a.len(), 20);
    rt.block_on(f.stop());
}

/// Decision ids are written without the formatter; they read as `{prefix:08x}{n:012x}` did.
#[test]
fn decision_ids_are_the_run_prefix_and_the_count_in_hex() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let f = rt.block_on(start(dir.path(), &AuditConfig::default()));
    let shared = &f.log.shared;
    for n in [
        0,
        1,
        0xabc,
        0xfedc_ba98_7654,
        (1 << 48) - 1,
        1 << 48,
        (1 << 52) - 1,
        1 << 52,
        u64::MAX / 3,
        u64::MAX,
    ] {
        shared
            .next_id
            .store(n, std::sync::atomic::Ordering::Relaxed);
        let id = f.log.new_decision_id();
        assert_eq!(id.as_str(), format!("{:08x}{n:012x}", shared.id_prefix));
        assert_eq!(format!("{id} {id:?}"), format!("{0} \"{0}\"", id.as_str()));
    }
    for n in [7, u64::MAX] {
        shared
            .next_id
            .store(n, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            f.log.decision_id(),
            format!("{:08x}{n:012x}", shared.id_prefix)
        );
    }
    rt.block_on(f.stop());
}

#[tokio::test]
async fn the_queue_outlives_the_writer_and_fail_closed_records_wait_for_none() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    let log = f.log.clone();
    log.record_durable(record("a", "first", true))
        .await
        .unwrap();

    // Stopped by an operator: fail-closed records are denied at once instead of waiting, and
    // ordinary ones wait in the queue.
    let stopped = f.supervisor.stop_actor("audit-writer").await.unwrap();
    assert_eq!(stopped.state, ActorState::Stopped);
    assert!(matches!(
        log.record_durable(record("a", "refused", true)).await,
        Err(AuditError::Closed)
    ));
    log.record(record("a", "queued while stopped", true))
        .unwrap();

    // The next incarnation reads the same queue and continues the numbering.
    let started = f.supervisor.start_actor("audit-writer").await.unwrap();
    // An operator's start is not a restart (it is not counted against the restart intensity).
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
    f.stop().await;
}

#[tokio::test]
async fn a_failing_disk_denies_fail_closed_records_counts_the_rest_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    let log = f.log.clone();
    log.record_durable(record("a", "before", true))
        .await
        .unwrap();

    log.fail_writes(true);
    // Ordinary records are only queued: the caller never waits for the disk.
    for _ in 0..100 {
        log.record(record("a", "lost", true)).unwrap();
    }
    // A fail-closed record is answered (denied) once its batch failed, not after a timeout.
    let started = std::time::Instant::now();
    assert!(matches!(
        log.record_durable(record("a", "denied", true)).await,
        Err(AuditError::WriteFailed)
    ));
    assert!(started.elapsed() < DURABLE_WAIT);

    // The disk recovers: recording resumes by itself, numbering without a gap.
    log.fail_writes(false);
    log.record_durable(record("a", "after", true))
        .await
        .unwrap();
    let (all, _) = log.query(&AuditQuery::default()).unwrap();
    assert_eq!(
        all.iter()
            .map(|r| (r.seq, r.action.as_str()))
            .collect::<Vec<_>>(),
        [(1, "before"), (2, "after")]
    );
    f.stop().await;
}

#[tokio::test]
async fn a_stop_writes_what_a_stopped_writer_left_queued() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    // Stopped by an operator and not started again: the end of the final stop writes its queue.
    f.supervisor.stop_actor("audit-writer").await.unwrap();
    for _ in 0..10 {
        f.log.record(record("a", "queued", true)).unwrap();
    }
    let (log, lost) = f.stop().await;
    assert_eq!(lost, 0);
    assert_eq!(log.len(), 10);
}

#[tokio::test]
async fn a_full_queue_refuses_and_counts_and_takes_records_again_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        queue_capacity: 5,
        ..config(1000)
    };
    let f = start(dir.path(), &config).await;
    let log = f.log.clone();
    log.record_durable(record("a", "first", true))
        .await
        .unwrap();
    f.supervisor.stop_actor("audit-writer").await.unwrap();
    for i in 0..5 {
        log.record(record("a", &format!("queued {i}"), true))
            .unwrap();
    }
    assert_eq!(log.shared.queue_len(), 5);
    // Full: refused, counted, and nothing already queued is disturbed.
    assert!(matches!(
        log.record(record("a", "refused", true)),
        Err(AuditError::QueueFull)
    ));
    let mut aggregate = record("a", "refused aggregate", false);
    aggregate.count = 7;
    assert!(matches!(log.record(aggregate), Err(AuditError::QueueFull)));
    assert_eq!(log.shared.queue_len(), 5);

    // The writer takes the whole queue at once; then records are taken again.
    f.supervisor.start_actor("audit-writer").await.unwrap();
    log.record_durable(record("a", "after", true))
        .await
        .unwrap();
    assert_eq!(log.shared.queue_len(), 0);
    let (all, _) = log.query(&AuditQuery::default()).unwrap();
    let expected: Vec<String> = std::iter::once("first".to_owned())
        .chain((0..5).map(|i| format!("queued {i}")))
        .chain(std::iter::once("after".to_owned()))
        .collect();
    assert_eq!(
        all.iter().map(|r| r.action.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let (_, lost) = f.stop().await;
    assert_eq!(lost, 0);
}

#[tokio::test]
async fn a_stop_that_cannot_write_is_not_clean_and_the_next_start_hears_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    f.supervisor.stop_actor("audit-writer").await.unwrap();
    for _ in 0..10 {
        f.log.record(record("a", "queued", true)).unwrap();
    }
    // The disk is full at the stop.
    f.log.fail_writes(true);
    let (_, lost) = f.stop().await;
    assert_eq!(lost, 10, "records that could not be written are reported");
    let marker = dir.path().join("audit").join(UNCLEAN_MARKER);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        lost.to_string()
    );
    // The next start reads the note (and logs it) once.
    let f = start(dir.path(), &config(1000)).await;
    assert!(!marker.exists());
    f.stop().await;
}

#[tokio::test]
async fn refusals_are_aggregated_per_caller_method_and_second_within_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (ms, now) = clock(1_700_000_000_000);
    let f = start_with(dir.path(), &config(1000), now).await;
    let log = f.log.clone();
    for i in 0..10_000 {
        log.refuse(
            "mallory",
            "/brainstem.v1.Admin/GetStatus",
            "missing-capability",
            &format!("req-{i}"),
        );
    }
    for i in 0..(REFUSAL_KEYS_PER_SECOND + 6) {
        log.refuse(
            &format!("p{i}"),
            "/brainstem.v1.Admin/GetStatus",
            "rate-limit",
            "",
        );
    }
    log.record_durable(record("alice", "secrets.read", true))
        .await
        .unwrap();
    // The next second's first refusal queues the previous second's aggregate.
    ms.fetch_add(1000, Ordering::SeqCst);
    log.refuse(
        "mallory",
        "/brainstem.v1.Admin/GetStatus",
        "missing-capability",
        "req-next",
    );
    log.record_durable(record("alice", "secrets.read", true))
        .await
        .unwrap();
    let (all, _) = log.query(&AuditQuery::default()).unwrap();
    let access: Vec<&AuditRecord> = all.iter().filter(|r| r.kind == AuditKind::Access).collect();
    // mallory once, budget - 1 distinct others, one overflow record.
    assert_eq!(access.len(), REFUSAL_KEYS_PER_SECOND + 1);
    let mallory = access.iter().find(|r| r.caller == "mallory").unwrap();
    assert_eq!(mallory.count, 10_000);
    assert_eq!(
        mallory.correlation_id, "req-0",
        "the first refusal's id stands for the rest"
    );
    assert_eq!(mallory.time_unix_ms, 1_700_000_000_000);
    let overflow = access
        .iter()
        .find(|r| r.reasons == ["refusal-budget-exceeded"])
        .unwrap();
    assert_eq!(overflow.count, 7);
    let total: u64 = access.iter().map(|r| u64::from(r.count)).sum();
    assert_eq!(total, 10_000 + REFUSAL_KEYS_PER_SECOND as u64 + 6);
    assert_eq!(
        all.iter().filter(|r| r.kind == AuditKind::Policy).count(),
        2
    );
    // The final stop writes the current second's refusals too.
    let (log, lost) = f.stop().await;
    assert_eq!(lost, 0);
    let (all, _) = log.query(&AuditQuery::default()).unwrap();
    assert_eq!(all.last().unwrap().caller, "mallory");
    assert_eq!(all.last().unwrap().count, 1);
}

#[tokio::test(start_paused = true)]
async fn retention_by_bytes_and_by_age_on_paused_time() {
    let dir = tempfile::tempdir().unwrap();
    let (ms, now) = clock(1_700_000_000_000);
    let config = AuditConfig {
        max_bytes: 65_536,
        max_age_seconds: 60,
        ..AuditConfig::default()
    };
    let f = start_with(dir.path(), &config, now).await;
    let log = f.log.clone();
    // By bytes: far more than 64 KiB goes in; never more than 64 KiB stays.
    let mut last = 0;
    for batch in 0..40 {
        for i in 0..20 {
            log.record(record("p", &format!("bulk.n{batch}x{i}"), true))
                .unwrap();
        }
        log.record_durable(record("p", "bulk.mark", true))
            .await
            .unwrap();
        assert!(log.bytes() <= 65_536, "{} bytes", log.bytes());
        last = log
            .query(&AuditQuery {
                newest_first: true,
                limit: 1,
                ..AuditQuery::default()
            })
            .unwrap()
            .0[0]
            .seq;
    }
    assert_eq!(last, 40 * 21);
    assert!(log.len() < 40 * 21, "some were trimmed");
    assert!(log.bytes() > 65_536 - 4096 * 2, "{}", log.bytes());
    let segments = log.shared.index.segments().len();
    assert!(segments > 2, "{segments}");

    // By age: a minute later with no new record, the writer's tick removes every sealed segment
    // (only the one being appended to stays).
    ms.fetch_add(61_000, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while log.shared.index.segments().len() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "not trimmed by age");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = log.shared.index.segments();
    assert_eq!(left[0].next_seq, 40 * 21 + 1);
    assert_eq!(log.len() as u64, left[0].records());
    f.stop().await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_open_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let f = start(dir.path(), &config(1000)).await;
    for i in 0..5 {
        f.log.record(record("p", &format!("a.n{i}"), true)).unwrap();
    }
    let (log, _) = f.stop().await;
    let info = log.shared.index.segments().pop().unwrap();
    let path = dir
        .path()
        .join("audit")
        .join(segment::file_name(info.first_seq));
    // A crash mid-write: half a frame at the end.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 6, 0, 0]);
    std::fs::write(&path, &bytes).unwrap();

    let f = start(dir.path(), &config(1000)).await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), info.len);
    f.log
        .record_durable(record("p", "after", true))
        .await
        .unwrap();
    assert_eq!(seqs(&f.log, AuditQuery::default()), [1, 2, 3, 4, 5, 6]);
    f.stop().await;

    // Every frame's hash chains to the one before it, across the reopen.
    let bytes = std::fs::read(&path).unwrap();
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&bytes[16..48]);
    let mut n = 0;
    for frame in segment::Frames::new(&bytes[segment::HEADER_LEN as usize..]) {
        assert_eq!(frame.hash, segment::chain(&prev, frame.seq, frame.payload));
        prev = frame.hash;
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn the_binary_forms_round_trip() {
    let mut plain = record("p", "secrets.read", true);
    plain.reasons = vec!["a".into(), "ünïcode".into()];
    plain.count = 7;
    plain.time_unix_ms = 123;
    plain.correlation_id = "c".into();
    // What a decision of the daemon looks like: hex ids, the caller asking about itself.
    let mut typical = record("spiffe://h/agent", "web.read", false);
    typical.caller = typical.principal.clone();
    typical.decision_id = "0123abcd00000000002a".into();
    typical.correlation_id = "00112233445566778899aabbccddeeff".into();
    typical.count = 300;
    typical.time_unix_ms = 1_764_720_000_000;
    // Ids that look almost like hex must come back exactly as they were.
    let mut near = typical.clone();
    near.decision_id = "0123ABCD00000000002a".into();
    near.correlation_id = "00112233445566778899aabbccddeefg".into();
    near.principal = String::new();
    for r in [&plain, &typical, &near] {
        for version in [1, 2] {
            let mut bytes = Vec::new();
            if version == 1 {
                segment::encode_v1(r, &mut bytes);
            } else {
                segment::encode(&r.entry(), &mut bytes);
            }
            let mut back = segment::decode(version, 0, &bytes).unwrap();
            back.seq = r.seq;
            assert_eq!(&back, r, "form {version}");
            assert_eq!(segment::time_of(&bytes), r.time_unix_ms);
            // Damage is an error, never a panic.
            for cut in 0..bytes.len() {
                assert!(segment::decode(version, 0, &bytes[..cut]).is_err());
            }
        }
    }
    // The compact form is what the log writes: packed ids, no repeated principal.
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    segment::encode_v1(&typical, &mut v1);
    segment::encode(&typical.entry(), &mut v2);
    // Decision id 24 → 10 bytes, principal 20 → 0, correlation id 36 → 16, count 4 → 2, five
    // lengths and the reason count 4 → 1.
    assert_eq!((v1.len(), v2.len()), (142, 142 - 14 - 20 - 20 - 2 - 15));
    assert!(segment::decode(3, 0, &v2).is_err());
}

/// A log written by an earlier build (a `BSAUDIT1` segment) is read, queried and continued: new
/// records go into a new segment in the compact form, chained to the old one.
#[tokio::test]
async fn a_log_of_the_first_form_is_read_and_continued() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let mut bytes = segment::MAGIC_V1.to_vec();
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 32]);
    let mut prev = [0u8; 32];
    for seq in 1..=3u64 {
        let mut r = record("old", &format!("a.n{seq}"), true);
        r.time_unix_ms = crate::store::unix_ms_now();
        let mut payload = Vec::new();
        segment::encode_v1(&r, &mut payload);
        let hash = segment::chain(&prev, seq, &payload);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&hash);
        bytes.extend_from_slice(&payload);
        prev = hash;
    }
    std::fs::write(audit.join(segment::file_name(1)), &bytes).unwrap();

    let f = start(dir.path(), &config(1000)).await;
    f.log
        .record_durable(record("new", "a.n4", true))
        .await
        .unwrap();
    let (records, _) = f.log.query(&AuditQuery::default()).unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| (r.seq, r.principal.as_str(), r.action.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "old", "a.n1"),
            (2, "old", "a.n2"),
            (3, "old", "a.n3"),
            (4, "new", "a.n4")
        ]
    );
    f.stop().await;
    // The old segment is untouched; the new one is in the compact form and chains to it.
    assert_eq!(
        std::fs::read(audit.join(segment::file_name(1))).unwrap(),
        bytes
    );
    let new = std::fs::read(audit.join(segment::file_name(4))).unwrap();
    assert_eq!(&new[..8], segment::MAGIC);
    assert_eq!(&new[16..48], &prev);
    let frame = segment::Frames::new(&new[segment::HEADER_LEN as usize..])
        .next()
        .unwrap();
    assert_eq!(frame.hash, segment::chain(&prev, 4, frame.payload));
    // Reopened, both forms read back.
    let f = start(dir.path(), &config(1000)).await;
    assert_eq!(seqs(&f.log, AuditQuery::default()), [1, 2, 3, 4]);
    f.stop().await;
}

#[tokio::test]
async fn queries_read_windows_across_marks_and_segments_and_after_a_reopen() {
    for max_records in [1_000_000, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let f = start(dir.path(), &config(max_records)).await;
        for i in 0..900 {
            f.log
                .record(record("p", &format!("a.n{i}"), i % 3 == 0))
                .unwrap();
        }
        let (_, lost) = f.stop().await;
        assert_eq!(lost, 0);
        // Reopened: the marks are rebuilt from the files.
        let f = start(dir.path(), &config(max_records)).await;
        let log = &f.log;
        let first = 900 - log.len() as u64 + 1;
        let q = AuditQuery::default;
        assert_eq!(
            seqs(
                log,
                AuditQuery {
                    after: 300,
                    limit: 5,
                    ..q()
                }
            ),
            [301, 302, 303, 304, 305]
        );
        assert_eq!(
            seqs(
                log,
                AuditQuery {
                    newest_first: true,
                    before: 514,
                    limit: 4,
                    ..q()
                }
            ),
            [513, 512, 511, 510]
        );
        // Paging oldest first sees every record once, in order, whatever the page size.
        let mut after = 0;
        let mut all = Vec::new();
        loop {
            let (page, cursor) = log
                .query(&AuditQuery {
                    after,
                    limit: 97,
                    ..q()
                })
                .unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page.iter().map(|r| r.seq));
            after = cursor;
        }
        assert_eq!(
            all,
            (first..=900).collect::<Vec<_>>(),
            "max_records {max_records}"
        );
        // A filter over windows: denied ones newest first.
        let denied = seqs(
            log,
            AuditQuery {
                newest_first: true,
                allowed: Some(false),
                limit: 3,
                ..q()
            },
        );
        assert_eq!(denied, [900, 899, 897]);
        f.stop().await;
    }
}

/// Fail-closed records share syncs (group commit): a lone waiter is synced at once, and once a sync
/// answered several waiters the writer waits about a sync's time, so a record that arrives just
/// after the writer woke for another joins that record's sync instead of needing its own.
#[tokio::test(start_paused = true)]
async fn fail_closed_records_that_arrive_together_share_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (ms, now) = clock(1_700_000_000_000);
    let f = start_with(dir.path(), &config(1000), now).await;
    let log = f.log.clone();
    let syncs = || log.core.segments.lock().unwrap().syncs();

    // Alone: one sync, and no waiting for company (paused time does not move).
    let (before, at) = (syncs(), tokio::time::Instant::now());
    log.record_durable(record("a", "alone", true))
        .await
        .unwrap();
    assert_eq!(syncs() - before, 1);
    assert_eq!(tokio::time::Instant::now(), at, "a lone waiter waited");

    // Two queued before the writer runs: one sync answers both.
    let before = syncs();
    let (b, c) = tokio::join!(
        log.record_durable(record("a", "b", true)),
        log.record_durable(record("a", "c", true))
    );
    b.unwrap();
    c.unwrap();
    assert_eq!(syncs() - before, 1);

    // The writer wakes for "d" before "e" is queued; after a shared sync it waits for more, so
    // both go in one sync (without the wait, "d" would be taken alone and "e" need a second).
    let before = syncs();
    let (d, e) = tokio::join!(log.record_durable(record("a", "d", true)), async {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        log.record_durable(record("a", "e", true)).await
    });
    d.unwrap();
    e.unwrap();
    assert_eq!(syncs() - before, 1);

    // After a pause (by the log's clock) the burst is over: the next lone waiter is not held.
    ms.fetch_add(11, Ordering::SeqCst);
    let at = tokio::time::Instant::now();
    log.record_durable(record("a", "later", true))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::Instant::now(),
        at,
        "the first waiter after a pause waited"
    );

    let (all, _) = log.query(&AuditQuery::default()).unwrap();
    assert_eq!(
        all.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["alone", "b", "c", "d", "e", "later"]
    );
    f.stop().await;
}
