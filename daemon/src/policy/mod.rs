//! The policy engine: Cedar policies answer "may this principal take this action on this resource?".
//!
//! Cedar's semantics are ours: nothing is allowed unless a permit matches, and any matching forbid
//! beats every permit. Every policy carries an `@id("…")` annotation; the ids of the determining
//! policies are a decision's reasons.
//!
//! The daemon builds the entities of each request (see `config/policies/schema.cedarschema`):
//! `Agent::"<principal>"` in `Role::"<role>"` for each granted role, `Action::"<action>"` in each of
//! its dotted prefixes (`web.post` in `web`), and `Resource::"<resource>"`. The context is the
//! caller's, plus `signed_permit`, which only the daemon sets: true when a permit from a signed
//! policy file matches the request. That is how "file writes need a signed policy" is written in
//! Cedar (`forbid … fs.write … unless { context.signed_permit }`).
//!
//! A policy set is loaded whole: parsed, ids checked, signatures verified and validated against the
//! schema, then swapped in. A set that fails any step is refused and the old set keeps deciding.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use cedar_policy::{
    ActionConstraint, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, PrincipalConstraint, Request, Schema,
    ValidationMode, Validator,
};
use serde_json::{Map, Value};

use crate::error::FieldViolation;

/// The context key the daemon owns.
pub const SIGNED_PERMIT: &str = "signed_permit";
/// Longest principal, action and resource accepted.
pub const MAX_PRINCIPAL_LEN: usize = 512;
pub const MAX_ACTION_LEN: usize = 128;
pub const MAX_RESOURCE_LEN: usize = 2048;

const BUILTIN_SCHEMA: &str = include_str!("../../../config/policies/schema.cedarschema");
const BUILTIN_POLICIES: &str = include_str!("../../../config/policies/default.cedar");

/// The shipped policies' text (`config/policies/default.cedar`).
pub fn builtin_policies() -> &'static str {
    BUILTIN_POLICIES
}

/// The shipped schema's text (`config/policies/schema.cedarschema`).
pub fn builtin_schema() -> &'static str {
    BUILTIN_SCHEMA
}
const SCHEMA_FILE: &str = "schema.cedarschema";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy set refused: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// One policy as loaded, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    pub id: String,
    pub permit: bool,
    pub source: String,
    pub signed: bool,
    pub text: String,
}

/// The policy set cut into slices so a decision evaluates only policies that can apply to it
/// (Cedar evaluates every policy it is given; with 1,000 policies that is most of the cost).
///
/// A policy whose scope says `principal == P` goes to P's slice; otherwise one whose scope names
/// actions (`action == A`, `action in [A, B]`) goes to each named action's slice; the rest are shared.
/// A request evaluates the shared slice, its principal's slice and the slices of its action and each
/// of its prefixes; the answers combine exactly as Cedar would (any forbid denies; otherwise any
/// permit allows).
#[derive(Default)]
struct Slices {
    shared: PolicySet,
    by_principal: HashMap<EntityUid, PolicySet>,
    by_action: HashMap<EntityUid, PolicySet>,
}

impl Slices {
    fn new(all: &PolicySet) -> Result<Self, PolicyError> {
        let mut slices = Slices::default();
        let add = |set: &mut PolicySet, policy: &cedar_policy::Policy| {
            set.add(policy.clone())
                .map_err(|err| PolicyError::Invalid(vec![err.to_string()]))
        };
        for policy in all.policies() {
            if let PrincipalConstraint::Eq(principal) = policy.principal_constraint() {
                add(slices.by_principal.entry(principal).or_default(), policy)?;
                continue;
            }
            match policy.action_constraint() {
                ActionConstraint::Eq(action) => {
                    add(slices.by_action.entry(action).or_default(), policy)?
                }
                ActionConstraint::In(actions) => {
                    for action in actions {
                        add(slices.by_action.entry(action).or_default(), policy)?;
                    }
                }
                ActionConstraint::Any => add(&mut slices.shared, policy)?,
            }
        }
        Ok(slices)
    }
}

/// A validated policy set and the views of it the engine evaluates.
pub struct LoadedSet {
    /// Unique per load; cached decisions are valid only for the set that made them.
    generation: u64,
    slices: Slices,
    permits: PolicySet,
    forbids: PolicySet,
    signed_permits: PolicySet,
    pub policies: Vec<PolicyMeta>,
    /// SHA-256 over the sources, hex.
    pub digest: String,
    /// The directory, or "builtin".
    pub origin: String,
    pub loaded_unix_ms: u64,
    /// The schema's text, the default for `Validate`.
    pub schema_text: String,
    /// Every action the schema declares or a policy names: a request for anything else is marked
    /// [`UNKNOWN_ACTION`] (a typo reads differently from an ordinary deny).
    known_actions: HashSet<EntityUid>,
    /// Ids of the policies annotated `@dry_run("advisory")`: a denial they alone determine is
    /// advisory while `safety.dry_run_mode` is on.
    dry_runnable: HashSet<String>,
}

/// The annotation that marks a policy's denials as advisory in dry-run mode, and its one value.
pub const DRY_RUN_ANNOTATION: &str = "dry_run";
pub const DRY_RUN_ADVISORY: &str = "advisory";

/// Actions whose denials are never advisory, whatever the policies say: file writes and purchases.
pub const NEVER_ADVISORY: &[&str] = &["fs.write", "web.purchase", "web.checkout"];

/// The reason a decision carries when its action is declared by no schema entry and named by no
/// policy (`policy check --action web.pots`): denied, and most likely a typo.
pub const UNKNOWN_ACTION: &str = "unknown-action";

/// One source file's text.
struct Source {
    name: String,
    text: String,
    signed: bool,
}

/// Where policies come from: a directory, or the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub dir: Option<PathBuf>,
    /// Ed25519 public key for `*.cedar.sig` files.
    pub signing_key: Option<[u8; 32]>,
}

impl PolicySource {
    /// From configuration: an empty dir is the built-in set; a key file holds 64 hex digits.
    pub fn from_config(config: &crate::policy::config::PolicyConfig) -> Result<Self, String> {
        let dir = if config.dir.is_empty() {
            None
        } else {
            Some(crate::config::resolve_path(&config.dir)?)
        };
        let signing_key = if config.signing_public_key_file.is_empty() {
            None
        } else {
            let path = crate::config::resolve_path(&config.signing_public_key_file)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            let bytes = hex_decode(text.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("{}: expected 64 hex digits", path.display()))?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            Some(key)
        };
        Ok(PolicySource { dir, signing_key })
    }

    /// Reads, verifies, parses and validates the whole set. Every problem is reported.
    pub fn load(&self) -> Result<LoadedSet, PolicyError> {
        let (origin, schema_text, sources) = match &self.dir {
            None => (
                "builtin".to_owned(),
                BUILTIN_SCHEMA.to_owned(),
                vec![Source {
                    name: "builtin:default.cedar".to_owned(),
                    text: BUILTIN_POLICIES.to_owned(),
                    signed: false,
                }],
            ),
            Some(dir) => {
                let (schema, sources) = read_dir(dir, self.signing_key.as_ref())?;
                (dir.display().to_string(), schema, sources)
            }
        };
        build(origin, &schema_text, &sources)
    }

    /// A fingerprint of the directory (names, sizes, modification times) to notice changes cheaply.
    pub fn fingerprint(&self) -> Option<Vec<(String, u64, std::time::SystemTime)>> {
        let dir = self.dir.as_ref()?;
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().ok()?,
                ))
            })
            .collect();
        entries.sort();
        Some(entries)
    }
}

fn read_dir(dir: &Path, key: Option<&[u8; 32]>) -> Result<(String, Vec<Source>), PolicyError> {
    let mut errors = Vec::new();
    let schema = match std::fs::read_to_string(dir.join(SCHEMA_FILE)) {
        Ok(text) => text,
        Err(err) => {
            errors.push(format!("{}: {err}", dir.join(SCHEMA_FILE).display()));
            String::new()
        }
    };
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "cedar"))
            .collect(),
        Err(err) => {
            return Err(PolicyError::Invalid(vec![format!(
                "{}: {err}",
                dir.display()
            )]));
        }
    };
    names.sort();
    let mut sources = Vec::new();
    for path in names {
        let name = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => {
                errors.push(format!("{name}: {err}"));
                continue;
            }
        };
        let sig_path = PathBuf::from(format!("{name}.sig"));
        let signed = match std::fs::read_to_string(&sig_path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(err) => {
                errors.push(format!("{}: {err}", sig_path.display()));
                continue;
            }
            Ok(sig) => match verify_signature(key, &bytes, sig.trim()) {
                Ok(()) => true,
                Err(why) => {
                    errors.push(format!("{}: {why}", sig_path.display()));
                    continue;
                }
            },
        };
        match String::from_utf8(bytes) {
            Ok(text) => sources.push(Source { name, text, signed }),
            Err(_) => errors.push(format!("{name}: not UTF-8")),
        }
    }
    if sources.is_empty() && errors.is_empty() {
        errors.push(format!(
            "{}: no *.cedar files (an empty set would deny everything; refusing)",
            dir.display()
        ));
    }
    if errors.is_empty() {
        Ok((schema, sources))
    } else {
        Err(PolicyError::Invalid(errors))
    }
}

fn verify_signature(key: Option<&[u8; 32]>, message: &[u8], sig_hex: &str) -> Result<(), String> {
    let Some(key) = key else {
        return Err(
            "a signature is present but [policy] signing_public_key_file is not set".to_owned(),
        );
    };
    let sig = hex_decode(sig_hex)
        .filter(|s| s.len() == 64)
        .ok_or("expected 128 hex digits (an Ed25519 signature)")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(message, &sig)
        .map_err(|_| "the signature does not match the file and key".to_owned())
}

// Policy signing keys are shared with brainstemctl (`policy keygen` / `sign`), so they live in the
// `brainstem-keys` crate that both link.
pub use brainstem_keys::signing::{generate_signing_key, hex_decode, hex_encode, sign};

/// Parses and validates `policies` against `schema_text` as a load would, without applying them.
/// Returns the number of policies.
pub fn validate_text(policies: &str, schema_text: &str) -> Result<usize, PolicyError> {
    let set = build(
        "validate".to_owned(),
        schema_text,
        &[Source {
            name: "request".to_owned(),
            text: policies.to_owned(),
            signed: false,
        }],
    )?;
    Ok(set.policies.len())
}

fn build(origin: String, schema_text: &str, sources: &[Source]) -> Result<LoadedSet, PolicyError> {
    let mut errors = Vec::new();
    let schema = match Schema::from_cedarschema_str(schema_text) {
        Ok((schema, _warnings)) => Some(schema),
        Err(err) => {
            errors.push(format!("schema: {}", render(&err)));
            None
        }
    };
    let mut all = PolicySet::new();
    let mut policies = Vec::new();
    let mut seen = HashSet::new();
    let mut dry_runnable = HashSet::new();
    for source in sources {
        let parsed = match PolicySet::from_str(&source.text) {
            Ok(set) => set,
            Err(err) => {
                errors.push(format!("{}: {}", source.name, render(&err)));
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            errors.push(format!(
                "{}: templates are not supported; write plain policies",
                source.name
            ));
        }
        for policy in parsed.policies() {
            let Some(id) = policy.annotation("id").map(str::to_owned) else {
                errors.push(format!(
                    "{}: a policy has no @id(\"…\") annotation: {}",
                    source.name,
                    first_line(&policy.to_string())
                ));
                continue;
            };
            if id.is_empty() || !seen.insert(id.clone()) {
                errors.push(format!(
                    "{}: policy id {id:?} is empty or used twice",
                    source.name
                ));
                continue;
            }
            match policy.annotation(DRY_RUN_ANNOTATION) {
                None => {}
                Some(DRY_RUN_ADVISORY) => {
                    dry_runnable.insert(id.clone());
                }
                Some(other) => errors.push(format!(
                    "{}: {id}: @{DRY_RUN_ANNOTATION}({other:?}) is not understood; the only value is \
                     {DRY_RUN_ADVISORY:?}",
                    source.name
                )),
            }
            let renamed = policy.new_id(PolicyId::new(id.clone()));
            if let Err(err) = all.add(renamed) {
                errors.push(format!("{}: {id}: {err}", source.name));
                continue;
            }
            policies.push(PolicyMeta {
                id,
                permit: policy.effect() == Effect::Permit,
                source: source.name.clone(),
                signed: source.signed,
                text: policy.to_string(),
            });
        }
    }
    if let Some(schema) = &schema {
        let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        for err in result.validation_errors() {
            let id = err.policy_id().to_string();
            let source = policies
                .iter()
                .find(|p| p.id == id)
                .map_or("policy set", |p| p.source.as_str());
            errors.push(format!("{source}: {}", render(err)));
        }
    }
    if schema.is_none() || !errors.is_empty() {
        return Err(PolicyError::Invalid(errors));
    }
    let subset = |keep: &dyn Fn(&PolicyMeta) -> bool| -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::new();
        for meta in policies.iter().filter(|m| keep(m)) {
            if let Some(policy) = all.policy(&PolicyId::new(meta.id.clone())) {
                set.add(policy.clone())
                    .map_err(|err| PolicyError::Invalid(vec![err.to_string()]))?;
            }
        }
        Ok(set)
    };
    let permits = subset(&|m| m.permit)?;
    let forbids = subset(&|m| !m.permit)?;
    let signed_permits = subset(&|m| m.permit && m.signed)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(schema_text.as_bytes());
    for source in sources {
        digest.update(source.name.as_bytes());
        digest.update(&[0]);
        digest.update(source.text.as_bytes());
        digest.update(&[u8::from(source.signed)]);
    }
    let slices = Slices::new(&all)?;
    let mut known_actions: HashSet<EntityUid> = schema
        .as_ref()
        .map(|schema| schema.actions().cloned().collect())
        .unwrap_or_default();
    known_actions.extend(slices.by_action.keys().cloned());
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(LoadedSet {
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        slices,
        permits,
        forbids,
        signed_permits,
        policies,
        digest: hex_encode(digest.finish().as_ref()),
        origin,
        loaded_unix_ms: crate::store::unix_ms_now(),
        schema_text: schema_text.to_owned(),
        known_actions,
        dry_runnable,
    })
}

fn render(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// A question for the engine, already validated. Its strings may borrow the request's.
#[derive(Debug, Clone)]
pub struct Query<'q> {
    pub principal: Cow<'q, str>,
    /// The principal's granted roles (shared with the grant table).
    pub roles: Arc<[String]>,
    pub action: Cow<'q, str>,
    pub resource: Cow<'q, str>,
    /// The caller's context; must not contain [`SIGNED_PERMIT`].
    pub context: Map<String, Value>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the determining policies.
    pub reasons: Vec<String>,
    /// Policies that failed to evaluate (skipped).
    pub errors: Vec<String>,
    /// A denial determined only by policies marked `@dry_run("advisory")`, for an action not in
    /// [`NEVER_ADVISORY`]: dry-run mode may let it through as a would-deny.
    pub advisory: bool,
}

/// A decision and its workings.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub decision: Decision,
    pub matched_permits: Vec<String>,
    pub matched_forbids: Vec<String>,
    pub principal_entity: String,
    pub principal_parents: Vec<String>,
    pub action_entity: String,
    pub action_parents: Vec<String>,
    pub resource_entity: String,
    pub context: Map<String, Value>,
    pub digest: String,
}

/// The last refused reload.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_attempt_unix_ms: u64,
    pub last_error: Option<String>,
}

/// Decisions already made, by request. Cedar decisions are a pure function of the policy set and
/// the request (our entities carry no attributes and Cedar has no clock), so an entry is valid for
/// as long as the set that made it is in force; entries of older sets are never returned. Sharded to
/// keep lock contention low; a full shard is simply emptied.
///
/// A lookup hashes the query's parts once (foldhash, seeded per process) and neither builds a key
/// nor copies the decision: the hash picks the shard and the slot, the entry keeps the request's
/// parts to compare, and the decision is shared (`Arc`). A slot holds one request; another request
/// with the same 64-bit hash takes it over (a miss, never a wrong answer).
struct DecisionCache {
    shards: Vec<Mutex<HashMap<u64, CacheEntry, BuildHasherDefault<Prehashed>>>>,
    per_shard: usize,
    state: foldhash::fast::RandomState,
    metrics: events::CacheMetrics,
}

struct CacheEntry {
    generation: u64,
    principal: String,
    action: String,
    resource: String,
    roles: Arc<[String]>,
    /// The context as JSON; empty for an empty context.
    context: String,
    decision: Arc<Decision>,
}

/// A cache lookup's key: the query's hash, and its context as JSON (only when it has one).
struct CacheKey {
    hash: u64,
    context: String,
}

/// The hasher of maps keyed by a hash already computed: passes the `u64` through.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const CACHE_SHARDS: usize = 16;
/// Decisions remembered in all.
pub const CACHE_CAPACITY: usize = 65_536;
/// Requests longer than this (principal, action, resource, roles and context JSON) are not cached.
const MAX_CACHE_KEY: usize = 4096;

impl DecisionCache {
    fn new() -> Self {
        DecisionCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: CACHE_CAPACITY / CACHE_SHARDS,
            state: foldhash::fast::RandomState::default(),
            metrics: events::CacheMetrics::new(),
        }
    }

    fn key(&self, query: &Query<'_>) -> Option<CacheKey> {
        let context = if query.context.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&query.context).ok()?
        };
        let len = query.principal.len()
            + query.action.len()
            + query.resource.len()
            + query.roles.iter().map(|r| r.len() + 1).sum::<usize>()
            + context.len();
        if len > MAX_CACHE_KEY {
            return None;
        }
        // `str`'s Hash ends each string with a terminator and a Vec's starts with its length, so
        // the parts cannot run into each other.
        let hash = self.state.hash_one((
            &*query.principal,
            &*query.action,
            &*query.resource,
            &query.roles,
            &context,
        ));
        Some(CacheKey { hash, context })
    }

    /// Bits 32–35 pick the shard; the shard's map uses the low bits and the top seven, so every
    /// bit it looks at still varies within a shard.
    fn shard(&self, hash: u64) -> &Mutex<HashMap<u64, CacheEntry, BuildHasherDefault<Prehashed>>> {
        &self.shards[((hash >> 32) as usize) % CACHE_SHARDS]
    }

    fn get(&self, key: &CacheKey, query: &Query<'_>, generation: u64) -> Option<Arc<Decision>> {
        let shard = self
            .shard(key.hash)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let found = shard
            .get(&key.hash)
            .filter(|e| {
                e.generation == generation
                    && e.principal == *query.principal
                    && e.action == *query.action
                    && e.resource == *query.resource
                    && e.roles == query.roles
                    && e.context == key.context
            })
            .map(|e| e.decision.clone());
        drop(shard);
        if found.is_some() {
            self.metrics.hits.increment(1);
        } else {
            self.metrics.misses.increment(1);
        }
        found
    }

    fn put(&self, key: CacheKey, query: &Query<'_>, generation: u64, decision: Arc<Decision>) {
        let entry = CacheEntry {
            generation,
            principal: (*query.principal).to_owned(),
            action: (*query.action).to_owned(),
            resource: (*query.resource).to_owned(),
            roles: query.roles.clone(),
            context: key.context,
            decision,
        };
        let mut shard = self
            .shard(key.hash)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(key.hash, entry);
    }
}

/// The live policy set and the Cedar evaluator. Reloads swap the set whole.
pub struct PolicyEngine {
    current: ArcSwap<LoadedSet>,
    cache: DecisionCache,
    status: Mutex<ReloadStatus>,
    cedar: cedar_policy::Authorizer,
    types: Types,
}

struct Types {
    agent: EntityTypeName,
    role: EntityTypeName,
    action: EntityTypeName,
    resource: EntityTypeName,
}

impl PolicyEngine {
    pub fn new(set: LoadedSet) -> Self {
        // The type names are constants of our schema; they parse.
        let name = |n: &str| EntityTypeName::from_str(n).unwrap_or_else(|_| unreachable!());
        PolicyEngine {
            current: ArcSwap::from_pointee(set),
            cache: DecisionCache::new(),
            status: Mutex::new(ReloadStatus::default()),
            cedar: cedar_policy::Authorizer::new(),
            types: Types {
                agent: name("Agent"),
                role: name("Role"),
                action: name("Action"),
                resource: name("Resource"),
            },
        }
    }

    pub fn current(&self) -> Arc<LoadedSet> {
        self.current.load_full()
    }

    /// Loads `source` and swaps it in, or keeps the old set and remembers why.
    pub fn reload(&self, source: &PolicySource) -> Result<Arc<LoadedSet>, PolicyError> {
        let result = source.load();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_unix_ms = crate::store::unix_ms_now();
        match result {
            Ok(set) => {
                status.last_error = None;
                let set = Arc::new(set);
                self.current.store(set.clone());
                Ok(set)
            }
            Err(err) => {
                status.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Swaps in a set loaded elsewhere (a configuration reload).
    pub fn replace(&self, set: LoadedSet) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_unix_ms = crate::store::unix_ms_now();
        status.last_error = None;
        self.current.store(Arc::new(set));
    }

    /// Remembers a refused load that happened elsewhere (a configuration reload).
    pub fn note_refused(&self, error: &str) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_unix_ms = crate::store::unix_ms_now();
        status.last_error = Some(error.to_owned());
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Decides one query against the set in force. The decision is shared with the cache.
    pub fn decide(&self, query: &Query<'_>) -> Result<Arc<Decision>, FieldViolation> {
        let span = tracing::debug_span!(
            "policy.decide",
            cached = tracing::field::Empty,
            allowed = tracing::field::Empty
        );
        let _entered = span.enter();
        let set = self.current.load();
        let key = self.cache.key(query);
        if let Some(key) = &key {
            if let Some(decision) = self.cache.get(key, query, set.generation) {
                span.record("cached", true);
                span.record("allowed", decision.allowed);
                return Ok(decision);
            }
        }
        let prepared = self.prepare(&set, query)?;
        let decision = Arc::new(self.decide_prepared(&set, &prepared));
        span.record("cached", false);
        span.record("allowed", decision.allowed);
        if let Some(key) = key {
            self.cache.put(key, query, set.generation, decision.clone());
        }
        Ok(decision)
    }

    /// Decides without the cache: what a first-time request costs (benchmarks).
    pub fn decide_uncached(&self, query: &Query<'_>) -> Result<Decision, FieldViolation> {
        let set = self.current.load();
        let prepared = self.prepare(&set, query)?;
        Ok(self.decide_prepared(&set, &prepared))
    }

    /// The sliced evaluation, with a denied request for an action nobody knows marked
    /// [`UNKNOWN_ACTION`].
    fn decide_prepared(&self, set: &LoadedSet, prepared: &Prepared) -> Decision {
        let mut decision = self.evaluate_sliced(&set.slices, prepared);
        if !decision.allowed && !set.known_actions.contains(&prepared.action) {
            decision.reasons.push(UNKNOWN_ACTION.to_owned());
        }
        decision.advisory = !decision.allowed
            && !decision.reasons.is_empty()
            && decision.errors.is_empty()
            && decision
                .reasons
                .iter()
                .all(|id| set.dry_runnable.contains(id))
            && !NEVER_ADVISORY.contains(&prepared.action.id().unescaped());
        decision
    }

    /// Evaluates the slices that can apply and combines them as one evaluation of the whole set.
    fn evaluate_sliced(&self, slices: &Slices, prepared: &Prepared) -> Decision {
        let candidates = std::iter::once(Some(&slices.shared))
            .chain(std::iter::once(
                slices.by_principal.get(&prepared.principal),
            ))
            .chain(std::iter::once(slices.by_action.get(&prepared.action)))
            .chain(
                prepared
                    .action_parents
                    .iter()
                    .map(|parent| slices.by_action.get(parent)),
            )
            .flatten()
            .filter(|set| !set.is_empty());
        let mut permits = BTreeSet::new();
        let mut forbids = BTreeSet::new();
        let mut errors = Vec::new();
        for set in candidates {
            let decision = self.evaluate(set, prepared);
            // Allow: the reasons are matching permits. Deny: matching forbids (none if nothing
            // permitted).
            if decision.allowed {
                permits.extend(decision.reasons);
            } else {
                forbids.extend(decision.reasons);
            }
            errors.extend(decision.errors);
        }
        let allowed = forbids.is_empty() && !permits.is_empty();
        Decision {
            allowed,
            reasons: if allowed { permits } else { forbids }
                .into_iter()
                .collect(),
            errors,
            advisory: false,
        }
    }

    /// Decides and shows the workings (dry run).
    pub fn explain(&self, query: &Query<'_>) -> Result<Explanation, FieldViolation> {
        let set = self.current.load();
        let prepared = self.prepare(&set, query)?;
        let decision = self.decide_prepared(&set, &prepared);
        let matched_permits = self.evaluate(&set.permits, &prepared).reasons;
        let matched_forbids = self.evaluate(&set.forbids, &prepared).reasons;
        Ok(Explanation {
            decision,
            matched_permits,
            matched_forbids,
            principal_entity: prepared.principal.to_string(),
            principal_parents: query
                .roles
                .iter()
                .map(|r| self.uid(&self.types.role, r).to_string())
                .collect(),
            action_entity: prepared.action.to_string(),
            action_parents: action_prefixes(&query.action)
                .map(|p| self.uid(&self.types.action, p).to_string())
                .collect(),
            resource_entity: prepared.resource.to_string(),
            context: prepared.context_json,
            digest: set.digest.clone(),
        })
    }

    fn uid(&self, ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn prepare(&self, set: &LoadedSet, query: &Query<'_>) -> Result<Prepared, FieldViolation> {
        let principal = self.uid(&self.types.agent, &query.principal);
        let action = self.uid(&self.types.action, &query.action);
        let resource = self.uid(&self.types.resource, &query.resource);
        let parents = query
            .roles
            .iter()
            .map(|r| self.uid(&self.types.role, r))
            .collect();
        let mut entities = vec![Entity::new_no_attrs(principal.clone(), parents)];
        // web.post in web; a.b.c in a.b in a.
        let action_parents: Vec<EntityUid> = action_prefixes(&query.action)
            .map(|prefix| self.uid(&self.types.action, prefix))
            .collect();
        let mut child = action.clone();
        for parent in &action_parents {
            entities.push(Entity::new_no_attrs(child, HashSet::from([parent.clone()])));
            child = parent.clone();
        }
        entities.push(Entity::new_no_attrs(child, HashSet::new()));
        let entities = Entities::from_entities(entities, None)
            .map_err(|err| FieldViolation::new("action", render(&err)))?;

        let mut context_json = query.context.clone();
        context_json.insert(SIGNED_PERMIT.to_owned(), Value::Bool(false));
        let mut prepared = Prepared {
            principal,
            action,
            action_parents,
            resource,
            entities,
            context: Context::empty(),
            context_json,
        };
        prepared.context = self.context(&prepared.context_json)?;
        if !set.signed_permits.is_empty() {
            let signed = self.evaluate(&set.signed_permits, &prepared).allowed;
            if signed {
                prepared
                    .context_json
                    .insert(SIGNED_PERMIT.to_owned(), Value::Bool(true));
                prepared.context = self.context(&prepared.context_json)?;
            }
        }
        Ok(prepared)
    }

    fn context(&self, json: &Map<String, Value>) -> Result<Context, FieldViolation> {
        Context::from_json_value(Value::Object(json.clone()), None)
            .map_err(|err| FieldViolation::new("context", render(&err)))
    }

    fn evaluate(&self, set: &PolicySet, prepared: &Prepared) -> Decision {
        let request = match Request::new(
            prepared.principal.clone(),
            prepared.action.clone(),
            prepared.resource.clone(),
            prepared.context.clone(),
            None,
        ) {
            Ok(request) => request,
            // Without a schema nothing is checked here; should Cedar ever refuse, deny.
            Err(err) => {
                return Decision {
                    allowed: false,
                    reasons: Vec::new(),
                    errors: vec![render(&err)],
                    advisory: false,
                };
            }
        };
        let response = self.cedar.is_authorized(&request, set, &prepared.entities);
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        reasons.sort();
        Decision {
            allowed: response.decision() == CedarDecision::Allow,
            reasons,
            errors: response
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
            advisory: false,
        }
    }
}

struct Prepared {
    principal: EntityUid,
    action: EntityUid,
    action_parents: Vec<EntityUid>,
    resource: EntityUid,
    entities: Entities,
    context: Context,
    context_json: Map<String, Value>,
}

/// `a.b.c` → `a.b`, `a`.
fn action_prefixes(action: &str) -> impl Iterator<Item = &str> {
    action
        .char_indices()
        .rev()
        .filter(|(_, c)| *c == '.')
        .map(move |(i, _)| &action[..i])
}

/// Checks the request fields of a decision; violations name the fields under `prefix`.
pub fn validate_query(
    prefix: &str,
    principal: &str,
    action: &str,
    resource: &str,
    context: &Map<String, Value>,
) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    let field = |name: &str| format!("{prefix}{name}");
    if principal.len() > MAX_PRINCIPAL_LEN {
        violations.push(FieldViolation::new(
            field("principal"),
            format!("at most {MAX_PRINCIPAL_LEN} bytes"),
        ));
    }
    if let Err(why) = validate_action(action) {
        violations.push(FieldViolation::new(field("action"), why));
    }
    if resource.len() > MAX_RESOURCE_LEN {
        violations.push(FieldViolation::new(
            field("resource"),
            format!("at most {MAX_RESOURCE_LEN} bytes"),
        ));
    }
    if context.contains_key(SIGNED_PERMIT) {
        violations.push(FieldViolation::new(
            field(&format!("context.{SIGNED_PERMIT}")),
            "reserved: the daemon sets it",
        ));
    }
    for (key, value) in context {
        if let Some(why) = unsupported_value(value) {
            let key = crate::error::truncate_for_reply(key);
            violations.push(FieldViolation::new(field(&format!("context.{key}")), why));
        }
    }
    violations
}

/// Cedar has no floats and no null.
fn unsupported_value(value: &Value) -> Option<&'static str> {
    match value {
        Value::Null => Some("null is not a Cedar value; leave the key out"),
        Value::Number(n) if n.as_i64().is_none() => Some("Cedar numbers are whole 64-bit integers"),
        Value::Array(items) => items.iter().find_map(unsupported_value),
        Value::Object(map) => map.values().find_map(unsupported_value),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => None,
    }
}

/// An action: dotted lowercase segments of `[a-z0-9_-]`.
pub fn validate_action(action: &str) -> Result<(), String> {
    if action.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if action.len() > MAX_ACTION_LEN {
        return Err(format!("at most {MAX_ACTION_LEN} bytes"));
    }
    // One pass over the bytes (every Check validates its action): no empty segment, so no dot
    // first, last or after another.
    let mut after_dot = true;
    let ok = action.bytes().all(|b| {
        if b == b'.' {
            !std::mem::replace(&mut after_dot, true)
        } else {
            after_dot = false;
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
        }
    }) && !after_dot;
    if ok {
        Ok(())
    } else {
        Err("expected dotted segments of [a-z0-9_-], such as \"web.post\"".to_owned())
    }
}

pub mod api;
pub mod config;
pub mod events;
mod wire;

#[cfg(test)]
mod tests;
