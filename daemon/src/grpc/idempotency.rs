//! Idempotency keys: a mutating call that carries an `idempotency-key` metadata entry is applied once;
//! a repeat with the same key (same principal, same method, same request bytes) gets the first call's
//! reply instead of applying again. That is what makes retrying a write safe for a client that lost the
//! reply (a timeout, a dropped connection).
//!
//! Which methods: those whose proto declares no `idempotency_level` ([`Effect::Mutating`], read from the
//! method table). Reads and idempotent methods accept a key and ignore it (repeating them is safe);
//! streaming methods ignore it too. A later service gets this by declaring its methods in its proto.
//!
//! The rules:
//! - The key is 1 to [`MAX_KEY_BYTES`] visible ASCII characters, sent once; anything else is
//!   INVALID_ARGUMENT on field `idempotency-key`.
//! - Only a successful reply (grpc-status 0) is kept: a call that failed applied nothing to answer
//!   for, so its retry runs again.
//! - The same key with a different request for the same method is INVALID_ARGUMENT (a key names one
//!   operation).
//! - Calls with the same key wait for each other: the second gets the first's reply once it is stored.
//! - Replies are kept [`WINDOW`] (persisted in the store, tree `idempotency`, so a repeat after a daemon
//!   restart is still answered from it); older ones are ignored and purged as new ones are written.
//!   A reply and its expiry entry are one batch, so keeping a reply costs one commit (one flush).
//!   A replayed reply carries the response header `idempotency-replayed: true`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::body::Body;

use super::events::IdempotentCall;
use super::methods::Effect;
use crate::error::{FieldViolation, ServiceError};
use crate::store::{Batch, Record, Store, StoreError, Tree, unix_ms_now};

/// The request metadata entry that names one operation.
pub const KEY_HEADER: &str = "idempotency-key";
/// The response header of a reply served from the cache.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// How long a reply is kept for repeats.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Expired replies are purged every this many stored replies, at most [`PURGE_BATCH`] at a time.
const PURGE_EVERY: u64 = 256;
const PURGE_BATCH: usize = 512;

/// The validated `idempotency-key` of a request, if it carries one.
pub fn key_of(headers: &http::HeaderMap) -> Result<Option<String>, ServiceError> {
    let mut values = headers.get_all(KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |why: String| {
        Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
            KEY_HEADER, why,
        )]))
    };
    if values.next().is_some() {
        return bad("sent more than once; send one key per call".to_owned());
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return bad("must not be empty".to_owned());
    }
    if bytes.len() > MAX_KEY_BYTES {
        return bad(format!(
            "{} bytes, more than the maximum of {MAX_KEY_BYTES}",
            bytes.len()
        ));
    }
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return bad("must be visible ASCII characters (no spaces)".to_owned());
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Whether the daemon deduplicates calls of a method with this effect.
pub fn applies_to(effect: Effect) -> bool {
    match effect {
        Effect::Mutating => true,
        Effect::ReadOnly | Effect::Idempotent | Effect::Streaming => false,
    }
}

/// A stored reply: the message bytes of a successful unary call.
#[derive(Debug, Serialize, Deserialize)]
struct StoredReply {
    /// SHA-256 of the request body (hex): a repeat must send the same request.
    request_sha256: String,
    created_ms: u64,
    /// The response body (gRPC-framed message), base64.
    body: String,
}

impl Record for StoredReply {
    const VERSION: u8 = 1;
}

/// Key prefixes in the `idempotency` tree: `r` ++ id → [`StoredReply`]; `e` ++ `created_ms`
/// (big-endian) ++ id → `created_ms`, the purge order.
const REPLY: u8 = b'r';
const EXPIRY: u8 = b'e';

fn reply_key(id_hex: &str) -> Vec<u8> {
    let mut key = vec![REPLY];
    key.extend_from_slice(id_hex.as_bytes());
    key
}

fn expiry_key(created_ms: u64, id_hex: &str) -> Vec<u8> {
    let mut key = vec![EXPIRY];
    key.extend_from_slice(&created_ms.to_be_bytes());
    key.extend_from_slice(id_hex.as_bytes());
    key
}

/// The idempotency cache over the store.
pub struct Idempotency {
    tree: Tree,
    window: Duration,
    max_request_bytes: usize,
    in_flight: Mutex<HashMap<[u8; 32], Weak<tokio::sync::Mutex<()>>>>,
    stored: AtomicU64,
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Idempotency {
    /// Opens the cache's trees. `max_request_bytes` bounds the request body buffered for a keyed call.
    pub fn open(store: &Store, max_request_bytes: usize) -> Result<Self, StoreError> {
        Self::with_window(store, max_request_bytes, WINDOW)
    }

    pub fn with_window(
        store: &Store,
        max_request_bytes: usize,
        window: Duration,
    ) -> Result<Self, StoreError> {
        super::events::describe();
        Ok(Idempotency {
            tree: store.tree(crate::store::trees::IDEMPOTENCY)?,
            window,
            max_request_bytes,
            in_flight: Mutex::new(HashMap::new()),
            stored: AtomicU64::new(0),
        })
    }

    fn slot(&self, id: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = map.get(&id).and_then(Weak::upgrade) {
            return slot;
        }
        if map.len() >= 1024 {
            map.retain(|_, slot| slot.strong_count() > 0);
        }
        let slot = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(id, Arc::downgrade(&slot));
        slot
    }

    /// Runs a keyed call of a mutating method: answers a repeat from the cache, otherwise calls
    /// `inner` and keeps its reply when it succeeded.
    pub async fn call<F, Fut, E>(
        &self,
        principal: &str,
        method: &str,
        key: &str,
        request: http::Request<Body>,
        inner: F,
    ) -> Result<http::Response<Body>, E>
    where
        F: FnOnce(http::Request<Body>) -> Fut,
        Fut: Future<Output = Result<http::Response<Body>, E>>,
    {
        let (parts, body) = request.into_parts();
        let bytes = match Limited::new(body, self.max_request_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                return Ok(Status::from(ServiceError::Undecodable(format!(
                    "a call with an idempotency key carries at most {} bytes: {err}",
                    self.max_request_bytes
                )))
                .into_http());
            }
        };
        let request_sha256 = hex(&sha256(&[&bytes]));
        let id = sha256(&[principal.as_bytes(), method.as_bytes(), key.as_bytes()]);
        let record_key = hex(&id);
        let slot = self.slot(id);
        let _one_at_a_time = slot.lock().await;

        match self.tree.get::<StoredReply>(&reply_key(&record_key)) {
            Ok(Some(stored)) if self.fresh(stored.created_ms) => {
                if stored.request_sha256 != request_sha256 {
                    IdempotentCall {
                        outcome: "conflict",
                    }
                    .emit();
                    return Ok(Status::from(ServiceError::InvalidArgument(vec![
                        FieldViolation::new(
                            KEY_HEADER,
                            format!(
                                "already used for a different {method} request; use a new key for a new operation"
                            ),
                        ),
                    ]))
                    .into_http());
                }
                match base64::engine::general_purpose::STANDARD.decode(&stored.body) {
                    Ok(body) => {
                        IdempotentCall {
                            outcome: "replayed",
                        }
                        .emit();
                        return Ok(replay(Bytes::from(body)));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, method, "undecodable stored reply; running the call");
                    }
                }
            }
            Ok(_) => {}
            Err(err) => return Ok(Status::from(ServiceError::Store(err)).into_http()),
        }

        let response = inner(http::Request::from_parts(
            parts,
            Body::new(http_body_util::Full::new(bytes)),
        ))
        .await?;
        // An error is a trailers-only response (grpc-status in the headers): nothing to keep.
        if response.headers().contains_key("grpc-status") {
            IdempotentCall {
                outcome: "not_kept",
            }
            .emit();
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let collected = match body.collect().await {
            Ok(collected) => collected,
            Err(status) => return Ok(status.into_http()),
        };
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let ok = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s.as_bytes() == b"0");
        let kept = ok && self.keep(&record_key, request_sha256, &data).await;
        IdempotentCall {
            outcome: if kept { "stored" } else { "not_kept" },
        }
        .emit();
        Ok(http::Response::from_parts(parts, framed(data, trailers)))
    }

    fn fresh(&self, created_ms: u64) -> bool {
        unix_ms_now().saturating_sub(created_ms) < self.window.as_millis() as u64
    }

    /// Stores a reply; whether it was kept (a failure is logged: the call itself succeeded and is
    /// answered).
    async fn keep(&self, record_key: &str, request_sha256: String, data: &Bytes) -> bool {
        let created_ms = unix_ms_now();
        let stored = StoredReply {
            request_sha256,
            created_ms,
            body: base64::engine::general_purpose::STANDARD.encode(data),
        };
        let written = async {
            let mut batch = Batch::default();
            batch.put(&self.tree, &expiry_key(created_ms, record_key), &created_ms)?;
            batch.put(&self.tree, &reply_key(record_key), &stored)?;
            self.tree.apply_async(batch).await
        }
        .await;
        if let Err(err) = written {
            tracing::error!(error = %err, "could not keep an idempotent reply; a repeat will apply again");
            return false;
        }
        if self.stored.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
            if let Err(err) = self.purge().await {
                tracing::warn!(error = %err, "purging expired idempotent replies failed");
            }
        }
        true
    }

    /// Removes up to [`PURGE_BATCH`] replies older than the window; how many.
    pub async fn purge(&self) -> Result<usize, StoreError> {
        let cutoff = unix_ms_now().saturating_sub(self.window.as_millis() as u64);
        let start = vec![EXPIRY];
        let end = expiry_key(cutoff, "");
        let mut batch = Batch::default();
        let mut purged = 0;
        for entry in self
            .tree
            .range::<u64, _>(start..end, false)
            .take(PURGE_BATCH)
        {
            let (key, _) = entry?;
            batch.remove(&key);
            let mut reply = vec![REPLY];
            reply.extend_from_slice(&key[9..]);
            batch.remove(&reply);
            purged += 1;
        }
        if purged > 0 {
            self.tree.apply_async(batch).await?;
        }
        Ok(purged)
    }
}

/// A unary gRPC reply: one data frame, then trailers.
fn framed(data: Bytes, trailers: Option<http::HeaderMap>) -> Body {
    let mut frames: Vec<Result<Frame<Bytes>, Status>> = vec![Ok(Frame::data(data))];
    if let Some(trailers) = trailers {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    Body::new(StreamBody::new(futures::stream::iter(frames)))
}

/// A stored reply served again.
fn replay(data: Bytes) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut response = http::Response::new(framed(data, Some(trailers)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(REPLAYED_HEADER, http::HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(KEY_HEADER, http::HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn field_of(err: ServiceError) -> String {
        match err {
            ServiceError::InvalidArgument(v) => v[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_bounded_and_validated() {
        assert_eq!(key_of(&headers(&[])).unwrap(), None);
        assert_eq!(
            key_of(&headers(&["op-1:a_b.c"])).unwrap().as_deref(),
            Some("op-1:a_b.c")
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for bad in [&[""][..], &["a b"], &[long.as_str()], &["a", "b"]] {
            let err = key_of(&headers(bad)).unwrap_err();
            assert_eq!(field_of(err), KEY_HEADER, "{bad:?}");
        }
        assert!(key_of(&headers(&[&"k".repeat(MAX_KEY_BYTES)])).is_ok());
    }

    /// A gRPC-framed unary reply whose message is `payload`.
    fn ok_reply(payload: &[u8]) -> http::Response<Body> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        http::Response::new(framed(Bytes::copy_from_slice(payload), Some(trailers)))
    }

    fn request(body: &'static [u8]) -> http::Request<Body> {
        http::Request::new(Body::new(http_body_util::Full::new(Bytes::from_static(
            body,
        ))))
    }

    async fn body_of(response: http::Response<Body>) -> (Bytes, bool) {
        let replayed = response.headers().contains_key(REPLAYED_HEADER);
        let collected = response.into_body().collect().await.unwrap();
        (collected.to_bytes(), replayed)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::config::Config::default().store).unwrap();
        Fixture { _dir: dir, store }
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_reply_without_applying_again() {
        let f = fixture();
        let cache = Idempotency::open(&f.store, 1024).unwrap();
        let applied = AtomicUsize::new(0);
        let handler = |_req: http::Request<Body>| async {
            let n = applied.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(ok_reply(format!("reply {n}").as_bytes()))
        };
        let first = cache
            .call("p", "/m", "k1", request(b"req"), handler)
            .await
            .unwrap();
        assert_eq!(
            body_of(first).await,
            (Bytes::from_static(b"reply 0"), false)
        );
        let again = cache
            .call("p", "/m", "k1", request(b"req"), handler)
            .await
            .unwrap();
        assert_eq!(body_of(again).await, (Bytes::from_static(b"reply 0"), true));
        assert_eq!(applied.load(Ordering::SeqCst), 1);

        // Another key, another principal or another method is another operation.
        for (principal, method, key) in [("p", "/m", "k2"), ("q", "/m", "k1"), ("p", "/n", "k1")] {
            let reply = cache
                .call(principal, method, key, request(b"req"), handler)
                .await
                .unwrap();
            assert!(!body_of(reply).await.1, "{principal} {method} {key}");
        }
        assert_eq!(applied.load(Ordering::SeqCst), 4);

        // The same key with another request is refused, naming the key.
        let other = cache
            .call("p", "/m", "k1", request(b"different"), handler)
            .await
            .unwrap();
        assert_eq!(
            other.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(applied.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_calls_with_one_key_apply_once() {
        let f = fixture();
        let cache = Idempotency::open(&f.store, 1024).unwrap();
        let applied = AtomicUsize::new(0);
        let release = tokio::sync::Notify::new();
        let handler = |_req: http::Request<Body>| async {
            let n = applied.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Ok::<_, std::convert::Infallible>(ok_reply(format!("reply {n}").as_bytes()))
        };
        let first = cache.call("p", "/m", "k", request(b"r"), handler);
        let second = cache.call("p", "/m", "k", request(b"r"), handler);
        let releaser = async {
            // The first call is inside the handler; the second waits on the key, not in the handler.
            while applied.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert_eq!(applied.load(Ordering::SeqCst), 1);
            release.notify_one();
        };
        let (a, b, ()) = tokio::join!(first, second, releaser);
        let (a, b) = (body_of(a.unwrap()).await, body_of(b.unwrap()).await);
        assert_eq!(applied.load(Ordering::SeqCst), 1);
        assert_eq!(a.0, b.0);
        assert!(a.1 != b.1, "one of them is the replay");
    }

    #[tokio::test]
    async fn failures_are_not_kept_and_replies_survive_a_reopen() {
        let f = fixture();
        let cache = Idempotency::open(&f.store, 1024).unwrap();
        let failing = |_req: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(
                Status::from(ServiceError::Unavailable("busy".into())).into_http(),
            )
        };
        let reply = cache
            .call("p", "/m", "k", request(b"r"), failing)
            .await
            .unwrap();
        assert!(reply.headers().contains_key("grpc-status"));
        let applied = AtomicUsize::new(0);
        let handler = |_req: http::Request<Body>| async {
            applied.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(ok_reply(b"done"))
        };
        cache
            .call("p", "/m", "k", request(b"r"), handler)
            .await
            .unwrap();
        assert_eq!(
            applied.load(Ordering::SeqCst),
            1,
            "the retry after a failure runs"
        );

        let reopened = Idempotency::open(&f.store, 1024).unwrap();
        let reply = reopened
            .call("p", "/m", "k", request(b"r"), handler)
            .await
            .unwrap();
        assert_eq!(body_of(reply).await, (Bytes::from_static(b"done"), true));
        assert_eq!(applied.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_replies_are_ignored_and_purged() {
        let f = fixture();
        let cache = Idempotency::with_window(&f.store, 1024, Duration::ZERO).unwrap();
        let applied = AtomicUsize::new(0);
        let handler = |_req: http::Request<Body>| async {
            applied.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(ok_reply(b"x"))
        };
        for _ in 0..2 {
            cache
                .call("p", "/m", "k", request(b"r"), handler)
                .await
                .unwrap();
        }
        assert_eq!(
            applied.load(Ordering::SeqCst),
            2,
            "a zero window keeps nothing"
        );
        // Both writes are older than a zero window once the clock moved past their millisecond.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while unix_ms_now() <= cache_created_bound(&cache) {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert!(cache.purge().await.unwrap() >= 1);
        assert!(cache.tree.is_empty(), "replies and expiry entries are gone");
    }

    fn cache_created_bound(cache: &Idempotency) -> u64 {
        cache
            .tree
            .range::<u64, _>(vec![EXPIRY]..vec![EXPIRY + 1], false)
            .map(|e| e.unwrap().1)
            .max()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn an_oversized_keyed_request_is_invalid_argument() {
        let f = fixture();
        let cache = Idempotency::open(&f.store, 4).unwrap();
        let reply = cache
            .call("p", "/m", "k", request(b"too long"), |_req| async {
                Ok::<_, std::convert::Infallible>(ok_reply(b"x"))
            })
            .await
            .unwrap();
        assert_eq!(
            reply.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
    }
}
