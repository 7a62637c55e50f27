//! Audit and guardrail events.

/// Registers the audit and guardrail metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_audit_records_written_total",
        "audit records written to the store"
    );
    metrics::describe_counter!(
        "brainstem_audit_unrecorded_total",
        "decisions whose audit record could not be written, by kind"
    );
    metrics::describe_counter!(
        "brainstem_audit_records_trimmed_total",
        "audit records removed by retention, by why (count, age)"
    );
    metrics::describe_counter!(
        "brainstem_guardrail_decisions_total",
        "guardrail decisions, by rule and decision (allow, deny)"
    );
}

pub struct AuditWritten {
    pub records: usize,
}

impl AuditWritten {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_records_written_total").increment(self.records as u64);
    }
}

pub struct AuditUnrecorded<'a> {
    pub kind: &'static str,
    pub reason: &'a dyn std::fmt::Display,
}

impl AuditUnrecorded<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_unrecorded_total", "kind" => self.kind).increment(1);
        tracing::warn!(kind = self.kind, reason = %self.reason, "decision not audited");
    }
}

pub struct AuditTrimmed {
    pub records: usize,
    pub why: &'static str,
}

impl AuditTrimmed {
    pub fn emit(self) {
        metrics::counter!("brainstem_audit_records_trimmed_total", "why" => self.why)
            .increment(self.records as u64);
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
