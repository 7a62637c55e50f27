//! The secrets store (docs/SECRETS.md): the "give me that credential" service other processes on
//! the host call instead of reading `.env` files.
//!
//! - Values are sealed per version with a fresh data key, itself wrapped by the master key
//!   ([`envelope`]); path and version are bound as associated data.
//! - Versions follow Vault's KV v2: check-and-set, soft delete / undelete / destroy, `max_versions`
//!   pruning, `delete_version_after`, custom metadata. Rotation (which Vault's KV lacks) is a
//!   period and a [`Generator`] per secret, run by the supervised `secrets-rotation` worker
//!   ([`rotation`]), also for periods that elapsed while the daemon was stopped.
//! - One tree ([`trees::SECRETS`]): `m:<path>` → [`SecretMeta`], `v:<path>\0<version BE>` → the
//!   sealed version. A change is one sled batch (atomic), applied under a per-path lock and flushed
//!   by the store's committer, so concurrent puts to different paths share a flush (group commit).
//! - Every path's metadata is mirrored in memory (loaded at open): Get reads one stored record,
//!   List and the rotation schedule read memory only, nothing is counted by scanning.
//! - Every change is sent to watchers ([`Change`]: path, version, kind, never the value) and audited
//!   (kind `secret`, the principal and correlation id, never the value). Every stored value of at
//!   least 8 bytes is handed to the log redactor, which removes it from any log line; what the
//!   redactor counted for it ([`Remembered`], fingerprints, never the value) is kept in memory per
//!   version, so pruning and destroying a version take its value out without decrypting it.

pub mod api;
pub mod config;
mod envelope;
pub mod events;
mod generator;
pub mod path;
mod rotation;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use self::envelope::{DataKey, Sealed, SealedRef};
use self::events::{ReadResult, SecretsMetrics};
pub use self::generator::Generator;
pub use self::rotation::SecretsRotation;
use crate::access::audit::{AuditKind, AuditLog, AuditRecord};
use crate::crypto::keyset::KeySet;
use crate::error::{FieldViolation, ServiceError};
use crate::runtime::redact::{Redactor, Remembered};
use crate::store::{Batch, Record, StoreError, Tree};

/// Vault's limits on custom metadata.
pub const MAX_CUSTOM_KEYS: usize = 64;
pub const MAX_CUSTOM_KEY_BYTES: usize = 128;
pub const MAX_CUSTOM_VALUE_BYTES: usize = 512;
/// Largest `max_versions` a secret may set.
pub const MAX_VERSIONS_LIMIT: u32 = 1000;
/// Per-path write locks (a path always maps to the same one).
const STRIPES: usize = 1024;
/// Changes a watcher may fall behind by before it is told to re-read (`resync`).
const CHANGE_BACKLOG: usize = 1024;
/// A rotation that failed is tried again this much later.
const ROTATION_RETRY_MS: u64 = 60_000;

pub use crate::runtime::clock::{Clock, ManualClock, SystemClock};

/// How a version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Put,
    Rotate,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Put => "put",
            Origin::Rotate => "rotate",
        }
    }
}

/// One version's times. Its value lives in its own record until it is destroyed or pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_ms: Option<u64>,
    pub origin: Origin,
}

/// What a version is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Live,
    /// Soft-deleted at this time (by Delete, or by `delete_version_after`).
    Deleted(u64),
    Destroyed(u64),
}

/// A secret's metadata: settings and every kept version's times; never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The latest version written (it may be deleted or destroyed).
    pub current: u64,
    /// 0: the `[secrets] max_versions` default.
    #[serde(default)]
    pub max_versions: u32,
    #[serde(default)]
    pub cas_required: bool,
    /// 0: versions are not deleted by age.
    #[serde(default)]
    pub delete_after_s: u64,
    /// 0: no scheduled rotation.
    #[serde(default)]
    pub rotation_period_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_ms: Option<u64>,
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
    pub versions: BTreeMap<u64, VersionInfo>,
}

/// Record version 2 of [`SecretMeta`] is binary ([`SecretMeta::write_payload`]): a put rewrites
/// it with every kept version's times, so it is encoded once per put and copied by sled on every
/// update of its leaf. Version 1, JSON, is still read (and rewritten as version 2 by the next
/// change of that path).
impl Record for SecretMeta {
    const VERSION: u8 = 2;

    fn upgrade(version: u8, payload: &[u8]) -> Result<Self, String> {
        match version {
            1 => {
                serde_json::from_slice(payload).map_err(|err| format!("undecodable payload: {err}"))
            }
            other => Err(format!("no upgrade from record version {other}")),
        }
    }

    /// Little-endian, fixed widths: `created_ms u64, updated_ms u64, current u64, max_versions
    /// u32, flags u8 (1 cas_required, 2 next_rotation_ms set, 4 generator set), delete_after_s u64,
    /// rotation_period_s u64, [next_rotation_ms u64], [generator: len u32, bytes], custom: count
    /// u32, then per entry key and value (len u32, bytes each), versions: count u32, then per
    /// version `version u64, created_ms u64, flags u8 (1 deleted, 2 destroyed, 4 rotate)`,
    /// [deleted_ms u64], [destroyed_ms u64]`.
    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let len = |n: usize| u32::try_from(n).map_err(serde::ser::Error::custom);
        out.reserve(64 + self.versions.len() * 33);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.updated_ms.to_le_bytes());
        out.extend_from_slice(&self.current.to_le_bytes());
        out.extend_from_slice(&self.max_versions.to_le_bytes());
        let flags = u8::from(self.cas_required)
            | if self.next_rotation_ms.is_some() {
                2
            } else {
                0
            }
            | if self.generator.is_some() { 4 } else { 0 };
        out.push(flags);
        out.extend_from_slice(&self.delete_after_s.to_le_bytes());
        out.extend_from_slice(&self.rotation_period_s.to_le_bytes());
        if let Some(at) = self.next_rotation_ms {
            out.extend_from_slice(&at.to_le_bytes());
        }
        let bytes = |out: &mut Vec<u8>, b: &[u8]| -> Result<(), serde_json::Error> {
            out.extend_from_slice(&len(b.len())?.to_le_bytes());
            out.extend_from_slice(b);
            Ok(())
        };
        if let Some(generator) = &self.generator {
            bytes(out, generator.as_bytes())?;
        }
        out.extend_from_slice(&len(self.custom.len())?.to_le_bytes());
        for (key, value) in &self.custom {
            bytes(out, key.as_bytes())?;
            bytes(out, value.as_bytes())?;
        }
        out.extend_from_slice(&len(self.versions.len())?.to_le_bytes());
        for (version, info) in &self.versions {
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&info.created_ms.to_le_bytes());
            let flags = if info.deleted_ms.is_some() { 1 } else { 0 }
                | if info.destroyed_ms.is_some() { 2 } else { 0 }
                | if info.origin == Origin::Rotate { 4 } else { 0 };
            out.push(flags);
            for at in [info.deleted_ms, info.destroyed_ms].into_iter().flatten() {
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        Ok(())
    }

    fn read_payload(payload: &[u8]) -> Result<Self, String> {
        let mut r = Reader(payload);
        let created_ms = r.u64()?;
        let updated_ms = r.u64()?;
        let current = r.u64()?;
        let max_versions = u32::from_le_bytes(r.array()?);
        let [flags] = r.array()?;
        let delete_after_s = r.u64()?;
        let rotation_period_s = r.u64()?;
        let next_rotation_ms = if flags & 2 != 0 { Some(r.u64()?) } else { None };
        let generator = if flags & 4 != 0 {
            Some(r.text()?)
        } else {
            None
        };
        let mut custom = BTreeMap::new();
        for _ in 0..r.u32()? {
            let key = r.text()?;
            custom.insert(key, r.text()?);
        }
        let mut versions = BTreeMap::new();
        for _ in 0..r.u32()? {
            let version = r.u64()?;
            let created_ms = r.u64()?;
            let [vflags] = r.array()?;
            let deleted_ms = if vflags & 1 != 0 {
                Some(r.u64()?)
            } else {
                None
            };
            let destroyed_ms = if vflags & 2 != 0 {
                Some(r.u64()?)
            } else {
                None
            };
            let origin = if vflags & 4 != 0 {
                Origin::Rotate
            } else {
                Origin::Put
            };
            versions.insert(
                version,
                VersionInfo {
                    created_ms,
                    deleted_ms,
                    destroyed_ms,
                    origin,
                },
            );
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the metadata", r.0.len()));
        }
        Ok(SecretMeta {
            created_ms,
            updated_ms,
            current,
            max_versions,
            cas_required: flags & 1 != 0,
            delete_after_s,
            rotation_period_s,
            generator,
            next_rotation_ms,
            custom,
            versions,
        })
    }
}

/// Reads a binary payload front to back; every shortfall is an error, never a panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| "truncated metadata".to_owned())?;
        self.0 = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn text(&mut self) -> Result<String, String> {
        let len = usize::try_from(self.u32()?).map_err(|_| "truncated metadata".to_owned())?;
        let (bytes, rest) = self
            .0
            .split_at_checked(len)
            .ok_or_else(|| "truncated metadata".to_owned())?;
        self.0 = rest;
        String::from_utf8(bytes.to_vec()).map_err(|_| "metadata text is not UTF-8".to_owned())
    }
}

impl SecretMeta {
    fn new(now_ms: u64) -> SecretMeta {
        SecretMeta {
            created_ms: now_ms,
            updated_ms: now_ms,
            current: 0,
            max_versions: 0,
            cas_required: false,
            delete_after_s: 0,
            rotation_period_s: 0,
            generator: None,
            next_rotation_ms: None,
            custom: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }

    /// The state of `info` at `now_ms` (age deletion included).
    pub fn state_of(&self, info: &VersionInfo, now_ms: u64) -> VersionState {
        if let Some(at) = info.destroyed_ms {
            return VersionState::Destroyed(at);
        }
        if let Some(at) = info.deleted_ms {
            return VersionState::Deleted(at);
        }
        if self.delete_after_s > 0 {
            let due = info
                .created_ms
                .saturating_add(self.delete_after_s.saturating_mul(1000));
            if due <= now_ms {
                return VersionState::Deleted(due);
            }
        }
        VersionState::Live
    }

    /// The oldest version kept.
    pub fn oldest(&self) -> u64 {
        self.versions.keys().next().copied().unwrap_or(0)
    }
}

/// A sealed version as stored. Record version 2 is binary (see [`StoredVersion::write_payload`]);
/// version 1, JSON with base64 fields, is still read (and rewritten as version 2 by a master-key
/// rotation).
#[derive(Serialize, Deserialize)]
struct StoredVersion(Sealed);

/// Record version 1 of a sealed version.
#[derive(Serialize, Deserialize)]
struct StoredVersionV1 {
    kek: String,
    key: String,
    value: String,
}

impl Record for StoredVersion {
    const VERSION: u8 = 2;

    fn upgrade(version: u8, payload: &[u8]) -> Result<Self, String> {
        match version {
            1 => upgrade_v1(payload).map(StoredVersion),
            other => Err(format!("no upgrade from record version {other}")),
        }
    }

    /// `kek length (u8) || kek || wrapped key length (u16 LE) || wrapped key || ciphertext`: no
    /// JSON or base64 on the way in or out (a Get decodes it in place, [`SealedRef::parse`]).
    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let sealed = &self.0;
        let kek = u8::try_from(sealed.kek.len()).map_err(serde::ser::Error::custom)?;
        let key = u16::try_from(sealed.wrapped_key.len()).map_err(serde::ser::Error::custom)?;
        out.reserve(3 + sealed.kek.len() + sealed.wrapped_key.len() + sealed.ciphertext.len());
        out.push(kek);
        out.extend_from_slice(sealed.kek.as_bytes());
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&sealed.wrapped_key);
        out.extend_from_slice(&sealed.ciphertext);
        Ok(())
    }

    fn read_payload(payload: &[u8]) -> Result<Self, String> {
        SealedRef::parse(payload)
            .and_then(SealedRef::to_owned)
            .map(StoredVersion)
            .ok_or_else(|| "undecodable sealed version".to_owned())
    }
}

fn upgrade_v1(payload: &[u8]) -> Result<Sealed, String> {
    let record: StoredVersionV1 =
        serde_json::from_slice(payload).map_err(|err| format!("undecodable payload: {err}"))?;
    let decoded = |field: &str, text: &str| {
        B64.decode(text)
            .map_err(|err| format!("undecodable {field}: {err}"))
    };
    Ok(Sealed {
        wrapped_key: decoded("key", &record.key)?,
        ciphertext: decoded("value", &record.value)?,
        kek: record.kek,
    })
}

impl SealedRef<'_> {
    /// Reads a record version 2 payload in place; `None` when it is malformed.
    fn parse(payload: &[u8]) -> Option<SealedRef<'_>> {
        let (&kek_len, rest) = payload.split_first()?;
        let (kek, rest) = rest.split_at_checked(usize::from(kek_len))?;
        let (key_len, rest) = rest.split_at_checked(2)?;
        let key_len = usize::from(u16::from_le_bytes([key_len[0], key_len[1]]));
        let (wrapped_key, ciphertext) = rest.split_at_checked(key_len)?;
        Some(SealedRef {
            kek,
            wrapped_key,
            ciphertext,
        })
    }
}

/// What kind of change a [`Change`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Rotate,
    Delete,
    Undelete,
    Destroy,
    Metadata,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Rotate => "rotate",
            ChangeKind::Delete => "delete",
            ChangeKind::Undelete => "undelete",
            ChangeKind::Destroy => "destroy",
            ChangeKind::Metadata => "metadata",
        }
    }
}

/// One change, as watchers see it: never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub version: u64,
    pub kind: ChangeKind,
    pub at_ms: u64,
}

/// Who made a change, for the audit record.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub principal: String,
    pub correlation_id: String,
}

impl Actor {
    /// The daemon itself (scheduled rotation).
    pub fn daemon() -> Actor {
        Actor {
            principal: "brainstemd".to_owned(),
            correlation_id: String::new(),
        }
    }
}

/// A Put, validated by the API.
pub struct PutRequest {
    /// Canonical ([`path::canonical`]).
    pub path: String,
    /// `None`: generate with the request's or the secret's generator.
    pub value: Option<Zeroizing<Vec<u8>>>,
    pub cas: Option<u64>,
    /// 0: keep the secret's setting.
    pub rotation_period_s: u64,
    pub generator: Option<Generator>,
}

/// A new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
    pub created_ms: u64,
}

/// A value read.
pub struct Value {
    pub value: Vec<u8>,
    pub version: u64,
    pub created_ms: u64,
}

/// Changes to a secret's settings; `None` keeps a setting.
#[derive(Debug, Clone, Default)]
pub struct MetadataUpdate {
    pub max_versions: Option<u32>,
    pub cas_required: Option<bool>,
    pub delete_after_s: Option<u64>,
    pub rotation_period_s: Option<u64>,
    /// `Some(None)`: remove the generator.
    pub generator: Option<Option<Generator>>,
    pub custom: Option<BTreeMap<String, String>>,
}

/// Delete, Undelete or Destroy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOp {
    Delete,
    Undelete,
    Destroy,
}

/// A held per-path write lock; owned, so the store's committer can release it once the change is
/// applied and mirrored (see [`Secrets::commit`]).
type PathLock = tokio::sync::OwnedMutexGuard<()>;

/// The in-memory mirror of the metadata.
#[derive(Default)]
struct State {
    metas: BTreeMap<String, Arc<SecretMeta>>,
    /// Paths whose metadata record is damaged: reads answer DATA_LOSS.
    damaged: BTreeSet<String>,
    /// `(next rotation, path)` of every secret with a rotation period.
    due: BTreeSet<(u64, String)>,
    /// What the log redactor counted for each stored version's value, by path, oldest version
    /// first (a put appends, pruning takes from the front): handed back when the version is pruned
    /// or destroyed. A version without one (value shorter than the redactor's minimum, refused at
    /// its cap, or not opened at start) has nothing to forget.
    remembered: HashMap<String, VecDeque<(u64, Remembered)>>,
    /// What Gets kept of the versions they read, by path and version: the unwrapped data key, so a
    /// repeated Get skips the unwrap, and (within `[secrets] sealed_value_cache_bytes`) the sealed
    /// value, so it reads nothing from the store either ([`Kept`]). Taken out with their version
    /// (pruned, destroyed, or re-wrapped); at most `[secrets] data_key_cache` in all.
    kept_keys: HashMap<String, Vec<(u64, Arc<Kept>)>, foldhash::fast::RandomState>,
    kept_key_count: usize,
    /// Bytes of sealed values held in `kept_keys`.
    kept_value_bytes: usize,
    /// Versions a change is taking out of the store (destroyed or pruned), by path, from just
    /// before its batch is applied until the change is mirrored here: a Get that finds such a
    /// record gone in between answers NOT_FOUND, not DATA_LOSS.
    removing: HashMap<String, Vec<u64>>,
}

/// What a Get kept of one version. The sealed value is the ciphertext exactly as the store holds
/// it (a version's value is never rewritten: a re-wrap changes only the wrapped key, and takes the
/// kept version out all the same), still authenticated by its data key on every open. Without
/// it (over the byte budget, or a key kept before there was room) the value is read from the
/// store and the key is used only for the very bytes it was unwrapped from
/// ([`DataKey::unwraps`]).
struct Kept {
    key: DataKey,
    sealed_value: Option<Box<[u8]>>,
}

impl Kept {
    fn value_bytes(&self) -> usize {
        self.sealed_value.as_ref().map_or(0, |v| v.len())
    }
}

/// The limits of what Gets keep ([`State::kept_keys`]).
#[derive(Debug, Clone, Copy)]
struct KeptLimits {
    /// `[secrets] data_key_cache`: versions kept.
    keys: usize,
    /// `[secrets] sealed_value_cache_bytes`: bytes of sealed values kept.
    value_bytes: usize,
}

impl State {
    fn meta(&self, path: &str) -> Result<Arc<SecretMeta>, ServiceError> {
        if let Some(meta) = self.metas.get(path) {
            return Ok(meta.clone());
        }
        if self.damaged.contains(path) {
            return Err(ServiceError::DataLoss(format!(
                "the metadata of {path} is damaged: its versions cannot be read or changed"
            )));
        }
        Err(ServiceError::NotFound(format!(
            "secret {path} does not exist"
        )))
    }

    fn kept(&self, path: &str, version: u64) -> Option<Arc<Kept>> {
        let kept = self.kept_keys.get(path)?;
        kept.iter()
            .find(|(v, _)| *v == version)
            .map(|(_, kept)| kept.clone())
    }

    /// Keeps what a Get read of `version` of `path`, if that version is still stored (a Destroy,
    /// a prune or a re-wrap applied since the Get read it has taken it out) and, for a version
    /// with nothing kept yet, `limits.keys` is not reached. The sealed value is kept only within
    /// `limits.value_bytes`.
    fn keep(&mut self, path: &str, version: u64, mut kept: Kept, limits: KeptLimits) {
        let stored = self
            .metas
            .get(path)
            .and_then(|meta| meta.versions.get(&version))
            .is_some_and(|info| info.destroyed_ms.is_none());
        if !stored {
            return;
        }
        let entries = self.kept_keys.entry(path.to_owned()).or_default();
        let slot = entries.iter().position(|(v, _)| *v == version);
        let freed = slot.map_or(0, |at| entries[at].1.value_bytes());
        if self.kept_value_bytes - freed + kept.value_bytes() > limits.value_bytes {
            kept.sealed_value = None;
        }
        self.kept_value_bytes = self.kept_value_bytes - freed + kept.value_bytes();
        if let Some(at) = slot {
            entries[at].1 = Arc::new(kept);
        } else if self.kept_key_count < limits.keys {
            entries.push((version, Arc::new(kept)));
            self.kept_key_count += 1;
        } else if entries.is_empty() {
            self.kept_keys.remove(path);
        }
    }

    /// Drops what was kept of `versions` of `path` (pruned, destroyed or re-wrapped).
    fn drop_kept(&mut self, path: &str, versions: &[u64]) {
        if versions.is_empty() {
            return;
        }
        let Some(entries) = self.kept_keys.get_mut(path) else {
            return;
        };
        let before = entries.len();
        let mut freed = 0;
        entries.retain(|(v, kept)| {
            let drop = versions.contains(v);
            if drop {
                freed += kept.value_bytes();
            }
            !drop
        });
        self.kept_key_count -= before - entries.len();
        self.kept_value_bytes -= freed;
        if entries.is_empty() {
            self.kept_keys.remove(path);
        }
    }

    /// Records `added` and takes out what was counted for the `removed` versions of `path`;
    /// returns the latter, for the redactor.
    fn swap_remembered(
        &mut self,
        path: &str,
        removed: &[u64],
        added: Option<(u64, Remembered)>,
    ) -> Vec<Remembered> {
        let added = added.filter(|(_, r)| !r.is_empty());
        let mut gone = Vec::new();
        if let Some(versions) = self.remembered.get_mut(path) {
            for version in removed {
                if let Ok(at) = versions.binary_search_by_key(version, |(v, _)| *v) {
                    gone.extend(versions.remove(at).map(|(_, r)| r));
                }
            }
            if let Some((version, remembered)) = added {
                let at = versions.partition_point(|(v, _)| *v < version);
                versions.insert(at, (version, remembered));
            }
            if versions.is_empty() {
                self.remembered.remove(path);
            }
        } else if let Some(added) = added {
            self.remembered
                .insert(path.to_owned(), VecDeque::from([added]));
        }
        gone
    }
}

/// What a change does to the log redactor once it is applied.
#[derive(Default)]
struct Redaction {
    /// The new version, and what remembering its value counted (already counted: taken out again
    /// if the change is not applied).
    added: Option<(u64, Remembered)>,
    /// Versions whose values are no longer stored (pruned or destroyed).
    removed: Vec<u64>,
}

/// The secrets store.
pub struct Secrets {
    tree: Tree,
    keys: Arc<KeySet>,
    rng: SystemRandom,
    clock: Arc<dyn Clock>,
    max_value_bytes: usize,
    default_max_versions: u32,
    /// What Gets may keep (see [`State::kept_keys`]).
    kept_limits: KeptLimits,
    /// Shared with the store's committer, which mirrors a change once it is applied.
    state: Arc<RwLock<State>>,
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
    changes: broadcast::Sender<Change>,
    /// Woken when the rotation schedule changes.
    schedule: Arc<tokio::sync::Notify>,
    audit: OnceLock<Arc<AuditLog>>,
    metrics: SecretsMetrics,
    /// The process-wide one ([`crate::runtime::redact::global`]); tests give each store its own.
    redactor: &'static Redactor,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Why the secrets could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn meta_key(path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + path.len());
    key.extend_from_slice(b"m:");
    key.extend_from_slice(path.as_bytes());
    key
}

/// An opened version's value, and what to keep of it when its data key was unwrapped for this
/// read.
type Opened = (Zeroizing<Vec<u8>>, Option<Kept>);

fn version_key(path: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + path.len());
    key.extend_from_slice(b"v:");
    key.extend_from_slice(path.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// DATA_LOSS for one version: `why` it does not read.
fn lost(path: &str, version: u64, why: &str) -> ServiceError {
    ServiceError::DataLoss(format!(
        "version {version} of {path} {why}; the other versions are unaffected"
    ))
}

fn value_lost(path: &str, version: u64) -> ServiceError {
    lost(path, version, "is damaged (its ciphertext does not open)")
}

fn invalid(field: &str, why: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(vec![FieldViolation::new(field, why)])
}

/// A change on its way to the store, and what follows once the committer has applied it.
struct Mirror {
    state: Arc<RwLock<State>>,
    schedule: Arc<tokio::sync::Notify>,
    changes: broadcast::Sender<Change>,
    metrics: SecretsMetrics,
    audit: Option<Arc<AuditLog>>,
    path: String,
    meta: SecretMeta,
    kind: ChangeKind,
    versions: Vec<u64>,
    redactor: &'static Redactor,
    redaction: Redaction,
    record: Option<AuditRecord>,
    /// `record` was written (and synced) before the change: fail-closed auditing.
    audited_first: bool,
    lock: PathLock,
}

impl Mirror {
    /// Runs on the store's committer right after the batch was applied (`Ok`) or refused: mirrors
    /// the new metadata, tells watchers and the audit log, and releases the path's lock. Quick and
    /// never waits on the store.
    fn applied(self, applied: Result<(), &StoreError>) {
        let Mirror {
            state,
            schedule,
            changes,
            metrics,
            audit,
            path,
            meta,
            kind,
            versions,
            redactor,
            redaction,
            record,
            audited_first,
            lock,
        } = self;
        if let Err(err) = applied {
            if !redaction.removed.is_empty() {
                let mut state = state.write().unwrap_or_else(|e| e.into_inner());
                state.removing.remove(&path);
            }
            if let (true, Some(audit), Some(mut record)) = (audited_first, audit, record) {
                // The record written first announced a change that did not happen: say so.
                record.allowed = false;
                record.reasons.push(format!("not applied: {err}"));
                let _ = audit.record(record);
            }
            drop(lock);
            // The new value is not stored after all.
            if let Some((_, remembered)) = &redaction.added {
                redactor.forget_remembered(remembered);
            }
            return;
        }
        let now = meta.updated_ms;
        let forgotten;
        let rescheduled;
        {
            let mut state = state.write().unwrap_or_else(|e| e.into_inner());
            forgotten = state.swap_remembered(&path, &redaction.removed, redaction.added);
            state.drop_kept(&path, &redaction.removed);
            state.removing.remove(&path);
            metrics.kept(state.kept_key_count, state.kept_value_bytes);
            let before = state.metas.get(&path).and_then(|old| old.next_rotation_ms);
            rescheduled = before != meta.next_rotation_ms;
            if rescheduled {
                if let Some(at) = before {
                    state.due.remove(&(at, path.clone()));
                }
                if let Some(at) = meta.next_rotation_ms {
                    state.due.insert((at, path.clone()));
                }
            }
            state.damaged.remove(&path);
            state.metas.insert(path.clone(), Arc::new(meta));
            metrics.stored(state.metas.len());
        }
        drop(lock);
        // The rotation worker sleeps until the earliest due time: only a change of a due time can
        // move it (a put of a secret without a rotation period leaves the worker asleep).
        if rescheduled {
            schedule.notify_one();
        }
        for remembered in &forgotten {
            redactor.forget_remembered(remembered);
        }
        metrics.changed(kind.as_str());
        for &version in &versions {
            let _ = changes.send(Change {
                path: path.clone(),
                version,
                kind,
                at_ms: now,
            });
        }
        if !audited_first {
            if let (Some(audit), Some(record)) = (audit, record) {
                if let Err(err) = audit.record(record) {
                    tracing::warn!(error = %err, secret = %path, "secret change not audited");
                }
            }
        }
    }
}

impl Secrets {
    /// Opens the secrets in `tree`: loads every secret's metadata into memory, hands every stored
    /// value to the log redactor, and builds the rotation schedule. A damaged record is reported
    /// and answered DATA_LOSS later; it does not stop the start.
    pub fn open(
        tree: Tree,
        keys: Arc<KeySet>,
        config: &config::SecretsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Secrets, OpenFailure> {
        Self::open_with_redactor(tree, keys, config, clock, crate::runtime::redact::global())
    }

    /// [`open`](Self::open), feeding `redactor` instead of the process-wide one.
    fn open_with_redactor(
        tree: Tree,
        keys: Arc<KeySet>,
        config: &config::SecretsConfig,
        clock: Arc<dyn Clock>,
        redactor: &'static Redactor,
    ) -> Result<Secrets, OpenFailure> {
        let mut state = State::default();
        for item in tree.scan_prefix::<SecretMeta>(b"m:") {
            match item {
                Ok((key, meta)) => {
                    let path = String::from_utf8_lossy(&key[2..]).into_owned();
                    if let Some(at) = meta.next_rotation_ms {
                        state.due.insert((at, path.clone()));
                    }
                    state.metas.insert(path, Arc::new(meta));
                }
                Err(StoreError::Corrupt { key, reason, .. }) => {
                    let path = key.strip_prefix("m:").unwrap_or(&key).to_owned();
                    tracing::error!(secret = %path, %reason, "a secret's metadata is damaged; its reads answer DATA_LOSS");
                    state.damaged.insert(path);
                }
                Err(err) => return Err(err.into()),
            }
        }
        let (changes, _) = broadcast::channel(CHANGE_BACKLOG);
        let secrets = Secrets {
            tree,
            keys,
            rng: SystemRandom::new(),
            clock,
            max_value_bytes: usize::try_from(config.max_value_bytes).unwrap_or(usize::MAX),
            default_max_versions: config.max_versions,
            kept_limits: KeptLimits {
                keys: usize::try_from(config.data_key_cache).unwrap_or(usize::MAX),
                value_bytes: usize::try_from(config.sealed_value_cache_bytes).unwrap_or(usize::MAX),
            },
            state: Arc::new(RwLock::new(state)),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            changes,
            schedule: Arc::new(tokio::sync::Notify::new()),
            audit: OnceLock::new(),
            metrics: SecretsMetrics::new(),
            redactor,
        };
        secrets.redact_stored_values();
        let state = secrets.read_state();
        secrets.metrics.stored(state.metas.len());
        drop(state);
        Ok(secrets)
    }

    /// Records changes in the audit log from now on (the log exists once the daemon's shared parts
    /// are up, after the set-up step that opened the secrets).
    pub fn set_audit(&self, audit: Arc<AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// The largest value a Put may carry.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn stripe(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.stripes[(hash % STRIPES as u64) as usize].clone()
    }

    /// Hands every stored value to the log redactor and keeps what it counted (see
    /// [`State::remembered`]).
    fn redact_stored_values(&self) {
        let mut state = self.write_state();
        let state = &mut *state;
        let mut unreadable = 0u64;
        for (path, meta) in &state.metas {
            let mut remembered = VecDeque::new();
            for (version, info) in &meta.versions {
                if info.destroyed_ms.is_some() {
                    continue;
                }
                // Nothing is kept at start: what Gets read is kept as they read it.
                match self.open_version(path, *version, None, 0) {
                    Ok((value, _)) => {
                        let counted = self.redactor.remember(&value);
                        if !counted.is_empty() {
                            remembered.push_back((*version, counted));
                        }
                    }
                    Err(_) => unreadable += 1,
                }
            }
            if !remembered.is_empty() {
                state.remembered.insert(path.clone(), remembered);
            }
        }
        if unreadable > 0 {
            tracing::error!(
                versions = unreadable,
                "secret versions do not open (damaged, or sealed under another master key); reading them answers DATA_LOSS"
            );
        }
    }

    /// Opens one stored version, read from the store, with `kept`, its data key from an earlier
    /// read, if that is still the key of the version as stored; else unwraps the key, and returns
    /// what to keep beside the value (the sealed value too when it is at most `value_room` bytes).
    /// The error is the DATA_LOSS the caller gets.
    fn open_version(
        &self,
        path: &str,
        version: u64,
        kept: Option<&DataKey>,
        value_room: usize,
    ) -> Result<Opened, ServiceError> {
        let payload = match self.tree.get_payload(&version_key(path, version)) {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err(lost(path, version, "is missing from the store")),
            Err(StoreError::Corrupt { .. }) => return Err(lost(path, version, "is damaged")),
            Err(err) => return Err(err.into()),
        };
        // Version 2 is read in place; version 1 (JSON, base64) is decoded into a copy.
        let upgraded;
        let sealed = match payload.get() {
            (2, bytes) => SealedRef::parse(bytes),
            (1, bytes) => {
                upgraded = upgrade_v1(bytes).ok();
                upgraded.as_ref().map(Sealed::as_ref)
            }
            _ => None,
        }
        .ok_or_else(|| lost(path, version, "is damaged"))?;
        if let Some(key) = kept.filter(|key| key.unwraps(sealed)) {
            let value = key
                .open(path, version, sealed.ciphertext)
                .map_err(|_| value_lost(path, version))?;
            return Ok((value, None));
        }
        let keys = self.keys.keys();
        let Some(master) = sealed.kek_id().and_then(|id| keys.by_id(id)) else {
            return Err(lost(
                path,
                version,
                &format!(
                    "is sealed under master key {}, which is not in use (the current one is {})",
                    String::from_utf8_lossy(sealed.kek),
                    keys.current.id()
                ),
            ));
        };
        let key = DataKey::unwrap(master, path, version, sealed)
            .map_err(|_| lost(path, version, "is damaged (its data key does not unwrap)"))?;
        let value = key
            .open(path, version, sealed.ciphertext)
            .map_err(|_| value_lost(path, version))?;
        let sealed_value =
            (sealed.ciphertext.len() <= value_room).then(|| sealed.ciphertext.into());
        Ok((value, Some(Kept { key, sealed_value })))
    }

    fn meta(&self, path: &str) -> Result<Arc<SecretMeta>, ServiceError> {
        self.read_state().meta(path)
    }

    /// `version` of `meta` if a Get may read it now; else the NOT_FOUND it answers (never
    /// existed or pruned, soft-deleted, destroyed).
    fn readable<'m>(
        &self,
        path: &str,
        version: u64,
        meta: &'m SecretMeta,
    ) -> Result<&'m VersionInfo, ServiceError> {
        let info = meta
            .versions
            .get(&version)
            .ok_or_else(|| missing_version(path, version, meta))?;
        // Only age deletion needs the time.
        let now_ms = if meta.delete_after_s > 0 {
            self.clock.now_ms()
        } else {
            0
        };
        match meta.state_of(info, now_ms) {
            VersionState::Live => Ok(info),
            VersionState::Deleted(_) => Err(ServiceError::NotFound(format!(
                "version {version} of {path} is deleted (Undelete restores it)"
            ))),
            VersionState::Destroyed(_) => Err(ServiceError::NotFound(format!(
                "version {version} of {path} is destroyed"
            ))),
        }
    }

    /// A version that did not read (`err`) may have been destroyed or pruned since the Get looked
    /// at the metadata: the store drops its record just before the change is mirrored in memory
    /// ([`State::removing`]). Then the Get answers NOT_FOUND, as a moment later, not DATA_LOSS.
    fn gone_while_read(&self, path: &str, version: u64, err: ServiceError) -> ServiceError {
        if !matches!(err, ServiceError::DataLoss(_)) {
            return err;
        }
        let (meta, removing) = {
            let state = self.read_state();
            let removing = state
                .removing
                .get(path)
                .is_some_and(|versions| versions.contains(&version));
            (state.meta(path).ok(), removing)
        };
        if removing {
            return ServiceError::NotFound(format!(
                "version {version} of {path} is being destroyed or pruned"
            ));
        }
        match meta.map(|meta| self.readable(path, version, &meta).err()) {
            Some(Some(not_found)) => not_found,
            _ => err,
        }
    }

    /// The value of `version` (or the current one) of `path`.
    pub fn get(&self, path: &str, version: Option<u64>) -> Result<Value, ServiceError> {
        let result = self.get_inner(path, version);
        self.metrics.read(match &result {
            Ok(_) => ReadResult::Ok,
            Err(ServiceError::DataLoss(_)) => ReadResult::DataLoss,
            Err(_) => ReadResult::NotFound,
        });
        result
    }

    fn get_inner(&self, path: &str, version: Option<u64>) -> Result<Value, ServiceError> {
        let limits = self.kept_limits;
        let (meta, version, kept, may_keep, value_room) = {
            let state = self.read_state();
            let meta = state.meta(path)?;
            let version = version.filter(|v| *v > 0).unwrap_or(meta.current);
            let kept = state.kept(path, version);
            // A key unwrapped now replaces a kept one that no longer matches, or takes free room.
            let may_keep = kept.is_some() || state.kept_key_count < limits.keys;
            let value_room = limits.value_bytes.saturating_sub(state.kept_value_bytes);
            (meta, version, kept, may_keep, value_room)
        };
        let info = self.readable(path, version, &meta)?;
        let mut value = match kept.as_deref() {
            // Kept whole: nothing to read from the store.
            Some(Kept {
                key,
                sealed_value: Some(sealed_value),
            }) => key
                .open(path, version, sealed_value)
                .map_err(|_| value_lost(path, version))?,
            kept => {
                let (value, unwrapped) = self
                    .open_version(path, version, kept.map(|k| &k.key), value_room)
                    .map_err(|err| self.gone_while_read(path, version, err))?;
                if let Some(unwrapped) = unwrapped.filter(|_| may_keep) {
                    let mut state = self.write_state();
                    state.keep(path, version, unwrapped, limits);
                    self.metrics
                        .kept(state.kept_key_count, state.kept_value_bytes);
                }
                value
            }
        };
        Ok(Value {
            value: std::mem::take(&mut *value),
            version,
            created_ms: info.created_ms,
        })
    }

    /// Up to `limit` paths under `prefix` (canonical, see [`path::canonical_prefix`]) after
    /// `after`, that `visible` lets through; and where the next page starts.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> (Vec<String>, Option<String>) {
        use std::ops::Bound;
        let state = self.read_state();
        let start = match after {
            Some(after) => Bound::Excluded(after.to_owned()),
            None => Bound::Included(prefix.to_owned()),
        };
        let mut paths = Vec::new();
        let mut more = false;
        for path in state
            .metas
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(prefix))
            .filter(|p| path::under(p, prefix) && visible(p))
        {
            if paths.len() == limit {
                more = true;
                break;
            }
            paths.push(path.clone());
        }
        let next = if more { paths.last().cloned() } else { None };
        (paths, next)
    }

    /// A secret's metadata.
    pub fn metadata(&self, path: &str) -> Result<Arc<SecretMeta>, ServiceError> {
        self.meta(path)
    }

    /// The clock's now, for the API's view of version states.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Stores a new version.
    pub async fn put(&self, actor: &Actor, request: PutRequest) -> Result<Written, ServiceError> {
        let lock = self.stripe(&request.path).lock_owned().await;
        self.put_locked(actor, request, Origin::Put, lock).await
    }

    /// Stores a generated version now (RotateNow, and the rotation worker).
    pub async fn rotate(&self, actor: &Actor, path: &str) -> Result<Written, ServiceError> {
        let lock = self.stripe(path).lock_owned().await;
        let request = PutRequest {
            path: path.to_owned(),
            value: None,
            cas: None,
            rotation_period_s: 0,
            generator: None,
        };
        self.put_locked(actor, request, Origin::Rotate, lock).await
    }

    async fn put_locked(
        &self,
        actor: &Actor,
        request: PutRequest,
        origin: Origin,
        lock: PathLock,
    ) -> Result<Written, ServiceError> {
        let path = request.path.as_str();
        let old = match self.meta(path) {
            Ok(meta) => Some(meta),
            Err(ServiceError::NotFound(_)) => None,
            Err(err) => return Err(err),
        };
        if origin == Origin::Rotate && old.is_none() {
            return Err(ServiceError::NotFound(format!(
                "secret {path} does not exist"
            )));
        }
        let current = old.as_ref().map_or(0, |m| m.current);
        if origin == Origin::Put {
            check_and_set(path, old.as_deref(), request.cas)?;
        }
        let generator = match (
            &request.generator,
            old.as_ref().and_then(|m| m.generator.as_ref()),
        ) {
            (Some(g), _) => Some(*g),
            (None, Some(text)) => Some(
                Generator::parse(text, "generator")
                    .map_err(|v| ServiceError::InvalidArgument(vec![v]))?,
            ),
            (None, None) => None,
        };
        if request.rotation_period_s > 0 && generator.is_none() {
            return Err(invalid(
                "generator",
                "a rotation period needs a generator (alphanumeric:N, hex:N or bytes:N)",
            ));
        }
        let value = match request.value {
            Some(value) => value,
            None => {
                let Some(generator) = generator else {
                    return Err(if origin == Origin::Rotate {
                        ServiceError::FailedPrecondition(format!(
                            "{path} has no generator to rotate with; set one with Put or UpdateMetadata"
                        ))
                    } else {
                        invalid(
                            "value",
                            "required (or set generator to store a generated value)",
                        )
                    });
                };
                generator.generate(&self.rng).map_err(|_| {
                    ServiceError::internal(
                        "secrets",
                        "generate a value",
                        "the system random source failed",
                    )
                })?
            }
        };
        let now = self.clock.now_ms();
        let version = current + 1;
        let sealed = envelope::seal(&self.keys.current(), &self.rng, path, version, &value)
            .map_err(|err| ServiceError::internal("secrets", "seal a value", err))?;
        let mut meta = old
            .as_deref()
            .cloned()
            .unwrap_or_else(|| SecretMeta::new(now));
        meta.current = version;
        meta.updated_ms = now;
        meta.versions.insert(
            version,
            VersionInfo {
                created_ms: now,
                deleted_ms: None,
                destroyed_ms: None,
                origin,
            },
        );
        if let Some(g) = request.generator {
            meta.generator = Some(g.to_string());
        }
        if request.rotation_period_s > 0 {
            meta.rotation_period_s = request.rotation_period_s;
        }
        if meta.rotation_period_s > 0 {
            meta.next_rotation_ms =
                Some(now.saturating_add(meta.rotation_period_s.saturating_mul(1000)));
        }
        let mut batch = Batch::default();
        let removed = self.prune(&mut meta, &mut batch, path);
        batch.put(
            &self.tree,
            &version_key(path, version),
            &StoredVersion(sealed),
        )?;
        let kind = match origin {
            Origin::Put => ChangeKind::Put,
            Origin::Rotate => ChangeKind::Rotate,
        };
        // Before the value is stored, so no log line written after it is readable can show it.
        let redaction = Redaction {
            added: Some((version, self.redactor.remember(&value))),
            removed,
        };
        self.commit(lock, actor, path, meta, batch, kind, &[version], redaction)
            .await?;
        Ok(Written {
            version,
            created_ms: now,
        })
    }

    /// Removes the oldest versions beyond `max_versions` from `meta` and `batch`; returns those
    /// whose values were stored, to be taken out of the log redactor once the change is applied
    /// (by what remembering them counted: the pruned versions are not read).
    fn prune(&self, meta: &mut SecretMeta, batch: &mut Batch, path: &str) -> Vec<u64> {
        let keep = match meta.max_versions {
            0 => self.default_max_versions,
            n => n,
        }
        .max(1) as usize;
        let mut removed = Vec::new();
        while meta.versions.len() > keep {
            let Some((&oldest, info)) = meta.versions.iter().next() else {
                break;
            };
            if info.destroyed_ms.is_none() {
                removed.push(oldest);
                batch.remove(&version_key(path, oldest));
            }
            meta.versions.remove(&oldest);
        }
        removed
    }

    /// Deletes, undeletes or destroys versions (the current one when `versions` is empty); returns
    /// those whose state changed.
    pub async fn set_versions(
        &self,
        actor: &Actor,
        path: &str,
        versions: &[u64],
        op: VersionOp,
    ) -> Result<Vec<u64>, ServiceError> {
        let lock = self.stripe(path).lock_owned().await;
        let old = self.meta(path)?;
        let wanted: Vec<u64> = if versions.is_empty() {
            vec![old.current]
        } else {
            versions.to_vec()
        };
        let now = self.clock.now_ms();
        let mut meta = (*old).clone();
        let mut batch = Batch::default();
        let mut changed = Vec::new();
        let mut redaction = Redaction::default();
        for version in wanted {
            let Some(info) = meta.versions.get_mut(&version) else {
                return Err(missing_version(path, version, &old));
            };
            let did = match op {
                VersionOp::Delete => {
                    let live = info.deleted_ms.is_none() && info.destroyed_ms.is_none();
                    if live {
                        info.deleted_ms = Some(now);
                    }
                    live
                }
                VersionOp::Undelete => {
                    let deleted = info.deleted_ms.is_some() && info.destroyed_ms.is_none();
                    if deleted {
                        info.deleted_ms = None;
                    }
                    deleted
                }
                VersionOp::Destroy => {
                    let present = info.destroyed_ms.is_none();
                    if present {
                        info.destroyed_ms = Some(now);
                        redaction.removed.push(version);
                        batch.remove(&version_key(path, version));
                    }
                    present
                }
            };
            if did && !changed.contains(&version) {
                changed.push(version);
            }
        }
        if changed.is_empty() {
            return Ok(changed);
        }
        meta.updated_ms = now;
        let kind = match op {
            VersionOp::Delete => ChangeKind::Delete,
            VersionOp::Undelete => ChangeKind::Undelete,
            VersionOp::Destroy => ChangeKind::Destroy,
        };
        self.commit(lock, actor, path, meta, batch, kind, &changed, redaction)
            .await?;
        Ok(changed)
    }

    /// Changes a secret's settings.
    pub async fn update_metadata(
        &self,
        actor: &Actor,
        path: &str,
        update: MetadataUpdate,
    ) -> Result<Arc<SecretMeta>, ServiceError> {
        let lock = self.stripe(path).lock_owned().await;
        let old = self.meta(path)?;
        let mut meta = (*old).clone();
        let now = self.clock.now_ms();
        if let Some(n) = update.max_versions {
            if n > MAX_VERSIONS_LIMIT {
                return Err(invalid(
                    "max_versions",
                    format!("{n} is more than {MAX_VERSIONS_LIMIT}"),
                ));
            }
            meta.max_versions = n;
        }
        if let Some(required) = update.cas_required {
            meta.cas_required = required;
        }
        if let Some(after) = update.delete_after_s {
            meta.delete_after_s = after;
        }
        if let Some(generator) = update.generator {
            meta.generator = generator.map(|g| g.to_string());
        }
        if let Some(period) = update.rotation_period_s {
            meta.rotation_period_s = period;
        }
        if meta.rotation_period_s > 0 && meta.generator.is_none() {
            return Err(invalid(
                "rotation_period_seconds",
                "rotation needs a generator (set generator too)",
            ));
        }
        // A new period starts now; otherwise the schedule already set stands.
        meta.next_rotation_ms = (meta.rotation_period_s > 0).then(|| {
            old.next_rotation_ms
                .filter(|_| update.rotation_period_s.is_none())
                .unwrap_or_else(|| now.saturating_add(meta.rotation_period_s.saturating_mul(1000)))
        });
        if let Some(custom) = update.custom {
            check_custom(&custom)?;
            meta.custom = custom;
        }
        meta.updated_ms = now;
        let mut batch = Batch::default();
        let redaction = Redaction {
            added: None,
            removed: self.prune(&mut meta, &mut batch, path),
        };
        let current = meta.current;
        self.commit(
            lock,
            actor,
            path,
            meta,
            batch,
            ChangeKind::Metadata,
            &[current],
            redaction,
        )
        .await?;
        self.meta(path)
    }

    /// Applies one change: the batch (with the new metadata) goes to the store's committer, which
    /// applies it together with the other changes queued beside it (one sled batch) and then, on its
    /// own thread, mirrors it in memory, tells watchers and the audit, and releases the path's lock
    /// ([`Mirror::applied`]); then the flush is awaited. That step runs whether or not the caller
    /// still waits, so a caller that gives up leaves memory and disk in step. The next writer of the
    /// path need not wait for this flush: its own is later, so it covers both.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        lock: PathLock,
        actor: &Actor,
        path: &str,
        meta: SecretMeta,
        mut batch: Batch,
        kind: ChangeKind,
        versions: &[u64],
        redaction: Redaction,
    ) -> Result<(), ServiceError> {
        // Until the mirror takes it over, a refusal takes the new value back out of the redactor.
        let refused = |err: ServiceError| {
            if let Some((_, remembered)) = &redaction.added {
                self.redactor.forget_remembered(remembered);
            }
            err
        };
        if let Err(err) = batch.put(&self.tree, &meta_key(path), &meta) {
            return Err(refused(err.into()));
        }
        // A change whose action is in `[audit] fail_closed_actions` (by default `secrets.*`) is made
        // only once its audit record is on disk; a log that cannot take it refuses the change.
        let record = self.change_record(actor, path, kind, versions);
        let audited_first = match (self.audit.get(), &record) {
            (Some(audit), Some(record)) if audit.fails_closed(&record.action) => {
                // Borrowed: the record is kept for the mirror, not copied for the log.
                if let Err(err) = audit.record_durable_entry(record.entry()).await {
                    return Err(refused(ServiceError::Unavailable(format!(
                        "the audit log cannot record {} on {path} ({err}); nothing was changed ([audit] fail_closed_actions)",
                        record.action
                    ))));
                }
                true
            }
            _ => false,
        };
        let mirror = Mirror {
            state: self.state.clone(),
            schedule: self.schedule.clone(),
            changes: self.changes.clone(),
            metrics: self.metrics.clone(),
            audit: self.audit.get().cloned(),
            path: path.to_owned(),
            meta,
            kind,
            versions: versions.to_vec(),
            redactor: self.redactor,
            redaction,
            record,
            audited_first,
            lock,
        };
        if !mirror.redaction.removed.is_empty() {
            self.write_state()
                .removing
                .insert(path.to_owned(), mirror.redaction.removed.clone());
        }
        let mut durable = self
            .tree
            .apply_then(batch, move |applied| mirror.applied(applied));
        durable.wait().await?;
        Ok(())
    }

    /// The audit record of a change (`None` before the audit log is attached).
    fn change_record(
        &self,
        actor: &Actor,
        path: &str,
        kind: ChangeKind,
        versions: &[u64],
    ) -> Option<AuditRecord> {
        let mut detail = String::with_capacity(9 + 4 * versions.len());
        detail.push_str("versions ");
        for (i, version) in versions.iter().enumerate() {
            if i > 0 {
                detail.push(',');
            }
            // Writing into a String cannot fail.
            let _ = write!(detail, "{version}");
        }
        self.record(
            actor,
            format!("secrets.{}", kind.as_str()),
            format!("secret:{path}"),
            detail,
        )
    }

    /// One audit record of kind `secret` (an allowed change); never a value.
    fn record(
        &self,
        actor: &Actor,
        action: String,
        resource: String,
        detail: String,
    ) -> Option<AuditRecord> {
        let audit = self.audit.get()?;
        Some(AuditRecord {
            seq: 0,
            time_unix_ms: 0,
            decision_id: audit.decision_id(),
            kind: AuditKind::Secret,
            caller: actor.principal.clone(),
            principal: actor.principal.clone(),
            action,
            resource,
            allowed: true,
            reasons: vec![detail],
            correlation_id: actor.correlation_id.clone(),
            count: 1,
        })
    }

    /// Re-wraps every data key not yet under the key set's current key (master-key rotation), path
    /// by path under each path's lock, one batch per path; values are not touched. Resumable: what
    /// an interrupted run re-wrapped is skipped. Returns how many data keys this run re-wrapped.
    pub async fn rewrap_all(&self) -> Result<u64, ServiceError> {
        let paths: Vec<String> = self.read_state().metas.keys().cloned().collect();
        let mut rewrapped = 0u64;
        for path in paths {
            let _lock = self.stripe(&path).lock_owned().await;
            let Ok(meta) = self.meta(&path) else {
                continue;
            };
            let keys = self.keys.keys();
            let mut batch = Batch::default();
            let mut moved_versions = Vec::new();
            for (version, info) in &meta.versions {
                if info.destroyed_ms.is_some() {
                    continue;
                }
                let key = version_key(&path, *version);
                let Some(StoredVersion(sealed)) = self.tree.get::<StoredVersion>(&key)? else {
                    continue;
                };
                if sealed.kek == keys.current.id() {
                    continue;
                }
                let Some(old) = keys.by_id(&sealed.kek) else {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "version {version} of {path} is sealed under master key {}, which is not in use; nothing more was re-wrapped",
                        sealed.kek
                    )));
                };
                match envelope::rewrap(old, &keys.current, &path, *version, &sealed) {
                    Ok(moved) => {
                        batch.put(&self.tree, &key, &StoredVersion(moved))?;
                        moved_versions.push(*version);
                    }
                    Err(err) => {
                        tracing::error!(secret = %path, version, error = %err, "a damaged version was left as it is")
                    }
                }
            }
            if !moved_versions.is_empty() {
                self.tree.apply_now(batch)?.wait().await?;
                rewrapped += moved_versions.len() as u64;
                // What Gets kept of them was read as sealed before: the stored versions and what is
                // kept stay one and the same.
                let mut state = self.write_state();
                state.drop_kept(&path, &moved_versions);
                self.metrics
                    .kept(state.kept_key_count, state.kept_value_bytes);
            }
        }
        self.metrics.changed("rewrap");
        Ok(rewrapped)
    }

    /// Audits a finished master-key rotation.
    pub fn audit_master_key(
        &self,
        actor: &Actor,
        key_id: &str,
        rewrapped: u64,
        signing_keys: usize,
    ) {
        let record = self.record(
            actor,
            "secrets.rotate_master_key".to_owned(),
            format!("master-key:{key_id}"),
            format!("re-wrapped {rewrapped} data keys and {signing_keys} signing keys"),
        );
        if let (Some(audit), Some(record)) = (self.audit.get(), record) {
            if let Err(err) = audit.record(record) {
                tracing::warn!(error = %err, "master-key rotation not audited");
            }
        }
    }

    /// The earliest scheduled rotation, if any.
    pub fn next_rotation_ms(&self) -> Option<u64> {
        self.read_state().due.first().map(|(at, _)| *at)
    }

    /// Rotates every secret whose rotation is due at `now_ms`; returns how many were rotated. A
    /// rotation that fails is logged, counted and tried again [`ROTATION_RETRY_MS`] later.
    pub async fn rotate_due(&self) -> usize {
        let now = self.clock.now_ms();
        let due: Vec<(u64, String)> = {
            let state = self.read_state();
            state
                .due
                .iter()
                .take_while(|(at, _)| *at <= now)
                .cloned()
                .collect()
        };
        self.metrics.due(due.len());
        let (mut rotated, mut failed) = (0, 0);
        for (at, path) in due {
            match self.rotate(&Actor::daemon(), &path).await {
                Ok(written) => {
                    rotated += 1;
                    self.metrics.rotated("schedule", true);
                    tracing::info!(secret = %path, version = written.version, "secret rotated on schedule");
                }
                Err(err) => {
                    self.metrics.rotated("schedule", false);
                    tracing::warn!(secret = %path, error = %err, "scheduled rotation failed; trying again in a minute");
                    failed += 1;
                    self.postpone_rotation(at, path, now + ROTATION_RETRY_MS);
                }
            }
        }
        // What is still owed: the rotations that failed (retried a minute later).
        self.metrics.due(failed);
        rotated
    }

    /// Moves `path`'s due time from `at` to `retry_at` (its rotation failed), in the schedule and in
    /// the mirrored metadata alike: the next change of the path replaces the entry by the mirrored
    /// time, and an entry left behind in the past would rotate the path at every look.
    fn postpone_rotation(&self, at: u64, path: String, retry_at: u64) {
        let mut state = self.write_state();
        if state.due.remove(&(at, path.clone())) {
            if let Some(meta) = state.metas.get_mut(&path) {
                Arc::make_mut(meta).next_rotation_ms = Some(retry_at);
            }
            state.due.insert((retry_at, path));
        }
    }

    /// Counts a manual rotation (RotateNow) in the rotation metric.
    pub fn rotated_manually(&self, ok: bool) {
        self.metrics.rotated("manual", ok);
    }

    /// Resolves when the rotation schedule changed.
    pub async fn schedule_changed(&self) {
        self.schedule.notified().await;
    }
}

fn missing_version(path: &str, version: u64, meta: &SecretMeta) -> ServiceError {
    if version > 0 && version < meta.oldest() {
        ServiceError::NotFound(format!(
            "version {version} of {path} was pruned (the oldest kept is {})",
            meta.oldest()
        ))
    } else {
        ServiceError::NotFound(format!(
            "version {version} of {path} does not exist (the current version is {})",
            meta.current
        ))
    }
}

fn check_and_set(
    path: &str,
    old: Option<&SecretMeta>,
    cas: Option<u64>,
) -> Result<(), ServiceError> {
    let current = old.map_or(0, |m| m.current);
    match cas {
        None if old.is_some_and(|m| m.cas_required) => Err(ServiceError::FailedPrecondition(
            format!("{path} requires check-and-set: send cas = {current} (its current version)"),
        )),
        None => Ok(()),
        Some(0) if current > 0 => Err(ServiceError::FailedPrecondition(format!(
            "check-and-set: {path} already exists (current version {current}); cas = 0 writes only a new secret"
        ))),
        Some(cas) if cas != current => Err(ServiceError::FailedPrecondition(format!(
            "check-and-set: the current version of {path} is {current}, not {cas}"
        ))),
        Some(_) => Ok(()),
    }
}

/// Vault's limits on custom metadata.
pub fn check_custom(custom: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    let mut violations = Vec::new();
    if custom.len() > MAX_CUSTOM_KEYS {
        violations.push(FieldViolation::new(
            "custom_metadata",
            format!("{} keys; at most {MAX_CUSTOM_KEYS}", custom.len()),
        ));
    }
    for (key, value) in custom {
        if key.is_empty() || key.len() > MAX_CUSTOM_KEY_BYTES {
            violations.push(FieldViolation::new(
                "custom_metadata",
                format!(
                    "a key of {} bytes; keys are 1..={MAX_CUSTOM_KEY_BYTES} bytes",
                    key.len()
                ),
            ));
        }
        if value.len() > MAX_CUSTOM_VALUE_BYTES {
            violations.push(FieldViolation::new(
                format!("custom_metadata[{}]", crate::error::truncate_for_reply(key)),
                format!(
                    "{} bytes; values are at most {MAX_CUSTOM_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(violations))
    }
}
