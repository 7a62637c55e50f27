//! Control-plane events that belong to `grpc/` itself (the framework's call metrics live in
//! `runtime/events.rs`): the idempotency cache.

/// Registers the descriptions (called when the cache opens, after the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        "brainstem_idempotency_calls_total",
        "keyed calls of mutating methods, by outcome (stored: first reply kept; replayed: answered \
         from the cache; conflict: key reused for another request; not_kept: the call failed or its \
         reply could not be stored)"
    );
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
