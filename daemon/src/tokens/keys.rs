//! Signing keys: 32 random bytes each, HMAC-SHA256, identified by `k<seq>`. Stored in the
//! `tokens.keys` tree sealed under the master key ([`crate::crypto::MasterKey`]: AES-256-GCM, random
//! 96-bit nonce per seal, the key id as associated data so a sealed key cannot be moved to another id).
//! The stored form keeps nonce and ciphertext apart, in base64. Only the master key, read from a 0600
//! file or a systemd credential, can open them; it never touches the store.
//!
//! The newest key signs. A replaced key verifies until `retire_after_seconds` after its successor was
//! created; then it is retired: its sealed material is erased and a tombstone remains so that a token it
//! signed is refused as `key_retired` rather than `unknown_key`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::NONCE_LEN;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::TokenError;
use crate::crypto::MasterKey;
use crate::store::Record;

/// Length of every signing key.
pub const KEY_LEN: usize = 32;

/// The associated data a signing key is sealed with: its id, so sealed material cannot be moved to
/// another id.
fn aad(kid: &str) -> Vec<u8> {
    format!("brainstem tokens signing key {kid}").into_bytes()
}

/// Seals a signing key under the master key, in the stored form (nonce and ciphertext apart, base64).
fn seal(master: &MasterKey, kid: &str, plaintext: &[u8]) -> Result<Sealed, TokenError> {
    let sealed = master
        .seal(plaintext, &aad(kid))
        .map_err(|_| TokenError::Random)?;
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    Ok(Sealed {
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ciphertext),
    })
}

/// Opens a stored signing key; `None` if it does not open with this master key under this id. The
/// key's bytes are wiped when the returned buffer is dropped.
fn open(master: &MasterKey, kid: &str, sealed: &Sealed) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let mut bytes = B64.decode(&sealed.nonce).ok()?;
    if bytes.len() != NONCE_LEN {
        return None;
    }
    bytes.extend(B64.decode(&sealed.ciphertext).ok()?);
    master.unseal(&bytes, &aad(kid)).ok()
}

/// `record` sealed under `current` when it is sealed under another of `masters` (master-key
/// rotation); `None` when it needs nothing (retired, or already under `current`).
pub fn resealed(
    record: &KeyRecord,
    masters: &[Arc<MasterKey>],
    current: &MasterKey,
) -> Result<Option<KeyRecord>, TokenError> {
    let Some(sealed) = &record.sealed else {
        return Ok(None);
    };
    if open(current, &record.kid, sealed).is_some() {
        return Ok(None);
    }
    let bytes = masters
        .iter()
        .find_map(|master| open(master, &record.kid, sealed))
        .ok_or_else(|| TokenError::Undecryptable {
            kid: record.kid.clone(),
        })?;
    Ok(Some(KeyRecord {
        sealed: Some(seal(current, &record.kid, &bytes)?),
        ..record.clone()
    }))
}

/// A signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub seq: u64,
    pub kid: String,
    pub created_at: u64,
    /// `None`: retired; the material is gone.
    pub sealed: Option<Sealed>,
}

impl Record for KeyRecord {
    const VERSION: u8 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

/// A signing key in memory.
#[derive(Clone)]
pub struct SigningKey {
    pub seq: u64,
    pub kid: String,
    pub created_at: u64,
    /// When it stops verifying; `None` for the active key.
    pub retires_at: Option<u64>,
    pub key: hmac::Key,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// Every key that still verifies (newest first, the first one signs) and the ids of retired ones.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    pub keys: Vec<SigningKey>,
    pub retired: std::collections::HashSet<String>,
    pub next_seq: u64,
}

/// What a key id refers to at a given time.
pub enum Lookup<'a> {
    Verifies(&'a SigningKey),
    Retired,
    Unknown,
}

impl KeyRing {
    /// Builds the ring from stored records, opening every live key with one of `masters` (two during
    /// a master-key rotation).
    pub fn load(
        records: Vec<KeyRecord>,
        masters: &[Arc<MasterKey>],
        retire_after: u64,
    ) -> Result<KeyRing, TokenError> {
        let mut ring = KeyRing::default();
        for record in records {
            ring.next_seq = ring.next_seq.max(record.seq + 1);
            let Some(sealed) = &record.sealed else {
                ring.retired.insert(record.kid);
                continue;
            };
            let bytes = masters
                .iter()
                .find_map(|master| open(master, &record.kid, sealed))
                .filter(|b| b.len() == KEY_LEN)
                .ok_or_else(|| TokenError::Undecryptable {
                    kid: record.kid.clone(),
                })?;
            ring.keys.push(SigningKey {
                seq: record.seq,
                kid: record.kid,
                created_at: record.created_at,
                retires_at: None,
                key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            });
        }
        ring.settle(retire_after);
        Ok(ring)
    }

    /// Sorts newest first and derives each replaced key's retirement from its successor's creation.
    fn settle(&mut self, retire_after: u64) {
        self.keys.sort_by_key(|k| std::cmp::Reverse(k.seq));
        let mut successor_created: Option<u64> = None;
        for key in &mut self.keys {
            key.retires_at = successor_created.map(|t| t.saturating_add(retire_after));
            successor_created = Some(key.created_at);
        }
    }

    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.first()
    }

    pub fn lookup(&self, kid: &str, now: u64) -> Lookup<'_> {
        match self.keys.iter().find(|k| k.kid == kid) {
            Some(key) if key.retires_at.is_some_and(|t| now >= t) => Lookup::Retired,
            Some(key) => Lookup::Verifies(key),
            None if self.retired.contains(kid) => Lookup::Retired,
            None => Lookup::Unknown,
        }
    }

    /// A new key (not stored yet) and the ring it makes.
    pub fn rotated(
        &self,
        now: u64,
        master: &MasterKey,
        rng: &SystemRandom,
        retire_after: u64,
    ) -> Result<(KeyRing, KeyRecord), TokenError> {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill(&mut bytes).map_err(|_| TokenError::Random)?;
        let seq = self.next_seq.max(1);
        let kid = format!("k{seq}");
        let record = KeyRecord {
            seq,
            kid: kid.clone(),
            created_at: now,
            sealed: Some(seal(master, &kid, &bytes)?),
        };
        let mut ring = self.clone();
        ring.next_seq = seq + 1;
        ring.keys.push(SigningKey {
            seq,
            kid,
            created_at: now,
            retires_at: None,
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        });
        ring.settle(retire_after);
        Ok((ring, record))
    }

    /// The ring with every key retired at once, and the tombstones to store for them (after a recovery
    /// that may have lost revocations, no token signed before is trusted).
    pub fn retire_all(&self) -> (KeyRing, Vec<KeyRecord>) {
        let mut ring = self.clone();
        let tombstones: Vec<KeyRecord> = ring
            .keys
            .drain(..)
            .map(|key| KeyRecord {
                seq: key.seq,
                kid: key.kid,
                created_at: key.created_at,
                sealed: None,
            })
            .collect();
        for tomb in &tombstones {
            ring.retired.insert(tomb.kid.clone());
        }
        (ring, tombstones)
    }

    /// The ring without keys whose retirement has come, and the tombstones to store for them.
    pub fn retire_due(&self, now: u64) -> (KeyRing, Vec<KeyRecord>) {
        let mut ring = self.clone();
        let mut tombstones = Vec::new();
        ring.keys.retain(|key| {
            let due = key.retires_at.is_some_and(|t| now >= t);
            if due {
                tombstones.push(KeyRecord {
                    seq: key.seq,
                    kid: key.kid.clone(),
                    created_at: key.created_at,
                    sealed: None,
                });
            }
            !due
        });
        for tomb in &tombstones {
            ring.retired.insert(tomb.kid.clone());
        }
        (ring, tombstones)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_master_key_and_id() {
        let master = MasterKey::new(&[1; 32]).unwrap();
        let sealed = seal(&master, "k1", b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            open(&master, "k1", &sealed).unwrap().as_slice(),
            b"0123456789abcdef0123456789abcdef"
        );
        assert!(
            open(&master, "k2", &sealed).is_none(),
            "bound to its key id"
        );
        let other = MasterKey::new(&[2; 32]).unwrap();
        assert!(open(&other, "k1", &sealed).is_none());
    }

    /// A key sealed by the previous code (ring AES-256-GCM directly, same nonce/ciphertext fields and
    /// associated data) still opens: the stored format did not change.
    #[test]
    fn keys_sealed_before_the_crypto_module_still_open() {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let legacy = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[1; 32]).unwrap());
        let nonce = [9u8; NONCE_LEN];
        let mut in_out = b"0123456789abcdef0123456789abcdef".to_vec();
        legacy
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad("k7")),
                &mut in_out,
            )
            .unwrap();
        let stored = Sealed {
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(&in_out),
        };
        let master = MasterKey::new(&[1; 32]).unwrap();
        assert_eq!(
            open(&master, "k7", &stored).unwrap().as_slice(),
            b"0123456789abcdef0123456789abcdef"
        );
    }
}
