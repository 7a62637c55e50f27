//! Ed25519 keys that sign policy files. `brainstemctl policy keygen` / `sign` make them; the daemon
//! verifies the `.sig` files against `[policy] signing_public_key_file`.

use ring::signature::KeyPair;

/// Signs a policy file's bytes with an Ed25519 PKCS#8 key: the `.sig` file's content (hex).
pub fn sign(pkcs8: &[u8], message: &[u8]) -> Result<String, String> {
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|_| "not an Ed25519 PKCS#8 key".to_owned())?;
    Ok(hex_encode(pair.sign(message).as_ref()))
}

/// A new Ed25519 key pair: (PKCS#8 private key, hex public key).
pub fn generate_signing_key() -> Result<(Vec<u8>, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "key generation failed".to_owned())?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| "key generation failed".to_owned())?;
    Ok((
        pkcs8.as_ref().to_vec(),
        hex_encode(pair.public_key().as_ref()),
    ))
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_generated_public_key() {
        let (pkcs8, public_hex) = generate_signing_key().unwrap();
        let sig = hex_decode(&sign(&pkcs8, b"permit(...);").unwrap()).unwrap();
        let public = hex_decode(&public_hex).unwrap();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public);
        assert!(key.verify(b"permit(...);", &sig).is_ok());
        assert!(key.verify(b"forbid(...);", &sig).is_err());
        assert!(sign(b"not a key", b"x").is_err());
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(hex_encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00abff").unwrap(), [0x00, 0xab, 0xff]);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
