//! The correlation id of a call.
//!
//! The authorization layer ([`super::layer`]) gives every call one: the caller's `x-request-id` when
//! it is usable ([`valid`]), else a generated one ([`CorrelationId::generate`]). The layer stores it in
//! the request's extensions ([`CorrelationId`]), echoes it as `x-request-id` on every reply (errors
//! and the layer's own refusals included), puts it in the `rpc` span every log line of the call
//! carries, and runs the call inside [`scope`], so audit records queued while the call runs
//! ([`current`]) and errors' ErrorInfo (`grpc::status`) carry it without being handed it.
//!
//! Capabilities read it with [`correlation_id`]; this is the one place that knows how it is obtained.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use tonic::Request;

/// Longest `x-request-id` taken as the correlation id.
pub const MAX_CORRELATION_ID: usize = 128;

/// The metadata key the id comes in and goes out under.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The metadata key of the id in errors' ErrorInfo.
pub const ERROR_INFO_KEY: &str = "correlation_id";

/// A call's correlation id, as the layer stored it in the request's extensions. Holds the header
/// value itself, so taking the caller's id and echoing it copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(HeaderValue);

impl CorrelationId {
    /// The caller's `x-request-id` when it is [`valid`] and sent once, else a generated id.
    pub fn from_headers(headers: &http::HeaderMap) -> CorrelationId {
        let mut values = headers.get_all(&HEADER).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if value.to_str().is_ok_and(valid) => CorrelationId(value.clone()),
            _ => CorrelationId::generate(),
        }
    }

    /// A new id: 32 lowercase hex digits (128 bits). The first 64 bits are random per process, the
    /// last 64 a bijective mix of a process-wide counter: unique within a run, unguessable across
    /// runs, and no system call or lock per call.
    pub fn generate() -> CorrelationId {
        static PREFIX: OnceLock<(u64, u64)> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (prefix, key) = *PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 16];
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err()
            {
                // Still unique within the run; only cross-run uniqueness weakens.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                bytes = (now ^ u128::from(std::process::id())).to_le_bytes();
            }
            let [a, b] = [&bytes[..8], &bytes[8..]]
                .map(|half| u64::from_le_bytes(half.try_into().unwrap_or([0; 8])));
            (a, b)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        hex(prefix, &mut text[..16]);
        hex(splitmix64(n ^ key), &mut text[16..]);
        // 32 hex digits are always a valid header value.
        CorrelationId(HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("invalid")))
    }

    /// The id as text (always printable ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the header value to echo.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// SplitMix64's finaliser: a bijection on `u64`, so distinct counters give distinct ids.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate().take(16) {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xF) as usize];
    }
}

tokio::task_local! {
    static CURRENT: CorrelationId;
}

/// Runs `future` (a call's handler) with `id` as the [`current`] correlation id.
pub fn scope<F: Future>(id: CorrelationId, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, future)
}

/// The correlation id of the call being handled on this task, if any. The audit log fills records
/// queued without one from it, and `grpc::status` puts it into errors' ErrorInfo.
pub fn current() -> Option<CorrelationId> {
    CURRENT.try_with(CorrelationId::clone).ok()
}

/// [`current`] lent to `f` rather than copied (the audit log encodes it where it lies).
pub fn with_current<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    CURRENT.try_with(|id| f(id.as_str())).ok()
}

/// The call's correlation id: the one the layer assigned; for a request that did not pass the layer
/// (unit tests), `x-request-id` when it is 1–128 printable ASCII bytes, else empty.
pub fn correlation_id<T>(request: &Request<T>) -> String {
    if let Some(id) = request.extensions().get::<CorrelationId>() {
        return id.as_str().to_owned();
    }
    request
        .metadata()
        .get(HEADER.as_str())
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
        assert_eq!(correlation_id(&with(&"a".repeat(128))), "a".repeat(128));
        assert_eq!(correlation_id(&with(&"a".repeat(129))), "");
        assert_eq!(correlation_id(&with("has space")), "");
        assert_eq!(correlation_id(&Request::new(())), "");
    }

    #[test]
    fn the_layers_id_wins_over_the_header() {
        let mut request = with("from-header");
        request
            .extensions_mut()
            .insert(CorrelationId(HeaderValue::from_static("from-layer")));
        assert_eq!(correlation_id(&request), "from-layer");
    }

    fn headers(values: &[&[u8]]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for v in values {
            headers.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        headers
    }

    fn generated(id: &CorrelationId) -> bool {
        id.as_str().len() == 32 && id.as_str().bytes().all(|b| b.is_ascii_hexdigit())
    }

    #[test]
    fn a_valid_header_is_kept_and_anything_else_replaced() {
        assert_eq!(
            CorrelationId::from_headers(&headers(&[b"abc-1"])).as_str(),
            "abc-1"
        );
        for bad in [
            &headers(&[]),
            &headers(&[b""]),
            &headers(&[b"with space"]),
            &headers(&[&[b'x'; 129]]),
            &headers(&[b"caf\xc3\xa9"]),
            &headers(&[b"one", b"two"]),
        ] {
            let id = CorrelationId::from_headers(bad);
            assert!(generated(&id), "{bad:?} gave {id:?}");
        }
    }

    #[test]
    fn generated_ids_are_distinct_hex() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| {
                let id = CorrelationId::generate();
                assert!(generated(&id), "{id:?}");
                id.as_str().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[tokio::test]
    async fn current_is_the_scopes_id_and_nothing_outside() {
        assert_eq!(current(), None);
        let id = CorrelationId(HeaderValue::from_static("scoped"));
        let seen = scope(id.clone(), async { current() }).await;
        assert_eq!(seen, Some(id));
        assert_eq!(current(), None);
    }
}
