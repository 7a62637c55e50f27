//! Signed model cards (docs/REGISTRY.md). The daemon signs, `brainstemctl registry verify-card`
//! verifies offline; both use this code, so they cannot disagree on what "canonical" means.
//!
//! Canonical JSON: objects with their keys sorted by their UTF-8 bytes, no whitespace, strings and
//! numbers as `serde_json` writes them (shortest round-trip form for floats). A signed card is the
//! canonical JSON of
//! `{"card":{…},"signature":{"algorithm":"ed25519","public_key":"<hex>","value":"<hex>"}}`,
//! where `value` is the Ed25519 signature of the canonical JSON of `card` alone. Verification
//! refuses a card file that is not exactly in canonical form, so any changed byte is refused.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::Value;

use crate::signing::{hex_decode, hex_encode};

/// The one signature algorithm cards use.
pub const ALGORITHM: &str = "ed25519";

/// `value` as canonical JSON: sorted keys, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*key).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Signs `card` with an Ed25519 key pair: the signed card file's text.
pub fn sign_card(pair: &Ed25519KeyPair, card: &Value) -> String {
    let body = canonical_json(card);
    let signature = pair.sign(body.as_bytes());
    let envelope = serde_json::json!({
        "card": card,
        "signature": {
            "algorithm": ALGORITHM,
            "public_key": hex_encode(pair.public_key().as_ref()),
            "value": hex_encode(signature.as_ref()),
        }
    });
    canonical_json(&envelope)
}

/// Why a card did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CardError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not in canonical form (sorted keys, no whitespace): the file was changed")]
    NotCanonical,
    #[error("missing or malformed field {0}")]
    Malformed(&'static str),
    #[error("signed with another key than the one given")]
    OtherKey,
    #[error("the signature does not match the card")]
    BadSignature,
}

/// Verifies a signed card's text against a public key (32 bytes). Returns the card on success.
pub fn verify_card(text: &str, public_key: &[u8]) -> Result<Value, CardError> {
    let envelope: Value =
        serde_json::from_str(text).map_err(|err| CardError::NotJson(err.to_string()))?;
    if canonical_json(&envelope) != text {
        return Err(CardError::NotCanonical);
    }
    let card = envelope.get("card").ok_or(CardError::Malformed("card"))?;
    let signature = envelope
        .get("signature")
        .ok_or(CardError::Malformed("signature"))?;
    if signature.get("algorithm").and_then(Value::as_str) != Some(ALGORITHM) {
        return Err(CardError::Malformed("signature.algorithm"));
    }
    let named = signature
        .get("public_key")
        .and_then(Value::as_str)
        .and_then(hex_decode)
        .ok_or(CardError::Malformed("signature.public_key"))?;
    if named != public_key {
        return Err(CardError::OtherKey);
    }
    let value = signature
        .get("value")
        .and_then(Value::as_str)
        .and_then(hex_decode)
        .ok_or(CardError::Malformed("signature.value"))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(canonical_json(card).as_bytes(), &value)
        .map_err(|_| CardError::BadSignature)?;
    Ok(card.clone())
}

/// Reads a public key file: the hex of 32 bytes, surrounding whitespace ignored.
pub fn parse_public_key(text: &str) -> Option<Vec<u8>> {
    hex_decode(text.trim()).filter(|key| key.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let value: Value =
            serde_json::from_str(r#"{ "b": [1, {"z": 1, "a": 2}], "a": "x" }"#).unwrap();
        assert_eq!(canonical_json(&value), r#"{"a":"x","b":[1,{"a":2,"z":1}]}"#);
    }

    #[test]
    fn a_signed_card_verifies_and_any_changed_byte_fails() {
        let pair = pair();
        let card = serde_json::json!({"name": "vision", "metrics": {"accuracy": 0.93}});
        let text = sign_card(&pair, &card);
        let key = pair.public_key().as_ref().to_vec();
        assert_eq!(verify_card(&text, &key).unwrap(), card);
        let mut bytes = text.clone().into_bytes();
        for i in 0..bytes.len() {
            let original = bytes[i];
            bytes[i] = if original == b'9' { b'8' } else { b'9' };
            if let Ok(changed) = std::str::from_utf8(&bytes) {
                assert!(
                    verify_card(changed, &key).is_err(),
                    "byte {i} changed and still valid"
                );
            }
            bytes[i] = original;
        }
        let other = pair_key();
        assert_eq!(verify_card(&text, &other), Err(CardError::OtherKey));
    }

    fn pair_key() -> Vec<u8> {
        pair().public_key().as_ref().to_vec()
    }
}
