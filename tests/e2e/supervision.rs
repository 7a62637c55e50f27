//! The Supervisor and Episodic services over mutual TLS: the contract, capabilities, bad input for every
//! field, backpressure, health mapping, and (with the real binary) the episodic ring after kill -9.

use std::time::Duration;

use brainstem_client::v1::{
    Episode, EpisodeFilter, ForgetRequest, GetActorRequest, GetEpisodeRequest, GetHealthRequest,
    ListActorsRequest, QueryRequest, RecentRequest, RestartActorRequest, StartActorRequest,
    StopActorRequest, StoreBatchRequest, StoreRequest, WatchActorsRequest,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{DaemonProcess, health, options_for, violations};
use crate::inprocess::InProcess;

fn episode(text: &str, embedding: Vec<f32>) -> Episode {
    Episode {
        source: "camera".into(),
        kind: "observation".into(),
        text: text.into(),
        embedding,
        ..Default::default()
    }
}

/// A unit vector along axis `i` in `dim` dimensions, slightly tilted so none is all-zero elsewhere.
fn axis(i: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| if j == i % dim { 1.0 } else { 0.01 })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_lists_restarts_stops_and_starts_actors() {
    let daemon = InProcess::start("", "").await;
    let mut client = daemon.client().await;

    let actors = client
        .supervisor
        .list_actors(ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .actors;
    // The background workers are listed beside the actors, with their kind, state and counters.
    let audit_writer = actors
        .iter()
        .find(|a| a.name == "audit-writer")
        .expect("audit-writer listed");
    assert_eq!(
        (
            audit_writer.kind.as_str(),
            audit_writer.state.as_str(),
            audit_writer.restarts,
            audit_writer.panics,
            audit_writer.critical
        ),
        ("worker", "running", 0, 0, true)
    );
    for worker in ["policy-watch", "token-maintenance", "health-sync"] {
        assert!(
            actors
                .iter()
                .any(|a| a.name == worker && a.kind == "worker" && a.state == "running"),
            "{worker} in {actors:?}"
        );
    }
    let actors: Vec<_> = actors.into_iter().filter(|a| a.kind == "actor").collect();
    // In declared order; the perception and learning actors are not critical (see perception.rs
    // and learning.rs for them).
    assert_eq!(
        actors.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["episodic", "vision", "voice", "learning"]
    );
    assert!(actors[1..].iter().all(|a| !a.critical));
    let episodic = &actors[0];
    assert_eq!(
        (
            episodic.name.as_str(),
            episodic.state.as_str(),
            episodic.restarts
        ),
        ("episodic", "running", 0)
    );
    assert_eq!(episodic.mailbox_capacity, 1024);
    assert_eq!(episodic.restart_type, "permanent");
    for service in [
        "brainstem.v1.Episodic",
        "brainstem.actor.episodic",
        "brainstem.v1.Supervisor",
    ] {
        assert_eq!(
            health(&mut client, service).await,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }

    // A watcher sees the current state, then the restart's transitions.
    let mut watch = client
        .supervisor
        .watch_actors(WatchActorsRequest {
            name: "episodic".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.actor.unwrap().state, "running");
    assert_eq!(first.previous_state, "");

    let restarted = client
        .supervisor
        .restart_actor(RestartActorRequest {
            name: "episodic".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .actor
        .unwrap();
    assert_eq!(
        (restarted.state.as_str(), restarted.restarts),
        ("running", 1)
    );
    let mut transitions = Vec::new();
    while transitions.last().map(String::as_str) != Some("running") {
        let event = watch.message().await.unwrap().unwrap();
        transitions.push(event.actor.unwrap().state);
    }
    assert_eq!(transitions, ["stopping", "starting", "running"]);

    // Stopped: its health turns NOT_SERVING and writes are refused as UNAVAILABLE.
    let stopped = client
        .supervisor
        .stop_actor(StopActorRequest {
            name: "episodic".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .actor
        .unwrap();
    assert_eq!(stopped.state, "stopped");
    assert_eq!(
        health(&mut client, "brainstem.v1.Episodic").await,
        ServingStatus::NotServing as i32
    );
    // A stopped critical actor: the daemon is not ready.
    crate::harness::eventually("overall NOT_SERVING", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            (health(&mut client, "").await == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    let detail = client
        .supervisor
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(detail.live && !detail.ready);
    assert_eq!(detail.not_ready, ["episodic"]);
    let err = client
        .episodic
        .store(StoreRequest {
            episode: Some(episode("while stopped", axis(0, 384))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let started = client
        .supervisor
        .start_actor(StartActorRequest {
            name: "episodic".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .actor
        .unwrap();
    // Starting a stopped actor is not a restart (only the RestartActor above counted).
    assert_eq!((started.state.as_str(), started.restarts), ("running", 1));
    crate::harness::eventually("Episodic SERVING again", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            (health(&mut client, "brainstem.v1.Episodic").await == ServingStatus::Serving as i32)
                .then_some(())
        }
    })
    .await;

    let detail = client
        .supervisor
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(detail.live && detail.ready);
    assert!(detail.not_ready.is_empty());
    assert!(detail.rss_bytes > 0 && detail.threads > 0, "{detail:?}");
    assert_eq!(
        detail.actors.iter().filter(|a| a.kind == "actor").count(),
        4
    );
    crate::harness::eventually("overall SERVING again", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            (health(&mut client, "").await == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;

    let got = client
        .supervisor
        .get_actor(GetActorRequest {
            name: "episodic".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .actor
        .unwrap();
    assert_eq!(got.restarts, 1);
    let err = client
        .supervisor
        .get_actor(GetActorRequest {
            name: "no-such-actor".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for err in [
        client
            .supervisor
            .restart_actor(RestartActorRequest {
                name: String::new(),
            })
            .await
            .unwrap_err(),
        client
            .supervisor
            .stop_actor(StopActorRequest {
                name: "x".repeat(200),
            })
            .await
            .unwrap_err(),
        client
            .supervisor
            .watch_actors(WatchActorsRequest {
                name: "y".repeat(200),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(violations(&err), ["name"]);
    }
    let err = client
        .supervisor
        .start_actor(StartActorRequest {
            name: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The open watch stream does not hold the stop up.
    assert_eq!(daemon.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodic_store_query_recent_get_forget() {
    let daemon = InProcess::start("", "[episodic]\nembedding_dimension = 8\ncapacity = 5\n").await;
    let mut client = daemon.client().await;
    let stored = client
        .episodic
        .store(StoreRequest {
            episode: Some(episode("the door opened", axis(0, 8))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.id.len(), 16);
    assert!(stored.timestamp.is_some());
    let mut batch: Vec<Episode> = (1..6)
        .map(|i| episode(&format!("event {i}"), axis(i, 8)))
        .collect();
    batch[2].source = "mic".into();
    batch[2].importance = Some(0.5);
    batch[2].metadata.insert("speaker".into(), "alice".into());
    let ids = client
        .episodic
        .store_batch(StoreBatchRequest { episodes: batch })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids.ids.len(), 5);
    assert_eq!(ids.evicted, 1, "capacity 5: the first episode went");

    let results = client
        .episodic
        .query(QueryRequest {
            embedding: axis(3, 8),
            k: 3,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    let best = &results[0];
    let best_episode = best.episode.as_ref().unwrap();
    assert_eq!(best_episode.text, "event 3");
    assert_eq!(best_episode.metadata["speaker"], "alice");
    assert_eq!(best_episode.embedding, axis(3, 8));
    // Same direction, fresh, importance 0.5.
    assert!((best.similarity - 1.0).abs() < 1e-5, "{best:?}");
    assert!((best.score - 0.5 * best.decay).abs() < 1e-5, "{best:?}");
    assert!(results.windows(2).all(|w| w[0].score >= w[1].score));

    let filtered = client
        .episodic
        .query(QueryRequest {
            embedding: axis(3, 8),
            k: 5,
            filter: Some(EpisodeFilter {
                source: "camera".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(filtered.len(), 4);
    assert!(
        filtered
            .iter()
            .all(|r| r.episode.as_ref().unwrap().source == "camera")
    );

    let recent = client
        .episodic
        .recent(RecentRequest {
            n: 10,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .episodes;
    let texts: Vec<_> = recent.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        ["event 5", "event 4", "event 3", "event 2", "event 1"]
    );

    let got = client
        .episodic
        .get(GetEpisodeRequest {
            id: ids.ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .episode
        .unwrap();
    assert_eq!(got.text, "event 1");
    let err = client
        .episodic
        .get(GetEpisodeRequest {
            id: stored.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "evicted");

    let forgotten = client
        .episodic
        .forget(ForgetRequest {
            ids: vec![ids.ids[0].clone()],
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .forgotten;
    assert_eq!(forgotten, 1);
    let forgotten = client
        .episodic
        .forget(ForgetRequest {
            ids: vec![],
            filter: Some(EpisodeFilter {
                source: "mic".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .forgotten;
    assert_eq!(forgotten, 1);
    let left = client
        .episodic
        .recent(RecentRequest {
            n: 10,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .episodes;
    assert_eq!(left.len(), 3);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_named() {
    let daemon = InProcess::start("", "").await;
    let mut client = daemon.client().await;
    let e = &mut client.episodic;
    let good = || episode("fine", axis(1, 384));
    let store = |episode: Episode| StoreRequest {
        episode: Some(episode),
    };

    let cases: Vec<(StoreRequest, &[&str])> = vec![
        (StoreRequest { episode: None }, &["episode"]),
        (store(episode("x", axis(0, 383))), &["episode.embedding"]),
        (
            store(Episode {
                embedding: {
                    let mut v = axis(0, 384);
                    v[7] = f32::NAN;
                    v
                },
                ..good()
            }),
            &["episode.embedding"],
        ),
        (
            store(Episode {
                embedding: {
                    let mut v = axis(0, 384);
                    v[0] = f32::INFINITY;
                    v
                },
                ..good()
            }),
            &["episode.embedding"],
        ),
        (store(episode("", axis(0, 384))), &["episode.text"]),
        (
            store(episode(&"x".repeat(9000), axis(0, 384))),
            &["episode.text"],
        ),
        (
            store(Episode {
                source: String::new(),
                ..good()
            }),
            &["episode.source"],
        ),
        (
            store(Episode {
                id: "0000000000000001".into(),
                ..good()
            }),
            &["episode.id"],
        ),
        (
            store(Episode {
                importance: Some(-0.1),
                ..good()
            }),
            &["episode.importance"],
        ),
        (
            store(Episode {
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 2_000_000_000,
                }),
                ..good()
            }),
            &["episode.timestamp"],
        ),
    ];
    for (request, fields) in cases {
        let err = e.store(request).await.unwrap_err();
        assert_eq!(violations(&err), fields);
    }
    let err = e
        .store_batch(StoreBatchRequest {
            episodes: vec![good(), episode("", axis(0, 384)), good()],
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), ["episodes[1].text"]);
    let err = e
        .store_batch(StoreBatchRequest { episodes: vec![] })
        .await
        .unwrap_err();
    assert_eq!(violations(&err), ["episodes"]);

    let query = |embedding: Vec<f32>, k: u32| QueryRequest {
        embedding,
        k,
        filter: None,
    };
    assert_eq!(
        violations(&e.query(query(vec![1.0; 3], 5)).await.unwrap_err()),
        ["embedding"]
    );
    assert_eq!(
        violations(&e.query(query(vec![0.0; 384], 5)).await.unwrap_err()),
        ["embedding"]
    );
    assert_eq!(
        violations(&e.query(query(axis(0, 384), 0)).await.unwrap_err()),
        ["k"]
    );
    assert_eq!(
        violations(&e.query(query(axis(0, 384), 101)).await.unwrap_err()),
        ["k"]
    );
    let backwards = QueryRequest {
        filter: Some(EpisodeFilter {
            since: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            until: Some(prost_types::Timestamp {
                seconds: 50,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..query(axis(0, 384), 5)
    };
    assert_eq!(
        violations(&e.query(backwards).await.unwrap_err()),
        ["filter.until"]
    );
    assert_eq!(
        violations(
            &e.recent(RecentRequest { n: 0, filter: None })
                .await
                .unwrap_err()
        ),
        ["n"]
    );
    assert_eq!(
        violations(
            &e.get(GetEpisodeRequest {
                id: "not-an-id".into()
            })
            .await
            .unwrap_err()
        ),
        ["id"]
    );
    let err = e
        .get(GetEpisodeRequest {
            id: "00000000000000ff".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        violations(
            &e.forget(ForgetRequest {
                ids: vec![],
                filter: None
            })
            .await
            .unwrap_err()
        ),
        ["ids"]
    );
    assert_eq!(
        violations(
            &e.forget(ForgetRequest {
                ids: vec!["00000000000000ff".into()],
                filter: Some(EpisodeFilter::default()),
            })
            .await
            .unwrap_err()
        ),
        ["filter"]
    );
    assert_eq!(
        violations(
            &e.forget(ForgetRequest {
                ids: vec![],
                filter: Some(EpisodeFilter::default()),
            })
            .await
            .unwrap_err()
        ),
        ["filter"]
    );
    // Nothing got stored, and the daemon is fine.
    let left = e
        .recent(RecentRequest {
            n: 10,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .episodes;
    assert!(left.is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_gate_reads_and_writes() {
    let daemon = InProcess::start(
        "",
        r#"
[roles]
admin = ["*"]
observer = ["supervisor.read", "episodic.read"]
[[grants]]
principal = "observer"
roles = ["observer"]
"#,
    )
    .await;
    let mut observer = options_for(&daemon.state_dir, daemon.addr(), "observer")
        .connect()
        .await
        .unwrap();
    observer
        .supervisor
        .list_actors(ListActorsRequest {})
        .await
        .expect("supervisor.read lists");
    observer
        .episodic
        .recent(RecentRequest { n: 1, filter: None })
        .await
        .expect("episodic.read reads");
    let err = observer
        .supervisor
        .restart_actor(RestartActorRequest {
            name: "episodic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("supervisor.admin"),
        "{}",
        err.message()
    );
    let err = observer
        .episodic
        .store(StoreRequest {
            episode: Some(episode("no", axis(0, 384))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("episodic.write"),
        "{}",
        err.message()
    );

    let mut nobody = options_for(&daemon.state_dir, daemon.addr(), "nobody")
        .connect()
        .await
        .unwrap();
    let err = nobody
        .supervisor
        .list_actors(ListActorsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = nobody
        .episodic
        .query(QueryRequest {
            embedding: axis(0, 384),
            k: 1,
            filter: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_with_reject_answers_resource_exhausted_with_retry_info() {
    let daemon = InProcess::start("", 
        "[episodic]\nmailbox_capacity = 1\nmailbox_overflow = \"reject\"\nembedding_dimension = 4\n",
    )
    .await;
    let client = daemon.client().await;
    // Bursts of concurrent stores against a queue of one: some are refused, none is lost silently.
    let mut refused = None;
    let mut accepted = 0;
    for _round in 0..20 {
        let calls: Vec<_> = (0..32)
            .map(|i| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    client
                        .episodic
                        .store(StoreRequest {
                            episode: Some(episode(&format!("burst {i}"), axis(i, 4))),
                        })
                        .await
                })
            })
            .collect();
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => accepted += 1,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    refused = Some(status);
                }
            }
        }
        if refused.is_some() {
            break;
        }
    }
    let status = refused.expect("a queue of one refuses part of a burst of 32");
    let details = tonic_types::StatusExt::get_error_details(&status);
    let retry = details.retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
    // Everything accepted is there.
    let mut client = client;
    let held = client
        .episodic
        .recent(RecentRequest {
            n: 100,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .episodes
        .len();
    assert_eq!(held, accepted.min(100));
    daemon.stop().await;
}

/// The real binary: episodes acknowledged before a kill -9 come back, in order, after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_survive_kill_9_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let reply = client
            .episodic
            .store(StoreRequest {
                episode: Some(episode(&format!("before crash {i}"), axis(i, 384))),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(reply.id);
    }
    let batch = client
        .episodic
        .store_batch(StoreBatchRequest {
            episodes: (12..20)
                .map(|i| episode(&format!("before crash {i}"), axis(i, 384)))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    ids.extend(batch.ids);
    daemon.kill9().await;

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let recent = client
        .episodic
        .recent(RecentRequest {
            n: 50,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .episodes;
    let got: Vec<String> = recent.iter().rev().map(|e| e.id.clone()).collect();
    assert_eq!(got, ids, "every acknowledged episode, in the same order");
    assert_eq!(recent[0].text, "before crash 19");
    let best = client
        .episodic
        .query(QueryRequest {
            embedding: axis(7, 384),
            k: 1,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(best[0].episode.as_ref().unwrap().text, "before crash 7");
    let actors = client
        .supervisor
        .list_actors(ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .actors;
    let episodic = actors.iter().find(|a| a.name == "episodic").unwrap();
    assert_eq!(episodic.status, "20 episodes");
    daemon.stop().await;
}

/// The real binary: a dead audit writer is not silent. Stopped, it makes the daemon not ready
/// (`/readyz` 503, overall health NOT_SERVING, `health --detailed` not ready) while liveness stays up;
/// started again, all of it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_critical_worker_makes_the_daemon_not_ready() {
    use crate::harness::http_get;

    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    assert_eq!(http_get(daemon.metrics_addr, "/readyz").await.0, 200);

    let stopped = client
        .supervisor
        .stop_actor(StopActorRequest {
            name: "audit-writer".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .actor
        .unwrap();
    assert_eq!(
        (stopped.kind.as_str(), stopped.state.as_str()),
        ("worker", "stopped")
    );
    // The supervisor answers once the state is reached; /readyz reads it directly.
    assert_eq!(http_get(daemon.metrics_addr, "/readyz").await.0, 503);
    assert_eq!(http_get(daemon.metrics_addr, "/healthz").await.0, 200);
    let detail = client
        .supervisor
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(detail.live && !detail.ready);
    assert_eq!(detail.not_ready, ["audit-writer"]);
    crate::harness::eventually("overall NOT_SERVING", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            (health(&mut client, "").await == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;

    client
        .supervisor
        .start_actor(StartActorRequest {
            name: "audit-writer".into(),
        })
        .await
        .unwrap();
    assert_eq!(http_get(daemon.metrics_addr, "/readyz").await.0, 200);
    crate::harness::eventually("overall SERVING again", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            (health(&mut client, "").await == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
    // The start above was no restart; a restart of the worker is counted like an actor's.
    client
        .supervisor
        .restart_actor(RestartActorRequest {
            name: "audit-writer".into(),
        })
        .await
        .unwrap();
    let (_, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("brainstem_supervisor_actor_restarts_total{actor=\"audit-writer\"} 1"),
        "{metrics}"
    );
    daemon.stop().await;
}
