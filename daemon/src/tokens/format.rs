//! The token encoding: `bst1.<kid>.<payload>.<mac>`.
//!
//! - `bst1` names the format and fixes the algorithm (HMAC-SHA256); nothing in a token chooses it.
//! - `<kid>` is the signing key's id (`k1`, `k2`, …), so a verifier finds the key without parsing claims.
//! - `<payload>` is unpadded base64url of the JSON [`Claims`].
//! - `<mac>` is unpadded base64url of HMAC-SHA256 over the ASCII bytes `bst1.<kid>.<payload>`.
//!
//! The MAC is checked (in constant time) before the payload is decoded, so unauthenticated input never
//! reaches the JSON parser.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::{RejectKind, Rejection};

pub const PREFIX: &str = "bst1";
/// Longer strings are refused before any work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const MAC_LEN: usize = 32;

/// What a token says. Field names follow JWT's where one exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    #[serde(rename = "jti")]
    pub id: String,
    #[serde(rename = "sub")]
    pub principal: String,
    #[serde(rename = "iss")]
    pub issuer: String,
    #[serde(rename = "cap")]
    pub capabilities: Vec<String>,
    #[serde(rename = "iat")]
    pub issued_at: u64,
    #[serde(rename = "exp")]
    pub expires_at: u64,
    /// Ancestor ids, root first (tokens from Attenuate).
    #[serde(rename = "par", default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
}

/// Signs `claims` with `key`, whose id is `kid`.
pub fn encode(kid: &str, key: &hmac::Key, claims: &Claims) -> Result<String, serde_json::Error> {
    let payload = B64.encode(serde_json::to_vec(claims)?);
    let mut token = format!("{PREFIX}.{kid}.{payload}");
    let tag = hmac::sign(key, token.as_bytes());
    token.push('.');
    token.push_str(&B64.encode(tag.as_ref()));
    Ok(token)
}

/// A token split into its parts; not authenticated yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub kid: &'a str,
    /// `bst1.<kid>.<payload>`: the MAC's input.
    signed: &'a str,
    payload: &'a str,
    mac: [u8; MAC_LEN],
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectKind::Malformed, detail)
}

/// Splits a token and decodes its MAC. Every failure says what is wrong with the string.
pub fn parse(token: &str) -> Result<Parsed<'_>, Rejection> {
    if token.is_empty() {
        return Err(malformed("the token is empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed(format!(
            "the token is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let Some((signed, mac_b64)) = token.rsplit_once('.') else {
        return Err(malformed(
            "expected bst1.<key id>.<payload>.<signature>; found no '.'",
        ));
    };
    let mut parts = signed.split('.');
    let (Some(prefix), Some(kid), Some(payload), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let count = token.split('.').count();
        return Err(malformed(format!(
            "expected 4 dot-separated parts (bst1.<key id>.<payload>.<signature>), found {count}"
        )));
    };
    if prefix != PREFIX {
        let shown: String = prefix.chars().take(16).collect();
        return Err(malformed(format!(
            "unknown token format {shown:?}; expected {PREFIX:?}"
        )));
    }
    if kid.is_empty()
        || kid.len() > 16
        || !kid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(malformed(
            "the key id is not 1 to 16 characters of [a-z0-9]",
        ));
    }
    if payload.is_empty() {
        return Err(malformed("the payload is empty"));
    }
    if mac_b64.is_empty() {
        return Err(malformed("the signature is empty"));
    }
    let mac_bytes = B64
        .decode(mac_b64)
        .map_err(|_| malformed("the signature is not unpadded base64url"))?;
    let mac: [u8; MAC_LEN] = mac_bytes.try_into().map_err(|bytes: Vec<u8>| {
        Rejection::new(
            RejectKind::BadSignature,
            format!(
                "the signature is {} bytes, not {MAC_LEN}: the token was truncated or altered",
                bytes.len()
            ),
        )
    })?;
    Ok(Parsed {
        kid,
        signed,
        payload,
        mac,
    })
}

impl Parsed<'_> {
    /// Checks the MAC with `key`, then decodes the claims.
    pub fn authenticate(&self, key: &hmac::Key) -> Result<Claims, Rejection> {
        hmac::verify(key, self.signed.as_bytes(), &self.mac).map_err(|_| {
            Rejection::new(
                RejectKind::BadSignature,
                "the signature does not match: the token was altered, truncated or not signed by this daemon",
            )
        })?;
        let json = B64
            .decode(self.payload)
            .map_err(|_| malformed("the payload is not unpadded base64url"))?;
        serde_json::from_slice(&json)
            .map_err(|err| malformed(format!("the payload does not decode: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            id: "abc".into(),
            principal: "spiffe://h/agent/web".into(),
            issuer: "spiffe://h/admin".into(),
            capabilities: vec!["vision.*".into()],
            issued_at: 100,
            expires_at: 200,
            parents: vec![],
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let token = encode("k1", &key, &claims()).unwrap();
        let parts: Vec<_> = token.split('.').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1]), ("bst1", "k1"));
        assert_eq!(parts[3].len(), 43, "32 bytes of unpadded base64url");
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.kid, "k1");
        assert_eq!(parsed.authenticate(&key).unwrap(), claims());
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
        assert_eq!(
            parsed.authenticate(&other).unwrap_err().kind,
            RejectKind::BadSignature
        );
    }

    #[test]
    fn malformed_strings_say_why() {
        for (token, needle) in [
            ("", "empty"),
            ("garbage", "no '.'"),
            ("a.b", "found 2"),
            ("a.b.c.d.e", "found 5"),
            ("jwt.k1.p.AAAA", "unknown token format"),
            ("bst1.K1.p.AAAA", "key id"),
            ("bst1.k1..AAAA", "payload is empty"),
            ("bst1.k1.p.!!!", "base64url"),
        ] {
            let err = parse(token).unwrap_err();
            assert_eq!(err.kind, RejectKind::Malformed, "{token:?}");
            assert!(err.detail.contains(needle), "{token:?}: {err}");
        }
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(parse(&long).unwrap_err().detail.contains("longer"));
        let err = parse("bst1.k1.p.AAAA").unwrap_err();
        assert_eq!(err.kind, RejectKind::BadSignature);
        assert!(err.detail.contains("truncated"), "{err}");
    }
}
