//! Episodic buffer benchmarks (not tests): exact query over 100,000 × 384 in-process, and store
//! throughput through the actor (persisted, under both flush policies).
//!
//! `cargo bench -p brainstemd --bench episodic`. Besides criterion's estimates, the query bench prints
//! p50/p99 of single queries (fresh random query vectors) measured on their own. Figures and what they
//! mean: docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use brainstemd::actors::episodic::ring::Ring;
use brainstemd::actors::episodic::{EpisodeData, Episodic, Filter, NewEpisode};
use brainstemd::config::Config;
use brainstemd::runtime::tasks::Tasks;
use brainstemd::store::Store;
use brainstemd::store::config::FlushPolicy;
use brainstemd::supervisor::SupervisorBuilder;
use brainstemd::supervisor::config::ActorConfig;
use brainstemd::supervisor::policy::Rng;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

const ROWS: usize = 100_000;
const DIM: usize = 384;
const NOW: i64 = 1_700_000_000_000;

fn vector(rng: &mut Rng) -> Vec<f32> {
    (0..DIM)
        .map(|_| (rng.next_u64() % 20_001) as f32 / 10_000.0 - 1.0)
        .collect()
}

fn full_ring(rng: &mut Rng) -> Ring {
    let mut ring = Ring::new(DIM, ROWS);
    for seq in 0..ROWS as u64 {
        let data = EpisodeData {
            seq,
            timestamp_ms: NOW - (rng.next_u64() % 86_400_000) as i64,
            source: ["camera", "mic", "planner"][(seq % 3) as usize].to_owned(),
            kind: "observation".to_owned(),
            text: format!("episode {seq}"),
            importance: 0.5 + (seq % 2) as f32 / 2.0,
            metadata: BTreeMap::new(),
        };
        ring.insert(data, &vector(rng));
    }
    ring
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label}: {} single queries, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

fn query(c: &mut Criterion) {
    let mut rng = Rng::new(7);
    let ring = full_ring(&mut rng);
    let queries: Vec<Vec<f32>> = (0..64).map(|_| vector(&mut rng)).collect();
    let half_life = 3_600_000.0;
    let mut group = c.benchmark_group("episodic_query_100k_x_384");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));
    for threads in [1, 2] {
        let mut i = 0;
        group.bench_function(format!("k10_threads{threads}"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                ring.query_with(&queries[i], 10, &Filter::default(), NOW, half_life, threads)
            })
        });
        // Single-query latency distribution, measured apart from criterion's batching.
        let samples = (0..300)
            .map(|n| {
                let started = Instant::now();
                let top = ring.query_with(
                    &queries[n % queries.len()],
                    10,
                    &Filter::default(),
                    NOW,
                    half_life,
                    threads,
                );
                let elapsed = started.elapsed();
                assert_eq!(top.len(), 10);
                elapsed
            })
            .collect();
        percentiles(&format!("query k=10 threads={threads}"), samples);
    }
    let filter = Filter {
        source: Some("mic".to_owned()),
        ..Filter::default()
    };
    group.bench_function("k10_source_filter_threads1", |b| {
        b.iter(|| ring.query(&queries[0], 10, &filter, NOW, half_life))
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("episodic_store_384");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(6));
    for flush in [FlushPolicy::Always, FlushPolicy::Interval] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.store.flush = flush;
        config.episodic.capacity = ROWS as u64;
        config.episodic.max_batch = 1000;
        let (episodic, token, tasks) = runtime.block_on(async {
            let store = Store::open(dir.path(), &config.store).expect("store");
            let mut builder = SupervisorBuilder::new(config.supervisor.clone(), store.clone());
            let episodic = Episodic::register(
                &mut builder,
                &config.episodic,
                ActorConfig::default(),
                &store,
            )
            .expect("register");
            let tasks = Tasks::new();
            let token = CancellationToken::new();
            builder.start(&tasks, token.clone(), None).await;
            (episodic, token, tasks)
        });
        let mut rng = Rng::new(11);
        let mut episode = move || NewEpisode {
            source: "bench".to_owned(),
            kind: "observation".to_owned(),
            text: "a benchmark episode of ordinary length, about one sentence".to_owned(),
            embedding: vector(&mut rng),
            ..NewEpisode::default()
        };
        let name = match flush {
            FlushPolicy::Always => "flush_always",
            FlushPolicy::Interval => "flush_interval",
        };
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("one_{name}"), |b| {
            b.iter_batched(
                &mut episode,
                |e| runtime.block_on(episodic.store("episode", vec![e])),
                BatchSize::SmallInput,
            )
        });
        group.throughput(Throughput::Elements(100));
        group.bench_function(format!("batch100_{name}"), |b| {
            b.iter_batched(
                || (0..100).map(|_| episode()).collect::<Vec<_>>(),
                |batch| runtime.block_on(episodic.store("episodes", batch)),
                BatchSize::SmallInput,
            )
        });
        token.cancel();
        runtime.block_on(async {
            tasks.close();
            tasks.wait().await;
        });
    }
    group.finish();
}

criterion_group!(benches, query, store);
criterion_main!(benches);
