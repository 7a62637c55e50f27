//! The learning actor: convergence, deduplication, checkpoint and replay exactness, backpressure and
//! bad inputs. The actor runs under a real supervisor over a temp store; a semaphore gate lets a test
//! decide exactly how many events the actor may learn.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::runtime::tasks::Tasks;
use crate::supervisor::policy::Rng;
use crate::supervisor::{ActorState, Supervisor};

fn config(checkpoint_every: u64) -> LearningConfig {
    LearningConfig {
        checkpoint_every,
        ..Config::default().learning
    }
}

struct Running {
    learning: Learning,
    supervisor: Supervisor,
    tasks: Tasks,
    token: CancellationToken,
    store: Store,
}

async fn start(dir: &Path, config: &LearningConfig, gate: Option<Arc<Semaphore>>) -> Running {
    start_supervised(dir, config, gate, Config::default().supervisor).await
}

async fn start_supervised(
    dir: &Path,
    config: &LearningConfig,
    gate: Option<Arc<Semaphore>>,
    supervision: crate::supervisor::config::SupervisorConfig,
) -> Running {
    let defaults = Config::default();
    let store = Store::open(dir, &defaults.store).unwrap();
    let mut builder = SupervisorBuilder::new(supervision, store.clone());
    let learning = Learning::register_with(&mut builder, config, &store, gate).unwrap();
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let supervisor = builder.start(&tasks, token.clone(), None).await;
    Running {
        learning,
        supervisor,
        tasks,
        token,
        store,
    }
}

impl Running {
    async fn stop(self) {
        let Running {
            learning,
            supervisor,
            tasks,
            token,
            store,
        } = self;
        token.cancel();
        supervisor.wait_stopped().await.unwrap();
        tasks.close();
        tasks.wait().await;
        drop((learning, supervisor));
        store.close().unwrap();
    }

    /// Waits until the model has learned `n` events (the actor runs on its own task).
    async fn learned(&self, n: u64) -> Stats {
        for _ in 0..10_000 {
            if let Ok(stats) = self.learning.stats()
                && stats.events_learned >= n
                && stats.pending == 0
            {
                assert_eq!(stats.events_learned, n, "learned more than sent");
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("not {n} events learned: {:?}", self.learning.stats());
    }
}

fn event(features: Vec<f64>, label: f64) -> FeedbackEvent {
    FeedbackEvent {
        features,
        label,
        event_id: None,
    }
}

fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Points in [-1, 1]^dim labelled by a random hyperplane, with a margin (so the set is separable).
fn separable_set(seed: u64, dim: usize, n: usize) -> Vec<(Vec<f64>, f64)> {
    let mut rng = Rng::new(seed);
    let truth: Vec<f64> = (0..dim).map(|_| uniform(&mut rng)).collect();
    let bias = uniform(&mut rng) * 0.2;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let x: Vec<f64> = (0..dim).map(|_| uniform(&mut rng)).collect();
        let margin: f64 = truth.iter().zip(&x).map(|(w, v)| w * v).sum::<f64>() + bias;
        if margin.abs() < 0.05 {
            continue;
        }
        out.push((x, if margin > 0.0 { 1.0 } else { 0.0 }));
    }
    out
}

#[test]
fn learning_converges_on_a_separable_set() {
    let data = separable_set(7, 8, 4000);
    let (train, held_out) = data.split_at(3000);
    let mut model = Model::new(8, 1000);
    for (i, (x, y)) in train.iter().enumerate() {
        model.learn(i as u64 + 1, x, *y, 0.5);
    }
    let correct = held_out
        .iter()
        .filter(|(x, y)| (model.predict(x) >= 0.5) == (*y >= 0.5))
        .count();
    let accuracy = correct as f64 / held_out.len() as f64;
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy}");
    // The prequential window saw the model learn: its last 1000 predictions were mostly right.
    assert!(
        model.window.accuracy().unwrap() >= 0.9,
        "{:?}",
        model.window
    );
    assert_eq!(model.window.len(), 1000);
    assert_eq!(model.events_learned, 3000);

    // Deterministic: the same events give bit-identical weights.
    let mut again = Model::new(8, 1000);
    for (i, (x, y)) in train.iter().enumerate() {
        again.learn(i as u64 + 1, x, *y, 0.5);
    }
    assert_eq!(again, model);
}

#[tokio::test]
async fn the_actor_learns_what_feedback_accepts_and_predicts_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(100);
    config.learning_rate = 0.5;
    let running = start(dir.path(), &config, None).await;
    let data = separable_set(11, 4, 700);
    let (train, held_out) = data.split_at(500);
    for (x, y) in train {
        let outcome = running.learning.feedback(event(x.clone(), *y)).await;
        assert!(
            matches!(outcome, Ok(Outcome::Accepted { .. })),
            "{outcome:?}"
        );
    }
    let stats = running.learned(500).await;
    assert_eq!(stats.dimension, 4);
    wait_for(|| running.learning.stats().unwrap().checkpoint_seq == 500).await;
    assert!(stats.accuracy.unwrap() > 0.8, "{stats:?}");
    let correct = held_out
        .iter()
        .filter(|(x, y)| (running.learning.predict(x).unwrap().0 >= 0.5) == (*y >= 0.5))
        .count();
    assert!(correct as f64 / held_out.len() as f64 >= 0.95, "{correct}");
    running.stop().await;
}

#[tokio::test]
async fn duplicates_by_content_and_by_event_id_are_acknowledged_and_not_learned_twice() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(100), None).await;
    let l = &running.learning;
    let a = event(vec![1.0, 0.0, -2.5], 1.0);
    assert_eq!(
        l.feedback(a.clone()).await.unwrap(),
        Outcome::Accepted { seq: 1 }
    );
    assert_eq!(
        l.feedback(a.clone()).await.unwrap(),
        Outcome::Duplicate { seq: 1 }
    );
    // -0.0 and 0.0 are the same number: the same canonical event.
    let negative_zero = event(vec![1.0, -0.0, -2.5], 1.0);
    assert_eq!(
        l.feedback(negative_zero).await.unwrap(),
        Outcome::Duplicate { seq: 1 }
    );
    // Another label is another event.
    assert_eq!(
        l.feedback(event(vec![1.0, 0.0, -2.5], 0.0)).await.unwrap(),
        Outcome::Accepted { seq: 2 }
    );
    // With an event_id the id is the identity: the same content under an id is a new event, and the
    // id again (whatever the content) is a duplicate.
    let with_id = FeedbackEvent {
        event_id: Some("evt-1".into()),
        ..a.clone()
    };
    assert_eq!(
        l.feedback(with_id).await.unwrap(),
        Outcome::Accepted { seq: 3 }
    );
    let same_id = FeedbackEvent {
        features: vec![9.0, 9.0, 9.0],
        label: 0.0,
        event_id: Some("evt-1".into()),
    };
    assert_eq!(
        l.feedback(same_id).await.unwrap(),
        Outcome::Duplicate { seq: 3 }
    );
    let stats = running.learned(3).await;
    assert_eq!(stats.duplicates, 3);
    assert_eq!(stats.events_accepted, 3);
    running.stop().await;

    // The keys and the duplicate count survive a restart.
    let running = start(dir.path(), &config(100), None).await;
    assert_eq!(
        running.learning.feedback(a).await.unwrap(),
        Outcome::Duplicate { seq: 1 }
    );
    let stats = running.learned(3).await;
    assert_eq!(stats.duplicates, 4);
    running.stop().await;
}

#[tokio::test]
async fn a_crash_without_checkpoint_replays_exactly_the_events_after_it() {
    let data = separable_set(3, 5, 57);
    // The uninterrupted run, computed directly.
    let mut reference = Model::new(5, 1000);
    for (i, (x, y)) in data.iter().enumerate() {
        reference.learn(i as u64 + 1, x, *y, 0.1);
    }

    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(10), None).await;
    for (x, y) in &data[..25] {
        running
            .learning
            .feedback(event(x.clone(), *y))
            .await
            .unwrap();
    }
    let stats = running.learned(25).await;
    assert_eq!(stats.checkpoint_seq, 20);
    // From here on, stops leave no checkpoint (as kill -9 would): an actor restart reloads the
    // checkpoint at 20 and replays the 5 events after it.
    running.learning.crash_on_stop();
    let info = running.supervisor.restart(ACTOR_NAME).await.unwrap();
    assert_eq!(info.state, ActorState::Running);
    let stats = running.learned(25).await;
    assert_eq!(stats.replayed, 5);
    for (x, y) in &data[25..37] {
        running
            .learning
            .feedback(event(x.clone(), *y))
            .await
            .unwrap();
    }
    assert_eq!(running.learned(37).await.checkpoint_seq, 30);
    // "kill -9": no checkpoint at the stop; the store keeps the checkpoint at 30 and events 31..37.
    running.stop().await;

    let running = start(dir.path(), &config(10), None).await;
    let stats = running.learned(37).await;
    assert_eq!(stats.checkpoint_seq, 30);
    assert_eq!(stats.replayed, 7);
    // Every event re-sent (those whose ack was lost included) is a duplicate, learned once.
    for (x, y) in &data[..37] {
        let outcome = running.learning.feedback(event(x.clone(), *y)).await;
        assert!(
            matches!(outcome, Ok(Outcome::Duplicate { .. })),
            "{outcome:?}"
        );
    }
    for (x, y) in &data[37..] {
        running
            .learning
            .feedback(event(x.clone(), *y))
            .await
            .unwrap();
    }
    let stats = running.learned(57).await;
    assert_eq!(stats.duplicates, 37);
    assert_eq!(running.learning.model().unwrap(), reference);
    running.stop().await;

    // A clean stop checkpoints: nothing to replay, the same model, and the covered events are gone.
    let running = start(dir.path(), &config(10), None).await;
    let stats = running.learned(57).await;
    assert_eq!((stats.checkpoint_seq, stats.replayed), (57, 0));
    assert_eq!(running.learning.model().unwrap(), reference);
    let tree = running.store.tree(crate::store::trees::LEARNING).unwrap();
    assert_eq!(tree.scan_prefix::<EventRecord>(EVENT_PREFIX).count(), 0);
    drop(tree);
    let snapshot = running.learning.snapshot().unwrap();
    assert_eq!(snapshot.weights, reference.weight_bytes());
    assert_eq!(snapshot.sha256_hex.len(), 64);
    running.stop().await;
}

#[tokio::test]
async fn backpressure_pauses_at_the_high_water_mark_and_resumes_at_the_low() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(100);
    config.queue_high_water = 10;
    config.queue_low_water = 4;
    let gate = Arc::new(Semaphore::new(0));
    let running = start(dir.path(), &config, Some(gate.clone())).await;
    let l = &running.learning;
    let feed = |i: u32| l.feedback(event(vec![f64::from(i), 1.0], f64::from(i % 2)));
    for i in 0..10 {
        assert!(matches!(feed(i).await, Ok(Outcome::Accepted { .. })));
    }
    // 10 pending: paused.
    let refused = feed(10).await.unwrap_err();
    assert!(
        matches!(refused, LearningError::Paused { pending: 10, .. }),
        "{refused:?}"
    );
    let status: tonic::Status = ServiceError::from(refused).into();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(l.stats().unwrap().paused);
    // A duplicate is still answered: it adds nothing to the queue.
    assert!(matches!(feed(3).await, Ok(Outcome::Duplicate { .. })));

    // Learn 5: 5 pending is above the low-water mark, still paused.
    gate.add_permits(5);
    wait_for(|| l.stats().unwrap().events_learned == 5).await;
    assert!(matches!(
        feed(10).await,
        Err(LearningError::Paused { pending: 5, .. })
    ));
    assert!(l.stats().unwrap().paused);

    // One more: 4 pending, at the low-water mark: resumed.
    gate.add_permits(1);
    wait_for(|| !l.stats().unwrap().paused).await;
    assert!(matches!(feed(10).await, Ok(Outcome::Accepted { seq: 11 })));
    gate.add_permits(1000);
    let stats = running.learned(11).await;
    assert!(!stats.paused);
    running.stop().await;
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

fn fields(err: LearningError) -> Vec<String> {
    match err {
        LearningError::Invalid(violations) => violations.into_iter().map(|v| v.field).collect(),
        other => panic!("not invalid: {other:?}"),
    }
}

#[tokio::test]
async fn bad_inputs_name_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(100), None).await;
    let l = &running.learning;
    // Before any event the dimension is unknown: Predict says so.
    assert!(matches!(
        l.predict(&[1.0, 2.0]),
        Err(LearningError::NotReady(_))
    ));
    let err = l.feedback(event(vec![], 1.0)).await.unwrap_err();
    assert_eq!(fields(err), ["features"]);
    let err = l
        .feedback(event(vec![1.0, f64::NAN, f64::INFINITY], 0.0))
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["features[1]", "features[2]"]);
    for label in [f64::NAN, f64::NEG_INFINITY, 2.0, -0.5] {
        let err = l.feedback(event(vec![1.0], label)).await.unwrap_err();
        assert_eq!(fields(err), ["label"], "{label}");
    }
    let long = FeedbackEvent {
        event_id: Some("x".repeat(MAX_EVENT_ID_BYTES + 1)),
        ..event(vec![1.0], 1.0)
    };
    assert_eq!(fields(l.feedback(long).await.unwrap_err()), ["event_id"]);
    let empty = FeedbackEvent {
        event_id: Some(String::new()),
        ..event(vec![1.0], 1.0)
    };
    assert_eq!(fields(l.feedback(empty).await.unwrap_err()), ["event_id"]);
    let too_many = event(vec![0.5; 4097], 1.0);
    assert_eq!(
        fields(l.feedback(too_many).await.unwrap_err()),
        ["features"]
    );

    // The first event fixes the dimension; another length is refused, in Feedback and Predict.
    l.feedback(event(vec![1.0, 2.0], 1.0)).await.unwrap();
    let err = l
        .feedback(event(vec![1.0, 2.0, 3.0], 1.0))
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["features"]);
    assert_eq!(fields(l.predict(&[1.0]).unwrap_err()), ["features"]);
    assert_eq!(
        fields(l.predict(&[1.0, f64::NAN]).unwrap_err()),
        ["features[1]"]
    );
    running.learned(1).await;
    let (score, learned) = l.predict(&[1.0, 2.0]).unwrap();
    assert!(score > 0.5 && score < 1.0, "{score}");
    assert_eq!(learned, 1);
    let status: tonic::Status = ServiceError::from(l.predict(&[]).unwrap_err()).into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    running.stop().await;

    // A configured dimension other than the stored one is refused at start, with the way out.
    let mut fixed = config(100);
    fixed.feature_dimension = 3;
    let defaults = Config::default();
    let store = Store::open(dir.path(), &defaults.store).unwrap();
    let mut builder = SupervisorBuilder::new(defaults.supervisor.clone(), store.clone());
    let err = Learning::register(&mut builder, &fixed, &store)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("dimension 2"), "{err}");
    drop(builder);
    store.close().unwrap();
}

#[test]
fn the_window_and_the_weights_round_trip_through_the_checkpoint() {
    let mut model = Model::new(3, 10);
    let data = separable_set(5, 3, 23);
    for (i, (x, y)) in data.iter().enumerate() {
        model.learn(i as u64 + 1, x, *y, 0.3);
    }
    let record = CheckpointRecord::of(&model);
    assert_eq!(record.model(10).unwrap(), model);
    // A smaller window keeps the newest outcomes.
    let smaller = record.model(4).unwrap();
    assert_eq!(smaller.window.len(), 4);

    let features = [0.1, -0.0, 1e300];
    let stored = EventRecord::new(9, &features, 0.25);
    let (back, label) = stored.decode().unwrap();
    assert_eq!(
        back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        features.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(label, 0.25);

    // The two kinds of key never collide, and the canonical bytes fix the layout.
    assert_ne!(
        model::dedup_key(&[1.0], 1.0, None),
        model::dedup_key(&[1.0], 1.0, Some("1"))
    );
    let bytes = model::canonical_bytes(&[1.0], 0.0);
    assert_eq!(bytes.len(), b"brainstem.learning.event.v1\0".len() + 4 + 16);
}

#[tokio::test]
async fn a_stuck_learning_step_is_seen_frozen_restarted_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let supervision = crate::supervisor::config::SupervisorConfig {
        hung_after_seconds: 1,
        hung_checks: 2,
        backoff_initial_ms: 10,
        ..Config::default().supervisor
    };
    let running = start_supervised(dir.path(), &config(4), None, supervision).await;
    running.learning.hang_once_at(6);
    let data = separable_set(9, 3, 10);
    for (x, y) in &data {
        running
            .learning
            .feedback(event(x.clone(), *y))
            .await
            .unwrap();
    }
    // The step of event 6 hangs: the watchdog sees it frozen, the supervisor kills and restarts the
    // actor, which reloads its checkpoint and learns every event once.
    let stats = running.learned(10).await;
    let info = running.supervisor.get(ACTOR_NAME).unwrap();
    assert!(info.kills >= 1, "{info:?}");
    assert_eq!(info.state, ActorState::Running);
    let mut reference = Model::new(3, 1000);
    for (i, (x, y)) in data.iter().enumerate() {
        reference.learn(i as u64 + 1, x, *y, 0.1);
    }
    assert_eq!(running.learning.model().unwrap(), reference);
    assert_eq!(stats.events_learned, 10);
    running.stop().await;
}

#[tokio::test]
async fn a_stopped_learner_refuses_feedback_but_predict_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &config(100), None).await;
    let l = &running.learning;
    l.feedback(event(vec![1.0, -1.0], 1.0)).await.unwrap();
    running.learned(1).await;
    // What `modules.learning = off` does: an operator stop.
    let info = running.supervisor.stop_actor(ACTOR_NAME).await.unwrap();
    assert_eq!(info.state, ActorState::Stopped);
    let err = l.feedback(event(vec![2.0, -1.0], 1.0)).await.unwrap_err();
    let status: tonic::Status = ServiceError::from(err).into();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let (score, learned) = l.predict(&[1.0, -1.0]).unwrap();
    assert!(score > 0.5);
    assert_eq!(learned, 1);
    running.supervisor.start_actor(ACTOR_NAME).await.unwrap();
    assert!(matches!(
        l.feedback(event(vec![2.0, -1.0], 1.0)).await,
        Ok(Outcome::Accepted { seq: 2 })
    ));
    running.learned(2).await;
    running.stop().await;
}

#[tokio::test]
async fn dedup_keys_are_kept_for_the_retention_and_only_for_checkpointed_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(3);
    config.dedup_retention_seconds = 60;
    let running = start(dir.path(), &config, None).await;
    let l = &running.learning;
    let e = |i: u32| event(vec![f64::from(i)], 1.0);
    for i in 1..=3 {
        l.feedback(e(i)).await.unwrap();
    }
    running.learned(3).await;
    wait_for(|| l.stats().unwrap().checkpoint_seq == 3).await;
    // Within the retention: a repeat is a duplicate.
    assert!(matches!(
        l.feedback(e(1)).await,
        Ok(Outcome::Duplicate { seq: 1 })
    ));

    // Two minutes later, the next checkpoint (at 6) removes the keys of events 1..=6, which are
    // older than 60 s by that clock; event 7 is not covered by a checkpoint and keeps its key.
    l.advance_clock(Duration::from_secs(120));
    for i in 4..=7 {
        l.feedback(e(i)).await.unwrap();
    }
    running.learned(7).await;
    wait_for(|| l.stats().unwrap().checkpoint_seq == 6).await;
    assert!(matches!(
        l.feedback(e(7)).await,
        Ok(Outcome::Duplicate { seq: 7 })
    ));
    // Event 1's key expired: the same content is a new event now.
    assert!(matches!(
        l.feedback(e(1)).await,
        Ok(Outcome::Accepted { seq: 8 })
    ));
    let tree = running.store.tree(crate::store::trees::LEARNING).unwrap();
    let keys = tree.scan_prefix::<DedupRecord>(DEDUP_PREFIX).count();
    let expiries = tree.scan_prefix::<ExpiryRecord>(EXPIRY_PREFIX).count();
    assert_eq!((keys, expiries), (2, 2), "events 7 and 8 keep their keys");
    drop(tree);
    running.learned(8).await;
    running.stop().await;
}
