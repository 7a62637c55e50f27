//! The master key: 32 bytes read from a 0600 file or a systemd credential, never stored. It seals key
//! material at rest with AES-256-GCM (ring): a random 96-bit nonce per seal and caller-chosen
//! associated data that is authenticated but not stored, so a sealed value only opens in the context
//! it was sealed for (a token signing key under its key id, a secret under its path).
//!
//! Sealed layout: `nonce (12 bytes) || ciphertext || tag (16 bytes)`.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::files::{FileError, read_private};

/// Length of the master key.
pub const KEY_LEN: usize = 32;
/// Bytes a sealed value adds to its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("a master key is {KEY_LEN} bytes; this one is {0}")]
    KeyLength(usize),
    #[error("the system random source failed")]
    Random,
    #[error(
        "sealed data does not open (another master key, other associated data, or damaged data)"
    )]
    Unseal,
}

/// The key that seals key material at rest.
pub struct MasterKey {
    key: LessSafeKey,
    rng: SystemRandom,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// Exactly [`KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<MasterKey, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::KeyLength(bytes.len()));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::KeyLength(0))?;
        Ok(MasterKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
            id: key_id(bytes),
        })
    }

    /// The key's id: 16 hex digits of a domain-separated SHA-256 of the key. It names which key
    /// sealed a value (master-key rotation, error messages) without revealing the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key file (refused if group or others can read it, unless it is a systemd credential).
    pub fn load(path: &Path) -> Result<MasterKey, CryptoError> {
        MasterKey::new(&read_private(path)?)
    }

    /// Encrypts `plaintext` bound to `associated_data`: `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8], associated_data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.key, &self.rng, plaintext, associated_data)
    }

    /// Decrypts what [`MasterKey::seal`] produced with the same `associated_data`. Another key, other
    /// associated data or any changed byte is [`CryptoError::Unseal`]. The plaintext is wiped when the
    /// returned buffer is dropped.
    pub fn unseal(
        &self,
        sealed: &[u8],
        associated_data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open_with(&self.key, sealed, associated_data).ok_or(CryptoError::Unseal)
    }
}

/// Seals `plaintext` under `key` bound to `associated_data` in the layout above, with a fresh
/// random nonce: the master key's seal, and the secrets' per-version data keys' too.
pub fn seal_with(
    key: &LessSafeKey,
    rng: &SystemRandom,
    plaintext: &[u8],
    associated_data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    // Sealed where it is returned: one buffer of its final size, the plaintext encrypted in place.
    let mut sealed = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(plaintext);
    let sealed_in_place = key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(associated_data),
        &mut sealed[NONCE_LEN..],
    );
    let Ok(tag) = sealed_in_place else {
        // Not encrypted after all: the plaintext does not stay in freed memory.
        sealed.zeroize();
        return Err(CryptoError::Random);
    };
    sealed.extend_from_slice(tag.as_ref());
    Ok(sealed)
}

/// Opens what [`seal_with`] produced under `key` with the same `associated_data`; `None` for
/// another key, other associated data or any changed byte. The plaintext is wiped when the
/// returned buffer is dropped.
pub fn open_with(
    key: &LessSafeKey,
    sealed: &[u8],
    associated_data: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    // The working buffer holds the plaintext once opened (or a part of it on failure): it is
    // the buffer handed back, wiped when dropped, never a copy left in freed memory.
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data),
            &mut in_out,
        )
        .ok()?
        .len();
    in_out.truncate(len);
    Some(in_out)
}

fn key_id(bytes: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"brainstem master key id v1\0");
    context.update(bytes);
    let digest = context.finish();
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AD: &[u8] = b"brainstem test k1";

    #[test]
    fn sealed_data_round_trips_with_a_fresh_nonce_each_time() {
        let master = MasterKey::new(&[7; KEY_LEN]).unwrap();
        let a = master.seal(b"signing key bytes", AD).unwrap();
        let b = master.seal(b"signing key bytes", AD).unwrap();
        assert_eq!(a.len(), b"signing key bytes".len() + SEAL_OVERHEAD);
        assert_ne!(a, b, "a random nonce per seal");
        assert_eq!(
            master.unseal(&a, AD).unwrap().as_slice(),
            b"signing key bytes"
        );
        assert_eq!(
            master.unseal(&b, AD).unwrap().as_slice(),
            b"signing key bytes"
        );
        assert_eq!(
            master
                .unseal(&master.seal(b"", AD).unwrap(), AD)
                .unwrap()
                .as_slice(),
            b""
        );
    }

    #[test]
    fn key_ids_tell_keys_apart_without_showing_them() {
        let a = MasterKey::new(&[7; KEY_LEN]).unwrap();
        let b = MasterKey::new(&[8; KEY_LEN]).unwrap();
        assert_eq!(a.id().len(), 16);
        assert_eq!(a.id(), MasterKey::new(&[7; KEY_LEN]).unwrap().id());
        assert_ne!(a.id(), b.id());
        assert!(!a.id().contains("0707"), "the id is not the key");
        assert_eq!(format!("{a:?}"), format!("MasterKey({})", a.id()));
    }

    #[test]
    fn other_associated_data_does_not_open() {
        let master = MasterKey::new(&[7; KEY_LEN]).unwrap();
        let sealed = master.seal(b"secret", AD).unwrap();
        assert!(matches!(
            master.unseal(&sealed, b"brainstem test k2"),
            Err(CryptoError::Unseal)
        ));
        assert!(matches!(
            master.unseal(&sealed, b""),
            Err(CryptoError::Unseal)
        ));
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = MasterKey::new(&[7; KEY_LEN])
            .unwrap()
            .seal(b"secret", AD)
            .unwrap();
        let other = MasterKey::new(&[8; KEY_LEN]).unwrap();
        assert!(matches!(
            other.unseal(&sealed, AD),
            Err(CryptoError::Unseal)
        ));
    }

    #[test]
    fn any_changed_or_missing_byte_is_refused() {
        let master = MasterKey::new(&[7; KEY_LEN]).unwrap();
        let sealed = master.seal(b"secret", AD).unwrap();
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(
                matches!(master.unseal(&tampered, AD), Err(CryptoError::Unseal)),
                "byte {i} flipped"
            );
        }
        assert!(matches!(
            master.unseal(&sealed[..sealed.len() - 1], AD),
            Err(CryptoError::Unseal)
        ));
        assert!(matches!(
            master.unseal(&sealed[..SEAL_OVERHEAD - 1], AD),
            Err(CryptoError::Unseal)
        ));
    }

    #[test]
    fn keys_must_be_32_bytes_and_files_private() {
        assert!(matches!(
            MasterKey::new(&[0; 16]),
            Err(CryptoError::KeyLength(16))
        ));
        assert!(
            MasterKey::new(&[0; 16])
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        crate::crypto::files::write_private(&path, &[3; KEY_LEN]).unwrap();
        let sealed = MasterKey::load(&path).unwrap().seal(b"x", AD).unwrap();
        assert_eq!(
            MasterKey::new(&[3; KEY_LEN])
                .unwrap()
                .unseal(&sealed, AD)
                .unwrap()
                .as_slice(),
            b"x"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(CryptoError::File(FileError::Permissions { .. }))
        ));
    }
}
