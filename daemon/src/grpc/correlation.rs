//! The correlation id of a call: the caller's `x-request-id`, when it is usable.
//!
//! Capabilities put it into their audit records and log lines; this is the one place that reads it,
//! so how it is obtained (validated header today, a layer-assigned id later) changes here only.

use tonic::Request;

/// Longest `x-request-id` taken as the correlation id.
pub const MAX_CORRELATION_ID: usize = 128;

/// The call's correlation id: `x-request-id` when it is 1–128 printable ASCII bytes, else empty.
pub fn correlation_id<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid(id))
        .unwrap_or_default()
        .to_owned()
}

/// Whether `id` may be used as a correlation id as sent.
pub fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CORRELATION_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        request
    }

    #[test]
    fn only_short_printable_ids_are_taken() {
        assert_eq!(correlation_id(&with("req-42")), "req-42");
        assert_eq!(correlation_id(&with(&"a".repeat(129))), "");
        assert_eq!(correlation_id(&with("has space")), "");
        assert_eq!(correlation_id(&Request::new(())), "");
    }
}
