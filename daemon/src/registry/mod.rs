//! The model registry (docs/REGISTRY.md): "which model version is current, where did it come from,
//! is it drifting?" answered for every process on the host.
//!
//! - Models by name, versions by semantic version ([`Semver`]; auto-incremented when omitted),
//!   each with its algorithm, weights and dataset files (path, SHA-256 and size, hashed by the
//!   daemon: [`hash`]), training config, metrics, tags, description, creator, status, lineage,
//!   deployments and model-card text.
//! - Statuses are `registered` and `archived` only: stages (`staging`, `production`, …) are aliases,
//!   which keep their full history (who moved which alias to which version, from when to when),
//!   so "what was production at time T" has one answer. A status per version would say the same
//!   thing a second time, without the history, and could disagree with the aliases.
//! - Lineage: parents with a relationship; a link that would make a cycle is refused. The children
//!   index is kept in memory, so descendants do not scan.
//! - Quality metrics: time series per version and metric, read by [`Registry::detect_drift`] and by
//!   the `registry-drift` worker ([`drift`]).
//! - Model cards: canonical JSON signed with the daemon's Ed25519 key ([`card`]).
//! - One tree ([`trees::REGISTRY`]); models and versions are mirrored in memory (loaded at open).
//!   Writers take one lock, apply their batch (atomic), update the mirror, then wait until the
//!   committer made the batch durable: a reply means the change survives a crash.
//! - Every change is audited (kind `registry`, the principal and correlation id).

pub mod api;
pub mod card;
pub mod config;
pub mod drift;
pub mod events;
pub mod hash;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use self::card::CardSigner;
use self::config::RegistryConfig;
use self::events::RegistryMetrics;
use self::hash::{Hashed, PathProblem};
use crate::access::audit::{AuditKind, AuditLog, AuditRecord};
use crate::error::{FieldViolation, ServiceError, truncate_for_reply};
use crate::runtime::tasks::Tasks;
use crate::store::{Batch, Record, StoreError, Tree};

/// Longest model name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest alias, metric, tag key or environment name.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest free-text field (description, a card section, a tag value, an endpoint).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most tags, metrics or parents per version.
pub const MAX_ENTRIES: usize = 256;
/// Default and largest page.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

pub use crate::runtime::clock::{Clock, ManualClock, SystemClock};

/// Who changes something, for history and audit.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: String,
    pub correlation_id: String,
}

/// A semantic version `MAJOR.MINOR.PATCH[-PRERELEASE]` (no build metadata: two versions that
/// differ only in build metadata would be equal in precedence but distinct records).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Semver {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Option<String>,
}

impl Semver {
    /// Parses a strict semantic version; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Semver> {
        if text.len() > 64 {
            return None;
        }
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let mut parts = core.split('.');
        let mut number = || -> Option<u64> {
            let part = parts.next()?;
            if part.is_empty()
                || !part.bytes().all(|b| b.is_ascii_digit())
                || (part.len() > 1 && part.starts_with('0'))
            {
                return None;
            }
            part.parse().ok()
        };
        let (major, minor, patch) = (number()?, number()?, number()?);
        if parts.next().is_some() {
            return None;
        }
        if let Some(pre) = pre {
            let ok = pre.split('.').all(|id| {
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !(id.len() > 1
                        && id.starts_with('0')
                        && id.bytes().all(|b| b.is_ascii_digit()))
            });
            if !ok {
                return None;
            }
        }
        Some(Semver {
            major,
            minor,
            patch,
            pre: pre.map(str::to_owned),
        })
    }

    /// The next patch version, without pre-release.
    pub fn next_patch(&self) -> Semver {
        Semver {
            major: self.major,
            minor: self.minor,
            patch: self.patch.saturating_add(1),
            pre: None,
        }
    }
}

impl std::fmt::Display for Semver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

impl Ord for Semver {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
    }
}

impl PartialOrd for Semver {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// A model name: `/`-separated segments of `[a-z0-9._-]` starting with a letter or digit, at most
/// [`MAX_NAME_BYTES`]. The `/` makes namespaces that scopes can name: `registry.write:/vision/*`
/// holds every model whose name starts with `vision/`.
pub fn validate_name(name: &str, field: &str) -> Result<(), FieldViolation> {
    let why = if name.is_empty() {
        Some("required".to_owned())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!("at most {MAX_NAME_BYTES} bytes"))
    } else if !name.split('/').all(|segment| {
        segment
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && segment.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    }) {
        Some(format!(
            "{:?}: expected /-separated segments of [a-z0-9._-], each starting with a letter or digit",
            truncate_for_reply(name)
        ))
    } else {
        None
    };
    why.map_or(Ok(()), |why| Err(FieldViolation::new(field, why)))
}

/// An alias, metric name, tag key or environment: `[A-Za-z0-9._-]`, starting with a letter or digit,
/// at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str, field: &str) -> Result<(), FieldViolation> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key.as_bytes()[0].is_ascii_alphanumeric()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "{:?}: expected 1 to {MAX_KEY_BYTES} characters of [A-Za-z0-9._-], starting with a letter or digit",
                truncate_for_reply(key)
            ),
        ))
    }
}

fn validate_text(text: &str, field: &str, violations: &mut Vec<FieldViolation>) {
    if text.len() > MAX_TEXT_BYTES {
        violations.push(FieldViolation::new(
            field,
            format!("at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
}

fn parse_version(text: &str, field: &str) -> Result<Semver, FieldViolation> {
    Semver::parse(text).ok_or_else(|| {
        FieldViolation::new(
            field,
            format!(
                "{:?}: expected a semantic version MAJOR.MINOR.PATCH[-PRERELEASE]",
                truncate_for_reply(text)
            ),
        )
    })
}

fn invalid(violations: Vec<FieldViolation>) -> Result<(), ServiceError> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(violations))
    }
}

/// How a version relates to a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relationship {
    FineTunedFrom,
    DistilledFrom,
    RetrainedFrom,
}

impl Relationship {
    pub fn parse(text: &str) -> Option<Relationship> {
        match text {
            "fine-tuned-from" => Some(Relationship::FineTunedFrom),
            "distilled-from" => Some(Relationship::DistilledFrom),
            "retrained-from" => Some(Relationship::RetrainedFrom),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Relationship::FineTunedFrom => "fine-tuned-from",
            Relationship::DistilledFrom => "distilled-from",
            Relationship::RetrainedFrom => "retrained-from",
        }
    }
}

/// A version's lifecycle state (stages are aliases; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    Registered,
    Archived,
}

impl VersionStatus {
    pub fn parse(text: &str) -> Option<VersionStatus> {
        match text {
            "registered" => Some(VersionStatus::Registered),
            "archived" => Some(VersionStatus::Archived),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Registered => "registered",
            VersionStatus::Archived => "archived",
        }
    }
}

/// A file the registry vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The canonical path it was hashed at.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// A parent in a version's lineage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ParentRef {
    pub name: String,
    pub version: String,
    pub relationship: Relationship,
}

/// A recorded deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub environment: String,
    pub endpoint: String,
    pub deployed_ms: u64,
    pub deployed_by: String,
}

/// The model-card sections (Mitchell et al. 2019), free text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CardText {
    pub model_details: String,
    pub intended_use: String,
    pub factors: String,
    pub metrics: String,
    pub evaluation_data: String,
    pub training_data: String,
    pub quantitative_analyses: String,
    pub ethical_considerations: String,
    pub caveats: String,
}

impl CardText {
    fn fields(&self) -> [(&'static str, &str); 9] {
        [
            ("model_details", &self.model_details),
            ("intended_use", &self.intended_use),
            ("factors", &self.factors),
            ("metrics", &self.metrics),
            ("evaluation_data", &self.evaluation_data),
            ("training_data", &self.training_data),
            ("quantitative_analyses", &self.quantitative_analyses),
            ("ethical_considerations", &self.ethical_considerations),
            ("caveats", &self.caveats),
        ]
    }

    fn validate(&self, violations: &mut Vec<FieldViolation>) {
        for (field, text) in self.fields() {
            validate_text(text, &format!("card.{field}"), violations);
        }
    }
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub name: String,
    pub version: String,
    pub algorithm: String,
    pub weights: Artifact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Artifact>,
    #[serde(default)]
    pub training_config: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    pub created_by: String,
    pub created_ms: u64,
    pub status: VersionStatus,
    #[serde(default)]
    pub parents: Vec<ParentRef>,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    #[serde(default)]
    pub card: CardText,
}

impl Record for VersionRecord {
    const VERSION: u8 = 1;
}

/// One span during which an alias named a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasSpan {
    pub version: String,
    pub from_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// Who moved the alias to this version.
    pub principal: String,
    /// Who moved it away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

impl AliasSpan {
    /// Whether the alias named this version at `at_ms` (`from` inclusive, `to` exclusive).
    pub fn covers(&self, at_ms: u64) -> bool {
        self.from_ms <= at_ms && self.to_ms.is_none_or(|to| at_ms < to)
    }
}

/// A model's own record: when it appeared, and every alias's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub created_ms: u64,
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<AliasSpan>>,
}

impl Record for ModelRecord {
    const VERSION: u8 = 1;
}

impl ModelRecord {
    /// The version `alias` names now.
    pub fn current(&self, alias: &str) -> Option<&str> {
        self.aliases
            .get(alias)
            .and_then(|spans| spans.last())
            .filter(|span| span.to_ms.is_none())
            .map(|span| span.version.as_str())
    }

    /// Aliases that name `version` now.
    pub fn aliases_of(&self, version: &str) -> Vec<String> {
        self.aliases
            .keys()
            .filter(|alias| self.current(alias) == Some(version))
            .cloned()
            .collect()
    }
}

/// One quality-metric sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub value: f64,
    pub at_ms: u64,
}

impl Record for Sample {
    const VERSION: u8 = 1;
}

/// A model in memory.
#[derive(Debug, Clone, Default)]
struct Model {
    record: ModelRecord,
    versions: BTreeMap<Semver, Arc<VersionRecord>>,
}

/// `name@version`, the node id of the lineage graph.
type Node = (String, String);

#[derive(Debug, Default)]
struct State {
    models: BTreeMap<String, Model>,
    /// Parent → children with the relationship (the reverse of every version's `parents`).
    children: BTreeMap<Node, BTreeSet<(String, String, Relationship)>>,
}

impl State {
    /// `record` with the aliases of its model that name it now.
    fn view(&self, name: &str, record: Arc<VersionRecord>) -> VersionView {
        let aliases = self
            .models
            .get(name)
            .map(|m| m.record.aliases_of(&record.version))
            .unwrap_or_default();
        VersionView { record, aliases }
    }

    fn version(&self, name: &str, version: &Semver) -> Result<&Arc<VersionRecord>, ServiceError> {
        self.models
            .get(name)
            .ok_or_else(|| model_not_found(name))?
            .versions
            .get(version)
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "model {} has no version {version}",
                    truncate_for_reply(name)
                ))
            })
    }

    fn parents_of(&self, node: &Node) -> Vec<(Node, Relationship)> {
        let Some(version) = Semver::parse(&node.1) else {
            return Vec::new();
        };
        self.models
            .get(&node.0)
            .and_then(|m| m.versions.get(&version))
            .map(|record| {
                record
                    .parents
                    .iter()
                    .map(|p| ((p.name.clone(), p.version.clone()), p.relationship))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn children_of(&self, node: &Node) -> Vec<(Node, Relationship)> {
        self.children
            .get(node)
            .map(|set| {
                set.iter()
                    .map(|(n, v, r)| ((n.clone(), v.clone()), *r))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Breadth-first walk from `start` along `next`: each node once, with its depth.
    fn walk(
        &self,
        start: &Node,
        max_depth: u32,
        next: impl Fn(&State, &Node) -> Vec<(Node, Relationship)>,
    ) -> Vec<LineageNode> {
        let mut seen = BTreeSet::from([start.clone()]);
        let mut queue = VecDeque::from([(start.clone(), 0u32)]);
        let mut out = Vec::new();
        while let Some((node, depth)) = queue.pop_front() {
            if max_depth != 0 && depth >= max_depth {
                continue;
            }
            for (neighbour, relationship) in next(self, &node) {
                if seen.insert(neighbour.clone()) {
                    out.push(LineageNode {
                        name: neighbour.0.clone(),
                        version: neighbour.1.clone(),
                        relationship,
                        depth: depth + 1,
                    });
                    queue.push_back((neighbour, depth + 1));
                }
            }
        }
        out
    }

    fn link(&mut self, child: &Node, parent: &ParentRef) {
        self.children
            .entry((parent.name.clone(), parent.version.clone()))
            .or_default()
            .insert((child.0.clone(), child.1.clone(), parent.relationship));
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.models.len(),
            self.models.values().map(|m| m.versions.len()).sum(),
        )
    }
}

fn model_not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("no model {}", truncate_for_reply(name)))
}

/// A lineage neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageNode {
    pub name: String,
    pub version: String,
    pub relationship: Relationship,
    pub depth: u32,
}

/// A version and the aliases that name it now.
#[derive(Debug, Clone)]
pub struct VersionView {
    pub record: Arc<VersionRecord>,
    pub aliases: Vec<String>,
}

/// What Register needs.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub name: String,
    /// Empty: the highest version's patch plus one.
    pub version: String,
    pub algorithm: String,
    pub weights_path: String,
    pub weights_sha256: Option<String>,
    pub dataset_path: String,
    pub dataset_sha256: Option<String>,
    pub training_config: serde_json::Map<String, serde_json::Value>,
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    pub description: String,
    pub parents: Vec<(String, String, String)>,
    pub card: CardText,
}

/// What an update changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct VersionUpdate {
    pub tags: Option<BTreeMap<String, String>>,
    pub description: Option<String>,
    pub status: Option<VersionStatus>,
    pub card: Option<CardText>,
}

/// The answer of a drift check.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub drifted: bool,
    pub baseline: f64,
    pub recent: f64,
    pub relative_change_percent: f64,
    pub baseline_samples: u64,
    pub recent_samples: u64,
    /// `registered` or `first-window`.
    pub baseline_source: &'static str,
}

/// One file's check by VerifyArtifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactCheck {
    pub role: &'static str,
    pub path: String,
    /// `ok`, `mismatch` or `missing`.
    pub result: &'static str,
    pub expected_sha256: String,
    pub actual_sha256: String,
}

/// The registry.
pub struct Registry {
    tree: Tree,
    /// Canonical artifact roots.
    roots: Vec<PathBuf>,
    buffer: usize,
    clock: Arc<dyn Clock>,
    state: RwLock<State>,
    writer: tokio::sync::Mutex<()>,
    signer: CardSigner,
    tasks: OnceLock<Tasks>,
    audit: OnceLock<Arc<AuditLog>>,
    metrics: RegistryMetrics,
    /// Makes quality-sample keys unique when two share a millisecond.
    sample_seq: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

fn model_key(name: &str) -> Vec<u8> {
    format!("m:{name}").into_bytes()
}

fn version_key(name: &str, version: &str) -> Vec<u8> {
    format!("v:{name}@{version}").into_bytes()
}

fn samples_prefix(name: &str, version: &str, metric: &str) -> Vec<u8> {
    format!("q:{name}@{version}\0{metric}\0").into_bytes()
}

/// Why the registry could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] card::CardKeyError),
    #[error("artifact root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored record {0} does not match its key")]
    Mismatch(String),
}

impl Registry {
    /// Opens the registry over `tree`: creates the default artifact root when none is configured,
    /// loads every model and version, and loads (or makes) the card-signing key.
    pub fn open(
        tree: Tree,
        keys: &crate::crypto::keyset::KeySet,
        config: &RegistryConfig,
        state_dir: &std::path::Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Registry, OpenError> {
        if config.artifact_roots.is_empty() {
            let root = state_dir.join("artifacts");
            std::fs::create_dir_all(&root).map_err(|source| OpenError::Root {
                path: root.clone(),
                source,
            })?;
        }
        let configured = config.roots(state_dir);
        let roots = hash::canonical_roots(&configured);
        for root in &configured {
            if !roots
                .iter()
                .any(|r| std::fs::canonicalize(root).is_ok_and(|c| &c == r))
            {
                tracing::warn!(root = %root.display(), "artifact root does not exist; files under it cannot be registered until it does");
            }
        }
        let mut state = State::default();
        for entry in tree.scan_prefix::<ModelRecord>(b"m:") {
            let (key, record) = entry?;
            let name = String::from_utf8_lossy(&key[2..]).into_owned();
            state.models.entry(name).or_default().record = record;
        }
        for entry in tree.scan_prefix::<VersionRecord>(b"v:") {
            let (key, record) = entry?;
            let Some(version) = Semver::parse(&record.version) else {
                return Err(OpenError::Mismatch(
                    String::from_utf8_lossy(&key).into_owned(),
                ));
            };
            if key != version_key(&record.name, &record.version) {
                return Err(OpenError::Mismatch(
                    String::from_utf8_lossy(&key).into_owned(),
                ));
            }
            let node = (record.name.clone(), record.version.clone());
            for parent in &record.parents {
                state.link(&node, parent);
            }
            state
                .models
                .entry(record.name.clone())
                .or_default()
                .versions
                .insert(version, Arc::new(record));
        }
        let signer = CardSigner::load_or_create(&tree, keys, clock.now_ms())?;
        let metrics = RegistryMetrics::new();
        let (models, versions) = state.counts();
        metrics.sizes(models, versions);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Registry {
            tree,
            roots,
            buffer: usize::try_from(config.hash_buffer_bytes).unwrap_or(1 << 20),
            clock,
            state: RwLock::new(state),
            writer: tokio::sync::Mutex::new(()),
            signer,
            tasks: OnceLock::new(),
            audit: OnceLock::new(),
            metrics,
            sample_seq: AtomicU64::new(seed),
        })
    }

    /// Records changes in the audit log from now on.
    pub fn set_audit(&self, audit: Arc<AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// Runs hashing on the daemon's tracked blocking pool from now on.
    pub fn set_tasks(&self, tasks: Tasks) {
        let _ = self.tasks.set(tasks);
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The card-signing public key, hex.
    pub fn public_key_hex(&self) -> &str {
        self.signer.public_key_hex()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `batch`, runs `update` on the mirror, then waits until the batch is durable.
    async fn commit(
        &self,
        batch: Batch,
        update: impl FnOnce(&mut State),
    ) -> Result<(), ServiceError> {
        let mut durable = self.tree.apply_now(batch)?;
        {
            let mut state = self.write_state();
            update(&mut state);
            let (models, versions) = state.counts();
            self.metrics.sizes(models, versions);
        }
        durable.wait().await?;
        Ok(())
    }

    fn audit(&self, actor: &Actor, action: &str, resource: String, detail: String) {
        let Some(audit) = self.audit.get() else {
            return;
        };
        let record = AuditRecord {
            seq: 0,
            time_unix_ms: 0,
            decision_id: audit.decision_id(),
            kind: AuditKind::Registry,
            caller: actor.principal.clone(),
            principal: actor.principal.clone(),
            action: action.to_owned(),
            resource,
            allowed: true,
            reasons: vec![detail],
            correlation_id: actor.correlation_id.clone(),
            count: 1,
        };
        if let Err(err) = audit.record(record) {
            tracing::warn!(error = %err, action, "a registry audit record was not queued");
        }
    }

    /// Resolves a requested path under the artifact roots.
    fn resolve(&self, requested: &str, field: &str) -> Result<PathBuf, ServiceError> {
        hash::resolve(&self.roots, requested).map_err(|problem| match problem {
            PathProblem::Invalid(why) => {
                ServiceError::InvalidArgument(vec![FieldViolation::new(field, why)])
            }
            PathProblem::Outside(why) => ServiceError::PermissionDenied(format!(
                "{field} {}: {why}",
                truncate_for_reply(requested)
            )),
            PathProblem::Missing(why) => {
                ServiceError::NotFound(format!("{field} {}: {why}", truncate_for_reply(requested)))
            }
            PathProblem::Unreadable(why) => ServiceError::FailedPrecondition(format!(
                "{field} {}: {why}",
                truncate_for_reply(requested)
            )),
        })
    }

    /// Hashes a (resolved) file on the blocking pool, streaming.
    async fn hash(&self, path: PathBuf) -> Result<std::io::Result<Hashed>, ServiceError> {
        let buffer = self.buffer;
        let work = move || hash::hash_file(&path, buffer);
        let result = match self.tasks.get() {
            Some(tasks) => tasks
                .spawn_blocking("registry.hash", work)
                .await
                .map_err(|err| ServiceError::internal("registry", "hashing a file", err))?,
            // Before the daemon's task set is attached (unit tests): the caller's thread.
            None => work(),
        };
        if let Ok(hashed) = &result {
            self.metrics.hashed(hashed.size);
        }
        Ok(result)
    }

    async fn hash_artifact(
        &self,
        requested: &str,
        declared: Option<&str>,
        field: &str,
        hash_field: &str,
    ) -> Result<Artifact, ServiceError> {
        let path = self.resolve(requested, field)?;
        let hashed = self.hash(path.clone()).await?.map_err(|err| {
            ServiceError::FailedPrecondition(format!(
                "{field} {}: cannot be read: {}",
                truncate_for_reply(requested),
                err.kind()
            ))
        })?;
        if let Some(declared) = declared
            && declared != hashed.sha256
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "{hash_field} mismatch: declared {declared}, the file {} has {}",
                truncate_for_reply(requested),
                hashed.sha256
            )));
        }
        Ok(Artifact {
            path: path.display().to_string(),
            sha256: hashed.sha256,
            size: hashed.size,
        })
    }

    /// Registers a version: validates, hashes the files (outside the write lock), then stores.
    pub async fn register(
        &self,
        actor: &Actor,
        request: Registration,
    ) -> Result<Arc<VersionRecord>, ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_name(&request.name, "name").map_err(|v| violations.push(v));
        let explicit = match request.version.as_str() {
            "" => None,
            text => parse_version(text, "version")
                .map_err(|v| violations.push(v))
                .ok(),
        };
        if request.algorithm.len() > MAX_KEY_BYTES * 2 {
            violations.push(FieldViolation::new("algorithm", "at most 128 bytes"));
        }
        if request.weights_path.is_empty() {
            violations.push(FieldViolation::new("weights_path", "required"));
        }
        let weights_declared = declared(
            request.weights_sha256.as_deref(),
            "weights_sha256",
            &mut violations,
        );
        let dataset_declared = declared(
            request.dataset_sha256.as_deref(),
            "dataset_sha256",
            &mut violations,
        );
        if request.dataset_path.is_empty() && dataset_declared.is_some() {
            violations.push(FieldViolation::new(
                "dataset_sha256",
                "set without dataset_path",
            ));
        }
        validate_metrics(&request.metrics, "metrics", &mut violations);
        validate_tags(&request.tags, &mut violations);
        validate_text(&request.description, "description", &mut violations);
        request.card.validate(&mut violations);
        if request.parents.len() > MAX_ENTRIES {
            violations.push(FieldViolation::new(
                "parents",
                format!("at most {MAX_ENTRIES}"),
            ));
        }
        let mut parents = Vec::new();
        for (i, (name, version, relationship)) in request.parents.iter().enumerate() {
            match parse_parent(name, version, relationship, &format!("parents[{i}]")) {
                Ok(parent) => parents.push(parent),
                Err(mut v) => violations.append(&mut v),
            }
        }
        if serde_json::to_vec(&request.training_config).map_or(0, |v| v.len()) > 64 * 1024 {
            violations.push(FieldViolation::new(
                "training_config",
                "at most 64 KiB as JSON",
            ));
        }
        invalid(violations)?;

        let weights = self
            .hash_artifact(
                &request.weights_path,
                weights_declared.as_deref(),
                "weights_path",
                "weights_sha256",
            )
            .await?;
        let dataset = match request.dataset_path.as_str() {
            "" => None,
            path => Some(
                self.hash_artifact(
                    path,
                    dataset_declared.as_deref(),
                    "dataset_path",
                    "dataset_sha256",
                )
                .await?,
            ),
        };

        let _writer = self.writer.lock().await;
        let now = self.clock.now_ms();
        let (version, is_new_model) = {
            let state = self.read_state();
            let model = state.models.get(&request.name);
            let version = match explicit {
                Some(version) => {
                    if model.is_some_and(|m| m.versions.contains_key(&version)) {
                        return Err(ServiceError::AlreadyExists(format!(
                            "model {} already has version {version}",
                            request.name
                        )));
                    }
                    version
                }
                None => model.and_then(|m| m.versions.keys().next_back()).map_or(
                    Semver {
                        major: 1,
                        minor: 0,
                        patch: 0,
                        pre: None,
                    },
                    Semver::next_patch,
                ),
            };
            for parent in &parents {
                if parent.name == request.name && parent.version == version.to_string() {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "lineage cycle: {}@{version} cannot be its own parent",
                        request.name
                    )));
                }
                let parent_version = Semver::parse(&parent.version).ok_or_else(|| {
                    ServiceError::InvalidArgument(vec![FieldViolation::new(
                        "parents",
                        "bad version",
                    )])
                })?;
                state.version(&parent.name, &parent_version)?;
            }
            (version, model.is_none())
        };
        let record = Arc::new(VersionRecord {
            name: request.name.clone(),
            version: version.to_string(),
            algorithm: request.algorithm,
            weights,
            dataset,
            training_config: request.training_config,
            metrics: request.metrics,
            tags: request.tags,
            description: request.description,
            created_by: actor.principal.clone(),
            created_ms: now,
            status: VersionStatus::Registered,
            parents,
            deployments: Vec::new(),
            card: request.card,
        });
        let mut batch = Batch::default();
        let model_record = ModelRecord {
            created_ms: now,
            aliases: BTreeMap::new(),
        };
        if is_new_model {
            batch.put(&self.tree, &model_key(&record.name), &model_record)?;
        }
        batch.put(
            &self.tree,
            &version_key(&record.name, &record.version),
            record.as_ref(),
        )?;
        let stored = record.clone();
        self.commit(batch, move |state| {
            let node = (stored.name.clone(), stored.version.clone());
            for parent in &stored.parents {
                state.link(&node, parent);
            }
            let model = state
                .models
                .entry(stored.name.clone())
                .or_insert_with(|| Model {
                    record: model_record,
                    versions: BTreeMap::new(),
                });
            model.versions.insert(version, stored);
        })
        .await?;
        self.metrics.changed("register");
        self.audit(
            actor,
            "registry.register",
            format!("model:{}@{}", record.name, record.version),
            format!("weights sha256 {}", record.weights.sha256),
        );
        Ok(record)
    }

    /// One version, with its current aliases.
    pub fn get(&self, name: &str, version: &str) -> Result<VersionView, ServiceError> {
        check_name(name)?;
        let version = parse_version(version, "version").map_err(one)?;
        let state = self.read_state();
        let record = state.version(name, &version)?.clone();
        Ok(state.view(name, record))
    }

    /// The highest version that is not archived.
    pub fn get_latest(&self, name: &str) -> Result<VersionView, ServiceError> {
        check_name(name)?;
        let state = self.read_state();
        let model = state
            .models
            .get(name)
            .ok_or_else(|| model_not_found(name))?;
        let record = model
            .versions
            .values()
            .rev()
            .find(|v| v.status != VersionStatus::Archived)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("model {name} has no version that is not archived"))
            })?
            .clone();
        let aliases = model.record.aliases_of(&record.version);
        Ok(VersionView { record, aliases })
    }

    /// Model names after `after` that `visible` lets through, at most `limit`; and the next token.
    pub fn list_models(
        &self,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> (Vec<String>, Option<String>) {
        let state = self.read_state();
        let mut names = Vec::new();
        let range = match after {
            Some(after) => state
                .models
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => state.models.range::<str, _>(..),
        };
        for (name, _) in range {
            if !visible(name) {
                continue;
            }
            if names.len() == limit {
                let next = names.last().cloned();
                return (names, next);
            }
            names.push(name.clone());
        }
        (names, None)
    }

    /// A model's versions, highest first, below `before` (a version), at most `limit`.
    pub fn list_versions(
        &self,
        name: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<VersionView>, Option<String>), ServiceError> {
        check_name(name)?;
        let before = before
            .map(|v| parse_version(v, "page_token").map_err(one))
            .transpose()?;
        let state = self.read_state();
        let model = state
            .models
            .get(name)
            .ok_or_else(|| model_not_found(name))?;
        let mut out = Vec::new();
        for (version, record) in model.versions.iter().rev() {
            if before.as_ref().is_some_and(|b| version >= b) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|v: &VersionView| v.record.version.clone());
                return Ok((out, next));
            }
            out.push(VersionView {
                record: record.clone(),
                aliases: model.record.aliases_of(&record.version),
            });
        }
        Ok((out, None))
    }

    /// Points `alias` at `version` (`None`: removes it); returns the version it named before.
    pub async fn set_alias(
        &self,
        actor: &Actor,
        name: &str,
        alias: &str,
        version: Option<&str>,
    ) -> Result<Option<String>, ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_name(name, "name").map_err(|v| violations.push(v));
        let _ = validate_key(alias, "alias").map_err(|v| violations.push(v));
        let version = version
            .map(|v| {
                parse_version(v, "version")
                    .map_err(|v| violations.push(v))
                    .ok()
            })
            .unwrap_or(None);
        invalid(violations)?;
        let _writer = self.writer.lock().await;
        let now = self.clock.now_ms();
        let (record, previous) = {
            let state = self.read_state();
            let model = state
                .models
                .get(name)
                .ok_or_else(|| model_not_found(name))?;
            if let Some(version) = &version {
                let target = state.version(name, version)?;
                if target.status == VersionStatus::Archived {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "version {version} of {name} is archived; an alias cannot name it"
                    )));
                }
            }
            let previous = model.record.current(alias).map(str::to_owned);
            let wanted = version.as_ref().map(Semver::to_string);
            if previous == wanted {
                return Ok(previous);
            }
            let mut record = model.record.clone();
            let spans = record.aliases.entry(alias.to_owned()).or_default();
            if let Some(last) = spans.last_mut()
                && last.to_ms.is_none()
            {
                last.to_ms = Some(now);
                last.ended_by = Some(actor.principal.clone());
            }
            if let Some(wanted) = wanted {
                spans.push(AliasSpan {
                    version: wanted,
                    from_ms: now,
                    to_ms: None,
                    principal: actor.principal.clone(),
                    ended_by: None,
                });
            }
            (record, previous)
        };
        let mut batch = Batch::default();
        batch.put(&self.tree, &model_key(name), &record)?;
        let stored = record;
        self.commit(batch, |state| {
            if let Some(model) = state.models.get_mut(name) {
                model.record = stored;
            }
        })
        .await?;
        self.metrics.changed("alias");
        self.audit(
            actor,
            "registry.set_alias",
            format!("model:{name}"),
            format!(
                "alias {alias}: {} -> {}",
                previous.as_deref().unwrap_or("(none)"),
                version.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
            ),
        );
        Ok(previous)
    }

    /// Every span of `alias`, oldest first; with `at_ms`, only the one that covered that time.
    pub fn alias_history(
        &self,
        name: &str,
        alias: &str,
        at_ms: Option<u64>,
    ) -> Result<Vec<AliasSpan>, ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_name(name, "name").map_err(|v| violations.push(v));
        let _ = validate_key(alias, "alias").map_err(|v| violations.push(v));
        invalid(violations)?;
        let state = self.read_state();
        let model = state
            .models
            .get(name)
            .ok_or_else(|| model_not_found(name))?;
        let spans = model.record.aliases.get(alias).ok_or_else(|| {
            ServiceError::NotFound(format!("model {name} never had alias {alias}"))
        })?;
        Ok(match at_ms {
            None => spans.clone(),
            Some(at) => spans.iter().filter(|s| s.covers(at)).cloned().collect(),
        })
    }

    /// The version `alias` named at `at_ms` (`None`: it named nothing then).
    pub fn alias_at(
        &self,
        name: &str,
        alias: &str,
        at_ms: u64,
    ) -> Result<Option<String>, ServiceError> {
        Ok(self
            .alias_history(name, alias, Some(at_ms))?
            .into_iter()
            .next()
            .map(|span| span.version))
    }

    /// Adds a parent to a version's lineage, refusing a cycle.
    pub async fn add_parent(
        &self,
        actor: &Actor,
        name: &str,
        version: &str,
        parent: (&str, &str, &str),
    ) -> Result<(), ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_name(name, "name").map_err(|v| violations.push(v));
        let semver = parse_version(version, "version")
            .map_err(|v| violations.push(v))
            .ok();
        let parent = parse_parent(parent.0, parent.1, parent.2, "parent")
            .map_err(|mut v| violations.append(&mut v))
            .ok();
        invalid(violations)?;
        let (Some(semver), Some(parent)) = (semver, parent) else {
            return Err(ServiceError::InvalidArgument(Vec::new()));
        };
        let _writer = self.writer.lock().await;
        let record = {
            let state = self.read_state();
            let child = state.version(name, &semver)?;
            let parent_version = Semver::parse(&parent.version).unwrap_or_else(|| semver.clone());
            state.version(&parent.name, &parent_version)?;
            let node = (child.name.clone(), child.version.clone());
            let parent_node = (parent.name.clone(), parent.version.clone());
            if child
                .parents
                .iter()
                .any(|p| p.name == parent.name && p.version == parent.version)
            {
                return Err(ServiceError::AlreadyExists(format!(
                    "{}@{} is already a parent of {name}@{}",
                    parent.name, parent.version, child.version
                )));
            }
            let descends = parent_node == node
                || state
                    .walk(&node, 0, State::children_of)
                    .iter()
                    .any(|n| n.name == parent_node.0 && n.version == parent_node.1);
            if descends {
                return Err(ServiceError::FailedPrecondition(format!(
                    "lineage cycle: {}@{} descends from {name}@{}",
                    parent.name, parent.version, child.version
                )));
            }
            let mut record = child.as_ref().clone();
            record.parents.push(parent.clone());
            record.parents.sort();
            Arc::new(record)
        };
        let mut batch = Batch::default();
        batch.put(
            &self.tree,
            &version_key(&record.name, &record.version),
            record.as_ref(),
        )?;
        let stored = record.clone();
        self.commit(batch, |state| {
            let node = (stored.name.clone(), stored.version.clone());
            state.link(&node, &parent);
            if let Some(model) = state.models.get_mut(&stored.name) {
                model.versions.insert(semver, stored);
            }
        })
        .await?;
        self.metrics.changed("parent");
        self.audit(
            actor,
            "registry.add_parent",
            format!("model:{}@{}", record.name, record.version),
            format!(
                "parent {}@{} {}",
                parent.name,
                parent.version,
                parent.relationship.as_str()
            ),
        );
        Ok(())
    }

    /// Ancestors and descendants of a version, each with its depth.
    pub fn lineage(
        &self,
        name: &str,
        version: &str,
        max_depth: u32,
    ) -> Result<(Vec<LineageNode>, Vec<LineageNode>), ServiceError> {
        check_name(name)?;
        let semver = parse_version(version, "version").map_err(one)?;
        let state = self.read_state();
        let record = state.version(name, &semver)?;
        let node = (record.name.clone(), record.version.clone());
        Ok((
            state.walk(&node, max_depth, State::parents_of),
            state.walk(&node, max_depth, State::children_of),
        ))
    }

    /// Replaces a version's record with `change(record)` (under the write lock).
    async fn update_record(
        &self,
        name: &str,
        version: &str,
        change: impl FnOnce(&mut VersionRecord) -> Result<(), ServiceError>,
    ) -> Result<Arc<VersionRecord>, ServiceError> {
        check_name(name)?;
        let semver = parse_version(version, "version").map_err(one)?;
        let _writer = self.writer.lock().await;
        let mut record = self.read_state().version(name, &semver)?.as_ref().clone();
        change(&mut record)?;
        let record = Arc::new(record);
        let mut batch = Batch::default();
        batch.put(
            &self.tree,
            &version_key(&record.name, &record.version),
            record.as_ref(),
        )?;
        let stored = record.clone();
        self.commit(batch, |state| {
            if let Some(model) = state.models.get_mut(&stored.name) {
                model.versions.insert(semver, stored);
            }
        })
        .await?;
        Ok(record)
    }

    /// Records a deployment of a version.
    pub async fn record_deployment(
        &self,
        actor: &Actor,
        name: &str,
        version: &str,
        environment: &str,
        endpoint: &str,
    ) -> Result<VersionView, ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_key(environment, "environment").map_err(|v| violations.push(v));
        if endpoint.len() > 1024 {
            violations.push(FieldViolation::new("endpoint", "at most 1024 bytes"));
        }
        invalid(violations)?;
        let now = self.clock.now_ms();
        let record = self
            .update_record(name, version, |record| {
                record.deployments.push(Deployment {
                    environment: environment.to_owned(),
                    endpoint: endpoint.to_owned(),
                    deployed_ms: now,
                    deployed_by: actor.principal.clone(),
                });
                Ok(())
            })
            .await?;
        self.metrics.changed("deployment");
        self.audit(
            actor,
            "registry.record_deployment",
            format!("model:{}@{}", record.name, record.version),
            format!("environment {environment}"),
        );
        Ok(self.read_state().view(name, record))
    }

    /// Changes tags, description, status or card text.
    pub async fn update_version(
        &self,
        actor: &Actor,
        name: &str,
        version: &str,
        update: VersionUpdate,
    ) -> Result<VersionView, ServiceError> {
        let mut violations = Vec::new();
        if let Some(tags) = &update.tags {
            validate_tags(tags, &mut violations);
        }
        if let Some(description) = &update.description {
            validate_text(description, "description", &mut violations);
        }
        if let Some(card) = &update.card {
            card.validate(&mut violations);
        }
        invalid(violations)?;
        let mut changed = Vec::new();
        let record = self
            .update_record(name, version, |record| {
                if let Some(tags) = update.tags {
                    record.tags = tags;
                    changed.push("tags");
                }
                if let Some(description) = update.description {
                    record.description = description;
                    changed.push("description");
                }
                if let Some(status) = update.status {
                    record.status = status;
                    changed.push("status");
                }
                if let Some(card) = update.card {
                    record.card = card;
                    changed.push("card");
                }
                Ok(())
            })
            .await?;
        self.metrics.changed("update");
        self.audit(
            actor,
            "registry.update_version",
            format!("model:{}@{}", record.name, record.version),
            format!(
                "changed {} (status {})",
                changed.join(","),
                record.status.as_str()
            ),
        );
        Ok(self.read_state().view(name, record))
    }

    /// Appends a sample to a version's metric series; returns how many samples the series has.
    pub async fn record_quality_metric(
        &self,
        name: &str,
        version: &str,
        metric: &str,
        value: f64,
        at_ms: Option<u64>,
    ) -> Result<u64, ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_name(name, "name").map_err(|v| violations.push(v));
        let semver = parse_version(version, "version")
            .map_err(|v| violations.push(v))
            .ok();
        let _ = validate_key(metric, "metric").map_err(|v| violations.push(v));
        if !value.is_finite() {
            violations.push(FieldViolation::new(
                "value",
                "must be a finite number (not NaN or infinite)",
            ));
        }
        invalid(violations)?;
        let Some(semver) = semver else {
            return Err(ServiceError::InvalidArgument(Vec::new()));
        };
        let version = self.read_state().version(name, &semver)?.version.clone();
        let at_ms = at_ms.unwrap_or_else(|| self.clock.now_ms());
        let mut key = samples_prefix(name, &version, metric);
        key.extend_from_slice(&at_ms.to_be_bytes());
        key.extend_from_slice(
            &self
                .sample_seq
                .fetch_add(1, AtomicOrdering::Relaxed)
                .to_be_bytes(),
        );
        self.tree.put_async(&key, &Sample { value, at_ms }).await?;
        self.metrics.changed("quality_metric");
        Ok(self
            .tree
            .scan_prefix::<Sample>(&samples_prefix(name, &version, metric))
            .count() as u64)
    }

    /// A version's samples of `metric`, oldest first.
    fn samples(
        &self,
        name: &str,
        version: &str,
        metric: &str,
    ) -> Result<Vec<Sample>, ServiceError> {
        let mut samples = Vec::new();
        for entry in self
            .tree
            .scan_prefix::<Sample>(&samples_prefix(name, version, metric))
        {
            samples.push(entry?.1);
        }
        samples.sort_by_key(|s| s.at_ms);
        Ok(samples)
    }

    /// Compares the mean over the last `window_seconds` with the baseline: the value registered with
    /// the version, else the mean of the series' first window (samples older than the recent window).
    pub fn detect_drift(
        &self,
        name: &str,
        version: &str,
        metric: &str,
        threshold_percent: f64,
        window_seconds: u64,
    ) -> Result<Drift, ServiceError> {
        let mut violations = Vec::new();
        let _ = validate_name(name, "name").map_err(|v| violations.push(v));
        let semver = parse_version(version, "version")
            .map_err(|v| violations.push(v))
            .ok();
        let _ = validate_key(metric, "metric").map_err(|v| violations.push(v));
        if !threshold_percent.is_finite() || threshold_percent < 0.0 {
            violations.push(FieldViolation::new(
                "threshold_percent",
                "must be a finite number, 0 or more",
            ));
        }
        if window_seconds == 0 || window_seconds > 10 * 366 * 86_400 {
            violations.push(FieldViolation::new(
                "window_seconds",
                "1 to 10 years in seconds",
            ));
        }
        invalid(violations)?;
        let Some(semver) = semver else {
            return Err(ServiceError::InvalidArgument(Vec::new()));
        };
        let record = self.read_state().version(name, &semver)?.clone();
        let samples = self.samples(name, &record.version, metric)?;
        let window_ms = window_seconds.saturating_mul(1000);
        let recent_from = self.clock.now_ms().saturating_sub(window_ms);
        let recent: Vec<f64> = samples
            .iter()
            .filter(|s| s.at_ms >= recent_from)
            .map(|s| s.value)
            .collect();
        if recent.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "no samples of {metric} for {name}@{} in the last {window_seconds} s",
                record.version
            )));
        }
        let (baseline, baseline_samples, baseline_source) = match record.metrics.get(metric) {
            Some(value) => (*value, 0, "registered"),
            None => {
                let first = samples[0].at_ms;
                let end = first.saturating_add(window_ms).min(recent_from);
                let values: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.at_ms < end)
                    .map(|s| s.value)
                    .collect();
                if values.is_empty() {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "no baseline for {metric} of {name}@{}: register the metric's value with the version, or record samples older than the window",
                        record.version
                    )));
                }
                (mean(&values), values.len() as u64, "first-window")
            }
        };
        let recent_mean = mean(&recent);
        let change = if baseline == 0.0 {
            if recent_mean == 0.0 {
                0.0
            } else {
                f64::INFINITY.copysign(recent_mean)
            }
        } else {
            (recent_mean - baseline) / baseline.abs() * 100.0
        };
        Ok(Drift {
            drifted: change.abs() > threshold_percent,
            baseline,
            recent: recent_mean,
            relative_change_percent: change,
            baseline_samples,
            recent_samples: recent.len() as u64,
            baseline_source,
        })
    }

    /// Re-hashes a version's files.
    pub async fn verify_artifacts(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<ArtifactCheck>, ServiceError> {
        let record = self.get(name, version)?.record;
        let mut checks = Vec::new();
        let files = std::iter::once(("weights", &record.weights))
            .chain(record.dataset.as_ref().map(|d| ("dataset", d)));
        for (role, artifact) in files {
            let path = PathBuf::from(&artifact.path);
            let (result, actual) = if std::fs::symlink_metadata(&path).is_err() {
                ("missing", String::new())
            } else if !hash::is_regular(&path)
                || hash::resolve(&self.roots, &artifact.path).is_err()
            {
                // Replaced by a symlink or something else than a file: not what was registered.
                ("mismatch", String::new())
            } else {
                match self.hash(path).await? {
                    Ok(hashed) if hashed.sha256 == artifact.sha256 => ("ok", hashed.sha256),
                    Ok(hashed) => ("mismatch", hashed.sha256),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        ("missing", String::new())
                    }
                    Err(_) => ("mismatch", String::new()),
                }
            };
            self.metrics.artifact_checked(result);
            checks.push(ArtifactCheck {
                role,
                path: artifact.path.clone(),
                result,
                expected_sha256: artifact.sha256.clone(),
                actual_sha256: actual,
            });
        }
        Ok(checks)
    }

    /// The signed model card of a version (canonical JSON; docs/REGISTRY.md).
    pub fn export_card(&self, name: &str, version: &str) -> Result<String, ServiceError> {
        let view = self.get(name, version)?;
        let card = card_json(&view, self.clock.now_ms());
        Ok(self.signer.sign(&card))
    }

    /// Audits a drift rule that fired (the `registry-drift` worker).
    fn audit_drift(&self, rule: &config::DriftRule, drift: &Drift) {
        let actor = Actor {
            principal: "brainstemd".to_owned(),
            correlation_id: String::new(),
        };
        self.audit(
            &actor,
            "registry.drift",
            format!("model:{}@{}", rule.model, rule.version),
            format!(
                "rule {} fired: {} baseline {} recent {} change {:.2}% > {}%",
                rule.name,
                rule.metric,
                drift.baseline,
                drift.recent,
                drift.relative_change_percent,
                rule.threshold_percent
            ),
        );
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn one(violation: FieldViolation) -> ServiceError {
    ServiceError::InvalidArgument(vec![violation])
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    validate_name(name, "name").map_err(one)
}

fn declared(
    text: Option<&str>,
    field: &str,
    violations: &mut Vec<FieldViolation>,
) -> Option<String> {
    let text = text.filter(|t| !t.is_empty())?;
    let parsed = hash::parse_declared(text);
    if parsed.is_none() {
        violations.push(FieldViolation::new(
            field,
            "expected 64 hex digits (SHA-256)",
        ));
    }
    parsed
}

fn validate_metrics(
    metrics: &BTreeMap<String, f64>,
    field: &str,
    violations: &mut Vec<FieldViolation>,
) {
    if metrics.len() > MAX_ENTRIES {
        violations.push(FieldViolation::new(field, format!("at most {MAX_ENTRIES}")));
    }
    for (name, value) in metrics {
        let key = format!("{field}[{}]", truncate_for_reply(name));
        if let Err(v) = validate_key(name, &key) {
            violations.push(v);
        }
        if !value.is_finite() {
            violations.push(FieldViolation::new(
                key,
                "must be a finite number (not NaN or infinite)",
            ));
        }
    }
}

fn validate_tags(tags: &BTreeMap<String, String>, violations: &mut Vec<FieldViolation>) {
    if tags.len() > MAX_ENTRIES {
        violations.push(FieldViolation::new(
            "tags",
            format!("at most {MAX_ENTRIES}"),
        ));
    }
    for (key, value) in tags {
        let field = format!("tags[{}]", truncate_for_reply(key));
        if let Err(v) = validate_key(key, &field) {
            violations.push(v);
        }
        if value.len() > 1024 {
            violations.push(FieldViolation::new(
                field,
                "a tag value is at most 1024 bytes",
            ));
        }
    }
}

fn parse_parent(
    name: &str,
    version: &str,
    relationship: &str,
    field: &str,
) -> Result<ParentRef, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let _ = validate_name(name, &format!("{field}.name")).map_err(|v| violations.push(v));
    let version = parse_version(version, &format!("{field}.version"))
        .map_err(|v| violations.push(v))
        .ok();
    let relationship = Relationship::parse(relationship);
    if relationship.is_none() {
        violations.push(FieldViolation::new(
            format!("{field}.relationship"),
            "expected fine-tuned-from, distilled-from or retrained-from",
        ));
    }
    match (version, relationship) {
        (Some(version), Some(relationship)) if violations.is_empty() => Ok(ParentRef {
            name: name.to_owned(),
            version: version.to_string(),
            relationship,
        }),
        _ => Err(violations),
    }
}

/// The card's content (before signing): metadata plus the model-card sections.
fn card_json(view: &VersionView, exported_ms: u64) -> serde_json::Value {
    use serde_json::json;
    let r = &view.record;
    let artifact = |a: &Artifact| json!({"path": a.path, "sha256": a.sha256, "size": a.size});
    let sections: serde_json::Map<String, serde_json::Value> = r
        .card
        .fields()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "format": "brainstem.model-card.v1",
        "name": r.name,
        "version": r.version,
        "algorithm": r.algorithm,
        "description": r.description,
        "status": r.status.as_str(),
        "created_by": r.created_by,
        "created_at_unix_ms": r.created_ms,
        "exported_at_unix_ms": exported_ms,
        "aliases": view.aliases,
        "tags": r.tags,
        "weights": artifact(&r.weights),
        "dataset": r.dataset.as_ref().map(artifact),
        "training_config": r.training_config,
        "metrics": r.metrics,
        "parents": r.parents.iter().map(|p| json!({"name": p.name, "version": p.version, "relationship": p.relationship.as_str()})).collect::<Vec<_>>(),
        "deployments": r.deployments.iter().map(|d| json!({"environment": d.environment, "endpoint": d.endpoint, "deployed_at_unix_ms": d.deployed_ms, "deployed_by": d.deployed_by})).collect::<Vec<_>>(),
        "sections": sections,
    })
}
