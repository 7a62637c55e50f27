//! Feature flags in flagd's format (docs/FLAGS.md): definitions loaded from a file and swapped whole,
//! runtime overrides kept in the store, evaluation as flagd's evaluator does it, and a change feed.
//!
//! - [`definition`]: the file format, parsed and validated whole (`$evaluators`/`$ref` resolved).
//! - [`logic`]: JsonLogic with flagd's `fractional`, `starts_with`, `ends_with`, `sem_ver`.
//! - [`Flags`]: the live set (an [`ArcSwap`]: evaluation never takes a lock), overrides, reloads and
//!   the change feed; `watch` runs the `flags-watch` worker (file events, SIGHUP).
//! - [`modules`]: `modules.*` flags start and stop supervised actors (the `flags-modules` worker).
//! - `api.rs`: `brainstem.v1.Flags` and the flagd evaluation protocol (`flagd.evaluation.v1/v2`).
//!
//! Precedence for one flag: an override's `state` beats the file's; an override's rollout sends its
//! percentage of targeting keys to its variant before any targeting runs; an override's default
//! variant replaces the file's. Clearing the override returns the flag to the file.

pub mod api;
pub mod config;
pub mod definition;
pub mod events;
pub mod logic;
pub mod modules;
mod murmur;
mod semver;
pub mod socket;
mod watch;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::broadcast;

pub use definition::{Flag, FlagSet, FlagType, Metadata, State};
pub use murmur::murmur3_x86_32;
pub use watch::FlagsWatch;

use crate::error::{FieldViolation, ServiceError, truncate_for_reply};
use crate::store::{Record, StoreError, Tree, unix_ms_now};
use events::{FlagsMetrics, ReloadOutcomeKind};
use logic::{Env, bucket_of, to_text};

/// The definitions shipped with brainstem (`config/flags.json`): the daemon's own switches. They
/// serve while the configured file does not exist.
pub const DEFAULT_DEFINITIONS: &str = include_str!("../../../config/flags.json");
/// The store tree that keeps overrides, one record per flag key.
pub const OVERRIDES_TREE: &str = "flag_overrides";

/// Why a flag resolved as it did, named as flagd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// Targeting chose a variant.
    TargetingMatch,
    /// Targeting chose nothing (the default variant), or there is no default variant (the caller's
    /// default value is used; no value and no variant are returned).
    Default,
    /// The flag is disabled: no value, the caller's default.
    Disabled,
    /// A rollout override chose the variant.
    Split,
    /// Evaluation failed.
    Error,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Split => "SPLIT",
            Reason::Error => "ERROR",
        }
    }
}

/// The outcome of evaluating one flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// `None` when disabled or when there is no default variant and targeting chose nothing.
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
    /// The flag's metadata, plus the set's (the flag's own keys win); shared, merged at load.
    pub metadata: Arc<Metadata>,
    pub flag_type: FlagType,
}

/// The caller's context as the evaluator reads it: a rollout override reads the targeting key
/// alone, targeting rules the whole JSON object. An adapter may hand in the context in its wire form
/// and convert it to JSON only when a rule asks for it ([`EvalContext::json`]).
pub trait EvalContext {
    /// `targetingKey`, when the context holds it as a string.
    fn targeting_key(&self) -> Option<&str>;
    /// The whole context as JSON (an object, usually).
    fn json(&self) -> &Value;
}

impl EvalContext for Value {
    fn targeting_key(&self) -> Option<&str> {
        self.get("targetingKey").and_then(Value::as_str)
    }

    fn json(&self) -> &Value {
        self
    }
}

/// Why a flag could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("flag {0:?} is not defined")]
    NotFound(String),
    #[error("flag {key:?} is a {actual} flag, not {wanted}")]
    TypeMismatch {
        key: String,
        wanted: &'static str,
        actual: &'static str,
    },
    /// Targeting returned something that is not one of the flag's variants (flagd: GENERAL).
    #[error("flag {key:?}: targeting chose {chose:?}, which is not one of its variants")]
    NotAVariant { key: String, chose: String },
}

impl EvalError {
    /// The OpenFeature error code (`FLAG_NOT_FOUND`, `TYPE_MISMATCH`, `GENERAL`).
    pub fn code(&self) -> &'static str {
        match self {
            EvalError::NotFound(_) => "FLAG_NOT_FOUND",
            EvalError::TypeMismatch { .. } => "TYPE_MISMATCH",
            EvalError::NotAVariant { .. } => "GENERAL",
        }
    }
}

impl From<EvalError> for ServiceError {
    fn from(err: EvalError) -> Self {
        match &err {
            EvalError::NotFound(key) => {
                ServiceError::NotFound(format!("flag {:?} is not defined", truncate_for_reply(key)))
            }
            EvalError::TypeMismatch { .. } => {
                ServiceError::InvalidArgument(vec![FieldViolation::new(
                    "flag_key",
                    err.to_string(),
                )])
            }
            EvalError::NotAVariant { key, chose } => ServiceError::FailedPrecondition(format!(
                "flag {:?}: targeting chose {:?}, which is not one of its variants",
                truncate_for_reply(key),
                truncate_for_reply(chose)
            )),
        }
    }
}

/// A runtime override of one flag, kept in the store (tree [`OVERRIDES_TREE`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Override {
    pub state: Option<State>,
    pub default_variant: Option<String>,
    pub rollout: Option<Rollout>,
    /// Principal that set it.
    pub set_by: String,
    pub set_at_unix_ms: u64,
}

impl Record for Override {
    const VERSION: u8 = 1;
}

/// `percent` of targeting keys get `variant` (bucketed as `fractional` does, by flag key +
/// targeting key, so raising the percentage only adds keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    pub variant: String,
    pub percent: u32,
}

/// What an operator asks to change (validated against the flag).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverrideRequest {
    pub state: Option<State>,
    pub default_variant: Option<String>,
    pub rollout: Option<Rollout>,
}

/// The flags being served: the file's set and the overrides, swapped together.
#[derive(Debug, Default)]
pub struct Active {
    pub set: Arc<FlagSet>,
    pub overrides: Arc<BTreeMap<String, Override>>,
    /// Bumped on every change that reaches callers.
    pub revision: u64,
}

/// How a flag changed, as flagd's configuration_change names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Write,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Write => "write",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One change of the served flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: u64,
    /// `file` or `override`.
    pub cause: &'static str,
    pub flags: Vec<(String, ChangeKind)>,
}

/// Where the served definitions came from and how the last loads went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStatus {
    pub path: PathBuf,
    /// The file did not exist at the last load: the shipped defaults serve.
    pub using_defaults: bool,
    pub loaded_at_unix_ms: u64,
    pub loads: u64,
    pub refused: u64,
    /// Why the file on disk was refused last, until a later load succeeds.
    pub last_error: Option<String>,
    pub last_error_at_unix_ms: u64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    /// Loaded; the number of flags whose definition changed.
    Applied(usize),
    /// The file was the same as the one serving.
    Unchanged,
    /// Invalid: every problem; the previous flags keep serving.
    Refused(Vec<String>),
}

/// The flags capability's state: see the module docs.
pub struct Flags {
    active: ArcSwap<Active>,
    path: PathBuf,
    tree: Tree,
    /// Reloads and override changes apply one at a time; the texts last served and last refused.
    update: tokio::sync::Mutex<Texts>,
    status: Mutex<LoadStatus>,
    changes: broadcast::Sender<Arc<Change>>,
    metrics: FlagsMetrics,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags").field("path", &self.path).finish()
    }
}

#[derive(Default)]
struct Texts {
    served: Option<String>,
    refused: Option<String>,
}

/// How many changes a slow Watch subscriber may fall behind before it is told to resynchronise.
const CHANGE_BUFFER: usize = 256;

impl Flags {
    /// Loads the definitions at `path` (the shipped defaults when it does not exist) and the
    /// overrides in `tree`. An invalid file or a damaged override record is an error: at start
    /// there are no previous flags to keep serving.
    pub fn open(path: &Path, tree: Tree) -> Result<Flags, String> {
        let (text, using_defaults) = match std::fs::read_to_string(path) {
            Ok(text) => (text, false),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                (DEFAULT_DEFINITIONS.to_owned(), true)
            }
            Err(err) => return Err(format!("{}: {err}", path.display())),
        };
        let set = definition::parse(&text)
            .map_err(|problems| format!("{}: {}", path.display(), problems.join("; ")))?;
        let mut overrides = BTreeMap::new();
        for entry in tree.scan::<Override>() {
            let (key, value) = entry.map_err(|err: StoreError| err.to_string())?;
            overrides.insert(String::from_utf8_lossy(&key).into_owned(), value);
        }
        let metrics = FlagsMetrics::new();
        metrics.loaded(set.flags.len(), overrides.len());
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Ok(Flags {
            active: ArcSwap::from_pointee(Active {
                set: Arc::new(set),
                overrides: Arc::new(overrides),
                revision: 1,
            }),
            path: path.to_owned(),
            tree,
            update: tokio::sync::Mutex::new(Texts {
                served: Some(text),
                refused: None,
            }),
            status: Mutex::new(LoadStatus {
                path: path.to_owned(),
                using_defaults,
                loaded_at_unix_ms: unix_ms_now(),
                loads: 1,
                ..LoadStatus::default()
            }),
            changes,
            metrics,
        })
    }

    /// The definitions file this instance serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A snapshot of what is served.
    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    pub fn status(&self) -> LoadStatus {
        self.status.lock().expect("flags status lock").clone()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Evaluates one flag against `context` (a JSON object; `targetingKey` is the bucketing key).
    /// `wanted`: the type the caller reads, refused with [`EvalError::TypeMismatch`] if the flag
    /// holds another.
    pub fn evaluate(
        &self,
        key: &str,
        context: &(impl EvalContext + ?Sized),
        wanted: Option<FlagType>,
    ) -> Result<Resolution, EvalError> {
        let active = self.active.load();
        let result = evaluate_in(&active, key, context, wanted, now_unix_seconds());
        self.metrics.evaluated(&result);
        result
    }

    /// Every flag, in key order.
    pub fn evaluate_all(&self, context: &Value) -> Vec<(String, Result<Resolution, EvalError>)> {
        let active = self.active.load();
        let now = now_unix_seconds();
        active
            .set
            .flags
            .keys()
            .map(|key| {
                let result = evaluate_in(&active, key, context, None, now);
                self.metrics.evaluated(&result);
                (key.clone(), result)
            })
            .collect()
    }

    /// Reads the file again; applies it whole or refuses it (the previous flags keep serving).
    pub async fn reload(&self, trigger: &'static str) -> ReloadResult {
        let mut texts = self.update.lock().await;
        let (text, using_defaults) = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => (text, false),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                (DEFAULT_DEFINITIONS.to_owned(), true)
            }
            Err(err) => {
                return self.refuse(trigger, vec![format!("{}: {err}", self.path.display())]);
            }
        };
        if texts.served.as_deref() == Some(text.as_str()) {
            texts.refused = None;
            self.status.lock().expect("flags status lock").last_error = None;
            return ReloadResult::Unchanged;
        }
        // The same bad text seen again by the watch or the poll is not a new refusal; SIGHUP is
        // an operator asking, so it is answered (and logged) again.
        if trigger != "sighup" && texts.refused.as_deref() == Some(text.as_str()) {
            return ReloadResult::Unchanged;
        }
        let set = match definition::parse(&text) {
            Ok(set) => set,
            Err(problems) => {
                texts.refused = Some(text);
                return self.refuse(trigger, problems);
            }
        };
        texts.served = Some(text);
        texts.refused = None;
        let old = self.active.load_full();
        let new = Active {
            set: Arc::new(set),
            overrides: old.overrides.clone(),
            revision: old.revision + 1,
        };
        let changed = self.swap(&old, new, "file");
        {
            let mut status = self.status.lock().expect("flags status lock");
            status.using_defaults = using_defaults;
            status.loaded_at_unix_ms = unix_ms_now();
            status.loads += 1;
            status.last_error = None;
        }
        self.metrics.reloaded(trigger, ReloadOutcomeKind::Applied);
        tracing::info!(
            path = %self.path.display(),
            trigger,
            changed,
            using_defaults,
            "flag definitions reloaded"
        );
        ReloadResult::Applied(changed)
    }

    fn refuse(&self, trigger: &'static str, problems: Vec<String>) -> ReloadResult {
        let summary = problems.join("; ");
        tracing::error!(
            path = %self.path.display(),
            trigger,
            problems = %summary,
            "flag definitions refused; the previous flags keep serving"
        );
        self.metrics.reloaded(trigger, ReloadOutcomeKind::Refused);
        let mut status = self.status.lock().expect("flags status lock");
        status.refused += 1;
        status.last_error = Some(summary);
        status.last_error_at_unix_ms = unix_ms_now();
        ReloadResult::Refused(problems)
    }

    /// Stores `new` and tells subscribers which flags changed (also when only the set's metadata
    /// did); the number of flags changed.
    fn swap(&self, old: &Active, new: Active, cause: &'static str) -> usize {
        let flags = diff(old, &new);
        let count = flags.len();
        let revision = new.revision;
        self.metrics
            .loaded(new.set.flags.len(), new.overrides.len());
        // The set's metadata is served too (flagd v1 ResolveAll): a change of it that no flag's
        // reported metadata shows (every flag has its own value for the keys) is still a change.
        let set_metadata_changed = old.set.metadata != new.set.metadata;
        self.active.store(Arc::new(new));
        if count > 0 || set_metadata_changed {
            // No subscriber is not an error.
            let _ = self.changes.send(Arc::new(Change {
                revision,
                cause,
                flags,
            }));
        }
        count
    }

    /// Sets (replaces) the override of `key`, durably, then serves it.
    pub async fn set_override(
        &self,
        key: &str,
        request: OverrideRequest,
        by: &str,
    ) -> Result<Override, ServiceError> {
        let _guard = self.update.lock().await;
        let old = self.active.load_full();
        let Some(flag) = old.set.flags.get(key) else {
            return Err(EvalError::NotFound(key.to_owned()).into());
        };
        validate_override(flag, &request)?;
        let record = Override {
            state: request.state,
            default_variant: request.default_variant,
            rollout: request.rollout,
            set_by: by.to_owned(),
            set_at_unix_ms: unix_ms_now(),
        };
        self.tree.put_async(key.as_bytes(), &record).await?;
        let mut overrides = (*old.overrides).clone();
        overrides.insert(key.to_owned(), record.clone());
        let new = Active {
            set: old.set.clone(),
            overrides: Arc::new(overrides),
            revision: old.revision + 1,
        };
        self.swap(&old, new, "override");
        Ok(record)
    }

    /// Removes the override of `key`; whether there was one.
    pub async fn clear_override(&self, key: &str) -> Result<bool, ServiceError> {
        let _guard = self.update.lock().await;
        let old = self.active.load_full();
        if !old.overrides.contains_key(key) {
            return Ok(false);
        }
        self.tree.remove_many(&[key.as_bytes().to_vec()]).await?;
        let mut overrides = (*old.overrides).clone();
        overrides.remove(key);
        let new = Active {
            set: old.set.clone(),
            overrides: Arc::new(overrides),
            revision: old.revision + 1,
        };
        self.swap(&old, new, "override");
        Ok(true)
    }
}

fn validate_override(flag: &Flag, request: &OverrideRequest) -> Result<(), ServiceError> {
    let mut violations = Vec::new();
    if request.state.is_none() && request.default_variant.is_none() && request.rollout.is_none() {
        violations.push(FieldViolation::new(
            "state",
            "set at least one of state, default_variant, rollout",
        ));
    }
    let known = |name: &str| flag.variants.contains_key(name);
    if let Some(name) = &request.default_variant
        && !known(name)
    {
        violations.push(FieldViolation::new(
            "default_variant",
            format!(
                "{:?} is not a variant of {:?} ({})",
                truncate_for_reply(name),
                flag.key,
                variant_names(flag)
            ),
        ));
    }
    if let Some(rollout) = &request.rollout {
        if !known(&rollout.variant) {
            violations.push(FieldViolation::new(
                "rollout.variant",
                format!(
                    "{:?} is not a variant of {:?} ({})",
                    truncate_for_reply(&rollout.variant),
                    flag.key,
                    variant_names(flag)
                ),
            ));
        }
        if rollout.percent > 100 {
            violations.push(FieldViolation::new(
                "rollout.percent",
                format!("0 to 100; got {}", rollout.percent),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(violations))
    }
}

fn variant_names(flag: &Flag) -> String {
    flag.variants.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn same_definition(a: &Flag, b: &Flag) -> bool {
    a.state == b.state
        && a.variants == b.variants
        && a.default_variant == b.default_variant
        && a.targeting_json == b.targeting_json
        && a.metadata == b.metadata
        // What evaluations report: a change of the set's metadata alone changes this too.
        && a.resolved_metadata.json() == b.resolved_metadata.json()
}

/// Which flags differ between two served states (definition or override).
fn diff(old: &Active, new: &Active) -> Vec<(String, ChangeKind)> {
    let mut out = Vec::new();
    for (key, flag) in &new.set.flags {
        match old.set.flags.get(key) {
            None => out.push((key.clone(), ChangeKind::Write)),
            Some(before) => {
                if !same_definition(before, flag)
                    || old.overrides.get(key) != new.overrides.get(key)
                {
                    out.push((key.clone(), ChangeKind::Update));
                }
            }
        }
    }
    for key in old.set.flags.keys() {
        if !new.set.flags.contains_key(key) {
            out.push((key.clone(), ChangeKind::Delete));
        }
    }
    out
}

fn now_unix_seconds() -> i64 {
    (unix_ms_now() / 1000) as i64
}

/// Evaluates `key` in `active` at `now` (unix seconds): the whole precedence (see the module docs).
pub fn evaluate_in(
    active: &Active,
    key: &str,
    context: &(impl EvalContext + ?Sized),
    wanted: Option<FlagType>,
    now: i64,
) -> Result<Resolution, EvalError> {
    let Some(flag) = active.set.flags.get(key) else {
        return Err(EvalError::NotFound(key.to_owned()));
    };
    if let Some(wanted) = wanted
        && !type_satisfies(flag.flag_type, wanted)
    {
        return Err(EvalError::TypeMismatch {
            key: key.to_owned(),
            wanted: wanted.as_str(),
            actual: flag.flag_type.as_str(),
        });
    }
    evaluate_flag(flag, active.overrides.get(key), context, now)
}

/// Integer and float requests both accept any number flag (flagd reads ints as floats and casts).
fn type_satisfies(actual: FlagType, wanted: FlagType) -> bool {
    let number = |t| matches!(t, FlagType::Integer | FlagType::Float);
    actual == wanted || (number(actual) && number(wanted))
}

/// Evaluates one flag with its override (if any).
pub fn evaluate_flag(
    flag: &Flag,
    ov: Option<&Override>,
    context: &(impl EvalContext + ?Sized),
    now: i64,
) -> Result<Resolution, EvalError> {
    let resolved = |variant: Option<&str>, reason: Reason| {
        let value = variant.and_then(|v| flag.variants.get(v)).cloned();
        Resolution {
            variant: value.as_ref().and(variant.map(str::to_owned)),
            value,
            reason,
            metadata: flag.resolved_metadata.clone(),
            flag_type: flag.flag_type,
        }
    };
    let state = ov.and_then(|o| o.state).unwrap_or(flag.state);
    if state == State::Disabled {
        return Ok(resolved(None, Reason::Disabled));
    }
    if let Some(rollout) = ov.and_then(|o| o.rollout.as_ref())
        && flag.variants.contains_key(&rollout.variant)
        && let Some(targeting_key) = context.targeting_key()
        && !targeting_key.is_empty()
        && bucket_of(&format!("{}{targeting_key}", flag.key), 100) < u64::from(rollout.percent)
    {
        return Ok(resolved(Some(&rollout.variant), Reason::Split));
    }
    let default_variant = ov
        .and_then(|o| o.default_variant.as_deref())
        .filter(|v| flag.variants.contains_key(*v))
        .or(flag.default_variant.as_deref());
    let Some(rule) = &flag.targeting else {
        return Ok(match default_variant {
            Some(v) => resolved(Some(v), Reason::Static),
            None => resolved(None, Reason::Default),
        });
    };
    let env = Env {
        flag_key: &flag.key,
        timestamp: now,
    };
    let chosen = match rule.evaluate(context.json(), &env) {
        Value::Null => return Ok(resolved(default_variant, Reason::Default)),
        Value::String(s) => s,
        other @ (Value::Bool(_) | Value::Number(_)) => to_text(&other),
        other => other.to_string(),
    };
    if flag.variants.contains_key(&chosen) {
        Ok(resolved(Some(&chosen), Reason::TargetingMatch))
    } else {
        Err(EvalError::NotAVariant {
            key: flag.key.clone(),
            chose: chosen,
        })
    }
}
