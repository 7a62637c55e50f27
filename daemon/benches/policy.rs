//! In-process policy decisions with 10 and 1,000 policies: criterion's estimate, then a p50/p99 over
//! 100,000 timed decisions (criterion reports central estimates, not tails). `allow`/`deny` bypass
//! the decision cache (a first-time request); `allow-cached` is a repeated one.
//!
//! Run: `cargo bench -p brainstemd --bench policy`.

use std::hint::black_box;
use std::time::Instant;

use brainstemd::policy::{PolicyEngine, PolicySource, Query};
use criterion::{Criterion, criterion_group, criterion_main};

const SCHEMA: &str = include_str!("../../config/policies/schema.cedarschema");
const DEFAULTS: &str = include_str!("../../config/policies/default.cedar");

/// The default set plus `extra` generated policies: per-agent permits and forbids with conditions.
fn engine(extra: usize) -> (PolicyEngine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).expect("schema");
    std::fs::write(dir.path().join("default.cedar"), DEFAULTS).expect("defaults");
    let mut text = String::new();
    for i in 0..extra {
        if i % 2 == 0 {
            text.push_str(&format!(
                "@id(\"agent-{i}-read\") permit (principal == Agent::\"agent-{i}\", action in Action::\"web\", resource) when {{ resource != Resource::\"blocked-{i}\" }};\n"
            ));
        } else {
            text.push_str(&format!(
                "@id(\"agent-{i}-no-train\") forbid (principal == Agent::\"agent-{i}\", action == Action::\"ml.train\", resource) unless {{ context.signed_permit }};\n"
            ));
        }
    }
    std::fs::write(dir.path().join("generated.cedar"), text).expect("policies");
    let set = PolicySource {
        dir: Some(dir.path().to_owned()),
        signing_key: None,
    }
    .load()
    .expect("generated set validates");
    (PolicyEngine::new(set), dir)
}

fn query<'q>(principal: &'q str, action: &'q str) -> Query<'q> {
    Query {
        principal: principal.into(),
        roles: vec!["agent".to_owned()].into(),
        action: action.into(),
        resource: "https://example.org/page".into(),
        context: serde_json::Map::new(),
    }
}

fn tails(name: &str, engine: &PolicyEngine, q: &Query<'_>) {
    let mut samples: Vec<u64> = (0..100_000)
        .map(|_| {
            let started = Instant::now();
            black_box(engine.decide_uncached(black_box(q)).ok());
            started.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{name}: p50 {:.2} us  p99 {:.2} us  (100000 decisions)",
        at(0.50) as f64 / 1000.0,
        at(0.99) as f64 / 1000.0
    );
}

fn decisions(c: &mut Criterion) {
    for (label, extra) in [("10", 0), ("1000", 988)] {
        let (engine, _dir) = engine(extra);
        let policies = engine.current().policies.len();
        let allowed = query("agent-500", "web.read");
        let forbidden = query("agent-7", "web.post");
        assert!(engine.decide(&allowed).map(|d| d.allowed).unwrap_or(false));
        assert!(!engine.decide(&forbidden).map(|d| d.allowed).unwrap_or(true));
        let mut group = c.benchmark_group(format!("decide/{label}-policies"));
        group.bench_function("allow", |b| {
            b.iter(|| engine.decide_uncached(black_box(&allowed)))
        });
        group.bench_function("deny", |b| {
            b.iter(|| engine.decide_uncached(black_box(&forbidden)))
        });
        group.bench_function("allow-cached", |b| {
            b.iter(|| engine.decide(black_box(&allowed)))
        });
        group.finish();
        tails(
            &format!("decide/{policies}-policies/allow"),
            &engine,
            &allowed,
        );
        tails(
            &format!("decide/{policies}-policies/deny"),
            &engine,
            &forbidden,
        );
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
