//! Cost of log redaction (`runtime::redact`) on one typical 150-byte log line, with 0, 100 and 10,000
//! remembered values of three distinct lengths (16, 32, 44 bytes), and on a line that holds one of
//! them. Every log line the daemon writes pays this once.
//!
//! Measured with callgrind on the same code built with `-O` (instructions per line, x86-64,
//! 2026-12-02): 0 values 5,989; 100 values 17,440; 10,000 values 17,766; a line holding one of 10,000
//! values 18,697; 10,000 values of every length from 8 to 70 bytes (57 rolling passes) 214,265
//! (docs/PERFORMANCE.md, "Log redaction").
//!
//! `cargo bench -p brainstemd --bench redact`

use brainstemd::runtime::redact::Redactor;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const LINE: &str = "2026-12-02T13:10:29.123456Z  INFO brainstemd::grpc::layer: access denied \
                    method=\"/brainstem.v1.Episodic/Store\" principal=\"agent:web\" reason=\"no-grant\"";

/// `count` pseudo-random lower-case values, cycling through `lengths`; returns the last one.
fn fill(redactor: &Redactor, count: usize, lengths: &[usize]) -> String {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut last = String::new();
    for i in 0..count {
        let len = lengths[i % lengths.len()];
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
        let last = fill(&redactor, count, &[16, 32, 44]);
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
    // The worst case: values of every window length (8..=64, and longer ones sharing the 64 pass).
    let redactor = Redactor::new();
    let lengths: Vec<usize> = (8..=70).collect();
    fill(&redactor, 10_000, &lengths);
    group.bench_function("clean/10000_all_lengths", |b| {
        b.iter(|| redactor.redact(std::hint::black_box(LINE)).len())
    });
    group.finish();
}

criterion_group!(benches, redact);
criterion_main!(benches);
