//! Capability token events: every token metric and its log line.

/// Registers the token metrics' descriptions.
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_tokens_issued_total",
        "capability tokens minted, by kind (issue, attenuate)"
    );
    metrics::describe_counter!(
        "brainstem_tokens_verified_total",
        "token verifications that found the token valid"
    );
    metrics::describe_counter!(
        "brainstem_tokens_rejected_total",
        "token verifications that refused the token, by reason"
    );
    metrics::describe_counter!("brainstem_tokens_revoked_total", "tokens revoked");
    metrics::describe_counter!(
        "brainstem_tokens_key_rotations_total",
        "new token signing keys, by trigger (initial, scheduled, request)"
    );
    metrics::describe_counter!(
        "brainstem_tokens_keys_retired_total",
        "token signing keys retired"
    );
    metrics::describe_counter!(
        "brainstem_tokens_purged_total",
        "expired token records purged, by tree (issued, revoked)"
    );
}

/// Token verification counters, registered once: verification is a hot path.
/// `brainstem_tokens_verified_total` counts valid tokens, `brainstem_tokens_rejected_total{reason}`
/// refused ones (reasons are a fixed set of labels).
#[derive(Clone)]
pub struct TokenVerifications {
    verified: metrics::Counter,
    rejected: Vec<(&'static str, metrics::Counter)>,
}

impl TokenVerifications {
    pub fn new(reasons: &[&'static str]) -> Self {
        TokenVerifications {
            verified: metrics::counter!("brainstem_tokens_verified_total"),
            rejected: reasons
                .iter()
                .map(|r| {
                    (
                        *r,
                        metrics::counter!("brainstem_tokens_rejected_total", "reason" => *r),
                    )
                })
                .collect(),
        }
    }

    pub fn verified(&self) {
        self.verified.increment(1);
    }

    pub fn rejected(&self, reason: &'static str, detail: &str) {
        tracing::debug!(reason, detail, "token rejected");
        match self.rejected.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => counter.increment(1),
            None => metrics::counter!("brainstem_tokens_rejected_total", "reason" => reason)
                .increment(1),
        }
    }
}

/// A token was minted (`derived`: by Attenuate).
pub struct TokenIssued<'a> {
    pub id: &'a str,
    pub principal: &'a str,
    pub issuer: &'a str,
    pub derived: bool,
}

impl TokenIssued<'_> {
    pub fn emit(self) {
        let kind = if self.derived { "attenuate" } else { "issue" };
        metrics::counter!("brainstem_tokens_issued_total", "kind" => kind).increment(1);
        tracing::info!(
            id = self.id,
            principal = self.principal,
            issuer = self.issuer,
            kind,
            "token issued"
        );
    }
}

pub struct TokenRevoked<'a> {
    pub id: &'a str,
    pub by: &'a str,
    pub descendants: u32,
}

impl TokenRevoked<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_revoked_total").increment(1);
        tracing::info!(
            id = self.id,
            by = self.by,
            descendants = self.descendants,
            "token revoked"
        );
    }
}

/// A new signing key (`trigger`: initial, scheduled, request).
pub struct SigningKeyRotated<'a> {
    pub kid: &'a str,
    pub trigger: &'static str,
}

impl SigningKeyRotated<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_key_rotations_total", "trigger" => self.trigger)
            .increment(1);
        tracing::info!(
            kid = self.kid,
            trigger = self.trigger,
            "token signing key rotated"
        );
    }
}

pub struct SigningKeyRetired<'a> {
    pub kid: &'a str,
}

impl SigningKeyRetired<'_> {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_keys_retired_total").increment(1);
        tracing::info!(kid = self.kid, "token signing key retired");
    }
}

/// Expired token and revocation records removed by the background purge.
pub struct TokensPurged {
    pub issued: usize,
    pub revocations: usize,
}

impl TokensPurged {
    pub fn emit(self) {
        metrics::counter!("brainstem_tokens_purged_total", "tree" => "issued")
            .increment(self.issued as u64);
        metrics::counter!("brainstem_tokens_purged_total", "tree" => "revoked")
            .increment(self.revocations as u64);
        if self.issued + self.revocations > 0 {
            tracing::debug!(
                issued = self.issued,
                revocations = self.revocations,
                "expired token records purged"
            );
        }
    }
}
