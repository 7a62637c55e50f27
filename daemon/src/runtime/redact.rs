//! Log redaction: secret values never reach a log line.
//!
//! Every formatted log event passes through [`Redactor::redact`] (the writer in
//! `runtime::telemetry`) before it is written. Three rules apply, in this order, each replacing the
//! matched text with `[redacted]` and counted in `brainstem_log_redactions_total{rule}`:
//!
//! 1. **`value`** — any value the secrets store currently holds ([`Redactor::remember`]), as exact
//!    bytes, 8 bytes or longer ([`MIN_EXACT_LEN`]). A UTF-8 value is also matched in the escaped forms
//!    the two log formats write (Rust `Debug` string escaping in the human format, JSON escaping in the
//!    JSON format), when those differ from the raw bytes.
//! 2. **`keyword`** — `key=value`, `key: value`, `"key": "value"`, `key="value"` where the key ends
//!    (ASCII case-insensitively) with one of [`SECRET_KEYS`] (`password`, `db_password`, `X-Api-Key`,
//!    `client_secret`, …); the key stays, the value goes (`password=[redacted]`). Also `Bearer <token>`
//!    anywhere (a credential of 8 or more token characters) and `Authorization: Bearer <token>` (the
//!    scheme stays). An unquoted value ends at whitespace or one of `, ; & ) } " '` or an ANSI escape;
//!    a quoted one at its closing quote (`"`, `'` or the JSON-escaped `\"`); a JSON object, array or
//!    `null` is left alone. In a JSON line, a match outside a string (a number) becomes
//!    `"[redacted]"`, so the line stays valid JSON.
//! 3. **`entropy`** — a maximal run of base64/base64url/hex characters (`A-Z a-z 0-9 + / _ -`, then up
//!    to two `=`) of 20 or more characters (padding excluded) that looks random:
//!    - all hex digits of one case, with at least one digit and one letter: Shannon entropy of at least
//!      [`HEX_MIN_ENTROPY`] = 3.0 bits per character;
//!    - otherwise: at least two of {upper, lower, digit}; not CamelCase words (no digit and every
//!      capital followed by a lower-case letter); a character-class change between at least
//!      [`MIN_CLASS_SWITCHES`] = 30 % of adjacent letters/digits; and at least [`B64_MIN_ENTROPY`] =
//!      3.5 bits per character.
//!
//!    A run that starts with `/` is a path: each `/`-separated segment is judged on its own. The
//!    values of the identifier fields in [`ENTROPY_EXEMPT_KEYS`] (ids and digests the daemon logs
//!    itself: `error_id=`, `sha256=`, `kid=`, …) are exempt from this rule only, never from rule 1.
//!
//! **How the thresholds were chosen** (measured 2026-12-02, 50,000 random strings per cell, Python
//! `secrets`): the sample entropy of random strings grows with their length, so 20 characters (the
//! shortest candidate) is the hard case. Random hex of 20 characters: 0.1 % / 1 % / mean =
//! 2.71 / 2.90 / 3.36 bits; 32: 3.12 / 3.25 / 3.61; 64: 3.55 / 3.63 / 3.82. Random base64 of 20:
//! 3.51 / 3.68 / 4.04; 32: 4.08 / 4.23 / 4.56; 64: 4.82 / 4.93 / 5.18. Identifiers are *not* separable
//! by entropy alone: metric and test names reach 3.9–4.3 bits (`brainstem_grpc_requests_total` 3.86,
//! `/var/lib/brainstem/state/audit/segment-000001` 3.89, an RFC 3339 timestamp 3.41), which is why the
//! class rules come first: snake_case, paths, numbers and timestamps have one class or split at
//! `.`/`:`; CamelCase is words; `x86_64-unknown-linux-gnu` changes class in 10 % of its pairs. With the
//! rules above, the share of random strings redacted: hex 96.9 % at 20 characters, 99.5 % at 24,
//! 99.99 % at 32, 100 % at 40 and 64; base64 98.0 % at 20, 99.5 % at 24, 99.7 % at 32, 99.9 % at 40 and
//! 64; base64url 99.4 % at 20, 99.97 % at 32. False positives: 4 of the 619 distinct 20+ character runs
//! in this repository's sources, docs and protos (all hex constants such as `0x9E37_79B9_7F4A_7C15`),
//! and 4 of 4,032 in tokio, tonic, hyper, sled and cedar sources (`H2ClientFutureProject`,
//! `SplitByUtf8BoundaryIfWindows` and two URLs with a commit hash).
//!
//! **Fingerprints, not values.** The redactor keeps no plaintext: each value is reduced to a
//! Rabin–Karp fingerprint (polynomial hash modulo 2^64 with a random odd base drawn once per process
//! from the system RNG) of its length. Values up to [`WINDOW`] bytes are found by a rolling hash of
//! exactly their length; longer ones by a rolling hash of their first `WINDOW` bytes, each hit then
//! checked against the whole value's fingerprint. So the number of rolling passes is the number of
//! distinct window lengths, at most `WINDOW − MIN_EXACT_LEN + 1` = 57, and [`Redactor::redact`] costs
//! O(line length × distinct lengths) hash steps, each a multiply-add and a bit test in the window's
//! 8 KiB pre-filter (a table probe only when the bit is set; plus O(value length) per window hit on a
//! long value). Measured (docs/PERFORMANCE.md, "Log redaction"): about 6,000 instructions for a
//! 150-byte line with nothing remembered (rules 2 and 3), about 3,800 more per distinct length, and
//! the same for 100 or 10,000 values of those lengths; 214,000 (17–24 µs) with values of all 57
//! window lengths.
//! Equal bytes always have equal fingerprints, so a remembered value is never missed; a false match
//! (rare by chance; craftable for a hash modulo 2^64 by someone who knows the base) only redacts
//! more. A wrapping 64-bit hash (with the pre-filter) replaced one modulo 2^61 − 1 (probing the table
//! at every position): the value rule's share of a line with 100 values of three lengths fell from
//! about 31,500 to 11,400 instructions. A fingerprint is not a cryptographic commitment: with the base (also in memory), a
//! low-entropy value can be confirmed by guessing; it keeps values out of the log and out of casual
//! memory dumps, nothing more.
//!
//! **Bounds.** At most [`MAX_ENTRIES`] = 262,144 distinct fingerprints are remembered (measured:
//! 96 bytes each with 200,000 values of 80 lengths, so about 25 MB at the cap, plus 8 KiB per distinct
//! window length); beyond that a value is not added and a warning is logged once. Counts are per fingerprint: two
//! secrets with the same value stay redacted until both are forgotten.
//!
//! **Forgetting without the value.** [`Redactor::remember`] returns a [`Remembered`]: the length and
//! fingerprints of each form it counted (at most three, 80 bytes, no plaintext). The secrets store
//! keeps one per stored version and hands it to [`Redactor::forget_remembered`] when the version is
//! pruned or destroyed, which takes out exactly those counts, so it need not decrypt the version.
//! A form refused at the cap is not in it, so forgetting never takes out a count that another
//! secret's remember added. [`Redactor::forget`] (by value) remains for callers that hold the value.
//!
//! **What it cannot catch**: a value split across two log lines (or two events), values shorter than
//! 8 bytes (unless a keyword or the entropy rule catches them), any other encoding of a value (base64
//! or hex of a secret, URL encoding, a prefix or a substring of it), and low-entropy secrets logged
//! without a keyword. See docs/LOGGING.md.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};

use crate::runtime::events::LogRedacted;

/// Values shorter than this are not remembered (too many innocent matches, and too cheap to guess).
pub const MIN_EXACT_LEN: usize = 8;
/// Values longer than this are found by a fingerprint of their first `WINDOW` bytes, then checked whole.
pub const WINDOW: usize = 64;
/// Distinct fingerprints remembered at most (about 25 MB at 96 bytes each).
pub const MAX_ENTRIES: usize = 1 << 18;
/// What replaces a match.
pub const REDACTED: &str = "[redacted]";
/// Key names (suffixes, ASCII case-insensitive) whose values are redacted.
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "secret",
    "bearer",
    "authorization",
];
/// Fields the daemon logs identifiers and digests under; their values are exempt from the entropy
/// rule only (exact key name, ASCII case-insensitive).
pub const ENTROPY_EXEMPT_KEYS: &[&str] = &[
    // Token ids (32 hex digits) in "token issued" / "token revoked"; token strings are never logged.
    "id",
    "token_id",
    "error_id",
    "decision_id",
    "store_id",
    "key_id",
    "kid",
    "sha256",
    "hash",
    "head",
    "digest",
    "fingerprint",
    "request_id",
    "correlation_id",
];
/// Shortest run the entropy rule looks at.
pub const ENTROPY_MIN_LEN: usize = 20;
/// Bits per character a hex run needs to be redacted.
pub const HEX_MIN_ENTROPY: f64 = 3.0;
/// Bits per character any other base64-alphabet run needs to be redacted.
pub const B64_MIN_ENTROPY: f64 = 3.5;
/// Share of adjacent letter/digit pairs that change class (upper/lower/digit) a non-hex run needs.
pub const MIN_CLASS_SWITCHES: f64 = 0.3;

/// Bits in each window's pre-filter (8 KiB), checked before the table on every rolling step.
const FILTER_BITS: usize = 1 << 16;

/// The pre-filter's word and bit for a fingerprint.
fn filter_slot(fingerprint: u64) -> (usize, u64) {
    let bit = (fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize;
    (bit / 64, 1 << (bit % 64))
}

/// Fingerprints are uniform below 2^61; a multiply spreads them over all 64 bits for the table.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Table = HashMap<u64, Vec<Whole>, BuildHasherDefault<FingerprintHasher>>;

/// One form of a value as the table keys it: its length, the fingerprint of its window (its first
/// `min(len, WINDOW)` bytes) and of the whole value.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    len: usize,
    window: u64,
    whole: u64,
}

/// What one [`Redactor::remember`] counted: the fingerprints of each form of the value (raw bytes,
/// escaped forms) it added or counted again, at most three, never the value. Handing it back to
/// [`Redactor::forget_remembered`] takes exactly those counts out, without the value: the secrets
/// store keeps one per stored version, so pruning or destroying a version need not decrypt it.
/// Empty when nothing was counted (a value shorter than [`MIN_EXACT_LEN`], or a new value beyond
/// [`MAX_ENTRIES`]). Only meaningful to the redactor that made it.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    marks: [Mark; 3],
    count: u8,
}

impl Remembered {
    /// Whether nothing was counted (forgetting it does nothing).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn push(&mut self, mark: Mark) {
        // `variants` yields at most three forms.
        if let Some(slot) = self.marks.get_mut(usize::from(self.count)) {
            *slot = mark;
            self.count += 1;
        }
    }

    fn marks(&self) -> &[Mark] {
        &self.marks[..usize::from(self.count)]
    }
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Fingerprints stay out of debug output, like the values they stand for.
        f.debug_struct("Remembered")
            .field("forms", &self.count)
            .finish_non_exhaustive()
    }
}

/// One remembered value: its length, its fingerprint and how many stored secrets have it.
struct Whole {
    len: usize,
    fingerprint: u64,
    count: u32,
}

/// Every value whose window (its first `min(len, WINDOW)` bytes) has this length.
struct Window {
    len: usize,
    /// base^len, to take the leaving byte out of the rolling hash.
    lead: u64,
    table: Table,
    /// A bit per fingerprint slot that may be in `table`: most positions of a line are dismissed
    /// here without probing the table. Bits of removed fingerprints stay until the next rebuild.
    filter: Box<[u64]>,
    /// Fingerprints removed since the filter was last rebuilt.
    stale: usize,
}

impl Window {
    fn new(len: usize, lead: u64) -> Self {
        Window {
            len,
            lead,
            table: Table::default(),
            filter: vec![0; FILTER_BITS / 64].into_boxed_slice(),
            stale: 0,
        }
    }

    fn mark(&mut self, fingerprint: u64) {
        let (word, bit) = filter_slot(fingerprint);
        self.filter[word] |= bit;
    }

    fn may_hold(&self, fingerprint: u64) -> bool {
        let (word, bit) = filter_slot(fingerprint);
        self.filter[word] & bit != 0
    }

    /// After a removal: rebuild the filter once as many fingerprints went as remain (amortised O(1)).
    fn removed(&mut self) {
        self.stale += 1;
        if self.stale > self.table.len() {
            self.filter.fill(0);
            let keys: Vec<u64> = self.table.keys().copied().collect();
            for key in keys {
                self.mark(key);
            }
            self.stale = 0;
        }
    }
}

#[derive(Default)]
struct Entries {
    /// Sorted by length.
    windows: Vec<Window>,
    distinct: usize,
}

/// The process's set of values never to log, as fingerprints. See the module documentation.
pub struct Redactor {
    base: u64,
    entries: RwLock<Entries>,
    /// Distinct fingerprints, read without the lock (0: rule 1 is skipped).
    distinct: AtomicUsize,
    /// [`MAX_ENTRIES`]; smaller in tests.
    max_entries: usize,
    full_warned: AtomicBool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("remembered", &self.remembered())
            .finish_non_exhaustive()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

/// The process-wide redactor the log writer uses and the secrets store feeds.
pub fn global() -> &'static Redactor {
    static GLOBAL: OnceLock<Redactor> = OnceLock::new();
    GLOBAL.get_or_init(Redactor::new)
}

fn random_base() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let drawn = ring::rand::SystemRandom::new().fill(&mut bytes).is_ok();
    let mut base = u64::from_le_bytes(bytes);
    if !drawn {
        // Never fails on Linux; if it did, a fixed-but-odd base still finds values, only predictably.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        base = nanos ^ 0x2545_F491_4F6C_DD1D;
    }
    // Odd (invertible modulo 2^64) and large.
    base | (1 << 63) | 1
}

/// The forms a value takes in a log line: its bytes and, for UTF-8, the escaped forms the human
/// (`Debug`) and JSON formats write. Deduplicated; each at least `MIN_EXACT_LEN` bytes.
fn variants(value: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let mut out: Vec<Cow<'_, [u8]>> = vec![Cow::Borrowed(value)];
    if let Ok(text) = std::str::from_utf8(value) {
        let debug = format!("{text:?}");
        let debug = debug.as_bytes()[1..debug.len() - 1].to_vec();
        if let Ok(json) = serde_json::to_string(text) {
            let json = json.as_bytes()[1..json.len() - 1].to_vec();
            if json != value && json != debug {
                out.push(Cow::Owned(json));
            }
        }
        if debug != value {
            out.push(Cow::Owned(debug));
        }
    }
    out
}

impl Redactor {
    /// An empty redactor with its own random base. The daemon uses [`global`]; tests and benches make
    /// their own.
    pub fn new() -> Self {
        Redactor {
            base: random_base(),
            entries: RwLock::new(Entries::default()),
            distinct: AtomicUsize::new(0),
            max_entries: MAX_ENTRIES,
            full_warned: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_max_entries(max_entries: usize) -> Self {
        Redactor {
            max_entries,
            ..Redactor::new()
        }
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        bytes.iter().fold(0u64, |h, &b| {
            h.wrapping_mul(self.base).wrapping_add(u64::from(b) + 1)
        })
    }

    fn pow(&self, exponent: usize) -> u64 {
        (0..exponent).fold(1u64, |acc, _| acc.wrapping_mul(self.base))
    }

    /// A value that is currently stored; from now on it is redacted from every log line. Values
    /// shorter than [`MIN_EXACT_LEN`] bytes are ignored. Returns what was counted, for
    /// [`forget_remembered`](Self::forget_remembered).
    pub fn remember(&self, value: &[u8]) -> Remembered {
        let mut remembered = Remembered::default();
        if value.len() < MIN_EXACT_LEN {
            return remembered;
        }
        // Hashed before the lock is taken: writers hold it only for the table updates.
        let forms = self.marks(value);
        let mut full = false;
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            for &mark in forms.marks() {
                if self.add(&mut entries, mark) {
                    remembered.push(mark);
                } else {
                    full = true;
                }
            }
            self.distinct.store(entries.distinct, Ordering::Release);
        }
        // Logged outside the lock: this line itself goes through `redact`.
        if full && !self.full_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = MAX_ENTRIES,
                "log redaction: too many distinct secret values; further values are not redacted by value"
            );
        }
        remembered
    }

    /// A value that was destroyed or pruned. The set counts: a value remembered twice stays redacted
    /// until it is forgotten twice. Forgetting a value never remembered does nothing.
    pub fn forget(&self, value: &[u8]) {
        if value.len() < MIN_EXACT_LEN {
            return;
        }
        self.forget_remembered(&self.marks(value));
    }

    /// Takes out exactly what one [`remember`](Self::remember) counted, without the value: each
    /// form's count goes down by one, and the value stays redacted while another remember of it
    /// is not forgotten. Hand each `Remembered` back once.
    pub fn forget_remembered(&self, remembered: &Remembered) {
        if remembered.is_empty() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for &mark in remembered.marks() {
            self.remove(&mut entries, mark);
        }
        self.distinct.store(entries.distinct, Ordering::Release);
    }

    /// Distinct fingerprints remembered (escaped forms of a value count separately).
    pub fn remembered(&self) -> usize {
        self.distinct.load(Ordering::Acquire)
    }

    /// The marks of every form of `value` (not yet counted anywhere).
    fn marks(&self, value: &[u8]) -> Remembered {
        let mut forms = Remembered::default();
        for variant in variants(value) {
            forms.push(self.mark(&variant));
        }
        forms
    }

    fn mark(&self, value: &[u8]) -> Mark {
        let len = value.len();
        let window = self.hash(&value[..len.min(WINDOW)]);
        let whole = if len <= WINDOW {
            window
        } else {
            self.hash(value)
        };
        Mark { len, window, whole }
    }

    /// Adds or counts `mark`; false if it is new and the set is full.
    fn add(&self, entries: &mut Entries, mark: Mark) -> bool {
        let window_len = mark.len.min(WINDOW);
        let window_fp = mark.window;
        let index = match entries.windows.binary_search_by_key(&window_len, |w| w.len) {
            Ok(index) => index,
            Err(index) => {
                entries
                    .windows
                    .insert(index, Window::new(window_len, self.pow(window_len)));
                index
            }
        };
        // Almost always one value per window fingerprint: no room for more until needed.
        let wholes = entries.windows[index]
            .table
            .entry(window_fp)
            .or_insert_with(|| Vec::with_capacity(1));
        if let Some(whole) = wholes
            .iter_mut()
            .find(|w| w.len == mark.len && w.fingerprint == mark.whole)
        {
            whole.count = whole.count.saturating_add(1);
            return true;
        }
        if entries.distinct >= self.max_entries {
            if wholes.is_empty() {
                entries.windows[index].table.remove(&window_fp);
            }
            if entries.windows[index].table.is_empty() {
                entries.windows.remove(index);
            }
            return false;
        }
        wholes.push(Whole {
            len: mark.len,
            fingerprint: mark.whole,
            count: 1,
        });
        entries.windows[index].mark(window_fp);
        entries.distinct += 1;
        true
    }

    fn remove(&self, entries: &mut Entries, mark: Mark) {
        let window_len = mark.len.min(WINDOW);
        let Ok(index) = entries.windows.binary_search_by_key(&window_len, |w| w.len) else {
            return;
        };
        let window_fp = mark.window;
        let window = &mut entries.windows[index];
        let Some(wholes) = window.table.get_mut(&window_fp) else {
            return;
        };
        let Some(at) = wholes
            .iter()
            .position(|w| w.len == mark.len && w.fingerprint == mark.whole)
        else {
            return;
        };
        wholes[at].count -= 1;
        if wholes[at].count > 0 {
            return;
        }
        wholes.swap_remove(at);
        entries.distinct -= 1;
        if wholes.is_empty() {
            window.table.remove(&window_fp);
            if window.table.is_empty() {
                entries.windows.remove(index);
            } else {
                window.removed();
            }
        }
    }

    /// The line with every remembered value, keyword value and high-entropy run replaced by
    /// `[redacted]`; borrowed (no allocation) when nothing matched.
    pub fn redact<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        if self.distinct.load(Ordering::Acquire) > 0 {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(spans) = self.value_spans(&entries, &out) {
                apply(&mut out, "value", spans);
            }
        }
        redact_by_rules(out)
    }

    /// [`redact`](Self::redact) for the panic hook, which may run on a thread that panicked while
    /// holding the write lock (waiting for it would deadlock): `None` if the lock stays taken for
    /// 100 ms.
    pub(crate) fn redact_without_blocking<'a>(&self, line: &'a str) -> Option<Cow<'a, str>> {
        let mut out = Cow::Borrowed(line);
        if self.distinct.load(Ordering::Acquire) > 0 {
            let mut attempts = 0;
            let entries = loop {
                match self.entries.try_read() {
                    Ok(entries) => break entries,
                    Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                        break poisoned.into_inner();
                    }
                    Err(std::sync::TryLockError::WouldBlock) if attempts < 100 => {
                        attempts += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(std::sync::TryLockError::WouldBlock) => return None,
                }
            };
            if let Some(spans) = self.value_spans(&entries, &out) {
                apply(&mut out, "value", spans);
            }
        }
        Some(redact_by_rules(out))
    }

    #[cfg(test)]
    pub(crate) fn hold_write_lock_for_test(&self) -> std::sync::RwLockWriteGuard<'_, impl Sized> {
        self.entries.write().unwrap()
    }

    /// Byte ranges of remembered values in `line`, or `None` (without allocating) when there are none.
    fn value_spans(&self, entries: &Entries, line: &str) -> Option<Vec<(usize, usize)>> {
        if entries.distinct == 0 {
            return None;
        }
        let bytes = line.as_bytes();
        let mut spans: Option<Vec<(usize, usize)>> = None;
        for window in &entries.windows {
            let len = window.len;
            if len > bytes.len() {
                break;
            }
            // Position 0, then one multiply-add per later position (`leaving` → `entering`).
            let mut h = self.hash(&bytes[..len]);
            let mut start = 0;
            let mut rolling = bytes.iter().zip(&bytes[len..]);
            loop {
                if window.may_hold(h)
                    && let Some(wholes) = window.table.get(&h)
                {
                    for whole in wholes {
                        let end = start + whole.len;
                        let matched = end <= bytes.len()
                            && (whole.len == len
                                || self.hash(&bytes[start..end]) == whole.fingerprint);
                        if matched && line.is_char_boundary(start) && line.is_char_boundary(end) {
                            spans.get_or_insert_with(Vec::new).push((start, end));
                        }
                    }
                }
                let Some((&leaving, &entering)) = rolling.next() else {
                    break;
                };
                h = h
                    .wrapping_mul(self.base)
                    .wrapping_add(u64::from(entering) + 1)
                    .wrapping_sub((u64::from(leaving) + 1).wrapping_mul(window.lead));
                start += 1;
            }
        }
        spans
    }
}

/// Rules 2 and 3 (keywords, entropy), which need no state.
fn redact_by_rules(mut out: Cow<'_, str>) -> Cow<'_, str> {
    if let Some(spans) = keyword_spans(&out) {
        apply(&mut out, "keyword", spans);
    }
    if let Some(spans) = entropy_spans(&out) {
        apply(&mut out, "entropy", spans);
    }
    out
}

fn apply(out: &mut Cow<'_, str>, rule: &'static str, spans: Vec<(usize, usize)>) {
    let (text, count) = replace(out, spans);
    if count > 0 {
        LogRedacted { rule, count }.emit();
        *out = Cow::Owned(text);
    }
}

/// Replaces the (possibly overlapping, unsorted) byte ranges with `[redacted]`; returns the new text
/// and how many separate ranges were replaced.
///
/// In a JSON line (one that starts with `{`), a range outside any string (a number, say) is replaced
/// by `"[redacted]"`, so the line stays valid JSON.
fn replace(line: &str, mut spans: Vec<(usize, usize)>) -> (String, u64) {
    spans.sort_unstable();
    let mut out = String::with_capacity(line.len() + 8);
    let mut copied = 0;
    let mut count = 0;
    let mut index = 0;
    let mut json = JsonStrings::new(line);
    while index < spans.len() {
        let (mut start, mut end) = spans[index];
        index += 1;
        while index < spans.len() && spans[index].0 <= end {
            end = end.max(spans[index].1);
            index += 1;
        }
        start = start.max(copied).min(line.len());
        end = end.min(line.len());
        // Widen to character boundaries (never narrower than asked).
        while !line.is_char_boundary(start) {
            start -= 1;
        }
        while !line.is_char_boundary(end) {
            end += 1;
        }
        if start >= end {
            continue;
        }
        out.push_str(&line[copied..start]);
        if json.outside_string_at(start) {
            out.push('"');
            out.push_str(REDACTED);
            out.push('"');
        } else {
            out.push_str(REDACTED);
        }
        copied = end;
        count += 1;
    }
    out.push_str(&line[copied..]);
    (out, count)
}

/// Whether positions of a JSON line lie outside its strings, asked in increasing order (one scan).
struct JsonStrings<'a> {
    bytes: Option<&'a [u8]>,
    at: usize,
    in_string: bool,
    escaped: bool,
}

impl<'a> JsonStrings<'a> {
    fn new(line: &'a str) -> Self {
        JsonStrings {
            bytes: line.starts_with('{').then_some(line.as_bytes()),
            at: 0,
            in_string: false,
            escaped: false,
        }
    }

    fn outside_string_at(&mut self, position: usize) -> bool {
        let Some(bytes) = self.bytes else {
            return false;
        };
        while self.at < position.min(bytes.len()) {
            let b = bytes[self.at];
            if self.escaped {
                self.escaped = false;
            } else if self.in_string && b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = !self.in_string;
            }
            self.at += 1;
        }
        !self.in_string
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Skips backwards over what may sit between a key and its separator: spaces, a closing quote
/// (`"` or the JSON-escaped `\"`) and ANSI SGR sequences (`ESC [ … m`). Returns the key's end.
fn skip_back(b: &[u8], mut end: usize) -> usize {
    for _ in 0..8 {
        if end > 0 && b[end - 1] == b' ' {
            end -= 1;
        } else if end > 0 && b[end - 1] == b'"' {
            end -= 1;
            if end > 0 && b[end - 1] == b'\\' {
                end -= 1;
            }
        } else if end > 0 && b[end - 1] == b'm' {
            let mut at = end - 1;
            while at > 0 && (b[at - 1].is_ascii_digit() || b[at - 1] == b';') {
                at -= 1;
            }
            if at >= 2 && b[at - 1] == b'[' && b[at - 2] == 0x1b {
                end = at - 2;
            } else {
                break;
            }
        } else {
            break;
        }
    }
    end
}

/// Skips forwards over spaces and ANSI SGR sequences after a separator.
fn skip_forward(b: &[u8], mut at: usize) -> usize {
    loop {
        if at < b.len() && (b[at] == b' ' || b[at] == b'\t') {
            at += 1;
        } else if at + 1 < b.len() && b[at] == 0x1b && b[at + 1] == b'[' {
            let mut end = at + 2;
            while end < b.len() && (b[end].is_ascii_digit() || b[end] == b';') {
                end += 1;
            }
            if end < b.len() && b[end] == b'm' {
                at = end + 1;
            } else {
                return at;
            }
        } else {
            return at;
        }
    }
}

fn ends_with_ignore_case(haystack: &[u8], needle: &str) -> bool {
    haystack.len() >= needle.len()
        && haystack[haystack.len() - needle.len()..].eq_ignore_ascii_case(needle.as_bytes())
}

fn starts_with_ignore_case(haystack: &[u8], needle: &str) -> bool {
    haystack.len() >= needle.len()
        && haystack[..needle.len()].eq_ignore_ascii_case(needle.as_bytes())
}

fn is_unquoted_end(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b',' | b';' | b'&' | b')' | b'}' | b'"' | b'\'' | 0x1b)
}

/// The value after a separator at `at`: `(start, end, resume)` of its text (inside any quotes).
fn value_after(b: &[u8], at: usize) -> Option<(usize, usize, usize)> {
    let start = skip_forward(b, at);
    if start >= b.len() {
        return None;
    }
    let (open, close): (usize, &[u8]) = if b[start..].starts_with(b"\\\"") {
        (2, b"\\\"")
    } else if b[start] == b'"' {
        (1, b"\"")
    } else if b[start] == b'\'' {
        (1, b"'")
    } else {
        (0, b"")
    };
    if open > 0 {
        let from = start + open;
        let mut end = from;
        while end < b.len() && !b[end..].starts_with(close) {
            // A backslash escapes the next byte inside `"…"`; in `\"…\"` the close itself starts with one.
            if close == b"\"" && b[end] == b'\\' {
                end += 1;
            }
            end += 1;
        }
        let end = end.min(b.len());
        return Some((from, end, (end + close.len()).min(b.len())));
    }
    // A JSON object or array: its own keys are judged on their own.
    if matches!(b[start], b'{' | b'[') {
        return None;
    }
    let mut end = start;
    while end < b.len() && !is_unquoted_end(b[end]) {
        end += 1;
    }
    if &b[start..end] == b"null" {
        return None;
    }
    Some((start, end, end))
}

/// `Bearer <credential>` at `at` (the `b`): the credential's range, if it has 8+ token characters.
fn bearer_credential(b: &[u8], at: usize, min_len: usize) -> Option<(usize, usize)> {
    if !starts_with_ignore_case(&b[at..], "bearer") {
        return None;
    }
    let after = at + "bearer".len();
    if after >= b.len() || b[after] != b' ' {
        return None;
    }
    let start = skip_forward(b, after);
    let mut end = start;
    while end < b.len()
        && (b[end].is_ascii_alphanumeric()
            || matches!(b[end], b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'='))
    {
        end += 1;
    }
    (end - start >= min_len).then_some((start, end))
}

/// Rule 2: values of secret-named keys and bearer credentials.
fn keyword_spans(line: &str) -> Option<Vec<(usize, usize)>> {
    let b = line.as_bytes();
    let mut spans: Option<Vec<(usize, usize)>> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'=' || c == b':' {
            let key_end = skip_back(b, i);
            let key = &b[..key_end];
            if key_end > 0
                && is_key_byte(b[key_end - 1])
                && SECRET_KEYS.iter().any(|k| ends_with_ignore_case(key, k))
                && let Some((mut start, mut end, mut resume)) = value_after(b, i + 1)
            {
                // `Authorization: Bearer abc`: the scheme stays.
                for scheme in ["bearer", "basic", "token", "digest"] {
                    if end - start == scheme.len() && starts_with_ignore_case(&b[start..], scheme) {
                        let credential = skip_forward(b, end);
                        if credential > end {
                            if let Some((_, e, _)) = value_after(b, end) {
                                start = credential;
                                end = end.max(e);
                                resume = end;
                            }
                        }
                    }
                }
                if end > start && !b[start..].starts_with(REDACTED.as_bytes()) {
                    spans.get_or_insert_with(Vec::new).push((start, end));
                }
                i = resume.max(i + 1);
                continue;
            }
        }
        if (c | 0x20) == b'b'
            && (i == 0 || !is_key_byte(b[i - 1]))
            && let Some((start, end)) = bearer_credential(b, i, 8)
        {
            if !b[start..].starts_with(REDACTED.as_bytes()) {
                spans.get_or_insert_with(Vec::new).push((start, end));
            }
            i = end;
            continue;
        }
        i += 1;
    }
    spans
}

fn is_b64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')
}

/// Shannon entropy in bits per character of an ASCII run.
fn entropy(run: &[u8]) -> f64 {
    let mut counts = [0u32; 128];
    for &b in run {
        counts[usize::from(b & 0x7f)] += 1;
    }
    let n = run.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether a run of base64-alphabet characters (no padding) looks random. See the module docs.
fn looks_random(run: &[u8]) -> bool {
    if run.len() < ENTROPY_MIN_LEN {
        return false;
    }
    let (mut upper, mut lower, mut digit) = (false, false, false);
    for &b in run {
        upper |= b.is_ascii_uppercase();
        lower |= b.is_ascii_lowercase();
        digit |= b.is_ascii_digit();
    }
    let hex_lower = run
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let hex_upper = run
        .iter()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    if hex_lower || hex_upper {
        return digit && (upper || lower) && entropy(run) >= HEX_MIN_ENTROPY;
    }
    if usize::from(upper) + usize::from(lower) + usize::from(digit) < 2 {
        return false;
    }
    let camel = !digit
        && run
            .windows(2)
            .all(|pair| !pair[0].is_ascii_uppercase() || pair[1].is_ascii_lowercase())
        && !run.last().is_some_and(u8::is_ascii_uppercase);
    if camel {
        return false;
    }
    let class = |b: u8| {
        if b.is_ascii_uppercase() {
            0
        } else if b.is_ascii_lowercase() {
            1
        } else {
            2
        }
    };
    let mut previous = None;
    let (mut pairs, mut switches) = (0u32, 0u32);
    for &b in run.iter().filter(|b| b.is_ascii_alphanumeric()) {
        let c = class(b);
        if let Some(p) = previous {
            pairs += 1;
            switches += u32::from(p != c);
        }
        previous = Some(c);
    }
    pairs > 0
        && f64::from(switches) / f64::from(pairs) >= MIN_CLASS_SWITCHES
        && entropy(run) >= B64_MIN_ENTROPY
}

/// Whether the run starting at `start` is the value of a field in [`ENTROPY_EXEMPT_KEYS`].
fn exempt(b: &[u8], start: usize) -> bool {
    let mut at = start;
    // An opening quote, possibly JSON-escaped, and any ANSI reset before the value.
    if at > 0 && b[at - 1] == b'"' {
        at -= 1;
        if at > 0 && b[at - 1] == b'\\' {
            at -= 1;
        }
    }
    let at = skip_back(b, at);
    if at == 0 || !(b[at - 1] == b'=' || b[at - 1] == b':') {
        return false;
    }
    let key_end = skip_back(b, at - 1);
    let mut key_start = key_end;
    while key_start > 0 && is_key_byte(b[key_start - 1]) && key_end - key_start <= 32 {
        key_start -= 1;
    }
    // `ESC [ 3 m kid`: the SGR sequence's digits and `m` are not part of the name.
    if key_start >= 2 && b[key_start - 1] == b'[' && b[key_start - 2] == 0x1b {
        let mut at = key_start;
        while at < key_end && (b[at].is_ascii_digit() || b[at] == b';') {
            at += 1;
        }
        if at < key_end && b[at] == b'm' {
            key_start = at + 1;
        }
    }
    let key = &b[key_start..key_end];
    ENTROPY_EXEMPT_KEYS
        .iter()
        .any(|k| key.eq_ignore_ascii_case(k.as_bytes()))
}

/// Rule 3: high-entropy runs outside exempt fields.
fn entropy_spans(line: &str) -> Option<Vec<(usize, usize)>> {
    let b = line.as_bytes();
    let mut spans: Option<Vec<(usize, usize)>> = None;
    let mut i = 0;
    while i < b.len() {
        if !is_b64_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_b64_byte(b[i]) {
            i += 1;
        }
        let end = i;
        let mut padded = end;
        while padded < b.len() && padded < end + 2 && b[padded] == b'=' {
            padded += 1;
        }
        if end - start < ENTROPY_MIN_LEN || exempt(b, start) {
            continue;
        }
        let run = &b[start..end];
        // Inside a path (the run starts with `/`, or follows `/`, `.` or `~` as in
        // `/tmp/.tmpAb3xY9/new.key`): each segment is judged on its own.
        let in_path = run[0] == b'/' || (start > 0 && matches!(b[start - 1], b'/' | b'.' | b'~'));
        if in_path && run.contains(&b'/') {
            let mut at = start;
            for segment in run.split(|&c| c == b'/') {
                if looks_random(segment) {
                    spans
                        .get_or_insert_with(Vec::new)
                        .push((at, at + segment.len()));
                }
                at += segment.len() + 1;
            }
        } else if looks_random(run) {
            spans.get_or_insert_with(Vec::new).push((start, padded));
        }
    }
    spans
}

#[cfg(test)]
mod tests;
