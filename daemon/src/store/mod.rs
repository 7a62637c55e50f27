//! Durable state in sled. **The only module that imports sled.**
//!
//! - Named trees; each value is an envelope `[0xB5][record version][crc32 of payload, LE][JSON payload]`.
//!   The checksum catches torn or altered values, which come back as [`StoreError::Corrupt`] (DATA_LOSS
//!   to a caller), never as data.
//! - A record type declares the version it writes and how to read older ones ([`Record::upgrade`]).
//! - The schema version lives in the `meta` tree; [`MIGRATIONS`] upgrade an older database on open, and a
//!   database from a newer build is refused rather than misread. Each subsystem also versions its own
//!   trees: it declares a [`Schema`] with its migrations ([`schema`]), the store runs the pending ones at
//!   open and records the subsystem's version in `meta`.
//! - [`Store::transaction`] writes to several trees all or nothing ([`transaction`]).
//! - [`Store::close`] returns once sled has released its files, so the state directory can be opened
//!   again right away (a restart in the same process, a test).
//! - Flush policy: with `flush = "always"` every write is on disk before it returns (acknowledged means
//!   durable); with `"interval"` the daemon flushes in the background.
//! - One committer thread ([`commit`]) applies batches and is the only caller of sled's flush:
//!   concurrent flushes deadlock sled 0.34 (spacejam/sled#1308). Concurrent writers share a flush
//!   (group commit); async writers await it without blocking a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::config::{FlushPolicy, StoreConfig};

pub mod commit;
pub mod events;
pub mod integrity;
pub mod schema;
pub mod snapshot;
pub mod space;
pub mod transaction;

pub use commit::{CommitStats, Durable};
use commit::{Committer, Keeper, Mark, Writes};
use integrity::{IntegrityRecord, TreeMark};

pub use schema::{Schema, SubsystemMigration};
pub use snapshot::Snapshot;
use snapshot::WriteGate;
pub use transaction::{Transaction, TransactionError, TxError};

/// Tree names, in one place so two subsystems cannot collide.
pub mod config;

pub mod trees {
    pub const META: &str = "meta";
    /// Audit records of builds before the segment log (`access/audit/`): no longer written or read.
    pub const AUDIT: &str = "audit";
    /// Token signing keys, encrypted under the master key (`tokens::keys`).
    pub const TOKEN_KEYS: &str = "tokens.keys";
    /// Claims of issued tokens, by id (never the token strings).
    pub const TOKENS_ISSUED: &str = "tokens.issued";
    /// Revoked token ids, kept until the token would have expired.
    pub const TOKENS_REVOKED: &str = "tokens.revoked";
    /// The episodic buffer: `e` + big-endian sequence number → episode; `m:…` bookkeeping.
    pub const EPISODIC: &str = "episodic";
    /// Secrets (`secrets`): `m:<path>` → metadata, `v:<path>\0<version, big-endian>` → the sealed
    /// value and its wrapped data key, `k:check` → what proves the master key is the right one.
    pub const SECRETS: &str = "secrets";
    /// The learning actor (`actors::learning`): `e` + big-endian sequence → event, `d` + SHA-256 →
    /// deduplication key, `x` + sequence → key expiry, `m:checkpoint` → the model.
    pub const LEARNING: &str = "learning";
    /// The model registry (`registry`): `m:<name>` → model and alias history, `v:<name>@<version>`
    /// → version, `q:<name>@<version>\0<metric>\0<time BE><seq BE>` → quality sample,
    /// `k:card-signing` → the card-signing key sealed under the master key.
    pub const REGISTRY: &str = "registry";
    /// Replies kept for idempotency keys (`grpc::idempotency`), with their expiry index.
    pub const IDEMPOTENCY: &str = "idempotency";
    /// Trees whose silent loss would weaken security: a clean stop records a digest of their
    /// contents in the integrity record, and the next start checks it.
    pub const DIGESTED: &[&str] = &[TOKEN_KEYS, TOKENS_REVOKED];
}

/// Schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

const ENVELOPE_TAG: u8 = 0xB5;
const HEADER_LEN: usize = 6;
const SCHEMA_KEY: &[u8] = b"schema_version";
const BOOT_KEY: &[u8] = b"boot";
/// `meta`: bumped by every flush that carries writes (see [`integrity`]).
const GENERATION_KEY: &[u8] = b"generation";
/// `meta`: the random id this database carries from its first open.
const STORE_ID_KEY: &[u8] = b"store_id";
/// `meta`: `recovery/<unix ms>` → [`RecoveryRecord`], one per `brainstemd recover`.
const RECOVERY_PREFIX: &[u8] = b"recovery/";

/// Upgrades the store's own layout (envelope, `meta`) from `to - 1` to `to`. Listed in [`MIGRATIONS`]
/// in ascending order. A subsystem's trees migrate through its [`Schema`] instead.
pub struct Migration {
    pub to: u32,
    pub run: fn(&Store) -> Result<(), StoreError>,
}

/// Schema migrations, applied in order on open. Version 1 is the first schema: nothing to migrate yet.
pub const MIGRATIONS: &[Migration] = &[];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    /// The database files are damaged: sled reported corruption, or panicked reading them.
    #[error(
        "refusing to start: the store at {path} is damaged and cannot be opened ({detail}). Restore the state directory from a backup, or run `brainstemd recover --accept-loss --state-dir {}` to move the damaged database aside and start with an empty one (its tokens, episodes and audit records are then lost)",
        path.parent().unwrap_or(path).display()
    )]
    Damaged { path: PathBuf, detail: String },
    /// The database does not hold what its integrity record says it held: rolled back, replaced,
    /// emptied or missing. Refused, never served.
    #[error(
        "refusing to start: the state in {state_dir} fails its integrity check: {problem}. Restore {state_dir} from a backup, or accept the loss with `brainstemd recover --accept-loss --state-dir {state_dir}`"
    )]
    Integrity { state_dir: PathBuf, problem: String },
    /// The filesystem holding the store is (nearly) full: writes are refused until space is freed.
    #[error(
        "the filesystem holding {path} is full ({available} bytes free, {reserve} reserved): writes are refused until space is freed"
    )]
    NoSpace {
        path: PathBuf,
        available: u64,
        reserve: u64,
    },
    /// Another process (another brainstemd) has the database open.
    #[error(
        "another process{} holds the state directory {}: stop it first, or give this brainstemd another --state-dir",
        holder.map(|pid| format!(" (pid {pid}{})", process_name(pid))).unwrap_or_default(),
        path.parent().unwrap_or(path).display()
    )]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("cannot prepare the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("corrupted record {tree}/{key}: {reason}")]
    Corrupt {
        tree: String,
        key: String,
        reason: String,
    },
    #[error(
        "the store has schema version {found}, newer than this build understands ({supported}); run a newer brainstemd"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("cannot encode a {tree} record: {source}")]
    Encode {
        tree: String,
        source: serde_json::Error,
    },
    #[error(
        "the store has {subsystem} schema version {found}, newer than this build understands ({supported}); run a newer brainstemd"
    )]
    SubsystemSchemaTooNew {
        subsystem: String,
        found: u32,
        supported: u32,
    },
    #[error("no migration of the {subsystem} schema from version {from} towards {to}")]
    NoMigration {
        subsystem: String,
        from: u32,
        to: u32,
    },
}

impl StoreError {
    /// The same error again, for each of several callers that failed together (`StoreError` is not
    /// `Clone`: some sources are not). A full disk stays [`StoreError::NoSpace`], sled's errors stay
    /// themselves; anything else keeps its text.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io(err) => StoreError::Io(err.clone()),
            StoreError::NoSpace {
                path,
                available,
                reserve,
            } => StoreError::NoSpace {
                path: path.clone(),
                available: *available,
                reserve: *reserve,
            },
            StoreError::Corrupt { tree, key, reason } => StoreError::Corrupt {
                tree: tree.clone(),
                key: key.clone(),
                reason: reason.clone(),
            },
            other => StoreError::Io(sled::Error::Io(std::io::Error::other(other.to_string()))),
        }
    }
}

/// Why [`Store::close`] could not promise that sled let go of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("final flush failed: {0}")]
    Flush(#[from] StoreError),
    #[error("{handles} other store or tree handle(s) are still open")]
    StillOpen { handles: usize },
    #[error("sled still holds {path} after {waited:?}")]
    Timeout { path: PathBuf, waited: Duration },
    #[error("waiting for sled to release {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long [`Store::close`] waits for sled's own background work to let go of the database.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A value type kept in the store.
pub trait Record: Serialize + DeserializeOwned {
    /// Version written with every new value of this type.
    const VERSION: u8;

    /// Reads a payload written with an older `version`. By default older versions are refused.
    fn upgrade(version: u8, payload: &[u8]) -> Result<Self, String> {
        let _ = payload;
        Err(format!("no upgrade from record version {version}"))
    }

    /// Appends the payload of this value (at [`Record::VERSION`]) to `out`: JSON, unless a type on
    /// a hot path needs a compact form (then it overrides this and [`Record::read_payload`]).
    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }

    /// Reads a payload written at [`Record::VERSION`] by [`Record::write_payload`].
    fn read_payload(payload: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(payload).map_err(|err| format!("undecodable payload: {err}"))
    }
}

/// Encodes a record into its envelope: tag, version, CRC-32 of the payload, payload.
pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[ENVELOPE_TAG, T::VERSION, 0, 0, 0, 0]);
    value.write_payload(&mut out)?;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[2..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks an envelope's tag and checksum; returns its record version and payload. The error is a
/// human reason.
pub fn open_envelope(bytes: &[u8]) -> Result<(u8, &[u8]), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes is shorter than the envelope header",
            bytes.len()
        ));
    }
    if bytes[0] != ENVELOPE_TAG {
        return Err(format!("unknown envelope tag {:#04x}", bytes[0]));
    }
    let crc = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let payload = &bytes[HEADER_LEN..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".to_owned());
    }
    Ok((bytes[1], payload))
}

/// Decodes an envelope, checking tag, checksum and version. The error is a human reason.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, String> {
    let (version, payload) = open_envelope(bytes)?;
    if version == T::VERSION {
        T::read_payload(payload)
    } else if version > T::VERSION {
        Err(format!(
            "record version {version} is newer than this build's {}",
            T::VERSION
        ))
    } else {
        T::upgrade(version, payload)
    }
}

/// A stored value whose envelope was checked ([`Tree::get_payload`]); still sled's buffer.
pub struct Payload(sled::IVec);

impl Payload {
    /// The record version and the payload.
    pub fn get(&self) -> (u8, &[u8]) {
        (self.0[1], &self.0[HEADER_LEN..])
    }
}

/// The open database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flush: FlushPolicy,
    path: PathBuf,
    handles: Arc<Handles>,
}

/// Shared by every [`Store`] and [`Tree`] of one open database: its count is how many handles keep sled
/// open; it knows the file sled locks and owns the committer.
struct Handles {
    lock_file: PathBuf,
    committer: Committer,
    /// Held shared by every write to sled, exclusive by a snapshot ([`snapshot`]).
    gate: Arc<WriteGate>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Handles {
    /// [`StoreError::NoSpace`] while the disk-space guard refuses writes: for writers that apply
    /// through sled themselves (transactions, [`Tree::apply_now`]) before sled sees the write.
    fn refuse_if_full(&self) -> Result<(), StoreError> {
        if *self.committer.space_watch().borrow() {
            // The database lives in `<path>/db`; the error names `<path>`, like the guard's log.
            let path = self
                .lock_file
                .parent()
                .unwrap_or(&self.lock_file)
                .to_path_buf();
            return Err(StoreError::NoSpace {
                available: space::available_bytes(&path).unwrap_or(0),
                path,
                reserve: self.committer.reserve(),
            });
        }
        Ok(())
    }
}

/// Runs sled work that may wait on sled's write lock from async code: on the multi-thread runtime
/// the worker first hands its other tasks away (`block_in_place`); elsewhere it just runs.
pub(crate) fn off_the_runtime<R>(work: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Decoded `(key, value)` pairs of a [`Tree::range`].
pub type Entries<'a, T> = Box<dyn Iterator<Item = Result<(Vec<u8>, T), StoreError>> + Send + 'a>;

/// One named tree.
#[derive(Clone)]
pub struct Tree {
    name: &'static str,
    tree: sled::Tree,
    durable: bool,
    handles: Arc<Handles>,
}

impl Store {
    /// Opens (creating if needed) the database under `state_dir/db` and brings its schema, and the
    /// schema of every subsystem in [`schema::REGISTERED`], up to date.
    pub fn open(state_dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        Store::open_with(state_dir, config, schema::REGISTERED)
    }

    /// [`Store::open`] with the subsystem schemas given here: the pending migrations of each run, in
    /// order, before the store is returned.
    pub fn open_with(
        state_dir: &Path,
        config: &StoreConfig,
        schemas: &[Schema],
    ) -> Result<Store, StoreError> {
        Store::open_checked(state_dir, config, schemas, Check::Refuse).map(|(store, _)| store)
    }

    /// Opens the database after checking it against its integrity record ([`integrity`]). With
    /// [`Check::Refuse`] any problem is [`StoreError::Integrity`] and nothing is written; with
    /// [`Check::Report`] (`brainstemd recover`) the problems are returned and the store opens anyway.
    fn open_checked(
        state_dir: &Path,
        config: &StoreConfig,
        schemas: &[Schema],
        check: Check,
    ) -> Result<(Store, Vec<String>), StoreError> {
        crate::crypto::files::create_private_dir(state_dir).map_err(|source| {
            StoreError::StateDir {
                path: state_dir.to_owned(),
                source,
            }
        })?;
        let path = state_dir.join("db");
        let mut problems = Vec::new();
        let refuse = |problems: &[String]| StoreError::Integrity {
            state_dir: state_dir.to_owned(),
            problem: problems.join("; "),
        };
        let record = integrity::read(state_dir).unwrap_or_else(|err| {
            problems.push(err.to_string());
            None
        });
        if let Some(record) = &record
            && !sled_files_exist(&path)
        {
            problems.push(format!(
                "the database {} is missing, but the integrity record says it held generation {} after {} starts",
                path.display(),
                record.generation,
                record.boot_count
            ));
        }
        if check == Check::Refuse && !problems.is_empty() {
            // Before sled creates anything: a missing database is not replaced by an empty one.
            return Err(refuse(&problems));
        }
        let db = open_sled(&path, config)?;
        // sled may open a damaged log and report the damage only when it is read: here, that is
        // still a damaged store (named, with the way out), not an I/O error.
        let damaged = |err: StoreError| match err {
            StoreError::Io(source @ sled::Error::Corruption { .. }) => StoreError::Damaged {
                path: path.clone(),
                detail: source.to_string(),
            },
            corrupt @ StoreError::Corrupt { .. } => StoreError::Damaged {
                path: path.clone(),
                detail: corrupt.to_string(),
            },
            other => other,
        };
        let read_state = || -> Result<_, StoreError> {
            let meta = db.open_tree(trees::META)?;
            let store_id = match meta.get(STORE_ID_KEY)? {
                None => None,
                Some(bytes) => {
                    Some(
                        decode::<String>(&bytes).map_err(|reason| StoreError::Corrupt {
                            tree: trees::META.to_owned(),
                            key: "store_id".to_owned(),
                            reason,
                        })?,
                    )
                }
            };
            let generation = match meta.get(GENERATION_KEY)? {
                None => 0,
                Some(bytes) => decode::<u64>(&bytes).map_err(|reason| StoreError::Corrupt {
                    tree: trees::META.to_owned(),
                    key: "generation".to_owned(),
                    reason,
                })?,
            };
            let found = match &record {
                Some(record) => verify(&db, record, store_id.as_deref(), generation)?,
                None => Vec::new(),
            };
            Ok((meta, store_id, generation, found))
        };
        // A refusal lets go of the directory before it is reported (sled's threads may hold the lock
        // a moment after its last handle drops), so `recover` or a fixed build can open it at once.
        let release = |db: sled::Db| {
            drop(db);
            if let Err(err) = wait_for_release(&path.join("db"), Duration::from_secs(10)) {
                tracing::warn!(error = %err, "store lock not released after a refused open");
            }
        };
        let (meta, store_id, generation, found) = match read_state() {
            Ok(state) => state,
            Err(err) => {
                release(db);
                return Err(damaged(err));
            }
        };
        problems.extend(found);
        if record.is_none()
            && let Some(id) = &store_id
            && problems.is_empty()
        {
            problems.push(format!(
                "the integrity record {} is missing, but the database has kept one (store {id}, generation {generation})",
                integrity::path(state_dir).display()
            ));
        }
        if check == Check::Refuse && !problems.is_empty() {
            drop(meta);
            release(db);
            return Err(refuse(&problems));
        }
        let (store_id, new_id) = match store_id {
            Some(id) => (id, false),
            None => (new_store_id()?, true),
        };
        // Continue the file's write count, so the new record outranks both old slots (also when
        // `recover` replaces a record that named another database).
        let mut next = IntegrityRecord::new(store_id.clone(), generation);
        if let Some(previous) = &record {
            next.sequence = previous.sequence;
            if previous.store_id == store_id {
                next.boot_count = previous.boot_count;
            }
        }
        let guard = space::Guard::new(state_dir, config.min_free_bytes);
        let gate = Arc::new(WriteGate::default());
        let committer = Committer::start(
            db.clone(),
            Keeper {
                meta: meta.clone(),
                generation,
                record: None,
                create: Some((state_dir.to_owned(), next)),
                guard,
                gate: gate.clone(),
            },
        )
        .map_err(|err| StoreError::Open {
            path: path.clone(),
            source: sled::Error::Io(err),
        })?;
        let store = Store {
            db,
            flush: config.flush,
            handles: Arc::new(Handles {
                // sled keeps an exclusive flock on this file while any of its handles lives.
                lock_file: path.join("db"),
                committer,
                gate,
            }),
            path,
        };
        let opened = store
            .migrate()
            .and_then(|()| schemas.iter().try_for_each(|s| store.migrate_subsystem(s)))
            .and_then(|()| {
                // The store id and the first record land together, after everything above.
                let mut batch = Writes::new(meta.clone());
                if new_id {
                    batch.insert(
                        STORE_ID_KEY,
                        encode(&store_id).map_err(|source| StoreError::Encode {
                            tree: trees::META.to_owned(),
                            source,
                        })?,
                    );
                }
                store.handles.committer.commit_job(
                    Some(batch),
                    true,
                    new_id,
                    Mark::Checkpoint,
                    None,
                )
            });
        if let Err(err) = opened {
            // Let go of the directory before reporting, so a fixed build can open it right away.
            if let Err(close) = store.close() {
                tracing::warn!(error = %close, "store not closed after a failed open");
            }
            return Err(err);
        }
        Ok((store, problems))
    }

    /// `brainstemd recover --accept-loss`: opens the state in `state_dir` whatever its integrity
    /// check says (moving a database sled cannot open aside to `db.damaged-<unix ms>` and starting an
    /// empty one), records the recovery in `meta` (the next start logs and audits it, and the token
    /// service distrusts every token issued before it) and seals a new integrity record for what is
    /// there now. Returns what was wrong; no recovery is recorded when nothing was.
    pub fn recover(state_dir: &Path, config: &StoreConfig) -> Result<RecoveryReport, StoreError> {
        let mut moved_aside = None;
        let (store, mut problems) =
            match Store::open_checked(state_dir, config, schema::REGISTERED, Check::Report) {
                Err(StoreError::Damaged { path, detail }) => {
                    let aside = state_dir.join(format!("db.damaged-{}", unix_ms_now()));
                    std::fs::rename(&path, &aside).map_err(|source| StoreError::StateDir {
                        path: path.clone(),
                        source,
                    })?;
                    let (store, mut problems) =
                        Store::open_checked(state_dir, config, schema::REGISTERED, Check::Report)?;
                    problems.insert(
                        0,
                        format!(
                            "the database was damaged ({detail}); moved to {}",
                            aside.display()
                        ),
                    );
                    moved_aside = Some(aside);
                    (store, problems)
                }
                other => other?,
            };
        problems.dedup();
        let report = RecoveryReport {
            problems,
            moved_aside,
        };
        if !report.problems.is_empty() {
            let at = unix_ms_now();
            let record = RecoveryRecord {
                at_unix_ms: at,
                problems: report.problems.clone(),
                moved_aside: report.moved_aside.as_ref().map(|p| p.display().to_string()),
                announced: false,
            };
            let mut key = RECOVERY_PREFIX.to_vec();
            key.extend_from_slice(&at.to_be_bytes());
            store.tree(trees::META)?.put_durable(&key, &record)?;
            store.seal()?;
        }
        store.close().map_err(|err| {
            StoreError::Io(sled::Error::Io(std::io::Error::other(err.to_string())))
        })?;
        Ok(report)
    }

    /// Recoveries with accepted loss, oldest first.
    pub fn recoveries(&self) -> Result<Vec<RecoveryRecord>, StoreError> {
        self.tree(trees::META)?
            .scan_prefix::<RecoveryRecord>(RECOVERY_PREFIX)
            .map(|item| item.map(|(_, record)| record))
            .collect()
    }

    /// Recoveries not yet reported by a start; marks them reported.
    pub fn announce_recoveries(&self) -> Result<Vec<RecoveryRecord>, StoreError> {
        let meta = self.tree(trees::META)?;
        let mut fresh = Vec::new();
        for item in meta.scan_prefix::<RecoveryRecord>(RECOVERY_PREFIX) {
            let (key, mut record) = item?;
            if !record.announced {
                fresh.push(record.clone());
                record.announced = true;
                meta.put_durable(&key, &record)?;
            }
        }
        Ok(fresh)
    }

    /// `true` while writes are refused for lack of disk space (health `store.writes`).
    pub fn space_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.handles.committer.space_watch()
    }

    /// [`StoreError::NoSpace`] while the disk-space guard refuses writes (for writers that do not go
    /// through the committer: transactions).
    pub(crate) fn refuse_if_full(&self) -> Result<(), StoreError> {
        self.handles.refuse_if_full()
    }

    /// The flush after a write made through sled directly (a transaction): counted as a write.
    pub(crate) fn flush_written(&self) -> Result<(), StoreError> {
        self.handles
            .committer
            .commit_job(None, true, true, Mark::Later, None)
    }

    pub(crate) async fn flush_written_async(&self) -> Result<(), StoreError> {
        self.handles
            .committer
            .begin_job(None, true, true)
            .wait()
            .await
    }

    /// The generation of the last flush that carried writes.
    pub fn generation(&self) -> u64 {
        self.handles.committer.generation()
    }

    /// Flushes and writes the integrity record with every tree's exact state (`clean`).
    fn seal(&self) -> Result<(), StoreError> {
        self.handles
            .committer
            .commit_job(None, true, false, Mark::Seal, Some(CLOSE_TIMEOUT))
    }

    /// Flushes, lets go of the database and returns once sled has released its files: a new
    /// [`Store::open`] of the same directory then succeeds at once. Every other [`Store`] and [`Tree`]
    /// handle must be dropped first ([`CloseError::StillOpen`] otherwise). sled finishes some writes on
    /// its own threads, which hold the database a moment after the last handle is dropped; this waits
    /// for them (on the file lock, up to a bound) instead of leaving callers to retry.
    ///
    /// The final flush and the committer's end are bounded by the same timeout, so a stop ends even
    /// when the disk does not answer.
    pub fn close(self) -> Result<(), CloseError> {
        self.handles
            .committer
            .commit_blocking(None, true, Some(CLOSE_TIMEOUT))?;
        let Store { db, handles, .. } = self;
        drop(db);
        let handles = Arc::try_unwrap(handles).map_err(|shared| CloseError::StillOpen {
            handles: Arc::strong_count(&shared) - 1,
        })?;
        // The committer holds a database handle of its own; it lets go when its thread ends.
        if !handles.committer.stop(CLOSE_TIMEOUT) {
            return Err(CloseError::Timeout {
                path: handles.lock_file.clone(),
                waited: CLOSE_TIMEOUT,
            });
        }
        wait_for_release(&handles.lock_file, CLOSE_TIMEOUT)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn flush_policy(&self) -> FlushPolicy {
        self.flush
    }

    /// Opens a named tree (see [`trees`]).
    pub fn tree(&self, name: &'static str) -> Result<Tree, StoreError> {
        Ok(Tree {
            name,
            tree: self.db.open_tree(name)?,
            durable: self.flush == FlushPolicy::Always,
            handles: self.handles.clone(),
        })
    }

    /// Writes everything buffered to disk: blocks until the committer's next flush completed.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.handles.committer.commit_blocking(None, true, None)
    }

    /// [`Store::flush`] without blocking a runtime thread.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.handles.committer.begin(None, true).wait().await
    }

    /// How many flushes the committer did and how many durable writes they answered.
    pub fn commit_stats(&self) -> CommitStats {
        self.handles.committer.stats()
    }

    /// Test hook: changes the disk-space reserve, as if the filesystem filled up or was freed.
    #[cfg(test)]
    pub(crate) fn set_reserve_for_test(&self, reserve: u64) {
        self.handles.committer.set_reserve(reserve);
    }

    /// Test hook: jobs handed to the committer so far.
    #[cfg(test)]
    pub(crate) fn commits_submitted(&self) -> u64 {
        self.handles.committer.submitted()
    }

    /// Test hook: while held the committer takes no work, as if sled or the disk stalled.
    #[cfg(test)]
    pub(crate) fn hold_commits(&self, held: bool) {
        self.handles.committer.hold(held);
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.tree(trees::META)?.get::<u32>(SCHEMA_KEY)?.unwrap_or(0))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let meta = self.tree(trees::META)?;
        let Some(mut found) = meta.get::<u32>(SCHEMA_KEY)? else {
            meta.put_durable(SCHEMA_KEY, &SCHEMA_VERSION)?;
            return Ok(());
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let stored = found;
        for migration in MIGRATIONS.iter().filter(|m| m.to > stored) {
            tracing::info!(from = found, to = migration.to, "migrating store schema");
            (migration.run)(self)?;
            meta.put_durable(SCHEMA_KEY, &migration.to)?;
            found = migration.to;
        }
        Ok(())
    }

    /// Records this start: bumps the boot count, remembers the first start, and reports whether the
    /// previous run stopped cleanly. Always flushed, whatever the flush policy.
    pub fn record_boot(&self) -> Result<BootInfo, StoreError> {
        let meta = self.tree(trees::META)?;
        let now = unix_ms_now();
        let previous = meta.get::<BootRecord>(BOOT_KEY)?;
        let record = BootRecord {
            boot_count: previous.as_ref().map_or(0, |p| p.boot_count) + 1,
            first_start_unix_ms: previous.as_ref().map_or(now, |p| p.first_start_unix_ms),
            last_start_unix_ms: now,
            clean_shutdown: false,
        };
        self.handles.committer.set_boot_count(record.boot_count);
        meta.put_durable(BOOT_KEY, &record)?;
        Ok(BootInfo {
            boot_count: record.boot_count,
            first_start_unix_ms: record.first_start_unix_ms,
            started_unix_ms: now,
            previous_shutdown_clean: previous.is_none_or(|p| p.clean_shutdown),
        })
    }

    /// Marks the current run as stopped cleanly and flushes. The last store write of a graceful stop;
    /// bounded like [`Store::close`], so a stalled store cannot hold the stop.
    pub fn mark_clean_shutdown(&self) -> Result<(), StoreError> {
        self.mark_clean_shutdown_within(Some(CLOSE_TIMEOUT))
    }

    /// [`Store::mark_clean_shutdown`] with the seal bounded by `limit` (`None`: however long the
    /// seal's pass over every tree takes — an offline restore of a large store).
    pub fn mark_clean_shutdown_within(&self, limit: Option<Duration>) -> Result<(), StoreError> {
        let meta = self.tree(trees::META)?;
        let mut batch = None;
        if let Some(mut record) = meta.get::<BootRecord>(BOOT_KEY)? {
            record.clean_shutdown = true;
            let mut write = Batch::default();
            write.put(&meta, BOOT_KEY, &record)?;
            batch = Some(write.into_writes(&meta.tree));
        }
        let wrote = batch.is_some();
        self.handles
            .committer
            .commit_job(batch, true, wrote, Mark::Seal, limit)
    }
}

impl Tree {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Reads and decodes one value. A value that fails its checks is [`StoreError::Corrupt`].
    pub fn get<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: self.name.to_owned(),
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason,
                }),
        }
    }

    /// Writes one value, flushed before returning when the flush policy is `always`. Blocks the
    /// calling thread on the committer: for start-up, tests and blocking threads; async code uses
    /// [`Tree::put_async`].
    pub fn put<T: Record>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let batch = self.single_put(key, value)?;
        self.committer()
            .commit_blocking(Some(batch), self.durable, None)
    }

    /// Async [`Tree::put`]: the write and the flush happen on the committer; nothing blocks a runtime
    /// thread.
    pub async fn put_async<T: Record>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let batch = self.single_put(key, value)?;
        self.committer()
            .begin(Some(batch), self.durable)
            .wait()
            .await
    }

    /// Writes one value and flushes, whatever the policy (bookkeeping that must survive a crash).
    /// Blocking, like [`Tree::put`].
    pub fn put_durable<T: Record>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let batch = self.single_put(key, value)?;
        self.committer().commit_blocking(Some(batch), true, None)
    }

    /// Hands one write with a flush to the committer and returns at once; the write is durable when
    /// the returned [`Durable`] resolves `Ok`. The wait can be given up and resumed (the store probe
    /// keeps an outstanding canary across its restarts).
    pub fn put_then_flush<T: Record>(&self, key: &[u8], value: &T) -> Result<Durable, StoreError> {
        let batch = self.single_put(key, value)?;
        Ok(self.committer().begin(Some(batch), true))
    }

    /// Removes a key; whether it was there. Blocking, like [`Tree::put`].
    pub fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        let existed = {
            let _writing = self.handles.gate.enter();
            self.tree.remove(key)?.is_some()
        };
        if self.durable {
            self.committer()
                .commit_job(None, true, existed, Mark::Later, None)?;
        }
        Ok(existed)
    }

    /// Writes many values in one atomic batch and, when the policy is `always`, one flush.
    pub async fn put_batch_async<T: Record>(
        &self,
        items: &[(Vec<u8>, T)],
    ) -> Result<(), StoreError> {
        let mut batch = Writes::new(self.tree.clone());
        batch.ops.reserve(items.len());
        for (key, value) in items {
            let bytes = encode(value).map_err(|source| StoreError::Encode {
                tree: self.name.to_owned(),
                source,
            })?;
            batch.insert(key.as_slice(), bytes);
        }
        self.committer()
            .begin(Some(batch), self.durable)
            .wait()
            .await
    }

    /// Decoded values whose keys fall in `range`, in key order (descending when `reverse`). A value
    /// that fails its checks is yielded as [`StoreError::Corrupt`].
    pub fn range<T: Record, R: std::ops::RangeBounds<Vec<u8>>>(
        &self,
        range: R,
        reverse: bool,
    ) -> Entries<'_, T> {
        let iter = self.tree.range(range);
        let decode_entry = move |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (key, bytes) = entry?;
            let value = decode(&bytes).map_err(|reason| StoreError::Corrupt {
                tree: self.name.to_owned(),
                key: String::from_utf8_lossy(&key).into_owned(),
                reason,
            })?;
            Ok((key.to_vec(), value))
        };
        if reverse {
            Box::new(iter.rev().map(decode_entry))
        } else {
            Box::new(iter.map(decode_entry))
        }
    }

    /// Every entry in key order, decoded (see [`Tree::range`]).
    pub fn scan<T: Record>(&self) -> Entries<'_, T> {
        self.range(.., false)
    }

    /// Removes several keys and flushes once (when the policy is `always`).
    pub async fn remove_many(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = Writes::new(self.tree.clone());
        for key in keys {
            batch.remove(key.as_slice());
        }
        self.committer()
            .begin(Some(batch), self.durable)
            .wait()
            .await
    }

    /// Reads one value and checks its envelope without decoding it: for a reader that decodes the
    /// payload in place ([`Payload::get`]). A value that fails its checks is [`StoreError::Corrupt`].
    pub fn get_payload(&self, key: &[u8]) -> Result<Option<Payload>, StoreError> {
        let Some(bytes) = self.tree.get(key)? else {
            return Ok(None);
        };
        match open_envelope(&bytes) {
            Ok(_) => Ok(Some(Payload(bytes))),
            Err(reason) => Err(StoreError::Corrupt {
                tree: self.name.to_owned(),
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            }),
        }
    }

    /// The raw stored bytes of a key, envelope included (for tests that inspect what is on disk).
    pub fn raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// The smallest and largest keys.
    pub fn first_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.first()?.map(|(k, _)| k.to_vec()))
    }

    pub fn last_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.last()?.map(|(k, _)| k.to_vec()))
    }

    /// Removes every key below `end` (exclusive), oldest first, at most `limit`; returns how many.
    pub async fn remove_below(&self, end: &[u8], limit: usize) -> Result<usize, StoreError> {
        let mut batch = Writes::new(self.tree.clone());
        let mut removed = 0;
        for entry in self.tree.range(..end.to_vec()).keys().take(limit) {
            batch.remove(entry?);
            removed += 1;
        }
        if removed > 0 {
            self.committer()
                .begin(Some(batch), self.durable)
                .wait()
                .await?;
        }
        Ok(removed)
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Every value whose key starts with `prefix`, in key order. Each item is decoded on its own, so
    /// one damaged value is one `Err` ([`StoreError::Corrupt`]) and the rest still read.
    pub fn scan_prefix<T: Record>(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, T), StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(move |item| {
            let (key, bytes) = item?;
            decode(&bytes)
                .map(|value| (key.to_vec(), value))
                .map_err(|reason| StoreError::Corrupt {
                    tree: self.name.to_owned(),
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason,
                })
        })
    }

    /// Applies a batch atomically (all or nothing, also across a crash), flushed before returning when
    /// the flush policy is `always`.
    pub async fn apply_async(&self, batch: Batch) -> Result<(), StoreError> {
        self.committer()
            .begin(Some(batch.into_writes(&self.tree)), self.durable)
            .wait()
            .await
    }

    /// Hands `batch` to the committer, which applies it (in one sled batch with the other writes to
    /// this tree queued beside it), runs `applied` with the outcome on its own thread, and flushes
    /// when the policy is `always`; the returned [`Durable`] resolves after that. For a writer that
    /// keeps an in-memory mirror of the tree: it updates the mirror in `applied`, which runs whether
    /// or not the wait is given up, so memory never falls behind the disk; readers see the batch
    /// once `applied` has started. `applied` must be quick and must not wait on the store.
    pub fn apply_then(
        &self,
        batch: Batch,
        applied: impl FnOnce(Result<(), &StoreError>) + Send + 'static,
    ) -> Durable {
        self.committer().begin_then(
            batch.into_writes(&self.tree),
            self.durable,
            Box::new(applied),
        )
    }

    /// Applies `batch` on the calling thread, so readers see it when this returns, and hands its
    /// flush to the committer: the batch is durable (policy `always`) once the returned [`Durable`]
    /// resolves `Ok`. For a writer that keeps an in-memory mirror of the tree and must not let a
    /// cancelled wait leave the mirror behind the disk: it updates the mirror between the two. The
    /// disk-space guard refuses the batch before sled sees it. On the multi-thread runtime sled's
    /// apply runs under `block_in_place`, as a transaction's does.
    pub fn apply_now(&self, batch: Batch) -> Result<Durable, StoreError> {
        self.handles.refuse_if_full()?;
        off_the_runtime(|| {
            let _writing = self.handles.gate.enter();
            self.tree.apply_batch(batch.into_sled())
        })?;
        Ok(self.committer().begin_job(None, self.durable, true))
    }

    /// Blocking [`Tree::apply_async`].
    pub fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.committer()
            .commit_blocking(Some(batch.into_writes(&self.tree)), self.durable, None)
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    fn committer(&self) -> &Committer {
        &self.handles.committer
    }

    /// One encoded write, as a batch for the committer.
    fn single_put<T: Record>(&self, key: &[u8], value: &T) -> Result<Writes, StoreError> {
        let bytes = encode(value).map_err(|source| StoreError::Encode {
            tree: self.name.to_owned(),
            source,
        })?;
        let mut batch = Writes::new(self.tree.clone());
        batch.insert(key, bytes);
        Ok(batch)
    }
}

/// Writes and removals applied together by [`Tree::apply`].
/// Writes and removals applied together by [`Tree::apply`], in order (a later write of a key wins).
#[derive(Default)]
pub struct Batch {
    ops: Vec<(sled::IVec, Option<sled::IVec>)>,
}

impl Batch {
    pub fn put<T: Record>(&mut self, tree: &Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes = encode(value).map_err(|source| StoreError::Encode {
            tree: tree.name.to_owned(),
            source,
        })?;
        self.ops.push((key.into(), Some(bytes.into())));
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.ops.push((key.into(), None));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn into_writes(self, tree: &sled::Tree) -> Writes {
        Writes {
            tree: tree.clone(),
            ops: self.ops,
        }
    }

    fn into_sled(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.ops {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }
}

impl Record for u32 {
    const VERSION: u8 = 1;
}

impl Record for u64 {
    const VERSION: u8 = 1;
}

impl Record for String {
    const VERSION: u8 = 1;
}

/// What the store remembers about starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootRecord {
    pub boot_count: u64,
    pub first_start_unix_ms: u64,
    pub last_start_unix_ms: u64,
    pub clean_shutdown: bool,
}

impl Record for BootRecord {
    const VERSION: u8 = 1;
}

/// This start, as [`Store::record_boot`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    pub boot_count: u64,
    pub first_start_unix_ms: u64,
    pub started_unix_ms: u64,
    pub previous_shutdown_clean: bool,
}

/// How [`Store::open_checked`] treats a failed integrity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Refuse,
    Report,
}

/// One `brainstemd recover --accept-loss`, kept in `meta`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryRecord {
    pub at_unix_ms: u64,
    /// What the integrity check found.
    pub problems: Vec<String>,
    /// Where a database sled could not open was moved.
    pub moved_aside: Option<String>,
    /// A start has logged and audited it.
    pub announced: bool,
}

impl Record for RecoveryRecord {
    const VERSION: u8 = 1;
}

/// What [`Store::recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub problems: Vec<String>,
    pub moved_aside: Option<PathBuf>,
}

/// Whether sled ever created its files in `path`.
fn sled_files_exist(path: &Path) -> bool {
    path.join("conf").exists() || path.join("db").exists()
}

fn open_sled(path: &Path, config: &StoreConfig) -> Result<sled::Db, StoreError> {
    let sled_config = sled::Config::new()
        .path(path)
        .cache_capacity(config.cache_capacity_bytes)
        .flush_every_ms(None);
    // sled panics on some damaged files ("tried to serialize Uninitialized"); an operator gets a
    // message that names the directory and what to do, not a Rust panic and exit 101.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sled_config.open()))
        .map_err(|panic| StoreError::Damaged {
            path: path.to_owned(),
            detail: panic_text(panic.as_ref()),
        })?;
    opened.map_err(|source| match source {
        sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_owned(),
                holder: lock_holder(&path.join("db")),
            }
        }
        sled::Error::Corruption { .. } => StoreError::Damaged {
            path: path.to_owned(),
            detail: source.to_string(),
        },
        source => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    })
}

/// The pid holding a flock on `file`, from `/proc/locks` (Linux), if it can be known.
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 19242 fe:00:6357019 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let device_inode = fields.get(5)?;
        let found: u64 = device_inode.rsplit(':').next()?.parse().ok()?;
        (found == inode).then(|| fields.get(4)?.parse().ok())?
    })
}

/// `" brainstemd"`-style suffix naming the process `pid` runs, when /proc says.
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| format!(", {}", name.trim()))
        .unwrap_or_default()
}

fn new_store_id() -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Io(sled::Error::Io(std::io::Error::other("no randomness"))))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every non-empty tree's entry count, and a SHA-256 over the keys and values of the trees in
/// [`trees::DIGESTED`]. A full scan: only at a clean stop and the start after it.
fn tree_marks(db: &sled::Db) -> Result<std::collections::BTreeMap<String, TreeMark>, StoreError> {
    let mut marks = std::collections::BTreeMap::new();
    for name in db.tree_names() {
        let Ok(text) = std::str::from_utf8(&name) else {
            continue;
        };
        if text == "__sled__default" {
            continue;
        }
        let tree = db.open_tree(&name)?;
        let mut digest = trees::DIGESTED
            .contains(&text)
            .then(|| ring::digest::Context::new(&ring::digest::SHA256));
        let mut entries = 0u64;
        for item in tree.iter() {
            let (key, value) = item?;
            entries += 1;
            if let Some(digest) = digest.as_mut() {
                for part in [&key, &value] {
                    digest.update(&(part.len() as u64).to_le_bytes());
                    digest.update(part);
                }
            }
        }
        if entries > 0 {
            marks.insert(
                text.to_owned(),
                TreeMark {
                    entries,
                    digest: digest.map(|d| hex(d.finish().as_ref())),
                },
            );
        }
    }
    Ok(marks)
}

/// What is wrong with the database `db` (store id `store_id`, generation `generation`) measured
/// against `record`; empty when nothing is.
fn verify(
    db: &sled::Db,
    record: &IntegrityRecord,
    store_id: Option<&str>,
    generation: u64,
) -> Result<Vec<String>, StoreError> {
    let written = record.written_unix_ms;
    let Some(store_id) = store_id else {
        return Ok(vec![format!(
            "the database is empty or new, but the integrity record (written at unix ms {written}) says it held generation {} after {} starts",
            record.generation, record.boot_count
        )]);
    };
    if store_id != record.store_id {
        return Ok(vec![format!(
            "the database is another one (store id {store_id}) than the integrity record names ({})",
            record.store_id
        )]);
    }
    if generation < record.generation {
        return Ok(vec![format!(
            "the database was rolled back: it holds generation {generation}, but generation {} was on disk (integrity record written at unix ms {written})",
            record.generation
        )]);
    }
    if !record.clean || generation != record.generation {
        return Ok(Vec::new());
    }
    // Nothing was written since a clean stop: the state must be exactly what it was.
    let found = tree_marks(db)?;
    let mut problems = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        found.keys().chain(record.trees.keys()).collect();
    for name in names {
        let (now, then) = (found.get(name), record.trees.get(name));
        let entries = |m: Option<&TreeMark>| m.map_or(0, |m| m.entries);
        if entries(now) != entries(then) {
            problems.push(format!(
                "tree {name} holds {} entries, {} at the clean stop",
                entries(now),
                entries(then)
            ));
        } else if now.and_then(|m| m.digest.as_ref()) != then.and_then(|m| m.digest.as_ref()) {
            problems.push(format!(
                "tree {name} differs from its state at the clean stop (digest mismatch)"
            ));
        }
    }
    Ok(problems)
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The text of a caught panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "sled panicked while reading its files".to_owned())
}

/// Blocks until nobody holds the flock on `lock_file` (sled's lock), at most `limit`. A helper thread
/// takes the lock on its own descriptor (flock locks of separate opens conflict even within one
/// process), then releases it at once and reports.
fn wait_for_release(lock_file: &Path, limit: Duration) -> Result<(), CloseError> {
    use std::os::fd::AsRawFd;
    let lock_err = |source| CloseError::Lock {
        path: lock_file.to_owned(),
        source,
    };
    let file = std::fs::File::open(lock_file).map_err(lock_err)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("store-close".to_owned())
        .spawn(move || {
            let result = loop {
                // SAFETY: flock(2) on a descriptor owned by `file`, which outlives the call.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
                if rc == 0 {
                    break Ok(());
                }
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    break Err(err);
                }
            };
            // Closing our descriptor releases the lock before anyone hears that it is free.
            drop(file);
            let _ = tx.send(result);
        })
        .map_err(lock_err)?;
    match rx.recv_timeout(limit) {
        Ok(result) => result.map_err(lock_err),
        Err(_) => Err(CloseError::Timeout {
            path: lock_file.to_owned(),
            waited: limit,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flush: FlushPolicy) -> StoreConfig {
        StoreConfig {
            flush,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        }
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V1 {
        name: String,
    }
    impl Record for V1 {
        const VERSION: u8 = 1;
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V2 {
        name: String,
        weight: u32,
    }
    impl Record for V2 {
        const VERSION: u8 = 2;
        fn upgrade(version: u8, payload: &[u8]) -> Result<Self, String> {
            match version {
                1 => {
                    let old: V1 = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
                    Ok(V2 {
                        name: old.name,
                        weight: 1,
                    })
                }
                other => Err(format!("no upgrade from {other}")),
            }
        }
    }

    #[test]
    fn codec_round_trips_and_upgrades_older_versions() {
        let bytes = encode(&V1 { name: "a".into() }).unwrap();
        assert_eq!(bytes[0], ENVELOPE_TAG);
        assert_eq!(bytes[1], 1);
        assert_eq!(decode::<V1>(&bytes).unwrap(), V1 { name: "a".into() });
        // An old value read by a newer type goes through its upgrade.
        assert_eq!(
            decode::<V2>(&bytes).unwrap(),
            V2 {
                name: "a".into(),
                weight: 1
            }
        );
        // A value from a newer build is refused, not misread.
        let newer = encode(&V2 {
            name: "b".into(),
            weight: 3,
        })
        .unwrap();
        assert!(decode::<V1>(&newer).unwrap_err().contains("newer"));
    }

    #[test]
    fn codec_rejects_damage() {
        let mut bytes = encode(&V1 { name: "abc".into() }).unwrap();
        assert!(decode::<V1>(&bytes[..3]).unwrap_err().contains("shorter"));
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        assert_eq!(decode::<V1>(&bytes).unwrap_err(), "checksum mismatch");
        bytes[0] = 0;
        assert!(decode::<V1>(&bytes).unwrap_err().contains("tag"));
    }

    #[test]
    fn corrupted_value_is_reported_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        let tree = store.tree(trees::META).unwrap();
        tree.put(b"k", &V1 { name: "x".into() }).unwrap();
        let mut raw = store
            .db
            .open_tree(trees::META)
            .unwrap()
            .get(b"k")
            .unwrap()
            .unwrap()
            .to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        store
            .db
            .open_tree(trees::META)
            .unwrap()
            .insert(b"k", raw)
            .unwrap();
        match tree.get::<V1>(b"k") {
            Err(StoreError::Corrupt { tree, key, reason }) => {
                assert_eq!(
                    (tree.as_str(), key.as_str(), reason.as_str()),
                    ("meta", "k", "checksum mismatch")
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn boot_history_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
            let first = store.record_boot().unwrap();
            assert_eq!(first.boot_count, 1);
            assert!(
                first.previous_shutdown_clean,
                "a fresh store has no unclean history"
            );
            // No clean-shutdown mark: this run "crashes" (closing only lets go of the files).
            store.close().unwrap();
        }
        let first_start;
        {
            let store = Store::open(dir.path(), &config(FlushPolicy::Interval)).unwrap();
            let second = store.record_boot().unwrap();
            assert_eq!(second.boot_count, 2);
            assert!(!second.previous_shutdown_clean);
            first_start = second.first_start_unix_ms;
            store.mark_clean_shutdown().unwrap();
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        let third = store.record_boot().unwrap();
        assert_eq!(third.boot_count, 3);
        assert!(third.previous_shutdown_clean);
        assert_eq!(third.first_start_unix_ms, first_start);
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn batches_apply_whole_and_prefix_scans_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        let tree = store.tree(trees::EPISODIC).unwrap();
        let mut batch = Batch::default();
        for i in [3u64, 1, 2] {
            batch
                .put(&tree, &[b"e".as_slice(), &i.to_be_bytes()].concat(), &i)
                .unwrap();
        }
        batch.put(&tree, b"m:next", &9u64).unwrap();
        assert_eq!(batch.len(), 4);
        tree.apply(batch).unwrap();
        let mut batch = Batch::default();
        batch.remove(&[b"e".as_slice(), &2u64.to_be_bytes()].concat());
        tree.apply(batch).unwrap();
        let values: Vec<u64> = tree
            .scan_prefix::<u64>(b"e")
            .map(|item| item.unwrap().1)
            .collect();
        assert_eq!(values, [1, 3]);
        // A damaged value is one error; the others still read.
        store
            .db
            .open_tree(trees::EPISODIC)
            .unwrap()
            .insert(
                [b"e".as_slice(), &5u64.to_be_bytes()].concat(),
                b"junk".to_vec(),
            )
            .unwrap();
        let items: Vec<_> = tree.scan_prefix::<u64>(b"e").collect();
        assert_eq!(items.len(), 3);
        assert!(matches!(items[2], Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
            store
                .tree(trees::META)
                .unwrap()
                .put(SCHEMA_KEY, &(SCHEMA_VERSION + 1))
                .unwrap();
            store.close().unwrap();
        }
        match Store::open(dir.path(), &config(FlushPolicy::Always)) {
            Err(StoreError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn state_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        Store::open(&state, &config(FlushPolicy::Always)).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    type Snapshot = std::collections::BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

    /// Every entry of every tree, raw.
    fn snapshot(store: &Store) -> Snapshot {
        let mut all = Snapshot::new();
        for name in [
            trees::EPISODIC,
            trees::TOKENS_REVOKED,
            trees::TOKEN_KEYS,
            trees::AUDIT,
        ] {
            let tree = store.tree(name).unwrap();
            let entries: Vec<_> = tree
                .tree
                .iter()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect();
            all.insert(name.to_owned(), entries);
        }
        all
    }

    fn revocation(i: u64) -> V1 {
        V1 {
            name: format!("revocation-{i:04}-marker {}", "r".repeat(40)),
        }
    }

    /// A state like the issue's: episodes, revocations and keys, written in several commits, then a
    /// clean stop. Returns what it holds, and a copy of the database taken before the last commits
    /// (for the rollback case).
    fn build_state(state: &Path, older: &Path) -> Snapshot {
        let store = Store::open(state, &config(FlushPolicy::Always)).unwrap();
        store.record_boot().unwrap();
        let episodes = store.tree(trees::EPISODIC).unwrap();
        let revoked = store.tree(trees::TOKENS_REVOKED).unwrap();
        let keys = store.tree(trees::TOKEN_KEYS).unwrap();
        for chunk in 0..4u64 {
            let items: Vec<(Vec<u8>, V1)> = (chunk * 500..(chunk + 1) * 500)
                .map(|i| {
                    let name = format!("episode {i} {}", "x".repeat(150));
                    (i.to_be_bytes().to_vec(), V1 { name })
                })
                .collect();
            futures::executor::block_on(episodes.put_batch_async(&items)).unwrap();
        }
        keys.put(
            b"k1",
            &V1 {
                name: "key one".into(),
            },
        )
        .unwrap();
        for i in 0..50u64 {
            revoked
                .put(format!("t{i:04}").as_bytes(), &revocation(i))
                .unwrap();
        }
        // The copy an operator might restore by mistake: everything but the last revocations.
        copy_dir(&state.join("db"), &older.join("db"));
        for i in 50..100u64 {
            revoked
                .put(format!("t{i:04}").as_bytes(), &revocation(i))
                .unwrap();
        }
        keys.put(
            b"k2",
            &V1 {
                name: "key two".into(),
            },
        )
        .unwrap();
        let held = snapshot(&store);
        drop((episodes, revoked, keys));
        store.mark_clean_shutdown().unwrap();
        store.close().unwrap();
        held
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    fn flip(path: &Path, at: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        for b in bytes.iter_mut().skip(at).take(16) {
            *b ^= 0xA5;
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// The damage matrix: bytes flipped at many offsets of every sled file, a revocation record
    /// damaged, the log truncated, the database deleted, emptied or rolled back to an older copy,
    /// the integrity record deleted. Each case ends in a refused open with a message naming the
    /// state directory, or in exactly the state the clean stop left — never in less, never a panic.
    /// And `recover --accept-loss` brings every refused case back to a state that opens.
    #[test]
    fn the_damage_matrix_ends_in_a_refusal_or_the_exact_state() {
        let base = tempfile::tempdir().unwrap();
        let state = base.path().join("state");
        let older = base.path().join("older");
        let held = build_state(&state, &older);
        assert_eq!(held[trees::TOKENS_REVOKED].len(), 100);
        assert_eq!(held[trees::EPISODIC].len(), 2000);
        // No false alarm: the untouched state opens, twice.
        for _ in 0..2 {
            let store = Store::open(&state, &config(FlushPolicy::Always)).unwrap();
            assert_eq!(snapshot(&store), held);
            store.mark_clean_shutdown().unwrap();
            store.close().unwrap();
        }
        let held = {
            let store = Store::open(&state, &config(FlushPolicy::Always)).unwrap();
            let now = snapshot(&store);
            store.mark_clean_shutdown().unwrap();
            store.close().unwrap();
            now
        };

        type Damage = Box<dyn Fn(&Path)>;
        let mut cases: Vec<(String, Damage)> = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("db"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.metadata().unwrap().len() > 64)
            .collect();
        files.sort();
        assert!(!files.is_empty(), "sled wrote no files");
        for file in &files {
            let name = file.file_name().unwrap().to_owned();
            let len = file.metadata().unwrap().len() as usize;
            for step in 0..10usize {
                let at = len * step / 10 + 7;
                let name = name.clone();
                cases.push((
                    format!("flip {}@{at}", name.to_string_lossy()),
                    Box::new(move |dir: &Path| flip(&dir.join("db").join(&name), at)),
                ));
            }
        }
        let log = state.join("db").join("db");
        let log_bytes = std::fs::read(&log).unwrap();
        let marker = b"revocation-0000-marker";
        let first_revocation = log_bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("the first revocation is in sled's log");
        cases.push((
            "damage the first revocation".into(),
            Box::new(move |dir: &Path| flip(&dir.join("db").join("db"), first_revocation)),
        ));
        let half = log_bytes.len() / 2;
        cases.push((
            "truncate the log to half".into(),
            Box::new(move |dir: &Path| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("db").join("db"))
                    .unwrap();
                file.set_len(half as u64).unwrap();
            }),
        ));
        cases.push((
            "delete the database".into(),
            Box::new(|dir: &Path| std::fs::remove_dir_all(dir.join("db")).unwrap()),
        ));
        cases.push((
            "an empty database in its place".into(),
            Box::new(|dir: &Path| {
                std::fs::remove_dir_all(dir.join("db")).unwrap();
                let db = sled::Config::new().path(dir.join("db")).open().unwrap();
                drop(db);
            }),
        ));
        let older_db = older.join("db");
        cases.push((
            "roll back to an older copy".into(),
            Box::new(move |dir: &Path| {
                std::fs::remove_dir_all(dir.join("db")).unwrap();
                copy_dir(&older_db, &dir.join("db"));
            }),
        ));
        cases.push((
            "delete the integrity record".into(),
            Box::new(|dir: &Path| std::fs::remove_file(dir.join(integrity::FILE_NAME)).unwrap()),
        ));

        let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
        for (what, damage) in &cases {
            let case = tempfile::tempdir().unwrap();
            let dir = case.path().join("state");
            copy_dir(&state, &dir);
            copy_dir(&state.join("db"), &dir.join("db"));
            damage(&dir);
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Store::open(&dir, &config(FlushPolicy::Always)).map(|store| {
                    let now = snapshot(&store);
                    store.close().unwrap();
                    now
                })
            }));
            let outcome = match opened {
                Err(_) => panic!("{what}: escaped as a panic"),
                Ok(Ok(now)) => {
                    assert!(
                        now == held,
                        "{what}: opened with a state other than the clean stop's"
                    );
                    "exact state"
                }
                Ok(Err(err)) => {
                    let text = err.to_string();
                    assert!(
                        text.contains(&dir.display().to_string()),
                        "{what}: the refusal does not name the state directory: {text}"
                    );
                    // The way out works: recover, then the state opens (with what survived).
                    let report = Store::recover(&dir, &config(FlushPolicy::Always))
                        .unwrap_or_else(|e| panic!("{what}: recover failed: {e}"));
                    assert!(!report.problems.is_empty(), "{what}: recover found nothing");
                    let store = Store::open(&dir, &config(FlushPolicy::Always))
                        .unwrap_or_else(|e| panic!("{what}: no open after recover: {e}"));
                    assert_eq!(store.recoveries().unwrap().len(), 1, "{what}");
                    store.close().unwrap();
                    "refused"
                }
            };
            *outcomes.entry(outcome).or_insert(0) += 1;
        }
        // The cases built to lose state are all refused; and some flips do hit live data.
        assert!(
            outcomes.get("refused").copied().unwrap_or(0) >= 6,
            "{outcomes:?}"
        );
        eprintln!("damage matrix over {} cases: {outcomes:?}", cases.len());
    }

    /// Polls `done` until it holds; fails after 10 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_integrity_record_follows_every_flushed_generation() {
        for flush in [FlushPolicy::Always, FlushPolicy::Interval] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &config(flush)).unwrap();
            let opened = integrity::read(dir.path()).unwrap().unwrap();
            assert_eq!(opened.generation, store.generation(), "{flush:?}");
            assert!(!opened.clean);
            let tree = store.tree(trees::EPISODIC).unwrap();
            for i in 0..5u64 {
                tree.put(&i.to_be_bytes(), &i).unwrap();
            }
            store.flush().unwrap();
            let flushed = store.generation();
            assert!(
                flushed > opened.generation,
                "{flush:?}: writes bump the generation"
            );
            // Within the checkpoint interval, without further writes.
            eventually("the record names the flushed generation", || {
                integrity::read(dir.path()).unwrap().unwrap().generation == flushed
            });
            // A flush without writes does not bump it.
            store.flush().unwrap();
            assert_eq!(store.generation(), flushed);
            drop(tree);
            store.close().unwrap();
        }
    }

    #[test]
    fn an_unclean_stop_reopens_and_the_record_never_runs_ahead_of_the_database() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..3u64 {
            let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
            let boot = store.record_boot().unwrap();
            assert_eq!(boot.boot_count, round + 1);
            let tree = store.tree(trees::EPISODIC).unwrap();
            tree.put(&round.to_be_bytes(), &round).unwrap();
            let record = integrity::read(dir.path()).unwrap().unwrap();
            assert!(record.generation <= store.generation());
            // No clean stop: the handles go, the committer drains, nothing is sealed.
            drop(tree);
            let lock = store.handles.lock_file.clone();
            drop(store);
            wait_for_release(&lock, Duration::from_secs(10)).unwrap();
        }
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        assert_eq!(store.tree(trees::EPISODIC).unwrap().len(), 3);
        store.close().unwrap();
    }

    #[test]
    fn a_full_disk_refuses_writes_keeps_reads_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        let tree = store.tree(trees::EPISODIC).unwrap();
        tree.put(b"before", &1u64).unwrap();
        store.set_reserve_for_test(u64::MAX);
        let watch = store.space_watch();
        let err = tree.put(b"after", &2u64).unwrap_err();
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
        assert!(*watch.borrow(), "the write path reports the full disk");
        // A flush with nothing new to write does not end the spell.
        store.flush().unwrap();
        assert!(*watch.borrow(), "an empty flush proves nothing about space");
        assert_eq!(tree.get::<u64>(b"before").unwrap(), Some(1), "reads serve");
        assert_eq!(
            tree.get::<u64>(b"after").unwrap(),
            None,
            "nothing half-written"
        );
        // Transactions, which write on the caller's thread, are refused up front.
        let refused = store.transaction(&[&tree], |tx: &Transaction<'_, ()>| {
            tx.insert(&tree, b"tx", &3u64)
        });
        assert!(refused.is_err());
        assert_eq!(tree.get::<u64>(b"tx").unwrap(), None);
        // Space returns: the next write goes through and the watch clears.
        store.set_reserve_for_test(0);
        tree.put(b"later", &4u64).unwrap();
        assert!(!*watch.borrow());
        drop(tree);
        store.close().unwrap();
    }

    #[test]
    fn a_second_open_of_a_held_directory_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        let err = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap_err();
        match &err {
            StoreError::Locked { holder, .. } => {
                assert_eq!(*holder, Some(std::process::id()), "{err}")
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(!text.contains("WouldBlock"), "no raw Debug error: {text}");
        store.close().unwrap();
    }

    #[test]
    fn a_damaged_store_names_the_directory_and_the_way_out() {
        let err = StoreError::Damaged {
            path: PathBuf::from("/var/lib/brainstem/db"),
            detail: panic_text(&"tried to serialize Uninitialized"),
        };
        let text = err.to_string();
        assert!(text.contains("/var/lib/brainstem/db"), "{text}");
        assert!(text.contains("tried to serialize Uninitialized"), "{text}");
        assert!(
            text.contains("Restore the state directory from a backup"),
            "{text}"
        );
        assert!(
            text.contains("brainstemd recover --accept-loss --state-dir /var/lib/brainstem`"),
            "{text}"
        );
    }

    #[test]
    fn close_releases_the_directory_for_an_immediate_reopen() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20u64 {
            let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
            let tree = store.tree(trees::EPISODIC).unwrap();
            // Enough writes that sled seals buffers and writes them on its own threads.
            let items: Vec<(Vec<u8>, u64)> = (0..200u64)
                .map(|i| ((round * 1000 + i).to_be_bytes().to_vec(), i))
                .collect();
            futures::executor::block_on(tree.put_batch_async(&items)).unwrap();
            drop(tree);
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        assert_eq!(store.tree(trees::EPISODIC).unwrap().len(), 20 * 200);
    }

    /// A stopped actor can leave a flush behind: the wait for it is cancelled, but sled's own thread
    /// still holds the database while it writes. Close waits for that thread; dropping alone would not.
    #[test]
    fn close_waits_for_a_flush_whose_caller_went_away() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5u64 {
            let store = Store::open(dir.path(), &config(FlushPolicy::Interval)).unwrap();
            let tree = store.tree(trees::EPISODIC).unwrap();
            let blob = "x".repeat(4096);
            let items: Vec<(Vec<u8>, V1)> = (0..2000u64)
                .map(|i| {
                    let key = (round * 10_000 + i).to_be_bytes().to_vec();
                    (key, V1 { name: blob.clone() })
                })
                .collect();
            futures::executor::block_on(tree.put_batch_async(&items)).unwrap();
            // Started on sled's thread pool, then abandoned.
            let _ = store.flush_async().now_or_never();
            drop(tree);
            store.close().unwrap();
            let reopened = Store::open(dir.path(), &config(FlushPolicy::Interval))
                .expect("the directory is free right after close");
            reopened.close().unwrap();
        }
    }

    #[test]
    fn close_refuses_while_other_handles_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &config(FlushPolicy::Always)).unwrap();
        let tree = store.tree(trees::META).unwrap();
        let other = store.clone();
        match store.close() {
            Err(CloseError::StillOpen { handles }) => assert_eq!(handles, 2),
            other => panic!("expected StillOpen, got {other:?}"),
        }
        drop(tree);
        other.close().unwrap();
        Store::open(dir.path(), &config(FlushPolicy::Always))
            .unwrap()
            .close()
            .unwrap();
    }
}
