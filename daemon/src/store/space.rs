//! The disk-space guard: the committer refuses new writes while the filesystem holding the database
//! has less than `[store] min_free_bytes` free, so sled itself never runs into a full disk (sled 0.34
//! keeps failing after an I/O error in its log until the process restarts). Reads keep serving; when
//! space returns the next write (at the latest the store probe's canary, every few seconds) goes
//! through and writing resumes by itself.
//!
//! A refusal is [`StoreError::NoSpace`] (RESOURCE_EXHAUSTED to a caller). The guard logs the change
//! of state once, then at most once per [`REMINDER_EVERY`] while it lasts, and publishes it on a watch
//! channel (health `store.writes`) and the `brainstem_store_disk_full` gauge.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;
use super::events::{DiskSpace, WritesRefused};

/// How long a free-space reading is trusted.
const REFRESH: Duration = Duration::from_millis(250);
/// While writes are refused, a reminder line at most this often.
pub const REMINDER_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Guard {
    dir: PathBuf,
    /// Shared with the committer's handle (tests change it).
    reserve: Arc<AtomicU64>,
    /// sled itself reported a full disk: refused until the next free-space reading.
    sled_full: bool,
    read_at: Option<Instant>,
    available: u64,
    /// Since when writes are refused, and how many so far.
    refusing: Option<(Instant, u64)>,
    last_reminder: Option<Instant>,
    full: tokio::sync::watch::Sender<bool>,
}

impl Guard {
    pub fn new(dir: &Path, reserve: u64) -> Guard {
        let (full, _) = tokio::sync::watch::channel(false);
        DiskSpace { full: false }.emit();
        Guard {
            dir: dir.to_owned(),
            reserve: Arc::new(AtomicU64::new(reserve)),
            sled_full: false,
            read_at: None,
            available: u64::MAX,
            refusing: None,
            last_reminder: None,
            full,
        }
    }

    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.full.subscribe()
    }

    pub fn reserve(&self) -> Arc<AtomicU64> {
        self.reserve.clone()
    }

    /// `Ok` when a write may go ahead; [`StoreError::NoSpace`] when the reserve is not free.
    pub fn check(&mut self) -> Result<(), StoreError> {
        if self.read_at.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.read_at = Some(Instant::now());
            // A failed reading (the directory vanished?) is left to the write itself to report.
            self.available = available_bytes(&self.dir).unwrap_or(u64::MAX);
            // After sled's own "no space", a fresh reading lets the next write try again.
            self.sled_full = false;
        }
        let reserve = self.reserve.load(Ordering::Relaxed);
        if self.sled_full || (reserve > 0 && self.available < reserve) {
            Err(self.refuse())
        } else {
            Ok(())
        }
    }

    /// A write went through: if writes were refused, they are no longer.
    pub fn written(&mut self) {
        if let Some((since, refused)) = self.refusing.take() {
            tracing::info!(
                refused,
                refused_for_ms = since.elapsed().as_millis() as u64,
                available_bytes = self.available,
                "store: disk space is available again; writes resume"
            );
            DiskSpace { full: false }.emit();
            self.full.send_replace(false);
        }
    }

    /// Maps a sled error: a full disk becomes [`StoreError::NoSpace`] (and refusals begin), anything
    /// else stays an I/O error.
    pub fn classify(&mut self, err: sled::Error) -> StoreError {
        let full = matches!(&err, sled::Error::Io(io)
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)));
        if full {
            self.read_at = Some(Instant::now());
            self.available = available_bytes(&self.dir).unwrap_or(0);
            self.sled_full = true;
            self.refuse()
        } else {
            StoreError::Io(err)
        }
    }

    fn refuse(&mut self) -> StoreError {
        let now = Instant::now();
        match &mut self.refusing {
            None => {
                self.refusing = Some((now, 1));
                self.last_reminder = Some(now);
                tracing::error!(
                    dir = %self.dir.display(),
                    available_bytes = self.available,
                    reserve_bytes = self.reserve.load(Ordering::Relaxed),
                    "store: the filesystem is full; writes are refused (reads keep serving) until space is freed"
                );
                DiskSpace { full: true }.emit();
                self.full.send_replace(true);
            }
            Some((since, refused)) => {
                *refused += 1;
                if self
                    .last_reminder
                    .is_none_or(|at| at.elapsed() >= REMINDER_EVERY)
                {
                    self.last_reminder = Some(now);
                    tracing::warn!(
                        refused = *refused,
                        refusing_for_s = since.elapsed().as_secs(),
                        available_bytes = self.available,
                        "store: writes still refused, the filesystem is full"
                    );
                }
            }
        }
        WritesRefused.emit();
        StoreError::NoSpace {
            path: self.dir.clone(),
            available: self.available,
            reserve: self.reserve.load(Ordering::Relaxed),
        }
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_a_zero_reserve_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let available = available_bytes(dir.path()).unwrap();
        assert!(available > 0);
        let mut guard = Guard::new(dir.path(), u64::MAX);
        let watch = guard.watch();
        let err = guard.check().unwrap_err();
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
        assert!(err.to_string().contains("full"), "{err}");
        assert!(*watch.borrow());
        guard.written();
        assert!(!*watch.borrow());
        let mut open = Guard::new(dir.path(), 0);
        open.check().unwrap();
    }

    #[test]
    fn sleds_enospc_becomes_no_space_and_other_errors_stay_io() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = Guard::new(dir.path(), 0);
        let full = sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(guard.classify(full), StoreError::NoSpace { .. }));
        // Refusing now, for a moment, even with no reserve configured.
        assert!(guard.check().is_err());
        let other = sled::Error::Io(std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(guard.classify(other), StoreError::Io(_)));
    }
}
