//! Configuration: one TOML file, defaults in one place, every error reported at once.
//!
//! The file is walked key by key rather than handed to serde, so that a file with three mistakes gets
//! three messages (each naming its key) instead of the first one only. Unknown keys are errors.
//!
//! What reloads live (SIGHUP) and what needs a restart is listed in [`RELOADABLE`]; the reload path
//! refuses a new file whose restart-only settings differ and keeps serving with the old configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Exit code for an invalid configuration or command line (sysexits `EX_USAGE`). systemd's unit sets
/// `RestartPreventExitStatus=64` so a broken file is not restarted in a loop.
pub const EXIT_CONFIG: i32 = 64;

/// Principal of the admin certificate that dev mode mints; dev mode grants it the `admin` role.
pub const DEV_ADMIN_PRINCIPAL: &str = "spiffe://brainstem.dev/admin";

/// Settings that a reload (SIGHUP) applies. Every other setting needs a restart.
pub const RELOADABLE: &[&str] = &[
    "log.level",
    "tls.*",
    "roles",
    "grants",
    "policy.dir",
    "policy.signing_public_key_file",
    "policy.max_batch",
    "rate_limits",
    "guardrails.*",
];

/// Prefix of a path that names a systemd credential (`LoadCredential=`): `credential:server.key` is
/// `$CREDENTIALS_DIRECTORY/server.key`.
pub const CREDENTIAL_PREFIX: &str = "credential:";

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Dev mode: own CA and certificates under `<state_dir>/pki`, created on first start.
    pub dev_mode: bool,
    pub state_dir: PathBuf,
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub tokens: TokensConfig,
    pub keys: KeysConfig,
    pub supervisor: SupervisorConfig,
    /// Per-actor settings, keyed by actor name (see [`KNOWN_ACTORS`]).
    pub actors: BTreeMap<String, ActorConfig>,
    pub episodic: EpisodicConfig,
    /// Role name → capability patterns.
    pub roles: BTreeMap<String, Vec<String>>,
    pub grants: Vec<Grant>,
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    pub rate_limits: Vec<RateLimit>,
    pub guardrails: GuardrailsConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_message_bytes: u64,
    pub max_connections: u64,
    pub max_concurrent_streams: u64,
    pub request_timeout_seconds: u64,
    pub handshake_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub drain_timeout_seconds: u64,
    pub stop_timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every acknowledged write is flushed to disk before the reply.
    Always,
    /// Writes are flushed in the background every `flush_interval_ms`; a crash can lose that window.
    Interval,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub flush: FlushPolicy,
    pub flush_interval_ms: u64,
    pub cache_capacity_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `info,brainstemd::grpc=debug`. `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

/// Capability tokens (`[tokens]`): lifetimes and signing-key rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensConfig {
    /// Longest lifetime Issue accepts.
    pub max_ttl_seconds: u64,
    /// A new signing key after this long (checked every minute); 0 = only on request (RotateKey).
    pub rotate_after_seconds: u64,
    /// How long a replaced key keeps verifying; at least `max_ttl_seconds`, so no token dies early.
    pub retire_after_seconds: u64,
}

/// Key material (`[keys]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysConfig {
    /// The 32-byte master key that encrypts signing keys at rest. `None`: `<state_dir>/master.key` in
    /// dev mode, the systemd credential `master.key` otherwise.
    pub master_key_file: Option<String>,
}

/// How the supervisor restarts its actors when one of them exits abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the actor that exited is restarted.
    OneForOne,
    /// The actor that exited and every actor declared after it (they depend on it) are restarted,
    /// in declared order.
    RestForOne,
}

/// When an actor that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted, whatever the exit.
    Permanent,
    /// Restarted only after an abnormal exit (error, panic, freeze).
    Transient,
    /// Never restarted.
    Temporary,
}

/// What a full mailbox does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// The sender waits for room up to `mailbox_wait_ms`, then is refused.
    Wait,
    /// The oldest queued message is dropped (counted) to make room.
    DropOldest,
    /// The new message is dropped (counted).
    DropNewest,
    /// The sender is refused at once (RESOURCE_EXHAUSTED with a retry hint).
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    pub strategy: Strategy,
    /// Restart intensity: more than `max_restarts` restarts of one actor within
    /// `restart_window_seconds` escalates (the actor is marked failed).
    pub max_restarts: u64,
    pub restart_window_seconds: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Each backoff is shortened by a random 0..=jitter percent.
    pub backoff_jitter_percent: u64,
    /// An actor that is busy and makes no progress for this long is frozen…
    pub hung_after_seconds: u64,
    /// …as seen by this many consecutive watchdog checks (one every hung_after / hung_checks).
    pub hung_checks: u64,
    /// Exit non-zero (so systemd restarts the daemon) when a critical actor fails.
    pub exit_on_critical_failure: bool,
    /// How long start waits for each actor to report ready before starting the next one.
    pub start_timeout_seconds: u64,
}

/// Settings of one supervised actor.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorConfig {
    pub restart: RestartType,
    /// A failed critical actor stops the systemd watchdog ping (and may exit the daemon).
    pub critical: bool,
    pub mailbox_capacity: u64,
    pub mailbox_overflow: OverflowPolicy,
    /// With `mailbox_overflow = "wait"`: how long a sender waits for room.
    pub mailbox_wait_ms: u64,
    /// On stop, restart or freeze: how long the actor gets to return after cancellation before it is
    /// aborted (and named in the log).
    pub stop_deadline_ms: u64,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            restart: RestartType::Permanent,
            critical: true,
            mailbox_capacity: 1024,
            mailbox_overflow: OverflowPolicy::Wait,
            mailbox_wait_ms: 100,
            stop_deadline_ms: 2000,
        }
    }
}

/// Actors this build runs; `[actors.<name>]` may only name these.
pub const KNOWN_ACTORS: &[&str] = &["episodic"];

#[derive(Debug, Clone, PartialEq)]
pub struct EpisodicConfig {
    pub enabled: bool,
    /// Ring size: the oldest episode is evicted when a new one arrives at capacity.
    pub capacity: u64,
    pub embedding_dimension: u64,
    /// Decay half-life: an episode this old scores half of a fresh one. 0 disables decay.
    pub half_life_seconds: u64,
    pub max_text_bytes: u64,
    pub max_k: u64,
    pub max_batch: u64,
    /// Query results kept for repeated queries; any write invalidates them. 0 disables the cache.
    pub query_cache_entries: u64,
    /// A cached answer is reused for at most this long (decay moves scores as time passes).
    pub query_cache_ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// SAN URI or CN, exactly as WhoAmI reports it.
    pub principal: String,
    pub roles: Vec<String>,
    pub capabilities: Vec<String>,
}

/// Cedar policies: where they live and how they are reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Directory of `*.cedar` files plus `schema.cedarschema`; empty: the built-in defaults (the
    /// shipped `config/policies/`).
    pub dir: String,
    /// How often the directory is checked for changes; 0 turns the watch off (SIGHUP still reloads).
    pub watch_interval_seconds: u64,
    /// Hex Ed25519 public key file that verifies `*.cedar.sig` signatures; empty: no signed policies.
    pub signing_public_key_file: String,
    /// Most decisions in one BatchCheck.
    pub max_batch: u64,
}

/// The decision audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Oldest records are trimmed beyond this many.
    pub max_records: u64,
    /// Records older than this are trimmed.
    pub max_age_seconds: u64,
    /// Decisions waiting to be written; when full, see `fail_closed_actions`.
    pub queue_capacity: u64,
    /// Action patterns that are denied when their decision cannot be audited.
    pub fail_closed_actions: Vec<String>,
}

/// A token bucket per principal for the methods a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Full method paths (`/brainstem.v1.Policy/Explain`) or a service wildcard
    /// (`/brainstem.v1.Policy/*`).
    pub methods: Vec<String>,
    /// Refill rate.
    pub per_minute: u64,
    /// Bucket size: calls that may come at once; defaults to `per_minute`.
    pub burst: u64,
}

/// Web automation guardrails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailsConfig {
    /// Domains navigation may reach; `*.example.org` also covers its subdomains.
    pub allowed_domains: Vec<String>,
    /// Clicks per domain and principal per minute (token bucket).
    pub clicks_per_minute: u64,
    /// Form field names or values containing one of these words make a submission dangerous.
    pub dangerous_fields: Vec<String>,
    /// Field names accepted as the form's CSRF token; a submission needs one with a value.
    pub csrf_fields: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: String::new(),
            watch_interval_seconds: 2,
            signing_public_key_file: String::new(),
            max_batch: 1000,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_records: 1_000_000,
            max_age_seconds: 30 * 24 * 3600,
            queue_capacity: 65_536,
            fail_closed_actions: strings(&["secrets.*"]),
        }
    }
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        GuardrailsConfig {
            allowed_domains: Vec::new(),
            clicks_per_minute: 10,
            dangerous_fields: strings(&[
                "post",
                "buy",
                "delete",
                "purchase",
                "checkout",
                "pay",
                "order",
                "transfer",
                "tweet",
                "send",
                "unsubscribe",
                "remove",
            ]),
            csrf_fields: strings(&[
                "csrf",
                "csrf_token",
                "_csrf",
                "csrfmiddlewaretoken",
                "authenticity_token",
                "xsrf_token",
                "__requestverificationtoken",
            ]),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dev_mode: false,
            state_dir: PathBuf::from("/var/lib/brainstem"),
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
                max_message_bytes: 4 * MIB,
                max_connections: 1024,
                max_concurrent_streams: 256,
                request_timeout_seconds: 30,
                handshake_timeout_seconds: 10,
                shutdown_grace_seconds: 0,
                drain_timeout_seconds: 10,
                stop_timeout_seconds: 5,
            },
            metrics: MetricsConfig {
                enabled: true,
                listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            },
            tls: TlsConfig {
                ca_file: format!("{CREDENTIAL_PREFIX}ca.pem"),
                cert_file: format!("{CREDENTIAL_PREFIX}server.pem"),
                key_file: format!("{CREDENTIAL_PREFIX}server.key"),
            },
            store: StoreConfig {
                flush: FlushPolicy::Always,
                flush_interval_ms: 500,
                cache_capacity_bytes: 64 * MIB,
            },
            log: LogConfig {
                level: "info".to_owned(),
                format: LogFormat::Human,
            },
            tokens: TokensConfig {
                max_ttl_seconds: 24 * 3600,
                rotate_after_seconds: 7 * 24 * 3600,
                retire_after_seconds: 8 * 24 * 3600,
            },
            keys: KeysConfig {
                master_key_file: None,
            },
            supervisor: SupervisorConfig {
                strategy: Strategy::OneForOne,
                max_restarts: 5,
                restart_window_seconds: 60,
                backoff_initial_ms: 100,
                backoff_max_ms: 30_000,
                backoff_jitter_percent: 20,
                hung_after_seconds: 120,
                hung_checks: 3,
                exit_on_critical_failure: true,
                start_timeout_seconds: 30,
            },
            actors: KNOWN_ACTORS
                .iter()
                .map(|name| ((*name).to_owned(), ActorConfig::default()))
                .collect(),
            episodic: EpisodicConfig {
                enabled: true,
                capacity: 10_000,
                embedding_dimension: 384,
                half_life_seconds: 3600,
                max_text_bytes: 8192,
                max_k: 100,
                max_batch: 256,
                query_cache_entries: 256,
                query_cache_ttl_ms: 1000,
            },
            roles: BTreeMap::from([("admin".to_owned(), vec!["*".to_owned()])]),
            grants: Vec::new(),
            policy: PolicyConfig::default(),
            audit: AuditConfig::default(),
            rate_limits: vec![RateLimit {
                methods: strings(&[
                    "/brainstem.v1.Policy/Explain",
                    "/brainstem.v1.Policy/Validate",
                ]),
                per_minute: 60,
                burst: 60,
            }],
            guardrails: GuardrailsConfig::default(),
        }
    }
}

/// Command-line settings that win over the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub dev_mode: bool,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

/// Where a configuration comes from, so a reload can read it again the same way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// One problem in a configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    fn single(origin: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            issues: vec![ConfigIssue {
                key: key.to_owned(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({}): {} problem(s)",
            self.origin,
            self.issues.len()
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl ConfigSource {
    /// Reads the file (if any), applies the overrides and validates the result.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (origin, text) = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    ConfigError::single(
                        &path.display().to_string(),
                        "",
                        format!("cannot read: {err}"),
                    )
                })?;
                (path.display().to_string(), text)
            }
            None => ("built-in defaults".to_owned(), String::new()),
        };
        let mut config = parse(&origin, &text)?;
        self.overrides.apply(&mut config);
        config.validate(&origin)?;
        Ok(config)
    }
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if self.dev_mode {
            config.dev_mode = true;
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(addr) = self.listen {
            config.server.listen = addr;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = addr;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
    }
}

impl Config {
    /// The dev-mode PKI directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// TLS file paths after dev mode and `credential:` resolution.
    pub fn tls_paths(&self) -> Result<TlsPaths, ConfigError> {
        if self.dev_mode {
            let pki = self.pki_dir();
            return Ok(TlsPaths {
                ca: pki.join("ca.pem"),
                cert: pki.join("server.pem"),
                key: pki.join("server.key"),
            });
        }
        let mut issues = Vec::new();
        let mut resolve = |key: &str, value: &str| match resolve_path(value) {
            Ok(path) => path,
            Err(message) => {
                issues.push(ConfigIssue {
                    key: key.to_owned(),
                    message,
                });
                PathBuf::new()
            }
        };
        let paths = TlsPaths {
            ca: resolve("tls.ca_file", &self.tls.ca_file),
            cert: resolve("tls.cert_file", &self.tls.cert_file),
            key: resolve("tls.key_file", &self.tls.key_file),
        };
        if issues.is_empty() {
            Ok(paths)
        } else {
            Err(ConfigError {
                origin: "tls".to_owned(),
                issues,
            })
        }
    }

    /// The master key file after dev-mode defaults and `credential:` resolution.
    pub fn master_key_path(&self) -> Result<PathBuf, ConfigError> {
        let value = match (&self.keys.master_key_file, self.dev_mode) {
            (Some(value), _) => value.clone(),
            (None, true) => return Ok(self.state_dir.join("master.key")),
            (None, false) => format!("{CREDENTIAL_PREFIX}master.key"),
        };
        resolve_path(&value).map_err(|message| ConfigError {
            origin: "keys".to_owned(),
            issues: vec![ConfigIssue {
                key: "keys.master_key_file".to_owned(),
                message,
            }],
        })
    }

    /// Grants in force: the configured ones, plus the dev admin's in dev mode.
    pub fn effective_grants(&self) -> Vec<Grant> {
        let mut grants = self.grants.clone();
        if self.dev_mode && !grants.iter().any(|g| g.principal == DEV_ADMIN_PRINCIPAL) {
            grants.push(Grant {
                principal: DEV_ADMIN_PRINCIPAL.to_owned(),
                roles: vec!["admin".to_owned()],
                capabilities: Vec::new(),
            });
        }
        grants
    }

    /// Cross-field checks that parsing alone cannot do.
    fn validate(&mut self, origin: &str) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let push = |issues: &mut Vec<ConfigIssue>, key: &str, message: String| {
            issues.push(ConfigIssue {
                key: key.to_owned(),
                message,
            })
        };
        if self.metrics.enabled && !self.metrics.listen.ip().is_loopback() {
            push(
                &mut issues,
                "metrics.listen",
                format!(
                    "{} is not a loopback address; the metrics listener is unauthenticated and serves on 127.0.0.1 or ::1 only",
                    self.metrics.listen
                ),
            );
        }
        if self.metrics.enabled
            && self.metrics.listen == self.server.listen
            && self.server.listen.port() != 0
        {
            push(
                &mut issues,
                "metrics.listen",
                "must differ from server.listen".to_owned(),
            );
        }
        if self.dev_mode && self.state_dir.as_os_str().is_empty() {
            push(
                &mut issues,
                "state_dir",
                "dev mode needs a state directory".to_owned(),
            );
        }
        if !self.dev_mode {
            if let Err(err) = self.tls_paths() {
                issues.extend(err.issues);
            }
        }
        if let Err(err) = self.master_key_path() {
            issues.extend(err.issues);
        }
        if self.tokens.retire_after_seconds < self.tokens.max_ttl_seconds {
            push(
                &mut issues,
                "tokens.retire_after_seconds",
                format!(
                    "{} is less than tokens.max_ttl_seconds ({}); tokens would stop verifying before they expire",
                    self.tokens.retire_after_seconds, self.tokens.max_ttl_seconds
                ),
            );
        }
        if self.supervisor.backoff_initial_ms > self.supervisor.backoff_max_ms {
            push(
                &mut issues,
                "supervisor.backoff_initial_ms",
                format!(
                    "{} is more than supervisor.backoff_max_ms ({})",
                    self.supervisor.backoff_initial_ms, self.supervisor.backoff_max_ms
                ),
            );
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            push(
                &mut issues,
                "log.level",
                format!("not a valid filter directive: {err}"),
            );
        }
        for (role, caps) in &self.roles {
            for cap in caps {
                if let Err(message) = validate_capability_pattern(cap) {
                    push(
                        &mut issues,
                        &format!("roles.{role}"),
                        format!("{cap:?}: {message}"),
                    );
                }
            }
        }
        let mut principals = BTreeSet::new();
        for (i, grant) in self.grants.iter().enumerate() {
            let key = format!("grants[{i}]");
            if grant.principal.is_empty() {
                push(
                    &mut issues,
                    &format!("{key}.principal"),
                    "must not be empty".to_owned(),
                );
            } else if !principals.insert(grant.principal.as_str()) {
                push(
                    &mut issues,
                    &format!("{key}.principal"),
                    format!("{:?} is granted twice; merge the entries", grant.principal),
                );
            }
            for role in &grant.roles {
                if !self.roles.contains_key(role) {
                    push(
                        &mut issues,
                        &format!("{key}.roles"),
                        format!("unknown role {role:?}"),
                    );
                }
            }
            for cap in &grant.capabilities {
                if let Err(message) = validate_capability_pattern(cap) {
                    push(
                        &mut issues,
                        &format!("{key}.capabilities"),
                        format!("{cap:?}: {message}"),
                    );
                }
            }
        }
        for pattern in &self.audit.fail_closed_actions {
            if let Err(message) = validate_capability_pattern(pattern) {
                push(
                    &mut issues,
                    "audit.fail_closed_actions",
                    format!("{pattern:?}: {message}"),
                );
            }
        }
        for (i, limit) in self.rate_limits.iter().enumerate() {
            if limit.methods.is_empty() {
                push(
                    &mut issues,
                    &format!("rate_limits[{i}].methods"),
                    "names no method".to_owned(),
                );
            }
            for method in &limit.methods {
                if crate::grpc::methods::matching(method).next().is_none() {
                    push(
                        &mut issues,
                        &format!("rate_limits[{i}].methods"),
                        format!(
                            "{method:?} names no brainstem.v1 method (expected \"/brainstem.v1.Service/Method\" or \"/brainstem.v1.Service/*\")"
                        ),
                    );
                }
            }
        }
        for domain in &self.guardrails.allowed_domains {
            if let Err(message) = validate_domain_pattern(domain) {
                push(
                    &mut issues,
                    "guardrails.allowed_domains",
                    format!("{domain:?}: {message}"),
                );
            }
        }
        for (key, words) in [
            (
                "guardrails.dangerous_fields",
                &self.guardrails.dangerous_fields,
            ),
            ("guardrails.csrf_fields", &self.guardrails.csrf_fields),
        ] {
            if words.iter().any(|w| w.is_empty() || w.len() > 64) {
                push(
                    &mut issues,
                    key,
                    "entries are 1 to 64 characters".to_owned(),
                );
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                origin: origin.to_owned(),
                issues,
            })
        }
    }

    /// Keys whose change a reload cannot apply. Empty when `new` only differs in reloadable settings.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.dev_mode != new.dev_mode {
            changed.push("dev_mode");
        }
        if self.state_dir != new.state_dir {
            changed.push("state_dir");
        }
        if self.server != new.server {
            changed.push("server");
        }
        if self.metrics != new.metrics {
            changed.push("metrics");
        }
        if self.store != new.store {
            changed.push("store");
        }
        if self.log.format != new.log.format {
            changed.push("log.format");
        }
        if self.policy.watch_interval_seconds != new.policy.watch_interval_seconds {
            changed.push("policy.watch_interval_seconds");
        }
        if self.audit != new.audit {
            changed.push("audit");
        }
        if self.tokens != new.tokens {
            changed.push("tokens");
        }
        if self.keys != new.keys {
            changed.push("keys");
        }
        if self.supervisor != new.supervisor {
            changed.push("supervisor");
        }
        if self.actors != new.actors {
            changed.push("actors");
        }
        if self.episodic != new.episodic {
            changed.push("episodic");
        }
        changed
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Resolves `credential:NAME` against `$CREDENTIALS_DIRECTORY`; other values are plain paths.
pub fn resolve_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    match value.strip_prefix(CREDENTIAL_PREFIX) {
        None => Ok(PathBuf::from(value)),
        Some(name) if name.is_empty() || name.contains('/') => {
            Err(format!("{value:?}: a credential name is one file name"))
        }
        Some(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(Path::new(&dir).join(name)),
            None => Err(format!(
                "{value:?} needs $CREDENTIALS_DIRECTORY (systemd's LoadCredential=); outside systemd give a file path"
            )),
        },
    }
}

/// A capability pattern, optionally resource-scoped; the rules live in [`crate::access::authz`].
pub fn validate_capability_pattern(pattern: &str) -> Result<(), String> {
    crate::access::authz::validate_capability_pattern(pattern)
}

/// A navigation safelist entry: a lowercase host name, optionally `*.` for it and its subdomains.
pub fn validate_domain_pattern(pattern: &str) -> Result<(), String> {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err("expected a lowercase host name such as \"docs.rs\" or \"*.example.org\"".to_owned())
    }
}

/// Parses a configuration file's text. Missing keys take their defaults.
pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        ConfigError::single(origin, "", format!("not valid TOML: {}", err.message()))
    })?;
    let mut walker = Walker::default();
    let mut config = Config::default();
    let root = Section::new("", &table);

    walker.path(&root, "state_dir", &mut config.state_dir);
    walker.boolean(&root, "dev_mode", &mut config.dev_mode);

    if let Some(server) = walker.table(&root, "server") {
        let s = &mut config.server;
        walker.socket_addr(&server, "listen", &mut s.listen);
        walker.integer(
            &server,
            "max_message_bytes",
            1024..=64 * MIB,
            &mut s.max_message_bytes,
        );
        walker.integer(
            &server,
            "max_connections",
            1..=1_000_000,
            &mut s.max_connections,
        );
        walker.integer(
            &server,
            "max_concurrent_streams",
            1..=65_536,
            &mut s.max_concurrent_streams,
        );
        walker.integer(
            &server,
            "request_timeout_seconds",
            1..=3600,
            &mut s.request_timeout_seconds,
        );
        walker.integer(
            &server,
            "handshake_timeout_seconds",
            1..=300,
            &mut s.handshake_timeout_seconds,
        );
        walker.integer(
            &server,
            "shutdown_grace_seconds",
            0..=300,
            &mut s.shutdown_grace_seconds,
        );
        walker.integer(
            &server,
            "drain_timeout_seconds",
            0..=600,
            &mut s.drain_timeout_seconds,
        );
        walker.integer(
            &server,
            "stop_timeout_seconds",
            0..=600,
            &mut s.stop_timeout_seconds,
        );
        walker.finish(server);
    }
    if let Some(metrics) = walker.table(&root, "metrics") {
        walker.boolean(&metrics, "enabled", &mut config.metrics.enabled);
        walker.socket_addr(&metrics, "listen", &mut config.metrics.listen);
        walker.finish(metrics);
    }
    if let Some(tls) = walker.table(&root, "tls") {
        walker.string(&tls, "ca_file", &mut config.tls.ca_file);
        walker.string(&tls, "cert_file", &mut config.tls.cert_file);
        walker.string(&tls, "key_file", &mut config.tls.key_file);
        walker.finish(tls);
    }
    if let Some(store) = walker.table(&root, "store") {
        walker.choice(
            &store,
            "flush",
            &[
                ("always", FlushPolicy::Always),
                ("interval", FlushPolicy::Interval),
            ],
            &mut config.store.flush,
        );
        walker.integer(
            &store,
            "flush_interval_ms",
            1..=60_000,
            &mut config.store.flush_interval_ms,
        );
        walker.integer(
            &store,
            "cache_capacity_bytes",
            MIB..=64 * 1024 * MIB,
            &mut config.store.cache_capacity_bytes,
        );
        walker.finish(store);
    }
    if let Some(log) = walker.table(&root, "log") {
        walker.string(&log, "level", &mut config.log.level);
        walker.choice(
            &log,
            "format",
            &[("human", LogFormat::Human), ("json", LogFormat::Json)],
            &mut config.log.format,
        );
        walker.finish(log);
    }
    if let Some(tokens) = walker.table(&root, "tokens") {
        let t = &mut config.tokens;
        walker.integer(
            &tokens,
            "max_ttl_seconds",
            1..=366 * 24 * 3600,
            &mut t.max_ttl_seconds,
        );
        walker.integer(
            &tokens,
            "rotate_after_seconds",
            0..=366 * 24 * 3600,
            &mut t.rotate_after_seconds,
        );
        walker.integer(
            &tokens,
            "retire_after_seconds",
            1..=2 * 366 * 24 * 3600,
            &mut t.retire_after_seconds,
        );
        walker.finish(tokens);
    }
    if let Some(keys) = walker.table(&root, "keys") {
        let mut file = String::new();
        walker.string(&keys, "master_key_file", &mut file);
        if keys.table.contains_key("master_key_file") {
            config.keys.master_key_file = Some(file);
        }
        walker.finish(keys);
    }
    parse_supervision(&mut walker, &root, &mut config);
    if let Some(roles) = walker.table(&root, "roles") {
        config.roles.clear();
        for name in roles.table.keys() {
            let mut caps = Vec::new();
            walker.string_list(&roles, name, &mut caps);
            config.roles.insert(name.clone(), caps);
        }
        walker.finish(roles);
    }
    if let Some(items) = walker.array_of_tables(&root, "grants") {
        for (i, item) in items.iter().enumerate() {
            let key = format!("grants[{i}]");
            let grant_table = Section::new(&key, item);
            let mut grant = Grant {
                principal: String::new(),
                roles: Vec::new(),
                capabilities: Vec::new(),
            };
            if !grant_table.table.contains_key("principal") {
                walker.issue(&grant_table.key("principal"), "is required");
            }
            walker.string(&grant_table, "principal", &mut grant.principal);
            walker.string_list(&grant_table, "roles", &mut grant.roles);
            walker.string_list(&grant_table, "capabilities", &mut grant.capabilities);
            walker.finish(grant_table);
            config.grants.push(grant);
        }
    }
    if let Some(policy) = walker.table(&root, "policy") {
        let p = &mut config.policy;
        walker.string(&policy, "dir", &mut p.dir);
        walker.integer(
            &policy,
            "watch_interval_seconds",
            0..=3600,
            &mut p.watch_interval_seconds,
        );
        walker.string(
            &policy,
            "signing_public_key_file",
            &mut p.signing_public_key_file,
        );
        walker.integer(&policy, "max_batch", 1..=10_000, &mut p.max_batch);
        walker.finish(policy);
    }
    if let Some(audit) = walker.table(&root, "audit") {
        let a = &mut config.audit;
        walker.integer(
            &audit,
            "max_records",
            1000..=1_000_000_000,
            &mut a.max_records,
        );
        walker.integer(
            &audit,
            "max_age_seconds",
            60..=10 * 365 * 86_400,
            &mut a.max_age_seconds,
        );
        walker.integer(
            &audit,
            "queue_capacity",
            16..=1_048_576,
            &mut a.queue_capacity,
        );
        walker.replace_list(&audit, "fail_closed_actions", &mut a.fail_closed_actions);
        walker.finish(audit);
    }
    if let Some(items) = walker.array_of_tables(&root, "rate_limits") {
        config.rate_limits.clear();
        for (i, item) in items.iter().enumerate() {
            let key = format!("rate_limits[{i}]");
            let table = Section::new(&key, item);
            let mut limit = RateLimit {
                methods: Vec::new(),
                per_minute: 60,
                burst: 0,
            };
            for required in ["methods", "per_minute"] {
                if !table.table.contains_key(required) {
                    walker.issue(&table.key(required), "is required");
                }
            }
            walker.string_list(&table, "methods", &mut limit.methods);
            walker.integer(&table, "per_minute", 1..=6_000_000, &mut limit.per_minute);
            walker.integer(&table, "burst", 1..=6_000_000, &mut limit.burst);
            if limit.burst == 0 {
                limit.burst = limit.per_minute;
            }
            walker.finish(table);
            config.rate_limits.push(limit);
        }
    }
    if let Some(guardrails) = walker.table(&root, "guardrails") {
        let g = &mut config.guardrails;
        walker.replace_list(&guardrails, "allowed_domains", &mut g.allowed_domains);
        walker.integer(
            &guardrails,
            "clicks_per_minute",
            1..=60_000,
            &mut g.clicks_per_minute,
        );
        walker.replace_list(&guardrails, "dangerous_fields", &mut g.dangerous_fields);
        walker.replace_list(&guardrails, "csrf_fields", &mut g.csrf_fields);
        walker.finish(guardrails);
    }
    walker.finish(root);

    if walker.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            origin: origin.to_owned(),
            issues: walker.issues,
        })
    }
}

/// `[supervisor]`, `[actors.<name>]` and `[episodic]`.
fn parse_supervision(walker: &mut Walker, root: &Section<'_>, config: &mut Config) {
    if let Some(section) = walker.table(root, "supervisor") {
        let s = &mut config.supervisor;
        walker.choice(
            &section,
            "strategy",
            &[
                ("one_for_one", Strategy::OneForOne),
                ("rest_for_one", Strategy::RestForOne),
            ],
            &mut s.strategy,
        );
        walker.integer(&section, "max_restarts", 0..=10_000, &mut s.max_restarts);
        walker.integer(
            &section,
            "restart_window_seconds",
            1..=86_400,
            &mut s.restart_window_seconds,
        );
        walker.integer(
            &section,
            "backoff_initial_ms",
            1..=600_000,
            &mut s.backoff_initial_ms,
        );
        walker.integer(
            &section,
            "backoff_max_ms",
            1..=3_600_000,
            &mut s.backoff_max_ms,
        );
        walker.integer(
            &section,
            "backoff_jitter_percent",
            0..=100,
            &mut s.backoff_jitter_percent,
        );
        walker.integer(
            &section,
            "hung_after_seconds",
            1..=86_400,
            &mut s.hung_after_seconds,
        );
        walker.integer(&section, "hung_checks", 1..=100, &mut s.hung_checks);
        walker.boolean(
            &section,
            "exit_on_critical_failure",
            &mut s.exit_on_critical_failure,
        );
        walker.integer(
            &section,
            "start_timeout_seconds",
            1..=3600,
            &mut s.start_timeout_seconds,
        );
        walker.finish(section);
    }
    if let Some(actors) = walker.table(root, "actors") {
        for name in actors.table.keys() {
            if !KNOWN_ACTORS.contains(&name.as_str()) {
                // Consumed here so that `finish` does not report it a second time.
                actors.take(name);
                walker.issue(
                    &actors.key(name),
                    format!("unknown actor; known: {}", KNOWN_ACTORS.join(", ")),
                );
                continue;
            }
            let Some(section) = walker.table(&actors, name) else {
                continue;
            };
            let a = config.actors.entry(name.clone()).or_default();
            walker.choice(
                &section,
                "restart",
                &[
                    ("permanent", RestartType::Permanent),
                    ("transient", RestartType::Transient),
                    ("temporary", RestartType::Temporary),
                ],
                &mut a.restart,
            );
            walker.boolean(&section, "critical", &mut a.critical);
            walker.integer(
                &section,
                "mailbox_capacity",
                1..=1_000_000,
                &mut a.mailbox_capacity,
            );
            walker.choice(
                &section,
                "mailbox_overflow",
                &[
                    ("wait", OverflowPolicy::Wait),
                    ("drop_oldest", OverflowPolicy::DropOldest),
                    ("drop_newest", OverflowPolicy::DropNewest),
                    ("reject", OverflowPolicy::Reject),
                ],
                &mut a.mailbox_overflow,
            );
            walker.integer(
                &section,
                "mailbox_wait_ms",
                0..=600_000,
                &mut a.mailbox_wait_ms,
            );
            walker.integer(
                &section,
                "stop_deadline_ms",
                0..=600_000,
                &mut a.stop_deadline_ms,
            );
            walker.finish(section);
        }
        walker.finish(actors);
    }
    if let Some(section) = walker.table(root, "episodic") {
        let e = &mut config.episodic;
        walker.boolean(&section, "enabled", &mut e.enabled);
        walker.integer(&section, "capacity", 1..=10_000_000, &mut e.capacity);
        walker.integer(
            &section,
            "embedding_dimension",
            1..=8192,
            &mut e.embedding_dimension,
        );
        walker.integer(
            &section,
            "half_life_seconds",
            0..=10 * 365 * 86_400,
            &mut e.half_life_seconds,
        );
        walker.integer(
            &section,
            "max_text_bytes",
            1..=1024 * 1024,
            &mut e.max_text_bytes,
        );
        walker.integer(&section, "max_k", 1..=10_000, &mut e.max_k);
        walker.integer(&section, "max_batch", 1..=10_000, &mut e.max_batch);
        walker.integer(
            &section,
            "query_cache_entries",
            0..=100_000,
            &mut e.query_cache_entries,
        );
        walker.integer(
            &section,
            "query_cache_ttl_ms",
            0..=3_600_000,
            &mut e.query_cache_ttl_ms,
        );
        walker.finish(section);
    }
}

/// A table being read, remembering which keys were consumed so the rest can be reported as unknown.
struct Section<'a> {
    prefix: String,
    table: &'a toml::Table,
    seen: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Section<'a> {
    fn new(prefix: &str, table: &'a toml::Table) -> Self {
        Section {
            prefix: prefix.to_owned(),
            table,
            seen: Default::default(),
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn take(&self, name: &str) -> Option<&'a toml::Value> {
        self.seen.borrow_mut().insert(name.to_owned());
        self.table.get(name)
    }
}

#[derive(Default)]
struct Walker {
    issues: Vec<ConfigIssue>,
}

impl Walker {
    fn issue(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn type_issue(
        &mut self,
        section: &Section<'_>,
        name: &str,
        expected: &str,
        found: &toml::Value,
    ) {
        self.issue(
            &section.key(name),
            format!("expected {expected}, found {}", found.type_str()),
        );
    }

    fn finish(&mut self, section: Section<'_>) {
        let seen = section.seen.borrow();
        for key in section.table.keys() {
            if !seen.contains(key) {
                self.issue(&section.key(key), "unknown key");
            }
        }
    }

    fn table<'a>(&mut self, section: &Section<'a>, name: &str) -> Option<Section<'a>> {
        match section.take(name)? {
            toml::Value::Table(table) => Some(Section::new(&section.key(name), table)),
            other => {
                self.type_issue(section, name, "a table", other);
                None
            }
        }
    }

    fn array_of_tables<'a>(
        &mut self,
        section: &Section<'a>,
        name: &str,
    ) -> Option<Vec<&'a toml::Table>> {
        let toml::Value::Array(items) = section.take(name)? else {
            let found = section.table.get(name)?;
            self.type_issue(section, name, "an array of tables ([[grants]])", found);
            return None;
        };
        let mut tables = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                toml::Value::Table(table) => tables.push(table),
                other => self.issue(
                    &format!("{}[{i}]", section.key(name)),
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        Some(tables)
    }

    fn string(&mut self, section: &Section<'_>, name: &str, out: &mut String) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) => *out = s.clone(),
            Some(other) => self.type_issue(section, name, "a string", other),
        }
    }

    fn path(&mut self, section: &Section<'_>, name: &str, out: &mut PathBuf) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) if !s.is_empty() => *out = PathBuf::from(s),
            Some(toml::Value::String(_)) => self.issue(&section.key(name), "must not be empty"),
            Some(other) => self.type_issue(section, name, "a path string", other),
        }
    }

    fn boolean(&mut self, section: &Section<'_>, name: &str, out: &mut bool) {
        match section.take(name) {
            None => {}
            Some(toml::Value::Boolean(b)) => *out = *b,
            Some(other) => self.type_issue(section, name, "true or false", other),
        }
    }

    fn integer(
        &mut self,
        section: &Section<'_>,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        out: &mut u64,
    ) {
        match section.take(name) {
            None => {}
            Some(toml::Value::Integer(i)) => match u64::try_from(*i) {
                Ok(v) if range.contains(&v) => *out = v,
                _ => self.issue(
                    &section.key(name),
                    format!("{i} is out of range {}..={}", range.start(), range.end()),
                ),
            },
            Some(other) => self.type_issue(section, name, "an integer", other),
        }
    }

    fn socket_addr(&mut self, section: &Section<'_>, name: &str, out: &mut SocketAddr) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) => match s.parse() {
                Ok(addr) => *out = addr,
                Err(_) => self.issue(
                    &section.key(name),
                    format!("{s:?} is not an IP:port address such as \"127.0.0.1:50051\""),
                ),
            },
            Some(other) => self.type_issue(section, name, "an \"IP:port\" string", other),
        }
    }

    fn choice<T: Copy>(
        &mut self,
        section: &Section<'_>,
        name: &str,
        choices: &[(&str, T)],
        out: &mut T,
    ) {
        match section.take(name) {
            None => {}
            Some(toml::Value::String(s)) => match choices.iter().find(|(n, _)| n == s) {
                Some((_, v)) => *out = *v,
                None => {
                    let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
                    self.issue(
                        &section.key(name),
                        format!("{s:?} is not one of {}", names.join(", ")),
                    )
                }
            },
            Some(other) => self.type_issue(section, name, "a string", other),
        }
    }

    /// A list whose default is replaced, not extended, when the file gives it.
    fn replace_list(&mut self, section: &Section<'_>, name: &str, out: &mut Vec<String>) {
        if section.table.contains_key(name) {
            out.clear();
        }
        self.string_list(section, name, out);
    }

    fn string_list(&mut self, section: &Section<'_>, name: &str, out: &mut Vec<String>) {
        match section.take(name) {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => self.issue(
                            &format!("{}[{i}]", section.key(name)),
                            format!("expected a string, found {}", other.type_str()),
                        ),
                    }
                }
            }
            Some(other) => self.type_issue(section, name, "an array of strings", other),
        }
    }
}

/// The default configuration as a commented TOML file; `config/brainstemd.toml` is this text (a test
/// keeps them equal) and `brainstemd print-default-config` prints it.
pub fn default_config_toml() -> String {
    let d = Config::default();
    let s = &d.server;
    let episodic_actor = d.actors.get("episodic").cloned().unwrap_or_default();
    format!(
        r#"# brainstemd configuration. Every key is optional; the values shown are the defaults.
# Reloaded on SIGHUP: log.level, [tls] files, [roles], [[grants]], [policy] (except
# watch_interval_seconds), [[rate_limits]], [guardrails]. Everything else needs a restart,
# and a reload that changes it is refused (the running configuration keeps serving).
# Paths may name a systemd credential as "credential:NAME" ($CREDENTIALS_DIRECTORY/NAME).

# Where the sled database (and, in dev mode, the dev PKI) lives.
state_dir = "{state_dir}"

# Dev mode creates its own CA, server and admin certificates under <state_dir>/pki on first start
# and ignores [tls]. Never use it in production.
dev_mode = false

[server]
# gRPC over mutual TLS.
listen = "{listen}"
max_message_bytes = {max_message_bytes}
max_connections = {max_connections}
# HTTP/2 streams (concurrent calls) per connection.
max_concurrent_streams = {max_concurrent_streams}
# Deadline for calls that carry none; a shorter grpc-timeout from the caller wins.
request_timeout_seconds = {request_timeout_seconds}
handshake_timeout_seconds = {handshake_timeout_seconds}
# On SIGTERM health turns NOT_SERVING at once; connections are still accepted for
# shutdown_grace_seconds (so health checkers can move traffic away), then in-flight calls get
# drain_timeout_seconds to finish, then background work gets stop_timeout_seconds.
shutdown_grace_seconds = {shutdown_grace_seconds}
drain_timeout_seconds = {drain_timeout_seconds}
stop_timeout_seconds = {stop_timeout_seconds}

[metrics]
# Prometheus text format on http://<listen>/metrics, plus /healthz and /readyz. Loopback only.
enabled = {metrics_enabled}
listen = "{metrics_listen}"

[tls]
# PEM files: the CA that signs client certificates, and the server's certificate chain and key.
# The key file must not be readable by group or others.
ca_file = "{ca_file}"
cert_file = "{cert_file}"
key_file = "{key_file}"

[store]
# "always": every acknowledged write is on disk before the reply.
# "interval": flushed every flush_interval_ms; a crash may lose that window.
flush = "always"
flush_interval_ms = {flush_interval_ms}
cache_capacity_bytes = {cache_capacity_bytes}

[log]
# An EnvFilter directive, e.g. "info,brainstemd::grpc=debug". RUST_LOG wins when set.
level = "{log_level}"
# "human" or "json".
format = "human"

[tokens]
# Capability tokens (docs/TOKENS.md). Issue refuses a longer ttl_seconds.
max_ttl_seconds = {max_ttl_seconds}
# A new HMAC signing key after this long (0: only on `brainstemctl tokens rotate-key`).
rotate_after_seconds = {rotate_after_seconds}
# A replaced key keeps verifying this long, then is retired. At least max_ttl_seconds.
retire_after_seconds = {retire_after_seconds}

[keys]
# The 32-byte master key that encrypts signing keys at rest (AES-256-GCM). Default: the systemd
# credential "master.key"; in dev mode <state_dir>/master.key (created on first start).
# master_key_file = "credential:master.key"

[supervisor]
# Subsystem actors (the episodic buffer, …) run under one supervisor.
# "one_for_one": only the actor that exited is restarted. "rest_for_one": the actors declared after it
# (which depend on it) are restarted with it, in declared order.
strategy = "one_for_one"
# Restart intensity: more than max_restarts restarts of one actor within restart_window_seconds
# escalates: the actor is marked failed and its gRPC health service turns NOT_SERVING. A failed critical
# actor stops the systemd watchdog ping and, with exit_on_critical_failure, exits the daemon with 70.
max_restarts = {max_restarts}
restart_window_seconds = {restart_window_seconds}
exit_on_critical_failure = {exit_on_critical_failure}
# Exponential backoff between restarts: initial, doubled per consecutive failure, capped at max, each
# shortened by a random 0..=jitter percent.
backoff_initial_ms = {backoff_initial_ms}
backoff_max_ms = {backoff_max_ms}
backoff_jitter_percent = {backoff_jitter_percent}
# Progress watchdog: an actor that is busy and makes no progress in hung_checks consecutive checks
# (one every hung_after_seconds / hung_checks) is frozen: cancelled, aborted after its stop deadline,
# and restarted through the policy above. Sections marked as known-blocking are not counted.
hung_after_seconds = {hung_after_seconds}
hung_checks = {hung_checks}
# Actors start in declared order; each gets this long to report ready before the next one starts.
start_timeout_seconds = {start_timeout_seconds}

# One table per actor. restart: "permanent" (always restarted), "transient" (only after an error, panic
# or freeze), "temporary" (never). mailbox_overflow: "wait" (up to mailbox_wait_ms, then refused),
# "drop_oldest", "drop_newest" (drops are counted) or "reject" (RESOURCE_EXHAUSTED with a retry hint).
# stop_deadline_ms: how long the actor may take to return after cancellation before it is aborted.
[actors.episodic]
restart = "permanent"
critical = {ep_critical}
mailbox_capacity = {ep_mailbox_capacity}
mailbox_overflow = "wait"
mailbox_wait_ms = {ep_mailbox_wait_ms}
stop_deadline_ms = {ep_stop_deadline_ms}

[episodic]
# The agent's short-term memory: a ring of the last `capacity` episodes, persisted in the store.
enabled = {ep_enabled}
capacity = {ep_capacity}
embedding_dimension = {ep_dimension}
# Query score = cosine(query, episode) * 2^(-age / half_life_seconds) * importance
# (age = now - episode timestamp, never negative; half_life_seconds = 0 disables decay).
half_life_seconds = {ep_half_life}
max_text_bytes = {ep_max_text}
# Largest k for Query and n for Recent; largest StoreBatch.
max_k = {ep_max_k}
max_batch = {ep_max_batch}
# Repeated queries are answered from a cache that every write invalidates; an answer is reused for at
# most query_cache_ttl_ms (scores decay with time). query_cache_entries = 0 disables it.
query_cache_entries = {ep_cache_entries}
query_cache_ttl_ms = {ep_cache_ttl}

# Role name -> capability patterns ("*", "vision.*", "secrets.read").
[roles]
admin = ["*"]

# Default deny: a principal holds nothing until a grant names it, by SAN URI or CN.
# [[grants]]
# principal = "spiffe://example.org/agent/web"
# roles = ["admin"]
# capabilities = ["admin.status"]

[policy]
# Cedar policies (*.cedar) and their schema (schema.cedarschema). Empty: the built-in defaults,
# which are the files shipped in config/policies/. Policies are validated against the schema
# before they are used; an invalid set is refused and the previous set keeps deciding.
dir = "{policy_dir}"
# The directory is checked for changes this often (0: only SIGHUP reloads).
watch_interval_seconds = {policy_watch}
# Hex Ed25519 public key. A policy file NAME.cedar with a valid NAME.cedar.sig is "signed"; only
# signed policies can allow file writes (fs.write). Empty: signed policies are not accepted.
signing_public_key_file = "{policy_key}"
# Most decisions one BatchCheck may ask for.
max_batch = {policy_max_batch}

[audit]
# Every policy decision, guardrail decision, refused call and token change is appended to the
# audit log in the store; the oldest records are trimmed by count and by age.
max_records = {audit_max_records}
max_age_seconds = {audit_max_age}
# Decisions are written in the background. When the queue is full or the store fails, decisions
# on these actions are denied (fail closed); others are answered and counted as unaudited.
queue_capacity = {audit_queue}
fail_closed_actions = {audit_fail_closed}

# Token buckets per principal and method; a call over the limit answers RESOURCE_EXHAUSTED with
# RetryInfo. Methods are full paths or "/brainstem.v1.Service/*". burst defaults to per_minute.
# Giving any [[rate_limits]] replaces this default list.
[[rate_limits]]
methods = {rate_methods}
per_minute = {rate_per_minute}
burst = {rate_burst}

[guardrails]
# Web automation: navigation only to these domains ("*.example.org" covers subdomains).
allowed_domains = {guard_domains}
# Clicks per domain and principal per minute.
clicks_per_minute = {guard_clicks}
# A form submission whose field names or values contain one of these words is refused.
dangerous_fields = {guard_dangerous}
# A form submission must carry one of these fields with a value.
csrf_fields = {guard_csrf}
"#,
        state_dir = d.state_dir.display(),
        listen = s.listen,
        max_message_bytes = s.max_message_bytes,
        max_connections = s.max_connections,
        max_concurrent_streams = s.max_concurrent_streams,
        request_timeout_seconds = s.request_timeout_seconds,
        handshake_timeout_seconds = s.handshake_timeout_seconds,
        shutdown_grace_seconds = s.shutdown_grace_seconds,
        drain_timeout_seconds = s.drain_timeout_seconds,
        stop_timeout_seconds = s.stop_timeout_seconds,
        metrics_enabled = d.metrics.enabled,
        metrics_listen = d.metrics.listen,
        ca_file = d.tls.ca_file,
        cert_file = d.tls.cert_file,
        key_file = d.tls.key_file,
        flush_interval_ms = d.store.flush_interval_ms,
        cache_capacity_bytes = d.store.cache_capacity_bytes,
        log_level = d.log.level,
        policy_dir = d.policy.dir,
        policy_watch = d.policy.watch_interval_seconds,
        policy_key = d.policy.signing_public_key_file,
        policy_max_batch = d.policy.max_batch,
        audit_max_records = d.audit.max_records,
        audit_max_age = d.audit.max_age_seconds,
        audit_queue = d.audit.queue_capacity,
        audit_fail_closed = toml_list(&d.audit.fail_closed_actions),
        rate_methods = toml_list(&d.rate_limits[0].methods),
        rate_per_minute = d.rate_limits[0].per_minute,
        rate_burst = d.rate_limits[0].burst,
        guard_domains = toml_list(&d.guardrails.allowed_domains),
        guard_clicks = d.guardrails.clicks_per_minute,
        guard_dangerous = toml_list(&d.guardrails.dangerous_fields),
        guard_csrf = toml_list(&d.guardrails.csrf_fields),
        max_ttl_seconds = d.tokens.max_ttl_seconds,
        rotate_after_seconds = d.tokens.rotate_after_seconds,
        retire_after_seconds = d.tokens.retire_after_seconds,
        max_restarts = d.supervisor.max_restarts,
        restart_window_seconds = d.supervisor.restart_window_seconds,
        exit_on_critical_failure = d.supervisor.exit_on_critical_failure,
        backoff_initial_ms = d.supervisor.backoff_initial_ms,
        backoff_max_ms = d.supervisor.backoff_max_ms,
        backoff_jitter_percent = d.supervisor.backoff_jitter_percent,
        hung_after_seconds = d.supervisor.hung_after_seconds,
        hung_checks = d.supervisor.hung_checks,
        start_timeout_seconds = d.supervisor.start_timeout_seconds,
        ep_critical = episodic_actor.critical,
        ep_mailbox_capacity = episodic_actor.mailbox_capacity,
        ep_mailbox_wait_ms = episodic_actor.mailbox_wait_ms,
        ep_stop_deadline_ms = episodic_actor.stop_deadline_ms,
        ep_enabled = d.episodic.enabled,
        ep_capacity = d.episodic.capacity,
        ep_dimension = d.episodic.embedding_dimension,
        ep_half_life = d.episodic.half_life_seconds,
        ep_max_text = d.episodic.max_text_bytes,
        ep_max_k = d.episodic.max_k,
        ep_max_batch = d.episodic.max_batch,
        ep_cache_entries = d.episodic.query_cache_entries,
        ep_cache_ttl = d.episodic.query_cache_ttl_ms,
    )
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_default_parses_to_the_default() {
        let parsed = parse("default", &default_config_toml()).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn shipped_config_file_equals_printed_default() {
        let shipped = include_str!("../../../config/brainstemd.toml");
        assert_eq!(
            shipped,
            default_config_toml(),
            "config/brainstemd.toml drifted: regenerate it with `brainstemd print-default-config`"
        );
    }

    #[test]
    fn access_sections_are_validated() {
        let text = r#"
            [policy]
            max_batch = 0
            [audit]
            fail_closed_actions = ["Secrets"]
            [[rate_limits]]
            methods = ["/brainstem.v1.Nope/Call", "/brainstem.v1.Policy/*"]
            per_minute = 5
            [[rate_limits]]
            per_minute = 5
            [guardrails]
            allowed_domains = ["docs.rs", "*.Example.org", "http://x"]
        "#;
        let err = parse("t", text).and_then(|mut c| c.validate("t").map(|()| c));
        let keys: Vec<String> = match err {
            Ok(_) => panic!("should be refused"),
            Err(err) => err.issues.iter().map(|i| i.key.clone()).collect(),
        };
        assert!(keys.contains(&"policy.max_batch".to_owned()), "{keys:?}");
        assert!(
            keys.contains(&"rate_limits[1].methods".to_owned()),
            "{keys:?}"
        );

        let text = r#"
            dev_mode = true
            state_dir = "/tmp/x"
            [audit]
            fail_closed_actions = ["Secrets"]
            [[rate_limits]]
            methods = ["/brainstem.v1.Nope/Call", "/brainstem.v1.Policy/*"]
            per_minute = 5
            [guardrails]
            allowed_domains = ["docs.rs", "*.Example.org", "http://x"]
        "#;
        let mut config = parse("t", text).unwrap();
        assert_eq!(
            config.rate_limits[0].burst, 5,
            "burst defaults to per_minute"
        );
        assert_eq!(
            config.guardrails.allowed_domains.len(),
            3,
            "replaces the default list"
        );
        let issues = config.validate("t").unwrap_err().issues;
        let messages: Vec<String> = issues
            .iter()
            .map(|i| format!("{}: {}", i.key, i.message))
            .collect();
        assert_eq!(issues.len(), 4, "{messages:?}");
        assert!(
            messages[0].starts_with("audit.fail_closed_actions"),
            "{messages:?}"
        );
        assert!(messages[1].contains("Nope"), "{messages:?}");
        assert!(messages[2].contains("Example.org"), "{messages:?}");
        assert!(messages[3].contains("http://x"), "{messages:?}");
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let text = r#"
            state_dir = 7
            bogus = true
            [server]
            listen = "not an address"
            max_message_bytes = 1
            max_concurrent_streams = "many"
            [log]
            format = "xml"
            [metrics]
            listen = "0.0.0.0:9091"
        "#;
        let err = parse("t", text).expect_err("bad file");
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "state_dir",
                "server.listen",
                "server.max_message_bytes",
                "server.max_concurrent_streams",
                "log.format",
                "bogus"
            ]
        );
        // The metrics address parses; validation (after parsing) refuses it.
        let mut parsed = parse("t", "[metrics]\nlisten = \"0.0.0.0:9091\"\n").expect("parses");
        parsed.dev_mode = true;
        let err = parsed.validate("t").expect_err("non-loopback metrics");
        assert_eq!(err.issues[0].key, "metrics.listen");
    }

    #[test]
    fn unknown_keys_in_sections_and_grants_are_named() {
        let text = r#"
            [store]
            flush = "sometimes"
            flsh_interval_ms = 3
            [[grants]]
            roles = ["admin"]
            capabilities = ["Secrets.Read", 5]
            extra = 1
        "#;
        let err = parse("t", text).expect_err("bad file");
        let rendered: Vec<String> = err.issues.iter().map(ToString::to_string).collect();
        assert!(rendered.iter().any(|s| s.starts_with("store.flush: \"sometimes\" is not one of always, interval")), "{rendered:?}");
        assert!(
            rendered.contains(&"store.flsh_interval_ms: unknown key".to_owned()),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(&"grants[0].principal: is required".to_owned()),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(
                &"grants[0].capabilities[1]: expected a string, found integer".to_owned()
            ),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(&"grants[0].extra: unknown key".to_owned()),
            "{rendered:?}"
        );
    }

    #[test]
    fn validation_checks_grants_and_capabilities() {
        let text = r#"
            dev_mode = true
            [roles]
            ops = ["admin.*", "BAD cap"]
            [[grants]]
            principal = "spiffe://x/a"
            roles = ["nope"]
            [[grants]]
            principal = "spiffe://x/a"
        "#;
        let mut config = parse("t", text).expect("parses");
        let err = config.validate("t").expect_err("invalid");
        let rendered: Vec<String> = err.issues.iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), 3, "{rendered:?}");
        assert!(rendered[0].starts_with("roles.ops: \"BAD cap\""));
        assert_eq!(rendered[1], "grants[0].roles: unknown role \"nope\"");
        assert!(rendered[2].starts_with("grants[1].principal:"));
    }

    #[test]
    fn production_mode_needs_credentials_or_paths() {
        // SAFETY-free: the test only reads the variable; no test in this binary sets it.
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return;
        }
        let mut config = Config::default();
        let err = config.validate("t").expect_err("no credentials directory");
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.ca_file",
                "tls.cert_file",
                "tls.key_file",
                "keys.master_key_file"
            ]
        );
        config.keys.master_key_file = Some("/etc/brainstem/master.key".into());

        config.tls = TlsConfig {
            ca_file: "/etc/brainstem/ca.pem".into(),
            cert_file: "/etc/brainstem/server.pem".into(),
            key_file: "credential:a/b".into(),
        };
        let err = config.validate("t").expect_err("bad credential name");
        assert_eq!(err.issues.len(), 1);
        assert_eq!(err.issues[0].key, "tls.key_file");
    }

    #[test]
    fn overrides_win_and_dev_grant_is_added() {
        let source = ConfigSource {
            file: None,
            overrides: Overrides {
                dev_mode: true,
                state_dir: Some("/tmp/x".into()),
                listen: Some("127.0.0.1:0".parse().unwrap()),
                metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
                log_format: Some(LogFormat::Json),
                log_level: None,
            },
        };
        let config = source.load().expect("valid");
        assert_eq!(config.server.listen.port(), 0);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.tls_paths().unwrap().key,
            PathBuf::from("/tmp/x/pki/server.key")
        );
        let grants = config.effective_grants();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].principal, DEV_ADMIN_PRINCIPAL);
    }

    #[test]
    fn restart_only_changes_are_detected() {
        let old = Config::default();
        let mut new = old.clone();
        new.log.level = "debug".into();
        new.grants.push(Grant {
            principal: "p".into(),
            roles: vec![],
            capabilities: vec!["admin.status".into()],
        });
        assert!(old.restart_only_changes(&new).is_empty());
        new.server.max_connections = 3;
        new.store.flush = FlushPolicy::Interval;
        assert_eq!(old.restart_only_changes(&new), ["server", "store"]);
    }

    #[test]
    fn token_settings_and_master_key() {
        let mut config = parse(
            "t",
            "dev_mode = true\nstate_dir = \"/s\"\n[tokens]\nmax_ttl_seconds = 600\nretire_after_seconds = 60\n",
        )
        .expect("parses");
        let err = config.validate("t").expect_err("retire before max ttl");
        assert_eq!(err.issues[0].key, "tokens.retire_after_seconds");
        assert_eq!(
            config.master_key_path().unwrap(),
            PathBuf::from("/s/master.key")
        );
        let config = parse("t", "[keys]\nmaster_key_file = \"/k\"\n").expect("parses");
        assert_eq!(config.master_key_path().unwrap(), PathBuf::from("/k"));
        let err = parse("t", "[tokens]\nmax_ttl_seconds = 0\nrotate_every = 1\n").expect_err("bad");
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["tokens.max_ttl_seconds", "tokens.rotate_every"]);
    }

    #[test]
    fn supervision_sections_parse_and_name_bad_keys() {
        let text = r#"
            [supervisor]
            strategy = "rest_for_one"
            hung_after_seconds = 2
            backoff_initial_ms = 500
            backoff_max_ms = 100
            [actors.episodic]
            mailbox_overflow = "reject"
            mailbox_capacity = 0
            [actors.vision]
            restart = "permanent"
            [episodic]
            embedding_dimension = 8
            capacity = "lots"
        "#;
        let err = parse("t", text).expect_err("bad file");
        let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "actors.episodic.mailbox_capacity",
                "actors.vision",
                "episodic.capacity"
            ]
        );
        let mut config = parse(
            "t",
            "dev_mode = true\n[supervisor]\nstrategy = \"rest_for_one\"\nbackoff_initial_ms = 500\nbackoff_max_ms = 100\n[actors.episodic]\nmailbox_overflow = \"drop_oldest\"\n[episodic]\nembedding_dimension = 8\n",
        )
        .expect("parses");
        assert_eq!(config.supervisor.strategy, Strategy::RestForOne);
        assert_eq!(
            config.actors["episodic"].mailbox_overflow,
            OverflowPolicy::DropOldest
        );
        assert_eq!(config.episodic.embedding_dimension, 8);
        let err = config.validate("t").expect_err("backoff order");
        assert_eq!(err.issues[0].key, "supervisor.backoff_initial_ms");
        let mut new = config.clone();
        new.episodic.capacity = 5;
        assert_eq!(config.restart_only_changes(&new), ["episodic"]);
    }

    #[test]
    fn capability_patterns() {
        for ok in ["*", "secrets.read", "vision.*", "a_b-c.d9"] {
            assert!(validate_capability_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "a..b", "Secrets", "a.*.b", "*.a", "a b"] {
            assert!(validate_capability_pattern(bad).is_err(), "{bad}");
        }
    }
}
