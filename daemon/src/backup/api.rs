//! `brainstem.v1.Backup`: Create streams a new backup file to the caller.

use std::pin::Pin;
use std::sync::Arc;

use brainstem_proto::v1::backup_server::{Backup as BackupApi, BackupServer};
use brainstem_proto::v1::{BackupChunk, BackupSummary, CreateBackupRequest};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::Backups;
use super::events::BackupFinished;
use crate::access::audit::{AuditKind, AuditRecord};
use crate::error::ServiceError;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec, handler};

/// Take a backup (admin-only: a backup holds every tree, sealed under the master key).
pub const CREATE: &str = "backup.create";

/// Bytes per streamed message (below the default 4 MiB message limit).
const MESSAGE_BYTES: usize = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct BackupService {
    backups: Arc<Backups>,
}

#[tonic::async_trait]
impl BackupApi for BackupService {
    type CreateStream = BoxStream<BackupChunk>;

    async fn create(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Self::CreateStream>, Status> {
        let correlation_id = crate::grpc::correlation::correlation_id(&request);
        let tasks = self
            .backups
            .tasks()
            .ok_or_else(|| ServiceError::Unavailable("the daemon is still starting".to_owned()))?;
        let backups = self.backups.clone();
        let created = tasks
            .spawn_blocking("backup.create", move || backups.create())
            .await
            .map_err(|err| ServiceError::internal("backup", "backup task", err))?;
        let created = match created {
            Ok(created) => created,
            Err(err) => {
                BackupFinished {
                    ok: false,
                    duration: std::time::Duration::ZERO,
                    size_bytes: 0,
                    at_unix_ms: 0,
                }
                .emit();
                tracing::error!(error = %err, correlation_id = %correlation_id, "backup failed");
                return Err(ServiceError::internal("backup", "backup", err).into());
            }
        };
        // A backup holds everything: it leaves the daemon only once its record is on disk.
        let caller = crate::access::caller::caller(&request)?
            .principal
            .name
            .clone();
        let audit = self
            .backups
            .audit()
            .ok_or_else(|| ServiceError::Unavailable("the daemon is still starting".to_owned()))?;
        let record = AuditRecord {
            seq: 0,
            time_unix_ms: 0,
            decision_id: audit.decision_id(),
            kind: AuditKind::Admin,
            caller: caller.clone(),
            principal: caller,
            action: CREATE.to_owned(),
            resource: format!("backup:{}", created.header.file_id),
            allowed: true,
            reasons: vec![format!(
                "entries={} bytes={}",
                created.entries,
                created.file.len()
            )],
            correlation_id: correlation_id.clone(),
            count: 1,
        };
        audit.record_durable(record).await.map_err(|err| {
            ServiceError::Unavailable(format!(
                "the backup was taken but could not be audited, so it is not sent: {err}"
            ))
        })?;
        BackupFinished {
            ok: true,
            duration: created.duration,
            size_bytes: created.file.len() as u64,
            at_unix_ms: created.header.created_unix_ms,
        }
        .emit();
        tracing::info!(
            bytes = created.file.len(),
            entries = created.entries,
            audit_files = created.header.audit_files,
            writer_pause_ms = created.writer_pause.as_secs_f64() * 1000.0,
            duration_ms = created.duration.as_secs_f64() * 1000.0,
            correlation_id = %correlation_id,
            "backup taken"
        );
        let summary = BackupSummary {
            size_bytes: created.file.len() as u64,
            entries: created.entries,
            audit_files: created.header.audit_files,
            writer_pause_seconds: created.writer_pause.as_secs_f64(),
            master_key_id: created.header.master_key_id.clone(),
            body_sha256: created.header.body_sha256.clone(),
        };
        let file = Arc::new(created.file);
        let count = file.len().div_ceil(MESSAGE_BYTES).max(1);
        let stream = futures::stream::iter((0..count).map(move |i| {
            let start = i * MESSAGE_BYTES;
            let end = (start + MESSAGE_BYTES).min(file.len());
            Ok(BackupChunk {
                data: file[start..end].to_vec(),
                summary: (i == 0).then(|| summary.clone()),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

const METHODS: &[(&str, Requirement)] = &[(
    "/brainstem.v1.Backup/Create",
    Requirement::Capability(CREATE),
)];

pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Backup",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: METHODS,
    },
    describe: super::events::describe,
    setup: |setup| {
        super::events::emit_initial();
        let backups = Arc::new(Backups::new(setup.store.clone(), setup.keys.clone()));
        let config = &setup.config.backup;
        if config.interval_seconds > 0 {
            setup
                .actors
                .add_worker(super::worker::BackupSchedule::new(backups.clone(), config));
        }
        Ok(Some(handler(move |shared, routes, limits| {
            backups.set_parts(shared.access.audit.clone(), shared.access.tasks().clone());
            crate::route!(routes, limits, BackupServer::new(BackupService { backups }));
        })))
    },
};
