//! Capability tokens: Issue, Verify, Revoke, List, Attenuate, key rotation. Domain types only; the gRPC
//! service in `grpc::tokens` translates.
//!
//! - A token is `bst1.<kid>.<payload>.<mac>` ([`format`]): HMAC-SHA256 under a signing key with an id.
//! - Rules: a token never carries more than its issuer holds ([`crate::access::authz::pattern_covers`]); an
//!   attenuated token carries no more than its parent and does not outlive it; a token lists its
//!   ancestors, so revoking one revokes every token derived from it.
//! - Signing keys ([`keys`]) rotate on request and on schedule; a replaced key verifies until retired.
//!   They are sealed with AES-256-GCM under the master key in the store.
//! - Issued-token claims (never token strings) and revocations persist in sled; revocations are also held
//!   in memory, so [`TokenService::verify`] touches no disk. The `token-maintenance` worker
//!   ([`TokenService::maintenance_worker`], supervised) rotates, retires and purges expired records.
//! - Time comes from a [`Clock`], so tests move it instead of sleeping.

pub mod api;
pub mod clock;
pub mod config;
pub mod events;
pub mod format;
mod index;
pub mod keys;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

pub use self::clock::{Clock, ManualClock, SystemClock};
use self::format::Claims;
use self::keys::{KeyRecord, KeyRing, Lookup};
use crate::access::authz::{Holdings, pattern_covers, validate_capability_pattern};
use crate::crypto::MasterKey;
use crate::crypto::keyset::KeySet;
use crate::error::{FieldViolation, ServiceError, truncate_for_reply};
use crate::runtime::events::ErrorOccurred;
use crate::store::{Batch, Record, Store, StoreError, Tree, trees};
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{ActorResult, Worker, WorkerContext, WorkerPolicy};
use crate::tokens::config::TokensConfig;
use crate::tokens::events::{
    SigningKeyRetired, SigningKeyRotated, TokenIssued, TokenRevoked, TokenVerifications,
    TokensPurged,
};

/// At most this many capability patterns in one token.
pub const MAX_CAPABILITIES: usize = 64;
/// At most this many ancestors: a token can be attenuated this many times in a chain.
pub const MAX_CHAIN_DEPTH: usize = 8;
/// Longest principal name.
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// Holding this capability lets a caller list and revoke tokens it neither issued nor holds.
pub const ADMIN_CAPABILITY: &str = "tokens.admin";
/// Expired records are purged this long after expiry, so a clock stepping back a little cannot revive
/// a revoked token whose revocation was already gone.
pub const PURGE_GRACE_SECONDS: u64 = 300;
/// How often the background task rotates, retires and purges.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// Why a token was refused. The label is a metric label and the first word of a Verify reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    Malformed,
    UnknownKey,
    KeyRetired,
    BadSignature,
    Expired,
    Revoked,
    /// The token is valid but does not cover the capability asked about.
    NotCovered,
    /// Presented by someone other than its principal.
    PrincipalMismatch,
}

impl RejectKind {
    pub const ALL: [RejectKind; 8] = [
        RejectKind::Malformed,
        RejectKind::UnknownKey,
        RejectKind::KeyRetired,
        RejectKind::BadSignature,
        RejectKind::Expired,
        RejectKind::Revoked,
        RejectKind::NotCovered,
        RejectKind::PrincipalMismatch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectKind::Malformed => "malformed",
            RejectKind::UnknownKey => "unknown_key",
            RejectKind::KeyRetired => "key_retired",
            RejectKind::BadSignature => "bad_signature",
            RejectKind::Expired => "expired",
            RejectKind::Revoked => "revoked",
            RejectKind::NotCovered => "not_covered",
            RejectKind::PrincipalMismatch => "principal_mismatch",
        }
    }
}

/// A refused token: the kind and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.label())]
pub struct Rejection {
    pub kind: RejectKind,
    pub detail: String,
}

impl Rejection {
    pub fn new(kind: RejectKind, detail: impl Into<String>) -> Self {
        Rejection {
            kind,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid request: {}", summarize(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("{0}")]
    Denied(String),
    #[error("no token with id {0:?} (unknown, or expired and purged)")]
    NotFound(String),
    #[error("the parent token is not valid: {0}")]
    ParentRejected(Rejection),
    #[error("token refused: {0}")]
    Rejected(Rejection),
    #[error("master key {path}: {reason}")]
    MasterKey { path: String, reason: String },
    #[error(
        "signing key {kid} cannot be opened with this master key (another master key, or damaged data)"
    )]
    Undecryptable { kid: String },
    #[error("the system random source failed")]
    Random,
    #[error("cannot encode token claims: {0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<TokenError> for ServiceError {
    fn from(err: TokenError) -> ServiceError {
        match err {
            TokenError::Invalid(violations) => ServiceError::InvalidArgument(violations),
            TokenError::Denied(reason) => ServiceError::PermissionDenied(reason),
            TokenError::Rejected(rejection) => {
                ServiceError::PermissionDenied(format!("token refused: {rejection}"))
            }
            TokenError::NotFound(_) => ServiceError::NotFound(err.to_string()),
            TokenError::ParentRejected(_) => ServiceError::FailedPrecondition(err.to_string()),
            TokenError::MasterKey { .. }
            | TokenError::Undecryptable { .. }
            | TokenError::Random
            // Key material or encoding failing is a broken daemon, not a busy one: INTERNAL, with
            // the cause logged under an error id by `grpc::status`.
            | TokenError::Encode(_) => ServiceError::internal("tokens", "token service", err),
            TokenError::Store(err) => ServiceError::Store(err),
        }
    }
}

/// A token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub id: String,
    pub principal: String,
    pub issuer: String,
    pub capabilities: Vec<String>,
    pub issued_at: u64,
    pub expires_at: u64,
    pub parents: Vec<String>,
    pub key_id: String,
}

impl VerifiedToken {
    /// Does the token allow this concrete capability (`admin.status`)? The authorization layer ANDs
    /// this with the caller's grants: a token narrows, never widens.
    pub fn allows(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|p| crate::access::authz::pattern_matches(p, capability))
    }

    /// Does the token allow `capability` on some resources (scoped patterns count)?
    pub fn allows_family(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|p| crate::access::authz::pattern_matches_family(p, capability))
    }

    /// Does the token allow `capability` on `resource`?
    pub fn allows_on(&self, capability: &str, resource: &str) -> bool {
        self.capabilities
            .iter()
            .any(|p| crate::access::authz::pattern_matches_on(p, capability, resource))
    }

    /// Does the token cover this pattern (`vision.*`)?
    pub fn covers(&self, pattern: &str) -> bool {
        self.capabilities.iter().any(|p| pattern_covers(p, pattern))
    }
}

/// Who is asking: the caller's principal and what its grants hold.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub principal: &'a str,
    pub holdings: &'a Holdings,
}

impl Requester<'_> {
    fn is_admin(&self) -> bool {
        self.holdings.allows(ADMIN_CAPABILITY)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub principal: String,
    pub capabilities: Vec<String>,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttenuateRequest {
    pub token: String,
    pub capabilities: Vec<String>,
    /// 0: until the parent expires.
    pub ttl_seconds: u64,
}

/// A freshly minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub id: String,
    pub expires_at: u64,
    pub parent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    pub revoked_at: u64,
    pub already_revoked: bool,
    pub descendants: u32,
}

/// A listed token (claims and state; never the token string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub principal: String,
    pub issuer: String,
    pub capabilities: Vec<String>,
    pub issued_at: u64,
    pub expires_at: u64,
    pub parents: Vec<String>,
    pub key_id: String,
    pub revoked: bool,
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub created_at: u64,
    pub active: bool,
    pub retires_at: Option<u64>,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub rotated: Option<String>,
    pub retired: Vec<String>,
    pub purged_issued: usize,
    pub purged_revocations: usize,
}

/// The claims of an issued token as stored (by id). The token string itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub principal: String,
    pub issuer: String,
    pub capabilities: Vec<String>,
    pub issued_at: u64,
    pub expires_at: u64,
    pub parents: Vec<String>,
    pub key_id: String,
}

impl Record for TokenRecord {
    const VERSION: u8 = 1;
}

/// A revocation as stored (by token id), kept until the token would have expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub id: String,
    pub revoked_at: u64,
    pub expires_at: u64,
    pub by: String,
}

impl Record for RevocationRecord {
    const VERSION: u8 = 1;
}

/// Reads and checks the master key file (0600 or a systemd credential, exactly 32 bytes).
pub fn load_master_key(path: &Path) -> Result<MasterKey, TokenError> {
    let bad = |reason: String| TokenError::MasterKey {
        path: path.display().to_string(),
        reason,
    };
    MasterKey::load(path).map_err(|err| bad(err.to_string()))
}

/// The token service: one per daemon, shared by the gRPC service and (for bearer tokens in request
/// metadata) the authorization layer.
pub struct TokenService {
    settings: TokensConfig,
    clock: Arc<dyn Clock>,
    keys: Arc<KeySet>,
    rng: SystemRandom,
    keys_tree: Tree,
    issued: Tree,
    revoked_tree: Tree,
    ring: ArcSwap<KeyRing>,
    /// Revoked id → when the token expires (for the purge).
    revoked: RwLock<HashMap<String, u64>>,
    /// Who holds and issued each stored token, and what derives from it: Revoke and List look up
    /// rather than scan. Built at open, kept in step on mint and purge.
    index: RwLock<index::TokenIndex>,
    /// Issued-token records Revoke and List have read, so a test can see they do not scan.
    records_read: AtomicU64,
    /// Serialises key-ring changes (rotation, retirement).
    key_change: tokio::sync::Mutex<()>,
    metrics: TokenVerifications,
}

impl fmt::Debug for TokenService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Opens the token state in `store`: unseals the signing keys (creating the first one on a new
    /// store) and loads the revocations. Fails closed: a key that does not open or a damaged record
    /// stops the start rather than verifying with partial state.
    pub fn open(
        settings: &TokensConfig,
        keys: Arc<KeySet>,
        store: &Store,
        clock: Arc<dyn Clock>,
    ) -> Result<TokenService, TokenError> {
        let keys_tree = store.tree(trees::TOKEN_KEYS)?;
        let issued = store.tree(trees::TOKENS_ISSUED)?;
        let revoked_tree = store.tree(trees::TOKENS_REVOKED)?;
        let records = keys_tree
            .scan::<KeyRecord>()
            .map(|item| item.map(|(_, record)| record))
            .collect::<Result<Vec<_>, _>>()?;
        let rng = SystemRandom::new();
        let mut ring = KeyRing::load(records, &keys.keys().all(), settings.retire_after_seconds)?;
        if ring.active().is_none() {
            let (new_ring, record) = ring.rotated(
                clock.now(),
                &keys.current(),
                &rng,
                settings.retire_after_seconds,
            )?;
            keys_tree.put_durable(record.kid.as_bytes(), &record)?;
            SigningKeyRotated {
                kid: &record.kid,
                trigger: "initial",
            }
            .emit();
            ring = new_ring;
        }
        let mut revoked = HashMap::new();
        for item in revoked_tree.scan::<RevocationRecord>() {
            let (_, record) = item?;
            revoked.insert(record.id, record.expires_at);
        }
        let mut index = index::TokenIndex::default();
        for item in issued.scan::<TokenRecord>() {
            let (_, record) = item?;
            index.insert(&record);
        }
        let labels: Vec<&'static str> = RejectKind::ALL.iter().map(|k| k.label()).collect();
        Ok(TokenService {
            settings: settings.clone(),
            clock,
            keys,
            rng,
            keys_tree,
            issued,
            revoked_tree,
            ring: ArcSwap::from_pointee(ring),
            revoked: RwLock::new(revoked),
            index: RwLock::new(index),
            records_read: AtomicU64::new(0),
            key_change: tokio::sync::Mutex::new(()),
            metrics: TokenVerifications::new(&labels),
        })
    }

    pub fn settings(&self) -> &TokensConfig {
        &self.settings
    }

    /// Mints a token for `request.principal`. Every requested capability must be covered by what the
    /// requester holds.
    pub async fn issue(
        &self,
        who: Requester<'_>,
        request: IssueRequest,
    ) -> Result<IssuedToken, TokenError> {
        let mut violations = Vec::new();
        check_principal(&request.principal, &mut violations);
        let capabilities = check_capabilities(&request.capabilities, &mut violations);
        if request.ttl_seconds == 0 {
            violations.push(FieldViolation::new("ttl_seconds", "must be at least 1"));
        } else if request.ttl_seconds > self.settings.max_ttl_seconds {
            violations.push(FieldViolation::new(
                "ttl_seconds",
                format!(
                    "{} is more than the maximum of {} (tokens.max_ttl_seconds)",
                    request.ttl_seconds, self.settings.max_ttl_seconds
                ),
            ));
        }
        if !violations.is_empty() {
            return Err(TokenError::Invalid(violations));
        }
        if let Some(excess) = capabilities.iter().find(|c| !who.holdings.covers(c)) {
            return Err(TokenError::Denied(format!(
                "{:?} does not hold {excess:?}; a token never carries more than its issuer holds",
                who.principal
            )));
        }
        let now = self.clock.now();
        self.mint(Claims {
            id: self.new_id()?,
            principal: request.principal,
            issuer: who.principal.to_owned(),
            capabilities,
            issued_at: now,
            expires_at: now.saturating_add(request.ttl_seconds),
            parents: Vec::new(),
        })
        .await
    }

    /// Derives a token from a valid parent: capabilities covered by the parent's, expiry no later.
    pub async fn attenuate(
        &self,
        issuer: &str,
        request: AttenuateRequest,
    ) -> Result<IssuedToken, TokenError> {
        let mut violations = Vec::new();
        if request.token.is_empty() {
            violations.push(FieldViolation::new("token", "must not be empty"));
        }
        let capabilities = check_capabilities(&request.capabilities, &mut violations);
        if !violations.is_empty() {
            return Err(TokenError::Invalid(violations));
        }
        let parent = self
            .verify(&request.token, None)
            .map_err(TokenError::ParentRejected)?;
        if parent.parents.len() >= MAX_CHAIN_DEPTH {
            return Err(TokenError::Invalid(vec![FieldViolation::new(
                "token",
                format!(
                    "already {MAX_CHAIN_DEPTH} attenuations deep; derive from an earlier token"
                ),
            )]));
        }
        if let Some(excess) = capabilities.iter().find(|c| !parent.covers(c)) {
            return Err(TokenError::Denied(format!(
                "the parent token does not cover {excess:?}; attenuation only narrows"
            )));
        }
        let now = self.clock.now();
        let expires_at = if request.ttl_seconds == 0 {
            parent.expires_at
        } else {
            now.saturating_add(request.ttl_seconds)
        };
        if expires_at > parent.expires_at {
            return Err(TokenError::Invalid(vec![FieldViolation::new(
                "ttl_seconds",
                format!(
                    "{} s would outlive the parent token, which expires in {} s",
                    request.ttl_seconds,
                    parent.expires_at.saturating_sub(now)
                ),
            )]));
        }
        let mut parents = parent.parents;
        parents.push(parent.id);
        self.mint(Claims {
            id: self.new_id()?,
            principal: parent.principal,
            issuer: issuer.to_owned(),
            capabilities,
            issued_at: now,
            expires_at,
            parents,
        })
        .await
    }

    /// Verifies a token and, when given, that it covers `capability` (a name or pattern). Touches no
    /// disk: keys and revocations are in memory.
    pub fn verify(
        &self,
        token: &str,
        capability: Option<&str>,
    ) -> Result<VerifiedToken, Rejection> {
        self.counted(self.check(token, capability))
    }

    /// For a bearer token presented in request metadata by `caller`: the token must verify and name
    /// `caller` as its principal. The caller then acts with its grants AND [`VerifiedToken::allows`].
    pub fn verify_presented(&self, token: &str, caller: &str) -> Result<VerifiedToken, TokenError> {
        let result = self.check(token, None).and_then(|verified| {
            if verified.principal == caller {
                Ok(verified)
            } else {
                Err(Rejection::new(
                    RejectKind::PrincipalMismatch,
                    format!(
                        "the token was issued to {:?}, not to the caller {caller:?}",
                        verified.principal
                    ),
                ))
            }
        });
        self.counted(result).map_err(TokenError::Rejected)
    }

    fn counted(
        &self,
        result: Result<VerifiedToken, Rejection>,
    ) -> Result<VerifiedToken, Rejection> {
        match &result {
            Ok(_) => self.metrics.verified(),
            Err(rejection) => self
                .metrics
                .rejected(rejection.kind.label(), &rejection.detail),
        }
        result
    }

    fn check(&self, token: &str, capability: Option<&str>) -> Result<VerifiedToken, Rejection> {
        let parsed = format::parse(token)?;
        let now = self.clock.now();
        let ring = self.ring.load();
        let key = match ring.lookup(parsed.kid, now) {
            Lookup::Verifies(key) => key,
            Lookup::Retired => {
                return Err(Rejection::new(
                    RejectKind::KeyRetired,
                    format!("signing key {} is retired", parsed.kid),
                ));
            }
            Lookup::Unknown => {
                return Err(Rejection::new(
                    RejectKind::UnknownKey,
                    format!("no signing key {:?} on this daemon", parsed.kid),
                ));
            }
        };
        let claims = parsed.authenticate(&key.key)?;
        if now >= claims.expires_at {
            return Err(Rejection::new(
                RejectKind::Expired,
                format!("the token expired at {}", rfc3339(claims.expires_at)),
            ));
        }
        {
            let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
            if revoked.contains_key(&claims.id) {
                return Err(Rejection::new(RejectKind::Revoked, "the token was revoked"));
            }
            if let Some(ancestor) = claims.parents.iter().find(|p| revoked.contains_key(*p)) {
                return Err(Rejection::new(
                    RejectKind::Revoked,
                    format!("ancestor token {ancestor} was revoked"),
                ));
            }
        }
        if let Some(capability) = capability {
            if !claims
                .capabilities
                .iter()
                .any(|held| pattern_covers(held, capability))
            {
                return Err(Rejection::new(
                    RejectKind::NotCovered,
                    format!("the token does not cover {capability:?}"),
                ));
            }
        }
        Ok(VerifiedToken {
            id: claims.id,
            principal: claims.principal,
            issuer: claims.issuer,
            capabilities: claims.capabilities,
            issued_at: claims.issued_at,
            expires_at: claims.expires_at,
            parents: claims.parents,
            key_id: parsed.kid.to_owned(),
        })
    }

    /// Revokes a token and, through the ancestor lists, everything derived from it. The revocation is
    /// in force in memory before it is written, and durable before the reply.
    pub async fn revoke(&self, who: Requester<'_>, id: &str) -> Result<RevokeOutcome, TokenError> {
        if !valid_id(id) {
            return Err(TokenError::Invalid(vec![FieldViolation::new(
                "id",
                "a token id is 32 lowercase hex characters",
            )]));
        }
        let record = self
            .record(id)?
            .ok_or_else(|| TokenError::NotFound(id.to_owned()))?;
        if !self.may_manage(who, &record)? {
            return Err(TokenError::Denied(format!(
                "{:?} may revoke only tokens it issued or holds (or derived from those), unless it holds {ADMIN_CAPABILITY:?}",
                who.principal
            )));
        }
        let descendants = u32::try_from(self.index().derived_count(id)).unwrap_or(u32::MAX);
        let now = self.clock.now();
        let (already_revoked, own_entry) = {
            let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
            let own = revoked.contains_key(id);
            let already = own || record.parents.iter().any(|p| revoked.contains_key(p));
            if !already {
                revoked.insert(id.to_owned(), record.expires_at);
            }
            (already, own)
        };
        // In force in memory first (fail closed). A retry after a failed write finds the entry in
        // memory but not on disk, and writes it then.
        let unpersisted = own_entry
            && self
                .revoked_tree
                .get::<RevocationRecord>(id.as_bytes())?
                .is_none();
        if !already_revoked || unpersisted {
            let entry = RevocationRecord {
                id: id.to_owned(),
                revoked_at: now,
                expires_at: record.expires_at,
                by: who.principal.to_owned(),
            };
            self.revoked_tree.put_async(id.as_bytes(), &entry).await?;
        }
        if !already_revoked {
            TokenRevoked {
                id,
                by: who.principal,
                descendants,
            }
            .emit();
        }
        Ok(RevokeOutcome {
            revoked_at: now,
            already_revoked,
            descendants,
        })
    }

    /// Tokens (not yet purged) the requester may see, oldest first.
    pub fn list(
        &self,
        who: Requester<'_>,
        principal: Option<&str>,
        include_expired: bool,
    ) -> Result<Vec<TokenInfo>, TokenError> {
        let now = self.clock.now();
        let admin = who.is_admin();
        let revoked = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Only an administrator listing everyone reads every record (all of them are the answer);
        // otherwise the index names the candidates.
        let candidates = match (admin, principal) {
            (true, None) => None,
            (_, Some(p)) => Some(self.index().held_by(p)),
            (false, None) => Some(self.index().held_or_issued_by(who.principal)),
        };
        let records: Box<dyn Iterator<Item = Result<TokenRecord, TokenError>>> = match candidates {
            None => Box::new(self.issued.scan::<TokenRecord>().map(|item| {
                self.records_read.fetch_add(1, Ordering::Relaxed);
                Ok(item?.1)
            })),
            // An id whose record is gone was purged since the index was read: skip it.
            Some(ids) => Box::new(
                ids.into_iter()
                    .filter_map(|id| self.record(&id).transpose()),
            ),
        };
        let mut out = Vec::new();
        for r in records {
            let r = r?;
            if principal.is_some_and(|p| p != r.principal) {
                continue;
            }
            if !admin && r.issuer != who.principal && r.principal != who.principal {
                continue;
            }
            let expired = now >= r.expires_at;
            if expired && !include_expired {
                continue;
            }
            let is_revoked =
                revoked.contains_key(&r.id) || r.parents.iter().any(|p| revoked.contains_key(p));
            out.push(TokenInfo {
                id: r.id,
                principal: r.principal,
                issuer: r.issuer,
                capabilities: r.capabilities,
                issued_at: r.issued_at,
                expires_at: r.expires_at,
                parents: r.parents,
                key_id: r.key_id,
                revoked: is_revoked,
                expired,
            });
        }
        out.sort_by(|a, b| a.issued_at.cmp(&b.issued_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Starts a new signing key now; returns it and the keys that still verify.
    pub async fn rotate_key(&self) -> Result<(String, Vec<KeyInfo>), TokenError> {
        let _guard = self.key_change.lock().await;
        let kid = self.rotate_locked("request").await?;
        Ok((kid, self.keys()))
    }

    /// The keys that verify, newest (active) first.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.ring
            .load()
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyInfo {
                key_id: k.kid.clone(),
                created_at: k.created_at,
                active: i == 0,
                retires_at: k.retires_at,
            })
            .collect()
    }

    /// After `brainstemd recover --accept-loss`: revocations may have been lost, and a lost revocation
    /// must never make a revoked token valid again. So no token signed before the recovery is trusted:
    /// every key is retired (its tokens answer `key_retired`) and a new key signs from now on. Returns
    /// how many keys were retired.
    pub async fn distrust_all_keys(&self) -> Result<usize, TokenError> {
        let _guard = self.key_change.lock().await;
        let (ring, tombstones) = self.ring.load().retire_all();
        for tomb in &tombstones {
            self.keys_tree.put_async(tomb.kid.as_bytes(), tomb).await?;
        }
        self.ring.store(Arc::new(ring));
        self.rotate_locked("recovery").await?;
        Ok(tombstones.len())
    }

    async fn rotate_locked(&self, trigger: &'static str) -> Result<String, TokenError> {
        let current = self.ring.load_full();
        let (ring, record) = current.rotated(
            self.clock.now(),
            &self.keys.current(),
            &self.rng,
            self.settings.retire_after_seconds,
        )?;
        self.keys_tree
            .put_async(record.kid.as_bytes(), &record)
            .await?;
        self.ring.store(Arc::new(ring));
        SigningKeyRotated {
            kid: &record.kid,
            trigger,
        }
        .emit();
        Ok(record.kid)
    }

    /// One pass of background upkeep: rotate when the active key is older than
    /// `rotate_after_seconds`, retire keys whose time has come, purge expired records.
    pub async fn maintain(&self) -> Result<Maintenance, TokenError> {
        let mut done = Maintenance::default();
        {
            let _guard = self.key_change.lock().await;
            let now = self.clock.now();
            let rotate_after = self.settings.rotate_after_seconds;
            let due = self.ring.load().active().is_none_or(|k| {
                rotate_after > 0 && now >= k.created_at.saturating_add(rotate_after)
            });
            if due {
                done.rotated = Some(self.rotate_locked("scheduled").await?);
            }
            let (ring, tombstones) = self.ring.load().retire_due(self.clock.now());
            for tomb in &tombstones {
                self.keys_tree.put_async(tomb.kid.as_bytes(), tomb).await?;
            }
            if !tombstones.is_empty() {
                self.ring.store(Arc::new(ring));
            }
            for tomb in tombstones {
                SigningKeyRetired { kid: &tomb.kid }.emit();
                done.retired.push(tomb.kid);
            }
        }
        let horizon = self.clock.now().saturating_sub(PURGE_GRACE_SECONDS);
        let mut stale = Vec::new();
        let mut stale_records = Vec::new();
        for item in self.issued.scan::<TokenRecord>() {
            let (key, record) = item?;
            if record.expires_at <= horizon {
                stale.push(key);
                stale_records.push(record);
            }
        }
        self.issued.remove_many(&stale).await?;
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            for record in &stale_records {
                index.remove(record);
            }
        }
        done.purged_issued = stale.len();
        let stale_revocations: Vec<Vec<u8>> = {
            let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<String> = revoked
                .iter()
                .filter(|(_, expires_at)| **expires_at <= horizon)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                revoked.remove(id);
            }
            ids.into_iter().map(String::into_bytes).collect()
        };
        self.revoked_tree.remove_many(&stale_revocations).await?;
        done.purged_revocations = stale_revocations.len();
        TokensPurged {
            issued: done.purged_issued,
            revocations: done.purged_revocations,
        }
        .emit();
        Ok(done)
    }

    /// The `token-maintenance` worker: runs [`TokenService::maintain`] every
    /// [`MAINTENANCE_INTERVAL`].
    /// Re-seals every signing key under the key set's current key (master-key rotation), in one
    /// atomic batch; returns how many were re-sealed.
    pub async fn reseal_keys(&self) -> Result<usize, TokenError> {
        let _change = self.key_change.lock().await;
        let keys = self.keys.keys();
        let masters = keys.all();
        let mut batch = Batch::default();
        let mut resealed = 0;
        for item in self.keys_tree.scan::<KeyRecord>() {
            let (key, record) = item?;
            if let Some(record) = keys::resealed(&record, &masters, &keys.current)? {
                batch.put(&self.keys_tree, &key, &record)?;
                resealed += 1;
            }
        }
        if resealed > 0 {
            self.keys_tree.apply_async(batch).await?;
        }
        Ok(resealed)
    }

    pub fn maintenance_worker(self: &Arc<Self>) -> TokenMaintenance {
        TokenMaintenance {
            service: self.clone(),
        }
    }

    /// May `who` revoke this token: admin, or issuer/principal of it or of one of its ancestors?
    fn may_manage(&self, who: Requester<'_>, record: &TokenRecord) -> Result<bool, TokenError> {
        if who.is_admin() || record.issuer == who.principal || record.principal == who.principal {
            return Ok(true);
        }
        for parent in &record.parents {
            if let Some(ancestor) = self.issued.get::<TokenRecord>(parent.as_bytes())? {
                if ancestor.issuer == who.principal || ancestor.principal == who.principal {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn mint(&self, claims: Claims) -> Result<IssuedToken, TokenError> {
        let ring = self.ring.load_full();
        let key = ring.active().ok_or(TokenError::Random)?;
        let token = format::encode(&key.kid, &key.key, &claims).map_err(TokenError::Encode)?;
        // Scoped patterns are long; a token the parser would refuse must not be handed out.
        if token.len() > format::MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid(vec![FieldViolation::new(
                "capabilities",
                format!(
                    "the token would be longer than {} bytes; name fewer or shorter capabilities",
                    format::MAX_TOKEN_BYTES
                ),
            )]));
        }
        let record = TokenRecord {
            id: claims.id.clone(),
            principal: claims.principal.clone(),
            issuer: claims.issuer.clone(),
            capabilities: claims.capabilities.clone(),
            issued_at: claims.issued_at,
            expires_at: claims.expires_at,
            parents: claims.parents.clone(),
            key_id: key.kid.clone(),
        };
        self.issued.put_async(record.id.as_bytes(), &record).await?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(&record);
        TokenIssued {
            id: &record.id,
            principal: &record.principal,
            issuer: &record.issuer,
            derived: !record.parents.is_empty(),
        }
        .emit();
        Ok(IssuedToken {
            token,
            id: record.id,
            expires_at: record.expires_at,
            parent_id: record.parents.last().cloned(),
        })
    }

    /// The stored record of token `id`, counted in [`Self::records_read`].
    fn record(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        self.records_read.fetch_add(1, Ordering::Relaxed);
        Ok(self.issued.get::<TokenRecord>(id.as_bytes())?)
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, index::TokenIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// How many issued-token records Revoke and List have read since the service opened.
    pub fn records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    fn new_id(&self) -> Result<String, TokenError> {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).map_err(|_| TokenError::Random)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_principal(principal: &str, violations: &mut Vec<FieldViolation>) {
    if principal.is_empty() {
        violations.push(FieldViolation::new("principal", "must not be empty"));
    } else if principal.len() > MAX_PRINCIPAL_LEN {
        violations.push(FieldViolation::new(
            "principal",
            format!("at most {MAX_PRINCIPAL_LEN} characters"),
        ));
    } else if principal
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        violations.push(FieldViolation::new(
            "principal",
            "must not contain spaces or control characters",
        ));
    }
}

/// Validates and deduplicates capability patterns (order kept).
fn check_capabilities(requested: &[String], violations: &mut Vec<FieldViolation>) -> Vec<String> {
    if requested.is_empty() {
        violations.push(FieldViolation::new(
            "capabilities",
            "name at least one capability",
        ));
    } else if requested.len() > MAX_CAPABILITIES {
        violations.push(FieldViolation::new(
            "capabilities",
            format!("at most {MAX_CAPABILITIES} capabilities"),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, cap) in requested.iter().enumerate() {
        match validate_capability_pattern(cap) {
            Ok(()) if !out.contains(cap) => out.push(cap.clone()),
            Ok(()) => {}
            Err(message) => violations.push(FieldViolation::new(
                format!("capabilities[{i}]"),
                format!("{:?}: {message}", truncate_for_reply(cap)),
            )),
        }
    }
    out
}

/// Unix seconds as RFC 3339, for messages.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} (unix seconds)"))
}

#[cfg(test)]
mod tests;

/// See [`TokenService::maintenance_worker`].
pub struct TokenMaintenance {
    service: Arc<TokenService>,
}

impl Worker for TokenMaintenance {
    fn name(&self) -> &'static str {
        "token-maintenance"
    }

    /// Optional: without it keys rotate late and stale records stay longer; verification goes on.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ctx.ready();
        while ctx.idle(until_cancelled(&ctx, tick.tick())).await.is_some() {
            match self.service.maintain().await {
                Ok(_) => ctx.set_status("last pass ok"),
                Err(err) => {
                    ErrorOccurred {
                        subsystem: "tokens",
                        kind: "maintenance",
                    }
                    .emit();
                    ctx.record_error(&err);
                    ctx.set_status("last pass failed");
                }
            }
            ctx.progress();
        }
        Ok(())
    }
}
