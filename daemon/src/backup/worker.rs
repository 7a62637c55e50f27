//! The `backup-schedule` worker: every `[backup] interval_seconds` it takes a backup, writes it to
//! `[backup] directory` as `brainstem-<unix ms>.bsbackup` (temporary file, fsync, rename) and removes
//! all but the newest `keep`. A failed backup is counted (`brainstem_backup_failures_total`), logged
//! and tried again at the next interval; the worker itself keeps running. Each run, success or
//! failure, leaves an audit record (principal `brainstemd`, action `backup.schedule`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::config::BackupConfig;
use super::{BackupError, Backups};
use crate::access::audit::{AuditKind, AuditRecord};
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{ActorResult, Worker, WorkerContext, WorkerPolicy};

pub const NAME: &str = "backup-schedule";
/// The audit action of a scheduled backup (an RPC's is `backup.create`).
pub const ACTION: &str = "backup.schedule";
const PREFIX: &str = "brainstem-";
const SUFFIX: &str = ".bsbackup";

pub struct BackupSchedule {
    backups: Arc<Backups>,
    interval: Duration,
    directory: PathBuf,
    keep: usize,
}

impl BackupSchedule {
    pub fn new(backups: Arc<Backups>, config: &BackupConfig) -> Self {
        BackupSchedule {
            backups,
            interval: Duration::from_secs(config.interval_seconds),
            directory: PathBuf::from(&config.directory),
            keep: usize::try_from(config.keep).unwrap_or(usize::MAX),
        }
    }
}

impl Worker for BackupSchedule {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Optional: without it backups are late (and the staleness alert says so); serving goes on.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        ctx.ready();
        loop {
            if ctx
                .idle(until_cancelled(&ctx, tokio::time::sleep(self.interval)))
                .await
                .is_none()
            {
                return Ok(());
            }
            let Some(tasks) = self.backups.tasks() else {
                ctx.set_status("waiting for the daemon to finish starting");
                continue;
            };
            let this = self.clone();
            let outcome = {
                let _busy = ctx.blocking();
                tasks
                    .spawn_blocking("backup.schedule", move || this.once())
                    .await
            };
            match outcome {
                Ok(Ok(path)) => ctx.set_status(format!("last backup {}", path.display())),
                Ok(Err(err)) => {
                    tracing::error!(error = %err, directory = %self.directory.display(), "scheduled backup failed");
                    ctx.set_status(format!("last backup failed: {err}"));
                }
                Err(err) => {
                    tracing::error!(error = %err, "scheduled backup task failed");
                }
            }
            ctx.progress();
        }
    }
}

impl BackupSchedule {
    /// One scheduled backup: create, write, prune. Counted as one success or one failure.
    pub(super) fn once(&self) -> Result<PathBuf, BackupError> {
        let started = std::time::Instant::now();
        let result = self.backups.create().and_then(|created| {
            let path = self.directory.join(format!(
                "{PREFIX}{}{SUFFIX}",
                created.header.created_unix_ms
            ));
            crate::crypto::files::create_private_dir(&self.directory).map_err(|source| {
                BackupError::Io {
                    what: "cannot create",
                    path: self.directory.clone(),
                    source,
                }
            })?;
            crate::crypto::files::write_private(&path, &created.file).map_err(|err| {
                BackupError::Io {
                    what: "cannot write",
                    path: path.clone(),
                    source: std::io::Error::other(err.to_string()),
                }
            })?;
            Ok((path, created))
        });
        match result {
            Ok((path, created)) => {
                super::events::BackupFinished {
                    ok: true,
                    duration: started.elapsed(),
                    size_bytes: created.file.len() as u64,
                    at_unix_ms: created.header.created_unix_ms,
                }
                .emit();
                tracing::info!(
                    path = %path.display(),
                    bytes = created.file.len(),
                    entries = created.entries,
                    writer_pause_ms = created.writer_pause.as_secs_f64() * 1000.0,
                    "scheduled backup written"
                );
                let removed = prune(&self.directory, self.keep);
                for old in &removed {
                    tracing::info!(path = %old.display(), "old scheduled backup removed");
                }
                self.audit(
                    format!("backup:{}", created.header.file_id),
                    true,
                    format!(
                        "wrote {} (entries={} bytes={}); removed {} old",
                        path.display(),
                        created.entries,
                        created.file.len(),
                        removed.len()
                    ),
                );
                Ok(path)
            }
            Err(err) => {
                super::events::BackupFinished {
                    ok: false,
                    duration: started.elapsed(),
                    size_bytes: 0,
                    at_unix_ms: 0,
                }
                .emit();
                self.audit(
                    format!("backup-directory:{}", self.directory.display()),
                    false,
                    format!("failed: {err}"),
                );
                Err(err)
            }
        }
    }

    /// Records one scheduled run in the audit log. Not fail-closed: the file stays on this host, so
    /// a run is not withheld when its record cannot be written (the loss is counted, as for any
    /// record).
    fn audit(&self, resource: String, ok: bool, detail: String) {
        let Some(audit) = self.backups.audit() else {
            return;
        };
        let record = AuditRecord {
            seq: 0,
            time_unix_ms: 0,
            decision_id: audit.decision_id(),
            kind: AuditKind::Admin,
            caller: "brainstemd".to_owned(),
            principal: "brainstemd".to_owned(),
            action: ACTION.to_owned(),
            resource,
            allowed: ok,
            reasons: vec![detail],
            correlation_id: String::new(),
            count: 1,
        };
        if let Err(err) = audit.record(record) {
            tracing::warn!(error = %err, "scheduled backup not audited");
        }
    }
}

/// Removes all but the newest `keep` scheduled backups in `dir`; returns what it removed. Only
/// files this worker names (`brainstem-<digits>.bsbackup`) are considered.
pub fn prune(dir: &Path, keep: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
            (!stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((stamp.parse().ok()?, e.path())))?
        })
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(keep);
    found
        .into_iter()
        .take(excess)
        .filter_map(|(_, path)| std::fs::remove_file(&path).ok().map(|()| path))
        .collect()
}
