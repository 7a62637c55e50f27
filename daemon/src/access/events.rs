//! Audit and guardrail events.

/// Registers the audit and guardrail metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_audit_records_written_total",
        "audit records written (on disk, synced)"
    );
    metrics::describe_counter!(
        "brainstem_audit_syncs_total",
        "fdatasync calls of the audit log (records written / syncs: the records one sync carried)"
    );
    metrics::describe_counter!(
        "brainstem_audit_unrecorded_total",
        "decisions and refusals whose audit record could not be written, by kind and reason (queue-full, write-failed, closed, timed-out)"
    );
    metrics::describe_counter!(
        "brainstem_audit_records_trimmed_total",
        "audit records removed by retention, by why (count, bytes, age)"
    );
    metrics::describe_gauge!("brainstem_audit_log_records", "records in the audit log");
    metrics::describe_gauge!(
        "brainstem_audit_log_bytes",
        "bytes of the audit log's segment files"
    );
    metrics::describe_gauge!(
        "brainstem_audit_queued",
        "audit records queued, not yet written"
    );
    metrics::describe_counter!(
        "brainstem_guardrail_decisions_total",
        "guardrail decisions, by rule and decision (allow, deny)"
    );
    // Zero series from the start, so alert rules (config/alerts.yml) see the names before the first
    // loss, and `increase()` counts the first one.
    metrics::counter!("brainstem_audit_records_written_total").increment(0);
    metrics::counter!("brainstem_audit_syncs_total").increment(0);
    metrics::counter!("brainstem_errors_total", "subsystem" => "audit", "kind" => "write")
        .increment(0);
    metrics::gauge!("brainstem_audit_queued").set(0.0);
    for kind in [
        "policy",
        "guardrail",
        "access",
        "token",
        "admin",
        "secret",
        "registry",
    ] {
        for reason in ["queue-full", "write-failed", "closed", "timed-out"] {
            metrics::counter!("brainstem_audit_unrecorded_total", "kind" => kind, "reason" => reason)
                .increment(0);
        }
    }
    metrics::describe_gauge!(
        "brainstem_policy_dry_run_mode",
        "1 while safety.dry_run_mode makes advisory denials pass as would-deny"
    );
    metrics::describe_counter!(
        "brainstem_policy_would_deny_total",
        "decisions allowed only because dry-run mode made the policies' denial advisory"
    );
    metrics::gauge!("brainstem_policy_dry_run_mode").set(0.0);
    metrics::counter!("brainstem_policy_would_deny_total").increment(0);
}

/// Dry-run mode turned on or off.
pub struct DryRunMode {
    pub on: bool,
}

impl DryRunMode {
    pub fn emit(&self) {
        metrics::gauge!("brainstem_policy_dry_run_mode").set(if self.on { 1.0 } else { 0.0 });
        if self.on {
            tracing::warn!(
                "dry-run mode on: denials by policies marked @dry_run(\"advisory\") are allowed and audited as would-deny"
            );
        } else {
            tracing::info!("dry-run mode off: every denial is enforced");
        }
    }
}

/// A denial let through by dry-run mode.
pub struct WouldDeny<'a> {
    pub action: &'a str,
    pub policies: &'a [String],
}

impl WouldDeny<'_> {
    pub fn emit(&self) {
        metrics::counter!("brainstem_policy_would_deny_total").increment(1);
        tracing::info!(action = self.action, policies = ?self.policies, "dry run: would deny");
    }
}

pub struct AuditWritten {
    pub records: usize,
    /// `fdatasync`s the write made (one per segment it touched when synced, else none).
    pub syncs: u64,
}

impl AuditWritten {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_records_written_total").increment(self.records as u64);
        metrics::counter!("brainstem_audit_syncs_total").increment(self.syncs);
    }
}

/// Records that will not be written. Counted here; logged by [`AuditUnrecordedLogged`], at most
/// once a second.
pub struct AuditUnrecorded {
    pub kind: &'static str,
    pub reason: &'static str,
    pub records: u64,
}

impl AuditUnrecorded {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_unrecorded_total", "kind" => self.kind, "reason" => self.reason)
            .increment(self.records);
    }
}

/// The one log line a second about unrecorded records.
pub struct AuditUnrecordedLogged {
    /// Since the previous line.
    pub records: u64,
    /// The latest reason.
    pub reason: &'static str,
}

impl AuditUnrecordedLogged {
    pub fn emit(self) {
        tracing::warn!(
            records = self.records,
            reason = self.reason,
            "audit records not written since the last report (see brainstem_audit_unrecorded_total)"
        );
    }
}

/// The final stop could not write every record.
pub struct AuditStopLost {
    pub records: u64,
}

impl AuditStopLost {
    pub fn emit(self) {
        tracing::error!(
            records = self.records,
            "the stop could not write every queued audit record; the stop is not marked clean"
        );
    }
}

/// The log's size after a batch.
pub struct AuditLogSize {
    pub records: u64,
    pub bytes: u64,
    pub queued: u64,
}

impl AuditLogSize {
    pub fn emit(self) {
        metrics::gauge!("brainstem_audit_log_records").set(self.records as f64);
        metrics::gauge!("brainstem_audit_log_bytes").set(self.bytes as f64);
        metrics::gauge!("brainstem_audit_queued").set(self.queued as f64);
    }
}

pub struct AuditTrimmed {
    pub records: u64,
    pub why: &'static str,
}

impl AuditTrimmed {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_records_trimmed_total", "why" => self.why)
            .increment(self.records);
    }
}

pub struct GuardrailDecided {
    pub rule: &'static str,
    pub allowed: bool,
}

impl GuardrailDecided {
    pub fn emit(self) {
        let decision = if self.allowed { "allow" } else { "deny" };
        metrics::counter!("brainstem_guardrail_decisions_total", "rule" => self.rule, "decision" => decision)
            .increment(1);
    }
}
