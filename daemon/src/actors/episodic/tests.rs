//! The episodic buffer against a brute-force reference, plus eviction, decay, forget, validation, the
//! cache and recovery from the store. The actor runs under a real supervisor over a temp store.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::actors::episodic::config::EpisodicConfig;
use crate::config::Config;
use crate::runtime::tasks::Tasks;
use crate::supervisor::policy::Rng;
use crate::supervisor::{ActorState, Supervisor};

const NOW: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;

fn config(dim: u64, capacity: u64) -> EpisodicConfig {
    EpisodicConfig {
        capacity,
        embedding_dimension: dim,
        half_life_seconds: 3600,
        max_k: 50,
        max_batch: 400,
        ..Config::default().episodic
    }
}

struct Running {
    episodic: Episodic,
    supervisor: Supervisor,
    tasks: Tasks,
    token: CancellationToken,
    store: Store,
}

async fn start(dir: &Path, config: &EpisodicConfig) -> Running {
    let defaults = Config::default();
    let store = Store::open(dir, &defaults.store).unwrap();
    let mut builder = SupervisorBuilder::new(defaults.supervisor.clone(), store.clone());
    let episodic =
        Episodic::register(&mut builder, config, ActorConfig::default(), &store).unwrap();
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let supervisor = builder.start(&tasks, token.clone(), None).await;
    Running {
        episodic,
        supervisor,
        tasks,
        token,
        store,
    }
}

impl Running {
    /// Stops the actor and closes the store: the directory can be opened again at once.
    async fn stop(self) {
        let Running {
            episodic,
            supervisor,
            tasks,
            token,
            store,
        } = self;
        token.cancel();
        supervisor.wait_stopped().await.unwrap();
        tasks.close();
        tasks.wait().await;
        drop((episodic, supervisor));
        store.close().unwrap();
    }
}

fn random_vector(rng: &mut Rng, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|_| (rng.next_u64() % 20_001) as f32 / 10_000.0 - 1.0)
        .collect()
}

fn episode(text: &str, embedding: Vec<f32>) -> NewEpisode {
    NewEpisode {
        timestamp_ms: Some(NOW),
        source: "camera".into(),
        kind: "observation".into(),
        text: text.into(),
        embedding,
        ..NewEpisode::default()
    }
}

/// What the reference keeps of each stored episode.
#[derive(Clone)]
struct Reference {
    id: String,
    ts: i64,
    importance: f64,
    source: String,
    kind: String,
    embedding: Vec<f32>,
}

/// Brute force in f64: score every held episode, sort, take k.
fn reference_top(
    held: &[Reference],
    query: &[f32],
    k: usize,
    filter: &Filter,
    now: i64,
    half_life_ms: f64,
) -> Vec<(String, f64)> {
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let qn = norm(query);
    let mut scored: Vec<(String, f64, String)> = held
        .iter()
        .filter(|r| {
            filter.since_ms.is_none_or(|s| r.ts >= s)
                && filter.until_ms.is_none_or(|u| r.ts < u)
                && filter.source.as_ref().is_none_or(|s| &r.source == s)
                && filter.kind.as_ref().is_none_or(|k| &r.kind == k)
        })
        .map(|r| {
            let dot: f64 = r
                .embedding
                .iter()
                .zip(query)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let cos = dot / (qn * norm(&r.embedding));
            let age = (now - r.ts).max(0) as f64;
            let score = cos * 2f64.powf(-age / half_life_ms) * r.importance;
            (r.id.clone(), score, r.id.clone())
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)));
    scored.truncate(k);
    scored.into_iter().map(|(id, s, _)| (id, s)).collect()
}

#[tokio::test]
async fn query_matches_a_brute_force_reference_with_filters_and_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 24;
    let capacity = 150;
    let running = start(dir.path(), &config(dim, capacity)).await;
    let mut rng = Rng::new(2024);
    let sources = ["camera", "mic", "planner"];
    let kinds = ["observation", "thought"];
    let mut all = Vec::new();
    for batch in 0..4 {
        let mut episodes = Vec::new();
        for i in 0..60 {
            let mut e = episode(
                &format!("episode {batch}-{i}"),
                random_vector(&mut rng, dim as usize),
            );
            e.timestamp_ms = Some(NOW - (rng.next_u64() % (10 * HOUR_MS as u64)) as i64);
            e.importance = Some((rng.next_u64() % 1001) as f32 / 1000.0);
            e.source = sources[(rng.next_u64() % 3) as usize].into();
            e.kind = kinds[(rng.next_u64() % 2) as usize].into();
            episodes.push(e);
        }
        let stored = running
            .episodic
            .store("episodes", episodes.clone())
            .await
            .unwrap();
        for ((id, ts), e) in stored.episodes.iter().zip(episodes) {
            all.push(Reference {
                id: id.clone(),
                ts: *ts,
                importance: f64::from(e.importance.unwrap()),
                source: e.source,
                kind: e.kind,
                embedding: e.embedding,
            });
        }
    }
    // 240 stored into 150: the oldest 90 are gone.
    let held = &all[all.len() - capacity as usize..];
    assert_eq!(running.episodic.len().unwrap(), capacity as usize);

    let filters = [
        Filter::default(),
        Filter {
            source: Some("mic".into()),
            ..Filter::default()
        },
        Filter {
            kind: Some("thought".into()),
            since_ms: Some(NOW - 5 * HOUR_MS),
            until_ms: Some(NOW - HOUR_MS),
            ..Filter::default()
        },
        Filter {
            source: Some("nobody".into()),
            ..Filter::default()
        },
    ];
    for round in 0..20 {
        let query = random_vector(&mut rng, dim as usize);
        let filter = &filters[round % filters.len()];
        let k = 1 + round * 2;
        let got = running
            .episodic
            .query_at(&query, k as u32, filter, NOW)
            .unwrap();
        let want = reference_top(held, &query, k, filter, NOW, 3_600_000.0);
        let got_ids: Vec<_> = got.results.iter().map(|s| s.episode.id()).collect();
        let want_ids: Vec<_> = want.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(got_ids, want_ids, "round {round}, filter {filter:?}");
        for (s, (_, score)) in got.results.iter().zip(&want) {
            assert!(
                (f64::from(s.score) - score).abs() < 1e-5,
                "{} vs {score}",
                s.score
            );
            assert!(
                (f64::from(s.similarity * s.decay * s.episode.data.importance) - score).abs()
                    < 1e-5
            );
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn the_ring_evicts_the_oldest_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(4, 5)).await;
    let mut ids = Vec::new();
    let mut evicted = 0;
    for i in 0..8 {
        let stored = running
            .episodic
            .store(
                "episode",
                vec![episode(&format!("e{i}"), vec![1.0, i as f32, 0.0, 0.5])],
            )
            .await
            .unwrap();
        evicted += stored.evicted;
        ids.push(stored.episodes[0].0.clone());
    }
    assert_eq!(evicted, 3);
    let recent: Vec<String> = running
        .episodic
        .recent(10, &Filter::default())
        .unwrap()
        .iter()
        .map(|e| e.data.text.clone())
        .collect();
    assert_eq!(recent, ["e7", "e6", "e5", "e4", "e3"]);
    assert!(matches!(
        running.episodic.get(&ids[2]),
        Err(EpisodicError::NotFound(_))
    ));
    let kept = running.episodic.get(&ids[3]).unwrap();
    assert_eq!(kept.data.text, "e3");
    assert_eq!(kept.embedding, vec![1.0, 3.0, 0.0, 0.5], "stored exactly");
    // A batch larger than the ring keeps its newest episodes.
    let batch: Vec<_> = (0..7)
        .map(|i| episode(&format!("b{i}"), vec![1.0, 0.0, 0.0, i as f32]))
        .collect();
    let stored = running.episodic.store("episodes", batch).await.unwrap();
    assert_eq!(stored.evicted, 5 + 2);
    let recent: Vec<String> = running
        .episodic
        .recent(10, &Filter::default())
        .unwrap()
        .iter()
        .map(|e| e.data.text.clone())
        .collect();
    assert_eq!(recent, ["b6", "b5", "b4", "b3", "b2"]);
    running.stop().await;
}

#[tokio::test]
async fn decay_halves_the_score_per_half_life_and_importance_weighs() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(3, 10)).await;
    let v = vec![0.2, 0.4, 0.9];
    let mut fresh = episode("fresh", v.clone());
    fresh.timestamp_ms = Some(NOW);
    let mut old = episode("old", v.clone());
    old.timestamp_ms = Some(NOW - HOUR_MS);
    let mut older = episode("older", v.clone());
    older.timestamp_ms = Some(NOW - 2 * HOUR_MS);
    let mut minor = episode("minor", v.clone());
    minor.importance = Some(0.25);
    running
        .episodic
        .store("episodes", vec![fresh, old, older, minor])
        .await
        .unwrap();
    let got = running
        .episodic
        .query_at(&v, 4, &Filter::default(), NOW)
        .unwrap();
    let scores: BTreeMap<String, (f32, f32)> = got
        .results
        .iter()
        .map(|s| (s.episode.data.text.clone(), (s.score, s.decay)))
        .collect();
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    assert!(close(scores["fresh"].0, 1.0), "{scores:?}");
    assert!(close(scores["old"].1, 0.5) && close(scores["old"].0, 0.5));
    assert!(close(scores["older"].1, 0.25) && close(scores["older"].0, 0.25));
    assert!(close(scores["minor"].0, 0.25));
    // Order: best first; equal scores go to the newer episode.
    let order: Vec<_> = got
        .results
        .iter()
        .map(|s| s.episode.data.text.as_str())
        .collect();
    assert_eq!(order, ["fresh", "old", "minor", "older"]);
    // An episode from the future counts as age 0.
    let got = running
        .episodic
        .query_at(&v, 1, &Filter::default(), NOW - 10 * HOUR_MS)
        .unwrap();
    assert!(close(got.results[0].decay, 1.0));
    running.stop().await;
}

#[tokio::test]
async fn forget_by_ids_and_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(2, 20)).await;
    let mut episodes = Vec::new();
    for i in 0..6 {
        let mut e = episode(&format!("e{i}"), vec![1.0, i as f32]);
        e.source = if i % 2 == 0 { "cam" } else { "mic" }.into();
        episodes.push(e);
    }
    let stored = running.episodic.store("episodes", episodes).await.unwrap();
    let removed = running
        .episodic
        .forget(ForgetTarget::Ids(vec![
            stored.episodes[0].0.clone(),
            format_id(999),
        ]))
        .await
        .unwrap();
    assert_eq!(removed, 1, "unknown ids are not counted");
    let removed = running
        .episodic
        .forget(ForgetTarget::Filter(Filter {
            source: Some("mic".into()),
            ..Filter::default()
        }))
        .await
        .unwrap();
    assert_eq!(removed, 3);
    let left: Vec<String> = running
        .episodic
        .recent(10, &Filter::default())
        .unwrap()
        .iter()
        .map(|e| e.data.text.clone())
        .collect();
    assert_eq!(left, ["e4", "e2"]);
    // Forgotten slots are reused; ids never are.
    let again = running
        .episodic
        .store("episode", vec![episode("new", vec![0.0, 1.0])])
        .await
        .unwrap();
    assert_eq!(again.episodes[0].0, format_id(6));
    running.stop().await;
}

#[tokio::test]
async fn the_ring_comes_back_after_a_restart_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let running = start(dir.path(), &config(3, 6)).await;
        for i in 0..9 {
            let mut e = episode(&format!("e{i}"), vec![i as f32, 1.0, -1.0]);
            e.metadata.insert("n".into(), i.to_string());
            e.importance = Some(0.5);
            running.episodic.store("episode", vec![e]).await.unwrap();
        }
        // An actor restart (new incarnation) reloads from the store, too.
        let info = running.supervisor.restart(ACTOR_NAME).await.unwrap();
        assert_eq!(info.state, ActorState::Running);
        before = running.episodic.recent(10, &Filter::default()).unwrap();
        assert_eq!(before.len(), 6);
        running.stop().await;
    }
    let running = start(dir.path(), &config(3, 6)).await;
    let after = running.episodic.recent(10, &Filter::default()).unwrap();
    assert_eq!(after, before);
    assert_eq!(after[0].data.metadata["n"], "8");
    let next = running
        .episodic
        .store("episode", vec![episode("next", vec![1.0, 1.0, 1.0])])
        .await
        .unwrap();
    assert_eq!(next.episodes[0].0, format_id(9), "ids continue");
    running.stop().await;

    // A smaller capacity keeps the newest.
    let running = start(dir.path(), &config(3, 2)).await;
    let texts: Vec<String> = running
        .episodic
        .recent(10, &Filter::default())
        .unwrap()
        .iter()
        .map(|e| e.data.text.clone())
        .collect();
    assert_eq!(texts, ["next", "e8"]);
    running.stop().await;
}

#[tokio::test]
async fn a_damaged_record_is_skipped_and_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let running = start(dir.path(), &config(2, 10)).await;
        running
            .episodic
            .store(
                "episodes",
                vec![episode("a", vec![1.0, 0.0]), episode("b", vec![0.0, 1.0])],
            )
            .await
            .unwrap();
        running.stop().await;
    }
    {
        let store = Store::open(dir.path(), &Config::default().store).unwrap();
        let tree = store.tree(trees::EPISODIC).unwrap();
        // Not an episode record: its envelope is fine, its payload is not an EpisodeRecord.
        tree.put(&actor::episode_key(0), &7u64).unwrap();
        drop(tree);
        store.close().unwrap();
    }
    let running = start(dir.path(), &config(2, 10)).await;
    let texts: Vec<String> = running
        .episodic
        .recent(10, &Filter::default())
        .unwrap()
        .iter()
        .map(|e| e.data.text.clone())
        .collect();
    assert_eq!(texts, ["b"]);
    let info = running.supervisor.get(ACTOR_NAME).unwrap();
    assert_eq!(info.errors, 1);
    assert!(info.last_error.unwrap().contains("skipped"));
    running.stop().await;
}

#[tokio::test]
async fn the_query_cache_hits_until_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(2, 10)).await;
    let e = &running.episodic;
    e.store("episode", vec![episode("a", vec![1.0, 0.0])])
        .await
        .unwrap();
    let q = [0.5, 0.5];
    let first = e.query(&q, 3, &Filter::default()).unwrap();
    let second = e.query(&q, 3, &Filter::default()).unwrap();
    assert!(!first.cached && second.cached);
    assert_eq!(first.results, second.results);
    assert!(
        !e.query(&q, 2, &Filter::default()).unwrap().cached,
        "k is part of the key"
    );
    e.store("episode", vec![episode("b", vec![0.0, 1.0])])
        .await
        .unwrap();
    let third = e.query(&q, 3, &Filter::default()).unwrap();
    assert!(!third.cached, "a write invalidates");
    assert_eq!(third.results.len(), 2);
    assert_eq!(e.cache_stats(), (1, 3));
    assert_eq!(e.shared.cache().len(), 1);
    running.stop().await;
}

fn fields(err: EpisodicError) -> Vec<String> {
    match err {
        EpisodicError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_inputs_name_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(3, 10)).await;
    let e = &running.episodic;
    let good = || episode("fine", vec![1.0, 2.0, 3.0]);
    let cases: Vec<(NewEpisode, &str)> = vec![
        (episode("x", vec![1.0, 2.0]), "episode.embedding"),
        (episode("x", vec![1.0, f32::NAN, 2.0]), "episode.embedding"),
        (
            episode("x", vec![f32::INFINITY, 1.0, 2.0]),
            "episode.embedding",
        ),
        (episode("x", vec![0.0, 0.0, 0.0]), "episode.embedding"),
        (episode("  ", vec![1.0, 2.0, 3.0]), "episode.text"),
        (
            episode(&"x".repeat(8193), vec![1.0, 2.0, 3.0]),
            "episode.text",
        ),
        (
            NewEpisode {
                source: String::new(),
                ..good()
            },
            "episode.source",
        ),
        (
            NewEpisode {
                kind: "k".repeat(200),
                ..good()
            },
            "episode.kind",
        ),
        (
            NewEpisode {
                importance: Some(1.5),
                ..good()
            },
            "episode.importance",
        ),
        (
            NewEpisode {
                importance: Some(f32::NAN),
                ..good()
            },
            "episode.importance",
        ),
        (
            NewEpisode {
                id: "mine".into(),
                ..good()
            },
            "episode.id",
        ),
        (
            NewEpisode {
                timestamp_ms: Some(-1),
                ..good()
            },
            "episode.timestamp",
        ),
        (
            NewEpisode {
                timestamp_ms: Some(now_ms() + 2 * HOUR_MS),
                ..good()
            },
            "episode.timestamp",
        ),
        (
            NewEpisode {
                metadata: BTreeMap::from([(String::new(), "v".into())]),
                ..good()
            },
            "episode.metadata",
        ),
    ];
    for (bad, field) in cases {
        let err = e.store("episode", vec![bad]).await.unwrap_err();
        assert_eq!(fields(err), [field]);
    }
    // Several problems at once, in a batch, each with its index.
    let err = e
        .store("episodes", vec![good(), episode("", vec![1.0]), good()])
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["episodes[1].text", "episodes[1].embedding"]);
    let err = e.store("episodes", vec![]).await.unwrap_err();
    assert_eq!(fields(err), ["episodes"]);
    let err = e.store("episodes", vec![good(); 401]).await.unwrap_err();
    assert_eq!(fields(err), ["episodes"]);

    let f = Filter::default();
    assert_eq!(fields(e.query(&[1.0], 3, &f).unwrap_err()), ["embedding"]);
    assert_eq!(fields(e.query(&[1.0, 1.0, 1.0], 0, &f).unwrap_err()), ["k"]);
    assert_eq!(
        fields(e.query(&[1.0, 1.0, 1.0], 51, &f).unwrap_err()),
        ["k"]
    );
    let backwards = Filter {
        since_ms: Some(10),
        until_ms: Some(5),
        ..Filter::default()
    };
    assert_eq!(
        fields(e.query(&[1.0, 1.0, 1.0], 1, &backwards).unwrap_err()),
        ["filter.until"]
    );
    assert_eq!(fields(e.recent(0, &f).unwrap_err()), ["n"]);
    assert_eq!(fields(e.get("nope").unwrap_err()), ["id"]);
    assert!(matches!(
        e.get(&format_id(77)),
        Err(EpisodicError::NotFound(_))
    ));
    assert_eq!(
        fields(e.forget(ForgetTarget::Ids(vec![])).await.unwrap_err()),
        ["ids"]
    );
    assert_eq!(
        fields(
            e.forget(ForgetTarget::Ids(vec!["zz".into()]))
                .await
                .unwrap_err()
        ),
        ["ids[0]"]
    );
    assert_eq!(
        fields(e.forget(ForgetTarget::Filter(f)).await.unwrap_err()),
        ["filter"]
    );
    // Nothing bad was stored.
    assert_eq!(e.len().unwrap(), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_stopped_actor_refuses_writes_but_reads_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(2, 10)).await;
    running
        .episodic
        .store("episode", vec![episode("kept", vec![1.0, 0.0])])
        .await
        .unwrap();
    running.supervisor.stop_actor(ACTOR_NAME).await.unwrap();
    let err = running
        .episodic
        .store("episode", vec![episode("lost", vec![1.0, 0.0])])
        .await
        .unwrap_err();
    assert!(matches!(
        ServiceError::from(err),
        ServiceError::Unavailable(_)
    ));
    assert_eq!(running.episodic.len().unwrap(), 1);
    running.supervisor.start_actor(ACTOR_NAME).await.unwrap();
    running
        .episodic
        .store("episode", vec![episode("again", vec![1.0, 0.0])])
        .await
        .unwrap();
    assert_eq!(running.episodic.len().unwrap(), 2);
    running.stop().await;
}

#[test]
fn embeddings_round_trip_exactly_through_the_record_encoding() {
    let values = vec![0.1f32, -3.5e-8, f32::MAX, f32::MIN_POSITIVE, 1.0 / 3.0];
    let text = actor::encode_embedding(&values);
    assert_eq!(actor::decode_embedding(&text).unwrap(), values);
    assert!(actor::decode_embedding("!!").is_err());
    assert!(
        actor::decode_embedding("AAA=").is_err(),
        "2 bytes is not an f32"
    );
    assert_eq!(parse_id(&format_id(42)), Some(42));
    assert_eq!(parse_id("42"), None);
    let _ = Duration::ZERO;
}

/// Store commands that queue while a write is in flight share the next write and its flush, and
/// each caller still gets its own ids, in order, and its own eviction count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_stores_share_one_write_and_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(4, 8)).await;
    let episodic = running.episodic.clone();
    // Six held: the ring (capacity 8) has room for two more before commands start to evict.
    episodic
        .store(
            "episodes",
            (0..6)
                .map(|i| episode(&format!("old {i}"), vec![1.0, 0.0, 0.0, i as f32]))
                .collect(),
        )
        .await
        .unwrap();
    let before = running.store.commit_stats();
    // The committer stalls: the first command's write waits there, alone in its group (nothing else
    // was sent yet); the next ten queue in the mailbox behind it.
    let submitted = running.store.commits_submitted();
    running.store.hold_commits(true);
    let first = tokio::spawn({
        let episodic = episodic.clone();
        async move {
            episodic
                .store("episodes", vec![episode("first", vec![0.0, 1.0, 0.0, 0.0])])
                .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.store.commits_submitted() == submitted {
        assert!(
            std::time::Instant::now() < deadline,
            "the first write never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let queued: Vec<_> = (0..10)
        .map(|i| {
            let episodic = episodic.clone();
            tokio::spawn(async move {
                episodic
                    .store(
                        "episodes",
                        vec![episode(
                            &format!("queued {i}"),
                            vec![0.0, 0.0, 1.0, i as f32],
                        )],
                    )
                    .await
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.supervisor.get(ACTOR_NAME).unwrap().mailbox_depth < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ten stores never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.store.hold_commits(false);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.episodes.len(), 1);
    let mut ids = vec![first.episodes[0].0.clone()];
    let mut evicted = vec![first.evicted];
    for handle in queued {
        let stored = handle.await.unwrap().unwrap();
        assert_eq!(stored.episodes.len(), 1, "each caller gets its own id");
        ids.push(stored.episodes[0].0.clone());
        evicted.push(stored.evicted);
    }
    let flushes = running.store.commit_stats().flushes - before.flushes;
    assert!(flushes <= 2, "eleven stores took {flushes} flushes");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 11, "distinct ids");
    // 6 held + 11 stored into 8 slots: the first two fill the room, each of the other nine evicts one.
    assert_eq!(evicted.iter().sum::<u64>(), 9, "{evicted:?}");
    assert_eq!(
        evicted.iter().filter(|e| **e == 0).count(),
        2,
        "{evicted:?}"
    );
    assert_eq!(episodic.recent(8, &Filter::default()).unwrap().len(), 8);
    running.stop().await;
}
