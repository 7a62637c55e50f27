//! The two ways of storing audit records weighed in issue 10, measured side by side: records per
//! second and CPU per record for (a) sled through the store's API with large batches (JSON record
//! envelope, `put_batch_async`, one group-commit flush per batch) and (b) the append-only segment
//! log (binary frames, SHA-256 chain, one write + `fdatasync` per batch). docs/PERFORMANCE.md
//! ("Audit") records the numbers.
//!
//!     cargo run --release -p brainstemd --example audit_options [RECORDS]

use std::time::Instant;

use brainstemd::access::audit::segment::{Limits, RecordBuf, SegmentWriter};
use brainstemd::access::audit::{AuditKind, AuditRecord};
use brainstemd::store::{Record, Store};

/// The record as the old sled-backed log stored it (JSON in the store's envelope).
#[derive(serde::Serialize, serde::Deserialize)]
struct JsonRecord {
    seq: u64,
    time_unix_ms: u64,
    decision_id: String,
    kind: String,
    caller: String,
    principal: String,
    action: String,
    resource: String,
    allowed: bool,
    reasons: Vec<String>,
    correlation_id: String,
}

impl Record for JsonRecord {
    const VERSION: u8 = 1;
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time_unix_ms: 1_764_000_000_000 + i,
        decision_id: format!("5e1f00aa{i:012x}"),
        kind: AuditKind::Policy,
        caller: "spiffe://brainstem.dev/admin".to_owned(),
        principal: "spiffe://brainstem.dev/admin".to_owned(),
        action: "web.read".to_owned(),
        resource: "https://example.org/x".to_owned(),
        allowed: true,
        reasons: vec!["permit-web-read".to_owned()],
        correlation_id: String::new(),
        count: 1,
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn report(what: &str, n: u64, started: Instant, cpu0: f64, bytes: u64) {
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{what:<40} {:>10.0} records/s  {:>6.2} µs CPU/record  {:>6.0} bytes/record",
        n as f64 / wall,
        cpu / n as f64 * 1e6,
        bytes as f64 / n as f64
    );
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500_000);
    for batch in [1024u64, 8192] {
        // (a) sled, large batches.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &brainstemd::config::Config::default().store).unwrap();
        let tree = store.tree("audit").unwrap();
        let (started, cpu0) = (Instant::now(), cpu_seconds());
        let mut seq = 1u64;
        while seq <= n {
            let items: Vec<(Vec<u8>, JsonRecord)> = (seq..(seq + batch).min(n + 1))
                .map(|s| {
                    let r = record(s);
                    (
                        s.to_be_bytes().to_vec(),
                        JsonRecord {
                            seq: s,
                            time_unix_ms: r.time_unix_ms,
                            decision_id: r.decision_id,
                            kind: r.kind.as_str().to_owned(),
                            caller: r.caller,
                            principal: r.principal,
                            action: r.action,
                            resource: r.resource,
                            allowed: r.allowed,
                            reasons: r.reasons,
                            correlation_id: r.correlation_id,
                        },
                    )
                })
                .collect();
            seq += items.len() as u64;
            tree.put_batch_async(&items).await.unwrap();
        }
        store.flush().unwrap();
        report(
            &format!("sled (JSON, batch {batch})"),
            n,
            started,
            cpu0,
            dir_bytes(dir.path()),
        );
        let started = Instant::now();
        let len = tree.len();
        println!(
            "{:<40} {:>10.1} ms for {len} records (what trim_by_count paid per batch)",
            "  sled Tree::len()",
            started.elapsed().as_secs_f64() * 1e3
        );
        drop(tree);
        store.close().unwrap();

        // (b) segments.
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_records: 1_000_000,
            max_bytes: 1 << 30,
            max_age_ms: u64::MAX / 2,
        };
        let (mut writer, _) = SegmentWriter::open(dir.path(), limits).unwrap();
        let (started, cpu0) = (Instant::now(), cpu_seconds());
        let mut done = 0;
        let mut records = RecordBuf::default();
        while done < n {
            // Framed where the daemon frames them, by the caller, inside the timed loop as before.
            records.clear();
            for i in done..(done + batch).min(n) {
                records.push(&record(i).entry());
            }
            let (written, error) = writer.append(&mut records, true);
            assert!(error.is_none());
            done += written as u64;
        }
        report(
            &format!("segments (binary + SHA-256, batch {batch})"),
            n,
            started,
            cpu0,
            dir_bytes(dir.path()),
        );
    }
}
