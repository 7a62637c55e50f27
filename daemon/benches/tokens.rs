//! In-process cost of token verification (the path the authorization layer will take for every call
//! that presents a bearer token): parse, key lookup, HMAC-SHA256, claims decode, expiry, revocation
//! and capability checks. Also Issue (which writes a record) for scale.
//!
//! `tokens_scale`: Revoke and List with 1,000 and 20,000 tokens stored, of which the caller holds 10.
//! Both look the caller's tokens up in an index, so their cost should not grow with the tokens stored
//! (before the index: Revoke p50 1.1 ms → 12.8 ms, List 10 ms → 231 ms over RPC).
//!
//! Measured on the 2-core dev box, shared (criterion median, 3 s): before the index, list_own 0.79 ms
//! at 1k → 18.9 ms at 20k, revoke 3.9 ms → 20.7 ms; with it, list_own 12 µs → 18 µs, revoke 30 µs →
//! 24 µs. Each revoke iteration issues its token first, so the store grows by the iteration count
//! during that case (which is why the old 1k revoke figure is above 1k tokens' worth of scan).
//!
//! `cargo bench -p brainstemd --bench tokens`

use std::sync::Arc;

use brainstemd::access::authz::Holdings;
use brainstemd::crypto::MasterKey;
use brainstemd::store::Store;
use brainstemd::store::config::{FlushPolicy, StoreConfig};
use brainstemd::tokens::config::TokensConfig;
use brainstemd::tokens::{IssueRequest, ManualClock, Requester, TokenService};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

fn service(dir: &std::path::Path) -> TokenService {
    let store = Store::open(
        dir,
        &StoreConfig {
            flush: FlushPolicy::Interval,
            flush_interval_ms: 500,
            cache_capacity_bytes: 64 << 20,
            min_free_bytes: 0,
        },
    )
    .expect("store opens");
    let settings = TokensConfig {
        max_ttl_seconds: 3600,
        rotate_after_seconds: 0,
        retire_after_seconds: 3600,
    };
    let master = std::sync::Arc::new(
        brainstemd::crypto::keyset::KeySet::open(
            &store,
            MasterKey::new(&[7; 32]).expect("32-byte key"),
            std::path::Path::new("bench.key"),
        )
        .expect("no key record yet"),
    );
    TokenService::open(
        &settings,
        master,
        &store,
        Arc::new(ManualClock::new(1_800_000_000)),
    )
    .expect("token service opens")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = service(dir.path());
    let admin = Holdings {
        roles: Vec::new().into(),
        capabilities: vec!["*".to_owned()],
    };
    let issue = |caps: &[&str]| {
        runtime
            .block_on(tokens.issue(
                Requester {
                    principal: "spiffe://b/admin",
                    holdings: &admin,
                },
                IssueRequest {
                    principal: "spiffe://b/agent/web".to_owned(),
                    capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                    ttl_seconds: 600,
                },
            ))
            .expect("issue")
    };
    let plain = issue(&["vision.*", "web.read"]);
    // 1,000 other revocations in memory, and an attenuation chain three deep.
    for _ in 0..1000 {
        let other = issue(&["web.read"]);
        runtime
            .block_on(tokens.revoke(
                Requester {
                    principal: "spiffe://b/admin",
                    holdings: &admin,
                },
                &other.id,
            ))
            .expect("revoke");
    }
    let mut deep = plain.clone();
    for _ in 0..3 {
        deep = runtime
            .block_on(tokens.attenuate(
                "spiffe://b/agent/web",
                brainstemd::tokens::AttenuateRequest {
                    token: deep.token.clone(),
                    capabilities: vec!["vision.*".to_owned()],
                    ttl_seconds: 0,
                },
            ))
            .expect("attenuate");
    }
    let mut tampered = plain.token.clone();
    tampered.pop();
    tampered.push('A');

    let mut group = c.benchmark_group("tokens");
    group.bench_function("verify", |b| {
        b.iter(|| tokens.verify(&plain.token, Some("vision.capture")))
    });
    group.bench_function("verify_depth3_1000_revoked", |b| {
        b.iter(|| tokens.verify(&deep.token, Some("vision.capture")))
    });
    group.bench_function("verify_presented", |b| {
        b.iter(|| tokens.verify_presented(&plain.token, "spiffe://b/agent/web"))
    });
    group.bench_function("reject_tampered", |b| {
        b.iter(|| tokens.verify(&tampered, None))
    });
    group.bench_function("reject_garbage", |b| {
        b.iter(|| tokens.verify("not.a.token", None))
    });
    group.finish();
}

fn bench_scale(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let admin_holdings = Holdings {
        roles: Vec::new().into(),
        capabilities: vec!["*".to_owned()],
    };
    let admin = Requester {
        principal: "spiffe://b/admin",
        holdings: &admin_holdings,
    };
    let web_holdings = Holdings {
        roles: Vec::new().into(),
        capabilities: vec!["tokens.list".to_owned(), "tokens.revoke".to_owned()],
    };
    let web = Requester {
        principal: "spiffe://b/agent/web",
        holdings: &web_holdings,
    };
    let issue = |tokens: &TokenService, principal: &str| {
        runtime
            .block_on(tokens.issue(
                admin,
                IssueRequest {
                    principal: principal.to_owned(),
                    capabilities: vec!["web.read".to_owned()],
                    ttl_seconds: 600,
                },
            ))
            .expect("issue")
    };
    let mut group = c.benchmark_group("tokens_scale");
    for stored in [1_000usize, 20_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = service(dir.path());
        for i in 0..stored - 10 {
            issue(&tokens, &format!("spiffe://b/agent/bulk-{}", i % 100));
        }
        for _ in 0..10 {
            issue(&tokens, web.principal);
        }
        group.bench_with_input(BenchmarkId::new("list_own", stored), &stored, |b, _| {
            b.iter(|| tokens.list(web, None, false).expect("list"))
        });
        group.bench_with_input(BenchmarkId::new("revoke", stored), &stored, |b, _| {
            b.iter_batched(
                || issue(&tokens, web.principal).id,
                |id| runtime.block_on(tokens.revoke(web, &id)).expect("revoke"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_scale);
criterion_main!(benches);
