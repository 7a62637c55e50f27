//! Store events: the committer's flushes and the store probe. No labels besides a fixed `result`.

use std::time::Duration;

use crate::runtime::events::ErrorOccurred;

/// Registers the store's metric descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_store_flushes_total",
        "sled flushes (one fsync of the log each) by the store committer, by result (ok, error)"
    );
    metrics::describe_counter!(
        "brainstem_store_flushed_writes_total",
        "durable writes answered by a flush; divided by brainstem_store_flushes_total it is the mean group-commit size"
    );
    metrics::describe_counter!(
        "brainstem_store_batches_total",
        "sled batches the store committer applied; the writes of a group to one tree are merged into one"
    );
    metrics::describe_histogram!(
        "brainstem_store_flush_duration_seconds",
        metrics::Unit::Seconds,
        "time one committer flush took"
    );
    metrics::describe_gauge!(
        "brainstem_store_disk_full",
        "1 while the store refuses writes because the filesystem holding it has less than [store] min_free_bytes free (alert on it), else 0"
    );
    metrics::describe_counter!(
        "brainstem_store_writes_refused_total",
        "writes the store refused because the filesystem was full (RESOURCE_EXHAUSTED to the caller)"
    );
    metrics::describe_counter!(
        "brainstem_store_probe_stalls_total",
        "store probes whose canary write was not durable within the probe deadline"
    );
    // Zero series from the start, so the alert rules (config/alerts.yml) see the names before the
    // first event and `increase()` counts it.
    metrics::counter!("brainstem_store_probe_stalls_total").increment(0);
    metrics::gauge!("brainstem_store_disk_full").set(0.0);
    metrics::counter!("brainstem_errors_total", "subsystem" => "store", "kind" => "recovered_with_loss")
        .increment(0);
}

/// The committer applied `batches` sled batches for one group of jobs.
pub struct StoreBatchesApplied {
    pub batches: u64,
}

impl StoreBatchesApplied {
    pub fn emit(self) {
        metrics::counter!("brainstem_store_batches_total").increment(self.batches);
    }
}

/// The committer flushed for `writes` waiting writes.
pub struct StoreFlushed {
    pub writes: u64,
    pub duration: Duration,
    pub ok: bool,
}

impl StoreFlushed {
    pub fn emit(self) {
        let result = if self.ok { "ok" } else { "error" };
        metrics::counter!("brainstem_store_flushes_total", "result" => result).increment(1);
        metrics::counter!("brainstem_store_flushed_writes_total").increment(self.writes);
        metrics::histogram!("brainstem_store_flush_duration_seconds")
            .record(self.duration.as_secs_f64());
        if !self.ok {
            ErrorOccurred {
                subsystem: "store",
                kind: "flush",
            }
            .emit();
        }
    }
}

/// The probe's canary write did not become durable in time: the store makes no progress. Emitted
/// once per stall (not again by the probe's restarts while the same canary is outstanding).
pub struct StoreStalled {
    pub waited: Duration,
}

impl StoreStalled {
    pub fn emit(self) {
        metrics::counter!("brainstem_store_probe_stalls_total").increment(1);
        ErrorOccurred {
            subsystem: "store",
            kind: "stall",
        }
        .emit();
        tracing::error!(
            waited_ms = self.waited.as_millis() as u64,
            "store stalled: the probe's canary write was not durable in time; the daemon is not ready and withholds the watchdog"
        );
    }
}

/// Whether the store refuses writes for lack of disk space (the alert gauge).
pub struct DiskSpace {
    pub full: bool,
}

impl DiskSpace {
    pub fn emit(self) {
        metrics::gauge!("brainstem_store_disk_full").set(if self.full { 1.0 } else { 0.0 });
    }
}

/// One write refused for lack of disk space (logged by the guard, not per write).
pub struct WritesRefused;

impl WritesRefused {
    pub fn emit(self) {
        metrics::counter!("brainstem_store_writes_refused_total").increment(1);
    }
}
