//! In-process cost of evaluating one flag (what every Flags.Evaluate and flagd Resolve* call does
//! after decoding): a static flag, a targeting rule (`if`/`in`/`ends_with` over the context) and a
//! `fractional` split (a `cat` key, murmur3, four buckets). flagd's Go evaluator takes about 1.4 µs,
//! 7–8 µs and 10–11 µs for these (the reference figures). Results: docs/PERFORMANCE.md,
//! "Flags".
//!
//! `cargo bench -p brainstemd --bench flags`

use std::hint::black_box;

use brainstemd::flags::{Flags, OVERRIDES_TREE};
use brainstemd::store::Store;
use brainstemd::store::config::{FlushPolicy, StoreConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("flags.json");
    let definitions = json!({
        "flags": {
            "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "targeting": {"state": "ENABLED",
                "variants": {"staff": "gold", "beta": "silver", "others": "grey"}, "defaultVariant": "others",
                "targeting": {"if": [
                    {"ends_with": [{"var": "email"}, "@example.com"]}, "staff",
                    {"in": [{"var": "tier"}, ["beta", "preview"]]}, "beta",
                    null]}},
            "fractional": {"state": "ENABLED",
                "variants": {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades"},
                "defaultVariant": "clubs",
                "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
                    ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}},
        }
    });
    std::fs::write(&file, definitions.to_string()).expect("write definitions");
    let store = Store::open(
        &dir.path().join("state"),
        &StoreConfig {
            flush: FlushPolicy::Interval,
            flush_interval_ms: 500,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        },
    )
    .expect("store opens");
    let flags = Flags::open(&file, store.tree(OVERRIDES_TREE).expect("tree")).expect("flags load");
    let context = json!({
        "targetingKey": "user-1234",
        "email": "ann@example.org",
        "tier": "preview",
        "user": {"name": "queen"},
    });

    let mut group = c.benchmark_group("flags_evaluate");
    for key in ["static", "targeting", "fractional"] {
        assert!(flags.evaluate(key, &context, None).is_ok());
        group.bench_function(key, |b| {
            b.iter(|| black_box(flags.evaluate(black_box(key), black_box(&context), None)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
