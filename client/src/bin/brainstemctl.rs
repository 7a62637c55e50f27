//! `brainstemctl`: the operator CLI for brainstemd.
//!
//! Exit codes (see `brainstem_client::exit`): 0 ok, 1 negative answer (e.g. NOT_SERVING), 2 usage,
//! 3 unreachable, 4 denied, 5 other RPC error, 6 local file error.

/// The daemon's allocator (daemon/src/main.rs): `bench` runs beside the daemon on the same cores,
/// so what the client spends on malloc/free is taken from the server it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "ctl/access.rs"]
mod access;
#[path = "ctl/audit.rs"]
mod audit;
#[path = "ctl/backup.rs"]
mod backup;
#[path = "ctl/flags.rs"]
mod flags;
#[path = "ctl/learning.rs"]
mod learning;
#[path = "ctl/perception.rs"]
mod perception;
#[path = "ctl/registry.rs"]
mod registry;
#[path = "ctl/secrets.rs"]
mod secrets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use brainstem_client::bench::{self, BenchOptions, Scenario};
use brainstem_client::v1::{
    ActorStatus, AttenuateTokenRequest, GetActorRequest, GetHealthRequest, GetLogLevelRequest,
    GetStatusRequest, IssueTokenRequest, ListActorsRequest, ListTokensRequest, PingRequest,
    RestartActorRequest, RevokeTokenRequest, RotateKeyRequest, SetLogLevelRequest,
    StartActorRequest, StopActorRequest, VerifyTokenRequest, WatchActorsRequest, WhoAmIRequest,
};
use brainstem_client::{ClientError, ConnectOptions, Resilience, exit, with_idempotency_key};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tonic::Request;
use tonic_health::pb::HealthCheckRequest;

#[derive(Parser)]
#[command(name = "brainstemctl", version, about = "Operate a brainstem daemon")]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format: human-readable text or one JSON document.
    #[arg(long, short, global = true, value_enum, default_value = "human")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// brainstemd gRPC endpoint (host:port or https://host:port).
    #[arg(
        long,
        global = true,
        env = "BRAINSTEM_ENDPOINT",
        default_value = "127.0.0.1:50051"
    )]
    endpoint: String,
    /// Dev state directory: CA and admin identity are read from <state-dir>/pki.
    #[arg(
        long,
        global = true,
        env = "BRAINSTEM_STATE_DIR",
        default_value = ".brainstem-dev"
    )]
    state_dir: PathBuf,
    /// CA certificate (PEM) that signed the server certificate. Default: <state-dir>/pki/ca.pem
    #[arg(long, global = true, env = "BRAINSTEM_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM). Default: <state-dir>/pki/admin.pem
    #[arg(long, global = true, env = "BRAINSTEM_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM). Default: <state-dir>/pki/admin.key
    #[arg(long, global = true, env = "BRAINSTEM_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// TLS server name to verify, when it differs from the endpoint host.
    #[arg(long, global = true, env = "BRAINSTEM_SERVER_NAME")]
    server_name: Option<String>,
    /// Deadline for each call (retries included), in seconds.
    #[arg(
        long,
        global = true,
        env = "BRAINSTEM_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    timeout_seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// grpc.health.v1 check; exit 0 when SERVING, 1 otherwise.
    Health {
        /// Service name ("" is the whole daemon), e.g. brainstem.v1.Admin.
        #[arg(long, default_value = "")]
        service: String,
        /// Detailed health instead (Supervisor.GetHealth, needs supervisor.read): uptime, memory,
        /// threads, every actor and worker, and what keeps the daemon from being ready; exit 1 when
        /// not ready.
        #[arg(long, conflicts_with = "service")]
        detailed: bool,
    },
    /// The supervised actors and background workers: kind, state, counters and control.
    #[command(subcommand)]
    Actors(ActorsCommand),
    /// Show the principal the daemon sees for this certificate, and its grants.
    Whoami,
    /// Round-trip an empty Ping.
    Ping {
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Daemon version, uptime and boot history (needs admin.status).
    Status,
    /// Show the daemon's log filter (needs admin.status), or set it to FILTER (EnvFilter syntax,
    /// e.g. "debug" or "info,brainstemd::access=debug"; needs admin.log-level; audited). A reload
    /// (SIGHUP) applies `[log] level` from the configuration again.
    LogLevel { filter: Option<String> },
    /// Dev certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Cedar policy decisions, validation and signing.
    #[command(subcommand)]
    Policy(access::PolicyCommand),
    /// The decision audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Web automation guardrails.
    #[command(subcommand)]
    Guardrails(access::GuardrailsCommand),
    /// Capability tokens: issue, verify, revoke, list, attenuate; rotate the signing key.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Feature flags: eval, list, set/clear overrides, watch changes, definitions file status.
    #[command(subcommand)]
    Flags(flags::FlagsCommand),
    /// Secrets: put, get, list, delete/undelete/destroy versions, metadata, rotate, watch changes,
    /// rotate the master key. Values are read from stdin or a file, never from argv by default.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Backups: `backup --out FILE` takes one now (needs backup.create); `backup verify FILE`
    /// checks a file without the key (exit 0 valid, 1 damaged).
    Backup(backup::BackupArgs),
    /// Stream frames from files to the vision actor (docs/PERCEPTION.md).
    #[command(subcommand)]
    Vision(perception::VisionCommand),
    /// Stream PCM audio from a file to the voice actor (docs/PERCEPTION.md).
    #[command(subcommand)]
    Voice(perception::VoiceCommand),
    /// The online learning model: stats (learned, duplicates, queue, accuracy) and predict.
    #[command(subcommand)]
    Learning(learning::LearningCommand),
    /// Model registry: register versions, aliases and their history, lineage, deployments,
    /// quality metrics and drift, artifact checks, signed model cards (verified offline).
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Drive a scenario over mTLS and report calls/s, p50 and p99 (last line: JSON).
    Bench {
        #[arg(long, value_enum, default_value = "ping")]
        scenario: Scenario,
        /// Connections (each one HTTP/2 connection).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Concurrent callers per connection.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        duration_seconds: u64,
        #[arg(long, default_value_t = 2)]
        warmup_seconds: u64,
        /// Embedding dimension for the episodic scenarios (the daemon's episodic.embedding_dimension).
        #[arg(long, default_value_t = 384)]
        dimension: usize,
        /// The daemon's artifact root, where registry-get writes its weights file (default:
        /// <state-dir>/artifacts).
        #[arg(long)]
        artifact_dir: Option<PathBuf>,
        /// Store this many episodes before measuring (for episodic-query).
        #[arg(long, default_value_t = 0)]
        prefill: usize,
    },
}

#[derive(Subcommand)]
enum ActorsCommand {
    /// Every actor and worker with its kind, state and counters (needs supervisor.read).
    List,
    /// One actor in detail (needs supervisor.read).
    Get { name: String },
    /// Cancel the actor and start a fresh incarnation; waits until it runs (needs supervisor.admin).
    Restart { name: String },
    /// Stop the actor until started again (needs supervisor.admin).
    Stop { name: String },
    /// Start a stopped or failed actor (needs supervisor.admin).
    Start { name: String },
    /// Print state changes as they happen (one line, or one JSON document, each); Ctrl-C to end.
    Watch {
        /// Only this actor.
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Mint a client certificate for PRINCIPAL from the dev CA (<state-dir>/pki/ca.key).
    Issue {
        /// A URI (spiffe://host/agent/web) becomes the SAN URI; anything else the CN.
        #[arg(long)]
        principal: String,
        /// Where to write <name>.pem and <name>.key. Default: <state-dir>/pki/clients
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Validity of the certificate, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing certificate and key of the same name.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Mint a token for PRINCIPAL (needs tokens.issue and every capability requested).
    Issue {
        /// Who may present the token (its certificate's principal).
        #[arg(long)]
        principal: String,
        /// A capability pattern; repeat for more (-c vision.* -c web.read).
        #[arg(long = "capability", short = 'c', required = true)]
        capabilities: Vec<String>,
        /// Lifetime of the token, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
    /// Check a token, and optionally a capability against it; exit 0 if valid, 1 if not.
    Verify {
        /// The token, or "-" to read it from standard input (keeps it out of the process list).
        #[arg(long)]
        token: String,
        /// Also check that the token covers this capability.
        #[arg(long, default_value = "")]
        capability: String,
    },
    /// Revoke a token and every token derived from it.
    Revoke {
        /// The token's id (from `tokens issue` or `tokens list`).
        id: String,
    },
    /// Tokens you issued or hold (all of them with tokens.admin).
    List {
        /// Only tokens held by this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Also list expired tokens (until they are purged).
        #[arg(long)]
        include_expired: bool,
    },
    /// Derive a token with fewer capabilities and a life no longer than its parent's.
    Attenuate {
        /// The parent token, or "-" for standard input.
        #[arg(long)]
        token: String,
        /// A capability the child keeps (covered by the parent's); repeat for more.
        #[arg(long = "capability", short = 'c', required = true)]
        capabilities: Vec<String>,
        /// Lifetime of the child, in seconds; 0: until the parent expires.
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u64,
    },
    /// Start a new signing key now (needs tokens.rotate); older keys verify until retired.
    RotateKey,
}

/// A token from the command line, or from standard input for "-".
fn token_arg(value: &str) -> Result<String, CliError> {
    if value != "-" {
        return Ok(value.to_owned());
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|err| CliError::Local(format!("reading the token from standard input: {err}")))?;
    Ok(text.trim().to_owned())
}

async fn tokens_command(
    options: &ConnectOptions,
    output: Output,
    command: &TokensCommand,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    match command {
        TokensCommand::Issue {
            principal,
            capabilities,
            ttl_seconds,
        } => {
            let reply = client
                .tokens
                .issue(with_idempotency_key(Request::new(IssueTokenRequest {
                    principal: principal.clone(),
                    capabilities: capabilities.clone(),
                    ttl_seconds: *ttl_seconds,
                })))
                .await?
                .into_inner();
            let expires = rfc3339(reply.expires_at);
            print(
                output,
                format!(
                    "token    {}\nid       {}\nexpires  {expires}",
                    reply.token, reply.id
                ),
                json!({"token": reply.token, "id": reply.id, "expires_at": expires}),
            );
            Ok(exit::OK)
        }
        TokensCommand::Verify { token, capability } => {
            let reply = client
                .tokens
                .verify(VerifyTokenRequest {
                    token: token_arg(token)?,
                    capability: capability.clone(),
                })
                .await?
                .into_inner();
            let expires = rfc3339(reply.expires_at);
            let human = if reply.valid {
                format!(
                    "valid\nid            {}\nprincipal     {}\ncapabilities  {}\nexpires       {expires}",
                    reply.id,
                    reply.principal,
                    none_if_empty(&reply.capabilities)
                )
            } else {
                format!("invalid: {}", reply.reason)
            };
            print(
                output,
                human,
                json!({"valid": reply.valid, "reason": reply.reason, "id": reply.id,
                       "principal": reply.principal, "capabilities": reply.capabilities,
                       "expires_at": if reply.valid { Some(expires) } else { None }}),
            );
            Ok(if reply.valid {
                exit::OK
            } else {
                exit::NEGATIVE
            })
        }
        TokensCommand::Revoke { id } => {
            let reply = client
                .tokens
                .revoke(RevokeTokenRequest { id: id.clone() })
                .await?
                .into_inner();
            let human = if reply.already_revoked {
                format!("{id} was already revoked")
            } else {
                format!("revoked {id} (and {} derived token(s))", reply.descendants)
            };
            print(
                output,
                human,
                json!({"id": id, "revoked_at": rfc3339(reply.revoked_at),
                       "already_revoked": reply.already_revoked, "descendants": reply.descendants}),
            );
            Ok(exit::OK)
        }
        TokensCommand::List {
            principal,
            include_expired,
        } => {
            let reply = client
                .tokens
                .list(ListTokensRequest {
                    principal: principal.clone().unwrap_or_default(),
                    include_expired: *include_expired,
                })
                .await?
                .into_inner();
            let mut human = vec![format!(
                "{:<32}  {:<8}  {:<20}  {:<30}  capabilities",
                "id", "state", "expires", "principal"
            )];
            let mut items = Vec::new();
            for t in reply.tokens {
                let state = if t.revoked {
                    "revoked"
                } else if t.expired {
                    "expired"
                } else {
                    "valid"
                };
                let expires = rfc3339(t.expires_at);
                human.push(format!(
                    "{:<32}  {state:<8}  {expires:<20}  {:<30}  {}",
                    t.id,
                    t.principal,
                    t.capabilities.join(",")
                ));
                items.push(json!({"id": t.id, "state": state, "principal": t.principal,
                    "issuer": t.issuer, "capabilities": t.capabilities,
                    "issued_at": rfc3339(t.issued_at), "expires_at": expires,
                    "parent_ids": t.parent_ids, "key_id": t.key_id}));
            }
            print(output, human.join("\n"), json!({ "tokens": items }));
            Ok(exit::OK)
        }
        TokensCommand::Attenuate {
            token,
            capabilities,
            ttl_seconds,
        } => {
            let reply = client
                .tokens
                .attenuate(with_idempotency_key(Request::new(AttenuateTokenRequest {
                    token: token_arg(token)?,
                    capabilities: capabilities.clone(),
                    ttl_seconds: *ttl_seconds,
                })))
                .await?
                .into_inner();
            let expires = rfc3339(reply.expires_at);
            print(
                output,
                format!(
                    "token    {}\nid       {}\nparent   {}\nexpires  {expires}",
                    reply.token, reply.id, reply.parent_id
                ),
                json!({"token": reply.token, "id": reply.id, "parent_id": reply.parent_id,
                       "expires_at": expires}),
            );
            Ok(exit::OK)
        }
        TokensCommand::RotateKey => {
            let reply = client
                .tokens
                .rotate_key(with_idempotency_key(Request::new(RotateKeyRequest {})))
                .await?
                .into_inner();
            let mut human = vec![format!("new signing key {}", reply.key_id)];
            let mut keys = Vec::new();
            for k in reply.keys {
                let retires = k.retires_at.map(|t| rfc3339(Some(t)));
                human.push(format!(
                    "  {:<6} created {}  {}",
                    k.key_id,
                    rfc3339(k.created_at),
                    retires
                        .as_ref()
                        .map_or_else(|| "active".to_owned(), |r| format!("retires {r}"))
                ));
                keys.push(
                    json!({"key_id": k.key_id, "created_at": rfc3339(k.created_at),
                                 "active": k.active, "retires_at": retires}),
                );
            }
            print(
                output,
                human.join("\n"),
                json!({"key_id": reply.key_id, "keys": keys}),
            );
            Ok(exit::OK)
        }
    }
}

impl Connection {
    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::dev(&self.state_dir, &self.endpoint);
        if let Some(ca) = &self.ca {
            options.ca = ca.clone();
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.with_identity(cert.clone(), key.clone());
        }
        options.server_name = self.server_name.clone();
        options.call_timeout = Duration::from_secs(self.timeout_seconds.max(1));
        // Safe calls (and the mutating ones, which carry an idempotency key) are retried on
        // UNAVAILABLE and RESOURCE_EXHAUSTED within the call's deadline.
        options.resilience = Some(Resilience::default());
        options
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if cli.output == Output::Json {
                let code = match &err {
                    CliError::Client(ClientError::Rpc(status)) => {
                        brainstem_client::code_name(status.code())
                    }
                    _ => "CLIENT",
                };
                println!("{}", json!({"error": err.to_string(), "code": code}));
            } else {
                eprintln!("brainstemctl: {err}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Local(String),
    /// A command line the daemon was never asked about (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Client(ClientError::Rpc(status))
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(err) => err.exit_code(),
            CliError::Local(_) => exit::LOCAL,
            CliError::Usage(_) => exit::USAGE,
        }
    }
}

fn print(output: Output, human: String, value: serde_json::Value) {
    match output {
        Output::Human => println!("{human}"),
        Output::Json => println!("{value}"),
    }
}

fn rfc3339(ts: Option<prost_types::Timestamp>) -> String {
    ts.and_then(|ts| {
        time::OffsetDateTime::from_unix_timestamp(ts.seconds)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    })
    .unwrap_or_else(|| "-".to_owned())
}

async fn run(cli: &Cli) -> Result<u8, CliError> {
    let options = cli.connection.options();
    let output = cli.output;
    match &cli.command {
        Command::Health { detailed: true, .. } => {
            let mut client = options.connect().await?;
            let h = client
                .supervisor
                .get_health(GetHealthRequest {})
                .await?
                .into_inner();
            let not_ready = if h.not_ready.is_empty() {
                String::new()
            } else {
                format!("  (not running: {})", h.not_ready.join(", "))
            };
            let human = format!(
                "live {}  ready {}{}  version {}  uptime {:.0}s  rss {:.1} MiB  threads {}\n{}",
                h.live,
                h.ready,
                not_ready,
                h.version,
                h.uptime_seconds,
                h.rss_bytes as f64 / (1024.0 * 1024.0),
                h.threads,
                actor_table(&h.actors)
            );
            let value = json!({
                "live": h.live, "ready": h.ready, "not_ready": h.not_ready, "version": h.version,
                "uptime_seconds": h.uptime_seconds, "rss_bytes": h.rss_bytes, "threads": h.threads,
                "actors": h.actors.iter().map(actor_json).collect::<Vec<_>>(),
            });
            print(output, human, value);
            Ok(if h.ready { exit::OK } else { exit::NEGATIVE })
        }
        Command::Actors(command) => actors(&options, output, command).await,
        Command::Health { service, .. } => {
            let mut client = options.connect().await?;
            let reply = client
                .health
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await?
                .into_inner();
            let status =
                tonic_health::pb::health_check_response::ServingStatus::try_from(reply.status)
                    .map_or("UNKNOWN", |s| s.as_str_name());
            let name = if service.is_empty() {
                "brainstemd"
            } else {
                service.as_str()
            };
            print(
                output,
                format!("{name}: {status}"),
                json!({"service": service, "status": status}),
            );
            Ok(if status == "SERVING" {
                exit::OK
            } else {
                exit::NEGATIVE
            })
        }
        Command::Whoami => {
            let mut client = options.connect().await?;
            let me = client.admin.who_am_i(WhoAmIRequest {}).await?.into_inner();
            let human = format!(
                "principal     {} ({})\nroles         {}\ncapabilities  {}",
                me.principal,
                me.principal_source,
                none_if_empty(&me.roles),
                none_if_empty(&me.capabilities)
            );
            print(
                output,
                human,
                json!({"principal": me.principal, "principal_source": me.principal_source,
                       "roles": me.roles, "capabilities": me.capabilities}),
            );
            Ok(exit::OK)
        }
        Command::Ping { count } => {
            let mut client = options.connect().await?;
            let mut rtts = Vec::new();
            for _ in 0..(*count).max(1) {
                let begun = Instant::now();
                client.admin.ping(PingRequest::default()).await?;
                rtts.push(begun.elapsed().as_micros() as u64);
            }
            let human = rtts
                .iter()
                .map(|us| {
                    format!(
                        "pong from {}: {:.3} ms",
                        options.endpoint,
                        *us as f64 / 1000.0
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(
                output,
                human,
                json!({"endpoint": options.endpoint, "rtt_us": rtts}),
            );
            Ok(exit::OK)
        }
        Command::Status => {
            let mut client = options.connect().await?;
            let s = client
                .admin
                .get_status(GetStatusRequest {})
                .await?
                .into_inner();
            let human = format!(
                "version                  {}\ndev mode                 {}\nstarted                  {}\nuptime                   {}s\nboot count               {}\nfirst start              {}\nprevious shutdown clean  {}\nschema version           {}",
                s.version,
                s.dev_mode,
                rfc3339(s.started_at),
                s.uptime_seconds,
                s.boot_count,
                rfc3339(s.first_start),
                s.previous_shutdown_clean,
                s.schema_version
            );
            let value = json!({
                "version": s.version, "dev_mode": s.dev_mode, "started_at": rfc3339(s.started_at),
                "uptime_seconds": s.uptime_seconds, "boot_count": s.boot_count,
                "first_start": rfc3339(s.first_start),
                "previous_shutdown_clean": s.previous_shutdown_clean, "schema_version": s.schema_version,
            });
            print(output, human, value);
            Ok(exit::OK)
        }
        Command::LogLevel { filter } => {
            let mut client = options.connect().await?;
            let reply = match filter {
                Some(filter) => client
                    .admin
                    .set_log_level(SetLogLevelRequest {
                        filter: filter.clone(),
                    })
                    .await?
                    .into_inner(),
                None => client
                    .admin
                    .get_log_level(GetLogLevelRequest {})
                    .await?
                    .into_inner(),
            };
            let mut human = format!(
                "filter      {}\nconfigured  {}",
                reply.filter, reply.configured
            );
            if filter.is_some() {
                human.push_str(&format!("\nprevious    {}", reply.previous));
            }
            if reply.env_override {
                human.push_str("\nRUST_LOG was set at start: reloads keep the filter");
            }
            let value = json!({
                "filter": reply.filter, "previous": reply.previous,
                "configured": reply.configured, "env_override": reply.env_override,
            });
            print(output, human, value);
            Ok(exit::OK)
        }
        Command::Certs(CertsCommand::Issue {
            principal,
            out_dir,
            days,
            force,
        }) => {
            let pki = brainstem_keys::pki::DevPki::new(&cli.connection.state_dir);
            let out_dir = out_dir.clone().unwrap_or_else(|| pki.dir.join("clients"));
            let stem = brainstem_keys::pki::file_stem(principal);
            for existing in [
                out_dir.join(format!("{stem}.pem")),
                out_dir.join(format!("{stem}.key")),
            ] {
                if existing.exists() && !force {
                    return Err(CliError::Local(format!(
                        "{} already exists (a certificate for {principal:?} or another principal \
                         with the same last name segment); pass --force to replace it, or --out-dir",
                        existing.display()
                    )));
                }
            }
            let (cert, key) = pki
                .issue_client(principal, &out_dir, *days)
                .map_err(|err| CliError::Local(err.to_string()))?;
            print(
                output,
                format!(
                    "certificate  {}\nkey          {}",
                    cert.display(),
                    key.display()
                ),
                json!({"principal": principal, "cert": cert, "key": key}),
            );
            Ok(exit::OK)
        }
        Command::Policy(command) => access::policy(&options, output, command).await,
        Command::Audit(command) => {
            audit::audit(&options, &cli.connection.state_dir, output, command).await
        }
        Command::Flags(command) => flags::flags(&options, output, command).await,
        Command::Backup(args) => backup::backup(&options, output, args).await,
        Command::Secrets(command) => secrets::secrets(&options, output, command).await,
        Command::Vision(command) => perception::vision(&options, output, command).await,
        Command::Voice(command) => perception::voice(&options, output, command).await,
        Command::Learning(command) => learning::learning(&options, output, command).await,
        Command::Registry(command) => registry::registry(&options, output, command).await,
        Command::Guardrails(command) => access::guardrails(&options, output, command).await,
        Command::Tokens(command) => tokens_command(&options, output, command).await,
        Command::Bench {
            scenario,
            connections,
            concurrency,
            duration_seconds,
            warmup_seconds,
            dimension,
            artifact_dir,
            prefill,
        } => {
            // The bench measures the daemon: every call is sent once, no retries, no breaker.
            let options = ConnectOptions {
                resilience: None,
                ..options.clone()
            };
            if *prefill > 0 {
                let mut client = options.connect().await?;
                bench::prefill(&mut client, *prefill, *dimension).await?;
            }
            let report = bench::run(
                &options,
                &BenchOptions {
                    scenario: *scenario,
                    connections: *connections,
                    concurrency: *concurrency,
                    duration: Duration::from_secs((*duration_seconds).max(1)),
                    warmup: Duration::from_secs(*warmup_seconds),
                    dimension: *dimension,
                    artifact_dir: Some(
                        artifact_dir
                            .clone()
                            .unwrap_or_else(|| cli.connection.state_dir.join("artifacts")),
                    ),
                },
            )
            .await?;
            if output == Output::Human {
                println!(
                    "scenario {:?}: {} connection(s) x {} concurrent, {:.1}s measured",
                    report.scenario, report.connections, report.concurrency, report.duration_s
                );
                println!(
                    "calls {}  errors {}  calls/s {:.0}  p50 {} us  p90 {} us  p99 {} us  max {} us",
                    report.calls,
                    report.errors,
                    report.calls_per_sec,
                    report.p50_us,
                    report.p90_us,
                    report.p99_us,
                    report.max_us
                );
                if let Some(err) = &report.first_error {
                    println!("first error: {err}");
                }
            }
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|err| CliError::Local(err.to_string()))?
            );
            Ok(if report.errors == 0 {
                exit::OK
            } else {
                exit::RPC_ERROR
            })
        }
    }
}

fn none_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

fn actor_json(a: &ActorStatus) -> serde_json::Value {
    json!({
        "name": a.name, "kind": a.kind, "state": a.state, "restarts": a.restarts, "panics": a.panics,
        "errors": a.errors, "kills": a.kills, "mailbox_depth": a.mailbox_depth,
        "mailbox_capacity": a.mailbox_capacity, "mailbox_drops": a.mailbox_drops,
        "last_error": a.last_error, "status": a.status,
        "seconds_since_progress": a.seconds_since_progress, "uptime_seconds": a.uptime_seconds,
        "restart_type": a.restart_type, "critical": a.critical, "health_services": a.health_services,
    })
}

fn actor_table(actors: &[ActorStatus]) -> String {
    let mut lines = vec![format!(
        "{:<18} {:<6} {:<11} {:>8} {:>6} {:>6} {:>5} {:>11} {:>6} {:>9}  {}",
        "NAME",
        "KIND",
        "STATE",
        "RESTARTS",
        "PANICS",
        "ERRORS",
        "KILLS",
        "MAILBOX",
        "DROPS",
        "PROGRESS",
        "LAST ERROR"
    )];
    for a in actors {
        // A worker has no mailbox.
        let mailbox = if a.kind == "worker" {
            "-".to_owned()
        } else {
            format!("{}/{}", a.mailbox_depth, a.mailbox_capacity)
        };
        lines.push(format!(
            "{:<18} {:<6} {:<11} {:>8} {:>6} {:>6} {:>5} {:>11} {:>6} {:>8.1}s  {}",
            a.name,
            a.kind,
            a.state,
            a.restarts,
            a.panics,
            a.errors,
            a.kills,
            mailbox,
            a.mailbox_drops,
            a.seconds_since_progress,
            if a.last_error.is_empty() {
                "-"
            } else {
                a.last_error.as_str()
            }
        ));
    }
    lines.join("\n")
}

fn actor_detail(a: &ActorStatus) -> String {
    format!(
        "name              {}\nkind              {}\nstate             {}\nstatus            {}\nrestart type      {}{}\nuptime            {:.1}s\nrestarts          {}\npanics            {}\nerrors            {}\nkills             {}\nmailbox           {}\nsince progress    {:.1}s\nlast error        {}\nhealth services   {}",
        a.name,
        a.kind,
        a.state,
        if a.status.is_empty() {
            "-"
        } else {
            a.status.as_str()
        },
        a.restart_type,
        if a.critical { " (critical)" } else { "" },
        a.uptime_seconds,
        a.restarts,
        a.panics,
        a.errors,
        a.kills,
        if a.kind == "worker" {
            "- (a worker has none)".to_owned()
        } else {
            format!(
                "{}/{} ({} dropped)",
                a.mailbox_depth, a.mailbox_capacity, a.mailbox_drops
            )
        },
        a.seconds_since_progress,
        if a.last_error.is_empty() {
            "-"
        } else {
            a.last_error.as_str()
        },
        none_if_empty(&a.health_services),
    )
}

async fn actors(
    options: &ConnectOptions,
    output: Output,
    command: &ActorsCommand,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    let one = |actor: Option<ActorStatus>| -> Result<u8, CliError> {
        let actor = actor.ok_or_else(|| CliError::Local("the daemon sent no actor".to_owned()))?;
        print(output, actor_detail(&actor), actor_json(&actor));
        Ok(exit::OK)
    };
    match command {
        ActorsCommand::List => {
            let actors = client
                .supervisor
                .list_actors(ListActorsRequest {})
                .await?
                .into_inner()
                .actors;
            print(
                output,
                actor_table(&actors),
                json!({"actors": actors.iter().map(actor_json).collect::<Vec<_>>()}),
            );
            Ok(exit::OK)
        }
        ActorsCommand::Get { name } => {
            let reply = client
                .supervisor
                .get_actor(GetActorRequest { name: name.clone() })
                .await?;
            one(reply.into_inner().actor)
        }
        ActorsCommand::Restart { name } => {
            let reply = client
                .supervisor
                .restart_actor(with_idempotency_key(Request::new(RestartActorRequest {
                    name: name.clone(),
                })))
                .await?;
            one(reply.into_inner().actor)
        }
        ActorsCommand::Stop { name } => {
            let reply = client
                .supervisor
                .stop_actor(StopActorRequest { name: name.clone() })
                .await?;
            one(reply.into_inner().actor)
        }
        ActorsCommand::Start { name } => {
            let reply = client
                .supervisor
                .start_actor(StartActorRequest { name: name.clone() })
                .await?;
            one(reply.into_inner().actor)
        }
        ActorsCommand::Watch { name } => {
            // A stream has no overall deadline: the per-call timeout would end it.
            let mut request = tonic::Request::new(WatchActorsRequest {
                name: name.clone().unwrap_or_default(),
            });
            request.set_timeout(Duration::from_secs(365 * 24 * 3600));
            let mut stream = client.supervisor.watch_actors(request).await?.into_inner();
            while let Some(event) = stream.message().await? {
                let Some(a) = event.actor else { continue };
                let at = rfc3339(event.at);
                let human = if event.previous_state.is_empty() {
                    format!("{at} {} {} (restarts {})", a.name, a.state, a.restarts)
                } else {
                    format!(
                        "{at} {} {} -> {} (restarts {}{})",
                        a.name,
                        event.previous_state,
                        a.state,
                        a.restarts,
                        if a.last_error.is_empty() {
                            String::new()
                        } else {
                            format!(", last error: {}", a.last_error)
                        }
                    )
                };
                let mut value = actor_json(&a);
                value["previous_state"] = json!(event.previous_state);
                value["at"] = json!(at);
                print(output, human, value);
            }
            Ok(exit::OK)
        }
    }
}
