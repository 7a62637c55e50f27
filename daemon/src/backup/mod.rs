//! Backups (docs/BACKUP.md): an online, point-in-time snapshot of every store tree plus the audit
//! log's segment files, written in the format of `brainstem_keys::backup` (header readable without
//! the key, body sealed under the master key in chunks), and the offline restore into an empty
//! state directory.
//!
//! - [`Backups::create`]: [`Store::snapshot`] copies every tree at one instant while writers are
//!   held out; the audit log's segment list (each file's committed length) is taken at the same
//!   instant; files are read, the body sealed and the file built after writers go on.
//! - [`restore`]: verify, check the schema and the key, open every chunk and count every tree
//!   before anything is written; build the state in a directory beside the target and rename it
//!   into place, so a refused file leaves the target untouched.
//! - [`worker`]: the `backup-schedule` worker (`[backup]`), keep-N retention.

pub mod api;
pub mod config;
pub mod events;
pub mod worker;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use brainstem_keys::backup::{self as format, FormatError, Header, Item};

use crate::access::audit::AuditLog;
use crate::access::audit::segment;
use crate::crypto::MasterKey;
use crate::crypto::keyset::KeySet;
use crate::runtime::tasks::Tasks;
use crate::store::config::StoreConfig;
use crate::store::{Store, StoreError, snapshot};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("cannot read the audit segment {path}: {source}")]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the backup is sealed under master key {found}, but the configured key is {configured}: point [keys] master_key_file (or --master-key-file) at the key the backup was taken with"
    )]
    WrongKey { found: String, configured: String },
    #[error("this build cannot restore the backup: {0}")]
    Schema(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error(
        "refusing to restore into {path}: it is not empty (it may hold only master.key); restore into a new directory"
    )]
    NotEmpty { path: PathBuf },
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// What one backup holds, for the reply, the log and the metrics.
#[derive(Debug, Clone)]
pub struct Created {
    pub file: Vec<u8>,
    pub header: Header,
    pub entries: u64,
    pub writer_pause: Duration,
    pub duration: Duration,
}

/// Takes backups of one running daemon's state.
pub struct Backups {
    store: Store,
    keys: Arc<KeySet>,
    /// Set once the daemon's shared parts are up (the audit log is opened after the services).
    audit: OnceLock<Arc<AuditLog>>,
    /// Where the blocking work runs (the daemon's tracked tasks), set with the audit log.
    tasks: OnceLock<Tasks>,
}

impl Backups {
    pub fn new(store: Store, keys: Arc<KeySet>) -> Backups {
        Backups {
            store,
            keys,
            audit: OnceLock::new(),
            tasks: OnceLock::new(),
        }
    }

    /// The audit log, once the daemon's shared parts are up.
    pub fn audit(&self) -> Option<Arc<AuditLog>> {
        self.audit.get().cloned()
    }

    /// Hands over the audit log (whose segments a backup copies) and the daemon's tasks.
    pub fn set_parts(&self, audit: Arc<AuditLog>, tasks: Tasks) {
        let _ = self.audit.set(audit);
        let _ = self.tasks.set(tasks);
    }

    /// The daemon's tasks, once [`Backups::set_parts`] ran.
    pub fn tasks(&self) -> Option<Tasks> {
        self.tasks.get().cloned()
    }

    /// Takes a snapshot and builds the backup file. Blocking (copies, reads files, seals).
    pub fn create(&self) -> Result<Created, BackupError> {
        let started = Instant::now();
        let audit = self.audit.get().cloned();
        let (snap, segments) = self
            .store
            .snapshot(|| audit.as_ref().map(|a| (a.dir().to_owned(), a.segments())))?;
        events::WriterPaused {
            pause: snap.writer_pause,
        }
        .emit();
        tracing::info!(
            pause_ms = snap.writer_pause.as_secs_f64() * 1000.0,
            entries = snap.entries(),
            "backup: store snapshot taken"
        );
        let mut plain = Vec::new();
        let mut counts = BTreeMap::new();
        for (tree, entries) in &snap.trees {
            counts.insert(tree.clone(), entries.len() as u64);
            for (key, value) in entries {
                format::encode_item(
                    &Item::Tree {
                        tree: tree.clone(),
                        key: key.clone(),
                        value: value.clone(),
                    },
                    &mut plain,
                );
            }
        }
        let (mut audit_files, mut audit_bytes) = (0u64, 0u64);
        if let Some((dir, segments)) = segments {
            for info in segments {
                let name = segment::file_name(info.first_seq);
                let Some(bytes) = read_prefix(&dir.join(&name), info.len)? else {
                    // Trimmed by retention since the snapshot: it is not part of the log any more.
                    continue;
                };
                audit_files += 1;
                audit_bytes += bytes.len() as u64;
                format::encode_item(&Item::Audit { name, bytes }, &mut plain);
            }
        }
        format::encode_end(&mut plain);
        let key = self.keys.current();
        let meta = format::Meta {
            created_unix_ms: snap.taken_unix_ms,
            writer: format!("brainstemd {}", env!("CARGO_PKG_VERSION")),
            schema: snap.schema.clone(),
            trees: counts,
            audit_files,
            audit_bytes,
            master_key_id: key.id().to_owned(),
        };
        let file = format::write(meta, file_id()?, &plain, |p, aad| key.seal(p, aad))?;
        let header = format::verify(&file)?.header;
        Ok(Created {
            entries: snap.entries(),
            writer_pause: snap.writer_pause,
            duration: started.elapsed(),
            header,
            file,
        })
    }
}

fn file_id() -> Result<[u8; 16], BackupError> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| BackupError::Seal("the system random source failed".to_owned()))?;
    Ok(id)
}

/// The first `len` bytes of `path`; `None` when the file is gone.
fn read_prefix(path: &Path, len: u64) -> Result<Option<Vec<u8>>, BackupError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BackupError::Audit {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|source| BackupError::Audit {
            path: path.to_owned(),
            source,
        })?;
    if (bytes.len() as u64) < len {
        return Err(BackupError::Audit {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "{} bytes, its writer committed {len}",
                bytes.len()
            )),
        });
    }
    Ok(Some(bytes))
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: Header,
    pub entries: u64,
    pub audit_files: u64,
    pub duration: Duration,
}

/// The name of the master key file a dev-mode daemon reads in its state directory.
pub const DEV_KEY_FILE: &str = "master.key";

/// Restores the backup `file` into `state_dir`, which must be absent or empty (or hold only
/// `master.key`). Everything is checked first (structure, schema, key, every chunk, the counts per
/// tree); the state is built beside `state_dir` and renamed into place. `copy_key`: also place
/// `key`'s file there as `master.key` (the dev drill), unless one is there already.
pub fn restore(
    file: &[u8],
    key: &MasterKey,
    copy_key: Option<&Path>,
    state_dir: &Path,
    config: &StoreConfig,
) -> Result<Restored, BackupError> {
    let started = Instant::now();
    let existing_key = check_target(state_dir)?;
    let parsed = format::verify(file)?;
    let header = parsed.header.clone();
    let problems = snapshot::schema_problems(&header.schema);
    if !problems.is_empty() {
        return Err(BackupError::Schema(problems.join("; ")));
    }
    if header.master_key_id != key.id() {
        return Err(BackupError::WrongKey {
            found: header.master_key_id.clone(),
            configured: key.id().to_owned(),
        });
    }
    // The body holds the store's records as stored (secret values stay sealed in them), so it is
    // taken out of the wiping buffer rather than copied.
    let plain =
        parsed.open(|sealed, aad| key.unseal(sealed, aad).map(|mut p| std::mem::take(&mut *p)))?;
    let mut trees = snapshot::TreeEntries::new();
    let mut audit = Vec::new();
    for item in format::decode_items(&plain)? {
        match item {
            Item::Tree { tree, key, value } => trees.entry(tree).or_default().push((key, value)),
            Item::Audit { name, bytes } => audit.push((name, bytes)),
        }
    }
    for (tree, expected) in &header.trees {
        let found = trees.get(tree).map_or(0, |e| e.len() as u64);
        if found != *expected {
            return Err(BackupError::Damaged(format!(
                "tree {tree} holds {found} entries, the header says {expected}"
            )));
        }
    }
    if let Some(extra) = trees.keys().find(|t| !header.trees.contains_key(*t)) {
        return Err(BackupError::Damaged(format!(
            "tree {extra} is not in the header"
        )));
    }
    if audit.len() as u64 != header.audit_files
        || audit.iter().any(|(name, _)| !valid_segment_name(name))
    {
        return Err(BackupError::Damaged(
            "the audit files do not match the header".to_owned(),
        ));
    }
    let staging = staging_dir(state_dir)?;
    let built = (|| -> Result<(), BackupError> {
        snapshot::restore_into(&staging, config, &trees)?;
        let audit_dir = staging.join("audit");
        crate::crypto::files::create_private_dir(&audit_dir)
            .map_err(io("cannot create", &audit_dir))?;
        for (name, bytes) in &audit {
            let path = audit_dir.join(name);
            crate::crypto::files::write_private(&path, bytes).map_err(|err| BackupError::Io {
                what: "cannot write",
                path: path.clone(),
                source: std::io::Error::other(err.to_string()),
            })?;
        }
        let key_source = existing_key
            .clone()
            .or_else(|| copy_key.map(Path::to_owned));
        if let Some(source) = key_source {
            let bytes =
                crate::crypto::files::read_private(&source).map_err(|err| BackupError::Io {
                    what: "cannot read",
                    path: source.clone(),
                    source: std::io::Error::other(err.to_string()),
                })?;
            let target = staging.join(DEV_KEY_FILE);
            crate::crypto::files::write_private(&target, &bytes).map_err(|err| {
                BackupError::Io {
                    what: "cannot write",
                    path: target.clone(),
                    source: std::io::Error::other(err.to_string()),
                }
            })?;
        }
        sync_dir(&audit_dir)?;
        sync_dir(&staging)?;
        Ok(())
    })();
    if let Err(err) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(err);
    }
    // The target is empty or holds only master.key (now copied into the staging directory).
    if state_dir.exists() {
        if let Some(key) = &existing_key {
            std::fs::remove_file(key).map_err(io("cannot remove", key))?;
        }
        std::fs::remove_dir(state_dir).map_err(io("cannot replace", state_dir))?;
    }
    std::fs::rename(&staging, state_dir)
        .map_err(io("cannot move the restored state to", state_dir))?;
    if let Some(parent) = state_dir.parent() {
        let _ = sync_dir(parent);
    }
    Ok(Restored {
        entries: header.trees.values().sum(),
        audit_files: header.audit_files,
        header,
        duration: started.elapsed(),
    })
}

fn valid_segment_name(name: &str) -> bool {
    name.len() == 24 && name.ends_with(".seg") && name[..20].bytes().all(|b| b.is_ascii_digit())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Refuses a target that holds anything but `master.key`; returns that key file if present.
fn check_target(state_dir: &Path) -> Result<Option<PathBuf>, BackupError> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BackupError::Io {
                what: "cannot read",
                path: state_dir.to_owned(),
                source,
            });
        }
    };
    let mut key = None;
    for entry in entries {
        let entry = entry.map_err(io("cannot read", state_dir))?;
        if entry.file_name() == DEV_KEY_FILE && entry.path().is_file() {
            key = Some(entry.path());
        } else {
            return Err(BackupError::NotEmpty {
                path: state_dir.to_owned(),
            });
        }
    }
    Ok(key)
}

/// A fresh directory beside `state_dir` (same filesystem, so the rename is atomic).
fn staging_dir(state_dir: &Path) -> Result<PathBuf, BackupError> {
    let name = state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let parent = match state_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    crate::crypto::files::create_private_dir(&parent).map_err(io("cannot create", &parent))?;
    let staging = parent.join(format!(
        ".{name}.restoring-{}-{}",
        std::process::id(),
        crate::store::unix_ms_now()
    ));
    Ok(staging)
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))
}
