//! Control-plane events that belong to `grpc/` itself (the framework's call metrics live in
//! `runtime/events.rs`): the idempotency cache, the certificates' expiry.

/// Registers the descriptions (called when the cache opens, after the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_idempotency_calls_total",
        "keyed calls of mutating methods, by outcome (stored: first reply kept; replayed: answered \
         from the cache; conflict: key reused for another request; not_kept: the call failed or its \
         reply could not be stored)"
    );
}

/// Registers the TLS gauges' descriptions (at start, after the recorder is installed).
pub fn describe_tls() {
    metrics::describe_gauge!(
        "brainstem_tls_certificate_expiry_timestamp_seconds",
        metrics::Unit::Seconds,
        "when the certificate in use expires (Unix time), by cert (server: the daemon's own; ca: the \
         CA client certificates must chain to); set at start and on every reload"
    );
}

/// The certificates in use, at start or after a reload swapped them.
pub struct TlsCertificatesLoaded {
    pub expiry: super::tls::CertificateExpiry,
}

impl TlsCertificatesLoaded {
    pub fn emit(&self) {
        for (cert, at) in [("server", self.expiry.server), ("ca", self.expiry.ca)] {
            match at {
                Some(at) => {
                    metrics::gauge!("brainstem_tls_certificate_expiry_timestamp_seconds", "cert" => cert)
                        .set(at as f64);
                }
                None => tracing::warn!(
                    cert,
                    "cannot read the certificate's expiry; its gauge keeps the last value"
                ),
            }
        }
    }
}

/// One keyed call of a mutating method.
pub struct IdempotentCall {
    /// `stored`, `replayed`, `conflict` or `not_kept`.
    pub outcome: &'static str,
}

impl IdempotentCall {
    pub fn emit(&self) {
        metrics::counter!("brainstem_idempotency_calls_total", "outcome" => self.outcome)
            .increment(1);
    }
}
