//! Supervisor behaviour under tokio's paused clock: timers (backoff, watchdog, stop deadlines) advance
//! instantly and deterministically; nothing sleeps to synchronise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::runtime::tasks::Tasks;
use crate::store::Store;
use crate::supervisor::config::{
    ActorConfig, OverflowPolicy, RestartType, Strategy, SupervisorConfig,
};

type Body = Box<dyn Fn(Context<u32>, u64) -> BoxFuture<'static, ActorResult> + Send + Sync>;

/// An actor whose behaviour is a closure of (context, incarnation number starting at 1).
struct TestActor {
    name: &'static str,
    runs: AtomicU64,
    body: Body,
}

impl Actor for TestActor {
    type Message = u32;
    fn name(&self) -> &'static str {
        self.name
    }
    fn run(
        self: Arc<Self>,
        ctx: Context<u32>,
    ) -> impl std::future::Future<Output = ActorResult> + Send + 'static {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        (self.body)(ctx, n)
    }
}

fn actor<F>(name: &'static str, body: F) -> TestActor
where
    F: Fn(Context<u32>, u64) -> BoxFuture<'static, ActorResult> + Send + Sync + 'static,
{
    TestActor {
        name,
        runs: AtomicU64::new(0),
        body: Box::new(body),
    }
}

/// A well-behaved actor: handles messages until cancelled.
async fn serve(mut ctx: Context<u32>, seen: Option<Arc<Mutex<Vec<u32>>>>) -> ActorResult {
    while let Some(message) = ctx.recv().await {
        if let Some(seen) = &seen {
            seen.lock().unwrap().push(message);
        }
    }
    Ok(())
}

fn well_behaved(name: &'static str) -> TestActor {
    actor(name, |ctx, _| Box::pin(serve(ctx, None)))
}

fn sup_config() -> SupervisorConfig {
    SupervisorConfig {
        strategy: Strategy::OneForOne,
        max_restarts: 5,
        restart_window_seconds: 60,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        backoff_jitter_percent: 0,
        hung_after_seconds: 3,
        hung_checks: 3,
        exit_on_critical_failure: true,
        start_timeout_seconds: 5,
    }
}

fn actor_config() -> ActorConfig {
    ActorConfig {
        stop_deadline_ms: 500,
        ..ActorConfig::default()
    }
}

struct Harness {
    supervisor: Supervisor,
    tasks: Tasks,
    token: CancellationToken,
    pings: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &Config::default().store).unwrap();
    (store, dir)
}

async fn start(config: SupervisorConfig, actors: Vec<(TestActor, ActorConfig)>) -> Harness {
    let (store, dir) = store();
    let mut builder = SupervisorBuilder::new(config, store).seed(42);
    for (actor, config) in actors {
        let name = actor.name;
        builder
            .add(actor, config, vec![format!("test.{name}")])
            .unwrap();
    }
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let pings = Arc::new(AtomicU64::new(0));
    let counter = pings.clone();
    let ping: WatchdogPing = Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let supervisor = builder
        .start(&tasks, token.clone(), Some((Duration::from_secs(1), ping)))
        .await;
    Harness {
        supervisor,
        tasks,
        token,
        pings,
        _dir: dir,
    }
}

impl Harness {
    /// Polls (in virtual time) until the actor satisfies `check`; fails after a virtual minute.
    async fn until(&self, name: &str, what: &str, check: impl Fn(&ActorInfo) -> bool) -> ActorInfo {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = self.supervisor.get(name).unwrap();
            if check(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: never {what}; last {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> StopReport {
        self.token.cancel();
        let report = self.supervisor.wait_stopped().await.expect("stop report");
        self.tasks.close();
        self.tasks.wait().await;
        report
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_actor_is_counted_and_restarted() {
    let h = start(
        sup_config(),
        vec![(
            actor("panicky", |ctx, n| {
                Box::pin(async move {
                    if n == 1 {
                        panic!("boom in incarnation {n}");
                    }
                    serve(ctx, None).await
                })
            }),
            actor_config(),
        )],
    )
    .await;
    let info = h
        .until("panicky", "running again", |i| {
            i.state == ActorState::Running && i.restarts == 1
        })
        .await;
    assert_eq!(info.panics, 1);
    assert_eq!(info.errors, 0);
    assert_eq!(
        info.last_error.as_deref(),
        Some("panicked: boom in incarnation 1")
    );
    assert!(h.stop().await.aborted.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_actor_returning_errors_is_restarted_with_exponential_backoff() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let recorded = starts.clone();
    let h = start(
        sup_config(),
        vec![(
            actor("flaky", move |ctx, n| {
                recorded.lock().unwrap().push(Instant::now());
                Box::pin(async move {
                    if n <= 3 {
                        return Err(ActorError::new(format!("disk on fire ({n})")));
                    }
                    serve(ctx, None).await
                })
            }),
            actor_config(),
        )],
    )
    .await;
    let info = h
        .until("flaky", "running after three errors", |i| {
            i.state == ActorState::Running && i.restarts == 3
        })
        .await;
    assert_eq!(info.errors, 3);
    assert_eq!(info.panics, 0);
    assert_eq!(info.last_error.as_deref(), Some("disk on fire (3)"));
    let starts = starts.lock().unwrap().clone();
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(
        gaps,
        [100, 200, 400],
        "backoff doubles (no jitter configured)"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_actor_is_killed_and_restarted_but_a_marked_blocking_section_is_not() {
    let h = start(
        sup_config(),
        vec![
            (
                actor("frozen", |ctx, n| {
                    Box::pin(async move {
                        if n == 1 {
                            ctx.ready();
                            // Busy (not waiting on its mailbox) and never reporting progress; it
                            // still honours cancellation.
                            ctx.cancelled().await;
                            return Ok(());
                        }
                        serve(ctx, None).await
                    })
                }),
                actor_config(),
            ),
            (
                actor("loader", |ctx, n| {
                    Box::pin(async move {
                        if n == 1 {
                            ctx.ready();
                            let _section = ctx.blocking();
                            tokio::time::sleep(Duration::from_secs(20)).await;
                        }
                        serve(ctx, None).await
                    })
                }),
                actor_config(),
            ),
        ],
    )
    .await;
    let started = Instant::now();
    let info = h
        .until("frozen", "restarted after freezing", |i| {
            i.state == ActorState::Running && i.restarts == 1
        })
        .await;
    let elapsed = started.elapsed();
    assert_eq!(info.kills, 1);
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("frozen")),
        "{info:?}"
    );
    // 3 checks one second apart, then the first backoff (100 ms).
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed <= Duration::from_secs(5),
        "{elapsed:?}"
    );

    // The loader spent 20 s in a marked section without progress and was left alone.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let loader = h.supervisor.get("loader").unwrap();
    assert_eq!((loader.kills, loader.restarts), (0, 0), "{loader:?}");
    assert_eq!(loader.state, ActorState::Running);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_actor_ignoring_cancellation_is_aborted_at_its_deadline_and_named() {
    fn stubborn(name: &'static str) -> TestActor {
        actor(name, |ctx, _| {
            Box::pin(async move {
                ctx.ready();
                // Idle (so the watchdog leaves it alone) but deaf to its token.
                ctx.idle(std::future::pending::<()>()).await;
                Ok(())
            })
        })
    }
    let h = start(
        sup_config(),
        vec![
            (well_behaved("first"), actor_config()),
            (stubborn("stubborn"), actor_config()),
            (stubborn("deaf"), actor_config()),
        ],
    )
    .await;
    // An operator stop of an actor that ignores it: aborted at its 500 ms deadline, counted as a kill.
    let began = Instant::now();
    let info = h.supervisor.stop_actor("deaf").await.unwrap();
    assert_eq!(began.elapsed(), Duration::from_millis(500));
    assert_eq!(info.state, ActorState::Stopped);
    assert_eq!(info.kills, 1);

    // The final stop: the stubborn one is aborted after its deadline, the others stop at once.
    let began = Instant::now();
    let report = h.stop().await;
    assert_eq!(began.elapsed(), Duration::from_millis(500));
    assert_eq!(report.aborted, ["stubborn"]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_storm_escalates_and_withholds_the_watchdog_ping() {
    let h = start(
        SupervisorConfig {
            max_restarts: 3,
            restart_window_seconds: 60,
            ..sup_config()
        },
        vec![
            (well_behaved("steady"), actor_config()),
            (
                actor("storm", |_ctx, n| {
                    Box::pin(async move { Err(ActorError::new(format!("failure {n}"))) })
                }),
                actor_config(),
            ),
        ],
    )
    .await;
    let info = h
        .until("storm", "failed", |i| i.state == ActorState::Failed)
        .await;
    assert_eq!(
        info.restarts, 3,
        "three restarts allowed, the fourth escalates"
    );
    assert_eq!(info.errors, 4);
    assert_eq!(info.last_error.as_deref(), Some("failure 4"));
    assert!(h.supervisor.critical_failure().is_cancelled());
    assert!(h.supervisor.critical_failed());
    // The other actor is untouched.
    assert_eq!(
        h.supervisor.get("steady").unwrap().state,
        ActorState::Running
    );
    // No more pings while a critical actor is failed.
    let pings = h.pings.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.pings.load(Ordering::SeqCst), pings);
    // An operator start clears the failure.
    let _ = h.supervisor.start_actor("storm").await.unwrap();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_non_critical_failure_escalates_without_exit_or_withheld_pings() {
    let h = start(
        SupervisorConfig {
            max_restarts: 0,
            ..sup_config()
        },
        vec![(
            actor("optional", |_ctx, _| {
                Box::pin(async { Err(ActorError::new("nope")) })
            }),
            ActorConfig {
                critical: false,
                ..actor_config()
            },
        )],
    )
    .await;
    h.until("optional", "failed", |i| i.state == ActorState::Failed)
        .await;
    assert!(!h.supervisor.critical_failure().is_cancelled());
    let pings = h.pings.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(h.pings.load(Ordering::SeqCst) >= pings + 4);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn actors_start_in_declared_order_and_stop_in_reverse() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let ordered = |name: &'static str| {
        let log = log.clone();
        actor(name, move |ctx, _| {
            let log = log.clone();
            Box::pin(async move {
                log.lock().unwrap().push(format!("start {name}"));
                // A slow start: the next actor must wait for this one's ready.
                tokio::time::sleep(Duration::from_millis(100)).await;
                log.lock().unwrap().push(format!("ready {name}"));
                ctx.ready();
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                log.lock().unwrap().push(format!("stop {name}"));
                Ok(())
            })
        })
    };
    let h = start(
        sup_config(),
        vec![
            (ordered("a"), actor_config()),
            (ordered("b"), actor_config()),
            (ordered("c"), actor_config()),
        ],
    )
    .await;
    // start() returned: everyone is ready.
    let names: Vec<_> = h
        .supervisor
        .list()
        .iter()
        .map(|i| (i.name, i.state))
        .collect();
    assert_eq!(
        names,
        [
            ("a", ActorState::Running),
            ("b", ActorState::Running),
            ("c", ActorState::Running)
        ]
    );
    let report = h.stop().await;
    assert!(report.aborted.is_empty());
    assert_eq!(
        *log.lock().unwrap(),
        [
            "start a", "ready a", "start b", "ready b", "start c", "ready c", "stop c", "stop b",
            "stop a"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_later_actors_and_one_for_one_does_not() {
    for strategy in [Strategy::RestForOne, Strategy::OneForOne] {
        let failing_first = || {
            actor("base", |ctx, n| {
                Box::pin(async move {
                    if n == 1 {
                        ctx.ready();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return Err(ActorError::new("base lost its device"));
                    }
                    serve(ctx, None).await
                })
            })
        };
        let h = start(
            SupervisorConfig {
                strategy,
                ..sup_config()
            },
            vec![
                (well_behaved("before"), actor_config()),
                (failing_first(), actor_config()),
                (well_behaved("after1"), actor_config()),
                (well_behaved("after2"), actor_config()),
            ],
        )
        .await;
        h.until("base", "restarted", |i| {
            i.state == ActorState::Running && i.restarts == 1
        })
        .await;
        let expected_dependents = match strategy {
            Strategy::RestForOne => 1,
            Strategy::OneForOne => 0,
        };
        for name in ["after1", "after2"] {
            let info = h
                .until(name, "running", |i| i.state == ActorState::Running)
                .await;
            assert_eq!(info.restarts, expected_dependents, "{strategy:?} {name}");
        }
        assert_eq!(h.supervisor.get("before").unwrap().restarts, 0);
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_systemd_ping_stops_while_the_supervisor_loop_is_wedged() {
    let h = start(sup_config(), vec![(well_behaved("a"), actor_config())]).await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let before = h.pings.load(Ordering::SeqCst);
    assert!(before >= 4, "pings while healthy: {before}");

    let (release, wedge) = tokio::sync::oneshot::channel();
    h.supervisor.wedge(wedge).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let wedged_at = h.pings.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.pings.load(Ordering::SeqCst),
        wedged_at,
        "no ping from a wedged loop"
    );

    release.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.pings.load(Ordering::SeqCst) > wedged_at, "pings resume");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_types_decide_what_happens_after_an_exit() {
    let quits = |name: &'static str, fail: bool| {
        actor(name, move |ctx, n| {
            Box::pin(async move {
                if n == 1 {
                    ctx.ready();
                    return if fail {
                        Err(ActorError::new("failed"))
                    } else {
                        Ok(())
                    };
                }
                serve(ctx, None).await
            })
        })
    };
    let with = |restart| ActorConfig {
        restart,
        ..actor_config()
    };
    let h = start(
        sup_config(),
        vec![
            (quits("perm_ok", false), with(RestartType::Permanent)),
            (quits("trans_ok", false), with(RestartType::Transient)),
            (quits("trans_err", true), with(RestartType::Transient)),
            (quits("temp_err", true), with(RestartType::Temporary)),
        ],
    )
    .await;
    let restarted = |i: &ActorInfo| i.state == ActorState::Running && i.restarts == 1;
    let stopped = |i: &ActorInfo| i.state == ActorState::Stopped;
    h.until("perm_ok", "restarted", restarted).await;
    h.until("trans_err", "restarted", restarted).await;
    let info = h.until("trans_ok", "stopped", stopped).await;
    assert_eq!(info.restarts, 0);
    let info = h.until("temp_err", "stopped", stopped).await;
    assert_eq!((info.restarts, info.errors), (0, 1));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn operator_restart_stop_and_start() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let (store, _dir) = store();
    let mut builder = SupervisorBuilder::new(sup_config(), store);
    let actor_ref = builder
        .add(
            actor("worker", move |ctx, _| {
                Box::pin(serve(ctx, Some(recorder.clone())))
            }),
            actor_config(),
            vec![],
        )
        .unwrap();
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let supervisor = builder.start(&tasks, token.clone(), None).await;

    actor_ref.send(1).await.unwrap();
    let info = supervisor.restart("worker").await.unwrap();
    assert_eq!((info.state, info.restarts), (ActorState::Running, 1));
    actor_ref.send(2).await.unwrap();

    let info = supervisor.stop_actor("worker").await.unwrap();
    assert_eq!(info.state, ActorState::Stopped);
    let refused = actor_ref.send(3).await.unwrap_err();
    assert_eq!(
        refused,
        SupervisorError::NotRunning {
            actor: "worker",
            state: ActorState::Stopped
        }
    );
    assert!(matches!(
        ServiceError::from(refused),
        ServiceError::Unavailable(_)
    ));
    let info = supervisor.start_actor("worker").await.unwrap();
    // Starting a stopped actor is not a restart: the counter measures trouble and operator restarts.
    assert_eq!((info.state, info.restarts), (ActorState::Running, 1));
    actor_ref.send(4).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(*seen.lock().unwrap(), [1, 2, 4]);

    assert_eq!(
        supervisor.restart("nobody").await.unwrap_err(),
        SupervisorError::NotFound("nobody".into())
    );
    token.cancel();
    supervisor.wait_stopped().await.unwrap();
    tasks.close();
    tasks.wait().await;
    // After the stop the mailbox refuses.
    assert!(actor_ref.send(5).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn mailbox_overflow_policies_reach_the_sender() {
    // A slow consumer: one message per second.
    let slow = |name: &'static str| {
        actor(name, |mut ctx, _| {
            Box::pin(async move {
                while let Some(_m) = ctx.recv().await {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(())
            })
        })
    };
    let with = |policy| ActorConfig {
        mailbox_capacity: 2,
        mailbox_overflow: policy,
        mailbox_wait_ms: 300,
        ..actor_config()
    };
    let (store, _dir) = store();
    let mut builder = SupervisorBuilder::new(sup_config(), store);
    let reject = builder
        .add(slow("reject"), with(OverflowPolicy::Reject), vec![])
        .unwrap();
    let wait = builder
        .add(slow("wait"), with(OverflowPolicy::Wait), vec![])
        .unwrap();
    let newest = builder
        .add(slow("newest"), with(OverflowPolicy::DropNewest), vec![])
        .unwrap();
    let oldest = builder
        .add(slow("oldest"), with(OverflowPolicy::DropOldest), vec![])
        .unwrap();
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let supervisor = builder.start(&tasks, token.clone(), None).await;

    // Each: one message being handled (for a second), then the queue filled to its capacity of 2.
    for r in [&reject, &wait, &newest, &oldest] {
        r.send(0).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for r in [&reject, &wait, &newest, &oldest] {
        r.send(1).await.unwrap();
        r.send(2).await.unwrap();
        assert_eq!(r.shared.mailbox.depth(), 2);
    }

    let err = reject.send(7).await.unwrap_err();
    assert!(matches!(
        err,
        SupervisorError::MailboxFull {
            actor: "reject",
            ..
        }
    ));
    match ServiceError::from(err) {
        ServiceError::ResourceExhausted { retry_after, .. } => {
            assert_eq!(retry_after, mailbox::RETRY_AFTER)
        }
        other => panic!("{other:?}"),
    }

    let began = Instant::now();
    let err = wait.send(7).await.unwrap_err();
    assert_eq!(began.elapsed(), Duration::from_millis(300));
    assert!(matches!(
        err,
        SupervisorError::MailboxFull { actor: "wait", .. }
    ));

    let err = newest.send(7).await.unwrap_err();
    assert!(matches!(
        err,
        SupervisorError::Dropped {
            actor: "newest",
            ..
        }
    ));
    assert!(matches!(
        ServiceError::from(err),
        ServiceError::ResourceExhausted { .. }
    ));
    assert_eq!(supervisor.get("newest").unwrap().mailbox_drops, 1);

    oldest.send(7).await.unwrap();
    let info = supervisor.get("oldest").unwrap();
    assert_eq!((info.mailbox_drops, info.mailbox_depth), (1, 2));
    assert_eq!(supervisor.get("reject").unwrap().mailbox_drops, 0);

    token.cancel();
    supervisor.wait_stopped().await.unwrap();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test(start_paused = true)]
async fn state_changes_are_streamed() {
    let h = start(
        sup_config(),
        vec![(
            actor("blinker", |ctx, n| {
                Box::pin(async move {
                    if n == 1 {
                        ctx.ready();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return Err(ActorError::new("blink"));
                    }
                    serve(ctx, None).await
                })
            }),
            actor_config(),
        )],
    )
    .await;
    let mut events = h.supervisor.subscribe();
    let mut seen = Vec::new();
    while seen.last() != Some(&ActorState::Running) {
        let event = events.recv().await.unwrap();
        assert_eq!(event.actor.name, "blinker");
        seen.push(event.actor.state);
    }
    assert_eq!(
        seen,
        [
            ActorState::Restarting,
            ActorState::Starting,
            ActorState::Running
        ]
    );
    h.stop().await;
}

// Workers: background loops under the same machinery.

type WorkerBody = Box<dyn Fn(WorkerContext, u64) -> BoxFuture<'static, ActorResult> + Send + Sync>;

struct TestWorker {
    name: &'static str,
    policy: WorkerPolicy,
    runs: AtomicU64,
    body: WorkerBody,
}

impl Worker for TestWorker {
    fn name(&self) -> &'static str {
        self.name
    }
    fn policy(&self) -> WorkerPolicy {
        self.policy
    }
    fn run(
        self: Arc<Self>,
        ctx: WorkerContext,
    ) -> impl std::future::Future<Output = ActorResult> + Send + 'static {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        (self.body)(ctx, n)
    }
}

fn worker<F>(name: &'static str, policy: WorkerPolicy, body: F) -> TestWorker
where
    F: Fn(WorkerContext, u64) -> BoxFuture<'static, ActorResult> + Send + Sync + 'static,
{
    TestWorker {
        name,
        policy,
        runs: AtomicU64::new(0),
        body: Box::new(body),
    }
}

/// A well-behaved worker loop: ready, then waits (idle) until cancelled.
async fn idle_until_cancelled(ctx: WorkerContext) -> ActorResult {
    ctx.ready();
    ctx.idle(ctx.cancelled()).await;
    Ok(())
}

async fn start_with_workers(
    config: SupervisorConfig,
    actors: Vec<(TestActor, ActorConfig)>,
    workers: Vec<TestWorker>,
    extra: impl FnOnce(&mut SupervisorBuilder),
) -> Harness {
    let (store, dir) = store();
    let mut builder = SupervisorBuilder::new(config, store).seed(42);
    for (actor, config) in actors {
        builder.add(actor, config, Vec::new()).unwrap();
    }
    for worker in workers {
        builder.add_worker(worker);
    }
    extra(&mut builder);
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let supervisor = builder.start(&tasks, token.clone(), None).await;
    Harness {
        supervisor,
        tasks,
        token,
        pings: Arc::new(AtomicU64::new(0)),
        _dir: dir,
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_is_restarted_and_counted() {
    let h = start_with_workers(
        sup_config(),
        vec![(well_behaved("subsystem"), actor_config())],
        vec![worker("loop", WorkerPolicy::OPTIONAL, |ctx, n| {
            Box::pin(async move {
                ctx.ready();
                if n == 1 {
                    panic!("worker bug");
                }
                idle_until_cancelled(ctx).await
            })
        })],
        |_| {},
    )
    .await;
    let info = h
        .until("loop", "running again", |i| {
            i.state == ActorState::Running && i.restarts == 1
        })
        .await;
    assert_eq!((info.panics, info.errors), (1, 0));
    assert_eq!(info.last_error.as_deref(), Some("panicked: worker bug"));
    assert_eq!(info.mailbox_capacity, 0, "a worker shows no mailbox");
    // Listed beside the actor, with its kind.
    let kinds: Vec<_> = h
        .supervisor
        .list()
        .iter()
        .map(|a| (a.name, a.kind))
        .collect();
    assert_eq!(kinds, [("subsystem", Kind::Actor), ("loop", Kind::Worker)]);
    assert!(h.stop().await.aborted.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_keeps_failing_turns_health_not_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Pb;
    use tonic_health::pb::health_server::Health;

    let reporter = tonic_health::server::HealthReporter::new();
    let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sync = super::api::HealthSync::new(reporter.clone(), ready.clone());
    // Fails its first four runs: three restarts are allowed, the fourth failure escalates.
    let flaky = worker("writer", WorkerPolicy::CRITICAL, |ctx, n| {
        Box::pin(async move {
            if n <= 4 {
                return Err(ActorError::new(format!("disk gone ({n})")));
            }
            idle_until_cancelled(ctx).await
        })
    });
    let h = start_with_workers(
        SupervisorConfig {
            max_restarts: 3,
            ..sup_config()
        },
        Vec::new(),
        vec![flaky],
        |builder| builder.add_worker(sync),
    )
    .await;
    let overall = || async {
        service
            .check(tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .status
    };
    let info = h
        .until("writer", "failed", |i| i.state == ActorState::Failed)
        .await;
    assert_eq!((info.errors, info.restarts), (4, 3));
    assert_eq!(h.supervisor.critical_down(), ["writer"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while overall().await != Pb::NotServing as i32 {
        assert!(
            Instant::now() < deadline,
            "overall health never NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // An operator start (intensity cleared) brings it back, and readiness with it.
    let started = h.supervisor.start_actor("writer").await.unwrap();
    assert_eq!(started.state, ActorState::Running);
    assert!(h.supervisor.critical_down().is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while overall().await != Pb::Serving as i32 {
        assert!(
            Instant::now() < deadline,
            "overall health never SERVING again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_critical_worker_is_down_a_restarting_one_is_not() {
    let h = start_with_workers(
        sup_config(),
        Vec::new(),
        vec![
            worker("critical", WorkerPolicy::CRITICAL, |ctx, _| {
                Box::pin(idle_until_cancelled(ctx))
            }),
            worker("optional", WorkerPolicy::OPTIONAL, |ctx, _| {
                Box::pin(idle_until_cancelled(ctx))
            }),
        ],
        |_| {},
    )
    .await;
    assert!(h.supervisor.critical_down().is_empty());
    h.supervisor.stop_actor("optional").await.unwrap();
    assert!(
        h.supervisor.critical_down().is_empty(),
        "optional: still ready"
    );
    h.supervisor.stop_actor("critical").await.unwrap();
    assert_eq!(h.supervisor.critical_down(), ["critical"]);
    h.supervisor.start_actor("critical").await.unwrap();
    assert!(h.supervisor.critical_down().is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_can_tell_the_final_stop_from_an_operator_stop() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let h = start_with_workers(
        sup_config(),
        Vec::new(),
        vec![worker("closer", WorkerPolicy::OPTIONAL, move |ctx, _| {
            let record = record.clone();
            Box::pin(async move {
                ctx.ready();
                ctx.idle(ctx.cancelled()).await;
                record.lock().unwrap().push(ctx.is_final_stop());
                Ok(())
            })
        })],
        |_| {},
    )
    .await;
    h.supervisor.stop_actor("closer").await.unwrap();
    h.supervisor.start_actor("closer").await.unwrap();
    h.stop().await;
    assert_eq!(*seen.lock().unwrap(), [false, true]);
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_leaves_workers_alone() {
    let h = start_with_workers(
        SupervisorConfig {
            strategy: Strategy::RestForOne,
            ..sup_config()
        },
        vec![(well_behaved("first"), actor_config())],
        vec![worker("loop", WorkerPolicy::OPTIONAL, |ctx, _| {
            Box::pin(idle_until_cancelled(ctx))
        })],
        |builder| {
            builder
                .add(well_behaved("second"), actor_config(), Vec::new())
                .unwrap();
        },
    )
    .await;
    h.supervisor.restart("first").await.unwrap();
    h.until("second", "restarted with first", |i| {
        i.state == ActorState::Running && i.restarts == 1
    })
    .await;
    assert_eq!(h.supervisor.get("loop").unwrap().restarts, 0);
    h.stop().await;
}

/// The dependency between the supervisor and the runtime layer (tasks, events, metrics, notify) is
/// one-way: the supervisor uses them; they never name it. Readiness reaches `/readyz` as a closure.
#[test]
fn the_runtime_layer_does_not_import_the_supervisor() {
    // Every file of the runtime layer, including ones added after this test was written.
    let runtime: Vec<_> = crate::testing::sources()
        .into_iter()
        .filter(|(relative, _)| relative.starts_with("runtime/"))
        .collect();
    assert!(runtime.len() >= 6, "runtime has {} files", runtime.len());
    for (file, text) in runtime {
        assert!(
            !text.contains("crate::supervisor") && !text.contains("super::supervisor"),
            "{file} imports the supervisor"
        );
    }
}
