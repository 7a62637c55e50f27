use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;

/// Lines shaped like the daemon's own output (human and JSON), which must pass unchanged.
const ORDINARY: &[&str] = &[
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::supervisor::events: actor started actor=\"episodic\" restarts=0 critical=true",
    "2026-12-02T13:10:29.123456Z ERROR brainstemd::grpc::status: internal error error=\"corrupted record\" caused_by=[\"crc mismatch in tree episodes\"] error_id=1764681029123 subsystem=\"store\"",
    "2026-12-02T13:10:29.123456Z  WARN brainstemd::runtime::events: connection refused: max_connections reached peer=Some(127.0.0.1:50432)",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::tokens::events: token issued id=\"5f1c9a2be73d48a09c6e2d1f0b7a3e58\" principal=\"agent:web\" issuer=\"operator\" kind=\"issue\"",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::tokens::events: signing key rotated kid=\"k7f3a9c2e1b4d6f8a0c2e4b6d\" trigger=\"age\"",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::store: store opened path=/var/lib/brainstem/state store_id=4f9c2b7a1e3d5c8b9a0f1e2d3c4b5a69 generation=1234 boot_count=17",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::access::audit: segment sealed path=/var/lib/brainstem/state/audit/segment-000000000042 sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::runtime::metrics: metrics listener on 127.0.0.1:9464 path=/metrics",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::grpc::layer: access denied method=\"/brainstem.v1.Episodic/Store\" principal=\"spiffe://brainstem.local/agent/web\" reason=\"no-grant\"",
    "2026-12-02T13:10:29.123456Z  WARN brainstemd::supervisor::runtime: actor did not report ready in time; starting the next one actor=\"flags-modules\" timeout_s=30",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::flags: flags loaded path=/etc/brainstem/flags.json flags=12 sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "2026-12-02T13:10:29.123456Z DEBUG brainstemd::tokens::events: token rejected reason=\"expired\" detail=\"expired at 2026-12-02T12:00:00Z\"",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::access::audit: decision recorded decision_id=01JD9X4Q7ZK3M8R2T5V6W9Y0AB correlation_id=c0ffee42-1234-4abc-9def-0123456789ab",
    "2026-12-02T13:10:29.123456Z ERROR brainstemd::supervisor::events: actor panicked actor=\"episodic\" panic=\"index out of bounds: the len is 3 but the index is 7\"",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::daemon: brainstem_grpc_requests_total brainstem_supervisor_actor_mailbox_depth brainstem_store_flush_duration_seconds",
    "2026-12-02T13:10:29.123456Z  INFO brainstemd::daemon: ready version=0.1.0 listen=127.0.0.1:7443 state_dir=/var/lib/brainstem config=/etc/brainstem/brainstemd.toml",
    "{\"timestamp\":\"2026-12-02T13:10:29.123456Z\",\"level\":\"INFO\",\"message\":\"configuration reloaded\",\"detail\":\"policy set: 3 policies\",\"target\":\"brainstemd::runtime::events\"}",
    "{\"timestamp\":\"2026-12-02T13:10:29.123456Z\",\"level\":\"ERROR\",\"message\":\"internal error\",\"error\":\"io error\",\"error_id\":1764681029123,\"subsystem\":\"audit\",\"target\":\"brainstemd::grpc::status\"}",
    "{\"timestamp\":\"2026-12-02T13:10:29.123456Z\",\"level\":\"INFO\",\"message\":\"token revoked\",\"id\":\"5f1c9a2be73d48a09c6e2d1f0b7a3e58\",\"by\":\"operator\",\"descendants\":2}",
    "\u{1b}[2m2026-12-02T13:10:29.123456Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mbrainstemd::supervisor::events\u{1b}[0m\u{1b}[2m:\u{1b}[0m actor started \u{1b}[3mactor\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"episodic\"",
    "x86_64-unknown-linux-gnu ExtendedKeyUsagePurpose SubsystemSchemaTooNew Guardrails/CheckFormSubmit proto/brainstem/v1/flags",
    "elapsed 12.5ms, 18446744073709551615 bytes, version 1.2.3-rc.4+build.567, ünïcödé ✓ naïve café",
];

fn redactor() -> Redactor {
    Redactor::new()
}

#[test]
fn ordinary_daemon_lines_pass_unchanged_and_borrowed() {
    let r = redactor();
    r.remember(b"an unrelated secret value");
    for line in ORDINARY {
        let out = r.redact(line);
        assert_eq!(out, *line, "changed: {line}");
        assert!(matches!(out, Cow::Borrowed(_)), "allocated: {line}");
    }
}

#[test]
fn a_remembered_value_is_replaced_everywhere_in_the_line() {
    let r = redactor();
    r.remember(b"hunter2-correct-horse");
    assert_eq!(r.remembered(), 1);
    let line = "user logged in with hunter2-correct-horse and again hunter2-correct-horse.";
    assert_eq!(
        r.redact(line),
        "user logged in with [redacted] and again [redacted]."
    );
    // At the very start and end, and touching other text.
    assert_eq!(
        r.redact("hunter2-correct-horse:xhunter2-correct-horse"),
        "[redacted]:x[redacted]"
    );
    // Not when only part of it is there.
    assert_eq!(r.redact("hunter2-correct-hors"), "hunter2-correct-hors");
}

#[test]
fn overlapping_and_nested_values_are_replaced_as_one_range() {
    let r = redactor();
    r.remember(b"abcdefgh12");
    r.remember(b"gh12345678");
    r.remember(b"cdefgh");
    assert_eq!(r.redact("-abcdefgh12345678-"), "-[redacted]-");
}

#[test]
fn values_shorter_than_eight_bytes_are_ignored() {
    let r = redactor();
    r.remember(b"1234567");
    r.remember(b"");
    assert_eq!(r.remembered(), 0);
    assert_eq!(r.redact("pin 1234567 ok"), "pin 1234567 ok");
    r.remember(b"12345678");
    assert_eq!(r.remembered(), 1);
    assert_eq!(r.redact("pin 12345678 ok"), "pin [redacted] ok");
}

#[test]
fn forgetting_is_counted_per_value() {
    let r = redactor();
    r.remember(b"shared-value-of-two");
    r.remember(b"shared-value-of-two");
    assert_eq!(r.remembered(), 1);
    r.forget(b"shared-value-of-two");
    assert_eq!(r.redact("v shared-value-of-two"), "v [redacted]");
    r.forget(b"shared-value-of-two");
    assert_eq!(r.remembered(), 0);
    assert_eq!(r.redact("v shared-value-of-two"), "v shared-value-of-two");
    // Forgetting what was never remembered changes nothing.
    r.forget(b"never-remembered-value");
    r.forget(b"short");
    assert_eq!(r.remembered(), 0);
}

#[test]
fn forgetting_what_was_remembered_needs_no_value_and_keeps_the_counts() {
    let r = redactor();
    // Twice: redacted until both are handed back.
    let first = r.remember(b"shared-value-of-two");
    let second = r.remember(b"shared-value-of-two");
    assert!(!first.is_empty());
    r.forget_remembered(&first);
    assert_eq!(r.redact("v shared-value-of-two"), "v [redacted]");
    r.forget_remembered(&second);
    assert_eq!(r.redact("v shared-value-of-two"), "v shared-value-of-two");
    assert_eq!(r.remembered(), 0);

    // Every form goes: raw, `Debug`-escaped and JSON-escaped (they differ for a control byte); a
    // long value (window, then the whole) too, and another value of the same window stays.
    let escaped = r.remember(b"tab\tquote\"ctl\x01-value");
    assert_eq!(r.remembered(), 3);
    let long_a = [b'a'; 100];
    let mut long_b = [b'a'; 100];
    long_b[99] = b'b';
    let a = r.remember(&long_a);
    r.remember(&long_b);
    r.forget_remembered(&escaped);
    r.forget_remembered(&a);
    assert_eq!(r.remembered(), 1);
    let (a, b) = (
        String::from_utf8(long_a.to_vec()).unwrap(),
        String::from_utf8(long_b.to_vec()).unwrap(),
    );
    assert_eq!(r.redact(&format!("x {a} {b}")), format!("x {a} [redacted]"));
    assert_eq!(
        r.redact("x tab\\tquote\\\"ctl\\u{1}-value tab\tquote\"ctl\u{1}-value"),
        "x tab\\tquote\\\"ctl\\u{1}-value tab\tquote\"ctl\u{1}-value"
    );

    // Too short: nothing counted, nothing to forget.
    let short = r.remember(b"1234567");
    assert!(short.is_empty());
    r.forget_remembered(&short);
    assert_eq!(r.remembered(), 1);
    // The token shows no fingerprint.
    assert_eq!(format!("{short:?}"), "Remembered { forms: 0, .. }");
}

#[test]
fn at_the_cap_a_refused_remember_forgets_nothing_another_one_counted() {
    let r = Redactor::with_max_entries(2);
    r.remember(b"value-one");
    r.remember(b"value-two");
    // Refused at the cap: nothing counted.
    let refused = r.remember(b"value-three");
    assert!(refused.is_empty());
    assert_eq!(r.redact("value-three"), "value-three");
    // Room is made, and another secret with the same value is remembered.
    r.forget(b"value-two");
    let counted = r.remember(b"value-three");
    assert!(!counted.is_empty());
    // Handing back the refused one leaves the other's count (forgetting by value would not).
    r.forget_remembered(&refused);
    assert_eq!(r.redact("value-three"), "[redacted]");
    r.forget_remembered(&counted);
    assert_eq!(r.redact("value-three"), "value-three");

    // Partly refused: of a value's two forms only the one that fit is counted, and handed back.
    let r = Redactor::with_max_entries(2);
    r.remember(b"value-one");
    let partly = r.remember(b"quote\"d-value");
    assert_eq!(r.remembered(), 2);
    assert_eq!(format!("{partly:?}"), "Remembered { forms: 1, .. }");
    r.forget_remembered(&partly);
    assert_eq!(r.remembered(), 1);
    assert_eq!(r.redact("value-one"), "[redacted]");
}

#[test]
fn forgetting_one_value_keeps_others_of_the_same_length_and_window() {
    let r = redactor();
    let long_a = [b'a'; 100];
    let mut long_b = [b'a'; 100];
    long_b[99] = b'b';
    r.remember(&long_a);
    r.remember(&long_b);
    r.remember(b"12345678");
    r.remember(b"87654321");
    assert_eq!(r.remembered(), 4);
    r.forget(&long_a);
    r.forget(b"12345678");
    let a = String::from_utf8(long_a.to_vec()).unwrap();
    let b = String::from_utf8(long_b.to_vec()).unwrap();
    assert_eq!(
        r.redact(&format!("x {b} 87654321")),
        "x [redacted] [redacted]"
    );
    // long_a shares its first 64 bytes with long_b but is forgotten: only the window's bytes match
    // nothing whole, and the 64 a's are not a remembered value.
    assert_eq!(
        r.redact(&format!("x {a} 12345678")),
        format!("x {a} 12345678")
    );
}

#[test]
fn beyond_the_cap_values_are_not_added_until_room_is_made() {
    let r = Redactor::with_max_entries(3);
    for value in ["value-one", "value-two", "value-three", "value-four"] {
        r.remember(value.as_bytes());
    }
    assert_eq!(r.remembered(), 3);
    assert_eq!(r.redact("value-three value-four"), "[redacted] value-four");
    // A value already held is still counted, not refused.
    r.remember(b"value-one");
    r.forget(b"value-one");
    assert_eq!(r.redact("value-one"), "[redacted]");
    r.forget(b"value-one");
    r.remember(b"value-four");
    assert_eq!(r.redact("value-one value-four"), "value-one [redacted]");
    assert_eq!(r.remembered(), 3);
}

#[test]
fn values_longer_than_the_window_are_matched_whole_only() {
    let r = redactor();
    let value: String = (0..300)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    r.remember(value.as_bytes());
    assert_eq!(r.redact(&format!("<{value}>")), "<[redacted]>");
    // The first 64 bytes alone, or all but the last byte, are not the value.
    let prefix = &value[..WINDOW];
    assert_eq!(r.redact(prefix), prefix);
    let most = &value[..299];
    assert_eq!(r.redact(most), most);
}

#[test]
fn a_non_utf8_value_matches_bytewise_on_character_boundaries_only() {
    let r = redactor();
    // Latin-1 bytes: never valid UTF-8, so never inside a &str.
    r.remember(&[0xe9, 0x74, 0xe9, 0x20, 0x32, 0x30, 0x32, 0x36]);
    assert_eq!(r.redact("été 2026 été"), "été 2026 été");
    // The tail bytes of "é" (0xa9) followed by ASCII: a byte match that starts inside a character
    // must not be replaced (nor panic).
    r.remember(&[0xa9, b'a', b'b', b'c', b'd', b'e', b'f', b'g']);
    let line = "éabcdefg";
    assert_eq!(r.redact(line), line);
    // A valid multi-byte value is replaced on its boundaries.
    r.remember("clé-secrète".as_bytes());
    assert_eq!(r.redact("la clé-secrète ✓"), "la [redacted] ✓");
}

#[test]
fn escaped_forms_of_a_value_are_matched_too() {
    let r = redactor();
    let value = "quote\"back\\slash\ttab";
    r.remember(value.as_bytes());
    // Raw, Debug-escaped (human format) and JSON-escaped forms.
    assert_eq!(r.redact(&format!("a {value} b")), "a [redacted] b");
    assert_eq!(r.redact(&format!("a={value:?} b")), "a=\"[redacted]\" b");
    let json = serde_json::to_string(value).unwrap();
    assert_eq!(
        r.redact(&format!("{{\"a\":{json}}}")),
        "{\"a\":\"[redacted]\"}"
    );
    r.forget(value.as_bytes());
    assert_eq!(r.remembered(), 0);
}

#[test]
fn keyword_values_go_and_keys_stay() {
    let r = redactor();
    let cases = [
        ("password=hunter2", "password=[redacted]"),
        (
            "db_password=hunter2 user=bob",
            "db_password=[redacted] user=bob",
        ),
        ("PASSWD: hunter2, next", "PASSWD: [redacted], next"),
        (
            "connect passwd=\"a b c\" ok",
            "connect passwd=\"[redacted]\" ok",
        ),
        (
            "{\"password\": \"hunter2\", \"user\": \"bob\"}",
            "{\"password\": \"[redacted]\", \"user\": \"bob\"}",
        ),
        (
            "{\"client_secret\":\"s\\\"x\",\"n\":1}",
            "{\"client_secret\":\"[redacted]\",\"n\":1}",
        ),
        ("X-Api-Key: abc123", "X-Api-Key: [redacted]"),
        ("apikey=abc&next=1", "apikey=[redacted]&next=1"),
        ("api_key='abc def'", "api_key='[redacted]'"),
        ("refresh_token=r1", "refresh_token=[redacted]"),
        (
            "Authorization: Bearer abc.def.ghi",
            "Authorization: Bearer [redacted]",
        ),
        (
            "authorization: Basic dXNlcjpwYXNz",
            "authorization: Basic [redacted]",
        ),
        (
            "{\"authorization\": \"Bearer abc\"}",
            "{\"authorization\": \"[redacted]\"}",
        ),
        (
            "headers: {\"authorization\": \"Bearer abc\"}",
            "headers: {\"authorization\": \"[redacted]\"}",
        ),
        (
            "sent Bearer bst1.k1.cGF5bG9hZA.bWFj now",
            "sent Bearer [redacted] now",
        ),
        ("bearer=xyz", "bearer=[redacted]"),
        (
            "message=\"login password=\\\"hunter2\\\" failed\"",
            "message=\"login password=\\\"[redacted]\\\" failed\"",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(r.redact(line), want, "for {line}");
    }
}

#[test]
fn json_lines_stay_json() {
    let r = redactor();
    r.remember(b"1234567890");
    let cases = [
        (
            "{\"password\":12345,\"n\":1}",
            "{\"password\":\"[redacted]\",\"n\":1}",
        ),
        ("{\"pin\":1234567890}", "{\"pin\":\"[redacted]\"}"),
        (
            "{\"message\":\"pin 1234567890 token: abc\"}",
            "{\"message\":\"pin [redacted] token: [redacted]\"}",
        ),
        (
            "{\"message\":\"a \\\"q\\\" b\",\"secret\":7}",
            "{\"message\":\"a \\\"q\\\" b\",\"secret\":\"[redacted]\"}",
        ),
        (
            "{\"token\":{\"a\":1},\"password\":null}",
            "{\"token\":{\"a\":1},\"password\":null}",
        ),
    ];
    for (line, want) in cases {
        let out = r.redact(line);
        assert_eq!(out, want, "for {line}");
        serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
    }
}

#[test]
fn keywords_do_not_touch_other_names_or_prose() {
    let r = redactor();
    for line in [
        "tokens=3 max_tokens=10 token_count=4",
        "secrets loaded count=12",
        "the bearer token is missing",
        "Bearer short",
        "password_policy=strict",
        "password",
        "password=",
        "password: ",
        "=password",
        "password=[redacted]",
    ] {
        assert_eq!(r.redact(line), line, "changed: {line}");
    }
}

#[test]
fn keywords_survive_ansi_colouring() {
    let r = redactor();
    let line = "\u{1b}[3mpassword\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"hunter2\" \u{1b}[3muser\u{1b}[0m\u{1b}[2m=\u{1b}[0mbob";
    assert_eq!(
        r.redact(line),
        "\u{1b}[3mpassword\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"[redacted]\" \u{1b}[3muser\u{1b}[0m\u{1b}[2m=\u{1b}[0mbob"
    );
}

#[test]
fn random_runs_are_redacted() {
    let r = redactor();
    let cases = [
        // 40 hex (a SHA-1 or a hex key) outside an exempt field.
        (
            "key 3f786850e387550fdab836ed7e6dc881de23001b loaded",
            "key [redacted] loaded",
        ),
        // base64 with padding, base64url, a 20-character one.
        (
            "blob dGhpcyBpcyBhIHNlY3JldCBrZXkgdmFsdWUhIQ== end",
            "blob [redacted] end",
        ),
        ("t=Xk3_9aQzP-7LmB2vR8sYw1NcT6 ok", "t=[redacted] ok"),
        ("v aZ3kQ9pL2xW7mR4tY8bN ok", "v [redacted] ok"),
        // A random segment in a path; the rest of the path stays.
        (
            "path=/var/lib/x/Zq9Lk2Wm8Rt4Yp7Nb3Vx/file",
            "path=/var/lib/x/[redacted]/file",
        ),
        // A capability token's shape: payload and MAC go, the prefix and key id stay.
        (
            "got bst1.k1.eyJqdGkiOiI5ODJjYWU2M2IyZTczYzBkYzVmMjI0M2ZlYjZlOTc3ZCIsInN1YiI6ImFkbWluIn0.09GWrvtCs3ES-Jxuhkb1s0zCQNAT-8TugHjZWumc0B8 ok",
            "got bst1.k1.[redacted].[redacted] ok",
        ),
        // Inside a JSON string.
        (
            "{\"note\":\"k=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"}",
            "{\"note\":\"k=[redacted]\"}",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(r.redact(line), want, "for {line}");
    }
}

#[test]
fn exempt_fields_are_exempt_from_entropy_only() {
    let r = redactor();
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for line in [
        format!("sha256={digest}"),
        format!("hash=\"{digest}\""),
        format!("{{\"head\":\"{digest}\"}}"),
        format!("request_id: {digest}"),
        format!("\u{1b}[3mkid\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"{digest}\""),
    ] {
        assert_eq!(r.redact(&line), line);
    }
    // Not exempt: another field name, or a longer name that merely ends like one.
    assert_eq!(r.redact(&format!("blob={digest}")), "blob=[redacted]");
    assert_eq!(r.redact(&format!("xsha256={digest}")), "xsha256=[redacted]");
    // Never from rule 1.
    r.remember(digest.as_bytes());
    assert_eq!(r.redact(&format!("sha256={digest}")), "sha256=[redacted]");
}

#[test]
fn the_rules_apply_in_order_without_counting_twice() {
    let r = redactor();
    r.remember(b"hunter2hunter2");
    // Rule 1 takes the value; rule 2 then sees `[redacted]` and leaves it.
    assert_eq!(r.redact("password=hunter2hunter2"), "password=[redacted]");
    assert_eq!(
        r.redact("password=\"hunter2hunter2\""),
        "password=\"[redacted]\""
    );
}

#[test]
fn entropy_threshold_matches_the_documented_measurements() {
    // Shannon entropy per character as the module docs quote it.
    assert!((entropy(b"brainstem_grpc_requests_total") - 3.857).abs() < 0.01);
    assert!((entropy(b"2026-12-02T13:10:29.123456Z") - 3.412).abs() < 0.01);
    assert!((entropy(b"0123456789abcdef") - 4.0).abs() < 1e-9);
    assert_eq!(entropy(b"aaaaaaaaaaaaaaaaaaaa"), 0.0);
    // A fixed sample of random hex and base64 of 20..64 characters: at least 95 % redacted at 20.
    let mut rng = Lcg(0x5eed);
    let mut hits = [0u32; 2];
    for _ in 0..1000 {
        let hex: Vec<u8> = (0..20)
            .map(|_| b"0123456789abcdef"[rng.below(16)])
            .collect();
        let b64: Vec<u8> = (0..20).map(|_| B64[rng.below(64)]).collect();
        hits[0] += u32::from(looks_random(&hex));
        hits[1] += u32::from(looks_random(&b64));
    }
    assert!(hits[0] >= 950, "hex at 20: {}", hits[0]);
    assert!(hits[1] >= 950, "base64 at 20: {}", hits[1]);
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn never_panics_and_never_leaks_a_remembered_value() {
    let r = redactor();
    let mut rng = Lcg(42);
    let alphabet: Vec<char> = "aZ09=:\"\\ /_-.é✓\u{1b}[m\t,{}password tokenBearer"
        .chars()
        .collect();
    let mut values: Vec<Vec<u8>> = Vec::new();
    for round in 0..2000 {
        // A random value (sometimes not UTF-8), remembered.
        let len = 8 + rng.below(90);
        let value: Vec<u8> = if round % 7 == 0 {
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            (0..len).map(|_| B64[rng.below(64)]).collect()
        };
        r.remember(&value);
        values.push(value.clone());
        // A random line around it.
        let mut line = String::new();
        for _ in 0..rng.below(200) {
            line.push(alphabet[rng.below(alphabet.len())]);
        }
        let text = String::from_utf8_lossy(&value).into_owned();
        let at = (0..=rng.below(line.len() + 1))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        line.insert_str(at, &text);
        let out = r.redact(&line);
        if std::str::from_utf8(&value).is_ok() {
            assert!(!out.contains(&text), "leaked {text:?} in {out:?}");
        }
        // Random lines alone (no value) never panic either.
        let _ = r.redact(&line[..at]);
        if round % 3 == 0 {
            let old = values.swap_remove(rng.below(values.len()));
            r.forget(&old);
        }
    }
    for value in &values {
        r.forget(value);
    }
    assert_eq!(r.remembered(), 0);
}

#[test]
fn random_text_never_panics() {
    let r = redactor();
    r.remember("é✓é✓é✓".as_bytes());
    r.remember(&[0xff, 0xfe, b'a', b'b', b'c', b'd', b'e', b'f']);
    let alphabet: Vec<char> = "aA0zZ9+/=_-.:\"\\'{}[]() \t\n\u{1b}mé✓😀;,&bearerPASSWORD"
        .chars()
        .collect();
    let mut rng = Lcg(7);
    for _ in 0..5000 {
        let line: String = (0..rng.below(120))
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let out = r.redact(&line);
        if !line.contains("é✓é✓é✓") && !out.contains("[redacted]") {
            assert_eq!(out, line);
        }
    }
}

#[test]
fn the_replacer_merges_and_respects_boundaries() {
    assert_eq!(
        replace("abcdef", vec![(1, 3), (2, 4), (5, 6)]),
        ("a[redacted]e[redacted]".to_owned(), 2)
    );
    // A range inside a multi-byte character is widened, never split.
    assert_eq!(replace("é", vec![(1, 2)]), ("[redacted]".to_owned(), 1));
    assert_eq!(replace("ab", vec![(0, 9)]), ("[redacted]".to_owned(), 1));
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn a_real_event_is_redacted_in_the_human_and_json_formats() {
    let redactor: &'static Redactor = Box::leak(Box::new(Redactor::new()));
    redactor.remember(b"s3cr3t-value-from-the-store");
    for (json, ansi) in [(false, false), (false, true), (true, false)] {
        let captured = Captured::default();
        let sink = captured.clone();
        let writer = crate::runtime::telemetry::redacting_writer(redactor, move || sink.clone());
        let builder = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_max_level(tracing::Level::INFO);
        let event = || {
            tracing::info!(
                value = "s3cr3t-value-from-the-store",
                password = "hunter2",
                sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "stored; echo s3cr3t-value-from-the-store"
            );
            tracing::info!(count = 3, "nothing secret here");
        };
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), event);
        } else {
            tracing::subscriber::with_default(builder.finish(), event);
        }
        let out = captured.text();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("[redacted]"), "{out}");
        assert!(
            out.contains("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            "{out}"
        );
        assert!(out.contains("nothing secret here"), "{out}");
        if json {
            for line in out.lines() {
                let parsed: serde_json::Value = serde_json::from_str(line).expect("still JSON");
                assert!(parsed.get("message").is_some());
            }
            assert!(out.contains("\"password\":\"[redacted]\""), "{out}");
        } else {
            assert!(out.contains("[redacted]\""), "{out}");
        }
    }
}

#[test]
fn a_line_written_in_pieces_is_redacted_whole() {
    let redactor: &'static Redactor = Box::leak(Box::new(Redactor::new()));
    redactor.remember(b"split-secret-value");
    let captured = Captured::default();
    let sink = captured.clone();
    let make = crate::runtime::telemetry::redacting_writer(redactor, move || sink.clone());
    {
        let mut writer = tracing_subscriber::fmt::MakeWriter::make_writer(&make);
        writer.write_all(b"a split-sec").unwrap();
        writer.flush().unwrap();
        writer.write_all(b"ret-value b\n").unwrap();
    }
    assert_eq!(captured.text(), "a [redacted] b\n");
}

#[test]
fn the_global_redactor_is_one_instance() {
    assert!(std::ptr::eq(global(), global()));
}

#[test]
fn concurrent_readers_and_writers() {
    let r = Arc::new(redactor());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let value = format!("value-{t}-{i:06}-xyz");
                    r.remember(value.as_bytes());
                    assert_eq!(r.redact(&format!("got {value}")), "got [redacted]");
                    r.forget(value.as_bytes());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(r.remembered(), 0);
}

#[test]
fn temporary_directory_paths_stay_readable() {
    let r = Redactor::new();
    for line in [
        "master key /tmp/.tmpAbC123/new-master.key: not the key",
        "state in /tmp/.tmpq9ZfXk/state/db and /run/user/1000/.tmpW3x/sock",
    ] {
        assert_eq!(r.redact(line), line);
    }
}
