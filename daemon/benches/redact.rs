//! Cost of log redaction (`runtime::redact`) on one typical 150-byte log line, with 0, 100 and 10,000
//! remembered values of three distinct lengths (16, 32, 44 bytes), and on a line that holds one of
//! them. Every log line the daemon writes pays this once.
//!
//! Measured with callgrind on the same code built with `-O` (instructions per line, x86-64,
//! 2026-12-02): 0 values 5,986; 100 values 17,349; 10,000 values 17,977; a line holding one of 10,000
//! values 18,166 (docs/PERFORMANCE.md, "Log redaction").
//!
//! `cargo bench -p brainstemd --bench redact`

use brainstemd::runtime::redact::Redactor;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const LINE: &str = "2026-12-02T13:10:29.123456Z  INFO brainstemd::grpc::layer: access denied \
                    method=\"/brainstem.v1.Episodic/Store\" principal=\"agent:web\" reason=\"no-grant\"";

/// `count` pseudo-random lower-case values, cycling through three lengths; returns the last one.
fn fill(redactor: &Redactor, count: usize) -> String {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut last = String::new();
    for i in 0..count {
        let len = [16, 32, 44][i % 3];
        last = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect();
        redactor.remember(last.as_bytes());
    }
    last
}

fn redact(c: &mut Criterion) {
    let mut group = c.benchmark_group("redact_150_bytes");
    for count in [0, 100, 10_000] {
        let redactor = Redactor::new();
        let last = fill(&redactor, count);
        group.bench_with_input(BenchmarkId::new("clean", count), &LINE, |b, line| {
            b.iter(|| redactor.redact(std::hint::black_box(line)).len())
        });
        if count > 0 {
            let holding = format!("{} value={last}", &LINE[..150 - 7 - last.len()]);
            group.bench_with_input(
                BenchmarkId::new("holding_one", count),
                &holding,
                |b, line| b.iter(|| redactor.redact(std::hint::black_box(line)).len()),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, redact);
criterion_main!(benches);
