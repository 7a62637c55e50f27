//! The audit log's per-record work on the writer, natively (SHA extensions and all, which valgrind
//! does not emulate): a typical `Policy.Check` record encoded and chained in the first payload form
//! (`BSAUDIT1`) and in the compact one (`BSAUDIT2`), and the SHA-256 chain step alone on inputs of
//! both sizes.
//!
//! Run: `cargo bench -p brainstemd --bench audit`.

use std::hint::black_box;

use brainstemd::access::audit::segment::{chain, encode, encode_v1};
use brainstemd::access::audit::{AuditKind, AuditRecord};
use criterion::{Criterion, criterion_group, criterion_main};

/// What the `policy-check` bench scenario leaves in the log.
fn typical() -> AuditRecord {
    AuditRecord {
        seq: 0,
        time_unix_ms: 1_764_720_000_000,
        decision_id: "9f3c0a1200000001e240".to_owned(),
        kind: AuditKind::Policy,
        caller: "spiffe://brainstem.dev/admin".to_owned(),
        principal: "spiffe://brainstem.dev/admin".to_owned(),
        action: "web.read".to_owned(),
        resource: "https://example.org/page".to_owned(),
        allowed: true,
        reasons: vec!["permit-web-read".to_owned()],
        correlation_id: "5be1c0de2f0a9b7e6d13c4a8f0e1b2d3".to_owned(),
        count: 1,
    }
}

fn bench(c: &mut Criterion) {
    let record = typical();
    let mut group = c.benchmark_group("audit-record");
    let mut payload = Vec::with_capacity(512);
    let prev = [7u8; 32];
    for (name, form) in [
        (
            "v1-encode+chain",
            encode_v1 as fn(&AuditRecord, &mut Vec<u8>),
        ),
        ("v2-encode+chain", |r: &AuditRecord, out: &mut Vec<u8>| {
            encode(&r.entry(), out)
        }),
    ] {
        payload.clear();
        form(&record, &mut payload);
        println!("{name}: payload {} bytes", payload.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                payload.clear();
                form(black_box(&record), &mut payload);
                black_box(chain(&prev, 42, &payload))
            })
        });
    }
    for len in [201usize, 117] {
        let bytes = vec![0x5au8; len];
        group.bench_function(format!("sha256-chain-{len}B-payload"), |b| {
            b.iter(|| black_box(chain(&prev, 42, black_box(&bytes))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
