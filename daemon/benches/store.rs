//! What the integrity record costs.
//!
//! - `open_after_clean_stop`: opening a store whose integrity record says "clean": every tree is
//!   counted and the token trees hashed before anything is written (the start-up check), against
//!   `open_after_unclean_stop`, where only the store id and generation are compared. 100,000 episodes
//!   of ~400 bytes plus 1,000 revocations.
//! - `put_flushed`: one durable write (`flush = "always"`), which now also bumps the generation in
//!   `meta`; the record itself is rewritten at most once a second.
//!
//! `cargo bench -p brainstemd --bench store`

use brainstemd::store::config::{FlushPolicy, StoreConfig};
use brainstemd::store::{Store, trees};
use criterion::{Criterion, criterion_group, criterion_main};

fn config() -> StoreConfig {
    StoreConfig {
        flush: FlushPolicy::Always,
        flush_interval_ms: 500,
        cache_capacity_bytes: 64 << 20,
        min_free_bytes: 0,
    }
}

fn fill(dir: &std::path::Path) {
    let store = Store::open(dir, &config()).expect("store opens");
    let episodes = store.tree(trees::EPISODIC).expect("tree");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for chunk in 0..100u64 {
        let items: Vec<(Vec<u8>, u64)> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| (i.to_be_bytes().to_vec(), i))
            .collect();
        runtime
            .block_on(episodes.put_batch_async(&items))
            .expect("batch");
    }
    let revoked = store.tree(trees::TOKENS_REVOKED).expect("tree");
    let items: Vec<(Vec<u8>, u64)> = (0..1000u64)
        .map(|i| (format!("t{i:06}").into_bytes(), i))
        .collect();
    runtime
        .block_on(revoked.put_batch_async(&items))
        .expect("batch");
    drop((episodes, revoked));
    store.mark_clean_shutdown().expect("seal");
    store.close().expect("close");
}

fn bench(c: &mut Criterion) {
    let clean = tempfile::tempdir().expect("temp dir");
    fill(clean.path());
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.bench_function("open_after_clean_stop", |b| {
        b.iter(|| {
            let store = Store::open(clean.path(), &config()).expect("opens");
            // Seal again, so the next iteration checks a clean record too.
            store.mark_clean_shutdown().expect("seal");
            store.close().expect("close");
        })
    });
    group.bench_function("open_after_unclean_stop", |b| {
        b.iter(|| {
            let store = Store::open(clean.path(), &config()).expect("opens");
            // A write after the seal: the next open compares generations only.
            store
                .tree(trees::META)
                .expect("meta")
                .put(b"bench", &1u64)
                .expect("put");
            store.close().expect("close");
        })
    });
    group.finish();

    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &config()).expect("store opens");
    let tree = store.tree(trees::EPISODIC).expect("tree");
    let mut n = 0u64;
    c.bench_function("put_flushed", |b| {
        b.iter(|| {
            n += 1;
            tree.put(&n.to_be_bytes(), &n).expect("put");
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
