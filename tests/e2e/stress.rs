//! Concurrent writers against the real binary: the store must not wedge (issue 9). 64 writers across
//! every writing RPC (Tokens.Issue, Tokens.Revoke, Episodic.Store, audited Policy.Check) for
//! `BRAINSTEM_STRESS_SECONDS` (default 10; the issue's acceptance run uses 30), then Ping still
//! answers promptly and SIGTERM ends the process with exit 0 within the stop deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brainstem_client::Client;
use brainstem_client::v1::{
    CheckRequest, Episode, GetHealthRequest, IssueTokenRequest, PingRequest, RevokeTokenRequest,
    StoreRequest,
};
use tonic::Code;

use crate::harness::{DaemonProcess, http_get};

const WRITERS: usize = 64;
/// Connections the writers share (8 writers multiplexed on each).
const CONNECTIONS: usize = 8;
/// A call that takes longer than this is taken for a wedge.
const CALL_LIMIT: Duration = Duration::from_secs(10);
const WEB: &str = "spiffe://brainstem.dev/agent/web";
const EMBEDDING_DIMENSION: usize = 384;

fn stress_duration() -> Duration {
    let seconds = std::env::var("BRAINSTEM_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(seconds)
}

/// What the writers saw, by RPC: successes and the codes of refusals.
#[derive(Default)]
struct Tally {
    ok: BTreeMap<&'static str, u64>,
    refused: BTreeMap<(&'static str, i32), u64>,
    /// Calls with no answer within [`CALL_LIMIT`].
    stuck: Vec<&'static str>,
}

impl Tally {
    fn record(&mut self, rpc: &'static str, result: Option<Result<(), tonic::Status>>) {
        match result {
            Some(Ok(())) => *self.ok.entry(rpc).or_default() += 1,
            Some(Err(status)) => *self.refused.entry((rpc, status.code() as i32)).or_default() += 1,
            None => self.stuck.push(rpc),
        }
    }
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Option<Result<T, tonic::Status>> {
    tokio::time::timeout(CALL_LIMIT, call).await.ok()
}

/// One writer: the RPC kind is chosen by `index`; loops until `until`.
async fn writer(index: usize, mut client: Client, until: Instant, tally: Arc<Mutex<Tally>>) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let mut results = Vec::with_capacity(2);
        match index % 4 {
            0 => {
                let issued = timed(client.tokens.issue(IssueTokenRequest {
                    principal: WEB.to_owned(),
                    capabilities: vec!["web.read".to_owned()],
                    ttl_seconds: 600,
                }))
                .await;
                results.push(("Tokens.Issue", issued.map(|r| r.map(drop))));
            }
            1 => {
                let issued = timed(client.tokens.issue(IssueTokenRequest {
                    principal: WEB.to_owned(),
                    capabilities: vec!["web.post".to_owned()],
                    ttl_seconds: 600,
                }))
                .await;
                let id = match &issued {
                    Some(Ok(reply)) => Some(reply.get_ref().id.clone()),
                    _ => None,
                };
                results.push(("Tokens.Issue", issued.map(|r| r.map(drop))));
                if let Some(id) = id {
                    let revoked = timed(client.tokens.revoke(RevokeTokenRequest { id })).await;
                    results.push(("Tokens.Revoke", revoked.map(|r| r.map(drop))));
                }
            }
            2 => {
                let value = (index as f32 + n as f32).sin();
                let stored = timed(client.episodic.store(StoreRequest {
                    episode: Some(Episode {
                        source: "stress".to_owned(),
                        kind: "observation".to_owned(),
                        text: format!("writer {index} episode {n}"),
                        embedding: vec![value; EMBEDDING_DIMENSION],
                        ..Default::default()
                    }),
                }))
                .await;
                results.push(("Episodic.Store", stored.map(|r| r.map(drop))));
            }
            _ => {
                // Every decision is audited: the audit writer persists them in batches.
                let checked = timed(client.policy.check(CheckRequest {
                    action: if n % 2 == 0 { "web.read" } else { "web.post" }.to_owned(),
                    resource: format!("https://example.org/{index}/{n}"),
                    ..Default::default()
                }))
                .await;
                results.push(("Policy.Check", checked.map(|r| r.map(drop))));
            }
        }
        let stuck = results.iter().any(|(_, r)| r.is_none());
        let mut tally = tally.lock().unwrap();
        for (rpc, result) in results {
            tally.record(rpc, result);
        }
        if stuck {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_do_not_wedge_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(daemon.client().await);
    }

    let duration = stress_duration();
    let until = Instant::now() + duration;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let client = clients[i % CONNECTIONS].clone();
            tokio::spawn(writer(i, client, until, tally.clone()))
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "stress: {duration:?}, {WRITERS} writers; ok {:?}; refused {:?}",
        tally.ok, tally.refused
    );
    assert!(
        tally.stuck.is_empty(),
        "calls without an answer within {CALL_LIMIT:?} (a wedge): {:?}; stderr:\n{}",
        tally.stuck,
        daemon.stderr()
    );
    // Refusals must be clear answers (backpressure), never INTERNAL or a timeout.
    for ((rpc, code), count) in &tally.refused {
        let code = Code::from_i32(*code);
        assert_eq!(
            code,
            Code::ResourceExhausted,
            "{rpc} answered {code:?} {count} times; stderr:\n{}",
            daemon.stderr()
        );
    }
    for rpc in [
        "Tokens.Issue",
        "Tokens.Revoke",
        "Episodic.Store",
        "Policy.Check",
    ] {
        assert!(
            tally.ok.get(rpc).copied().unwrap_or(0) > 0,
            "no {rpc} succeeded: {:?}",
            tally.ok
        );
    }

    // Still answering at once, on a connection that carried the load and on a new one.
    let mut client = clients.swap_remove(0);
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(1),
            client.admin.ping(PingRequest::default()),
        )
        .await
        .expect("Ping answers within a second after the stress")
        .expect("Ping succeeds");
        best = best.min(started.elapsed());
    }
    assert!(best <= Duration::from_millis(100), "Ping took {best:?}");
    let mut fresh = daemon.client().await;
    let health = fresh
        .supervisor
        .get_health(GetHealthRequest {})
        .await
        .expect("GetHealth")
        .into_inner();
    assert!(health.ready, "not ready after the stress: {health:?}");

    let (_, metrics) = http_get(daemon.metrics_addr, "/metrics").await;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    let flushes = value("brainstem_store_flushes_total{result=\"ok\"}");
    let writes = value("brainstem_store_flushed_writes_total");
    assert!(flushes > 0.0, "no flush counted");
    eprintln!(
        "stress: {writes} durable writes in {flushes} flushes ({:.1} per flush)",
        writes / flushes
    );

    drop((client, clients, fresh));
    let started = Instant::now();
    daemon.stop().await;
    eprintln!("stress: SIGTERM to exit 0 in {:?}", started.elapsed());
}
