//! `brainstemctl backup --out FILE` (Backup.Create, streamed to a temporary file, fsynced, renamed)
//! and `brainstemctl backup verify FILE` (structure, header, body SHA-256 and chunk framing; no key
//! needed, no daemon). The format is `brainstem_keys::backup` (docs/BACKUP.md).

use std::path::{Path, PathBuf};

use brainstem_client::v1::CreateBackupRequest;
use brainstem_client::v1::backup_client::BackupClient;
use brainstem_client::{ConnectOptions, exit};
use brainstem_keys::backup;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, Output, print};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    /// Take a backup now and write it to FILE (needs backup.create).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long, requires = "out")]
    force: bool,
    #[command(subcommand)]
    command: Option<BackupCommand>,
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Check a backup file without the key and without a daemon: exit 0 valid, 1 damaged.
    Verify { file: PathBuf },
}

pub async fn backup(
    options: &ConnectOptions,
    output: Output,
    args: &BackupArgs,
) -> Result<u8, CliError> {
    match (&args.command, &args.out) {
        (Some(BackupCommand::Verify { file }), _) => verify(output, file),
        (None, Some(out)) => create(options, output, out, args.force).await,
        (None, None) => Err(CliError::Usage(
            "brainstemctl backup needs --out FILE (take a backup) or `verify FILE`".to_owned(),
        )),
    }
}

fn verify(output: Output, file: &Path) -> Result<u8, CliError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CliError::Local(format!("cannot read {}: {e}", file.display())))?;
    match backup::verify(&bytes) {
        Ok(parsed) => {
            let h = &parsed.header;
            let entries: u64 = h.trees.values().sum();
            print(
                output,
                format!(
                    "{}: valid backup (format {}), taken at unix ms {} by {}, {} entries in {} trees, {} audit segment files ({} bytes), master key {}, body SHA-256 {}",
                    file.display(),
                    h.format,
                    h.created_unix_ms,
                    h.writer,
                    entries,
                    h.trees.len(),
                    h.audit_files,
                    h.audit_bytes,
                    h.master_key_id,
                    h.body_sha256
                ),
                json!({"valid": true, "file": file.display().to_string(), "header": h}),
            );
            Ok(exit::OK)
        }
        Err(err) => {
            print(
                output,
                format!("{}: not a valid backup: {err}", file.display()),
                json!({"valid": false, "file": file.display().to_string(), "error": err.to_string()}),
            );
            Ok(exit::NEGATIVE)
        }
    }
}

async fn create(
    options: &ConnectOptions,
    output: Output,
    out: &Path,
    force: bool,
) -> Result<u8, CliError> {
    if out.exists() && !force {
        return Err(CliError::Local(format!(
            "{} exists; pass --force to replace it",
            out.display()
        )));
    }
    // The raw channel: a large backup may take longer than one call's deadline.
    let mut client = BackupClient::new(options.channel().await?);
    let mut stream = client.create(CreateBackupRequest {}).await?.into_inner();
    let mut file = Vec::new();
    let mut summary = None;
    while let Some(chunk) = stream.message().await? {
        if summary.is_none() {
            summary = chunk.summary;
        }
        file.extend_from_slice(&chunk.data);
    }
    let summary =
        summary.ok_or_else(|| CliError::Local("the daemon sent no backup summary".to_owned()))?;
    if file.len() as u64 != summary.size_bytes {
        return Err(CliError::Local(format!(
            "the stream ended after {} of {} bytes; nothing was written",
            file.len(),
            summary.size_bytes
        )));
    }
    backup::verify(&file).map_err(|e| {
        CliError::Local(format!(
            "the received backup does not verify ({e}); nothing was written"
        ))
    })?;
    // 0600, written to a temporary file, fsynced and renamed into place.
    brainstem_keys::files::write_private(out, &file)
        .map_err(|e| CliError::Local(format!("cannot write {}: {e}", out.display())))?;
    print(
        output,
        format!(
            "wrote {} ({} bytes): {} entries, {} audit segment files, writers paused {:.1} ms, master key {}",
            out.display(),
            file.len(),
            summary.entries,
            summary.audit_files,
            summary.writer_pause_seconds * 1000.0,
            summary.master_key_id
        ),
        json!({
            "file": out.display().to_string(),
            "size_bytes": file.len(),
            "entries": summary.entries,
            "audit_files": summary.audit_files,
            "writer_pause_seconds": summary.writer_pause_seconds,
            "master_key_id": summary.master_key_id,
            "body_sha256": summary.body_sha256,
        }),
    );
    Ok(exit::OK)
}
