//! The RPC bench harness: N connections × M concurrent callers for a duration, after a warm-up, against
//! a named scenario. Reports calls/s and latency percentiles; the last line printed is one JSON object.
//!
//! Every service's cost is read as a ratio to the `ping` scenario (an empty `Admin.Ping`) measured in
//! the same run on the same machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brainstem_proto::v1::{BatchCheckRequest, CheckRequest, PingRequest};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Client, ClientError, ConnectOptions};

/// What one call of a scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `Admin.Ping` with an empty request: the baseline.
    Ping,
    /// `Admin.Ping` with a payload of [`PING_PAYLOAD_BYTES`], echoed back: request and reply of
    /// about `policy-check`'s sizes (40 bytes each against its 36 and 41) and no work in the
    /// handler. What carrying those bytes costs over an empty Ping: the share of a Check's cost
    /// that is transport, not decision or audit.
    PingPayload,
    /// `Admin.WhoAmI`: identity and grant lookup in the reply.
    Whoami,
    /// `Policy.Check` of one permitted action (a Cedar decision plus its audit record).
    PolicyCheck,
    /// `Policy.BatchCheck` of 100 decisions (half permitted, half forbidden) per call.
    PolicyBatch,
    /// `Tokens.Verify` of a valid token against a capability it covers (token issued before the run).
    TokenVerify,
    /// `Episodic.Query`, k = 10, with a fresh random embedding per call (no cache hits) over whatever
    /// the buffer holds; fill it first with `--prefill`.
    EpisodicQuery,
    /// `Episodic.Store` of one episode with a random embedding (durable before the reply).
    EpisodicStore,
    /// `Episodic.Store` as above, each call with a fresh `idempotency-key`: the cost of the daemon
    /// keeping the reply for repeats (compare with `episodic-store`).
    EpisodicStoreKeyed,
    /// `Flags.Evaluate` of `modules.vision` (a shipped default flag) with a one-key context.
    FlagsEval,
    /// `Secrets.Get` of `/bench/secret`, a 32-byte value put before the run: decrypting one version
    /// (its data key unwrapped under the master key) per call.
    SecretsGet,
    /// `Secrets.Put` of a fresh 32-byte value, no check-and-set, to one of 256 paths
    /// `/bench/put/<n>`; each caller strides through them so concurrent calls mostly hit different
    /// secrets (a new version, sealed and durable before the reply).
    SecretsPut,
    /// `Learning.Feedback` of a fresh event (8 random features, a random 0/1
    /// label, no `event_id`): durable feedback events/s (each acknowledged after the store's flush;
    /// concurrent callers share flushes). The daemon's model must have that dimension (a fresh state,
    /// or `learning.feature_dimension = 8`).
    LearningFeedback,
    /// `Registry.Get` and `Registry.GetLatest` (alternating) of `bench/model`, registered before the
    /// run from a small weights file written under the daemon's artifact root (`--artifact-dir`,
    /// default `<state_dir>/artifacts`): an in-memory lookup per call.
    RegistryGet,
}

/// Bytes of `ping-payload`'s payload.
pub const PING_PAYLOAD_BYTES: usize = 38;

/// Features per `learning-feedback` event.
pub const LEARNING_FEATURES: usize = 8;

/// The model `registry-get` reads.
pub const BENCH_MODEL: &str = "bench/model";

/// The secret `secrets-get` reads.
pub const BENCH_SECRET: &str = "/bench/secret";
/// How many paths `secrets-put` spreads its writes over.
pub const BENCH_PUT_PATHS: u64 = 256;

/// Per-worker state a scenario needs (random embeddings and values, the next secret path).
pub struct CallState {
    rng: u64,
    dim: usize,
    /// This worker's index among `workers`, and how many calls it has made.
    worker: u64,
    workers: u64,
    calls: u64,
}

impl CallState {
    fn new(seed: u64, dim: usize) -> Self {
        CallState {
            rng: seed | 1,
            dim,
            worker: 0,
            workers: 1,
            calls: 0,
        }
    }

    fn for_worker(worker: u64, workers: u64, dim: usize) -> Self {
        CallState {
            worker,
            workers: workers.max(1),
            ..CallState::new(worker + 1, dim)
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// 32 pseudo-random bytes: a value of a typical secret's size.
    fn secret_value(&mut self) -> Vec<u8> {
        (0..4).flat_map(|_| self.next_u64().to_le_bytes()).collect()
    }

    /// The path of this worker's next `secrets-put` call: worker `i` of `W` writes `i`, `i + W`,
    /// `i + 2W`, … (mod 256), so callers in step write different secrets.
    fn next_put_path(&mut self) -> String {
        let n = (self.worker + self.calls * self.workers) % BENCH_PUT_PATHS;
        self.calls += 1;
        format!("/bench/put/{n}")
    }

    /// Uniform values in [-1, 1) from a xorshift generator: cheap next to an RPC.
    fn embedding(&mut self) -> Vec<f32> {
        (0..self.dim)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

fn bench_episode(state: &mut CallState) -> brainstem_proto::v1::Episode {
    brainstem_proto::v1::Episode {
        source: "bench".to_owned(),
        kind: "observation".to_owned(),
        text: "a benchmark episode".to_owned(),
        embedding: state.embedding(),
        ..Default::default()
    }
}

fn policy_question(i: usize) -> CheckRequest {
    CheckRequest {
        action: if i % 2 == 0 { "web.read" } else { "web.post" }.to_owned(),
        resource: "https://example.org/page".to_owned(),
        ..Default::default()
    }
}

/// What a scenario needs before the clock starts.
#[derive(Debug, Clone, Default)]
struct Prepared {
    token: Arc<str>,
    /// The token the run minted, revoked when it ends (`None`: nothing to clean up).
    token_id: Option<String>,
    /// `learning-feedback`: this run's tag in [0, 1), so runs against one daemon send new events.
    run: f64,
}

/// Stores `count` episodes in batches (for `episodic-query` runs).
pub async fn prefill(client: &mut Client, count: usize, dim: usize) -> Result<(), tonic::Status> {
    let mut state = CallState::new(0x5eed, dim);
    let mut left = count;
    while left > 0 {
        let n = left.min(200);
        let episodes = (0..n).map(|_| bench_episode(&mut state)).collect();
        client
            .episodic
            .store_batch(brainstem_proto::v1::StoreBatchRequest { episodes })
            .await?;
        left -= n;
    }
    Ok(())
}

impl Scenario {
    /// What the scenario needs before the clock starts; `lifetime` bounds anything it mints.
    async fn prepare(
        self,
        client: &mut Client,
        lifetime: Duration,
        artifact_dir: Option<&std::path::Path>,
    ) -> Result<Prepared, ClientError> {
        match self {
            Scenario::Ping
            | Scenario::PingPayload
            | Scenario::Whoami
            | Scenario::PolicyCheck
            | Scenario::PolicyBatch
            | Scenario::EpisodicQuery
            | Scenario::EpisodicStore
            | Scenario::EpisodicStoreKeyed
            | Scenario::FlagsEval
            | Scenario::SecretsPut => Ok(Prepared::default()),
            Scenario::LearningFeedback => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                Ok(Prepared {
                    run: (nanos % 1_000_000_007) as f64 / 1_000_000_007.0,
                    ..Prepared::default()
                })
            }
            Scenario::RegistryGet => {
                let exists = client
                    .registry
                    .get_latest(brainstem_proto::v1::GetLatestRequest {
                        name: BENCH_MODEL.to_owned(),
                    })
                    .await;
                if exists.is_err() {
                    let dir = artifact_dir.ok_or_else(|| {
                        ClientError::Rpc(tonic::Status::failed_precondition(
                            "registry-get needs the daemon's artifact directory",
                        ))
                    })?;
                    let weights = dir.join("bench-model.bin");
                    std::fs::create_dir_all(dir)
                        .and_then(|()| std::fs::write(&weights, vec![7u8; 64 * 1024]))
                        .map_err(|source| ClientError::File {
                            path: weights.clone(),
                            source,
                        })?;
                    client
                        .registry
                        .register(brainstem_proto::v1::RegisterRequest {
                            name: BENCH_MODEL.to_owned(),
                            version: "1.0.0".to_owned(),
                            algorithm: "bench".to_owned(),
                            weights_path: weights.display().to_string(),
                            ..Default::default()
                        })
                        .await?;
                }
                Ok(Prepared::default())
            }
            Scenario::SecretsGet => {
                client
                    .secrets
                    .put(brainstem_proto::v1::PutSecretRequest {
                        path: BENCH_SECRET.to_owned(),
                        value: CallState::new(0x5ec7e7, 0).secret_value(),
                        ..Default::default()
                    })
                    .await?;
                Ok(Prepared::default())
            }
            Scenario::TokenVerify => {
                let me = client
                    .admin
                    .who_am_i(brainstem_proto::v1::WhoAmIRequest {})
                    .await?
                    .into_inner();
                let issued = client
                    .tokens
                    .issue(brainstem_proto::v1::IssueTokenRequest {
                        principal: me.principal,
                        capabilities: vec!["bench.*".to_owned()],
                        // Expires soon after the run even if the revoke at its end never happens.
                        ttl_seconds: lifetime.as_secs() + 60,
                    })
                    .await?
                    .into_inner();
                Ok(Prepared {
                    token: issued.token.into(),
                    token_id: Some(issued.id),
                    ..Prepared::default()
                })
            }
        }
    }

    async fn call(
        self,
        client: &mut Client,
        prepared: &Prepared,
        state: &mut CallState,
    ) -> Result<(), tonic::Status> {
        match self {
            Scenario::TokenVerify => {
                let reply = client
                    .tokens
                    .verify(brainstem_proto::v1::VerifyTokenRequest {
                        token: prepared.token.to_string(),
                        capability: "bench.verify".to_owned(),
                    })
                    .await?
                    .into_inner();
                if reply.valid {
                    Ok(())
                } else {
                    Err(tonic::Status::internal(format!(
                        "token refused: {}",
                        reply.reason
                    )))
                }
            }
            Scenario::EpisodicQuery => client
                .episodic
                .query(brainstem_proto::v1::QueryRequest {
                    embedding: state.embedding(),
                    k: 10,
                    filter: None,
                })
                .await
                .map(drop),
            Scenario::EpisodicStore => client
                .episodic
                .store(brainstem_proto::v1::StoreRequest {
                    episode: Some(bench_episode(state)),
                })
                .await
                .map(drop),
            Scenario::EpisodicStoreKeyed => client
                .episodic
                .store(crate::with_idempotency_key(tonic::Request::new(
                    brainstem_proto::v1::StoreRequest {
                        episode: Some(bench_episode(state)),
                    },
                )))
                .await
                .map(drop),
            Scenario::Ping => client.admin.ping(PingRequest::default()).await.map(drop),
            Scenario::PingPayload => client
                .admin
                .ping(PingRequest {
                    payload: vec![b'p'; PING_PAYLOAD_BYTES],
                    delay_ms: 0,
                })
                .await
                .map(drop),
            Scenario::LearningFeedback => {
                // Unique per run, worker and call (the daemon deduplicates by content), the rest
                // random.
                state.calls += 1;
                let mut features = vec![
                    prepared.run,
                    state.worker as f64 / 1024.0,
                    state.calls as f64 / 1e6,
                ];
                features
                    .extend((3..LEARNING_FEATURES).map(|_| {
                        (state.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
                    }));
                let label = (state.next_u64() & 1) as f64;
                let reply = client
                    .learning
                    .feedback(brainstem_proto::v1::FeedbackRequest {
                        features,
                        label,
                        event_id: None,
                    })
                    .await?
                    .into_inner();
                if reply.accepted {
                    Ok(())
                } else {
                    Err(tonic::Status::internal("a fresh event was not accepted"))
                }
            }
            Scenario::RegistryGet if state.next_u64() % 2 == 0 => client
                .registry
                .get(brainstem_proto::v1::GetModelRequest {
                    name: BENCH_MODEL.to_owned(),
                    version: "1.0.0".to_owned(),
                })
                .await
                .map(drop),
            Scenario::RegistryGet => client
                .registry
                .get_latest(brainstem_proto::v1::GetLatestRequest {
                    name: BENCH_MODEL.to_owned(),
                })
                .await
                .map(drop),
            Scenario::SecretsGet => client
                .secrets
                .get(brainstem_proto::v1::GetSecretRequest {
                    path: BENCH_SECRET.to_owned(),
                    version: None,
                })
                .await
                .map(drop),
            Scenario::SecretsPut => client
                .secrets
                .put(brainstem_proto::v1::PutSecretRequest {
                    path: state.next_put_path(),
                    value: state.secret_value(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Scenario::FlagsEval => client
                .flags
                .evaluate(brainstem_proto::v1::EvaluateFlagRequest {
                    key: "modules.vision".to_owned(),
                    context: Some(prost_types::Struct {
                        fields: [(
                            "targetingKey".to_owned(),
                            prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue(
                                    "bench".to_owned(),
                                )),
                            },
                        )]
                        .into(),
                    }),
                    r#type: 0,
                })
                .await
                .map(drop),
            Scenario::Whoami => client
                .admin
                .who_am_i(brainstem_proto::v1::WhoAmIRequest {})
                .await
                .map(drop),
            Scenario::PolicyCheck => client.policy.check(policy_question(0)).await.map(drop),
            Scenario::PolicyBatch => client
                .policy
                .batch_check(BatchCheckRequest {
                    items: (0..100).map(policy_question).collect(),
                })
                .await
                .map(drop),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenario: Scenario,
    pub connections: usize,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Embedding dimension for the episodic scenarios (the daemon's `episodic.embedding_dimension`).
    pub dimension: usize,
    /// Where `registry-get` writes its weights file: the daemon's artifact root.
    pub artifact_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scenario: Scenario,
    pub connections: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub errors: u64,
    pub calls_per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

struct WorkerResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs a benchmark. Connections are opened before the clock starts.
pub async fn run(
    options: &ConnectOptions,
    bench: &BenchOptions,
) -> Result<BenchReport, ClientError> {
    let mut clients = Vec::with_capacity(bench.connections);
    for _ in 0..bench.connections.max(1) {
        clients.push(options.connect().await?);
    }
    let lifetime = bench.warmup + bench.duration;
    let prepared = match clients.first_mut() {
        Some(client) => {
            bench
                .scenario
                .prepare(client, lifetime, bench.artifact_dir.as_deref())
                .await?
        }
        None => Prepared::default(),
    };
    let start = Instant::now();
    let measure_from = start + bench.warmup;
    let end = measure_from + bench.duration;
    let mut workers = Vec::new();
    let total_workers = (clients.len() * bench.concurrency.max(1)) as u64;
    for client in &clients {
        for _ in 0..bench.concurrency.max(1) {
            let mut client = client.clone();
            let scenario = bench.scenario;
            let prepared = prepared.clone();
            let mut state =
                CallState::for_worker(workers.len() as u64, total_workers, bench.dimension);
            workers.push(tokio::spawn(async move {
                let mut result = WorkerResult {
                    histogram: Histogram::new_with_bounds(1, 60_000_000, 3)
                        .expect("static histogram bounds are valid"),
                    errors: 0,
                    first_error: None,
                };
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        break;
                    }
                    let outcome = scenario.call(&mut client, &prepared, &mut state).await;
                    if begun < measure_from {
                        continue;
                    }
                    match outcome {
                        Ok(()) => {
                            let micros = begun.elapsed().as_micros().max(1) as u64;
                            let _ = result.histogram.record(micros.min(60_000_000));
                        }
                        Err(status) => {
                            result.errors += 1;
                            if result.first_error.is_none() {
                                result.first_error = Some(ClientError::Rpc(status).to_string());
                            }
                        }
                    }
                }
                result
            }));
        }
    }
    let mut histogram: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid");
    let mut errors = 0;
    let mut first_error = None;
    for worker in workers {
        let Ok(result) = worker.await else {
            errors += 1;
            continue;
        };
        let _ = histogram.add(&result.histogram);
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    // Clean up what the run minted: a bench leaves no usable token behind.
    if let (Some(id), Some(client)) = (&prepared.token_id, clients.first_mut()) {
        client
            .tokens
            .revoke(brainstem_proto::v1::RevokeTokenRequest { id: id.clone() })
            .await?;
    }
    let measured = end.saturating_duration_since(measure_from).as_secs_f64();
    let calls = histogram.len();
    Ok(BenchReport {
        scenario: bench.scenario,
        connections: bench.connections.max(1),
        concurrency: bench.concurrency.max(1),
        duration_s: measured,
        calls,
        errors,
        calls_per_sec: if measured > 0.0 {
            calls as f64 / measured
        } else {
            0.0
        },
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    fn name(scenario: Scenario) -> String {
        scenario
            .to_possible_value()
            .expect("every scenario is selectable")
            .get_name()
            .to_owned()
    }

    #[test]
    fn scenario_names_are_kebab_case_on_the_command_line_and_in_reports() {
        let names: Vec<String> = Scenario::value_variants()
            .iter()
            .map(|s| name(*s))
            .collect();
        for expected in [
            "ping",
            "ping-payload",
            "flags-eval",
            "token-verify",
            "secrets-get",
            "secrets-put",
            "learning-feedback",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        for scenario in Scenario::value_variants() {
            let json = serde_json::to_value(scenario).unwrap();
            assert_eq!(json, serde_json::Value::String(name(*scenario)));
        }
        assert_eq!(
            Scenario::from_str("secrets-put", false),
            Ok(Scenario::SecretsPut)
        );
    }

    #[test]
    fn secrets_put_callers_in_step_write_different_paths() {
        let workers = 64;
        let mut states: Vec<CallState> = (0..workers)
            .map(|w| CallState::for_worker(w, workers, 0))
            .collect();
        for _round in 0..8 {
            let paths: std::collections::HashSet<String> =
                states.iter_mut().map(CallState::next_put_path).collect();
            assert_eq!(paths.len(), workers as usize);
            for path in &paths {
                let n: u64 = path.strip_prefix("/bench/put/").unwrap().parse().unwrap();
                assert!(n < BENCH_PUT_PATHS, "{path}");
            }
        }
        let mut one = CallState::for_worker(0, 1, 0);
        let first: Vec<String> = (0..257).map(|_| one.next_put_path()).collect();
        assert_eq!(first[0], "/bench/put/0");
        assert_eq!(first[255], "/bench/put/255");
        assert_eq!(first[256], "/bench/put/0");
    }

    #[test]
    fn secret_values_are_32_bytes_and_differ_per_call() {
        let mut state = CallState::new(7, 0);
        let (a, b) = (state.secret_value(), state.secret_value());
        assert_eq!((a.len(), b.len()), (32, 32));
        assert_ne!(a, b);
    }
}
