//! The Learning service with the real binary: feedback acknowledged = durable = learned exactly once,
//! across kill -9 with every unacknowledged event (and some acknowledged ones) sent again; Predict and
//! GetStats over gRPC; the actor listed by the supervisor; bad input named by field.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brainstem_client::Client;
use brainstem_client::v1::{
    FeedbackRequest, LearningStatsRequest, LearningStatsResponse, ListActorsRequest, PredictRequest,
};
use tonic::Code;

use crate::harness::{DaemonProcess, eventually, violations};

/// Checkpoints every 7 events, so the kill lands between checkpoints and the start replays.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("brainstemd.toml");
    std::fs::write(&path, "[learning]\ncheckpoint_every = 7\n").unwrap();
    path
}

async fn start(dir: &Path) -> DaemonProcess {
    let config = write_config(dir);
    DaemonProcess::start_with(dir, &[OsStr::new("--config"), config.as_os_str()]).await
}

/// Event `i` of writer `w`: even writers name their events, odd ones rely on the content hash.
fn event(w: u32, i: u32) -> FeedbackRequest {
    FeedbackRequest {
        features: vec![f64::from(w), f64::from(i), 1.0],
        label: f64::from((w + i) % 2),
        event_id: (w % 2 == 0).then(|| format!("w{w}-e{i}")),
    }
}

async fn stats(client: &mut Client) -> LearningStatsResponse {
    client
        .learning
        .get_stats(LearningStatsRequest {})
        .await
        .expect("GetStats")
        .into_inner()
}

/// Waits until `n` events are learned and none is pending.
async fn learned(client: &Client, n: u64) -> LearningStatsResponse {
    eventually(
        &format!("{n} events learned"),
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                let s = stats(&mut client).await;
                assert!(s.events_learned <= n, "learned more than sent: {s:?}");
                (s.events_learned == n && s.pending == 0).then_some(s)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_feedback_is_learned_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(dir.path()).await;
    let client = daemon.client().await;
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let mut client = client.clone();
        let tx = tx.clone();
        let attempted = attempted.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u32.. {
                attempted.lock().unwrap().insert((w, i));
                match client.learning.feedback(event(w, i)).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        if tx.send(((w, i), reply.accepted, reply.duplicate)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acknowledged = BTreeSet::new();
    let record = |acknowledged: &mut BTreeSet<(u32, u32)>,
                  (key, accepted, duplicate): ((u32, u32), bool, bool)| {
        assert!(accepted && !duplicate, "{key:?}: each event was sent once");
        acknowledged.insert(key);
    };
    while acknowledged.len() < 150 {
        record(&mut acknowledged, rx.recv().await.expect("writers run"));
    }
    daemon.kill9().await;
    for writer in writers {
        let _ = writer.await;
    }
    // Acknowledgements that raced the kill count too.
    while let Ok(ack) = rx.try_recv() {
        record(&mut acknowledged, ack);
    }
    let attempted = attempted.lock().unwrap().clone();
    let unacknowledged: Vec<(u32, u32)> = attempted.difference(&acknowledged).copied().collect();

    let daemon = start(dir.path()).await;
    let mut client = daemon.client().await;
    // Every event whose ack was not received, and every 10th that was (one of them twice).
    let mut resend: Vec<(u32, u32)> = unacknowledged.clone();
    resend.extend(acknowledged.iter().step_by(10).copied());
    resend.push(*acknowledged.iter().next().unwrap());
    // An unacknowledged event may have been made durable before the kill (then it is a duplicate now:
    // its ack was lost) or not (then it is accepted now); an acknowledged one is always a duplicate.
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for (w, i) in &resend {
        let reply = client
            .learning
            .feedback(event(*w, *i))
            .await
            .expect("re-sent feedback")
            .into_inner();
        assert!(reply.accepted != reply.duplicate, "{reply:?}");
        if acknowledged.contains(&(*w, *i)) {
            assert!(reply.duplicate, "acknowledged ({w}, {i}) accepted again");
        }
        accepted += u64::from(reply.accepted);
        duplicates += u64::from(reply.duplicate);
    }
    let distinct = attempted.len() as u64;
    assert_eq!(accepted + duplicates, resend.len() as u64);
    assert!(accepted <= unacknowledged.len() as u64);
    let s = learned(&client, distinct).await;
    assert_eq!(s.events_accepted, distinct, "{s:?}");
    assert_eq!(s.duplicates, duplicates, "{s:?}");
    assert_eq!(s.dimension, 3);

    // Predict works, and the supervisor lists the actor.
    let score = client
        .learning
        .predict(PredictRequest {
            features: vec![1.0, 2.0, 1.0],
        })
        .await
        .expect("Predict")
        .into_inner();
    assert!(score.score > 0.0 && score.score < 1.0, "{score:?}");
    assert_eq!(score.events_learned, distinct);
    let actors = client
        .supervisor
        .list_actors(ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .actors;
    let actor = actors
        .iter()
        .find(|a| a.name == "learning")
        .expect("learning is listed");
    assert_eq!(actor.state, "running", "{actor:?}");
    daemon.stop().await;

    // A clean stop checkpoints everything: nothing replayed, nothing learned twice.
    let daemon = start(dir.path()).await;
    let mut client = daemon.client().await;
    let again = stats(&mut client).await;
    assert_eq!(
        (again.events_learned, again.duplicates, again.replayed),
        (distinct, duplicates, 0),
        "{again:?}"
    );
    assert_eq!(again.checkpoint_sequence, distinct);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_feedback_is_refused_by_field_and_predict_answers() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let refusing = client.clone();
    let refused = |request: FeedbackRequest| {
        let mut client = refusing.clone();
        async move {
            let status = client.learning.feedback(request).await.unwrap_err();
            violations(&status)
        }
    };
    let base = FeedbackRequest {
        features: vec![0.5, -1.0],
        label: 1.0,
        event_id: None,
    };
    let empty = FeedbackRequest {
        features: vec![],
        ..base.clone()
    };
    assert_eq!(refused(empty).await, ["features"]);
    let nan = FeedbackRequest {
        features: vec![f64::NAN, 1.0],
        ..base.clone()
    };
    assert_eq!(refused(nan).await, ["features[0]"]);
    let label = FeedbackRequest {
        label: f64::INFINITY,
        ..base.clone()
    };
    assert_eq!(refused(label).await, ["label"]);
    let long_id = FeedbackRequest {
        event_id: Some("x".repeat(129)),
        ..base.clone()
    };
    assert_eq!(refused(long_id).await, ["event_id"]);

    let first = client
        .learning
        .feedback(base.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.accepted && !first.duplicate);
    let again = client.learning.feedback(base).await.unwrap().into_inner();
    assert!(again.duplicate && !again.accepted);
    let wrong_dimension = FeedbackRequest {
        features: vec![1.0, 2.0, 3.0],
        label: 0.0,
        event_id: None,
    };
    assert_eq!(refused(wrong_dimension).await, ["features"]);
    learned(&client, 1).await;
    let score = client
        .learning
        .predict(PredictRequest {
            features: vec![0.5, -1.0],
        })
        .await
        .unwrap()
        .into_inner()
        .score;
    assert!(score > 0.5, "{score}");
    let status = client
        .learning
        .predict(PredictRequest {
            features: vec![1.0],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let s = stats(&mut client).await;
    assert_eq!((s.events_learned, s.duplicates), (1, 1));
    daemon.stop().await;
}

/// `[learning] publish_as`: the learner's model appears in the registry as versions whose weights the
/// registry hashed, created by the learner, with the prequential accuracy as a quality metric that
/// DetectDrift reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_is_published_to_the_registry_with_its_accuracy() {
    use brainstem_client::v1::{DetectDriftRequest, GetLatestRequest, VerifyArtifactsRequest};

    let daemon = crate::inprocess::InProcess::start(
        "",
        "[learning]\ncheckpoint_every = 10\npublish_as = \"learning/online\"\npublish_interval_seconds = 1\n",
    )
    .await;
    let client = daemon.client().await;
    for i in 0..40u32 {
        let x = f64::from(i % 10) - 4.5;
        let reply = client
            .learning
            .clone()
            .feedback(FeedbackRequest {
                features: vec![x, 1.0],
                label: if x > 0.0 { 1.0 } else { 0.0 },
                event_id: Some(format!("pub-{i}")),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.accepted);
    }
    learned(&client, 40).await;
    let latest = eventually(
        "a published version that learned all 40 events",
        Duration::from_secs(20),
        || {
            let mut registry = client.registry.clone();
            async move {
                let v = registry
                    .get_latest(GetLatestRequest {
                        name: "learning/online".into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                (v.metrics.get("events_learned") == Some(&40.0)).then_some(v)
            }
        },
    )
    .await;
    assert_eq!(latest.created_by, "brainstemd/learning");
    assert_eq!(latest.weights_sha256.len(), 64);
    assert_eq!(
        latest.weights_size,
        2 * 8 + 8,
        "two weights and a bias, f64 each"
    );
    assert!(
        latest.metrics.contains_key("prequential_accuracy"),
        "{latest:?}"
    );
    let mut registry = client.registry.clone();
    let verified = registry
        .verify_artifacts(VerifyArtifactsRequest {
            name: "learning/online".into(),
            version: latest.version.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    let drift = registry
        .detect_drift(DetectDriftRequest {
            name: "learning/online".into(),
            version: latest.version.clone(),
            metric: "prequential_accuracy".into(),
            threshold_percent: 50.0,
            window_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drift.recent_samples >= 1, "{drift:?}");
    drop(client);
    assert_eq!(daemon.stop().await, 0);
}
